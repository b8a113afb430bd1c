"""Follow-ups, the cascade's second half: a marketing send the client did not open is sent
again on a channel not yet tried; an open naming it, or the end of its occasion, stops it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.catalogue import occasion_time
from features.codec import decode_state, encode_state
from features.events import Event, EventType, Product
from features.identity import merge_states
from features.policy import (
    CANCELLED,
    DEFERRED,
    FREQUENCY_CAP,
    HOLDOUT,
    NO_CHANNEL,
    PENDING_LIMIT,
    SENT,
    SUPPRESSED,
    decide,
)
from features.rules import (
    ABANDONED_BROWSE,
    ABANDONED_CART,
    BIRTHDAY,
    DAY,
    LOYALTY_STATUS,
    WELCOME,
    FollowUp,
    Policy,
    TriggerRules,
)
from features.state import (
    MAX_DECIDED,
    MAX_PENDING,
    PendingTrigger,
    evolve,
    follow_up_key,
    mark_of,
)
from features.triggers import Trigger, fire_due, process_event, trigger_id
from tests.core_events import (
    CLIENT,
    HOUR,
    MINUTE,
    T0,
    cancel,
    cart_add,
    ev,
    identify,
    only,
    order,
    run,
    touch,
)
from tests.test_triggers_arrival import live

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

# No quiet hours nor cap (the tests that want them add them), the documented cascade
# (email, mobile push, SMS), abandoned carts followed up a day after the send.
FOLLOW = FollowUp(DAY, frozenset({ABANDONED_CART}), 1)
POLICY = Policy(quiet_hours=None, frequency_cap_per_day=0, follow_up=FOLLOW)
RULES = only(TriggerRules(policy=POLICY), ABANDONED_CART)
ALL = {"email": "ann@example.com", "push_token": "tok", "phone": "+100"}
ADDED = 60.0  # the cart add, seconds after T0
SENT_AT = ADDED + HOUR  # the reminder's send (the rule's 1 h delay)
DUE = SENT_AT + DAY  # its follow-up
KEY = occasion_time(T0 + ADDED)  # the cart episode
FIRST = trigger_id(CLIENT, ABANDONED_CART, KEY)
SECOND = trigger_id(CLIENT, ABANDONED_CART, follow_up_key(KEY, 1))


def with_follow_up(**changes: Any) -> TriggerRules:
    return replace(RULES, policy=replace(POLICY, follow_up=replace(FOLLOW, **changes)))


def opened(t: float, channel: str = "email", trigger: str | None = FIRST,
           kind: EventType = EventType.MESSAGE_OPENED) -> Event:
    properties = {} if trigger is None else {"trigger_id": trigger}
    return ev(kind, t, channel=channel, properties=properties)


def carted(**traits: Any) -> list[Event]:
    return [identify(0, **(traits or ALL)), cart_add(ADDED, "p1")]


def test_a_sent_email_not_opened_is_followed_by_a_push() -> None:
    state, triggers = run(carted(), RULES, until=DUE + HOUR)
    email, push = triggers
    assert (email.trigger_id, email.status, email.channel) == (FIRST, SENT, "email")
    assert (push.trigger_id, push.status, push.channel) == (SECOND, SENT, "mobile_push")
    assert push.key == f"{KEY}#follow_up1" and push.type == ABANDONED_CART
    assert push.payload["follow_up_of"] == FIRST
    assert push.payload["items"] == email.payload["items"]  # the cart as it stands
    assert push.fired_at == email.fired_at == T0 + SENT_AT  # the occasion's due time
    assert push.decided_at == T0 + DUE
    assert "follow_up_of" not in email.payload
    assert state.pending == ()


def test_nothing_waits_before_due_and_the_follow_up_fires_exactly_at_due() -> None:
    state, triggers = run(carted(), RULES, until=DUE - 1)
    assert [t.channel for t in triggers] == ["email"]
    [waiting] = state.pending
    assert (waiting.release_at, waiting.tried, waiting.follows) == (T0 + DUE, ("email",),
                                                                    (FIRST,))
    state, [push] = fire_due(CLIENT, state, T0 + DUE, RULES)
    assert push.trigger_id == SECOND


def test_off_by_default() -> None:
    rules = only(TriggerRules(policy=Policy(quiet_hours=None, frequency_cap_per_day=0)),
                 ABANDONED_CART)
    state, triggers = run(carted(), rules, until=DUE + DAY)
    assert [t.channel for t in triggers] == ["email"]
    assert state.pending == ()


def test_types_not_listed_are_not_followed_up() -> None:
    state, triggers = run(carted(), with_follow_up(types=frozenset({"welcome"})),
                          until=DUE + DAY)
    assert [t.channel for t in triggers] == ["email"]


@pytest.mark.parametrize("kind", [EventType.MESSAGE_OPENED, EventType.MESSAGE_CLICKED])
def test_an_open_or_click_naming_the_trigger_before_due_stops_the_follow_up(
        kind: EventType) -> None:
    state, triggers = run([*carted(), opened(DUE - 1, kind=kind)], RULES, until=DUE + DAY)
    assert [t.trigger_id for t in triggers] == [FIRST]
    assert state.pending == ()
    assert dict(state.channel_engagement) == {"email": 1}  # it counts for the channel too


def test_an_open_naming_another_trigger_or_none_leaves_the_follow_up() -> None:
    events = [*carted(), opened(2 * HOUR, trigger=None), opened(3 * HOUR, trigger="other"),
              opened(4 * HOUR, trigger=42)]  # type: ignore[arg-type]
    state, triggers = run(events, RULES, until=DUE)
    assert [t.channel for t in triggers] == ["email", "mobile_push"]
    assert dict(state.channel_engagement) == {"email": 3}


def test_an_open_at_or_after_due_comes_too_late() -> None:
    _, triggers = run([*carted(), opened(DUE)], RULES)
    assert [t.channel for t in triggers] == ["email", "mobile_push"]


def test_a_purchase_ending_the_cart_stops_the_follow_up_without_a_record() -> None:
    state, triggers = run([*carted(), order(5 * HOUR, "o1")], RULES, until=DUE + DAY)
    assert [(t.type, t.channel) for t in triggers] == [(ABANDONED_CART, "email")]
    assert state.pending == ()


def test_a_purchase_arriving_late_stamped_before_due_stops_it_too() -> None:
    state, triggers = run(carted(), RULES, until=DUE - 10)
    state, after = process_event(CLIENT, state, order(DUE - 20, "o1"), RULES)
    assert after == []
    state, after = fire_due(CLIENT, state, T0 + DUE + DAY, RULES)
    assert after == [] and state.pending == ()  # lapsed at its release, as the original would


def test_no_channel_left_is_suppressed_no_channel() -> None:
    _, [email, follow] = run(carted(email="ann@example.com"), RULES, until=DUE)
    assert email.channel == "email"
    assert (follow.trigger_id, follow.status, follow.reason, follow.channel) == (
        SECOND, SUPPRESSED, NO_CHANNEL, None)


def test_the_preferred_channel_first_among_those_not_yet_tried() -> None:
    engaged = [opened(10, "sms", trigger=None)] * 1 + [
        ev(EventType.MESSAGE_CLICKED, 20 + i, channel="email") for i in range(3)]
    _, triggers = run([*carted(), *engaged], RULES, until=DUE)
    assert [t.channel for t in triggers] == ["email", "sms"]  # sms preferred over the push


def test_chains_go_down_the_cascade_up_to_max() -> None:
    rules = with_follow_up(max=2)
    third = trigger_id(CLIENT, ABANDONED_CART, follow_up_key(KEY, 2))
    state, triggers = run(carted(), rules, until=DUE + 2 * DAY)
    assert [(t.trigger_id, t.channel) for t in triggers] == [
        (FIRST, "email"), (SECOND, "mobile_push"), (third, "sms")]
    assert triggers[2].payload["follow_up_of"] == SECOND
    assert triggers[2].decided_at == T0 + DUE + DAY
    assert state.pending == ()


def test_an_open_of_any_message_of_the_chain_stops_what_is_left_of_it() -> None:
    rules = with_follow_up(max=2)
    _, triggers = run([*carted(), opened(DUE + HOUR, "email", FIRST)], rules,
                      until=DUE + 2 * DAY)
    assert [t.channel for t in triggers] == ["email", "mobile_push"]
    _, triggers = run([*carted(), opened(DUE + HOUR, "mobile_push", SECOND)], rules,
                      until=DUE + 2 * DAY)
    assert [t.channel for t in triggers] == ["email", "mobile_push"]


def test_a_follow_up_waits_for_the_end_of_quiet_hours() -> None:
    quiet = replace(RULES, policy=replace(POLICY, quiet_hours=Policy().quiet_hours))  # 21-09
    # the cart added at 20:00 the day before T0: the reminder, due at 21:00, waits until
    # 09:00; its follow-up is due a day after that send
    key = occasion_time(T0 - 4 * HOUR)
    first = trigger_id(CLIENT, ABANDONED_CART, key)
    second = trigger_id(CLIENT, ABANDONED_CART, follow_up_key(key, 1))
    _, triggers = run([identify(-5 * HOUR, **ALL), cart_add(-4 * HOUR, "p1")], quiet,
                      until=DAY + 9 * HOUR)
    assert [(t.trigger_id, t.status, t.channel) for t in triggers] == [
        (first, DEFERRED, "email"), (first, SENT, "email"), (second, SENT, "mobile_push")]
    assert triggers[2].decided_at == T0 + DAY + 9 * HOUR


def test_a_follow_up_due_in_quiet_hours_is_deferred_and_an_open_meanwhile_cancels_it(
        ) -> None:
    # sent at 20:00; followed up 26 h later, at 22:00 the next day: deferred until 09:00
    rules = replace(RULES, policy=replace(POLICY, quiet_hours=Policy().quiet_hours,
                                          follow_up=replace(FOLLOW, after=DAY + 2 * HOUR)))
    key = occasion_time(T0 + 19 * HOUR)
    first = trigger_id(CLIENT, ABANDONED_CART, key)
    second = trigger_id(CLIENT, ABANDONED_CART, follow_up_key(key, 1))
    events = [identify(0, **ALL), cart_add(19 * HOUR, "p1")]
    state, triggers = run(events, rules, until=DAY + 23 * HOUR)
    assert [(t.trigger_id, t.status, t.reason) for t in triggers] == [
        (first, SENT, None), (second, DEFERRED, "quiet_hours")]
    assert triggers[1].until == T0 + 2 * DAY + 9 * HOUR
    assert triggers[1].payload["follow_up_of"] == first
    kept = state
    state, caught = process_event(CLIENT, state, opened(2 * DAY + 8 * HOUR, trigger=first),
                                  rules)
    assert [(t.trigger_id, t.status, t.reason, t.decided_at) for t in caught] == [
        (second, SUPPRESSED, CANCELLED, T0 + 2 * DAY + 9 * HOUR)]  # as of the window's end
    assert state.pending == ()
    assert fire_due(CLIENT, state, T0 + 3 * DAY, rules)[1] == []
    # without the open: sent at 09:00 on the push, under the same id as its deferral
    _, [push] = fire_due(CLIENT, kept, T0 + 3 * DAY, rules)
    assert (push.trigger_id, push.status, push.channel, push.decided_at) == (
        second, SENT, "mobile_push", T0 + 2 * DAY + 9 * HOUR)


def test_the_cap_applies_to_a_follow_up() -> None:
    rules = replace(with_follow_up(after=HOUR),
                    policy=replace(POLICY, frequency_cap_per_day=1,
                                   follow_up=replace(FOLLOW, after=HOUR)))
    _, [email, follow] = run(carted(), rules, until=DUE)
    assert email.status == SENT
    assert (follow.trigger_id, follow.status, follow.reason) == (SECOND, SUPPRESSED,
                                                                FREQUENCY_CAP)


def test_the_hold_out_is_not_drawn_again_for_a_follow_up() -> None:
    rules = replace(RULES, policy=replace(POLICY, holdout_percent=100.0))
    state = process_event(CLIENT, None, identify(0, **ALL), rules)[0]
    assert decide(CLIENT, state, ABANDONED_CART, T0, rules).status == HOLDOUT
    follow = decide(CLIENT, state, ABANDONED_CART, T0, rules, tried=("email",))
    assert (follow.status, follow.channel) == (SENT, "mobile_push")


def test_no_room_to_wait_is_recorded_pending_limit() -> None:
    state, _ = run(carted(), RULES, until=SENT_AT - 1)
    fillers = tuple(PendingTrigger(T0 + DAY * 9 + i, ABANDONED_CART, f"x{i}", T0, {})
                    for i in range(MAX_PENDING))  # higher priority: none makes room
    state, triggers = fire_due(CLIENT, evolve(state, pending=fillers), T0 + SENT_AT, RULES)
    assert [(t.trigger_id, t.status, t.reason) for t in triggers] == [
        (FIRST, SENT, None), (SECOND, SUPPRESSED, PENDING_LIMIT)]
    assert state.pending == fillers


def test_a_follow_up_waiting_survives_the_state_codec() -> None:
    state, _ = run(carted(), RULES, until=SENT_AT)
    assert state.pending[0].follows == (FIRST,)
    decoded = decode_state(encode_state(state))
    assert decoded == state
    assert fire_due(CLIENT, decoded, T0 + DUE, RULES)[1][0].trigger_id == SECOND


def test_a_merge_keeps_a_follow_up_beside_a_trigger_of_its_occasion_waiting() -> None:
    state, _ = run(carted(), RULES, until=SENT_AT)
    [follow] = state.pending
    waiting = PendingTrigger(T0 + 2 * HOUR, ABANDONED_CART, KEY, T0 + SENT_AT, {}, True)
    anonymous = evolve(state, pending=(waiting,))
    merged = merge_states(state, anonymous, "anon:v1", T0 + 2 * HOUR)
    assert merged.pending == (waiting, follow)


def _outcome(triggers: list[Trigger]) -> list[tuple[str, str, str | None, float | None]]:
    return [(t.trigger_id, t.status, t.channel, t.decided_at) for t in triggers]


@settings(max_examples=60, deadline=None)
@given(opened_after=st.floats(0, 3 * DAY), ticks=st.lists(st.floats(0, 4 * DAY), max_size=6),
       chain=st.integers(1, 2))
def test_sent_again_exactly_when_no_open_names_the_chain_before_due_whatever_the_ticks(
        opened_after: float, ticks: list[float], chain: int) -> None:
    """Whatever the clock's ticks between events (live) or none (replay), the outcome is
    the same, and each follow-up goes out exactly when no open of the chain came before."""
    rules = with_follow_up(max=chain)
    events = [*carted(), opened(SENT_AT + opened_after, "email", FIRST)]
    replayed = _outcome(run(events, rules, until=4 * DAY)[1])
    state = None
    live: list[Trigger] = []
    pending_ticks = sorted(ticks)
    for event in events:
        while state is not None and pending_ticks and T0 + pending_ticks[0] <= event.event_time:
            state, fired = fire_due(CLIENT, state, T0 + pending_ticks.pop(0), rules)
            live += fired
        state, fired = process_event(CLIENT, state, event, rules)
        live += fired
    assert state is not None
    live += fire_due(CLIENT, state, T0 + 4 * DAY, rules)[1]
    assert _outcome(live) == replayed
    sent = [t.channel for t in live if t.status == SENT]
    dues = [SENT_AT + DAY * n for n in range(1, chain + 1)]
    expected = ["email", "mobile_push", "sms"][:1 + sum(SENT_AT + opened_after >= d
                                                        for d in dues)]
    assert sent == expected
    assert len({t.trigger_id for t in live}) == len(live)


def test_a_late_order_leaves_the_lines_after_it_reminded_while_a_follow_up_waits() -> None:
    """A waiting follow-up is no waiting reminder: the reminder went out and covered the
    lines added before it, so an order arriving late, stamped between two adds, re-arms no
    reminder for the line left; the follow-up, whose episode the order ended, lapses."""
    events = [identify(0, **ALL), cart_add(ADDED, "p1"), cart_add(1800, "p2")]
    state, [email] = run(events, RULES, until=1800 + HOUR)
    assert email.channel == "email" and len(state.pending) == 1
    _, after = run([order(900, "o1")], RULES, state=state, until=DUE + 2 * DAY)
    assert [t.type for t in after if t.type == ABANDONED_CART] == []


def test_a_manual_touch_of_an_occasion_sent_is_not_recorded_while_its_follow_up_waits(
        ) -> None:
    rules = replace(only(TriggerRules(policy=POLICY), WELCOME),
                    policy=replace(POLICY, follow_up=replace(FOLLOW, types=frozenset({WELCOME}))))
    state, [welcome] = run([ev(EventType.REGISTERED, 0, traits=ALL)], rules)
    assert welcome.channel == "email" and state.pending[0].type == WELCOME
    state = evolve(state, decided=tuple(range(MAX_DECIDED)))  # many decisions since
    _, touched = run([touch(HOUR, WELCOME, "")], rules, state=state)
    assert touched == []  # the rule's mark shows it decided, though its follow-up waits


def test_a_tier_follow_up_lapsing_does_not_give_the_tier_back_to_announce() -> None:
    """The announcement went out; its follow-up lapses when an order returned takes the
    tier away. Reaching the tier again is no first time: not announced again."""
    rules = replace(only(TriggerRules(policy=POLICY), LOYALTY_STATUS),
                    policy=replace(POLICY, follow_up=replace(
                        FOLLOW, types=frozenset({LOYALTY_STATUS}))))
    orders = [order(HOUR * n, f"o{n}") for n in (1, 2, 3)]
    state, [silver] = run([identify(0, **ALL), *orders, cancel(5 * HOUR, "o3")], rules,
                          until=2 * DAY)
    assert (silver.key, silver.status, silver.channel) == ("silver", SENT, "email")
    assert state.pending == () and state.loyalty_tier == ""
    assert mark_of(state, LOYALTY_STATUS) == 1  # the rank announced
    state = evolve(state, decided=tuple(range(MAX_DECIDED)))  # many decisions since
    _, later = run([order(3 * DAY, "o4")], rules, state=state, until=5 * DAY)
    assert [t for t in later if t.type == LOYALTY_STATUS] == []


@st.composite
def around_the_follow_up(draw: st.DrawFn) -> list[Event]:
    """The cart reminder sent an hour after the add, its follow-up due 30 min later; then
    opens (naming the reminder or not), cart adds and orders within seconds of that due
    time, each arriving up to 4 s after it happened: in arrival order."""
    def around() -> float:
        return ADDED + HOUR + 30 * MINUTE + draw(st.integers(-8, 12))

    events = carted()
    for n in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["open", "blind", "cart", "order"]))
        t = around()
        events.append(opened(t) if kind == "open" else opened(t, trigger=None)
                      if kind == "blind" else cart_add(t, f"c{n}") if kind == "cart"
                      else order(t, f"o{n}"))
    arrived = [replace(e, received_at=e.event_time + draw(st.integers(0, 4))) for e in events]
    return sorted(arrived, key=lambda e: e.received_at)  # stable: ties keep their order


@settings(max_examples=200, deadline=None)
@given(around_the_follow_up())
def test_events_late_within_the_allowed_lateness_follow_up_as_replay_does(
        arrivals: list[Event]) -> None:
    """Live, an open or an order stamped just before the follow-up came due may arrive just
    after: held until that due time settles, it stops the follow-up as it does in replay."""
    rules = with_follow_up(after=30 * MINUTE)
    _, replayed = run(sorted(arrivals, key=lambda e: e.event_time), rules, until=DAY)
    assert _decisions(live(arrivals, rules, DAY)) == _decisions(replayed)


def _decisions(triggers: list[Trigger]) -> list[tuple[Any, ...]]:
    return sorted((t.trigger_id, t.key, t.status, t.reason, t.channel, t.decided_at,
                   t.payload.get("follow_up_of")) for t in triggers)


def test_follow_ups_waiting_stop_when_their_type_is_taken_off_the_list_or_the_chain_cut(
        ) -> None:
    state, _ = run(carted(), with_follow_up(max=2), until=DUE)
    assert state.pending[0].follows == (FIRST, SECOND)  # the second follow-up waits
    assert fire_due(CLIENT, state, T0 + DUE + DAY, with_follow_up(types=frozenset()))[1] == []
    assert fire_due(CLIENT, state, T0 + DUE + DAY, with_follow_up(max=1))[1] == []
    [sms] = fire_due(CLIENT, state, T0 + DUE + DAY, with_follow_up(max=2))[1]
    assert sms.channel == "sms"


def test_an_open_and_a_click_arriving_out_of_order_cancel_a_deferred_follow_up_as_replay_does(
        ) -> None:
    """A follow-up waits for the end of quiet hours; the client opens the email and clicks
    it two seconds later, and the click's webhook arrives first (within the allowed
    lateness). Whichever of them arrives first, the follow-up's final record is the one
    replay makes."""
    rules = replace(RULES, policy=replace(POLICY, quiet_hours=Policy().quiet_hours,
                                          follow_up=replace(FOLLOW, after=DAY + 2 * HOUR)))
    key = occasion_time(T0 + 19 * HOUR)
    first = trigger_id(CLIENT, ABANDONED_CART, key)
    events = [identify(0, **ALL), cart_add(19 * HOUR, "p1")]
    morning = 2 * DAY + 8 * HOUR  # 08:00, before the window ends at 09:00
    clicked = replace(opened(morning + 2, trigger=first, kind=EventType.MESSAGE_CLICKED),
                      received_at=T0 + morning + 3)
    opened_first = replace(opened(morning, trigger=first), received_at=T0 + morning + 4)
    arrivals = [*events, clicked, opened_first]
    _, replayed = run(sorted(arrivals, key=lambda e: e.event_time), rules, until=3 * DAY)
    assert [(t.status, t.reason) for t in replayed if t.key.endswith("#follow_up1")] == [
        (DEFERRED, "quiet_hours"), (SUPPRESSED, CANCELLED)]
    assert _decisions(live(arrivals, rules, 3 * DAY)) == _decisions(replayed)


def test_a_touch_of_a_deferred_follow_up_an_open_cancelled_is_not_a_second_record() -> None:
    """The follow-up waited for the morning and an open cancelled it (its final record);
    a manager then records a touch of it, its key taken from the console: the occasion is
    decided, so the touch is not recorded (under the same id it would be a second final
    record, which the ledger drops, while the state still counted it against the cap)."""
    rules = replace(RULES, policy=replace(POLICY, quiet_hours=Policy().quiet_hours,
                                          follow_up=replace(FOLLOW, after=DAY + 2 * HOUR)))
    key = occasion_time(T0 + 19 * HOUR)
    first = trigger_id(CLIENT, ABANDONED_CART, key)
    state, _ = run([identify(0, **ALL), cart_add(19 * HOUR, "p1")], rules, until=DAY + 23 * HOUR)
    state, [cancelled] = process_event(CLIENT, state, opened(2 * DAY + 8 * HOUR, trigger=first),
                                       rules)
    assert (cancelled.status, cancelled.reason) == (SUPPRESSED, CANCELLED)
    sends = state.sends
    state, touched = process_event(CLIENT, state, touch(2 * DAY + 10 * HOUR, ABANDONED_CART,
                                                        key=cancelled.key), rules)
    assert touched == []
    assert state.sends == sends


def test_touches_of_follow_ups_ended_without_a_send_are_not_second_records() -> None:
    """A follow-up's final record, however it ends (cancelled at the end of its window
    because the cart was bought meanwhile; no room to wait), is remembered: it cannot come
    back, and a manager's touch of it would be a second final record under its id."""
    rules = replace(RULES, policy=replace(POLICY, quiet_hours=Policy().quiet_hours,
                                          follow_up=replace(FOLLOW, after=DAY + 2 * HOUR)))
    events = [identify(0, **ALL), cart_add(19 * HOUR, "p1"), order(2 * DAY + 8 * HOUR, "o1")]
    state, triggers = run(events, rules, until=3 * DAY)
    cancelled = triggers[-1]
    assert (cancelled.status, cancelled.reason) == (SUPPRESSED, CANCELLED)
    assert cancelled.key.endswith("#follow_up1")
    _, touched = process_event(CLIENT, state, touch(3 * DAY, ABANDONED_CART, key=cancelled.key),
                               rules)
    assert touched == []

    state, _ = run(carted(), RULES, until=SENT_AT - 1)
    fillers = tuple(PendingTrigger(T0 + DAY * 9 + i, ABANDONED_CART, f"x{i}", T0, {})
                    for i in range(MAX_PENDING))  # no room for the follow-up
    state, triggers = fire_due(CLIENT, evolve(state, pending=fillers), T0 + SENT_AT, RULES)
    assert triggers[-1].reason == PENDING_LIMIT
    _, touched = process_event(CLIENT, state, touch(SENT_AT + HOUR, ABANDONED_CART,
                                                    key=triggers[-1].key), RULES)
    assert touched == []

    # made room for: an order confirmation configured to wait takes the follow-up's place
    rules = replace(RULES, order_confirmation=replace(RULES.order_confirmation, enabled=True,
                                                      delay=10 * MINUTE))
    state, _ = run(carted(), rules, until=SENT_AT)
    fillers = tuple(PendingTrigger(T0 + SENT_AT + HOUR + i, ABANDONED_CART, f"x{i}", T0, {})
                    for i in range(MAX_PENDING - 1))  # due before it: the follow-up goes
    state = evolve(state, pending=(*fillers, *state.pending))
    state, triggers = process_event(CLIENT, state, order(SENT_AT + 10, "o1"), rules)
    [evicted] = [t for t in triggers if t.reason == PENDING_LIMIT]
    assert evicted.trigger_id == SECOND
    _, touched = process_event(CLIENT, state, touch(SENT_AT + HOUR, ABANDONED_CART,
                                                    key=evicted.key), rules)
    assert [t for t in touched if t.source == "manual"] == []


