"""What reaches the API over the wire that JSON allows and a store cannot keep, bodies too
large for routes that are not ingest, HEAD, encodings, and the names errors use."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest
import redis

from api.wire_values import unencodable
from config.settings import Settings
from sinks.keys import KeyLayout
from tests.support import (
    ADMIN_KEY,
    WRITE_KEY,
    api_server,
    drain,
    make_settings,
    read_headers,
)

HALF_EMOJI = "\\ud83d"  # as JSON text: a lone surrogate, what a cut emoji leaves


@pytest.fixture(params=[True, False], ids=["fast_reads", "fastapi_reads"])
def settings(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> Settings:
    return make_settings(redis_url, key_prefix, api={"fast_reads": request.param})


@pytest.fixture
def api(settings: Settings) -> Iterator[str]:
    with api_server(settings) as url:
        yield url


def stored_ids(client: redis.Redis, settings: Settings) -> set[str]:
    layout = KeyLayout.from_settings(settings)
    return {json.loads(fields[b"e"])["event_id"] for stream in layout.all_event_streams()
            for _, fields in client.xrange(stream)}


def post(url: str, path: str, body: str, **headers: str) -> httpx.Response:
    return httpx.post(url + path, content=body.encode(), auth=(WRITE_KEY, ""),
                      headers=headers, timeout=30)


def test_values_no_store_can_keep_reject_their_item_and_the_batch_is_kept(
        api: str, settings: Settings, redis_client: redis.Redis) -> None:
    good = '{"type":"track","event":"Session Started","userId":"u1","messageId":"good-1"}'
    bad = {
        "big-int": '{"type":"track","event":"Order Note","userId":"u1","messageId":"big-int",'
                   '"properties":{"order_ref":123456789012345678901234567890}}',
        "half-user": '{"type":"track","event":"Session Started","userId":"u' + HALF_EMOJI
                     + '","messageId":"half-user"}',
        "half-value": '{"type":"track","event":"Note","userId":"u1","messageId":"half-value",'
                      '"properties":{"tags":["ok","x' + HALF_EMOJI + '"]}}',
        "half-key": '{"type":"identify","userId":"u1","messageId":"half-key",'
                    '"traits":{"k' + HALF_EMOJI + '":1}}',
    }
    response = post(api, "/v1/batch", '{"batch":[' + ",".join([good, *bad.values()]) + "]}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1 and body["rejected_count"] == 4
    fields = {r["messageId"]: r["field"] for r in body["rejected"]}
    assert fields == {"big-int": "properties.order_ref", "half-user": "userId",
                      "half-value": "properties.tags[1]", "half-key": "traits"}
    assert "64-bit" in body["rejected"][0]["error"]
    assert "surrogate" in body["rejected"][1]["error"]
    assert stored_ids(redis_client, settings) == {"good-1"}

    nan = post(api, "/v1/events", '[{"type":"visit","client_id":"a","event_id":"ok-2"},'
               '{"type":"visit","client_id":"a","properties":{"x":NaN}}]')
    assert nan.status_code == 200 and nan.json()["accepted"] == 1, nan.text  # not a null
    [refused] = nan.json()["rejected"]
    assert (refused["index"], refused["field"]) == (1, "properties.x")
    assert refused["error"] == "properties.x: NaN is not a JSON number"

    single = post(api, "/v1/track", bad["half-user"])
    assert single.status_code == 400 and single.json()["field"] == "userId", single.text


def test_the_event_size_limit_counts_utf8_bytes(api: str) -> None:
    """32 KB is what is stored, UTF-8: 6,000 CJK characters are 18 KB, not 36 KB of
    \\uXXXX escapes; 12,000 of them are over the limit."""
    def identify(characters: int) -> str:
        return json.dumps({"type": "track", "event": "Note", "userId": "u1",
                           "messageId": f"id-{characters}",
                           "properties": {"note": "日本語" * (characters // 3)}},
                          ensure_ascii=False)  # UTF-8 on the wire, as browsers send it

    assert post(api, "/v1/track", identify(6_000)).status_code == 200
    too_big = post(api, "/v1/batch", '{"batch":[' + identify(12_000) + "]}")
    assert too_big.status_code == 400
    [rejected] = too_big.json()["rejected"]
    assert rejected["field"] is None and "bytes" in rejected["error"]  # the event as a whole


def test_rejected_items_are_listed_up_to_a_hundred_and_counted(api: str) -> None:
    response = post(api, "/v1/events", json.dumps({"events": [{}] * 150}))
    assert response.status_code == 400
    body = response.json()
    assert body["rejected_count"] == 150 and len(body["rejected"]) == 100
    assert [r["index"] for r in body["rejected"]] == list(range(100))


def test_segment_errors_name_the_fields_the_sender_used(api: str) -> None:
    def track(event: str, **fields: object) -> dict[str, object]:
        return {"type": "track", "event": event, "userId": "u1", **fields}

    cases = {
        "properties.product_id": track("Product Added", properties={"price": 3}),
        "properties.price": track("Product Viewed", properties={"product_id": "p",
                                                                "price": "abc"}),
        "userId": track("Session Started", userId="u" * 201),
        "messageId": track("Session Started", messageId={"not": "text"}),
        "properties.score": track("NPS Answered", properties={"score": 11}),
        "properties.revenue": track("Order Completed", properties={"order_id": "o",
                                                                   "revenue": "x"}),
        "properties.products[1].product_id": track(
            "Order Completed", properties={"order_id": "o", "products": [
                {"product_id": "p"}, {"price": 2}]}),
    }
    for field, message in cases.items():
        response = post(api, "/v1/track", json.dumps(message))
        assert response.status_code == 400, (field, response.text)
        assert response.json()["field"] == field, (field, response.json())
        assert response.json()["detail"].startswith(field + ":")


def test_gzip_is_the_encoding_taken_and_others_are_named(api: str) -> None:
    event = '{"type":"track","event":"Session Started","userId":"u1","messageId":"enc-1"}'
    zipped = httpx.post(api + "/v1/track", content=gzip.compress(event.encode()),
                        auth=(WRITE_KEY, ""), headers={"Content-Encoding": "x-gzip"})
    assert zipped.status_code == 200, zipped.text
    for encoding in ("deflate", "br"):
        refused = post(api, "/v1/track", event, **{"Content-Encoding": encoding})
        assert refused.status_code == 415, refused.text
        assert repr(encoding) in refused.json()["detail"]


def test_bodies_of_other_routes_are_limited_before_they_are_read(
        api: str, settings: Settings) -> None:
    limit = settings.api.max_batch_bytes
    ids = [f"client-{i:07d}" for i in range(limit // 10)]
    body = json.dumps({"client_ids": ids}).encode()
    assert len(body) > limit
    for headers in ({}, read_headers()):  # refused before the key too
        declared = httpx.post(api + "/v1/segments/lifecycle:new/contains", content=body,
                              headers=headers)
        assert declared.status_code == 413, declared.text
        assert str(limit) in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(body), 65_536):
            yield body[start:start + 65_536]

    streamed = httpx.post(api + "/v1/segments/lifecycle:new/contains", content=chunks(),
                          headers=read_headers())
    assert streamed.status_code == 413, streamed.text
    touch = httpx.post(api + "/v1/profiles/c1/touches", content=body,
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert touch.status_code == 413


def test_invalid_bodies_are_not_echoed_whole(api: str) -> None:
    ids = ["x" * 205] * 1000 + ["y" * 206]  # the last is too long
    response = httpx.post(api + "/v1/segments/lifecycle:new/contains",
                          json={"client_ids": ids}, headers=read_headers())
    assert response.status_code == 422
    assert len(response.content) < 2_000, len(response.content)
    assert response.json()["detail"][0]["loc"][-1] == 1000 or "1000" in response.text


def test_contains_and_touches_name_text_no_store_can_keep(api: str) -> None:
    contains = httpx.post(api + "/v1/segments/lifecycle:new/contains", headers={
        **read_headers(), "Content-Type": "application/json"},
        content=('{"client_ids":["ann","x' + HALF_EMOJI + '"]}').encode())
    assert contains.status_code == 422, contains.text  # was a 500: the echo failed to encode
    assert contains.json()["detail"][0]["loc"] == ["body", "client_ids", 1]
    touch = httpx.post(api + "/v1/profiles/c1/touches", headers={
        "Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        content=('{"occasion":"call","status":"done","comment":"hi ' + HALF_EMOJI
                 + '"}').encode())
    assert touch.status_code == 400, touch.text
    assert touch.json()["field"] == "comment"
    unknown = httpx.post(api + "/v1/profiles/c1/touches", headers={
        "Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
        content=('{"occasion":"call","status":"done","x' + HALF_EMOJI + '":1}').encode())
    assert unknown.status_code == 400, unknown.text  # was a 500
    assert unknown.json()["field"] == "x\\ud83d"


def test_a_json_body_without_a_content_type_is_read_as_json(api: str) -> None:
    response = httpx.post(api + "/v1/segments/lifecycle:new/contains",
                          content=b'{"client_ids":["ann"]}', headers=read_headers())
    assert response.status_code == 200, response.text
    assert response.json() == {"segment": "lifecycle:new", "members": [], "checked": 1}


def test_every_get_answers_head(api: str, settings: Settings) -> None:
    assert post(api, "/v1/events", '{"type":"visit","client_id":"ann"}').status_code == 200
    drain(settings)
    for path in ("/v1/profiles/ann", "/v1/profiles/ann/segments", "/v1/segments",
                 "/healthz"):
        get = httpx.get(api + path, headers=read_headers())
        head = httpx.head(api + path, headers=read_headers())
        assert get.status_code == 200 and head.status_code == 200, (path, head)
        assert head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"], path
    missing = httpx.head(api + "/v1/profiles/nobody", headers=read_headers())
    assert missing.status_code == 404 and missing.content == b""
    # on one kept-alive connection, as a load balancer's checks: a HEAD leaves it usable
    # (the server expected the body it had dropped, logged an error and closed it)
    with httpx.Client(headers=read_headers()) as connection:
        for path in ("/healthz", "/v1/profiles/ann",
                     "/v1/segments/lifecycle:prospect/members.csv"):
            assert connection.head(api + path).status_code == 200, path
            again = connection.get(api + path)
            assert again.status_code == 200 and again.content, path
    metrics = httpx.get(api + "/metrics").text  # labelled by route, as GET is
    assert 'method="HEAD",route="/v1/segments",status="200"' in metrics
    assert 'method="HEAD",route="unmatched"' not in metrics


def test_an_endpoint_has_one_metrics_label_on_either_read_path(api: str) -> None:
    for path in ("/v1/profiles/nobody", "/v1/profiles/", "/v1/profiles/nobody/touches"):
        httpx.get(api + path, headers=read_headers())
    text = httpx.get(api + "/metrics").text
    assert "{client_id:path}" not in text
    assert 'route="/v1/profiles/{client_id}"' in text
    assert 'route="/v1/profiles/{client_id}/touches"' in text


def test_an_empty_client_id_is_named(api: str) -> None:
    response = httpx.get(api + "/v1/profiles/", headers=read_headers())
    assert response.status_code == 404 and "no client id" in response.json()["detail"]


def test_admin_keys_are_sent_as_bearer_on_every_route(api: str) -> None:
    basic = httpx.delete(api + "/v1/profiles/c1", auth=(ADMIN_KEY, ""))
    assert basic.status_code == 401 and "Bearer" in basic.json()["detail"]
    assert httpx.get(api + "/v1/erasures/e1", auth=(ADMIN_KEY, "")).status_code == 401
    touch = httpx.post(api + "/v1/profiles/c1/touches", auth=(ADMIN_KEY, ""),
                       json={"occasion": "call", "status": "done"})
    assert touch.status_code == 401


def test_the_path_finder_names_the_first_bad_value() -> None:
    assert unencodable({"a": [1, {"b": 2**64}]}) == (
        "a[1].b", "integer outside the 64-bit range [-9223372036854775808, "
                  "18446744073709551615]")
    assert unencodable({"a": 2**64 - 1, "b": -(2**63), "c": [True, 1.5, None]}) is None
    assert unencodable("ok\ud83d")[0] == "(value)"  # type: ignore[index]
    assert unencodable({"a": [1.5, float("-inf")]}) == ("a[1]", "number out of range")
