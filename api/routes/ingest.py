"""Ingest: the Segment tracking API and the native `/v1/events`.

Segment's routes are served under both their names (`/v1/track`, `/identify`, `/page`,
`/screen`, `/alias`, `/group`, `/batch`, `/import`) and the short ones analytics.js uses
(`/v1/t`, `/i`, `/p`, `/s`, `/a`, `/g`, `/b`); the write key may come as HTTP Basic user
name, Bearer token or `writeKey` in the body, and any Content-Type is read as JSON.

An event is acknowledged only after Redis stored it in its partition's stream. In a batch,
valid events are stored and acknowledged even when others are rejected; the response
lists the rejected items (the first 100) with their index and reason, and counts them all.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import Resources, ResourcesDep, check_write_key
from api.responses import problems
from api.wire_values import NotANumber, encoded, finite_float
from config.durations import format_duration
from config.settings import ApiSettings
from features.events import INTERNAL_TYPES, Event, EventError, EventType, format_time
from features.segment import (
    NATIVE_FIELDS,
    TRACK_EVENTS,
    UnknownFieldError,
    from_native,
    from_segment,
    known_user_error,
    previous_user_id,
    time_origin,
)
from sinks.event_log import BacklogFull
from sinks.redis_client import STORE_FULL_DETAIL, STORE_UNAVAILABLE, is_store_full

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["ingest"],
                   responses=problems(400, 401, 413, 415, 503))

Parser = Callable[[object, float], Event]
_INDEX = re.compile(r"\[\d+\]")


class BodyError(Exception):
    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


GZIP = ("gzip", "x-gzip")  # x-gzip: HTTP/1.1's alias


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it exceeds `limit` bytes (before or after gunzip)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"request body is {declared} bytes; the limit is {limit}",
                        "too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"request body exceeds the limit of {limit} bytes", "too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", *GZIP):
        raise BodyError(415, f"Content-Encoding {encoding!r} is not supported (send gzip, "
                             "or no encoding)", "encoding")
    if encoding in GZIP:
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise BodyError(400, "body is not valid gzip", "malformed") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise BodyError(413, f"decompressed body exceeds the limit of {limit} bytes",
                            "too_large")
    return body


def _decode_json(body: bytes) -> Any:
    if not body.strip():
        raise BodyError(400, "empty body: expected a JSON object", "malformed")
    try:
        # refused per item, by path
        return json.loads(body, parse_constant=NotANumber, parse_float=finite_float)
    except UnicodeDecodeError:
        raise BodyError(400, "body is not valid UTF-8", "malformed") from None
    except RecursionError:
        raise BodyError(400, "JSON nested too deeply", "malformed") from None
    except ValueError as exc:
        raise BodyError(400, f"malformed JSON: {exc}", "malformed") from None


# Refusals are counted by the top-level field at fault, when it is one an event is made of
# (native or Segment); any other name is the sender's choice (the write key is public), so
# it counts as `other`: the label stays bounded.
_REASON_FIELDS = frozenset({
    *NATIVE_FIELDS, "event", "message", "userId", "anonymousId", "messageId", "previousId",
    "groupId", "timestamp", "originalTimestamp", "sentAt", "receivedAt", "context",
    "integrations", "category", "writeKey"})


def _reason(error: EventError) -> str:
    """A bounded metric label: the top-level field, without list indices."""
    if isinstance(error, UnknownFieldError):
        return "unknown_field"
    if not error.field:  # the event as a whole: over the size limit
        return "too_large"
    field = _INDEX.sub("", error.field).split(".")[0]
    return field if field in _REASON_FIELDS else "other"


# the write key is public: touches come with an admin key (routes/touches), and identity
# steps and erasures are crmflow's own
REFUSED_TYPES = {t.value: t for t in (EventType.TOUCH_RECORDED, *INTERNAL_TYPES)}


def _declared_type(item: object, source: str) -> EventType | None:
    """The refused type an item's raw fields name (a native `type`, or the type a Segment
    track's event name maps to): refused before the fields that type needs are checked."""
    if not isinstance(item, Mapping):
        return None
    if source == "native":
        name = item.get("type")
        return REFUSED_TYPES.get(name) if isinstance(name, str) else None
    name = item.get("event")
    if item.get("type") != "track" or not isinstance(name, str):
        return None
    declared = TRACK_EVENTS.get(name.strip().lower())
    return declared if declared is not None and declared.value in REFUSED_TYPES else None


def _refusal(event_type: EventType, field: str) -> EventError:
    if event_type is EventType.TOUCH_RECORDED:
        return EventError(field, "touches are recorded through POST "
                                 "/v1/profiles/{client_id}/touches with an admin key")
    return EventError(field, f"{event_type.value} is written by crmflow itself (send an "
                             "identify with userId and anonymousId to link; erase with "
                             "DELETE /v1/profiles/{client_id})")


