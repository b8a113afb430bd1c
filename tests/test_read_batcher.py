"""Profile reads batched while Redis is busy (sinks/read_batcher.py), on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib

import redis
import redis.asyncio as aioredis

from crmflow.redis_server import free_port
from sinks.read_batcher import HashReadBatcher


def _fill(client: redis.Redis, prefix: str, count: int) -> None:
    for n in range(count):
        client.hset(f"{prefix}:h{n % 7}", f"f{n}", f"v{n}")


def test_concurrent_reads_each_get_their_own_reply_and_share_pipelines(
        redis_url: str, redis_client: redis.Redis, key_prefix: str) -> None:
    _fill(redis_client, key_prefix, 300)

    async def read() -> tuple[list[object], int]:
        client = aioredis.Redis.from_url(redis_url)
        batcher = HashReadBatcher(client)
        try:
            # every fifth field does not exist: None, in its place
            replies = await asyncio.gather(*(
                batcher.hget(f"{key_prefix}:h{n % 7}", f"f{n}" if n % 5 else f"missing{n}")
                for n in range(300)))
            return list(replies), batcher.pipelined
        finally:
            await client.aclose()

    replies, pipelined = asyncio.run(read())
    assert replies == [f"v{n}".encode() if n % 5 else None for n in range(300)]
    assert pipelined == 299  # only the first read, sent while none was in flight, went alone


def test_one_read_alone_is_sent_at_once(redis_url: str, redis_client: redis.Redis,
                                        key_prefix: str) -> None:
    _fill(redis_client, key_prefix, 3)

    async def read() -> tuple[list[object], int]:
        client = aioredis.Redis.from_url(redis_url)
        batcher = HashReadBatcher(client)
        try:
            replies = [await batcher.hget(f"{key_prefix}:h{n}", f"f{n}") for n in range(3)]
            return replies, batcher.pipelined
        finally:
            await client.aclose()

    assert asyncio.run(read()) == ([b"v0", b"v1", b"v2"], 0)


def test_a_command_error_reaches_only_its_reader(redis_url: str, redis_client: redis.Redis,
                                                 key_prefix: str) -> None:
    _fill(redis_client, key_prefix, 50)
    redis_client.set(f"{key_prefix}:plain", "not a hash")

    async def read() -> list[object]:
        client = aioredis.Redis.from_url(redis_url)
        batcher = HashReadBatcher(client)
        try:
            keys = [(f"{key_prefix}:plain", "f") if n == 25 else (f"{key_prefix}:h{n % 7}",
                                                                  f"f{n}") for n in range(50)]
            return list(await asyncio.gather(*(batcher.hget(k, f) for k, f in keys),
                                             return_exceptions=True))
        finally:
            await client.aclose()

    replies = asyncio.run(read())
    assert isinstance(replies[25], redis.ResponseError)
    assert "WRONGTYPE" in str(replies[25])
    assert [r for n, r in enumerate(replies) if n != 25] == [
        f"v{n}".encode() for n in range(50) if n != 25]


def test_an_unreachable_redis_fails_every_reader_and_the_next_reads_too() -> None:
    async def read() -> tuple[list[BaseException | object], list[BaseException | object]]:
        client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0",
                                         socket_connect_timeout=1)
        batcher = HashReadBatcher(client)
        try:
            rounds = []
            for _ in range(2):  # the second round: nothing left waiting from the first
                rounds.append(list(await asyncio.wait_for(asyncio.gather(
                    *(batcher.hget("h", f"f{n}") for n in range(40)),
                    return_exceptions=True), timeout=20)))
            return rounds[0], rounds[1]
        finally:
            await client.aclose()

    first, second = asyncio.run(read())
    for replies in (first, second):
        assert len(replies) == 40
        assert all(isinstance(r, redis.ConnectionError) for r in replies), replies


def test_a_reader_gone_while_queued_leaves_the_others_their_replies(
        redis_url: str, redis_client: redis.Redis, key_prefix: str) -> None:
    _fill(redis_client, key_prefix, 30)

    async def read() -> list[object]:
        client = aioredis.Redis.from_url(redis_url)
        batcher = HashReadBatcher(client)
        try:
            tasks = [asyncio.create_task(batcher.hget(f"{key_prefix}:h{n % 7}", f"f{n}"))
                     for n in range(30)]
            await asyncio.sleep(0)  # every read has started: the first in flight, the rest queued
            tasks[10].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[10]
            others = [t for n, t in enumerate(tasks) if n != 10]
            return list(await asyncio.wait_for(asyncio.gather(*others), timeout=20))
        finally:
            await client.aclose()

    assert asyncio.run(read()) == [f"v{n}".encode() for n in range(30) if n != 10]
