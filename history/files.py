"""Reading rows from history files: JSON lines, CSV (either maybe gzipped) and Parquet.

Every row comes with where it was read (`file:line`, or `file:row N` for Parquet), which is
what a bad-row report and `--strict` name.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow.parquet as pq

Row = dict[str, Any]
PARQUET_BATCH = 10_000


class HistoryError(ValueError):
    """An input that cannot be read as asked; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that could not be read as a row (yielded in its place, to be counted)."""

    reason: str
    detail: str = ""


def is_parquet(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def _open_text(path: Path) -> IO[str]:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _plain(value: Any) -> Any:
    """Parquet values as JSON would carry them: times as ISO text (naive means UTC)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parquet_rows(path: Path) -> Iterator[tuple[str, Row]]:
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise HistoryError(f"{path}: not a readable Parquet file ({exc})") from None
    index = 0
    for batch in table.iter_batches(batch_size=PARQUET_BATCH):
        for row in batch.to_pylist():
            index += 1
            yield f"{path}:row {index}", {k: _plain(v) for k, v in row.items()}


def json_lines(path: Path) -> Iterator[tuple[str, object]]:
    """Objects of a JSON-lines file (blank lines skipped); an unparsable line yields the
    exception in place of the object."""
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield f"{path}:{number}", exc


def csv_rows(path: Path, required: tuple[str, ...] = ()
             ) -> Iterator[tuple[str, Row | BadRow]]:
    """Rows of a CSV file with a header; `required` columns must be in it. A row with fewer
    or more fields than the header (a truncated line, an unquoted comma) is a `BadRow`."""
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [name for name in required if name not in header]
        if missing:
            raise HistoryError(f"{path}: missing column(s) {', '.join(missing)}; "
                               f"the header has: {', '.join(header) or '(nothing)'}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:  # DictReader files the fields past the header's under None
                yield where, BadRow("too many fields", f"{len(header) + len(row[None])} "
                                    f"fields, the header has {len(header)}")
            elif None in row.values():  # ... and leaves the missing ones None
                missing = [name for name, value in row.items() if value is None]
                yield where, BadRow("too few fields", f"no {', '.join(missing)}: "
                                    f"{len(header) - len(missing)} fields, the header has "
                                    f"{len(header)}")
            else:
                yield where, row


def table_rows(path: Path, required: tuple[str, ...] = ()
               ) -> Iterator[tuple[str, Row | BadRow]]:
    """Rows of a CSV or Parquet file (told apart by content, not by name)."""
    if not is_parquet(path):
        yield from csv_rows(path, required)
        return
    columns = pq.read_schema(path).names
    missing = [name for name in required if name not in columns]
    if missing:
        raise HistoryError(f"{path}: missing column(s) {', '.join(missing)}; "
                           f"the file has: {', '.join(columns)}")
    yield from parquet_rows(path)
