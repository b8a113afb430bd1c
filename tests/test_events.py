"""The canonical event model: what parse_event accepts, what it refuses and why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.events import (
    Event,
    EventError,
    EventType,
    Order,
    Product,
    event_to_dict,
    format_time,
    parse_event,
)

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z

PRODUCTS = [{"product_id": "p1", "category": "shoes", "price": 19.99, "quantity": 2}]
ORDER = {"order_id": "o1", "total": 39.98, "currency": "EUR", "items": PRODUCTS}

# The fields each type needs on top of the common ones.
NEEDS: dict[EventType, dict[str, Any]] = {
    EventType.REGISTERED: {"traits": {"email": "a@example.com"}},
    EventType.IDENTIFY: {"traits": {"first_name": "Ann"}},
    EventType.VISIT: {},
    EventType.PAGE_VIEW: {"properties": {"path": "/sale"}},
    EventType.PRODUCT_VIEW: {"products": PRODUCTS},
    EventType.FAVOURITE_ADD: {"products": PRODUCTS},
    EventType.CART_ADD: {"products": PRODUCTS},
    EventType.CART_REMOVE: {"products": PRODUCTS},
    EventType.CHECKOUT_STARTED: {},
    EventType.ORDER_PLACED: {"order": ORDER},
    EventType.ORDER_CANCELLED: {"order": {"order_id": "o1"}},
    EventType.ORDER_REFUNDED: {"order": {"order_id": "o1", "total": 5.0}},
    EventType.SUPPORT_REQUEST: {"properties": {"topic": "delivery"}},
    EventType.NPS_ANSWER: {"nps_score": 9},
    EventType.MESSAGE_OPENED: {"channel": "email"},
    EventType.MESSAGE_CLICKED: {"channel": "push"},
    EventType.SESSION_END: {},
    EventType.TOUCH_RECORDED: {"channel": "phone",
                               "properties": {"occasion": "renewal_call", "status": "done"}},
    EventType.CUSTOM: {"name": "coupon_copied"},
    EventType.IDENTITY_LINKED: {"properties": {"client_id": "u1"}},
    EventType.PROFILE_MERGED: {"properties": {"from": "anon:x", "state": "AAAA"}},
    EventType.ERASURE_REQUESTED: {},
}


def raw(event_type: EventType | str = EventType.VISIT, **fields: Any) -> dict[str, Any]:
    """A valid raw event of `event_type`; keyword arguments override or add fields."""
    type_name = event_type.value if isinstance(event_type, EventType) else event_type
    out: dict[str, Any] = {"event_id": "e1", "type": type_name, "client_id": "c1",
                           "event_time": T0}
    if isinstance(event_type, EventType):
        out.update(NEEDS[event_type])
    out.update(fields)
    return out


def field_of(data: dict[str, Any]) -> str:
    with pytest.raises(EventError) as info:
        parse_event(data)
    assert str(info.value).startswith(info.value.field + ":")
    return info.value.field


def test_every_event_type_has_a_case() -> None:
    assert set(NEEDS) == set(EventType)


@pytest.mark.parametrize("event_type", list(EventType))
def test_parse_accepts_every_type(event_type: EventType) -> None:
    event = parse_event(raw(event_type))
    assert event.type is event_type
    assert event.event_id == "e1"
    assert event.client_key == "c1"
    assert event.event_time == T0
    assert event.received_at == T0  # defaults to the event time


@pytest.mark.parametrize("event_type", list(EventType))
def test_round_trip_every_type(event_type: EventType) -> None:
    event = parse_event(raw(event_type, received_at=T0 + 3))
    assert parse_event(event_to_dict(event)) == event


def test_parsed_fields() -> None:
    order = parse_event(raw(EventType.ORDER_PLACED))
    assert order.order == Order("o1", 39.98, "EUR", (Product("p1", "shoes", 19.99, 2),))
    cart = parse_event(raw(EventType.CART_ADD))
    assert cart.products == (Product("p1", "shoes", 19.99, 2),)
    assert parse_event(raw(EventType.NPS_ANSWER)).nps_score == 9
    assert parse_event(raw(EventType.MESSAGE_OPENED)).channel == "email"
    assert parse_event(raw(EventType.CUSTOM)).name == "coupon_copied"


def test_order_total_defaults_to_the_items() -> None:
    event = parse_event(raw(EventType.ORDER_PLACED, products=PRODUCTS,
                            order={"order_id": "o9"}))
    assert event.order is not None
    assert event.order.total == pytest.approx(39.98)
    assert event.order.items == (Product("p1", "shoes", 19.99, 2),)


def test_cancellation_without_amount_means_the_whole_order() -> None:
    event = parse_event(raw(EventType.ORDER_CANCELLED))
    assert event.order is not None
    assert event.order.total < 0
    assert parse_event(event_to_dict(event)) == event


def test_product_defaults() -> None:
    event = parse_event(raw(EventType.CART_ADD, products=[{"product_id": 42}]))
    assert event.products == (Product("42", None, 0.0, 1),)


_ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
               max_size=12).filter(lambda s: not s.startswith("anon:"))
_client_ids = _ids.filter(lambda s: s == s.strip())
_money = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
_products = st.lists(
    st.builds(Product, product_id=_ids, category=st.none() | _ids, price=_money,
              quantity=st.integers(1, 1000)),
    max_size=3,
).map(tuple)
_times = st.floats(min_value=T0 - 1e8, max_value=T0 + 1e8, allow_nan=False)
_json_scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8)


_touch_properties = st.fixed_dictionaries(
    {"occasion": st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
     "status": st.sampled_from(["done", "skipped"])},
    optional={"key": st.text(max_size=10), "comment": st.text(max_size=30),
              "author": st.text(max_size=10)})


@st.composite
def events(draw: st.DrawFn) -> Event:
    event_type = draw(st.sampled_from(list(EventType)))
    client_id = draw(st.none() | _client_ids)
    anonymous_id = draw(_client_ids) if client_id is None else draw(st.none() | _client_ids)
    products = draw(_products)
    if event_type in (EventType.CART_ADD, EventType.CART_REMOVE, EventType.PRODUCT_VIEW,
                      EventType.FAVOURITE_ADD) and not products:
        products = (Product("p"),)
    order = None
    if event_type in (EventType.ORDER_PLACED, EventType.ORDER_CANCELLED,
                      EventType.ORDER_REFUNDED):
        items = draw(_products)
        whole = event_type is EventType.ORDER_CANCELLED or (
            event_type is EventType.ORDER_REFUNDED and not items)  # -1: the whole order
        total = draw(_money | st.just(-1.0)) if whole else draw(_money)
        order = Order(draw(_ids), total, draw(st.none() | st.sampled_from(["EUR", "USD"])),
                      items)
    return Event(
        event_id=draw(_ids),
        type=event_type,
        event_time=draw(_times),
        received_at=draw(_times),
        client_id=client_id,
        anonymous_id=anonymous_id,
        name=draw(st.none() | _ids),
        products=products,
        order=order,
        traits=draw(st.dictionaries(st.sampled_from(["plan", "vip", "score"]), _json_scalars,
                                    max_size=3)),
        properties=(draw(_touch_properties) if event_type is EventType.TOUCH_RECORDED
                    else {**NEEDS[event_type]["properties"],
                          **draw(st.dictionaries(_ids, _json_scalars, max_size=3))}
                    if event_type in (EventType.IDENTITY_LINKED, EventType.PROFILE_MERGED)
                    else draw(st.dictionaries(_ids, _json_scalars, max_size=3))),
        nps_score=draw(st.integers(0, 10)) if event_type is EventType.NPS_ANSWER else None,
        channel=draw(st.none() | st.sampled_from(["email", "sms", "push"])),
    )


@settings(max_examples=200, deadline=None)
@given(events())
def test_round_trip_property(event: Event) -> None:
    assert parse_event(event_to_dict(event)) == event


def test_client_key() -> None:
    assert parse_event(raw(client_id="c7")).client_key == "c7"
    anonymous = parse_event(raw(client_id=None, anonymous_id="cookie-1"))
    assert anonymous.client_id is None
    assert anonymous.client_key == "anon:cookie-1"
    both = parse_event(raw(client_id="c7", anonymous_id="cookie-1"))
    assert both.client_key == "c7"


def test_numeric_client_id_becomes_text() -> None:
    assert parse_event(raw(client_id=123)).client_id == "123"


# --- refusals -------------------------------------------------------------------------------------

def touch(**properties: Any) -> dict[str, Any]:
    base = {"occasion": "birthday", "key": "2025", "status": "done", "comment": "called",
            "author": "mia"}
    return raw(EventType.TOUCH_RECORDED, properties={**base, **properties})


def test_manual_touch_fields() -> None:
    event = parse_event(touch())
    assert event.properties["occasion"] == "birthday"
    assert event.channel == "phone"
    assert parse_event(touch(key=None, comment=None, author=None)).properties["key"] is None


@pytest.mark.parametrize(("properties", "field"), [
    ({"occasion": None}, "properties.occasion"),
    ({"occasion": "Birthday"}, "properties.occasion"),
    ({"occasion": "x" * 65}, "properties.occasion"),
    ({"occasion": 5}, "properties.occasion"),
    ({"status": "maybe"}, "properties.status"),
    ({"status": None}, "properties.status"),
    ({"key": 2025}, "properties.key"),
    ({"key": "k" * 201}, "properties.key"),
    ({"comment": "c" * 2001}, "properties.comment"),
    ({"author": ["mia"]}, "properties.author"),
])
def test_bad_manual_touch_names_the_field(properties: dict[str, Any], field: str) -> None:
    data = touch()
    data["properties"] = {k: v for k, v in {**data["properties"], **properties}.items()
                          if v is not None or k not in ("occasion", "status")}
    assert field_of(data) == field


def test_manual_touch_channel_is_a_name() -> None:
    assert field_of(touch() | {"channel": "Phone call"}) == "channel"

def test_not_an_object() -> None:
    with pytest.raises(EventError) as info:
        parse_event(["not", "an", "event"])
    assert info.value.field == "event"


def test_missing_event_id() -> None:
    data = raw()
    del data["event_id"]
    assert field_of(data) == "event_id"
    assert field_of(raw(event_id="")) == "event_id"


def test_missing_client_and_anonymous_id() -> None:
    data = raw()
    del data["client_id"]
    assert field_of(data) == "client_id"
    assert field_of(raw(client_id="", anonymous_id=None)) == "client_id"


def test_client_id_must_not_look_anonymous() -> None:
    assert field_of(raw(client_id="anon:x")) == "client_id"


def test_too_long_id() -> None:
    assert field_of(raw(event_id="x" * 201)) == "event_id"


@pytest.mark.parametrize("name", ["client_id", "anonymous_id"])
@pytest.mark.parametrize("value", [" c4 ", "c4 ", "\tc4", "  "])
def test_client_ids_with_surrounding_whitespace_are_refused(name: str, value: str) -> None:
    """`?ids= c4 ` reads c4: an id stored as " c4 " could not be read back, nor "  " at all."""
    assert field_of(raw(**{name: value})) == name


def test_unknown_type() -> None:
    assert field_of(raw("teleported")) == "type"
    data = raw()
    del data["type"]
    assert field_of(data) == "type"


def test_missing_event_time() -> None:
    data = raw()
    del data["event_time"]
    assert field_of(data) == "event_time"


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01T00:00:00", "", None, True, [1]])
def test_bad_time(bad: object) -> None:
    assert field_of(raw(event_time=bad)) == "event_time"


@pytest.mark.parametrize("bad", [0, -5, 1e20, "1989-12-31T23:59:59Z", "2100-01-01T00:00:00Z",
                                 float("nan"), float("inf")])
def test_time_out_of_range(bad: object) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw(event_time=bad))
    assert info.value.field == "event_time"


def test_bad_received_at() -> None:
    assert field_of(raw(received_at="soon")) == "received_at"


def test_epoch_milliseconds_accepted() -> None:
    assert parse_event(raw(event_time=1_700_000_000_123)).event_time == pytest.approx(
        1_700_000_000.123)
    assert parse_event(raw(event_time=1_700_000_000)).event_time == T0


def test_iso_times() -> None:
    expected = datetime(2024, 3, 1, 12, 30, tzinfo=UTC).timestamp()
    assert parse_event(raw(event_time="2024-03-01T12:30:00Z")).event_time == expected
    assert parse_event(raw(event_time="2024-03-01t12:30:00z")).event_time == expected  # RFC 3339
    assert parse_event(raw(event_time="2024-03-01T14:30:00+02:00")).event_time == expected
    # naive means UTC, whatever the machine's zone
    assert parse_event(raw(event_time="2024-03-01T12:30:00")).event_time == expected
    assert parse_event(raw(event_time=" 2024-03-01 12:30:00 ")).event_time == expected


def test_format_time() -> None:
    assert format_time(T0) == "2023-11-14T22:13:20.000Z"
    assert format_time(None) is None
    assert parse_event(raw(event_time=format_time(T0 + 0.25))).event_time == T0 + 0.25
    assert format_time(T0 + 0.9999996) == "2023-11-14T22:13:21.000Z"  # rounds to the next second
    assert format_time(-0.5) == "1969-12-31T23:59:59.500Z"  # datetime's own way, before 1970


@settings(max_examples=3000)
@given(st.one_of(st.floats(min_value=0, max_value=253_402_300_798.9),
                 st.integers(min_value=0, max_value=4_102_444_800_000).map(lambda ms: ms / 1000),
                 st.integers(min_value=0, max_value=4_102_444_800).map(float)))
def test_format_time_is_what_datetime_says(seconds: float) -> None:
    """The arithmetic formatter against datetime's isoformat, which it replaces for speed."""
    expected = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    assert format_time(seconds) == expected.replace("+00:00", "Z")


