"""The dataflow's garbage-collector policy (dataflows/heap.py)."""

from __future__ import annotations

import gc
import time
import weakref

import orjson
from prometheus_client import CollectorRegistry

from bench.workload import events
from dataflows import heap
from dataflows.buckets import EVENT, BucketConfig, BucketLogic, Item
from dataflows.flow import store_factory
from dataflows.metrics import DataflowMetrics
from features.rules import DAY
from tests.support import make_settings


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_survivors_are_frozen_young_garbage_collected_first_and_refcount_still_frees() -> None:
    try:
        kept = [Node() for _ in range(100)]
        dropped = _cycle()  # a cycle made and dropped within the batch
        heap.freeze_survivors()
        assert dropped() is None
        assert gc.get_freeze_count() >= len(kept)
        assert not any(o is kept[0] for o in gc.get_objects())  # out of the collector's sight
        # a frozen object without cycles still goes when its last reference does
        probe = weakref.ref(kept[0])
        del kept[0]
        assert probe() is None
        # a cycle born after the freeze is still collected
        later = _cycle()
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()


def test_a_dataflow_leaves_next_to_no_cyclic_garbage_behind_its_freezes(
        redis_url: str, key_prefix: str) -> None:
    """Batches of the benchmark's event mix (with malformed entries among them) through
    the buckets, committed: the cycles frozen and then dropped are what the per-batch
    freeze leaks. A per-event leak would count thousands."""
    settings = make_settings(redis_url, key_prefix)
    store = store_factory(settings)
    config = BucketConfig(rules=settings.trigger_rules(), offset_flush_interval=1.0,
                          allowed_lateness=settings.dataflow.allowed_lateness)
    metrics = DataflowMetrics.create(CollectorRegistry())
    now = time.time()
    entries = list(events(3_000, 300, start=now - DAY, span=DAY, received_at=now))
    logics: dict[int, BucketLogic] = {}
    gc.collect()
    gc.unfreeze()
    gc.collect()
    try:
        for first in range(0, len(entries), 500):
            batches: dict[int, list[Item]] = {}
            for n, entry in enumerate(entries[first:first + 500], start=first):
                bucket = store.layout.bucket_of(entry.client_key)
                body = entry.body if n % 50 else b'{"type": "order_placed"}'  # a dead letter
                batches.setdefault(bucket, []).append(
                    (EVENT, bucket, f"{int(orjson.loads(entry.body)['event_time'] * 1000)}-{n}",
                     entry.client_key, body))
            for bucket, items in batches.items():
                if bucket not in logics:
                    logics[bucket] = BucketLogic(bucket, store, config, metrics)
                commits, _ = logics[bucket].on_batch(items)
                store.commit(list(commits))
        gc.collect()  # the garbage nothing froze
        gc.unfreeze()
        leaked = gc.collect()
    finally:
        gc.unfreeze()
    assert leaked < 100, f"{leaked} objects in cycles were frozen and then dropped"


def test_objects_made_on_arrival_are_frozen_and_the_collector_is_restored() -> None:
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            with heap.frozen_on_arrival():
                assert not gc.isenabled()  # no full pass walks the states as they load
                loaded = Node()
                assert any(o is loaded for o in gc.get_objects())
            assert gc.isenabled() is enabled
            assert not any(o is loaded for o in gc.get_objects())  # frozen: out of sight
    finally:
        gc.enable()
        gc.unfreeze()