def _parse(item: object, parser: Parser, received_at: float, resources: Resources,
           source: str) -> Event:
    api = resources.settings.api
    size = len(encoded(item, "event"))  # UTF-8 bytes, as stored
    if size > api.max_event_bytes:  # no one field is at fault (Segment's `event` is a name)
        raise EventError("", f"the event is {size} bytes; the limit per event is "
                             f"{api.max_event_bytes}")
    declared = _declared_type(item, source)
    if declared is not None:
        raise _refusal(declared, "type" if source == "native" else "event")
    event = parser(item, received_at)
    if event.type.value in REFUSED_TYPES:  # whatever the raw fields said
        raise _refusal(event.type, "type")
    if source == "native":
        return in_window(event, received_at, api, "event_time")
    try:
        return in_window(event, received_at, api, "timestamp")
    except EventError as exc:  # named as the sender set the time: see time_origin
        field, corrected = time_origin(item, received_at)
        raise EventError(field, exc.message + (" once corrected by sentAt" if corrected
                                               else "")) from None


def in_window(event: Event, received_at: float, api: ApiSettings, time_field: str) -> Event:
    """The event time within [now - max_past_age, now + max_future_skew]: refused outside
    (the error names `time_field`, the field the sender set the time in), or (out_of_window:
    clamp) moved to the edge, with the original time kept."""
    latest = received_at + api.max_future_skew
    earliest = received_at - api.max_past_age if api.max_past_age > 0 else None
    if event.event_time > latest:
        edge, problem = latest, f"more than {format_duration(api.max_future_skew)} in the future"
    elif earliest is not None and event.event_time < earliest:
        edge, problem = earliest, f"more than {format_duration(api.max_past_age)} in the past"
    else:
        return event
    if api.out_of_window == "reject":
        raise EventError(time_field, problem)
    properties = {**event.properties, "clamped_event_time": format_time(event.event_time)}
    return replace(event, event_time=edge, properties=properties)


# a body of tiny bad items (`[{}, {}, ...]`) would otherwise answer 45 times its size
MAX_REJECTED_LISTED = 100
BACKLOG_RETRY_AFTER = 5
BACKLOG_WARN_AT = 0.8  # of the cap
_warned_at = 0.0


def warn_backlog(message: str) -> None:
    """At most one warning a minute: a full backlog refuses many requests."""
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= 60:
        _warned_at = now
        log.warning("%s", message)


def _record_lengths(resources: Resources, lengths: dict[int, int]) -> None:
    cap = resources.settings.redis.max_stream_length
    for partition, length in lengths.items():
        resources.metrics.stream_length.labels(str(partition)).set(length)
        if cap and length >= BACKLOG_WARN_AT * cap:
            warn_backlog(f"event stream {partition} holds {length} entries, "
                          f"{length / cap:.0%} of redis.max_stream_length: is the dataflow "
                          "running?")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"success": False, "detail": message, **extra}, status_code=status)


def _rejection(resources: Resources, source: str, index: int, item: object,
               error: EventError) -> dict[str, Any]:
    resources.metrics.rejected.labels(source, _reason(error)).inc()
    entry: dict[str, Any] = {"index": index, "field": error.field or None, "error": str(error)}
    if isinstance(item, dict) and isinstance(item.get("messageId"), str):
        entry["messageId"] = item["messageId"]
    return entry


async def _known_previous_user_ids(resources: Resources, items: Sequence[object],
                                   parsed: list[tuple[int, Event]]) -> dict[int, str]:
    """The alias messages whose previousId, taken for an anonymous id, is the user id of a
    known client (features/segment.py `previous_user_id`), by index, with that id: one
    read of those ids, only when the request holds such messages."""
    wanted = {index: previous for index, _ in parsed
              if (previous := previous_user_id(items[index])) is not None}
    if not wanted:
        return {}
    known = await resources.profiles.states(sorted(set(wanted.values())))
    return {index: previous for index, previous in wanted.items() if previous in known}


async def _ingest(items: Sequence[object], *, parser: Parser, source: str, single: bool,
                  resources: Resources) -> JSONResponse:
    received_at = time.time()
    parsed: list[tuple[int, Event]] = []
    rejected: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            parsed.append((index, _parse(item, parser, received_at, resources, source)))
        except EventError as exc:
            rejected.append(_rejection(resources, source, index, item, exc))
    events = [event for _, event in parsed]
    lengths: dict[int, int] = {}
    try:
        if source == "segment":
            refused = await _known_previous_user_ids(resources, items, parsed)
            if refused:
                rejected += [_rejection(resources, source, index, items[index],
                                        known_user_error(previous))
                             for index, previous in refused.items()]
                rejected.sort(key=lambda entry: int(entry["index"]))
                events = [event for index, event in parsed if index not in refused]
        stored = await resources.event_log.append(events, lengths)
    except STORE_UNAVAILABLE:
        return JSONResponse({"success": False, "detail": "event store unavailable; retry"},
                            status_code=503, headers={"Retry-After": "1"})
    except redis.ResponseError as exc:  # some partitions' events may be stored: see BacklogFull
        if not is_store_full(exc):
            raise
        resources.metrics.rejected.labels(source, "store_full").inc(len(events))
        warn_backlog(STORE_FULL_DETAIL)
        return JSONResponse({"success": False, "detail": STORE_FULL_DETAIL}, status_code=503,
                            headers={"Retry-After": str(BACKLOG_RETRY_AFTER)})
    except BacklogFull as exc:  # the rest may be stored: a retry is de-duplicated by id
        _record_lengths(resources, {**lengths, exc.partition: exc.length})
        resources.metrics.rejected.labels(source, "backlog_full").inc(len(events))
        warn_backlog(str(exc))
        return JSONResponse({"success": False, "detail": str(exc)}, status_code=503,
                            headers={"Retry-After": str(BACKLOG_RETRY_AFTER)})
    _record_lengths(resources, lengths)
    accepted = len(events)
    duplicates = accepted - sum(stored)
    if accepted:
        resources.metrics.accepted.labels(source).inc(accepted - duplicates)
    if duplicates:
        resources.metrics.duplicates.labels(source).inc(duplicates)
    if single and rejected:
        return _error(400, rejected[0]["error"], field=rejected[0]["field"])
    body = {"success": not rejected, "accepted": accepted, "duplicates": duplicates,
            "rejected": rejected[:MAX_REJECTED_LISTED], "rejected_count": len(rejected)}
    status = 400 if rejected and not accepted else 200
    return JSONResponse(body, status_code=status)