@pytest.mark.parametrize("event_type", [EventType.CART_ADD, EventType.CART_REMOVE,
                                        EventType.PRODUCT_VIEW, EventType.FAVOURITE_ADD])
def test_products_required(event_type: EventType) -> None:
    data = raw(event_type)
    del data["products"]
    assert field_of(data) == "products"
    assert field_of(raw(event_type, products=[])) == "products"


def test_products_not_a_list() -> None:
    assert field_of(raw(EventType.CART_ADD, products={"product_id": "p1"})) == "products"
    assert field_of(raw(EventType.CART_ADD, products=["p1"])) == "products[0]"


def test_product_without_id() -> None:
    assert field_of(raw(EventType.CART_ADD, products=[{"price": 3}])) == "products[0].product_id"
    second = [{"product_id": "p1"}, {"product_id": ""}]
    assert field_of(raw(EventType.CART_ADD, products=second)) == "products[1].product_id"


@pytest.mark.parametrize("price", [-0.01, "abc", float("nan"), float("inf"), True, [1]])
def test_bad_price(price: object) -> None:
    products = [{"product_id": "p1", "price": price}]
    assert field_of(raw(EventType.CART_ADD, products=products)) == "products[0].price"


def test_price_as_text_accepted() -> None:
    event = parse_event(raw(EventType.CART_ADD, products=[{"product_id": "p1", "price": "2.5"}]))
    assert event.products[0].price == 2.5


