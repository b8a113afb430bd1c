"""Scale-out: a real 3-node Redis Cluster on loopback and two Bytewax processes (one
`crmflow dataflow` with `dataflow.processes: 2`) give the same profiles and trigger ids as
one process on one Redis."""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from config.settings import Settings
from crmflow.redis_server import EmbeddedRedis, free_ports
from features.codec import decode_state
from sinks.keys import KeyLayout
from tests.histories import histories
from tests.support import (
    api_server,
    dataflow_process,
    drain,
    make_settings,
    post_events,
    read_headers,
    wait_for,
    write_config,
)

SLOTS = 16384
DAY = 86400.0


def node_port() -> int:
    """A free port whose cluster-bus port (10,000 higher) is free too."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 55_000)
        with socket.socket() as one, socket.socket() as two:
            try:
                one.bind(("127.0.0.1", port))
                two.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
            return port


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[str]:
    """Three masters sharing the slots; the URL of the first."""
    nodes = [EmbeddedRedis(tmp_path / f"node{n}", port=node_port(), appendonly=False, extra_args=(
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", "5000")) for n in range(3)]
    clients = [redis.Redis(host="127.0.0.1", port=node.port) for node in nodes]
    try:
        for node in nodes:  # inside: a node that fails to start must not leave the others
            node.start()
        share = SLOTS // len(nodes)
        for n, client in enumerate(clients):
            last = SLOTS if n == len(nodes) - 1 else (n + 1) * share
            client.execute_command("CLUSTER ADDSLOTS", *range(n * share, last))
        for node in nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        wait_for(lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients)
                 and all(len(c.cluster("nodes")) == 3 for c in clients), 30,
                 "the cluster to form", interval=0.2)
        yield nodes[0].url
    finally:
        for client in clients:
            client.close()
        for node in nodes:
            node.kill()


def outcome(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    client: Any = (redis.RedisCluster.from_url(settings.redis.url or "") if settings.redis.cluster
                   else redis.Redis.from_url(settings.redis.url or ""))
    layout = KeyLayout.from_settings(settings)
    try:
        states = {key.decode(): decode_state(raw) for bucket in range(layout.buckets)
                  for key, raw in client.hgetall(layout.state(bucket)).items()}
        ids = sorted(fields[b"trigger_id"].decode() + fields[b"status"].decode()
                     for stream in layout.all_trigger_streams()
                     for _, fields in client.xrange(stream))
        return states, ids
    finally:
        client.close()


def comparable(result: tuple[dict[str, Any], list[str]]
               ) -> tuple[dict[str, Any], list[str]]:
    """States and trigger ids as two runs may share: arrival times are each run's own."""
    states, ids = result
    return {key: replace(state, last_received_at=0.0) for key, state in states.items()}, ids


