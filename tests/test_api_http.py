"""The API over real HTTP: ingest (Segment and native), auth, errors, profiles, health."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from starlette.types import Receive, Scope, Send

from api.app import create_app
from api.fast_reads import ProfileFastPath
from config.settings import Settings
from sinks.keys import KeyLayout
from tests.support import (
    READ_KEY,
    WRITE_KEY,
    all_triggers,
    api_server,
    drain,
    make_settings,
    read_headers,
)


@pytest.fixture
def settings(redis_url: str, key_prefix: str) -> Settings:
    return make_settings(redis_url, key_prefix, api={"cors_origins": ["https://shop.example"]})


@pytest.fixture
def api(settings: Settings) -> Iterator[str]:
    with api_server(settings) as url:
        yield url


def _stream_entries(client: redis.Redis, settings: Settings) -> list[dict[str, object]]:
    layout = KeyLayout.from_settings(settings)
    out = []
    for stream in layout.all_event_streams():
        out += [json.loads(f[b"e"]) for _, f in client.xrange(stream)]
    return out


def test_segment_batch_is_stored_and_mapped(api: str, settings: Settings,
                                            redis_client: redis.Redis) -> None:
    batch = {"batch": [
        {"type": "identify", "userId": "u1", "messageId": "m1", "traits": {"email": "a@b.c"},
         "timestamp": "2026-01-01T10:00:00Z"},
        {"type": "track", "event": "Product Viewed", "userId": "u1", "messageId": "m2",
         "properties": {"product_id": "p1", "price": 9.5, "category": "toys"},
         "timestamp": "2026-01-01T10:01:00Z"},
        {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m3",
         "properties": {"order_id": "o1", "total": 20, "currency": "EUR",
                        "products": [{"product_id": "p1", "price": 10, "quantity": 2}]},
         "timestamp": "2026-01-01T10:02:00Z"},
        {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "m4"},
        {"type": "track", "event": "Something Custom", "userId": "u1", "messageId": "m5"},
    ]}
    response = httpx.post(api + "/v1/batch", json=batch, auth=(WRITE_KEY, ""))
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "accepted": 5, "duplicates": 0, "rejected": [],
                               "rejected_count": 0}
    stored = {e["event_id"]: e for e in _stream_entries(redis_client, settings)}
    assert stored["m1"]["type"] == "identify"
    assert stored["m2"]["type"] == "product_view"
    assert stored["m2"]["products"][0]["product_id"] == "p1"
    assert stored["m3"]["type"] == "order_placed"
    assert stored["m3"]["order"] == {"order_id": "o1", "total": 20.0, "currency": "EUR",
                                     "items": [{"product_id": "p1", "price": 10.0,
                                                "quantity": 2}]}
    assert stored["m4"]["type"] == "page_view" and stored["m4"]["anonymous_id"] == "a1"
    assert stored["m5"]["type"] == "custom" and stored["m5"]["name"] == "Something Custom"


def test_bad_items_are_rejected_and_good_ones_kept(api: str, settings: Settings,
                                                   redis_client: redis.Redis) -> None:
    batch = {"batch": [
        {"type": "track", "event": "Product Added", "userId": "u1", "messageId": "ok1",
         "properties": {"product_id": "p1", "price": 3}},
        {"type": "track", "event": "Product Added", "userId": "u1", "messageId": "bad1",
         "properties": {"price": 3}},
        {"type": "track", "event": "Order Completed", "messageId": "bad2",
         "properties": {"order_id": "o1"}},
        {"type": "track", "event": "Order Completed", "userId": "u2", "messageId": "bad3",
         "properties": {"order_id": "o1", "total": "abc"}},
        {"type": "track", "userId": "u2", "messageId": "bad4",
         "event": "Product Viewed", "properties": {"product_id": "p"},
         "timestamp": "2999-01-01T00:00:00Z"},
    ]}
    response = httpx.post(api + "/v1/batch", json=batch, auth=(WRITE_KEY, ""))
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 1
    errors = {r["messageId"]: r for r in body["rejected"]}
    assert set(errors) == {"bad1", "bad2", "bad3", "bad4"}
    # named as the Segment message names them, not as the canonical event does
    assert errors["bad1"]["field"] == "properties.product_id"
    assert errors["bad2"]["field"] == "userId"
    assert errors["bad2"]["error"] == "userId: userId or anonymousId is required"
    assert errors["bad3"]["field"] == "properties.total"
    assert body["rejected_count"] == 4
    assert "out of range" in errors["bad4"]["error"] or "future" in errors["bad4"]["error"]
    assert [e["event_id"] for e in _stream_entries(redis_client, settings)] == ["ok1"]


def test_all_bad_batch_is_400_and_single_track_error_names_field(api: str) -> None:
    response = httpx.post(api + "/v1/batch", json={"batch": [{"type": "bogus"}]},
                          auth=(WRITE_KEY, ""))
    assert response.status_code == 400
    assert "unsupported message type" in response.json()["rejected"][0]["error"]
    response = httpx.post(api + "/v1/track", json={"event": "Product Added", "userId": "u"},
                          auth=(WRITE_KEY, ""))
    assert response.status_code == 400
    assert response.json()["field"] == "properties.product_id"


def test_malformed_and_oversized_bodies(api: str) -> None:
    auth = (WRITE_KEY, "")
    response = httpx.post(api + "/v1/batch", content=b"{not json", auth=auth)
    assert response.status_code == 400 and "malformed JSON" in response.json()["detail"]
    response = httpx.post(api + "/v1/batch", content=b"\xff\xfe\x00garbage", auth=auth)
    assert response.status_code == 400
    big = {"batch": [{"type": "track", "event": "x", "userId": "u",
                      "properties": {"pad": "x" * 600_000}}]}
    response = httpx.post(api + "/v1/batch", json=big, auth=auth)
    assert response.status_code == 413
    one = {"type": "track", "event": "x", "userId": "u", "properties": {"pad": "x" * 40_000}}
    response = httpx.post(api + "/v1/track", json=one, auth=auth)
    assert response.status_code == 413
    deep = '{"events": [' + "[" * 100_000 + "]" * 100_000 + "]}"
    response = httpx.post(api + "/v1/events", content=deep.encode(), auth=auth)
    assert response.status_code == 400


def test_gzip_bodies_are_accepted(api: str) -> None:
    body = json.dumps({"batch": [{"type": "track", "event": "Session Started",
                                  "userId": "gz", "messageId": "g1"}]}).encode()
    response = httpx.post(api + "/v1/batch", content=gzip.compress(body), auth=(WRITE_KEY, ""),
                          headers={"Content-Encoding": "gzip",
                                   "Content-Type": "application/json"})
    assert response.status_code == 200 and response.json()["accepted"] == 1


def test_auth(api: str) -> None:
    message = {"type": "track", "event": "Session Started", "userId": "u"}
    assert httpx.post(api + "/v1/track", json=message).status_code == 401
    assert httpx.post(api + "/v1/track", json=message, auth=("nope", "")).status_code == 401
    # a valid key of another scope: 403
    assert httpx.post(api + "/v1/track", json=message, auth=(READ_KEY, "")).status_code == 403
    assert httpx.get(api + "/v1/profiles/u").status_code == 401
    assert httpx.get(api + "/v1/profiles/u",
                     headers={"Authorization": f"Bearer {WRITE_KEY}"}).status_code == 403


def test_duplicates_are_acknowledged_once(api: str, settings: Settings,
                                          redis_client: redis.Redis) -> None:
    event = {"event_id": "dup-1", "type": "visit", "client_id": "c1"}
    for _ in range(3):
        response = httpx.post(api + "/v1/events", json=event, auth=(WRITE_KEY, ""))
        assert response.status_code == 200
    assert response.json()["duplicates"] == 1
    assert len(_stream_entries(redis_client, settings)) == 1


def test_one_id_in_two_clients_events_is_two_events(api: str, settings: Settings,
                                                      redis_client: redis.Redis) -> None:
    """An id is unique within its client, not across clients (a shop's order numbers, a
    touch id): two clients' events with one id are both stored, in one partition or two."""
    layout = KeyLayout.from_settings(settings)
    clients = [f"c{n}" for n in range(40)]
    first = clients[0]
    same = next(c for c in clients[1:] if layout.partition_of_client(c) ==
                layout.partition_of_client(first))
    other = next(c for c in clients[1:] if layout.partition_of_client(c) !=
                 layout.partition_of_client(first))
    for client_id in (first, same, other, first):
        response = httpx.post(api + "/v1/events", auth=(WRITE_KEY, ""),
                              json={"event_id": "shared-1", "type": "visit",
                                    "client_id": client_id})
        assert response.status_code == 200, response.text
    assert response.json()["duplicates"] == 1  # the first client's, resent
    stored = sorted(str(e["client_id"]) for e in _stream_entries(redis_client, settings))
    assert stored == sorted([first, same, other])


