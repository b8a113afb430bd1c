"""Erasure on request: `DELETE /v1/profiles/{id}` through real HTTP and the real dataflow
leaves no Redis key that mentions the client, keeps an audit record without personal data,
and a later event starts a fresh profile."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from config.settings import Settings
from dataflows.buckets import EVENT, BucketConfig, BucketLogic
from dataflows.flow import store_factory
from dataflows.metrics import DataflowMetrics
from features.events import parse_event
from features.rules import TriggerRules
from sinks import erasure
from sinks.bucket_store import START, BucketCommit, BucketStore, DeadLetter, Erasure
from sinks.bytewax_sink import BucketCommitSink
from sinks.event_log import encode_event
from sinks.keys import KeyLayout
from tests.support import (
    ADMIN_KEY,
    READ_KEY,
    WRITE_KEY,
    api_server,
    drain,
    make_settings,
    read_headers,
)

CLIENT = "zoe-erase-41"
EMAIL = "zoe.erase41@example.org"
COOKIE = "ck-erase-41"
OTHER = "other-keep-7"
SECRETS = (CLIENT, EMAIL, COOKIE)
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def history(t0: float) -> list[dict[str, Any]]:
    """Segment messages: an anonymous visit and cart, the identify that links it, an order
    of the client, and another client's order (ids that do not name anybody)."""
    def track(message_id: str, offset: float, event: str, **fields: Any) -> dict[str, Any]:
        return {"type": "track", "messageId": message_id, "event": event,
                "timestamp": iso(t0 + offset), **fields}

    return [
        track("m1", 0, "Product Viewed", anonymousId=COOKIE,
              properties={"product_id": "p1", "price": 30, "category": "shoes"}),
        track("m2", 5, "Product Added", anonymousId=COOKIE,
              properties={"product_id": "p1", "price": 30}),
        {"type": "identify", "userId": CLIENT, "anonymousId": COOKIE, "messageId": "m3",
         "timestamp": iso(t0 + 30), "traits": {"email": EMAIL, "first_name": "Zoe"}},
        track("m4", 40, "Order Completed", userId=CLIENT,
              properties={"order_id": "o-1", "revenue": 80, "products": []}),
        track("m5", 41, "Order Completed", userId=OTHER,
              properties={"order_id": "o-2", "revenue": 20, "products": []}),
    ]


def mentions(client: redis.Redis, prefix: str) -> list[str]:
    """Every key under the prefix whose name or content holds one of the secrets."""
    found = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            content: Any = client.get(key)
        elif kind == "hash":
            content = client.hgetall(key)
        elif kind == "zset":
            content = client.zrange(key, 0, -1)
        elif kind == "set":
            content = client.smembers(key)
        elif kind == "list":
            content = client.lrange(key, 0, -1)
        else:
            content = client.xrange(key)
        text = repr(key) + repr(content)
        found += [f"{key.decode()} mentions {s}" for s in SECRETS if s in text]
    return found


