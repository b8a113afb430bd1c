"""Compact, versioned binary encoding of a client's state (msgpack of a positional array).

Positional, not keyed: field names would cost more than the values for most clients.
The first element is the format version; a decoder refuses versions it does not know
rather than misreading them. Version 2 records (before the trigger catalogue's bookkeeping)
are still read: the fields added since take their defaults.

A stored state may be preceded by its timer schedule (`encode_stored`): a fixed header whose
first byte, 0xc1, is the one byte msgpack never uses, so no state can start with it.
"""

from __future__ import annotations

import math
import struct
from itertools import starmap
from typing import Any

import msgpack

from features.events import event_to_dict, parse_event
from features.rules import (
    ABANDONED_BROWSE,
    BIRTHDAY,
    CHURN_WINBACK,
    FEEDBACK_REQUEST,
    FIRST_ORDER_PROMO,
    LOYALTY_STATUS,
    ONBOARDING,
    REPLENISHMENT_REMINDER,
    SECOND_ORDER_NUDGE,
    SERVICE_REMINDER,
)
from features.state import (
    BIRTHDAY_KNOWN,
    CartLine,
    CategoryInterest,
    CategoryOrders,
    ClientState,
    OrderRecord,
    PendingTrigger,
    evolve,
    mark_of,
    with_mark,
)
from features.stored_schedule import StoredSchedule

FORMAT_VERSION = 13

# Marks are stored by number: append only, never reorder (a name not listed is kept as
# text). Whole-number values (flags, counts, whole-second times) are stored as integers.
_MARK_NAMES = (FEEDBACK_REQUEST, SECOND_ORDER_NUDGE, FIRST_ORDER_PROMO, CHURN_WINBACK,
               REPLENISHMENT_REMINDER, SERVICE_REMINDER, BIRTHDAY, ONBOARDING, LOYALTY_STATUS,
               ABANDONED_BROWSE, BIRTHDAY_KNOWN)
_MARK_CODES = {name: code for code, name in enumerate(_MARK_NAMES)}


def _mark_value(value: float) -> float | int:
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _time(value: float | None) -> float | int | None:
    """Whole-second times as integers: 5 bytes instead of 9."""
    return None if value is None else _mark_value(float(value))


def _encode_marks(marks: tuple[tuple[str, float], ...]) -> list[list[Any]]:
    return [[_MARK_CODES.get(name, name), _mark_value(value)] for name, value in marks]


def _decode_marks(rows: list[list[Any]]) -> tuple[tuple[str, float], ...]:
    return tuple((_MARK_NAMES[key] if isinstance(key, int) else key, float(value))
                 for key, value in rows)
_V2_FIELDS = 33  # version 2 rows: the version and 32 fields

_SCHEDULE_MARK = 0xC1
# mark, due (NaN: none), flags (1 live, 2 buyer), rules' and model's fingerprints
_SCHEDULE = struct.Struct("<BdBII")
_LIVE, _BUYER = 1, 2


class StateFormatError(ValueError):
    pass


def encode_state(state: ClientState) -> bytes:
    # tuples of plain values pack as arrays as they are (msgpack's default): no copies
    row: list[Any] = [
        FORMAT_VERSION,
        state.first_seen_at, state.last_seen_at, state.updated_at, state.last_received_at,
        state.registered_at, state.welcomed, dict(state.traits), state.traits_updated_at,
        state.last_visit_at, state.visits,
        [[c.product_id, c.quantity, c.price, c.category, c.added_at] for c in state.cart],
        state.cart_updated_at, state.cart_since, state.cart_reminded, state.cart_closed_at,
        state.viewed, state.browse_since, state.last_view_at,
        state.browse_closed_at, state.favourites,
        [[o.order_id, o.placed_at, o.total, o.returned, o.cancelled] for o in state.orders],
        state.orders_count, state.monetary_total, state.first_order_at, state.last_order_at,
        state.checkout_started_at, state.support_requests, state.last_support_at,
        state.nps_score, state.nps_at, state.channel_engagement, state.recent_event_ids,
        [[c.category, c.first_at, c.last_at, c.count, c.reminded_through]
         for c in state.categories],
        _encode_marks(state.marks), state.loyalty_tier,
        [_encode_pending(p) for p in state.pending],
        state.sends, state.decided, state.early_returns, state.touched, state.visit_days,
        state.view_hours, state.view_days,
        [[i.category, _time(i.viewed_at), _time(i.carted_at), _time(i.bought_at), i.count]
         for i in state.interests],
        _time(state.orders_updated_at), _time(state.cart_changed_at), _time(state.engagement_at),
        [[name, _time(at)] for name, at in state.segments], _time(state.segments_at),
        state.aliases, state.merged_into, _time(state.history_until), state.bought,
        [event_to_dict(e) for e in state.held], state.links_lost,
        [[pid, _time(at), quantity] for pid, at, quantity in state.cart_removals],
        None if state.cart_emptied is None else [_time(at) for at in state.cart_emptied],
    ]
    return msgpack.packb(row, use_bin_type=True)


