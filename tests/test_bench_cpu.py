"""The benchmark's CPU accounting (bench/dataflow.py): Redis's use between two snapshots,
the producers' appends measured apart and cleaned up, and the ceiling Redis alone sets."""

from __future__ import annotations

import random
import time

import redis

from bench.dataflow import RedisUse, _appending, redis_bound
from bench.run import settings_for
from bench.workload import entry_list, events
from sinks.keys import KeyLayout


def test_a_difference_counts_the_commands_run_between_two_snapshots(
        redis_client: redis.Redis, key_prefix: str) -> None:
    before = RedisUse.now(redis_client)
    pipe = redis_client.pipeline(transaction=False)
    for n in range(500):
        pipe.hset(f"{key_prefix}:h{n}", "f", n)
    pipe.execute()
    spent = RedisUse.now(redis_client) - before
    calls, usec = spent.commands["hset"]
    assert calls >= 500
    assert usec > 0
    assert spent.cpu >= 0
    nothing = spent - spent
    assert nothing.cpu == 0
    assert set(nothing.commands.values()) == {(0, 0)}


def test_the_appends_are_measured_into_scratch_streams_that_are_deleted_after(
        redis_client: redis.Redis, redis_url: str) -> None:
    size = random.randrange(10**9)  # the scratch streams' prefix, unique to this test
    now = time.time()
    entries = entry_list(events(2_000, 100, start=now - 3600, span=3600, received_at=now))
    spent = _appending(redis_client, redis_url, size, entries)
    layout = KeyLayout.from_settings(settings_for(redis_url, f"appendcost{size}"))
    assert not any(redis_client.exists(stream) for stream in layout.all_event_streams())
    assert spent.commands["xadd"][0] >= len(entries)  # every entry appended, then counted
    assert spent.cpu >= 0


def test_the_busiest_commands_come_first_an_event_each() -> None:
    use = RedisUse(1.0, {"hset": (30, 600), "xadd": (10, 900), "ping": (5, 0),
                         "zadd": (20, 100)})
    assert use.per_event(10, top=2) == {"xadd": {"calls": 1.0, "us": 90.0},
                                        "hset": {"calls": 3.0, "us": 60.0}}
    assert "ping" not in use.per_event(10)  # no time spent: not listed


def test_the_ceiling_is_a_second_over_redis_s_microseconds_an_event_appends_included(
        ) -> None:
    assert redis_bound({"redis_cpu_us_per_event": 15.0,
                        "redis_append_cpu_us_per_event": 5.0}) == 50_000
    assert redis_bound({"redis_cpu_us_per_event": 0.0,
                        "redis_append_cpu_us_per_event": 0.0}) == 0
