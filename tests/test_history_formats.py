"""History formats: the mapping of each input format to canonical events, bad rows counted
by reason or (strict) stopping at their line, and independence from how input is split."""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.events import EventType, event_to_dict
from history.files import HistoryError
from history.formats import Tally, parse_mapping, read_events
from history.load import load_history


def write(path: Path, text: str, *, gz: bool = False) -> Path:
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def events_of(fmt: str, paths: list[Path], **kwargs: object) -> tuple[list[dict], Tally]:
    tally = Tally()
    events = [event_to_dict(e) for e in read_events(fmt, paths, tally, **kwargs)]  # type: ignore[arg-type]
    return sorted(events, key=lambda e: (e["event_time"], e["event_id"])), tally


ORDERS = """CustomerID,InvoiceDate,Amount,Invoice,Qty
42,2024-03-01 10:00:00,10.5,A1,1
42,2024-03-01T10:05:00+02:00,4.5,A1,2
43,2024-03-02T09:00:00Z,7,B7,1
,2024-03-02T09:00:00Z,7,B8,1
44,yesterday,7,B9,1
45,2024-03-02T09:00:00Z,seven,C1,1
"""


def test_orders_with_mapped_columns_group_lines_and_count_bad_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "orders.csv.gz", ORDERS, gz=True)
    mapping = parse_mapping("client_id=CustomerID,timestamp=InvoiceDate,amount=Amount,"
                            "order_id=Invoice,quantity=Qty")
    events, tally = events_of("orders", [path], mapping=mapping)
    assert [(e["client_id"], e["order"]["order_id"], e["order"]["total"]) for e in events] == [
        ("42", "A1", 15.0), ("43", "B7", 7.0)]
    # a line's zone is honoured (10:05+02:00 is 08:05Z): the order is placed at its earliest
    assert events[0]["event_time"] == pytest.approx(1709280300.0)  # 2024-03-01T08:05Z
    assert tally.rows == 6
    assert tally.bad == {"missing client_id": 1, "bad timestamp": 1, "bad amount": 1}
    assert tally.examples["bad timestamp"].startswith(f"{path}:6: bad timestamp")


def test_orders_without_an_order_id_make_one_order_per_row(tmp_path: Path) -> None:
    text = "client_id,timestamp,amount\n1,2024-01-01,5\n1,2024-01-01,5\n1,2024-01-02,-3\n"
    events, tally = events_of("orders", [write(tmp_path / "o.csv", text)])
    assert len(events) == 2 and {e["order"]["total"] for e in events} == {5.0}
    assert len({e["event_id"] for e in events}) == 2  # identical rows stay two orders
    assert tally.bad == {"negative order amount": 1}


def test_strict_stops_at_the_first_bad_row_naming_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "orders.csv", ORDERS)
    mapping = parse_mapping("client_id=CustomerID,timestamp=InvoiceDate,amount=Amount")
    with pytest.raises(HistoryError, match=rf"{path}:5: missing client_id"):
        list(read_events("orders", [path], Tally(strict=True), mapping))


def test_missing_columns_and_bad_mappings_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "o.csv", "who,when,much\n1,2024-01-01,5\n")
    with pytest.raises(HistoryError, match="missing column.*client_id, timestamp, amount"):
        list(read_events("orders", [path], Tally()))
    with pytest.raises(HistoryError, match="unknown name 'customer'"):
        parse_mapping("customer=who")
    with pytest.raises(HistoryError, match="no such file"):
        list(read_events("orders", [tmp_path / "nope.csv"], Tally()))
    with pytest.raises(HistoryError, match="--map applies to --format orders only"):
        read_events("events", [path], Tally(), {"client_id": "who"})


def test_orders_from_parquet_with_timestamps(tmp_path: Path) -> None:
    table = pa.table({"client_id": ["1", "2"], "amount": [3.0, 4.0],
                      "timestamp": pa.array([1_700_000_000_000, 1_700_000_100_000],
                                            type=pa.timestamp("ms"))})
    pq.write_table(table, tmp_path / "orders.parquet")
    events, tally = events_of("orders", [tmp_path / "orders.parquet"])
    assert [(e["client_id"], e["event_time"]) for e in events] == [
        ("1", 1_700_000_000.0), ("2", 1_700_000_100.0)]
    assert tally.rows == 2 and not tally.bad


