"""ClientState transitions: one event type at a time, duplicates, bounds, event order."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import FrozenInstanceError, fields, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import features
from features.events import Event, EventType, Order, Product
from features.rules import DAY, TriggerRules
from features.segment_rules import compile_segments
from features.state import (
    MAX_CART_LINES,
    MAX_CART_REMOVALS,
    MAX_CHANNELS,
    MAX_FAVOURITES,
    MAX_ORDERS,
    MAX_RECENT_EVENT_IDS,
    MAX_TRAITS,
    MAX_VIEWED,
    CartLine,
    ClientState,
    OrderRecord,
    _copy,
    _slot_copy,
    apply_event,
    is_duplicate,
    is_live,
)
from tests.core_events import every_field_set

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

T0 = 1_700_000_000.0
HOUR = 3600.0

_ids = itertools.count()


def ev(event_type: EventType, t: float, *, event_id: str | None = None, **fields: Any) -> Event:
    """An event at T0 + t seconds, with a fresh event id unless one is given."""
    return Event(event_id=event_id or f"e{next(_ids)}", type=event_type, event_time=T0 + t,
                 received_at=T0 + t, client_id="c1", **fields)


def cart_add(t: float, *items: tuple[str, int], price: float = 10.0, **kw: Any) -> Event:
    return ev(EventType.CART_ADD, t,
              products=tuple(Product(pid, "cat", price, qty) for pid, qty in items), **kw)


def cart_remove(t: float, *items: tuple[str, int], **kw: Any) -> Event:
    return ev(EventType.CART_REMOVE, t,
              products=tuple(Product(pid, None, 0.0, qty) for pid, qty in items), **kw)


def view(t: float, *pids: str, **kw: Any) -> Event:
    return ev(EventType.PRODUCT_VIEW, t, products=tuple(Product(pid) for pid in pids), **kw)


def order(t: float, order_id: str, total: float, **kw: Any) -> Event:
    return ev(EventType.ORDER_PLACED, t, order=Order(order_id, total), **kw)


def cancel(t: float, order_id: str, total: float = -1.0, **kw: Any) -> Event:
    return ev(EventType.ORDER_CANCELLED, t, order=Order(order_id, total), **kw)


def refund(t: float, order_id: str, total: float = -1.0, **kw: Any) -> Event:
    return ev(EventType.ORDER_REFUNDED, t, order=Order(order_id, total), **kw)


def run(events: Iterable[Event], state: ClientState | None = None) -> ClientState:
    for event in events:
        state = apply_event(state, event)
    assert state is not None
    return state


def cart_of(state: ClientState) -> dict[str, int]:
    return {line.product_id: line.quantity for line in state.cart}


# --- first events, visits, registration -----------------------------------------------------------

def test_first_event_creates_the_state() -> None:
    state = apply_event(None, ev(EventType.PAGE_VIEW, 5))
    assert state.first_seen_at == state.last_seen_at == state.updated_at == T0 + 5
    assert state.visits == 0
    assert state.registered_at is None
    assert len(state.recent_event_ids) == 1


def test_seen_times_span_all_events() -> None:
    state = run([ev(EventType.PAGE_VIEW, 50), ev(EventType.SESSION_END, 10),
                 ev(EventType.CUSTOM, 90, name="x")])
    assert (state.first_seen_at, state.last_seen_at, state.updated_at) == (
        T0 + 10, T0 + 90, T0 + 90)


def test_registration_sets_registered_at_and_counts_as_visit() -> None:
    state = apply_event(None, ev(EventType.REGISTERED, 100))
    assert state.registered_at == T0 + 100
    assert state.welcomed
    assert state.visits == 1
    assert state.last_visit_at == T0 + 100


def test_registration_keeps_the_earliest_time() -> None:
    state = run([ev(EventType.REGISTERED, 100), ev(EventType.REGISTERED, 40),
                 ev(EventType.REGISTERED, 300)])
    assert state.registered_at == T0 + 40


def test_visits_count_and_keep_the_latest() -> None:
    state = run([ev(EventType.VISIT, 100), ev(EventType.VISIT, 50), ev(EventType.REGISTERED, 70)])
    assert state.visits == 3
    assert state.last_visit_at == T0 + 100
    assert state.registered_at == T0 + 70


def test_last_received_at_follows_the_latest_event_time() -> None:
    live = Event("a", EventType.VISIT, T0 + 100, T0 + 101, client_id="c1")
    late = Event("b", EventType.VISIT, T0 + 50, T0 + 500, client_id="c1")
    state = run([live, late])
    assert state.last_received_at == T0 + 101  # the late event is not the latest
    assert is_live(state, allowed_lateness=5.0)
    backfill = run([Event("c", EventType.VISIT, T0, T0 + 86400, client_id="c1")])
    assert backfill.last_received_at == T0 + 86400
    assert not is_live(backfill, allowed_lateness=5.0)
    assert is_live(backfill, allowed_lateness=86400.0)


# --- traits ---------------------------------------------------------------------------------------

def test_traits_newer_wins_older_fills_gaps() -> None:
    state = run([
        ev(EventType.REGISTERED, 100, traits={"email": "a@x", "city": "Riga"}),
        ev(EventType.IDENTIFY, 200, traits={"email": "b@x"}),
    ])
    assert state.traits == {"email": "b@x", "city": "Riga"}
    assert state.traits_updated_at == T0 + 200
    older = apply_event(state, ev(EventType.IDENTIFY, 150,
                                  traits={"email": "old@x", "phone": "+371"}))
    assert older.traits == {"email": "b@x", "city": "Riga", "phone": "+371"}
    assert older.traits_updated_at == T0 + 200


def test_traits_from_any_event_type() -> None:
    state = run([ev(EventType.VISIT, 1, traits={"vip": True})])
    assert state.traits == {"vip": True}


def test_traits_do_not_alias_the_event() -> None:
    traits = {"a": 1}
    state = run([ev(EventType.IDENTIFY, 1, traits=traits)])
    state2 = apply_event(state, ev(EventType.IDENTIFY, 2, traits={"a": 2}))
    assert state.traits == {"a": 1}
    assert state2.traits == {"a": 2}
    assert traits == {"a": 1}


# --- cart -----------------------------------------------------------------------------------------

def test_cart_add_accumulates_quantities() -> None:
    state = run([cart_add(10, ("p1", 1)), cart_add(20, ("p1", 2), ("p2", 1))])
    assert cart_of(state) == {"p1": 3, "p2": 1}
    assert state.cart_items == 4
    assert state.cart_value == 40.0
    assert state.cart_since == T0 + 10
    assert state.cart_updated_at == T0 + 20
    assert not state.cart_reminded


def test_cart_line_keeps_price_and_category_when_later_add_lacks_them() -> None:
    state = run([cart_add(10, ("p1", 1), price=5.0),
                 ev(EventType.CART_ADD, 20, products=(Product("p1", None, 0.0, 1),))])
    assert state.cart == (CartLine("p1", 2, 5.0, "cat", added_at=T0 + 20),)


def test_cart_remove_partial_and_full() -> None:
    state = run([cart_add(10, ("p1", 3), ("p2", 1)), cart_remove(20, ("p1", 2))])
    assert cart_of(state) == {"p1": 1, "p2": 1}
    assert state.cart_updated_at == T0 + 20
    state = apply_event(state, cart_remove(30, ("p2", 5)))  # more than there is
    assert cart_of(state) == {"p1": 1}
    assert state.cart_since == T0 + 10


def test_cart_remove_unknown_product_changes_no_line() -> None:
    state = run([cart_add(10, ("p1", 1)), cart_remove(20, ("zz", 1))])
    assert cart_of(state) == {"p1": 1}


def test_empty_cart_ends_the_episode() -> None:
    state = run([cart_add(10, ("p1", 1)), cart_remove(20, ("p1", 1))])
    assert state.cart == ()
    assert state.cart_since is None
    assert state.cart_updated_at is None
    assert not state.cart_reminded
    again = apply_event(state, cart_add(30, ("p2", 1)))
    assert again.cart_since == T0 + 30
    assert again.cart_updated_at == T0 + 30


def test_remove_from_empty_cart() -> None:
    state = run([ev(EventType.VISIT, 1), cart_remove(2, ("p1", 1))])
    assert state.cart == ()
    assert state.cart_since is None
    assert state.cart_updated_at is None


def test_late_cart_add_keeps_latest_update_time() -> None:
    state = run([cart_add(100, ("p1", 1)), cart_add(50, ("p2", 1))])
    assert state.cart_updated_at == T0 + 100
    assert cart_of(state) == {"p1": 1, "p2": 1}


def test_checkout_rearms_cart_timer_base() -> None:
    state = run([cart_add(10, ("p1", 1)), ev(EventType.CHECKOUT_STARTED, 50)])
    assert state.checkout_started_at == T0 + 50
    assert state.cart_updated_at == T0 + 50
    empty = run([ev(EventType.CHECKOUT_STARTED, 50)])
    assert empty.cart_updated_at is None


CART_EVENTS = [
    cart_add(10, ("p1", 1)),
    cart_add(20, ("p2", 2)),
    ev(EventType.CHECKOUT_STARTED, 30),
    cart_add(40, ("p1", 1)),
    order(50, "o1", 30.0),
    cart_add(60, ("p3", 1)),
    ev(EventType.CHECKOUT_STARTED, 70),
    cart_add(65, ("p4", 1), ("p5", 1)),
    ev(EventType.CHECKOUT_STARTED, 45),
]
CART_FIELDS = ("cart", "cart_updated_at", "cart_since", "cart_changed_at",
               "checkout_started_at", "cart_closed_at")


def cart_fields(state: ClientState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in CART_FIELDS}


def test_a_checkout_before_a_late_add_rearms_the_reminder_as_in_order() -> None:
    """The checkout found a cart in order; arriving first, it found none, and the add that
    arrives after it re-arms in its stead."""
    added, checkout = cart_add(10, ("p1", 1)), ev(EventType.CHECKOUT_STARTED, 50)
    assert run([checkout, added]).cart_updated_at == run([added, checkout]).cart_updated_at \
        == T0 + 50


@settings(max_examples=200, deadline=None)
@given(st.permutations(CART_EVENTS))
def test_the_cart_is_the_same_in_any_arrival_order(events: list[Event]) -> None:
    in_order = run(sorted(CART_EVENTS, key=lambda e: e.event_time))
    assert cart_fields(run(events)) == cart_fields(in_order)
    assert [line.product_id for line in in_order.cart] == ["p3", "p4", "p5"]
    assert in_order.cart_updated_at == T0 + 70


def test_the_cart_bound_keeps_the_latest_lines_whatever_arrived_first() -> None:
    adds = [cart_add(i, (f"p{i:02d}", 1)) for i in range(1, MAX_CART_LINES + 4)]
    kept = run(adds).cart
    assert run(reversed(adds)).cart == kept
    assert [line.product_id for line in kept][:2] == ["p04", "p05"]


def test_a_removal_arriving_before_its_add_takes_it_back() -> None:
    """Added at 10, removed at 11, the removal arriving first: in order the cart is empty,
    so no reminder may name the product. The removal keeps what it could not take; the add
    gives it its units, and only what is left stays (a partial removal too)."""
    added, removed = cart_add(10, ("p1", 1)), cart_remove(11, ("p1", 1))
    for history in ([added, removed], [removed, added]):
        state = run(history)
        assert state.cart == () and state.cart_since is None and state.cart_updated_at is None
        assert state.cart_removals == ()  # the add paid what the removal was owed
    three, two_back = cart_add(10, ("p1", 3)), cart_remove(11, ("p1", 2))
    assert run([two_back, three]).cart == run([three, two_back]).cart == (
        CartLine("p1", 1, 10.0, "cat", T0 + 10),)


def test_a_removal_stamped_before_a_newer_add_leaves_the_newer_add() -> None:
    """Removed at 10 (nothing in the cart yet), added at 11: the product stays, whichever
    arrives first; the removal is kept for an add stamped before it that may still come."""
    removed, added = cart_remove(10, ("p1", 1)), cart_add(11, ("p1", 1))
    for history in ([removed, added], [added, removed]):
        state = run(history)
        assert state.cart == (CartLine("p1", 1, 10.0, "cat", T0 + 11),)
        assert state.cart_since == state.cart_updated_at == T0 + 11
        assert state.cart_removals == (("p1", T0 + 10, 1),)
    earlier = run([added, removed, cart_add(9, ("p1", 2))])
    assert earlier.cart == (CartLine("p1", 2, 10.0, "cat", T0 + 11),)  # 2 added, 1 taken
    assert earlier.cart_removals == ()


def test_an_add_at_the_instant_of_a_removal_is_taken_by_it_whichever_arrives_first() -> None:
    """As with an order: a change at its very instant is taken."""
    added, removed = cart_add(10, ("p1", 1)), cart_remove(10, ("p1", 1))
    assert run([added, removed]).cart == run([removed, added]).cart == ()


def test_an_add_taken_back_counts_for_the_episode_only_while_it_was_in_the_cart() -> None:
    """An add all of whose units a removal that arrived first took back was in the cart
    from its time to the removal's: in order it began the episode, and the removal changed
    the cart, when that span reaches into the episode; before it, it changes neither."""
    other = cart_add(12, ("p2", 1))
    before = run([cart_remove(11, ("p1", 1)), other, cart_add(10, ("p1", 1))])
    assert (before.cart_since, before.cart_updated_at) == (T0 + 12, T0 + 12)
    during = run([cart_remove(13, ("p1", 1)), other, cart_add(10, ("p1", 1))])
    in_order = run([cart_add(10, ("p1", 1)), other, cart_remove(13, ("p1", 1))])
    assert (during.cart_since, during.cart_updated_at) == (T0 + 10, T0 + 13)
    assert cart_fields(during) == cart_fields(in_order)


def test_a_late_add_is_rearmed_by_a_change_after_it_that_found_an_empty_cart() -> None:
    """Removed at 1 a product never added (a cart change all the same), arriving before an
    add stamped at 0: in order the cart held the add then, and the reminder's time is 1."""
    added, removed = cart_add(0, ("p2", 1)), cart_remove(1, ("p1", 1))
    assert run([removed, added]).cart_updated_at == run([added, removed]).cart_updated_at \
        == T0 + 1


