"""Metrics that move: store gauges refreshed at scrape, and late events in the dataflow."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from crmflow.redis_server import free_port
from tests.support import (
    REPO,
    api_server,
    dataflow_process,
    drain,
    make_settings,
    post_events,
    read_headers,
    wait_for,
    write_config,
)


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


@pytest.mark.slow
def test_bytewax_metrics_are_served_beside_ours(redis_url: str, key_prefix: str,
                                                tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(redis_url, key_prefix, dataflow={"bytewax_metrics_port": port})
    with api_server(settings) as url:
        assert post_events(url, [{"event_id": "b1", "type": "visit", "client_id": "b",
                                  "event_time": time.time()}]).status_code == 200
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/crmflow.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\bbytewax_[a-z_]+", target["expr"])}
    assert queried
    with dataflow_process(write_config(settings, tmp_path / "crmflow.yaml")):
        def scraped() -> str:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return ""

        # a step's series appear once it has run: the sink's after its first write
        text = wait_for(lambda: "item_inp_count" in (t := scraped())
                        and all(f"\n{name}{{" in t for name in queried) and t, 60,
                        "Bytewax's metrics server with every series the dashboard queries",
                        interval=0.5)
    assert "stateful_batch_on_batch_duration_seconds" in text  # our bucket logic's step
