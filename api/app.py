"""The FastAPI app factory: resources live in the lifespan, nothing at import time."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from api.body_limit import BodyLimitMiddleware
from api.cors import IngestCORSMiddleware
from api.deps import Resources
from api.fast_reads import ProfileFastPath
from api.head_requests import HeadAsGetMiddleware
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import (
    console,
    console_data,
    erasure,
    health,
    ingest,
    profiles,
    segments,
    touches,
)
from api.segment_rules_view import SegmentRulesView
from api.size_history import recording
from api.store_metrics import StoreMetrics
from api.wire_values import unencodable
from config.settings import Settings
from sinks.event_log import AppendOptions, AsyncEventLog, BacklogFull
from sinks.keys import KeyLayout
from sinks.redis_client import (
    STORE_FULL_DETAIL,
    STORE_UNAVAILABLE,
    async_client,
    is_store_full,
)


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, the app, its routes and models) out of the
    garbage collector's reach before serving.

    The cyclic collector's full passes otherwise walk those hundreds of thousands of
    long-lived objects every few thousand requests, and a request waiting behind one pass
    shows as the tail: at 32 connections, p99 of profile reads fell from 46 ms to 7 ms, with
    p50 unchanged (`bench/README.md`). Call it once per process, just before serving.
    """
    gc.collect()
    gc.freeze()


class FastAPIWithFastReads(FastAPI):
    """The app with `GET /v1/profiles/{id}` answered in front of FastAPI itself.

    Inside FastAPI, the fast path sat behind its per-request telemetry check (which reads
    the environment three times) and Starlette's entry: 3% of a profile read's samples
    under py-spy, for nothing crmflow uses (bench/README.md). It records its own
    metrics, and an error in it reaches uvicorn, which answers 500 as the error middleware
    would. Where OpenTelemetry is configured (FastAPI's native telemetry is on at the first
    request), reads stay inside FastAPI so they are traced, and the fast path answers from
    the front of the middleware stack instead.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._front = ProfileFastPath(super().__call__, self)
        self._traced: bool | None = None  # decided at the first request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._traced is None and scope["type"] == "http":
            self._traced = _telemetry_on(self)
        if self._traced is False:
            await self._front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        return ProfileFastPath(super().build_middleware_stack(), self)


def _telemetry_on(app: FastAPI) -> bool:
    """FastAPI's native OpenTelemetry tracing (FastAPI 0.16x and later) would record this
    request; older FastAPI has none."""
    telemetry = getattr(app, "_native_telemetry", None)
    return telemetry is not None and bool(telemetry.enabled())


ECHOED_INPUT_MAX = 200  # characters of an invalid input a 422 repeats


def _without_large_input(error: Any) -> Any:
    """The error without its input when that is long, or text JSON cannot carry (a lone
    surrogate: the answer itself would fail to encode)."""
    if isinstance(error, dict) and "input" in error and (
            len(repr(error["input"])) > ECHOED_INPUT_MAX
            or unencodable(error["input"]) is not None):
        return {key: value for key, value in error.items() if key != "input"}
    return error


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = ApiMetrics.create(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings.redis)
        layout = KeyLayout.from_settings(settings)
        event_log = AsyncEventLog(client, layout, AppendOptions(
            settings.redis.dedupe_window, settings.redis.max_stream_length))
        segments = SegmentRulesView(client, layout, settings.segment_rules())
        resources = Resources(settings, client, layout, event_log, metrics, segments)
        app.state.resources = resources
        try:
            if settings.console.enabled:
                async with recording(resources):
                    yield
            else:
                yield
        finally:
            await client.aclose()

    app_class = FastAPIWithFastReads if settings.api.fast_reads else FastAPI
    app = app_class(title="crmflow", version="0.1.0", lifespan=lifespan,
                    description="Real-time CRM triggers and customer features.")
    app.state.registry = registry
    app.state.store_metrics = StoreMetrics(registry)
    app.add_middleware(BodyLimitMiddleware, limit=settings.api.max_batch_bytes,
                       exempt={route.path for route in ingest.router.routes
                               if isinstance(route, APIRoute)})
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(IngestCORSMiddleware, allowed_origins=settings.api.cors_origins)
    app.include_router(ingest.router)
    app.include_router(profiles.router)
    app.include_router(touches.router)
    app.include_router(erasure.router)
    app.include_router(segments.router)
    app.include_router(console_data.router)
    app.include_router(health.router)
    if settings.console.enabled:
        app.include_router(console.router)

    async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "store unavailable; retry"}, status_code=503,
                            headers={"Retry-After": "1"})

    for unavailable in STORE_UNAVAILABLE:
        if unavailable is not OSError:  # an OSError elsewhere is a bug, not the store
            app.add_exception_handler(unavailable, redis_unavailable)

    @app.exception_handler(redis.ResponseError)
    async def redis_full(request: Request, exc: Exception) -> JSONResponse:
        """Touches and erasures while Redis refuses writes at its maxmemory."""
        if not is_store_full(exc):
            raise exc  # a bug of ours: a 500 with its traceback in the log
        return JSONResponse({"detail": STORE_FULL_DETAIL}, status_code=503,
                            headers={"Retry-After": str(ingest.BACKLOG_RETRY_AFTER)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, without echoing a large input back (a list of a thousand ids
        answered with all of them)."""
        return JSONResponse({"detail": jsonable_encoder([_without_large_input(error)
                                                         for error in exc.errors()])},
                            status_code=422)

    @app.exception_handler(BacklogFull)
    async def backlog_full(request: Request, exc: BacklogFull) -> JSONResponse:
        """Touches and erasures appended to a full stream (ingest answers it itself)."""
        ingest.warn_backlog(str(exc))
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": str(ingest.BACKLOG_RETRY_AFTER)})

    return app
