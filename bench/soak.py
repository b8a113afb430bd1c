"""Soak: ingest and profile reads held together against a running crmflow, bounded in time.

The API (bench/serve.py) and the dataflow (`crmflow dataflow`) run as separate processes on
the bench's Redis, as in production. Once the dataflow has applied a seed of
`SEED_CLIENTS` clients, two wrk loads run at once on loopback for the plan's
`soak_seconds`:

- ingest: `POST /v1/batch` of 100 Segment messages over one connection, paced by wrk's
  `delay()` hook to about `INGEST_EVENTS_PER_S` (a moderate rate, well under the dataflow's
  drain rate);
- reads: `GET /v1/profiles/{id}` of random seeded clients over `READ_CONNECTIONS`
  connections, as fast as they go.

Both go to the seeded clients: the dataflow holds its clients' states in memory, so a
fixed set of clients is what makes "flat memory" mean no leak rather than new clients.

Every `SAMPLE_EVERY` seconds: the API's and the dataflow's resident memory, Redis
`used_memory`, the event streams' length, and the backlog: entries appended but not yet read
by the dataflow (the streams' length less the dataflow's `crmflow_dataflow_events_read`,
since nothing is trimmed within the stream retention of a day), with its lag in seconds
(`crmflow_consumer_lag_seconds`). Memory growth is the least-squares slope of RSS over the
second half of the loads, in MiB per minute. The backlog counts as bounded when its peak in
the second half is no higher than in the first half, give or take two sample intervals of
ingest, and it empties once the loads stop.

Errors are wrk's non-2xx answers plus socket errors (connect, read, write, timeout). The
soak reports them; it never asserts, and it never fails the benchmark.
"""

from __future__ import annotations

import base64
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.run import (
    READ_KEY,
    REPO,
    WRITE_KEY,
    Plan,
    _config_file,
    _env,
    _rss_kib,
    append_entries,
    log,
    served_process,
    settings_for,
    used_memory,
)
from bench.workload import events
from bench.wrk import LoadResult, batch_post_script, random_get_script, run_wrk, wrk_available
from crmflow.redis_server import free_port
from crmflow.supervisor import stop_process
from sinks.keys import KeyLayout

# Few enough that ingest fills every client's bounded state (views, recent ids) within the
# first half: a later rise of the dataflow's memory is then a leak, not clients growing
# toward their caps. 20,000 clients rose 12 MiB/min over 120 s; 2,000 rose for the first
# 60 s (about 27 events each) and then stayed flat; 1,000 get there in the first 30 s.
SEED_CLIENTS = 1_000
BATCH = 100  # events per ingest request
INGEST_EVENTS_PER_S = 1_000
READ_CONNECTIONS = 4
SAMPLE_EVERY = 2.0  # seconds
START_WAIT = 90.0  # for the dataflow to apply the seed
DRAIN_WAIT = 30.0  # after the loads, for the backlog to empty
DAY = 86400.0
MIB = 1024.0


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the loads started
    api_rss_kib: int
    dataflow_rss_kib: int
    redis_used_bytes: int
    stream_entries: int
    entries_read: int | None  # None: the dataflow's metrics did not answer
    lag_seconds: float | None

    @property
    def backlog(self) -> int | None:
        if self.entries_read is None:
            return None
        return max(0, self.stream_entries - self.entries_read)


@dataclass(frozen=True)
class Probe:
    """What a sample reads: two processes' memory, Redis, and the dataflow's metrics."""

    client: redis.Redis
    streams: Sequence[str]
    api_pid: int
    dataflow_pid: int
    metrics_url: str

    def sample(self, t: float) -> Sample:
        read, lag = self._progress()  # before the lengths: the backlog is never undercounted
        pipe = self.client.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xlen(stream)
        entries = sum(int(n) for n in pipe.execute())
        return Sample(round(t, 2), _rss_kib(self.api_pid), _rss_kib(self.dataflow_pid),
                      used_memory(self.client), entries, read, lag)

    def _progress(self) -> tuple[int | None, float | None]:
        """Entries the dataflow has read (all partitions) and its largest lag in seconds."""
        try:
            text = httpx.get(self.metrics_url, timeout=2).text
        except httpx.HTTPError:
            return None, None
        read, lag = 0.0, 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "crmflow_dataflow_events_read_total":
                    read += sample.value
                elif sample.name == "crmflow_consumer_lag_seconds":
                    lag = max(lag, sample.value)
        return int(read), round(lag, 3)


