"""Erasure of a client on request (admin key): `DELETE /v1/profiles/{client_id}`.

The request becomes an event in the client's own stream, so it is applied in order: what
arrived before it is erased, what arrives after starts a fresh profile (sinks/erasure.py).
The answer waits for the dataflow a little (`wait`, default 10 s): 200 once done, else 202
with the erasure id to ask `GET /v1/erasures/{erasure_id}` about. Neither the status nor the
audit record holds the client's id; both expire (`redis.erasure_*_retention`).

An anonymous id merged into a client is refused with 409 naming the client: its history is
the client's profile now, so erasing the pointer alone would leave it there, and erasing the
client on a cookie's word could erase a shared device's first user. The caller erases the
client, which erases every anonymous id merged into it. A link still on its way when the
request was checked is refused by the dataflow alike (features/identity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Annotated, Any, cast
from urllib.parse import quote

import redis
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from api.deps import AdminKey, Resources, ResourcesDep
from api.responses import problems
from api.routes.profiles import ClientId
from features.events import ANONYMOUS_PREFIX, EventError, format_time, parse_event
from features.identity import DIRECT
from sinks.erasure import status_ttl_ms

router = APIRouter(tags=["erasure"], dependencies=[AdminKey],
                   responses=problems(400, 401, 403, 404, 422, 503))
POLL_SECONDS = 0.1


async def _status(resources: Resources, erasure_id: str) -> dict[str, Any] | None:
    layout = resources.layout
    raw = await resources.redis.get(layout.erasure_status(erasure_id))
    if raw is None:  # recorded before statuses expired, and not moved yet (sinks/erasure.py)
        raw = await resources.redis.hget(layout.legacy_erasure_status(), erasure_id)
    return None if raw is None else cast(dict[str, Any], json.loads(raw))


def _merged(client_id: str, client: str, **extra: Any) -> JSONResponse:
    """409: the anonymous id speaks for `client`, which is what to erase."""
    return JSONResponse({
        "detail": f"{client_id!r} is an anonymous id merged into client {client!r}, whose "
                  "profile holds its history: nothing was erased. Erase the client "
                  f"(DELETE /v1/profiles/{quote(client, safe='')}), which erases every "
                  "anonymous id merged into it.",
        "merged_into": client, **extra}, status_code=409)


async def _merged_into(resources: Resources, client_id: str) -> str | None:
    """The client an anonymous id was merged into (None: not merged, or not anonymous)."""
    if not client_id.startswith(ANONYMOUS_PREFIX):
        return None
    state = await resources.profiles.state(client_id)
    return None if state is None else state.merged_into


@router.delete("/v1/profiles/{client_id:path}", status_code=202,
               responses=problems(409))
async def erase_profile(client_id: ClientId, resources: ResourcesDep,
                        wait: Annotated[float, Query(ge=0, le=60, description=(
                            "seconds to wait for the dataflow to finish"))] = 10.0
                        ) -> JSONResponse:
    """Erase the client: state, features, memberships, pending timers, touch ledger,
    identity links (the anonymous ids merged into it), and its entries in the streams.
    An anonymous id merged into a client is refused (409, naming the client to erase)."""
    erasure_id = f"erasure-{uuid.uuid4().hex}"
    now = time.time()
    raw: dict[str, Any] = {"event_id": erasure_id, "type": "erasure_requested",
                           "event_time": now, "received_at": now,
                           "properties": {DIRECT: True}}
    if client_id.startswith(ANONYMOUS_PREFIX):
        raw["anonymous_id"] = client_id.removeprefix(ANONYMOUS_PREFIX)
    else:
        raw["client_id"] = client_id
    try:
        event = parse_event(raw)
    except EventError as exc:
        raise HTTPException(400, detail=str(exc)) from None
    client = await _merged_into(resources, client_id)
    if client is not None:
        return _merged(client_id, client)
    pending = {"erasure_id": erasure_id, "status": "pending", "requested_at": format_time(now)}
    status_key = resources.layout.erasure_status(erasure_id)
    # Written before the event, so the dataflow's "done" cannot be overwritten by it; taken
    # back if the event was not stored (a full backlog, an outage): no orphaned pending.
    await resources.redis.set(status_key, json.dumps(pending), px=status_ttl_ms(
        resources.settings.redis.erasure_status_retention, now, now))
    try:
        await resources.event_log.append([event])
    except BaseException:
        with contextlib.suppress(redis.RedisError, OSError):
            await resources.redis.delete(status_key)
        raise
    deadline = time.monotonic() + wait
    while True:
        status = await _status(resources, erasure_id)
        if status is not None and status["status"] == "done":
            return JSONResponse(status, status_code=200)
        if status is not None and status["status"] == "refused":
            # merged meanwhile: a link that was on its way when checked above
            client = await _merged_into(resources, client_id)
            if client is not None:
                return _merged(client_id, client, erasure_id=erasure_id)
            return JSONResponse({"detail": status["reason"], **status}, status_code=409)
        if time.monotonic() >= deadline:
            return JSONResponse(pending, status_code=202)
        await asyncio.sleep(POLL_SECONDS)


@router.get("/v1/erasures/{erasure_id}")
async def get_erasure(erasure_id: str, resources: ResourcesDep) -> JSONResponse:
    """An erasure's status: pending, done with what was removed, or refused with why (an
    anonymous id merged into a client). Kept for `redis.erasure_status_retention`."""
    status = await _status(resources, erasure_id)
    if status is None:
        raise HTTPException(404, detail=f"unknown erasure {erasure_id!r}")
    return JSONResponse(status)
