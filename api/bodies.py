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
from pydantic import BaseModel, TypeAdapter, ValidationError

M = TypeVar("M")


def body_schema(model: type[BaseModel] | TypeAdapter[Any],
                example: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `openapi_extra` that documents the body a handler reads itself."""
    schema = (model.json_schema() if isinstance(model, TypeAdapter)
              else model.model_json_schema())
    content: dict[str, Any] = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


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
