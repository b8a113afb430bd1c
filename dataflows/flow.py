"""The crmflow dataflow: event streams -> buckets (state, timers, triggers) -> Redis."""

from __future__ import annotations

from dataclasses import replace

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from config.settings import Settings
from dataflows.buckets import BucketConfig, LazyBucketLogic
from dataflows.metrics import DataflowMetrics
from dataflows.rfm_model import RfmModelCache
from dataflows.source import EventStreamSource, SourceConfig
from features.rfm import RfmModel
from sinks.bucket_store import BucketStore
from sinks.bytewax_sink import BucketCommitSink
from sinks.erasure import Retention
from sinks.keys import KeyLayout
from sinks.redis_client import sync_client

RFM_POLL_SECONDS = 5.0  # how often a process looks for a newer RFM model


def store_factory(settings: Settings, *, emitted_prefix: str | None = None) -> BucketStore:
    """`emitted_prefix`: the events the dataflow writes for other clients (identity steps,
    forwards) go to the event streams under this key prefix instead of its own input."""
    layout = KeyLayout.from_settings(settings)
    return BucketStore(sync_client(settings.redis), layout,
                       ledger_max_entries=settings.redis.ledger_max_entries,
                       stream_maxlen=settings.redis.stream_maxlen,
                       dedupe_window=settings.redis.dedupe_window,
                       timeline_events=settings.console.timeline_events,
                       activity_retention=settings.console.activity_retention,
                       emitted_layout=None if emitted_prefix is None
                       else replace(layout, prefix=emitted_prefix))


def build_flow(settings: Settings, metrics: DataflowMetrics, *,
               stop_when_caught_up: bool = False, as_of: float | None = None,
               replay: bool = False, rfm_model: RfmModel | None = None,
               emitted_prefix: str | None = None) -> Dataflow:
    """`replay`: timers run on event time alone (see BucketConfig); `rfm_model`: score with
    this model instead of polling Redis for one (with `rfm.refresh` 0); `emitted_prefix`:
    see `store_factory` (a replay's first stage, history/replay.py)."""
    df = settings.dataflow
    source_config = SourceConfig(
        batch_size=df.batch_size, tick_interval=df.tick_interval, idle_wait=df.idle_wait,
        heartbeat_ttl=df.heartbeat_ttl, retention=settings.redis.stream_retention,
        stop_when_caught_up=stop_when_caught_up, as_of=as_of,
        max_stream_length=settings.redis.max_stream_length)
    bucket_config = BucketConfig(rules=settings.trigger_rules(),
                                 offset_flush_interval=df.offset_flush_interval,
                                 allowed_lateness=df.allowed_lateness, replay=replay)
    loader = store_factory(settings)  # bucket loads share one connection pool per process
    models = RfmModelCache(loader.client, loader.layout, bucket_config.rules,
                           poll=RFM_POLL_SECONDS, model=rfm_model)
    models.poll()  # buckets start with the current model, not without one

    def make_store() -> BucketStore:
        return store_factory(settings, emitted_prefix=emitted_prefix)

    flow = Dataflow("crmflow")
    entries = op.input("events", flow, EventStreamSource(make_store, loader.layout.partitions,
                                                         source_config, metrics))
    commits = op.stateful_batch(
        "buckets", entries, lambda _resume: LazyBucketLogic(loader, bucket_config, metrics, models))
    op.output("commit", commits, BucketCommitSink(make_store, metrics,
                                                  Retention.from_settings(settings.redis)))
    return flow
