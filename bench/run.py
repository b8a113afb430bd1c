"""`make bench`: crmflow against its floors, side by side in one run, on this machine.

Prints one table and writes bench/results.json. A benchmark reports; it never fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

import features
from bench.replays import replay_section
from bench.workload import Entry
from bench.wrk import (
    LoadResult,
    batch_post_script,
    contains_script,
    paths_script,
    random_get_script,
    run_wrk,
    wrk_available,
)
from config.settings import Settings
from crmflow.redis_server import EmbeddedRedis, free_port
from crmflow.supervisor import stop_process
from sinks.keys import KeyLayout

REPO = Path(__file__).resolve().parents[1]
WRITE_KEY, READ_KEY = "bench-write", "bench-read"
DAY = 86400.0


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    events_per_client: int
    naive_events: int
    load_seconds: float
    latency_seconds: float
    measured_events: int  # applied by a running dataflow on each filled client base
    replay_events: int = 1_000_000
    replay_processes: int = 2  # the synthetic file's replay, on both cores
    soak_seconds: float = 60.0
    scale_out: bool = True  # one process against a group of two (full plan only)
    # profile reads: rounds alternating crmflow and its floor, each of read_seconds; each
    # side's median round and the median of the rounds' ratios are reported (one load each
    # swung the ratio 0.69-1.07x over six runs)
    read_rounds: int = 3
    read_seconds: float = 4


FULL = Plan(sizes=(100_000, 1_000_000), events_per_client=2, naive_events=30_000,
            load_seconds=8, latency_seconds=20, measured_events=200_000)
QUICK = Plan(sizes=(100_000,), events_per_client=2, naive_events=5_000, load_seconds=3,
             latency_seconds=5, measured_events=60_000, replay_events=20_000,
             replay_processes=1,
             soak_seconds=12, scale_out=False, read_rounds=1, read_seconds=3)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def settings_for(url: str, prefix: str, triggers: dict[str, Any] | None = None,
                 **dataflow: Any) -> Settings:
    return Settings(
        redis={"url": url, "key_prefix": prefix, "stream_maxlen": 50_000_000},
        api={"write_keys": [WRITE_KEY], "read_keys": [READ_KEY], "port": free_port()},
        dataflow={"metrics_port": 0, **dataflow},
        triggers=triggers or {},
    )


def _env() -> dict[str, str]:
    """The environment without crmflow's settings (each process gets its config file), but
    with the choice of core, so every process of a run uses the same one."""
    return {k: v for k, v in os.environ.items()
            if (not k.startswith("CRMFLOW_") or k == features.PURE_PYTHON_VARIABLE)
            and k != "REDIS_URL"}


def _config_file(settings: Settings, folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_drain(config: Path) -> tuple[float, int]:
    """`crmflow dataflow --drain` in its own process: (seconds, peak resident KiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "crmflow.cli", "dataflow", "--drain", "--config", str(config)],
        cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _rss_kib(process.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"dataflow failed: {process.stderr.read().decode()[-2000:]}"
                           if process.stderr else "dataflow failed")
    return seconds, peak


# XADD in Redis, a partition's share of a chunk per call. The 1M base's 2M entries took 21 s
# as one pipelined XADD each (redis-py's command path per entry), 13-16 s this way, of which
# about 6 s is Redis's own XADDs.
_APPEND_SCRIPT = """
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'e', ARGV[i + 1])
end
return #ARGV / 2
"""
APPEND_CHUNK = 5000


def append_entries(client: redis.Redis, layout: KeyLayout, entries: Sequence[Entry]) -> float:
    """The producers' side: entries appended in chunks, in order within each partition.
    Not crmflow's work, though a measure's clock runs while its events are appended (the
    dataflow reads them as they come). Returns entries/s."""
    started = time.perf_counter()
    script = client.register_script(_APPEND_SCRIPT)
    pipe = client.pipeline(transaction=False)
    for first in range(0, len(entries), APPEND_CHUNK):
        shares: dict[int, list[str | bytes]] = {}
        for entry in entries[first:first + APPEND_CHUNK]:
            shares.setdefault(layout.partition_of_client(entry.client_key), []).extend(
                (entry.client_key, entry.body))
        for partition, args in shares.items():
            script(keys=[layout.events(partition)], args=args, client=pipe)
        pipe.execute()
    return len(entries) / (time.perf_counter() - started)


