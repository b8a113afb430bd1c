"""Each rule of the trigger catalogue alone (under an open policy): when it is due, what it
says, what cancels or re-arms it, and that its occasion is never raised twice, with late and
duplicate events."""

from __future__ import annotations

from dataclasses import replace

import pytest

from features.catalogue import NPS_QUESTION, occasion_time
from features.events import Event, EventType, Order, format_time
from features.lifecycle import is_churned, is_loyal, purchase_count
from features.rules import (
    BIRTHDAY,
    CHURN_WINBACK,
    FEEDBACK_REQUEST,
    FIRST_ORDER_PROMO,
    LOYALTY_STATUS,
    NPS_DETRACTOR_TASK,
    NPS_PASSIVE_OFFER,
    NPS_PROMOTER_REFERRAL,
    ONBOARDING,
    ORDER_CANCELLATION,
    ORDER_CONFIRMATION,
    REPLENISHMENT_REMINDER,
    SECOND_ORDER_NUDGE,
    SERVICE_REMINDER,
    WELCOME,
    LoyaltyTier,
    NpsBands,
    QuietHours,
    TriggerRules,
)
from features.triggers import due_timers, fire_due, next_due, process_event, trigger_id
from tests.core_events import (
    CLIENT,
    HOUR,
    MINUTE,
    RULES,
    T0,
    cancel,
    days,
    ev,
    identify,
    kinds,
    next_trigger_due,
    nps,
    of,
    only,
    order,
    registered,
    run,
    visit,
)

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)


def timer_kinds(state: object, rules: object = RULES) -> set[str]:
    return {kind for _, kind in due_timers(state, rules)}  # type: ignore[arg-type]


# --- welcome --------------------------------------------------------------------------------------

def test_welcome_after_a_configured_delay() -> None:
    rules = replace(RULES, welcome=replace(RULES.welcome, delay=10 * MINUTE))
    state, triggers = run([registered(0, email="a@x")], rules)
    assert triggers == []
    assert next_due(state, rules) == T0 + 10 * MINUTE
    state, fired = fire_due(CLIENT, state, T0 + HOUR, rules)
    assert kinds(fired) == [WELCOME]
    assert fired[0].fired_at == T0 + 10 * MINUTE
    assert fired[0].trigger_id == trigger_id(CLIENT, WELCOME, "")
    _, again = run([registered(2 * HOUR)], rules, state=state, until=days(1))
    assert of(again, WELCOME) == []


# --- order cancellation ---------------------------------------------------------------------------

def test_order_cancellation_is_transactional_and_once() -> None:
    _, triggers = run([order(0, "o1", 30.0), cancel(HOUR, "o1"), cancel(2 * HOUR, "o1")])
    [cancellation] = of(triggers, ORDER_CANCELLATION)
    assert cancellation.key == "o1" and cancellation.fired_at == T0 + HOUR
    assert cancellation.payload["returned"] == 30.0
    assert cancellation.status == "sent"


def test_cancellation_of_an_unknown_order_raises_nothing() -> None:
    _, triggers = run([visit(0), cancel(HOUR, "never-seen")])
    assert triggers == []


def test_cancellation_can_be_switched_off() -> None:
    rules = replace(RULES, order_cancellation=replace(RULES.order_cancellation, enabled=False))
    _, triggers = run([order(0, "o1"), cancel(HOUR, "o1")], rules)
    assert kinds(triggers) == [ORDER_CONFIRMATION]


# --- order refund ---------------------------------------------------------------------------------

REFUND = "order_refund"


def refund(t: float, order_id: str, amount: float = -1.0) -> Event:
    """A refund of `amount` (-1: all that is left) of an order."""
    return ev(EventType.ORDER_REFUNDED, t, order=Order(order_id, amount))


def test_a_full_refund_is_confirmed_once_like_a_cancellation() -> None:
    """Transactional, keyed by the order: the refund that gives the last of its money back
    raises it (a partial one does not); a refund of a refunded order raises nothing."""
    _, triggers = run([order(0, "o1", 30.0), refund(HOUR, "o1", 10.0), refund(2 * HOUR, "o1"),
                       refund(3 * HOUR, "o1")])
    [confirmation] = of(triggers, REFUND)
    assert confirmation.key == "o1" and confirmation.fired_at == T0 + 2 * HOUR
    assert confirmation.trigger_id == trigger_id(CLIENT, REFUND, "o1")
    assert confirmation.payload == {"order_id": "o1", "total": 30.0, "returned": 30.0,
                                    "placed_at": format_time(T0)}
    assert (confirmation.status, confirmation.channel) == ("sent", "crm")


