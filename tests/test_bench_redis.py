"""The benchmark's handling of Redis's append-only file: a fill pauses the automatic
rewrites and ends with one rewrite of its own, which must not fail on a rewrite Redis
started itself (bench/run.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bench.run import aof_rewrites_paused, rewrite_aof, scratch_redis

SETTING = "auto-aof-rewrite-percentage"


@pytest.fixture(scope="module")
def server() -> Iterator[redis.Redis]:
    with scratch_redis("aof-test") as (_, _, client):  # its stop takes seconds: one for all
        yield client


@pytest.fixture
def client(server: redis.Redis) -> redis.Redis:
    rewrite_aof(server)  # the test before may have left one running
    server.flushall()
    server.config_set(SETTING, 100)
    server.config_set("auto-aof-rewrite-min-size", 64 << 20)
    return server


def _fill(client: redis.Redis, keys: int, prefix: str) -> None:
    pipe = client.pipeline(transaction=False)
    for n in range(keys):
        pipe.hset(f"{prefix}{n}", mapping={"a": "x" * 64, "b": n})
        if n % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()


def _rewrites(client: redis.Redis) -> int:
    """Forks so far (Redis 6 counts no rewrites; snapshots are off on the scratch server)."""
    return int(client.info("stats")["total_forks"])


def test_a_fill_rewrites_once_and_restores_the_setting(client: redis.Redis) -> None:
    client.config_set("auto-aof-rewrite-min-size", 1 << 20)  # the fill passes it, as at 1M
    before = _rewrites(client)
    with aof_rewrites_paused(client):
        assert client.config_get(SETTING)[SETTING] == "0"
        _fill(client, 20_000, "k")
    persistence = client.info("persistence")
    assert persistence["aof_rewrite_in_progress"] == 0
    assert persistence["aof_last_bgrewrite_status"] == "ok"
    assert _rewrites(client) == before + 1
    assert client.config_get(SETTING)[SETTING] == "100"


def test_a_rewrite_already_running_is_waited_for_not_an_error(client: redis.Redis) -> None:
    _fill(client, 50_000, "k")
    client.bgrewriteaof()  # Redis's own, as an automatic one would be
    with pytest.raises(redis.ResponseError, match="already in progress"):
        client.bgrewriteaof()  # what the harness's request met when one was running
    rewrite_aof(client)
    assert client.info("persistence")["aof_rewrite_in_progress"] == 0


def test_a_failed_fill_still_restores_the_setting(client: redis.Redis) -> None:
    with pytest.raises(RuntimeError), aof_rewrites_paused(client):
        raise RuntimeError("the fill failed")
    assert client.config_get(SETTING)[SETTING] == "100"
