"""`crmflow replay` with identity stitching: anonymous histories join their clients at the
link, as live traffic in event-time order would have them, whatever the batch size,
workers or processes.

An anonymous visitor's merge answer and forwarded events are written by the dataflow
itself; were they appended after the history, where they landed among the client's own
events would hang on batch boundaries and on which process ran ahead (a cart counted once
or twice, an abandoned-cart reminder raised or not). The reference is live traffic applied
one history entry at a time, each with the identity steps it causes."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from prometheus_client import CollectorRegistry

from config.settings import Settings
from dataflows.run import run_dataflow
from features.identity import with_links
from history.load import load_history
from history.replay import HELD, replay, replay_settings
from sinks.event_log import AppendOptions, EventLog
from sinks.keys import KeyLayout
from sinks.parquet_export import ExportSummary, write_profiles, write_triggers
from sinks.redis_client import sync_client
from tests.support import make_settings

NO_POLICY = {"quiet_hours": None, "frequency_cap_per_day": 0, "holdout_percent": 0,
             "channels": [{"name": "crm", "contact": None}]}
SORT_KEYS = {"profiles": ["client_id"], "segments": ["client_id", "segment"],
             "triggers": ["trigger_id", "status", "decided_at"]}
DAY = 86400.0


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def write_lines(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def replay_tables(source: Path, out: Path, settings: Settings, redis_url: str,
                  **options: Any) -> dict[str, pa.Table]:
    prefix = f"r{uuid.uuid4().hex[:10]}"
    replay([source], "events", out, settings, redis_url=redis_url, key_prefix=prefix,
           **options)
    client = redis.Redis.from_url(redis_url)
    assert not client.keys(f"{prefix}:{HELD}*")  # the held identity steps are gone
    client.close()
    return {kind: pq.read_table(out / f"{kind}.parquet").sort_by(
        [(k, "ascending") for k in keys]) for kind, keys in SORT_KEYS.items()}


def assert_all_equal(outputs: dict[str, dict[str, pa.Table]]) -> None:
    (first_name, first), *others = outputs.items()
    for name, other in others:
        for kind in SORT_KEYS:
            assert first[kind].equals(other[kind]), (
                f"{kind}: {name} differs from {first_name}:\n"
                f"{first[kind].to_pylist()}\n{other[kind].to_pylist()}")


def test_two_cookies_join_their_client_at_their_links_whatever_the_batches_or_processes(
        tmp_path: Path, redis_url: str) -> None:
    """A cart filled as a guest joins the client at the link, so its reminder is due an hour
    after the add and is raised before the client's next event; the second cookie's cart
    add, forwarded, comes after both links and starts a new cart episode."""
    source = write_lines(tmp_path / "merge.jsonl", [
        {"type": "cart_add", "anonymous_id": "a40", "event_time": "2024-01-02T11:52:16Z",
         "products": [{"product_id": "p1", "price": 5, "quantity": 1}], "event_id": "e1"},
        {"type": "identify", "client_id": "c19", "anonymous_id": "a40",
         "event_time": "2024-01-02T12:37:12Z", "event_id": "e2"},
        {"type": "identify", "client_id": "c19", "anonymous_id": "a115",
         "event_time": "2024-01-02T13:55:15Z", "event_id": "e3"},
        {"type": "cart_add", "anonymous_id": "a115", "event_time": "2024-01-02T14:14:44Z",
         "products": [{"product_id": "p1", "price": 5, "quantity": 1}], "event_id": "e4"},
    ])
    settings = make_settings(redis_url, "unused", policy=NO_POLICY)
    runs: dict[str, dict[str, Any]] = {
        "defaults": {},
        "batches of 1": {"batch_size": 1},
        "batches of 2, two workers": {"batch_size": 2, "workers": 2},
        "two processes": {"processes": 2},
        "two processes, batches of 1": {"processes": 2, "batch_size": 1},
    }
    outputs = {name: replay_tables(source, tmp_path / f"out{n}", settings, redis_url,
                                   **options)
               for n, (name, options) in enumerate(runs.items())}
    assert_all_equal(outputs)

    profiles = outputs["defaults"]["profiles"].to_pylist()
    assert [(p["client_id"], p["cart_items"], p["cart_value"]) for p in profiles] == [
        ("c19", 2, 10.0)]
    triggers = outputs["defaults"]["triggers"].to_pylist()
    assert [(t["client_id"], t["type"], t["fired_at"].timestamp(), t["status"])
            for t in triggers] == [("c19", "abandoned_cart", at("2024-01-02T12:52:16"), "sent")]


def identity_history(seed: int, clients: int, start: float) -> list[dict[str, Any]]:
    """Clients with anonymous visits before and after their links: several cookies per
    client (one client with more than the alias cap), cookies linked in the same second as
    their own events, a shared device linked to two clients, guest orders."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []

    def add(kind: str, t: float, key: dict[str, str], **fields: Any) -> None:
        events.append({"event_id": f"e{len(events)}", "type": kind, "event_time": round(t),
                       **key, **fields})

    def shopping(t: float, key: dict[str, str], steps: int) -> float:
        for _ in range(steps):
            t += rng.choice([0, 0, 1, 60, 1800, 3 * 3600, 9 * 3600])
            kind = rng.choice(["product_view", "product_view", "cart_add", "cart_add",
                               "cart_remove", "visit", "order_placed"])
            product = {"product_id": f"p{rng.randint(1, 6)}", "price": rng.randint(2, 40),
                       "quantity": rng.randint(1, 3), "category": f"k{rng.randint(1, 3)}"}
            if kind == "order_placed":
                add(kind, t, key, order={"order_id": f"o{len(events)}",
                                         "total": rng.randint(5, 200)})
            elif kind == "visit":
                add(kind, t, key)
            else:
                add(kind, t, key, products=[product])
        return t

    for c in range(clients):
        client = f"c{c}"
        t = start + rng.uniform(0, DAY)
        t = shopping(t, {"client_id": client}, rng.randint(0, 4))
        for k in range(12 if c == 0 else rng.randint(1, 3)):
            cookie = {"anonymous_id": f"a{c}-{k}"}
            t = shopping(t + rng.uniform(0, 3 * 3600), cookie, rng.randint(0, 5))
            t += rng.choice([0, 1, 600, 4000])
            add(rng.choice(["identify", "registered"]), t,
                {"client_id": client, **cookie}, traits={"email": f"{client}@example.com"})
            t = shopping(t, cookie, rng.randint(0, 4))  # forwarded to the client
            t = shopping(t, {"client_id": client}, rng.randint(0, 3))
    # a shared device: the first client keeps the cookie and whatever it does later
    t = start + DAY / 2
    shared = {"anonymous_id": "shared"}
    t = shopping(t, shared, 4)
    for client in ("c1", "c2", "c1"):
        t += rng.uniform(0, 3600)
        add("identify", t, {"client_id": client, **shared})
        t = shopping(t, shared, 3)
    rng.shuffle(events)  # the replay orders them
    return events


