"""A partition's points are those it holds clients of now: a point leaves the list (and the
segment size history) with its last client, whether the client moved to another point, was
erased or merged away; a resent commit counts nothing twice; data from before the counts is
counted when its bucket loads. Real Redis, the real bucket logic and commit script."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from config.settings import Settings
from dataflows.buckets import EVENT, TICK, BucketConfig, BucketLogic, Item
from dataflows.flow import store_factory
from dataflows.metrics import DataflowMetrics
from features.events import parse_event
from sinks import console_store
from sinks.bucket_store import BucketCommit, BucketStore
from sinks.event_log import encode_event
from sinks.keys import KeyLayout, claim_layout
from sinks.redis_client import async_client
from tests.support import ADMIN_KEY, WRITE_KEY, api_server, drain, make_settings

DAY = 86400.0


def listed(settings: Settings) -> list[str]:
    """The points the API lists (what the size history records)."""
    async def read() -> list[str]:
        client = async_client(settings.redis)
        try:
            return await console_store.points(client, KeyLayout.from_settings(settings))
        finally:
            await client.aclose()
    return asyncio.run(read())


@dataclass
class Bucket:
    """One bucket's logic, its clients (all routed to it), and its commits sent to Redis."""

    settings: Settings
    store: BucketStore
    logic: BucketLogic
    clients: list[str]
    sequence: Iterator[int]

    @property
    def partition(self) -> int:
        return self.store.layout.partition_of_bucket(self.logic._bucket)

    def item(self, client: str, kind: str, **fields: Any) -> Item:
        n = next(self.sequence)
        at = time.time() - DAY + n
        raw = (encode_event(parse_event({"type": kind, "event_id": f"e{n}", "client_id": client,
                                         "event_time": at}))
               if kind == "erasure_requested" else
               orjson.dumps({"event_id": f"e{n}", "type": kind, "client_id": client,
                             "event_time": at, "received_at": at, **fields}))
        return (EVENT, self.logic._bucket, f"{int(at * 1000)}-{n}", client, raw)

    def identify(self, client: str, point: str) -> Item:
        return self.item(client, "identify", traits={"point_id": point})

    def run(self, *items: Item) -> list[BucketCommit]:
        commits, _ = self.logic.on_batch(list(items))
        commits = list(commits)
        self.store.commit(commits)
        return commits

    def counts(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes],
                   self.store.client.hgetall(self.store.layout.points(self.partition)))
        return {k.decode(): int(v) for k, v in raw.items()}

    def reload(self) -> None:
        self.logic = new_logic(self.settings, self.store, self.logic._bucket)


def new_logic(settings: Settings, store: BucketStore, bucket: int) -> BucketLogic:
    config = BucketConfig(rules=settings.trigger_rules(), offset_flush_interval=0.5,
                          allowed_lateness=0.5)
    return BucketLogic(bucket, store, config, DataflowMetrics.create(CollectorRegistry()))


@pytest.fixture
def bucket(redis_url: str, key_prefix: str) -> Iterator[Bucket]:
    settings = make_settings(redis_url, key_prefix,
                             policy={"quiet_hours": None, "frequency_cap_per_day": 0})
    store = store_factory(settings)
    claim_layout(store.client, store.layout)
    home = store.layout.bucket_of("c0")
    clients = [c for c in (f"c{n}" for n in range(10_000))
               if store.layout.bucket_of(c) == home][:3]
    yield Bucket(settings, store, new_logic(settings, store, home), clients,
                 itertools.count(1))
    store.client.close()


def test_a_point_leaves_the_list_with_its_last_client(bucket: Bucket) -> None:
    a, b, c = bucket.clients
    bucket.run(bucket.identify(a, "leeds"), bucket.identify(b, "leeds"),
               bucket.identify(c, "york"))
    assert listed(bucket.settings) == ["leeds", "york"]
    bucket.run(bucket.identify(a, "york"))  # one of two leaves leeds: leeds stays
    assert listed(bucket.settings) == ["leeds", "york"]
    bucket.run(bucket.identify(b, "hull"))  # the last one leaves
    assert listed(bucket.settings) == ["hull", "york"]
    assert bucket.counts() == {"york": 2, "hull": 1}

    bucket.run(bucket.item(b, "erasure_requested"))  # hull's only client is erased
    assert listed(bucket.settings) == ["york"]
    bucket.run(bucket.identify(a, "hull"), bucket.item(a, "erasure_requested"),
               bucket.item(c, "erasure_requested"))  # moved and erased in one batch
    assert listed(bucket.settings) == [] and bucket.counts() == {}


def test_a_resent_batch_counts_nothing_twice(bucket: Bucket) -> None:
    a, b, _ = bucket.clients
    first = bucket.run(bucket.identify(a, "leeds"), bucket.identify(b, "leeds"))
    moved = bucket.run(bucket.identify(a, "york"))
    assert moved[0].point_moves == [("leeds", -1), ("york", 1)]
    bucket.store.commit(first + moved)  # delivered again after a lost reply: no-ops
    bucket.store.commit(moved)
    assert bucket.counts() == {"leeds": 1, "york": 1}
    erased = bucket.run(bucket.item(b, "erasure_requested"))
    bucket.store.commit(erased)
    assert bucket.counts() == {"york": 1} and listed(bucket.settings) == ["york"]


