"""Uplift counting in the pure core: who is in which group, what converts, the statistics
(features/uplift.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.events import format_time, read_time
from features.state import MAX_ORDERS, OrderRecord
from features.uplift import (
    TREATED,
    GroupTally,
    Occasion,
    Uplift,
    conversions,
    group_of,
    merged,
    orders_not_kept,
    tally,
)

pytestmark = pytest.mark.core

DAY = 86400.0
CART = "abandoned_cart"


def occasion(client: str, status: str, reason: str | None = None, at: float = 1000.0,
             kind: str = CART, key: str = "1000.000") -> Occasion:
    return Occasion(client, kind, key, at, status, reason)


@pytest.mark.parametrize(("status", "reason", "group"), [
    ("holdout", None, "holdout"),
    ("sent", None, TREATED),
    ("suppressed", "no_channel", TREATED),  # past the draw: intent to treat
    ("suppressed", "frequency_cap", TREATED),
    ("suppressed", "cancelled", TREATED),  # ended while it waited for quiet hours to end
    ("suppressed", "pending_limit", None),  # before the draw (a delay) or after (quiet)
    ("suppressed", "loyal", None),  # suppressed before the draw
    ("suppressed", "churned", None),
    ("suppressed", "detractor", None),
    ("suppressed", "backfill", None),
    ("suppressed", "before_enabled", None),
    ("deferred", "quiet_hours", TREATED),  # past the draw, whatever its final record
])
def test_the_group_is_decided_by_intent_to_treat(status: str, reason: str | None,
                                                 group: str | None) -> None:
    assert group_of(occasion("c", status, reason)) == group


def test_no_room_to_wait_is_treated_only_past_the_draw() -> None:
    """A delay waits before the draw (no channel yet); quiet hours after it."""
    assert group_of(Occasion("c", CART, "1", 1000.0, "suppressed", "pending_limit")) is None
    assert group_of(Occasion("c", CART, "1", 1000.0, "suppressed", "pending_limit",
                             "email")) == TREATED


def test_transactional_triggers_and_follow_ups_are_in_no_group() -> None:
    assert group_of(occasion("c", "sent", kind="order_confirmation")) is None
    assert group_of(occasion("c", "sent", key="1000.000#follow_up1")) is None


def test_an_order_converts_within_the_window_after_the_occasion_only() -> None:
    orders = (OrderRecord("before", 999.0, 10.0), OrderRecord("same", 1000.0, 10.0),
              OrderRecord("in", 1000.0 + DAY, 10.0), OrderRecord("edge", 1000.0 + 7 * DAY, 5.0),
              OrderRecord("after", 1001.0 + 7 * DAY, 10.0),
              OrderRecord("cancelled", 2000.0, 10.0, 10.0, cancelled=True))
    assert [o.order_id for o in conversions(orders, 1000.0, 7 * DAY)] == ["in", "edge"]


def test_an_order_at_the_due_time_to_the_millisecond_is_not_a_conversion() -> None:
    """The log's due time is to the millisecond; the order that raised the occasion keeps
    its microseconds."""
    placed = 1_700_000_000.123_456
    logged = read_time(format_time(placed), "fired_at")
    assert logged < placed
    orders = (OrderRecord("raised", placed, 10.0), OrderRecord("next", placed + 1.0, 10.0))
    assert [o.order_id for o in conversions(orders, logged, DAY)] == ["next"]


def test_an_order_refunded_in_full_is_no_conversion_a_partial_refund_is() -> None:
    """As the lifecycle counts purchases: an order whose money all went back was not kept."""
    orders = (OrderRecord("returned", 2000.0, 30.0, returned=30.0),
              OrderRecord("kept", 3000.0, 30.0, returned=10.0))
    assert [o.order_id for o in conversions(orders, 1000.0, DAY)] == ["kept"]
    found = tally([occasion("a", "sent")], {"a": orders}, DAY)[CART]
    assert found.treated == GroupTally(1, 1, 20.0)
    assert tally([occasion("b", "sent")], {"b": orders[:1]}, DAY)[CART].treated == \
        GroupTally(1, 0, 0.0)


def test_a_client_counts_once_per_type_and_an_order_once_for_overlapping_windows() -> None:
    orders = {"a": (OrderRecord("o1", 3000.0, 50.0, returned=10.0),),
              "b": (OrderRecord("o2", 1500.0, 20.0),)}
    found = tally([occasion("a", "sent", at=1000.0, key="1"),
                   occasion("a", "sent", at=2000.0, key="2"),  # o1 in both windows
                   occasion("b", "holdout", at=1000.0), occasion("c", "holdout"),
                   occasion("d", "suppressed", "no_channel")], orders, DAY)
    cart = found[CART]
    assert cart.treated == GroupTally(2, 1, 40.0)  # a (once, o1 net once) and d
    assert cart.holdout == GroupTally(2, 1, 20.0)
    assert cart.mixed == 0


def test_a_client_whose_window_reaches_orders_not_kept_is_left_out_unless_converted() -> None:
    kept = tuple(OrderRecord(f"o{n}", 10 * DAY + n, 1.0) for n in range(MAX_ORDERS))
    assert orders_not_kept(kept[1:], DAY) is None  # not full: every order is there
    assert orders_not_kept(kept, DAY) == (DAY, 10 * DAY)
    assert orders_not_kept(kept, None) == (-math.inf, 10 * DAY)
    not_kept = {c: (DAY, 10 * DAY) for c in "abc"}
    orders = {c: kept for c in "abc"}
    found = tally([occasion("a", "sent", at=2 * DAY),  # its window may hold a dropped order
                   occasion("b", "sent", at=9.5 * DAY),  # kept o0 converts it
                   occasion("c", "holdout", at=-7 * DAY)],  # ends before the first order
                  orders, 7 * DAY, not_kept)[CART]
    assert (found.treated.clients, found.treated.converted, found.unknown) == (1, 1, 1)
    assert (found.holdout.clients, found.holdout.converted) == (1, 0)
    assert merged([{CART: found}, {CART: found}])[CART].unknown == 2


def test_a_client_in_both_groups_is_left_out_and_counted() -> None:
    found = tally([occasion("a", "sent"), occasion("a", "holdout", key="2"),
                   occasion("b", "sent")], {}, DAY)
    assert found[CART].treated.clients == 1 and found[CART].holdout.clients == 0
    assert found[CART].mixed == 1


def test_the_statistics_match_a_worked_example() -> None:
    """200 of 1,000 against 150 of 1,000: z = 2.942, two-sided p = 0.00326; the unpooled
    95% interval of the difference is 0.05 +- 0.0332."""
    found = Uplift(CART, GroupTally(1000, 200), GroupTally(1000, 150))
    assert found.difference == pytest.approx(0.05)
    assert found.relative == pytest.approx(1 / 3)
    assert found.p_value == pytest.approx(0.003258, rel=1e-3)
    low, high = found.interval or (0.0, 0.0)
    assert (low, high) == (pytest.approx(0.01677, abs=1e-5), pytest.approx(0.08323, abs=1e-5))


def test_an_interval_at_a_rate_of_0_or_100_percent_is_not_a_certainty() -> None:
    """Wald's spread is nothing where a rate is 0 or 1: 5 of 5 against 0 of 3 read as a
    difference of exactly 100 pp, the interval (100, 100); and it runs past 100 pp."""
    low, high = Uplift(CART, GroupTally(5, 5), GroupTally(3, 0)).interval or (1.0, 1.0)
    assert low < 0.9 and high == 1.0
    low, high = Uplift(CART, GroupTally(1, 1), GroupTally(4, 2)).interval or (0.0, 0.0)
    assert low < 0.5 < high <= 1.0
    low, high = Uplift(CART, GroupTally(2, 1), GroupTally(1, 0)).interval or (0.0, 0.0)
    assert -1.0 <= low < 0.5 < high <= 1.0


def test_no_comparison_without_both_groups_or_without_variance() -> None:
    assert Uplift(CART, GroupTally(10, 2), GroupTally()).p_value is None
    assert Uplift(CART, GroupTally(10, 2), GroupTally()).difference is None
    assert Uplift(CART, GroupTally(10, 0), GroupTally(5, 0)).p_value is None
    assert Uplift(CART, GroupTally(10, 1), GroupTally(5, 0)).relative is None


_records = st.lists(st.tuples(
    st.sampled_from(["a", "b", "c", "d", "e", "f"]),
    st.sampled_from([CART, "abandoned_browse"]),
    st.sampled_from([("sent", None), ("holdout", None), ("suppressed", "no_channel"),
                     ("suppressed", "loyal")]),
    st.floats(0, 10 * DAY)), max_size=40)
_orders = st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.lists(
    st.tuples(st.floats(0, 20 * DAY), st.floats(0, 100), st.booleans()), max_size=5))


@given(_records, _orders)
def test_the_tally_agrees_with_counting_client_by_client(
        records: list[tuple[str, str, tuple[str, str | None], float]],
        raw_orders: dict[str, list[tuple[float, float, bool]]]) -> None:
    orders = {c: tuple(OrderRecord(f"{c}{n}", at, total, cancelled=cancelled)
                       for n, (at, total, cancelled) in enumerate(rows))
              for c, rows in raw_orders.items()}
    occasions = [Occasion(c, kind, f"{at:.3f}", at, status, reason)
                 for c, kind, (status, reason), at in records]
    found = tally(occasions, orders, 3 * DAY)
    for kind in {o.type for o in occasions}:
        mine = [o for o in occasions if o.type == kind and group_of(o) is not None]
        groups: dict[str, set[str | None]] = {}
        for o in mine:
            groups.setdefault(o.client_id, set()).add(group_of(o))
        if not mine:
            assert kind not in found
            continue
        result = found[kind]
        assert result.mixed == sum(len(g) > 1 for g in groups.values())
        for name, tallied in ((TREATED, result.treated), ("holdout", result.holdout)):
            members = [c for c, g in groups.items() if g == {name}]
            won = [c for c in members if any(
                conversions(orders.get(c, ()), o.fired_at, 3 * DAY)
                for o in mine if o.client_id == c)]
            assert (tallied.clients, tallied.converted) == (len(members), len(won))
        if result.p_value is not None:
            assert 0.0 <= result.p_value <= 1.0
            swapped = Uplift(kind, result.holdout, result.treated)
            assert swapped.p_value == pytest.approx(result.p_value)
            assert swapped.difference == pytest.approx(-(result.difference or 0.0))
        interval = result.interval
        if interval is not None and result.difference is not None:
            assert interval[0] <= result.difference <= interval[1]
            assert not math.isnan(interval[0])


def test_partitions_add_up() -> None:
    one = tally([occasion("a", "sent"), occasion("b", "holdout")], {}, DAY)
    two = tally([occasion("c", "sent"), occasion("d", "sent", kind="welcome")], {}, DAY)
    both = merged([one, two])
    assert both[CART].treated.clients == 2 and both[CART].holdout.clients == 1
    assert both["welcome"].treated.clients == 1
    assert list(both) == sorted(both)
