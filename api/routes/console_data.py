"""The reads behind the web console: who am I, activity per minute, the RFM map, client
lookup and the active rules. Each is a bounded number of key reads; none loads clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import Grant, ReadAccess
from api.responses import FastJSONResponse, problems
from api.routes.profiles import resolve
from api.routes.touches import can_record
from api.rules_table import rules_sections
from features.events import format_time
from features.lookup import query_prefixes
from features.segments import SCORES, rfm_cell_name
from sinks import console_store, rfm_index
from sinks.console_store import Match
from sinks.segment_store import MAX_CURSOR_LENGTH, BadCursor, SegmentStore

router = APIRouter(prefix="/v1", tags=["console"], responses=problems(401, 403, 422, 503))

MONEY_SAMPLE = 200  # members per RFM cell whose money is read for its average
Score = Annotated[int, Path(ge=1, le=5, description="a score, 1 to 5")]


@router.get("/me", response_class=FastJSONResponse)
async def me(resources: ReadAccess, grant: Grant) -> FastJSONResponse:
    """What the presented key may do: its scope, its point, whether it records touches."""
    return FastJSONResponse({"scope": grant.scope, "point": grant.point,
                             "can_record_touches": can_record(grant)})


@router.get("/activity", response_class=FastJSONResponse)
async def activity(resources: ReadAccess, grant: Grant,
                   minutes: Annotated[int, Query(ge=1, le=180)] = 60) -> FastJSONResponse:
    """Events applied and triggers sent per minute, by type, for the last `minutes`
    minutes by the arrival clock (a point's key: its clients' only)."""
    found = await console_store.activity(resources.redis, resources.layout, time.time(),
                                         minutes, grant.point)
    return FastJSONResponse({"minutes": [
        {"minute": format_time(m.start), "events": m.events, "triggers": m.triggers,
         "decisions": m.decisions} for m in found]})


@router.get("/rfm/map", response_class=FastJSONResponse)
async def rfm_map(resources: ReadAccess, grant: Grant) -> FastJSONResponse:
    """Buyers by recency score x frequency score, with each cell's average money: exact
    for a cell of at most 200 clients, else the mean of a random sample of 200."""
    model = await rfm_index.load_model_async(resources.redis, resources.layout)
    store = SegmentStore(resources.redis, resources.layout, grant.point)

    async def cell(r: int, f: int) -> dict[str, Any]:
        sample = await store.sample(rfm_cell_name(r, f), MONEY_SAMPLE)
        money = await resources.redis.zmscore(resources.layout.rfm_values("m"),
                                              sample.members) if sample.members else []
        known = [float(value) for value in money if value is not None]
        return {"r": r, "f": f, "clients": sample.size,
                "average_money": round(sum(known) / len(known), 2) if known else None,
                "money_sample": len(known), "money_exact": sample.whole}

    cells = await asyncio.gather(*(cell(r, f) for r in SCORES for f in SCORES))
    return FastJSONResponse({  # a point's key sees its own clients, not all buyers' count
        "model": None if model is None or model.empty else {
            "mode": model.mode, "computed_at": format_time(model.computed_at),
            "population": model.population if grant.point is None else None},
        "clients": sum(cell["clients"] for cell in cells), "cells": cells})


@router.get("/rfm/map/cells/{r}/{f}/members", response_class=FastJSONResponse)
async def rfm_cell_members(r: Score, f: Score, resources: ReadAccess, grant: Grant,
                           cursor: Annotated[str | None,
                                             Query(max_length=MAX_CURSOR_LENGTH)] = None,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100
                           ) -> FastJSONResponse:
    """A page of the clients of one RFM map cell; pass `next_cursor` back for the next."""
    try:
        page = await SegmentStore(resources.redis, resources.layout, grant.point).page(
            rfm_cell_name(r, f), cursor, limit)
    except BadCursor as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return FastJSONResponse({"r": r, "f": f, "members": page.members,
                             "next_cursor": page.next_cursor})


@router.get("/lookup", response_class=FastJSONResponse)
async def lookup(resources: ReadAccess, grant: Grant,
                 q: Annotated[str, Query(min_length=1, max_length=200,
                                         description="a client id, an email or a phone "
                                                     "number, or the start of one")],
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> FastJSONResponse:
    """Clients by id (exact), email or phone (normalised; a prefix finds all that start
    so). A point's key finds its own clients only, looking through a bounded part of the
    index: `complete` is false when more of its clients may match (type more)."""
    query = q.strip()
    if not query:
        raise HTTPException(422, detail="q: give a client id, an email or a phone number")
    clients: list[dict[str, str]] = []
    found = await resolve(resources, query, grant)
    if found is not None:
        clients.append({"client_id": found[0], "matched": "client_id", "value": query})

    async def own_point(matches: list[Match]) -> list[Match]:
        """A point's key: only its clients, filtered before the limit is applied."""
        if not matches:
            return matches
        states = await resources.profiles.states(sorted({m.client_id for m in matches}))
        return [m for m in matches
                if m.client_id in states and grant.sees(states[m.client_id])]

    found_by_value = await console_store.lookup(
        resources.redis, resources.layout, query_prefixes(query), limit,
        keep=own_point if grant.point is not None else None)
    listed = {c["client_id"] for c in clients}
    for match in found_by_value.matches:
        if match.client_id not in listed:
            listed.add(match.client_id)
            clients.append({"client_id": match.client_id, "matched": match.matched,
                            "value": match.value})
    return FastJSONResponse({"query": q, "clients": clients[:limit],
                             "complete": found_by_value.complete})


@router.get("/rules", response_class=FastJSONResponse)
async def rules(resources: ReadAccess) -> FastJSONResponse:
    """The active trigger, policy, lifecycle, RFM and segment configuration, as tables."""
    return FastJSONResponse({"sections": rules_sections(resources.settings)})
