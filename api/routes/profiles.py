"""Profile reads for recommendation and personalization services (Bearer read key)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import ReadAccess, Resources
from api.responses import FastJSONResponse
from features.profile import profile_document
from features.rules import DAY
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


PROFILE_ROUTE = "/v1/profiles/{client_id}"


async def read_profile(resources: Resources, client_id: str) -> dict[str, Any] | None:
    """The profile document, or None for an unknown client: shared by the route below and
    by the ASGI fast path (api/fast_reads.py), so the two cannot drift apart."""
    state = await ProfileStore(resources.redis, resources.layout).state(client_id)
    if state is None:
        resources.metrics.not_found.labels(PROFILE_ROUTE).inc()
        return None
    settings = resources.settings
    return profile_document(
        client_id, state, time.time(),
        churn_after_days=settings.triggers.churn_winback.delay / DAY,
        loyal_after_orders=settings.policy.loyal_after_orders)


@router.get("/{client_id:path}", response_class=FastJSONResponse)
async def get_profile(client_id: str, resources: ReadAccess) -> FastJSONResponse:
    """The client's current features (time-dependent ones computed now) and traits.

    Served by the fast path in api/fast_reads.py unless `api.fast_reads` is off; this route
    documents it and answers when it is.
    """
    document = await read_profile(resources, client_id)
    if document is None:
        raise HTTPException(404, detail=f"unknown client {client_id!r}")
    return FastJSONResponse(document)
