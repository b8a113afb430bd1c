"""The Bytewax sink that commits bucket changes to Redis.

Delivery: effectively exactly-once. Bytewax may hand a commit over again after a restart;
the commit script's compare-and-set on the bucket position turns a repeat into a no-op,
and trigger ids are deterministic, so nothing is written twice.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from dataflows.metrics import DataflowMetrics, trigger_label
from sinks import erasure
from sinks.bucket_store import BucketCommit, BucketStore, retrying
from sinks.commit_writer import CommitWriter

KeyedCommit = tuple[str, BucketCommit]


class BucketCommitSink(DynamicSink[KeyedCommit]):
    def __init__(self, store_factory: Callable[[], BucketStore], metrics: DataflowMetrics,
                 retention: erasure.Retention = erasure.DEFAULT_RETENTION) -> None:
        """`retention`: how long erasure statuses and audit records are kept."""
        self._store_factory = store_factory
        self._metrics = metrics
        self._retention = retention

    def build(self, step_id: str, worker_index: int, worker_count: int
              ) -> _BucketCommitPartition:
        return _BucketCommitPartition(self._store_factory(), self._metrics, self._retention)


class _BucketCommitPartition(StatelessSinkPartition[KeyedCommit]):
    def __init__(self, store: BucketStore, metrics: DataflowMetrics,
                 retention: erasure.Retention) -> None:
        self._store = store
        self._metrics = metrics
        self._retention = retention
        self._writer = CommitWriter(store, self._applied)
        # erasure statuses from before they expired get their expiry first
        retrying(lambda: erasure.expire_legacy_statuses(store.client, store.layout, time.time(),
                                                        retention), "expiring erasure statuses")
        # erasures a crash left committed but not purged: finished before anything else
        self._purge(range(store.layout.partitions))

    def _applied(self, commits: int, emitted: list[tuple[str, str]], seconds: float) -> None:
        """Called once a batch is applied (on the commit writer's thread)."""
        self._metrics.commit_seconds.observe(seconds)
        self._metrics.commits.inc(commits)
        for trigger_type, status in emitted:
            self._metrics.triggers.labels(trigger_label(trigger_type), status).inc()

    def _purge(self, partitions: Iterable[int]) -> None:
        """With backoff while Redis is away, as commits: an outage pauses the sink instead of
        killing the dataflow (a purge repeated after a failure removes what is left)."""
        for partition in partitions:
            retrying(functools.partial(self._purge_partition, partition), "purging erasures")

    def _purge_partition(self, partition: int) -> int:
        return erasure.purge(self._store.client, self._store.layout, partition, time.time(),
                             self._retention)

    def write_batch(self, items: list[KeyedCommit]) -> None:
        commits = [commit for _, commit in items]
        if not commits:
            return
        self._writer.submit(commits)
        layout = self._store.layout
        refusals = [refusal for commit in commits for refusal in commit.refusals]
        if refusals:  # written again by a replay, alike: nothing else depends on them
            retrying(lambda: erasure.record_refusals(self._store.client, layout, refusals,
                                                     time.time(), self._retention),
                     "recording refused erasures")
        self._purge({layout.partition_of_bucket(c.bucket) for c in commits if c.erasures})

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._store.client.close()
