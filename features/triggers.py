"""Trigger rules: from a client's state and an event (or the passing of time) to triggers.

Timers are not stored apart from the state: `next_due` derives a client's next timer from
its state, so a timer is cancelled or re-armed simply by the state changing (lazy
cancellation), and there is nothing extra to persist or to get out of sync.

Every trigger id is a hash of (client, type, occasion): the same history always yields the
same ids, which is what makes replays and at-least-once delivery safe downstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from features.events import Event, EventType, format_time
from features.state import ClientState, apply_event, is_duplicate

ABANDONED_CART = "abandoned_cart"
ABANDONED_BROWSE = "abandoned_browse"
WELCOME = "welcome"
ORDER_CONFIRMATION = "order_confirmation"
TIMER_TYPES = (ABANDONED_CART, ABANDONED_BROWSE)


@dataclass(frozen=True, slots=True)
class TriggerRule:
    enabled: bool = True
    delay: float = 0.0  # seconds


@dataclass(frozen=True, slots=True)
class TriggerRules:
    welcome: TriggerRule = TriggerRule()
    order_confirmation: TriggerRule = TriggerRule()
    abandoned_cart: TriggerRule = TriggerRule(delay=3600.0)
    abandoned_browse: TriggerRule = TriggerRule(delay=7200.0)


@dataclass(frozen=True, slots=True)
class Trigger:
    trigger_id: str
    type: str
    client_id: str
    fired_at: float  # event time of the occasion (a timer's due time), epoch seconds UTC
    payload: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger_id": self.trigger_id,
            "type": self.type,
            "client_id": self.client_id,
            "fired_at": format_time(self.fired_at),
            "payload": dict(self.payload),
        }


def trigger_id(client_key: str, trigger_type: str, occasion: str) -> str:
    digest = hashlib.sha1(f"{client_key}\x1f{trigger_type}\x1f{occasion}".encode(),
                          usedforsecurity=False)
    return digest.hexdigest()[:24]


def _occasion_time(seconds: float) -> str:
    return f"{seconds:.3f}"


# --- timers ---------------------------------------------------------------------------------------

def due_timers(state: ClientState, rules: TriggerRules) -> list[tuple[float, str]]:
    """Pending timers as (due time, trigger type), earliest first."""
    timers: list[tuple[float, str]] = []
    if (rules.abandoned_cart.enabled and state.cart and not state.cart_reminded
            and state.cart_updated_at is not None):
        timers.append((state.cart_updated_at + rules.abandoned_cart.delay, ABANDONED_CART))
    if (rules.abandoned_browse.enabled and state.browse_since is not None
            and state.last_view_at is not None):
        timers.append((state.last_view_at + rules.abandoned_browse.delay, ABANDONED_BROWSE))
    timers.sort()
    return timers


def next_due(state: ClientState, rules: TriggerRules) -> float | None:
    timers = due_timers(state, rules)
    return timers[0][0] if timers else None


def _fire(client_key: str, state: ClientState, due: float, kind: str
          ) -> tuple[ClientState, Trigger]:
    if kind == ABANDONED_CART:
        assert state.cart_since is not None
        payload = {
            "items": [{"product_id": line.product_id, "quantity": line.quantity,
                       "price": line.price, "category": line.category} for line in state.cart],
            "cart_value": state.cart_value,
            "cart_updated_at": format_time(state.cart_updated_at),
        }
        trigger = Trigger(trigger_id(client_key, kind, _occasion_time(state.cart_since)), kind,
                          client_key, due, payload)
        return replace(state, cart_reminded=True), trigger
    assert state.browse_since is not None
    since = state.browse_since
    products = [pid for pid, at in reversed(state.viewed) if at >= since]
    trigger = Trigger(trigger_id(client_key, kind, _occasion_time(since)), kind, client_key, due,
                      {"products": products, "last_view_at": format_time(state.last_view_at)})
    # views up to the last one reminded of are closed: a late one must not remind again
    closed = max(state.browse_closed_at, state.last_view_at or state.browse_closed_at)
    return replace(state, browse_since=None, browse_closed_at=closed), trigger


def fire_due(client_key: str, state: ClientState, now: float, rules: TriggerRules
             ) -> tuple[ClientState, list[Trigger]]:
    """Fire every timer due at or before `now` (event time or wall time, the caller's clock)."""
    fired: list[Trigger] = []
    while True:
        timers = due_timers(state, rules)
        if not timers or timers[0][0] > now:
            return state, fired
        due, kind = timers[0]
        state, trigger = _fire(client_key, state, due, kind)
        fired.append(trigger)


# --- events ---------------------------------------------------------------------------------------

def _immediate(client_key: str, before: ClientState | None, after: ClientState, event: Event,
               rules: TriggerRules) -> list[Trigger]:
    triggers: list[Trigger] = []
    if (event.type is EventType.REGISTERED and rules.welcome.enabled
            and (before is None or not before.welcomed)):
        triggers.append(Trigger(trigger_id(client_key, WELCOME, ""), WELCOME, client_key,
                                event.event_time, {"traits": dict(after.traits)}))
    if (event.type is EventType.ORDER_PLACED and rules.order_confirmation.enabled
            and event.order is not None):
        order = event.order
        triggers.append(Trigger(
            trigger_id(client_key, ORDER_CONFIRMATION, order.order_id), ORDER_CONFIRMATION,
            client_key, event.event_time,
            {"order_id": order.order_id, "total": round(order.total, 2),
             "currency": order.currency,
             "items": [{"product_id": p.product_id, "quantity": p.quantity, "price": p.price}
                       for p in order.items]}))
    return triggers


def process_event(client_key: str, state: ClientState | None, event: Event, rules: TriggerRules
                  ) -> tuple[ClientState, list[Trigger]]:
    """Apply one event: first fire the client's timers due before it, then apply it.

    Firing first makes the outcome independent of when ticks arrive: a timer due at `d`
    always sees exactly the client's events before `d` that had arrived, in replay and live.
    """
    if state is not None and is_duplicate(state, event):
        return state, []
    fired: list[Trigger] = []
    if state is not None:
        state, fired = fire_due(client_key, state, event.event_time, rules)
    after = apply_event(state, event)
    return after, fired + _immediate(client_key, state, after, event, rules)