def encode_stored(state: bytes, schedule: StoredSchedule | None) -> bytes:
    """An encoded state as a bucket stores it, after its schedule when there is one."""
    if schedule is None:
        return state
    due = math.nan if schedule.due is None else schedule.due
    flags = (_LIVE if schedule.live else 0) | (_BUYER if schedule.buyer else 0)
    return _SCHEDULE.pack(_SCHEDULE_MARK, due, flags, schedule.rules_print,
                          schedule.model_print) + state


def stored_schedule(data: bytes) -> StoredSchedule | None:
    """The schedule stored before a state (None: none)."""
    if not data or data[0] != _SCHEDULE_MARK:
        return None
    if len(data) < _SCHEDULE.size:
        raise StateFormatError("truncated client state schedule")
    _, due, flags, rules_print, model_print = _SCHEDULE.unpack_from(data)
    return StoredSchedule(None if math.isnan(due) else due, bool(flags & _LIVE),
                          bool(flags & _BUYER), rules_print, model_print)


def decode_state(data: bytes) -> ClientState:
    """A state from `encode_state`'s bytes, or from a stored value with its schedule."""
    if data and data[0] == _SCHEDULE_MARK:
        data = data[_SCHEDULE.size:]
    try:
        row = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise StateFormatError(f"undecodable client state: {exc}") from exc
    if isinstance(row, list) and row and row[0] == 2 and len(row) == _V2_FIELDS:
        row = [3, *row[1:], [], [], "", [], [], []]
    if isinstance(row, list) and row and row[0] == 3:
        row = [4, *row[1:], []]  # v4 added early_returns (cart lines' added_at is
        # optional in a line, so v3 lines read as added at 0)
    if isinstance(row, list) and row and row[0] == 4:
        row = [5, *row[1:], []]  # v5 added touched; cart_reminded became a time
        row[14] = float(row[14])  # True (reminded, time unknown) reads as 1.0: still truthy
    if isinstance(row, list) and row and row[0] == 5:
        # v6 added rolling activity, interests, group times, segments and identity
        row = [6, *row[1:], [], [], [], [], None, None, None, [], 0, [], None]
    if isinstance(row, list) and row and row[0] == 6:
        row = [7, *row[1:], 0]  # v7 added history_until (backfills)
    before_v8 = isinstance(row, list) and bool(row) and row[0] == 7
    if before_v8:
        row = [8, *row[1:], []]  # v8 added bought (the latest order's products)
    if isinstance(row, list) and row and row[0] == 8:
        row = [9, *row[1:], []]  # v9 added held (live events held back)
    if isinstance(row, list) and len(row) > 20 and row[0] == 9:
        # v10 gave favourites their times; the ones before keep their order, oldest first
        row = [10, *row[1:20], [[pid, float(n)] for n, pid in enumerate(row[20])], *row[21:]]
    if isinstance(row, list) and row and row[0] == 10:
        row = [11, *row[1:], []]  # v11 added links_lost (tombstones)
    if isinstance(row, list) and row and row[0] == 11:
        row = [12, *row[1:], [], None]  # v12 added cart_removals, cart_emptied
    if isinstance(row, list) and row and row[0] == 12:
        row = [FORMAT_VERSION, *row[1:]]  # v13: a waiting trigger may be a follow-up
    if not isinstance(row, list) or not row or row[0] != FORMAT_VERSION:
        found = row[:1] if isinstance(row, list) else type(row).__name__
        raise StateFormatError(f"unknown client state format: {found}")
    (_, first_seen_at, last_seen_at, updated_at, last_received_at, registered_at, welcomed,
     traits, traits_updated_at, last_visit_at, visits, cart, cart_updated_at, cart_since,
     cart_reminded, cart_closed_at, viewed, browse_since, last_view_at, browse_closed_at,
     favourites, orders, orders_count, monetary_total, first_order_at, last_order_at,
     checkout_started_at, support_requests, last_support_at, nps_score, nps_at,
     channel_engagement, recent_event_ids, categories, marks, loyalty_tier, pending, sends,
     decided, early_returns, touched, visit_days, view_hours, view_days, interests,
     orders_updated_at, cart_changed_at, engagement_at, segments, segments_at, aliases,
     merged_into, history_until, bought, held, links_lost, cart_removals, cart_emptied) = row
    state = ClientState(
        first_seen_at=first_seen_at, last_seen_at=last_seen_at, updated_at=updated_at,
        last_received_at=last_received_at,
        registered_at=registered_at, welcomed=welcomed, traits=traits,
        traits_updated_at=traits_updated_at, last_visit_at=last_visit_at, visits=visits,
        cart=tuple(starmap(CartLine, cart)), cart_updated_at=cart_updated_at,
        cart_since=cart_since, cart_reminded=cart_reminded, cart_closed_at=cart_closed_at,
        cart_removals=tuple((pid, float(at), quantity) for pid, at, quantity in cart_removals),
        cart_emptied=None if cart_emptied is None else (
            float(cart_emptied[0]), float(cart_emptied[1]), float(cart_emptied[2])),
        viewed=tuple(map(tuple, viewed)), browse_since=browse_since,
        last_view_at=last_view_at, browse_closed_at=browse_closed_at,
        favourites=tuple(map(tuple, favourites)), orders=tuple(starmap(OrderRecord, orders)),
        orders_count=orders_count, monetary_total=monetary_total,
        first_order_at=first_order_at, last_order_at=last_order_at,
        checkout_started_at=checkout_started_at, support_requests=support_requests,
        last_support_at=last_support_at, nps_score=nps_score, nps_at=nps_at,
        channel_engagement=tuple(map(tuple, channel_engagement)),
        recent_event_ids=tuple(recent_event_ids),
        categories=tuple(starmap(CategoryOrders, categories)),
        marks=_decode_marks(marks), loyalty_tier=loyalty_tier,
        pending=tuple(map(_decode_pending, pending)), sends=tuple(sends),
        decided=tuple(decided),
        early_returns=tuple(map(tuple, early_returns)),
        touched=tuple(touched),
        visit_days=tuple(map(tuple, visit_days)),
        view_hours=tuple(map(tuple, view_hours)),
        view_days=tuple(map(tuple, view_days)),
        interests=tuple(starmap(CategoryInterest, interests)),
        orders_updated_at=orders_updated_at, cart_changed_at=cart_changed_at,
        engagement_at=engagement_at,
        segments=tuple((name, float(at)) for name, at in segments),
        segments_at=float(segments_at), aliases=tuple(aliases), merged_into=merged_into,
        history_until=float(history_until), bought=tuple(bought),
        held=tuple(parse_event(e) for e in held), links_lost=tuple(links_lost),
    )
    return _browse_mark_of_v7(state) if before_v8 else state