def test_a_late_removal_of_every_earlier_line_leaves_the_later_ones_an_episode() -> None:
    """p1 added at 0 and removed at 6, p2 added at 7, the removal arriving last: in order the
    cart was empty at 6, so p2's episode (its reminder's key) began at 7, as after an order."""
    history = [cart_add(0, ("p1", 1)), cart_add(7, ("p2", 1)), cart_remove(6, ("p1", 1))]
    late = run(history)
    assert cart_fields(late) == cart_fields(run(sorted(history, key=lambda e: e.event_time)))
    assert (late.cart_since, late.cart_updated_at) == (T0 + 7, T0 + 7)


def test_removals_owed_are_bounded_and_closed_with_the_cart_by_an_order() -> None:
    last = MAX_CART_REMOVALS + 3
    removals = [cart_remove(i, (f"p{i:02d}", 1)) for i in range(1, last + 1)]
    state = run(removals)
    assert len(state.cart_removals) == MAX_CART_REMOVALS
    assert state.cart_removals[0] == ("p04", T0 + 4, 1)  # the newest kept
    assert run(reversed(removals)).cart_removals == state.cart_removals
    closed = apply_event(state, order(6, "o1", 5.0))
    assert [r[1] for r in closed.cart_removals] == [T0 + i for i in range(7, last + 1)]
    # an add before the order is void anyway; one after it still meets a removal after it
    assert apply_event(closed, cart_add(5, ("p05", 1))).cart == ()
    assert apply_event(closed, cart_add(6.5, (f"p{last}", 1))).cart == ()
    assert cart_of(apply_event(closed, cart_add(last + 1, (f"p{last}", 1)))) == {
        f"p{last}": 1}


