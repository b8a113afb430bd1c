"""Reading rows from history files: JSON lines, CSV (either maybe gzipped) and Parquet.

Every row comes with where it was read (`file:line`, or `file:row N` for Parquet), which is
what a bad-row report and `--strict` name.
"""

from __future__ import annotations

import codecs
import csv
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
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


class _Lines:
    """The text lines of a file, maybe gzipped, read as UTF-8 one line at a time (a leading
    byte-order mark, as Excel writes, dropped), so that one bad line costs that line only.

    A line that is not UTF-8 is decoded with replacement characters and its number kept in
    `bad` (with what was wrong) for the caller to skip. A gzipped file that ends before its
    end marker (a cut download) or is corrupt yields what was read before it and sets
    `broken`.
    """

    CHUNK = 1 << 16

    def __init__(self, path: Path) -> None:
        self.path = path
        self.number = 0
        self.bad: dict[int, str] = {}
        self.broken = ""

    def __iter__(self) -> Iterator[str]:
        for raw in self._raw_lines():
            self.number += 1
            if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.bad[self.number] = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
                yield raw.decode("utf-8", "replace")

    def _raw_lines(self) -> Iterator[bytes]:
        with self.path.open("rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            if not gzipped and not self._cr_only(handle.read(self.CHUNK)):
                handle.seek(0)
                yield from handle
                return
            handle.seek(0)
            pending = b""
            ending: bytes | None = None  # b"\r" in a file whose lines end in CR alone
            for data in (self._gunzip(handle) if gzipped else iter(
                    lambda: handle.read(self.CHUNK), b"")):
                if ending is None:
                    ending = b"\r" if self._cr_only(data) else b"\n"
                pending += data
                *lines, pending = pending.split(ending)
                for line in lines:
                    yield line + b"\n"
            if pending and not self.broken:  # cut by the damage: what it says is not known
                yield pending

    @staticmethod
    def _cr_only(start: bytes) -> bool:
        """Lines that end in CR alone (classic Mac OS, Excel's "CSV (Macintosh)", which
        writes a line break inside a cell as a bare LF): more bare CRs than bare LFs."""
        both = start.count(b"\r\n")
        return start.count(b"\r") - both > start.count(b"\n") - both

    def _gunzip(self, handle: IO[bytes]) -> Iterator[bytes]:
        """The decompressed bytes of every gzip member in turn."""
        inflate = zlib.decompressobj(wbits=31)
        ended = False  # the last member read reached its end marker
        data = b""
        while True:
            if not data:
                data = handle.read(self.CHUNK)
                if not data:
                    break
            try:
                out = inflate.decompress(data)
            except zlib.error as exc:
                self.broken = f"corrupt gzip data: {exc}"
                return
            data, ended = b"", inflate.eof
            if ended:  # another member may follow
                data = inflate.unused_data
                inflate = zlib.decompressobj(wbits=31)
            yield out
        if not ended:
            self.broken = "truncated: the gzip data ends before its end marker"


def _plain(value: Any) -> Any:
    """Parquet values as JSON would carry them: times as ISO text (naive means UTC), decimals
    as numbers, and no nulls in objects (a Parquet column, or a struct's field, exists for
    every row: its null means absent, as the key left out of a JSON line)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):  # a decimal column (money): JSON would carry a number
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parquet_rows(path: Path) -> Iterator[tuple[str, Row | BadRow]]:
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several kinds for a bad file
        raise HistoryError(f"{path}: not a readable Parquet file ({exc})") from None
    index = 0
    batches = table.iter_batches(batch_size=PARQUET_BATCH)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # pyarrow raises several kinds for damage
            yield (f"{path}:row {index + 1}",
                   BadRow("damaged Parquet file", f"{exc}; the rows before were read"))
            return
        for row in batch.to_pylist():
            index += 1
            yield f"{path}:row {index}", _plain(row)


def _broken(lines: _Lines) -> tuple[str, BadRow]:
    return (f"{lines.path}:{lines.number}",
            BadRow("broken gzip file", f"{lines.broken}; the rows before were read"))


def json_lines(path: Path) -> Iterator[tuple[str, object]]:
    """Objects of a JSON-lines file (blank lines skipped); an unparsable line yields the
    exception in place of the object, a line that is not UTF-8 (or the end of a truncated
    gzip file) a `BadRow`."""
    lines = _Lines(path)
    for line in lines:
        where = f"{path}:{lines.number}"
        if lines.number in lines.bad:
            yield where, BadRow("not UTF-8", lines.bad[lines.number])
            continue
        if not line.strip():
            continue
        try:
            yield where, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield where, exc
    if lines.broken:
        yield _broken(lines)


def csv_rows(path: Path, required: tuple[str, ...] = ()
             ) -> Iterator[tuple[str, Row | BadRow]]:
    """Rows of a CSV file with a header; `required` columns must be in it. A row with fewer
    or more fields than the header (a truncated line, an unquoted comma), with bytes that
    are not UTF-8, or that the csv module cannot read is a `BadRow` named by its first line
    (a line that is not UTF-8 by its own); so is the end of a truncated gzip file, after the
    rows before it. A bad row that runs over several lines (an unclosed quote swallows the
    lines after it) is reported with the lines it spans."""
    lines = _Lines(path)
    source = iter(lines)
    try:
        header = next(csv.reader(source), [])
    except csv.Error as exc:
        raise HistoryError(f"{path}: unreadable CSV header ({exc})") from None
    missing = [name for name in required if name not in header]
    if missing:
        raise HistoryError(f"{path}: missing column(s) {', '.join(missing)}; "
                           f"the header has: {', '.join(header) or '(nothing)'}")
    yield from _records(path, source, lines.number + 1, header, lines.bad)
    if lines.broken:
        yield _broken(lines)


class _Taken:
    """Lines as a csv reader takes them, kept until cleared: the lines of one record."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.taken: list[str] = []

    def __iter__(self) -> _Taken:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.taken.append(line)
        return line


def _records(path: Path, source: Iterator[str], first: int, header: list[str],
             undecoded: dict[int, str]) -> Iterator[tuple[str, Row | BadRow]]:
    """The rows of `source`, whose first line is line `first` of the file."""
    taken = _Taken(source)
    reader = csv.reader(taken)
    line = first  # the number of the next line to read
    while True:
        taken.taken.clear()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield f"{path}:{line}", BadRow("unreadable CSV", str(exc))
            line += max(len(taken.taken), 1)
            continue
        start, record = line, list(taken.taken)
        line += len(record)
        where = f"{path}:{start}"
        if not fields:
            continue  # a blank line
        not_utf8 = [n for n in range(start, line) if n in undecoded]
        if not_utf8:
            yield f"{path}:{not_utf8[0]}", BadRow("not UTF-8", undecoded[not_utf8[0]])
        elif len(fields) != len(header) and len(record) > 1:
            # an unclosed quote, or a quoted line break in a row of the wrong width: which,
            # the file does not say, so the lines are reported, not guessed into rows
            yield where, BadRow("unreadable CSV", f"a quoted field runs from line {start} to "
                                f"line {line - 1} (an unclosed quote?); those "
                                f"{len(record)} lines make {len(fields)} fields, the header "
                                f"has {len(header)}")
        elif len(fields) > len(header):
            yield where, BadRow("too many fields", f"{len(fields)} fields, the header has "
                                f"{len(header)}")
        elif len(fields) < len(header):
            absent = header[len(fields):]
            yield where, BadRow("too few fields", f"no {', '.join(absent)}: {len(fields)} "
                                f"fields, the header has {len(header)}")
        else:
            yield where, dict(zip(header, fields, strict=True))


def table_rows(path: Path, required: tuple[str, ...] = ()
               ) -> Iterator[tuple[str, Row | BadRow]]:
    """Rows of a CSV or Parquet file (told apart by content, not by name)."""
    if not is_parquet(path):
        yield from csv_rows(path, required)
        return
    try:
        columns = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several kinds for a bad file
        raise HistoryError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [name for name in required if name not in columns]
    if missing:
        raise HistoryError(f"{path}: missing column(s) {', '.join(missing)}; "
                           f"the file has: {', '.join(columns)}")
    yield from parquet_rows(path)
