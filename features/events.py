"""The canonical clickstream event: one model for every source (Segment, native, replay).

Times are float seconds since the Unix epoch, UTC. Parsing never reads the clock: the
caller passes the time the event was received.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

ANONYMOUS_PREFIX = "anon:"
MAX_ID_LENGTH = 200


class EventType(StrEnum):
    REGISTERED = "registered"
    IDENTIFY = "identify"
    VISIT = "visit"
    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    FAVOURITE_ADD = "favourite_add"
    CART_ADD = "cart_add"
    CART_REMOVE = "cart_remove"
    CHECKOUT_STARTED = "checkout_started"
    ORDER_PLACED = "order_placed"
    ORDER_CANCELLED = "order_cancelled"
    ORDER_REFUNDED = "order_refunded"
    SUPPORT_REQUEST = "support_request"
    NPS_ANSWER = "nps_answer"
    MESSAGE_OPENED = "message_opened"
    MESSAGE_CLICKED = "message_clicked"
    SESSION_END = "session_end"
    TOUCH_RECORDED = "touch_recorded"  # a manual touch a manager recorded (B2B practice)
    # identity steps the dataflow writes itself (features/identity.py); refused at ingest
    IDENTITY_LINKED = "identity_linked"
    PROFILE_MERGED = "profile_merged"
    # an admin's erasure request (DELETE /v1/profiles/{id}), applied in the client's order
    ERASURE_REQUESTED = "erasure_requested"
    CUSTOM = "custom"


# Written by crmflow itself, never accepted from a source.
INTERNAL_TYPES = frozenset({EventType.IDENTITY_LINKED, EventType.PROFILE_MERGED,
                            EventType.ERASURE_REQUESTED})


class EventError(ValueError):
    """An event that cannot be accepted; `field` names the offending part."""

    def __init__(self, field_name: str, message: str) -> None:
        # no field: the event as a whole (one over the size limit)
        super().__init__(f"{field_name}: {message}" if field_name else message)
        self.field = field_name
        self.message = message


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    category: str | None = None
    price: float = 0.0
    quantity: int = 1

    def __init__(self, product_id: str, category: str | None = None, price: float = 0.0,
                 quantity: int = 1) -> None:  # written out: see `features.__init__`
        object.__setattr__(self, "product_id", product_id)
        object.__setattr__(self, "category", category)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "quantity", quantity)


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    total: float
    currency: str | None = None
    items: tuple[Product, ...] = ()

    def __init__(self, order_id: str, total: float, currency: str | None = None,
                 items: tuple[Product, ...] = ()) -> None:  # see `features.__init__`
        object.__setattr__(self, "order_id", order_id)
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "currency", currency)
        object.__setattr__(self, "items", items)


@dataclass(frozen=True, slots=True)
class Event:
    """A fact about one client. `client_id` or `anonymous_id` is always set."""

    event_id: str
    type: EventType
    event_time: float
    received_at: float
    client_id: str | None = None
    anonymous_id: str | None = None
    name: str | None = None
    products: tuple[Product, ...] = ()
    order: Order | None = None
    traits: Mapping[str, Any] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)
    nps_score: int | None = None
    channel: str | None = None
    # part of a backfill: its occasions that were due before it arrived are recorded as
    # suppressed (reason `backfill`), not sent
    history: bool = False

    def __init__(self, event_id: str, type: EventType, event_time: float, received_at: float,
                 client_id: str | None = None, anonymous_id: str | None = None,
                 name: str | None = None, products: tuple[Product, ...] = (),
                 order: Order | None = None, traits: Mapping[str, Any] | None = None,
                 properties: Mapping[str, Any] | None = None, nps_score: int | None = None,
                 channel: str | None = None, history: bool = False) -> None:
        # written out (see `features.__init__`); None for `traits` and `properties` is the
        # generated one's default_factory
        object.__setattr__(self, "event_id", event_id)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "event_time", event_time)
        object.__setattr__(self, "received_at", received_at)
        object.__setattr__(self, "client_id", client_id)
        object.__setattr__(self, "anonymous_id", anonymous_id)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "products", products)
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "traits", {} if traits is None else traits)
        object.__setattr__(self, "properties", {} if properties is None else properties)
        object.__setattr__(self, "nps_score", nps_score)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "history", history)

    @property
    def client_key(self) -> str:
        """The key that routes and stores the client: its id, else the anonymous id."""
        if self.client_id is not None:
            return self.client_id
        return ANONYMOUS_PREFIX + (self.anonymous_id or "")


# --- parsing -------------------------------------------------------------------------------------

_MIN_EPOCH = datetime(1990, 1, 1, tzinfo=UTC).timestamp()
_MAX_EPOCH = datetime(2100, 1, 1, tzinfo=UTC).timestamp()


def parse_time(value: object, field_name: str) -> float:
    """ISO-8601 text (naive means UTC) or epoch seconds/milliseconds -> epoch seconds."""
    seconds = read_time(value, field_name)
    if not in_time_range(seconds):
        raise EventError(field_name, f"time out of range (1990..2100): {value!r}")
    return seconds


def read_time(value: object, field_name: str) -> float:
    """`parse_time` without its 1990..2100 range check: a device's clock can be anywhere,
    and Segment's `sentAt` correction (features/segment.py) moves it back into range, so
    that correction checks the corrected time instead."""
    if isinstance(value, bool):
        raise EventError(field_name, "expected an ISO-8601 time or epoch seconds")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float, such as 10**400
            raise EventError(field_name, "time out of range (1990..2100)") from None
        if seconds > 1e11:  # milliseconds, as JavaScript sends them
            seconds /= 1000.0
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):  # RFC 3339 allows either
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise EventError(field_name, f"not an ISO-8601 time: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    else:
        raise EventError(field_name, "expected an ISO-8601 time or epoch seconds")
    if not math.isfinite(seconds):
        raise EventError(field_name, f"time out of range (1990..2100): {value!r}")
    return seconds


def in_time_range(seconds: float) -> bool:
    """Within 1990..2100: outside it, a time is a broken clock or a bug upstream."""
    return _MIN_EPOCH <= seconds < _MAX_EPOCH


def format_time(seconds: float | None) -> str | None:
    """Epoch seconds -> ISO-8601 UTC with milliseconds, or None."""
    if seconds is None:
        return None
    return _iso(seconds)


@lru_cache(maxsize=1 << 14)
def _iso(seconds: float) -> str:
    """What `datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")` gives,
    with Z, at well under half its cost compiled (0.52 us uncached against 1.29): the date
    part is cached per day, the rest is integer arithmetic. Cached too: a profile repeats its times
    (freshness groups, last seen and updated), and a read-heavy API formats the same
    clients' times again and again."""
    if not 0 <= seconds < _LAST_FORMATTED:
        return datetime.fromtimestamp(seconds, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
    second = int(seconds)  # >= 0: the whole seconds, and `seconds - second` exactly the rest
    micros = round((seconds - second) * 1e6)  # as datetime rounds: half to even
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    # `//`, `%` and tables, not modf, divmod and format specs: compiled, those stay generic
    # calls (1.78 us a time uncached against 0.52)
    of_day = second % 86400
    return "".join((_date_prefix(second // 86400), _TWO_DIGITS[of_day // 3600], ":",
                    _TWO_DIGITS[of_day % 3600 // 60], ":", _TWO_DIGITS[of_day % 60], ".",
                    _THREE_DIGITS[micros // 1000], "Z"))


_LAST_FORMATTED = 253_402_300_799.0  # 9999-12-31T23:59:59: past it, datetime's own errors
_TWO_DIGITS = [f"{n:02d}" for n in range(60)]
_THREE_DIGITS = [f"{n:03d}" for n in range(1000)]


@lru_cache(maxsize=1 << 12)
def _date_prefix(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%dT")


def _opt_id(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventError(name, "expected a string")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise EventError(name, f"longer than {MAX_ID_LENGTH} characters")
    return text


def _client_id(raw: Mapping[str, Any], name: str) -> str | None:
    """A client's id: it is read back by path and in lists, where `" c4 "` would be c4."""
    text = _opt_id(raw, name)
    if text is not None and text != text.strip():
        raise EventError(name, "must not begin or end with whitespace")
    return text


MAX_AMOUNT = 1e12  # prices, totals, quantities: beyond this is a bug upstream, not a sale


def _number(value: object, field_name: str, *, minimum: float | None = 0.0) -> float:
    if isinstance(value, bool):
        raise EventError(field_name, "expected a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise EventError(field_name, f"expected a number, got {value!r}") from None
    if isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float, such as 10**400
            raise EventError(field_name, f"must be at most {MAX_AMOUNT:g}") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise EventError(field_name, "expected a finite number")
    if minimum is not None and value < minimum:
        raise EventError(field_name, f"must be >= {minimum:g}")
    if abs(value) > MAX_AMOUNT:
        raise EventError(field_name, f"must be at most {MAX_AMOUNT:g}")
    return float(value)


MAX_DEPTH = 64  # levels of objects and lists inside properties or traits


def _check_depth(value: object, field_name: str) -> None:
    """Refuse a value nested deeper than MAX_DEPTH levels (without recursing: a deep value
    must not exhaust the stack, and the event log's encoder stops at 255 levels)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise EventError(field_name, f"nested more than {MAX_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _mapping(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise EventError(name, "expected an object")
    _check_depth(value, name)
    return value


_STRING_TRAITS = ("email", "phone", "gender", "city", "point_id", "timezone", "first_name",
                  "last_name")
# the traits crmflow itself reads (contact, point, zone, birthday, consents)
READ_TRAITS = frozenset((*_STRING_TRAITS, "birthday", "consents"))
# Bytes, not only counts, are a client's budget: a state is rewritten whole on every event,
# and its text is copied into every trigger's payload and ledger entry.
MAX_TEXT_TRAIT = 256  # characters of a known text trait (an address is at most 254)
MAX_TRAIT_BYTES = 1024  # a custom trait, its name and value as JSON


def parse_birthday(value: object) -> tuple[int, int, int] | None:
    """(year, month, day) from a YYYY-MM-DD trait, or None when it is not a valid date.
    Here, not in features/calendar.py, so that the ingest refuses what the core cannot read
    (calendar imports rules, which imports this module)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = date.fromisoformat(value[:10])
    except ValueError:
        return None
    return parsed.year, parsed.month, parsed.day


def _traits(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Known traits are checked for type; any other trait is kept as sent.

    A number where text is expected (a phone sent as 4470...) is kept as its text rather
    than costing the whole event; anything else of the wrong type is refused.
    """
    traits = _mapping(raw, "traits")
    if not traits:
        return traits
    for name in _STRING_TRAITS:
        value = traits.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            traits = {**traits, name: str(value)}
        elif value is not None and not isinstance(value, str):
            raise EventError(f"traits.{name}", "expected a string")
        elif value is not None and len(value) > MAX_TEXT_TRAIT:
            raise EventError(f"traits.{name}", f"longer than {MAX_TEXT_TRAIT} characters")
    for name, value in traits.items():
        if name not in READ_TRAITS and len(json.dumps(
                {name: value}, ensure_ascii=False, default=str).encode()) > MAX_TRAIT_BYTES:
            raise EventError(f"traits.{name}", f"larger than {MAX_TRAIT_BYTES} bytes as JSON")
    birthday = traits.get("birthday")
    if birthday is not None and parse_birthday(birthday) is None:  # as the core reads it
        raise EventError("traits.birthday", f"expected YYYY-MM-DD, got {birthday!r}")
    consents = traits.get("consents")
    if consents is not None and (
        not isinstance(consents, Mapping)
        or not all(isinstance(v, bool) for v in consents.values())
    ):
        raise EventError("traits.consents", "expected an object of channel: true/false")
    return traits


def _product(raw: object, field_name: str) -> Product:
    if not isinstance(raw, Mapping):
        raise EventError(field_name, "expected an object")
    product_id = _opt_id(raw, "product_id")
    if product_id is None:
        raise EventError(f"{field_name}.product_id", "is required")
    category = raw.get("category")
    if category is not None and not isinstance(category, str):
        raise EventError(f"{field_name}.category", "expected a string")
    if category is not None and len(category) > MAX_ID_LENGTH:
        raise EventError(f"{field_name}.category", f"longer than {MAX_ID_LENGTH} characters")
    price = _number(raw.get("price", 0.0), f"{field_name}.price")
    quantity_raw = raw.get("quantity", 1)
    quantity = _number(quantity_raw, f"{field_name}.quantity")
    if quantity != int(quantity) or quantity < 1:
        raise EventError(f"{field_name}.quantity", "expected a whole number >= 1")
    return Product(product_id, category or None, price, int(quantity))


def _products(raw: Mapping[str, Any]) -> tuple[Product, ...]:
    items = raw.get("products")
    if items is None:
        return ()
    if not isinstance(items, list):
        raise EventError("products", "expected a list")
    return tuple(_product(item, f"products[{i}]") for i, item in enumerate(items))


def _order(raw: Mapping[str, Any], event_type: EventType, products: tuple[Product, ...]) -> Order:
    order = raw.get("order")
    if not isinstance(order, Mapping):
        raise EventError("order", f"is required for {event_type.value}")
    order_id = _opt_id(order, "order_id")
    if order_id is None:
        raise EventError("order.order_id", "is required")
    items = products
    if "items" in order:
        if not isinstance(order["items"], list):
            raise EventError("order.items", "expected a list")
        items = tuple(_product(it, f"order.items[{i}]") for i, it in enumerate(order["items"]))
    if order.get("total") is not None:
        total = _number(order["total"], "order.total")
    elif event_type is EventType.ORDER_PLACED or (event_type is EventType.ORDER_REFUNDED
                                                  and items):
        total = sum(item.price * item.quantity for item in items)  # a refund of these items
    else:
        total = -1.0  # a cancellation, or a refund naming nothing: the whole order
    currency = order.get("currency")
    if currency is not None and not isinstance(currency, str):
        raise EventError("order.currency", "expected a string")
    return Order(order_id, total, currency, items)


OCCASION_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
TOUCH_STATUSES = ("done", "skipped")
MAX_TOUCH_KEY = 200
MAX_TOUCH_COMMENT = 2000
MAX_TOUCH_AUTHOR = 200


def _optional_text(properties: Mapping[str, Any], name: str, limit: int) -> None:
    value = properties.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise EventError(f"properties.{name}", "expected a string")
    if len(value) > limit:
        raise EventError(f"properties.{name}", f"longer than {limit} characters")


def _touch(properties: Mapping[str, Any], channel: object) -> None:
    """A manual touch: occasion (a trigger type or a name of one's own), optional key,
    status done|skipped, optional comment and author; the channel in `channel`."""
    occasion = properties.get("occasion")
    if occasion is None:
        raise EventError("properties.occasion", "is required for touch_recorded")
    if not isinstance(occasion, str) or not OCCASION_PATTERN.fullmatch(occasion):
        raise EventError("properties.occasion",
                         "expected lower-case letters, digits and _ (at most 64), "
                         f"starting with a letter, got {occasion!r}")
    status = properties.get("status")
    if status not in TOUCH_STATUSES:
        raise EventError("properties.status", f"expected 'done' or 'skipped', got {status!r}")
    _optional_text(properties, "key", MAX_TOUCH_KEY)
    _optional_text(properties, "comment", MAX_TOUCH_COMMENT)
    _optional_text(properties, "author", MAX_TOUCH_AUTHOR)
    if channel is not None and (not isinstance(channel, str)
                                or not OCCASION_PATTERN.fullmatch(channel)):
        raise EventError("channel", f"expected a channel name such as 'phone', got {channel!r}")


def _require_text(properties: Mapping[str, Any], name: str, event_type: EventType) -> None:
    if not isinstance(properties.get(name), str) or not properties[name]:
        raise EventError(f"properties.{name}", f"is required for {event_type.value}")


_EVENT_TYPES = {event_type.value: event_type for event_type in EventType}  # EventType() is slow


def parse_event(raw: object) -> Event:
    """Validate a canonical event dict (as `event_to_dict` writes it).

    Raises EventError naming the first field that is wrong.
    """
    if not isinstance(raw, dict):
        if not isinstance(raw, Mapping):
            raise EventError("event", "expected an object")
        raw = dict(raw)  # as a dict, the compiled core reads it without method calls
    type_name = raw.get("type")
    event_type = _EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if event_type is None:
        raise EventError("type", f"unknown event type {type_name!r}")
    event_id = _opt_id(raw, "event_id")
    if event_id is None:
        raise EventError("event_id", "is required")
    client_id = _client_id(raw, "client_id")
    anonymous_id = _client_id(raw, "anonymous_id")
    if client_id is None and anonymous_id is None:
        raise EventError("client_id", "client_id or anonymous_id is required")
    if client_id is not None and client_id.startswith(ANONYMOUS_PREFIX):
        raise EventError("client_id", f"must not start with {ANONYMOUS_PREFIX!r}")
    if "event_time" not in raw:
        raise EventError("event_time", "is required")
    event_time = parse_time(raw["event_time"], "event_time")
    received_at = parse_time(raw.get("received_at", raw["event_time"]), "received_at")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise EventError("name", "expected a string")
    products = _products(raw)
    order = None
    if event_type in (EventType.ORDER_PLACED, EventType.ORDER_CANCELLED, EventType.ORDER_REFUNDED):
        order = _order(raw, event_type, products)
    if event_type in (EventType.CART_ADD, EventType.CART_REMOVE, EventType.PRODUCT_VIEW,
                      EventType.FAVOURITE_ADD) and not products:
        raise EventError("products", f"at least one product is required for {event_type.value}")
    nps_score = None
    if event_type is EventType.NPS_ANSWER:
        score = _number(raw.get("nps_score"), "nps_score")
        if score != int(score) or not 0 <= score <= 10:
            raise EventError("nps_score", "expected a whole number from 0 to 10")
        nps_score = int(score)
    channel = raw.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise EventError("channel", "expected a string")
    properties = _mapping(raw, "properties")
    history = raw.get("history", False)
    if not isinstance(history, bool):
        raise EventError("history", "expected true or false")
    if event_type is EventType.TOUCH_RECORDED:
        _touch(properties, channel)
    if event_type is EventType.IDENTITY_LINKED:
        _require_text(properties, "client_id", event_type)
        if "alias" in properties:  # a hand-over of an alias to a tombstone
            _require_text(properties, "alias", event_type)
    if event_type is EventType.PROFILE_MERGED:
        _require_text(properties, "from", event_type)
        if "state" in properties:  # absent: the anonymous id had no history, only an alias
            _require_text(properties, "state", event_type)
    return Event(
        event_id=event_id,
        type=event_type,
        event_time=event_time,
        received_at=received_at,
        client_id=client_id,
        anonymous_id=anonymous_id,
        name=name,
        products=products,
        order=order,
        traits=_traits(raw),
        properties=properties,
        nps_score=nps_score,
        channel=channel,
        history=history,
    )


def _product_dict(product: Product) -> dict[str, Any]:
    out: dict[str, Any] = {"product_id": product.product_id, "price": product.price,
                           "quantity": product.quantity}
    if product.category is not None:
        out["category"] = product.category
    return out


def event_to_dict(event: Event) -> dict[str, Any]:
    """The canonical JSON-ready form; `parse_event(event_to_dict(e)) == e`."""
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type.value,
        "event_time": event.event_time,
        "received_at": event.received_at,
    }
    if event.client_id is not None:
        out["client_id"] = event.client_id
    if event.anonymous_id is not None:
        out["anonymous_id"] = event.anonymous_id
    if event.name is not None:
        out["name"] = event.name
    if event.products:
        out["products"] = [_product_dict(p) for p in event.products]
    if event.order is not None:
        order: dict[str, Any] = {"order_id": event.order.order_id,
                                 "items": [_product_dict(p) for p in event.order.items]}
        if event.order.total >= 0:  # a negative total means "the whole order": written as none
            order["total"] = event.order.total
        if event.order.currency is not None:
            order["currency"] = event.order.currency
        out["order"] = order
    if event.traits:
        out["traits"] = dict(event.traits)
    if event.properties:
        out["properties"] = dict(event.properties)
    if event.nps_score is not None:
        out["nps_score"] = event.nps_score
    if event.channel is not None:
        out["channel"] = event.channel
    if event.history:
        out["history"] = True
    return out


def content_event_id(raw: Mapping[str, Any]) -> str:
    """A deterministic id for an event sent without one, so a resend deduplicates."""
    body = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "h-" + hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()[:24]