def test_ids_written_as_floats_name_the_same_clients_in_csv_and_parquet(tmp_path: Path) -> None:
    """pandas writes an id column holding a missing value as 17850.0; the same rows as CSV,
    as Parquet floats and as the UCI format give the client 17850 (a backfill on top of
    existing clients split their profiles)."""
    csv_file = write(tmp_path / "o.csv", "client_id,timestamp,amount,order_id\n"
                                         "17850.0,2010-12-01T08:26:00Z,5,536365.0\n"
                                         "A1.0,2010-12-01T08:27:00Z,5,x.00\n")
    pq.write_table(pa.table({"client_id": [17850.0], "timestamp": ["2010-12-01T08:26:00Z"],
                             "amount": [5.0], "order_id": [536365.0]}), tmp_path / "o.parquet")
    from_csv, _ = events_of("orders", [csv_file])
    from_parquet, _ = events_of("orders", [tmp_path / "o.parquet"])
    assert [(e["client_id"], e["order"]["order_id"]) for e in from_csv] == [
        ("17850", "536365"), ("A1.0", "x.00")]  # only a number written as a float
    assert [(e["event_id"], e["client_id"]) for e in from_parquet] == [
        (e["event_id"], e["client_id"]) for e in from_csv[:1]]


def test_canonical_events_from_json_lines_and_parquet(tmp_path: Path) -> None:
    good = {"event_id": "e1", "type": "cart_add", "client_id": "c1",
            "event_time": "2024-05-01T10:00:00Z",
            "products": [{"product_id": "p1", "price": 9.5, "quantity": 2}]}
    lines = [json.dumps(good), "", "{not json", json.dumps([1]),
             json.dumps({**good, "event_id": "e2", "type": "cart_add", "products": []}),
             json.dumps({**good, "event_id": "e3", "type": "identity_linked",
                         "properties": {"client_id": "c9"}}),
             json.dumps({k: v for k, v in good.items() if k != "event_id"})]
    path = write(tmp_path / "events.jsonl.gz", "\n".join(lines) + "\n", gz=True)
    events, tally = events_of("events", [path])
    assert [e["event_id"][:2] for e in events] == ["e1", "h-"]  # the second: a content id
    assert tally.bad == {"invalid json": 1, "not an object": 1, "invalid products": 1,
                         "invalid type": 1}
    assert tally.examples["invalid products"].startswith(f"{path}:5:")
    pq.write_table(pa.Table.from_pylist([good]), tmp_path / "events.parquet")
    from_parquet, _ = events_of("events", [tmp_path / "events.parquet"])
    assert from_parquet == events[:1]


def test_segment_messages(tmp_path: Path) -> None:
    messages = [
        {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
         "timestamp": "2024-05-01T10:00:00Z",
         "properties": {"order_id": "o1", "revenue": 20, "products": []}},
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m2",
         "timestamp": "2024-05-01T09:00:00Z", "traits": {"email": "u1@example.com"}},
        {"type": "track", "event": "Product Viewed", "userId": "u2"},  # no time at all
    ]
    path = write(tmp_path / "segment.jsonl", "\n".join(map(json.dumps, messages)))
    events, tally = events_of("segment", [path])
    assert [(e["type"], e["client_id"]) for e in events] == [("identify", "u1"),
                                                            ("order_placed", "u1")]
    assert tally.bad == {"invalid timestamp": 1}
    wrong = {"type": "track", "event": "Product Viewed", "userId": "u3", "timestamp": "soon"}
    _, tally = events_of("segment", [write(tmp_path / "wrong.jsonl", json.dumps(wrong))])
    assert tally.bad == {"invalid timestamp": 1}  # named after the field it read



