"""Metrics that move: store gauges refreshed at scrape, and late events in the dataflow."""

from __future__ import annotations

import time

import httpx
from prometheus_client import CollectorRegistry

from tests.support import api_server, drain, make_settings, post_events, read_headers


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
        assert httpx.get(url + "/v1/profiles/nobody", headers=read_headers()).status_code == 404
        text = httpx.get(url + "/metrics").text
    assert registry.get_sample_value("crmflow_dataflow_late_events_total",
                                     {"type": "visit"}) == 1.0
    assert registry.get_sample_value("crmflow_dataflow_events_processed_total",
                                     {"type": "visit"}) == 2.0
    value = registry.get_sample_value
    assert sum(value("crmflow_dataflow_events_read_total", {"partition": str(p)}) or 0
               for p in range(settings.dataflow.partitions)) == 4
    welcomes = [s.value for family in registry.collect() for s in family.samples
                if s.name == "crmflow_triggers_raised_total" and s.labels["type"] == "welcome"]
    assert sum(welcomes) == 2  # one decision per client, whatever the channel made of it
    assert (value("crmflow_redis_commits_total") or 0) >= 1
    assert (value("crmflow_redis_commit_seconds_count") or 0) >= 1
    assert value("crmflow_timers_pending") == 2  # both clients' next lifecycle step
    assert all((value("crmflow_watermark_seconds", {"partition": str(p)}) or 0) > t0
               for p in range(settings.dataflow.partitions))
    assert 'crmflow_profile_not_found_total{route="/v1/profiles/{client_id}"} 1.0' in text
    assert 'crmflow_http_request_duration_seconds_count{method="GET",' \
           'route="/v1/profiles/{client_id}"} 1.0' in text
    assert "crmflow_store_clients 2.0" in text
    assert 'crmflow_segment_members{segment="lifecycle:prospect"} 2.0' in text
    used = next(line for line in text.splitlines()
                if line.startswith("crmflow_redis_used_memory_bytes "))
    assert float(used.split()[1]) > 0