@pytest.mark.parametrize("quantity", [0, -1, 1.5, "two", None, False])
def test_bad_quantity(quantity: object) -> None:
    products = [{"product_id": "p1", "quantity": quantity}]
    assert field_of(raw(EventType.CART_ADD, products=products)) == "products[0].quantity"


def test_bad_category() -> None:
    products = [{"product_id": "p1", "category": 7}]
    assert field_of(raw(EventType.CART_ADD, products=products)) == "products[0].category"


@pytest.mark.parametrize("event_type", [EventType.ORDER_PLACED, EventType.ORDER_CANCELLED,
                                        EventType.ORDER_REFUNDED])
def test_order_required(event_type: EventType) -> None:
    data = raw(event_type)
    del data["order"]
    assert field_of(data) == "order"
    assert field_of(raw(event_type, order={"total": 3})) == "order.order_id"


def test_bad_order_fields() -> None:
    assert field_of(raw(EventType.ORDER_PLACED, order={"order_id": "o1", "total": -3})) \
        == "order.total"
    assert field_of(raw(EventType.ORDER_PLACED, order={"order_id": "o1", "items": "p1"})) \
        == "order.items"
    assert field_of(raw(EventType.ORDER_PLACED,
                        order={"order_id": "o1", "items": [{"product_id": "p", "price": -1}]})) \
        == "order.items[0].price"
    assert field_of(raw(EventType.ORDER_PLACED, order={"order_id": "o1", "currency": 978})) \
        == "order.currency"


