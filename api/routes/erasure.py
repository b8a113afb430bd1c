"""Erasure of a client on request (admin key): `DELETE /v1/profiles/{client_id}`.

The request becomes an event in the client's own stream, so it is applied in order: what
arrived before it is erased, what arrives after starts a fresh profile (sinks/erasure.py).
The answer waits for the dataflow a little (`wait`, default 10 s): 200 once done, else 202
with the erasure id to ask `GET /v1/erasures/{erasure_id}` about. Neither the status nor the
audit record holds the client's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Annotated, Any, cast

import redis
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from api.deps import AdminKey, ResourcesDep
from api.responses import problems
from api.routes.profiles import ClientId
from features.events import ANONYMOUS_PREFIX, EventError, format_time, parse_event

router = APIRouter(tags=["erasure"], dependencies=[AdminKey],
                   responses=problems(400, 401, 403, 404, 422, 503))
POLL_SECONDS = 0.1


async def _status(resources: ResourcesDep, erasure_id: str) -> dict[str, Any] | None:
    raw = await resources.redis.hget(resources.layout.erasure_status(), erasure_id)
    return None if raw is None else cast(dict[str, Any], json.loads(raw))


@router.delete("/v1/profiles/{client_id:path}", status_code=202)
async def erase_profile(client_id: ClientId, resources: ResourcesDep,
                        wait: Annotated[float, Query(ge=0, le=60, description=(
                            "seconds to wait for the dataflow to finish"))] = 10.0
                        ) -> JSONResponse:
    """Erase the client: state, features, memberships, pending timers, touch ledger,
    identity links (the anonymous ids merged into it), and its entries in the streams."""
    erasure_id = f"erasure-{uuid.uuid4().hex}"
    now = time.time()
    raw: dict[str, Any] = {"event_id": erasure_id, "type": "erasure_requested",
                           "event_time": now, "received_at": now}
    if client_id.startswith(ANONYMOUS_PREFIX):
        raw["anonymous_id"] = client_id.removeprefix(ANONYMOUS_PREFIX)
    else:
        raw["client_id"] = client_id
    try:
        event = parse_event(raw)
    except EventError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    pending = {"erasure_id": erasure_id, "status": "pending", "requested_at": format_time(now)}
    # Written before the event, so the dataflow's "done" cannot be overwritten by it; taken
    # back if the event was not stored (a full backlog, an outage): no orphaned pending.
    await resources.redis.hset(resources.layout.erasure_status(), erasure_id,
                               json.dumps(pending))
    try:
        await resources.event_log.append([event])
    except BaseException:
        with contextlib.suppress(redis.RedisError, OSError):
            await resources.redis.hdel(resources.layout.erasure_status(), erasure_id)
        raise
    deadline = time.monotonic() + wait
    while True:
        status = await _status(resources, erasure_id)
        if status is not None and status["status"] == "done":
            return JSONResponse(status, status_code=200)
        if time.monotonic() >= deadline:
            return JSONResponse(pending, status_code=202)
        await asyncio.sleep(POLL_SECONDS)


@router.get("/v1/erasures/{erasure_id}")
async def get_erasure(erasure_id: str, resources: ResourcesDep) -> JSONResponse:
    """An erasure's status: pending, or done with what was removed."""
    status = await _status(resources, erasure_id)
    if status is None:
        raise HTTPException(404, detail=f"unknown erasure {erasure_id!r}")
    return JSONResponse(status)
