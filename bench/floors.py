"""The contenders crmflow's dataflow is measured against, on the same events and keys.

- `bytewax_floor`: a bare Bytewax keyed `stateful_map` with trivial logic, in memory: what
  the engine itself costs per item, the ceiling for anything built on it.
- `naive_consumer`: what a hand-written script does: per event, read the client from
  Redis, update it, write it back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import bytewax.operators as op
import redis
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

from bench.workload import Entry


class _Discard(DynamicSink[object]):
    def build(self, step_id: str, worker_index: int, worker_count: int
              ) -> StatelessSinkPartition[object]:
        return _DiscardPartition()


class _DiscardPartition(StatelessSinkPartition[object]):
    def write_batch(self, items: list[object]) -> None:
        pass


def bytewax_floor(entries: Sequence[Entry], batch_size: int = 2000) -> float:
    """Events/s of a keyed stateful_map counting per key, items already in memory."""
    items = [(e.client_key, e.body) for e in entries]
    flow = Dataflow("floor")
    stream = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    counted = op.stateful_map("count", stream, lambda state, _: ((state or 0) + 1,) * 2)
    op.output("out", counted, _Discard())
    started = time.perf_counter()
    run_main(flow)
    return len(items) / (time.perf_counter() - started)


def naive_consumer(client: redis.Redis, entries: Sequence[Entry], prefix: str) -> float:
    """Events/s of read-modify-write per event (HGETALL, update, HSET), one at a time."""
    started = time.perf_counter()
    for entry in entries:
        key = f"{prefix}:naive:{entry.client_key}"
        current = client.hgetall(key)
        event = json.loads(entry.body)
        count = int(current.get(b"events", 0)) + 1
        update: dict[str, str | int | float] = {"events": count,
                                                "last_event_at": event["event_time"],
                                                "last_type": event["type"]}
        if event["type"] == "order_placed":
            update["orders"] = int(current.get(b"orders", 0)) + 1
            update["money"] = float(current.get(b"money", 0)) + event["order"]["total"]
        client.hset(key, mapping=update)
    return len(entries) / (time.perf_counter() - started)
