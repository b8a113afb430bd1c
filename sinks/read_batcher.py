"""The API's concurrent single-key reads sent to Redis together, in pipelines.

Under load each profile read paid redis-py's whole command path, about 35 µs of the API's
one core at 32 connections; the same reads sent as one pipeline cost about 15 µs each
(bench/README.md). A read arriving while fewer than `lanes` batches are in flight is sent
at once, alone, so an idle API adds no wait; reads arriving meanwhile queue, and go out
together as soon as a batch in flight comes back (auto-pipelining without a timer).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

LANES = 2  # batches in flight at once: one lane alone serialised reads at 4 connections
MAX_BATCH = 512  # commands per pipeline; the rest wait for the next batch

Waiter = tuple[str, str, "asyncio.Future[Any]"]


class HashReadBatcher:
    """`HGET`s of one event loop, batched while Redis is busy with earlier ones.

    Each read gets its own reply or its own error: a command error reaches only its reader,
    a lost connection every reader of that batch. A Redis Cluster client is read directly
    (a pipeline there is split by node anyway).
    """

    def __init__(self, client: aioredis.Redis, *, lanes: int = LANES) -> None:
        self._client = client
        self._lanes = lanes
        self._busy = 0
        self._queue: list[Waiter] = []
        self._tasks: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references
        self._direct = isinstance(client, aioredis.RedisCluster)
        self.pipelined = 0  # reads that went out in a batch rather than alone

    async def hget(self, key: str, field: str) -> Any:
        if self._direct:
            return await self._client.hget(key, field)
        if self._busy >= self._lanes:
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((key, field, waiter))
            return await waiter
        self._busy += 1
        try:
            return await self._client.hget(key, field)
        finally:
            self._next()

    def _next(self) -> None:
        """A lane came free: it sends what queued meanwhile, or goes idle."""
        if not self._queue:
            self._busy -= 1
            return
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Waiter]) -> None:
        self.pipelined += len(batch)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, field, _ in batch:
                    pipe.hget(key, field)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection, a timeout, or the loop's cancellation
            for _, _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, _, waiter), reply in zip(batch, replies, strict=True):
                if waiter.done():
                    continue  # its reader went away (a closed connection)
                if isinstance(reply, Exception):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
        finally:
            self._next()
