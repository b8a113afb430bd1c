"""The trigger log's columns, built by Arrow from the stream's bytes: the same values a row
at a time in Python gave, missing fields and odd times included."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import redis

from features.events import format_time
from sinks.bucket_store import stream_fields
from sinks.keys import KeyLayout
from sinks.parquet_export import TRIGGER_SCHEMA, ExportSummary, _trigger_batch, write_triggers
from tests.support import make_settings

T0 = 1_795_435_200.0  # 2026-11-23T12:00:00Z


def _record(n: int, **fields: object) -> dict[str, object]:
    return {"trigger_id": f"t{n}", "type": "abandoned_cart", "key": f"k{n}",
            "client_id": f"c{n}", "fired_at": format_time(T0 + n * 0.001),
            "decided_at": format_time(T0 + n), "status": "sent", "reason": None,
            "channel": "email", "source": "auto", "deferred_until": None,
            "payload": {"n": n}, **fields}


def _stream_entry(record: dict[str, object]) -> dict[bytes, bytes]:
    flat = stream_fields(record)
    return {str(k).encode(): v if isinstance(v, bytes) else str(v).encode()
            for k, v in zip(flat[::2], flat[1::2], strict=True)}


def _ms(seconds: float) -> datetime:
    return datetime.fromtimestamp(round(seconds * 1000) / 1000, UTC)


def test_trigger_columns_keep_every_value() -> None:
    records = [
        _record(1),
        _record(2, status="deferred", reason="quiet_hours",
                deferred_until=format_time(T0 + 9 * 3600.5)),
        _record(3, status="suppressed", reason="no_channel", channel=None,
                client_id="c3 é"),
    ]
    entries = [_stream_entry(r) for r in records]
    entries[0][b"reason"] = b""  # an empty text stays empty; an empty time is none
    entries[0][b"deferred_until"] = b""
    rows = _trigger_batch(entries).to_pylist()
    assert [r["trigger_id"] for r in rows] == ["t1", "t2", "t3"]
    assert rows[0]["reason"] == "" and rows[0]["deferred_until"] is None
    assert rows[0]["fired_at"] == _ms(T0 + 0.001) and rows[1]["decided_at"] == _ms(T0 + 2)
    assert rows[1]["deferred_until"] == _ms(T0 + 9 * 3600.5)
    assert rows[2]["channel"] is None and rows[2]["client_id"] == "c3 é"
    assert rows[1]["payload"] == '{"n":2}'
    assert list(rows[0]) == TRIGGER_SCHEMA.names


def test_a_time_arrow_cannot_parse_is_parsed_as_before() -> None:
    entry = _stream_entry(_record(1))
    entry[b"fired_at"] = b"20261123T120000Z"  # ISO 8601's basic form
    assert _trigger_batch([entry]).to_pylist()[0]["fired_at"] == _ms(T0)


def test_triggers_by_day_and_in_one_file_hold_the_same_rows(
        tmp_path: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    layout = KeyLayout.from_settings(make_settings(redis_url, key_prefix))
    streams = layout.all_trigger_streams()
    for n in range(2500):  # more than a page, across days and streams
        record = _record(n, fired_at=format_time(T0 + n * 600))
        redis_client.xadd(streams[n % len(streams)], _stream_entry(record))  # type: ignore[arg-type]
    one, by_day = ExportSummary(), ExportSummary()
    write_triggers(redis_client, layout, tmp_path / "one", one, by_day=False)
    write_triggers(redis_client, layout, tmp_path / "days", by_day, by_day=True)
    single = pq.read_table(tmp_path / "one" / "triggers.parquet").to_pylist()
    assert one.triggers == by_day.triggers == len(single) == 2500
    assert one.triggers_by_type == by_day.triggers_by_type == {("abandoned_cart", "sent"): 2500}
    days = sorted(p.parent.name for p in (tmp_path / "days" / "triggers").rglob("*.parquet"))
    assert days[0] == "day=2026-11-23" and days[-1] == "day=2026-12-10"
    for path in (tmp_path / "days" / "triggers").rglob("*.parquet"):
        day = path.parent.name.removeprefix("day=")
        rows = pq.read_table(path).to_pylist()
        assert rows and all(r["fired_at"].date().isoformat() == day for r in rows)
    dated = sorted(r["trigger_id"] for p in (tmp_path / "days" / "triggers").rglob("*.parquet")
                   for r in pq.read_table(p).to_pylist())
    assert dated == sorted(r["trigger_id"] for r in single)


def test_a_trigger_log_with_no_trigger_is_a_readable_empty_table(
        tmp_path: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    layout = KeyLayout.from_settings(make_settings(redis_url, key_prefix))
    summary = ExportSummary()
    write_triggers(redis_client, layout, tmp_path, summary, by_day=True)
    folder = tmp_path / "triggers"
    assert summary.triggers == 0 and [p.relative_to(folder) for p in summary.files] == [
        Path("day=unknown/part-00000.parquet")]
    columns = [*TRIGGER_SCHEMA.names, "day"]
    frame = pd.read_parquet(folder)
    assert len(frame) == 0 and list(frame.columns) == columns
    scanned = pl.scan_parquet(folder / "**" / "*.parquet", hive_partitioning=True).collect()
    assert scanned.height == 0 and scanned.columns == columns
    con = duckdb.connect()
    assert con.execute("select count(*), count(distinct day) from read_parquet(?, "
                       "hive_partitioning = true)",
                       [str(folder / "**" / "*.parquet")]).fetchone() == (0, 0)
