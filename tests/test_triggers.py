"""Trigger rules: immediate triggers, timers (fire, cancel, re-arm), ids, disabled rules.

The policy is opened up here (no quiet hours, no cap, a channel that needs no contact), so
that each rule is seen alone; tests/test_policy.py covers the policy."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest

from features.events import Event, EventType, Order, Product, format_time
from features.rules import Channel, Policy
from features.state import ClientState, apply_event
from features.triggers import (
    ABANDONED_BROWSE,
    ABANDONED_CART,
    ORDER_CANCELLATION,
    ORDER_CONFIRMATION,
    TRIGGER_TYPES,
    WELCOME,
    Trigger,
    TriggerRule,
    TriggerRules,
    due_timers,
    fire_due,
    next_due,
    process_event,
    trigger_id,
)
from tests.core_events import next_trigger_due, trigger_timers

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

T0 = 1_700_000_000.0
MINUTE = 60.0
HOUR = 3600.0
OPEN = Policy(quiet_hours=None, frequency_cap_per_day=0, channels=(Channel("crm"),))
RULES = TriggerRules(policy=OPEN)  # abandoned cart after 1h, abandoned browse after 2h
OFF = TriggerRule(enabled=False)


def sent(trigger_id_: str, kind: str, client: str, at: float, payload: dict[str, Any],
         key: str = "") -> Trigger:
    return Trigger(trigger_id_, kind, client, at, payload, status="sent", channel="crm", key=key)

_ids = itertools.count()


def ev(event_type: EventType, t: float, *, client: str = "c1", event_id: str | None = None,
       **fields: Any) -> Event:
    return Event(event_id=event_id or f"e{next(_ids)}", type=event_type, event_time=T0 + t,
                 received_at=T0 + t, client_id=client, **fields)


def cart_add(t: float, *pids: str, client: str = "c1") -> Event:
    return ev(EventType.CART_ADD, t, client=client,
              products=tuple(Product(pid, "toys", 10.0, 1) for pid in pids))


def cart_remove(t: float, *pids: str) -> Event:
    return ev(EventType.CART_REMOVE, t, products=tuple(Product(pid, None, 0.0, 1) for pid in pids))


def view(t: float, *pids: str, client: str = "c1") -> Event:
    return ev(EventType.PRODUCT_VIEW, t, client=client, products=tuple(Product(p) for p in pids))


def order(t: float, order_id: str, total: float = 20.0, client: str = "c1", **kw: Any) -> Event:
    items = (Product("p1", "toys", 10.0, 2),)
    return ev(EventType.ORDER_PLACED, t, client=client,
              order=Order(order_id, total, "EUR", items), **kw)


def visit(t: float, client: str = "c1") -> Event:
    return ev(EventType.VISIT, t, client=client)


def run(events: Iterable[Event], rules: TriggerRules = RULES, client: str = "c1",
        state: ClientState | None = None) -> tuple[ClientState, list[Trigger]]:
    """Process events in arrival order; all triggers, in the order they came out."""
    out: list[Trigger] = []
    for event in events:
        state, fired = process_event(client, state, event, rules)
        out.extend(fired)
    assert state is not None
    return state, out


def kinds(triggers: list[Trigger]) -> list[str]:
    return [t.type for t in triggers]


def timer_kinds(state: ClientState, rules: TriggerRules = RULES) -> list[str]:
    return [kind for _, kind in due_timers(state, rules)]


# --- welcome --------------------------------------------------------------------------------------

def test_welcome_once_per_client() -> None:
    reg = ev(EventType.REGISTERED, 10, traits={"email": "a@x"})
    state, triggers = run([reg])
    assert triggers == [sent(trigger_id("c1", WELCOME, ""), WELCOME, "c1", T0 + 10,
                             {"traits": {"email": "a@x"}})]
    state, again = run([ev(EventType.REGISTERED, 20)], state=state)
    assert again == []


def test_welcome_for_a_known_client_registering_later() -> None:
    _, triggers = run([visit(0), cart_add(5, "p1"), ev(EventType.REGISTERED, 10)])
    assert kinds(triggers) == [WELCOME]
    assert triggers[0].fired_at == T0 + 10


def test_no_welcome_without_registration() -> None:
    _, triggers = run([visit(0), ev(EventType.IDENTIFY, 1, traits={"email": "a@x"})])
    assert triggers == []


# --- order confirmation ---------------------------------------------------------------------------

def test_order_confirmation_with_payload() -> None:
    _, triggers = run([order(100, "o1", 20.004)])
    assert len(triggers) == 1
    confirmation = triggers[0]
    assert confirmation.type == ORDER_CONFIRMATION
    assert confirmation.client_id == "c1"
    assert confirmation.fired_at == T0 + 100
    assert confirmation.payload == {
        "order_id": "o1", "total": 20.0, "currency": "EUR",
        "items": [{"product_id": "p1", "quantity": 2, "price": 10.0}],
    }
    assert confirmation.trigger_id == trigger_id("c1", ORDER_CONFIRMATION, "o1")


def test_order_confirmation_once_per_order_id() -> None:
    state, triggers = run([order(100, "o1"), order(200, "o1"), order(300, "o2")])
    assert [t.payload["order_id"] for t in triggers] == ["o1", "o2"]
    assert triggers[0].trigger_id != triggers[1].trigger_id
    assert state.orders_count == 2


def test_refund_triggers_nothing_and_cancellation_is_confirmed_once() -> None:
    state, triggers = run([order(100, "o1")])
    assert kinds(triggers) == [ORDER_CONFIRMATION]
    state, more = run([ev(EventType.ORDER_REFUNDED, 200, order=Order("o1", 5.0)),
                       ev(EventType.ORDER_CANCELLED, 300, order=Order("o1", -1.0))], state=state)
    assert kinds(more) == [ORDER_CANCELLATION]
    assert more[0].trigger_id == trigger_id("c1", ORDER_CANCELLATION, "o1")
    assert more[0].payload["returned"] == 20.0  # the refund's 5, then the rest
    assert state.orders_count == 0
    _, again = run([ev(EventType.ORDER_CANCELLED, 400, order=Order("o1", -1.0)),
                    ev(EventType.ORDER_CANCELLED, 500, order=Order("o-unknown", -1.0))],
                   state=state)
    assert again == []


# --- abandoned cart -------------------------------------------------------------------------------

def test_abandoned_cart_fires_at_due_time() -> None:
    state, triggers = run([cart_add(0, "p1", "p2")])
    assert triggers == []
    assert due_timers(state, RULES) == [(T0 + HOUR, ABANDONED_CART)]
    assert next_due(state, RULES) == T0 + HOUR

    early, fired = fire_due("c1", state, T0 + HOUR - 0.001, RULES)
    assert fired == []
    assert early is state

    after, fired = fire_due("c1", state, T0 + 5 * HOUR, RULES)
    assert len(fired) == 1
    reminder = fired[0]
    assert reminder.type == ABANDONED_CART
    assert reminder.fired_at == T0 + HOUR  # the due time, not the clock
    assert reminder.payload == {
        "items": [{"product_id": "p1", "quantity": 1, "price": 10.0, "category": "toys"},
                  {"product_id": "p2", "quantity": 1, "price": 10.0, "category": "toys"}],
        "cart_value": 20.0,
        "cart_updated_at": format_time(T0),
    }
    assert after.cart_reminded
    assert next_trigger_due(after, RULES) is None
    assert fire_due("c1", after, T0 + 100 * HOUR, RULES)[1] == []


def test_abandoned_cart_fires_exactly_at_due() -> None:
    state, _ = run([cart_add(0, "p1")])
    _, fired = fire_due("c1", state, T0 + HOUR, RULES)
    assert kinds(fired) == [ABANDONED_CART]


def test_abandoned_cart_cancelled_by_order_before_due() -> None:
    state, triggers = run([cart_add(0, "p1"), order(30 * MINUTE, "o1")])
    assert kinds(triggers) == [ORDER_CONFIRMATION]
    assert ABANDONED_CART not in timer_kinds(state)
    assert fire_due("c1", state, T0 + 10 * HOUR, RULES)[1] == []


def test_abandoned_cart_cancelled_by_emptying_the_cart() -> None:
    state, _ = run([cart_add(0, "p1"), cart_remove(10 * MINUTE, "p1")])
    assert fire_due("c1", state, T0 + 10 * HOUR, RULES)[1] == []


def test_abandoned_cart_rearmed_by_cart_activity() -> None:
    state, triggers = run([cart_add(0, "p1"), cart_add(40 * MINUTE, "p2")])
    assert triggers == []
    assert next_due(state, RULES) == T0 + 100 * MINUTE
    assert fire_due("c1", state, T0 + HOUR, RULES)[1] == []
    _, fired = fire_due("c1", state, T0 + 100 * MINUTE, RULES)
    assert kinds(fired) == [ABANDONED_CART]
    assert fired[0].fired_at == T0 + 100 * MINUTE
    # removing an item is activity too
    state, _ = run([cart_add(0, "p1", "p2"), cart_remove(50 * MINUTE, "p2")])
    assert next_due(state, RULES) == T0 + 110 * MINUTE


def test_abandoned_cart_once_per_episode() -> None:
    state, triggers = run([cart_add(0, "p1", "p2"), visit(2 * HOUR),
                           cart_remove(3 * HOUR, "p2"), visit(10 * HOUR)])
    assert kinds(triggers) == [ABANDONED_CART]
    assert state.cart_reminded
    assert next_trigger_due(state, RULES) is None


def test_a_cart_add_after_the_reminder_re_arms_it_as_a_new_episode() -> None:
    state, triggers = run([cart_add(0, "p1"), visit(2 * HOUR), cart_add(3 * HOUR, "p2"),
                           visit(10 * HOUR)])
    assert kinds(triggers) == [ABANDONED_CART, ABANDONED_CART]
    assert [t.fired_at for t in triggers] == [T0 + HOUR, T0 + 4 * HOUR]
    assert triggers[0].trigger_id != triggers[1].trigger_id
    assert {i["product_id"] for i in triggers[1].payload["items"]} == {"p1", "p2"}


def test_new_episode_after_emptied_cart_fires_again_with_new_id() -> None:
    _, triggers = run([cart_add(0, "p1"), visit(2 * HOUR), cart_remove(3 * HOUR, "p1"),
                       cart_add(4 * HOUR, "p3"), visit(6 * HOUR)])
    assert kinds(triggers) == [ABANDONED_CART, ABANDONED_CART]
    assert [t.fired_at for t in triggers] == [T0 + HOUR, T0 + 5 * HOUR]
    assert triggers[0].trigger_id != triggers[1].trigger_id
    assert triggers[1].payload["items"][0]["product_id"] == "p3"


def test_new_episode_after_order_fires_again_with_new_id() -> None:
    _, triggers = run([cart_add(0, "p1"), visit(2 * HOUR), order(3 * HOUR, "o1"),
                       cart_add(4 * HOUR, "p3"), visit(6 * HOUR)])
    assert kinds(triggers) == [ABANDONED_CART, ORDER_CONFIRMATION, ABANDONED_CART]
    assert triggers[0].trigger_id != triggers[2].trigger_id


def test_event_after_due_time_fires_the_timer_first() -> None:
    state, triggers = run([cart_add(0, "p1"), order(2 * HOUR, "o1")])
    assert kinds(triggers) == [ABANDONED_CART, ORDER_CONFIRMATION]
    assert triggers[0].fired_at == T0 + HOUR
    assert triggers[1].fired_at == T0 + 2 * HOUR
    assert triggers[0].payload["items"][0]["product_id"] == "p1"  # the cart before the order
    assert state.cart == ()
    assert not state.cart_reminded


def test_late_event_does_not_fire_timers_due_after_it() -> None:
    state, _ = run([cart_add(0, "p1"), visit(30 * MINUTE)])
    state, fired = run([visit(-HOUR)], state=state)
    assert fired == []
    assert next_due(state, RULES) == T0 + HOUR


def test_checkout_rearms_the_cart_timer() -> None:
    state, _ = run([cart_add(0, "p1"), ev(EventType.CHECKOUT_STARTED, 45 * MINUTE)])
    assert next_due(state, RULES) == T0 + 105 * MINUTE


def test_abandoned_cart_delay_from_rules() -> None:
    rules = TriggerRules(abandoned_cart=TriggerRule(delay=20.0))
    _, triggers = run([cart_add(0, "p1"), visit(21)], rules)
    assert kinds(triggers) == [ABANDONED_CART]
    assert triggers[0].fired_at == T0 + 20


# --- abandoned browse -----------------------------------------------------------------------------

def test_abandoned_browse_fires_after_last_view() -> None:
    state, _ = run([view(0, "p1"), view(30 * MINUTE, "p2"), view(40 * MINUTE, "p1")])
    assert due_timers(state, RULES) == [(T0 + 160 * MINUTE, ABANDONED_BROWSE)]
    assert fire_due("c1", state, T0 + 159 * MINUTE, RULES)[1] == []
    after, fired = fire_due("c1", state, T0 + 10 * HOUR, RULES)
    assert len(fired) == 1
    browse = fired[0]
    assert browse.type == ABANDONED_BROWSE
    assert browse.fired_at == T0 + 160 * MINUTE
    assert browse.payload == {"products": ["p1", "p2"], "last_view_at": format_time(
        T0 + 40 * MINUTE)}
    assert after.browse_since is None
    assert next_trigger_due(after, RULES) is None


def test_abandoned_browse_names_only_this_episode() -> None:
    _, triggers = run([view(0, "p1"), cart_add(10 * MINUTE, "p1"), view(20 * MINUTE, "p2"),
                       order(30 * MINUTE, "o1"), view(40 * MINUTE, "p3"), view(50 * MINUTE, "p4"),
                       visit(10 * HOUR)])
    browse = [t for t in triggers if t.type == ABANDONED_BROWSE]
    assert len(browse) == 1
    assert browse[0].payload["products"] == ["p4", "p3"]
    assert browse[0].fired_at == T0 + 170 * MINUTE


def test_abandoned_browse_cancelled_by_cart_add() -> None:
    state, _ = run([view(0, "p1"), cart_add(10 * MINUTE, "p1")])
    assert [kind for _, kind in due_timers(state, RULES)] == [ABANDONED_CART]
    _, triggers = run([visit(10 * HOUR)], state=state)
    assert kinds(triggers) == [ABANDONED_CART]


def test_abandoned_browse_cancelled_by_order() -> None:
    state, triggers = run([view(0, "p1"), order(10 * MINUTE, "o1"), visit(10 * HOUR)])
    assert kinds(triggers) == [ORDER_CONFIRMATION]
    assert ABANDONED_BROWSE not in timer_kinds(state)


def test_abandoned_browse_new_episode_new_id() -> None:
    _, triggers = run([view(0, "p1"), visit(3 * HOUR), view(4 * HOUR, "p2"), visit(7 * HOUR)])
    assert kinds(triggers) == [ABANDONED_BROWSE, ABANDONED_BROWSE]
    assert triggers[0].trigger_id != triggers[1].trigger_id
    assert triggers[1].payload["products"] == ["p2"]


def test_late_view_after_browse_reminder_does_not_remind_again() -> None:
    state, triggers = run([view(0, "p1"), view(20 * MINUTE, "p2"), visit(3 * HOUR)])
    assert kinds(triggers) == [ABANDONED_BROWSE]
    # views arriving late, not newer than the last one reminded of, belong to that episode
    _, again = run([view(10 * MINUTE, "p3"), view(20 * MINUTE, "p2"), visit(6 * HOUR)],
                   state=state)
    assert again == []
    # a late view from before the reminder fired (due at 2h20m) does not remind again
    _, late = run([view(30 * MINUTE, "p4"), visit(6 * HOUR)], state=state)
    assert late == []
    # a view after the reminder is a new episode
    _, later = run([view(3 * HOUR, "p4"), visit(6 * HOUR)], state=state)
    assert kinds(later) == [ABANDONED_BROWSE]
    assert later[0].trigger_id != triggers[0].trigger_id
    assert later[0].payload["products"] == ["p4"]


def test_both_timers_fire_in_due_order() -> None:
    rules = TriggerRules(abandoned_cart=TriggerRule(delay=3 * HOUR),
                         abandoned_browse=TriggerRule(delay=HOUR))
    # the view comes after the cart add, so it opens a browse episode of its own
    state, _ = run([cart_add(0, "p1"), view(10 * MINUTE, "p2")], rules)
    assert due_timers(state, rules) == [(T0 + 70 * MINUTE, ABANDONED_BROWSE),
                                        (T0 + 3 * HOUR, ABANDONED_CART)]
    _, fired = fire_due("c1", state, T0 + 10 * HOUR, rules)
    assert kinds(fired) == [ABANDONED_BROWSE, ABANDONED_CART]
    assert [t.fired_at for t in fired] == [T0 + 70 * MINUTE, T0 + 3 * HOUR]


# --- disabled rules -------------------------------------------------------------------------------

SCENARIO = [ev(EventType.REGISTERED, 0), view(1, "p1"), cart_add(2, "p1"), visit(5 * HOUR),
            view(6 * HOUR, "p2"), visit(10 * HOUR), order(11 * HOUR, "o1"),
            cart_add(12 * HOUR, "p3"), visit(20 * HOUR)]


def test_scenario_with_all_rules_on() -> None:
    _, triggers = run(SCENARIO)
    assert kinds(triggers) == [WELCOME, ABANDONED_CART, ABANDONED_BROWSE, ORDER_CONFIRMATION,
                               ABANDONED_CART]


def test_disabled_rules_emit_nothing() -> None:
    rules = replace(RULES, **{kind: replace(RULES.rule(kind), enabled=False)
                              for kind in TRIGGER_TYPES})
    state, triggers = run(SCENARIO, rules)
    assert triggers == []
    assert trigger_timers(state, rules) == []
    assert next_trigger_due(state, rules) is None
    assert state.orders_count == 1  # the state is still kept
    assert [line.product_id for line in state.cart] == ["p3"]


def test_each_rule_disabled_alone() -> None:
    on = kinds(run(SCENARIO)[1])
    for name, kind in [("welcome", WELCOME), ("order_confirmation", ORDER_CONFIRMATION),
                       ("abandoned_cart", ABANDONED_CART),
                       ("abandoned_browse", ABANDONED_BROWSE)]:
        rules = replace(RULES, **{name: OFF})
        assert kinds(run(SCENARIO, rules)[1]) == [k for k in on if k != kind], name


def test_disabled_rule_state_is_the_same() -> None:
    """The client's facts do not depend on which rules are on; only the record of what was
    decided (sends for the cap, recently decided occasions, the marks of rules that fired)
    does."""
    rules = replace(RULES, welcome=OFF, order_confirmation=OFF)

    def facts(state: ClientState) -> ClientState:
        return replace(state, sends=(), decided=(), marks=())

    assert facts(run(SCENARIO, rules)[0]) == facts(run(SCENARIO)[0])
    assert run(SCENARIO, rules)[0].sends != run(SCENARIO)[0].sends


# --- ids and duplicates ---------------------------------------------------------------------------

def test_trigger_ids_are_deterministic() -> None:
    first = run(SCENARIO)[1]
    second = run(SCENARIO)[1]
    assert [t.trigger_id for t in first] == [t.trigger_id for t in second]
    assert len({t.trigger_id for t in first}) == len(first)


def test_trigger_ids_differ_across_clients() -> None:
    other = [Event(e.event_id, e.type, e.event_time, e.received_at, client_id="c2",
                   products=e.products, order=e.order) for e in SCENARIO]
    mine = run(SCENARIO)[1]
    theirs = run(other, client="c2")[1]
    assert kinds(mine) == kinds(theirs)
    assert [t.fired_at for t in mine] == [t.fired_at for t in theirs]
    assert {t.client_id for t in theirs} == {"c2"}
    assert not {t.trigger_id for t in mine} & {t.trigger_id for t in theirs}


def test_trigger_id_function() -> None:
    assert trigger_id("c1", WELCOME, "") == trigger_id("c1", WELCOME, "")
    assert len(trigger_id("c1", WELCOME, "")) == 24
    assert trigger_id("c1", WELCOME, "") != trigger_id("c2", WELCOME, "")
    assert trigger_id("c1", ORDER_CONFIRMATION, "o1") != trigger_id("c1", ORDER_CONFIRMATION,
                                                                    "o2")
    assert trigger_id("c1", ABANDONED_CART, "1") != trigger_id("c1", ABANDONED_BROWSE, "1")


def test_duplicate_event_is_ignored_entirely() -> None:
    add = cart_add(0, "p1")
    state, _ = run([add])
    # even long after the due time, a duplicate neither fires timers nor changes the state
    redelivered = Event(add.event_id, add.type, T0 + 5 * HOUR, T0 + 5 * HOUR, client_id="c1",
                        products=add.products)
    same, triggers = process_event("c1", state, redelivered, RULES)
    assert same is state
    assert triggers == []
    reg = ev(EventType.REGISTERED, 0)
    state, first = run([reg])
    assert process_event("c1", state, reg, RULES) == (state, [])
    assert kinds(first) == [WELCOME]


def test_process_event_state_is_apply_event_when_nothing_is_due() -> None:
    events = [view(0, "p1"), cart_add(MINUTE, "p1"), visit(2 * MINUTE)]
    state, triggers = run(events)
    plain: ClientState | None = None
    for event in events:
        plain = apply_event(plain, event)
    assert triggers == []
    assert plain is not None
    assert replace(state, segments=(), segments_at=0.0) == plain


def test_trigger_to_dict() -> None:
    trigger = Trigger("abc", WELCOME, "c1", T0 + 0.5, {"traits": {"x": 1}}, channel="email")
    assert trigger.to_dict() == {"trigger_id": "abc", "type": WELCOME, "key": "",
                                 "client_id": "c1", "fired_at": "2023-11-14T22:13:20.500Z",
                                 "decided_at": "2023-11-14T22:13:20.500Z", "status": "sent",
                                 "reason": None, "channel": "email", "source": "auto",
                                 "payload": {"traits": {"x": 1}}}
    assert trigger.ledger_field == "abc"
    deferred = replace(trigger, status="deferred", reason="quiet_hours", until=T0 + 3600)
    assert deferred.to_dict()["deferred_until"] == "2023-11-14T23:13:20.000Z"
    assert deferred.ledger_field == "abc:deferred"
    later = replace(trigger, decided_at=T0 + 60)
    assert later.to_dict()["decided_at"] == "2023-11-14T22:14:20.000Z"


# --- out-of-order arrivals (each found by review) -------------------------------------------------

def cancel(t: float, order_id: str) -> Event:
    return ev(EventType.ORDER_CANCELLED, t, order=Order(order_id, -1.0))


def test_a_cancellation_arriving_before_its_order_is_applied_when_the_order_comes() -> None:
    in_order, _ = run([order(0, "o1", total=50), cancel(60, "o1")])
    reversed_, _ = run([cancel(60, "o1"), order(0, "o1", total=50)])
    for state in (in_order, reversed_):
        assert (state.orders_count, state.monetary_total) == (0, 0.0)
        assert state.orders[0].cancelled
    assert reversed_.early_returns == ()


def test_a_late_cart_add_keeps_a_later_browse_episode() -> None:
    events = [cart_add(HOUR, "p1"), order(HOUR + 100, "o1"), view(2 * HOUR, "p9")]
    _, in_order = run([*events, visit(5 * HOUR)])
    _, late_add = run([events[2], events[0], events[1], visit(5 * HOUR)])
    assert ABANDONED_BROWSE in kinds(in_order)
    assert ABANDONED_BROWSE in kinds(late_add)


def test_a_late_cart_add_or_order_ends_only_the_browsing_before_it() -> None:
    """Views at 00:00 and 00:30, a cart add (or an order) stamped 00:15 arriving last: the
    00:30 view is a browse of its own, reminded of as it would be in order."""
    for closing in (cart_add(15 * MINUTE, "p1"), order(15 * MINUTE, "o1")):
        events = [view(0, "p1"), closing, view(30 * MINUTE, "p2")]
        _, in_order = run([*events, visit(5 * HOUR)])
        _, late = run([events[0], events[2], events[1], visit(5 * HOUR)])
        browses = [[(t.trigger_id, t.fired_at, t.payload["products"]) for t in triggers
                    if t.type == ABANDONED_BROWSE] for triggers in (in_order, late)]
        assert browses[0] == browses[1] == [
            (browses[0][0][0], T0 + 150 * MINUTE, ["p2"])]


def test_a_late_order_leaves_lines_added_after_it() -> None:
    events = [cart_add(10, "p1"), cart_add(30, "p2"), order(20, "o1")]
    in_order, fired = run([events[0], events[2], events[1], visit(3 * HOUR)])
    late, late_fired = run([*events, visit(3 * HOUR)])
    for state in (in_order, late):
        assert [line.product_id for line in state.cart] == ["p2"]
    assert ABANDONED_CART in kinds(fired) and ABANDONED_CART in kinds(late_fired)


def test_a_late_order_keeps_the_later_cart_changes_timing_the_reminder() -> None:
    """Lines B and C added after the order, C removed at 00:50: the reminder is due an hour
    after that last change whether the order arrives in its place or last."""
    events = [cart_add(0, "A"), order(10 * MINUTE, "o1"), cart_add(20 * MINUTE, "B"),
              cart_add(25 * MINUTE, "C"), cart_remove(50 * MINUTE, "C")]
    _, in_order = run([*events, visit(5 * HOUR)])
    _, late = run([*events[:1], *events[2:], events[1], visit(5 * HOUR)])
    reminders = [[(t.trigger_id, t.fired_at) for t in triggers if t.type == ABANDONED_CART]
                 for triggers in (in_order, late)]
    assert reminders[0] == reminders[1]
    assert [at for _, at in reminders[0]] == [T0 + 110 * MINUTE]


def test_a_late_first_add_starts_the_cart_episode_and_names_it() -> None:
    events = [cart_add(0, "A"), cart_add(10 * MINUTE, "B")]
    _, in_order = run([*events, visit(5 * HOUR)])
    _, late = run([events[1], events[0], visit(5 * HOUR)])
    assert ([t.trigger_id for t in in_order if t.type == ABANDONED_CART]
            == [t.trigger_id for t in late if t.type == ABANDONED_CART] != [])


def test_a_cancelled_order_is_neither_first_nor_last() -> None:
    state, _ = run([order(0, "o1"), order(HOUR, "o2"), cancel(2 * HOUR, "o2")])
    assert (state.first_order_at, state.last_order_at) == (T0, T0)
    state, _ = run([order(0, "o1"), cancel(HOUR, "o1")])
    assert (state.first_order_at, state.last_order_at) == (None, None)


# --- found by review of the catalogue -------------------------------------------------------------

def test_a_late_cart_add_from_before_the_reminder_does_not_re_arm_it() -> None:
    state, triggers = run([cart_add(0, "p1"), visit(2 * HOUR)])
    assert kinds(triggers) == [ABANDONED_CART]
    _, late = run([cart_add(16 * MINUTE, "p2"), visit(6 * HOUR)], state=state)
    assert late == []


def test_an_order_arriving_after_its_cancellation_is_not_confirmed_but_cancelled() -> None:
    _, triggers = run([cancel(60, "o1"), order(0, "o1")])
    assert kinds(triggers) == [ORDER_CANCELLATION]


def test_a_transactional_trigger_may_wait_its_configured_delay() -> None:
    from config.settings import load_settings

    settings = load_settings()
    rules = settings.trigger_rules()
    rules = replace(rules, order_confirmation=replace(rules.order_confirmation, delay=60.0),
                    policy=replace(rules.policy, quiet_hours=None))
    state, now = run([order(0, "o1")], rules)
    assert now == []
    _, later = fire_due("c1", state, T0 + 60, rules)
    assert [(t.type, t.fired_at) for t in later] == [(ORDER_CONFIRMATION, T0 + 60)]