def test_a_refund_before_its_order_is_confirmed_when_the_order_arrives() -> None:
    in_order = run([order(0, "o1", 30.0), refund(HOUR, "o1")])[1]
    early = run([refund(HOUR, "o1"), order(0, "o1", 30.0)])[1]
    assert [(t.type, t.key) for t in early] == [(t.type, t.key) for t in in_order] == [
        (ORDER_CONFIRMATION, "o1"), (REFUND, "o1")]


def test_refunds_of_unknown_or_cancelled_orders_raise_nothing_and_the_rule_switches_off() -> None:
    assert of(run([visit(0), refund(HOUR, "never-seen")])[1], REFUND) == []
    assert of(run([order(0, "o1"), cancel(HOUR, "o1"), refund(2 * HOUR, "o1")])[1],
              REFUND) == []
    rules = replace(RULES, order_refund=replace(RULES.order_refund, enabled=False))
    assert kinds(run([order(0, "o1"), refund(HOUR, "o1")], rules)[1]) == [ORDER_CONFIRMATION]


def test_a_refund_confirmation_is_transactional() -> None:
    """Like a cancellation: never held out, capped or deferred by quiet hours."""
    policy = replace(RULES.policy, quiet_hours=QuietHours(), frequency_cap_per_day=1,
                     holdout_percent=100.0)
    _, triggers = run([order(22 * HOUR, "o1"), refund(23 * HOUR, "o1")],
                      replace(RULES, policy=policy))
    assert [(t.type, t.status) for t in of(triggers, REFUND)] == [(REFUND, "sent")]


def test_an_order_refunded_in_full_is_followed_up_like_a_cancelled_one() -> None:
    """No onboarding, feedback request or second-order nudge about it: it is no purchase."""
    rules = only(RULES, ONBOARDING, FEEDBACK_REQUEST, SECOND_ORDER_NUDGE)
    for undo in (refund, cancel):
        _, triggers = run([order(0, "o1", 20.0), undo(HOUR, "o1")], rules, until=days(20))
        assert triggers == [], undo
    _, partly = run([order(0, "o1", 20.0), refund(HOUR, "o1", 5.0)], rules, until=days(20))
    assert sorted(kinds(partly)) == sorted(
        [ONBOARDING] * 3 + [FEEDBACK_REQUEST, SECOND_ORDER_NUDGE])


def test_a_later_purchase_after_one_refunded_in_full_is_the_first() -> None:
    rules = only(RULES, ONBOARDING, SECOND_ORDER_NUDGE)
    _, triggers = run([order(0, "o1"), refund(HOUR, "o1"), order(days(2), "o2")], rules,
                      until=days(30))
    assert sorted((t.type, t.fired_at) for t in triggers) == sorted(
        [(ONBOARDING, T0 + days(3)), (ONBOARDING, T0 + days(5)), (ONBOARDING, T0 + days(9)),
         (SECOND_ORDER_NUDGE, T0 + days(16))])


def test_a_feedback_request_waiting_for_quiet_hours_is_cancelled_by_a_full_refund() -> None:
    rules = only(TriggerRules(policy=replace(RULES.policy, quiet_hours=QuietHours())),
                 FEEDBACK_REQUEST)
    _, triggers = run([order(23 * HOUR, "o1"), visit(days(7) + 23.5 * HOUR),
                       refund(days(8) + HOUR, "o1")], rules, until=days(9))
    assert [(t.status, t.reason) for t in triggers] == [("deferred", "quiet_hours"),
                                                        ("suppressed", "cancelled")]


def test_refunds_in_full_do_not_count_towards_loyalty() -> None:
    """The policy's loyal clients (5 purchases) get no onboarding: refunded orders are no
    purchases, as cancelled ones are not."""
    events = [order(i * HOUR, f"o{i}") for i in range(5)] + [refund(6 * HOUR, "o4")]
    state = run(events)[0]
    assert state.orders_count == 5 and purchase_count(state) == 4
    assert not is_loyal(state, RULES.policy.loyal_after_orders)
    assert is_loyal(run([order(7 * HOUR, "o5")], state=state)[0],
                    RULES.policy.loyal_after_orders)


# --- feedback request -----------------------------------------------------------------------------

FEEDBACK = only(RULES, FEEDBACK_REQUEST)


