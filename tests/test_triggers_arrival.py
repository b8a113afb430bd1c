"""Arrival order: the same events, in order or late, lead to the same triggers.

An event arrives late while a trigger waits for the end of quiet hours; stamped before the
trigger came due, it must end the occasion as it would have in order (the waiting trigger
is then recorded `suppressed`, reason `cancelled`). Cart and browse episodes, their keys
and what their reminders name, do not depend on arrival order either. Where a trigger was
already sent when the late event arrives, it is not taken back, and it is not repeated.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.catalogue import occasion_time
from features.events import Event, EventType, Order, Product
from features.rules import (
    ABANDONED_BROWSE,
    ABANDONED_CART,
    CHURN_WINBACK,
    FEEDBACK_REQUEST,
    NPS_DETRACTOR_TASK,
    NPS_PASSIVE_OFFER,
    NPS_PROMOTER_REFERRAL,
    ORDER_CONFIRMATION,
    REPLENISHMENT_REMINDER,
    SERVICE_REMINDER,
    QuietHours,
    TriggerRules,
)
from features.triggers import Trigger, fire_due, process_event, trigger_id
from tests.core_events import (
    CLIENT,
    HOUR,
    MINUTE,
    OPEN,
    RULES,
    T0,
    cart_add,
    days,
    ev,
    nps,
    of,
    only,
    order,
    run,
    visit,
)

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

QUIET = TriggerRules(policy=replace(OPEN, quiet_hours=QuietHours()))  # 21:00-09:00 UTC


def late(event: Event, arrives: float) -> Event:
    """`event` as it arrives at T0 + `arrives` seconds, after it happened."""
    return replace(event, received_at=T0 + arrives)


def view(t: float, *pids: str) -> Event:
    return ev(EventType.PRODUCT_VIEW, t, products=tuple(Product(p, "toys") for p in pids))


def decisions(triggers: list[Trigger], kind: str) -> list[tuple[str, str, str | None]]:
    return [(t.key, t.status, t.reason) for t in of(triggers, kind)]


def final(triggers: list[Trigger]) -> list[tuple[str, str, str]]:
    """The occasions sent: what the client gets."""
    return [(t.type, t.key, t.trigger_id) for t in triggers if t.status == "sent"]


def waited_then_late(rules: TriggerRules, before: list[Event], due: float, arriving: Event,
                     until: float) -> list[Trigger]:
    """`before` in order, the clock past `due` (the trigger waits for 09:00), then
    `arriving`, late, and the clock on to `until` (seconds after T0)."""
    state, triggers = run(before, rules, until=due)
    _, more = run([arriving], rules, state=state, until=until)
    return triggers + more


# --- a late event ends an occasion waiting for the end of quiet hours ----------------------------

def test_a_late_order_cancels_the_win_back_waiting_for_quiet_hours() -> None:
    rules = only(QUIET, CHURN_WINBACK)
    first = order(23 * HOUR, "o1")  # the win-back is due on day 180 at 23:00: it waits
    second = order(days(180) + 22 * HOUR, "o2")  # the silence ended an hour before
    key = occasion_time(T0 + 23 * HOUR)
    out_of_order = waited_then_late(rules, [first], days(180) + 23 * HOUR,
                                    late(second, days(181) + 2 * HOUR), days(182))
    assert decisions(out_of_order, CHURN_WINBACK) == [
        (key, "deferred", "quiet_hours"), (key, "suppressed", "cancelled")]
    _, in_order = run([first, second], rules, until=days(182))
    assert final(out_of_order) == final(in_order) == []


def test_an_order_after_the_win_back_came_due_still_cancels_it() -> None:
    rules = only(QUIET, CHURN_WINBACK)
    _, triggers = run([order(23 * HOUR, "o1"), order(days(181) + 2 * HOUR, "o2")], rules,
                      until=days(182))
    assert [status for _, status, _ in decisions(triggers, CHURN_WINBACK)] == [
        "deferred", "suppressed"]


def test_a_late_visit_cancels_the_service_reminder_waiting_for_quiet_hours() -> None:
    rules = only(QUIET, SERVICE_REMINDER)
    placed = ev(EventType.ORDER_PLACED, 23 * HOUR, order=Order("o1", 20.0),
                traits={"service_interval_days": 30})  # due on day 30 at 23:00
    came = visit(days(30) + 22 * HOUR)  # restarts the interval, an hour before
    out_of_order = waited_then_late(rules, [placed], days(30) + 23 * HOUR,
                                    late(came, days(31) + 2 * HOUR), days(31) + 12 * HOUR)
    key = occasion_time(T0 + 23 * HOUR)
    assert decisions(out_of_order, SERVICE_REMINDER) == [
        (key, "deferred", "quiet_hours"), (key, "suppressed", "cancelled")]
    _, in_order = run([placed, came], rules, until=days(31) + 12 * HOUR)
    assert final(out_of_order) == final(in_order) == []


def test_a_late_newer_order_cancels_the_feedback_request_waiting_for_quiet_hours() -> None:
    rules = only(QUIET, FEEDBACK_REQUEST)
    first, second = order(23 * HOUR, "o1"), order(days(7) + 22 * HOUR, "o2")
    out_of_order = waited_then_late(rules, [first], days(7) + 23 * HOUR,
                                    late(second, days(8) + 2 * HOUR), days(30))
    assert decisions(out_of_order, FEEDBACK_REQUEST) == [
        ("o1", "deferred", "quiet_hours"), ("o1", "suppressed", "cancelled"),
        ("o2", "deferred", "quiet_hours"), ("o2", "sent", None)]
    _, in_order = run([first, second], rules, until=days(30))
    assert final(out_of_order) == final(in_order) == [
        (FEEDBACK_REQUEST, "o2", trigger_id(CLIENT, FEEDBACK_REQUEST, "o2"))]


PER_CATEGORY = replace(only(QUIET, REPLENISHMENT_REMINDER), replenishment_reminder=replace(
    QUIET.replenishment_reminder, per_category=True))


def test_a_late_order_of_the_category_cancels_its_waiting_replenishment_reminder() -> None:
    food = [order(23 * HOUR, "o1", 10.0, "food"), order(days(20) + 23 * HOUR, "o2", 10.0, "food")]
    again = order(days(33) + 22 * HOUR, "o3", 10.0, "food")  # due day 33 at 23:00: it waits
    out_of_order = waited_then_late(PER_CATEGORY, food, days(33) + 23 * HOUR,
                                    late(again, days(34) + 2 * HOUR), days(60))
    key = f"food:{occasion_time(T0 + days(20) + 23 * HOUR)}"
    assert decisions(out_of_order, REPLENISHMENT_REMINDER)[:2] == [
        (key, "deferred", "quiet_hours"), (key, "suppressed", "cancelled")]
    _, in_order = run([*food, again], PER_CATEGORY, until=days(60))
    assert final(out_of_order) == final(in_order) != []


def test_an_order_of_another_category_leaves_a_waiting_replenishment_reminder() -> None:
    """The occasion is the category's next order: another category's does not end it, in
    order (before it came due) or while it waits."""
    food = [order(23 * HOUR, "o1", 10.0, "food"), order(days(20) + 23 * HOUR, "o2", 10.0, "food")]
    toys = order(days(33) + 23 * HOUR + 30 * MINUTE, "o3", 10.0, "toys")
    _, triggers = run([*food, toys], PER_CATEGORY, until=days(35))
    key = f"food:{occasion_time(T0 + days(20) + 23 * HOUR)}"
    assert decisions(triggers, REPLENISHMENT_REMINDER) == [
        (key, "deferred", "quiet_hours"), (key, "sent", None)]


BROWSE = only(QUIET, ABANDONED_BROWSE)


def test_a_late_order_cancels_the_browse_reminder_waiting_for_quiet_hours() -> None:
    viewed, bought = view(20 * HOUR, "a"), order(21 * HOUR, "o1")  # due 22:00: it waits
    out_of_order = waited_then_late(BROWSE, [viewed], 22 * HOUR, late(bought, 23 * HOUR),
                                    days(2))
    key = occasion_time(T0 + 20 * HOUR)
    assert decisions(out_of_order, ABANDONED_BROWSE) == [
        (key, "deferred", "quiet_hours"), (key, "suppressed", "cancelled")]
    _, in_order = run([viewed, bought], BROWSE, until=days(2))
    assert final(out_of_order) == final(in_order) == []


def test_a_late_cart_add_within_the_browse_episode_cuts_it_as_in_order() -> None:
    """Views of a at 19:00 and b at 20:00; a cart add at 19:30 ends the browsing before it:
    the reminder names b only, whether the add came in order or while the reminder waited."""
    views = [view(19 * HOUR, "a"), view(20 * HOUR, "b")]
    added = cart_add(19 * HOUR + 30 * MINUTE, "c")
    out_of_order = waited_then_late(BROWSE, views, 22 * HOUR, late(added, 23 * HOUR), days(2))
    _, in_order = run([views[0], added, views[1]], BROWSE, until=days(2))
    assert final(out_of_order) == final(in_order) != []
    assert [t.payload["products"] for t in out_of_order] == [["b", "a"], ["b"]]
    assert [t.payload["products"] for t in in_order] == [["b"], ["b"]]


def test_a_browse_reminder_waiting_across_the_upgrade_is_cut_by_its_last_view() -> None:
    """Up to state format 7 a browse reminder was keyed by the episode's first view; one
    waiting for the end of quiet hours at the upgrade keeps that key. Its payload's
    `last_view_at` says where the episode ended, so a late cart add inside it cuts it as in
    order instead of cancelling it."""
    rules = only(QUIET, ABANDONED_BROWSE)
    views = [view(20 * HOUR, "p1"), view(20 * HOUR + 30 * MINUTE, "p2")]
    state, waiting = run(views, rules, until=23 * HOUR)
    [pending] = state.pending
    v7 = replace(state, pending=(replace(pending, key=occasion_time(T0 + 20 * HOUR)),))
    _, released = run([late(cart_add(20 * HOUR + 15 * MINUTE, "p9"), 23 * HOUR + MINUTE)],
                      rules, state=v7, until=days(2))
    assert [(t.status, t.payload["products"]) for t in released] == [("sent", ["p2"])]
    assert waiting[0].status == "deferred"


# --- the cart ------------------------------------------------------------------------------------

CARTS = only(RULES, ABANDONED_CART)


def test_a_cart_add_at_the_orders_instant_is_bought_whichever_arrives_first() -> None:
    added, placed = cart_add(1000, "a"), order(1000, "o1")
    for history in ([added, placed], [placed, added]):
        state, triggers = run(history, CARTS, until=days(1))
        assert state.cart == () and triggers == []


def test_a_late_order_after_the_cart_reminder_does_not_remind_the_lines_left_again() -> None:
    """a at 0:00, b at 0:30: the reminder at 1:30 names both. An order placed at 0:10 that
    arrives at 2:00 bought a; b, which the reminder covered, is not reminded again."""
    history = [cart_add(0, "a"), cart_add(30 * MINUTE, "b"), visit(2 * HOUR), order(600, "o1")]
    state, triggers = run(history, CARTS, until=days(1))
    assert [(t.key, [i["product_id"] for i in t.payload["items"]]) for t in triggers] == [
        (occasion_time(T0), ["a", "b"])]
    assert [line.product_id for line in state.cart] == ["b"]
    _, more = run([cart_add(3 * HOUR, "c")], CARTS, state=state, until=days(2))
    assert [t.key for t in more] == [occasion_time(T0 + 3 * HOUR)]  # new activity: new episode


def test_a_late_order_while_the_cart_reminder_waits_leaves_the_rest_its_own_reminder() -> None:
    """The reminder for a (20:00) and b (20:30) waits for 09:00 when an order placed at
    20:10 arrives: it is cancelled, and b gets the reminder it gets in order."""
    rules = only(QUIET, ABANDONED_CART)
    adds = [cart_add(20 * HOUR, "a"), cart_add(20 * HOUR + 30 * MINUTE, "b")]
    placed = order(20 * HOUR + 10 * MINUTE, "o1")
    out_of_order = waited_then_late(rules, adds, 22 * HOUR, late(placed, 23 * HOUR), days(2))
    first, then = occasion_time(T0 + 20 * HOUR), occasion_time(T0 + 20.5 * HOUR)
    assert decisions(out_of_order, ABANDONED_CART) == [
        (first, "deferred", "quiet_hours"), (then, "deferred", "quiet_hours"),
        (first, "suppressed", "cancelled"), (then, "sent", None)]
    _, in_order = run([adds[0], placed, adds[1]], rules, until=days(2))
    assert final(out_of_order) == final(in_order) != []


def removal(t: float, *pids: str) -> Event:
    return ev(EventType.CART_REMOVE, t, products=tuple(Product(p, None, 0.0, 1) for p in pids))


def test_a_removal_arriving_before_its_add_leaves_no_reminder_for_the_removed_product() -> None:
    """Added at 0:00:10, removed at 0:00:11, the removal arriving first (2 s late, within
    the allowed lateness): in order the cart is empty, so nothing is reminded, live or in
    replay; the removal used to find nothing and be lost, and the reminder named p1."""
    added, removed = late(cart_add(10, "p1"), 12), removal(11, "p1")
    assert live([removed, added], CARTS, days(1)) == []
    assert run([added, removed], CARTS, until=days(1))[1] == []


def test_a_removal_stamped_before_a_newer_add_leaves_the_reminder_of_the_add() -> None:
    """Removed at 0:00:10 (nothing in the cart), added at 0:00:11, the removal arriving
    last: in order p1 stays; the removal used to take it and the reminder was lost."""
    removed, added = late(removal(10, "p1"), 12), cart_add(11, "p1")
    triggers = live([added, removed], CARTS, days(1))
    assert [(t.key, [i["product_id"] for i in t.payload["items"]]) for t in triggers] == [
        (occasion_time(T0 + 11), ["p1"])]
    assert summary(triggers) == summary(run([removed, added], CARTS, until=days(1))[1])


def test_a_late_removal_from_before_the_episode_leaves_its_waiting_reminder_alone() -> None:
    """a at 18:00 (reminded at 19:00), b at 20:30: a new episode, its reminder waiting for
    09:00, when a removal of a stamped 20:15 arrives. It took a line of the reminded
    episode, not of b's: b's reminder is not raised a second time."""
    rules = only(QUIET, ABANDONED_CART)
    before = [cart_add(18 * HOUR, "a"), cart_add(20.5 * HOUR, "b")]
    triggers = waited_then_late(rules, before, 22 * HOUR,
                                late(removal(20.25 * HOUR, "a"), 22 * HOUR), days(2))
    first, then = occasion_time(T0 + 18 * HOUR), occasion_time(T0 + 20.5 * HOUR)
    assert decisions(triggers, ABANDONED_CART) == [
        (first, "sent", None), (then, "deferred", "quiet_hours"), (then, "sent", None)]


def test_an_add_arriving_after_a_removal_emptied_the_cart_joins_the_episode_it_was_in() -> None:
    """a at 0:00, b at 0:09:58 (arriving 4 s late, within the lateness), a removed at
    0:10: in order the cart was never empty, so the reminder is the episode of 0:00's, one
    id live and in replay."""
    a, b, gone = cart_add(0, "a"), late(cart_add(598, "b"), 602), removal(600, "a")
    live_run = live([a, gone, b], CARTS, days(1))
    assert summary(live_run) == summary(run([a, b, gone], CARTS, until=days(1))[1])
    [reminder] = live_run
    assert reminder.key == occasion_time(T0)


def test_an_add_from_before_a_sent_reminder_arriving_after_the_cart_emptied_is_covered() -> None:
    """The reminder of 0:00's cart went out at 1:00; a was removed at 2:00; c, added at
    0:30, arrives at 2:30: the reminder covered the episode c was in, as it does when
    nothing was removed, so no second reminder."""
    state, first = run([cart_add(0, "a")], CARTS, until=1.5 * HOUR)
    _, then = run([removal(2 * HOUR, "a"), late(cart_add(30 * 60, "c"), 2.5 * HOUR)], CARTS,
                  state=state, until=days(1))
    assert [t.status for t in first] == ["sent"] and then == []


# --- NPS answers ---------------------------------------------------------------------------------

NPS_RULES = only(RULES, NPS_DETRACTOR_TASK, NPS_PASSIVE_OFFER, NPS_PROMOTER_REFERRAL)
NPS_FOLLOW_UP = {3: NPS_DETRACTOR_TASK, 10: NPS_PROMOTER_REFERRAL}


@pytest.mark.parametrize("scores", [(10, 3), (3, 10)])
def test_answers_at_one_instant_keep_the_answer_the_follow_up_was_decided_on(
        scores: tuple[int, int]) -> None:
    """Two answers with one timestamp (a same-second correction): the follow-up is decided
    on the first to arrive, and the state keeps that one in either arrival order, so the
    score the segments and the policy read is the one acted on (10 then 3 used to leave
    a score of 3 with a promoter referral sent and no detractor task). A detractor's
    answer raises its manager's task in either order."""
    state, triggers = run([nps(12 * HOUR, scores[0]), nps(12 * HOUR, scores[1])], NPS_RULES)
    assert state.nps_score == scores[0]
    assert sorted(t.type for t in triggers) == sorted({NPS_FOLLOW_UP[scores[0]],
                                                       NPS_DETRACTOR_TASK})
    # at night the follow-up waits for 09:00 and is checked against the answer kept then:
    # it is sent, not cancelled for a score it was not decided on
    quiet = only(QUIET, NPS_DETRACTOR_TASK, NPS_PASSIVE_OFFER, NPS_PROMOTER_REFERRAL)
    _, waited = run([nps(22 * HOUR, scores[0]), nps(22 * HOUR, scores[1])], quiet,
                    until=days(2))
    assert sorted(t.type for t in waited if t.status == "sent") == sorted(
        {NPS_FOLLOW_UP[scores[0]], NPS_DETRACTOR_TASK})