def test_data_from_before_the_counts_is_counted_when_its_bucket_loads(
        bucket: Bucket, redis_client: redis.Redis) -> None:
    """States written before the counts (here: the counts deleted after) are counted by
    the bucket's first commit after its next load, moves of that batch included; until
    then its moves are left out, so nothing is counted twice."""
    a, b, c = bucket.clients
    bucket.run(bucket.identify(a, "leeds"), bucket.identify(b, "leeds"),
               bucket.identify(c, "york"))
    layout, partition = bucket.store.layout, bucket.partition
    redis_client.delete(layout.points(partition), layout.points_counted(partition))
    bucket.run(bucket.identify(a, "york"))  # an uncounted bucket's move: left out
    assert bucket.counts() == {}

    bucket.reload()
    bucket.run(bucket.identify(b, "hull"))  # counted as loaded, then moved
    assert bucket.counts() == {"york": 2, "hull": 1}
    bucket.reload()  # counted now: a load adds nothing
    assert bucket.logic._point_counts is None
    bucket.run(bucket.identify(c, "hull"))
    assert bucket.counts() == {"york": 1, "hull": 2}


def test_an_idle_bucket_from_before_the_counts_is_counted_at_its_first_tick(
        bucket: Bucket, redis_client: redis.Redis) -> None:
    a, _, _ = bucket.clients
    bucket.run(bucket.identify(a, "leeds"))
    layout, partition = bucket.store.layout, bucket.partition
    redis_client.delete(layout.points(partition), layout.points_counted(partition))
    bucket.reload()
    position = bucket.logic._position
    [commit] = bucket.run((TICK, bucket.logic._bucket, time.time(), position, True))
    assert commit.base == commit.position == position and commit.point_counts == [("leeds", 1)]
    assert bucket.counts() == {"leeds": 1}


def test_a_point_gone_is_no_longer_recorded_and_its_history_expires(
        redis_url: str, redis_client: redis.Redis, key_prefix: str) -> None:
    """Through the API and the dataflow: a cookie's point goes when the cookie is merged
    into a client of another point, a client's when it is erased; the size history stops
    recording both, and their histories expire with their last entry, as do those of the
    points kept before the counts (the set that only grew is deleted)."""
    from api.app import create_app
    from api.size_history import record_once

    settings = make_settings(redis_url, key_prefix, policy={"quiet_hours": None})
    layout = KeyLayout.from_settings(settings)
    retention = settings.console.size_history_retention

    def record(at: float) -> None:
        app = create_app(settings)

        async def once() -> None:
            async with app.router.lifespan_context(app):
                await record_once(app.state.resources, at)
        asyncio.run(once())

    def post(*events: dict[str, Any]) -> None:
        sent = http.post("/v1/batch", json={"batch": list(events)}, auth=(WRITE_KEY, ""))
        assert sent.status_code == 200, sent.text

    with api_server(settings) as url, httpx.Client(base_url=url, timeout=30) as http:
        post({"type": "identify", "anonymousId": "ck-1", "messageId": "m1",
              "traits": {"point_id": "kiosk"}},
             {"type": "identify", "userId": "ann", "messageId": "m2",
              "traits": {"point_id": "leeds"}},
             {"type": "identify", "userId": "bob", "messageId": "m3",
              "traits": {"point_id": "york"}})
        drain(settings)
        assert listed(settings) == ["kiosk", "leeds", "york"]
        # slots of their own: an app's start records the current one too
        before, after = time.time() - 2 * DAY, time.time() - DAY
        record(before)
        kiosk = layout.segment_sizes("lifecycle:new", "kiosk")
        assert redis_client.hexists(kiosk, str(int(before // 3600 * 3600)))

        post({"type": "identify", "userId": "ann", "anonymousId": "ck-1", "messageId": "m4"})
        erased = http.delete("/v1/profiles/bob", params={"wait": 0},
                             headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert erased.status_code == 202
        drain(settings)
        assert listed(settings) == ["leeds"]  # the cookie merged away, bob erased
        old = layout.segment_sizes("lifecycle:new", "closed-in-2023")
        redis_client.sadd(layout.retired_points(0), "closed-in-2023")
        redis_client.hset(old, "1700000000", 4)
        record(after)
        slot = str(int(after // 3600 * 3600))
        york = layout.segment_sizes("lifecycle:new", "york")
        assert not redis_client.hexists(kiosk, slot) and not redis_client.hexists(york, slot)
        assert redis_client.hexists(layout.segment_sizes("lifecycle:new", "leeds"), slot)
        for gone in (kiosk, york, old):  # expire within the retention, none kept for ever
            assert 0 < redis_client.ttl(gone) <= retention, gone
        assert not redis_client.exists(layout.retired_points(0))
