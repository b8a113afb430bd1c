"""`crmflow redrive`: events the rules failed on, appended again once the rules are fixed.

The dataflow dead-letters an event its rules raise on and goes on (dataflows/buckets.py);
the client keeps its earlier state, so the event is owed to it. Re-driving appends each such
event to its partition's event stream again, as it was, then deletes its dead letter. The
dataflow applies it as a late event (event time decides, as for any late arrival). Entries
dead-lettered as invalid or misrouted are left alone: appending them again would fail
again. Ingest's de-duplication is bypassed (the event was acknowledged once, and its id is
still remembered there); the dataflow still drops an event it has applied, by id.

A partition the dataflow has not caught up with is skipped (and said so): an erasure
request waiting there must apply, and purge the client's dead letters, before the client's
failed events could come back after it. What is left: an erasure requested during the
re-drive itself, or committed and not yet purged, can still be followed by the client's
re-driven event, which then starts a profile again.

At least once: a stop between an append and its dead letter's deletion re-drives that event
again on the next run. The dataflow drops the second copy while the event is among the
client's most recent ids (`features.state.MAX_RECENT_EVENT_IDS`, 16); after that many newer
events of the client it would apply it twice.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import cast

import orjson
import redis

from features.events import Event, EventError, parse_event
from sinks.event_log import AppendOptions, EventLog
from sinks.keys import KeyLayout

CORE_ERROR = "core error"  # a dead letter's reason begins so when the rules raised
EVENT_FAILED = f"{CORE_ERROR} on this event"
READ_CHUNK = 500


@dataclass(slots=True)
class RedriveResult:
    redriven: int = 0
    left: int = 0  # dead letters not re-drivable: invalid, misrouted, timers
    by_partition: dict[int, int] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # partitions the dataflow is behind on

    def summary(self, dry_run: bool) -> list[str]:
        verb = "would re-drive" if dry_run else "re-driven"
        lines = [f"{verb}: {self.redriven:,} events the rules had failed on"]
        lines.extend(f"  partition {p}: {n:,}" for p, n in sorted(self.by_partition.items()))
        lines.append(f"left in the dead-letter streams: {self.left:,} (invalid or misrouted "
                     "entries, and timers, which need no re-drive)")
        if self.skipped:
            lines.append(f"skipped partitions {', '.join(map(str, self.skipped))}: the "
                         "dataflow has not applied all of their events yet (an erasure may "
                         "be waiting there); run it again once it has")
        return lines


def redrive(client: redis.Redis, layout: KeyLayout, options: AppendOptions, *,
            dry_run: bool = False, behind: Collection[int] = ()) -> RedriveResult:
    """Append the failed events of every partition but those in `behind` again and delete
    their dead letters. Raises BacklogFull (sinks.event_log) when an event stream is at its
    cap: what was re-driven before stays re-driven, the rest stays dead-lettered."""
    log = EventLog(client, layout, AppendOptions(0, options.max_stream_length))
    result = RedriveResult(skipped=sorted(behind))
    for partition in range(layout.partitions):
        if partition in behind:
            continue
        stream = layout.dead_letters(partition)
        after = "-"
        while True:
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                           client.xrange(stream, min=after, max="+", count=READ_CHUNK))
            ids, events = [], []
            for entry_id, fields in entries:
                event = _failed_event(fields)
                if event is None:
                    result.left += 1
                else:
                    ids.append(entry_id)
                    events.append(event)
            if events and not dry_run:
                log.append(events, links=False)  # its link requests went in with it
                client.xdel(stream, *ids)
            if events:
                result.redriven += len(events)
                result.by_partition[partition] = (result.by_partition.get(partition, 0)
                                                  + len(events))
            if len(entries) < READ_CHUNK:
                break
            after = "(" + entries[-1][0].decode()
    return result


def _failed_event(fields: dict[bytes, bytes]) -> Event | None:
    """The event of a dead letter the rules raised on, or None for any other."""
    if not fields.get(b"reason", b"").decode(errors="replace").startswith(EVENT_FAILED):
        return None
    try:
        return parse_event(orjson.loads(fields[b"entry"]))
    except (KeyError, ValueError, EventError):
        return None
