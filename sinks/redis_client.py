"""Redis connections built from settings (hiredis parses replies when installed)."""

from __future__ import annotations

import os

import redis
import redis.asyncio as aioredis

from config.settings import RedisSettings


def connection_name() -> str:
    """Every connection says which process it belongs to (visible in CLIENT LIST)."""
    return f"crmflow-{os.getpid()}"


def _url(settings: RedisSettings) -> str:
    if not settings.url:
        raise RuntimeError("redis.url is not set: start the embedded Redis first")
    return settings.url


def sync_client(settings: RedisSettings) -> redis.Redis:
    return redis.Redis.from_url(_url(settings), socket_timeout=settings.socket_timeout,
                                socket_connect_timeout=settings.socket_timeout,
                                client_name=connection_name())


def async_client(settings: RedisSettings) -> aioredis.Redis:
    return aioredis.Redis.from_url(_url(settings), socket_timeout=settings.socket_timeout,
                                   socket_connect_timeout=settings.socket_timeout,
                                   max_connections=256, client_name=connection_name())
