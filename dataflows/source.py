"""A Bytewax source over the partitioned Redis event streams.

Delivery: at-least-once. A partition starts at the least stream position committed by
any of its buckets (Redis, not Bytewax recovery, holds it); buckets skip entries they had
already applied, so the combined effect is exactly-once.

Reads never block: XRANGE from the last id, and `next_awake` backs off while caught up.
Besides entries, each partition sends tick items to all its buckets: the clock for timers
(the arrival time of the last entry read while catching up; wall time at the stream head)
and the read position, which lets idle buckets advance their committed position.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.buckets import EVENT, TICK, Item
from dataflows.metrics import DataflowMetrics
from features.routing import bucket_of
from sinks.bucket_store import BucketStore, retrying, stream_id_key
from sinks.redis_client import is_store_full

log = logging.getLogger(__name__)

KeyedItem = tuple[str, Item]
HEARTBEAT_EVERY = 2.0
TRIM_EVERY = 10.0  # seconds; sooner under a length cap (`_trim_due`)


@dataclass(frozen=True, slots=True)
class SourceConfig:
    batch_size: int
    tick_interval: float
    idle_wait: float
    heartbeat_ttl: float
    retention: float = 86400.0  # applied entries older than this are trimmed from the stream
    stop_when_caught_up: bool = False  # for drains and tests: EOF once every entry is read
    as_of: float | None = None  # replays: the head clock is this time, not the wall clock
    max_stream_length: int = 0  # over half of it, applied entries go at once


class EventStreamSource(FixedPartitionedSource[KeyedItem, None]):
    """One partition per event stream, keyed by bucket. `store_factory`: a store for each
    partition's reader, built in the worker that runs it."""

    def __init__(self, store_factory: Callable[[], BucketStore], partitions: int,
                 config: SourceConfig, metrics: DataflowMetrics) -> None:
        self._store_factory = store_factory
        self._config = config
        self._metrics = metrics
        self._partitions = partitions

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(self._partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: None
                   ) -> _EventStreamPartition:
        return _EventStreamPartition(int(for_part), self._store_factory(), self._config,
                                     self._metrics)