@contextmanager
def scratch_redis(name: str) -> Iterator[tuple[Path, str, redis.Redis]]:
    """A temporary folder with a fresh Redis server in it, for one benchmark run."""
    with tempfile.TemporaryDirectory(prefix=f"crmflow-{name}-") as tmp:
        folder = Path(tmp)
        server = EmbeddedRedis(folder / "redis", port=0)
        server.start()
        client = redis.Redis.from_url(server.url)
        # The append-only file stays (its cost is part of every write measured); periodic
        # snapshots go: a fork copying gigabytes mid-load measured the snapshot, not crmflow.
        client.config_set("save", "")
        try:
            yield folder, server.url, client
        finally:
            client.close()
            server.stop()


def wait_until_quiet(client: redis.Redis, timeout: float = 300.0) -> None:
    """Until no AOF rewrite runs in Redis's background: it takes a core from the load."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        persistence = client.info("persistence")
        if not (persistence.get("aof_rewrite_in_progress")
                or persistence.get("aof_rewrite_scheduled")
                or persistence.get("rdb_bgsave_in_progress")):
            return
        time.sleep(0.5)
    log(f"redis still busy in the background after {timeout:.0f}s; loading anyway")


@contextmanager
def aof_rewrites_paused(client: redis.Redis) -> Iterator[None]:
    """Redis's automatic AOF rewrites off while a client base is filled, then one rewrite,
    waited for. Each time the AOF doubled during a 1M-client fill, Redis forked and wrote
    the whole dataset again, on a core the fill's two processes needed; afterwards the
    rewritten file leaves no rewrite due during the measures that follow."""
    setting = "auto-aof-rewrite-percentage"
    before = client.config_get(setting)[setting]
    client.config_set(setting, 0)
    try:
        yield
        # before automatic rewrites are back on: the file has grown past their threshold,
        # and one starting between the wait and the request would make Redis refuse it
        if client.config_get("appendonly")["appendonly"] == "yes":
            rewrite_aof(client)
    finally:
        client.config_set(setting, before)


def rewrite_aof(client: redis.Redis) -> None:
    """One AOF rewrite, waited for (one already running is waited for first)."""
    wait_until_quiet(client)
    try:
        client.bgrewriteaof()  # forks before it answers, or is scheduled: both seen below
    except redis.ResponseError as exc:
        if "already in progress" not in str(exc):
            raise
    wait_until_quiet(client)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def settled_used_memory(client: redis.Redis, timeout: float = 15.0) -> int:
    """`used_memory` once this is Redis's only client: a stopped dataflow's connections
    (their query buffers hold a batch's commit, megabytes) are counted until Redis has
    closed them. Two full runs read 1,000 bytes per client at 100k against 894 in all
    others, never reproduced in isolation; this takes the likeliest cause out."""
    deadline = time.monotonic() + timeout
    while (int(client.info("clients")["connected_clients"]) > 1
           and time.monotonic() < deadline):
        time.sleep(0.1)
    return used_memory(client)


@contextmanager
def served(app: str, settings: Settings, folder: Path, floor_prefix: str = ""
           ) -> Iterator[str]:
    """Both apps through bench/serve.py: the same uvicorn settings, one worker."""
    with served_process(app, settings, folder, floor_prefix) as (url, _):
        yield url


@contextmanager
def served_process(app: str, settings: Settings, folder: Path, floor_prefix: str = ""
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`served`, also handing out the server's process (the soak samples its memory)."""
    config = _config_file(settings, folder, f"serve-{app}")
    env = _env() | {"REDIS_URL": settings.redis.url or "", "FLOOR_PREFIX": floor_prefix}
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.serve", app, str(config), str(settings.api.port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{settings.api.port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/docs", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{app} server did not start") from None
                time.sleep(0.1)
        yield url, process
    finally:
        stop_process(process)


def reads_section(client: redis.Redis, url: str, plan: Plan, folder: Path) -> dict[str, Any]:
    """Profile reads of crmflow and of the floor, both served at once and loaded in turn."""
    size = plan.sizes[0]
    pipe = client.pipeline(transaction=False)
    for n in range(size):  # the floor's own copy: 10 features per client, one hash each
        pipe.hset(f"floor:c{n}", mapping={f"f{i}": n * 0.5 + i for i in range(10)})
        if n % 5000 == 0:
            pipe.execute()
    pipe.execute()
    auth = {"Authorization": f"Bearer {READ_KEY}"}
    script = random_get_script("/v1/profiles/c", size, auth)
    results: dict[str, Any] = {}
    # the clients the first dataflow run left; each app on a port of its own
    with (served("crmflow", settings_for(url, f"df{size}"), folder) as crmflow,
          served("floor", settings_for(url, f"df{size}"), folder, "floor") as floor):
        bases = {"crmflow": crmflow, "floor": floor}
        for base in bases.values():  # each server warm before anything is measured
            run_wrk(base + "/v1/profiles/c0", script, connections=32, seconds=2)
        for connections in (1, 32):
            rounds: dict[str, list[LoadResult]] = {name: [] for name in bases}
            for _ in range(plan.read_rounds):
                for name, base in bases.items():
                    wait_until_quiet(client)
                    rounds[name].append(run_wrk(base + "/v1/profiles/c0", script,
                                                connections=connections,
                                                seconds=plan.read_seconds))
            for name, loads in rounds.items():
                median = sorted(loads, key=lambda load: load.requests_per_s)[len(loads) // 2]
                each = [round(load.requests_per_s) for load in loads]
                results[f"{name}_c{connections}"] = median.as_dict() | {
                    "rounds_requests_per_s": each}
                log(f"reads {name} c={connections}: {median.requests_per_s:,.0f} req/s "
                    f"p50 {median.p50_ms} ms p99 {median.p99_ms} ms errors {median.errors} "
                    f"(median of {each})")
            # a round's two loads run seconds apart, so their ratio is less exposed to the
            # machine's drift over the rounds; the median of those is the ratio reported
            ratios = sorted(mine.requests_per_s / floor_load.requests_per_s
                            for mine, floor_load in zip(rounds["crmflow"], rounds["floor"],
                                                        strict=True))
            results[f"vs_floor_c{connections}"] = round(ratios[len(ratios) // 2], 3)
        results["segments"] = segment_loads(crmflow, size, plan, auth)
    return results


def segment_loads(base: str, size: int, plan: Plan, auth: dict[str, str]) -> dict[str, Any]:
    """Member pages (100 per page, random cursors of the largest segment) and contains
    checks of 100 random ids, at concurrency 32."""
    listing = httpx.get(base + "/v1/segments", headers=auth, timeout=30).json()["segments"]
    largest = max(listing, key=lambda s: s["size"])
    name = largest["name"]
    paths = [f"/v1/segments/{name}/members?limit=100"]
    cursor = None
    while len(paths) < 300:  # the first pages, each reachable by its cursor
        page = httpx.get(f"{base}{paths[-1]}", headers=auth, timeout=30).json()
        cursor = page["next_cursor"]
        if cursor is None:
            break
        paths.append(f"/v1/segments/{name}/members?limit=100&cursor={cursor}")
    pages = run_wrk(base + paths[0], paths_script(paths, auth), connections=32,
                    seconds=plan.load_seconds)
    contains = run_wrk(base + f"/v1/segments/{name}/contains",
                       contains_script(f"/v1/segments/{name}/contains", size, 100, auth),
                       connections=32, seconds=plan.load_seconds)
    log(f"segment {name} ({largest['size']:,} members): pages {pages.requests_per_s:,.0f} "
        f"req/s p99 {pages.p99_ms} ms; contains(100) {contains.requests_per_s:,.0f} req/s "
        f"p99 {contains.p99_ms} ms")
    return {"segment": name, "members": largest["size"], "pages_c32": pages.as_dict(),
            "contains100_c32": contains.as_dict()}


def ingest_section(url: str, plan: Plan, folder: Path) -> dict[str, Any]:
    settings = settings_for(url, "ingest")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    with served("crmflow", settings, folder) as base:
        result = run_wrk(base + "/v1/batch", batch_post_script("/v1/batch", 100, auth),
                         connections=16, seconds=plan.load_seconds)
    log(f"ingest: {result.requests_per_s * 100:,.0f} events/s "
        f"(p50 {result.p50_ms} ms, p99 {result.p99_ms} ms per 100-event batch)")
    return {"events_per_s": round(result.requests_per_s * 100), **result.as_dict()}


def latency_section(client: redis.Redis, url: str, plan: Plan, folder: Path,
                    max_rate: float) -> dict[str, Any]:
    """Triggers' delay behind their due time while the dataflow runs at half its maximum."""
    delay = 2.0
    settings = settings_for(url, "latency", {"abandoned_cart": {"delay": delay}},
                            tick_interval=0.1, allowed_lateness=0.0)
    layout = KeyLayout.from_settings(settings)
    rate = max_rate / 2
    config = _config_file(settings, folder, "latency")
    process = subprocess.Popen(
        [sys.executable, "-m", "crmflow.cli", "dataflow", "--config", str(config)],
        cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    due: dict[str, float] = {}
    ordered: dict[str, float] = {}
    try:
        time.sleep(3)  # start-up
        started = time.time()
        sent = 0
        pipe = client.pipeline(transaction=False)
        while time.time() - started < plan.latency_seconds:
            target = int((time.time() - started) * rate)
            while sent < target:
                now = time.time()
                key = f"l{sent}"
                if sent % 200 == 0:  # a tracked cart: its reminder is due in `delay`
                    body = {"event_id": f"lc{sent}", "type": "cart_add", "client_id": key,
                            "event_time": now, "received_at": now,
                            "products": [{"product_id": "p", "price": 1}]}
                    due[key] = now + delay
                elif sent % 200 == 100:  # a tracked order: confirmed on arrival
                    body = {"event_id": f"lo{sent}", "type": "order_placed", "client_id": key,
                            "event_time": now, "received_at": now,
                            "order": {"order_id": f"o{sent}", "total": 5}}
                    ordered[key] = now
                else:
                    body = {"event_id": f"lv{sent}", "type": "product_view", "client_id": key,
                            "event_time": now, "received_at": now,
                            "products": [{"product_id": "p", "price": 1}]}
                pipe.xadd(layout.events(layout.partition_of_client(key)),
                          {"k": key, "e": json.dumps(body)})
                sent += 1
            pipe.execute()
            time.sleep(0.005)
        time.sleep(delay + 3)
    finally:
        stop_process(process)
    timer_lags, order_lags = [], []
    for stream in layout.all_trigger_streams():
        for entry_id, fields in client.xrange(stream):
            written = int(entry_id.split(b"-")[0]) / 1000
            key, kind = fields[b"client_id"].decode(), fields[b"type"].decode()
            if kind == "abandoned_cart" and key in due:
                timer_lags.append(written - due[key])
            elif kind == "order_confirmation" and key in ordered:
                order_lags.append(written - ordered[key])

    def percentiles(values: list[float]) -> dict[str, float]:
        if len(values) < 2:
            return {"count": len(values)}
        q = statistics.quantiles(values, n=100)
        return {"count": len(values), "p50_ms": round(q[49] * 1000, 1),
                "p99_ms": round(q[98] * 1000, 1)}

    result = {"rate_events_per_s": round(rate), "timer": percentiles(timer_lags),
              "order": percentiles(order_lags), "timers_expected": len(due)}
    log(f"latency at {rate:,.0f} events/s: timer {result['timer']}, order {result['order']}")
    return result


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "core": "compiled (mypyc)" if features.COMPILED else "pure Python",
            "platform": platform.platform(), "processor": platform.processor() or "unknown",
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                / 2**30, 1)}


def table(results: dict[str, Any]) -> str:
    rows = [("measure", "crmflow", "floor / peer", "ratio", "target")]
    for size, r in results["dataflow"]["sizes"].items():
        rows.append((f"dataflow events/s, {int(size):,} clients", f"{r['crmflow_events_per_s']:,}",
                     f"bytewax {r['bytewax_floor_events_per_s']:,}", f"{r['vs_floor']}x",
                     ">= 0.5x"))
        rows.append((f"  vs naive consumer, {int(size):,}", f"{r['crmflow_events_per_s']:,}",
                     f"naive {r['naive_events_per_s']:,}", f"{r['vs_naive']}x", ">= 10x"))
        rows.append((f"  redis bytes/client, {int(size):,}", f"{r['redis_bytes_per_client']:,}",
                     "", "", "<= 1024 at 1M"))
        rows.append((f"  dataflow RSS MiB, {int(size):,}", f"{r['dataflow_rss_mib']:,}",
                     f"start-up and loading {r['loading_seconds']}s", "", ""))
        if "redis_bound_events_per_s" in r:
            rows.append((f"  CPU us/event, {int(size):,}",
                         f"dataflow {r['dataflow_cpu_us_per_event']}",
                         f"redis {r['redis_cpu_us_per_event']} "
                         f"+ appends {r['redis_append_cpu_us_per_event']}", "", ""))
            bound = r["redis_bound_events_per_s"]
            rows.append((f"  redis-bound ceiling, {int(size):,}", f"{bound:,}",
                         f"bytewax {r['bytewax_floor_events_per_s']:,}",
                         f"{bound / r['bytewax_floor_events_per_s']:.3f}x", ""))
    scale = results["dataflow"].get("scaling")
    if scale:
        rows.append(("throughput 1M vs 100k", "",
                     f"bytewax {scale['bytewax_floor']}x, naive {scale['naive']}x",
                     f"{scale['crmflow']}x", ">= 0.8x"))
    reads = results.get("reads")
    if reads:
        for c in (1, 32):
            rows += read_rows(f"profile reads req/s, c={c}", reads[f"crmflow_c{c}"],
                              reads[f"floor_c{c}"], "floor",
                              ">= 1.0x at c=32" if c == 32 else "",
                              ratio=reads.get(f"vs_floor_c{c}"))
    segments = (reads or {}).get("segments")
    if segments:
        for label, key in (("segment member pages (100)", "pages_c32"),
                           ("segment contains (100 ids)", "contains100_c32")):
            load = segments[key]
            rows.append((f"{label} req/s, c=32", f"{load['requests_per_s']:,}",
                         f"p50 {load['p50_ms']} / p99 {load['p99_ms']} ms", "", ""))
    console = results.get("console")
    if console:
        slowest = max((v for v in console.values() if isinstance(v, dict) and "p50_ms" in v),
                      key=lambda v: v["p50_ms"])
        name = next(k for k, v in console.items() if v is slowest)
        rows.append((f"console reads, {console['clients']:,} clients",
                     f"slowest p50 {slowest['p50_ms']} ms", name, "", ""))
        csv_download = console["csv download"]
        rows.append(("  segment CSV download", f"{csv_download['rows']:,} rows",
                     csv_download["segment"], f"{csv_download['seconds']}s", ""))
    ingest = results.get("ingest")
    if ingest:
        rows.append(("ingest events/s (batch of 100)", f"{ingest['events_per_s']:,}", "", "",
                     ""))
    latency = results.get("latency")
    if latency:
        rows.append(("timer trigger lag p50 / p99 ms",
                     f"{latency['timer'].get('p50_ms')} / {latency['timer'].get('p99_ms')}",
                     f"at {latency['rate_events_per_s']:,} ev/s", "", "p99 <= 1000"))
        rows.append(("order trigger lag p50 / p99 ms",
                     f"{latency['order'].get('p50_ms')} / {latency['order'].get('p99_ms')}",
                     "", "", ""))
    for name, label in (("uci", "replay UCI Online Retail"), ("synthetic", "replay synthetic")):
        figures = results.get("replay", {}).get(name, {})
        if "events" in figures:
            processes = figures.get("processes", 1)
            label += f" ({processes} processes)" if processes > 1 else ""
            rows.append((f"{label}, {figures['rows']:,} rows", f"{figures['rows_per_s']:,} rows/s",
                         f"{figures['events_per_s']:,} events/s",
                         f"{figures['seconds']}s", ""))
    scale = results.get("scale_out")
    if scale:
        rows.append((f"dataflow, 2 processes vs 1 ({scale['clients']:,} clients)",
                     f"{scale['two_processes_events_per_s']:,}",
                     f"1 process {scale['one_process_events_per_s']:,}", f"{scale['ratio']}x",
                     ""))
    soak = results.get("soak")
    if soak and "ingest" not in soak:
        rows.append(("soak", "not run", soak.get("skipped") or soak.get("error", ""), "", ""))
    elif soak:
        ingest, reads = soak["ingest"], soak["reads"]
        for label, load, rate in (
                (f"soak {soak['seconds']:.0f}s: ingest events/s, c=1", ingest,
                 f"{ingest['events_per_s']:,}"),
                (f"  profile reads req/s, c={reads['connections']}", reads,
                 f"{reads['requests_per_s']:,}" if "requests_per_s" in reads else "failed")):
            rows.append((label, rate, f"p50 {load.get('p50_ms')} / p99 {load.get('p99_ms')} ms",
                         f"errors {load.get('errors', load.get('error'))}", "0 errors"))
        rows.append(("  events ingested", f"{ingest['events_ingested']:,}",
                     f"target {ingest['target_events_per_s']:,}/s", "", ""))
        for key, label in (("api_rss_mib", "API RSS"), ("dataflow_rss_mib", "dataflow RSS"),
                           ("redis_used_mib", "redis used_memory")):
            m = soak[key]
            rows.append((f"  {label} MiB start / end / max",
                         f"{m['start']} / {m['end']} / {m['max']}",
                         f"{m['growth_mib_per_min']} MiB/min, 2nd half", "",
                         "flat" if key != "redis_used_mib" else ""))
        backlog = soak["backlog"]
        rows.append(("  backlog entries max / end",
                     f"{backlog.get('max_entries')} / {backlog.get('end_entries')}",
                     f"lag max {backlog.get('max_lag_s')} s, "
                     f"empty {backlog.get('drained_after_s')} s after",
                     {True: "bounded", False: "growing"}.get(backlog["bounded"], "unknown"),
                     "bounded"))
    return render(rows)


Row = tuple[str, str, str, str, str]  # measure, crmflow, floor or peer, ratio, target


def read_rows(label: str, mine: dict[str, Any], other: dict[str, Any], other_name: str,
              target: str = "", p99_target: str = "", *, ratio: float | None = None
              ) -> list[Row]:
    """A read load against its floor or peer: requests/s with their ratio (`ratio` when
    measured apart, else of the two figures), then p50/p99."""
    if ratio is None:
        ratio = mine["requests_per_s"] / other["requests_per_s"]
    return [(label, f"{mine['requests_per_s']:,}",
             f"{other_name} {other['requests_per_s']:,}", f"{ratio:.2f}x", target),
            ("  p50 / p99 ms", f"{mine['p50_ms']} / {mine['p99_ms']}",
             f"{other['p50_ms']} / {other['p99_ms']}",
             f"p99 {mine['p99_ms'] / other['p99_ms']:.2f}x", p99_target)]


def render(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths,
                                                                             strict=True))
                     for row in rows)


def main(argv: Sequence[str] | None = None) -> None:
    from bench.console import console_section  # these build on this module's helpers
    from bench.dataflow import dataflow_section
    from bench.soak import soak_section

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k clients, short loads")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.time()
    results: dict[str, Any] = {"machine": machine(), "plan": plan.__dict__,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with scratch_redis("bench") as (folder, url, client):
        results["dataflow"] = dataflow_section(client, url, plan, folder)
        if "scale_out" in results["dataflow"]:
            results["scale_out"] = results["dataflow"].pop("scale_out")
        if wrk_available():
            results["reads"] = reads_section(client, url, plan, folder)
            results["ingest"] = ingest_section(url, plan, folder)
        else:
            log("wrk not found: install Debian's wrk for the HTTP loads (make bench does)")
        log(f"console reads at {plan.sizes[-1]:,} clients")
        results["console"] = console_section(client, url, plan, folder)
        max_rate = results["dataflow"]["sizes"][str(plan.sizes[0])]["crmflow_events_per_s"]
        results["latency"] = latency_section(client, url, plan, folder, max_rate)
        log("replay: UCI Online Retail and a synthetic file")
        results["replay"] = replay_section(plan.replay_events, plan.replay_processes, folder)
        log(f"soak: ingest and profile reads together for {plan.soak_seconds:.0f}s")
        results["soak"] = soak_section(client, url, plan, folder)
    results["seconds"] = round(time.time() - started)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\n{results['machine']['cpus']} CPUs, Python {results['machine']['python']}, "
          f"{results['machine']['core']} core, {results['seconds']}s; written to {args.out}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
