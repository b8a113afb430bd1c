"""The demo traffic simulator: the shopper model without a server, run_demo against a tiny one."""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from crmflow.demo import (
    TRACK_EVENT_NAMES,
    DemoRefused,
    ShopperSimulator,
    build_catalogue,
    run_demo,
)
from features.events import EventType
from features.segment import from_segment

START = 1_700_000_000.0
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PRODUCT_KEYS = {"product_id", "category", "price"}
LINE_KEYS = PRODUCT_KEYS | {"quantity"}
REQUIRED_PROPERTIES: dict[str, set[str]] = {
    "Signed Up": set(),
    "Session Started": set(),
    "Session Ended": set(),
    "Product Viewed": PRODUCT_KEYS,
    "Product Added": LINE_KEYS,
    "Product Removed": LINE_KEYS,
    "Product Added to Wishlist": PRODUCT_KEYS,
    "Checkout Started": {"products", "value"},
    "Order Completed": {"order_id", "total", "currency", "products"},
    "Order Cancelled": {"order_id", "total"},
    "Order Refunded": {"order_id", "total"},
    "Support Requested": {"topic"},
    "NPS Answered": {"score"},
    "Message Opened": {"channel"},
    "Message Clicked": {"channel"},
}
TRAIT_KEYS = {"email", "phone", "first_name", "gender", "city", "birthday", "point_id", "consents"}


def play(seed: int, shoppers: int, count: int, step: float = 0.25) -> list[dict[str, Any]]:
    simulator = ShopperSimulator(seed, shoppers)
    messages: list[dict[str, Any]] = []
    now = START
    while len(messages) < count:
        messages.extend(simulator.next_messages(now))
        now += step
    return messages


@pytest.fixture(scope="module")
def traffic() -> list[dict[str, Any]]:
    return play(seed=11, shoppers=200, count=2000)


def event_of(message: dict[str, Any]) -> str:
    return str(message.get("event", message["type"]))


def replay_carts(messages: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, int]]]:
    """Each message with the sender's cart (as the messages tell it) just before it."""
    carts: dict[str, dict[str, int]] = {}
    for message in messages:
        cart = carts.setdefault(message["anonymousId"], {})
        yield message, dict(cart)
        props = message.get("properties", {})
        event = message.get("event")
        if event == "Product Added":
            cart[props["product_id"]] = cart.get(props["product_id"], 0) + props["quantity"]
        elif event == "Product Removed":
            cart[props["product_id"]] -= props["quantity"]
            if cart[props["product_id"]] <= 0:
                del cart[props["product_id"]]
        elif event == "Order Completed":
            cart.clear()


# --- the model ------------------------------------------------------------------------------------


def test_catalogue_is_a_realistic_shop() -> None:
    catalogue = build_catalogue()
    assert 180 <= len(catalogue) <= 240
    assert len({p.product_id for p in catalogue}) == len(catalogue)
    categories = Counter(p.category for p in catalogue)
    assert len(categories) == 12
    assert {"pet_food", "diapers", "kids_clothes", "toys", "books", "coffee_tea", "cosmetics",
            "electronics_accessories"} <= set(categories)
    assert all(0.5 < p.price < 300 for p in catalogue)
    assert build_catalogue() == catalogue


def test_same_seed_same_messages_other_seed_other_messages() -> None:
    assert play(seed=5, shoppers=50, count=600) == play(seed=5, shoppers=50, count=600)
    assert play(seed=5, shoppers=50, count=300) != play(seed=6, shoppers=50, count=300)


def test_model_reads_neither_clock_nor_global_random(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_: object) -> None:
        raise AssertionError("the model must not use the clock or the global random state")

    for name in ("time", "monotonic", "perf_counter"):
        monkeypatch.setattr(time, name, forbidden)
    for name in ("random", "choice", "choices", "randint", "sample", "getrandbits"):
        monkeypatch.setattr(random, name, forbidden)
    simulator = ShopperSimulator(3, 30)
    now = 978_307_200.0  # 2001-01-01: far from the real clock
    messages = simulator.next_messages(now) + simulator.next_messages(now + 1.5)
    assert messages
    stamps = {m["timestamp"] for m in messages}
    assert stamps <= {"2001-01-01T00:00:00.000Z", "2001-01-01T00:00:01.500Z"}


