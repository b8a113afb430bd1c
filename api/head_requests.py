"""HEAD answered wherever GET is, as HTTP requires (load balancers and uptime checks send
it): the GET route runs and its body is dropped, its headers (Content-Length too) kept.
FastAPI's routes list only the methods they are declared with."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        # A copy: the server reads the method from its own scope when the response starts,
        # and sends a HEAD's headers without the body only if it still says HEAD. The route
        # the app matched is copied back for the metrics around this middleware.
        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, headers_only)
        finally:
            if "route" in as_get:
                scope["route"] = as_get["route"]
