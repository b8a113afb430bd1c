"""Run the dataflow in this process: `crmflow dataflow` and the tests call this."""

from __future__ import annotations

import logging
from datetime import timedelta

from bytewax.run import cli_main
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from config.settings import Settings
from dataflows.flow import build_flow, store_factory
from dataflows.metrics import DataflowMetrics
from sinks.keys import claim_layout

log = logging.getLogger(__name__)


def run_dataflow(settings: Settings, *, process_id: int | None = None,
                 addresses: list[str] | None = None, stop_when_caught_up: bool = False,
                 registry: CollectorRegistry | None = None, metrics_port: int | None = None,
                 as_of: float | None = None) -> None:
    """Blocks until the dataflow ends (never, unless `stop_when_caught_up`).

    `as_of` (with `stop_when_caught_up`, for replays): at the stream head, timers fire up
    to this time instead of the wall clock, and no later.
    """
    store = store_factory(settings)
    claim_layout(store.client, store.layout)
    store.client.close()
    registry = registry if registry is not None else REGISTRY
    metrics = DataflowMetrics.create(registry)
    port = settings.dataflow.metrics_port if metrics_port is None else metrics_port
    if port and process_id:
        port += process_id  # several processes on one host: one metrics port each
    if port:
        host = settings.dataflow.metrics_host
        start_http_server(port, addr=host, registry=registry)
        log.info("dataflow metrics on http://%s:%d/metrics", host, port)
    flow = build_flow(settings, metrics, stop_when_caught_up=stop_when_caught_up, as_of=as_of)
    cli_main(  # type: ignore[no-untyped-call]
        flow, workers_per_process=settings.dataflow.workers, process_id=process_id,
        addresses=addresses, epoch_interval=timedelta(seconds=settings.dataflow.epoch_interval))