@pytest.mark.parametrize("score", [11, -1, 7.5, "high", None])
def test_bad_nps_score(score: object) -> None:
    assert field_of(raw(EventType.NPS_ANSWER, nps_score=score)) == "nps_score"


def test_nps_bounds_accepted() -> None:
    assert parse_event(raw(EventType.NPS_ANSWER, nps_score=0)).nps_score == 0
    assert parse_event(raw(EventType.NPS_ANSWER, nps_score=10)).nps_score == 10


@pytest.mark.parametrize("birthday", ["1990-02-30", "31.12.1990", "yesterday", 19900101,
                                      "1990-4-1", "1990-04-1"])
def test_bad_birthday(birthday: object) -> None:
    assert field_of(raw(traits={"birthday": birthday})) == "traits.birthday"


@pytest.mark.parametrize("birthday", ["1990-4-1", "1990-04-01", "1990-04-01T08:00:00Z",
                                      "2000-02-29", "2001-02-29", "19900401", "1990-13-01"])
def test_the_ingest_takes_a_birthday_exactly_when_the_core_can_read_it(birthday: str) -> None:
    """A birthday accepted but unreadable would give no age and no greeting, silently."""
    from features.calendar import parse_birthday
    try:
        parse_event(raw(traits={"birthday": birthday}))
    except EventError as error:
        assert error.message == f"expected YYYY-MM-DD, got {birthday!r}"
        assert parse_birthday(birthday) is None
    else:
        assert parse_birthday(birthday) is not None