def test_removals_owed_are_kept_a_day_behind_the_latest_cart_change() -> None:
    """A remove for an add never seen (a cart from before tracking) is not kept for ever:
    a cart change a day after it lets it go, and an add stamped before it that arrives
    later still is not waited for."""
    owed = run([cart_remove(10, ("p1", 1))])
    assert owed.cart_removals == (("p1", T0 + 10, 1),)
    within = apply_event(owed, cart_add(10 + DAY, ("p2", 1)))
    assert within.cart_removals == owed.cart_removals
    beyond = apply_event(within, cart_add(11 + DAY, ("p3", 1)))
    assert beyond.cart_removals == ()
    assert cart_of(apply_event(beyond, cart_add(5, ("p1", 1)))) == {"p1": 1, "p2": 1, "p3": 1}


@st.composite
def cart_histories(draw: st.DrawFn) -> list[Event]:
    """Adds and removals of a few products at distinct times, any quantities; each product
    added at most once, since a line keeps its latest add's time only (a removal stamped
    between two adds of a product that arrives after both cannot tell their units apart)."""
    products = draw(st.lists(st.sampled_from(["p1", "p2", "p3"]), min_size=1, max_size=8))
    times = draw(st.lists(st.integers(1, 200), min_size=len(products), max_size=len(products),
                          unique=True))
    added: set[str] = set()
    events = []
    for pid, t in zip(products, times, strict=True):
        quantity = draw(st.integers(1, 3))
        if pid not in added and draw(st.booleans()):
            added.add(pid)
            events.append(cart_add(t, (pid, quantity)))
        else:
            events.append(cart_remove(t, (pid, quantity)))
    return draw(st.permutations(events))