def test_erasure_leaves_no_trace_and_an_audit_record(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(redis_url, key_prefix, policy={
        "quiet_hours": None, "frequency_cap_per_day": 0, "holdout_percent": 0})
    layout = KeyLayout.from_settings(settings)
    t0 = time.time() - 3600
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        sent = http.post("/v1/batch", json={"batch": history(t0)}, auth=(WRITE_KEY, ""))
        assert sent.status_code == 200, sent.text
        drain(settings)
        profile = http.get(f"/v1/profiles/{CLIENT}", headers=read_headers())
        assert profile.status_code == 200 and profile.json()["traits"]["email"] == EMAIL
        assert profile.json()["segments"] and mentions(redis_client, key_prefix)

        assert http.delete(f"/v1/profiles/{CLIENT}").status_code == 401
        for key in (READ_KEY, WRITE_KEY):
            refused = http.delete(f"/v1/profiles/{CLIENT}",
                                  headers={"Authorization": f"Bearer {key}"})
            assert refused.status_code == 403, refused.text
        accepted = http.delete(f"/v1/profiles/{CLIENT}", params={"wait": 0}, headers=ADMIN)
        assert accepted.status_code == 202 and accepted.json()["status"] == "pending"
        erasure_id = accepted.json()["erasure_id"]
        drain(settings)  # the dataflow applies it in the client's order, then purges

        status = http.get(f"/v1/erasures/{erasure_id}", headers=ADMIN).json()
        assert status["status"] == "done"
        assert status["events_removed"] >= 3 and status["triggers_removed"] >= 1
        assert status["memberships_removed"] >= 1
        for read in (f"/v1/profiles/{CLIENT}", f"/v1/profiles/anon:{COOKIE}",
                     f"/v1/profiles/{CLIENT}/touches"):
            assert http.get(read, headers=read_headers()).status_code == 404, read
        assert mentions(redis_client, key_prefix) == []
        assert http.get(f"/v1/profiles/{OTHER}", headers=read_headers()).status_code == 200

        audit = redis_client.xrange(layout.erasure_log())
        # one record for the client, one for the anonymous id merged into it
        assert sorted(fields[b"erasure_id"].decode() for _, fields in audit) == [
            erasure_id, f"{erasure_id}.1"]
        assert not any(s.encode() in repr(audit).encode() for s in SECRETS)

        # Later events start afresh; erasing an unknown client is done at once.
        again = http.post("/v1/batch", auth=(WRITE_KEY, ""), json={"batch": [
            {"type": "track", "messageId": "m6", "event": "Order Completed",
             "userId": CLIENT, "properties": {"order_id": "o-3", "revenue": 15}}]})
        assert again.status_code == 200
        drain(settings)
        fresh = http.get(f"/v1/profiles/{CLIENT}", headers=read_headers()).json()
        assert fresh["features"]["orders_count"] == 1 and "email" not in fresh["traits"]
        nobody = http.delete("/v1/profiles/nobody-at-all", params={"wait": 0}, headers=ADMIN)
        drain(settings)
        done = http.get(f"/v1/erasures/{nobody.json()['erasure_id']}", headers=ADMIN).json()
        assert done["status"] == "done" and done["memberships_removed"] == 0
        assert http.get("/v1/erasures/erasure-unknown", headers=ADMIN).status_code == 404
        metrics = http.get("/metrics").text
    # nothing personal in the logs of the API and the dataflow (the test's own HTTP client
    # logs its URLs), nor in the metrics
    ours = "\n".join(r.getMessage() for r in caplog.records
                     if not r.name.startswith(("httpx", "httpcore")))
    assert ours and not [s for s in (EMAIL, COOKIE, "Zoe", ADMIN_KEY, READ_KEY, WRITE_KEY)
                         if s in ours + metrics]  # nor any key


def test_an_email_changed_in_the_erasures_batch_leaves_no_index_behind(
        redis_url: str, redis_client: redis.Redis, key_prefix: str) -> None:
    """The old email is in the lookup index when the change to the new one and the erasure
    are applied in one batch: the erasure removes what Redis holds, not what the batch
    made of the client (the old email stayed findable by `/v1/lookup`)."""
    settings = make_settings(redis_url, key_prefix, policy={"quiet_hours": None})
    old = {"type": "identify", "userId": CLIENT, "messageId": "e1", "traits": {"email": EMAIL}}
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/v1/batch", json={"batch": [old]},
                         auth=(WRITE_KEY, "")).status_code == 200
        drain(settings)
        assert mentions(redis_client, key_prefix)  # indexed
        new = {**old, "messageId": "e2", "traits": {"email": "zoe.new@example.org"}}
        assert http.post("/v1/batch", json={"batch": [new]},
                         auth=(WRITE_KEY, "")).status_code == 200
        erased = http.delete(f"/v1/profiles/{CLIENT}", params={"wait": 0}, headers=ADMIN)
        assert erased.status_code == 202
        drain(settings)  # one batch: the change and the erasure
        assert http.get(f"/v1/erasures/{erased.json()['erasure_id']}",
                        headers=ADMIN).json()["status"] == "done"
        assert mentions(redis_client, key_prefix) == []
        assert http.get("/v1/lookup", params={"q": "zoe.erase41"},
                        headers=ADMIN).json()["clients"] == []