def test_a_detractors_task_stands_whatever_answer_comes_after_it() -> None:
    """A task configured to wait an hour is not cancelled by a later, happier answer (it is
    transactional: a complaint to handle), and a late older complaint still raises one."""
    delayed = replace(NPS_RULES, nps_detractor_task=replace(NPS_RULES.nps_detractor_task,
                                                            delay=HOUR))
    _, triggers = run([nps(10 * HOUR, 2), nps(10 * HOUR + 600, 9)], delayed, until=days(1))
    assert sorted((t.type, t.status) for t in triggers) == [
        (NPS_DETRACTOR_TASK, "sent"), (NPS_PROMOTER_REFERRAL, "sent")]
    complaint, happier = late(nps(12 * HOUR, 2), 12 * HOUR + 3), nps(12 * HOUR + 1, 10)
    assert summary(live([happier, complaint], NPS_RULES, days(1))) == summary(
        run([complaint, happier], NPS_RULES, until=days(1))[1])


# --- the browse episode --------------------------------------------------------------------------

BROWSE_OPEN = only(RULES, ABANDONED_BROWSE)


def test_the_browse_key_does_not_depend_on_arrival_order() -> None:
    """b at 0:01:40, a cart add of b at 0:05, a at 0:10 and 0:20. A cart add that arrives
    last cuts the episode from a view the state no longer has (it keeps each product's
    latest view): the key is the episode's last view, which every arrival order knows."""
    b, added, a1, a2 = view(100, "b"), cart_add(300, "b"), view(600, "a"), view(1200, "a")
    outcomes = {tuple((t.trigger_id, t.key, t.fired_at, str(t.payload))
                      for t in run(history, BROWSE_OPEN, until=days(1))[1])
                for history in ([b, added, a1, a2], [b, a1, a2, added], [a2, a1, b, added])}
    assert outcomes == {((trigger_id(CLIENT, ABANDONED_BROWSE, occasion_time(T0 + 1200)),
                          occasion_time(T0 + 1200), T0 + 1200 + 2 * HOUR,
                          str({"products": ["a"], "last_view_at": "2023-11-15T00:20:00.000Z"})),)}


