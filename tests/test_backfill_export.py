"""`crmflow backfill` and `crmflow export`: history fed to the live system ends where a
replay of the same history and live traffic ends, without sending any past occasion; the
export is readable by pandas, polars and DuckDB."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from features.events import parse_event
from features.triggers import due_timers
from history.backfill import backfill
from history.export import export
from history.replay import replay
from sinks.event_log import AppendOptions, EventLog
from sinks.keys import KeyLayout
from sinks.parquet_export import client_states
from tests.histories import histories
from tests.support import REPO, all_triggers, drain, make_settings, write_config

DAY = 86400.0
NO_POLICY = {"quiet_hours": None, "frequency_cap_per_day": 0, "holdout_percent": 0,
             "channels": [{"name": "crm", "contact": None}]}


def live_events(prefix: str, clients: list[str], now: float) -> list[dict[str, Any]]:
    """A visit, a cart add and, for every other client, an order: a minute ago."""
    out: list[dict[str, Any]] = []
    for n, client in enumerate(clients):
        t = now - 60 + n * 0.01
        out.append({"event_id": f"{prefix}{n}-v", "type": "visit", "client_id": client,
                    "event_time": t})
        out.append({"event_id": f"{prefix}{n}-c", "type": "cart_add", "client_id": client,
                    "event_time": t + 1,
                    "products": [{"product_id": "live1", "price": 12.0}]})
        if n % 2 == 0:
            out.append({"event_id": f"{prefix}{n}-o", "type": "order_placed",
                        "client_id": client, "event_time": t + 2,
                        "order": {"order_id": f"{prefix}{n}", "total": 12.0}})
    return out


def append_live(log: EventLog, events: list[dict[str, Any]]) -> None:
    assert all(log.append([parse_event({**e, "received_at": e["event_time"]})
                           for e in events]))


def without_rfm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RFM scores depend on the model each side computed when: compared elsewhere."""
    return sorted(({k: v for k, v in row.items() if not k.startswith("rfm_")} for row in rows),
                  key=lambda row: row["client_id"])


