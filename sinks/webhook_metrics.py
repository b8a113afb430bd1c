"""`crmflow deliver`'s Prometheus metrics, created against a registry that is passed in.

Labels are bounded: the endpoint names of the configuration, and fixed vocabularies for
outcomes and answers. Never a client id, a trigger id or a URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DELIVERED = "delivered"
RETRIED = "retried"
FAILED = "failed"
OUTCOMES = (DELIVERED, RETRIED, FAILED)
# what one request got: the status's class, or no answer
ANSWERS = ("2xx", "3xx", "4xx", "5xx", "timeout", "error")
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
               4 * 3600.0, 86400.0)


def answer_label(status: int | None, timed_out: bool) -> str:
    if status is None:
        return "timeout" if timed_out else "error"
    return f"{status // 100}xx" if 2 <= status // 100 <= 5 else "error"


@dataclass(frozen=True)
class WebhookMetrics:
    deliveries: Counter
    requests: Counter
    request_seconds: Histogram
    lag_seconds: Histogram
    in_flight: Gauge
    lost: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WebhookMetrics:
        return cls(
            deliveries=Counter(
                "crmflow_webhook_deliveries",
                "Records by endpoint and outcome: delivered, retried (an attempt that will "
                "be made again), failed (given up, in the webhook_failed stream)",
                ["endpoint", "outcome"], registry=registry),
            requests=Counter("crmflow_webhook_requests",
                             "Requests sent, by the answer's status class, timeout or error",
                             ["endpoint", "answer"], registry=registry),
            request_seconds=Histogram("crmflow_webhook_request_duration_seconds",
                                      "Time from sending a request to its answer or error",
                                      ["endpoint"], buckets=REQUEST_BUCKETS,
                                      registry=registry),
            lag_seconds=Histogram("crmflow_webhook_delivery_lag_seconds",
                                  "From a record's decided_at to its delivery",
                                  ["endpoint"], buckets=LAG_BUCKETS, registry=registry),
            in_flight=Gauge("crmflow_webhook_records_in_flight",
                            "Records read and not yet settled (sending or waiting to retry)",
                            ["endpoint"], registry=registry),
            lost=Counter("crmflow_webhook_records_lost",
                         "Records removed from a trigger stream before the endpoint's group "
                         "read them (trimmed by redis.stream_maxlen, or erased); Redis 7+",
                         ["endpoint"], registry=registry),
        )

    def prepare(self, endpoint: str) -> None:
        """Every series of an endpoint at 0 from the start, so rates and alerts see it."""
        for outcome in OUTCOMES:
            self.deliveries.labels(endpoint, outcome)
        for answer in ANSWERS:
            self.requests.labels(endpoint, answer)
        self.in_flight.labels(endpoint).set(0)
        self.lost.labels(endpoint)
