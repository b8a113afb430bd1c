"""The state codec: version 3 with the trigger engine's bookkeeping, version 2 still read."""

from __future__ import annotations

from dataclasses import MISSING, fields, replace
from typing import Any

import msgpack
import pytest

from features.codec import FORMAT_VERSION, StateFormatError, decode_state, encode_state
from features.state import CategoryOrders, ClientState, OrderRecord, PendingTrigger
from tests.core_events import every_field_set

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

FULL = ClientState(
    first_seen_at=1.0, last_seen_at=2.5, updated_at=2.5, traits={"email": "a@x"},
    orders=(OrderRecord("o1", 1.0, 9.5),), orders_count=1, monetary_total=9.5,
    categories=(CategoryOrders("food", 1.0, 1.0, 1),),
    marks=(("birthday", 2024.0), ("churn_winback", 1_700_000_000.25), ("custom_rule", 3.0),
           ("onboarding", 2.0)),
    loyalty_tier="silver",
    pending=(PendingTrigger(10.0, "abandoned_cart", "1.000", 5.0,
                            {"items": [{"product_id": "p"}], "cart_value": 3.5}, True),),
    sends=(4.0, 5.5), decided=(123, 4_000_000_000), history_until=1_700_000_100.0,
    favourites=(("p4", 2.5),))
AS_BEFORE_V10 = (("p4", 0.0),)  # favourites read from a row that kept no times


def test_round_trip_of_every_new_field() -> None:
    data = encode_state(FULL)
    assert decode_state(data) == FULL
    assert encode_state(decode_state(data)) == data
    assert msgpack.unpackb(data)[0] == FORMAT_VERSION == 13


def test_every_field_survives_the_round_trip() -> None:
    defaults = {spec.name: spec.default if spec.default_factory is MISSING
                else spec.default_factory() for spec in fields(ClientState)}
    state = every_field_set()
    assert [name for name, default in defaults.items() if getattr(state, name) == default] == []
    assert decode_state(encode_state(state)) == state


def _as_version_12(state: ClientState) -> list[Any]:
    """The state's row as version 12 wrote it (one with no follow-up waiting)."""
    row: list[Any] = msgpack.unpackb(encode_state(state), strict_map_key=False)
    return [12, *row[1:]]


def _as_version_11(state: ClientState) -> list[Any]:
    """The state's row as version 11 wrote it: without `cart_removals` and `cart_emptied`."""
    return [11, *_as_version_12(state)[1:-2]]


def test_version_12_records_read_as_they_were() -> None:
    state = every_field_set()
    old = msgpack.packb(_as_version_12(state), use_bin_type=True)
    assert decode_state(old) == state
    assert len(encode_state(state)) == len(old)  # a state with no follow-up: not a byte more


def test_a_follow_up_waiting_survives_the_round_trip_and_costs_only_its_own_row() -> None:
    plain = PendingTrigger(10.0, "abandoned_cart", "1.000", 5.0, {"cart_value": 3.5})
    follow = PendingTrigger(10.0, "abandoned_cart", "1.000", 5.0, {"cart_value": 3.5}, True,
                            ("email",), ("0123456789abcdef01234567",))
    state = replace(FULL, pending=(plain, follow))
    decoded = decode_state(encode_state(state))
    assert decoded == state
    assert decoded.pending[1].tried == ("email",) and decoded.pending[1].follows == (
        "0123456789abcdef01234567",)
    row = msgpack.unpackb(encode_state(state), strict_map_key=False)
    assert [len(p) for p in row[36]] == [6, 8]  # the plain one's row as before version 13


def _as_version_10(state: ClientState) -> list[Any]:
    """The state's row as version 10 wrote it: without `links_lost` either."""
    return [10, *_as_version_11(state)[1:-1]]


def test_version_11_records_read_with_no_cart_removals() -> None:
    state = every_field_set()
    old = msgpack.packb(_as_version_11(state), use_bin_type=True)
    assert decode_state(old) == replace(state, cart_removals=(), cart_emptied=None)


def test_cart_removals_at_whole_seconds_are_stored_compactly_and_read_as_times() -> None:
    state = replace(FULL, cart_removals=(("p1", 1_700_000_000.0, 2), ("p2", 1_700_000_000.5, 1)))
    row = msgpack.unpackb(encode_state(state), strict_map_key=False)
    assert row[-2] == [["p1", 1_700_000_000, 2], ["p2", 1_700_000_000.5, 1]]
    assert isinstance(row[-2][0][1], int)  # 5 bytes, not 9
    decoded = decode_state(encode_state(state))
    assert decoded == state
    assert all(isinstance(at, float) for _, at, _ in decoded.cart_removals)


def test_version_6_records_read_as_never_backfilled() -> None:
    old = msgpack.packb([6, *_as_version_9(FULL)[1:-3]])
    assert decode_state(old) == replace(FULL, history_until=0.0, favourites=AS_BEFORE_V10)


