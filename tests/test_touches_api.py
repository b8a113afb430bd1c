"""Manual touches over real HTTP and the dataflow: recorded through the event stream, in
the ledger and the trigger stream, counted for dedup and caps like automatic triggers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from config.settings import Settings
from features.codec import encode_state
from features.events import format_time
from features.state import ClientState
from features.triggers import trigger_id
from sinks.keys import KeyLayout
from tests.support import (
    ADMIN_KEY,
    READ_KEY,
    WRITE_KEY,
    all_triggers,
    api_server,
    drain,
    make_settings,
    post_events,
    read_headers,
)

POLICY = {"quiet_hours": None}


@pytest.fixture
def settings(redis_url: str, key_prefix: str) -> Settings:
    return make_settings(redis_url, key_prefix, policy=POLICY)


@pytest.fixture
def api(settings: Settings) -> Iterator[str]:
    with api_server(settings) as url:
        yield url


def post_touch(api: str, client_id: str, body: dict[str, Any],
               key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{api}/v1/profiles/{client_id}/touches", json=body, headers=headers,
                      timeout=10)


def touches(api: str, client_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api}/v1/profiles/{client_id}/touches", headers=read_headers())
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["touches"]
    return result


def test_a_manual_touch_is_recorded_and_listed(api: str, settings: Settings,
                                              redis_client: redis.Redis) -> None:
    body = {"occasion": "renewal_call", "key": "2025", "channel": "phone", "status": "done",
            "comment": "renews in March", "author": "mia@example.com"}
    response = post_touch(api, "acme-1", body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["touch_id"] == trigger_id("acme-1", "renewal_call", "2025")
    assert answer["status"] == "accepted" and answer["key"] == "2025"
    registry = CollectorRegistry()
    drain(settings, registry)
    [listed] = touches(api, "acme-1")
    assert listed["trigger_id"] == answer["touch_id"]
    assert (listed["type"], listed["key"], listed["status"], listed["channel"],
            listed["source"]) == ("renewal_call", "2025", "done", "phone", "manual")
    assert listed["payload"] == {"comment": "renews in March", "author": "mia@example.com"}
    [entry] = all_triggers(redis_client, settings)
    assert entry["trigger_id"] == answer["touch_id"] and entry["status"] == "done"
    assert registry.get_sample_value("crmflow_triggers_raised_total",
                                     {"type": "other", "status": "done"}) == 1


def test_a_resent_touch_is_acknowledged_once(api: str, settings: Settings,
                                             redis_client: redis.Redis) -> None:
    body = {"occasion": "renewal_call", "status": "skipped", "touch_id": "crm-77"}
    first = post_touch(api, "acme-2", body).json()
    again = post_touch(api, "acme-2", body).json()
    assert (first["status"], again["status"]) == ("accepted", "duplicate")
    assert first["touch_id"] == again["touch_id"] == trigger_id("acme-2", "renewal_call", "")
    other = post_touch(api, "acme-2", {**body, "touch_id": "crm-78", "status": "done"})
    assert other.json()["status"] == "accepted"  # another record of the same occasion...
    drain(settings)
    assert [t["status"] for t in touches(api, "acme-2")] == ["skipped"]  # ...is not recorded


def test_a_manual_touch_counts_for_dedup_and_the_cap(api: str, settings: Settings) -> None:
    now = time.time()
    # the manager greeted the client in person: the automatic welcome is not raised
    assert post_touch(api, "ann", {"occasion": "welcome", "status": "done",
                                   "touched_at": now - 600}).status_code == 202
    events = [{"event_id": "r", "type": "registered", "client_id": "ann",
               "event_time": now - 300, "traits": {"email": "ann@example.com"}},
              {"event_id": "n", "type": "nps_answer", "client_id": "ann",
               "event_time": now - 200, "nps_score": 7},
              {"event_id": "m", "type": "nps_answer", "client_id": "ann",
               "event_time": now - 100, "nps_score": 10}]
    assert post_events(api, events).status_code == 200
    drain(settings)
    listed = [(t["type"], t["source"], t["status"], t["reason"]) for t in touches(api, "ann")]
    # default cap: 2 marketing sends a day; the manual touch was one of them
    assert listed == [("nps_promoter_referral", "auto", "suppressed", "frequency_cap"),
                      ("nps_passive_offer", "auto", "sent", None),
                      ("welcome", "manual", "done", None)]


def test_touch_auth_and_validation(api: str) -> None:
    good = {"occasion": "renewal_call", "status": "done"}
    assert post_touch(api, "c1", good, key=None).status_code == 401
    for public_or_read in (WRITE_KEY, READ_KEY):  # the write key is public in browsers
        assert post_touch(api, "c1", good, key=public_or_read).status_code == 403  # scope
    assert post_touch(api, "c1", good, key="not-a-key").status_code == 401
    sneaked = post_events(api, [{"type": "touch_recorded", "client_id": "c1",
                                 "properties": {"occasion": "welcome", "status": "done"}}])
    assert sneaked.status_code == 400 and "admin key" in sneaked.text
    for body, field in [({"status": "done"}, "occasion"),
                        ({**good, "occasion": "Renewal Call"}, "occasion"),
                        ({**good, "status": "maybe"}, "status"),
                        ({**good, "key": 5}, "key"),
                        ({**good, "channel": "by phone"}, "channel"),
                        ({**good, "touched_at": "yesterday"}, "touched_at"),
                        ({**good, "touched_at": time.time() + 86400}, "touched_at"),
                        ({**good, "touch_id": ""}, "touch_id"),
                        ({**good, "outcome": "ok"}, "outcome")]:
        response = post_touch(api, "c1", body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["field"] == field, response.text
        assert response.json()["detail"].startswith(field + ":")
    assert post_touch(api, "c1", ["not", "an", "object"]).status_code == 422  # type: ignore[arg-type]
    # the key is checked before the body is read: a stranger's malformed JSON is refused as
    # a stranger's request, not parsed and answered 422
    for key, expected in ((None, 401), ("not-a-key", 401), (READ_KEY, 403), (ADMIN_KEY, 422)):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        malformed = httpx.post(f"{api}/v1/profiles/c1/touches", content=b"{not json",
                               headers=headers, timeout=10)
        assert malformed.status_code == expected, (key, malformed.text)
    surrogate = httpx.post(f"{api}/v1/profiles/c1/touches", headers={
        "Authorization": f"Bearer {ADMIN_KEY}"},
        content=b'{"occasion": "renewal_call", "status": "done", "comment": "\\ud83d"}')
    assert surrogate.status_code == 400 and surrogate.json()["field"] == "comment", (
        surrogate.text)


def test_touch_for_an_anonymous_visitor(api: str, settings: Settings) -> None:
    response = post_touch(api, "anon:cookie-9", {"occasion": "chat_help", "status": "done"})
    assert response.status_code == 202
    assert response.json()["client_id"] == "anon:cookie-9"
    drain(settings)
    assert [t["type"] for t in touches(api, "anon:cookie-9")] == ["chat_help"]


def test_touch_for_a_client_id_with_a_slash(api: str, settings: Settings) -> None:
    response = post_touch(api, "shop/42", {"occasion": "renewal_call", "status": "done"})
    assert response.status_code == 202, response.text
    assert response.json()["touch_id"] == trigger_id("shop/42", "renewal_call", "")
    drain(settings)
    assert [t["type"] for t in touches(api, "shop/42")] == ["renewal_call"]


def test_touches_follow_the_events_time_window(redis_url: str, key_prefix: str,
                                               redis_client: redis.Redis) -> None:
    """touched_at is held to api.max_past_age and api.out_of_window like an event's time,
    and a time no float can hold is a 400 naming it."""
    good = {"occasion": "renewal_call", "status": "done"}
    old = time.time() - 40 * 86400
    window = {"max_past_age": "30d", "max_future_skew": "1h"}
    rejecting = make_settings(redis_url, key_prefix, policy=POLICY,
                              api={**window, "out_of_window": "reject"})
    with api_server(rejecting) as url:
        for touched_at, problem in [(old, "more than 30d in the past"),
                                    (time.time() + 86400, "more than 1h in the future"),
                                    (10 ** 400, "time out of range")]:
            response = post_touch(url, "c1", {**good, "touched_at": touched_at})
            assert response.status_code == 400, response.text
            assert response.json()["field"] == "touched_at"
            assert problem in response.json()["detail"]
    clamping = make_settings(redis_url, key_prefix + "c", policy=POLICY,
                             api={**window, "out_of_window": "clamp"})
    with api_server(clamping) as url:
        before = time.time()
        response = post_touch(url, "c1", {**good, "touched_at": old})
        assert response.status_code == 202, response.text
    [(_, fields)] = [entry for stream in KeyLayout.from_settings(clamping).all_event_streams()
                     for entry in redis_client.xrange(stream)]
    stored = json.loads(fields[b"e"])
    assert abs(stored["event_time"] - (before - 30 * 86400)) < 5
    assert stored["properties"]["clamped_event_time"] == format_time(old)


def test_a_merged_anonymous_id_reads_and_records_the_clients_touches(
        api: str, settings: Settings) -> None:
    now = time.time()
    sent = post_events(api, [
        {"event_id": "v1", "type": "product_view", "anonymous_id": "u1",
         "event_time": now - 90, "products": [{"product_id": "p1"}]},
        {"event_id": "i1", "type": "identify", "client_id": "c3", "anonymous_id": "u1",
         "event_time": now - 80}])
    assert sent.status_code == 200, sent.text
    drain(settings)
    response = post_touch(api, "anon:u1", {"occasion": "call", "status": "done"})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["client_id"] == "c3"
    assert answer["touch_id"] == trigger_id("c3", "call", "")
    drain(settings)
    by_client = touches(api, "c3")
    assert [t["trigger_id"] for t in by_client if t["type"] == "call"] == [answer["touch_id"]]
    merged = httpx.get(f"{api}/v1/profiles/anon:u1/touches", headers=read_headers())
    assert merged.status_code == 200, merged.text
    assert merged.json()["client_id"] == "c3" and merged.json()["requested_id"] == "anon:u1"
    assert merged.json()["touches"] == by_client
    unknown = httpx.get(f"{api}/v1/profiles/anon:nobody/touches", headers=read_headers())
    assert unknown.status_code == 404


def test_a_cookies_touches_from_before_its_merge_are_on_the_clients_card(
        api: str, settings: Settings) -> None:
    now = time.time()
    assert post_events(api, [
        {"event_id": "v2", "type": "product_view", "anonymous_id": "u2",
         "event_time": now - 300, "products": [{"product_id": "p1"}]}]).status_code == 200
    drain(settings)
    chat = post_touch(api, "anon:u2", {"occasion": "chat_help", "status": "done",
                                       "touched_at": now - 200})
    assert chat.status_code == 202 and chat.json()["client_id"] == "anon:u2"
    drain(settings)
    assert post_events(api, [
        {"event_id": "i2", "type": "identify", "client_id": "c4", "anonymous_id": "u2",
         "event_time": now - 100}]).status_code == 200
    for _ in range(3):  # the link request, then the merge, are the dataflow's own entries
        drain(settings)
    listed = touches(api, "c4")
    assert [(t["type"], t["client_id"]) for t in listed] == [("chat_help", "anon:u2")]
    assert touches(api, "anon:u2") == listed
    timeline = httpx.get(f"{api}/v1/profiles/c4/timeline", headers=read_headers()).json()
    assert [(e["kind"], e["type"], e.get("alias")) for e in timeline["entries"]] == [
        ("event", "identify", None), ("touch", "chat_help", "anon:u2"),
        ("event", "product_view", "anon:u2")]


def test_a_tombstone_read_before_its_client_exists_shows_no_handed_over_cookies_history(
        api: str, settings: Settings, redis_url: str) -> None:
    """A cookie's tombstone read while its client is not there (the merge not committed yet,
    or the client's erasure on its way) answers for itself: the aliases it keeps were
    handed over to be erased with it, and their touches and events are another history."""
    now = time.time()
    assert post_events(api, [
        {"event_id": "v3", "type": "product_view", "anonymous_id": "u3",
         "event_time": now - 300, "products": [{"product_id": "p1"}]}]).status_code == 200
    drain(settings)
    assert post_touch(api, "anon:u3", {"occasion": "chat_help", "status": "done",
                                       "touched_at": now - 200}).status_code == 202
    drain(settings)
    layout = KeyLayout.from_settings(settings)
    tombstone = ClientState(first_seen_at=now - 50, last_seen_at=now - 50, updated_at=now - 50,
                            merged_into="c-not-there", aliases=("anon:u3",))
    with redis.Redis.from_url(redis_url) as client:
        client.hset(layout.state(layout.bucket_of("anon:u4")), "anon:u4",
                    encode_state(tombstone))
    assert touches(api, "anon:u4") == []
    timeline = httpx.get(f"{api}/v1/profiles/anon:u4/timeline", headers=read_headers())
    assert timeline.status_code == 200, timeline.text
    assert timeline.json()["entries"] == []
    assert [t["type"] for t in touches(api, "anon:u3")] == ["chat_help"]
