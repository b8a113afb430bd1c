"""`crmflow up`: one machine, everything: Redis, the dataflow, the API, the webhook deliverer
when endpoints are configured, optionally the demo.

The supervisor restarts any part that dies (the dataflow is disposable: it resumes from
Redis alone) and stops them all on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import httpx
import redis

from config.settings import Settings, redacted_url
from crmflow.parent_watch import child_environment
from crmflow.redis_server import EmbeddedRedis
from crmflow.runtime import ensure_keys, with_redis
from features.follow_up import FOLLOW_UP_OF
from sinks.keys import KeyLayout
from sinks.redis_client import sync_client

log = logging.getLogger("crmflow.up")
STABLE_AFTER = 60.0
# the module a part runs as (never imported here: it ignores Ctrl-C, for its parent to stop it)
CHILD_ENTRY = "crmflow.child"
StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv,  # noqa: S603
                                        env=child_environment(self.env))
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_healthy(url: str, child: Child, stop: threading.Event, timeout: float = 30.0
                  ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop.is_set():  # SIGTERM or Ctrl-C while starting: stop now, say nothing is up
            raise SystemExit(0)
        if not child.alive():
            raise SystemExit(f"crmflow up: the {child.name} exited at start-up (see above)")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"crmflow up: the API did not answer on {url} within {timeout:.0f}s")


def _banner(settings: Settings, api_url: str, embedded: bool, demo: bool) -> str:
    write_key = settings.api.write_keys[0] if settings.api.write_keys else "(admin key)"
    read_key = settings.api.read_keys[0] if settings.api.read_keys else "(admin key)"
    admin_key = settings.api.admin_keys[0] if settings.api.admin_keys else "(none configured)"
    where = f"embedded, data in {settings.redis.data_dir}" if embedded else "REDIS_URL"
    lines = [
        "",
        "crmflow is up",
        f"  API        {api_url}   docs {api_url}/docs   metrics {api_url}/metrics",
        *([f"  Console    {api_url}/console   (sign in with the read or admin key)"]
          if settings.console.enabled else []),
        f"  Dataflow   metrics http://{settings.dataflow.metrics_host}:"
        f"{settings.dataflow.metrics_port}/metrics",
        f"  Redis      {redacted_url(settings.redis.url or '')} ({where})",
        *([f"  Webhooks   {', '.join(e.name for e in settings.webhooks.endpoints)}   metrics "
           f"http://{settings.webhooks.metrics_host}:{settings.webhooks.metrics_port}/metrics"]
          if settings.webhooks.endpoints else []),
        f"  Write key  {write_key}   (HTTP Basic user name, Segment style)",
        f"  Read key   {read_key}   (Authorization: Bearer)",
        f"  Admin key  {admin_key}   (Bearer: manual touches; all of the above)",
        "  Try        curl -H 'Authorization: Bearer " + read_key + "' "
        + api_url + "/v1/profiles/<client id>",
        "  Demo       simulated shoppers are sending events now" if demo else
        "  Send       POST " + api_url + "/v1/batch (Segment) or /v1/events (native)",
        "Triggers appear below as they are raised; Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _follows_up(payload: str) -> bool:
    try:
        return FOLLOW_UP_OF in json.loads(payload)
    except (ValueError, TypeError):  # not an object: no follow-up
        return False


def _format_trigger(fields: dict[bytes, bytes]) -> str:
    def get(name: str) -> str:
        return fields.get(name.encode(), b"").decode()
    status = get("status") or "sent"
    if get("reason"):
        status += f" ({get('reason')})"
    elif get("channel"):
        status += f" via {get('channel')}"
    kind = get("type")
    if _follows_up(get("payload")):
        kind += " follow-up"
    return (f"  {get('fired_at')}  {kind:<25} client={get('client_id'):<18} "
            f"{status:<26} {get('payload')[:70]}")


def tail_triggers(settings: Settings, *, from_start: bool = False, since: float | None = None,
                  stop: threading.Event | None = None) -> None:
    """Follow every partition's trigger stream and print one line per trigger: from the
    start, from the time `since` (epoch seconds), or from now."""
    layout = KeyLayout.from_settings(settings)
    assert settings.redis.url is not None
    client = sync_client(settings.redis)
    streams = layout.all_trigger_streams()
    if from_start:
        positions: dict[str, str] = dict.fromkeys(streams, "0-0")
    elif since is not None:
        positions = dict.fromkeys(streams, f"{int(since * 1000)}-0")
    else:  # from now: each stream's own last id, not `$`, which a read of several streams
        # keeps for a stream until it answers (entries between two reads were never shown)
        positions = {stream: _last_id(client, stream) for stream in streams}
    while stop is None or not stop.is_set():
        try:
            replies = _read_triggers(client, positions, settings.redis.cluster)
        except redis.RedisError as exc:
            if stop is not None and stop.is_set():
                return  # shutting down: Redis may already be gone
            log.warning("trigger tail: %s", exc)
            time.sleep(1)
            continue
        for stream, entries in replies or []:
            for entry_id, fields in entries:
                print(_format_trigger(fields), flush=True)  # the user asked to see them
                positions[stream.decode()] = entry_id.decode()


def _last_id(client: redis.Redis, stream: str) -> str:
    last = cast(list[tuple[bytes, Any]], client.xrevrange(stream, count=1))
    return last[0][0].decode() if last else "0-0"


def _read_triggers(client: redis.Redis, positions: dict[str, str], cluster: bool
                   ) -> StreamReply:
    """The next trigger entries: one blocking read of every stream, or, on a cluster (where
    the streams live in different slots), a read of each in turn and a pause when idle."""
    if not cluster:
        return cast(StreamReply, client.xread(positions, count=500, block=1000))  # type: ignore[arg-type]
    replies: StreamReply = []
    for stream, position in positions.items():
        replies += cast(StreamReply, client.xread({stream: position}, count=500))
    if not any(entries for _, entries in replies):
        time.sleep(0.5)
    return replies


def _check_ports_free(settings: Settings) -> None:
    """Refuse to start when our parts could not listen: another `crmflow up` (a second
    `make run`) answered our health check, and the parts that could not bind were restarted
    for ever under a banner saying all was well."""
    wanted = [(settings.api.host, settings.api.port, "api.port")]
    if settings.dataflow.metrics_port:
        wanted.append((settings.dataflow.metrics_host, settings.dataflow.metrics_port,
                       "dataflow.metrics_port"))
    if settings.webhooks.endpoints and settings.webhooks.metrics_port:
        wanted.append((settings.webhooks.metrics_host, settings.webhooks.metrics_port,
                       "webhooks.metrics_port"))
    check_ports_free("up", wanted)


def check_ports_free(verb: str, wanted: list[tuple[str, int, str]]) -> None:
    """SystemExit naming the first (host, port, setting) that cannot be listened on."""
    for host, port, name in wanted:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise SystemExit(f"crmflow {verb}: {host}:{port} ({name}) is not free: "
                                 f"{exc.strerror or exc}; is crmflow already running?"
                                 ) from None


def run_up(settings: Settings, *, config_file: Path | None, demo: bool, keys_file: Path) -> None:
    _check_ports_free(settings)
    settings = ensure_keys(settings, keys_file)
    settings, lease = with_redis(settings)
    redis_server = lease.server if lease is not None else None
    assert settings.redis.url is not None
    env = dict(os.environ)
    env.update({
        "REDIS_URL": settings.redis.url,
        "CRMFLOW_WRITE_KEY": ",".join(settings.api.write_keys),
        "CRMFLOW_READ_KEY": ",".join(settings.api.read_keys),
        "CRMFLOW_ADMIN_KEY": ",".join(settings.api.admin_keys),
        "PYTHONUNBUFFERED": "1",
    })
    base = [sys.executable, "-m", CHILD_ENTRY]
    options = (["--config", str(config_file)] if config_file else []) + (
        ["--demo"] if demo else [])
    children = [Child("dataflow", [*base, "dataflow", *options], env),
                Child("API", [*base, "api", *options], env)]
    if settings.webhooks.endpoints:  # a part of its own: a dead endpoint slows nothing else
        children.append(Child("webhook deliverer", [*base, "deliver", *options], env))
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    api_url = f"http://{settings.api.host}:{settings.api.port}"
    threads: list[threading.Thread] = []
    started = time.time()
    try:
        for child in children:
            child.start()
        _wait_healthy(api_url, children[1], stop)
        print(_banner(settings, api_url, lease is not None, demo), flush=True)
        threads.append(threading.Thread(target=tail_triggers, args=(settings,),
                                        kwargs={"stop": stop, "since": started},
                                        daemon=True))
        if demo:
            from crmflow.demo import run_demo

            threads.append(threading.Thread(
                target=run_demo, args=(api_url, settings.api.write_keys[0]),
                kwargs={"events_per_second": settings.demo.events_per_second,
                        "shoppers": settings.demo.shoppers, "seed": settings.demo.seed,
                        "stop": stop}, daemon=True))
        for thread in threads:
            thread.start()
        _supervise(children, redis_server, stop)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)  # the demo sends what it has left while the API is up
        for child in reversed(children):
            child.stop()
        if lease is not None:
            lease.release()  # our children are gone: the server stops unless others use it


def _supervise(children: list[Child], redis_server: EmbeddedRedis | None,
               stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if redis_server is not None and not redis_server.alive():
            log.error("embedded redis exited; restarting it (data is kept in its AOF)")
            redis_server.start()
        for child in children:
            if child.alive():
                if child.restarts and time.monotonic() - child.started_at > STABLE_AFTER:
                    child.restarts = 0  # it has run well again: the next crash starts afresh
                continue
            code = child.process.returncode if child.process else None
            backoff = min(30.0, 2.0 ** min(child.restarts, 5))
            if time.monotonic() - child.started_at < backoff:
                continue
            child.restarts += 1
            log.error("the %s exited (code %s); restarting it (restart %d)", child.name, code,
                      child.restarts)
            child.start()
