"""Bucket commits sent by a thread of their own, up to two batches in flight, so the
dataflow computes its next batch while Redis applies the ones before.

A batch's commit is a megabyte or more of script calls, more than a loopback socket
buffers: sending it blocks until Redis has read, and so applied, most of it. Sent from a
thread, that wait releases the GIL and the dataflow's Python goes on: at 100k clients the
process went from 87% to 94% on the CPU, and +6-11% events/s (bench/README.md). A second
batch in flight lets it go on through a batch Redis is slow to apply (more often at 1M
clients, where each command costs more): +7-10% events/s there. The Python work (building
the calls and packing them) stays on the dataflow's thread; the writer thread does the
writing: a batch's writes outside its bucket (`before_commit`), then its scripts.

Order and delivery: everything a batch writes is written by the one writer thread, batch
after batch, so Redis applies them in the order they were submitted. A lost connection,
or a script Redis no longer has (a restart), is mended there before anything else is
sent: the batch goes again the synchronous way, its writes outside the bucket too (what
a crash of Redis lost of them comes back; repeated, they are no-ops), retrying while Redis
is away. A script applied twice is a no-op the second time (its commit id, or the
position's compare-and-set). The mending does not wait for another batch to come (an
idle dataflow may have none). Any other failure (a bucket another process now owns, an
error reply) stops the writer: it writes nothing more, not even the next batches' writes
outside their buckets, and the error is raised on the dataflow's thread when that batch
is settled, at a later `submit` or at `flush`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import hiredis
import redis
from redis.connection import Connection
from redis.exceptions import NoScriptError

from sinks.bucket_store import BucketCommit, BucketStore, emitted_triggers, retrying
from sinks.redis_client import is_store_full

log = logging.getLogger(__name__)

# commits applied, (type, status) of each trigger newly emitted, seconds they took
OnApplied = Callable[[int, list[tuple[str, str]], float], None]

IN_FLIGHT = 2  # batches submitted and not yet settled: one on the wire, one packed


class Sent(enum.Enum):
    APPLIED = "applied"  # and reported by the writer thread
    SKIPPED = "skipped"  # nothing of it written: a batch before it stopped the writer


# the writer thread's outcome of a batch: the replies when one of them is an error
Outcome = list[Any] | Sent


class CommitWriter:
    def __init__(self, store: BucketStore, on_applied: OnApplied, *,
                 in_flight: int = IN_FLIGHT) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, not {in_flight}")
        self._store = store
        self._on_applied = on_applied
        self._depth = in_flight
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crmflow-commit")
        self._connection: Connection | None = None  # the writer thread's
        self._pending: deque[Future[Outcome]] = deque()
        self._failed = False  # set by the writer thread: it writes nothing more

    def submit(self, commits: Sequence[BucketCommit]) -> None:
        """Queue `commits` for the writer, after settling the batches in flight that are
        done, and the oldest if there is no room. Erasures, and commits to a cluster, are
        applied before this returns (after every batch before them): the purge that
        follows an erasure needs its commit done."""
        if not self._store.pipelined or any(commit.erasures for commit in commits):
            self.flush()
            started = time.perf_counter()
            emitted = self._store.commit(commits)
            self._on_applied(len(commits), emitted, time.perf_counter() - started)
            return
        while self._pending and (len(self._pending) >= self._depth
                                 or self._pending[0].done()):
            self._settle_oldest()  # raises what stopped the writer as soon as it is known
        payload = _packed(self._store.commit_commands(commits))
        self._pending.append(self._executor.submit(self._send, commits, payload))

    def flush(self) -> None:
        """Wait for every batch in flight and settle their outcomes, oldest first."""
        while self._pending:
            self._settle_oldest()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._executor.shutdown()
            self._disconnect()

    def _settle_oldest(self) -> None:
        """Wait for the oldest batch; if it stopped the writer, wait for the batches it
        skipped since (the writer is idle then) and raise what stopped it."""
        try:
            outcome = self._pending.popleft().result()
        except BaseException:
            self._skip_rest()
            raise
        if outcome is Sent.APPLIED:
            return
        if outcome is Sent.SKIPPED:  # settled with the failure before it, never alone
            raise RuntimeError("commit writer: a batch skipped with no failure before it")
        self._skip_rest()
        emitted_triggers(outcome)  # raises the error replies

    def _skip_rest(self) -> None:
        while self._pending:
            self._pending.popleft().exception()  # skipped: neither sent nor raised
        self._failed = False

    def _send(self, commits: Sequence[BucketCommit], payload: bytes) -> Outcome:
        """On the writer thread: apply a batch, unless one before it stopped the writer."""
        if self._failed:
            return Sent.SKIPPED
        started = time.perf_counter()
        try:
            retrying(lambda: self._store.before_commit(commits), "committing")
            results = self._exchange(payload, len(commits))
            if results is None or any(isinstance(r, NoScriptError) or is_store_full(r)
                                      for r in results):  # sent again the synchronous way
                emitted = self._store.commit(commits)  # loads the script; waits for Redis
            elif any(isinstance(result, Exception) for result in results):
                self._failed = True
                return results
            else:
                emitted = emitted_triggers(results)
            self._on_applied(len(commits), emitted, time.perf_counter() - started)
        except BaseException:
            self._failed = True
            raise
        return Sent.APPLIED

    def _exchange(self, payload: bytes, replies: int) -> list[Any] | None:
        """The replies to `payload` on the writer's connection; None if it was lost (or
        could not be made), when some of the calls may have been applied."""
        try:
            if self._connection is None:
                self._store.load_script()
                self._connection = self._store.client.connection_pool.get_connection()
            self._connection.send_packed_command(  # type: ignore[no-untyped-call]
                [payload], check_health=False)  # a list of buffers: it iterates what it sends
            results: list[Any] = []
            for _ in range(replies):
                try:
                    results.append(self._connection.read_response())
                except redis.ResponseError as exc:  # one call's error reply: read the rest
                    results.append(exc)
            return results
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("redis connection lost while committing (%s): sending again", exc)
            self._disconnect()
            return None

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()  # type: ignore[no-untyped-call]
            self._store.client.connection_pool.release(self._connection)
            self._connection = None


def _packed(commands: Sequence[tuple[str | bytes | int, ...]]) -> bytes:
    """The commands in Redis's protocol, one buffer for one send. hiredis's packer called
    directly: redis-py's `pack_commands` adds a Python pass over every argument, a third of
    the packing time (11.4 against 7.5 ms for 200 calls of 313 arguments)."""
    # its stub types the argument as a tuple of one
    return b"".join([hiredis.pack_command(command)  # type: ignore[arg-type]
                     for command in commands])