def test_version_7_records_read_with_no_products_bought() -> None:
    state = replace(FULL, bought=("p1", "p2"))
    row = _as_version_9(state)
    assert row[-2] == ["p1", "p2"]
    old = msgpack.packb([7, *row[1:-2]])
    assert decode_state(old) == replace(state, bought=(), favourites=AS_BEFORE_V10)


FAVOURITES = 20  # the row's position of the favourites


def test_version_10_records_read_with_no_links_lost() -> None:
    state = every_field_set()
    old = msgpack.packb(_as_version_10(state), use_bin_type=True)
    assert decode_state(old) == replace(state, links_lost=(), cart_removals=(), cart_emptied=None)


def _as_version_9(state: ClientState) -> list[Any]:
    """The state's row as version 9 wrote it: favourites as product ids, oldest first."""
    row = _as_version_10(state)
    row[0] = 9
    row[FAVOURITES] = [pid for pid, _ in row[FAVOURITES]]
    return row


def test_version_9_favourites_keep_their_order_with_times_before_any_event() -> None:
    state = replace(every_field_set(), favourites=(("p7", 1.5), ("p3", 2.0), ("p5", 2.0)))
    old = msgpack.packb(_as_version_9(state), use_bin_type=True)
    decoded = decode_state(old)
    assert decoded == replace(state, favourites=(("p7", 0.0), ("p3", 1.0), ("p5", 2.0)),
                              links_lost=(), cart_removals=(), cart_emptied=None)
    assert decode_state(encode_state(decoded)) == decoded


def test_version_8_records_read_with_no_events_held() -> None:
    state = every_field_set()
    old = msgpack.packb([8, *_as_version_9(state)[1:-1]], use_bin_type=True)
    assert decode_state(old) == replace(state, held=(), favourites=(("p3", 0.0),),
                                        links_lost=(), cart_removals=(), cart_emptied=None)


def _as_version_7(state: ClientState) -> bytes:
    return msgpack.packb([7, *_as_version_9(state)[1:-2]], use_bin_type=True)


BROWSE_DUE = 1_700_007_200.0
WAITING_BROWSE = PendingTrigger(1_700_035_200.0, "abandoned_browse", "1700000000.000",
                                BROWSE_DUE, {"products": ["p1"]}, True)


def test_a_version_7_browse_reminder_waiting_gets_its_due_time_as_the_rules_mark() -> None:
    """Up to v7 a browse reminder pushed `browse_closed_at` to its due time when it fired;
    v8 keeps that in the rule's mark and checks the waiting reminder against
    `browse_closed_at` (a cart add or order after the episode's last view cancels it). Read
    as it was, the reminder waiting at the upgrade would be cancelled at its release."""
    v7 = replace(FULL, browse_closed_at=BROWSE_DUE, pending=(WAITING_BROWSE,))
    state = decode_state(_as_version_7(v7))
    assert state.browse_closed_at == 0.0
    assert dict(state.marks)["abandoned_browse"] == BROWSE_DUE
    assert state.pending == (WAITING_BROWSE,)
    assert decode_state(encode_state(state)) == state  # v8 now: read as it is


def test_a_version_7_browse_closed_by_a_later_cart_add_is_read_as_it_was() -> None:
    later = replace(FULL, browse_closed_at=BROWSE_DUE + 60.0, pending=(WAITING_BROWSE,))
    read = decode_state(_as_version_7(later))
    assert read == replace(later, favourites=AS_BEFORE_V10)  # the cart add cancels it, as in v7
    sent = replace(FULL, browse_closed_at=BROWSE_DUE)  # no reminder waiting: nothing to move
    assert decode_state(_as_version_7(sent)) == replace(sent, favourites=AS_BEFORE_V10)


def test_marks_are_stored_compactly() -> None:
    row = msgpack.unpackb(encode_state(FULL), strict_map_key=False)
    marks = row[34]  # the version, 32 fields of version 2, the categories, then the marks
    assert marks == [[6, 2024], [3, 1_700_000_000.25], ["custom_rule", 3], [7, 2]]
    bare = replace(FULL, marks=())
    assert len(encode_state(FULL)) - len(encode_state(bare)) < 40


def test_version_2_records_are_read_with_defaults() -> None:
    v2 = msgpack.packb([2, *_as_version_9(FULL)[1:33]], use_bin_type=True)
    old = decode_state(v2)
    assert old == replace(FULL, categories=(), marks=(), loyalty_tier="", pending=(), sends=(),
                          decided=(), history_until=0.0, favourites=AS_BEFORE_V10)


@pytest.mark.parametrize("data", [msgpack.packb([1, 2, 3]), msgpack.packb({"a": 1}), b"\xc1"])
def test_unknown_formats_are_refused(data: bytes) -> None:
    with pytest.raises(StateFormatError):
        decode_state(data)
