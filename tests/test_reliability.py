"""Faults: a full backlog refuses events instead of dropping them, and a Redis outage
(a crash, then a restart from its append-only file) loses no acknowledged event."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from crmflow.redis_server import EmbeddedRedis, free_port
from dataflows.flow import store_factory
from dataflows.metrics import DataflowMetrics
from dataflows.source import EventStreamSource, SourceConfig
from sinks.bytewax_sink import BucketCommitSink
from sinks.keys import KeyLayout
from sinks.parquet_export import client_states
from tests.support import (
    ADMIN_KEY,
    api_server,
    dataflow_process,
    drain,
    make_settings,
    post_events,
    read_headers,
    wait_for,
    write_config,
)


def orders(prefix: str, count: int, t0: float) -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}{n}", "type": "order_placed", "client_id": f"{prefix}{n % 7}",
             "event_time": t0 + n, "order": {"order_id": f"{prefix}{n}", "total": 10}}
            for n in range(count)]


def stream_length(client: redis.Redis, layout: KeyLayout) -> int:
    return sum(client.xlen(stream) for stream in layout.all_event_streams())


@pytest.mark.slow
def test_a_full_backlog_refuses_events_and_drops_none(
        redis_client: redis.Redis, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, key_prefix, redis={"max_stream_length": 50},
                             dataflow={"partitions": 1})
    layout = KeyLayout.from_settings(settings)
    t0 = time.time() - 600
    with api_server(settings) as url:
        for start in range(0, 40, 10):  # no dataflow running: ingest keeps working
            assert post_events(url, orders("a", 40, t0)[start:start + 10]).status_code == 200
        refused = post_events(url, orders("b", 20, t0))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert "holds 40 entries (cap 50)" in refused.json()["detail"]
        assert stream_length(redis_client, layout) == 40  # nothing dropped, nothing half-in
        metrics = httpx.get(url + "/metrics").text
        assert 'crmflow_ingest_events_rejected_total{reason="backlog_full",source="native"} ' \
               '20.0' in metrics
        assert 'crmflow_event_stream_length{partition="0"} 40.0' in metrics
        with dataflow_process(write_config(settings, tmp_path / "crmflow.yaml")):
            # the dataflow applies the backlog and, the stream being over half its cap,
            # trims what it applied at its next trim (every 10 s, or once a quarter of the
            # cap was read) without waiting a day
            wait_for(lambda: stream_length(redis_client, layout) < 25, 40,
                     "the applied entries to be trimmed", interval=0.5)
        assert post_events(url, orders("b", 20, t0)).status_code == 200
    drain(settings)
    assert applied(redis_url, layout) == 60


def applied(url: str, layout: KeyLayout) -> int:
    """Orders applied, over every client state."""
    client = redis.Redis.from_url(url)
    try:
        return sum(state.orders_count for _, state in client_states(client, layout))
    finally:
        client.close()


@pytest.mark.slow
def test_redis_outage_answers_503_and_loses_no_acknowledged_event(
        tmp_path: Path, key_prefix: str) -> None:
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port)
    server.start()
    settings = make_settings(server.url, key_prefix,
                             dataflow={"offset_flush_interval": 0.2, "tick_interval": 0.05})
    layout = KeyLayout.from_settings(settings)
    t0 = time.time() - 600
    acknowledged: list[dict[str, Any]] = []
    try:
        with api_server(settings) as url, dataflow_process(
                write_config(settings, tmp_path / "crmflow.yaml")) as dataflow:
            before = orders("x", 60, t0)
            assert post_events(url, before).status_code == 200
            acknowledged += before
            wait_for(lambda: applied(server.url, layout) == 60, 60, "the first orders applied",
                     interval=0.2)  # the dataflow is running when Redis goes
            server.kill()  # a crash: SIGKILL, no save; the AOF has every acknowledged write
            during = post_events(url, orders("y", 10, t0))
            assert during.status_code == 503 and during.headers["retry-after"] == "1"
            read = httpx.get(url + "/v1/profiles/x1", headers=read_headers(), timeout=10)
            assert read.status_code == 503 and read.headers["retry-after"] == "1"
            time.sleep(3)  # the dataflow keeps retrying meanwhile, with backoff
            assert dataflow.poll() is None, dataflow.stderr.read()[-3000:]  # type: ignore[union-attr]
            server = EmbeddedRedis(tmp_path / "redis", port=port)
            server.start()
            after = orders("z", 60, t0)
            response = wait_for(lambda: (r := post_events(url, after)).status_code == 200
                                and r, 20, "ingest to come back", interval=0.2)
            assert response.json()["accepted"] == 60
            acknowledged += after
            wait_for(lambda: applied(server.url, layout) == len(acknowledged), 60,
                     "every acknowledged order to be applied", interval=0.5)
            assert dataflow.poll() is None
            profile = httpx.get(url + "/v1/profiles/x1", headers=read_headers(), timeout=10)
            assert profile.status_code == 200
    finally:
        server.stop()


def test_a_full_redis_refuses_writes_with_a_503_and_the_dataflow_waits_for_memory(
        tmp_path: Path, key_prefix: str) -> None:
    """Redis at its maxmemory (policy noeviction) refuses writes. Ingest answered a bare
    500, readiness said ok, and the dataflow crashed at its next commit and could not start
    again until memory was freed; now each says so and waits."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), appendonly=False)
    server.start()
    settings = make_settings(server.url, key_prefix,
                             dataflow={"offset_flush_interval": 0.2, "tick_interval": 0.05})
    layout = KeyLayout.from_settings(settings)
    client = redis.Redis.from_url(server.url)
    t0 = time.time() - 600
    try:
        with api_server(settings) as url:
            assert post_events(url, orders("x", 60, t0)).status_code == 200  # not applied yet
            for chunk in range(40):  # small commands: no large query buffer to free later
                client.hset("ballast", mapping={f"{chunk}-{n}": b"x" * 1000 for n in range(100)})
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", used - 2_000_000)
            client.config_set("maxmemory-policy", "noeviction")
            refused = post_events(url, orders("y", 10, t0))
            assert refused.status_code == 503, refused.text
            assert "maxmemory" in refused.json()["detail"] and refused.headers["retry-after"]
            ready = httpx.get(url + "/readyz", timeout=10)
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"].startswith("full: used_memory")
            erasure = httpx.delete(url + "/v1/profiles/x1", timeout=10,
                                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert erasure.status_code == 503, erasure.text  # an admin's write, refused too
            assert "maxmemory" in erasure.json()["detail"]
            with dataflow_process(write_config(settings, tmp_path / "crmflow.yaml")) as flow:
                time.sleep(4)  # starts, loads, and cannot commit: it must wait, not die
                assert flow.poll() is None
                assert applied(server.url, layout) == 0
                client.delete("ballast")
                wait_for(lambda: applied(server.url, layout) == 60, 60,
                         "the orders applied once memory is freed", interval=0.2)
                assert flow.poll() is None
            assert httpx.get(url + "/readyz", timeout=10).json()["checks"]["redis"] == "ok"
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("part", ["source", "sink"])
def test_the_dataflows_parts_wait_for_a_redis_that_is_not_up_yet(tmp_path: Path,
                                                                  part: str) -> None:
    """A source partition (its resume position) and a sink partition (the purge of pending
    erasures) built while Redis is away wait for it, instead of killing the dataflow."""
    server = EmbeddedRedis(tmp_path, appendonly=False)
    settings = make_settings(server.url, "late")
    late = threading.Timer(1.0, server.start)
    late.start()
    try:
        metrics = DataflowMetrics.create(CollectorRegistry())
        built: Any
        if part == "source":
            built = EventStreamSource(
                lambda: store_factory(settings), settings.dataflow.partitions,
                SourceConfig(batch_size=10, tick_interval=1, idle_wait=0.1, heartbeat_ttl=5),
                metrics).build_part("events", "0", None)
        else:
            built = BucketCommitSink(lambda: store_factory(settings), metrics).build("s", 0, 1)
        built.close()
    finally:
        late.join()
        server.stop()
