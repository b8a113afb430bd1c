"""Trigger decisions POSTed to webhook endpoints (`crmflow deliver`).

Each endpoint reads every partition's trigger stream through its own consumer group
(`webhook:<name>`), sends each record it takes (sinks/webhook_requests.py decides which,
and what the answers mean), and acknowledges it once its outcome is settled: delivered
(a 2xx), or given up and recorded in the partition's `webhook_failed` stream. Delivery is
at least once: a record whose outcome was not settled (the process stopped or crashed, or
its acknowledgement was lost) stays pending in the group and is sent again, by this
consumer when it starts (it re-reads its own pending records first), or by another
consumer once it has been idle for `webhooks.claim_after`. Records are not delivered in
stream order: each is retried on its own. A record's attempts are counted in its pending
entry (sinks/webhook_attempts.py), so `max_attempts` bounds them over the record's life,
across restarts and takeovers.

Endpoints are independent: each has its own group, its own HTTP connection pool and at most
`concurrency` records in flight (sending, or waiting out a backoff); a record is read only
when a slot is free, so memory per endpoint is bounded (by `concurrency`, plus at most one
record per partition that a read of all streams returned beyond it). A slow or dead endpoint
holds its own slots and nothing else.

Why asyncio rather than threads: every record in flight is a task, so many endpoints with
many requests each cost no thread apiece; a record waiting out its backoff is a sleeping
task, cancelled at once on shutdown; and a request in flight can be given a deadline and
cancelled, which a thread blocked in a socket read cannot. httpx's async client and
redis.asyncio share the one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import httpx
import redis
import redis.asyncio as aioredis

from config.durations import format_duration
from config.settings import Settings, WebhookEndpoint
from features.events import EventError, format_time, parse_time
from sinks.keys import KeyLayout
from sinks.redis_client import async_client
from sinks.webhook_attempts import begin_attempt, release_unsent
from sinks.webhook_metrics import (
    DELIVERED,
    FAILED,
    RETRIED,
    WebhookMetrics,
    answer_label,
)
from sinks.webhook_requests import (
    ATTEMPT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    Outcome,
    RecordError,
    Verdict,
    classify,
    idempotency_key,
    next_delay,
    record_body,
    retry_after_seconds,
    signatures,
    wanted,
)

log = logging.getLogger(__name__)

Fields = dict[bytes, bytes]
Entries = list[tuple[bytes | None, Fields | None]]
StreamReply = list[tuple[bytes, Entries]]

READ_BLOCK = 1.0  # seconds a read of all streams waits for new records
IDLE_PAUSE = 0.5  # a cluster's streams are read one by one, without blocking: then a pause
LOST_CHECK_EVERY = 10.0  # seconds between checks for records trimmed before they were read
SHUTDOWN_GRACE = 5.0  # seconds requests in flight get to finish when the process stops
REDIS_RETRY = 1.0  # seconds between attempts while Redis cannot be reached
WARN_EVERY = 30.0  # at most one warning about Redis per endpoint this often
MAX_RESPONSE_BYTES = 65536  # an answer's body is read (for the connection's reuse) up to this
USER_AGENT = "crmflow-webhooks"
STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)

# The scripts' helper: a field of a reply Redis gives as a flat name, value list (XINFO).
_FIELD = """
local function field(list, name)
  for i = 1, #list, 2 do
    if list[i] == name then return list[i + 1] end
  end
  return false
end
"""

# Acknowledge a record given up on and, if it was still pending (not settled by another
# consumer meanwhile), record it in the failed-delivery stream: both or neither.
# KEYS: the trigger stream, its webhook_failed stream. ARGV: group, entry id, maxlen, fields.
_SETTLE_FAILED = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
  return 1
end
return 0
"""

