"""`crmflow uplift`: each marketing trigger type's conversion next to its hold-out's, from
the live trigger log and the clients' orders (features/uplift.py says how it is counted).

It reads what the system keeps: the trigger streams (a page at a time; as far back as
`redis.stream_maxlen` and the streams' trimming leave them) and, for the clients they name,
their states (one pipelined HGET each, never a scan), whose latest 64 orders are the
conversions it can see. A partition at a time: a client's records are all in its
partition's stream, so memory holds one partition's decisions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from config.durations import format_duration
from config.settings import Settings
from dataflows.flow import store_factory
from features.events import ANONYMOUS_PREFIX, EventError, format_time, parse_time
from features.state import OrderRecord
from features.uplift import (
    GroupTally,
    Occasion,
    Uplift,
    group_of,
    merged,
    orders_not_kept,
    tally,
)
from sinks.keys import KeyLayout
from sinks.redis_client import sync_client
from sinks.trigger_log import client_states, trigger_records

MANUAL = "manual"


@dataclass
class UpliftReport:
    window: float  # seconds after an occasion in which an order converts it
    as_of: float  # occasions count when their window has closed by then
    since: float | None  # occasions due before it are left out (None: the whole log)
    types: dict[str, Uplift] = field(default_factory=dict)
    records: int = 0  # trigger records read
    counted: int = 0  # occasions counted, in one group or the other
    anonymous: int = 0  # anonymous visitors' occasions: a conversion is their client's
    open_windows: int = 0  # occasions whose window had not closed by `as_of`
    no_state: int = 0  # clients named whose state is gone (erased): their orders unknown
    oldest: float | None = None  # the earliest occasion the log still holds
    # partitions whose events the dataflow had not all applied: orders may be missing
    behind: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_seconds": self.window, "as_of": format_time(self.as_of),
            "since": None if self.since is None else format_time(self.since),
            "oldest_in_log": None if self.oldest is None else format_time(self.oldest),
            "records": self.records, "occasions_counted": self.counted,
            "anonymous_left_out": self.anonymous, "windows_still_open": self.open_windows,
            "clients_without_state": self.no_state,
            "partitions_behind": self.behind,
            "types": {kind: _type_dict(found) for kind, found in self.types.items()},
        }


def uplift(settings: Settings, *, window: float, since: float | None = None,
           as_of: float | None = None) -> UpliftReport:
    report = UpliftReport(window, time.time() if as_of is None else as_of, since)
    store = store_factory(settings)  # the orders read are those the dataflow has applied
    try:
        report.behind = store.partitions_behind(store.stream_heads())
    finally:
        store.client.close()
    client = sync_client(settings.redis)
    try:
        layout = KeyLayout.from_settings(settings)
        parts = []
        for stream in layout.all_trigger_streams():
            occasions = []
            seen: set[tuple[str, str, str]] = set()  # a partition's clients are its own
            for fields in trigger_records(client, stream):
                report.records += 1
                occasion = _occasion(fields)
                if occasion is not None and _counted(occasion, report, seen):
                    occasions.append(occasion)
            clients = sorted({o.client_id for o in occasions})
            orders: dict[str, tuple[OrderRecord, ...]] = {}
            not_kept: dict[str, tuple[float, float]] = {}
            for key, state in client_states(client, layout, clients):
                orders[key] = state.orders
                dropped = orders_not_kept(state.orders, state.first_order_at)
                if dropped is not None:
                    not_kept[key] = dropped
            report.no_state += len(clients) - len(orders)  # erased: unknown, not failures
            occasions = [o for o in occasions if o.client_id in orders]
            parts.append(tally(occasions, orders, window, not_kept))
        report.types = merged(parts)
        return report
    finally:
        client.close()


def _occasion(fields: dict[str, str]) -> Occasion | None:
    """An automatic decision's record as an occasion; None for a manual touch or a record
    this version cannot read (no time)."""
    if fields.get("source") == MANUAL:
        return None
    try:
        fired_at = parse_time(fields.get("fired_at", ""), "fired_at")
    except EventError:
        return None
    return Occasion(fields.get("client_id", ""), fields.get("type", ""),
                    fields.get("key", ""), fired_at, fields.get("status", ""),
                    fields.get("reason") or None, fields.get("channel") or None)


def _counted(occasion: Occasion, report: UpliftReport,
             seen: set[tuple[str, str, str]]) -> bool:
    """Whether the occasion's record counts; what left it out is counted in `report`, once
    per occasion (`seen`: a deferral and its final record are one occasion)."""
    if group_of(occasion) is None:
        return False
    identity = (occasion.client_id, occasion.type, occasion.key)
    new = identity not in seen
    seen.add(identity)
    if report.oldest is None or occasion.fired_at < report.oldest:
        report.oldest = occasion.fired_at
    if occasion.client_id.startswith(ANONYMOUS_PREFIX) or not occasion.client_id:
        report.anonymous += new
        return False
    if report.since is not None and occasion.fired_at < report.since:
        return False
    if occasion.fired_at + report.window > report.as_of:
        report.open_windows += new
        return False
    report.counted += new
    return True


def _type_dict(found: Uplift) -> dict[str, Any]:
    interval = found.interval
    return {
        "treated": _group_dict(found.treated), "holdout": _group_dict(found.holdout),
        "difference": found.difference, "relative": found.relative,
        "interval_95": None if interval is None else list(interval),
        "p_value": found.p_value, "clients_in_both_groups": found.mixed,
        "clients_with_orders_not_kept": found.unknown,
    }


def _group_dict(group: GroupTally) -> dict[str, Any]:
    return {"clients": group.clients, "converted": group.converted, "rate": group.rate,
            "revenue_per_client": group.revenue_per_client}


def _percent(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}%"


def format_report(report: UpliftReport) -> str:
    """The report as a table for a terminal."""
    period = (f"Occasions due from {format_time(report.since)}" if report.since is not None
              else "Every occasion the trigger log holds")
    lines = [
        f"Conversion: a purchase kept within {format_duration(report.window)} after the "
        "occasion; clients by intent to treat (treated: past the hold-out draw and not held "
        "out, sent or not).",
        f"{period}, windows closed by {format_time(report.as_of)}; the log's oldest "
        f"occasion: {'-' if report.oldest is None else format_time(report.oldest)}.",
        "",
    ]
    header = ("type", "treated", "conv.", "rate", "hold-out", "conv.", "rate",
              "difference pp (95%)", "relative", "p", "revenue/client t / h")
    rows = [header]
    for kind, found in report.types.items():
        interval = found.interval
        rows.append((
            kind, f"{found.treated.clients:,}", f"{found.treated.converted:,}",
            _percent(found.treated.rate), f"{found.holdout.clients:,}",
            f"{found.holdout.converted:,}", _percent(found.holdout.rate),
            "-" if interval is None else
            f"{_percent(found.difference, signed=True)} ({_percent(interval[0], signed=True)}"
            f", {_percent(interval[1], signed=True)})",
            "-" if found.relative is None else f"{_percent(found.relative, signed=True)}%",
            _p(found.p_value),
            f"{_money(found.treated.revenue_per_client)} / "
            f"{_money(found.holdout.revenue_per_client)}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip() for row in rows]
    if not report.types:
        lines.append("(no marketing occasion with a closed window in the period)")
    lines.append("")
    lines.append(f"{report.records:,} records read, {report.counted:,} occasions counted; "
                 f"left out: {report.open_windows:,} whose window is still open, "
                 f"{report.anonymous:,} of anonymous visitors (their orders are their "
                 f"client's), {report.no_state:,} clients whose state is gone" + "".join(
                     f"; {found.mixed:,} {kind} clients in both groups"
                     for kind, found in report.types.items() if found.mixed) + "".join(
                     f"; {found.unknown:,} {kind} clients whose orders in a window are older "
                     "than the 64 their state keeps"
                     for kind, found in report.types.items() if found.unknown) + ".")
    if report.behind:
        lines.append(f"The dataflow has not applied every event of partitions "
                     f"{', '.join(map(str, report.behind))} yet: orders not applied are "
                     "missing, and windows that closed meanwhile may read as failures.")
    return "\n".join(lines) + "\n"


def _p(value: float | None) -> str:
    """A p-value to three decimals; one that rounds to nothing is below 0.001, not 0."""
    if value is None:
        return "-"
    return "<0.001" if value < 0.0005 else f"{value:.3f}"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"