@contextmanager
def dataflow_process(config: Path, stderr: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`crmflow dataflow` (not a drain) in its own process, its stderr kept in a file."""
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "crmflow.cli", "dataflow", "--config", str(config)],
            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=sink)
        try:
            yield process
        finally:
            stop_process(process)


def paced(script: str, requests_per_s: float) -> str:
    """A wrk script with a pause before each request: about `requests_per_s` on one
    connection (a little less, since the response time adds to the pause)."""
    return script + f"\ndelay = function()\n  return {round(1000 / requests_per_s)}\nend\n"


def soak_section(client: redis.Redis, url: str, plan: Plan, folder: Path) -> dict[str, Any]:
    if not wrk_available():
        log("soak skipped: wrk not found (install Debian's wrk; make bench does)")
        return {"skipped": "wrk not found"}
    try:
        return _soak(client, url, plan.soak_seconds, folder)
    except Exception as exc:  # a benchmark reports; it never fails
        log(f"soak failed: {exc!r}")
        return {"error": repr(exc)}


def _soak(client: redis.Redis, url: str, seconds: float, folder: Path) -> dict[str, Any]:
    metrics_port = free_port()
    settings = settings_for(url, "soak", metrics_port=metrics_port)
    layout = KeyLayout.from_settings(settings)
    now = time.time()
    append_entries(client, layout, list(events(SEED_CLIENTS, SEED_CLIENTS, start=now - 3 * DAY,
                                               span=3 * DAY, received_at=now)))
    config = _config_file(settings, folder, "soak")
    stderr = folder / "soak-dataflow.log"
    read_auth = {"Authorization": f"Bearer {READ_KEY}"}
    write_auth = {"Authorization": "Basic "
                  + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    with dataflow_process(config, stderr) as dataflow, \
            served_process("crmflow", settings, folder) as (base, api):
        probe = Probe(client, layout.all_event_streams(), api.pid, dataflow.pid,
                      f"http://127.0.0.1:{metrics_port}/metrics")
        waited = _wait_for_seed(probe, dataflow, stderr, base, read_auth)
        log(f"soak: dataflow applied the {SEED_CLIENTS:,}-client seed in {waited:.1f}s; "
            f"loads for {seconds:.0f}s")
        during: list[Sample] = [probe.sample(0.0)]
        with ThreadPoolExecutor(2, thread_name_prefix="soak-wrk") as pool:
            started = time.monotonic()
            ingest = pool.submit(
                run_wrk, base + "/v1/batch",
                paced(batch_post_script("/v1/batch", BATCH, write_auth, user_prefix="c",
                                        users=SEED_CLIENTS), INGEST_EVENTS_PER_S / BATCH),
                connections=1, seconds=seconds)
            reads = pool.submit(
                run_wrk, base + "/v1/profiles/c0",
                random_get_script("/v1/profiles/c", SEED_CLIENTS, read_auth),
                connections=READ_CONNECTIONS, seconds=seconds)
            loads: list[Future[LoadResult]] = [ingest, reads]
            tick = started
            while not all(load.done() for load in loads):
                tick += SAMPLE_EVERY
                wait(loads, timeout=max(0.0, tick - time.monotonic()))
                during.append(probe.sample(time.monotonic() - started))
        after: list[Sample] = []
        drained_after = None
        finished = time.monotonic()
        while time.monotonic() - finished < DRAIN_WAIT and dataflow.poll() is None:
            after.append(probe.sample(time.monotonic() - started))
            if after[-1].backlog == 0:
                drained_after = round(time.monotonic() - finished, 1)
                break
            time.sleep(SAMPLE_EVERY / 4)
        alive = {"api": api.poll() is None, "dataflow": dataflow.poll() is None}
    results = _figures(seconds, ingest, reads, during, after, drained_after, alive)
    _log_figures(results)
    return results


def _wait_for_seed(probe: Probe, dataflow: subprocess.Popen[bytes], stderr: Path, base: str,
                   auth: dict[str, str]) -> float:
    """Until the dataflow has read every seed entry and seeded profiles answer 200."""
    started = time.monotonic()
    probes = [f"{base}/v1/profiles/c{n}" for n in (0, SEED_CLIENTS // 2, SEED_CLIENTS - 1)]
    while time.monotonic() - started < START_WAIT:
        if dataflow.poll() is not None:
            tail = stderr.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"dataflow exited with {dataflow.returncode}: {tail}")
        if probe.sample(0.0).backlog == 0 and all(
                httpx.get(path, headers=auth, timeout=5).status_code == 200 for path in probes):
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"the dataflow did not apply the seed within {START_WAIT:.0f}s")


def _load(future: Future[LoadResult], connections: int) -> dict[str, Any]:
    try:
        return {"connections": connections, **future.result().as_dict()}
    except Exception as exc:  # wrk failed or its report did not parse: say so, go on
        return {"connections": connections, "error": repr(exc)}


def _slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    xs, ys = [t / 60 for t, _ in points], [v for _, v in points]
    return round(statistics.linear_regression(xs, ys).slope, 3)


def _memory(during: Sequence[Sample], name: str, scale: float) -> dict[str, Any]:
    """Start, end, max (MiB) and growth over the second half (MiB per minute)."""
    values = [(s.t, getattr(s, name) / scale) for s in during]
    second_half = [(t, v) for t, v in values if t >= values[-1][0] / 2]
    return {"start": round(values[0][1], 1), "end": round(values[-1][1], 1),
            "max": round(max(v for _, v in values), 1),
            "growth_mib_per_min": _slope_per_minute(second_half)}


def _backlog(during: Sequence[Sample], after: Sequence[Sample], drained_after: float | None
             ) -> dict[str, Any]:
    known = [(s.t, s.backlog) for s in during if s.backlog is not None]
    lags = [s.lag_seconds for s in during if s.lag_seconds is not None]
    if not known:
        return {"bounded": None, "note": "the dataflow's metrics never answered"}
    half = known[-1][0] / 2
    first = max((b for t, b in known if t < half), default=0)
    second = max((b for t, b in known if t >= half), default=0)
    slack = 2 * SAMPLE_EVERY * INGEST_EVENTS_PER_S
    return {"max_entries": max(b for _, b in known), "end_entries": known[-1][1],
            "first_half_max": first, "second_half_max": second,
            "growth_entries_per_min": _slope_per_minute([(t, b) for t, b in known if t >= half]),
            "max_lag_s": max(lags, default=None), "drained_after_s": drained_after,
            "after_load_samples": len(after),
            "bounded": second <= first + slack and drained_after is not None}


def _figures(seconds: float, ingest: Future[LoadResult], reads: Future[LoadResult],
             during: list[Sample], after: list[Sample], drained_after: float | None,
             alive: dict[str, bool]) -> dict[str, Any]:
    loaded = during[-1].t
    appended = during[-1].stream_entries - during[0].stream_entries
    series = {f.name: [getattr(s, f.name) for s in (*during, *after)] for f in fields(Sample)}
    return {
        "seconds": seconds, "seed_clients": SEED_CLIENTS, "sample_every_s": SAMPLE_EVERY,
        "ingest": {"target_events_per_s": INGEST_EVENTS_PER_S, "events_ingested": appended,
                   "events_per_s": round(appended / max(loaded, 1e-9)), **_load(ingest, 1)},
        "reads": _load(reads, READ_CONNECTIONS),
        "api_rss_mib": _memory(during, "api_rss_kib", MIB),
        "dataflow_rss_mib": _memory(during, "dataflow_rss_kib", MIB),
        "redis_used_mib": _memory(during, "redis_used_bytes", MIB * MIB),
        "backlog": _backlog(during, after, drained_after),
        "alive_at_end": alive,
        "series": series,
    }


def _log_figures(r: dict[str, Any]) -> None:
    for name in ("ingest", "reads"):
        load = r[name]
        log(f"soak {name}: {load.get('requests_per_s')} req/s p50 {load.get('p50_ms')} ms "
            f"p99 {load.get('p99_ms')} ms errors {load.get('errors', load.get('error'))}")
    for name in ("api_rss_mib", "dataflow_rss_mib", "redis_used_mib"):
        m = r[name]
        log(f"soak {name}: {m['start']} -> {m['end']} (max {m['max']}), "
            f"growth {m['growth_mib_per_min']} MiB/min over the second half")
    backlog = r["backlog"]
    log(f"soak: {r['ingest']['events_ingested']:,} events ingested; backlog max "
        f"{backlog.get('max_entries')} end {backlog.get('end_entries')} entries, lag max "
        f"{backlog.get('max_lag_s')} s, bounded {backlog.get('bounded')}; "
        f"alive at end {r['alive_at_end']}")
