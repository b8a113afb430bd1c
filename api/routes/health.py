"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisClusterException

from api.deps import ResourcesDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


def _memory_check(memory: dict[str, Any]) -> str:
    """"ok", unless Redis is at its maxmemory under a policy that refuses writes then."""
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    if limit and used >= limit and memory.get("maxmemory_policy") == "noeviction":
        return f"full: used_memory {used} >= maxmemory {limit}; writes are refused"
    return "ok"


@router.get("/readyz", responses={503: {"description": "not ready: the checks say why"}})
async def readyz(resources: ResourcesDep) -> JSONResponse:
    """Ready when Redis answers and a dataflow process has beaten its heart recently."""
    checks: dict[str, Any] = {}
    client = resources.redis
    try:
        if isinstance(client, aioredis.RedisCluster):  # every primary holds some clients
            await client.ping(target_nodes=aioredis.RedisCluster.PRIMARIES)
        else:
            await client.ping()
        checks["redis"] = "ok" if isinstance(client, aioredis.RedisCluster) else (
            _memory_check(await client.info("memory")))
        alive = await client.exists(resources.layout.heartbeat())
        checks["dataflow"] = "ok" if alive else "no heartbeat"
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        checks["redis"] = f"unavailable: {exc}"
        checks["dataflow"] = "unknown"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, resources: ResourcesDep) -> Response:
    await request.app.state.store_metrics.refresh(resources.redis, resources.layout,
                                                  await resources.segments.current())
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
