"""Store gauges for Prometheus: clients, segment sizes, Redis memory.

Refreshed when `/metrics` is scraped, at most every `min_interval` seconds, in one
pipelined round trip: an HLEN per bucket hash, a ZCARD per segment and partition (the
names are known from the configuration), and INFO memory. Nothing scans the keyspace.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Gauge
from redis.exceptions import RedisClusterException, RedisError

from features.rules import SegmentRules
from features.segments import all_segment_names
from sinks.keys import KeyLayout

log = logging.getLogger(__name__)


class StoreMetrics:
    def __init__(self, registry: CollectorRegistry, *, min_interval: float = 10.0) -> None:
        self._min_interval = min_interval
        self._refreshed = -float("inf")
        self.clients = Gauge("crmflow_store_clients",
                             "Client records in the store (anonymous and merged ones included)",
                             registry=registry)
        self.segment_size = Gauge("crmflow_segment_members", "Members of a segment",
                                  ["segment"], registry=registry)
        self.redis_memory = Gauge("crmflow_redis_used_memory_bytes",
                                  "Memory Redis reports in use (INFO memory; a cluster's "
                                  "primaries summed)",
                                  registry=registry)

    async def refresh(self, client: aioredis.Redis, layout: KeyLayout,
                      rules: SegmentRules) -> None:
        now = time.monotonic()
        if now - self._refreshed < self._min_interval:
            return
        self._refreshed = now
        names = all_segment_names(rules)
        cluster = isinstance(client, aioredis.RedisCluster)
        try:
            async with client.pipeline(transaction=False) as pipe:
                for bucket in range(layout.buckets):
                    pipe.hlen(layout.state(bucket))
                for name in names:
                    for partition in range(layout.partitions):
                        pipe.zcard(layout.segment_members(partition, name))
                if not cluster:  # a cluster pipeline refuses INFO (it names no key)
                    pipe.info("memory")
                results: list[Any] = await pipe.execute()
            if cluster:  # the store's memory is that of every primary
                per_node = await client.info(
                    "memory", target_nodes=aioredis.RedisCluster.PRIMARIES)
                used = sum(int(info.get("used_memory", 0)) for info in per_node.values())
            else:
                used = int(results.pop().get("used_memory", 0))
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("store metrics not refreshed: %s", exc)  # an outage: keep the last
            return
        counts, sizes = results[:layout.buckets], results[layout.buckets:]
        self.clients.set(sum(counts))
        width = layout.partitions
        for index, name in enumerate(names):
            self.segment_size.labels(name).set(sum(sizes[index * width:(index + 1) * width]))
        self.redis_memory.set(used)
