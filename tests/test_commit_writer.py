"""The commit writer against a real Redis: batches applied in order and reported from its
thread; fencing raised when its batch is settled, and nothing sent after it; a lost
connection or a forgotten script mended on the writer thread at once (no later batch
needed), the batches behind it applied after it, each applied and reported once."""

from __future__ import annotations

import dataclasses
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
from sinks.bucket_store import START, BucketCommit, BucketStore, FencedError
from sinks.commit_writer import IN_FLIGHT, CommitWriter
from sinks.event_log import encode_event
from tests.core_events import OPEN
from tests.support import make_settings, wait_for
from tests.test_bucket_store import store, trigger


class Reports:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[tuple[str, str]]]] = []
        self.threads: set[str] = set()

    def __call__(self, commits: int, emitted: list[tuple[str, str]], seconds: float) -> None:
        assert seconds >= 0
        self.batches.append((commits, emitted))
        self.threads.add(threading.current_thread().name)


DEPTHS = sorted({1, IN_FLIGHT, 3})  # batches in flight


def batch(bucket: int, n: int) -> list[BucketCommit]:
    """The n-th batch of a bucket: its position moves from n-0 (START first) to n+1-0."""
    return [BucketCommit(bucket=bucket, base=f"{n}-0" if n else START, position=f"{n + 1}-0",
                         states=[("c1", f"state {n}".encode())], triggers=[trigger(n)])]


def test_at_least_one_batch_is_in_flight(redis_client: redis.Redis, key_prefix: str) -> None:
    with pytest.raises(ValueError, match="in_flight must be at least 1, not 0"):
        CommitWriter(store(redis_client, key_prefix), Reports(), in_flight=0)


@pytest.mark.parametrize("depth", DEPTHS)
def test_batches_are_applied_in_order_and_reported_from_the_writer_thread(
        redis_client: redis.Redis, key_prefix: str, depth: int) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    reports = Reports()
    writer = CommitWriter(s, reports, in_flight=depth)
    for n in range(20):
        writer.submit(batch(bucket, n))  # each starts where the ones before (in flight) end
    writer.close()
    loaded = s.load(bucket)
    assert loaded.position == "20-0" and loaded.states == {"c1": b"state 19"}
    assert reports.batches == [(1, [("welcome", "sent")])] * 20
    assert reports.threads and all(name.startswith("crmflow-commit") for name in reports.threads)
    assert redis_client.xlen(s.layout.triggers(s.layout.partition_of_bucket(bucket))) == 20


def _kill_other_connections(client: redis.Redis) -> None:
    client.client_kill_filter(_type="normal", skipme=True)  # the writer's connection too


def _forget_scripts(client: redis.Redis) -> None:
    client.script_flush()  # as after a restart: Redis keeps no scripts


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("found", ["at once", "when sending again"])
def test_a_fenced_bucket_is_raised_and_nothing_after_it_is_sent(
        redis_client: redis.Redis, key_prefix: str, depth: int, found: str) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    other = next(b for b in range(s.layout.buckets) if b != bucket)
    s.commit(batch(bucket, 0))  # another process got there first
    if found == "when sending again":
        _forget_scripts(redis_client)  # refused for the script first, then fenced
    writer = CommitWriter(s, Reports(), in_flight=depth)
    writer.submit(batch(bucket, 5))  # from a position this bucket is not at
    with pytest.raises(FencedError, match="CRMFLOW_FENCED"):
        for n in range(depth):  # the last one needs the fenced batch's place
            writer.submit(with_rfm(batch(other, n), "c9", orders=1))
    writer.close()
    assert s.load(bucket).position == "1-0"
    assert s.load(other).position == START  # the writer sent nothing after the failure
    assert indexed_orders(redis_client, s, "c9") is None  # nor wrote anything of theirs


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("mishap", [_kill_other_connections, _forget_scripts],
                         ids=["connection lost", "script forgotten"])
def test_a_batch_that_did_not_apply_is_sent_again_with_those_after_it(
        redis_client: redis.Redis, key_prefix: str,
        mishap: Callable[[redis.Redis], None], depth: int) -> None:
    """The batches in flight behind the failed one start from positions it did not move:
    sent as they were, they would be refused as fenced."""
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    reports = Reports()
    writer = CommitWriter(s, reports, in_flight=depth)
    writer.submit(batch(bucket, 0))
    writer.flush()
    mishap(redis_client)
    for n in range(1, 6):  # the first fails on the writer's connection, then goes again
        writer.submit(batch(bucket, n))
    writer.close()
    assert s.load(bucket).position == "6-0"
    assert s.load(bucket).states == {"c1": b"state 5"}
    assert [emitted for _, emitted in reports.batches] == [[("welcome", "sent")]] * 6
    assert sum(commits for commits, _ in reports.batches) == 6  # each reported once


@pytest.mark.parametrize("mishap", [_kill_other_connections, _forget_scripts],
                         ids=["connection lost", "script forgotten"])
def test_a_batch_that_did_not_apply_goes_again_without_waiting_for_another(
        redis_client: redis.Redis, key_prefix: str,
        mishap: Callable[[redis.Redis], None]) -> None:
    """An idle dataflow may submit nothing more: the last batch must not wait for one."""
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    reports = Reports()
    writer = CommitWriter(s, reports)
    writer.submit(batch(bucket, 0))
    writer.flush()
    mishap(redis_client)
    writer.submit(batch(bucket, 1))
    wait_for(lambda: s.load(bucket).position == "2-0", 10, "the batch applied, unflushed")
    wait_for(lambda: len(reports.batches) == 2, 10, "the batch reported, unflushed")
    assert all(name.startswith("crmflow-commit") for name in reports.threads)
    writer.close()


def with_rfm(commits: list[BucketCommit], client: str, orders: int) -> list[BucketCommit]:
    """The batch, its first commit also indexing `client` as a buyer of `orders` orders."""
    first, *rest = commits
    return [dataclasses.replace(first, rfm_values=[(client, (1_700_000_000.0, orders, 9.0))]),
            *rest]


def indexed_orders(client: redis.Redis, s: BucketStore, client_key: str) -> float | None:
    return client.zscore(s.layout.rfm_values("f"), client_key)


@pytest.mark.parametrize("depth", DEPTHS)
def test_writes_outside_the_bucket_follow_the_batches_order_through_a_resend(
        redis_client: redis.Redis, key_prefix: str, depth: int) -> None:
    """They are written again with the batch sent again (what a crash of Redis lost of them
    comes back), so a later batch's must not have been written before: the RFM index
    would be left with the older values."""
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    writer = CommitWriter(s, Reports(), in_flight=depth)
    writer.submit(batch(bucket, 0))
    writer.flush()
    _forget_scripts(redis_client)
    for n in range(1, 4):  # the first is refused for the script, then sent again
        writer.submit(with_rfm(batch(bucket, n), "c9", orders=n))
    writer.close()
    assert s.load(bucket).position == "4-0"
    assert indexed_orders(redis_client, s, "c9") == 3


def test_a_failure_to_report_stops_the_writer(redis_client: redis.Redis,
                                              key_prefix: str) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")

    def report(commits: int, emitted: list[tuple[str, str]], seconds: float) -> None:
        raise RuntimeError("metrics broke")

    writer = CommitWriter(s, report)
    with pytest.raises(RuntimeError, match="metrics broke"):
        for n in range(3):  # the first is applied, then its report fails
            writer.submit(batch(bucket, n))
    writer.close()
    assert s.load(bucket).position == "1-0"  # nothing written after it


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
