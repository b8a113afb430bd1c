"""crmflow's profile reads next to Feast's feature server, on the same Redis (`make bench-peers`).

The clients are the ones crmflow's dataflow builds from the benchmark's event mix; Feast
holds the same clients with 10 of their features, materialized from a Parquet file into its
Redis online store. Feast runs from its own environment (`.venv-feast`, made by the
Makefile), as `feast serve` with one worker and `--max-requests 0`; crmflow's API runs with
the same one-worker uvicorn settings as in `make bench`. Both get load 4 of the benchmark:
random ids, wrk at concurrency 1 and 32. The report is bench/peers.json and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from bench.run import (
    READ_KEY,
    REPO,
    _config_file,
    append_entries,
    log,
    read_rows,
    render,
    run_drain,
    scratch_redis,
    served,
    settings_for,
    used_memory,
)
from bench.workload import events
from bench.wrk import LoadResult, random_get_script, run_wrk, wrk_available
from config.settings import Settings
from crmflow.redis_server import free_port
from crmflow.supervisor import stop_process
from features.rules import SegmentRules
from sinks.keys import KeyLayout
from sinks.parquet_export import client_states

FEATURES = ("orders_count", "monetary_total", "avg_order_value", "recency_days", "visits",
            "visits_30d", "views_7d", "cart_items", "cart_value", "days_since_last_visit")
VIEW = "client_features"


def feature_table(client: redis.Redis, settings: Settings, path: Path, at: float) -> int:
    """The 10 features of every client crmflow holds, as Feast's offline source."""
    from features.profile import profile_row

    rules = SegmentRules()
    ids: list[str] = []
    columns: dict[str, list[float]] = {name: [] for name in FEATURES}
    for key, state in client_states(client, KeyLayout.from_settings(settings)):
        row = profile_row(key, state, at, rules)
        ids.append(key)
        for name in FEATURES:
            value = row[name]
            columns[name].append(float(value) if value is not None else math.nan)
    stamp = datetime.fromtimestamp(at, UTC)
    table = pa.table({"client_id": ids, "event_timestamp": [stamp] * len(ids),
                      **{name: pa.array(values, pa.float64())
                         for name, values in columns.items()}})
    pq.write_table(table, path)
    return len(ids)


def feast_repo(folder: Path, redis_port: int, source: Path) -> Path:
    """A Feast feature repository: the store's YAML and one feature view over `source`."""
    repo = folder / "feast_repo"
    repo.mkdir()
    (repo / "feature_store.yaml").write_text(
        "project: crmflow_peer\n"
        "registry: registry.db\n"
        "provider: local\n"
        f"online_store:\n  type: redis\n  connection_string: \"127.0.0.1:{redis_port}\"\n"
        "offline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n")
    fields = ", ".join(f'Field(name="{name}", dtype=Float64)' for name in FEATURES)
    (repo / "definitions.py").write_text(
        "from datetime import timedelta\n\n"
        "from feast import Entity, FeatureView, Field, FileSource, ValueType\n"
        "from feast.types import Float64\n\n"
        'client = Entity(name="client", join_keys=["client_id"], '
        "value_type=ValueType.STRING)\n"
        f'source = FileSource(path="{source}", timestamp_field="event_timestamp")\n'
        f'{VIEW} = FeatureView(name="{VIEW}", entities=[client], '
        f"ttl=timedelta(days=36500), schema=[{fields}], source=source, online=True)\n")
    return repo


def _feast(venv: Path, repo: Path, *args: str, timeout: float = 1800) -> None:
    done = subprocess.run([str(venv / "bin" / "feast"), *args], cwd=repo, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"feast {' '.join(args)} failed: {done.stderr[-2000:]}")


def feast_script(ids: int) -> str:
    """POST /get-online-features for one random client, as a personalization call does."""
    features = ",".join(f'"{VIEW}:{name}"' for name in FEATURES)
    return f"""wrk.headers["Content-Type"] = "application/json"
math.randomseed(os.time())
local head = '{{"features":[{features}],"entities":{{"client_id":["c'
request = function()
  local body = head .. math.random(0, {ids - 1}) .. '"]}}}}'
  return wrk.format("POST", "/get-online-features", nil, body)
end
"""


