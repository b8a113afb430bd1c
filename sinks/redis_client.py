"""Redis connections built from settings (hiredis parses replies when installed)."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from config.settings import RedisSettings


def _url(settings: RedisSettings) -> str:
    if not settings.url:
        raise RuntimeError("redis.url is not set: start the embedded Redis first")
    return settings.url


def sync_client(settings: RedisSettings) -> redis.Redis:
    return redis.Redis.from_url(_url(settings), socket_timeout=settings.socket_timeout,
                                socket_connect_timeout=settings.socket_timeout)


def async_client(settings: RedisSettings) -> aioredis.Redis:
    return aioredis.Redis.from_url(_url(settings), socket_timeout=settings.socket_timeout,
                                   socket_connect_timeout=settings.socket_timeout,
                                   max_connections=256)
