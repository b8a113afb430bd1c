"""A replay of the real UCI Online Retail orders (../shared/data) through the event log and
the dataflow, as of 2011-12-10, checked against an independent computation of the order,
churn and replenishment rules.

Mapping: an invoice with a CustomerID is an order of that client (id: the CustomerID as an
integer), placed at its InvoiceDate read as UTC, its total the sum of Quantity x UnitPrice.
Invoices whose number starts with "C" are returns, not orders; the data does not say which
invoice they return (none of the 3,654 "C" numbers matches an invoice), so they are
replayed as refunds of unknown orders: client activity that changes no order. Caps, quiet
hours and hold-outs are off, and the channel needs no contact (the data has none).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import pyarrow.csv as pv
import pytest
import redis

from features.events import format_time, parse_event
from features.rules import DAY
from features.state import MAX_ORDERS
from sinks.event_log import AppendOptions, EventLog
from sinks.keys import KeyLayout
from tests.conftest import SHARED_DATA
from tests.support import all_triggers, drain, make_settings

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


def events(data: dict[str, dict[str, Any]], received_at: float) -> list[dict[str, Any]]:
    out = []
    for number, invoice in data.items():
        base = {"event_id": f"uci-{number}", "client_id": invoice["client"],
                "event_time": invoice["at"], "received_at": received_at}
        if number.startswith("C"):
            out.append({**base, "type": "order_refunded",
                        "order": {"order_id": number, "total": round(-invoice["total"], 2)}})
        else:
            out.append({**base, "type": "order_placed",
                        "order": {"order_id": number, "total": round(invoice["total"], 2),
                                  "currency": "GBP"}})
    out.sort(key=lambda e: (e["event_time"], e["event_id"]))
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

    print(f"\nUCI replay: {len(replay)} events ({len(placed)} orders) of {len(orders)} clients "
          f"drained in {elapsed:.1f}s; triggers: "
          + ", ".join(f"{kind} {len(items)}" for kind, items in sorted(by_type.items()))
          + f"; churned as of {format_time(AS_OF)}: {len(churned)}")