# Create the endpoint's group on a trigger stream unless it exists, from new records ('$')
# or from the oldest kept ('0'). On Redis 7+ its read counter is set (what is before its
# start counts as read): without it Redis 7.0 counts nothing until the group's first read,
# and records trimmed before then could not be told. KEYS: the trigger stream. ARGV: the
# group, '$' or '0'. Returns {1 when Redis counts reads (7+), 1 when created here}.
_CREATE_GROUP = _FIELD + """
local created = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$', 'MKSTREAM')
  created = 1
end
local added = field(redis.call('XINFO', 'STREAM', KEYS[1]), 'entries-added')
local counts = 0
if added then counts = 1 end
if created == 1 then
  if added then
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], '$', 'ENTRIESREAD', added)
  end
  return {counts, 1}
end
local call = {'XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2]}
if added then
  local read = added
  if ARGV[2] ~= '$' then
    read = added - field(redis.call('XINFO', 'STREAM', KEYS[1]), 'length')
  end
  table.insert(call, 'ENTRIESREAD')
  table.insert(call, read)
end
local reply = redis.pcall(unpack(call))
if type(reply) == 'table' and reply.err then
  if string.find(reply.err, 'BUSYGROUP', 1, true) then return {counts, 0} end
  return redis.error_reply(reply.err)
end
return {counts, 1}
"""

# Renew this consumer's hold on its records (reset their idle time), only on those it still
# owns: one it lost (it stalled past claim_after and another consumer took it over) must not
# be taken back, or both would send it. JUSTID leaves the entries' counts, which count the
# attempts (sinks/webhook_attempts.py). KEYS: the trigger stream. ARGV: the group, this
# consumer, then the ids. Returns the ids it no longer holds.
_RENEW_HOLD = """
local claim, lost = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}, {}
for i = 3, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if entry[1] and entry[1][2] == ARGV[2] then
    table.insert(claim, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
if #claim > 5 then
  table.insert(claim, 'JUSTID')
  redis.call(unpack(claim))
end
return lost
"""

# Forget the group's other consumers that hold nothing and have not read for longer than
# `claim_after` (hosts gone), in one step: a consumer that reads again between a look and a
# delete would lose the records it just read from the group's pending list.
# KEYS: the trigger stream. ARGV: the group, this consumer, the idle time in milliseconds.
_FORGET_CONSUMERS = _FIELD + """
local forgotten = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name = field(consumer, 'name')
  if name ~= ARGV[2] and field(consumer, 'pending') == 0
      and field(consumer, 'idle') > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    forgotten = forgotten + 1
  end
end
return forgotten
"""

# Redis 7+: how many records left the stream (trimmed, or deleted by an erasure) past the
# group's last read, before the group read them; the group's read counter is then set to
# match (its lag then counts only what is left), so each loss is counted once. 0 on a
# group whose counter Redis does not know. KEYS: the trigger stream. ARGV: the group.
_LOST_BEFORE_READ = _FIELD + """
local function before(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, a_seq, b_ms, b_seq = tonumber(a_ms), tonumber(a_seq), tonumber(b_ms), tonumber(b_seq)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end
local group = false
for _, candidate in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  if field(candidate, 'name') == ARGV[1] then group = candidate end
end
if not group then return 0 end
local read = field(group, 'entries-read')
if not read then return 0 end
local last = field(group, 'last-delivered-id')
local stream = redis.call('XINFO', 'STREAM', KEYS[1])
local first = field(stream, 'first-entry')
if first and not before(last, first[1]) then return 0 end
local length = field(stream, 'length')
local added = field(stream, 'entries-added')
local lost = added - read - length
if lost <= 0 then return 0 end
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', added - length)
return lost
"""


def group_name(endpoint: str) -> str:
    """The endpoint's consumer group on every trigger stream."""
    return f"webhook:{endpoint}"


def default_consumer() -> str:
    """This process's consumer name when `webhooks.consumer` is not set: the host's name,
    stable across restarts, so a restarted process finds its pending records again."""
    return socket.gethostname() or "crmflow"


@dataclass(slots=True)
class Taken:
    """A record this consumer read or took over, not settled yet."""

    stream: str
    entry_id: str
    fields: Fields
    fresh: bool  # read as new: its first attempt is 1; else its group's count tells
    attempt: int = 0  # the attempt last begun (0: none yet)

    @property
    def key(self) -> tuple[str, str]:
        return (self.stream, self.entry_id)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]