def test_a_library_message_without_received_at_keeps_its_device_time(tmp_path: Path) -> None:
    """A message as a library sends it (`timestamp` and `sentAt`, no `receivedAt`): the
    ingest API corrects the skew against its own arrival time; a history file has none, so
    `sentAt` stands for it and the time stays the device's (it moved back by the skew)."""
    message = {"type": "track", "event": "Product Viewed", "userId": "u1", "messageId": "m1",
               "timestamp": "2024-05-01T12:00:00Z", "sentAt": "2024-05-01T12:00:10Z",
               "properties": {"product_id": "p1"}}
    events, _ = events_of("segment", [write(tmp_path / "lib.jsonl", json.dumps(message))])
    assert [e["event_time"] for e in events] == [1714564800.0]  # 12:00:00, not 11:59:50

UCI_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def test_uci_invoices_become_orders_and_c_invoices_refunds(tmp_path: Path) -> None:
    text = UCI_HEADER + (
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
        "536365,71053,LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom\n"
        "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom\n"
        "536414,22139,,56,2010-12-01 11:52:00,0,,United Kingdom\n"
        "536415,22139,,x,2010-12-01 11:52:00,0,17850.0,United Kingdom\n")
    events, tally = events_of("uci-online-retail", [write(tmp_path / "uci.csv", text)])
    assert [(e["type"], e["client_id"], e["order"]["order_id"], e["order"]["total"])
            for e in events] == [("order_placed", "17850", "536365", 35.64)]
    assert events[0]["traits"] == {"country": "United Kingdom"}
    # C536379's client has no invoice before it in the input: nothing to refund
    assert tally.skipped == {"no CustomerID": 1,
                             "C invoice with no earlier invoice of its client": 1}
    assert tally.bad == {"unreadable Quantity": 1}  # the column named


def test_uci_output_does_not_depend_on_the_order_of_its_files(tmp_path: Path) -> None:
    """An invoice's country is its earliest line's; an invoice under two CustomerIDs goes
    to the one with the earliest line, the other's lines rejected: whichever file is read
    first (the first line read decided both)."""
    a = write(tmp_path / "a.csv", UCI_HEADER + (
        "536365,1,X,1,2010-12-01 08:30:00,5.1,17850.0,United Kingdom\n"
        "536366,1,X,1,2010-12-01 09:00:00,8.49,17850.0,United Kingdom\n"))
    b = write(tmp_path / "b.csv", UCI_HEADER + (
        "536365,2,Y,1,2010-12-01 08:26:00,3.39,13047.0,France\n"
        "536366,2,Y,1,2010-12-01 09:00:00,0,17850.0,EIRE\n"))
    seen = []
    for files in ([a, b], [b, a]):
        events, tally = events_of("uci-online-retail", files)
        seen.append(([(e["client_id"], e["order"]["order_id"], e["order"]["total"],
                       e["traits"]) for e in sorted(events, key=lambda e: e["event_id"])],
                     dict(tally.bad)))
    assert seen[0] == seen[1]
    assert seen[0] == ([("13047", "536365", 3.39, {"country": "France"}),
                        ("17850", "536366", 8.49, {"country": "EIRE"})],
                       {"invoice of another client": 1})


def test_uci_c_invoices_refund_the_clients_latest_earlier_invoice(tmp_path: Path) -> None:
    text = UCI_HEADER + (
        "500001,A,,10,2010-12-01 08:00:00,1.0,1.0,UK\n"      # 10.00
        "500003,A,,5,2010-12-02 08:00:00,1.0,1.0,UK\n"       # 5.00, same time as 500002
        "500002,A,,7,2010-12-02 08:00:00,1.0,1.0,UK\n"       # 7.00
        "C500010,A,,-2,2010-12-02 08:00:00,1.5,1.0,UK\n"     # same minute: 500003 (ties:
        "C500011,A,,-3,2010-12-03 08:00:00,4.0,1.0,UK\n"     # greatest number); 12 capped at 5
        "C500012,A,,-1,2010-12-03 08:00:00,2.0,2.0,UK\n"     # client 2 has no invoice
        "500004,A,,8,2010-12-04 08:00:00,1.0,1.0,UK\n"       # after every C: not refunded
        "C500013,A,,-1,2010-11-30 08:00:00,2.0,1.0,UK\n")    # before client 1's first
    events, tally = events_of("uci-online-retail", [write(tmp_path / "uci.csv", text)])
    refunds = [(e["event_id"], e["client_id"], e["order"]["order_id"], e["order"]["total"],
                e["event_time"]) for e in events if e["type"] == "order_refunded"]
    at = datetime(2010, 12, 2, 8, tzinfo=UTC).timestamp()
    assert refunds == [("uci-C500010", "1", "500003", 3.0, at),
                       ("uci-C500011", "1", "500003", 5.0, at + 86400)]
    assert sorted(e["order"]["order_id"] for e in events if e["type"] == "order_placed") == [
        "500001", "500002", "500003", "500004"]
    assert tally.skipped == {"C invoice with no earlier invoice of its client": 2}
    assert not tally.bad
    # the replay's order puts an order before a refund of the same second
    ordered = load_history([tmp_path / "uci.csv"], "uci-online-retail").events
    assert [e.event_id for e in ordered if e.event_time == at] == [
        "uci-500002", "uci-500003", "uci-C500010"]


