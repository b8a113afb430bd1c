"""`crmflow dataflow` with `dataflow.processes` > 1: a group of Bytewax processes on one host.

Each child is `crmflow dataflow --process-id I --addresses ...` on loopback ports from
`dataflow.cluster_port`; Bytewax shares the streams' partitions among them, and each serves
its metrics on `dataflow.metrics_port + I`. The group lives and dies as one (a Bytewax
cluster cannot lose a member): when a child exits, the others are stopped and the group
exits with that child's code, for the supervisor (compose, systemd, `crmflow up`) to
restart it. The dataflow keeps no state of its own, so a restart resumes from Redis.
With `--drain` the group runs drain rounds and exits 0 once the streams are drained.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from config.settings import Settings
from crmflow.supervisor import CHILD_ENTRY, Child
from dataflows.run import MAX_DRAIN_ROUNDS, stream_heads

log = logging.getLogger("crmflow.dataflow")
STOP_TIMEOUT = 10.0


def addresses(settings: Settings) -> str:
    base = settings.dataflow.cluster_port
    return ";".join(f"127.0.0.1:{base + n}" for n in range(settings.dataflow.processes))


def run_group(settings: Settings, config_file: Path | None, *, demo: bool = False,
              drain: bool = False) -> int:
    """Run the group until a child exits or a signal arrives; the exit code. `demo`: the
    children run on the demo's timings too, as the API does. `drain`: the group runs
    rounds, each child stopping at the streams' heads, until a round appended nothing (the
    dataflow appends identity forwards); 0 once drained."""
    argv = [sys.executable, "-m", CHILD_ENTRY, "dataflow", "--addresses",
            addresses(settings)]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    if demo:
        argv.append("--demo")
    if drain:
        argv.append("--drain-round")
    env = dict(os.environ)
    if settings.redis.url:
        env["REDIS_URL"] = settings.redis.url
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(MAX_DRAIN_ROUNDS if drain else 1):
        heads = stream_heads(settings) if drain else None
        children = [Child(f"dataflow {n}", [*argv, "--process-id", str(n)], env)
                    for n in range(settings.dataflow.processes)]
        for child in children:
            child.start()
        log.info("dataflow group of %d processes: %s", len(children), addresses(settings))
        code = _watch(children, lambda: stopping, draining=drain)
        for child in children:  # SIGTERM, then SIGKILL for one that does not stop in time
            child.stop(STOP_TIMEOUT)
        if stopping or code != 0 or not drain or stream_heads(settings) == heads:
            return 0 if stopping else code
    return 0


def _watch(children: list[Child], stopping: Callable[[], bool], *, draining: bool) -> int:
    """Wait while the group runs: a child's failure (or, live, any exit) ends it with that
    child's code; in a drain round every child ending with 0 ends it with 0."""
    while not stopping():
        exited = [child for child in children if not child.alive()]
        failed = [child for child in exited if not draining or child.returncode() != 0]
        if failed:
            returncode = failed[0].returncode()
            log.error("%s exited (%s): stopping the group", failed[0].name, returncode)
            return returncode or 1
        if draining and len(exited) == len(children):
            return 0
        time.sleep(0.2)
    return 0