@settings(max_examples=300, deadline=None)
@given(cart_histories())
def test_cart_adds_and_removals_in_any_arrival_order_leave_the_cart_of_event_order(
        arrivals: list[Event]) -> None:
    in_order = run(sorted(arrivals, key=lambda e: e.event_time))
    assert run(arrivals).cart == in_order.cart


# --- orders ---------------------------------------------------------------------------------------

def test_order_clears_the_cart_and_closes_it() -> None:
    state = run([cart_add(10, ("p1", 2)), order(100, "o1", 20.0)])
    assert state.cart == ()
    assert state.cart_since is None
    assert state.cart_updated_at is None
    assert state.cart_closed_at == T0 + 100
    assert state.orders == (OrderRecord("o1", T0 + 100, 20.0),)
    assert state.orders_count == 1
    assert state.monetary_total == 20.0
    assert state.first_order_at == state.last_order_at == T0 + 100


def test_late_cart_change_older_than_the_order_is_ignored() -> None:
    state = run([cart_add(10, ("p1", 2)), order(100, "o1", 20.0)])
    late_add = apply_event(state, cart_add(50, ("p9", 1)))
    assert late_add.cart == ()
    assert late_add.cart_since is None
    late_remove = apply_event(state, cart_remove(60, ("p1", 1)))
    assert late_remove.cart == ()
    newer = apply_event(state, cart_add(150, ("p9", 1)))
    assert cart_of(newer) == {"p9": 1}
    assert newer.cart_since == T0 + 150


def test_late_order_keeps_a_cart_started_after_it() -> None:
    state = run([cart_add(200, ("p1", 1)), order(100, "o1", 5.0)])
    assert cart_of(state) == {"p1": 1}
    assert state.cart_since == T0 + 200
    assert state.cart_closed_at == T0 + 100


def test_orders_sorted_and_times() -> None:
    state = run([order(300, "o3", 3.0), order(100, "o1", 1.0), order(200, "o2", 2.0)])
    assert [o.order_id for o in state.orders] == ["o1", "o2", "o3"]
    assert state.first_order_at == T0 + 100
    assert state.last_order_at == T0 + 300
    assert state.orders_count == 3
    assert state.monetary_total == 6.0


def test_order_total_rounded_to_cents() -> None:
    state = run([order(1, "o1", 0.1), order(2, "o2", 0.2)])
    assert state.monetary_total == 0.3
    state = run([order(1, "o1", 10.005001)])
    assert state.orders[0].total == 10.01


