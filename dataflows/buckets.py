"""The per-bucket logic: a few thousand Bytewax keys instead of one per client.

A bucket holds its clients' states and heaps of (due, client) timers. Bytewax's own
`notify_at` is not used: Bytewax 0.21 compares it with wall time and scans it per key.
A timer due at `d` fires at the first of these, all read from the stream and so identical
in replay and live, whatever the batch size or tick rate:
- the client's own next event with event time >= d (fired before that event applies; a
  live event that arrives before d + allowed lateness is held in the state until then,
  see `features.triggers.process_event`);
- for a live client (see `features.state.is_live`), the first item whose arrival time (the
  stream id's clock) is >= d + allowed lateness;
- for any client, a tick at the stream head whose wall clock is >= d + allowed lateness.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from bytewax.operators import StatefulBatchLogic

import features
from dataflows.heap import freeze_survivors, frozen_on_arrival
from dataflows.metrics import DataflowMetrics
from dataflows.rfm_model import RfmModelCache
from features import segments
from features.codec import decode_state, encode_state, encode_stored, stored_schedule
from features.events import (
    ANONYMOUS_PREFIX,
    INTERNAL_TYPES,
    Event,
    EventError,
    EventType,
    parse_event,
)
from features.identity import MERGED_REFUSAL, handle, linked_steps, refuses_erasure
from features.lifecycle import recency_anchor
from features.lookup import lookup_keys, point_of
from features.routing import bucket_of
from features.state import ClientState, is_live
from features.stored_schedule import SchedulePrints, StoredSchedule
from features.timeline import SEPARATOR, timeline_entry
from features.triggers import Trigger, TriggerRules, fire_due, next_due, refile, regroup
from sinks.bucket_store import (
    BucketCommit,
    BucketStore,
    DeadLetter,
    Erasure,
    MemberOp,
    RfmValues,
    SegmentChange,
    lookup_member,
    minute_of,
    stream_id_key,
)
from sinks.dead_letters import CORE_ERROR
from sinks.erasure import ErasureRefusal, dead_letter_of

log = logging.getLogger(__name__)

EVENT = "e"
TICK = "t"
LIVE = 0  # timers on the arrival clock
BACKFILL = 1  # timers on the head clock only

# Items flowing from the source to a bucket (Bytewax does not tell a logic its key, so
# every item names its bucket):
#   (EVENT, bucket, stream_id, client_key, raw_json)        one stream entry
#   (TICK, bucket, clock, position, at_head)                the partition's progress
Item = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class BucketConfig:
    rules: TriggerRules
    offset_flush_interval: float
    allowed_lateness: float
    replay: bool = False  # event time only: no timer fires on the arrival clock


class UnreadableState(RuntimeError):
    """A stored client state this code cannot decode: written by other code (a newer
    state format, after a rollback) or changed outside crmflow. Loading stops: carrying
    on without it would overwrite the client with a new state at its next event."""

    def __init__(self, key: str, client_key: str, cause: Exception) -> None:
        super().__init__(
            f"{key}: the stored state of client {client_key!r} cannot be read "
            f"({type(cause).__name__}: {cause}). It was written by other crmflow code (a "
            "newer state format, after a rollback?) or changed outside crmflow. The "
            "dataflow stops rather than overwrite it: run the version that wrote it, or "
            f"delete the client's field from {key} (the client starts afresh)")


COMPACT_SLACK = 1024  # heap entries beyond twice the clients scheduled before a rebuild
TRACEBACKS_LOGGED = 20  # per process: then one line each, the dead letter says the rest
_tracebacks_logged = 0


class BucketLogic(StatefulBatchLogic[Item, BucketCommit, None]):
    """Built by Bytewax on a bucket's first item; loads the bucket from Redis then."""

    def __init__(self, bucket: int, store: BucketStore, config: BucketConfig,
                 metrics: DataflowMetrics, models: RfmModelCache | None = None) -> None:
        loaded = store.load(bucket)
        self._bucket = bucket
        self._buckets = store.layout.buckets
        self._config = config
        self._models = models
        # a replay adopts its model at its end, after the timers due by then have fired
        self._rules: TriggerRules = (config.rules if models is None or config.replay
                                     else models.rules)
        self._prints = _prints_of(self._rules, config.allowed_lateness)
        self._rescored = False  # buyers re-scored under the current model since loading
        # each client changed in the current batch, as it was before the batch
        self._before: dict[str, ClientState | None] = {}
        self._emitted: list[Event] = []
        self._erasures: list[Erasure] = []
        self._refusals: list[ErasureRefusal] = []
        self._unindexed: list[str] = []  # erased clients to take out of the RFM population
        self._metrics = metrics
        self._counts: Counter[tuple[Any, str]] = Counter()  # metric updates of one batch
        # what the console reads, gathered until the next commit: each client's new
        # timeline lines (oldest first) and the events applied per (minute, field)
        self._timelines: dict[str, list[str]] = {}
        self._activity: Counter[tuple[int, str | None, str]] = Counter()
        # clients per point: this batch's erasures' part of the moves (the rest is read off
        # the changed states at the commit), and the bucket's clients as loaded, while
        # they are not counted yet (data from before the counts: its next commit counts them)
        self._point_moves: Counter[str] = Counter()
        self._point_counts: Counter[str] | None = None if loaded.points_counted else Counter()
        self._clock = 0.0  # the arrival clock of the newest item (seconds)
        self._position = loaded.position
        self._committed = loaded.position
        self._last_commit = time.monotonic()
        # commit ids: this incarnation's, numbered, so a resent commit is known as such
        self._incarnation = uuid.uuid4().hex[:16]
        self._commits_made = 0
        self._states: dict[str, ClientState] = {}
        self._scheduled: dict[str, tuple[float, int]] = {}
        # clients whose schedule was computed under rules since replaced (a new RFM model)
        self._stale: set[str] = set()
        self._timers: tuple[list[tuple[float, str]], list[tuple[float, str]]] = ([], [])
        # per clock, the due time of each client's heap entry that counts: any other entry of
        # the client's is a leftover of an earlier schedule, dropped when it comes up
        self._queued: tuple[dict[str, float], dict[str, float]] = ({}, {})
        # clients the rules file otherwise than their stored memberships (a new `segments:`
        # configuration): re-filed in the first batch, so no event of theirs is needed
        self._refiled: list[str] = []
        # dead letters of clients whose schedule the rules failed to compute at load: they
        # go out with the first batch's commit
        self._failed_at_load: list[DeadLetter] = []
        with frozen_on_arrival():
            for client_key, raw in loaded.states.items():
                try:
                    state = decode_state(raw)
                except Exception as exc:  # noqa: BLE001 - re-raised naming where it is
                    raise UnreadableState(store.layout.state(bucket), client_key, exc) from exc
                self._states[client_key] = state
                point = _counted_point(state)
                if self._point_counts is not None and point is not None:
                    self._point_counts[point] += 1
                stored = stored_schedule(raw)
                if stored is not None and self._prints.trusts(stored):
                    self._set_schedule(client_key, stored.due, stored.live)
                    continue
                try:  # other code or rules since: the memberships may be stale too
                    self._schedule(client_key, state)
                    if segments.filed_elsewhere(state, self._rules.segments):
                        self._refiled.append(client_key)
                except Exception as exc:  # noqa: BLE001 - as for an event: the bucket loads
                    self._stale.add(client_key)  # its next event looks for its timers
                    self._core_failed(exc, self._position, b"", client_key,
                                      self._failed_at_load, "loading its schedule")

    # --- timers --------------------------------------------------------------------------------

    def _schedule(self, client_key: str, state: ClientState) -> None:
        """Keep the client's earliest due time, and a heap entry no later than it.

        Entries are never removed from a heap: a popped entry that no longer matches the
        client's schedule is skipped or pushed again at the new time (lazy cancellation).
        A client has one entry that counts per heap (`_queued`); the others are dropped as
        they come up, so the heaps hold about one entry per client, not one per schedule
        change (they grew by one a day per live client with a far-off timer).
        """
        self._stale.discard(client_key)
        self._set_schedule(client_key, *self._schedule_of(state))

    def _schedule_of(self, state: ClientState) -> tuple[float | None, bool]:
        """The state's next due time, and whether it is on the arrival clock."""
        return next_due(state, self._rules), is_live(state, self._config.allowed_lateness)

    def _set_schedule(self, client_key: str, due: float | None, live: bool) -> None:
        current = self._scheduled.get(client_key)
        if due is None:
            if current is not None:
                del self._scheduled[client_key]
                self._metrics.timers_pending.dec()
            return
        clock = LIVE if live and not self._config.replay else BACKFILL
        if current is None:
            self._metrics.timers_pending.inc()
        queued = self._queued[clock]
        self._scheduled[client_key] = (due, clock)
        if due < queued.get(client_key, math.inf):  # else its entry comes up no later
            heap = self._timers[clock]
            heapq.heappush(heap, (due, client_key))
            queued[client_key] = due
            if len(heap) > 2 * len(self._scheduled) + COMPACT_SLACK:
                self._compact(clock)

    def _compact(self, clock: int) -> None:
        """The heap rebuilt with one entry per client scheduled on it. A far-off entry left
        behind by an earlier schedule (a birthday, a win-back, when a browse timer comes
        before it every day) only leaves the heap when its time comes: without this the
        heap grew by one entry a day per such client. Amortised: at most once per as many
        pushes as there are clients."""
        entries = [(due, key) for key, (due, on) in self._scheduled.items() if on == clock]
        heapq.heapify(entries)
        self._timers[clock][:] = entries
        self._queued[clock].clear()
        self._queued[clock].update((key, due) for due, key in entries)

    @property
    def _settled(self) -> float:
        """Up to when every event has arrived, by the newest item's arrival clock (a replay
        reads history in event time: all of it)."""
        if self._config.replay:
            return math.inf
        return self._clock - self._config.allowed_lateness

    def _next_timer(self, client_key: str) -> float:
        """The client's earliest due time as scheduled (inf: none), or -inf when unknown."""
        if client_key in self._stale:
            return float("-inf")
        scheduled = self._scheduled.get(client_key)
        return float("inf") if scheduled is None else scheduled[0]

    def _advance(self, clock: int, now: float, dirty: set[str], triggers: list[Trigger],
                 dead: list[DeadLetter]) -> None:
        limit = now - self._config.allowed_lateness
        heap = self._timers[clock]
        queued = self._queued[clock]
        while heap and heap[0][0] <= limit:
            entry_due, client_key = heapq.heappop(heap)
            if queued.get(client_key) != entry_due:
                continue  # a leftover: an earlier entry of the client's counts
            del queued[client_key]
            scheduled = self._scheduled.get(client_key)
            if scheduled is None or scheduled[1] != clock:
                continue  # cancelled, or moved to the other clock's heap
            if scheduled[0] > limit:
                heapq.heappush(heap, (scheduled[0], client_key))
                queued[client_key] = scheduled[0]
                continue
            before = self._states[client_key]
            del self._scheduled[client_key]
            self._metrics.timers_pending.dec()
            try:
                state, fired = fire_due(client_key, before, limit, self._rules)
                schedule = self._schedule_of(state)
            except Exception as exc:  # noqa: BLE001 - one client's failure stops no other
                # its timers wait for its next event instead of failing every tick
                self._stale.add(client_key)  # its next event looks for them afresh
                self._core_failed(exc, self._position, b"", client_key, dead, "its timers")
                continue
            if state is before:  # nothing fired: only its schedule moves on
                self._stale.discard(client_key)
                self._set_schedule(client_key, *schedule)
            else:
                self._changed(client_key, before, state, schedule, fired, dirty, triggers)

    def _refile(self, dirty: set[str], triggers: list[Trigger], dead: list[DeadLetter]) -> None:
        refiled, self._refiled = self._refiled, []
        for client_key in refiled:
            before = self._states[client_key]
            try:
                after, fired = refile(client_key, before, self._rules)
                schedule = self._schedule_of(after)
            except Exception as exc:  # noqa: BLE001 - as for an event
                self._core_failed(exc, self._position, b"", client_key, dead,
                                  "re-filing its segments")
                continue
            self._changed(client_key, before, after, schedule, fired, dirty, triggers)

    def _rescore(self, now: float, dirty: set[str], triggers: list[Trigger],
                 dead: list[DeadLetter]) -> None:
        """A new RFM model: re-evaluate the buyers whose RFM segment it changes."""
        rules = self._rules.segments
        for client_key, state in list(self._states.items()):
            try:
                filed = segments.current_filing(state)
                if state.orders_count <= 0 and not filed:
                    continue
                if segments.rfm_filing(state, now, rules) == filed:
                    continue
                after, fired = regroup(client_key, state, now, self._rules)
                schedule = self._schedule_of(after)
            except Exception as exc:  # noqa: BLE001 - as for an event
                self._core_failed(exc, self._position, b"", client_key, dead,
                                  "re-scoring its RFM segment")
                continue
            self._changed(client_key, state, after, schedule, fired, dirty, triggers)

    def _changed(self, client_key: str, before: ClientState | None, after: ClientState,
                 schedule: tuple[float | None, bool], fired: Iterable[Trigger],
                 dirty: set[str], triggers: list[Trigger]) -> None:
        self._before.setdefault(client_key, before)
        self._states[client_key] = after
        self._stale.discard(client_key)
        self._set_schedule(client_key, *schedule)
        triggers.extend(fired)
        dirty.add(client_key)

    # --- Bytewax callbacks -----------------------------------------------------------------------

    def on_batch(self, values: list[Item]) -> tuple[Iterable[BucketCommit], bool]:
        dirty: set[str] = set()
        triggers: list[Trigger] = []
        dead, self._failed_at_load = self._failed_at_load, []
        head_reached = False
        position_key = stream_id_key(self._position)
        if self._refiled:
            self._refile(dirty, triggers, dead)
        for item in values:
            if item[0] == EVENT:
                _, _, stream_id, client_key, raw = item
                key = stream_id_key(stream_id)
                if key <= position_key:
                    continue  # already applied before a restart
                position_key = key
                self._position = stream_id
                self._clock = key[0] / 1000
                self._advance(LIVE, self._clock, dirty, triggers, dead)
                self._apply(stream_id, client_key, raw, dirty, triggers, dead)
            else:
                _, _, clock, position, at_head = item
                self._clock = max(self._clock, clock)
                key = stream_id_key(position)
                if key > position_key:
                    position_key = key
                    self._position = position
                self._advance(LIVE, clock, dirty, triggers, dead)
                if at_head:
                    self._advance(BACKFILL, clock, dirty, triggers, dead)
                    head_reached = self._config.replay  # a replay's end: keep the position
                # a new RFM model re-files buyers as of this clock, after the timers due by
                # then (a replay's arrival clock is not history's: it re-scores at its end)
                if self._models is not None and (at_head or not self._config.replay):
                    rules = self._models.poll()
                    if rules is not self._rules or not self._rescored:
                        if rules is not self._rules:
                            self._stale = set(self._states)
                            self._prints = _prints_of(rules, self._config.allowed_lateness)
                        self._rules = rules
                        self._rescored = True
                        self._rescore(clock, dirty, triggers, dead)
        freeze_survivors()
        for (metric, label), count in self._counts.items():  # one update per batch, not event
            if label:
                metric.labels(label).inc(count)
            else:
                metric.inc(count)
        self._counts.clear()
        return (self._commit(dirty, triggers, dead, flush=head_reached),
                StatefulBatchLogic.RETAIN)

    def _apply(self, stream_id: str, client_key: str, raw: bytes, dirty: set[str],
               triggers: list[Trigger], dead: list[DeadLetter]) -> None:
        try:
            event = parse_event(orjson.loads(raw))
        except (ValueError, EventError) as exc:
            reason = f"invalid event: {exc}" if isinstance(exc, EventError) else "invalid json"
            dead.append(DeadLetter(reason, stream_id, raw, client_key))
            self._counts[(self._metrics.dead_letters, "invalid")] += 1
            return
        if event.client_key != client_key or bucket_of(client_key, self._buckets) != self._bucket:
            dead.append(DeadLetter("misrouted: entry key does not match the event's client",
                                   stream_id, raw, client_key))
            self._counts[(self._metrics.dead_letters, "misrouted")] += 1
            return
        if event.type is EventType.ERASURE_REQUESTED:
            if refuses_erasure(self._states.get(client_key), event):
                self._refusals.append(ErasureRefusal(event.event_id, event.received_at,
                                                     MERGED_REFUSAL))
            else:
                self._erase(client_key, event, stream_id, dirty, triggers, dead)
            return
        before = self._states.get(client_key)
        try:
            outcome = handle(client_key, before, event, self._rules,
                             next_timer=self._next_timer(client_key), settled=self._settled)
            after = outcome.state
            schedule = None if after is None or after is before else self._schedule_of(after)
            line = None if schedule is None else timeline_entry(event)
        except Exception as exc:  # noqa: BLE001 - one poison event must not stop the rest
            self._core_failed(exc, stream_id, raw, client_key, dead, "this event")
            return
        self._emitted.extend(outcome.emitted)
        if after is None or schedule is None:
            if not outcome.emitted:
                self._counts[(self._metrics.duplicates, "")] += 1
            return
        self._changed(client_key, before, after, schedule, outcome.triggers, dirty, triggers)
        self._counts[(self._metrics.events_processed, event.type.value)] += 1
        if line is not None:
            self._timelines.setdefault(client_key, []).append(line)
        if event.type not in INTERNAL_TYPES:  # what clients did, not identity bookkeeping
            minute, counted = minute_of(self._clock), f"e:{event.type.value}"
            self._activity[(minute, None, counted)] += 1
            point = point_of(after.traits)
            if point is not None:
                self._activity[(minute, point, counted)] += 1
        if before is not None and event.event_time < before.updated_at:
            self._counts[(self._metrics.late_events, event.type.value)] += 1

    def _core_failed(self, exc: Exception, stream_id: str, raw: bytes, client_key: str,
                     dead: list[DeadLetter], what: str) -> None:
        """The rules raised on one client: a bug, or input they do not expect. Its state
        stays as it was, the cause goes to the dead-letter stream (the entry's raw event,
        or none for a timer) and the partition goes on: stopping would halt every client,
        and again after every restart, for one client's data."""
        global _tracebacks_logged
        reason = f"{CORE_ERROR} on {what}: {type(exc).__name__}: {exc}"
        dead.append(DeadLetter(reason[:1000], stream_id, raw, client_key))
        self._counts[(self._metrics.dead_letters, "core_error")] += 1
        if _tracebacks_logged < TRACEBACKS_LOGGED:
            _tracebacks_logged += 1
            log.error("bucket %d: client %r: %s", self._bucket, client_key, reason,
                      exc_info=exc)
        else:
            log.error("bucket %d: client %r: %s", self._bucket, client_key, reason)

    def _erase(self, client_key: str, event: Event, stream_id: str, dirty: set[str],
               triggers: list[Trigger], dead: list[DeadLetter]) -> None:
        """Forget the client: its state, timers and this batch's decisions and dead letters
        about it (the job's purge only reaches dead letters already written when the commit
        records it, before this batch's); the anonymous ids merged into it are erased too
        (their own requests, in their order)."""
        state = self._states.pop(client_key, None)
        # what Redis holds of it: as this batch found it (its changes in the batch are not
        # written), so a trait or membership it changed in the batch leaves no index behind
        committed = self._before.pop(client_key) if client_key in self._before else state
        self._stale.discard(client_key)
        if self._scheduled.pop(client_key, None) is not None:
            self._metrics.timers_pending.dec()
        dirty.discard(client_key)
        triggers[:] = [t for t in triggers if t.client_id != client_key]
        dead[:] = [d for d in dead if not dead_letter_of(client_key, d.client, d.entry)]
        self._emitted = [e for e in self._emitted if e.client_key != client_key]
        self._timelines.pop(client_key, None)
        self._erasures.append(Erasure(client_key, event.event_id, stream_id,
                                      event.received_at,
                                      tuple(_member_ops(client_key, committed, None)),
                                      tuple(linked_steps(client_key, state))))
        if committed is not None:  # in the RFM population only once committed
            self._unindexed.append(client_key)
        if (point := _counted_point(committed)) is not None:
            self._point_moves[point] -= 1
        for n, alias in enumerate(state.aliases if state is not None else (), 1):
            # reached through the client's erasure, not asked for directly: never refused
            self._emitted.append(replace(event, event_id=f"{event.event_id}.{n}",
                                         client_id=None, anonymous_id=alias.removeprefix(
                                             ANONYMOUS_PREFIX), properties={}))

    def _commit(self, dirty: set[str], triggers: list[Trigger], dead: list[DeadLetter], *,
                flush: bool = False) -> list[BucketCommit]:
        now = time.monotonic()
        moved = self._position != self._committed
        emitted, self._emitted = self._emitted, []
        erasures, self._erasures = self._erasures, []
        refusals, self._refusals = self._refusals, []
        if not (dirty or triggers or dead or emitted or erasures or refusals) and not (moved and (
                flush or now - self._last_commit >= self._config.offset_flush_interval)
        ) and self._point_counts is None:
            return []
        changes: list[SegmentChange] = []
        ops: list[MemberOp] = []
        moves, self._point_moves = self._point_moves, Counter()
        values: list[tuple[str, RfmValues | None]] = []
        for key in sorted(dirty):
            before, after = self._before.get(key), self._states[key]
            # a client new to the bucket was never indexed: only a buyer is added
            indexed = None if before is None else _rfm_values(before)
            triple = _rfm_values(after)
            if (before is not None and before.segments == after.segments
                    and before.traits is after.traits and before.merged_into == after.merged_into
                    and indexed == triple):
                continue  # the common case: no membership, trait or RFM value moved
            left_at = segments.changed_at(after)
            changes.extend(SegmentChange(key, name, False, left_at)
                           for name in segments.left(before, after) if segments.is_public(name))
            changes.extend(SegmentChange(key, name, True, at)
                           for name, at in segments.entered(before, after)
                           if segments.is_public(name))
            ops.extend(_member_ops(key, before, after))
            old_point, new_point = _counted_point(before), _counted_point(after)
            if old_point != new_point:
                if old_point is not None:
                    moves[old_point] -= 1
                if new_point is not None:
                    moves[new_point] += 1
            if triple != indexed:
                values.append((key, triple))
        self._before.clear()
        # erased buyers leave the RFM population first: one may have bought again since
        values[:0] = [(key, None) for key in self._unindexed]
        self._unindexed = []
        timelines, self._timelines = self._timelines, {}
        activity, self._activity = self._activity, Counter()
        trigger_points = {t.client_id: point for t in triggers
                          if t.client_id in self._states
                          and (point := point_of(self._states[t.client_id].traits)) is not None}
        counts, self._point_counts = self._point_counts, None
        self._commits_made += 1
        commit = BucketCommit(
            bucket=self._bucket, base=self._committed, position=self._position,
            commit_id=f"{self._incarnation}.{self._commits_made}",
            states=[(key, encode_stored(encode_state(self._states[key]),
                                        self._stored_schedule(key))) for key in sorted(dirty)],
            triggers=triggers, dead_letters=dead, segment_changes=changes,
            rfm_values=values, emitted=emitted, erasures=erasures, refusals=refusals,
            member_ops=ops,
            timelines=[(key, SEPARATOR.join(reversed(lines)))
                       for key, lines in sorted(timelines.items()) if key in self._states],
            activity=[(*key, count) for key, count in activity.items()],
            clock=self._clock, trigger_points=trigger_points,
            point_moves=sorted((point, n) for point, n in moves.items() if n),
            point_counts=None if counts is None else sorted(counts.items()))
        self._committed = self._position
        self._last_commit = now
        return [commit]

    def _stored_schedule(self, client_key: str) -> StoredSchedule | None:
        """The client's schedule as a later load may trust it: none while it is stale (it
        was computed under rules since replaced)."""
        if client_key in self._stale:
            return None
        scheduled = self._scheduled.get(client_key)
        state = self._states[client_key]
        return self._prints.stamp(None if scheduled is None else scheduled[0],
                                  is_live(state, self._config.allowed_lateness), state)

    def snapshot(self) -> None:
        """Nothing: Redis, not Bytewax recovery, is the home of this state."""
        return None


