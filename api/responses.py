"""JSON responses serialized once, by orjson, without FastAPI's per-field encoder.

The profile documents are plain dicts of JSON types already; running them through
`jsonable_encoder` and response validation would cost more than the Redis read itself.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Problem(BaseModel):
    """An error answer: `detail` says what is wrong (a message, or FastAPI's list of
    invalid parameters); ingest answers also carry what was accepted and rejected."""

    model_config = ConfigDict(extra="allow")
    detail: Any = None


_MEANINGS = {
    400: "invalid input: the answer names the field and why",
    401: "missing or unknown key",
    403: "a valid key of another scope",
    404: "unknown client, segment or erasure (or an id that makes no known path)",
    409: "conflicts with the data's state: the answer says what to do instead (erase an "
         "anonymous id's client, not the id)",
    413: "body over the size limit",
    415: "a Content-Encoding other than gzip",
    422: "invalid parameters",
    503: "the store is unavailable, or the event backlog is full: retry after Retry-After",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a router gives."""
    return {code: {"model": Problem, "description": _MEANINGS[code]} for code in codes}
