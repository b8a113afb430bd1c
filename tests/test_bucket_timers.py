"""A bucket's timer heaps stay about one entry per client: a far-off timer (a birthday)
left behind each time an earlier one (a browse reminder) came before it piled up for ever,
and every leftover was pushed again when it came up."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import CollectorRegistry

from dataflows import buckets
from dataflows.buckets import EVENT, TICK, BucketConfig, BucketLogic, Item
from dataflows.flow import store_factory
from dataflows.metrics import DataflowMetrics
from features.codec import decode_state
from features.routing import bucket_of
from sinks.bucket_store import BucketStore
from sinks.keys import claim_layout
from tests.support import make_settings

DAY = 86400.0


@pytest.fixture
def logic(redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[BucketLogic]:
    monkeypatch.setattr(buckets, "COMPACT_SLACK", 4, raising=False)  # rebuilds within the test
    logic, store = bucket_logic(redis_url, key_prefix, flush_interval=0.5, lateness=0.5)
    yield logic
    store.client.close()


def bucket_logic(redis_url: str, key_prefix: str, *, flush_interval: float,
                 lateness: float) -> tuple[BucketLogic, BucketStore]:
    """The logic of client c1's bucket, with no quiet hours and no cap."""
    settings = make_settings(redis_url, key_prefix,
                             policy={"quiet_hours": None, "frequency_cap_per_day": 0})
    store = store_factory(settings)
    claim_layout(store.client, store.layout)
    config = BucketConfig(rules=settings.trigger_rules(), offset_flush_interval=flush_interval,
                          allowed_lateness=lateness)
    return BucketLogic(bucket_of("c1", store.layout.buckets), store, config,
                       DataflowMetrics.create(CollectorRegistry())), store


def test_a_far_off_timer_does_not_pile_up_behind_daily_ones(logic: BucketLogic) -> None:
    bucket = logic._bucket
    start = time.time() - 400 * DAY
    sequence = iter(range(1, 10**6))

    def event(kind: str, at: float, **fields: object) -> Item:
        n = next(sequence)
        return (EVENT, bucket, f"{int(at * 1000)}-{n}", "c1", orjson.dumps(
            {"event_id": f"e{n}", "type": kind, "client_id": "c1", "event_time": at,
             "received_at": at, **fields}))

    logic.on_batch([event("identify", start, traits={"birthday": "1990-06-01"})])
    sizes = []
    for day in range(120):  # a view a day: its browse timer comes before the birthday's
        at = start + day * DAY + 60
        logic.on_batch([event("product_view", at, products=[
            {"product_id": f"p{day}", "price": 3, "category": "a"}])])
        tick = at + 3 * 3600  # the browse reminder is due and fires
        logic.on_batch([(TICK, bucket, tick, f"{int(tick * 1000)}-0", False)])
        sizes.append(sum(1 for heap in logic._timers for _, key in heap if key == "c1"))
    assert max(sizes) <= 2 * 1 + 4 + 1, sizes  # twice the clients scheduled, and the slack
    assert logic._scheduled["c1"][0] > start + 120 * DAY  # the birthday is still ahead


def test_an_event_held_for_a_timer_is_stored_with_the_state_and_applied_in_time_order(
        redis_url: str, key_prefix: str) -> None:
    """A view arriving 2 s after the cart reminder came due waits, stored in the client's
    state (a restart reloads it), for the order stamped just before the due time that
    arrives 1 s later: the order closes the cart and no reminder goes out, as in replay."""
    logic, store = bucket_logic(redis_url, key_prefix, flush_interval=0.0, lateness=5.0)
    bucket, start = logic._bucket, float(int(time.time())) - DAY
    due = start + logic._rules.abandoned_cart.delay
    sequence = iter(range(1, 100))

    def event(kind: str, at: float, arrives: float, **fields: object) -> Item:
        n = next(sequence)
        return (EVENT, bucket, f"{int(arrives * 1000)}-{n}", "c1", orjson.dumps(
            {"event_id": f"e{n}", "type": kind, "client_id": "c1", "event_time": at,
             "received_at": arrives, "traits": {"email": "a@example.com"}, **fields}))

    line = [{"product_id": "p1", "price": 3, "category": "a"}]
    logic.on_batch([event("cart_add", start, start, products=line)])
    commits, _ = logic.on_batch([event("product_view", due + 2, due + 2, products=line)])
    [(_, stored)] = list(commits)[0].states
    assert [e.type.value for e in decode_state(stored).held] == ["product_view"]
    commits, _ = logic.on_batch([event("order_placed", due - 1, due + 3, order={
        "order_id": "o1", "total": 3, "items": line})])
    tick = due + 60
    later, _ = logic.on_batch([(TICK, bucket, tick, f"{int(tick * 1000)}-0", True)])
    fired = [t.type for commit in [*commits, *later] for t in commit.triggers]
    assert "order_confirmation" in fired and "abandoned_cart" not in fired
    assert logic._states["c1"].held == () and logic._states["c1"].orders_count == 1
    store.client.close()
