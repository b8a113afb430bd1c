"""Request bodies read after the caller's key is checked.

FastAPI decodes a body parameter before it runs any dependency, so a caller without a key
who sent malformed JSON got 422, not the 401 every keyed route promises, and had its body
parsed first. Routes that take a key read their body here, in the handler, after it.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError

M = TypeVar("M")


def body_schema(shape: TypeAdapter[Any], *, example: dict[str, Any] | None = None,
                description: str | None = None) -> dict[str, Any]:
    """The `openapi_extra` that documents the body a handler reads itself (`json_body`)."""
    content: dict[str, Any] = {"schema": shape.json_schema()}
    if example is not None:
        content["example"] = example
    body: dict[str, Any] = {"required": True, "content": {"application/json": content}}
    if description is not None:
        body["description"] = description
    return {"requestBody": body}


async def json_body(request: Request, shape: TypeAdapter[M]) -> M:
    """The body validated as `shape`, decoded as FastAPI decodes one (`json.loads`, whatever
    the Content-Type; a lone surrogate passes, for the route to name), or 422 in FastAPI's
    own form, each error's location under `body`."""
    raw = await request.body()
    try:
        value = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8 at all
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", 0),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": str(exc)}}]) from None
    try:
        return shape.validate_python(value)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])}
                                      for error in exc.errors(include_url=False)]) from None