@pytest.mark.slow
def test_two_processes_on_a_cluster_match_one_on_one_redis(
        redis_cluster: str, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    start = (time.time() // DAY - 10) * DAY
    events = [e for h in histories(7, 400, start) for e in h]
    # No RFM model: the live group adopts one on its wall-clock poll, the single drain may end
    # before its own poll, and the two would file their buyers differently (a timing flake
    # this comparison is not about).
    no_rfm_model = {"refresh": 0}
    clustered = make_settings(redis_cluster, key_prefix, redis={"cluster": True}, dataflow={
        "processes": 2, "cluster_port": free_ports(2), "metrics_port": free_ports(2)},
        rfm=no_rfm_model)
    config = write_config(clustered, tmp_path / "cluster.yaml")
    with api_server(clustered) as url:
        for chunk in range(0, len(events), 500):
            response = post_events(url, events[chunk:chunk + 500])
            assert response.status_code == 200, response.text
        with dataflow_process(config) as group:  # `dataflow.processes: 2`: two Bytewax processes
            single = make_settings(redis_url, key_prefix + "s", rfm=no_rfm_model)
            with api_server(single) as single_url:
                for chunk in range(0, len(events), 500):
                    assert post_events(single_url, events[chunk:chunk + 500]).status_code == 200
            drain(single)
            expected = comparable(outcome(single))
            # Timers due by now fire on the head clock in both; the group gets there when
            # it gets there, so wait for its outcome rather than sleep and hope.
            with contextlib.suppress(AssertionError):  # the assert below shows the diff
                wait_for(lambda: comparable(outcome(clustered)) == expected, 120,
                         "the two processes' outcome to match", interval=1)
            assert group.poll() is None
    assert comparable(outcome(clustered)) == expected



def test_store_gauges_on_a_redis_cluster(redis_cluster: str, key_prefix: str) -> None:
    """INFO cannot be pipelined on a cluster: every scrape of the API's /metrics was a 500,
    so Prometheus lost all of the API's metrics with `redis.cluster: true`."""
    settings = make_settings(redis_cluster, key_prefix, redis={"cluster": True},
                             rfm={"refresh": 0})
    t0 = time.time() - 60
    with api_server(settings) as url:
        assert post_events(url, [
            {"event_id": f"c{n}", "type": "registered", "client_id": f"k{n}",
             "event_time": t0 + n} for n in range(3)]).status_code == 200
        drain(settings)
        response = httpx.get(url + "/metrics")
    assert response.status_code == 200, response.text
    assert "crmflow_store_clients 3.0" in response.text
    used = float(next(line for line in response.text.splitlines()
                      if line.startswith("crmflow_redis_used_memory_bytes ")).split()[1])
    cluster = redis.RedisCluster.from_url(redis_cluster)
    try:
        per_node = cluster.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
    finally:
        cluster.close()
    assert len(per_node) == 3
    assert used > max(info["used_memory"] for info in per_node.values())  # all primaries


def test_readyz_is_not_ready_while_a_cluster_primary_is_down(redis_cluster: str,
                                                            key_prefix: str) -> None:
    """/readyz pinged one node: with a primary (a third of the clients) down and the dataflow
    still beating on another, it said ready."""
    settings = make_settings(redis_cluster, key_prefix,
                             redis={"cluster": True, "socket_timeout": "1s"})
    heartbeat = KeyLayout.from_settings(settings).heartbeat()
    cluster = redis.RedisCluster.from_url(redis_cluster)
    try:
        cluster.set(heartbeat, "1", px=120_000)  # as a dataflow process beating
        keeper = cluster.get_node_from_key(heartbeat)
        victim = next(node for node in cluster.get_primaries() if node.name != keeper.name)
    finally:
        cluster.close()
    with api_server(settings) as url:
        assert httpx.get(url + "/readyz").status_code == 200
        with contextlib.suppress(redis.ConnectionError):  # it closes the connection
            redis.Redis(host=victim.host, port=victim.port).shutdown(nosave=True)
        response = httpx.get(url + "/readyz", timeout=30)
    assert response.status_code == 503, response.text
    assert response.json()["checks"]["redis"].startswith("unavailable"), response.text


def test_reads_answer_503_while_a_cluster_primary_is_down(redis_cluster: str,
                                                          key_prefix: str) -> None:
    """A down primary is a ClusterDownError (a reply error, not a lost connection): reads of
    its clients answered 500 instead of 503 with Retry-After, on both read paths."""
    apps = [make_settings(redis_cluster, f"{key_prefix}{fast}",
                          redis={"cluster": True, "socket_timeout": "1s"},
                          api={"fast_reads": fast}) for fast in (True, False)]
    cluster = redis.RedisCluster.from_url(redis_cluster)
    try:
        victim = cluster.get_primaries()[-1]
    finally:
        cluster.close()
    with api_server(apps[0]) as fast, api_server(apps[1]) as routed:
        with contextlib.suppress(redis.ConnectionError):  # it closes the connection
            redis.Redis(host=victim.host, port=victim.port).shutdown(nosave=True)
        answers = [httpx.get(f"{url}/v1/profiles/c{n}", headers=read_headers(), timeout=30)
                   for url in (fast, routed) for n in range(6)]  # refused: lost connections
        survivor = redis.Redis.from_url(redis_cluster)
        try:  # then the others mark it failed, and every node answers CLUSTERDOWN
            wait_for(lambda: survivor.cluster("info")["cluster_state"] == "fail", 30,
                     "the cluster to see its primary down", interval=0.2)
        finally:
            survivor.close()
        down = [httpx.get(f"{url}/v1/profiles/c{n}", headers=read_headers(), timeout=30)
                for url in (fast, routed) for n in range(2)]
    assert {a.status_code for a in down} == {503}, [a.text for a in down]
    answers += down
    statuses = {a.status_code for a in answers}
    assert 500 not in statuses and 503 in statuses, [a.text for a in answers]
    assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 503)


@pytest.mark.slow
def test_a_group_drains_and_exits_like_one_process(redis_url: str, key_prefix: str,
                                                   tmp_path: Path) -> None:
    """`crmflow dataflow --drain` with `dataflow.processes: 2` ends, with status 0, on the
    same outcome as one process's drain (it ran for ever: the children never heard of the
    flag)."""
    start = (time.time() // DAY - 10) * DAY
    events = [e for h in histories(11, 150, start) for e in h]
    no_rfm_model = {"refresh": 0}
    grouped = make_settings(redis_url, key_prefix + "g", dataflow={
        "processes": 2, "cluster_port": free_ports(2), "metrics_port": 0}, rfm=no_rfm_model)
    single = make_settings(redis_url, key_prefix + "s", rfm=no_rfm_model)
    for settings in (grouped, single):
        with api_server(settings) as url:
            for chunk in range(0, len(events), 500):
                assert post_events(url, events[chunk:chunk + 500]).status_code == 200
    config = write_config(grouped, tmp_path / "group.yaml")
    with dataflow_process(config, "--drain") as group:
        assert group.wait(timeout=240) == 0
    drain(single)
    assert comparable(outcome(grouped)) == comparable(outcome(single))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(n) for n in path.read_text().split()] if path.exists() else []


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from /proc")
def test_a_groups_children_stop_when_its_parent_is_killed(redis_url: str, key_prefix: str,
                                                          tmp_path: Path) -> None:
    """A SIGKILL gives the group's parent no chance to stop its children: they notice they
    lost their parent and stop, rather than run on, unsupervised, beside the group that
    replaces them and owning the same buckets."""
    grouped = make_settings(redis_url, key_prefix, dataflow={
        "processes": 2, "cluster_port": free_ports(2), "metrics_port": 0})
    config = write_config(grouped, tmp_path / "group.yaml")
    with dataflow_process(config) as group:
        deadline = time.monotonic() + 60
        while len(children := _children(group.pid)) < 2:
            assert group.poll() is None and time.monotonic() < deadline, "no children"
            time.sleep(0.2)
        time.sleep(1.0)  # the children past their start
        group.kill()
        group.wait()
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in children):
            assert time.monotonic() < deadline, f"children still running: {children}"
            time.sleep(0.2)
