"""The dataflow section: events/s of a running `crmflow dataflow` on a client base of each
size, next to the bare Bytewax floor and a naive consumer, and Redis bytes per client.

Per size:
1. Fill: every client gets the plan's `events_per_client` (2: a visit, then one of the
   mix), applied by a group of
   two processes (both cores: the base is set-up, and this is the slow part at 1M). Redis
   `used_memory` after the fill, less before, gives the bytes per client.
2. Measure: one process starts on the filled base and loads its buckets; once it is idle,
   `measured_events` more events over the same clients (random ones, the mix) are appended
   and the clock runs until every committed position reaches its stream's head. So the
   rate is a running dataflow's, on a base of that size, without start-up or loading
   (reported apart).
3. At the first size of the full plan, the same with a group of two: the scale-out ratio.

Each measure also reports where the CPU went: the dataflow's processes', and Redis's
(`INFO cpu`) over the same window, less what appending the same events costs Redis alone
(measured apart, into scratch streams). Redis runs on the other core of a 2-core machine,
so its microseconds an event bound the dataflow's rate even if the dataflow cost nothing:
that bound is reported as the Redis-bound ceiling, next to the floors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.floors import bytewax_floor, naive_consumer
from bench.run import (
    DAY,
    REPO,
    Plan,
    _config_file,
    _env,
    _rss_kib,
    aof_rewrites_paused,
    append_entries,
    log,
    settings_for,
    settled_used_memory,
)
from bench.workload import entry_list, events
from config.settings import Settings
from crmflow.redis_server import free_ports
from crmflow.supervisor import stop_process
from dataflows.flow import store_factory
from dataflows.run import stream_heads
from sinks.keys import KeyLayout

TIMEOUT = 1800.0
IDLE_CPU_SHARE = 0.3  # below this share of a core for a second, start-up and loading are over
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/<pid>/stat's CPU times


def _tree(pid: int) -> list[int]:
    """The process and its descendants (a group's children, which run the dataflow)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / CLOCK_TICKS


class LiveDataflow:
    """`crmflow dataflow` running live on `settings`, watched from outside."""

    def __init__(self, settings: Settings, process: subprocess.Popen[bytes]) -> None:
        self.settings = settings
        self.process = process
        self.peak_rss_kib = 0

    def _check(self, started: float, what: str) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the dataflow stopped (exit {self.process.returncode}) {what}")
        if time.perf_counter() - started > TIMEOUT:
            raise RuntimeError(f"the dataflow did not finish {what} in {TIMEOUT:.0f}s")

    def _sample_rss(self) -> None:
        self.peak_rss_kib = max(self.peak_rss_kib,
                                sum(_rss_kib(pid) for pid in _tree(self.process.pid)))

    def cpu_seconds(self) -> float:
        return _cpu_seconds(_tree(self.process.pid))

    def wait_idle(self) -> float:
        """Seconds until start-up and bucket loading are over (the CPU goes quiet)."""
        started = time.perf_counter()
        last = _cpu_seconds(_tree(self.process.pid))
        quiet = 0
        while quiet < 2:
            time.sleep(0.5)
            self._check(started, "starting")
            self._sample_rss()
            now = _cpu_seconds(_tree(self.process.pid))
            quiet = quiet + 1 if now - last < IDLE_CPU_SHARE * 0.5 else 0
            last = now
        return time.perf_counter() - started - 1.0

    def wait_applied(self, heads: dict[int, tuple[int, int]], started: float) -> float:
        """Seconds from `started` until every bucket's position reaches `heads`."""
        store = store_factory(self.settings)
        try:
            while store.partitions_behind(heads):
                self._check(started, "applying the events")
                self._sample_rss()
                time.sleep(0.1)
            return time.perf_counter() - started
        finally:
            store.client.close()


@contextmanager
def live_dataflow(settings: Settings, folder: Path, name: str) -> Iterator[LiveDataflow]:
    config = _config_file(settings, folder, name)
    process = subprocess.Popen(
        [sys.executable, "-m", "crmflow.cli", "dataflow", "--config", str(config)],
        cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield LiveDataflow(settings, process)
    finally:
        stop_process(process, 30)


def _settings(url: str, size: int, processes: int) -> Settings:
    # positions recorded promptly, so "applied" is seen as soon as it is true
    return settings_for(url, f"df{size}", processes=processes, cluster_port=free_ports(2),
                        offset_flush_interval=0.2)


@dataclass(frozen=True)
class RedisUse:
    """Redis's CPU seconds and its per-command (calls, microseconds): a snapshot, or the
    difference of two."""

    cpu: float
    commands: dict[str, tuple[int, int]]

    @classmethod
    def now(cls, client: redis.Redis) -> RedisUse:
        cpu = client.info("cpu")
        return cls(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
                   {name.removeprefix("cmdstat_"): (int(stats["calls"]), int(stats["usec"]))
                    for name, stats in client.info("commandstats").items()})

    def __sub__(self, other: RedisUse) -> RedisUse:
        return RedisUse(self.cpu - other.cpu, {
            name: (calls - other.commands.get(name, (0, 0))[0],
                   usec - other.commands.get(name, (0, 0))[1])
            for name, (calls, usec) in self.commands.items()})

    def per_event(self, count: int, top: int = 8) -> dict[str, dict[str, float]]:
        """The commands Redis spent most time in, calls and microseconds an event. A
        script's time includes the commands it calls, which are counted again apart."""
        busiest = sorted(self.commands.items(), key=lambda item: -item[1][1])[:top]
        return {name: {"calls": round(calls / count, 2), "us": round(usec / count, 2)}
                for name, (calls, usec) in busiest if usec > 0}


def _appending(client: redis.Redis, url: str, size: int, entries: list[Any]) -> RedisUse:
    """What appending `entries` alone costs Redis, into scratch streams deleted after: the
    producers' share of Redis during a measure, taken out of the dataflow's."""
    layout = KeyLayout.from_settings(settings_for(url, f"appendcost{size}"))
    before = RedisUse.now(client)
    append_entries(client, layout, entries)
    spent = RedisUse.now(client) - before
    client.delete(*layout.all_event_streams())
    return spent


def _measure(client: redis.Redis, url: str, size: int, processes: int, count: int,
             first_id: int, now: float, folder: Path) -> dict[str, Any]:
    """Events/s of a running group of `processes` on the base of `size` clients, and the
    CPU the dataflow and Redis spent an event on it."""
    settings = _settings(url, size, processes)
    layout = KeyLayout.from_settings(settings)
    entries = entry_list(events(count, size, start=now - DAY, span=DAY, received_at=now,
                                seed=2 + processes, first_id=first_id, cover=False))
    appending = _appending(client, url, size, entries)
    with live_dataflow(settings, folder, f"df{size}-{processes}") as dataflow:
        loading = dataflow.wait_idle()
        dataflow_cpu, redis_before = dataflow.cpu_seconds(), RedisUse.now(client)
        started = time.perf_counter()
        append_entries(client, layout, entries)
        seconds = dataflow.wait_applied(stream_heads(settings), started)
        dataflow_cpu = dataflow.cpu_seconds() - dataflow_cpu
        redis = RedisUse.now(client) - redis_before - appending
    rate = count / seconds
    cpu = {"dataflow_cpu_us_per_event": round(dataflow_cpu / count * 1e6, 1),
           "redis_cpu_us_per_event": round(redis.cpu / count * 1e6, 1),
           "redis_append_cpu_us_per_event": round(appending.cpu / count * 1e6, 1),
           "redis_commands_per_event": redis.per_event(count)}
    log(f"{size:,} clients, {processes} process(es): {rate:,.0f} events/s over {count:,} "
        f"events ({loading:.1f}s start-up and loading before); CPU an event: dataflow "
        f"{cpu['dataflow_cpu_us_per_event']} us, Redis {cpu['redis_cpu_us_per_event']} us "
        f"(+{cpu['redis_append_cpu_us_per_event']} us appending)")
    return {"events_per_s": round(rate), "loading_seconds": round(loading, 1),
            "rss_mib": round(dataflow.peak_rss_kib / 1024), **cpu}


def redis_bound(figures: dict[str, Any]) -> int:
    """Events/s Redis could serve on a core of its own if the dataflow cost nothing: the
    dataflow's Redis work and the appends, an event each."""
    per_event = (figures["redis_cpu_us_per_event"]
                 + figures["redis_append_cpu_us_per_event"])
    return round(1e6 / per_event) if per_event > 0 else 0


def _fill(client: redis.Redis, url: str, size: int, per_client: int, now: float,
          folder: Path) -> tuple[list[Any], float, float]:
    """Every client's first `per_client` events, applied by two processes: (entries,
    events/s, Redis bytes per client)."""
    settings = _settings(url, size, 2)
    layout = KeyLayout.from_settings(settings)
    entries = entry_list(events(per_client * size, size, start=now - 4 * DAY,
                                span=3 * DAY, received_at=now))
    baseline = settled_used_memory(client)
    with aof_rewrites_paused(client):
        append_entries(client, layout, entries)
        heads = stream_heads(settings)
        with live_dataflow(settings, folder, f"fill{size}") as dataflow:
            started = time.perf_counter()
            seconds = dataflow.wait_applied(heads, started)
        for stream in (*layout.all_event_streams(), *layout.all_trigger_streams(),
                       *(layout.dead_letters(p) for p in range(layout.partitions))):
            client.delete(stream)  # logs with their own caps, not per-client memory
    bytes_per_client = (settled_used_memory(client) - baseline) / size
    rate = len(entries) / seconds
    log(f"{size:,} clients: filled with {len(entries):,} events by 2 processes "
        f"({rate:,.0f} events/s, start-up included), {bytes_per_client:.0f} B/client")
    return entries, rate, bytes_per_client


def dataflow_section(client: redis.Redis, url: str, plan: Plan, folder: Path
                     ) -> dict[str, Any]:
    results: dict[str, Any] = {"measured_events": plan.measured_events, "sizes": {}}
    now = time.time()
    for n, size in enumerate(plan.sizes):
        entries, fill_rate, per_client = _fill(client, url, size, plan.events_per_client,
                                               now, folder)
        filled = len(entries)  # the measured events' ids follow the fill's
        one = _measure(client, url, size, 1, plan.measured_events, filled, now, folder)
        floor = bytewax_floor(entries)
        log(f"{size:,} clients: bare Bytewax floor {floor:,.0f} events/s")
        naive = naive_consumer(client, entries[:plan.naive_events], f"naive{size}")
        log(f"{size:,} clients: naive consumer {naive:,.0f} events/s")
        del entries
        rate = one["events_per_s"]
        results["sizes"][str(size)] = {
            "events": plan.measured_events, "crmflow_events_per_s": rate,
            "bytewax_floor_events_per_s": round(floor), "naive_events_per_s": round(naive),
            "vs_floor": round(rate / floor, 3), "vs_naive": round(rate / naive, 2),
            "redis_bytes_per_client": round(per_client), "dataflow_rss_mib": one["rss_mib"],
            "loading_seconds": one["loading_seconds"],
            "fill_events_per_s_two_processes": round(fill_rate),
            **{k: one[k] for k in ("dataflow_cpu_us_per_event", "redis_cpu_us_per_event",
                                   "redis_append_cpu_us_per_event",
                                   "redis_commands_per_event")},
            "redis_bound_events_per_s": redis_bound(one),
        }
        if n == 0 and plan.scale_out:
            two = _measure(client, url, size, 2, plan.measured_events,
                           filled + plan.measured_events, now, folder)
            results["scale_out"] = {
                "events": plan.measured_events, "clients": size,
                "one_process_events_per_s": rate,
                "two_processes_events_per_s": two["events_per_s"],
                "ratio": round(two["events_per_s"] / rate, 2),
                "two_processes_dataflow_cpu_us_per_event": two["dataflow_cpu_us_per_event"],
                "two_processes_redis_cpu_us_per_event": two["redis_cpu_us_per_event"]}
    results["scaling"] = scaling(results["sizes"])
    return results


def scaling(sizes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Throughput at the largest base against the smallest, crmflow's next to its floors':
    the bare Bytewax floor is not flat in its number of keys either (0.62-0.64x from 100k
    to 1M in three runs), so crmflow's own figure reads against it."""
    if len(sizes) < 2:
        return None
    first, last = sizes[min(sizes, key=int)], sizes[max(sizes, key=int)]
    return {name: round(last[field] / first[field], 2) for name, field in (
        ("crmflow", "crmflow_events_per_s"), ("bytewax_floor", "bytewax_floor_events_per_s"),
        ("naive", "naive_events_per_s"))}
