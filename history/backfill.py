"""`crmflow backfill`: a store's past fed through the live dataflow.

The history goes into the live event streams in event-time order, each event marked as
history received at the backfill's start. The dataflow applies it like any event, so
profiles, memberships and pending timers come out as a replay would make them; what is
different is what happens to occasions: one due before the backfill started is recorded
as `suppressed` with reason `backfill` (features/triggers.py), never sent a year late.
Timers due later (a win-back in three weeks) stay armed and fire live.

Live traffic keeps flowing meanwhile: history entries are appended between live ones, and
every entry is applied in its stream's order. A client's live event that reaches the
stream before that client's history makes the history late for it: it is still applied
(features are kept order-independent), and its past occasions are still suppressed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings
from dataflows.flow import store_factory
from features.events import Event
from history.load import History, Progress, describe, load_history
from sinks.event_log import AppendOptions, BacklogFull, EventLog
from sinks.keys import KeyLayout
from sinks.redis_client import sync_client

APPEND_CHUNK = 2000


@dataclass(slots=True)
class BackfillResult:
    history: History
    started_at: float
    appended: int
    duplicates: int
    caught_up: bool | None  # None: not waited for
    seconds: float

    def summary(self) -> list[str]:
        lines = describe(self.history)
        lines.append(f"appended: {self.appended:,}; already there (duplicates): "
                     f"{self.duplicates:,}")
        if self.caught_up is True:
            lines.append("the dataflow has applied the whole backfill")
        elif self.caught_up is False:
            lines.append("the dataflow had not applied the whole backfill yet when waiting "
                         "ended: it carries on by itself")
        lines.append(f"time: {self.seconds:.1f}s")
        return lines


def backfill(inputs: Sequence[Path], fmt: str, settings: Settings, *,
             mapping: Mapping[str, str] | None = None, strict: bool = False,
             wait: float | None = 0.0, progress: Progress | None = None) -> BackfillResult:
    """Append the history to the live streams; then, unless `wait` is None, wait up to
    `wait` seconds (0: without limit) until the dataflow has applied all of it."""
    progress = progress or Progress(enabled=False)
    started_at = time.time()
    history = load_history(inputs, fmt, mapping=mapping, strict=strict, progress=progress,
                           backfill_at=started_at)
    client = sync_client(settings.redis)
    layout = KeyLayout.from_settings(settings)
    try:
        log = EventLog(client, layout, AppendOptions(settings.redis.dedupe_window,
                                                     settings.redis.max_stream_length))
        appended = 0
        events = history.events
        for start in range(0, len(events), APPEND_CHUNK):
            appended += _append_when_room(log, events[start:start + APPEND_CHUNK], progress)
            progress.show(f"appending: {min(start + APPEND_CHUNK, len(events)):,} of "
                          f"{len(events):,} events")
        caught_up = None if wait is None else _wait_applied(settings, wait, progress)
    finally:
        client.close()
        progress.done()
    return BackfillResult(history, started_at, appended, len(events) - appended, caught_up,
                          time.time() - started_at)


def _append_when_room(log: EventLog, chunk: Sequence[Event], progress: Progress) -> int:
    """Append, waiting while a stream is at its cap (the dataflow catches up meanwhile).
    A chunk whose share of a stream could not fit even a stream half empty goes in halves
    (else a cap below it waited for ever on a stream the dataflow had emptied). What a
    refused try had appended to other streams is de-duplicated by id on the next (and
    counted among the duplicates)."""
    while True:
        try:
            return sum(log.append(chunk))
        except BacklogFull as exc:
            if len(chunk) > 1 and exc.length <= exc.cap // 2:
                middle = len(chunk) // 2
                return (_append_when_room(log, chunk[:middle], progress)
                        + _append_when_room(log, chunk[middle:], progress))
            progress.show(f"waiting for the dataflow: {exc}")
            time.sleep(BACKLOG_WAIT)


BACKLOG_WAIT = 1.0


def _wait_applied(settings: Settings, limit: float, progress: Progress) -> bool:
    """Until every partition's committed position reaches its stream's head as of now."""
    store = store_factory(settings)
    try:
        heads = store.stream_heads()
        deadline = time.monotonic() + limit if limit > 0 else float("inf")
        while True:
            behind = store.partitions_behind(heads)
            if not behind:
                return True
            if time.monotonic() >= deadline:
                return False
            progress.show(f"waiting for the dataflow: {len(heads) - len(behind)} of "
                          f"{len(heads)} partitions applied")
            time.sleep(0.5)
    finally:
        store.client.close()
