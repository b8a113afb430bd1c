"""History formats -> canonical events.

Each format reads its files' rows and yields validated `Event`s. A bad row is counted by
reason (with the first place it happened) and skipped, or, with `strict`, stops the read
naming its line. Formats that group rows into one event (the lines of an order, the first
row of a session) read every file first, so the result does not depend on how the input
was split into files or in which order they are given.

Event ids are stable across runs: a given id, or one derived from the row's content (and
its occurrence among identical rows), so a replay or a repeated backfill names every event
the same way.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.events import (
    INTERNAL_TYPES,
    MAX_ID_LENGTH,
    Event,
    EventError,
    EventType,
    content_event_id,
    parse_event,
    parse_time,
)
from features.segment import from_segment
from history.files import BadRow, HistoryError, Row, csv_rows, json_lines, parquet_rows, table_rows
from history.files import is_parquet as _is_parquet

FORMATS = ("events", "segment", "orders", "uci-online-retail", "rees46")
ORDER_COLUMNS = ("client_id", "timestamp", "amount", "order_id", "quantity")


@dataclass(slots=True)
class Tally:
    """What a read saw: rows, bad rows by reason (first example each), skipped rows."""

    strict: bool = False
    rows: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    on_row: Callable[[], None] | None = None

    def row(self) -> None:
        self.rows += 1
        if self.on_row is not None and self.rows % 1000 == 0:
            self.on_row()

    def reject(self, where: str, reason: str, detail: str = "") -> None:
        text = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise HistoryError(f"bad row at {text}")
        self.bad[reason] += 1
        self.examples.setdefault(reason, text)


def _event_error(tally: Tally, where: str, exc: EventError) -> None:
    tally.reject(where, f"invalid {exc.field}", exc.message)


def _readable(rows: Iterable[tuple[str, Row | BadRow]], tally: Tally
              ) -> Iterator[tuple[str, Row]]:
    """Each row counted; one that could not be read as a row is rejected, by its reason."""
    for where, row in rows:
        tally.row()
        if isinstance(row, BadRow):
            tally.reject(where, row.reason, row.detail)
        else:
            yield where, row


def _validated(tally: Tally, where: str, raw: Mapping[str, Any]) -> Event | None:
    try:
        event = parse_event(raw)
    except EventError as exc:
        _event_error(tally, where, exc)
        return None
    if event.type in INTERNAL_TYPES:
        tally.reject(where, "invalid type", f"{event.type.value} is written by crmflow")
        return None
    return event


def _bounded_id(text: str) -> str:
    """An id built from the input's own ids, kept under the events' length limit: a long one
    keeps its start and ends in a digest of the whole, so it stays unique and stable."""
    if len(text) <= MAX_ID_LENGTH:
        return text
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:32]
    return f"{text[:MAX_ID_LENGTH - 34]}~{digest}"


class _Occurrences:
    """Ids from content: identical rows get -1, -2, ... in the order they are met."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._seen: Counter[str] = Counter()

    def id_of(self, *parts: object) -> str:
        digest = hashlib.sha1("\x1f".join(map(str, parts)).encode(),
                              usedforsecurity=False).hexdigest()[:20]
        self._seen[digest] += 1
        return f"{self._prefix}{digest}-{self._seen[digest]}"


# --- events and segment: one event per line or row --------------------------------------------


def _records(path: Path, tally: Tally) -> Iterator[tuple[str, Mapping[str, Any]]]:
    source = parquet_rows(path) if _is_parquet(path) else json_lines(path)
    for where, record in source:
        tally.row()
        if isinstance(record, BadRow):
            tally.reject(where, record.reason, record.detail)
        elif isinstance(record, Exception):
            tally.reject(where, "invalid json", str(record).splitlines()[0])
        elif not isinstance(record, Mapping):
            tally.reject(where, "not an object")
        else:
            yield where, record


def canonical_events(paths: list[Path], tally: Tally) -> Iterator[Event]:
    for path in paths:
        for where, record in _records(path, tally):
            raw = dict(record)
            if "event_time" not in raw:
                tally.reject(where, "invalid event_time", "is required")
                continue
            if not raw.get("event_id"):
                raw["event_id"] = content_event_id(
                    {k: v for k, v in raw.items() if k != "received_at"})
            event = _validated(tally, where, raw)
            if event is not None:
                yield event


