"""Metrics that move: store gauges refreshed at scrape, and late events in the dataflow."""

from __future__ import annotations

import time

import httpx
from prometheus_client import CollectorRegistry

from tests.support import api_server, drain, make_settings, post_events


def test_store_gauges_and_late_events(redis_url: str, key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix)
    t0 = time.time() - 3600
    events = [
        {"event_id": "r1", "type": "registered", "client_id": "m1", "event_time": t0},
        {"event_id": "r2", "type": "registered", "client_id": "m2", "event_time": t0 + 1},
        {"event_id": "v1", "type": "visit", "client_id": "m1", "event_time": t0 + 100},
        {"event_id": "v0", "type": "visit", "client_id": "m1", "event_time": t0 + 50},  # late
    ]
    registry = CollectorRegistry()
    with api_server(settings) as url:
        assert post_events(url, events).status_code == 200
        drain(settings, registry=registry)
        text = httpx.get(url + "/metrics").text
    assert registry.get_sample_value("crmflow_dataflow_late_events_total",
                                     {"type": "visit"}) == 1.0
    assert registry.get_sample_value("crmflow_dataflow_events_processed_total",
                                     {"type": "visit"}) == 2.0
    assert "crmflow_store_clients 2.0" in text
    assert 'crmflow_segment_members{segment="lifecycle:prospect"} 2.0' in text
    used = next(line for line in text.splitlines()
                if line.startswith("crmflow_redis_used_memory_bytes "))
    assert float(used.split()[1]) > 0