def test_good_birthday() -> None:
    event = parse_event(raw(traits={"birthday": "1990-02-28"}))
    assert event.traits["birthday"] == "1990-02-28"


@pytest.mark.parametrize("consents", [{"email": "yes"}, {"sms": 1}, ["email"], "email"])
def test_consents_must_be_booleans(consents: object) -> None:
    assert field_of(raw(traits={"consents": consents})) == "traits.consents"


def test_consents_accepted() -> None:
    event = parse_event(raw(traits={"consents": {"email": True, "sms": False}}))
    assert event.traits["consents"] == {"email": True, "sms": False}


def test_string_traits_checked() -> None:
    assert field_of(raw(traits={"email": ["a@b.c"]})) == "traits.email"
    assert parse_event(raw(traits={"email": 5})).traits["email"] == "5"  # kept as text
    assert field_of(raw(traits="vip")) == "traits"
    # unknown traits are kept as sent
    assert parse_event(raw(traits={"shoe_size": 42})).traits == {"shoe_size": 42}


def test_text_is_capped_in_bytes_as_traits_and_lines_are_in_number() -> None:
    """A client's state is rewritten whole on every event and its text copied into every
    trigger's payload: 64 traits of 30 KB made a 1.9 MB state, 50 cart lines with a 30 KB
    category a 1.4 MB abandoned-cart payload per reminder."""
    assert field_of(raw(traits={"city": "x" * 257})) == "traits.city"
    assert parse_event(raw(traits={"city": "x" * 256})).traits["city"] == "x" * 256
    assert field_of(raw(traits={"notes": "x" * 1100})) == "traits.notes"
    assert field_of(raw(traits={"notes": {"deep": ["y" * 600] * 2}})) == "traits.notes"
    assert parse_event(raw(traits={"notes": "é" * 400})).traits["notes"] == "é" * 400
    too_long = raw(type="cart_add", products=[{"product_id": "p", "category": "c" * 201}])
    assert field_of(too_long) == "products[0].category"


