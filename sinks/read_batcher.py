"""The API's concurrent single-key reads sent to Redis together, in pipelines.

Under load each profile read paid redis-py's whole command path, about 35 µs of the API's
one core at 32 connections; the same reads sent in one pipeline cost about 15 µs each
(bench/README.md). A read arriving while no other is in flight is sent at once, alone, so
an idle API adds nothing. Reads arriving while others are in flight queue until the end of
the event loop's current iteration, and the queue goes out as one pipeline: they wait for
no earlier reply, only for the requests the loop is already handling (auto-pipelining, as
ioredis does it). Waiting for a reply instead (a bound on batches in flight) gained a little
more at 32 connections and lost a tenth at 4, where the API is not busy and every wait is
a request's latency.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
import redis.asyncio as aioredis

MAX_BATCH = 512  # commands per pipeline: a larger queue goes out in several

Waiter = tuple[str, str, "asyncio.Future[Any]"]


class HashReadBatcher:
    """`HGET`s of one event loop, batched while Redis is busy with earlier ones.

    Each read gets its own reply or its own error: a command error reaches only its reader,
    a lost connection every reader of that batch. A Redis Cluster client is read directly
    (a pipeline there is split by node anyway).
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._in_flight = 0  # reads sent and not answered yet
        self._queue: list[Waiter] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references
        self._direct = isinstance(client, aioredis.RedisCluster)
        self.pipelined = 0  # reads that went out in a batch rather than alone

    async def hget(self, key: str, field: str) -> Any:
        if self._direct or self._in_flight == 0:
            self._in_flight += 1
            try:
                return await self._client.hget(key, field)
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._queue.append((key, field, waiter))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await waiter

    def _flush(self) -> None:
        """At the end of the loop's iteration: what queued meanwhile goes out."""
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queue), MAX_BATCH):
            task = loop.create_task(self._send(queue[start:start + MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Waiter]) -> None:
        self._in_flight += len(batch)
        try:
            replies = await self._replies(batch)
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
            self._in_flight -= len(batch)

    async def _replies(self, batch: list[Waiter]) -> list[Any]:
        """One reply (or error) per read; a read queued alone is sent alone, which costs
        less than a pipeline of one."""
        if len(batch) == 1:
            key, field, _ = batch[0]
            try:
                return [await self._client.hget(key, field)]
            except redis.ResponseError as exc:
                return [exc]
        self.pipelined += len(batch)
        async with self._client.pipeline(transaction=False) as pipe:
            for key, field, _ in batch:
                pipe.hget(key, field)
            return list(await pipe.execute(raise_on_error=False))