def test_feedback_request_seven_days_after_the_order_with_the_nps_question() -> None:
    state, triggers = run([order(0, "o1", 42.0)], FEEDBACK, until=days(30))
    [request] = triggers
    assert request.type == FEEDBACK_REQUEST and request.key == "o1"
    assert request.fired_at == T0 + days(7)
    assert request.payload == {"order_id": "o1", "placed_at": format_time(T0), "total": 42.0,
                               "nps_survey": True, "nps_question": NPS_QUESTION}
    assert next_trigger_due(state, FEEDBACK) is None


def test_feedback_request_without_the_survey() -> None:
    rules = replace(FEEDBACK, feedback_request=replace(FEEDBACK.feedback_request,
                                                       nps_survey=False))
    _, [request] = run([order(0, "o1")], rules, until=days(8))
    assert "nps_question" not in request.payload and request.payload["nps_survey"] is False


def test_a_newer_order_supersedes_the_waiting_request() -> None:
    _, triggers = run([order(0, "o1"), order(days(3), "o2")], FEEDBACK, until=days(30))
    assert [(t.key, t.fired_at) for t in triggers] == [("o2", T0 + days(10))]


def test_each_order_is_asked_about_when_orders_are_far_apart() -> None:
    _, triggers = run([order(0, "o1"), order(days(9), "o2")], FEEDBACK, until=days(30))
    assert [(t.key, t.fired_at) for t in triggers] == [("o1", T0 + days(7)),
                                                      ("o2", T0 + days(16))]


def test_a_cancelled_order_is_not_asked_about() -> None:
    state, triggers = run([order(0, "o1"), cancel(days(2), "o1")], FEEDBACK, until=days(30))
    assert triggers == []
    assert next_trigger_due(state, FEEDBACK) is None


def test_cancelling_the_latest_order_after_its_request_does_not_ask_about_an_older_one() -> None:
    _, triggers = run([order(0, "o1"), order(days(1), "o2"), visit(days(9)),
                       cancel(days(10), "o2")], FEEDBACK, until=days(30))
    assert [t.key for t in triggers] == ["o2"]


def test_a_late_older_order_after_the_request_is_not_asked_about() -> None:
    state, first = run([order(days(1), "o2")], FEEDBACK, until=days(9))
    assert [t.key for t in first] == ["o2"]
    _, late = run([order(0, "o1")], FEEDBACK, state=state, until=days(30))
    assert of(late, FEEDBACK_REQUEST) == []


def test_a_duplicate_order_does_not_rearm_the_request() -> None:
    placed = order(0, "o1")
    _, triggers = run([placed, visit(days(8)), placed, order(days(9), "o1")], FEEDBACK,
                      until=days(30))
    assert [t.key for t in triggers] == ["o1"]


# --- NPS answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("score", "kind"), [
    (0, NPS_DETRACTOR_TASK), (5, NPS_DETRACTOR_TASK), (6, NPS_PASSIVE_OFFER),
    (8, NPS_PASSIVE_OFFER), (9, NPS_PROMOTER_REFERRAL), (10, NPS_PROMOTER_REFERRAL)])
def test_nps_answer_branches(score: int, kind: str) -> None:
    _, triggers = run([nps(0, score)])
    assert kinds(triggers) == [kind]
    assert triggers[0].key == occasion_time(T0)
    assert triggers[0].payload["score"] == score


def test_nps_payloads() -> None:
    rules = replace(RULES, nps_promoter_referral=replace(RULES.nps_promoter_referral,
                                                         bonus_per_friend=5.0))
    _, [task] = run([nps(0, 2, properties={"comment": "late delivery"})], rules)
    assert task.channel == "task"  # a task for a manager, not a message
    assert task.payload == {"score": 2, "answered_at": format_time(T0),
                            "comment": "late delivery"}
    _, [offer] = run([nps(0, 7)], rules)
    assert offer.payload["discount_percent"] == 10.0
    _, [referral] = run([nps(0, 10)], rules)
    assert referral.payload["bonus_per_friend"] == 5.0