def test_cancellation_returns_money_and_removes_the_order() -> None:
    state = run([order(100, "o1", 30.0), order(200, "o2", 50.0), cancel(300, "o1")])
    assert state.orders_count == 1
    assert state.monetary_total == 50.0
    assert state.orders[0] == OrderRecord("o1", T0 + 100, 30.0, returned=30.0, cancelled=True)
    # a second cancellation or a refund of a cancelled order changes nothing
    again = run([cancel(310, "o1"), refund(320, "o1", 5.0)], state)
    assert again.orders == state.orders
    assert again.orders_count == 1
    assert again.monetary_total == 50.0


def test_refund_partial_then_whole() -> None:
    state = run([order(100, "o1", 30.0), refund(200, "o1", 10.0)])
    assert state.orders_count == 1
    assert state.monetary_total == 20.0
    assert state.orders[0].returned == 10.0
    assert not state.orders[0].cancelled
    state = apply_event(state, refund(300, "o1"))  # no amount: what is left
    assert state.monetary_total == 0.0
    assert state.orders[0].returned == 30.0
    assert state.orders_count == 1


def test_refund_never_returns_more_than_paid() -> None:
    state = run([order(100, "o1", 30.0), order(110, "o2", 5.0), refund(200, "o1", 1000.0)])
    assert state.monetary_total == 5.0
    state = apply_event(state, refund(210, "o1", 1.0))
    assert state.monetary_total == 5.0
    assert state.orders[0].returned == 30.0


def test_cancel_after_partial_refund() -> None:
    state = run([order(100, "o1", 30.0), refund(200, "o1", 10.0), cancel(300, "o1")])
    assert state.monetary_total == 0.0
    assert state.orders_count == 0
    assert state.orders[0].returned == 30.0


@pytest.mark.parametrize("returns", [
    [("refund", 5.0), ("cancel", -1.0)], [("cancel", -1.0), ("refund", 5.0)],
    [("refund", 5.0), ("refund", 10.0)], [("refund", 5.0), ("refund", -1.0)],
    [("refund", 25.0), ("refund", 25.0)]])
def test_returns_arriving_before_their_order_add_up_as_in_order(
        returns: list[tuple[str, float]]) -> None:
    """A refund and then a cancellation (or two refunds) of an order both arrive before the
    order: the order comes out as if they had arrived after it."""
    make = {"refund": refund, "cancel": cancel}
    undo = [make[kind](200 + n, "o1", amount) for n, (kind, amount) in enumerate(returns)]
    in_order = run([order(100, "o1", 30.0), *undo])
    early = run([*undo, order(100, "o1", 30.0)])
    for state in (in_order, early):
        assert (state.orders_count, state.monetary_total, state.orders[0].returned,
                state.orders[0].cancelled, state.last_order_at) == (
            in_order.orders_count, in_order.monetary_total, in_order.orders[0].returned,
            in_order.orders[0].cancelled, in_order.last_order_at)
    assert early.early_returns == ()


def test_unknown_order_cancellation_is_a_noop() -> None:
    state = run([order(100, "o1", 30.0)])
    for event in (cancel(200, "nope"), refund(200, "nope", 3.0)):
        after = apply_event(state, event)
        assert after.orders == state.orders
        assert after.orders_count == 1
        assert after.monetary_total == 30.0
    # and before any order
    first = run([cancel(10, "o1")])
    assert first.orders == ()
    assert first.orders_count == 0
    assert first.monetary_total == 0.0


def test_money_never_negative() -> None:
    state = run([order(1, "o1", 0.0), refund(2, "o1", 5.0), cancel(3, "o1")])
    assert state.monetary_total == 0.0
    assert state.orders_count == 0


# --- duplicates -----------------------------------------------------------------------------------

def test_duplicate_event_id_returns_the_same_object() -> None:
    event = cart_add(10, ("p1", 1), event_id="dup")
    state = run([ev(EventType.VISIT, 1), event])
    assert is_duplicate(state, event)
    assert apply_event(state, event) is state
    replayed = cart_add(20, ("p1", 5), event_id="dup")  # same id, other content
    assert apply_event(state, replayed) is state
    assert not is_duplicate(None, event)


def test_duplicate_order_id_is_ignored() -> None:
    state = run([order(100, "o1", 30.0)])
    again = order(150, "o1", 99.0)
    assert is_duplicate(state, again)
    assert apply_event(state, again) is state
    # a cancelled order id is still known
    cancelled = apply_event(state, cancel(200, "o1"))
    assert apply_event(cancelled, order(250, "o1", 30.0)) is cancelled


def test_old_event_ids_are_forgotten() -> None:
    first = ev(EventType.VISIT, 0, event_id="first")
    state = run([first] + [ev(EventType.VISIT, i) for i in range(1, MAX_RECENT_EVENT_IDS + 1)])
    assert len(state.recent_event_ids) == MAX_RECENT_EVENT_IDS
    assert not is_duplicate(state, first)


# --- views, favourites, support, NPS, engagement -------------------------------------------------

def test_product_views() -> None:
    state = run([view(10, "p1", "p2"), view(20, "p3"), view(30, "p1")])
    assert state.viewed == (("p2", T0 + 10), ("p3", T0 + 20), ("p1", T0 + 30))
    assert state.browse_since == T0 + 10
    assert state.last_view_at == T0 + 30