def test_every_message_is_a_valid_segment_message(traffic: list[dict[str, Any]]) -> None:
    assert len({m["messageId"] for m in traffic}) == len(traffic)
    for message in traffic:
        assert message["type"] in ("track", "identify", "page")
        assert isinstance(message["messageId"], str) and message["messageId"]
        assert ISO_Z.match(message["timestamp"]), message["timestamp"]
        assert message.get("userId") or message.get("anonymousId")
        if message["type"] == "identify":
            traits = message["traits"]
            assert {"first_name", "gender", "city", "birthday", "point_id", "consents"} <= set(
                traits)
            assert "email" in traits or "phone" in traits
            assert set(traits) <= TRAIT_KEYS | {"last_name"}
            datetime.strptime(traits["birthday"], "%Y-%m-%d")
            assert all(isinstance(v, bool) for v in traits["consents"].values())
        elif message["type"] == "page":
            assert isinstance(message["name"], str)
            assert message["properties"]["url"].startswith("https://")
        else:
            event = message["event"]
            assert event in TRACK_EVENT_NAMES
            assert REQUIRED_PROPERTIES[event] <= set(message["properties"]), message
            props = message["properties"]
            for line in props.get("products", []):
                assert set(line) >= LINE_KEYS
            if event == "NPS Answered":
                assert props["score"] in range(11)
            if event.startswith("Message "):
                assert props["channel"] in ("email", "sms", "push")
            if event in ("Order Completed", "Checkout Started"):
                total = sum(p["price"] * p["quantity"] for p in props["products"])
                assert props.get("total", props.get("value")) == pytest.approx(total)
    assert set(TRACK_EVENT_NAMES) == set(REQUIRED_PROPERTIES)


def test_crmflow_maps_every_message_to_a_known_event(traffic: list[dict[str, Any]]) -> None:
    for message in traffic:
        event = from_segment(message, START + 3600)
        assert event.type is not EventType.CUSTOM, message


def test_anonymous_until_sign_up_then_both_ids(traffic: list[dict[str, Any]]) -> None:
    user_of: dict[str, str] = {}
    signed_up: set[str] = set()
    for index, message in enumerate(traffic):
        anonymous_id = message["anonymousId"]
        if message.get("event") == "Signed Up":
            assert anonymous_id not in signed_up, "signed up twice"
            signed_up.add(anonymous_id)
            before = traffic[index - 1]
            assert before["type"] == "identify" and before["userId"] == message["userId"]
            assert before["anonymousId"] == anonymous_id
            assert set(message["context"]["traits"]) >= TRAIT_KEYS - {"email", "phone"}
        if "userId" in message:
            assert user_of.setdefault(anonymous_id, message["userId"]) == message["userId"]
        else:
            assert anonymous_id not in user_of, "a known client went anonymous again"
        if message.get("event") in ("Order Completed", "Checkout Started"):
            assert "userId" in message
    anonymous_before = {m["anonymousId"] for m in traffic if "userId" not in m}
    assert signed_up & anonymous_before, "no visitor browsed anonymously before signing up"


def test_mix_has_views_carts_orders_sign_ups_and_abandoned_carts(
        traffic: list[dict[str, Any]]) -> None:
    events = Counter(event_of(m) for m in traffic)
    assert events["page"] > 200 and events["Product Viewed"] > 200
    assert events["Product Added"] > 30
    assert events["Order Completed"] > 10
    assert events["Signed Up"] > 5
    assert events["identify"] > 10
    assert events["Session Started"] > 50
    abandoned = [m for m, cart in replay_carts(traffic)
                 if m.get("event") == "Session Ended" and cart]
    assert len(abandoned) > 5
    browse_only = {m["anonymousId"] for m in traffic} - {
        m["anonymousId"] for m in traffic if m.get("event") == "Product Added"}
    assert browse_only


def test_an_order_buys_the_cart_and_empties_it() -> None:
    simulator = ShopperSimulator(21, 150)
    seen: list[dict[str, Any]] = []
    orders = 0
    now = START
    while orders < 15:
        step = simulator.next_messages(now)
        now += 0.5
        seen.extend(step)
        for message in step:
            if message.get("event") == "Order Completed":
                orders += 1
                assert simulator.cart(message["anonymousId"]) == {}
        assert len(seen) < 20_000
    for message, cart in replay_carts(seen):
        if message.get("event") == "Order Completed":
            bought: Counter[str] = Counter()
            for line in message["properties"]["products"]:
                bought[line["product_id"]] += line["quantity"]
            assert bought and dict(bought) == cart


def test_returning_clients_come_back_and_some_buy_again() -> None:
    messages = play(seed=4, shoppers=300, count=6000, step=0.1)
    visits = Counter(m["anonymousId"] for m in messages if m.get("event") == "Session Started")
    orders = Counter(m["userId"] for m in messages if m.get("event") == "Order Completed")
    assert sum(1 for n in visits.values() if n > 1) > 20
    assert sum(1 for n in orders.values() if n > 1) > 3


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        ShopperSimulator(1, 0)
    with pytest.raises(ValueError):
        run_demo("http://127.0.0.1:9", "k", events_per_second=0, shoppers=1, seed=1,
                 stop=threading.Event())


# --- run_demo against a real HTTP server --------------------------------------------------------


class Recorder:
    """What a tiny ingest server saw, and how it should answer."""

    def __init__(self, answers: list[tuple[int, dict[str, str], dict[str, Any]]],
                 default: tuple[int, dict[str, str], dict[str, Any] | None]) -> None:
        self.answers = answers
        self.default = default
        self.requests: list[tuple[str, str, dict[str, Any], int]] = []
        self.lock = threading.Lock()


