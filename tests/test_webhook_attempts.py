"""A record's attempt count outlives the deliverer: a restart, a crash, a takeover by another
consumer go on from it (sinks/webhook_attempts.py), against a real Redis and a real HTTP
receiver (tests/test_webhooks.py's).

Before, each went back to attempt 1: `X-Crmflow-Attempt` said 1 again, the backoff started
over, and a record whose endpoint always failed was retried `max_attempts` times a start,
never reaching the failed stream under a deliverer that crashed or was redeployed often.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import redis
import redis.asyncio as aioredis
import yaml

from sinks.keys import KeyLayout
from sinks.webhook_attempts import begin_attempt, release_unsent
from sinks.webhooks import group_name
from tests.support import wait_for
from tests.test_webhooks import (  # noqa: F401 - receiver: a fixture
    CONSUMER,
    Receiver,
    _env,
    add_record,
    always,
    delivering,
    endpoint,
    failed_records,
    groups_exist,
    hook_settings,
    pending,
    receiver,
)


def _attempts_seen(got: Receiver, path: str) -> list[str]:
    return [r.headers["x-crmflow-attempt"] for r in got.received(path)]


def _counts(client: redis.Redis, stream: str, group: str) -> list[tuple[str, int]]:
    """(consumer, delivery count) of each record pending in the group, in id order."""
    return [(e["consumer"].decode(), e["times_delivered"])
            for e in client.xpending_range(stream, group, "-", "+", 100)]


def test_the_count_is_redis_s_delivery_count_and_only_its_holder_moves_it(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """What the count relies on, on the Redis under test (6.2 embedded, 7 by REDIS_URL): a
    read of new records starts it at 1, a read of one's own pending records and a takeover
    add one, the hold renewal (`XCLAIM ... JUSTID`) leaves it; and only the consumer holding
    a record can set it or give a number back."""
    stream, group = f"{key_prefix}:s", "webhook:crm"
    redis_client.xgroup_create(stream, group, "$", mkstream=True)
    entry = redis_client.xadd(stream, {"f": "1"}).decode()

    def count() -> tuple[str, int]:
        [(consumer, times)] = _counts(redis_client, stream, group)
        return consumer, times

    async def begin(consumer: str, attempt: int | None) -> int | None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await begin_attempt(client, stream, group, consumer, entry, attempt)
        finally:
            await client.aclose()

    async def release(consumer: str) -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await release_unsent(client, stream, group, consumer, [entry])
        finally:
            await client.aclose()

    redis_client.xreadgroup(group, "a", {stream: ">"})
    assert count() == ("a", 1) and asyncio.run(begin("a", None)) == 1
    assert asyncio.run(begin("a", 2)) == 2 and count() == ("a", 2)
    redis_client.xclaim(stream, group, "a", 0, [entry], justid=True)  # a hold renewed
    assert count() == ("a", 2)
    redis_client.xreadgroup(group, "a", {stream: "0"})  # a restart's read of its own
    assert count() == ("a", 3) and asyncio.run(begin("a", None)) == 3
    asyncio.run(release("a"))  # read, never sent: its number given back
    assert count() == ("a", 2)
    redis_client.xautoclaim(stream, group, "b", 0, "0-0")  # taken over
    assert count() == ("b", 3)
    assert asyncio.run(begin("a", 4)) is None and asyncio.run(begin("a", None)) is None
    asyncio.run(release("a"))
    assert count() == ("b", 3) and asyncio.run(begin("b", None)) == 3
    redis_client.xack(stream, group, entry)  # settled: nothing is left, nor to count
    assert _counts(redis_client, stream, group) == []
    assert asyncio.run(begin("b", 4)) is None


def test_a_restart_mid_retries_goes_on_from_the_count_and_gives_up_at_max_attempts(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:  # noqa: F811 - the fixture
    """Two attempts, a stop while the record waits for its third, a start: attempts 3 and 4
    (not 1 to 4 again), the backoff before 4 that of a third failure, then the failed
    stream with the four."""
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.on("/crm", always(503)), max_attempts=4, backoff_initial="500ms",
        backoff_max="2s"))
    stream = KeyLayout.from_settings(settings).triggers(1)
    with delivering(settings, redis_client):
        add_record(redis_client, settings, 1, trigger_id="down")
        receiver.wait("/crm", 2)  # then a backoff of 1 s (less a fifth at most): stopped in it
    assert _attempts_seen(receiver, "/crm") == ["1", "2"]
    assert _counts(redis_client, stream, group_name("crm")) == [(CONSUMER, 2)]
    with delivering(settings, redis_client) as running:
        wait_for(lambda: failed_records(redis_client, settings), 10, "a failed record")
        wait_for(lambda: pending(redis_client, settings, "crm") == 0, 5, "acknowledged")
    assert _attempts_seen(receiver, "/crm") == ["1", "2", "3", "4"]
    _, _, third, fourth = receiver.received("/crm")
    assert fourth.at - third.at >= 1.5  # 2 s after a third failure (0.5 s after a first)
    [failure] = failed_records(redis_client, settings)
    assert (failure["trigger_id"], failure["attempts"], failure["error"]) == (
        "down", "4", "HTTP 503")
    assert running.count("crm", "failed") == 1 and running.count("crm", "retried") == 1


def test_a_deliverer_killed_after_every_attempt_gives_up_after_max_attempts_in_all(
        tmp_path: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:  # noqa: F811 - the fixture
    """A crash loop: `crmflow deliver` SIGKILLed as soon as each attempt reaches the
    receiver, before its answer. Each start makes the next attempt; the start after the last
    records the record as failed with every attempt counted, and sends nothing."""
    hook = endpoint("crm", receiver.on("/crm", always(503, delay=1.0)), max_attempts=3,
                    backoff_initial="30s", backoff_max="30s")
    settings = hook_settings(redis_url, key_prefix, hook)
    config = tmp_path / "deliver.yaml"
    config.write_text(yaml.safe_dump({
        "redis": {"url": redis_url, "key_prefix": key_prefix},
        "dataflow": {"partitions": 4, "buckets": 64},
        "webhooks": {"endpoints": [hook], "metrics_port": 0, "consumer": "crashing"}}))

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "crmflow.cli", "deliver", "--config",
                                 str(config)], cwd=tmp_path, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    for attempt in range(1, 4):
        process = start()
        try:
            if attempt == 1:
                wait_for(lambda: groups_exist(redis_client, settings), 30, "groups")
                add_record(redis_client, settings, 2, trigger_id="down")
            receiver.wait("/crm", attempt, timeout=30)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(20)
    process = start()
    try:
        wait_for(lambda: failed_records(redis_client, settings), 30, "a failed record")
        wait_for(lambda: pending(redis_client, settings, "crm") == 0, 10, "acknowledged")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    assert _attempts_seen(receiver, "/crm") == ["1", "2", "3"]
    [failure] = failed_records(redis_client, settings)
    assert failure["attempts"] == "3" and "http_status" not in failure
    assert failure["error"].startswith("no attempt left after a restart or a takeover")


def test_a_takeover_goes_on_from_the_count_of_the_consumer_gone(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:  # noqa: F811 - the fixture
    """A consumer made two attempts and never came back; the one that takes the record over
    after `claim_after` makes attempts 3 and 4, and gives up."""
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.on("/crm", always(503)), max_attempts=4, backoff_initial="1s",
        backoff_max="1s"), claim_after="1s")
    stream = KeyLayout.from_settings(settings).triggers(0)
    with delivering(settings, redis_client, consumer="old-host"):
        add_record(redis_client, settings, 0, trigger_id="orphan")
        receiver.wait("/crm", 2)  # then gone, in its backoff
    assert _counts(redis_client, stream, group_name("crm")) == [("old-host", 2)]
    with delivering(settings, redis_client, consumer="new-host") as running:
        wait_for(lambda: failed_records(redis_client, settings), 15, "a failed record")
        wait_for(lambda: pending(redis_client, settings, "crm") == 0, 5, "acknowledged")
    assert _attempts_seen(receiver, "/crm") == ["1", "2", "3", "4"]
    [failure] = failed_records(redis_client, settings)
    assert (failure["trigger_id"], failure["attempts"]) == ("orphan", "4")
    assert running.count("crm", "retried") == 1 and running.count("crm", "failed") == 1


def test_records_read_and_never_sent_when_the_deliverer_stops_keep_their_count(
        redis_client: redis.Redis, redis_url: str, key_prefix: str,
        receiver: Receiver) -> None:  # noqa: F811 - the fixture
    """One slot, one record per partition: a read takes the four, one is sent (and waits to
    be retried), three wait for the slot. A stop gives back the attempt their read had
    counted: each is attempt 1 at the next start, the one sent attempt 2."""
    settings = hook_settings(redis_url, key_prefix, endpoint("crm", receiver.url("/crm")))
    for partition in range(4):
        add_record(redis_client, settings, partition, trigger_id=f"r{partition}")
    settings = hook_settings(redis_url, key_prefix, endpoint(
        "crm", receiver.on("/crm", always(503)), concurrency=1, start_from="oldest",
        backoff_initial="30s", backoff_max="30s"))
    layout = KeyLayout.from_settings(settings)
    with delivering(settings, redis_client):
        [sent] = receiver.wait("/crm", 1)
        wait_for(lambda: pending(redis_client, settings, "crm") == 4, 5, "four read")
    counts = {p: _counts(redis_client, layout.triggers(p), group_name("crm"))
              for p in range(4)}
    first = sent.json()["trigger_id"]
    assert counts == {p: [(CONSUMER, 1 if f"r{p}" == first else 0)] for p in range(4)}
    receiver.on("/crm", always(200))
    with delivering(settings, redis_client) as running:
        receiver.wait("/crm", 5)
        wait_for(lambda: running.count("crm", "delivered") == 4, 10, "all delivered")
    again = {r.json()["trigger_id"]: r.headers["x-crmflow-attempt"]
             for r in receiver.received("/crm")[1:]}
    assert again == {f"r{p}": "2" if f"r{p}" == first else "1" for p in range(4)}
