"""Redis connections built from settings (hiredis, a dependency, parses the replies).

With `redis.cluster`, the URL names any node of a Redis Cluster and the clients are cluster
clients. Every key crmflow writes together carries its partition's hash tag (sinks/keys.py),
so each script and transaction stays in one slot; a cluster client answers every command
crmflow uses as a single-node client does, which is why it is typed as one here.
"""

from __future__ import annotations

import os
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from config.settings import RedisSettings

# What a request meets when the store cannot answer now (a retry may succeed): a lost
# connection or a timeout, and on a cluster a down node or slot (a plain reply error there)
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError, OSError)

# Redis at its `maxmemory` under the `noeviction` policy refuses writes with a reply error.
# Freeing memory ends it, not a reconnect, so writers wait and retry as through an outage
# and the API answers 503 saying so (ingest's retries are de-duplicated by event id).
STORE_FULL_DETAIL = ("Redis is at its maxmemory and refuses writes; retry once memory is "
                     "freed (raise maxmemory, or lower redis.stream_retention)")


def is_store_full(reply: object) -> bool:
    """A write refused at `maxmemory`: a command's OOM reply, or a script's error wrapping it
    (`reply` may be any reply of a pipeline run without raising)."""
    return isinstance(reply, redis.exceptions.OutOfMemoryError) or (
        isinstance(reply, redis.ResponseError) and "OOM command not allowed" in str(reply))


def connection_name() -> str:
    """Every connection says which process it belongs to (visible in CLIENT LIST)."""
    return f"crmflow-{os.getpid()}"


def _url(settings: RedisSettings) -> str:
    if not settings.url:
        raise RuntimeError("redis.url is not set: start the embedded Redis first")
    return settings.url


def sync_client(settings: RedisSettings) -> redis.Redis:
    options: dict[str, Any] = {"socket_timeout": settings.socket_timeout,
                               "socket_connect_timeout": settings.socket_timeout,
                               "client_name": connection_name()}
    if settings.cluster:
        return cast(redis.Redis, redis.RedisCluster.from_url(_url(settings), **options))
    return redis.Redis.from_url(_url(settings), **options)


def async_client(settings: RedisSettings, max_connections: int = 256) -> aioredis.Redis:
    """`max_connections`: of a single Redis's pool (a cluster client's are per node, and
    unbounded); a command beyond them fails at once rather than waiting."""
    options: dict[str, Any] = {"socket_timeout": settings.socket_timeout,
                               "socket_connect_timeout": settings.socket_timeout,
                               "client_name": connection_name()}
    if settings.cluster:
        return cast(aioredis.Redis, aioredis.RedisCluster.from_url(_url(settings), **options))
    return aioredis.Redis.from_url(_url(settings), max_connections=max_connections, **options)
