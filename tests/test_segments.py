"""Lifecycle stages, segment memberships kept in the state, their timers, and the
`segment_entered` trigger."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from features import segments
from features.lifecycle import lifecycle_next_change, lifecycle_stage
from features.rfm import FixedThresholds, RfmModel, quantile_cuts
from features.rules import (
    SEGMENT_ENTERED,
    TRIGGER_TYPES,
    Channel,
    LifecycleRules,
    Policy,
    QuietHours,
    SegmentEnteredRule,
    SegmentRules,
    TriggerRules,
)
from features.segment_rules import RuleError
from features.segments import compile_catalog
from features.state import apply_event
from features.triggers import fire_due, next_due, regroup
from tests.core_events import (
    CLIENT,
    RULES,
    T0,
    cancel,
    days,
    identify,
    of,
    order,
    registered,
    run,
    state_of,
    visit,
)
from tests.support import make_settings

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

LIFE = LifecycleRules()



def test_every_lifecycle_transition() -> None:
    assert lifecycle_stage(state_of(visit(0)), T0 + days(400), LIFE) == "visitor"
    assert lifecycle_stage(state_of(registered(0)), T0 + days(10), LIFE) == "prospect"
    assert lifecycle_stage(state_of(registered(0)), T0 + days(180), LIFE) == "churned"
    one = state_of(order(0, "o1"))
    assert lifecycle_stage(one, T0 + days(89), LIFE) == "new"
    assert lifecycle_stage(one, T0 + days(90), LIFE) == "at_risk"
    assert lifecycle_stage(one, T0 + days(180), LIFE) == "churned"
    two = apply_event(one, order(days(10), "o2"))
    assert lifecycle_stage(two, T0 + days(11), LIFE) == "repeat"
    four = state_of(*(order(days(i * 30), f"o{i}") for i in range(4)))
    assert lifecycle_stage(four, T0 + days(91), LIFE) == "loyal"
    # loyal while 4 orders are within 365 days: until the oldest of them is 365 days old
    assert lifecycle_next_change(four, T0 + days(91), LIFE) == T0 + days(90 + 90)
    assert lifecycle_stage(four, T0 + days(180), LIFE) == "at_risk"  # 90 days idle wins
    busy = state_of(*(order(days(i * 30), f"o{i}") for i in range(14)))
    assert lifecycle_stage(busy, T0 + days(30 * 13 + 1), LIFE) == "loyal"
    assert lifecycle_stage(busy, T0 + days(30 * 13 + 1),
                           replace(LIFE, loyal_orders=0)) == "repeat"
    cancelled = apply_event(two, cancel(days(12), "o2"))
    assert lifecycle_stage(cancelled, T0 + days(13), LIFE) == "new"
    # the practice's funnel: a buyer of 1-2 orders is new, repeat from the third
    practice = replace(LIFE, repeat_orders=3)
    assert lifecycle_stage(two, T0 + days(11), practice) == "new"
    three = apply_event(two, order(days(11), "o3"))
    assert lifecycle_stage(three, T0 + days(12), practice) == "repeat"


def test_next_change_is_exact_for_at_risk_and_churned() -> None:
    one = state_of(order(0, "o1"))
    assert lifecycle_next_change(one, T0, LIFE) == T0 + days(90)
    assert lifecycle_next_change(one, T0 + days(90), LIFE) == T0 + days(180)
    assert lifecycle_next_change(one, T0 + days(180), LIFE) is None


def test_memberships_move_with_time_on_their_own_timer() -> None:
    state, _ = run([registered(0), order(days(1), "o1")])
    assert [name for name, _ in state.segments] == ["lifecycle:new"]
    assert next_due(replace(state, pending=()), replace(RULES, **{
        k: replace(RULES.rule(k), enabled=False) for k in (
            "feedback_request", "second_order_nudge", "churn_winback", "onboarding",
            "replenishment_reminder", "service_reminder")})) == T0 + days(91)
    state, _ = run([], state=state, until=days(91))
    assert state.segments == (("lifecycle:at_risk", T0 + days(91)),)
    state, _ = run([], state=state, until=days(181))
    assert state.segments == (("lifecycle:churned", T0 + days(181)),)


def test_entered_time_is_kept_while_the_client_stays() -> None:
    state, _ = run([order(0, "o1"), order(days(1), "o2"), visit(days(2))])
    assert state.segments == (("lifecycle:repeat", T0 + days(1)),)


def test_segment_entered_fires_once_per_entry() -> None:
    rules = replace(RULES, segment_entered=SegmentEnteredRule(
        segments=frozenset({"lifecycle:at_risk"})))
    state, fired = run([order(0, "o1")], rules, until=days(100))
    entered = of(fired, SEGMENT_ENTERED)
    assert len(entered) == 1
    assert entered[0].payload == {"segment": "lifecycle:at_risk"}
    assert entered[0].fired_at == T0 + days(90)
    state, fired = run([], rules, state=state, until=days(120))
    assert of(fired, SEGMENT_ENTERED) == []
    # back to buying, then at risk again: a new occasion
    state, fired = run([order(days(130), "o2")], rules, state=state, until=days(230))
    assert len(of(fired, SEGMENT_ENTERED)) == 1


def test_rfm_segment_is_a_membership_once_a_model_exists() -> None:
    model = RfmModel("quantile", T0, 5, quantile_cuts([T0, T0, T0 + 1, T0 + 2, T0 + 3]),
                     quantile_cuts([1, 1, 1, 2, 3]), quantile_cuts([5, 10, 20, 30, 40]))
    rules = replace(RULES, segments=replace(RULES.segments, rfm_model=model))
    state, _ = run([order(3, "o1", 40.0), order(3.5, "o2", 10.0), order(3.7, "o3", 5.0)],
                   rules)
    names = [name for name, _ in state.segments]
    assert names == ["lifecycle:repeat", "rfm-cell:r5f5", "rfm:champions"]
    assert [name for name, _ in segments.public_segments(state)] == [
        "lifecycle:repeat", "rfm:champions"]
    filing = {"rfm:champions", "rfm-cell:r5f5"}
    assert segments.rfm_filing(state, T0 + 10, rules.segments) == filing
    assert segments.current_filing(state) == filing


def test_rule_segments_enter_and_leave_with_time() -> None:
    catalog = compile_catalog({"shoe_fans": {"rule": 'bought("shoes", 30d)'},
                               "spenders": {"rule": "monetary_total >= 50"}})
    rules = replace(RULES, segments=SegmentRules(catalog=catalog))
    state, _ = run([order(0, "o1", 60.0, "shoes")], rules)
    assert {"shoe_fans", "spenders"} <= {name for name, _ in state.segments}
    state, _ = run([], rules, state=state, until=days(31))
    names = {name for name, _ in state.segments}
    assert "shoe_fans" not in names and "spenders" in names
    assert dict(state.segments)["spenders"] == T0


def test_all_segment_names_lists_every_kind() -> None:
    catalog = compile_catalog({"kids": {"stages": {"from": "traits.child_birth_date",
                                                   "bands": {"newborn": {"until": "28d"},
                                                             "older": {"from": "28d"}}}}})
    names = segments.all_segment_names(SegmentRules(catalog=catalog))
    assert names[:6] == ["lifecycle:prospect", "lifecycle:new", "lifecycle:repeat",
                         "lifecycle:loyal", "lifecycle:at_risk", "lifecycle:churned"]
    assert "rfm:cant_lose_them" in names and "kids:newborn" in names


def _champion_then_lost() -> tuple[TriggerRules, TriggerRules]:
    """Rules with a model under which the client of `_three_orders` is a champion, and the
    same rules with a newer model under which it is lost."""
    catalog = compile_catalog({
        "vip": {"rule": 'rfm_segment == "champions"'},
        "big_m": {"rule": "rfm_m >= 4"},
        "spenders": {"rule": "monetary_total >= 50"},
    })
    champion = RfmModel("quantile", T0, 5, quantile_cuts([T0, T0, T0 + 1, T0 + 2, T0 + 3]),
                        quantile_cuts([1, 1, 1, 2, 3]), quantile_cuts([5, 10, 20, 30, 40]))
    lost = RfmModel("quantile", T0 + 100, 5, quantile_cuts([T0 + 10, T0 + 11, T0 + 12,
                                                            T0 + 13, T0 + 14]),
                    quantile_cuts([3, 4, 5, 6, 7]), quantile_cuts([100, 200, 300, 400, 500]))
    rules = replace(RULES, segments=SegmentRules(rfm_model=champion, catalog=catalog))
    return rules, replace(rules, segments=replace(rules.segments, rfm_model=lost))


def test_a_new_rfm_model_refiles_the_rule_segments_that_name_rfm_features() -> None:
    rules, newer = _champion_then_lost()
    state, _ = run([order(3, "o1", 40.0), order(3.5, "o2", 10.0), order(3.7, "o3", 5.0)],
                   rules)
    assert {"rfm:champions", "vip", "big_m", "spenders"} <= {n for n, _ in state.segments}
    assert segments.rfm_filing(state, T0 + 100, newer.segments) != segments.current_filing(
        state)
    after, _ = regroup(CLIENT, state, T0 + 100, newer)
    names = {name for name, _ in after.segments}
    # what the profile and a fresh evaluation say, the memberships say too
    assert names == segments.memberships(after, T0 + 100, newer.segments)
    assert "rfm:lost" in names and "vip" not in names and "big_m" not in names
    # a rule that does not name an RFM feature keeps its entry time
    assert dict(after.segments)["spenders"] == dict(state.segments)["spenders"]
    assert segments.rfm_filing(after, T0 + 101, newer.segments) == segments.current_filing(
        after)
    # and back: the rule segments return with the model's adoption time
    back, _ = regroup(CLIENT, after, T0 + 200, rules)
    assert dict(back.segments)["vip"] == T0 + 200
    assert {n for n, _ in back.segments} == {n for n, _ in state.segments}


def _poor_then_rich() -> tuple[RfmModel, RfmModel]:
    """A model under which a single order on day 0 is lost, and one under which it is a
    champion."""
    poor = RfmModel("quantile", T0, 5, quantile_cuts([T0 + days(5) + i for i in range(5)]),
                    quantile_cuts([3, 4, 5, 6, 7]), quantile_cuts([100, 200, 300, 400, 500]))
    rich = RfmModel("quantile", T0, 5, quantile_cuts([T0 - 5, T0 - 4, T0 - 3, T0 - 2, T0 - 1]),
                    quantile_cuts([1, 1, 1, 1, 1]), quantile_cuts([1, 2, 3, 4, 5]))
    return poor, rich


def test_segments_left_at_a_model_adoption_are_left_then_not_before() -> None:
    """A new model moves the client from rfm:lost to rfm:champions on day 40, while the
    client was last evaluated on day 0: the exit is stamped with the adoption, as the entry
    is (the segment-changes stream had exits before their entries)."""
    poor, rich = _poor_then_rich()
    rules = replace(RULES, segments=SegmentRules(rfm_model=poor))
    state, _ = run([order(0, "o1", 20.0)], rules)
    assert "rfm:lost" in dict(state.segments) and segments.changed_at(state) == T0
    after, _ = regroup(CLIENT, state, T0 + days(40),
                       replace(rules, segments=replace(rules.segments, rfm_model=rich)))
    assert "rfm:lost" in segments.left(state, after)
    assert dict(after.segments)["rfm:champions"] == segments.changed_at(after) == T0 + days(40)


def test_a_segment_entered_by_a_new_model_is_decided_when_the_model_is_adopted() -> None:
    """Under quiet hours (21:00-09:00), an RFM segment entered at a model adopted at 23:00
    waits for 09:00, whenever the client was last evaluated."""
    poor, rich = _poor_then_rich()
    rules = TriggerRules(
        policy=Policy(quiet_hours=QuietHours(21 * 60, 9 * 60), frequency_cap_per_day=0,
                      channels=(Channel("crm"),)),  # a channel every client has
        segment_entered=SegmentEnteredRule(segments=frozenset({"rfm:lost"})),
        segments=SegmentRules(rfm_model=rich))
    state, _ = run([order(12 * 3600.0, "o1", 20.0)], only_segments(rules))
    adopted = T0 + days(3) + 23 * 3600.0
    _, [entered] = regroup(CLIENT, state, adopted, only_segments(
        replace(rules, segments=replace(rules.segments, rfm_model=poor))))
    assert (entered.type, entered.status, entered.reason) == (
        SEGMENT_ENTERED, "deferred", "quiet_hours")
    assert entered.fired_at == adopted and entered.until == adopted + 10 * 3600.0  # 09:00


def only_segments(rules: TriggerRules) -> TriggerRules:
    """`rules` with every rule but `segment_entered` switched off."""
    return replace(rules, **{kind: replace(rules.rule(kind), enabled=False)
                             for kind in TRIGGER_TYPES if kind != SEGMENT_ENTERED})


def test_a_new_rfm_model_refiles_a_rule_on_m_alone() -> None:
    """M moves while the RFM segment and map cell stay: the rule on rfm_m still follows."""
    catalog = compile_catalog({"top_m": {"rule": "rfm_m >= 5"}})
    cuts_r, cuts_f = quantile_cuts([T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4]), quantile_cuts(
        [1, 2, 3, 4, 5])
    rich = RfmModel("quantile", T0, 5, cuts_r, cuts_f, quantile_cuts([1, 2, 3, 4, 5]))
    poorer = RfmModel("quantile", T0 + 50, 5, cuts_r, cuts_f,
                      quantile_cuts([5, 10, 15, 20, 25]))
    rules = replace(RULES, segments=SegmentRules(rfm_model=rich, catalog=catalog))
    state, _ = run([order(10, "o1", 20.0)], rules)
    assert {"top_m", "rfm:potential_loyalist"} <= {n for n, _ in state.segments}
    newer = replace(rules, segments=replace(rules.segments, rfm_model=poorer))
    # M drops from 5 to 4: FM = round((1 + 4) / 2) is still 3, the cell is still r5f1
    assert segments.rfm_filing(state, T0 + 50, newer.segments) != segments.current_filing(state)
    after, _ = regroup(CLIENT, state, T0 + 50, newer)
    assert {n for n, _ in after.segments} == {"lifecycle:new", "rfm-cell:r5f1",
                                              "rfm:potential_loyalist"}


def test_rules_name_nested_and_hyphenated_traits() -> None:
    """README: a rule may name any `traits.<name>`: the documented `consents` object's
    keys, an address's city, a key with '-' (all kept by ingest) were a syntax error."""
    catalog = compile_catalog({
        "emailable": {"rule": "traits.consents.email == true"},
        "parisians": {"rule": 'traits.address.city == "Paris"'},
        "anns": {"rule": 'traits.first-name == "Ann"'},
        "young": {"stages": {"from": "traits.kid.birth-date", "bands": {"baby": {"until": "2y"}}}},
    })
    rules = replace(RULES, segments=SegmentRules(catalog=catalog))
    born = datetime.fromtimestamp(T0 - days(200), UTC).date().isoformat()
    state, _ = run([identify(0, consents={"email": True, "sms": False},
                             address={"city": "Paris"}, **{"first-name": "Ann"},
                             kid={"birth-date": born})], rules)
    assert {"emailable", "parisians", "anns", "young:baby"} <= set(dict(state.segments))
    other, _ = run([identify(0, consents={"email": False}, address="Paris")], rules)
    assert not {"emailable", "parisians", "anns"} & set(dict(other.segments))