def test_replayed_identity_histories_do_not_depend_on_batches_workers_or_processes(
        tmp_path: Path, redis_url: str) -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    events = identity_history(7, 30, start)
    source = write_lines(tmp_path / "identity.jsonl", events)
    settings = make_settings(redis_url, "unused", policy=NO_POLICY,
                             dataflow={"buckets": 16})
    as_of = start + 6 * DAY
    runs: dict[str, dict[str, Any]] = {
        "large batches": {"batch_size": 5000},
        "batches of 1": {"batch_size": 1},
        "batches of 7, two workers": {"batch_size": 7, "workers": 2},
        "two processes, batches of 3": {"processes": 2, "batch_size": 3},
    }
    outputs = {name: replay_tables(source, tmp_path / f"out{n}", settings, redis_url,
                                   as_of=as_of, **options)
               for n, (name, options) in enumerate(runs.items())}
    assert_all_equal(outputs)
    first = outputs["large batches"]
    profiles = {p["client_id"]: p for p in first["profiles"].to_pylist()}
    # every cookie joined its client: none is left as a profile of its own
    assert not [key for key in profiles if key.startswith("anon:")]
    kinds = {t["type"] for t in first["triggers"].to_pylist()}
    assert {"abandoned_cart", "order_confirmation"} <= kinds


def live_in_event_time(source: Path, out: Path, settings: Settings, redis_url: str,
                       as_of: float) -> None:
    """The reference: the history's entries (link requests after their events) appended one
    at a time, each applied with every identity step it causes before the next (the
    dataflow drains what it writes itself), on event time as a replay runs; then what is
    due by `as_of` fires. Settings without RFM: no model to compute at the end."""
    run = replay_settings(settings, redis_url, f"r{uuid.uuid4().hex[:10]}", workers=None,
                          batch_size=None)
    client = sync_client(run.redis)
    layout = KeyLayout.from_settings(run)
    history = load_history([source], "events", as_of=as_of)
    log = EventLog(client, layout, AppendOptions(dedupe_window=0))
    before = history.events[0].event_time - 1.0
    for entry in with_links(history.events):
        log.append([entry], links=False)
        run_dataflow(run, stop_when_caught_up=True, registry=CollectorRegistry(),
                     metrics_port=0, as_of=before, replay=True)
    run_dataflow(run, stop_when_caught_up=True, registry=CollectorRegistry(), metrics_port=0,
                 as_of=as_of, replay=True)
    out.mkdir(parents=True)
    summary = ExportSummary()
    write_profiles(client, layout, run.trigger_rules().segments, out, as_of, summary)
    write_triggers(client, layout, out, summary, by_day=False)
    client.close()


def test_a_replay_equals_live_traffic_applied_one_event_at_a_time_in_event_time(
        tmp_path: Path, redis_url: str) -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    source = write_lines(tmp_path / "identity.jsonl", identity_history(1, 3, start))
    settings = make_settings(redis_url, "unused", policy=NO_POLICY, rfm={"enabled": False},
                             dataflow={"buckets": 16})
    as_of = start + 6 * DAY
    live_in_event_time(source, tmp_path / "live", settings, redis_url, as_of)
    live = {kind: pq.read_table(tmp_path / "live" / f"{kind}.parquet").sort_by(
        [(k, "ascending") for k in keys]) for kind, keys in SORT_KEYS.items()}
    assert live["triggers"].num_rows > 0
    assert_all_equal({
        "live, one event at a time": live,
        "replay": replay_tables(source, tmp_path / "replay", settings, redis_url, as_of=as_of),
        "replay, two processes": replay_tables(source, tmp_path / "replay2", settings,
                                               redis_url, as_of=as_of, processes=2),
    })