def test_an_erasure_before_the_sign_up_link_completes_erases_the_cookie_too(
        redis_url: str, redis_client: redis.Redis, key_prefix: str) -> None:
    """The cookie's cart and the identify that links it reach the streams, then the client
    asks to be erased before the dataflow has applied them: the client is erased first,
    and the cookie's answer to the link came back and rebuilt the client from the cookie's
    history. Now that answer, finding no client, erases the cookie."""
    settings = make_settings(redis_url, key_prefix, policy={"quiet_hours": None})
    batch = [{"type": "track", "messageId": "m1", "anonymousId": COOKIE, "event": "Product Added",
              "properties": {"product_id": "p1", "price": 30, "category": "shoes"}},
             {"type": "identify", "userId": CLIENT, "anonymousId": COOKIE, "messageId": "m2",
              "traits": {"email": EMAIL}}]
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/v1/batch", json={"batch": batch},
                         auth=(WRITE_KEY, "")).status_code == 200
        erased = http.delete(f"/v1/profiles/{CLIENT}", params={"wait": 0}, headers=ADMIN)
        assert erased.status_code == 202
        drain(settings)
        for who in (CLIENT, f"anon:{COOKIE}"):
            assert http.get(f"/v1/profiles/{who}", headers=read_headers()).status_code == 404
        assert mentions(redis_client, key_prefix) == []


def test_a_full_backlog_answers_touches_and_erasures_503_and_leaves_no_pending_status(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix, redis={"max_stream_length": 1},
                             dataflow={"partitions": 1, "buckets": 4})
    layout = KeyLayout.from_settings(settings)
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        for n in range(2):  # the stream reaches its cap: the dataflow is not running
            http.post("/v1/events", auth=(WRITE_KEY, ""),
                      json={"event_id": f"e{n}", "type": "visit", "client_id": CLIENT})
        touch = http.post(f"/v1/profiles/{CLIENT}/touches", headers=ADMIN,
                          json={"occasion": "call", "status": "done"})
        assert touch.status_code == 503 and touch.headers["retry-after"] == "5", touch.text
        assert "retry later" in touch.json()["detail"]
        erased = http.delete(f"/v1/profiles/{CLIENT}", params={"wait": 0}, headers=ADMIN)
        assert erased.status_code == 503 and erased.headers["retry-after"] == "5", erased.text
    assert list(redis_client.scan_iter(match=layout.erasure_status("*"))) == []


def test_erasure_purges_exactly_the_clients_dead_letters(redis_client: redis.Redis,
                                                         key_prefix: str) -> None:
    """Dead letters are matched by the client they are about, not by a substring of their
    JSON: "1" does not take "21"'s or "bob"'s, and an anonymous id or an id with a quote
    (written differently inside the JSON) is found."""
    layout = KeyLayout(key_prefix, 1, 4)  # one partition: every letter in one stream
    store = BucketStore(redis_client, layout, ledger_max_entries=100, stream_maxlen=1000)

    def raw(**ids: str) -> bytes:
        return orjson.dumps({"type": "order_placed", "event_id": "x", **ids,
                             "event_time": "2024-01-01T00:00:00Z"})
    letters = [DeadLetter("invalid event: total", "1-0", raw(client_id="1")),
               DeadLetter("invalid event: total", "2-0", raw(client_id="21")),
               DeadLetter("invalid event: total", "3-0", raw(client_id="bob"), "bob"),
               DeadLetter("invalid event: total", "4-0", raw(anonymous_id="zz")),
               DeadLetter("invalid event: total", "5-0", raw(client_id='o"neil')),
               DeadLetter("invalid json", "6-0", b'{"client_id": "carl', "carl")]
    store.commit([BucketCommit(bucket=0, base=START, position="6-0", dead_letters=letters)])

    def left() -> list[str]:
        return [f[b"stream_id"].decode()
                for _, f in redis_client.xrange(layout.dead_letters(0))]
    for n, who in enumerate(["anon:zz", 'o"neil', "1", "carl"], 7):
        bucket = layout.bucket_of(who)
        base = redis_client.hget(layout.offsets(0), str(bucket))
        store.commit([BucketCommit(bucket=bucket, base=base.decode() if base else START,
                                   position=f"{n}-0",
                                   erasures=[Erasure(who, f"er{n}", f"{n}-0", time.time())])])
        erasure.purge(redis_client, layout, 0, time.time())
    assert left() == ["2-0", "3-0"]