@pytest.mark.parametrize("name", ["lifecycle", "rfm", "rfm-cell"])
def test_a_rule_segment_cannot_take_a_built_in_segments_name(name: str) -> None:
    """Stage bands are named `<segment>:<band>`: a segment called "lifecycle" with a band
    "new" would be lifecycle:new, listed twice and holding prospects beside real buyers."""
    raw = {name: {"stages": {"from": "traits.child_birth_date",
                             "bands": {"new": {"until": "1y"}}}}}
    with pytest.raises(RuleError, match=rf"segments\.{name}: .*reserved"):
        compile_catalog(raw)
    with pytest.raises(ValidationError, match="reserved"):
        make_settings("redis://127.0.0.1:1", "t", segments=raw)
    compile_catalog({f"{name}_kids": raw[name]})  # a name that only starts alike is fine
    with pytest.raises(RuleError, match="reserved"):  # a plain rule too, as README says
        compile_catalog({name: {"rule": "orders_count > 1"}})


def test_every_reserved_name_and_other_problem_is_reported_at_once() -> None:
    raw = {"lifecycle": {"rule": "orders_count > 1"}, "rfm": {"rule": "orders_count > 2"},
           "broken": {"rule": "orders_count >"}, "fine": {"rule": "orders_count > 3"}}
    with pytest.raises(RuleError) as caught:
        compile_catalog(raw)
    lines = str(caught.value).splitlines()
    assert [line.strip().split(":")[0] for line in lines] == [
        "segments.lifecycle", "segments.rfm", "segments.broken.rule"]