def test_a_late_older_answer_raises_only_a_detractors_task_and_a_resent_one_nothing() -> None:
    """The offer and the invitation follow the latest answer; a detractor's complaint is a
    manager's task however late it arrives, as it would have been in order."""
    answer = nps(HOUR, 9)
    state, triggers = run([answer])
    assert kinds(triggers) == [NPS_PROMOTER_REFERRAL]
    after, late = run([nps(0, 7), answer, replace(answer, event_id="other-id")], state=state)
    assert late == []
    _, complaint = run([nps(0, 2)], state=after)
    assert [(t.type, t.payload["score"]) for t in complaint] == [(NPS_DETRACTOR_TASK, 2)]
    assert after.nps_score == 9
    in_order = run([nps(0, 2), answer])[1]
    assert sorted(kinds(in_order)) == sorted([NPS_PROMOTER_REFERRAL, NPS_DETRACTOR_TASK])


def test_a_detractors_task_is_raised_once_for_its_instant() -> None:
    """Two answers of one instant (another id, the same second), or a late complaint sent
    twice: one task, as an occasion is decided once."""
    _, same_instant = run([nps(0, 2), nps(0, 1, event_id="again")])
    assert kinds(same_instant) == [NPS_DETRACTOR_TASK]
    state, _ = run([nps(HOUR, 9)])
    _, twice = run([nps(0, 2), nps(0, 2, event_id="resent-under-another-id")], state=state)
    assert kinds(twice) == [NPS_DETRACTOR_TASK]


def test_a_newer_answer_is_a_new_occasion() -> None:
    _, triggers = run([nps(0, 9), nps(days(60), 3)])
    assert kinds(triggers) == [NPS_PROMOTER_REFERRAL, NPS_DETRACTOR_TASK]


@pytest.mark.parametrize(("score", "kind"), [
    (6, NPS_DETRACTOR_TASK), (7, NPS_PASSIVE_OFFER), (8, NPS_PROMOTER_REFERRAL)])
def test_nps_bands_are_the_operators(score: int, kind: str) -> None:
    """The classic NPS split (0-6 detractors, 7-8 passives) where the practice's default
    is 0-5 and 6-8: the bands come from the configuration."""
    rules = replace(RULES, nps=NpsBands(detractor_max=6, passive_max=7))
    assert kinds(run([nps(0, score)], rules)[1]) == [kind]


def test_nps_bands_refuse_an_impossible_order() -> None:
    with pytest.raises(ValueError, match="detractor_max < passive_max"):
        NpsBands(detractor_max=8, passive_max=8)


def test_each_nps_rule_can_be_switched_off() -> None:
    for kind, score in ((NPS_DETRACTOR_TASK, 1), (NPS_PASSIVE_OFFER, 7),
                        (NPS_PROMOTER_REFERRAL, 10)):
        rules = replace(RULES, **{kind: replace(RULES.rule(kind), enabled=False)})
        assert run([nps(0, score)], rules)[1] == [], kind


# --- second-order nudge ---------------------------------------------------------------------------

NUDGE = only(RULES, SECOND_ORDER_NUDGE)


def test_second_order_nudge_fourteen_days_after_the_first_order() -> None:
    state, [nudge] = run([order(0, "o1")], NUDGE, until=days(60))
    assert nudge.fired_at == T0 + days(14) and nudge.key == ""
    assert nudge.payload == {"first_order_id": "o1", "first_order_at": format_time(T0)}
    _, later = run([order(days(70), "o2"), cancel(days(71), "o2")], NUDGE, state=state,
                   until=days(200))
    assert later == []  # once per client


def test_second_order_nudge_cancelled_by_a_second_order() -> None:
    state, triggers = run([order(0, "o1"), order(days(5), "o2")], NUDGE, until=days(60))
    assert triggers == []
    assert SECOND_ORDER_NUDGE not in timer_kinds(state, NUDGE)


def test_second_order_nudge_rearmed_when_the_second_order_is_cancelled() -> None:
    _, triggers = run([order(0, "o1"), order(days(5), "o2"), cancel(days(6), "o2")], NUDGE,
                      until=days(60))
    assert [t.fired_at for t in triggers] == [T0 + days(14)]


def test_second_order_nudge_not_after_a_detractor_answer() -> None:
    _, [nudge] = run([order(0, "o1"), nps(days(8), 2)], NUDGE, until=days(60))
    assert (nudge.status, nudge.reason) == ("suppressed", "detractor")


# --- first-order promo ----------------------------------------------------------------------------

PROMO = only(RULES, FIRST_ORDER_PROMO)


def test_first_order_promo_thirty_days_after_registration() -> None:
    rules = replace(PROMO, first_order_promo=replace(PROMO.first_order_promo,
                                                     promo_code="FIRST10"))
    state, [promo] = run([registered(0)], rules, until=days(60))
    assert promo.fired_at == T0 + days(30)
    assert promo.payload == {"registered_at": format_time(T0), "promo_code": "FIRST10"}
    assert next_trigger_due(state, rules) is None