def test_backfill_then_live_matches_a_replay_and_sends_nothing_past(
        tmp_path: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    now = time.time()
    history = [e for h in histories(21, 120, now - 40 * DAY) for e in h]
    old = now - 400 * DAY  # a few long-quiet buyers: their win-back is due in the future
    history += [{"event_id": f"old{n}", "type": "order_placed", "client_id": f"old{n}",
                 "event_time": old + n * 30 * DAY, "order": {"order_id": f"old{n}",
                                                             "total": 40}}
                for n in range(8)]
    history_file = tmp_path / "history.jsonl"
    history_file.write_text("".join(json.dumps(e) + "\n" for e in history))

    settings = make_settings(redis_url, key_prefix, policy=NO_POLICY)
    layout = KeyLayout.from_settings(settings)
    log = EventLog(redis_client, layout, AppendOptions(settings.redis.dedupe_window))
    during = live_events("during", [f"new{n}" for n in range(6)], now)
    append_live(log, during)  # live traffic that reaches the streams before the history
    result = backfill([history_file], "events", settings, wait=None)
    assert result.appended == len({e["event_id"] for e in history})
    after = live_events("after", ["c1", "c2", "c3", "c4", "new0", "old0", "fresh"], now + 30)
    append_live(log, after)
    drain(settings)
    as_of = time.time()
    export(settings, tmp_path / "live", as_of=as_of)

    everything = tmp_path / "everything.jsonl"
    everything.write_text("".join(json.dumps(e) + "\n" for e in history + during + after))
    replay_prefix = f"r{uuid.uuid4().hex[:10]}"
    replay([everything], "events", tmp_path / "replay", settings, as_of=as_of,
           redis_url=redis_url, key_prefix=replay_prefix)

    # Profiles and memberships are those of the replay.
    live_profiles = pq.read_table(tmp_path / "live" / "profiles.parquet").to_pylist()
    replayed = pq.read_table(tmp_path / "replay" / "profiles.parquet").to_pylist()
    assert len(live_profiles) == 120 + 8 + 6 + 1
    assert without_rfm(live_profiles) == without_rfm(replayed)

    def memberships(folder: str) -> list[tuple[str, str, Any]]:
        rows = pq.read_table(tmp_path / folder / "segments.parquet").to_pylist()
        return sorted((r["client_id"], r["segment"], r["entered_at"]) for r in rows
                      if not r["segment"].startswith("rfm:"))

    assert memberships("live") == memberships("replay")

    # Pending timers are the replay's: the same next occasions, due after now.
    rules = settings.trigger_rules()
    replay_layout = KeyLayout(replay_prefix, layout.partitions, layout.buckets)
    live_states = dict(client_states(redis_client, layout))
    replay_states = dict(client_states(redis_client, replay_layout))

    def future(all_states: dict[str, Any]) -> dict[str, list[tuple[float, str]]]:
        return {key: [t for t in due_timers(state, rules) if t[0] > as_of]
                for key, state in all_states.items()}

    pending = future(live_states)
    assert pending == future(replay_states)
    assert sum(1 for timers in pending.values() if timers) >= 8  # win-backs, at least

    # Nothing that was due before the backfill was sent; live occasions were.
    triggers = all_triggers(redis_client, settings)
    past = [t for t in triggers if t["fired_at"] < _iso(now - 120)]  # before live traffic
    assert past and {(t["status"], t["reason"]) for t in past} == {("suppressed", "backfill")}
    live_confirmations = {t["key"] for t in triggers
                          if t["type"] == "order_confirmation" and t["status"] == "sent"}
    assert live_confirmations == {e["order"]["order_id"] for e in during + after
                                  if e["type"] == "order_placed"}
    replayed_triggers = pq.read_table(tmp_path / "replay" / "triggers.parquet").to_pylist()
    assert {t["status"] for t in replayed_triggers if t["type"] == "order_confirmation"} == {
        "sent"}  # a replay decides as things were: the suppression is the backfill's

    check_export_readers(tmp_path / "live", len(live_profiles), len(triggers))


def _iso(seconds: float) -> str:
    from features.events import format_time

    return format_time(seconds) or ""


def check_export_readers(folder: Path, profiles: int, triggers: int) -> None:
    days = sorted(p.name for p in (folder / "triggers").iterdir())
    assert days and all(d.startswith("day=") for d in days)
    frame = pd.read_parquet(folder / "profiles.parquet")
    assert len(frame) == profiles and frame["orders_count"].dtype == "int64"
    assert str(frame["last_order_at"].dtype) == "datetime64[ms, UTC]"
    assert str(frame["checkout_started_at"].dtype) == "datetime64[ms, UTC]"
    # the profile's product lists too, as lists of ids
    schema = pq.read_schema(folder / "profiles.parquet")
    for name in ("cart_products", "recently_viewed", "favourites"):
        column = schema.field(name).type
        assert pa.types.is_list(column) and column.value_type == pa.string(), (name, column)
    assert any(len(ids) for ids in frame["recently_viewed"])
    by_day = pd.read_parquet(folder / "triggers")
    assert len(by_day) == triggers and "day" in by_day.columns
    polars_triggers = pl.read_parquet(folder / "triggers" / "**" / "*.parquet",
                                      hive_partitioning=True)
    assert polars_triggers.height == triggers
    assert pl.read_parquet(folder / "segments.parquet").width == 3
    con = duckdb.connect()
    counted = con.execute(
        "select count(*), count(distinct day) from read_parquet(?, hive_partitioning = true)",
        [str(folder / "triggers" / "**" / "*.parquet")]).fetchone()
    assert counted == (triggers, len(days))
    (top,) = con.execute("select max(orders_count) from read_parquet(?)",
                         [str(folder / "profiles.parquet")]).fetchone() or (None,)
    assert top == int(frame["orders_count"].max())


def test_backfill_and_export_commands(tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix, policy=NO_POLICY)
    config = write_config(settings, tmp_path / "crmflow.yaml")
    orders = tmp_path / "orders.csv"
    orders.write_text("client_id,timestamp,amount,order_id\n"
                      "a,2023-01-05T10:00:00Z,20,1\na,2023-01-05T10:00:00Z,5,1\n"
                      "b,2023-02-01T10:00:00Z,7,2\nb,someday,7,3\n")

    def crmflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crmflow.cli", *args, "--config",
                               str(config)], cwd=REPO, capture_output=True, text=True,
                              timeout=120, check=False)

    done = crmflow("backfill", str(orders), "--format", "orders", "--wait", "0.5")
    assert done.returncode == 3, done.stderr  # appended, but no dataflow applied it
    assert "appended: 2; already there (duplicates): 0" in done.stdout
    assert "bad timestamp: 1" in done.stdout
    assert "had not applied the whole backfill" in done.stdout
    drain(settings)
    again = crmflow("backfill", str(orders), "--format", "orders", "--no-wait")
    assert "appended: 0; already there (duplicates): 2" in again.stdout  # idempotent
    done = crmflow("export", "--out", str(tmp_path / "out"), "--as-of", "2023-03-01")
    assert done.returncode == 0, done.stderr
    assert "profiles: 2; memberships:" in done.stdout
    profiles = pq.read_table(tmp_path / "out" / "profiles.parquet").to_pylist()
    assert sorted((p["client_id"], p["monetary_total"], p["recency_days"]) for p in profiles) == [
        ("a", 25.0, 54.583), ("b", 7.0, 27.583)]
    triggers = pq.read_table(tmp_path / "out" / "triggers").to_pylist()
    assert {(t["type"], t["status"], t["reason"]) for t in triggers
            if t["type"] == "order_confirmation"} == {("order_confirmation", "suppressed",
                                                       "backfill")}
    bad = crmflow("export", "--out", str(tmp_path / "x"), "--as-of", "soon")
    assert bad.returncode == 1 and "--as-of: not an ISO-8601 time" in bad.stderr
    # b ordered on 1 February: its live profile cannot say what it was on 10 January
    early = crmflow("export", "--out", str(tmp_path / "early"), "--as-of", "2023-01-10")
    assert early.returncode == 1
    assert ("--as-of: client 'b' has events up to 2023-02-01T10:00:00.000Z, after the as-of "
            "time 2023-01-10T00:00:00.000Z") in early.stderr, early.stderr
    assert not (tmp_path / "early" / "profiles.parquet").exists()
    assert not (tmp_path / "early" / "segments.parquet").exists()


