"""JSON responses serialized once, by orjson, without FastAPI's per-field encoder.

The profile documents are plain dicts of JSON types already; running them through
`jsonable_encoder` and response validation would cost more than the Redis read itself.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