def test_late_view_keeps_the_newest_time() -> None:
    state = run([view(30, "p1"), view(20, "p2"), view(10, "p1")])
    assert dict(state.viewed) == {"p1": T0 + 30, "p2": T0 + 20}
    assert state.browse_since == T0 + 10
    assert state.last_view_at == T0 + 30


def test_same_product_twice_in_one_view() -> None:
    state = run([view(10, "p1", "p1")])
    assert state.viewed == (("p1", T0 + 10),)


def test_cart_add_and_order_close_the_browse_episode() -> None:
    state = run([view(10, "p1"), cart_add(20, ("p1", 1))])
    assert state.browse_since is None
    assert state.browse_closed_at == T0 + 20
    assert dict(state.viewed) == {"p1": T0 + 10}
    before_close = apply_event(state, view(15, "p2"))  # older than the cart add: no episode
    assert before_close.browse_since is None
    after_close = apply_event(state, view(25, "p2"))
    assert after_close.browse_since == T0 + 25
    ordered = apply_event(after_close, order(30, "o1", 1.0))
    assert ordered.browse_since is None
    assert ordered.browse_closed_at == T0 + 30


def fav(t: float, *pids: str) -> Event:
    return ev(EventType.FAVOURITE_ADD, t, products=tuple(Product(p) for p in pids))


def test_favourites_move_to_the_end_without_duplicates() -> None:
    state = run([fav(1, "a", "b"), fav(2, "c"), fav(3, "a")])
    assert state.favourites == (("b", T0 + 1), ("c", T0 + 2), ("a", T0 + 3))


# more than the bound, a product favourited twice, two at one instant
FAVOURITE_EVENTS = [fav(i, f"f{i:02d}") for i in range(MAX_FAVOURITES - 2)] + [
    fav(30, "f03"), fav(31, "z", "y"), fav(32, "x"), fav(2, "f40")]


@settings(max_examples=100, deadline=None)
@given(st.permutations(FAVOURITE_EVENTS))
def test_favourites_are_the_same_in_any_arrival_order(events: list[Event]) -> None:
    """A late favourite used to go to the newest end, and the bound then dropped a newer
    one in its stead."""
    in_order = run(sorted(FAVOURITE_EVENTS, key=lambda e: e.event_time))
    assert run(events).favourites == in_order.favourites
    kept = [pid for pid, _ in in_order.favourites]
    assert len(kept) == MAX_FAVOURITES and kept[:2] == ["f02", "f40"]
    assert kept[-4:] == ["f03", "y", "z", "x"]


def test_support_requests() -> None:
    state = run([ev(EventType.SUPPORT_REQUEST, 50), ev(EventType.SUPPORT_REQUEST, 20)])
    assert state.support_requests == 2
    assert state.last_support_at == T0 + 50


def test_nps_latest_answer_wins() -> None:
    state = run([ev(EventType.NPS_ANSWER, 50, nps_score=9), ev(EventType.NPS_ANSWER, 20,
                                                                 nps_score=2)])
    assert (state.nps_score, state.nps_at) == (9, T0 + 50)
    state = apply_event(state, ev(EventType.NPS_ANSWER, 60, nps_score=4))
    assert (state.nps_score, state.nps_at) == (4, T0 + 60)


@pytest.mark.parametrize(("first", "second"), [(10, 3), (3, 10)])
def test_an_nps_answer_at_the_instant_of_the_stored_one_does_not_replace_it(
        first: int, second: int) -> None:
    """The trigger rule acts on the first answer of an instant to arrive; the state keeps
    that one, in either arrival order (`test_triggers_arrival` checks the two agree)."""
    state = run([ev(EventType.NPS_ANSWER, 50, nps_score=first)])
    again = apply_event(state, ev(EventType.NPS_ANSWER, 50, nps_score=second))
    assert (again.nps_score, again.nps_at) == (state.nps_score, state.nps_at) == (first, T0 + 50)


def test_channel_engagement_counts() -> None:
    state = run([ev(EventType.MESSAGE_OPENED, 1, channel="email"),
                 ev(EventType.MESSAGE_CLICKED, 2, channel="push"),
                 ev(EventType.MESSAGE_OPENED, 3, channel="push"),
                 ev(EventType.MESSAGE_OPENED, 4)])
    assert state.channel_engagement == (("push", 2), ("email", 1), ("unknown", 1))


def test_other_types_change_only_bookkeeping() -> None:
    state = run([cart_add(10, ("p1", 1))])
    after = apply_event(state, ev(EventType.PAGE_VIEW, 20))
    bookkeeping = {"last_seen_at", "updated_at", "last_received_at", "recent_event_ids"}
    for name in ClientState.__dataclass_fields__:
        if name not in bookkeeping:
            assert getattr(after, name) == getattr(state, name), name
    assert after.updated_at == T0 + 20


# --- bounds ---------------------------------------------------------------------------------------

def test_viewed_is_bounded_newest_kept() -> None:
    state = run([view(i, f"p{i}") for i in range(MAX_VIEWED + 5)])
    assert len(state.viewed) == MAX_VIEWED
    assert state.viewed[-1] == (f"p{MAX_VIEWED + 4}", T0 + MAX_VIEWED + 4)
    assert state.viewed[0][0] == "p5"
    many = run([view(0, *(f"q{i}" for i in range(MAX_VIEWED * 2)))])
    assert len(many.viewed) == MAX_VIEWED


