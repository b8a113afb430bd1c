"""Profiles, segment memberships and the trigger log from Redis to Parquet, in batches.

One writer serves `crmflow export` (the live system) and `crmflow replay` (a private
Redis the replay filled), so the two write the same columns with the same types.

Memory is bounded by the batch size, not by the number of clients: states are read a
bucket at a time with HSCAN (the bucket hashes are known by number; nothing scans the
keyspace), triggers a page at a time with XRANGE, and rows leave as Parquet row groups.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from features.codec import decode_state
from features.events import format_time
from features.profile import PRODUCT_LISTS, profile_row
from features.rules import SegmentRules
from features.segments import public_segments
from features.state import ClientState
from features.values import FEATURES, Kind
from sinks.keys import KeyLayout
from sinks.trigger_log import trigger_pages

BATCH_ROWS = 10_000
PAGE = 1000
_TIME = pa.timestamp("ms", tz="UTC")


def _feature_type(name: str) -> pa.DataType:
    feature = FEATURES[name]
    if feature.kind is Kind.TIME:
        return _TIME
    if feature.kind is Kind.NUMBER:
        return pa.int64() if feature.whole else pa.float64()
    if feature.kind is Kind.BOOL:
        return pa.bool_()
    return pa.string()


PROFILE_SCHEMA = pa.schema([pa.field("client_id", pa.string(), nullable=False),
                            *(pa.field(name, _feature_type(name)) for name in FEATURES),
                            pa.field("checkout_started_at", _TIME),
                            *(pa.field(name, pa.list_(pa.string())) for name in PRODUCT_LISTS),
                            pa.field("updated_at", _TIME),
                            pa.field("traits", pa.string())])  # JSON text
SEGMENT_SCHEMA = pa.schema([pa.field("client_id", pa.string(), nullable=False),
                            pa.field("segment", pa.string(), nullable=False),
                            pa.field("entered_at", _TIME)])
TRIGGER_SCHEMA = pa.schema([
    pa.field("trigger_id", pa.string(), nullable=False), pa.field("client_id", pa.string()),
    pa.field("type", pa.string()), pa.field("key", pa.string()),
    pa.field("fired_at", _TIME), pa.field("decided_at", _TIME),
    pa.field("status", pa.string()), pa.field("reason", pa.string()),
    pa.field("channel", pa.string()), pa.field("source", pa.string()),
    pa.field("deferred_until", _TIME), pa.field("payload", pa.string())])
_TRIGGER_TIMES = ("fired_at", "decided_at", "deferred_until")


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _ms_of_text(text: str | None) -> int | None:
    return None if not text else _ms(datetime.fromisoformat(text).timestamp())


class _BatchedWriter:
    """Rows in, Parquet row groups of `batch` rows out; the file exists only once written
    (an empty table still gets its schema)."""

    def __init__(self, path: Path, schema: pa.Schema, batch: int = BATCH_ROWS) -> None:
        self._path = path
        self._schema = schema
        self._batch = batch
        self._rows: list[dict[str, Any]] = []
        self._batches: list[pa.RecordBatch] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._buffered += 1
        if self._buffered >= self._batch:
            self._flush()

    def add_batch(self, batch: pa.RecordBatch) -> None:
        self._rows_to_batch()  # rows keep their order among batches
        self._batches.append(batch)
        self._buffered += batch.num_rows
        if self._buffered >= self._batch:
            self._flush()

    def _rows_to_batch(self) -> None:
        if self._rows:
            self._batches.append(pa.RecordBatch.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def _flush(self) -> None:
        if self._writer is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._path, self._schema, compression="zstd")
        self._rows_to_batch()
        self._writer.write_table(pa.Table.from_batches(self._batches, schema=self._schema))
        self.written += self._buffered
        self._batches, self._buffered = [], 0

    def discard(self) -> None:
        """Stop, leaving no file (an export that could not be finished)."""
        if self._writer is not None:
            self._writer.close()
        self._path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._buffered or self._writer is None:
            self._flush()
        assert self._writer is not None
        self._writer.close()


@dataclass(slots=True)
class ExportSummary:
    profiles: int = 0
    memberships: int = 0
    triggers: int = 0
    tombstones: int = 0  # anonymous clients merged into another: pointers, not profiles
    triggers_by_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    files: list[Path] = field(default_factory=list)


def client_states(client: redis.Redis, layout: KeyLayout) -> Iterator[tuple[str, ClientState]]:
    """Every stored client, a bucket at a time, a page of a bucket at a time."""
    for bucket in range(layout.buckets):
        for key, raw in client.hscan_iter(layout.state(bucket), count=PAGE):
            yield cast(bytes, key).decode(), decode_state(cast(bytes, raw))


def trigger_batches(client: redis.Redis, layout: KeyLayout) -> Iterator[pa.RecordBatch]:
    """Every decision the trigger streams hold, a page at a time, as columns: the fields'
    bytes go to Arrow as they come, and Arrow decodes them and parses the times (building
    a row of Python values each cost 20 us a trigger, a fifth of a replay's Parquet stage
    for a million events)."""
    for stream in layout.all_trigger_streams():
        for page in trigger_pages(client, stream, PAGE):
            yield _trigger_batch(page)


_TRIGGER_KEYS = tuple((name.encode(), name in _TRIGGER_TIMES) for name in TRIGGER_SCHEMA.names)


def _trigger_batch(records: list[dict[bytes, bytes]]) -> pa.RecordBatch:
    columns = []
    for key, is_time in _TRIGGER_KEYS:
        values = [r.get(key) for r in records]
        if is_time:
            values = [value or None for value in values]  # an empty time: null
        text = pa.array(values, pa.binary()).cast(pa.string())
        columns.append(_times(text) if is_time else text)
    return pa.RecordBatch.from_arrays(columns, schema=TRIGGER_SCHEMA)


def _times(text: pa.Array) -> pa.Array:
    """ISO-8601 texts (as `format_time` writes them) as milliseconds, parsed by Arrow; any
    other form of a time is parsed as before, one at a time."""
    try:
        return pc.cast(text, _TIME)
    except pa.ArrowInvalid:
        return pa.array([_ms_of_text(value) for value in text.to_pylist()], _TIME)


class AsOfBeforeState(ValueError):
    """A live state holds events after the export's as-of time: it cannot be rewound."""

    def __init__(self, client_key: str, updated_at: float, as_of: float) -> None:
        super().__init__(
            f"client {client_key!r} has events up to {format_time(updated_at)}, after the "
            f"as-of time {format_time(as_of)}: a live profile cannot be rewound (its totals "
            "and segments already count the later events); export as of that time or "
            "later, or replay the history with --as-of")
        self.client_key = client_key


