"""The commit writer against a real Redis: batches applied in order and reported from its
thread, fencing raised at the next batch, and a lost connection or a forgotten script
sending the batch again, applied once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis
from prometheus_client import CollectorRegistry

from dataflows.buckets import EVENT, TICK, BucketConfig, BucketLogic
from dataflows.flow import store_factory
from dataflows.metrics import DataflowMetrics
from features.events import Event, EventType, Order, Product
from features.rules import LifecycleRules, SegmentRules, TriggerRules
from sinks.bucket_store import START, BucketCommit, FencedError
from sinks.commit_writer import CommitWriter
from sinks.event_log import encode_event
from tests.core_events import OPEN
from tests.support import make_settings
from tests.test_bucket_store import store, trigger


class Reports:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[tuple[str, str]]]] = []
        self.threads: set[str] = set()

    def __call__(self, commits: int, emitted: list[tuple[str, str]], seconds: float) -> None:
        assert seconds >= 0
        self.batches.append((commits, emitted))
        self.threads.add(threading.current_thread().name)


def batch(bucket: int, n: int) -> list[BucketCommit]:
    """The n-th batch of a bucket: its position moves from n-0 (START first) to n+1-0."""
    return [BucketCommit(bucket=bucket, base=f"{n}-0" if n else START, position=f"{n + 1}-0",
                         states=[("c1", f"state {n}".encode())], triggers=[trigger(n)])]


def test_batches_are_applied_in_order_and_reported_from_the_writer_thread(
        redis_client: redis.Redis, key_prefix: str) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    reports = Reports()
    writer = CommitWriter(s, reports)
    for n in range(20):
        writer.submit(batch(bucket, n))  # each starts where the one before (in flight) ends
    writer.close()
    loaded = s.load(bucket)
    assert loaded.position == "20-0" and loaded.states == {"c1": b"state 19"}
    assert reports.batches == [(1, [("welcome", "sent")])] * 20
    assert reports.threads and all(name.startswith("crmflow-commit") for name in reports.threads)
    assert redis_client.xlen(s.layout.triggers(s.layout.partition_of_bucket(bucket))) == 20


def test_a_fenced_bucket_is_raised_at_the_next_batch(redis_client: redis.Redis,
                                                     key_prefix: str) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    s.commit(batch(bucket, 0))  # another process got there first
    writer = CommitWriter(s, Reports())
    writer.submit(batch(bucket, 5))  # from a position this bucket is not at
    with pytest.raises(FencedError, match="CRMFLOW_FENCED"):
        writer.submit(batch(bucket, 6))
    writer.close()
    assert s.load(bucket).position == "1-0"


def _kill_other_connections(client: redis.Redis) -> None:
    client.client_kill_filter(_type="normal", skipme=True)  # the writer's connection too


def _forget_scripts(client: redis.Redis) -> None:
    client.script_flush()  # as after a restart: Redis keeps no scripts


@pytest.mark.parametrize("mishap", [_kill_other_connections, _forget_scripts],
                         ids=["connection lost", "script forgotten"])
def test_a_batch_that_did_not_apply_is_sent_again(
        redis_client: redis.Redis, key_prefix: str,
        mishap: Callable[[redis.Redis], None]) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    reports = Reports()
    writer = CommitWriter(s, reports)
    writer.submit(batch(bucket, 0))
    writer.flush()
    mishap(redis_client)
    writer.submit(batch(bucket, 1))  # fails on the writer's connection, then goes again
    writer.submit(batch(bucket, 2))
    writer.close()
    assert s.load(bucket).position == "3-0"
    assert [emitted for _, emitted in reports.batches] == [[("welcome", "sent")]] * 3


def test_a_resent_commit_that_moved_no_position_is_applied_once(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """Timers fired by a tick at an idle head commit with base == position: sent again
    after its reply was lost, it must not write its segment changes twice."""
    settings = make_settings(redis_url, key_prefix)
    rules = TriggerRules(policy=OPEN, segments=SegmentRules(
        lifecycle=LifecycleRules(at_risk_after=3600, churned_after=10 * 3600)))
    placed = time.time() - 1.5 * 3600
    order = Event(event_id="e1", type=EventType.ORDER_PLACED, event_time=placed,
                  received_at=placed, client_id="c1",
                  order=Order("o1", 10.0, "EUR", (Product("p1", "toys", 10.0, 1),)))
    s = store_factory(settings)
    bucket = s.layout.bucket_of("c1")
    entry = f"{int(placed * 1000)}-0"
    logic = BucketLogic(bucket, store_factory(settings), BucketConfig(rules, 0.5, 0.5),
                        DataflowMetrics.create(CollectorRegistry()))
    applied, _ = logic.on_batch([(EVENT, bucket, entry, "c1", encode_event(order))])
    s.commit(list(applied))
    fired, _ = logic.on_batch([(TICK, bucket, time.time(), entry, True)])
    [commit] = fired
    assert commit.base == commit.position and commit.segment_changes
    changes = s.layout.segment_changes(s.layout.partition_of_bucket(bucket))
    before = redis_client.xlen(changes)
    s.commit([commit])
    written = redis_client.xlen(changes)
    assert written == before + len(commit.segment_changes)
    assert s.commit([commit]) == []  # the resend: a no-op, nothing emitted again
    assert redis_client.xlen(changes) == written