def test_other_type_checks() -> None:
    assert field_of(raw(name=5)) == "name"
    assert field_of(raw(channel=["email"])) == "channel"
    assert field_of(raw(properties=[1])) == "properties"


def test_numeric_string_traits_are_kept_as_text() -> None:
    event = parse_event({"event_id": "n", "type": "identify", "client_id": "c",
                         "event_time": 1_700_000_000, "traits": {"phone": 447700900123}})
    assert event.traits["phone"] == "447700900123"


def test_absurd_amounts_are_refused() -> None:
    with pytest.raises(EventError) as error:
        parse_event({"event_id": "x", "type": "cart_add", "client_id": "c",
                     "event_time": 1_700_000_000,
                     "products": [{"product_id": "p", "price": 1e308}]})
    assert error.value.field == "products[0].price"


def test_refund_with_items_and_no_total_refunds_those_items() -> None:
    event = parse_event({"event_id": "r", "type": "order_refunded", "client_id": "c",
                         "event_time": 1_700_000_000,
                         "order": {"order_id": "o1",
                                   "items": [{"product_id": "b", "price": 40}]}})
    assert event.order is not None and event.order.total == 40.0


# --- Segment times and ids --------------------------------------------------------------------

def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def test_segment_time_is_corrected_once() -> None:
    """A library's device time is corrected by receivedAt - sentAt; a message Segment already
    processed (an archive: receivedAt, originalTimestamp) holds the corrected timestamp."""
    from features.segment import from_segment
    received = T0 + 7200  # the device clock is 2 h behind
    live = {"type": "track", "event": "x", "userId": "u", "messageId": "m",
            "timestamp": _iso(T0 - 60), "sentAt": _iso(T0)}
    expected = pytest.approx(received - 60, abs=0.01)
    assert from_segment(live, received).event_time == expected
    archived = {**live, "timestamp": _iso(received - 60), "originalTimestamp": _iso(T0 - 60),
                "receivedAt": _iso(received)}
    assert from_segment(archived, received).event_time == expected
    without_original = {k: v for k, v in archived.items() if k != "originalTimestamp"}
    assert from_segment(without_original, received).event_time == expected
    only_original = {k: v for k, v in archived.items() if k != "timestamp"}
    assert from_segment(only_original, received).event_time == expected
    # posted to the API a year later: the skew is against Segment's receipt, not ours
    assert from_segment(only_original, received + 365 * 86400).event_time == expected
    with pytest.raises(EventError) as info:
        from_segment({**only_original, "originalTimestamp": "soon"}, received)
    assert info.value.field == "originalTimestamp"
    with pytest.raises(EventError) as info:
        from_segment({**archived, "timestamp": "soon"}, received)
    assert info.value.field == "timestamp"


def test_a_segment_resend_without_message_id_keeps_its_id() -> None:
    """Without messageId the id hashes the message as sent: a resend later (another sentAt,
    another arrival) is the same event; without a time of its own, the arrival counts."""
    from features.segment import from_segment
    message = {"type": "track", "event": "Order Completed", "userId": "u1",
               "timestamp": _iso(T0), "properties": {"order_id": "o1", "total": 10}}
    first = from_segment({**message, "sentAt": _iso(T0 + 5)}, T0 + 6)
    resent = from_segment({**message, "sentAt": _iso(T0 + 600)}, T0 + 601)
    assert first.event_id == resent.event_id
    assert from_segment(message, T0 + 6).event_id == first.event_id
    untimed = {k: v for k, v in message.items() if k != "timestamp"}
    assert from_segment(untimed, T0).event_id != from_segment(untimed, T0 + 60).event_id


