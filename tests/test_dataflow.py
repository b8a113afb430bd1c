"""The dataflow against a real Redis: determinism, idempotence, crash safety."""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from config.settings import Settings
from crmflow.redis_server import free_port
from dataflows.flow import store_factory
from dataflows.metrics import DataflowMetrics
from dataflows.source import EventStreamSource, SourceConfig
from features.codec import decode_state
from features.events import parse_event
from features.state import ClientState
from features.triggers import next_due
from sinks.event_log import AppendOptions, EventLog
from sinks.keys import KeyLayout
from tests.histories import DAY, histories
from tests.support import (
    all_triggers,
    api_server,
    dataflow_process,
    drain,
    post_events,
    wait_for,
    write_config,
)
from tests.support import make_settings as base_settings


def make_settings(redis_url: str, prefix: str, **sections: dict[str, Any]) -> Settings:
    """Test settings without the automatic RFM refresh: quintiles follow the wall clock, so
    when a run adopts a model depends on timing, and these tests compare runs (RFM through
    the dataflow is covered by tests/test_uci_replay.py)."""
    return base_settings(redis_url, prefix, **{"rfm": {"refresh": 0}, **sections})


RECEIVED = time.time()  # when the tests "receive" their history: older events are backfill


def append(client: redis.Redis, settings: Settings, events: list[dict[str, Any]],
           dedupe_window: float = 3600) -> None:
    log = EventLog(client, KeyLayout.from_settings(settings),
                   AppendOptions(dedupe_window=dedupe_window))
    log.append([parse_event({**e, "received_at": max(RECEIVED, e["event_time"])})
                for e in events])


def states(client: redis.Redis, settings: Settings) -> dict[str, ClientState]:
    layout = KeyLayout.from_settings(settings)
    out: dict[str, ClientState] = {}
    for bucket in range(layout.buckets):
        for key, raw in client.hgetall(layout.state(bucket)).items():
            out[key.decode()] = decode_state(raw)
    return out


def trigger_ids(client: redis.Redis, settings: Settings) -> list[str]:
    """One id per decision: a deferral and the final decision of an occasion share the
    trigger id, so the deferral is told apart as the ledger does."""
    return sorted(t["trigger_id"] + (":deferred" if t["status"] == "deferred" else "")
                  for t in all_triggers(client, settings))


def outcome(client: redis.Redis, settings: Settings) -> tuple[dict[str, ClientState], list[str]]:
    return states(client, settings), trigger_ids(client, settings)


