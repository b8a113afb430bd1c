"""The Lua scripts shipped with crmflow, loaded once from package files."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script


@cache
def lua(name: str) -> str:
    return resources.files("sinks").joinpath(f"{name}.lua").read_text(encoding="utf-8")


ScriptCall = tuple[list[str], list[Any]]  # keys, args


def run_scripts(client: redis.Redis, script: Script, calls: Sequence[ScriptCall], *,
                raise_on_error: bool = True) -> list[Any]:
    """Each call of `script`, in order: pipelined in one round trip on a single Redis; on a
    cluster, where redis-py refuses scripts in pipelines, one call after another. With
    `raise_on_error` False, a failed call's exception takes its place in the results."""
    if not isinstance(client, redis.RedisCluster):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return pipe.execute(raise_on_error=raise_on_error)
    results: list[Any] = []
    for keys, args in calls:
        try:
            results.append(script(keys=keys, args=args))
        except redis.ResponseError as exc:
            if raise_on_error:
                raise
            results.append(exc)
    return results


async def run_scripts_async(client: aioredis.Redis, script: AsyncScript,
                            calls: Sequence[ScriptCall]) -> list[Any]:
    """`run_scripts` for asyncio clients; on a cluster the calls run concurrently (they touch
    different partitions, and so different slots)."""
    if not isinstance(client, aioredis.RedisCluster):
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            results: list[Any] = await pipe.execute()
            return results
    return list(await asyncio.gather(*(script(keys=keys, args=args) for keys, args in calls)))