def test_a_device_clock_outside_the_range_is_corrected_by_sent_at() -> None:
    """A phone reset to 1970 still sends its skew in sentAt: the corrected time is checked,
    not the device's; without sentAt the device's own time is."""
    from features.segment import from_segment
    reset = {"type": "track", "event": "Product Viewed", "userId": "clk1",
             "properties": {"product_id": "p"}, "timestamp": "1970-01-01T00:05:00Z",
             "sentAt": "1970-01-01T00:05:10Z", "messageId": "clk-a"}
    assert from_segment(reset, T0).event_time == pytest.approx(T0 - 10, abs=0.01)
    original = {**{k: v for k, v in reset.items() if k != "timestamp"},
                "originalTimestamp": reset["timestamp"]}
    assert from_segment(original, T0).event_time == pytest.approx(T0 - 10, abs=0.01)
    far = {**reset, "timestamp": "2150-01-01T00:00:00Z", "sentAt": "2150-01-01T00:01:00Z"}
    assert from_segment(far, T0).event_time == pytest.approx(T0 - 60, abs=0.01)
    for message, field in [({k: v for k, v in reset.items() if k != "sentAt"}, "timestamp"),
                           ({**original, "sentAt": "2060-01-01T00:00:00Z"},
                            "originalTimestamp")]:
        with pytest.raises(EventError) as info:
            from_segment(message, T0)
        assert info.value.field == field and "out of range" in info.value.message


def test_tracks_named_as_crmflow_s_own_types_are_custom_events() -> None:
    """Only crmflow writes identity steps and erasures: a track of that name maps to none."""
    from features.events import INTERNAL_TYPES
    from features.segment import TRACK_EVENTS, from_segment
    assert not INTERNAL_TYPES & set(TRACK_EVENTS.values())
    for internal in INTERNAL_TYPES:
        event = from_segment({"type": "track", "event": internal.value, "userId": "u"}, T0)
        assert (event.type, event.name) == (EventType.CUSTOM, internal.value)


@pytest.mark.parametrize(("key", "meant"), [
    ("timestamp", "event_time"), ("eventTime", "event_time"), ("userId", "client_id"),
    ("anonymousId", "anonymous_id"), ("messageId", "event_id"), ("Client-Id", "client_id")])
def test_native_events_refuse_unknown_fields_with_the_native_name(key: str, meant: str) -> None:
    """Dropped, `timestamp` would leave the event stored at its time of arrival."""
    from features.segment import from_native
    with pytest.raises(EventError) as info:
        from_native({"type": "visit", "client_id": "c1", key: "2023-11-14T00:00:00Z"}, T0)
    assert (info.value.field, info.value.message) == (key, f"unknown field; did you mean {meant}?")


def test_native_events_take_every_documented_field_and_name_others() -> None:
    from features.segment import NATIVE_FIELDS, from_native
    full = {"type": "order_placed", "client_id": "c1", "anonymous_id": "a1", "event_time": T0,
            "event_id": "e1", "name": "checkout", "products": PRODUCTS, "order": ORDER,
            "traits": {"city": "York"}, "properties": {"coupon": "X"}, "nps_score": None,
            "channel": "web", "history": True, "received_at": T0 - 5}
    assert set(full) == set(NATIVE_FIELDS)
    assert from_native(full, T0).order == Order("o1", 39.98, "EUR", (Product("p1", "shoes",
                                                                             19.99, 2),))
    with pytest.raises(EventError) as info:
        from_native({**full, "colour": "red"}, T0)
    assert info.value.field == "colour" and info.value.message.startswith("unknown field (known")


def test_a_null_native_event_time_is_the_time_received() -> None:
    from features.segment import from_native
    absent = from_native({"type": "visit", "client_id": "c1"}, T0)
    null = from_native({"type": "visit", "client_id": "c1", "event_time": None}, T0)
    assert null.event_time == T0 and null == absent