def test_no_browse_reminder_of_products_in_the_cart_or_just_bought() -> None:
    """Abandoned browse is viewing without adding or buying: a product viewed after it was
    added to the cart, or on the order's confirmation page, is not named; a reminder naming
    nothing is not raised at all."""
    rules = only(RULES, ABANDONED_BROWSE, ABANDONED_CART)
    _, carted = run([cart_add(0, "a"), view(10 * MINUTE, "a")], rules, until=days(1))
    assert [t.type for t in carted] == [ABANDONED_CART]
    _, bought = run([order(0, "o1", 10.0, "toys"), view(MINUTE, "p-toys")], rules,
                    until=days(1))
    assert bought == []
    _, mixed = run([cart_add(0, "a"), view(10 * MINUTE, "a", "b"), order(20 * MINUTE, "o1"),
                    view(30 * MINUTE, "p1", "c")], BROWSE_OPEN, until=days(1))
    assert [t.payload["products"] for t in mixed] == [["c"]]  # p1: the order's product


def test_a_browse_decided_with_nothing_to_name_is_not_raised_by_a_later_removal() -> None:
    rules = only(RULES, ABANDONED_BROWSE)
    state, triggers = run([cart_add(0, "a"), view(10 * MINUTE, "a"), visit(3 * HOUR)], rules)
    assert triggers == []
    removed = ev(EventType.CART_REMOVE, 4 * HOUR, products=(Product("a", None, 0.0, 1),))
    _, later = run([removed], rules, state=state, until=days(1))
    assert later == []