def test_profile_and_touches_after_processing(api: str, settings: Settings,
                                              redis_client: redis.Redis) -> None:
    now = time.time()
    events = [
        {"event_id": "r1", "type": "registered", "client_id": "c9", "event_time": now - 60,
         "traits": {"email": "c9@example.com", "city": "Oslo"}},
        {"event_id": "v1", "type": "product_view", "client_id": "c9", "event_time": now - 50,
         "products": [{"product_id": "p7", "price": 4}]},
        {"event_id": "o1", "type": "order_placed", "client_id": "c9", "event_time": now - 40,
         "order": {"order_id": "o-1", "total": 12.5, "currency": "EUR"}},
    ]
    response = httpx.post(api + "/v1/events", json=events, auth=(WRITE_KEY, ""))
    assert response.json()["accepted"] == 3
    drain(settings)
    profile = httpx.get(api + "/v1/profiles/c9", headers=read_headers())
    assert profile.status_code == 200
    body = profile.json()
    assert body["client_id"] == "c9"
    assert body["traits"]["city"] == "Oslo"
    assert body["features"]["orders_count"] == 1
    assert body["features"]["monetary_total"] == 12.5
    assert body["features"]["recently_viewed"] == ["p7"]
    assert body["updated_at"] is not None
    touches = httpx.get(api + "/v1/profiles/c9/touches", headers=read_headers()).json()
    assert [t["type"] for t in touches["touches"]] == ["order_confirmation", "welcome"]
    assert len(all_triggers(redis_client, settings)) == 2
    missing = httpx.get(api + "/v1/profiles/nobody", headers=read_headers())
    assert missing.status_code == 404 and "nobody" in missing.json()["detail"]
    assert httpx.get(api + "/v1/profiles/nobody/touches",
                     headers=read_headers()).status_code == 404