def serve_feast(venv: Path, repo: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [str(venv / "bin" / "feast"), "serve", "--port", str(port), "--workers", "1",
         "--max-requests", "0", "--no-access-log"],
        cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    probe = {"features": [f"{VIEW}:{FEATURES[0]}"], "entities": {"client_id": ["c0"]}}
    while True:
        try:
            if httpx.post(f"http://127.0.0.1:{port}/get-online-features", json=probe,
                          timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.terminate()
            raise RuntimeError("feast serve did not start")
        time.sleep(0.5)


def check_same_values(crmflow_url: str, feast_port: int, ids: list[str]) -> int:
    """Both servers answer the same values for the same clients (else the race is moot)."""
    checked = 0
    for client_id in ids:
        mine = httpx.get(f"{crmflow_url}/v1/profiles/{client_id}", timeout=10,
                         headers={"Authorization": f"Bearer {READ_KEY}"}).json()["features"]
        theirs = httpx.post(f"http://127.0.0.1:{feast_port}/get-online-features", timeout=10,
                            json={"features": [f"{VIEW}:{n}" for n in FEATURES],
                                  "entities": {"client_id": [client_id]}}).json()
        names = theirs["metadata"]["feature_names"]
        values = {name: result["values"][0] for name, result in zip(names, theirs["results"],
                                                                    strict=True)}
        for name in ("orders_count", "monetary_total", "visits", "cart_items"):
            if mine[name] is not None and values[name] is not None and abs(
                    float(mine[name]) - float(values[name])) > 1e-6:
                raise AssertionError(f"{client_id} {name}: crmflow {mine[name]}, "
                                     f"feast {values[name]}")
        checked += 1
    return checked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--feast-venv", type=Path, default=REPO / ".venv-feast")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "peers.json")
    args = parser.parse_args(argv)
    args.feast_venv = args.feast_venv.resolve()  # Feast runs in its repository's folder
    if not wrk_available():
        raise SystemExit("wrk is needed (apt-get install wrk; make bench-peers does)")
    if not (args.feast_venv / "bin" / "feast").exists():
        raise SystemExit(f"no Feast at {args.feast_venv} (make bench-peers installs it)")
    started = time.time()
    results: dict[str, Any] = {"clients": args.clients}
    with scratch_redis("peers") as (folder, url, client):
        settings = settings_for(url, "peer")
        layout = KeyLayout.from_settings(settings)
        now = time.time()
        empty = used_memory(client)
        append_entries(client, layout, list(events(2 * args.clients, args.clients,
                                                   start=now - 3 * 86400, span=3 * 86400,
                                                   received_at=now)))
        run_drain(_config_file(settings, folder, "peer"))
        for stream in (*layout.all_event_streams(), *layout.all_trigger_streams()):
            client.delete(stream)
        results["crmflow_redis_bytes_per_client"] = round((used_memory(client) - empty)
                                                          / args.clients)
        log(f"crmflow holds {args.clients:,} clients, "
            f"{results['crmflow_redis_bytes_per_client']} B/client")
        source = folder / "clients.parquet"
        rows = feature_table(client, settings, source, now)
        repo = feast_repo(folder, int(url.rsplit(":", 1)[1].split("/")[0]), source)
        _feast(args.feast_venv, repo, "apply")
        before = used_memory(client)
        materialize_started = time.perf_counter()
        _feast(args.feast_venv, repo, "materialize", "--disable-event-timestamp")
        results["feast_materialize_seconds"] = round(
            time.perf_counter() - materialize_started, 1)
        results["feast_redis_bytes_per_entity"] = round((used_memory(client) - before)
                                                        / rows)
        log(f"feast materialized {rows:,} entities in "
            f"{results['feast_materialize_seconds']}s, "
            f"{results['feast_redis_bytes_per_entity']} B/entity")
        feast_port = free_port()
        feast = serve_feast(args.feast_venv, repo, feast_port)
        try:
            with served("crmflow", settings, folder) as base:
                results["values_checked"] = check_same_values(
                    base, feast_port, [f"c{n}" for n in range(0, args.clients, 997)])
                auth = {"Authorization": f"Bearer {READ_KEY}"}
                for connections in (1, 32):
                    loads: dict[str, LoadResult] = {
                        "crmflow": run_wrk(base + "/v1/profiles/c0",
                                           random_get_script("/v1/profiles/c",
                                                             args.clients, auth),
                                           connections=connections, seconds=args.seconds),
                        "feast": run_wrk(f"http://127.0.0.1:{feast_port}/",
                                         feast_script(args.clients),
                                         connections=connections, seconds=args.seconds)}
                    for name, load in loads.items():
                        results[f"{name}_c{connections}"] = load.as_dict()
                        log(f"{name} c={connections}: {load.requests_per_s:,.0f} req/s "
                            f"p50 {load.p50_ms} ms p99 {load.p99_ms} ms "
                            f"errors {load.errors}")
        finally:
            stop_process(feast, 30)
    mine, theirs = results["crmflow_c32"], results["feast_c32"]
    results["reads_vs_feast_c32"] = round(mine["requests_per_s"] / theirs["requests_per_s"], 2)
    results["p99_vs_feast_c32"] = round(mine["p99_ms"] / theirs["p99_ms"], 3)
    results["seconds"] = round(time.time() - started)
    args.out.write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("measure", "crmflow", "feast", "ratio", "target")]
    for c in (1, 32):
        rows += read_rows(f"reads req/s, c={c}", results[f"crmflow_c{c}"],
                          results[f"feast_c{c}"], "feast", ">= 3x at c=32" if c == 32 else "",
                          "p99 <= 0.33x at c=32" if c == 32 else "")
    rows.append(("redis bytes per client (all / 10 features)",
                 f"{results['crmflow_redis_bytes_per_client']:,}",
                 f"{results['feast_redis_bytes_per_entity']:,}", "", ""))
    return render(rows) + (f"\n\n{results['clients']:,} clients, "
                           f"{results['values_checked']} checked equal, "
                           f"{results['seconds']}s")


if __name__ == "__main__":
    main(sys.argv[1:])
