"""The read floor: the least a FastAPI profile endpoint can do, one HGETALL per request.

Served by uvicorn with the same settings as `crmflow api`, on the same Redis.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException

PREFIX = os.environ.get("FLOOR_PREFIX", "floor")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = aioredis.Redis.from_url(os.environ["REDIS_URL"], max_connections=256)
    yield
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


@app.get("/v1/profiles/{client_id}")
async def profile(client_id: str) -> dict[str, Any]:
    fields = await app.state.redis.hgetall(f"{PREFIX}:{client_id}")
    if not fields:
        raise HTTPException(404)
    return {"client_id": client_id,
            "features": {k.decode(): v.decode() for k, v in fields.items()}}
