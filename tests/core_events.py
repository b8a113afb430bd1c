"""Builders for unit tests of the pure core: events of one client, and a runner that feeds
them through `process_event` and lets the clock run on with `fire_due`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from features.events import Event, EventType, Order, Product
from features.rules import DAY, Channel, Policy, TriggerRules
from features.state import (
    CartLine,
    CategoryInterest,
    CategoryOrders,
    ClientState,
    OrderRecord,
    PendingTrigger,
    apply_event,
)
from features.triggers import SEGMENTS_TIMER, Trigger, due_timers, fire_due, process_event

T0 = 1_700_006_400.0  # 2023-11-15T00:00:00Z, a Wednesday
HOUR = 3600.0
MINUTE = 60.0
CLIENT = "c1"

# No quiet hours, no cap, a channel that needs no contact: each rule is seen alone.
OPEN = Policy(quiet_hours=None, frequency_cap_per_day=0, channels=(Channel("crm"),))
RULES = TriggerRules(policy=OPEN)

_ids = itertools.count()


def ev(event_type: EventType, t: float, **fields: Any) -> Event:
    """An event of CLIENT at T0 + t seconds (received when it happened: live)."""
    return Event(event_id=fields.pop("event_id", None) or f"e{next(_ids)}", type=event_type,
                 event_time=T0 + t, received_at=T0 + t, client_id=CLIENT, **fields)


def registered(t: float, **traits: Any) -> Event:
    return ev(EventType.REGISTERED, t, traits=traits)


def identify(t: float, **traits: Any) -> Event:
    return ev(EventType.IDENTIFY, t, traits=traits)


def order(t: float, order_id: str, total: float = 20.0, *categories: str) -> Event:
    items = tuple(Product(f"p-{c}", c, total / len(categories), 1) for c in categories) or (
        Product("p1", None, total, 1),)
    return ev(EventType.ORDER_PLACED, t, order=Order(order_id, total, "EUR", items))


def cancel(t: float, order_id: str) -> Event:
    return ev(EventType.ORDER_CANCELLED, t, order=Order(order_id, -1.0))


def visit(t: float) -> Event:
    return ev(EventType.VISIT, t)


def cart_add(t: float, *pids: str) -> Event:
    return ev(EventType.CART_ADD, t, products=tuple(Product(p, "toys", 10.0, 1) for p in pids))


def nps(t: float, score: int, **fields: Any) -> Event:
    return ev(EventType.NPS_ANSWER, t, nps_score=score, **fields)


def opened(t: float, channel: str) -> Event:
    return ev(EventType.MESSAGE_OPENED, t, channel=channel)


def touch(t: float, occasion: str, key: str | None = None, status: str = "done",
          channel: str | None = "phone", **extra: Any) -> Event:
    properties = {"occasion": occasion, "status": status, "comment": "called",
                  "author": "mia", **extra}
    if key is not None:
        properties["key"] = key
    return ev(EventType.TOUCH_RECORDED, t, properties=properties, channel=channel)


def run(events: Iterable[Event], rules: TriggerRules = RULES, *,
        state: ClientState | None = None, until: float | None = None
        ) -> tuple[ClientState, list[Trigger]]:
    """Process events in arrival order, then (with `until`, seconds after T0) let every
    timer due by then fire; all triggers in the order they came out."""
    out: list[Trigger] = []
    for event in events:
        state, fired = process_event(CLIENT, state, event, rules)
        out.extend(fired)
    assert state is not None
    if until is not None:
        state, fired = fire_due(CLIENT, state, T0 + until, rules)
        out.extend(fired)
    return state, out


def state_of(*events: Event) -> ClientState:
    """The state after `events`, applied in order (no triggers)."""
    state: ClientState | None = None
    for event in events:
        state = apply_event(state, event)
    assert state is not None
    return state


def of(triggers: list[Trigger], kind: str) -> list[Trigger]:
    return [t for t in triggers if t.type == kind]


def kinds(triggers: list[Trigger]) -> list[str]:
    return [t.type for t in triggers]


def only(rules: TriggerRules, *keep: str) -> TriggerRules:
    """`rules` with every timer and immediate rule off except `keep` (and their policy)."""
    from features.rules import TRIGGER_TYPES

    return replace(rules, **{kind: replace(rules.rule(kind), enabled=kind in keep)
                             for kind in TRIGGER_TYPES})


def days(n: float) -> float:
    return n * DAY


def trigger_timers(state: ClientState, rules: TriggerRules) -> list[tuple[float, str]]:
    """The state's timers that may raise a trigger (the segment re-evaluation left out)."""
    return [timer for timer in due_timers(state, rules) if timer[1] != SEGMENTS_TIMER]


def next_trigger_due(state: ClientState, rules: TriggerRules) -> float | None:
    timers = trigger_timers(state, rules)
    return timers[0][0] if timers else None


def every_field_set() -> ClientState:
    """A state with every field away from its default: code that copies or decodes a state
    and forgets a field gives that field's default back."""
    return ClientState(
        first_seen_at=1.0, last_seen_at=2.5, updated_at=2.5, last_received_at=2.75,
        registered_at=1.5, welcomed=True, traits={"email": "a@x"}, traits_updated_at=1.25,
        last_visit_at=2.25, visits=3, cart=(CartLine("p1", 2, 4.5, "tea", 2.0),),
        cart_updated_at=2.0, cart_since=1.75, cart_reminded=2.125, cart_closed_at=0.5,
        cart_removals=(("p6", 2.25, 1),), cart_emptied=(0.25, 0.375, 0.5),
        viewed=(("p2", 1.5),), browse_since=1.5, last_view_at=1.5, browse_closed_at=0.75,
        bought=("p4",),
        favourites=(("p3", 1.5),), orders=(OrderRecord("o1", 1.0, 9.5),), orders_count=1,
        monetary_total=9.5, first_order_at=1.0, last_order_at=1.0, checkout_started_at=0.875,
        support_requests=1, last_support_at=1.125, nps_score=9, nps_at=1.375,
        channel_engagement=(("email", 2),), recent_event_ids=(7, 8),
        categories=(CategoryOrders("food", 1.0, 1.0, 1),),
        marks=(("birthday", 2024.0), ("custom_rule", 3.0)), loyalty_tier="silver",
        pending=(PendingTrigger(10.0, "abandoned_cart", "1.000", 5.0, {"cart_value": 3.5},
                                True),),
        sends=(4.0, 5.5), decided=(123, 4_000_000_000), touched=(99,),
        early_returns=(("o9", -1.0, True),), visit_days=((19000, 1),),
        view_hours=((456000, 2),), view_days=((19000, 2),),
        interests=(CategoryInterest("tea", 1.5, 2.0, None, 3),), orders_updated_at=1.0,
        cart_changed_at=2.0, engagement_at=1.625, segments=(("active", 1.0),),
        segments_at=2.5, aliases=("anon:a1",), merged_into="c9", links_lost=("c8",),
        history_until=1_700_000_100.0,
        held=(Event("h1", EventType.PRODUCT_VIEW, 1_700_000_200.0, 1_700_000_201.5,
                    client_id="c1", products=(Product("p5", "tea", 1.5, 1),)),))