def test_health_readiness_and_metrics(api: str, settings: Settings) -> None:
    assert httpx.get(api + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(api + "/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["dataflow"] == "no heartbeat"
    drain(settings)  # a dataflow run beats the heart
    assert httpx.get(api + "/readyz").status_code == 200
    httpx.post(api + "/v1/batch", json={"batch": [{"type": "bogus"}]}, auth=(WRITE_KEY, ""))
    httpx.post(api + "/v1/events", json={"type": "visit", "client_id": "m"},
               auth=(WRITE_KEY, ""))
    text = httpx.get(api + "/metrics").text
    assert 'crmflow_ingest_events_rejected_total{reason="type",source="segment"} 1.0' in text
    assert 'crmflow_ingest_events_accepted_total{source="native"} 1.0' in text
    assert 'crmflow_http_request_duration_seconds_bucket' in text
    assert 'route="/v1/batch"' in text


def test_analytics_js_from_a_browser(api: str, settings: Settings,
                                     redis_client: redis.Redis) -> None:
    """analytics.js: short routes, text/plain, writeKey in the body, CORS."""
    preflight = httpx.options(api + "/v1/b", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    body = {"writeKey": WRITE_KEY, "sentAt": "2026-01-01T10:00:05Z", "batch": [
        {"type": "track", "event": "Product Viewed", "anonymousId": "cookie-1",
         "messageId": "js-1", "timestamp": "2026-01-01T10:00:00Z",
         "properties": {"product_id": None, "sku": "SKU-9", "price": 3}},
        {"type": "alias", "userId": "u7", "previousId": "cookie-1", "messageId": "js-2"},
        {"type": "group", "userId": "u7", "groupId": "acme", "messageId": "js-3"},
        {"type": "screen", "userId": "u7", "name": "Home", "messageId": "js-4"},
    ]}
    response = httpx.post(api + "/v1/b", content=json.dumps(body),
                          headers={"Content-Type": "text/plain",
                                   "Origin": "https://shop.example"})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 4
    assert response.headers["access-control-allow-origin"] == "https://shop.example"
    single = httpx.post(api + "/v1/t", content=json.dumps(
        {"writeKey": WRITE_KEY, "type": "track", "event": "Session Started", "userId": "u7",
         "messageId": "js-5"}), headers={"Content-Type": "text/plain"})
    assert single.status_code == 200, single.text
    stored = {e["event_id"]: e for e in _stream_entries(redis_client, settings)}
    view = stored["js-1"]
    assert view["products"][0]["product_id"] == "SKU-9"
    # the device clock was 5 s behind by its own sentAt: the event time is corrected
    received = view["received_at"]
    assert abs(view["event_time"] - (received - 5)) < 0.01
    assert stored["js-2"]["name"] == "alias" and stored["js-3"]["name"] == "group"
    assert stored["js-4"]["type"] == "page_view"
    wrong = httpx.post(api + "/v1/t", content=json.dumps(
        {"writeKey": "nope", "type": "track", "event": "x", "userId": "u"}))
    assert wrong.status_code == 401


def test_repeats_without_ids_are_distinct_but_resends_are_not(
        api: str, settings: Settings, redis_client: redis.Redis) -> None:
    event = {"type": "cart_add", "client_id": "rep",
             "products": [{"product_id": "mug", "price": 5}]}
    for _ in range(2):  # the same action twice, no id, no time: two events
        assert httpx.post(api + "/v1/events", json=event,
                          auth=(WRITE_KEY, "")).json()["duplicates"] == 0
        time.sleep(0.01)
    stamped = {**event, "event_time": "2026-01-01T00:00:00Z"}
    results = [httpx.post(api + "/v1/events", json=stamped, auth=(WRITE_KEY, "")).json()
               for _ in range(2)]  # a resend of a stamped event without id: deduplicated
    assert [r["duplicates"] for r in results] == [0, 1]
    assert len(_stream_entries(redis_client, settings)) == 3


def test_metric_labels_stay_bounded(api: str) -> None:
    for method in ("PROPFIND", "LOCK"):  # methods the HTTP parser accepts
        httpx.request(method, api + "/v1/batch")
    text = httpx.get(api + "/metrics").text
    assert "PROPFIND" not in text and 'method="OTHER"' in text
    # a field the sender names, holding a value no store can keep, is refused by its name:
    # the name is not a label (the write key is public)
    for n in range(3):
        for path, body in (("/v1/events", {"type": "visit", "client_id": "c", f"k{n}": 2**70}),
                           ("/v1/track", {"type": "track", "event": "X", "userId": "c",
                                          f"s{n}": float("inf") if n else "\ud800"})):
            raw = json.dumps(body).replace("Infinity", "1e400").encode()
            answer = httpx.post(api + path, content=raw, auth=(WRITE_KEY, ""))
            assert answer.status_code == 400, answer.text
    text = httpx.get(api + "/metrics").text
    assert 'reason="k0"' not in text and 'reason="s1"' not in text
    assert 'crmflow_ingest_events_rejected_total{reason="other",source="native"} 3.0' in text
    assert 'crmflow_ingest_events_rejected_total{reason="other",source="segment"} 3.0' in text


def test_client_ids_with_slashes_can_be_read(api: str, settings: Settings) -> None:
    httpx.post(api + "/v1/events", json={"event_id": "s1", "type": "visit",
                                         "client_id": "shop/42"}, auth=(WRITE_KEY, ""))
    drain(settings)
    for path in ("/v1/profiles/shop%2F42", "/v1/profiles/shop/42"):
        response = httpx.get(api + path, headers=read_headers())
        assert response.status_code == 200 and response.json()["client_id"] == "shop/42"
    touches = httpx.get(api + "/v1/profiles/shop%2F42/touches", headers=read_headers())
    assert touches.status_code == 200 and touches.json()["client_id"] == "shop/42"


def test_client_ids_with_commas_are_read_whole_by_id(api: str, settings: Settings) -> None:
    """`?ids=` splits on commas; `?id=` takes each id whole, so `smith,john` is not read as
    the clients `smith` and `john` (the console's card of `smith,john` showed `smith`)."""
    events = [{"event_id": f"k{n}", "type": "identify", "client_id": client,
               "traits": {"city": city}}
              for n, (client, city) in enumerate([("smith", "Smithtown"),
                                                   ("smith,john", "CommaCity"),
                                                   ("x/segments", "Slashville")])]
    assert httpx.post(api + "/v1/events", json=events, auth=(WRITE_KEY, "")).status_code == 200
    drain(settings)
    whole = httpx.get(api + "/v1/profiles", params=[("id", "smith,john"), ("id", "x/segments")],
                      headers=read_headers()).json()
    assert [(p["client_id"], p["traits"]["city"]) for p in whole["profiles"]] == [
        ("smith,john", "CommaCity"), ("x/segments", "Slashville")]
    assert whole["missing"] == []
    both = httpx.get(api + "/v1/profiles", params={"ids": "smith,nobody", "id": "smith,john"},
                     headers=read_headers()).json()
    assert [p["client_id"] for p in both["profiles"]] == ["smith", "smith,john"]
    assert both["missing"] == ["nobody"]
    none = httpx.get(api + "/v1/profiles", params={"id": ""}, headers=read_headers())
    assert none.status_code == 422 and "at least one client id" in none.text


def test_the_fast_read_path_answers_as_the_fastapi_route(
        redis_url: str, key_prefix: str) -> None:
    now = time.time()
    events = [{"event_id": "f1", "type": "registered", "client_id": "fast/1",
               "event_time": now - 60, "traits": {"email": "f@example.com"}},
              {"event_id": "f2", "type": "order_placed", "client_id": "fast/1",
               "event_time": now - 30, "order": {"order_id": "o", "total": 7.5}}]
    answers = {}
    for fast in (True, False):
        settings = make_settings(redis_url, key_prefix, api={"fast_reads": fast})
        with api_server(settings) as url:
            if fast:
                httpx.post(url + "/v1/events", json=events, auth=(WRITE_KEY, ""))
                drain(settings)
            answers[fast] = [httpx.get(url + path, headers=headers) for path, headers in (
                ("/v1/profiles/fast%2F1", read_headers()),
                ("/v1/profiles/nobody", read_headers()),
                ("/v1/profiles/fast%2F1", {"Authorization": f"Bearer {WRITE_KEY}"}),
                ("/v1/profiles/fast%2F1", {}))]
            metrics = httpx.get(url + "/metrics").text
            assert ('crmflow_http_requests_total{method="GET",route="/v1/profiles/{client_id}",'
                    'status="200"} 1.0') in metrics or fast is False
    for fast_answer, route_answer in zip(answers[True], answers[False], strict=True):
        assert fast_answer.status_code == route_answer.status_code
        fast_body, route_body = fast_answer.json(), route_answer.json()
        for body in (fast_body, route_body):  # computed at read time: a moment apart
            body.get("features", {}).pop("recency_days", None)
        assert fast_body == route_body
    assert [a.status_code for a in answers[True]] == [200, 404, 403, 401]


def test_the_fast_path_answers_in_front_of_fastapi(redis_url: str, key_prefix: str) -> None:
    """Not behind FastAPI's per-request telemetry check, Starlette's error middleware or
    FastAPI's body limit (bench/README.md)."""
    settings = make_settings(redis_url, key_prefix)
    app = create_app(settings)
    with api_server(settings, app) as url:
        async def teapot(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 418, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app.middleware_stack = teapot  # whatever reaches FastAPI's stack now answers 418
        assert httpx.get(url + "/v1/profiles/nobody", headers=read_headers()).status_code == 404
        assert httpx.get(url + "/v1/profiles/nobody").status_code == 401
        assert httpx.get(url + "/v1/profiles/nobody/segments",
                         headers=read_headers()).status_code == 418
        assert httpx.get(url + "/healthz").status_code == 418


def test_the_fast_path_is_in_the_middleware_stack_too(redis_url: str, key_prefix: str) -> None:
    """Where OpenTelemetry is configured, reads go through FastAPI (to be traced) and the
    fast path answers from the front of the middleware stack; off, it is nowhere."""
    for fast in (True, False):
        app = create_app(make_settings(redis_url, key_prefix, api={"fast_reads": fast}))
        assert isinstance(app.build_middleware_stack(), ProfileFastPath) is fast


def test_cors_is_closed_unless_sites_are_listed(redis_url: str, key_prefix: str) -> None:
    closed = make_settings(redis_url, key_prefix)
    assert closed.api.cors_origins == []
    with api_server(closed) as url:
        preflight = httpx.options(url + "/v1/b", headers={
            "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 403
        assert "access-control-allow-origin" not in preflight.headers
        posted = httpx.post(url + "/v1/t", headers={"Origin": "https://shop.example"},
                            json={"writeKey": WRITE_KEY, "type": "track", "event": "Visit",
                                  "userId": "u1", "messageId": "cors-1"})
        assert posted.status_code == 200  # stored; the browser just may not read the answer
        assert "access-control-allow-origin" not in posted.headers


def test_bodies_that_are_not_json_text_get_a_clear_400(api: str) -> None:
    cases = {
        b"\xff\xfe{\"type\": \"track\"}": "not valid UTF-8",
        b"[" * 100_000 + b"]" * 100_000: "nested too deeply",
        b"{\"batch\": [": "malformed JSON",
        b"   ": "empty body",
    }
    for body, message in cases.items():
        response = httpx.post(api + "/v1/batch", content=body, auth=(WRITE_KEY, ""),
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 400, body[:20]
        assert message in response.json()["detail"]
    metrics = httpx.get(api + "/metrics").text
    assert 'crmflow_ingest_events_rejected_total{reason="malformed",source="segment"} 4.0' \
        in metrics


def _window_settings(redis_url: str, key_prefix: str, policy: str) -> Settings:
    return make_settings(redis_url, key_prefix, api={
        "max_past_age": "30d", "max_future_skew": "1h", "out_of_window": policy})


def test_timestamps_outside_the_window_are_rejected_or_clamped(
        redis_url: str, key_prefix: str, redis_client: redis.Redis) -> None:
    old = {"type": "track", "event": "Session Started", "userId": "u1", "messageId": "old",
           "timestamp": "2001-01-01T00:00:00Z"}
    future = {**old, "messageId": "future", "timestamp": "2090-01-01T00:00:00Z"}
    rejecting = _window_settings(redis_url, key_prefix, "reject")
    with api_server(rejecting) as url:
        response = httpx.post(url + "/v1/batch", json={"batch": [old, future]},
                              auth=(WRITE_KEY, ""))
        assert response.status_code == 400
        errors = [r["error"] for r in response.json()["rejected"]]
        assert errors == ["timestamp: more than 30d in the past",
                          "timestamp: more than 1h in the future"]
        native = httpx.post(url + "/v1/events", auth=(WRITE_KEY, ""), json=[
            {"event_id": "n-old", "type": "visit", "client_id": "u1",
             "event_time": "2001-01-01T00:00:00Z"}])
        assert native.status_code == 400
        assert [(r["field"], r["error"]) for r in native.json()["rejected"]] == [
            ("event_time", "event_time: more than 30d in the past")]
    clamping = _window_settings(redis_url, key_prefix + "c", "clamp")
    with api_server(clamping) as url:
        before = time.time()
        response = httpx.post(url + "/v1/batch", json={"batch": [old, future]},
                              auth=(WRITE_KEY, ""))
        assert response.status_code == 200 and response.json()["accepted"] == 2
    stored = {e["event_id"]: e for e in _stream_entries(redis_client, clamping)}
    assert stored["old"]["properties"]["clamped_event_time"] == "2001-01-01T00:00:00.000Z"
    assert abs(stored["old"]["event_time"] - (before - 30 * 86400)) < 5
    assert stored["future"]["properties"]["clamped_event_time"] == "2090-01-01T00:00:00.000Z"
    assert abs(stored["future"]["event_time"] - (before + 3600)) < 5


def test_deeply_nested_events_are_refused_and_the_rest_of_the_batch_kept(
        api: str, settings: Settings, redis_client: redis.Redis) -> None:
    """json reads up to ~1000 levels, the event log's encoder only 255: an event nested
    deeper than 64 levels is a 400 naming its field, not a 500 losing the whole batch."""
    def nested(depth: int, leaf: str = "1") -> str:
        return '{"a":' * depth + leaf + "}" * depth

    ok = '{"event_id":"ok-1","type":"visit","client_id":"c1"}'
    for depth in (300, 950):
        deep = (f'{{"event_id":"deep-{depth}","type":"custom","client_id":"c2",'
                f'"properties":{nested(depth)}}}')
        response = httpx.post(api + "/v1/events", content=f'{{"events":[{ok},{deep}]}}',
                              auth=(WRITE_KEY, ""))
        assert response.status_code == 200, response.text
        [rejected] = response.json()["rejected"]
        assert rejected["index"] == 1 and rejected["field"] == "properties"
        assert "nested more than 64 levels" in rejected["error"]
    traits = '[' * 300 + '1' + ']' * 300
    single = httpx.post(api + "/v1/identify", auth=(WRITE_KEY, ""), content=(
        '{"type":"identify","userId":"c3","messageId":"s1","traits":{"x":DEEP}}'
    ).replace("DEEP", traits))
    assert single.status_code == 400 and single.json()["field"] == "traits", single.text
    at_limit = ('{"event_id":"deep-ok","type":"custom","client_id":"c2","properties":DEEP}'
                .replace("DEEP", nested(63)))
    assert httpx.post(api + "/v1/events", content=at_limit,
                      auth=(WRITE_KEY, "")).status_code == 200
    stored = {e["event_id"] for e in _stream_entries(redis_client, settings)}
    assert stored == {"ok-1", "deep-ok"}


def test_integers_beyond_any_float_are_refused_naming_the_field(api: str) -> None:
    big = "1" + "0" * 400
    cases = {
        '{"event_id":"b1","type":"visit","client_id":"c","event_time":BIG}': "event_time",
        '{"event_id":"b2","type":"cart_add","client_id":"c","products":'
        '[{"product_id":"p","price":BIG}]}': "products[0].price",
        '{"event_id":"b3","type":"cart_add","client_id":"c","products":'
        '[{"product_id":"p","quantity":BIG}]}': "products[0].quantity",
        '{"event_id":"b4","type":"nps_answer","client_id":"c","nps_score":BIG}': "nps_score",
        '{"event_id":"b5","type":"order_placed","client_id":"c","order":'
        '{"order_id":"o","total":BIG}}': "order.total",
    }
    for template, field in cases.items():
        response = httpx.post(api + "/v1/events", content=template.replace("BIG", big),
                              auth=(WRITE_KEY, ""))
        assert response.status_code == 400, (field, response.text)
        assert response.json()["field"] == field
    batch = ('{"events":[{"event_id":"ok1","type":"visit","client_id":"c"},'
             '{"event_id":"b6","type":"visit","client_id":"c","event_time":BIG}]}'
             ).replace("BIG", big)
    response = httpx.post(api + "/v1/events", content=batch, auth=(WRITE_KEY, ""))
    assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
    track = httpx.post(api + "/v1/track", auth=(WRITE_KEY, ""), content=(
        '{"type":"track","userId":"c","event":"x","timestamp":BIG}').replace("BIG", big))
    assert track.status_code == 400 and track.json()["field"] == "timestamp", track.text


def test_a_device_clock_reset_to_1970_is_corrected_by_sent_at(
        api: str, settings: Settings, redis_client: redis.Redis) -> None:
    message = {"userId": "clk1", "event": "Product Viewed", "properties": {"product_id": "p"},
               "timestamp": "1970-01-01T00:05:00Z", "sentAt": "1970-01-01T00:05:10Z",
               "messageId": "clk-a"}
    response = httpx.post(api + "/v1/track", json=message, auth=(WRITE_KEY, ""))
    assert response.status_code == 200, response.text
    [stored] = _stream_entries(redis_client, settings)
    assert abs(stored["event_time"] - (stored["received_at"] - 10)) < 0.01
    unsent = {k: v for k, v in message.items() if k != "sentAt"}
    refused = httpx.post(api + "/v1/track", json=unsent, auth=(WRITE_KEY, ""))
    assert refused.status_code == 400 and refused.json()["field"] == "timestamp"
    assert "out of range" in refused.json()["detail"]


def test_numbers_beyond_any_float_are_refused_naming_their_path(api: str) -> None:
    """json reads 1e400 as infinity, which would be stored as null."""
    batch = ('{"events":[{"event_id":"ok1","type":"visit","client_id":"c"},'
             '{"event_id":"inf1","type":"visit","client_id":"c","properties":{"x":[1,1e400]}}]}')
    response = httpx.post(api + "/v1/events", content=batch, auth=(WRITE_KEY, ""))
    assert response.status_code == 200 and response.json()["accepted"] == 1, response.text
    [refused] = response.json()["rejected"]
    assert refused["error"] == "properties.x[1]: number out of range"
    track = httpx.post(api + "/v1/track", auth=(WRITE_KEY, ""), content=(
        '{"userId":"c","event":"Product Added","properties":{"product_id":"p","price":-1e400}}'))
    assert track.status_code == 400 and track.json()["field"] == "properties.price", track.text


def test_a_write_key_that_is_not_text_is_invalid(api: str) -> None:
    """A lone surrogate in the body's writeKey is no key (it was a 500)."""
    for path in ("/v1/track", "/v1/events"):
        response = httpx.post(api + path, content=(
            '{"writeKey":"\\ud800","type":"track","event":"x","userId":"u"}'))
        assert response.status_code == 401, (path, response.text)
    native = httpx.post(api + "/v1/events", json={"writeKey": WRITE_KEY, "type": "visit",
                                                  "client_id": "wk"})
    assert native.status_code == 200, native.text  # the request's key, not an event field


def test_native_fields_are_known_ones_and_a_null_time_is_absent(api: str) -> None:
    """`timestamp` on a native event was dropped and the event stored as of its arrival."""
    sent = {"type": "visit", "client_id": "n1", "timestamp": "2026-01-01T00:00:00Z"}
    response = httpx.post(api + "/v1/events", json=sent, auth=(WRITE_KEY, ""))
    assert response.status_code == 400, response.text
    assert response.json() == {"success": False, "field": "timestamp",
                               "detail": "timestamp: unknown field; did you mean event_time?"}
    typo = httpx.post(api + "/v1/events", json=[{**sent, "eventTime": 1}, {"x" * 40: 1}],
                      auth=(WRITE_KEY, ""))
    assert [r["field"] for r in typo.json()["rejected"]] == ["timestamp", "x" * 40]
    metrics = httpx.get(api + "/metrics").text
    assert 'rejected_total{reason="unknown_field",source="native"} 3.0' in metrics
    null = httpx.post(api + "/v1/events", auth=(WRITE_KEY, ""),
                      json={"type": "visit", "client_id": "n1", "event_time": None})
    assert null.status_code == 200 and null.json()["accepted"] == 1, null.text


@pytest.mark.parametrize("event", [
    {"type": "identity_linked", "client_id": "c1"},
    {"type": "profile_merged", "client_id": "c1", "properties": {"from": 5}},
    {"type": "erasure_requested", "client_id": "c1"},
    {"type": "touch_recorded", "client_id": "c1"},
], ids=lambda event: event["type"])
def test_refused_types_are_refused_before_their_fields_are_checked(
        api: str, event: dict[str, object]) -> None:
    response = httpx.post(api + "/v1/events", json=event, auth=(WRITE_KEY, ""))
    assert response.status_code == 400 and response.json()["field"] == "type", response.text
    reason = "admin key" if event["type"] == "touch_recorded" else "written by crmflow itself"
    assert reason in response.json()["detail"]
    track = httpx.post(api + "/v1/track", json={"event": event["type"], "userId": "c1"},
                       auth=(WRITE_KEY, ""))
    if event["type"] == "touch_recorded":
        assert track.status_code == 400 and track.json()["field"] == "event", track.text
        assert reason in track.json()["detail"]
    else:  # crmflow's own types are no track names: a custom event, as any other name
        assert track.status_code == 200, track.text


def test_a_time_outside_the_window_is_named_as_sent(redis_url: str, key_prefix: str) -> None:
    now = time.time()
    original = {"type": "track", "event": "Session Started", "userId": "u1",
                "messageId": "orig", "originalTimestamp": "2001-01-01T00:00:00Z"}
    skewed = {"type": "track", "event": "Session Started", "userId": "u1", "messageId": "skew",
              "timestamp": now, "sentAt": now - 2 * 86400}  # the device's time is fine
    with api_server(_window_settings(redis_url, key_prefix, "reject")) as url:
        response = httpx.post(url + "/v1/batch", json={"batch": [original, skewed]},
                              auth=(WRITE_KEY, ""))
    assert response.status_code == 400, response.text
    assert [(r["field"], r["error"]) for r in response.json()["rejected"]] == [
        ("originalTimestamp", "originalTimestamp: more than 30d in the past"),
        ("timestamp", "timestamp: more than 1h in the future once corrected by sentAt")]


def test_an_event_over_the_size_limit_is_refused_as_a_whole_not_by_a_field(api: str) -> None:
    """In a Segment message `event` is the event's name: blaming it for an event's size
    pointed the sender at the wrong field."""
    big = {"type": "track", "event": "Viewed", "userId": "c1", "messageId": "m1",
           "properties": {"note": "x" * 40_000}}
    answer = httpx.post(api + "/v1/batch", json={"batch": [big]}, auth=(WRITE_KEY, ""))
    [rejected] = answer.json()["rejected"]
    assert rejected["field"] is None and rejected["messageId"] == "m1"
    assert rejected["error"].startswith("the event is ") and "limit per event is" in (
        rejected["error"])
    text = httpx.get(api + "/metrics").text
    assert 'crmflow_ingest_events_rejected_total{reason="too_large",source="segment"} 1.0' in (
        text)