def test_favourites_bounded() -> None:
    state = run([ev(EventType.FAVOURITE_ADD, i, products=(Product(f"p{i}"),))
                 for i in range(MAX_FAVOURITES + 3)])
    assert len(state.favourites) == MAX_FAVOURITES
    assert state.favourites[-1] == (f"p{MAX_FAVOURITES + 2}", T0 + MAX_FAVOURITES + 2)


def test_orders_bounded_newest_kept_counts_all() -> None:
    n = MAX_ORDERS + 6
    state = run([order(i, f"o{i}", 1.0) for i in range(n)])
    assert len(state.orders) == MAX_ORDERS
    assert state.orders[0].order_id == "o6"
    assert state.orders_count == n
    assert state.monetary_total == float(n)
    assert state.first_order_at == T0


def test_a_full_order_list_that_holds_the_first_order_moves_it_on_cancellation() -> None:
    """Exactly MAX_ORDERS orders, the first cancelled: the list holds every order, so the
    first is the second (only a list that dropped older ones cannot tell)."""
    state = run([*(order(i, f"o{i}", 1.0) for i in range(MAX_ORDERS)),
                 cancel(MAX_ORDERS, "o0")])
    assert state.first_order_at == T0 + 1 and state.orders_count == MAX_ORDERS - 1
    dropped = run([*(order(i, f"o{i}", 1.0) for i in range(MAX_ORDERS + 1)),
                   cancel(MAX_ORDERS + 1, "o1")])
    assert dropped.first_order_at == T0  # o0 lies beyond the list: it stays the first


def test_cart_lines_bounded() -> None:
    state = run([cart_add(i, (f"p{i}", 1)) for i in range(MAX_CART_LINES + 4)])
    assert len(state.cart) == MAX_CART_LINES
    assert state.cart_items == MAX_CART_LINES
    assert state.cart_since is not None


def test_channels_bounded() -> None:
    state = run([ev(EventType.MESSAGE_OPENED, i, channel=f"ch{i}")
                 for i in range(MAX_CHANNELS + 4)])
    assert len(state.channel_engagement) == MAX_CHANNELS


def test_recent_event_ids_bounded() -> None:
    state = run([ev(EventType.VISIT, i) for i in range(MAX_RECENT_EVENT_IDS * 3)])
    assert len(state.recent_event_ids) == MAX_RECENT_EVENT_IDS


# --- event order ----------------------------------------------------------------------------------

ORDER_FREE_EVENTS = [
    ev(EventType.REGISTERED, 3 * HOUR, traits={"email": "new@x", "city": "Riga"}),
    ev(EventType.IDENTIFY, 1 * HOUR, traits={"email": "old@x", "phone": "+371"}),
    ev(EventType.VISIT, 2 * HOUR),
    ev(EventType.VISIT, 9 * HOUR),
    view(4 * HOUR, "p1", "p2"),
    view(8 * HOUR, "p1"),
    order(5 * HOUR, "o1", 12.5),
    order(7 * HOUR, "o2", 30.0),
    order(6 * HOUR, "o3", 7.25),
    refund(10 * HOUR, "o2", 10.0),
    ev(EventType.SUPPORT_REQUEST, 11 * HOUR),
    ev(EventType.NPS_ANSWER, 12 * HOUR, nps_score=3),
    ev(EventType.NPS_ANSWER, 13 * HOUR, nps_score=10),
    ev(EventType.CHECKOUT_STARTED, 4.5 * HOUR),
    ev(EventType.MESSAGE_OPENED, 14 * HOUR, channel="email"),
]

AGGREGATES = ("first_seen_at", "last_seen_at", "updated_at", "registered_at", "welcomed",
              "traits", "traits_updated_at", "last_visit_at", "visits", "orders",
              "orders_count", "monetary_total", "first_order_at", "last_order_at",
              "checkout_started_at", "support_requests", "last_support_at", "nps_score",
              "nps_at", "channel_engagement", "last_view_at")


def aggregates(state: ClientState) -> dict[str, Any]:
    out = {name: getattr(state, name) for name in AGGREGATES}
    out["viewed"] = dict(state.viewed)
    return out


def test_in_order_aggregates() -> None:
    state = run(sorted(ORDER_FREE_EVENTS, key=lambda e: e.event_time))
    assert state.visits == 3
    assert state.orders_count == 3
    assert state.monetary_total == 39.75
    assert state.traits == {"email": "new@x", "city": "Riga", "phone": "+371"}
    assert state.nps_score == 10
    assert state.viewed == (("p2", T0 + 4 * HOUR), ("p1", T0 + 8 * HOUR))


def refund_after_its_order(events: list[Event]) -> list[Event]:
    """A refund of an order not seen yet is a no-op, so arrival orders keep it after its order."""
    refund_event, placed = ORDER_FREE_EVENTS[9], ORDER_FREE_EVENTS[7]
    events = list(events)
    if events.index(refund_event) < events.index(placed):
        events.remove(refund_event)
        events.insert(events.index(placed) + 1, refund_event)
    return events


