"""An ASGI fast path for the hottest read, `GET /v1/profiles/{client_id}`.

Recommendation services call it on every page; through FastAPI's full machinery
(routing, dependency solving, exception middleware) it cost more than the Redis read and
the feature computation together. This path does the same work (the same key check, the
same `read_profile`, the same metrics), nothing else; everything it does not recognise goes
on to the FastAPI app, whose route documents the endpoint in OpenAPI.
"""

from __future__ import annotations

import time

import orjson
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import Refusal, Resources, read_grant
from api.routes.profiles import PROFILE_ROUTE, SUBRESOURCES, read_profile
from sinks.redis_client import STORE_UNAVAILABLE

PREFIX = "/v1/profiles/"
_JSON = [(b"content-type", b"application/json")]


class ProfileFastPath:
    """Answers profile reads; passes everything else on to `app`. `owner` is the FastAPI app
    whose state holds the resources (in front of FastAPI, `scope["app"]` is not set yet)."""

    def __init__(self, app: ASGIApp, owner: Starlette) -> None:
        self.app = app
        self.owner = owner
        # the metrics' labelled series, looked up once (`labels()` is 1.8 µs a request)
        self._latency: Histogram | None = None
        self._requests: dict[int, Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] != "GET" or not path.startswith(PREFIX)
                or path.endswith(SUBRESOURCES) or len(path) == len(PREFIX)):
            await self.app(scope, receive, send)
            return
        resources: Resources = self.owner.state.resources
        started = time.perf_counter()
        status, body, headers = await self._answer(resources, scope, path[len(PREFIX):])
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON, (b"content-length", str(len(body)).encode()),
                                *headers]})
        await send({"type": "http.response.body", "body": body})
        self._record(resources, status, time.perf_counter() - started)

    def _record(self, resources: Resources, status: int, seconds: float) -> None:
        if self._latency is None:
            self._latency = resources.metrics.latency.labels(PROFILE_ROUTE, "GET")
        self._latency.observe(seconds)
        requests = self._requests.get(status)
        if requests is None:
            requests = resources.metrics.requests.labels(PROFILE_ROUTE, "GET", str(status))
            self._requests[status] = requests
        requests.inc()

    async def _answer(self, resources: Resources, scope: Scope, client_id: str
                      ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        authorization = next((value for name, value in scope["headers"]
                              if name == b"authorization"), b"").decode("latin-1")
        grant = read_grant(resources, authorization)
        if isinstance(grant, Refusal):
            challenge = [(b"www-authenticate", b"Bearer")] if grant.status == 401 else []
            return grant.status, orjson.dumps({"detail": grant.detail}), challenge
        try:
            document = await read_profile(resources, client_id, grant)
        except STORE_UNAVAILABLE:
            return 503, orjson.dumps({"detail": "store unavailable; retry"}), [
                (b"retry-after", b"1")]
        if document is None:
            return 404, orjson.dumps({"detail": f"unknown client {client_id!r}"}), []
        return 200, orjson.dumps(document), []
