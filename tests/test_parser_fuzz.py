"""Fuzzing the parsers (hypothesis): whatever JSON arrives, the only exception that escapes
is EventError, which names the field; whatever is accepted round-trips and flows through
the core without breaking its invariants."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.events import EventError, EventType, event_to_dict, parse_event
from features.segment import from_native, from_segment
from features.triggers import process_event
from tests.core_events import RULES

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

T0 = 1_700_000_000.0
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                               max_size=4),
    max_leaves=20)
NAMES = st.sampled_from([t.value for t in EventType] + ["bogus", "", "Order Completed"])
FIELDS = st.sampled_from(["event_id", "type", "client_id", "anonymous_id", "event_time",
                          "received_at", "products", "order", "traits", "properties",
                          "nps_score", "channel", "history", "name"])


@st.composite
def near_events(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed events with a few fields replaced by anything at all."""
    raw: dict[str, Any] = {"event_id": draw(st.text(min_size=1, max_size=8)),
                           "type": draw(NAMES), "client_id": draw(st.text(max_size=8)),
                           "event_time": T0 + draw(st.floats(-1e6, 1e6)),
                           "products": [{"product_id": "p", "price": 3, "quantity": 1}],
                           "order": {"order_id": "o", "total": 5}, "nps_score": 7,
                           "properties": {"occasion": "call", "status": "done",
                                          "client_id": "x", "from": "y", "state": "z"}}
    for name in draw(st.lists(FIELDS, max_size=3)):
        raw[name] = draw(JSON)
    return raw


def parses_or_names_the_field(parse: Any, raw: object) -> None:
    try:
        event = parse(raw)
    except EventError as exc:
        assert exc.field and str(exc).startswith(exc.field)
        return
    assert parse_event(event_to_dict(event)) == event


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(JSON, near_events()))
def test_native_parser_raises_only_event_errors(raw: object) -> None:
    parses_or_names_the_field(parse_event, raw)
    parses_or_names_the_field(lambda r: from_native(r, T0), raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(JSON, st.fixed_dictionaries({
    "type": st.sampled_from(["track", "identify", "page", "screen", "alias", "group", "x"]),
    "event": NAMES, "userId": st.text(max_size=6) | JSON, "anonymousId": JSON,
    "properties": JSON, "traits": JSON, "timestamp": JSON, "sentAt": JSON,
    "messageId": st.text(max_size=6)})))
def test_segment_parser_raises_only_event_errors(message: object) -> None:
    parses_or_names_the_field(lambda m: from_segment(m, T0), message)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(near_events(), min_size=1, max_size=6))
def test_whatever_parses_flows_through_the_core(raws: list[dict[str, Any]]) -> None:
    state = None
    for raw in raws:
        try:
            event = parse_event({**raw, "client_id": "c1", "anonymous_id": None})
        except EventError:
            continue
        if event.type.value in ("identity_linked", "profile_merged", "erasure_requested"):
            continue  # written by crmflow itself, refused at every entrance
        state, _ = process_event("c1", state, event, RULES)
        assert state.monetary_total >= -1e-9 and state.orders_count >= 0
        assert state.cart_items == sum(line.quantity for line in state.cart)