def test_products_bought_at_the_same_instant_by_two_orders_are_all_left_out() -> None:
    first = ev(EventType.ORDER_PLACED, 0, order=Order("o1", 5.0, "EUR", (Product("a"),)))
    second = ev(EventType.ORDER_PLACED, 0, order=Order("o2", 5.0, "EUR", (Product("b"),)))
    older = ev(EventType.ORDER_PLACED, -HOUR, order=Order("o0", 5.0, "EUR", (Product("c"),)))
    for history in ([first, second, older], [older, second, first]):
        state, triggers = run([*history, view(MINUTE, "a", "b", "c")], BROWSE_OPEN,
                              until=days(1))
        assert state.bought == ("a", "b")
        assert [t.payload["products"] for t in triggers] == [["c"]]


# --- any arrival order, before anything is due ---------------------------------------------------

PRODUCTS = ["p1", "p2", "p3", "p4"]


@st.composite
def shuffled_histories(draw: st.DrawFn) -> tuple[list[Event], list[Event]]:
    """Views, cart adds (each product at most once: a line keeps its latest add only) and
    orders within 50 minutes, on whole minutes so that ties happen; and the same events in
    another arrival order. Nothing is due before the last arrives (the cart waits an hour)."""
    def at() -> float:
        return draw(st.integers(0, 50)) * MINUTE

    some = st.lists(st.sampled_from(PRODUCTS), min_size=1, max_size=2, unique=True)
    events = [view(at(), *draw(some)) for _ in range(draw(st.integers(1, 6)))]
    events += [cart_add(at(), pid) for pid in draw(st.lists(st.sampled_from(PRODUCTS),
                                                            max_size=3, unique=True))]
    events += [ev(EventType.ORDER_PLACED, at(), order=Order(
        f"o{n}", 10.0, "EUR", tuple(Product(p, "toys", 5.0, 1) for p in draw(some))))
        for n in range(draw(st.integers(0, 2)))]
    return events, draw(st.permutations(events))


