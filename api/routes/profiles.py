"""Profile reads for recommendation and personalization services (Bearer read key)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import Grant, ReadAccess, ReadGrant, Resources
from api.responses import FastJSONResponse, problems
from features.events import format_time, parse_time
from features.profile import profile_document
from features.segments import public_segments
from features.state import ClientState
from sinks import console_store

router = APIRouter(prefix="/v1/profiles", tags=["profiles"],
                   responses=problems(401, 404, 422, 503))

ClientId = Annotated[str, Path(min_length=1, max_length=205,
                               description="client id, or anon:<anonymous id>")]


def _not_found(resources: Resources, route: str, client_id: str) -> HTTPException:
    resources.metrics.not_found.labels(route).inc()
    return HTTPException(404, detail=f"unknown client {client_id!r}")


# What a client's path may end with besides its id (the fast path leaves these alone).
SUBRESOURCES = ("/touches", "/segments", "/timeline")


# Client ids may contain '/': the path converter takes them whole. The more specific
# routes come first, or the profile route would swallow '.../touches' and '.../segments'.
@router.get("/{client_id:path}/touches", response_class=FastJSONResponse)
async def get_touches(client_id: str, resources: ReadAccess, grant: Grant,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> FastJSONResponse:
    """The client's touch ledger, newest first: trigger decisions and manual touches,
    with those of the anonymous ids merged into it (each touch's `client_id` is the id it
    was decided for). An anonymous id merged into a client answers that client's ledger
    (`requested_id` is the id asked for), as the profile does."""
    found = await resolve(resources, client_id, grant)
    touches = None if found is None else await resources.profiles.touches(
        found[0], limit, _merged_ids(found[1]))
    if found is None or touches is None:
        raise _not_found(resources, "/v1/profiles/{client_id}/touches", client_id)
    return FastJSONResponse(_answered_as(client_id, {"client_id": found[0],
                                                     "touches": touches}))


def _merged_ids(state: ClientState) -> tuple[str, ...]:
    """The anonymous ids whose records join the client's. None when `resolve` answered a
    tombstone itself (its client not written yet, or being erased): the aliases it keeps
    were handed over to be erased with it, and are not its history."""
    return state.aliases if state.merged_into is None else ()


def _answered_as(requested: str, body: dict[str, Any]) -> dict[str, Any]:
    """`body` with `requested_id` when the id asked for is an anonymous id merged into the
    client it answers for, as every read of a client says."""
    if body["client_id"] != requested:
        body["requested_id"] = requested
    return body


@router.get("/{client_id:path}/timeline", response_class=FastJSONResponse)
async def get_timeline(client_id: str, resources: ReadAccess, grant: Grant,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> FastJSONResponse:
    """The client's recent events (the last `console.timeline_events`) and touches (trigger
    decisions and manual touches) in one list, newest first, with those of the anonymous
    ids merged into it: an entry recorded under one of them names it in `alias`."""
    found = await resolve(resources, client_id, grant)
    if found is None:
        raise _not_found(resources, "/v1/profiles/{client_id}/timeline", client_id)
    key, state = found
    merged = _merged_ids(state)
    touches = await resources.profiles.touches(key, limit, merged) or []
    recorded_for = (key, *merged)
    entries: list[tuple[float, int, dict[str, Any]]] = []
    for owner, lines in zip(recorded_for, await console_store.timelines(
            resources.redis, resources.layout, recorded_for), strict=True):
        entries.extend((entry.at, 0, _recorded_for(owner, key, {
            "kind": "event", "at": format_time(entry.at), "type": entry.type,
            "summary": entry.summary})) for entry in lines)
    for touch in touches:
        at = touch.get("decided_at") or touch["fired_at"]
        payload = touch.get("payload") or {}
        entries.append((parse_time(at, "decided_at"), 1, _recorded_for(
            touch.get("client_id", key), key, {
                "kind": "touch", "at": at, "type": touch["type"], "status": touch["status"],
                "reason": touch.get("reason"), "channel": touch.get("channel"),
                "source": "manual" if touch.get("source") == "manual" else "auto",
                "author": payload.get("author"), "comment": payload.get("comment"),
                "trigger_id": touch["trigger_id"], "key": touch.get("key", "")})))
    entries.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return FastJSONResponse(_answered_as(client_id, {
        "client_id": key, "entries": [entry for _, _, entry in entries[:limit]]}))


def _recorded_for(owner: str, client_key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """`entry`, naming the alias it was recorded under when that is not the client."""
    if owner != client_key:
        entry["alias"] = owner
    return entry


PROFILE_ROUTE = "/v1/profiles/{client_id}"
MAX_IDS = 100


async def resolve(resources: Resources, client_id: str, grant: ReadGrant
                  ) -> tuple[str, ClientState] | None:
    """The client's key and state; an anonymous id merged into a client resolves to that
    client (identity stitching), so reads by either id see the merged profile. A client the
    key may not see is None, like an unknown one."""
    store = resources.profiles
    state = await store.state(client_id)
    key = client_id
    if state is not None and state.merged_into is not None:
        target = await store.state(state.merged_into)
        if target is not None:
            key, state = state.merged_into, target
    return None if state is None or not grant.sees(state) else (key, state)


async def read_profile(resources: Resources, client_id: str, grant: ReadGrant
                       ) -> dict[str, Any] | None:
    """The profile document, or None for an unknown client: shared by the route below and
    by the ASGI fast path (api/fast_reads.py), so the two cannot drift apart."""
    found = await resolve(resources, client_id, grant)
    if found is None:
        resources.metrics.not_found.labels(PROFILE_ROUTE).inc()
        return None
    key, state = found
    return _answered_as(client_id, profile_document(key, state, time.time(),
                                                    await resources.segments.current()))


@router.get("", response_class=FastJSONResponse)
async def get_profiles(
        resources: ReadAccess, grant: Grant,
        ids: Annotated[str, Query(description="comma-separated client ids")] = "",
        whole: Annotated[list[str], Query(alias="id", description=(
            "one client id, taken whole (repeatable): an id that holds a comma, or ends in "
            "/segments, /timeline or /touches"))] = [],  # noqa: B006 - FastAPI copies it
        ) -> FastJSONResponse:
    """Many profiles in one round trip to Redis per id batch; unknown ids are listed apart.
    At most MAX_IDS ids in all."""
    wanted = [i for i in dict.fromkeys([*(part.strip() for part in ids.split(",")), *whole])
              if i]
    if not wanted:
        raise HTTPException(422, detail="ids: give at least one client id (ids=a,b or id=a)")
    if len(wanted) > MAX_IDS:
        raise HTTPException(422, detail=f"ids: at most {MAX_IDS} ids per request, "
                                        f"got {len(wanted)}")
    store = resources.profiles
    states = await store.states(wanted)
    merged = {s.merged_into for s in states.values() if s.merged_into is not None}
    targets = await store.states(sorted(merged)) if merged else {}
    rules = await resources.segments.current()
    now = time.time()
    profiles: list[dict[str, Any]] = []
    missing: list[str] = []
    for client_id in wanted:
        state = states.get(client_id)
        key = client_id
        if state is not None and state.merged_into in targets:
            key = state.merged_into
            state = targets[key]
        if state is None or not grant.sees(state):
            missing.append(client_id)
            continue
        profiles.append(_answered_as(client_id, profile_document(key, state, now, rules)))
    return FastJSONResponse({"profiles": profiles, "missing": missing})


@router.get("/{client_id:path}/segments", response_class=FastJSONResponse)
async def get_profile_segments(client_id: str, resources: ReadAccess, grant: Grant
                               ) -> FastJSONResponse:
    """The segments the client is in, with the time each was entered."""
    found = await resolve(resources, client_id, grant)
    if found is None:
        raise _not_found(resources, "/v1/profiles/{client_id}/segments", client_id)
    key, state = found
    return FastJSONResponse(_answered_as(client_id, {
        "client_id": key,
        "segments": [{"segment": name, "entered_at": format_time(at)}
                     for name, at in public_segments(state)],
        "evaluated_at": format_time(state.segments_at or None)}))


@router.get("/{client_id:path}", response_class=FastJSONResponse)
async def get_profile(client_id: str, resources: ReadAccess, grant: Grant) -> FastJSONResponse:
    """The client's current features (time-dependent ones computed now) and traits.

    Served by the fast path in api/fast_reads.py unless `api.fast_reads` is off; this route
    documents it and answers when it is.
    """
    if not client_id:
        raise HTTPException(404, detail="no client id in the path: GET "
                                        "/v1/profiles/{client_id}, or /v1/profiles?ids=a,b")
    document = await read_profile(resources, client_id, grant)
    if document is None:
        raise HTTPException(404, detail=f"unknown client {client_id!r}")
    return FastJSONResponse(document)
