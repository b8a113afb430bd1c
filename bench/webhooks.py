"""Webhook delivery throughput: `python -m bench.webhooks` (not part of `make bench`).

A backlog of trigger records in every partition of a scratch Redis, one endpoint reading it
from the oldest, and a receiver in a process of its own (uvicorn, answering 204 at once):
the records delivered per second, and the deliverer's CPU per record, for each concurrency.
The deliverer runs in this process as `crmflow deliver` runs it (sinks/webhooks.py).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client import CollectorRegistry

from config.settings import Settings
from crmflow.redis_server import EmbeddedRedis, free_port
from features.triggers import Trigger
from sinks.bucket_store import stream_fields
from sinks.keys import KeyLayout
from sinks.webhook_metrics import WebhookMetrics
from sinks.webhooks import deliver

received = 0


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Counts POSTs; GET /count says how many."""
    global received
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(received).encode()})
        return
    while (await receive()).get("more_body"):
        pass
    received += 1
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def count(url: str) -> int:
    return int(httpx.get(url + "/count", timeout=5).text)


def fill(client: redis.Redis, layout: KeyLayout, records: int) -> None:
    pipe = client.pipeline(transaction=False)
    now = time.time()
    for n in range(records):
        record = Trigger(f"t{n:08d}", "abandoned_cart", f"client-{n}", fired_at=now,
                         payload={"items": [{"product_id": "mug", "quantity": 2,
                                             "price": 12.0}], "cart_value": 24.0},
                         channel="email", key=f"{now:.3f}").to_dict()
        flat = stream_fields(record)
        pipe.xadd(layout.triggers(n % layout.partitions),
                  dict(zip(flat[::2], flat[1::2], strict=True)))
    pipe.execute()


async def measure(settings: Settings, url: str, records: int) -> tuple[float, float]:
    """Seconds until the receiver has every record, and the CPU seconds this process spent."""
    stop = asyncio.Event()
    metrics = WebhookMetrics.create(CollectorRegistry())
    start = count(url)
    wall, cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(deliver(settings, stop, metrics, consumer="bench"))
    while await asyncio.to_thread(count, url) - start < records:
        await asyncio.sleep(0.02)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stop.set()
    await task
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the receiver's port
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(receiver_app, host="127.0.0.1", port=args.serve, log_level="warning",
                    access_log=False)
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    receiver = subprocess.Popen([sys.executable, "-m", "bench.webhooks", "--serve", str(port)])
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="webhooks-bench-")), port=0,
                           appendonly=False)
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                count(url)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        print(f"{args.records} records over 4 partitions, receiver answering 204 at once")
        for concurrency in args.concurrency:
            settings = Settings(
                redis={"url": server.url, "key_prefix": f"bench{concurrency}"},
                webhooks={"metrics_port": 0, "endpoints": [{
                    "name": "bench", "url": url + "/hook", "secret": "bench-secret-0123456789",
                    "concurrency": concurrency, "start_from": "oldest"}]})
            fill(client, KeyLayout.from_settings(settings), args.records)
            wall, cpu = asyncio.run(measure(settings, url, args.records))
            print(f"  concurrency {concurrency:>3}: {args.records / wall:>7,.0f} records/s, "
                  f"{cpu / args.records * 1e6:>5,.0f} us of the deliverer's CPU per record")
    finally:
        client.close()
        server.stop()
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()
