"""The backfill rule of the pure core: an occasion due before its history arrived is
recorded as suppressed (`backfill`); one due later, or raised by a live event, is not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from features.codec import decode_state, encode_state
from features.events import EventError, parse_event
from tests.core_events import HOUR, T0, cart_add, days, of, order, run

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)


def history(*events):  # type: ignore[no-untyped-def]
    """The events as a backfill delivers them: history, all received at T0 + 30 days."""
    return [replace(e, history=True, received_at=T0 + days(30)) for e in events]


def test_past_occasions_of_history_are_suppressed_and_later_ones_fire() -> None:
    state, fired = run(history(order(0, "o1"), cart_add(HOUR, "p1")), until=days(31))
    assert state.history_until == T0 + days(30)
    confirmation, = of(fired, "order_confirmation")
    cart, = of(fired, "abandoned_cart")
    for trigger in (confirmation, cart):
        assert (trigger.status, trigger.reason) == ("suppressed", "backfill")
    # the timers still ran as a replay's would: the cart episode is decided, once
    assert state.cart_reminded
    # a win-back due 180 days after the order lies after the backfill: it stays armed
    _, more = run([], state=state, until=days(181))
    winback, = of(more, "churn_winback")
    assert winback.status == "sent"


def test_a_live_event_after_history_is_decided_as_live() -> None:
    state, _ = run(history(order(0, "o1")))
    _, fired = run([order(days(29), "o2")], state=state)  # happened before the backfill ran
    confirmation, = of(fired, "order_confirmation")
    assert confirmation.status == "sent"


def test_the_history_mark_round_trips_and_is_validated() -> None:
    raw = {"event_id": "e", "type": "visit", "client_id": "c", "event_time": T0,
           "history": True}
    assert parse_event(raw).history is True
    with pytest.raises(EventError, match="history: expected true or false"):
        parse_event({**raw, "history": "yes"})
    state, _ = run(history(order(0, "o1")))
    assert decode_state(encode_state(state)).history_until == T0 + days(30)
