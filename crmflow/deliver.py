"""`crmflow deliver`: trigger decisions POSTed to the configured webhook endpoints, until
SIGTERM or Ctrl-C (sinks/webhooks.py does the work; README, Webhooks)."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import REGISTRY, CollectorRegistry

from config.settings import Settings
from dataflows.metrics import serve_metrics
from sinks.webhook_metrics import WebhookMetrics
from sinks.webhooks import deliver

log = logging.getLogger("crmflow.deliver")


def run_deliver(settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
    """Blocks until SIGTERM or SIGINT; then requests in flight get a few seconds to finish,
    and what is not settled stays pending in Redis for the next start."""
    registry = registry if registry is not None else REGISTRY
    metrics = WebhookMetrics.create(registry)
    if settings.webhooks.metrics_port:  # PortInUse (dataflows.metrics) when taken
        serve_metrics(registry, settings.webhooks.metrics_host, settings.webhooks.metrics_port,
                      "webhooks.metrics_port", "webhook")
    asyncio.run(_deliver_until_stopped(settings, metrics))


async def _deliver_until_stopped(settings: Settings, metrics: WebhookMetrics) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await deliver(settings, stop, metrics)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("webhook delivery stopped")
