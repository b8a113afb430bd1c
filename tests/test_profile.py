"""Profile features that the trigger rules share: lifecycle stage, prediction, loyalty."""

from __future__ import annotations

from features.events import format_time
from features.profile import lifecycle_stage, profile_document
from features.state import ClientState, apply_event
from tests.core_events import T0, cancel, days, order, registered, run, visit


def state_of(*events: object) -> ClientState:
    state = None
    for event in events:
        state = apply_event(state, event)  # type: ignore[arg-type]
    assert state is not None
    return state


def test_lifecycle_stages() -> None:
    assert lifecycle_stage(state_of(visit(0)), T0 + days(400)) == "visitor"
    assert lifecycle_stage(state_of(registered(0)), T0 + days(10)) == "prospect"
    assert lifecycle_stage(state_of(registered(0)), T0 + days(180)) == "churned"
    one = state_of(order(0, "o1"))
    assert lifecycle_stage(one, T0 + days(179)) == "new"
    assert lifecycle_stage(one, T0 + days(180)) == "churned"
    four = state_of(*(order(i, f"o{i}") for i in range(4)))
    assert lifecycle_stage(four, T0 + days(1)) == "repeat"
    five = apply_event(four, order(10, "o5"))
    assert lifecycle_stage(five, T0 + days(1)) == "loyal"
    assert lifecycle_stage(five, T0 + days(1), loyal_after_orders=6) == "repeat"
    assert lifecycle_stage(five, T0 + days(100), churn_after_days=90) == "churned"


def test_churn_counts_from_the_last_order_not_cancelled() -> None:
    state = state_of(order(0, "o1"), order(days(100), "o2"), cancel(days(101), "o2"))
    assert lifecycle_stage(state, T0 + days(181)) == "churned"


def test_profile_predicts_what_the_replenishment_rule_uses_and_shows_the_tier() -> None:
    state, _ = run([order(0, "o1"), order(days(10), "o2"), order(days(25), "o3")])
    features = profile_document("c1", state, T0 + days(26))["features"]
    assert features["mean_days_between_orders"] == 12.5
    assert features["predicted_next_order_at"] == format_time(T0 + days(37.5))
    assert features["loyalty_tier"] == "silver"
    assert features["lifecycle_stage"] == "repeat"