REES46_HEADER = ("event_time,event_type,product_id,category_id,category_code,brand,price,"
                 "user_id,user_session\n")


def test_rees46_sessions_views_carts_and_orders(tmp_path: Path) -> None:
    text = REES46_HEADER + (
        "2019-10-01 00:00:05 UTC,view,1,9,electronics.phone,x,100.0,7,s1\n"
        "2019-10-01 00:00:00 UTC,view,2,9,,x,50.0,7,s1\n"
        "2019-10-01 00:01:00 UTC,cart,1,9,electronics.phone,x,100.0,7,s1\n"
        "2019-10-01 00:02:00 UTC,purchase,1,9,electronics.phone,x,100.0,7,s1\n"
        "2019-10-01 00:02:00 UTC,purchase,2,9,,x,50.0,7,s1\n"
        "2019-10-01 00:03:00 UTC,remove_from_cart,2,9,,x,50.0,7,s1\n"
        "2019-10-01 00:04:00 UTC,wishlist,2,9,,x,50.0,7,s1\n")
    events, tally = events_of("rees46", [write(tmp_path / "r.csv", text)])
    kinds = [(e["type"], e["event_time"] % 3600) for e in events]
    assert kinds == [("product_view", 0), ("visit", 0), ("product_view", 5), ("cart_add", 60),
                     ("order_placed", 120), ("cart_remove", 180)]
    order = next(e for e in events if e["type"] == "order_placed")["order"]
    assert order["total"] == 150.0 and len(order["items"]) == 2
    assert tally.bad == {"unknown event_type": 1}


def test_the_same_rows_split_into_files_in_any_order_give_the_same_events(
        tmp_path: Path) -> None:
    rng = random.Random(7)
    rows = [f"{rng.randrange(20)},2024-01-{rng.randrange(1, 28):02d}T10:00:00Z,"
            f"{rng.randrange(1, 50)},{'o' + str(rng.randrange(40)) if n % 3 else ''}"
            for n in range(300)]
    whole = write(tmp_path / "all.csv", "client_id,timestamp,amount,order_id\n" + "\n".join(rows))
    parts = []
    for k in range(3):
        parts.append(write(tmp_path / f"part{k}.csv",
                           "client_id,timestamp,amount,order_id\n" + "\n".join(rows[k::3])))
    one = load_history([whole], "orders")
    split = load_history(parts[::-1], "orders")
    assert [event_to_dict(e) for e in one.events] == [event_to_dict(e) for e in split.events]
    assert one.tally.bad == split.tally.bad
    times = [e.event_time for e in one.events]
    assert times == sorted(times)
    assert all(e.type is EventType.ORDER_PLACED for e in one.events)