def test_a_backfill_keeps_two_clients_orders_whose_ids_read_alike(
        tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    orders = tmp_path / "orders.csv"  # c3-1's order 2 and c3's order 1-2
    orders.write_text("client_id,timestamp,amount,order_id\n"
                      "c3-1,2011-01-01T00:00:00,5,2\nc3,2011-01-02T00:00:00,9,1-2\n")
    settings = make_settings(redis_url, key_prefix, policy=NO_POLICY)
    result = backfill([orders], "orders", settings, wait=None)
    assert (result.appended, result.duplicates) == (2, 0)
    again = backfill([orders], "orders", settings, wait=None)  # a repeat is still de-duplicated
    assert (again.appended, again.duplicates) == (0, 2)


def test_a_backfill_fits_its_appends_under_a_small_stream_cap(
        tmp_path: Path, redis_url: str, key_prefix: str) -> None:
    """A cap below one append chunk's share of a stream: the chunk goes in parts as the
    dataflow makes room (it waited for ever, saying the dataflow was behind, on a stream
    the dataflow had emptied)."""
    orders = tmp_path / "orders.csv"
    orders.write_text("client_id,timestamp,amount,order_id\n" + "".join(
        f"c{n % 50},2011-01-01T{n // 60 % 24:02d}:{n % 60:02d}:00,5,{n}\n"
        for n in range(600)))
    settings = make_settings(redis_url, key_prefix, policy=NO_POLICY,
                             dataflow={"partitions": 1, "buckets": 4},
                             redis={"max_stream_length": 500})
    done: list[Any] = []
    appending = threading.Thread(target=lambda: done.append(
        backfill([orders], "orders", settings, wait=None)), daemon=True)
    appending.start()
    deadline = time.monotonic() + 120
    while appending.is_alive():
        assert time.monotonic() < deadline, "the backfill still waits"
        drain(settings)  # the dataflow makes room
        appending.join(0.5)
    drain(settings)
    assert (done[0].appended, done[0].duplicates) == (600, 0)
    states = dict(client_states(redis.Redis.from_url(redis_url), KeyLayout.from_settings(
        settings)))
    assert sum(state.orders_count for state in states.values()) == 600