def test_a_dead_letter_in_the_erasures_batch_is_erased(redis_url: str, redis_client: redis.Redis,
                                                      key_prefix: str) -> None:
    """The job's purge reaches the dead letters written before its commit; a bad event of
    the client in the same batch is dropped by the bucket itself."""
    settings = make_settings(redis_url, key_prefix)
    store = store_factory(settings)
    layout = store.layout
    partition, bucket = layout.partition_of_client(CLIENT), layout.bucket_of(CLIENT)
    now = time.time()
    bad = orjson.dumps({"type": "order_placed", "event_id": "bad1", "client_id": CLIENT,
                        "event_time": now, "traits": {"email": EMAIL}})  # no order: invalid
    erase = encode_event(parse_event({"type": "erasure_requested", "event_id": "erasure-1",
                                      "client_id": CLIENT, "event_time": now}))
    ids = [redis_client.xadd(layout.events(partition), {"k": CLIENT, "e": raw, "n": n}).decode()
           for n, raw in enumerate((bad, erase), 1)]
    metrics = DataflowMetrics.create(CollectorRegistry())
    logic = BucketLogic(bucket, store_factory(settings),
                        BucketConfig(TriggerRules(), 0.5, 0.5), metrics)
    sink = BucketCommitSink(lambda: store_factory(settings), metrics).build("s", 0, 1)
    commits, _ = logic.on_batch([(EVENT, bucket, ids[0], CLIENT, bad),
                                 (EVENT, bucket, ids[1], CLIENT, erase)])
    sink.write_batch([(str(bucket), c) for c in commits])
    sink.close()
    assert redis_client.get(layout.erasure_status("erasure-1")) is not None
    assert redis_client.xrange(layout.dead_letters(partition)) == []


def stream_length(client: redis.Redis, layout: KeyLayout) -> int:
    return sum(int(client.xlen(stream)) for stream in layout.all_event_streams())


def settle(client: redis.Redis, settings: Settings) -> None:
    """Drain until the dataflow appends nothing more (identity steps, chained erasures)."""
    layout = KeyLayout.from_settings(settings)
    for _ in range(8):
        before = stream_length(client, layout)
        drain(settings)
        if stream_length(client, layout) == before:
            return
    raise AssertionError("the dataflow keeps appending events")


