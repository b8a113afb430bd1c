"""Scale-out: the same events applied by one Bytewax process and by a group of two
(`dataflow.processes: 2`) on this machine, side by side.

Both run live (not `--drain`: a group's processes stop together only when told), and the
clock stops when every partition's committed position has reached its stream's head.
Start-up (process launch, the Bytewax cluster forming) is inside the time for both.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.run import DAY, REPO, Plan, _config_file, _env, append_entries, log, settings_for
from bench.workload import events
from crmflow.redis_server import free_port
from crmflow.supervisor import stop_process
from dataflows.flow import store_factory
from sinks.keys import KeyLayout

TIMEOUT = 900.0


def _applied(settings: Any, heads: dict[int, tuple[int, int]]) -> bool:
    store = store_factory(settings)
    try:
        return not store.partitions_behind(heads)
    finally:
        store.client.close()


def _run(client: redis.Redis, url: str, processes: int, count: int, clients: int,
         folder: Path) -> float:
    settings = settings_for(url, f"scale{processes}", processes=processes,
                            cluster_port=free_port(), offset_flush_interval=0.2)
    layout = KeyLayout.from_settings(settings)
    now = time.time()
    append_entries(client, layout, list(events(count, clients, start=now - 3 * DAY,
                                               span=3 * DAY, received_at=now)))
    store = store_factory(settings)
    heads = store.stream_heads()
    store.client.close()
    config = _config_file(settings, folder, f"scale{processes}")
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "crmflow.cli", "dataflow", "--config",
                                str(config)], cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not _applied(settings, heads):
            if process.poll() is not None or time.perf_counter() - started > TIMEOUT:
                raise RuntimeError(f"{processes} process(es) did not apply the events")
            time.sleep(0.2)
        return count / (time.perf_counter() - started)
    finally:
        stop_process(process, 15)


def scale_section(client: redis.Redis, url: str, plan: Plan, folder: Path) -> dict[str, Any]:
    clients = plan.sizes[0]
    count = clients * plan.events_per_client
    rates = {}
    for processes in (1, 2):
        rates[processes] = _run(client, url, processes, count, clients, folder)
        log(f"scale-out: {processes} process(es), {count:,} events over {clients:,} clients: "
            f"{rates[processes]:,.0f} events/s (start-up included)")
    return {"events": count, "clients": clients,
            "one_process_events_per_s": round(rates[1]),
            "two_processes_events_per_s": round(rates[2]),
            "ratio": round(rates[2] / rates[1], 2)}