def outcome(history: list[Event]) -> list[tuple[Any, ...]]:
    rules = only(RULES, ABANDONED_CART, ABANDONED_BROWSE, ORDER_CONFIRMATION)
    _, triggers = run(history, rules, until=days(1))
    return sorted((t.trigger_id, t.type, t.key, t.fired_at, t.status,
                   # a cart's lines follow their arrival: the items are compared as a set
                   str(sorted(map(str, t.payload["items"]))) if t.type == ABANDONED_CART
                   else str(t.payload)) for t in triggers)


@settings(max_examples=300, deadline=None)
@given(shuffled_histories())
def test_any_arrival_order_before_anything_is_due_raises_the_same_triggers(
        histories: tuple[list[Event], list[Event]]) -> None:
    in_order, shuffled = histories
    assert outcome(shuffled) == outcome(sorted(in_order, key=lambda e: e.event_time))


# --- live arrival within the allowed lateness ----------------------------------------------------

LATENESS = 5.0


def live(arrivals: list[Event], rules: TriggerRules, until: float) -> list[Trigger]:
    """Events in arrival order as the dataflow takes them: the timers the arrival clock has
    settled fire first, then the event, held while a timer before it is not settled."""
    state, out = None, []
    for event in arrivals:
        settled = event.received_at - LATENESS
        if state is not None:
            state, fired = fire_due(CLIENT, state, settled, rules)
            out.extend(fired)
        state, fired = process_event(CLIENT, state, event, rules, settled=settled)
        out.extend(fired)
    assert state is not None
    state, fired = fire_due(CLIENT, state, T0 + until, rules)
    assert state.held == ()
    return out + fired


