"""Windowed feature arithmetic: orders and money over 30/90/365 days (net of cancellations
and refunds), visits in 7/30 days, product views in 24 h / 7 days, category interest, and
when each of them next changes with time alone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from features.events import EventType, Order, Product
from features.rules import DAY, SegmentRules
from features.state import ClientState
from features.values import FEATURES, Context
from tests.core_events import HOUR, T0, cancel, days, ev, order, state_of, visit

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

RULES = SegmentRules()



def value(state: ClientState, name: str, at: float) -> object:
    return FEATURES[name].get(Context(state, T0 + at, RULES))


def change(state: ClientState, name: str, at: float) -> float | None:
    step = FEATURES[name].next_change
    assert step is not None
    return step(Context(state, T0 + at, RULES))


def view(t: float, pid: str = "p1", category: str | None = "shoes") -> object:
    return ev(EventType.PRODUCT_VIEW, t, products=(Product(pid, category, 10.0, 1),))


def refund(t: float, order_id: str, amount: float) -> object:
    return ev(EventType.ORDER_REFUNDED, t, order=Order(order_id, amount))


def test_order_windows_count_orders_strictly_inside_and_money_net_of_returns() -> None:
    state = state_of(order(0, "o1", 100.0), order(days(50), "o2", 40.0),
                     order(days(80), "o3", 60.0), refund(days(81), "o3", 25.0),
                     cancel(days(82), "o2"))
    at = days(100)
    assert value(state, "orders_30d", at) == 1  # o3, 20 days ago
    assert value(state, "monetary_30d", at) == 35.0  # 60 - 25 refunded
    assert value(state, "orders_90d", at) == 1  # o3 (o2 cancelled, o1 100 days ago)
    assert value(state, "monetary_90d", at) == 35.0  # 60 - 25 refunded
    assert value(state, "orders_365d", at) == 2
    assert value(state, "monetary_365d", at) == 135.0
    assert value(state, "monetary_total", at) == 135.0
    assert value(state, "orders_count", at) == 2
    assert value(state, "avg_order_value", at) == 67.5
    # o3 leaves the 90-day window exactly 90 days after it was placed
    assert change(state, "orders_90d", at) == T0 + days(170)
    assert value(state, "orders_90d", days(170) - 1) == 1
    assert value(state, "orders_90d", days(170)) == 0


def test_visit_windows_are_utc_days_and_expire_exactly() -> None:
    state = state_of(visit(0), visit(HOUR), visit(days(3)), visit(days(20)))
    assert value(state, "visits_7d", days(20)) == 1
    assert value(state, "visits_30d", days(20)) == 4
    assert value(state, "visits_30d", days(30)) == 2  # day 0 left: the 30 days are 1..30
    assert change(state, "visits_30d", days(20)) == T0 + days(30)
    assert value(state, "visits", days(400)) == 4
    assert value(state, "visits_30d", days(400)) == 0
    assert change(state, "visits_30d", days(400)) is None


def test_view_windows_by_hour_and_day() -> None:
    state = state_of(view(0), view(10 * 60), view(2 * HOUR), view(days(2)))
    at = days(2) + HOUR
    assert value(state, "views_24h", at) == 1
    assert value(state, "views_7d", at) == 4
    early = state_of(view(0), view(10 * 60), view(2 * HOUR))
    assert value(early, "views_24h", 23 * HOUR) == 3
    assert value(early, "views_24h", 24 * HOUR) == 1  # the first hour has left
    assert change(early, "views_24h", 23 * HOUR) == T0 + 24 * HOUR


def test_old_buckets_are_pruned_whatever_the_arrival_order() -> None:
    events = [view(0), view(days(10)), visit(0), visit(days(40))]
    forward = state_of(*events)
    backward = state_of(*reversed(events))
    for name in ("views_7d", "views_24h", "visits_30d", "visits_7d"):
        assert value(forward, name, days(40)) == value(backward, name, days(40))
    assert forward.view_days == ((int((T0 + days(10)) // DAY), 1),)
    assert len(forward.visit_days) == 1


def test_category_interest_tracks_each_kind_and_keeps_the_most_recent() -> None:
    state = state_of(view(0, category="shoes"), order(days(1), "o1", 20.0, "shoes"),
                     *(view(days(2) + i, f"x{i}", f"cat{i}") for i in range(9)))
    names = [i.category for i in state.interests]
    assert len(names) == 8 and "shoes" not in names  # least recently active dropped
    state = state_of(view(0, category="shoes"), order(days(1), "o1", 20.0, "shoes"))
    shoes = state.interests[0]
    assert (shoes.viewed_at, shoes.bought_at, shoes.count) == (T0, T0 + days(1), 2)
    assert value(state, "top_category", days(2)) == "shoes"


def test_linear_features_have_anchors() -> None:
    state = state_of(order(0, "o1"))
    feature = FEATURES["recency_days"]
    assert feature.anchor is not None
    assert feature.anchor(Context(state, T0, RULES)) == T0
    assert value(state, "recency_days", days(12.5)) == 12.5


def test_a_birth_date_still_to_come_has_no_age_until_then() -> None:
    state = state_of(ev(EventType.IDENTIFY, 0, traits={"birthday": "2024-03-01"}))
    assert value(state, "age", 0) is None  # T0 is 2023-11-15: not -1
    born = change(state, "age", 0)
    assert born is not None and value(state, "age", born - T0) == 0
    assert value(state, "age", born - T0 - 1) is None


def test_age_turns_at_midnight_in_the_clients_zone_else_the_configured_one() -> None:
    """As the birthday greeting does: in Tokyo the age turns nine hours before UTC's
    midnight; a client naming no zone takes `policy.timezone`."""
    tokyo_midnight = datetime(2024, 6, 1, tzinfo=UTC).timestamp() - 9 * 3600
    for traits, rules in (({"timezone": "Asia/Tokyo"}, RULES),
                          ({}, SegmentRules(timezone="Asia/Tokyo"))):
        state = state_of(ev(EventType.IDENTIFY, 0, traits={"birthday": "1990-06-01",
                                                           **traits}))

        def at(moment: float, state: ClientState = state, rules: SegmentRules = rules
               ) -> Context:
            return Context(state, moment, rules)

        step = FEATURES["age"].next_change
        assert step is not None and step(at(tokyo_midnight - DAY)) == tokyo_midnight
        assert FEATURES["age"].get(at(tokyo_midnight - 1)) == 33
        assert FEATURES["age"].get(at(tokyo_midnight)) == 34
    utc = state_of(ev(EventType.IDENTIFY, 0, traits={"birthday": "1990-06-01"}))
    assert FEATURES["age"].get(Context(utc, tokyo_midnight, RULES)) == 33


def test_age_changes_on_the_birthday() -> None:
    state = state_of(ev(EventType.IDENTIFY, 0, traits={"birthday": "2000-11-20"}))
    assert value(state, "age", 0) == 22  # T0 is 2023-11-15
    birthday = change(state, "age", 0)
    assert birthday is not None
    assert value(state, "age", birthday - T0) == 23
