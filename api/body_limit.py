"""A size limit on request bodies, answered before a body over it is read.

Ingest reads its bodies itself (its limit applies after gunzip too, and its refusals are
counted); every other route that takes a body (`/contains`, `/touches`) gets this one:
without it a 50 MB list of ids was read and parsed whole, before the key was even checked.
A body sent without a Content-Type is read as JSON, the only body these routes take, as
ingest reads any.
"""

from __future__ import annotations

from collections.abc import Collection

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body reading passes it on as is (it turns any other
    exception into a 400) and its handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=f"request body exceeds the limit of {limit} bytes",
                         headers={"Connection": "close"})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limit: int, exempt: Collection[str]) -> None:
        self.app = app
        self.limit = limit
        self.exempt = frozenset(exempt)  # paths that enforce their own limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] in BODILESS
                or scope["path"] in self.exempt):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send, f"request body is {int(declared)} bytes; "
                                                     f"the limit is {self.limit}")
            return
        if b"content-type" not in headers and (declared not in (b"", b"0")
                                               or b"transfer-encoding" in headers):
            scope = {**scope, "headers": [*scope["headers"],
                                          (b"content-type", b"application/json")]}
        size = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # read outside FastAPI's handling
            if started:
                raise
            await self._refuse(scope, receive, send, str(exc.detail))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        response = JSONResponse({"detail": message}, status_code=413,
                                headers={"Connection": "close"})
        await response(scope, receive, send)