def summary(triggers: list[Trigger]) -> list[tuple[Any, ...]]:
    return sorted((t.trigger_id, t.type, t.key, t.fired_at, t.status, t.reason,
                   str(sorted(map(str, t.payload.get("items", [])))))
                  for t in triggers)


@st.composite
def late_within_lateness(draw: st.DrawFn) -> list[Event]:
    """A cart add, then views, cart changes and orders around the moment its reminder comes
    due (an hour later), each arriving up to 4 s after it happened: in arrival order."""
    def around() -> float:
        return HOUR + draw(st.integers(-8, 12))

    events = [cart_add(draw(st.integers(0, 3)), "p1")]
    for n in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["view", "cart", "order"]))
        t = around()
        events.append(view(t, "p2") if kind == "view" else cart_add(t, f"c{n}")
                      if kind == "cart" else order(t, f"o{n}"))
    arrived = [replace(e, received_at=e.event_time + draw(st.integers(0, 4)))
               for e in events]
    return sorted(arrived, key=lambda e: e.received_at)  # stable: ties keep their order


@settings(max_examples=300, deadline=None)
@given(late_within_lateness())
def test_events_late_within_the_allowed_lateness_raise_what_replay_raises(
        arrivals: list[Event]) -> None:
    """An order stamped 3 s before a view, arriving 1 s after it, while the cart reminder
    came due between them: the view used to fire the reminder at once (then the order
    arrived); replay, in event time, never sent it. Held until the reminder's due time
    settles, the view waits for the order, and live and replay agree."""
    rules = only(RULES, ABANDONED_CART, ABANDONED_BROWSE, ORDER_CONFIRMATION)
    replay = sorted(arrivals, key=lambda e: e.event_time)
    _, in_order = run(replay, rules, until=days(1))
    assert summary(live(arrivals, rules, days(1))) == summary(in_order)


def test_a_view_after_the_reminder_came_due_waits_for_the_order_before_it() -> None:
    rules = only(RULES, ABANDONED_CART, ORDER_CONFIRMATION)
    due = cart_add(0, "p1").event_time + HOUR
    ordered = replace(order(HOUR - 1, "o1"), received_at=due + 3)
    viewed = replace(view(HOUR + 2, "p2"), received_at=due + 2)
    triggers = live([cart_add(0, "p1"), viewed, ordered], rules, days(1))
    assert [t.type for t in triggers] == [ORDER_CONFIRMATION]
