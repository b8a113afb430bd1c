"""A client's recent events, as the console's timeline shows them.

The dataflow keeps the last few entries per client (`console.timeline_events`), one short
line each: memory per client is a budget, so an entry is its type, event time and a
summary of at most `MAX_SUMMARY` characters, not the event. Manual touches are not entries:
the touch ledger holds them with their decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.events import Event, EventType

MAX_SUMMARY = 60
SEPARATOR = "\n"  # between entries; summaries never contain it
_FIELD = "\t"

# Not shown: manual touches come from the ledger, and the identity steps the dataflow
# writes itself are bookkeeping (the merge appears as the aliases of the profile).
_HIDDEN = frozenset({EventType.TOUCH_RECORDED, EventType.IDENTITY_LINKED,
                     EventType.PROFILE_MERGED, EventType.ERASURE_REQUESTED})


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    type: str
    at: float
    summary: str

    def __init__(self, type: str, at: float, summary: str) -> None:  # see `features.__init__`
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "summary", summary)


def _clean(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_SUMMARY else flat[:MAX_SUMMARY - 1] + "…"


def _money(value: float) -> str:
    return f"{value:,.2f}"


def summary(event: Event) -> str:
    """A few words on what happened, for a person reading the timeline."""
    parts: list[str] = []
    if event.order is not None:
        order = event.order
        parts.append(f"order {order.order_id}")
        if order.total >= 0:
            parts.append(f"{_money(order.total)}{' ' + order.currency if order.currency else ''}")
        else:  # a cancellation or refund naming no amount (the parser's -1): all of it
            parts.append("whole order")
        if order.items:
            parts.append(f"{len(order.items)} item{'s' if len(order.items) != 1 else ''}")
    elif event.products:
        first = event.products[0]
        parts.append(first.product_id + (f" ({first.category})" if first.category else ""))
        if len(event.products) > 1:
            parts.append(f"+{len(event.products) - 1} more")
    if event.nps_score is not None:
        parts.append(f"score {event.nps_score}")
    if event.type in (EventType.IDENTIFY, EventType.REGISTERED) and event.traits:
        parts.append("traits: " + ", ".join(sorted(event.traits)))
    if event.name:
        parts.append(event.name)
    if event.channel:
        parts.append(f"via {event.channel}")
    return _clean(", ".join(parts))


def timeline_entry(event: Event) -> str | None:
    """The event's line in its client's timeline; None for events the timeline leaves out."""
    if event.type in _HIDDEN:
        return None
    return f"{event.type.value}{_FIELD}{event.event_time!r}{_FIELD}{summary(event)}"


def parse_timeline(text: str) -> list[TimelineEntry]:
    """The stored lines, newest first as stored; a line that does not parse is skipped."""
    entries: list[TimelineEntry] = []
    for line in text.split(SEPARATOR) if text else ():
        kind, _, rest = line.partition(_FIELD)
        at, _, words = rest.partition(_FIELD)
        try:
            entries.append(TimelineEntry(kind, float(at), words))
        except ValueError:
            continue
    return entries