def test_a_touch_of_a_once_only_follow_up_decided_long_ago_is_not_a_second_record() -> None:
    """As for the occasion itself (test_policy), a follow-up of a once-only rule outlives the
    16 decisions `state.decided` keeps: the welcome's follow-up went out, then 20 browse
    reminders, then a manager touches it by the key its record shows. It had the same id
    as the automatic one and was recorded again."""
    rules = replace(only(TriggerRules(policy=POLICY), WELCOME, ABANDONED_BROWSE),
                    policy=replace(POLICY, follow_up=replace(FOLLOW, types=frozenset({WELCOME}))))
    events = [ev(EventType.REGISTERED, 0, traits=ALL)]
    events += [ev(EventType.PRODUCT_VIEW, DAY * n + 12 * HOUR, products=(Product(f"p{n}"),))
               for n in range(1, 21)]
    state, triggers = run(events, rules, until=21 * DAY)
    welcomes = [t for t in triggers if t.type == WELCOME]
    assert [(t.key, t.status) for t in welcomes] == [("", SENT), ("#follow_up1", SENT)]
    _, touched = run([touch(30 * DAY, WELCOME, "#follow_up1")], rules, state=state)
    assert touched == []
    # a follow-up of an occasion the rules never decided is still a touch of its own
    _, touched = run([touch(30 * DAY, BIRTHDAY, "1999#follow_up1")], rules, state=state)
    assert [(t.key, t.source) for t in touched] == [("1999#follow_up1", "manual")]
