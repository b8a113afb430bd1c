"""Segment membership for audiences and personalization (Bearer read key).

Sizes and members come from sets the dataflow maintains as memberships change; nothing
here evaluates a rule or scans clients. A point's read key sees its point's members only:
the dataflow keeps a member set per point too.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, TypeAdapter

from api.bodies import body_schema, json_body
from api.deps import Grant, ReadAccess, Resources
from api.responses import FastJSONResponse, problems
from features.events import ANONYMOUS_PREFIX, format_time
from features.rfm import RFM_SEGMENTS
from features.segments import LIFECYCLE_PREFIX, RFM_PREFIX, all_segment_names
from sinks import console_store
from sinks.segment_store import MAX_CURSOR_LENGTH, BadCursor, SegmentStore

router = APIRouter(prefix="/v1/segments", tags=["segments"],
                   responses=problems(400, 401, 404, 422, 503))

MAX_PAGE = 1000
MAX_CONTAINS = 1000
SegmentName = Annotated[str, Path(min_length=1, max_length=200,
                                  description="e.g. rfm:at_risk, lifecycle:new, or a rule "
                                              "segment's name")]


class ContainsRequest(BaseModel):
    client_ids: list[Annotated[str, Field(min_length=1, max_length=205)]] = Field(
        min_length=1, max_length=MAX_CONTAINS)


def _kind(name: str) -> str:
    if name.startswith(LIFECYCLE_PREFIX):
        return "lifecycle"
    if name.startswith(RFM_PREFIX):
        return "rfm"
    return "rule"


def _describe(resources: Resources, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "kind": _kind(name)}
    if name.startswith(RFM_PREFIX):
        entry["title"] = dict(RFM_SEGMENTS).get(name.removeprefix(RFM_PREFIX))
    catalog = resources.segments.base.catalog
    if catalog is not None:
        for segment in catalog.segments:
            if name == segment.name or name.startswith(f"{segment.name}:"):
                entry["description"] = segment.description
    return entry


def _known(resources: Resources, name: str) -> None:
    names = all_segment_names(resources.segments.base)
    if name not in names:
        resources.metrics.not_found.labels("/v1/segments/{name}").inc()
        raise HTTPException(404, detail=f"unknown segment {name!r}; GET /v1/segments "
                                        "lists them")


@router.get("", response_class=FastJSONResponse)
async def list_segments(resources: ReadAccess, grant: Grant) -> FastJSONResponse:
    """Every segment this configuration defines, with its current size."""
    names = all_segment_names(resources.segments.base)
    sizes = await SegmentStore(resources.redis, resources.layout, grant.point).sizes(names)
    return FastJSONResponse({"segments": [{**_describe(resources, name), "size": sizes[name]}
                                          for name in names]})


@router.get("/{name}/members", response_class=FastJSONResponse)
async def segment_members(name: SegmentName, resources: ReadAccess, grant: Grant,
                          cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_LENGTH)] = None,
                          limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100
                          ) -> FastJSONResponse:
    """A page of members in a stable order; pass `next_cursor` back for the next page
    (null: no more)."""
    _known(resources, name)
    try:
        page = await SegmentStore(resources.redis, resources.layout, grant.point).page(
            name, cursor, limit)
    except BadCursor as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return FastJSONResponse({"segment": name, "members": page.members,
                             "next_cursor": page.next_cursor})


_CONTAINS_BODY = TypeAdapter(ContainsRequest)


@router.post("/{name}/contains", response_class=FastJSONResponse,
             openapi_extra=body_schema(_CONTAINS_BODY))
async def segment_contains(name: SegmentName, request: Request, resources: ReadAccess,
                           grant: Grant) -> FastJSONResponse:
    """Which of the given client ids are members (at most 1000 per request). An anonymous
    id merged into a client answers for that client, as its profile does."""
    body = await json_body(request, _CONTAINS_BODY)  # after the key: see api/bodies.py
    _known(resources, name)
    resolved = await _merged_into(resources, body.client_ids)
    found = set(await SegmentStore(resources.redis, resources.layout, grant.point).contains(
        name, list(dict.fromkeys(resolved.values()))))
    members = [client_id for client_id, key in resolved.items() if key in found]
    return FastJSONResponse({"segment": name, "members": members,
                             "checked": len(resolved)})


async def _merged_into(resources: Resources, client_ids: list[str]) -> dict[str, str]:
    """Each id (once, in the order given) and the client it reads as: an anonymous id
    merged into a client is that client (one round trip for the anonymous ids given)."""
    resolved = dict.fromkeys(client_ids, "")
    anonymous = [i for i in resolved if i.startswith(ANONYMOUS_PREFIX)]
    states = await resources.profiles.states(anonymous) if anonymous else {}
    for client_id in resolved:
        state = states.get(client_id)
        merged = None if state is None else state.merged_into
        resolved[client_id] = merged or client_id
    return resolved


CSV_PAGE = 1000
_FORMULA_STARTS = ("=", "@", "\t", "\r")


# A + or - followed by digits and the separators of written phone numbers only: no name a
# formula could call or reference, so nothing a spreadsheet would run.
_PHONE_OR_NUMBER = re.compile(r"[+-][0-9 ().-]*[0-9][0-9 ().-]*")


def spreadsheet_safe(cell: str) -> str:
    """The cell with a leading apostrophe when a spreadsheet would run it as a formula
    (`=HYPERLINK(...)` as a client id, OWASP's CSV injection): ids that start with + or -
    and hold only a number or a phone number, spaced or not, are left as they are."""
    if cell.startswith(_FORMULA_STARTS) or (
            cell[:1] in ("+", "-") and _PHONE_OR_NUMBER.fullmatch(cell) is None):
        return "'" + cell
    return cell


@router.get("/{name}/members.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}},
                             "description": "client_id, one member per line (an id a "
                                            "spreadsheet would run as a formula starts "
                                            "with an apostrophe)"}})
async def segment_members_csv(name: SegmentName, resources: ReadAccess, grant: Grant
                              ) -> StreamingResponse:
    """Every member as CSV, streamed page by page (memory stays flat at any size)."""
    _known(resources, name)
    store = SegmentStore(resources.redis, resources.layout, grant.point)

    async def rows() -> AsyncIterator[str]:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["client_id"])
        cursor: str | None = None
        while True:
            page = await store.page(name, cursor, CSV_PAGE)
            writer.writerows([spreadsheet_safe(member)] for member in page.members)
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    filename = name.replace(":", "-").replace('"', "")
    return StreamingResponse(rows(), media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{filename}.csv"'})


@router.get("/{name}/history", response_class=FastJSONResponse)
async def segment_history(name: SegmentName, resources: ReadAccess, grant: Grant,
                          days: Annotated[int, Query(ge=1, le=365)] = 14
                          ) -> FastJSONResponse:
    """The segment's size as recorded every `console.size_history_interval`, oldest first."""
    _known(resources, name)
    points = await console_store.size_history(resources.redis, resources.layout, name,
                                              grant.point, time.time() - days * 86400)
    return FastJSONResponse({"segment": name, "points": [
        {"at": format_time(at), "size": size} for at, size in points]})