async def _handle(request: Request, resources: Resources, *, limit: int, source: str,
                  parser: Parser, extract: Callable[[Any], tuple[Sequence[object], bool]],
                  ) -> JSONResponse:
    if request.headers.get("authorization"):
        check_write_key(request, resources)  # refuse before reading a stranger's body
    try:
        payload = _decode_json(await _read_body(request, limit))
        if not request.headers.get("authorization"):
            check_write_key(request, resources,
                            payload.get("writeKey") if isinstance(payload, dict) else None)
        items, single = extract(payload)
    except BodyError as exc:
        resources.metrics.rejected.labels(source, exc.reason).inc()
        return _error(exc.status, exc.message)
    return await _ingest(items, parser=parser, source=source, single=single,
                         resources=resources)


def _single(kind: str) -> Callable[[Any], tuple[Sequence[object], bool]]:
    def extract(payload: Any) -> tuple[Sequence[object], bool]:
        if not isinstance(payload, dict):
            raise BodyError(400, "expected a JSON object", "malformed")
        message = dict(payload)
        message.setdefault("type", kind)
        if message["type"] != kind:
            raise BodyError(400, f"type is {message['type']!r} at /v1/{kind}", "type")
        message.pop("writeKey", None)
        return [message], True
    return extract


def _segment_batch(payload: Any) -> tuple[Sequence[object], bool]:
    if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list):
        raise BodyError(400, 'expected {"batch": [message, ...]}', "malformed")
    if not payload["batch"]:
        raise BodyError(400, "batch is empty", "malformed")
    shared = {k: payload[k] for k in ("context", "sentAt") if k in payload}
    items: list[object] = []
    for message in payload["batch"]:
        if isinstance(message, dict):  # batch-level context and sentAt apply to every message
            message = {**shared, **message}
        items.append(message)
    return items, False


def _native(payload: Any) -> tuple[Sequence[object], bool]:
    if isinstance(payload, list):
        items: list[object] = payload
    elif isinstance(payload, dict) and isinstance(payload.get("events"), list):
        items = payload["events"]
    elif isinstance(payload, dict):  # its writeKey, if any, is the request's
        return [{k: v for k, v in payload.items() if k != "writeKey"}], True
    else:
        raise BodyError(400, 'expected an event object, a list, or {"events": [...]}',
                        "malformed")
    if not items:
        raise BodyError(400, "no events in the request", "malformed")
    return items, False


def _route(extract: Callable[[Any], tuple[Sequence[object], bool]], *, batch: bool, name: str
           ) -> Callable[[Request, Resources], Awaitable[JSONResponse]]:
    async def handler(request: Request, resources: ResourcesDep) -> JSONResponse:
        api = resources.settings.api
        return await _handle(request, resources,
                             limit=api.max_batch_bytes if batch else api.max_event_bytes,
                             source="segment", parser=from_segment, extract=extract)

    handler.__name__ = name
    handler.__doc__ = (f"Segment `{name}`: " + ("a batch of messages." if batch
                                                 else "one message."))
    return handler


SEGMENT_ROUTES = {"track": "t", "identify": "i", "page": "p", "screen": "s", "alias": "a",
                  "group": "g"}
for _kind, _short in SEGMENT_ROUTES.items():
    for _path in (_kind, _short):
        router.add_api_route(f"/{_path}", _route(_single(_kind), batch=False, name=_kind),
                             methods=["POST"], include_in_schema=_path == _kind)
for _path in ("batch", "b", "import"):
    router.add_api_route(f"/{_path}", _route(_segment_batch, batch=True, name="batch"),
                         methods=["POST"], include_in_schema=_path == "batch")


@router.post("/events")
async def events(request: Request, resources: ResourcesDep) -> JSONResponse:
    return await _handle(request, resources, limit=resources.settings.api.max_batch_bytes,
                         source="native", parser=from_native, extract=_native)