def test_erasing_a_merged_cookie_is_refused_naming_the_client_to_erase(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """A cookie merged into a client is part of that client's profile: erasing only the
    cookie's pointer left its alias and history in the client (and erasing the client on a
    cookie's word could erase a shared device's first user). The answer is 409 naming the
    client, nothing is erased, and erasing the client then erases the cookie too."""
    settings = make_settings(redis_url, key_prefix, policy={"quiet_hours": None})
    layout = KeyLayout.from_settings(settings)
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.post("/v1/batch", json={"batch": history(time.time() - 3600)},
                         auth=(WRITE_KEY, "")).status_code == 200
        settle(redis_client, settings)
        assert http.get(f"/v1/profiles/anon:{COOKIE}",
                        headers=read_headers()).json()["client_id"] == CLIENT

        refused = http.delete(f"/v1/profiles/anon:{COOKIE}", headers=ADMIN)
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["merged_into"] == CLIENT
        assert f"merged into client {CLIENT!r}" in body["detail"]
        assert f"DELETE /v1/profiles/{CLIENT}" in body["detail"]
        settle(redis_client, settings)
        assert list(redis_client.scan_iter(match=layout.erasure_status("*"))) == []
        by_cookie = http.get(f"/v1/profiles/anon:{COOKIE}", headers=read_headers()).json()
        assert by_cookie["client_id"] == CLIENT and f"anon:{COOKIE}" in by_cookie["aliases"]

        erased = http.delete(f"/v1/profiles/{CLIENT}", params={"wait": 0}, headers=ADMIN)
        assert erased.status_code == 202, erased.text
        settle(redis_client, settings)
        for read in (f"/v1/profiles/{CLIENT}", f"/v1/profiles/anon:{COOKIE}"):
            assert http.get(read, headers=read_headers()).status_code == 404, read
        assert mentions(redis_client, key_prefix) == []


def test_a_cookie_merged_while_its_erasure_waited_is_refused_by_the_dataflow(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """The cookie was still anonymous when the API checked, but its sign-in's link was
    ahead of the erasure in its stream: the dataflow refuses the erasure as the API would
    have, the status says why, and a caller still waiting gets the 409 naming the client."""
    settings = make_settings(redis_url, key_prefix, policy={"quiet_hours": None})
    layout = KeyLayout.from_settings(settings)
    t0 = time.time() - 3600
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=60) as http:
        visit = history(t0)[:2]  # the cookie's view and cart
        assert http.post("/v1/batch", json={"batch": visit},
                         auth=(WRITE_KEY, "")).status_code == 200
        settle(redis_client, settings)
        sign_in = [history(t0)[2]]
        assert http.post("/v1/batch", json={"batch": sign_in},
                         auth=(WRITE_KEY, "")).status_code == 200
        erased = http.delete(f"/v1/profiles/anon:{COOKIE}", params={"wait": 0}, headers=ADMIN)
        assert erased.status_code == 202, erased.text  # not merged yet when checked
        erasure_id = erased.json()["erasure_id"]
        settle(redis_client, settings)
        status = http.get(f"/v1/erasures/{erasure_id}", headers=ADMIN).json()
        assert status["status"] == "refused" and "merged into a client" in status["reason"]
        assert CLIENT not in repr(status) and COOKIE not in repr(status)
        assert redis_client.xlen(layout.erasure_log()) == 0  # nothing was erased
        merged = http.get(f"/v1/profiles/{CLIENT}", headers=read_headers()).json()
        assert merged["aliases"] == [f"anon:{COOKIE}"]
        assert merged["features"]["cart_products"] == ["p1"]

        # the same race, with the caller waiting: it hears 409 and which client to erase
        other = "ck-erase-42"
        assert http.post("/v1/batch", auth=(WRITE_KEY, ""), json={"batch": [
            {**visit[1], "messageId": "n1", "anonymousId": other}]}).status_code == 200
        settle(redis_client, settings)
        assert http.post("/v1/batch", auth=(WRITE_KEY, ""), json={"batch": [
            {**sign_in[0], "messageId": "n2", "anonymousId": other}]}).status_code == 200
        before = stream_length(redis_client, layout)
        answers: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda: answers.append(http.delete(
            f"/v1/profiles/anon:{other}", params={"wait": 30}, headers=ADMIN)))
        waiting.start()
        deadline = time.monotonic() + 10
        while stream_length(redis_client, layout) == before and time.monotonic() < deadline:
            time.sleep(0.02)  # the erasure is in the cookie's stream, behind the link
        settle(redis_client, settings)
        waiting.join(timeout=30)
        assert answers and answers[0].status_code == 409, answers
        assert answers[0].json()["merged_into"] == CLIENT
        assert answers[0].json()["erasure_id"].startswith("erasure-")