def test_progress_shows_rows_events_and_clients_on_a_terminal(tmp_path: Path) -> None:
    import io

    from history.load import Progress

    text = "client_id,timestamp,amount\n" + "".join(
        f"c{n % 700},2024-01-01T00:00:{n % 60:02d}Z,{n + 1}\n" for n in range(2500))
    screen = io.StringIO()
    history = load_history([write(tmp_path / "o.csv", text)], "orders",
                           progress=Progress(screen, enabled=True))
    assert history.clients == 700
    shown = screen.getvalue()
    assert "read 2,500 rows, 2,500 events, 700 clients" in shown and shown.endswith("\n")
    quiet = io.StringIO()
    load_history([tmp_path / "o.csv"], "orders", progress=Progress(quiet))  # not a terminal
    assert quiet.getvalue() == ""


def test_short_and_long_csv_rows_are_skipped_and_counted_in_every_format(
        tmp_path: Path) -> None:
    rees = write(tmp_path / "r.csv.gz", REES46_HEADER + (
        "2019-10-01 00:00:05 UTC,view,1,9,electronics.phone,x,100.0,7,s1\n"
        "2019-10-01 00:00:06 UTC,view,2,9,electronics\n"), gz=True)  # the original's last line
    events, tally = events_of("rees46", [rees])
    assert [e["type"] for e in events] == ["product_view", "visit"]
    assert tally.bad == {"too few fields": 1}
    assert tally.examples["too few fields"].startswith(
        f"{rees}:3: too few fields (no brand, price, user_id, user_session:")
    uci = write(tmp_path / "u.csv", UCI_HEADER + (
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
        "536366,85123A,HEART,6,2010-12-01 08:26:00\n"
        "536367,85123A,HEART, RED,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"))
    events, tally = events_of("uci-online-retail", [uci])
    assert [e["order"]["order_id"] for e in events] == ["536365"]
    assert tally.bad == {"too few fields": 1, "too many fields": 1}
    assert tally.examples["too many fields"] == (
        f"{uci}:4: too many fields (9 fields, the header has 8)")
    orders = write(tmp_path / "o.csv", "client_id,timestamp,amount\n1,2024-01-01,5\n2,2024-01-01\n")
    events, tally = events_of("orders", [orders])
    assert len(events) == 1 and tally.bad == {"too few fields": 1}
    with pytest.raises(HistoryError, match=rf"{rees}:3: too few fields"):
        list(read_events("rees46", [rees], Tally(strict=True)))


def test_a_byte_order_mark_a_non_utf8_line_and_a_truncated_gzip_file(tmp_path: Path) -> None:
    text = "client_id,timestamp,amount\n1,2024-01-01,5\n2,2024-01-02,6\n"
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    events, tally = events_of("orders", [bom])  # Excel's mark does not hide client_id
    assert [e["client_id"] for e in events] == ["1", "2"] and not tally.bad

    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"client_id,timestamp,amount\nb\xe9a,2024-01-01,5\n2,2024-01-02,6\n")
    events, tally = events_of("orders", [latin])
    assert [e["client_id"] for e in events] == ["2"]  # the rest is kept
    assert tally.bad == {"not UTF-8": 1}
    assert tally.examples["not UTF-8"] == f"{latin}:2: not UTF-8 (byte 0xe9 at column 2)"
    jsonl = tmp_path / "events.jsonl"
    good = {"event_id": "e1", "type": "visit", "client_id": "c1",
            "event_time": "2024-05-01T10:00:00Z"}
    jsonl.write_bytes(b'{"client_id": "\xff"}\n' + json.dumps(good).encode() + b"\n")
    events, tally = events_of("events", [jsonl])
    assert [e["event_id"] for e in events] == ["e1"] and tally.bad == {"not UTF-8": 1}

    rows = "".join(f"{n},2024-01-01T00:00:{n:02d}Z,{n + 1}\n" for n in range(50))
    whole = gzip.compress(("client_id,timestamp,amount\n" + rows).encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[:-30])  # a download cut short: no end marker, the last bytes lost
    events, tally = events_of("orders", [cut])
    assert 40 <= len(events) < 50  # the rows before the cut are kept ...
    assert {e["client_id"] for e in events} == {str(n) for n in range(len(events))}
    assert tally.bad["broken gzip file"] == 1  # ... and the cut is reported, naming the file
    assert tally.examples["broken gzip file"].startswith(f"{cut}:")
    assert "truncated" in tally.examples["broken gzip file"]
    with pytest.raises(HistoryError, match=rf"bad row at {cut}:\d+: (too few fields|broken)"):
        list(read_events("orders", [cut], Tally(strict=True)))
    for end in range(len(whole) - 60, len(whole)):  # wherever it is cut, no row is made up
        cut.write_bytes(whole[:end])
        events, _ = events_of("orders", [cut])
        assert all(e["order"]["total"] == int(e["client_id"]) + 1 for e in events), end
    two = tmp_path / "two.csv.gz"  # gzip members back to back (cat a.gz b.gz) still read
    two.write_bytes(gzip.compress(b"client_id,timestamp,amount\n1,2024-01-01,5\r\n")
                    + gzip.compress(b"2,2024-01-02,6\r\n"))
    events, tally = events_of("orders", [two])
    assert [e["client_id"] for e in events] == ["1", "2"] and not tally.bad