def test_first_order_promo_cancelled_by_an_order_and_not_for_visitors() -> None:
    assert run([registered(0), order(days(29), "o1")], PROMO, until=days(60))[1] == []
    assert run([visit(0)], PROMO, until=days(60))[1] == []


# --- churn win-back -------------------------------------------------------------------------------

CHURN = only(RULES, CHURN_WINBACK)


def test_churn_winback_180_days_after_the_last_order() -> None:
    state, triggers = run([order(0, "o1"), order(days(20), "o2")], CHURN, until=days(400))
    [winback] = triggers
    assert winback.fired_at == T0 + days(200)
    assert winback.key == occasion_time(T0 + days(20))
    assert winback.payload["last_order_at"] == format_time(T0 + days(20))
    assert is_churned(state, T0 + days(200), CHURN.churn_after)
    assert not is_churned(state, T0 + days(199), CHURN.churn_after)


def test_churn_winback_from_registration_for_clients_who_never_ordered() -> None:
    _, [winback] = run([registered(0)], CHURN, until=days(181))
    assert winback.fired_at == T0 + days(180)
    assert winback.payload["last_order_at"] is None


def test_churn_winback_rearmed_by_an_order_and_once_per_silence() -> None:
    state, first = run([order(0, "o1")], CHURN, until=days(190))
    _, again = run([order(days(300), "o2")], CHURN, state=state, until=days(600))
    assert [t.fired_at for t in first + again] == [T0 + days(180), T0 + days(480)]
    assert first[0].trigger_id != again[0].trigger_id
    assert run([order(0, "o1"), order(days(179), "o2")], CHURN, until=days(300))[1] == []


def test_churn_winback_not_rearmed_by_a_late_older_order() -> None:
    state, [winback] = run([order(days(10), "o2")], CHURN, until=days(200))
    _, late = run([order(0, "o1")], CHURN, state=state, until=days(400))
    assert late == [] and winback.fired_at == T0 + days(190)


# --- replenishment --------------------------------------------------------------------------------

REPLENISH = only(RULES, REPLENISHMENT_REMINDER)


def test_replenishment_seven_days_before_the_predicted_order() -> None:
    state, [reminder] = run([order(0, "o1"), order(days(30), "o2")], REPLENISH, until=days(90))
    assert reminder.fired_at == T0 + days(53)  # 30 + 30 - 7
    assert reminder.key == "o2"
    assert reminder.payload["predicted_order_at"] == format_time(T0 + days(60))
    assert reminder.payload["mean_days_between_orders"] == 30.0
    assert next_trigger_due(state, REPLENISH) is None


def test_replenishment_needs_a_second_order_and_a_rhythm_longer_than_the_offset() -> None:
    assert run([order(0, "o1")], REPLENISH, until=days(400))[1] == []
    assert run([order(0, "o1"), order(days(6), "o2")], REPLENISH, until=days(400))[1] == []


def test_replenishment_rearmed_by_each_order() -> None:
    _, triggers = run([order(0, "o1"), order(days(30), "o2"), order(days(50), "o3")],
                      REPLENISH, until=days(200))
    # after o2 due at day 53; o3 on day 50 re-arms it: mean 25, due 50 + 25 - 7 = 68
    assert [(t.key, t.fired_at) for t in triggers] == [("o3", T0 + days(68))]


def test_replenishment_follows_a_cancellation() -> None:
    _, triggers = run([order(0, "o1"), order(days(20), "o2"), order(days(30), "o3"),
                       cancel(days(31), "o3")], REPLENISH, until=days(200))
    assert [(t.key, t.fired_at) for t in triggers] == [("o2", T0 + days(33))]


def test_replenishment_per_category() -> None:
    rules = replace(REPLENISH, replenishment_reminder=replace(
        REPLENISH.replenishment_reminder, per_category=True))
    events = [order(0, "o1", 10.0, "food"), order(days(10), "o2", 10.0, "toys"),
              order(days(20), "o3", 20.0, "food", "toys"), order(days(40), "o4", 5.0, "food")]
    _, triggers = run(events, rules, until=days(100))
    got = [(t.payload["category"], t.fired_at) for t in triggers]
    # toys: orders on days 10 and 20, due 20 + 10 - 7 = 23; food: days 0 and 20, due 33,
    # then with the order of day 40 a new cycle, due 40 + 20 - 7 = 53
    assert got == [("toys", T0 + days(23)), ("food", T0 + days(33)), ("food", T0 + days(53))]
    assert triggers[0].key == f"toys:{occasion_time(T0 + days(20))}"


