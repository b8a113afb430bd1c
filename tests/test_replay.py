"""`crmflow replay`: the real data sets replayed and checked against independent
computations, and the output's independence from workers, batch size and file splits."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
import re
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from config.settings import Settings
from history.load import Progress
from history.replay import ReplayResult, replay, replay_settings
from history.replay_group import ReplayGroupError, run_group
from tests.conftest import SHARED_DATA
from tests.histories import histories
from tests.support import REPO, make_settings
from tests.test_uci_replay import expected_profiles, midrank_scores

UCI = SHARED_DATA / "uci_online_retail.csv.gz"
REES46 = SHARED_DATA / "rees46_2019_oct_head.csv.gz"
DAY = 86400.0
NO_POLICY = {"quiet_hours": None, "frequency_cap_per_day": 0, "holdout_percent": 0,
             "channels": [{"name": "crm", "contact": None}]}


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=(
        f"real data not found at {path} (CI provides ../shared/data; a clone may not)"))


def settings_for(redis_url: str, **sections: dict[str, Any]) -> Settings:
    return make_settings(redis_url, "unused", policy=NO_POLICY, **sections)


def run(inputs: list[Path], fmt: str, out: Path, settings: Settings, redis_url: str,
        **options: Any) -> ReplayResult:
    return replay(inputs, fmt, out, settings, redis_url=redis_url,
                  key_prefix=f"r{uuid.uuid4().hex[:10]}", **options)


def table(out: Path, name: str, keys: list[str]) -> pa.Table:
    return pq.read_table(out / f"{name}.parquet").sort_by([(k, "ascending") for k in keys])


SORT_KEYS = {"profiles": ["client_id"], "segments": ["client_id", "segment"],
             "triggers": ["trigger_id", "status", "decided_at"]}


# --- the real data ------------------------------------------------------------------------------


@needs(UCI)
def test_uci_replay_matches_group_bys_of_the_raw_file(tmp_path: Path, redis_url: str) -> None:
    settings = settings_for(redis_url, dataflow={"buckets": 512})
    result = run([UCI], "uci-online-retail", tmp_path, settings, redis_url)
    assert result.history.tally.rows == 541_909
    assert result.history.tally.skipped == {
        "no CustomerID": 135_080, "C invoice with no earlier invoice of its client": 200}
    assert result.history.types == {"order_placed": 18_536, "order_refunded": 3_454}
    as_of = datetime(2011, 12, 9, 12, 50, tzinfo=UTC).timestamp()  # the last invoice
    assert result.as_of == as_of

    expected = expected_profiles()
    profiles = {row["client_id"]: row for row in pq.read_table(tmp_path / "profiles.parquet")
                .to_pylist()}
    buyers = {c: p for c, p in profiles.items() if p["orders_count"]}
    assert set(buyers) == set(expected)
    r = midrank_scores({c: e["last_order_at"] for c, e in expected.items()})
    f = midrank_scores({c: e["orders_count"] for c, e in expected.items()})
    m = midrank_scores({c: e["monetary_total"] for c, e in expected.items()})
    for client, want in expected.items():
        got = buyers[client]
        assert got["orders_count"] == want["orders_count"], client
        assert got["monetary_total"] == pytest.approx(want["monetary_total"], abs=0.005), client
        assert got["first_order_at"].timestamp() == want["first_order_at"], client
        assert got["last_order_at"].timestamp() == want["last_order_at"], client
        assert got["recency_days"] == round((as_of - want["last_order_at"]) / DAY, 3), client
        n = want["orders_count"]
        mean = None if n < 2 else round(
            (want["last_order_at"] - want["first_order_at"]) / (n - 1) / DAY, 3)
        if n <= 64:  # the state keeps the latest 64 orders
            assert got["mean_days_between_orders"] == mean, client
        assert (got["rfm_r"], got["rfm_f"], got["rfm_m"]) == (r[client], f[client], m[client])
        assert got["avg_order_value"] == round(got["monetary_total"] / n, 2)
    # every client is a buyer: the 33 with only C invoices have no earlier invoice to
    # return in the file, so their C invoices are skipped and they have no events
    assert set(profiles) == set(expected)

    segments = pq.read_table(tmp_path / "segments.parquet").to_pylist()
    rfm_members = Counter(s["segment"] for s in segments if s["segment"].startswith("rfm:"))
    assert rfm_members == Counter(f"rfm:{p['rfm_segment']}" for p in buyers.values())
    assert {s["entered_at"].timestamp() for s in segments
            if s["segment"].startswith("rfm:")} == {as_of}

    triggers = pq.read_table(tmp_path / "triggers.parquet").to_pylist()
    confirmations = Counter(t["key"] for t in triggers if t["type"] == "order_confirmation")
    assert len(confirmations) == 18_536 and set(confirmations.values()) == {1}
    assert max(t["fired_at"].timestamp() for t in triggers) <= as_of  # none after as-of
    assert {t["status"] for t in triggers} <= {"sent", "suppressed"}
    print("\n" + "\n".join(result.summary()))


def rees46_expected(as_of: float
                    ) -> tuple[Counter[str], dict[str, int], dict[str, int], set[str]]:
    """Per user from the raw rows: abandoned carts and browses due by `as_of`, product
    views, orders (the purchases of one session at one second); and the users. A browse
    reminder needs a product viewed that is neither in the cart nor bought by the latest
    order (the purchases at the latest purchase time)."""
    rows: dict[str, list[tuple[float, int, str, str]]] = defaultdict(list)
    rank = {"view": 0, "cart": 1, "purchase": 2}
    orders: dict[str, set[tuple[str, float]]] = defaultdict(set)
    views: Counter[str] = Counter()
    with gzip.open(REES46, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            at = datetime.strptime(row["event_time"], "%Y-%m-%d %H:%M:%S %Z").replace(
                tzinfo=UTC).timestamp()
            rows[row["user_id"]].append((at, rank[row["event_type"]], row["event_type"],
                                         row["product_id"]))
            if row["event_type"] == "purchase":
                orders[row["user_id"]].add((row["user_session"], at))
            elif row["event_type"] == "view":
                views[row["user_id"]] += 1
    fired: Counter[str] = Counter()
    for user_rows in rows.values():
        user_rows.sort()
        cart_open = reminded = False
        cart_changed = 0.0
        last_view: float | None = None
        browsed: set[str] = set()  # products viewed since the browse episode began
        carted: set[str] = set()
        bought: set[str] = set()
        bought_at: float | None = None
        for t, _, kind, product in user_rows:
            if cart_open and not reminded and t >= cart_changed + 3600:
                fired["abandoned_cart"] += 1
                reminded = True
            if last_view is not None and t >= last_view + 7200:
                fired["abandoned_browse"] += bool(browsed - carted - bought)
                last_view, browsed = None, set()
            if kind == "view":
                last_view = t
                browsed.add(product)
            elif kind == "cart":
                last_view, browsed = None, set()
                cart_open, reminded = (True, False) if not cart_open else (True, reminded)
                cart_changed = t
                carted.add(product)
            else:
                last_view, browsed, cart_open, carted = None, set(), False, set()
                bought = (bought if t == bought_at else set()) | {product}
                bought_at = t
        fired["abandoned_cart"] += cart_open and not reminded and cart_changed + 3600 <= as_of
        fired["abandoned_browse"] += (last_view is not None and last_view + 7200 <= as_of
                                      and bool(browsed - carted - bought))
    return fired, dict(views), {user: len(o) for user, o in orders.items()}, set(rows)


@needs(REES46)
def test_rees46_replay_matches_a_per_user_scan(tmp_path: Path, redis_url: str) -> None:
    settings = settings_for(redis_url, dataflow={"buckets": 256})
    result = run([REES46], "rees46", tmp_path, settings, redis_url)
    as_of = result.as_of
    assert result.history.tally.rows == 17_434 and not result.history.tally.bad
    fired, views, orders, users = rees46_expected(as_of)
    triggers = pq.read_table(tmp_path / "triggers.parquet").to_pylist()
    decided = Counter(t["type"] for t in triggers if t["status"] != "deferred")
    assert decided["abandoned_cart"] == fired["abandoned_cart"] > 0
    assert decided["abandoned_browse"] == fired["abandoned_browse"] > 0
    assert decided["order_confirmation"] == sum(orders.values())
    profiles = {p["client_id"]: p for p in pq.read_table(tmp_path / "profiles.parquet")
                .to_pylist()}
    assert set(profiles) == users
    assert {c: p["views_24h"] for c, p in profiles.items() if p["views_24h"]} == views
    assert {c: p["orders_count"] for c, p in profiles.items() if p["orders_count"]} == orders
    assert all(p["visits"] >= 1 for p in profiles.values())  # every user had a session


# --- determinism --------------------------------------------------------------------------------


def synthetic_history(path: Path, clients: int = 150) -> list[dict[str, Any]]:
    """Seeded histories (duplicates, disorder, cancellations) plus anonymous visitors who
    register later, over the two weeks before 2024-06-01."""
    start = datetime(2024, 5, 18, tzinfo=UTC).timestamp()
    events = [e for history in histories(11, clients, start) for e in history]
    rng = random.Random(3)
    for n in range(20):
        t = start + rng.uniform(0, 10 * DAY)
        events.append({"event_id": f"anon-{n}-view", "type": "product_view",
                       "anonymous_id": f"visitor{n}", "event_time": t,
                       "products": [{"product_id": "p1", "price": 5}]})
        events.append({"event_id": f"anon-{n}-reg", "type": "registered",
                       "anonymous_id": f"visitor{n}", "client_id": f"c{n}",
                       "event_time": t + 600, "traits": {"email": f"v{n}@example.com"}})
    return events


def write_lines(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_replay_output_does_not_depend_on_workers_processes_batches_or_file_splits(
        tmp_path: Path, redis_url: str) -> None:
    events = synthetic_history(tmp_path)
    whole = write_lines(tmp_path / "all.jsonl", events)
    rng = random.Random(5)
    shuffled = events[:]
    rng.shuffle(shuffled)
    parts = [write_lines(tmp_path / f"part{k}.jsonl", shuffled[k::3]) for k in range(3)]
    settings = settings_for(redis_url)
    as_of = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
    runs = {
        "one worker": ([whole], {"workers": 1, "batch_size": 2000}),
        "two workers, small batches, split files": (parts[::-1], {"workers": 2,
                                                                  "batch_size": 37}),
        "two processes, split files": (parts, {"processes": 2, "batch_size": 500}),
    }
    outputs: dict[str, dict[str, pa.Table]] = {}
    for name, (inputs, options) in runs.items():
        out = tmp_path / name.replace(" ", "_").replace(",", "")
        screen = io.StringIO()
        result = run(inputs, "events", out, settings, redis_url, as_of=as_of,
                     progress=Progress(screen, enabled=True), **options)
        outputs[name] = {kind: table(out, kind, keys) for kind, keys in SORT_KEYS.items()}
        # the dataflow's final count, in one process (its metrics) or a group (the
        # positions committed to Redis): every event, and those it wrote itself (merges)
        shown = [line for line in screen.getvalue().split("\r") if "dataflow:" in line][-1]
        found = re.search(r"dataflow: ([\d,]+) events read \(([\d,]+) from the history, "
                          r"[\d,]+/s\)(.*)", shown)
        assert found, shown
        read, total = (int(found[n].replace(",", "")) for n in (1, 2))
        assert total == len(result.history.events)
        assert total <= read <= total + 50, shown
        processes = options.get("processes", 1)
        assert found[3].strip() == (f"in {processes} processes" if processes > 1 else ""), shown
    first, *others = outputs.values()
    for kind in SORT_KEYS:
        assert first[kind].num_rows > 0, kind
        for other in others:
            assert first[kind].equals(other[kind]), kind
    kinds = Counter(first["triggers"].column("type").to_pylist())
    assert {"abandoned_cart", "order_confirmation", "welcome"} <= set(kinds)
    merged = [p for p in first["profiles"].to_pylist() if p["client_id"] == "c0"]
    assert merged and merged[0]["traits"] and "v0@example.com" in merged[0]["traits"]
    assert max(first["triggers"].column("fired_at").to_pylist()).timestamp() <= as_of


def test_replay_command_prints_a_summary_and_strict_names_the_bad_line(tmp_path: Path) -> None:
    text = ("CustomerID,When,Money,Invoice\n"
            "1,2024-01-01T10:00:00,5,A\n1,2024-01-01T10:00:00,6,A\n"
            "2,2024-02-01,not-a-number,B\n3,2024-02-03 12:00:00+01:00,9.5,\n")
    data = tmp_path / "orders.csv.gz"
    with gzip.open(data, "wt") as handle:
        handle.write(text)
    command = [sys.executable, "-m", "crmflow.cli", "replay", str(data), "--format", "orders",
               "--map", "client_id=CustomerID,timestamp=When,amount=Money,order_id=Invoice",
               "--out", str(tmp_path / "out"), "--as-of", "2024-03-01T00:00:00Z"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "rows read: 4; events: 2; clients: 2" in done.stdout
    assert "bad amount: 1 (first: " in done.stdout and ":4: bad amount" in done.stdout
    assert "order_confirmation:" in done.stdout
    profiles = pq.read_table(tmp_path / "out" / "profiles.parquet").to_pylist()
    assert sorted((p["client_id"], p["monetary_total"]) for p in profiles) == [
        ("1", 11.0), ("3", 9.5)]
    assert math.isclose(profiles[0]["recency_days"] or 0, profiles[0]["recency_days"] or 0)
    strict = subprocess.run([*command, "--strict"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False)
    assert strict.returncode == 1
    assert f"bad row at {data}:4: bad amount" in strict.stderr


def test_a_failing_replay_process_fails_the_group_and_says_why(redis_url: str) -> None:
    settings = replay_settings(settings_for(redis_url), redis_url, f"r{uuid.uuid4().hex[:10]}",
                               workers=None, batch_size=None)
    with pytest.raises(ReplayGroupError) as failure:  # no model was stored under this prefix
        run_group(settings, 2, as_of=0.0, stored_model=True)
    assert "replay process" in str(failure.value) and "failed (exit 1)" in str(failure.value)
    assert "no RFM model stored for this replay" in str(failure.value)


def test_a_uci_c_invoice_is_a_refund_that_nets_the_clients_money(
        tmp_path: Path, redis_url: str) -> None:
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    data = tmp_path / "uci.csv"
    data.write_text(header + (
        "500001,A,,10,2010-12-01 08:00:00,2.0,1.0,UK\n"       # 20.00
        "500002,A,,6,2010-12-05 08:00:00,1.0,1.0,UK\n"        # 6.00
        "C500010,A,,-2,2010-12-06 08:00:00,1.5,1.0,UK\n"      # 3.00 back on 500002
        "C500011,A,,-5,2010-12-07 08:00:00,1.0,1.0,UK\n"      # 5.00, capped at 3.00 left
        "500003,A,,4,2010-12-02 08:00:00,1.0,2.0,UK\n"))      # another client, untouched
    result = run([data], "uci-online-retail", tmp_path / "out", settings_for(redis_url),
                 redis_url)
    assert result.history.types == {"order_placed": 3, "order_refunded": 2}
    profiles = {p["client_id"]: p for p in
                pq.read_table(tmp_path / "out" / "profiles.parquet").to_pylist()}
    assert profiles["1"]["monetary_total"] == 20.0  # 26.00 gross, 6.00 refunded
    assert profiles["1"]["orders_count"] == 2
    assert profiles["2"]["monetary_total"] == 4.0