def test_a_recomputed_fixed_model_leaves_time_driven_rfm_moves_to_their_timers() -> None:
    """In mode fixed, R drops with time on the client's own timer. The model is recomputed
    every period (its population count changes); adopting it ahead of the client's timers
    (a backfilled client waits for the stream head) must not move R early, stamped with the
    adoption time, only for the timers to move it back and forth after."""
    model = RfmModel("fixed", T0, 1, fixed=FixedThresholds())
    rules = replace(RULES, segments=SegmentRules(rfm_model=model, rfm_mode="fixed"))
    state, _ = run([order(0, "o1", 20.0)], rules)
    assert "rfm-cell:r5f1" in dict(state.segments)
    recomputed = replace(rules, segments=replace(rules.segments, rfm_model=replace(
        model, computed_at=T0 + days(40), population=7)))
    assert segments.rfm_filing(state, T0 + days(40), recomputed.segments) == (
        segments.current_filing(state))
    after, fired = regroup(CLIENT, state, T0 + days(40), recomputed)
    assert after is state and fired == []
    # the timers then move R at its exact time, as without the new model
    timed, _ = fire_due(CLIENT, state, T0 + days(40), recomputed)
    assert dict(timed.segments)["rfm-cell:r4f1"] == math.nextafter(T0 + days(30), math.inf)


def test_r_drops_on_time_when_the_latest_order_was_cancelled() -> None:
    """A cancelled order is not a purchase: R counts from the order before it, and so does
    the timer that moves R (both from `lifecycle.recency_anchor`)."""
    model = RfmModel("fixed", T0, 1, fixed=FixedThresholds())
    rules = replace(RULES, segments=SegmentRules(rfm_model=model, rfm_mode="fixed"))
    state, _ = run([order(0, "o1", 20.0), order(days(20), "o2", 30.0),
                    cancel(days(20) + 60, "o2")], rules)
    assert segments.next_change(state, T0 + days(21), rules.segments) == math.nextafter(
        T0 + days(30), math.inf)
    timed, _ = fire_due(CLIENT, state, T0 + days(31), rules)
    assert "rfm-cell:r4f1" in dict(timed.segments)
