"""Test helpers that run real components: uvicorn over HTTP, Bytewax, crmflow processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
import uvicorn
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api.app import create_app
from config.settings import Settings
from crmflow.redis_server import free_port
from crmflow.supervisor import stop_process
from dataflows.run import run_dataflow
from sinks.keys import KeyLayout

WRITE_KEY = "test-write-key"
READ_KEY = "test-read-key"
ADMIN_KEY = "test-admin-key"
REPO = Path(__file__).resolve().parents[1]


def make_settings(redis_url: str, prefix: str, **sections: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {
        "redis": {"url": redis_url, "key_prefix": prefix},
        "api": {"write_keys": [WRITE_KEY], "read_keys": [READ_KEY], "admin_keys": [ADMIN_KEY],
                "port": free_port()},
        "dataflow": {"partitions": 4, "buckets": 64, "metrics_port": 0,
                     "tick_interval": 0.1, "offset_flush_interval": 0.5,
                     "allowed_lateness": 0.5},
    }
    for name, section in sections.items():
        values[name] = {**values.get(name, {}), **section}
    return Settings(**values)


def write_config(settings: Settings, path: Path) -> Path:
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


def drain(settings: Settings, registry: CollectorRegistry | None = None,
          as_of: float | None = None) -> None:
    """Run the dataflow in this process until every stream entry is processed.

    With `as_of`, timers fire up to that time at the end (a replay "as of"), else up to now.
    """
    run_dataflow(settings, stop_when_caught_up=True,
                 registry=registry if registry is not None else CollectorRegistry(),
                 metrics_port=0, as_of=as_of)


@contextmanager
def api_server(settings: Settings, app: FastAPI | None = None) -> Iterator[str]:
    """The real app (or `app`, built on `settings`) on a real socket, in a thread; yields
    its base URL."""
    app = create_app(settings) if app is None else app
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.api.port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.api.port}"
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def dataflow_process(config_file: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """`crmflow dataflow` as a separate OS process (so it can be killed with SIGKILL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMFLOW_")}
    env.pop("REDIS_URL", None)
    # stderr to a file, not a pipe nobody reads: a chatty process would block on a full pipe
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "crmflow.cli", "dataflow", "--config", str(config_file),
             *extra], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            yield process
        finally:
            stop_process(process)


def read_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {READ_KEY}"}


def all_triggers(client: redis.Redis, settings: Settings) -> list[dict[str, str]]:
    layout = KeyLayout.from_settings(settings)
    out = []
    for stream in layout.all_trigger_streams():
        for _, fields in client.xrange(stream):
            out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


def wait_for(condition: Callable[[], Any], timeout: float, message: str,
             interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {message}")


def post_events(url: str, events: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(url + "/v1/events", json={"events": events}, auth=(WRITE_KEY, ""),
                      timeout=10)
