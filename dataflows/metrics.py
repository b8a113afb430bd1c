"""The dataflow's Prometheus metrics, created against a registry that is passed in.

Labels are bounded: event and trigger types, reasons, partition numbers; never client ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from features.rules import TRIGGER_TYPES

log = logging.getLogger(__name__)

OTHER = "other"


class PortInUse(RuntimeError):
    """A metrics port is taken (another process of the same kind, most likely)."""


def serve_metrics(registry: CollectorRegistry, host: str, port: int, setting: str,
                  what: str) -> None:
    """Prometheus /metrics of `registry` on host:port (the dataflow's, the deliverer's);
    PortInUse naming `setting` when the port is taken."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise PortInUse(f"{host}:{port} ({setting}) is not free: "
                        f"{exc.strerror or exc}") from None
    log.info("%s metrics on http://%s:%d/metrics", what, host, port)


def trigger_label(trigger_type: str) -> str:
    """A catalogue type, or `other` for a manual touch's own occasion name (bounded labels)."""
    return trigger_type if trigger_type in TRIGGER_TYPES else OTHER


@dataclass(frozen=True)
class DataflowMetrics:
    events_read: Counter
    events_processed: Counter
    late_events: Counter
    duplicates: Counter
    triggers: Counter
    dead_letters: Counter
    lag_seconds: Gauge
    pending_entries: Gauge
    watermark: Gauge
    timers_pending: Gauge
    commit_seconds: Histogram
    commits: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DataflowMetrics:
        return cls(
            events_read=Counter("crmflow_dataflow_events_read", "Stream entries read",
                                ["partition"], registry=registry),
            events_processed=Counter("crmflow_dataflow_events_processed",
                                     "Events applied to client state", ["type"],
                                     registry=registry),
            late_events=Counter("crmflow_dataflow_late_events",
                                "Events applied after a later event of the same client",
                                ["type"], registry=registry),
            duplicates=Counter("crmflow_dataflow_duplicate_events",
                               "Events ignored as duplicates of one already applied",
                               registry=registry),
            triggers=Counter("crmflow_triggers_raised",
                             "Trigger decisions recorded, by trigger type and status",
                             ["type", "status"], registry=registry),
            dead_letters=Counter("crmflow_dead_letters", "Entries sent to the dead-letter stream",
                                 ["reason"], registry=registry),
            lag_seconds=Gauge("crmflow_consumer_lag_seconds",
                              "Age of the oldest stream entry not yet read (0 when caught up)",
                              ["partition"], registry=registry),
            pending_entries=Gauge("crmflow_consumer_pending_entries",
                                  "Stream entries appended but not yet read",
                                  ["partition"], registry=registry),
            watermark=Gauge("crmflow_watermark_seconds",
                            "The partition's clock for timers, epoch seconds",
                            ["partition"], registry=registry),
            timers_pending=Gauge("crmflow_timers_pending", "Clients with a pending timer",
                                 registry=registry),
            commit_seconds=Histogram("crmflow_redis_commit_seconds",
                                     "Latency of one pipelined batch of bucket commits",
                                     registry=registry),
            commits=Counter("crmflow_redis_commits", "Bucket commits written",
                            registry=registry),
        )