def test_reversed_events_same_aggregates() -> None:
    ordered = run(sorted(ORDER_FREE_EVENTS, key=lambda e: e.event_time))
    reverse = run(refund_after_its_order(sorted(ORDER_FREE_EVENTS, key=lambda e: -e.event_time)))
    assert aggregates(reverse) == aggregates(ordered)


@settings(max_examples=100, deadline=None)
@given(st.permutations(ORDER_FREE_EVENTS))
def test_any_order_same_aggregates(events: list[Event]) -> None:
    ordered = run(sorted(ORDER_FREE_EVENTS, key=lambda e: e.event_time))
    assert aggregates(run(refund_after_its_order(events))) == aggregates(ordered)


@pytest.mark.parametrize("repeat", [2, 3])
def test_replaying_everything_changes_nothing(repeat: int) -> None:
    once = run(ORDER_FREE_EVENTS)
    again = run(ORDER_FREE_EVENTS * repeat, None)
    assert again == once


def test_the_compiled_cores_slot_copy_copies_every_field() -> None:
    """`_slot_copy` is `evolve`'s copy in the compiled core (the sources keep the exec'd
    one, faster as Python): every field, into a new state, still frozen."""
    state = every_field_set()
    assert (_copy is _slot_copy) == features.COMPILED
    for copy in (_slot_copy, _copy):
        copied = copy(state)
        assert copied is not state and copied == state
        assert all(getattr(copied, f.name) == getattr(state, f.name)
                   for f in fields(ClientState))
    with pytest.raises(FrozenInstanceError):
        copied.cart = ()  # type: ignore[misc]


def test_traits_are_capped_keeping_the_ones_crmflow_reads() -> None:
    """A new trait name with every identify (a session id sent as a trait, say) no longer
    grows the state for ever; the contact, point and birthday traits are never dropped."""
    state = run([ev(EventType.IDENTIFY, 1, traits={"email": "ann@x", "birthday": "1990-01-02",
                                                    "zz_point": "p"})])
    for n in range(3 * MAX_TRAITS):
        state = apply_event(state, ev(EventType.IDENTIFY, 2 + n, traits={f"t{n:03d}": n}))
    assert len(state.traits) == MAX_TRAITS
    assert state.traits["email"] == "ann@x" and state.traits["birthday"] == "1990-01-02"
    assert "t000" in state.traits  # the rest by name, the same in any arrival order


def test_traits_the_configuration_reads_are_kept_first() -> None:
    """A push token (a channel's contact), the service interval and a trait a segment reads
    are kept however many other traits sort before them."""
    catalog = compile_segments({"vip": {"rule": "traits.vip_level >= 2"}}, {})
    rules = replace(TriggerRules(), segments=replace(TriggerRules().segments, catalog=catalog))
    assert {"push_token", "service_interval_days", "vip_level"} <= rules.read_traits
    named = {"push_token": "tok", "service_interval_days": 30, "vip_level": 3}
    state = apply_event(None, ev(EventType.IDENTIFY, 1, traits=named), rules.read_traits)
    for n in range(MAX_TRAITS):
        state = apply_event(state, ev(EventType.IDENTIFY, 2 + n, traits={f"a{n:03d}": n}),
                            rules.read_traits)
    assert len(state.traits) == MAX_TRAITS
    assert {name: state.traits[name] for name in named} == named


def test_two_orders_at_one_instant_keep_one_order_whichever_arrives_first() -> None:
    """Invoices of the same minute: the latest order (the feedback request's key, the
    replenishment's) is the same live, in arrival order, and in replay, by time."""
    a, b = order(T0, "A-1", 10.0), order(T0, "B-2", 20.0)
    one, other = run([a, b]), run([b, a])
    assert [o.order_id for o in one.orders] == [o.order_id for o in other.orders] == [
        "A-1", "B-2"]


def test_an_add_taken_back_on_arrival_still_began_the_episode_it_was_in() -> None:
    """a removed at 26 arrives first; its add at 12 comes next and is taken back; b at 19:
    in order a began the episode at 12, which b joined, so the cart's episode is 12's."""
    events = [cart_remove(26, ("a", 2)), cart_add(12, ("a", 2)), cart_add(19, ("b", 2))]
    in_order = run(sorted(events, key=lambda e: e.event_time))
    assert run(events).cart_since == in_order.cart_since == T0 + 12


def test_a_late_order_ends_the_episode_of_lines_since_removed() -> None:
    """b at 4, a at 10, b removed at 23, and the order at 9 arriving last: in order the
    order bought b and a began an episode of its own at 10."""
    events = [cart_add(4, ("b", 1)), cart_add(10, ("a", 2)), cart_remove(23, ("b", 1)),
              order(9, "o1", 5.0)]
    assert run(events).cart_since == run(sorted(events, key=lambda e: e.event_time)
                                         ).cart_since == T0 + 10
    emptied_first = [cart_add(4, ("b", 1)), cart_remove(23, ("b", 1)), order(9, "o1", 5.0),
                     cart_add(10, ("a", 2))]
    assert run(emptied_first).cart_since == T0 + 10
