"""Profile reads for recommendation and personalization services (Bearer read key)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import ReadAccess, Resources
from api.responses import FastJSONResponse
from features.profile import DAY, profile_document
from sinks.profile_store import ProfileStore

router = APIRouter(prefix="/v1/profiles", tags=["profiles"])

ClientId = Annotated[str, Path(min_length=1, max_length=205,
                               description="client id, or anon:<anonymous id>")]


def _not_found(resources: Resources, route: str, client_id: str) -> HTTPException:
    resources.metrics.not_found.labels(route).inc()
    return HTTPException(404, detail=f"unknown client {client_id!r}")


# Client ids may contain '/': the path converter takes them whole. The more specific
# route comes first, or the profile route would swallow '.../touches'.
@router.get("/{client_id:path}/touches", response_class=FastJSONResponse)
async def get_touches(client_id: str, resources: ReadAccess,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> FastJSONResponse:
    """The client's touch ledger, newest first: trigger decisions and manual touches."""
    touches = await ProfileStore(resources.redis, resources.layout).touches(client_id, limit)
    if touches is None:
        raise _not_found(resources, "/v1/profiles/{client_id}/touches", client_id)
    return FastJSONResponse({"client_id": client_id, "touches": touches})


@router.get("/{client_id:path}", response_class=FastJSONResponse)
async def get_profile(client_id: str, resources: ReadAccess) -> FastJSONResponse:
    """The client's current features (time-dependent ones computed now) and traits."""
    state = await ProfileStore(resources.redis, resources.layout).state(client_id)
    if state is None:
        raise _not_found(resources, "/v1/profiles/{client_id}", client_id)
    lifecycle = resources.settings
    return FastJSONResponse(profile_document(
        client_id, state, time.time(),
        churn_after_days=lifecycle.triggers.churn_winback.delay / DAY,
        loyal_after_orders=lifecycle.policy.loyal_after_orders))
