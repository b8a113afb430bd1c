"""CORS for the ingest routes only: browsers post events from the site's own origin.

analytics.js sends `Content-Type: text/plain` (a "simple" request) but a preflight is
still made for other set-ups; reads stay same-origin (they carry a secret read key).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

INGEST_PATHS = frozenset(f"/v1/{name}" for name in (
    "track", "identify", "page", "screen", "alias", "group", "batch", "import", "events",
    "t", "i", "p", "s", "a", "g", "b"))


def is_ingest_path(path: str) -> bool:
    return path in INGEST_PATHS


class IngestCORSMiddleware:
    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app = app
        self.any_origin = "*" in allowed_origins
        self.allowed = frozenset(allowed_origins)

    def _allow(self, origin: str | None) -> str | None:
        if origin is None:
            return None
        return origin if self.any_origin or origin in self.allowed else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_ingest_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        origin = self._allow(Headers(scope=scope).get("origin"))
        if scope["method"] == "OPTIONS":
            headers = [(b"vary", b"Origin")]
            if origin:
                headers += [(b"access-control-allow-origin", origin.encode()),
                            (b"access-control-allow-methods", b"POST, OPTIONS"),
                            (b"access-control-allow-headers",
                             b"Authorization, Content-Type, Content-Encoding"),
                            (b"access-control-max-age", b"600")]
            await send({"type": "http.response.start", "status": 204 if origin else 403,
                        "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and origin:
                message["headers"] = [*message.get("headers", []),
                                      (b"access-control-allow-origin", origin.encode()),
                                      (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, with_cors)