def segment_events(paths: list[Path], tally: Tally) -> Iterator[Event]:
    """Segment messages: received when Segment says (`receivedAt`); else when sent
    (`sentAt`: the skew correction then leaves the device's time as it is, where the
    message's own time as its arrival moved it back by the skew), else at their time."""
    for path in paths:
        for where, message in _records(path, tally):
            field = next((name for name in ("receivedAt", "sentAt", "timestamp",
                                            "originalTimestamp") if message.get(name)), None)
            if field is None:
                tally.reject(where, "invalid timestamp", "is required in history")
                continue
            try:
                event = from_segment(message, parse_time(message[field], field))
            except EventError as exc:
                _event_error(tally, where, exc)
                continue
            yield event


# --- orders: CSV or Parquet rows, grouped by order id -----------------------------------------


@dataclass(slots=True)
class _Order:
    """Lines read so far of one order (or invoice)."""

    client_id: str
    at: float
    total: float = 0.0
    where: str = ""  # its first line, for reports
    country: str = ""
    lines: int = 0


def _number(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("empty")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("not finite")
    return number


class _BadColumn(ValueError):
    def __init__(self, column: str, detail: str) -> None:
        super().__init__(f"{column}: {detail}")
        self.column = column
        self.detail = detail


def _column(row: Row, column: str, parse: Callable[[Any], Any]) -> Any:
    """`parse` of the row's `column`; what it cannot read is reported naming the column."""
    value = row.get(column)
    try:
        return parse(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _BadColumn(column, f"{value!r}: {exc}") from None


def _utc_time(text: Any) -> float:
    """A naive time is UTC; one with an offset is converted, not relabelled."""
    if not isinstance(text, str):
        raise ValueError("expected a date and time")
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


_FLOAT_WRITTEN_ID = re.compile(r"-?\d+\.0+")


def _text(value: Any) -> str:
    """An id as text. An id column stored as float (Parquet, or pandas, which writes
    17850.0 to a CSV once a column holds a missing value) reads as the integer, so the same
    data gives the same clients in CSV, Parquet and the UCI format."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text.partition(".")[0] if _FLOAT_WRITTEN_ID.fullmatch(text) else text


def parse_mapping(text: str | None) -> dict[str, str]:
    """`client_id=CustomerID,timestamp=InvoiceDate` -> {canonical: source column}."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, column = part.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column:
            raise HistoryError(f"--map: expected name=column, got {part.strip()!r}")
        if name not in ORDER_COLUMNS:
            raise HistoryError(f"--map: unknown name {name!r} (expected one of "
                               f"{', '.join(ORDER_COLUMNS)})")
        mapping[name] = column
    return mapping


def order_events(paths: list[Path], tally: Tally, mapping: Mapping[str, str]) -> Iterator[Event]:
    """Rows sharing an order id are one order's lines; without the column, a row is an
    order. An order's time is its earliest line's; its amount, the sum of its lines'. The
    same id under two clients is two orders (stores number orders per client too)."""
    column = {name: mapping.get(name, name) for name in ORDER_COLUMNS}
    # the three it cannot do without, and any column --map names (optional or not): a name
    # that is not in the file is a mistake to report, not a column to do without
    required = tuple(column[name] for name in ORDER_COLUMNS
                     if name in ("client_id", "timestamp", "amount") or name in mapping)
    orders: dict[tuple[str, str], _Order] = {}
    ids = _Occurrences("row-")
    for path in paths:
        for where, row in _readable(table_rows(path, required), tally):
            _order_line(where, row, column, orders, ids, tally)
    for (client_id, order_id), order in orders.items():
        if order.total < 0:
            tally.reject(order.where, "negative order amount", f"order {order_id}")
            continue
        event = _validated(tally, order.where, {
            # the client id's length makes the id unambiguous: c3-1's order 2 and c3's order
            # 1-2 must not share an id (a backfill de-duplicates appends by event id)
            "event_id": _bounded_id(f"order-{len(client_id)}-{client_id}-{order_id}"),
            "type": EventType.ORDER_PLACED.value,
            "client_id": client_id, "event_time": order.at,
            "order": {"order_id": order_id, "total": round(order.total, 2)}})
        if event is not None:
            yield event


def _order_line(where: str, row: Row, column: Mapping[str, str],
                orders: dict[tuple[str, str], _Order], ids: _Occurrences, tally: Tally) -> None:
    client_id = _text(row.get(column["client_id"]))
    if not client_id:
        tally.reject(where, "missing client_id")
        return
    try:
        at = parse_time(row.get(column["timestamp"]), "timestamp")
    except EventError as exc:
        tally.reject(where, "bad timestamp", exc.message)
        return
    try:
        amount = _number(row.get(column["amount"]))
    except (TypeError, ValueError):
        tally.reject(where, "bad amount", repr(row.get(column["amount"])))
        return
    quantity = row.get(column["quantity"])  # optional; part of a row's identity only
    if quantity not in (None, ""):
        try:
            quantity = _number(quantity)
        except (TypeError, ValueError):
            tally.reject(where, "bad quantity", repr(quantity))
            return
    order_id = _text(row.get(column["order_id"]))
    if not order_id:
        order_id = ids.id_of(client_id, at, amount, quantity)
    order = orders.get((client_id, order_id))  # two clients' equal ids: two orders
    if order is None:
        order = orders[client_id, order_id] = _Order(client_id, at, where=where)
    order.at = min(order.at, at)
    order.total += amount


# --- UCI Online Retail --------------------------------------------------------------------------

UCI_COLUMNS = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID",
               "Country")


def uci_events(paths: list[Path], tally: Tally) -> Iterator[Event]:
    """Invoices become orders (placed at their earliest line, totalling Quantity x
    UnitPrice). Invoices numbered "C..." return items without naming the invoice they
    return: each becomes an `order_refunded` of its client's latest invoice placed at or
    before it (ties: the greatest number), for its total's absolute value capped at that
    invoice's total; one with no such invoice in the input is skipped and counted. Rows
    without a CustomerID (guest checkouts) are skipped and counted."""
    # per invoice, per client named on its lines: the input's order must not matter, so
    # an invoice under two CustomerIDs goes to the one with the earliest line (then the
    # smaller id), and its country is its earliest line's (then the smaller name)
    claims: dict[str, dict[str, _Order]] = {}
    for path in paths:
        for where, row in _readable(csv_rows(path, UCI_COLUMNS), tally):
            customer = (row.get("CustomerID") or "").strip()
            if not customer:
                tally.skipped["no CustomerID"] += 1
                continue
            number = (row.get("InvoiceNo") or "").strip()
            if not number:
                tally.reject(where, "missing InvoiceNo")
                continue
            try:
                client_id = _column(row, "CustomerID", lambda text: str(int(_number(text))))
                at = _column(row, "InvoiceDate", _utc_time)
                amount = (_column(row, "Quantity", _number)
                          * _column(row, "UnitPrice", _number))
            except _BadColumn as exc:
                tally.reject(where, f"unreadable {exc.column}", exc.detail)
                continue
            country = (row.get("Country") or "").strip()
            invoice = claims.setdefault(number, {}).get(client_id)
            if invoice is None:
                invoice = claims[number][client_id] = _Order(client_id, at, where=where,
                                                             country=country)
            elif (at, country) < (invoice.at, invoice.country):
                invoice.country = country
            invoice.at = min(invoice.at, at)
            invoice.total += amount
            invoice.lines += 1
    invoices: dict[str, _Order] = {}
    for number, by_client in claims.items():
        winner, *others = sorted(by_client.values(), key=lambda o: (o.at, o.client_id))
        invoices[number] = winner
        for other in others:
            for _ in range(other.lines):
                tally.reject(other.where, "invoice of another client", f"invoice {number}")
    placed: dict[str, list[tuple[float, str]]] = {}  # client -> its invoices (time, number)
    for number, invoice in invoices.items():
        if not number.startswith("C"):
            placed.setdefault(invoice.client_id, []).append((invoice.at, number))
    for client_invoices in placed.values():
        client_invoices.sort()
    for number, invoice in invoices.items():
        traits = {"country": invoice.country} if invoice.country else {}
        base = {"event_id": f"uci-{number}", "client_id": invoice.client_id,
                "event_time": invoice.at, "traits": traits}
        if number.startswith("C"):
            target = _returned_invoice(placed.get(invoice.client_id, []), invoice.at)
            if target is None:
                tally.skipped["C invoice with no earlier invoice of its client"] += 1
                continue
            refund = min(round(abs(invoice.total), 2), round(invoices[target].total, 2))
            raw = {**base, "type": EventType.ORDER_REFUNDED.value,
                   "order": {"order_id": target, "total": max(refund, 0.0), "currency": "GBP"}}
        else:
            raw = {**base, "type": EventType.ORDER_PLACED.value,
                   "order": {"order_id": number, "total": round(abs(invoice.total), 2),
                             "currency": "GBP"}}
        event = _validated(tally, invoice.where, raw)
        if event is not None:
            yield event


def _returned_invoice(client_invoices: list[tuple[float, str]], at: float) -> str | None:
    """The number of the latest of a client's invoices (sorted by time, then number) placed
    at or before `at`: the replay applies an order before a refund of the same second."""
    index = bisect.bisect_right(client_invoices, at, key=lambda item: item[0])
    return client_invoices[index - 1][1] if index else None


# --- REES46 clickstream -------------------------------------------------------------------------

REES46_COLUMNS = ("event_time", "event_type", "product_id", "category_code", "price", "user_id",
                  "user_session")
_REES46_TYPES = {"view": EventType.PRODUCT_VIEW, "cart": EventType.CART_ADD,
                 "remove_from_cart": EventType.CART_REMOVE}


def _rees46_time(text: str) -> float:
    text = text.strip()
    if text.endswith(" UTC"):
        text = text[:-4]
    return _utc_time(text)


def rees46_events(paths: list[Path], tally: Tally) -> Iterator[Event]:
    """view/cart/remove_from_cart become product views and cart changes; the purchases of
    one session at one moment are one order; each session's first row is also a visit."""
    ids = _Occurrences("rees46-")
    sessions: dict[str, tuple[float, str, str]] = {}  # session -> (first time, user, where)
    orders: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    order_where: dict[tuple[str, str, float], str] = {}
    for path in paths:
        for where, row in _readable(csv_rows(path, REES46_COLUMNS), tally):
            user, kind = row["user_id"].strip(), row["event_type"].strip()
            session = row["user_session"].strip()
            try:
                at = _column(row, "event_time", _rees46_time)
                price = _column(row, "price", _number)
            except _BadColumn as exc:
                tally.reject(where, f"unreadable {exc.column}", exc.detail)
                continue
            if not user:
                tally.reject(where, "missing user_id")
                continue
            product = {"product_id": row["product_id"].strip(), "price": price,
                       "category": row["category_code"].strip() or None}
            if session and (session not in sessions or at < sessions[session][0]):
                sessions[session] = (at, user, where)
            if kind == "purchase":
                key = (user, session, at)
                orders.setdefault(key, []).append(product)
                order_where.setdefault(key, where)
                continue
            event_type = _REES46_TYPES.get(kind)
            if event_type is None:
                tally.reject(where, "unknown event_type", kind)
                continue
            event = _validated(tally, where, {
                "event_id": ids.id_of(user, kind, at, product["product_id"], price, session),
                "type": event_type.value, "client_id": user, "event_time": at,
                "products": [product]})
            if event is not None:
                yield event
    for session, (at, user, where) in sessions.items():
        event = _validated(tally, where, {
            "event_id": _bounded_id(f"rees46-visit-{session}"), "type": EventType.VISIT.value,
            "client_id": user, "event_time": at, "properties": {"session_id": session}})
        if event is not None:
            yield event
    for (user, session, at), products in orders.items():
        order_id = f"{session or user}@{at:.0f}"
        event = _validated(tally, order_where[user, session, at], {
            "event_id": _bounded_id(f"rees46-order-{order_id}"),
            "type": EventType.ORDER_PLACED.value,
            "client_id": user, "event_time": at,
            "order": {"order_id": order_id, "total": round(sum(p["price"] for p in products), 2),
                      "items": products}})
        if event is not None:
            yield event


def read_events(fmt: str, paths: list[Path], tally: Tally,
                mapping: Mapping[str, str] | None = None) -> Iterator[Event]:
    """The events of `paths` in format `fmt` (see FORMATS), in no particular order."""
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise HistoryError(f"no such file: {', '.join(missing)}")
    if mapping and fmt != "orders":
        raise HistoryError("--map applies to --format orders only")
    if fmt == "events":
        return canonical_events(paths, tally)
    if fmt == "segment":
        return segment_events(paths, tally)
    if fmt == "orders":
        return order_events(paths, tally, mapping or {})
    if fmt == "uci-online-retail":
        return uci_events(paths, tally)
    if fmt == "rees46":
        return rees46_events(paths, tally)
    raise HistoryError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
