"""Manual touches (B2B practice): a manager records that a client was contacted, or that an
occasion was skipped. It takes an admin key, or a point manager's key for a client of that
point: the write key is public in browsers, and a touch can suppress a client's triggers.

The API does not write client state; the dataflow owns it. A touch becomes a canonical
`touch_recorded` event in the client's stream, acknowledged once Redis stored it (202).
The dataflow applies it: it decides its occasion like an automatic trigger would (the same
id for the same occasion and key), a `done` marketing touch counts for the frequency cap,
and it appears in `GET /v1/profiles/{client_id}/touches`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from api.bodies import body_schema, json_body
from api.deps import ReadGrant, Resources, ResourcesDep, granted
from api.responses import problems
from api.routes.ingest import in_window
from api.routes.profiles import resolve
from api.wire_values import encoded
from features.events import ANONYMOUS_PREFIX, EventError, content_event_id, parse_event, parse_time
from features.triggers import trigger_id

router = APIRouter(prefix="/v1/profiles", tags=["touches"],
                   responses=problems(400, 401, 403, 404, 413, 422, 503))

ClientId = Annotated[str, Path(min_length=1, max_length=205,
                               description="client id, or anon:<anonymous id>")]

FIELDS = ("occasion", "key", "channel", "status", "comment", "author", "touched_at", "touch_id")
_PROPERTIES = ("occasion", "key", "status", "comment", "author")

_TOUCH_BODY: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
_TOUCH_DOC = body_schema(_TOUCH_BODY, example={
    "occasion": "renewal_call", "key": "2025", "channel": "phone", "status": "done",
    "comment": "renews in March", "author": "mia@example.com"}, description=(
    "occasion (a trigger type, or a name of your own: a-z, 0-9, _), optional key (default "
    "empty: once per client), channel, status done|skipped, comment, author, touched_at "
    "(default now), touch_id (an idempotency key)"))


def can_record(grant: ReadGrant) -> bool:
    return grant.scope in ("admin", "point")


async def _check_writer(request: Request, resources: Resources, client_id: str) -> str:
    """The key to record the touch for: an anonymous id merged into a client is that client
    (its ledger is the client's). An admin key records for anyone, a client not seen yet
    too; a point's key for its own clients (another point's client, or an unknown one, is
    answered 404 as on reads)."""
    grant = granted(resources, request, needs="admin key", action="record touches")
    if not can_record(grant):
        raise HTTPException(403, detail="recording a touch needs an admin key or a point "
                                        "manager's key")
    found = await resolve(resources, client_id, grant)
    if found is None and grant.point is not None:
        raise HTTPException(404, detail=f"unknown client {client_id!r}")
    return client_id if found is None else found[0]


def _bad(field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": f"{field}: {message}", "field": field}, status_code=400)


# Client ids may contain '/', as on the read routes: the path converter takes them whole.
@router.post("/{client_id:path}/touches", status_code=202, openapi_extra=_TOUCH_DOC)
async def record_touch(client_id: ClientId, request: Request,
                       resources: ResourcesDep) -> JSONResponse:
    """Record a manual touch; answers 202 with the touch's id (its occasion's trigger id)."""
    client_id = await _check_writer(request, resources, client_id)
    body = await json_body(request, _TOUCH_BODY)  # after the key: see api/bodies.py
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:  # named as text JSON can carry (a key may hold half an emoji)
        name = unknown[0].encode("utf-8", "backslashreplace").decode("utf-8")
        return _bad(name, f"unknown field (known: {', '.join(FIELDS)})")
    received_at = time.time()
    try:
        event_time = (received_at if body.get("touched_at") is None
                      else parse_time(body["touched_at"], "touched_at"))
        touch_id = body.get("touch_id")
        if touch_id is not None and (not isinstance(touch_id, str) or not touch_id
                                     or len(touch_id) > 200):
            raise EventError("touch_id", "expected a string of 1 to 200 characters")
        raw: dict[str, Any] = {
            "event_id": touch_id or content_event_id({"client": client_id, **body}),
            "type": "touch_recorded", "event_time": event_time, "received_at": received_at,
            "properties": {name: body[name] for name in _PROPERTIES if body.get(name) is not None},
        }
        if client_id.startswith(ANONYMOUS_PREFIX):
            raw["anonymous_id"] = client_id.removeprefix(ANONYMOUS_PREFIX)
        else:
            raw["client_id"] = client_id
        if body.get("channel") is not None:
            raw["channel"] = body["channel"]
        # the same window as ingested events: refused, or clamped with the time kept
        event = in_window(parse_event(raw), received_at, resources.settings.api, "touched_at")
        encoded(body, "touch")  # a lone surrogate or a huge integer: named, not a 500
    except EventError as exc:
        return _bad(exc.field.removeprefix("properties."), exc.message)
    if len(encoded(raw, "touch")) > resources.settings.api.max_event_bytes:
        return _bad("touch", f"larger than {resources.settings.api.max_event_bytes} bytes")
    [stored] = await resources.event_log.append([event])
    key = str(event.properties.get("key") or "")
    occasion = str(event.properties["occasion"])
    return JSONResponse({
        "touch_id": trigger_id(event.client_key, occasion, key),
        "event_id": event.event_id, "client_id": event.client_key, "occasion": occasion,
        "key": key, "status": "accepted" if stored else "duplicate",
    }, status_code=202)
