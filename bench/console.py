"""Console reads at the largest size the plan ran (1M clients in the full plan): each page's
API calls, timed one at a time as a person's browser makes them. The point is that no page
loads all clients, so these stay flat as the base grows."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.run import READ_KEY, Plan, log, served, settings_for
from sinks.keys import KeyLayout

REPEAT = 20


def _timed(client: httpx.Client, path: str) -> dict[str, Any]:
    times: list[float] = []
    size = 0
    for _ in range(REPEAT):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "max_ms": round(times[-1], 2),
            "bytes": size}


def console_section(client: redis.Redis, url: str, plan: Plan, folder: Path
                    ) -> dict[str, Any]:
    size = plan.sizes[-1]
    settings = settings_for(url, f"df{size}")  # the clients the last dataflow run left
    layout = KeyLayout.from_settings(settings)
    results: dict[str, Any] = {"clients": size}
    with served("crmflow", settings, folder) as base, httpx.Client(
            base_url=base, timeout=120,
            headers={"Authorization": f"Bearer {READ_KEY}"}) as http:
        segments = http.get("/v1/segments").json()["segments"]
        largest = max(segments, key=lambda s: s["size"])
        indexed = client.zrange(layout.lookup(0), 0, 0)
        email = (indexed[0].decode().split("\0")[0].removeprefix("email:") if indexed
                 else "c7@example.com")
        calls = {
            "overview: activity": "/v1/activity?minutes=60",
            "overview: segments": "/v1/segments",
            "overview: rfm map": "/v1/rfm/map",
            "rfm cell members (50)": "/v1/rfm/map/cells/3/3/members?limit=50",
            "segment history": f"/v1/segments/{largest['name']}/history?days=14",
            "segment members (50)": f"/v1/segments/{largest['name']}/members?limit=50",
            "lookup by email": f"/v1/lookup?q={email}",
            "client card: profile": "/v1/profiles/c7",
            "client card: timeline": "/v1/profiles/c7/timeline?limit=100",
            "rules": "/v1/rules",
        }
        for name, path in calls.items():
            results[name] = _timed(http, path)
            log(f"console {name}: p50 {results[name]['p50_ms']} ms, max "
                f"{results[name]['max_ms']} ms, {results[name]['bytes']:,} bytes")
        started = time.perf_counter()
        with http.stream("GET", f"/v1/segments/{largest['name']}/members.csv") as response:
            lines = sum(chunk.count(b"\n") for chunk in response.iter_bytes())
        seconds = time.perf_counter() - started
        results["csv download"] = {"segment": largest["name"], "rows": lines - 1,
                                   "seconds": round(seconds, 2)}
        log(f"console csv {largest['name']}: {lines - 1:,} rows in {seconds:.1f}s")
        rfm_clients = http.get("/v1/rfm/map").json()["clients"]
        results["rfm map clients"] = rfm_clients
    return results