class EndpointDelivery:
    """One endpoint's deliveries: its group on every partition's trigger stream, at most
    `concurrency` records in flight, each sent until its outcome is settled."""

    def __init__(self, endpoint: WebhookEndpoint, *, client: aioredis.Redis,
                 layout: KeyLayout, cluster: bool, consumer: str, claim_after: float,
                 maxlen: int, metrics: WebhookMetrics, read_block: float = READ_BLOCK,
                 clock: Callable[[], float] = time.time,
                 jitter: Callable[[], float] = random.random) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.group = group_name(endpoint.name)
        self.consumer = consumer
        self._client = client
        self._cluster = cluster
        self._prefix = layout.prefix
        self._streams = layout.all_trigger_streams()
        self._partition = {stream: p for p, stream in enumerate(self._streams)}
        self._failed = {stream: layout.webhook_failed(p) for stream, p in self._partition.items()}
        self._claim_after = claim_after
        self._refresh_every = claim_after / 4
        self._maxlen = maxlen
        self._metrics = metrics
        # a blocking read delays the renewal of the records held (`_refresh_held`)
        self._read_block = min(read_block, self._refresh_every)
        self._clock = clock
        self._jitter = jitter
        self._keys = endpoint.signing_keys()
        self._types = frozenset(endpoint.types)
        self._statuses = frozenset(endpoint.statuses)
        # a client of one connection per slot: httpx's pool looks at every connection for
        # every request (at 32 connections it cost more than the requests); one TLS context,
        # loaded once, for them all
        tls = httpx.create_ssl_context()
        self._clients = [httpx.AsyncClient(
            timeout=endpoint.timeout, follow_redirects=False, verify=tls,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={"User-Agent": USER_AGENT}) for _ in range(endpoint.concurrency)]
        self._free_slots = deque(range(endpoint.concurrency))
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        # read (so pending for this consumer) and not started: a read of all streams may
        # return up to one record per stream more than the free slots
        self._waiting: deque[Taken] = deque()
        self._held: set[tuple[str, str]] = set()  # in flight or waiting
        self._slot_freed = asyncio.Event()
        self._stop = asyncio.Event()
        self._next_stream = 0
        self._last_refresh = self._last_claim = time.monotonic()
        self._last_lost_check = -math.inf
        self._last_warning = -math.inf
        self._counts_reads = False

    # --- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; then give requests in flight `SHUTDOWN_GRACE`
        seconds to finish. What is not settled by then stays pending for the next start."""
        self._stop = stop
        self._metrics.prepare(self.name)
        try:
            if not await self._until_done(self._create_groups):
                return
            # before any read: records trimmed while no consumer of this group was reading
            if not await self._until_done(self._check_lost):
                return
            for stream in self._streams:  # this consumer's pending records first
                if not await self._until_done(functools.partial(self._recover, stream)):
                    return
            while not stop.is_set():
                try:
                    await self._step()
                except STORE_ERRORS as exc:
                    if _no_group(exc):  # an operator destroyed it, or the stream went
                        await self._until_done(self._create_groups)
                        continue
                    self._trouble(exc)
                    await self._pause(REDIS_RETRY)
        finally:
            await self._shutdown()

    async def _step(self) -> None:
        now = time.monotonic()
        if now - self._last_refresh >= self._refresh_every:
            await self._refresh_held()
        if now - self._last_claim >= self._claim_after / 2:
            await self._claim_abandoned()
        if now - self._last_lost_check >= LOST_CHECK_EVERY:
            await self._check_lost()  # just before a read: a read moves past a gap
        self._start_waiting()
        if self._free() > 0 and not self._waiting:
            await self._read_new()
        else:
            await self._wait_for_slot(self._refresh_every)

    async def _until_done(self, step: Callable[[], Awaitable[None]]) -> bool:
        """`step()`, again while Redis cannot be reached, and with the groups made again when
        a stream went (a Redis that came back empty); False when stopped first."""
        while not self._stop.is_set():
            try:
                await step()
                return True
            except STORE_ERRORS as exc:
                if _no_group(exc):
                    with contextlib.suppress(*STORE_ERRORS):
                        await self._create_groups()
                        continue
                self._trouble(exc)
                await self._pause(REDIS_RETRY)
        return False

    def _free(self) -> int:
        return self.endpoint.concurrency - len(self._in_flight)

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds`; True (at once) when the process is stopping."""
        if self._stop.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _wait_for_slot(self, timeout: float) -> None:
        """Until a record in flight is settled, the process stops, or `timeout` passes."""
        self._slot_freed.clear()
        if self._free() > 0 or self._stop.is_set():
            return
        waiters = [asyncio.ensure_future(self._slot_freed.wait()),
                   asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _trouble(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning("webhook %s: Redis: %s; retrying", self.name, _describe(exc))

    # --- groups, reads, claims ------------------------------------------------------------

    async def _create_groups(self) -> None:
        start = "$" if self.endpoint.start_from == "new" else "0"
        counts = True
        for stream in self._streams:
            reply = cast(list[int], await self._client.eval(
                _CREATE_GROUP, 1, stream, self.group, start))
            counts = counts and bool(reply[0])
            if reply[1]:
                log.info("webhook %s: group %s created on %s, from %s records", self.name,
                         self.group, stream, "new" if start == "$" else "the oldest")
        self._counts_reads = counts
        if not counts:
            log.warning("webhook %s: this Redis (before 7.0) does not count a group's reads: "
                        "records trimmed from a trigger stream before this endpoint read them "
                        "cannot be detected (keep redis.stream_maxlen above the records of the "
                        "longest outage you expect)", self.name)

    async def _recover(self, stream: str) -> None:
        """Take this consumer's pending records of `stream` (read before a crash or a stop,
        never settled): they go first."""
        position = "0"
        while not self._stop.is_set():
            await self._wait_for_slot(self._refresh_every)
            if self._free() <= 0:
                await self._refresh_held()
                continue
            reply = cast(StreamReply | None, await self._client.xreadgroup(
                self.group, self.consumer, {stream: position}, count=self._free()))
            entries = reply[0][1] if reply else []
            if not entries:
                return
            await self._take(stream, entries, fresh=False)
            last = entries[-1][0]
            assert last is not None
            position = last.decode()

    async def _read_new(self) -> None:
        if not self._cluster:  # one read of every stream, waiting for the first record
            count = max(1, self._free() // len(self._streams))
            reply = cast(StreamReply | None, await self._client.xreadgroup(
                self.group, self.consumer, dict.fromkeys(self._streams, ">"), count=count,
                block=max(1, int(self._read_block * 1000))))
            for raw_stream, entries in reply or []:
                await self._take(raw_stream.decode(), entries, fresh=True)
            return
        # a cluster's streams live in different slots: read them one by one, from a stream
        # that moves on each time, so none waits behind the others
        found = False
        for offset in range(len(self._streams)):
            if self._free() <= len(self._waiting):
                break
            stream = self._streams[(self._next_stream + offset) % len(self._streams)]
            reply = cast(StreamReply | None, await self._client.xreadgroup(
                self.group, self.consumer, {stream: ">"},
                count=self._free() - len(self._waiting)))
            for _, entries in reply or []:
                found = found or bool(entries)
                await self._take(stream, entries, fresh=True)
        self._next_stream = (self._next_stream + 1) % len(self._streams)
        if not found:
            await self._pause(IDLE_PAUSE)

    async def _take(self, stream: str, entries: Entries, *, fresh: bool) -> None:
        """Queue the records this endpoint wants; acknowledge at once those it does not, and
        those erased from the stream after they were read (nothing is left to send).
        `fresh`: read as new records (not this consumer's pending ones, nor taken over)."""
        done: list[str] = []
        for raw_id, fields in entries:
            if raw_id is None:
                continue
            entry_id = raw_id.decode()
            if (stream, entry_id) in self._held:
                continue
            if not fields or not wanted(fields, self._types, self._statuses):
                done.append(entry_id)
                continue
            self._held.add((stream, entry_id))
            self._waiting.append(Taken(stream, entry_id, fields, fresh))
        if done:
            await self._client.xack(stream, self.group, *done)
        self._start_waiting()

    async def _refresh_held(self) -> None:
        """Reset the idle time of the records this consumer holds (a retry may wait minutes),
        so that no other consumer takes them over as abandoned."""
        self._last_refresh = time.monotonic()
        by_stream: dict[str, list[str | bytes | int | memoryview]] = {}
        for stream, entry_id in self._held:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            lost = cast(list[bytes], await self._client.eval(
                _RENEW_HOLD, 1, stream, self.group, self.consumer, *ids))
            for raw_id in lost:
                self._drop(stream, raw_id.decode())

    def _drop(self, stream: str, entry_id: str) -> None:
        """Let go of a record another consumer took over (this one stalled past
        `claim_after`) or that was settled meanwhile: it is no longer this one's to send."""
        key = (stream, entry_id)
        task = self._in_flight.get(key)
        if task is not None:
            task.cancel()  # `_finished` frees its slot
        elif key in self._held:
            self._held.discard(key)
            self._waiting = deque(w for w in self._waiting if w.key != key)
        log.info("webhook %s: record %s of %s is no longer this consumer's (taken over "
                 "after a stall, or settled)", self.name, entry_id, stream)

    async def _claim_abandoned(self) -> None:
        """Take over the records another consumer (a host gone, a renamed one) has held for
        longer than `claim_after`, and forget such consumers once they hold nothing."""
        self._last_claim = time.monotonic()
        idle_ms = int(self._claim_after * 1000)
        for stream in self._streams:
            start = "0-0"
            taken = 0
            while self._free() > len(self._waiting):
                reply: list[Any] = await self._client.xautoclaim(
                    stream, self.group, self.consumer, idle_ms, start_id=start,
                    count=self._free() - len(self._waiting))
                entries = cast(Entries, reply[1])
                new = [e for e in entries if e[0] is not None
                       and (stream, e[0].decode()) not in self._held]
                taken += len(new)
                await self._take(stream, entries, fresh=False)
                if any(entry_id is None for entry_id, _ in entries):
                    # Redis 6 claims a record erased meanwhile without naming it: it is
                    # this consumer's now; its own pending records show it, to acknowledge
                    await self._recover(stream)
                start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                if start == "0-0":
                    break
            if taken:
                log.info("webhook %s: took over %d record(s) of %s idle for more than %s",
                         self.name, taken, stream, format_duration(self._claim_after))
            await self._client.eval(_FORGET_CONSUMERS, 1, stream, self.group, self.consumer,
                                    idle_ms)

    async def _check_lost(self) -> None:
        self._last_lost_check = time.monotonic()
        if not self._counts_reads:
            return
        for stream in self._streams:
            lost = int(cast(int, await self._client.eval(
                _LOST_BEFORE_READ, 1, stream, self.group)))
            if lost > 0:
                self._metrics.lost.labels(self.name).inc(lost)
                log.warning("webhook %s: %d record(s) left %s before this endpoint read them "
                            "(trimmed by redis.stream_maxlen, or erased); they will not be "
                            "delivered", self.name, lost, stream)

    # --- one record -----------------------------------------------------------------------

    def _start_waiting(self) -> None:
        while self._waiting and self._free() > 0:
            record = self._waiting.popleft()
            key = record.key
            slot = self._free_slots.popleft()
            task = asyncio.create_task(self._deliver(self._clients[slot], record),
                                       name=f"webhook {self.name} {record.entry_id}")
            self._in_flight[key] = task
            self._metrics.in_flight.labels(self.name).inc()
            task.add_done_callback(functools.partial(self._finished, key, slot))

    def _finished(self, key: tuple[str, str], slot: int, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)
        self._free_slots.append(slot)
        self._held.discard(key)
        self._metrics.in_flight.labels(self.name).dec()
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            # a bug: the record stays pending, and is taken up again after claim_after
            log.error("webhook %s: record %s: %s", self.name, key[1],
                      _describe(cast(BaseException, task.exception())),
                      exc_info=task.exception())

    async def _deliver(self, http: httpx.AsyncClient, record: Taken) -> None:
        try:
            await self._attempts(http, record)
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the record
            # pending, taken up again and again for ever: it is recorded as failed
            log.error("webhook %s: record %s: %s", self.name, record.entry_id, _describe(exc),
                      exc_info=exc)
            await self._give_up(record.stream, record.entry_id, record.fields, record.attempt,
                                Outcome(None, f"internal error: {_describe(exc)}"))

    async def _attempts(self, http: httpx.AsyncClient, record: Taken) -> None:
        stream, entry_id, fields = record.stream, record.entry_id, record.fields
        try:
            body = record_body(fields)
        except RecordError as exc:
            await self._give_up(stream, entry_id, fields, 0,
                                Outcome(None, f"unreadable record: {exc}"))
            return
        key = idempotency_key(self._prefix, self._partition[stream], entry_id)
        # read as new: attempt 1, as its read counted it; read again after a restart, or
        # taken over: the attempt its group's count is at (sinks/webhook_attempts.py)
        attempt = 1 if record.fresh else await self._begin(record, None)
        while attempt is not None:
            if attempt > self.endpoint.max_attempts:  # all made before a restart or takeover
                await self._give_up(stream, entry_id, fields, attempt - 1, Outcome(
                    None, "no attempt left after a restart or a takeover (the last "
                          "attempt's answer is not known)"))
                return
            record.attempt = attempt
            outcome = await self._send(http, body, key, attempt)
            verdict = classify(outcome)
            if verdict is Verdict.DELIVERED:
                self._metrics.deliveries.labels(self.name, DELIVERED).inc()
                self._observe_lag(fields)
                await self._settle(lambda: self._client.xack(stream, self.group, entry_id))
                return
            if verdict is Verdict.FAILED or attempt >= self.endpoint.max_attempts:
                await self._give_up(stream, entry_id, fields, attempt, outcome)
                return
            self._metrics.deliveries.labels(self.name, RETRIED).inc()
            delay = next_delay(attempt, self.endpoint.backoff_initial, self.endpoint.backoff_max,
                               retry_after_seconds(outcome.retry_after, self._clock()),
                               self._jitter())
            log.debug("webhook %s: record %s: %s; attempt %d in %.2fs", self.name, entry_id,
                      outcome.describe(), attempt + 1, delay)
            if await self._pause(delay):
                return  # stopping: it stays pending, sent again at the next start
            attempt = await self._begin(record, attempt + 1)

    async def _begin(self, record: Taken, attempt: int | None) -> int | None:
        """The number of the attempt about to be sent: `attempt`, counted in the record's
        pending entry before it is sent, or with None the count a read or a takeover left
        there; again while Redis cannot be reached. None when the record must not be sent:
        it is no longer this consumer's, its group went, or the process stops first."""
        while True:
            try:
                number = await begin_attempt(self._client, record.stream, self.group,
                                             self.consumer, record.entry_id, attempt)
            except STORE_ERRORS as exc:
                if _no_group(exc):
                    return None  # the group is gone, and with it what it had pending
                self._trouble(exc)
                if await self._pause(REDIS_RETRY):
                    return None
                continue
            if number is None:
                log.info("webhook %s: record %s of %s is no longer this consumer's (taken "
                         "over after a stall, settled, or erased)", self.name,
                         record.entry_id, record.stream)
            return number

    async def _send(self, http: httpx.AsyncClient, body: bytes, key: str, attempt: int
                    ) -> Outcome:
        headers = {**self.endpoint.headers,
                   "Content-Type": "application/json", IDEMPOTENCY_HEADER: key,
                   SIGNATURE_HEADER: signatures(self._keys, body, int(self._clock())),
                   ATTEMPT_HEADER: str(attempt)}
        started = time.perf_counter()
        timed_out = False
        try:
            async with asyncio.timeout(self.endpoint.timeout):  # the whole exchange
                async with http.stream("POST", self.endpoint.url, content=body,
                                       headers=headers) as response:
                    received = 0
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
                        if received > MAX_RESPONSE_BYTES:
                            break
            outcome = Outcome(response.status_code,
                              retry_after=response.headers.get("retry-after"))
        except (TimeoutError, httpx.TimeoutException):
            timed_out = True
            outcome = Outcome(None, f"no answer within {format_duration(self.endpoint.timeout)}")
        except Exception as exc:  # noqa: BLE001 - httpx's errors, and those it lets through
            # (an IDNA host it cannot encode): an attempt that failed, never a dead task
            outcome = Outcome(None, _describe(exc))
        self._metrics.request_seconds.labels(self.name).observe(time.perf_counter() - started)
        self._metrics.requests.labels(self.name, answer_label(outcome.status, timed_out)).inc()
        return outcome

    def _observe_lag(self, fields: Fields) -> None:
        decided = fields.get(b"decided_at")
        if decided is None:
            return
        try:
            decided_at = parse_time(decided.decode(), "decided_at")
        except (EventError, UnicodeDecodeError):
            return
        self._metrics.lag_seconds.labels(self.name).observe(max(0.0, self._clock() - decided_at))

    async def _give_up(self, stream: str, entry_id: str, fields: Fields, attempts: int,
                       outcome: Outcome) -> None:
        self._metrics.deliveries.labels(self.name, FAILED).inc()
        trigger_id = fields.get(b"trigger_id", b"").decode("utf-8", "replace")
        log.warning("webhook %s: gave up on record %s (trigger %s) after %d attempt(s): %s",
                    self.name, entry_id, trigger_id, attempts, outcome.describe())
        record: list[str] = ["endpoint", self.name, "entry_id", entry_id,
                             "trigger_id", trigger_id,
                             "type", fields.get(b"type", b"").decode("utf-8", "replace"),
                             "attempts", str(attempts)]
        if outcome.status is not None:
            record += ["http_status", str(outcome.status)]
        record += ["error", outcome.describe(), "failed_at", format_time(self._clock()) or ""]
        await self._settle(lambda: self._client.eval(
            _SETTLE_FAILED, 2, stream, self._failed[stream], self.group, entry_id,
            self._maxlen, *record))

    async def _settle(self, write: Callable[[], Awaitable[Any]]) -> None:
        """`write()` (the acknowledgement), again while Redis cannot be reached; left undone
        when the process stops first (the record stays pending: sent again later)."""
        while True:
            try:
                await write()
                return
            except STORE_ERRORS as exc:
                if _no_group(exc):
                    return  # the group is gone, and with it what it had pending
                self._trouble(exc)
                if await self._pause(REDIS_RETRY):
                    return

    async def _release_waiting(self) -> None:
        """Records read and never sent (waiting for a slot as the process stops) give back
        the attempt number their read reserved: a redeploy costs them no attempt."""
        by_stream: dict[str, list[str]] = {}
        for record in self._waiting:
            by_stream.setdefault(record.stream, []).append(record.entry_id)
        self._waiting.clear()
        with contextlib.suppress(*STORE_ERRORS):  # unreachable: they skip a number
            for stream, ids in by_stream.items():
                await release_unsent(self._client, stream, self.group, self.consumer, ids)

    async def _shutdown(self) -> None:
        tasks = list(self._in_flight.values())
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        await self._release_waiting()
        for http in self._clients:
            await http.aclose()


def _no_group(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP")


async def deliver(settings: Settings, stop: asyncio.Event, metrics: WebhookMetrics, *,
                  consumer: str | None = None, read_block: float = READ_BLOCK,
                  clock: Callable[[], float] = time.time) -> None:
    """Deliver to every endpoint of `settings.webhooks` until `stop` is set."""
    hooks = settings.webhooks
    # every record in flight may acknowledge at once, beside each endpoint's blocking read
    client = async_client(settings.redis, max_connections=sum(
        2 + endpoint.concurrency for endpoint in hooks.endpoints) + 8)
    layout = KeyLayout.from_settings(settings)
    name = consumer or hooks.consumer or default_consumer()
    deliveries = [
        EndpointDelivery(endpoint, client=client, layout=layout,
                         cluster=settings.redis.cluster, consumer=name,
                         claim_after=hooks.claim_after, maxlen=settings.redis.stream_maxlen,
                         metrics=metrics, clock=clock,
                         # a blocking read must end well within the socket's timeout
                         read_block=min(read_block, settings.redis.socket_timeout / 2))
        for endpoint in hooks.endpoints]
    log.info("delivering to %d webhook endpoint(s) (%s) as consumer %s", len(deliveries),
             ", ".join(endpoint.name for endpoint in hooks.endpoints), name)
    tasks = [asyncio.create_task(delivery.run(stop), name=f"webhook {delivery.name}")
             for delivery in deliveries]
    try:  # until stopped, or until one fails (a bug): then the others stop too
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
    for task in done:
        task.result()  # the failure, if one failed