def flat(seed: int, clients: int) -> list[dict[str, Any]]:
    # from a UTC midnight: the times of day, and so the quiet hours, are the same every run
    start = (time.time() // DAY - 10) * DAY
    return [e for h in histories(seed, clients, start) for e in h]


def test_drain_produces_every_trigger_kind(redis_client: redis.Redis, redis_url: str,
                                           key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix)
    append(redis_client, settings, flat(1, 200))
    drain(settings)
    triggers = all_triggers(redis_client, settings)
    kinds = {t["type"] for t in triggers}
    # the histories span 10 days: the lifecycle triggers due later (nudge, promo, churn,
    # replenishment) have not come yet, and nobody answers NPS or has a birthday
    assert kinds == {"welcome", "order_confirmation", "order_cancellation", "abandoned_cart",
                     "abandoned_browse", "feedback_request", "onboarding", "loyalty_status"}
    statuses = {(t["status"], t.get("reason")) for t in triggers}
    assert {("sent", None), ("deferred", "quiet_hours"), ("suppressed", "no_channel"),
            ("suppressed", "frequency_cap")} <= statuses
    assert {t["channel"] for t in triggers if t["status"] == "sent"} == {"email"}
    assert len(states(redis_client, settings)) == 200


def test_replay_twice_gives_the_same_profiles_and_trigger_ids(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    events = flat(2, 300)
    first = make_settings(redis_url, key_prefix + "a")
    append(redis_client, first, events)
    drain(first)
    once = outcome(redis_client, first)
    drain(first)  # the same stream again: positions in Redis make it a no-op
    assert outcome(redis_client, first) == once
    assert len(set(once[1])) == len(once[1])

    fresh = make_settings(redis_url, key_prefix + "b")  # the same events from scratch
    append(redis_client, fresh, events)
    drain(fresh)
    assert outcome(redis_client, fresh) == once

    resent = make_settings(redis_url, key_prefix + "c")  # a producer sends everything twice
    append(redis_client, resent, events)
    drain(resent)
    append(redis_client, resent, events)
    drain(resent)
    assert outcome(redis_client, resent) == once


def test_output_is_independent_of_batch_size_tick_rate_and_workers(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    events = flat(3, 200)
    results = []
    for i, (batch, tick, workers) in enumerate([(2000, 0.1, 1), (7, 0.0, 1), (1, 1.0, 1),
                                                (50, 0.1, 2)]):
        settings = make_settings(redis_url, f"{key_prefix}{i}",
                                 dataflow={"batch_size": batch, "tick_interval": tick,
                                           "workers": workers})
        append(redis_client, settings, events)
        drain(settings)
        results.append(outcome(redis_client, settings))
    assert results[0] == results[1] == results[2] == results[3]


def test_bad_entries_go_to_the_dead_letter_stream(redis_client: redis.Redis, redis_url: str,
                                                  key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix)
    layout = KeyLayout.from_settings(settings)
    stream = layout.events(layout.partition_of_client("c1"))
    redis_client.xadd(stream, {"k": "c1", "e": "{not json"})
    redis_client.xadd(stream, {"k": "c1", "e": '{"type": "visit", "client_id": "c1"}'})
    append(redis_client, settings, [{"event_id": "v", "type": "visit", "client_id": "c1",
                                     "event_time": time.time()}])
    registry = CollectorRegistry()
    drain(settings, registry)
    assert registry.get_sample_value("crmflow_dead_letters_total", {"reason": "invalid"}) == 2
    assert registry.get_sample_value("crmflow_dataflow_events_processed_total",
                                     {"type": "visit"}) == 1
    letters = redis_client.xrange(layout.dead_letters(layout.partition_of_client("c1")))
    reasons = [fields[b"reason"].decode() for _, fields in letters]
    assert reasons == ["invalid json", "invalid event: event_id: is required"]
    assert states(redis_client, settings)["c1"].visits == 1  # the valid event is not lost


def backlog(client: redis.Redis, settings: Settings) -> int:
    """Stream entries after the least committed position of each partition."""
    store = store_factory(settings)
    try:
        return sum(len(client.xrange(store.layout.events(p),
                                     min="(" + store.resume_position(p), max="+"))
                   for p in range(store.layout.partitions))
    finally:
        store.client.close()


def committed(client: redis.Redis, settings: Settings) -> dict[bytes, bytes]:
    layout = KeyLayout.from_settings(settings)
    out: dict[bytes, bytes] = {}
    for p in range(layout.partitions):
        out.update(client.hgetall(layout.offsets(p)))
    return out


@pytest.mark.slow
def test_kill_9_mid_stream_loses_and_doubles_nothing(
        redis_client: redis.Redis, redis_url: str, key_prefix: str, tmp_path: Any) -> None:
    """Events stream in through the HTTP API while the dataflow is SIGKILLed mid-work, again
    and again, and restarted; the end state equals an uninterrupted run's."""
    rng = random.Random(11)
    clients = histories(4, 3000, time.time() - 10 * DAY)
    chunks = [clients[i:i + 100] for i in range(0, len(clients), 100)]
    crashed = make_settings(redis_url, key_prefix + "k", dataflow={"batch_size": 50})
    config = write_config(crashed, tmp_path / "crashed.yaml")
    mid_stream_kills = 0
    kills = 0
    with api_server(crashed) as url:
        def stream_in() -> None:
            for chunk in chunks:
                response = post_events(url, [e for h in chunk for e in h])
                assert response.status_code == 200, response.text
                time.sleep(0.1)

        poster = threading.Thread(target=stream_in)
        poster.start()
        while poster.is_alive() or mid_stream_kills < 3:
            before = committed(redis_client, crashed)
            with dataflow_process(config) as process:
                wait_for(lambda b=before: committed(redis_client, crashed) != b
                         or not backlog(redis_client, crashed), 30, "the dataflow to progress",
                         interval=0.02)
                time.sleep(rng.uniform(0.0, 0.3))
                process.send_signal(signal.SIGKILL)
                process.wait()
            kills += 1
            mid_stream_kills += backlog(redis_client, crashed) > 0
            assert kills < 40, "the dataflow never caught up between kills"
        poster.join()
    drain(crashed)

    calm = make_settings(redis_url, key_prefix + "c", dataflow={"batch_size": 50})
    append(redis_client, calm, [e for h in clients for e in h])
    drain(calm)
    crashed_states, crashed_ids = outcome(redis_client, crashed)
    calm_states, calm_ids = outcome(redis_client, calm)
    assert mid_stream_kills >= 3
    assert len(crashed_ids) == len(set(crashed_ids)), "a trigger was emitted twice"
    assert crashed_ids == calm_ids
    # received_at is stamped by whoever received the events: the API here, the test there
    assert ({k: replace(v, last_received_at=0) for k, v in crashed_states.items()}
            == {k: replace(v, last_received_at=0) for k, v in calm_states.items()})


@pytest.mark.slow
def test_live_dataflow_fires_timers_on_wall_clock(redis_client: redis.Redis, redis_url: str,
                                                  key_prefix: str, tmp_path: Any) -> None:
    port = free_port()
    settings = make_settings(redis_url, key_prefix, dataflow={"metrics_port": port},
                             triggers={"abandoned_cart": {"delay": "2s"}})
    with dataflow_process(write_config(settings, tmp_path / "c.yaml")):
        now = time.time()
        append(redis_client, settings, [
            {"event_id": "a", "type": "cart_add", "client_id": "live",
             "event_time": now, "products": [{"product_id": "p", "price": 1}]}])
        fired = wait_for(lambda: [t for t in all_triggers(redis_client, settings)
                                  if t["type"] == "abandoned_cart"], 30, "abandoned cart")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert fired[0]["client_id"] == "live"
    assert fired[0]["status"] == "suppressed" and fired[0]["reason"] == "no_channel"
    assert ('crmflow_triggers_raised_total{status="suppressed",type="abandoned_cart"} 1.0'
            in metrics)
    assert 'crmflow_dataflow_events_processed_total{type="cart_add"} 1.0' in metrics
    assert 'crmflow_consumer_lag_seconds{partition="0"}' in metrics
    assert "crmflow_timers_pending 0.0" in metrics


def first_partition(settings: Settings, registry: CollectorRegistry, *, tick_interval: float
                    ) -> Any:
    """The source's reader of partition 0, in batches of 10, reporting to `registry`."""
    source = EventStreamSource(lambda: store_factory(settings), settings.dataflow.partitions,
                               SourceConfig(batch_size=10, tick_interval=tick_interval,
                                            idle_wait=0.01, heartbeat_ttl=5),
                               DataflowMetrics.create(registry))
    return source.build_part("events", "0", None)


def test_lag_is_the_age_of_the_oldest_unread_entry(redis_client: redis.Redis, redis_url: str,
                                                   key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix)
    layout = KeyLayout.from_settings(settings)
    appended = int((time.time() - 30) * 1000)
    redis_client.xadd(layout.events(0), {"k": "x", "e": "{}"}, id=f"{appended}-0")
    registry = CollectorRegistry()
    partition = first_partition(settings, registry, tick_interval=0.1)

    def lag() -> float | None:
        return registry.get_sample_value("crmflow_consumer_lag_seconds", {"partition": "0"})

    items = partition.next_batch()
    assert 29 < (lag() or 0) < 60
    assert items[0][1][0] == "e"
    partition.next_batch()
    assert lag() == 0.0
    partition.close()


def test_pending_entries_count_what_is_appended_and_not_yet_read(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix, dataflow={"partitions": 1})
    append(redis_client, settings, [{"event_id": f"p{n}", "type": "visit", "client_id": "c",
                                     "event_time": RECEIVED - 100 + n} for n in range(25)],
           dedupe_window=0)
    registry = CollectorRegistry()
    partition = first_partition(settings, registry, tick_interval=0.05)

    def pending() -> float | None:
        return registry.get_sample_value("crmflow_consumer_pending_entries",
                                         {"partition": "0"})

    partition.next_batch()
    assert pending() == 15
    time.sleep(0.06)
    partition.next_batch()
    assert pending() == 5
    partition.next_batch()  # the last 5: caught up
    assert pending() == 0
    partition.close()


def test_under_a_length_cap_applied_entries_are_trimmed_after_a_quarter_of_it_is_read(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """Not ten seconds later: at a low cap and a high rate those would fill the stream, and
    ingest would refuse events while the stream holds only applied ones."""
    settings = make_settings(redis_url, key_prefix, dataflow={"partitions": 1})
    layout = KeyLayout.from_settings(settings)
    visits = [{"event_id": f"q{n}", "type": "visit", "client_id": f"c{n % 3}",
               "event_time": RECEIVED - 100 + n} for n in range(40)]
    append(redis_client, settings, visits[:30])
    drain(settings)  # applied; kept, as no cap was set and the retention is a day
    assert redis_client.xlen(layout.events(0)) == 30
    append(redis_client, settings, visits[30:])
    source = EventStreamSource(lambda: store_factory(settings), 1,
                               SourceConfig(batch_size=10, tick_interval=60, idle_wait=0.01,
                                            heartbeat_ttl=5, max_stream_length=40),
                               DataflowMetrics.create(CollectorRegistry()))
    partition = source.build_part("events", "0", None)
    read = [item for _, item in partition.next_batch() if item[0] == "e"]
    assert len(read) == 10  # the 10 new entries: a quarter of the cap
    # the applied ones are gone, but for the last (the trim keeps the position's entry)
    assert redis_client.xlen(layout.events(0)) == 11
    partition.close()


def test_a_failed_read_is_not_taken_for_the_stream_head(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """During an outage the reader knows nothing of the backlog: its ticks must not carry
    the wall clock (timers would fire ahead of unread events), a drain must not end, and
    the lag must not drop to 0."""
    settings = make_settings(redis_url, key_prefix)
    layout = KeyLayout.from_settings(settings)
    appended = int((time.time() - 3 * 3600) * 1000)
    for n in range(3):
        redis_client.xadd(layout.events(0), {"k": "x", "e": "{}", "n": n + 1},
                          id=f"{appended + n}-0")
    registry = CollectorRegistry()
    source = EventStreamSource(lambda: store_factory(settings), settings.dataflow.partitions,
                               SourceConfig(batch_size=1, tick_interval=0, idle_wait=0.01,
                                            heartbeat_ttl=5, stop_when_caught_up=True),
                               DataflowMetrics.create(registry))
    partition = source.build_part("events", "0", None)
    assert [item[0] for _, item in partition.next_batch()][0] == "e"
    reachable = partition._client
    partition._client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)  # down
    during = partition.next_batch()
    assert not [item for _, item in during if item[0] == "t" and item[-1]]  # no at_head tick
    lag = registry.get_sample_value("crmflow_consumer_lag_seconds", {"partition": "0"})
    assert lag is not None and lag > 3 * 3600 - 60
    assert partition.next_awake() is not None  # it backs off
    partition._client.close()
    partition._client = reachable
    read = [item for _ in range(3) for _, item in partition.next_batch() if item[0] == "e"]
    assert len(read) == 2  # the drain went on to the end of the backlog
    partition.close()


def test_an_ingested_event_id_cannot_suppress_the_dataflows_own_events(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """Event ids are free text: one spelled like the dataflow's de-duplication key of an
    identity merge must not make that merge a duplicate."""
    settings = make_settings(redis_url, key_prefix)
    t0 = time.time() - 600
    append(redis_client, settings, [
        {"type": "visit", "event_id": "dataflow>ann>merge:anon:ck>ann", "client_id": "ann",
         "event_time": t0 - 5},
        {"type": "cart_add", "event_id": "a1", "anonymous_id": "ck", "event_time": t0,
         "products": [{"product_id": "p1", "category": "shoes", "price": 30, "quantity": 1}]},
        {"type": "identify", "event_id": "a2", "client_id": "ann", "anonymous_id": "ck",
         "event_time": t0 + 5}])
    drain(settings)
    merged = states(redis_client, settings)
    assert merged["anon:ck"].merged_into == "ann"
    assert "anon:ck" in merged["ann"].aliases
    assert [item.product_id for item in merged["ann"].cart] == ["p1"]


def test_timers_pending_counts_each_timer_once_over_drain_rounds(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """A merge appends events the first round's partitions may not read: a second round
    loads every bucket again, and must not count its timers on top of the first's."""
    settings = make_settings(redis_url, key_prefix,
                             policy={"quiet_hours": None, "frequency_cap_per_day": 0})
    t0 = time.time() - 600
    append(redis_client, settings, [
        {"type": "cart_add", "event_id": "a1", "anonymous_id": "ck", "event_time": t0,
         "products": [{"product_id": "p1", "category": "shoes", "price": 30, "quantity": 1}]},
        {"type": "identify", "event_id": "a2", "client_id": "ann", "anonymous_id": "ck",
         "event_time": t0 + 5},
        {"type": "cart_add", "event_id": "a3", "client_id": "bob", "event_time": t0 + 6,
         "products": [{"product_id": "p2", "category": "bags", "price": 10, "quantity": 1}]}])
    registry = CollectorRegistry()
    drain(settings, registry)
    rules = settings.trigger_rules()
    pending = sum(1 for state in states(redis_client, settings).values()
                  if next_due(state, rules) is not None)
    assert pending > 0
    assert registry.get_sample_value("crmflow_timers_pending") == pending


def test_as_of_bounds_which_timers_fire(redis_client: redis.Redis, redis_url: str,
                                        key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix)
    t0 = time.time() - 5 * DAY
    append(redis_client, settings, [
        {"event_id": "a", "type": "cart_add", "client_id": "early", "event_time": t0,
         "products": [{"product_id": "p", "price": 1}]},
        {"event_id": "b", "type": "cart_add", "client_id": "late", "event_time": t0 + DAY,
         "products": [{"product_id": "p", "price": 1}]},
    ])
    drain(settings, as_of=t0 + 7200)  # early's cart was due at t0+1h, late's at t0+1d+1h
    fired = {t["client_id"] for t in all_triggers(redis_client, settings)}
    assert fired == {"early"}
    drain(settings)  # later, up to now
    assert {t["client_id"] for t in all_triggers(redis_client, settings)} == {"early", "late"}


def test_applied_events_are_trimmed_after_the_retention(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    kept = make_settings(redis_url, key_prefix + "k")  # default retention: a day
    trimmed = make_settings(redis_url, key_prefix + "t", redis={"stream_retention": 0},
                            dataflow={"offset_flush_interval": 0})
    for settings in (kept, trimmed):
        append(redis_client, settings, flat(5, 50))
        drain(settings)
        drain(settings)  # trims with the positions the first run committed

    def length(settings: Settings) -> int:
        layout = KeyLayout.from_settings(settings)
        return sum(redis_client.xlen(s) for s in layout.all_event_streams())
    distinct = len({e["event_id"] for e in flat(5, 50)})  # resends were deduplicated
    assert length(kept) == distinct and length(trimmed) <= 4  # the last of each