def write_profiles(client: redis.Redis, layout: KeyLayout, rules: SegmentRules, out: Path,
                   as_of: float, summary: ExportSummary) -> None:
    """`profiles.parquet` (features as of `as_of`) and `segments.parquet`. Raises
    AsOfBeforeState, with no file left behind, for a client with events after `as_of`."""
    profiles = _BatchedWriter(out / "profiles.parquet", PROFILE_SCHEMA)
    segments = _BatchedWriter(out / "segments.parquet", SEGMENT_SCHEMA)
    times = [name for name in PROFILE_SCHEMA.names if PROFILE_SCHEMA.field(name).type == _TIME]
    for client_key, state in client_states(client, layout):
        if state.merged_into:
            summary.tombstones += 1
            continue
        if state.updated_at > as_of:
            profiles.discard()
            segments.discard()
            raise AsOfBeforeState(client_key, state.updated_at, as_of)
        row = profile_row(client_key, state, as_of, rules)
        for name in times:
            row[name] = _ms(row[name])
        row["traits"] = json.dumps(dict(state.traits), sort_keys=True, separators=(",", ":"),
                                   default=str) if state.traits else None
        profiles.add(row)
        for name, entered_at in public_segments(state):
            segments.add({"client_id": client_key, "segment": name,
                          "entered_at": _ms(entered_at)})
    for writer in (profiles, segments):
        writer.close()
    summary.profiles, summary.memberships = profiles.written, segments.written
    summary.files += [out / "profiles.parquet", out / "segments.parquet"]


def write_triggers(client: redis.Redis, layout: KeyLayout, out: Path, summary: ExportSummary,
                   *, by_day: bool) -> None:
    """`triggers.parquet`, or with `by_day` a Hive-partitioned `triggers/day=YYYY-MM-DD/`
    folder (one part file per day per batch, so memory stays bounded)."""
    if not by_day:
        writer = _BatchedWriter(out / "triggers.parquet", TRIGGER_SCHEMA)
        for batch in trigger_batches(client, layout):
            writer.add_batch(batch)
            _count(summary, batch)
        writer.close()
        summary.triggers = writer.written
        summary.files.append(out / "triggers.parquet")
        return
    folder = out / "triggers"
    if folder.exists():
        shutil.rmtree(folder)  # a fresh export, not parts of an older one mixed in
    folder.mkdir(parents=True)
    days: dict[str, list[pa.RecordBatch]] = defaultdict(list)
    buffered = parts = 0

    def flush() -> None:
        nonlocal buffered, parts
        for day, batches in sorted(days.items()):
            path = folder / f"day={day}" / f"part-{parts:05d}.parquet"
            path.parent.mkdir(exist_ok=True)
            pq.write_table(pa.Table.from_batches(batches, schema=TRIGGER_SCHEMA), path,
                           compression="zstd")
            summary.files.append(path)
        parts += 1
        days.clear()
        buffered = 0

    for batch in trigger_batches(client, layout):
        fired_days = pc.fill_null(pc.strftime(batch.column("fired_at"), format="%Y-%m-%d"),
                                  "unknown")
        for day in pc.unique(fired_days).to_pylist():
            days[day].append(batch.filter(pc.equal(fired_days, day)))
        buffered += batch.num_rows
        summary.triggers += batch.num_rows
        _count(summary, batch)
        if buffered >= BATCH_ROWS:
            flush()
    if buffered:
        flush()
    if not parts:  # no trigger: one empty part with the schema, so that readers of the
        # folder (pandas, polars and DuckDB with hive partitioning) find the columns, `day`
        # included, rather than an empty folder; `unknown` is the day of a trigger whose
        # fired_at is missing
        path = folder / "day=unknown" / "part-00000.parquet"
        path.parent.mkdir()
        pq.write_table(TRIGGER_SCHEMA.empty_table(), path, compression="zstd")
        summary.files.append(path)


def _count(summary: ExportSummary, batch: pa.RecordBatch) -> None:
    summary.triggers_by_type.update(zip(batch.column("type").to_pylist(),
                                        batch.column("status").to_pylist(), strict=True))