class _EventStreamPartition(StatefulSourcePartition[KeyedItem, None]):
    def __init__(self, partition: int, store: BucketStore, config: SourceConfig,
                 metrics: DataflowMetrics) -> None:
        layout = store.layout
        self._partition = partition
        self._client: redis.Redis = store.client
        self._store = store
        self._last_trim = time.time()
        self._read_since_trim = 0
        self._config = config
        self._metrics = metrics
        self._stream = layout.events(partition)
        self._heartbeat_key = layout.heartbeat()
        self._heartbeat_value = f"{socket.gethostname()}:{os.getpid()}"
        self._buckets = layout.buckets
        self._partitions = layout.partitions
        self._stopping = False
        self._own = [str(b) for b in range(partition, layout.buckets, layout.partitions)]
        self._misrouted_to = self._own[0]
        # Redis may be away when the dataflow starts or restarts: wait for it, do not die
        self._position = retrying(functools.partial(store.resume_position, partition),
                                  "resuming")
        self._count_key = layout.events_count(partition)
        self._read_number: int | None = None  # `n` of the last entry read
        self._caught_up = False
        self._retry_in = 0.0  # after a failed read: the backoff before the next one
        self._last_tick = 0.0
        self._last_heartbeat = 0.0
        self._label = str(partition)
        log.info("partition %d resumes after %s", partition, self._position)

    def next_batch(self) -> list[KeyedItem]:
        entries = self._read()
        if entries is None:
            return []  # a failed read says nothing about the head: no tick, no stop, no lag
        items: list[KeyedItem] = []
        for stream_id_raw, fields in entries:
            stream_id = stream_id_raw.decode()
            client_key = fields.get(b"k", b"").decode("utf-8", "replace")
            bucket = bucket_of(client_key, self._buckets)
            target = str(bucket) if bucket % self._partitions == self._partition else (
                self._misrouted_to)  # the bucket dead-letters it, in stream order
            items.append((target, (EVENT, int(target), stream_id, client_key,
                                   fields.get(b"e", b""))))
            self._position = stream_id
            number = fields.get(b"n")
            if number is not None:
                self._read_number = int(number)
        if entries:
            self._metrics.events_read.labels(self._label).inc(len(entries))
            self._read_since_trim += len(entries)
        self._caught_up = len(entries) < self._config.batch_size
        now = time.time()
        self._update_lag(entries, now)
        if self._caught_up:
            self._metrics.pending_entries.labels(self._label).set(0)
        if now - self._last_tick >= self._config.tick_interval or (
                self._caught_up and self._config.stop_when_caught_up):
            items.extend(self._ticks(now))
        if now - self._last_heartbeat >= HEARTBEAT_EVERY:
            self._beat(now)
        if self._caught_up and self._config.stop_when_caught_up:
            self._stopping = True
        if self._trim_due(now):
            self._trim(now)
        return items

    def _trim_due(self, now: float) -> bool:
        """Every TRIM_EVERY seconds, or once a quarter of the length cap was read since the
        last trim: at a low cap and a high rate, ten seconds of events would fill the
        stream, and ingest would answer "retry later" for events already applied."""
        cap = self._config.max_stream_length
        return (now - self._last_trim >= TRIM_EVERY or self._stopping
                or (cap > 0 and self._read_since_trim * 4 >= cap))

    def _trim(self, now: float) -> None:
        """Drop entries every bucket has applied, once older than the retention (at once
        while the stream is over half its length cap, which ingest enforces, so a caught-up
        dataflow always leaves room): the stream is a buffer with a replay window, never
        the place where unread events die."""
        self._last_trim = now
        self._read_since_trim = 0
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            applied = stream_id_key(self._store.resume_position(self._partition))
            expired = (int((now - self._config.retention) * 1000), 0)
            cap = self._config.max_stream_length
            over = cap > 0 and self._client.xlen(self._stream) * 2 >= cap
            ms, seq = applied if over else min(applied, expired)
            if ms > 0:
                self._client.xtrim(self._stream, minid=f"{ms}-{seq}", approximate=False)

    def _read(self) -> list[tuple[bytes, dict[bytes, bytes]]] | None:
        """The next entries, or None when Redis did not answer: unread entries may remain,
        so a failure must never pass for being caught up (that would put the wall clock on
        ticks ahead of the backlog, or end a drain with it unread); it only backs off."""
        if self._stopping:
            raise StopIteration
        try:
            entries = self._client.xrange(self._stream, min="(" + self._position, max="+",
                                          count=self._config.batch_size)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._retry_in = min(max(self._retry_in * 2, 0.05), 2.0)
            log.warning("partition %d: redis unavailable (%s); retrying in %.2fs",
                        self._partition, exc, self._retry_in)
            return None
        self._retry_in = 0.0
        return cast(list[tuple[bytes, dict[bytes, bytes]]], entries)

    def _ticks(self, now: float) -> list[KeyedItem]:
        """At the head the clock is wall time; behind it, the arrival time of the last
        entry read (stream ids are Redis's clock at append), so a backlog replays the
        clock as it was."""
        self._last_tick = now
        at_head = self._caught_up
        if not at_head:
            self._count_pending()
        if at_head:
            clock = now if self._config.as_of is None else self._config.as_of
        else:
            clock = stream_id_key(self._position)[0] / 1000
        self._metrics.watermark.labels(self._label).set(clock)
        return [(bucket, (TICK, int(bucket), clock, self._position, at_head))
                for bucket in self._own]

    def _count_pending(self) -> None:
        """Entries appended less those read (by the entries' numbers), once per tick."""
        if self._read_number is None:
            return  # entries written before they were numbered: unknown until the next
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            appended = self._client.get(self._count_key)
            if appended is not None:
                pending = max(0, int(cast(bytes, appended)) - self._read_number)
                self._metrics.pending_entries.labels(self._label).set(pending)

    def _update_lag(self, entries: list[tuple[bytes, dict[bytes, bytes]]], now: float) -> None:
        """The age of the oldest entry not yet read, as of this read: the first entry it
        returned (its id is Redis's clock when it was appended); 0 when there was none."""
        lag = 0.0
        if entries:
            appended_ms = stream_id_key(entries[0][0].decode())[0]
            lag = max(0.0, now - appended_ms / 1000)
        self._metrics.lag_seconds.labels(self._label).set(lag)

    def _beat(self, now: float) -> None:
        self._last_heartbeat = now
        try:  # a lapsed heartbeat is what readiness reports
            self._client.set(self._heartbeat_key, self._heartbeat_value,
                             px=int(self._config.heartbeat_ttl * 1000))
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            if isinstance(exc, redis.ResponseError) and not is_store_full(exc):
                raise

    def next_awake(self) -> datetime | None:
        if self._retry_in:
            return datetime.now(UTC) + timedelta(seconds=self._retry_in)
        if self._caught_up:
            return datetime.now(UTC) + timedelta(seconds=self._config.idle_wait)
        return None

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._client.close()
