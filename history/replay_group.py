"""A replay's dataflow run by a group of processes (`crmflow replay --processes N`).

Python runs one dataflow's logic on one core; a group of Bytewax processes shares the
event streams' partitions, so a long history replays on every core. Each process is
`python -m history.replay_group` with the replay's resolved settings, and runs the same
`run_dataflow` a one-process replay runs in place. The output does not depend on the
number of processes: every client's events and timers stay in one bucket, on one
process, in event-time order.

The group drains in rounds (`run_dataflow`), and every process must agree on the number
of rounds, or one would wait for its peers forever. They do: each compares the streams'
heads before and after a round, and nothing but the group writes to a replay's streams, so
all read the same heads. Should a process still fail or hang, the others are stopped and
the replay fails, saying which one and with the end of its log.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from config.settings import Settings, load_settings
from crmflow.redis_server import free_ports
from crmflow.supervisor import stop_process
from dataflows.run import run_dataflow
from sinks import rfm_index
from sinks.keys import KeyLayout
from sinks.redis_client import sync_client

PEERS_GRACE = 60.0  # seconds the others may take to finish once one has
LOG_TAIL = 2000  # characters of a failed process's log quoted in the error


class ReplayGroupError(RuntimeError):
    """A process of the group failed or hung; the message names it and quotes its log."""


def run_group(settings: Settings, processes: int, *, as_of: float,
              stored_model: bool, emitted_prefix: str | None = None) -> None:
    """Run the replay dataflow to its end in `processes` processes. `stored_model`: each
    process files buyers under the RFM model stored in Redis (`rfm_index.store_model`);
    `emitted_prefix`: see `dataflows.flow.store_factory`."""
    with tempfile.TemporaryDirectory(prefix="crmflow-replay-group-") as folder:
        config = Path(folder) / "replay.yaml"
        # resolved settings, without the API's keys: the processes need neither
        document = settings.model_copy(update={"api": type(settings.api)()})
        config.write_text(yaml.safe_dump(document.model_dump(mode="json")))
        base = free_ports(processes)
        group_addresses = ";".join(f"127.0.0.1:{base + n}" for n in range(processes))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CRMFLOW_") and k != "REDIS_URL"}  # the file says all
        logs = [Path(folder) / f"process{n}.log" for n in range(processes)]
        children = []
        for n, log in enumerate(logs):
            argv = [sys.executable, "-m", "history.replay_group", str(config),
                    "--process-id", str(n), "--addresses", group_addresses,
                    "--as-of", repr(as_of)]
            if emitted_prefix is not None:
                argv += ["--emitted-prefix", emitted_prefix]
            with log.open("wb") as sink:
                children.append(subprocess.Popen(  # noqa: S603 - this interpreter, our module
                    [*argv, *(["--stored-model"] if stored_model else [])],
                    env=env, stdout=subprocess.DEVNULL, stderr=sink))
        try:
            _wait(children, logs)
        finally:
            for child in children:
                stop_process(child, 5)


def _wait(children: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path]) -> None:
    first_done: float | None = None
    while any(child.poll() is None for child in children):
        _raise_if_failed(children, logs)
        if first_done is None and any(child.returncode == 0 for child in children):
            first_done = time.monotonic()
        if first_done is not None and time.monotonic() - first_done > PEERS_GRACE:
            late = [n for n, child in enumerate(children) if child.returncode is None]
            raise ReplayGroupError(
                f"replay processes {late} did not finish {PEERS_GRACE:.0f}s after the "
                f"first one did:\n{_tail(logs[late[0]])}")
        time.sleep(0.05)
    _raise_if_failed(children, logs)


def _raise_if_failed(children: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path]
                     ) -> None:
    for n, child in enumerate(children):
        if child.returncode not in (None, 0):
            raise ReplayGroupError(f"replay process {n} of {len(children)} failed (exit "
                                   f"{child.returncode}):\n{_tail(logs[n])}")


def _tail(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text[-LOG_TAIL:] or "(nothing logged)"


def main(argv: Sequence[str] | None = None) -> None:
    """One process of the group (started by `run_group`, not by hand)."""
    parser = argparse.ArgumentParser(prog="python -m history.replay_group")
    parser.add_argument("config", type=Path)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--addresses", required=True)
    parser.add_argument("--as-of", type=float, required=True)
    parser.add_argument("--stored-model", action="store_true")
    parser.add_argument("--emitted-prefix")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    model = None
    if args.stored_model:
        client = sync_client(settings.redis)
        try:
            model = rfm_index.load_model(client, KeyLayout.from_settings(settings))
        finally:
            client.close()
        if model is None:
            raise SystemExit("replay process: no RFM model stored for this replay")
    run_dataflow(settings, process_id=args.process_id, addresses=args.addresses.split(";"),
                 stop_when_caught_up=True, registry=CollectorRegistry(), metrics_port=0,
                 as_of=args.as_of, replay=True, rfm_model=model,
                 emitted_prefix=args.emitted_prefix)


if __name__ == "__main__":
    main()