# --- service reminder -----------------------------------------------------------------------------

SERVICE = only(RULES, SERVICE_REMINDER)


def test_service_reminder_when_the_clients_interval_has_passed() -> None:
    state, [reminder] = run([identify(0, service_interval_days=30), order(days(1), "o1")],
                            SERVICE, until=days(40))
    assert reminder.fired_at == T0 + days(31)
    assert reminder.payload["interval_days"] == 30.0


def test_service_reminder_restarted_by_a_visit_or_not() -> None:
    events = [identify(0, service_interval_days="30"), order(0, "o1"), visit(days(20))]
    assert [t.fired_at for t in run(events, SERVICE, until=days(60))[1]] == [T0 + days(50)]
    by_order = replace(SERVICE, service_reminder=replace(SERVICE.service_reminder,
                                                         since="order", offset=days(2)))
    assert [t.fired_at for t in run(events, by_order, until=days(60))[1]] == [T0 + days(28)]


def test_service_reminder_needs_a_usable_interval() -> None:
    for interval in (None, "soon", 0, -3, True):
        events = [identify(0, service_interval_days=interval), order(0, "o1")]
        assert run(events, SERVICE, until=days(400))[1] == [], interval


# --- birthday -------------------------------------------------------------------------------------

BDAY = only(RULES, BIRTHDAY)


def test_birthday_at_ten_in_the_morning_then_yearly() -> None:
    state, triggers = run([registered(0, birthday="1990-12-01")], BDAY, until=days(700))
    assert [(t.key, format_time(t.fired_at)) for t in triggers] == [
        ("2023", "2023-12-01T10:00:00.000Z"), ("2024", "2024-12-01T10:00:00.000Z")]
    assert triggers[0].payload == {"birthday": "1990-12-01", "year": 2023}
    assert next_due(state, BDAY) == T0 + days(16) + 10 * HOUR + days(366) + days(365)


def test_birthday_known_after_this_years_date_waits_for_next_year() -> None:
    _, triggers = run([registered(0, birthday="1990-11-01")], BDAY, until=days(400))
    assert [t.key for t in triggers] == ["2024"]


def test_birthday_days_before_in_the_clients_zone() -> None:
    rules = replace(BDAY, birthday=replace(BDAY.birthday, offset=days(3)))
    _, [greeting] = run([registered(0, birthday="2000-12-01", timezone="Asia/Tokyo")], rules,
                        until=days(30))
    assert format_time(greeting.fired_at) == "2023-11-28T01:00:00.000Z"  # 10:00 in Tokyo
    _, [unknown_zone] = run([registered(0, birthday="2000-12-01", timezone="Mars/Base")],
                            rules, until=days(30))
    assert format_time(unknown_zone.fired_at) == "2023-11-28T10:00:00.000Z"  # policy's zone


def test_birthday_on_29_february() -> None:
    _, triggers = run([registered(0, birthday="2000-02-29")], BDAY, until=days(365 * 5))
    assert [format_time(t.fired_at)[:10] for t in triggers] == [
        "2024-02-29", "2025-02-28", "2026-02-28", "2027-02-28", "2028-02-29"]
    assert len({t.trigger_id for t in triggers}) == 5


def test_birthday_after_a_trait_update_does_not_repeat_or_skip() -> None:
    state, first = run([registered(0, birthday="1990-12-01")], BDAY, until=days(20))
    _, more = run([identify(days(30), email="new@x"), identify(days(40), birthday="1990-12-01")],
                  BDAY, state=state, until=days(400))
    assert [t.key for t in first + more] == ["2023", "2024"]


def test_a_late_identify_with_the_birthday_greets_as_in_time_order() -> None:
    """The birthday sent on day 5 arrives after an identify of day 20 with another trait:
    its 25 November is still to come from day 5, so it is greeted, as in replay."""
    with_birthday, newer = identify(days(5), birthday="1990-11-25"), identify(days(20),
                                                                             email="a@x")
    for events in ([with_birthday, newer], [newer, with_birthday]):
        _, triggers = run(events, BDAY, until=days(400))
        assert [t.key for t in triggers] == ["2023", "2024"], events