def test_parquet_nulls_are_absent_values_as_in_json_lines(tmp_path: Path) -> None:
    """A Parquet column (or a struct's field) exists for every row: its nulls are keys the
    JSON line leaves out, not values (a null history rejected the row, a null trait
    overwrote a known one)."""
    rows = [
        {"event_id": "e1", "type": "identify", "client_id": "ann",
         "event_time": "2024-01-01T10:00:00Z", "traits": {"city": "Paris"}, "history": False},
        {"event_id": "e2", "type": "identify", "client_id": "ann",
         "event_time": "2024-01-01T11:00:00Z", "traits": {"email": "a@x.org"}},
        {"event_id": "e3", "type": "order_placed", "client_id": "ann",
         "event_time": "2024-01-01T12:00:00Z",
         "order": {"order_id": "o1", "total": 5.0, "currency": "EUR"}},
        {"event_id": "e4", "type": "cart_add", "client_id": "bob",
         "event_time": "2024-01-01T12:00:00Z",
         "products": [{"product_id": "p1", "price": 2.0, "category": "mugs"},
                      {"product_id": "p2", "price": 3.0}]},
    ]
    lines = write(tmp_path / "events.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    table = pa.Table.from_struct_array(pa.array(rows))  # every row's keys: nulls where absent
    assert table.column("history").null_count == 3
    pq.write_table(table, tmp_path / "events.parquet")
    from_json, json_tally = events_of("events", [lines])
    from_parquet, parquet_tally = events_of("events", [tmp_path / "events.parquet"])
    assert not json_tally.bad and not parquet_tally.bad
    assert from_parquet == from_json
    assert [e.get("traits") for e in from_parquet[:2]] == [{"city": "Paris"},
                                                           {"email": "a@x.org"}]


def test_a_mapped_optional_column_missing_from_the_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "o.csv", "CustomerID,When,Money,Invoice\n1,2024-01-01,5,A\n")
    mapping = parse_mapping("client_id=CustomerID,timestamp=When,amount=Money,"
                            "order_id=InvoiceNo,quantity=Qty")
    with pytest.raises(HistoryError, match=r"missing column\(s\) InvoiceNo, Qty; the header "
                                           r"has: CustomerID, When, Money, Invoice"):
        list(read_events("orders", [path], Tally(), mapping))
    pq.write_table(pa.table({"CustomerID": ["1"], "When": ["2024-01-01"], "Money": [5.0]}),
                   tmp_path / "o.parquet")
    with pytest.raises(HistoryError, match=r"missing column\(s\) InvoiceNo, Qty; the file"):
        list(read_events("orders", [tmp_path / "o.parquet"], Tally(), mapping))
    # unmapped, the optional columns may be absent
    events, _ = events_of("orders", [path], mapping=parse_mapping(
        "client_id=CustomerID,timestamp=When,amount=Money"))
    assert len(events) == 1


def test_order_event_ids_do_not_collide_across_clients(tmp_path: Path) -> None:
    path = write(tmp_path / "o.csv", "client_id,timestamp,amount,order_id\n"
                 "c3-1,2011-01-01T00:00:00,5,2\nc3,2011-01-02T00:00:00,9,1-2\n")
    events, _ = events_of("orders", [path])
    assert [(e["client_id"], e["order"]["order_id"]) for e in events] == [("c3-1", "2"),
                                                                           ("c3", "1-2")]
    assert len({e["event_id"] for e in events}) == 2  # a backfill keeps both


