"""The API's Prometheus metrics and the ASGI middleware that times every request.

Labels are bounded: route templates (not raw paths), methods, status codes, sources,
rejection reasons from a fixed vocabulary of field names. Never client ids.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ApiMetrics:
    requests: Counter
    latency: Histogram
    accepted: Counter
    rejected: Counter
    duplicates: Counter
    not_found: Counter
    stream_length: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ApiMetrics:
        return cls(
            requests=Counter("crmflow_http_requests", "HTTP requests",
                             ["route", "method", "status"], registry=registry),
            latency=Histogram("crmflow_http_request_duration_seconds", "HTTP request latency",
                              ["route", "method"], buckets=LATENCY_BUCKETS, registry=registry),
            accepted=Counter("crmflow_ingest_events_accepted", "Events stored in the streams",
                             ["source"], registry=registry),
            rejected=Counter("crmflow_ingest_events_rejected", "Events refused at ingest",
                             ["source", "reason"], registry=registry),
            duplicates=Counter("crmflow_ingest_duplicate_events",
                               "Events acknowledged but not stored again (id seen in window)",
                               ["source"], registry=registry),
            not_found=Counter("crmflow_profile_not_found", "Profile reads for unknown clients",
                              ["route"], registry=registry),
            stream_length=Gauge("crmflow_event_stream_length",
                                "Entries in an event stream as of the latest append "
                                "(capped by redis.max_stream_length)", ["partition"],
                                registry=registry),
        )


_CONVERTER = re.compile(r"\{(\w+):\w+\}")


@functools.cache
def route_label(template: str) -> str:
    """The route template without path converters (`{client_id:path}` is `{client_id}`),
    as the profile fast path labels its requests: one endpoint, one series."""
    return _CONVERTER.sub(r"{\1}", template)


class MetricsMiddleware:
    """Counts and times requests by route template (bounded), in plain ASGI for speed."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route: Any = scope.get("route")
            template = route_label(getattr(route, "path", None) or "unmatched")
            method = scope.get("method", "")
            if method not in KNOWN_METHODS:
                method = "OTHER"  # any client can send any method: keep the label bounded
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)
            self.metrics.requests.labels(template, method, str(status)).inc()
