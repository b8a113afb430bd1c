"""The profile document: features the trigger rules share, groups' freshness, interest."""

from __future__ import annotations

import pytest

from features.events import EventType, Product, format_time
from features.profile import profile_document
from tests.core_events import T0, days, ev, order, run, visit

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)


def test_profile_predicts_what_the_replenishment_rule_uses_and_shows_the_tier() -> None:
    state, _ = run([order(0, "o1"), order(days(10), "o2"), order(days(25), "o3")])
    features = profile_document("c1", state, T0 + days(26))["features"]
    assert features["mean_days_between_orders"] == 12.5
    assert features["predicted_next_order_at"] == format_time(T0 + days(37.5))
    assert features["loyalty_tier"] == "silver"
    assert features["lifecycle_stage"] == "repeat"


def test_profile_reports_each_groups_freshness_and_category_interest() -> None:
    view = ev(EventType.PRODUCT_VIEW, days(1), products=(Product("p1", "shoes", 10.0, 1),))
    state, _ = run([visit(0), view, order(days(2), "o1", 30.0, "shoes")])
    document = profile_document("c1", state, T0 + days(3))
    freshness = document["freshness"]
    assert freshness["visits"] == format_time(T0)
    assert freshness["views"] == format_time(T0 + days(1))
    assert freshness["orders"] == format_time(T0 + days(2))
    assert freshness["cart"] is None
    assert document["category_interest"] == [{
        "category": "shoes", "interactions": 2,
        "last_interaction_at": format_time(T0 + days(2)),
        "viewed_at": format_time(T0 + days(1)), "carted_at": None,
        "bought_at": format_time(T0 + days(2))}]
    assert document["segments"] == [{"segment": "lifecycle:new",
                                     "entered_at": format_time(T0 + days(2))}]
    assert document["rfm"] is None  # no model yet
    assert document["features"]["visits_7d"] == 1


def test_the_profile_groups_freshness_is_its_latest_change() -> None:
    """Traits set on day 0, the registration on day 100: the group changed on day 100 (the
    traits' time hid the registration's)."""
    from tests.core_events import identify, registered

    state, _ = run([identify(0, city="Leeds"), registered(days(100))])
    document = profile_document("c1", state, T0 + days(101))
    assert document["freshness"]["profile"] == format_time(T0 + days(100))


def test_top_category_is_the_first_category_of_interest() -> None:
    """On a tie of interactions and time the name decides, the same way in both."""
    views = [ev(EventType.PRODUCT_VIEW, 0, products=(Product("b", "books", 5.0, 1),
                                                     Product("t", "toys", 5.0, 1)))]
    state, _ = run(views)
    document = profile_document("c1", state, T0 + 60)
    assert document["features"]["top_category"] == document["category_interest"][0][
        "category"] == "books"