def test_uci_and_rees46_name_the_unreadable_column_and_convert_offsets(tmp_path: Path) -> None:
    uci = UCI_HEADER + (
        "536365,A,,6,2010-12-01T08:26:00+05:00,2.55,17850.0,UK\n"   # 03:26 UTC
        "536366,B,,6,2010-12-01 08:28:00,3.39,inf,UK\n"             # was an OverflowError
        "536367,C,,6,2010-12-01 08:28:00,3.39,1e400,UK\n"
        "536368,D,,6,2010-12-01 08:28:00,,17850.0,UK\n"
        "536369,E,,6,Monday,1.0,17850.0,UK\n")
    events, tally = events_of("uci-online-retail", [write(tmp_path / "uci.csv", uci)])
    assert [(e["order"]["order_id"], e["event_time"] % 86400) for e in events] == [
        ("536365", 3 * 3600 + 26 * 60)]
    assert tally.bad == {"unreadable CustomerID": 2, "unreadable UnitPrice": 1,
                         "unreadable InvoiceDate": 1}
    rees = REES46_HEADER + (
        "2019-10-01 05:00:00+05:00,view,1,9,,x,10.0,7,s1\n"
        "2019-10-01 00:00:00 UTC,view,1,9,,x,abc,7,s1\n")
    events, tally = events_of("rees46", [write(tmp_path / "r.csv", rees)])
    assert {(e["type"], e["event_time"] % 86400) for e in events} == {
        ("product_view", 0), ("visit", 0)}
    assert tally.bad == {"unreadable price": 1}


def test_ids_built_from_long_source_ids_stay_within_the_limit(tmp_path: Path) -> None:
    client, order = "c" * 150, "o" * 64
    text = ("client_id,timestamp,amount,order_id\n"
            f"{client},2011-01-01T00:00:00,5,{order}\n{client},2011-01-01T00:00:00,5,{order}x\n")
    events, tally = events_of("orders", [write(tmp_path / "o.csv", text)])
    assert tally.bad == {} and len(events) == 2
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == 2 and all(len(i) <= 200 for i in ids)
    again, _ = events_of("orders", [write(tmp_path / "o2.csv", text)])
    assert [e["event_id"] for e in again] == ids  # stable: a backfill de-duplicates by it


def test_csv_damage_is_named_at_its_line_and_nothing_is_invented(tmp_path: Path) -> None:
    uci = UCI_HEADER + (
        "536365,A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,UK\n"
        '536366,B,"LANTERN,6,2010-12-01 08:28:00,3.39,17850.0,UK\n'  # a quote never closed
        "536367,C,CUP,6,2010-12-01 08:30:00,1.0,17850.0,UK\n"
        "536368,D,MUG,6,2010-12-01 08:31:00,1.0,17850.0,UK\n")
    path = write(tmp_path / "uci.csv", uci)
    events, tally = events_of("uci-online-retail", [path])
    assert [e["order"]["order_id"] for e in events] == ["536365"]
    assert tally.bad == {"unreadable CSV": 1}  # the lines it swallowed, named, not guessed
    assert tally.examples["unreadable CSV"].startswith(
        f"{path}:3: unreadable CSV (a quoted field runs from line 3 to line 5 (an unclosed "
        "quote?); those 3 lines make 3 fields, the header has 8)")
    with pytest.raises(HistoryError, match=f"{path}:3: unreadable CSV"):
        list(read_events("uci-online-retail", [path], Tally(strict=True)))

    # a quoted line break in a row one field too wide: one bad row, no row made of its parts
    wide = write(tmp_path / "wide.csv", 'client_id,timestamp,amount\nc1,"note\nc2",'
                 "2024-01-01,5\nc3,2024-01-02,6\n")
    events, tally = events_of("orders", [wide])
    assert [e["client_id"] for e in events] == ["c3"] and tally.bad == {"unreadable CSV": 1}

    stray = write(tmp_path / "stray.csv", "client_id,timestamp,amount\n"
                  "a,2024-01-01,5\rb\n"        # a CR inside a row: line 2, not the header's
                  "c,2024-01-02,6\n")
    events, tally = events_of("orders", [stray])
    assert [e["client_id"] for e in events] == ["c"]
    assert tally.examples["unreadable CSV"].startswith(f"{stray}:2:")

    latin = tmp_path / "latin.csv"  # the byte is named at its own line, inside a long row
    latin.write_bytes(b'client_id,timestamp,amount\nc1,"x\ny\xff",2024-01-01,5\n'
                      b"c2,2024-01-02,6\n")
    events, tally = events_of("orders", [latin])
    assert [e["client_id"] for e in events] == ["c2"]
    assert tally.examples["not UTF-8"].startswith(f"{latin}:3:")