def test_a_birthday_set_again_years_later_greets_only_the_next_one() -> None:
    """Greeted in 2023, the date cleared, then set again three years later: the greeting is
    for the birthday to come, with no burst of greetings for the years missed."""
    events = [identify(0, birthday="1990-11-20"), identify(days(10), birthday=None),
              identify(days(3 * 365), birthday="1990-11-20")]
    state, triggers = run(events, BDAY, until=days(3 * 365) + 1)
    assert [t.key for t in triggers] == ["2023"]
    _, later = run([], BDAY, state=state, until=days(4 * 365))
    assert [(t.key, format_time(t.fired_at)) for t in later] == [
        ("2026", "2026-11-20T10:00:00.000Z")]


def test_a_birthday_corrected_to_a_date_already_past_waits_for_next_year() -> None:
    events = [identify(0, birthday="1990-11-20"), identify(days(56), birthday="1990-01-05")]
    _, triggers = run(events, BDAY, until=days(450))
    assert [(t.key, format_time(t.fired_at)) for t in triggers] == [
        ("2023", "2023-11-20T10:00:00.000Z"), ("2025", "2025-01-05T10:00:00.000Z")]


def test_a_birthday_rule_switched_on_later_greets_only_from_then() -> None:
    """The dates were set in 2023 while the rule was off; switched on three years later,
    the birthdays that fell due meanwhile are recorded `before_enabled`, never sent, and
    the next one is greeted. Without `enabled_from` every missed year is sent at once."""
    off = replace(BDAY, birthday=replace(BDAY.birthday, enabled=False))
    state, none = run([registered(0, birthday="1990-11-20")], off, until=days(3 * 365))
    assert none == []
    switched_on = T0 + days(3 * 365)
    on = replace(BDAY, enabled_from=((BIRTHDAY, switched_on),))
    after, fired = run([], on, state=state, until=days(4 * 365))
    assert [(t.key, t.status, t.reason) for t in fired] == [
        ("2023", "suppressed", "before_enabled"), ("2024", "suppressed", "before_enabled"),
        ("2025", "suppressed", "before_enabled"), ("2026", "sent", None)]
    assert fired[-1].fired_at > switched_on
    assert [t.key for t in run([], BDAY, state=state, until=days(4 * 365))[1]] == [
        "2023", "2024", "2025", "2026"]


def test_an_event_raised_trigger_before_its_rule_was_switched_on_is_not_sent() -> None:
    """Decided by the occasion's time, so live and a replay of the same events under the
    same configuration agree: a registration before the switch gets no welcome, even when
    it arrives after it."""
    rules = only(replace(RULES, enabled_from=((WELCOME, T0 + days(1)),)), WELCOME)
    _, before = run([registered(days(1) - 1)], rules)
    assert [(t.status, t.reason) for t in before] == [("suppressed", "before_enabled")]
    _, after = run([registered(days(1))], rules)
    assert [(t.status, t.reason) for t in after] == [("sent", None)]


def test_no_birthday_without_a_valid_date() -> None:
    assert run([registered(0, birthday="not a date")], BDAY, until=days(400))[1] == []


# --- onboarding -----------------------------------------------------------------------------------

ONBOARD = only(RULES, ONBOARDING)


def test_onboarding_series_after_the_first_order() -> None:
    state, triggers = run([order(0, "o1"), order(days(2), "o2")], ONBOARD, until=days(30))
    assert [(t.key, t.fired_at) for t in triggers] == [
        ("1", T0 + days(1)), ("2", T0 + days(3)), ("3", T0 + days(7))]
    assert triggers[1].payload == {"step": 2, "steps": 3, "days_after_first_order": 3.0,
                                   "first_order_at": format_time(T0)}
    assert next_trigger_due(state, ONBOARD) is None


def test_onboarding_stops_when_the_client_becomes_loyal() -> None:
    events = [order(0, "o1")] + [order(days(1.5) + i * HOUR, f"o{i + 2}") for i in range(4)]
    _, triggers = run(events, ONBOARD, until=days(30))
    assert [t.key for t in triggers] == ["1"]  # 5 orders by day 2: loyal, the series stops


def test_onboarding_configured_steps() -> None:
    rules = replace(ONBOARD, onboarding=replace(ONBOARD.onboarding, steps=(days(2), days(10))))
    _, triggers = run([order(0, "o1")], rules, until=days(30))
    assert [t.fired_at for t in triggers] == [T0 + days(2), T0 + days(10)]


