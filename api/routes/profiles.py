"""Profile reads for recommendation and personalization services (Bearer read key)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import ReadKey, ResourcesDep
from features.profile import profile_document
from sinks.profile_store import ProfileStore

router = APIRouter(prefix="/v1/profiles", tags=["profiles"], dependencies=[ReadKey])

ClientId = Annotated[str, Path(min_length=1, max_length=205,
                               description="client id, or anon:<anonymous id>")]


def _not_found(resources: ResourcesDep, route: str, client_id: str) -> HTTPException:
    resources.metrics.not_found.labels(route).inc()
    return HTTPException(404, detail=f"unknown client {client_id!r}")


@router.get("/{client_id}")
async def get_profile(client_id: ClientId, resources: ResourcesDep) -> dict[str, Any]:
    """The client's current features (time-dependent ones computed now) and traits."""
    state = await ProfileStore(resources.redis, resources.layout).state(client_id)
    if state is None:
        raise _not_found(resources, "/v1/profiles/{client_id}", client_id)
    return profile_document(client_id, state, time.time())


@router.get("/{client_id}/touches")
async def get_touches(client_id: ClientId, resources: ResourcesDep,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Triggers raised for the client, newest first."""
    touches = await ProfileStore(resources.redis, resources.layout).touches(client_id, limit)
    if touches is None:
        raise _not_found(resources, "/v1/profiles/{client_id}/touches", client_id)
    return {"client_id": client_id, "touches": touches}
