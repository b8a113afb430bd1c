"""A bucket's durable home: load it whole, commit its changes atomically.

This is the dataflow's only state store. Each commit writes the states of the clients a
batch changed, their new touches and triggers, dead letters, and the bucket's stream
position in one Lua script guarded by compare-and-set on that position. Every trigger
decision (sent, holdout, deferred, suppressed; done/skipped for manual touches) goes to the
client's touch ledger and to the partition's trigger stream, once: the ledger write is
HSETNX on the decision's field (the trigger id; `<id>:deferred` for a deferral). So a process can
die at any moment: its successor loads the bucket, re-reads the stream from the committed
position, and produces the same commits with the same trigger ids (exactly-once effect).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson
import redis

from features.events import Event, format_time
from features.identity import Step
from features.triggers import Trigger
from sinks import rfm_index
from sinks.erasure import ErasureRefusal
from sinks.event_log import AppendOptions, EventLog, emitted_dedupe_id
from sinks.keys import KeyLayout
from sinks.redis_client import is_store_full
from sinks.scripts import lua, run_scripts

log = logging.getLogger(__name__)
T = TypeVar("T")

START = "0-0"


def minute_of(clock: float) -> int:
    """The start of the minute `clock` (epoch seconds) falls in."""
    return int(clock // 60) * 60


def lookup_member(key: str, client_key: str) -> str:
    """A lookup index member: the normalised value, NUL, the client (features/lookup.py)."""
    return f"{key}\0{client_key}"


def stream_id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


_STREAM_FIELDS = ("trigger_id", "type", "key", "client_id", "fired_at", "decided_at",
                  "status", "reason", "channel", "source", "deferred_until")


def stream_fields(record: dict[str, Any]) -> list[str | bytes]:
    """A trigger record as flat trigger-stream fields; empty ones are left out, the payload
    is JSON."""
    fields: list[str | bytes] = []
    for name in _STREAM_FIELDS:
        value = record.get(name)
        if value is not None:
            fields += [name, str(value)]
    fields += ["payload", orjson.dumps(record["payload"], option=orjson.OPT_SORT_KEYS)]
    return fields


def retrying(call: Callable[[], T], what: str) -> T:
    """`call()`, again with backoff (50 ms doubling to 2 s) while Redis is unreachable or
    full: an outage pauses the dataflow instead of killing it."""
    backoff = 0.05
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            full = is_store_full(exc)
            if isinstance(exc, redis.ResponseError) and not full:
                raise
            state = "full" if full else "unavailable"
            log.warning("redis %s while %s (%s); retrying in %.2fs", state, what, exc,
                        backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    stream_id: str
    entry: bytes
    client: str = ""  # the stream entry's key: what an erasure of that client matches on


@dataclass(frozen=True, slots=True)
class BucketCommit:
    """What one bucket changed since its last commit."""

    bucket: int
    base: str  # the position the bucket had committed before
    position: str  # the position after this commit
    states: Sequence[tuple[str, bytes]] = ()
    triggers: Sequence[Trigger] = ()
    dead_letters: Sequence[DeadLetter] = ()
    segment_changes: Sequence[SegmentChange] = ()
    rfm_values: Sequence[tuple[str, RfmValues | None]] = ()  # None: no longer a buyer
    emitted: Sequence[Event] = ()  # events for other clients: identity steps, forwards
    erasures: Sequence[Erasure] = ()  # clients erased, applied after everything above
    refusals: Sequence[ErasureRefusal] = ()  # erasures refused: their statuses say why
    member_ops: Sequence[MemberOp] = ()  # segment, point and lookup set changes
    timelines: Sequence[tuple[str, str]] = ()  # client, its new timeline lines newest first
    # events applied: (minute, point or None for all clients, "e:<type>", count)
    activity: Sequence[tuple[int, str | None, str, int]] = ()
    clock: float = 0.0  # the batch's arrival clock: the minute its triggers count in
    trigger_points: Mapping[str, str] = field(default_factory=dict)  # client -> its point
    # (point, change in its clients): the clients the batch moved in or out of a point,
    # erasures and merges included, summed per point, never 0
    point_moves: Sequence[tuple[str, int]] = ()
    # (point, its clients in the bucket) as loaded, when the load found the bucket's
    # clients not counted yet (`KeyLayout.points_counted`): this commit counts them
    point_counts: Sequence[tuple[str, int]] | None = None
    # "<process>.<number>", numbered in order: a resend of it, or of any commit its process
    # numbered before the bucket's last, is a no-op, even when base == position (timers
    # fired at an idle head); "" for none (then only a moved position tells a replay)
    commit_id: str = ""


RfmValues = tuple[float, int, float]  # last order time, orders, money


@dataclass(frozen=True, slots=True)
class SegmentChange:
    client_id: str
    segment: str
    entered: bool
    at: float


@dataclass(frozen=True, slots=True)
class MemberOp:
    """Add a member to, or remove it from, one of the partition's sorted sets: a segment's
    members (all, or one point's), or the lookup index (`segment` empty)."""

    member: str
    add: bool
    segment: str = ""
    point: str | None = None


@dataclass(frozen=True, slots=True)
class Erasure:
    """A client erased by an admin's request: what the commit deletes besides its state."""

    client_id: str
    erasure_id: str
    stream_id: str  # the request's entry: the client's entries up to it are purged
    requested_at: float
    removals: tuple[MemberOp, ...] = ()  # its memberships and lookup entries
    # identity steps whose de-duplication keys go (`before_commit`): a later sign-in links
    forget: tuple[Step, ...] = ()


@dataclass(slots=True)
class LoadedBucket:
    position: str
    states: dict[str, bytes] = field(default_factory=dict)
    points_counted: bool = True  # False: its clients are not in the points' counts yet


class FencedError(RuntimeError):
    """Another process committed this bucket: this process's view of it is stale."""


class BucketStore:
    def __init__(self, client: redis.Redis, layout: KeyLayout, *, ledger_max_entries: int,
                 stream_maxlen: int, dedupe_window: float = 86400.0,
                 timeline_events: int = 10, activity_retention: float = 3 * 3600.0,
                 emitted_layout: KeyLayout | None = None) -> None:
        """`emitted_layout`: the layout whose event streams receive the events the dataflow
        writes for other clients (identity steps, forwards); `layout`'s own unless given
        (a replay holds its first stage's apart: history/replay.py)."""
        self._client = client
        self._layout = layout
        self._ledger_max = ledger_max_entries
        self._maxlen = stream_maxlen
        self._timeline_max = timeline_events
        self._activity_ttl = max(1, int(activity_retention))
        self._commit = client.register_script(lua("commit_bucket"))
        self._events = EventLog(client, emitted_layout or layout, AppendOptions(dedupe_window))

    @property
    def layout(self) -> KeyLayout:
        return self._layout

    @property
    def client(self) -> redis.Redis:
        return self._client

    def load(self, bucket: int) -> LoadedBucket:
        """The bucket's position and states; waits while Redis is away."""
        partition = self._layout.partition_of_bucket(bucket)

        def read() -> tuple[bytes | None, dict[bytes, bytes], int]:
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._layout.offsets(partition), str(bucket))
            pipe.hgetall(self._layout.state(bucket))
            pipe.sismember(self._layout.points_counted(partition), str(bucket))
            return cast(tuple[bytes | None, dict[bytes, bytes], int], pipe.execute())

        position, states, counted = retrying(read, f"loading bucket {bucket}")
        return LoadedBucket(position.decode() if position else START,
                            {k.decode(): v for k, v in states.items()}, bool(counted))

    def partition_positions(self, partition: int) -> dict[int, str]:
        raw = cast(dict[bytes, bytes], self._client.hgetall(self._layout.offsets(partition)))
        return {int(k): v.decode() for k, v in raw.items()}

    def resume_position(self, partition: int) -> str:
        """Where a partition's reader starts: the least position of any of its buckets."""
        positions = self.partition_positions(partition)
        buckets = range(partition, self._layout.buckets, self._layout.partitions)
        least = min((positions.get(b, START) for b in buckets), key=stream_id_key, default=START)
        return least

    def stream_heads(self) -> dict[int, tuple[int, int]]:
        """The last entry of every non-empty event stream, by partition."""
        heads: dict[int, tuple[int, int]] = {}
        for partition in range(self._layout.partitions):
            last = cast(list[tuple[bytes, object]],
                        self._client.xrevrange(self._layout.events(partition), count=1))
            if last:
                heads[partition] = stream_id_key(last[0][0].decode())
        return heads

    def entries_applied(self, partition: int) -> int | None:
        """How many of the partition's entries every one of its buckets has applied: the
        number (`n`) of the entry at its least position (0 before the first; None when that
        entry has been trimmed since, or carries no number)."""
        position = self.resume_position(partition)
        if position == START:
            return 0
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], self._client.xrange(
            self._layout.events(partition), position, position, count=1))
        number = entries[0][1].get(b"n") if entries else None
        return int(number) if number is not None else None

    def partitions_behind(self, heads: dict[int, tuple[int, int]]) -> list[int]:
        """The partitions whose committed position has not reached `heads` yet."""
        return [p for p, head in heads.items()
                if stream_id_key(self.resume_position(p)) < head]

    def _call(self, commit: BucketCommit) -> tuple[list[str], list[str | bytes | int]]:
        layout = self._layout
        partition = layout.partition_of_bucket(commit.bucket)
        keys = [layout.offsets(partition), layout.state(commit.bucket),
                layout.triggers(partition), layout.dead_letters(partition),
                layout.segment_changes(partition), layout.erasures(partition),
                layout.timeline(commit.bucket), layout.points(partition),
                layout.activity(partition, minute_of(commit.clock)),
                layout.last_commits(partition), layout.points_counted(partition)]
        timelines = commit.timelines if self._timeline_max > 0 else ()
        args: list[str | bytes | int] = [
            str(commit.bucket), commit.base, commit.position,
            layout.ledger_prefix(partition), self._ledger_max, self._maxlen,
            len(commit.states), len(commit.triggers), len(commit.dead_letters),
            len(commit.segment_changes), len(commit.erasures), len(commit.member_ops),
            len(timelines), self._timeline_max, len(commit.activity), self._activity_ttl,
            len(commit.point_moves), commit.commit_id,
            -1 if commit.point_counts is None else len(commit.point_counts)]
        for erasure in commit.erasures:
            args += [erasure.client_id, erasure.erasure_id, erasure.stream_id,
                     format_time(erasure.requested_at) or "", len(erasure.removals)]
            for op in erasure.removals:
                args += [self._set_key(partition, op), op.member]
        for client_key, state in commit.states:
            args += [client_key, state]
        for trigger in commit.triggers:
            record = trigger.to_dict()
            ledger = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
            fields = stream_fields(record)
            args += [trigger.client_id, trigger.ledger_field, trigger.type, trigger.status,
                     ledger, commit.trigger_points.get(trigger.client_id, ""),
                     len(fields) // 2, *fields]
        for letter in commit.dead_letters:
            args += [letter.reason, letter.stream_id, letter.entry, letter.client]
        for change in commit.segment_changes:
            args += [change.client_id, "entered" if change.entered else "left", change.segment,
                     format_time(change.at) or ""]
        for op in commit.member_ops:
            args += [self._set_key(partition, op), op.member, "+" if op.add else "-"]
        for client_key, lines in timelines:
            args += [client_key, lines]
        for minute, point, name, count in commit.activity:
            args += [layout.activity(partition, minute, point), name, count]
        for point, clients in (*(commit.point_counts or ()), *commit.point_moves):
            args += [point, clients]
        return keys, args

    def _set_key(self, partition: int, op: MemberOp) -> str:
        return (self._layout.members(partition, op.segment, op.point) if op.segment
                else self._layout.lookup(partition))

    def before_commit(self, commits: Sequence[BucketCommit]) -> None:
        """Writes outside the bucket's slot, done first and idempotent, so a commit that
        fails after them repeats them harmlessly: events for other clients (deduplicated
        by id at their stream), the erased clients' identity steps forgotten (after the
        erasures of their cookies are in the cookies' streams: a link appended later comes
        after them) and the RFM population."""
        emitted = [event for commit in commits for event in commit.emitted]
        if emitted:
            self._events.append(emitted, dedupe_ids=[
                emitted_dedupe_id(event.client_key, event.event_id) for event in emitted])
        self._events.forget([step for commit in commits for erasure in commit.erasures
                             for step in erasure.forget])
        values = [item for commit in commits for item in commit.rfm_values]
        if values:
            pipe = self._client.pipeline(transaction=False)
            for client_key, triple in values:
                rfm_index.index_commands(pipe, self._layout, client_key, triple)
            pipe.execute()

    def commit(self, commits: Sequence[BucketCommit]) -> list[tuple[str, str]]:
        """Apply commits in order, one pipelined round trip; retry while Redis is away.

        Returns (type, status) of each trigger newly emitted. Raises FencedError when
        another process owns a bucket now.
        """
        def write() -> list[Any]:
            self.before_commit(commits)
            results = run_scripts(self._client, self._commit,
                                  [self._call(commit) for commit in commits],
                                  raise_on_error=False)
            full = next((r for r in results if isinstance(r, Exception) and is_store_full(r)),
                        None)  # an exception to raise
            if full is not None:  # the calls applied are no-ops when sent again
                raise full
            return results

        return emitted_triggers(retrying(write, "committing"))

    @property
    def pipelined(self) -> bool:
        """Whether commits may be sent as raw EVALSHA commands on a connection of their own
        (`commit_commands`): on a single Redis, not on a cluster."""
        return not isinstance(self._client, redis.RedisCluster)

    def commit_commands(self, commits: Sequence[BucketCommit]
                        ) -> list[tuple[str | bytes | int, ...]]:
        """The commits as EVALSHA commands, for a connection of their own (`CommitWriter`):
        `before_commit` must be done first, and the script loaded (`load_script`)."""
        sha = self._commit.sha
        commands: list[tuple[str | bytes | int, ...]] = []
        for commit in commits:
            keys, args = self._call(commit)
            commands.append(("EVALSHA", sha, len(keys), *keys, *args))
        return commands

    def load_script(self) -> None:
        """Load the commit script into Redis (again after a restart flushed it); its sha,
        which `commit_commands` names, is the script's own hash."""
        self._client.script_load(self._commit.script)


def emitted_triggers(results: Sequence[Any]) -> list[tuple[str, str]]:
    """(type, status) of each trigger the commit scripts' `results` newly emitted; raises
    FencedError for a bucket another process owns now, and any other error reply."""
    emitted: list[tuple[str, str]] = []
    for result in results:
        if isinstance(result, Exception):
            if "CRMFLOW_FENCED" in str(result):
                raise FencedError(str(result))
            raise result
        pairs = result[1:]
        emitted.extend((pairs[j].decode(), pairs[j + 1].decode())
                       for j in range(0, len(pairs), 2))
    return emitted