@functools.cache
def core_digest() -> bytes | None:
    """A digest of the core's sources: due times stored by other code are not trusted (None:
    the sources cannot be read, so none is)."""
    try:
        return bytes.fromhex(features.build_stamp()["sources"])[:16]
    except OSError:
        return None


_last_prints: tuple[TriggerRules, float, SchedulePrints] | None = None


def _prints_of(rules: TriggerRules, allowed_lateness: float) -> SchedulePrints:
    """The rules' fingerprints, computed once for all the buckets that share them."""
    global _last_prints
    if (_last_prints is None or _last_prints[0] is not rules
            or _last_prints[1] != allowed_lateness):
        _last_prints = (rules, allowed_lateness,
                        SchedulePrints.of(rules, allowed_lateness, core_digest()))
    return _last_prints[2]


def _member_ops(client_key: str, before: ClientState | None, after: ClientState | None
                ) -> list[MemberOp]:
    """The set changes that keep the member sets (all clients, and the client's point's)
    and the lookup index in step with the client's memberships and traits (`after` None:
    the client is erased, and leaves them all)."""
    had = {name for name, _ in before.segments} if before is not None else set()
    has = {name for name, _ in after.segments} if after is not None else set()
    old_point = point_of(before.traits) if before is not None else None
    new_point = point_of(after.traits) if after is not None else None
    ops = [MemberOp(client_key, False, name) for name in sorted(had - has)]
    ops += [MemberOp(client_key, True, name) for name in sorted(has - had)]
    if old_point == new_point:
        if new_point is not None:
            ops += [replace(op, point=new_point) for op in list(ops)]
    else:
        if old_point is not None:
            ops += [MemberOp(client_key, False, name, old_point) for name in sorted(had)]
        if new_point is not None:
            ops += [MemberOp(client_key, True, name, new_point) for name in sorted(has)]
    old_keys = lookup_keys(before.traits) if before is not None else frozenset()
    new_keys = (lookup_keys(after.traits) if after is not None and after.merged_into is None
                else frozenset())
    ops += [MemberOp(lookup_member(k, client_key), False) for k in sorted(old_keys - new_keys)]
    ops += [MemberOp(lookup_member(k, client_key), True) for k in sorted(new_keys - old_keys)]
    return ops


def _counted_point(state: ClientState | None) -> str | None:
    """The point whose clients count the client (`KeyLayout.points`): its `point_id`,
    unless it is erased or merged away (a pointer is nobody's client)."""
    if state is None or state.merged_into is not None:
        return None
    return point_of(state.traits)


def _rfm_values(state: ClientState) -> RfmValues | None:
    """What the RFM population index holds for the client (None: not a buyer)."""
    last_bought = recency_anchor(state)
    if last_bought is None or state.merged_into:
        return None
    return last_bought, state.orders_count, state.monetary_total


class LazyBucketLogic(StatefulBatchLogic[Item, BucketCommit, None]):
    """Defers loading until the first batch names the bucket."""

    def __init__(self, store: BucketStore, config: BucketConfig,
                 metrics: DataflowMetrics, models: RfmModelCache | None = None) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._models = models
        self._logic: BucketLogic | None = None

    def on_batch(self, values: list[Item]) -> tuple[Iterable[BucketCommit], bool]:
        if self._logic is None:
            self._logic = BucketLogic(values[0][1], self._store, self._config, self._metrics,
                                      self._models)
        return self._logic.on_batch(values)

    def snapshot(self) -> None:
        return None
