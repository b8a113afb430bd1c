"""A replay of the real UCI Online Retail orders (../shared/data) through the event log and
the dataflow, as of 2011-12-10, checked against an independent computation of the order,
churn and replenishment rules.

Mapping: an invoice with a CustomerID is an order of that client (id: the CustomerID as an
integer), placed at its InvoiceDate read as UTC, its total the sum of Quantity x UnitPrice.
Invoices whose number starts with "C" are returns, not orders; the data does not say which
invoice they return (none of the 3,654 "C" numbers matches an invoice), so each is replayed
as a refund of its client's latest invoice at or before it (ties: the greatest number),
for its amount capped at that invoice's total, as `--format uci-online-retail` maps them;
the 200 with no such invoice are left out. Money is net of refunds. Caps, quiet hours and
hold-outs are off, and the channel needs no contact (the data has none).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import httpx
import pyarrow.compute as pc
import pyarrow.csv as pv
import pytest
import redis

from features.events import format_time, parse_event
from features.rfm import RFM_SEGMENTS, rfm_segment
from features.rules import DAY
from features.state import MAX_ORDERS
from sinks import rfm_index
from sinks.event_log import AppendOptions, EventLog
from sinks.keys import KeyLayout
from tests.conftest import SHARED_DATA
from tests.support import all_triggers, api_server, drain, make_settings, read_headers

UCI = SHARED_DATA / "uci_online_retail.csv.gz"
AS_OF = datetime(2011, 12, 10, tzinfo=UTC).timestamp()
CHURN_AFTER = 180 * DAY
OFFSET = 7 * DAY  # replenishment: a week before the predicted order

pytestmark = pytest.mark.skipif(
    not UCI.exists(),
    reason=f"real data not found at {UCI} (CI provides ../shared/data; a clone may not)")


def invoices() -> dict[str, dict[str, Any]]:
    """Invoice number -> client, time (the earliest of its lines) and total."""
    table = pv.read_csv(UCI, convert_options=pv.ConvertOptions(column_types={
        "InvoiceNo": "string", "StockCode": "string", "CustomerID": "string"}))
    columns = [table.column(name).to_pylist() for name in
               ("InvoiceNo", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")]
    out: dict[str, dict[str, Any]] = {}
    for number, quantity, date, price, customer in zip(*columns, strict=True):
        if not customer:
            continue  # a guest checkout: no client to attribute it to
        at = date.replace(tzinfo=UTC).timestamp()
        invoice = out.setdefault(number, {"client": str(int(float(customer))), "at": at,
                                          "total": 0.0})
        invoice["at"] = min(invoice["at"], at)
        invoice["total"] += quantity * price
    return out


def returned_invoice(placed: list[tuple[float, str]], at: float) -> str | None:
    """The latest of a client's invoices (time, number), in a sorted list, placed at or
    before `at`."""
    before = [number for placed_at, number in placed if placed_at <= at]
    return before[-1] if before else None


def refunds(data: dict[str, dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """C invoice -> (the invoice it returns, the pence it refunds: its own, capped at that
    invoice's total); C invoices with no earlier invoice of their client are left out."""
    placed: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for number, invoice in data.items():
        if not number.startswith("C"):
            placed[invoice["client"]].append((invoice["at"], number))
    for times in placed.values():
        times.sort()
    out = {}
    for number, invoice in data.items():
        if number.startswith("C"):
            target = returned_invoice(placed[invoice["client"]], invoice["at"])
            if target is not None:
                pence = min(round(abs(invoice["total"]) * 100), round(data[target]["total"] * 100))
                out[number] = (target, pence)
    return out


def events(data: dict[str, dict[str, Any]], received_at: float) -> list[dict[str, Any]]:
    out = []
    returned = refunds(data)
    for number, invoice in data.items():
        base = {"event_id": f"uci-{number}", "client_id": invoice["client"],
                "event_time": invoice["at"], "received_at": received_at}
        if number in returned:
            target, pence = returned[number]
            out.append({**base, "type": "order_refunded",
                        "order": {"order_id": target, "total": pence / 100}})
        elif not number.startswith("C"):
            out.append({**base, "type": "order_placed",
                        "order": {"order_id": number, "total": round(invoice["total"], 2),
                                  "currency": "GBP"}})
    out.sort(key=lambda e: (e["event_time"], e["type"] == "order_refunded", e["event_id"]))
    return out


def orders_by_client(data: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = defaultdict(list)
    for number, invoice in data.items():
        if not number.startswith("C"):
            times[invoice["client"]].append(invoice["at"])
    return {client: sorted(ts) for client, ts in times.items()}


def expected_winbacks(orders: dict[str, list[float]]) -> Counter[tuple[str, str]]:
    """One per silence of 180 days or more: between two orders, or since the last one."""
    out: Counter[tuple[str, str]] = Counter()
    for client, times in orders.items():
        for before, after in zip(times, [*times[1:], AS_OF], strict=True):
            if after - before >= CHURN_AFTER:
                out[client, format_time(before + CHURN_AFTER) or ""] += 1
    return out


def expected_replenishments(orders: dict[str, list[float]]
                            ) -> Counter[tuple[str, str, str]]:
    """After each order from the second on: the mean interval over the latest orders the
    state keeps (64); remind a week before last + mean, unless the next order (or the as-of
    time) comes first, and only for a rhythm longer than the week. Suppressed as churned
    when the reminder comes 180 days or more after the last order."""
    out: Counter[tuple[str, str, str]] = Counter()
    for client, times in orders.items():
        for k in range(1, len(times)):
            kept = times[max(0, k + 1 - MAX_ORDERS):k + 1]
            mean = (kept[-1] - kept[0]) / (len(kept) - 1)
            if mean <= OFFSET:
                continue
            due = times[k] + mean - OFFSET
            until = times[k + 1] if k + 1 < len(times) else AS_OF
            if due <= until:
                status = "suppressed" if due - times[k] >= CHURN_AFTER else "sent"
                out[client, format_time(due) or "", status] += 1
    return out


def expected_profiles() -> dict[str, dict[str, Any]]:
    """Per client, from the raw file with pyarrow group-bys (independent of the loader
    above): invoice totals in whole pence, then per client the orders (invoices not starting with
    "C"), their money net of the C invoices' refunds (each on its client's latest invoice at
    or before it, a refund capped at what is left of that invoice), and the first and last
    order times."""
    table = pv.read_csv(UCI, convert_options=pv.ConvertOptions(column_types={
        "InvoiceNo": "string", "CustomerID": "string"}))
    table = table.filter(pc.and_(pc.is_valid(table["CustomerID"]),
                                 pc.not_equal(table["CustomerID"], "")))
    table = table.append_column("amount", pc.multiply(table["Quantity"], table["UnitPrice"]))
    grouped = table.group_by(["InvoiceNo", "CustomerID"]).aggregate(
        [("amount", "sum"), ("InvoiceDate", "min")])
    grouped = grouped.append_column("rounded", pc.round(  # whole pence per invoice
        pc.multiply(grouped["amount_sum"], 100.0), 0))
    returns = grouped.filter(pc.starts_with(grouped["InvoiceNo"], "C"))
    invoices = grouped.filter(pc.invert(pc.starts_with(grouped["InvoiceNo"], "C")))
    placed: dict[str, list[tuple[float, str]]] = defaultdict(list)
    pence: dict[str, int] = {}
    for row in invoices.to_pylist():
        placed[row["CustomerID"]].append((row["InvoiceDate_min"], row["InvoiceNo"]))
        pence[row["InvoiceNo"]] = int(row["rounded"])
    for times in placed.values():
        times.sort()
    refunded: Counter[str] = Counter()
    for row in sorted(returns.to_pylist(), key=lambda r: (r["InvoiceDate_min"], r["InvoiceNo"])):
        target = returned_invoice(placed[row["CustomerID"]], row["InvoiceDate_min"])
        if target is not None:  # what is left of the invoice, at most
            refunded[target] = min(pence[target], refunded[target] - int(row["rounded"]))
    clients = invoices.group_by("CustomerID").aggregate(
        [("InvoiceNo", "count"), ("InvoiceDate_min", "min"), ("InvoiceDate_min", "max")])
    net: Counter[str] = Counter()
    for client, times in placed.items():
        net[client] = sum(pence[number] - refunded[number] for _, number in times)
    out: dict[str, dict[str, Any]] = {}
    for row in clients.to_pylist():
        out[str(int(float(row["CustomerID"])))] = {
            "orders_count": row["InvoiceNo_count"],
            "monetary_total": net[row["CustomerID"]] / 100,
            "first_order_at": row["InvoiceDate_min_min"].replace(tzinfo=UTC).timestamp(),
            "last_order_at": row["InvoiceDate_min_max"].replace(tzinfo=UTC).timestamp()}
    return out


def midrank_scores(values: dict[str, float]) -> dict[str, int]:
    """Score 1-5 by mid-rank percentile: p = (less + equal / 2) / N, 1 + floor(5p) capped."""
    ordered = sorted(values.values())
    n = len(ordered)
    scores = {}
    for client, value in values.items():
        less = bisect.bisect_left(ordered, value)
        equal = bisect.bisect_right(ordered, value) - less
        scores[client] = min(5, 1 + math.floor(5 * (less + equal / 2) / n))
    return scores


def check_profiles_and_rfm(settings: Any, redis_client: redis.Redis) -> None:
    """Every client's frequency, money, first/last order and RFM scores, through the API."""
    expected = expected_profiles()
    layout = KeyLayout.from_settings(settings)
    model = rfm_index.compute_model(redis_client, layout, AS_OF)
    rfm_index.store_model(redis_client, layout, model)
    assert model.population == len(expected)
    r = midrank_scores({c: e["last_order_at"] for c, e in expected.items()})
    f = midrank_scores({c: e["orders_count"] for c, e in expected.items()})
    m = midrank_scores({c: e["monetary_total"] for c, e in expected.items()})
    ids = sorted(expected)
    with api_server(settings) as url, httpx.Client(base_url=url, headers=read_headers(),
                                                    timeout=30) as http:
        for start in range(0, len(ids), 100):
            answer = http.get("/v1/profiles", params={"ids": ",".join(ids[start:start + 100])})
            assert answer.status_code == 200, answer.text
            assert answer.json()["missing"] == []
            for profile in answer.json()["profiles"]:
                client = profile["client_id"]
                want, features = expected[client], profile["features"]
                assert features["orders_count"] == want["orders_count"], client
                assert features["monetary_total"] == want["monetary_total"], client
                assert features["first_order_at"] == format_time(want["first_order_at"])
                assert features["last_order_at"] == format_time(want["last_order_at"])
                rfm = profile["rfm"]
                assert (rfm["r"], rfm["f"], rfm["m"]) == (r[client], f[client], m[client]), (
                    client)
    scores = Counter((r[c], f[c], m[c]) for c in ids)
    assert len(scores) > 50  # the population spreads over the score grid
    print(f"RFM checked for {len(ids)} clients; most common (R, F, M): "
          f"{scores.most_common(3)}")
    # The dataflow adopts the model on its next run and files every buyer under its segment.
    drain(settings, as_of=AS_OF)
    named = Counter(f"rfm:{rfm_segment(*score)}" for score in (
        (r[c], f[c], m[c]) for c in ids))
    sizes = {name: sum(redis_client.zcard(layout.segment_members(p, name))
                       for p in range(layout.partitions)) for name, _ in
             ((f"rfm:{slug}", title) for slug, title in RFM_SEGMENTS)}
    assert sizes == {name: named.get(name, 0) for name in sizes}


def test_uci_online_retail_replay(redis_client: redis.Redis, redis_url: str,
                                  key_prefix: str) -> None:
    data = invoices()
    orders = orders_by_client(data)
    placed = {number for number in data if not number.startswith("C")}
    assert (len(data), len(placed), len(orders)) == (22_190, 18_536, 4_339)

    settings = make_settings(
        redis_url, key_prefix, dataflow={"buckets": 512, "partitions": 4},
        policy={"quiet_hours": None, "frequency_cap_per_day": 0, "holdout_percent": 0,
                "channels": [{"name": "crm", "contact": None}]})
    log = EventLog(redis_client, KeyLayout.from_settings(settings),
                   AppendOptions(dedupe_window=0))
    replay = [parse_event(e) for e in events(data, received_at=time.time())]
    for start in range(0, len(replay), 2000):
        assert all(log.append(replay[start:start + 2000]))
    started = time.perf_counter()
    drain(settings, as_of=AS_OF)
    elapsed = time.perf_counter() - started

    triggers = all_triggers(redis_client, settings)
    by_type: dict[str, list[dict[str, str]]] = defaultdict(list)
    for trigger in triggers:
        by_type[trigger["type"]].append(trigger)
    assert len({t["trigger_id"] for t in triggers}) == len(triggers)  # nothing deferred here
    assert {t["status"] for t in triggers if t["type"] != "replenishment_reminder"} == {"sent"}

    confirmations = Counter(t["key"] for t in by_type["order_confirmation"])
    assert set(confirmations) == placed and set(confirmations.values()) == {1}

    winbacks = Counter((t["client_id"], t["fired_at"]) for t in by_type["churn_winback"])
    assert winbacks == expected_winbacks(orders)
    churned = {client for client, times in orders.items() if AS_OF - times[-1] >= CHURN_AFTER}
    last_silence = {t["client_id"] for t in by_type["churn_winback"]
                    if float(t["key"]) == orders[t["client_id"]][-1]}
    assert last_silence == churned

    reminders = Counter((t["client_id"], t["fired_at"], t["status"])
                        for t in by_type["replenishment_reminder"])
    assert reminders == expected_replenishments(orders)
    assert all(t["fired_at"] <= format_time(AS_OF) for t in triggers)  # type: ignore[operator]
    check_profiles_and_rfm(settings, redis_client)

    print(f"\nUCI replay: {len(replay)} events ({len(placed)} orders) of {len(orders)} clients "
          f"drained in {elapsed:.1f}s; triggers: "
          + ", ".join(f"{kind} {len(items)}" for kind, items in sorted(by_type.items()))
          + f"; churned as of {format_time(AS_OF)}: {len(churned)}")
