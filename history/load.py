"""Reading a history into event-time order, with progress on a terminal and a summary."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from dataflows.heap import freeze_survivors
from features.events import Event, EventType, format_time
from history.formats import Tally, read_events

# Within one second, events of a client keep the funnel's order (a view before the cart
# add, the cart add before the order): files carry no better tiebreak that survives being
# split or reordered.
_FUNNEL = (EventType.VISIT, EventType.REGISTERED, EventType.IDENTIFY, EventType.PAGE_VIEW,
           EventType.PRODUCT_VIEW, EventType.FAVOURITE_ADD, EventType.CART_ADD,
           EventType.CART_REMOVE, EventType.CHECKOUT_STARTED, EventType.ORDER_PLACED,
           EventType.ORDER_CANCELLED, EventType.ORDER_REFUNDED)
_RANK = {kind: rank for rank, kind in enumerate(_FUNNEL)}


def order_key(event: Event) -> tuple[float, str, int, str]:
    return (event.event_time, event.client_key, _RANK.get(event.type, len(_FUNNEL)),
            event.event_id)


class Progress:
    """One status line on stderr, redrawn at most twice a second, only on a terminal."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self._enabled or (not force and now - self._drawn < 0.5):
            return
        self._drawn = now
        line = f"{now - self._started:7.1f}s  {text}"
        self._stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self._stream.flush()

    def done(self) -> None:
        if self._enabled and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


@dataclass(slots=True)
class History:
    events: list[Event]
    tally: Tally
    clients: int
    after_as_of: int = 0  # events later than the as-of time, left out
    seconds: float = 0.0
    types: Counter[str] = field(default_factory=Counter)

    @property
    def last_time(self) -> float | None:
        return self.events[-1].event_time if self.events else None


def load_history(paths: Sequence[Path], fmt: str, *, mapping: Mapping[str, str] | None = None,
                 strict: bool = False, as_of: float | None = None,
                 progress: Progress | None = None, backfill_at: float | None = None
                 ) -> History:
    """Every event of the input, sorted by event time (then client, funnel step and id).

    `backfill_at`, when given, marks every event as history received then (a backfill);
    otherwise each event is received when it happened, as in a replay.
    """
    started = time.monotonic()
    progress = progress or Progress(enabled=False)
    clients: set[str] = set()
    events: list[Event] = []
    tally = Tally(strict=strict)

    def report() -> None:
        rate = tally.rows / max(time.monotonic() - started, 1e-9)
        progress.show(f"read {tally.rows:,} rows ({rate:,.0f}/s), {len(events):,} events, "
                      f"{len(clients):,} clients")

    tally.on_row = report
    after = 0
    for event in read_events(fmt, list(paths), tally, mapping):
        if as_of is not None and event.event_time > as_of:
            after += 1
            continue
        if backfill_at is not None:
            event = replace(event, received_at=backfill_at, history=True)
        elif event.received_at != event.event_time or event.history:
            event = replace(event, received_at=event.event_time, history=False)
        events.append(event)
        clients.add(event.client_key)
        freeze_survivors()  # the events are kept to the end: full collections walked them
    events.sort(key=order_key)
    progress.show(f"read {tally.rows:,} rows, {len(events):,} events, {len(clients):,} clients",
                  force=True)
    progress.done()
    return History(events, tally, len(clients), after, time.monotonic() - started,
                   Counter(event.type.value for event in events))


def describe(history: History) -> list[str]:
    """The read's part of a summary."""
    tally = history.tally
    lines = [f"rows read: {tally.rows:,}; events: {len(history.events):,}; "
             f"clients: {history.clients:,}"]
    if history.events:
        lines.append(f"event time: {format_time(history.events[0].event_time)} .. "
                     f"{format_time(history.last_time)}")
    lines.append("events by type: " + ", ".join(
        f"{kind} {count:,}" for kind, count in sorted(history.types.items())))
    if tally.skipped:
        lines.append("rows skipped: " + ", ".join(
            f"{reason} {count:,}" for reason, count in sorted(tally.skipped.items())))
    if tally.bad:
        lines.append(f"bad rows: {sum(tally.bad.values()):,}")
        lines.extend(f"  {reason}: {count:,} (first: {tally.examples[reason]})"
                     for reason, count in sorted(tally.bad.items()))
    else:
        lines.append("bad rows: 0")
    if history.after_as_of:
        lines.append(f"events after the as-of time, left out: {history.after_as_of:,}")
    return lines