def _encode_pending(p: PendingTrigger) -> list[Any]:
    """A waiting trigger's row; a follow-up's adds its channels tried and the ids it follows
    (the others' rows are as before version 13, not a byte more)."""
    row = [p.release_at, p.type, p.key, p.fired_at, dict(p.payload), p.deferred]
    if p.follows:
        row += [p.tried, p.follows]
    return row


def _decode_pending(row: list[Any]) -> PendingTrigger:
    if len(row) > 6:  # a follow-up
        return PendingTrigger(row[0], row[1], row[2], row[3], row[4], row[5], tuple(row[6]),
                              tuple(row[7]))
    return PendingTrigger(*row)  # (rows of early formats have no `deferred`)


def _browse_mark_of_v7(state: ClientState) -> ClientState:
    """Up to v7 a browse reminder, when it fired, pushed `browse_closed_at` up to its due
    time (views up to it were closed) and the rule kept no mark; since v8 the mark holds
    that time, and `browse_closed_at` only the last cart add or order, which the reminder
    waiting for the end of quiet hours is checked against at its release. A v7 state whose
    waiting reminder made its `browse_closed_at` gets the mark instead (the cart add or
    order before, lost, was before the episode: 0 stands for it), else that reminder would
    read as closed by a cart add."""
    fired = {p.fired_at for p in state.pending if p.type == ABANDONED_BROWSE}
    if mark_of(state, ABANDONED_BROWSE) is not None or state.browse_closed_at not in fired:
        return state
    return with_mark(evolve(state, browse_closed_at=0.0), ABANDONED_BROWSE,
                     state.browse_closed_at)
