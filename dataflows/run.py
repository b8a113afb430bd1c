"""Run the dataflow in this process: `crmflow dataflow` and the tests call this."""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from bytewax.run import cli_main
from prometheus_client import REGISTRY, CollectorRegistry

from config.settings import Settings
from dataflows.flow import build_flow, store_factory
from dataflows.metrics import DataflowMetrics, serve_metrics
from features.rfm import RfmModel
from sinks.bucket_store import retrying
from sinks.keys import claim_layout

log = logging.getLogger(__name__)


def run_dataflow(settings: Settings, *, process_id: int | None = None,
                 addresses: list[str] | None = None, stop_when_caught_up: bool = False,
                 registry: CollectorRegistry | None = None, metrics_port: int | None = None,
                 as_of: float | None = None, replay: bool = False,
                 rfm_model: RfmModel | None = None, emitted_prefix: str | None = None,
                 drain_rounds: int = 0) -> None:
    """Blocks until the dataflow ends (never, unless `stop_when_caught_up`).

    `drain_rounds` (with `stop_when_caught_up`): at most this many rounds, 0 for
    `MAX_DRAIN_ROUNDS`. A group's processes each run one and the group decides on more,
    since processes deciding apart could disagree and one wait for the others for ever.

    `as_of` (with `stop_when_caught_up`, for replays): at the stream head, timers fire up
    to this time instead of the wall clock, and no later. `replay`, `rfm_model` and
    `emitted_prefix`: see `build_flow`.
    """
    store = store_factory(settings)
    retrying(lambda: claim_layout(store.client, store.layout), "starting")  # Redis may be late
    store.client.close()
    registry = registry if registry is not None else REGISTRY
    metrics = DataflowMetrics.create(registry)
    port = settings.dataflow.metrics_port if metrics_port is None else metrics_port
    if port and process_id:
        port += process_id  # several processes on one host: one metrics port each
    if port:
        serve_metrics(registry, settings.dataflow.metrics_host, port, "dataflow.metrics_port",
                      "dataflow")
    bytewax_port = settings.dataflow.bytewax_metrics_port
    if bytewax_port:  # read by Bytewax's runtime when the dataflow starts
        os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "1"
        os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(bytewax_port + (process_id or 0))
        log.info("Bytewax metrics on :%d/metrics", bytewax_port + (process_id or 0))
    for _ in range((drain_rounds or MAX_DRAIN_ROUNDS) if stop_when_caught_up else 1):
        heads = stream_heads(settings)  # before the round
        # each round loads its buckets afresh and counts their timers again
        metrics.timers_pending.set(0)
        flow = build_flow(settings, metrics, stop_when_caught_up=stop_when_caught_up,
                          as_of=as_of, replay=replay, rfm_model=rfm_model,
                          emitted_prefix=emitted_prefix)
        cli_main(  # type: ignore[no-untyped-call]
            flow, workers_per_process=settings.dataflow.workers, process_id=process_id,
            addresses=addresses,
            epoch_interval=timedelta(seconds=settings.dataflow.epoch_interval))
        if stream_heads(settings) == heads:
            return  # nothing was appended meanwhile: every entry has been read
        # The dataflow appends events for other clients (identity steps, forwards) that a
        # partition which had already reached its head did not read: another round.


MAX_DRAIN_ROUNDS = 10


def stream_heads(settings: Settings) -> dict[int, tuple[int, int]]:
    """The last entry of every non-empty event stream, by partition (own connection)."""
    store = store_factory(settings)
    try:
        return store.stream_heads()
    finally:
        store.client.close()