def test_erasure_records_expire_and_the_audit_is_trimmed_by_age(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """Statuses are keys with a TTL (`redis.erasure_status_retention`), a pending one
    written by the API as well as the dataflow's outcome; each audit record written drops
    the records older than `redis.erasure_audit_retention`; statuses from before they
    expired (one hash kept forever) get the expiry they have left, or go."""
    settings = make_settings(redis_url, key_prefix, redis={
        "erasure_status_retention": "1h", "erasure_audit_retention": "2h"})
    layout = KeyLayout.from_settings(settings)
    now = time.time()
    old_audit = f"{int((now - 3 * 3600) * 1000)}-0"
    redis_client.xadd(layout.erasure_log(), {"erasure_id": "erasure-old"}, id=old_audit)
    kept_audit = redis_client.xadd(layout.erasure_log(), {"erasure_id": "erasure-recent"},
                                   id=f"{int((now - 3600) * 1000)}-0")
    legacy = {"erasure-stale": iso(now - 2 * 3600), "erasure-fresh": iso(now - 1800)}
    for erasure_id, at in legacy.items():
        redis_client.hset(layout.legacy_erasure_status(), erasure_id, json.dumps(
            {"erasure_id": erasure_id, "status": "done", "requested_at": at,
             "completed_at": at}))
    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/v1/erasures/erasure-fresh", headers=ADMIN).status_code == 200
        accepted = http.delete(f"/v1/profiles/{CLIENT}", params={"wait": 0}, headers=ADMIN)
        assert accepted.status_code == 202
        erasure_id = accepted.json()["erasure_id"]
        pending_ttl = redis_client.pttl(layout.erasure_status(erasure_id))
        assert 3500_000 < pending_ttl <= 3600_000, pending_ttl
        drain(settings)  # the dataflow: moves the old statuses, erases, records
        assert http.get(f"/v1/erasures/{erasure_id}", headers=ADMIN).json()["status"] == "done"
        assert http.get("/v1/erasures/erasure-fresh", headers=ADMIN).status_code == 200
        assert http.get("/v1/erasures/erasure-stale", headers=ADMIN).status_code == 404
    done_ttl = redis_client.pttl(layout.erasure_status(erasure_id))
    assert 3500_000 < done_ttl <= 3600_000, done_ttl
    fresh_ttl = redis_client.pttl(layout.erasure_status("erasure-fresh"))
    assert 1700_000 < fresh_ttl <= 1800_000, fresh_ttl  # what its hour has left
    assert redis_client.exists(layout.legacy_erasure_status()) == 0
    audit = redis_client.xrange(layout.erasure_log())
    assert [entry_id for entry_id, _ in audit][:1] == [kept_audit]
    assert [fields[b"erasure_id"].decode() for _, fields in audit] == [
        "erasure-recent", erasure_id]


def test_legacy_statuses_beyond_a_page_all_move_and_the_hash_goes(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """The move is sent a page at a time: the statuses of every page, the last one partial,
    are moved or dropped; one already under its own key (a later write) is left alone."""
    layout = KeyLayout.from_settings(make_settings(redis_url, key_prefix))
    now = time.time()
    count = 2 * erasure.PAGE + 7
    for n in range(count):  # every third is past its hour's retention
        at = datetime.fromtimestamp(now - (7200 if n % 3 == 0 else 600), UTC).isoformat()
        redis_client.hset(layout.legacy_erasure_status(), f"erasure-{n}", json.dumps(
            {"erasure_id": f"erasure-{n}", "status": "done", "requested_at": at}))
    newer = json.dumps({"erasure_id": "erasure-1", "status": "done", "requested_at":
                        datetime.fromtimestamp(now - 60, UTC).isoformat()})
    redis_client.set(layout.erasure_status("erasure-1"), newer, px=2950_000)
    moved = erasure.expire_legacy_statuses(redis_client, layout, now,
                                           erasure.Retention(3600.0, 7200.0))
    kept = [n for n in range(count) if n % 3]
    assert moved == len(kept) - 1  # erasure-1's status was there already, and stays
    assert redis_client.get(layout.erasure_status("erasure-1")) == newer.encode()
    assert redis_client.exists(layout.legacy_erasure_status()) == 0
    for n in range(count):
        ttl = redis_client.pttl(layout.erasure_status(f"erasure-{n}"))
        assert (2900_000 < ttl <= 3000_000) if n % 3 else ttl == -2, (n, ttl)