# --- loyalty status -------------------------------------------------------------------------------

LOYALTY = only(RULES, LOYALTY_STATUS)


def test_loyalty_tier_reached_by_order_count() -> None:
    _, triggers = run([order(i * days(1), f"o{i}") for i in range(10)], LOYALTY)
    assert [(t.key, t.fired_at) for t in triggers] == [("silver", T0 + days(2)),
                                                      ("gold", T0 + days(9))]
    assert triggers[0].payload == {"tier": "silver", "previous_tier": None, "direction": "up",
                                   "orders_count": 3, "monetary_total": 60.0}


def test_loyalty_downgrade_is_silent_and_a_regained_tier_is_not_announced_again() -> None:
    events = [order(i * HOUR, f"o{i}") for i in range(3)] + [cancel(days(1), "o2"),
                                                              order(days(2), "o3")]
    state, triggers = run(events, LOYALTY)
    assert [t.key for t in triggers] == ["silver"]
    assert state.loyalty_tier == "silver"


def test_loyalty_downgrade_announced_when_configured() -> None:
    rules = replace(LOYALTY, loyalty_status=replace(LOYALTY.loyalty_status,
                                                    announce_downgrades=True))
    events = [order(i * HOUR, f"o{i}") for i in range(3)] + [cancel(days(1), "o2")]
    _, triggers = run(events, rules)
    assert [(t.key, t.payload["direction"]) for t in triggers] == [("silver", "up"),
                                                                  ("silver>", "down")]


def test_loyalty_tiers_by_money() -> None:
    rules = replace(LOYALTY, loyalty_status=replace(
        LOYALTY.loyalty_status, tiers=(LoyaltyTier("vip", min_money=100.0),)))
    _, triggers = run([order(0, "o1", 60.0), order(HOUR, "o2", 50.0)], rules)
    assert [(t.key, t.fired_at) for t in triggers] == [("vip", T0 + HOUR)]


def test_loyalty_rule_off_still_follows_the_tier() -> None:
    rules = replace(LOYALTY, loyalty_status=replace(LOYALTY.loyalty_status, enabled=False))
    state, triggers = run([order(i * HOUR, f"o{i}") for i in range(3)], rules)
    assert triggers == [] and state.loyalty_tier == "silver"


# --- all rules together ---------------------------------------------------------------------------

def test_a_year_of_one_client_raises_each_occasion_once() -> None:
    events = [registered(0, birthday="1985-03-10", service_interval_days=45),
              order(days(3), "o1"), nps(days(11), 7), order(days(40), "o2"),
              order(days(80), "o3"), ev(EventType.VISIT, days(100)), order(days(125), "o4")]
    state, triggers = run(events, until=days(365))
    ids = [t.trigger_id for t in triggers]
    assert len(ids) == len(set(ids))
    counts = {kind: len(of(triggers, kind)) for kind in set(kinds(triggers))}
    # feedback 7 days after each order (each next order came later); replenishment due before
    # orders 3 and 4 and after the last; the service interval (45 days) only passes after
    # the last order; the nudge on day 17, before the second order
    assert counts == {WELCOME: 1, ORDER_CONFIRMATION: 4, FEEDBACK_REQUEST: 4, ONBOARDING: 3,
                      NPS_PASSIVE_OFFER: 1, LOYALTY_STATUS: 1, BIRTHDAY: 1,
                      SECOND_ORDER_NUDGE: 1, REPLENISHMENT_REMINDER: 3, SERVICE_REMINDER: 1,
                      CHURN_WINBACK: 1}
    assert of(triggers, SERVICE_REMINDER)[0].fired_at == T0 + days(170)
    # the whole history again, as a replay, changes nothing and raises nothing
    again_state, again = run(events, state=state)
    assert again == [] and again_state == state


def test_process_event_is_deterministic_for_any_client_name() -> None:
    events = [registered(0, birthday="1985-03-10"), order(days(3), "o1"), nps(days(11), 9)]
    mine = run(events, until=days(400))[1]
    theirs = []
    state = None
    for event in events:
        state, fired = process_event("c2", state, replace(event, client_id="c2"), RULES)
        theirs.extend(fired)
    assert state is not None
    theirs.extend(fire_due("c2", state, T0 + days(400), RULES)[1])
    assert [(t.type, t.key, t.fired_at) for t in mine] == [
        (t.type, t.key, t.fired_at) for t in theirs]