def test_csv_files_whose_lines_end_in_cr_alone_are_read(tmp_path: Path) -> None:
    mac = tmp_path / "mac.csv"  # Excel's "CSV (Macintosh)"
    mac.write_bytes(b"client_id,timestamp,amount,order_id\rann,2024-01-01T10:00:00,12.5,o1\r"
                    b"bob,2024-01-02T10:00:00,3,o2\r")
    events, tally = events_of("orders", [mac])
    assert [(e["client_id"], e["order"]["total"]) for e in events] == [("ann", 12.5),
                                                                        ("bob", 3.0)]
    assert not tally.bad
    zipped = write(tmp_path / "mac.csv.gz", "client_id,timestamp,amount\rc,2024-01-01,5\r",
                   gz=True)
    assert [e["client_id"] for e in events_of("orders", [zipped])[0]] == ["c"]
    in_cell = tmp_path / "in_cell.csv"  # Excel for Mac writes a break inside a cell as LF
    in_cell.write_bytes(b'client_id,note,timestamp,amount\rann,"line one\nline two",'
                        b"2024-01-01,5\rbob,x,2024-01-02,6\r")
    events, tally = events_of("orders", [in_cell])
    assert [e["client_id"] for e in events] == ["ann", "bob"] and not tally.bad


def test_damaged_parquet_is_named_and_the_rows_before_it_are_kept(tmp_path: Path) -> None:
    garbage = tmp_path / "bad.parquet"
    garbage.write_bytes(b"PAR1garbage")
    for fmt in ("orders", "events"):
        with pytest.raises(HistoryError, match="not a readable Parquet file"):
            events_of(fmt, [garbage])

    rows = 30_000
    table = pa.table({"event_id": [f"e{i}" for i in range(rows)], "type": ["visit"] * rows,
                      "client_id": [f"c{i % 97}" for i in range(rows)],
                      "event_time": ["2024-05-01T10:00:00Z"] * rows})
    damaged = tmp_path / "damaged.parquet"
    pq.write_table(table, damaged, row_group_size=10_000, compression="none")
    data = bytearray(damaged.read_bytes())
    middle = len(data) * 5 // 6  # inside the last row group
    data[middle:middle + 2_000] = b"\xff" * 2_000
    damaged.write_bytes(bytes(data))
    events, tally = events_of("events", [damaged])
    assert len(events) >= 10_000  # the row groups before the damage
    assert tally.bad == {"damaged Parquet file": 1}, tally.bad


def test_decimal_amounts_in_parquet_are_numbers(tmp_path: Path) -> None:
    from decimal import Decimal
    order = pa.array([{"order_id": "o1", "total": Decimal("12.50")}],
                     type=pa.struct([("order_id", pa.string()),
                                     ("total", pa.decimal128(10, 2))]))
    table = pa.table({"event_id": ["e1"], "type": ["order_placed"], "client_id": ["c1"],
                      "event_time": ["2024-05-01T10:00:00Z"], "order": order})
    pq.write_table(table, tmp_path / "orders.parquet")
    events, tally = events_of("events", [tmp_path / "orders.parquet"])
    assert not tally.bad and events[0]["order"]["total"] == 12.5