@pytest.fixture
def ingest_server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder([], (200, {}, None))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with recorder.lock:
                if recorder.answers:
                    status, headers, payload = recorder.answers.pop(0)
                else:
                    status, headers, default_payload = recorder.default
                    payload = default_payload or {"success": True,
                                                  "accepted": len(body["batch"]),
                                                  "duplicates": 0, "rejected": []}
                recorder.requests.append(
                    (self.path, self.headers.get("Authorization", ""), body, status))
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def start_demo(url: str, **kwargs: Any) -> tuple[threading.Thread, threading.Event,
                                                  list[tuple[int, int]]]:
    stop = threading.Event()
    batches: list[tuple[int, int]] = []
    thread = threading.Thread(
        target=run_demo, args=(url, "wk-demo"),
        kwargs={"events_per_second": 500, "shoppers": 50, "seed": 9, "stop": stop,
                "on_batch": lambda sent, accepted: batches.append((sent, accepted)), **kwargs},
        daemon=True)
    thread.start()
    return thread, stop, batches


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stop_promptly(thread: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    started = time.monotonic()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.5


def test_run_demo_posts_batches_retries_503_and_stops(
        ingest_server: tuple[str, Recorder]) -> None:
    url, recorder = ingest_server
    recorder.answers.append((503, {"Retry-After": "0"}, {"success": False,
                                                         "detail": "event store unavailable"}))
    thread, stop, batches = start_demo(url)
    wait_for(lambda: sum(1 for r in recorder.requests if r[3] == 200) >= 4)
    stop_promptly(thread, stop)

    requests = recorder.requests
    assert requests[0][3] == 503
    first_ids = [m["messageId"] for m in requests[0][2]["batch"]]
    assert [m["messageId"] for m in requests[1][2]["batch"]] == first_ids  # the same batch again
    accepted = [body for _, _, body, status in requests if status == 200]
    sizes = [len(body["batch"]) for body in accepted]
    assert all(1 <= n <= 100 for n in sizes) and max(sizes) == 100
    ids = [m["messageId"] for body in accepted for m in body["batch"]]
    assert len(ids) == len(set(ids))
    for path, auth, body, _ in requests:
        assert path == "/v1/batch"
        scheme, _, token = auth.partition(" ")
        assert scheme == "Basic"
        assert base64.b64decode(token).decode() == "wk-demo:"
        assert ISO_Z.match(body["sentAt"])
    assert batches[0] == (len(first_ids), len(first_ids))
    assert all(sent == ok for sent, ok in batches)
    assert sum(sent for sent, _ in batches) == len(ids)


def test_run_demo_stops_when_the_key_is_refused(ingest_server: tuple[str, Recorder]) -> None:
    """A wrong write key: no retry and no later batch can fare better, so the demo stops
    with the server's message (it logged a refusal every half second for ever)."""
    url, recorder = ingest_server
    recorder.default = (401, {}, {"detail": "invalid write key"})
    with pytest.raises(DemoRefused, match="HTTP 401: invalid write key"):
        run_demo(url, "wk-demo", events_per_second=500, shoppers=50, seed=9,
                 stop=threading.Event())
    assert len(recorder.requests) == 1


def test_run_demo_logs_a_refused_batch_with_the_servers_message(
        ingest_server: tuple[str, Recorder], caplog: pytest.LogCaptureFixture) -> None:
    url, recorder = ingest_server
    recorder.default = (400, {}, {"detail": "batch: nothing valid"})
    caplog.set_level(logging.WARNING, logger="crmflow.demo")
    thread, stop, batches = start_demo(url)
    wait_for(lambda: len(recorder.requests) >= 2)
    stop_promptly(thread, stop)
    assert any("nothing valid" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)
    ids = [m["messageId"] for _, _, body, _ in recorder.requests for m in body["batch"]]
    assert len(ids) == len(set(ids)), "a 4xx must not be retried"
    assert batches and all(ok == 0 for _, ok in batches)


def test_run_demo_retries_when_the_server_is_down_and_still_stops(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    caplog.set_level(logging.WARNING, logger="crmflow.demo")
    thread, stop, batches = start_demo(f"http://127.0.0.1:{port}")
    wait_for(lambda: sum("attempt 2" in r.getMessage() for r in caplog.records) >= 1)
    stop_promptly(thread, stop)
    assert all(ok == 0 for _, ok in batches)


def test_iso_stamps_match_now() -> None:
    simulator = ShopperSimulator(1, 5)
    now = datetime(2024, 2, 29, 12, 30, 15, 250000, tzinfo=UTC).timestamp()
    assert {m["timestamp"] for m in simulator.next_messages(now)} == {"2024-02-29T12:30:15.250Z"}
