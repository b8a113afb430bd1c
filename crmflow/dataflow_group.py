"""`crmflow dataflow` with `dataflow.processes` > 1: a group of Bytewax processes on one host.

Each child is `crmflow dataflow --process-id I --addresses ...` on loopback ports from
`dataflow.cluster_port`; Bytewax shares the streams' partitions among them, and each serves
its metrics on `dataflow.metrics_port + I`. The group lives and dies as one (a Bytewax
cluster cannot lose a member): when a child exits, the others are stopped and the group
exits with that child's code, for the supervisor (compose, systemd, `crmflow up`) to
restart it. The dataflow keeps no state of its own, so a restart resumes from Redis.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from config.settings import Settings
from crmflow.supervisor import Child

log = logging.getLogger("crmflow.dataflow")
STOP_TIMEOUT = 10.0


def addresses(settings: Settings) -> str:
    base = settings.dataflow.cluster_port
    return ";".join(f"127.0.0.1:{base + n}" for n in range(settings.dataflow.processes))


def run_group(settings: Settings, config_file: Path | None, *, demo: bool = False) -> int:
    """Run the group until a child exits or a signal arrives; the exit code. `demo`: the
    children run on the demo's timings too, as the API does."""
    argv = [sys.executable, "-m", "crmflow.cli", "dataflow", "--addresses",
            addresses(settings)]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    if demo:
        argv.append("--demo")
    env = dict(os.environ)
    if settings.redis.url:
        env["REDIS_URL"] = settings.redis.url
    children = [Child(f"dataflow {n}", [*argv, "--process-id", str(n)], env)
                for n in range(settings.dataflow.processes)]
    for child in children:
        child.start()
    log.info("dataflow group of %d processes: %s", len(children), addresses(settings))
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while not stopping:
        exited = [child for child in children if not child.alive()]
        if exited:
            returncode = exited[0].process.returncode if exited[0].process else None
            code = returncode or 1
            log.error("%s exited (%s): stopping the group", exited[0].name, returncode)
            break
        time.sleep(0.2)
    for child in children:  # SIGTERM, then SIGKILL for one that does not stop in time
        child.stop(STOP_TIMEOUT)
    return 0 if stopping else code
