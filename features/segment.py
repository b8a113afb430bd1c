"""Segment tracking-API messages -> canonical events.

Sites already instrumented with analytics.js or a Segment/RudderStack server library can
point at crmflow unchanged: `track`, `identify`, `page` and `screen` messages are mapped,
with the e-commerce v2 spec names; other track names, and `alias` and `group` messages,
become `custom` events (kept, not dropped). An `alias` links its `previousId` when that is
an anonymous id (see `_alias`): crmflow merges anonymous visitors into clients, never two
clients.

Event time follows Segment's clock-skew correction: a device's `timestamp` is shifted by
the difference between when crmflow received the message and the device's `sentAt`, so a
phone whose clock is an hour fast still records events when they happened. A message
Segment already processed (with `receivedAt` or `originalTimestamp`, as archives hold
them) carries the corrected `timestamp`, used as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from features.events import (
    ANONYMOUS_PREFIX,
    INTERNAL_TYPES,
    MAX_ID_LENGTH,
    Event,
    EventError,
    EventType,
    content_event_id,
    in_time_range,
    parse_event,
    parse_time,
    read_time,
)

TRACK_EVENTS: dict[str, EventType] = {
    "signed up": EventType.REGISTERED,
    "account created": EventType.REGISTERED,
    "session started": EventType.VISIT,
    "application opened": EventType.VISIT,
    "session ended": EventType.SESSION_END,
    "application backgrounded": EventType.SESSION_END,
    "product viewed": EventType.PRODUCT_VIEW,
    "product added": EventType.CART_ADD,
    "product removed": EventType.CART_REMOVE,
    "product added to wishlist": EventType.FAVOURITE_ADD,
    "checkout started": EventType.CHECKOUT_STARTED,
    "order completed": EventType.ORDER_PLACED,
    "order cancelled": EventType.ORDER_CANCELLED,
    "order refunded": EventType.ORDER_REFUNDED,
    "support requested": EventType.SUPPORT_REQUEST,
    "nps answered": EventType.NPS_ANSWER,
    "survey answered": EventType.NPS_ANSWER,
    "message opened": EventType.MESSAGE_OPENED,
    "email opened": EventType.MESSAGE_OPENED,
    "push opened": EventType.MESSAGE_OPENED,
    "message clicked": EventType.MESSAGE_CLICKED,
    "email link clicked": EventType.MESSAGE_CLICKED,
    "push clicked": EventType.MESSAGE_CLICKED,
}
# Canonical names are accepted as track names too ("cart_add", "nps_answer", ...), but not
# those crmflow writes itself: a track of that name is a custom event.
TRACK_EVENTS.update({t.value: t for t in EventType
                     if t is not EventType.CUSTOM and t not in INTERNAL_TYPES})

_PRODUCT_EVENTS = {EventType.PRODUCT_VIEW, EventType.CART_ADD, EventType.CART_REMOVE,
                   EventType.FAVOURITE_ADD}
_ORDER_EVENTS = {EventType.ORDER_PLACED, EventType.ORDER_CANCELLED, EventType.ORDER_REFUNDED}
_ORDER_FIELDS = ("order_id", "total", "revenue", "value", "currency", "products")


def _first(mapping: Mapping[str, Any], *names: str) -> Any:
    """The first of the names with a value (analytics libraries send nulls freely)."""
    return next((mapping[n] for n in names if mapping.get(n) not in (None, "")), None)


def _product(properties: Mapping[str, Any]) -> dict[str, Any]:
    product = {
        "product_id": _first(properties, "product_id", "sku", "id"),
        "category": properties.get("category"),
        "price": properties.get("price", 0.0),
        "quantity": properties.get("quantity", 1),
    }
    return {k: v for k, v in product.items() if v is not None}


def _products(properties: Mapping[str, Any]) -> list[Any]:
    products = properties.get("products")
    if products is None:
        return []
    if not isinstance(products, list):
        raise EventError("properties.products", "expected a list")
    return [_product(p) if isinstance(p, Mapping) else p for p in products]


def _track(message: Mapping[str, Any], canonical: dict[str, Any]) -> None:
    name = message.get("event")
    if not isinstance(name, str) or not name.strip():
        raise EventError("event", "a track message needs an event name")
    properties = message.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise EventError("properties", "expected an object")
    event_type = TRACK_EVENTS.get(name.strip().lower(), EventType.CUSTOM)
    canonical["type"] = event_type.value
    canonical["name"] = name
    canonical["properties"] = {k: v for k, v in properties.items()
                               if not (event_type in _ORDER_EVENTS and k in _ORDER_FIELDS)}
    if event_type in _PRODUCT_EVENTS:
        canonical["products"] = [_product(properties)]
    elif event_type is EventType.CHECKOUT_STARTED:
        canonical["products"] = _products(properties)
    elif event_type in _ORDER_EVENTS:
        total = next((properties[k] for k in ("total", "revenue", "value")
                      if properties.get(k) is not None), None)
        order: dict[str, Any] = {"order_id": properties.get("order_id"),
                                 "items": _products(properties)}
        if total is not None:
            order["total"] = total
        if properties.get("currency") is not None:
            order["currency"] = properties["currency"]
        canonical["order"] = order
    elif event_type is EventType.NPS_ANSWER:
        canonical["nps_score"] = properties.get("score", properties.get("nps_score"))
    if event_type in (EventType.MESSAGE_OPENED, EventType.MESSAGE_CLICKED):
        canonical["channel"] = properties.get("channel") or _channel_from_name(name)
    context = message.get("context")
    if event_type is EventType.REGISTERED and isinstance(context, Mapping):
        traits = context.get("traits")
        if isinstance(traits, Mapping):
            canonical["traits"] = dict(traits)


def _channel_from_name(name: str) -> str | None:
    lowered = name.lower()
    return next((ch for ch in ("email", "push", "sms") if lowered.startswith(ch)), None)


def _event_time(message: Mapping[str, Any], received_at: float) -> float:
    """When the event happened, as Segment's spec computes `timestamp`:
    receivedAt - (sentAt - device time)."""
    return _timed(message, received_at)[0]


def time_origin(message: object, received_at: float) -> tuple[str, bool]:
    """The field a message's event time was taken from, and whether `sentAt` corrected
    it: what an error about that time (outside the accepted window) names."""
    if not isinstance(message, Mapping):
        return "timestamp", False
    _, field_name, corrected = _timed(message, received_at)
    return field_name, corrected


def _timed(message: Mapping[str, Any], received_at: float) -> tuple[float, str, bool]:
    """(event time, the field it came from, whether sentAt corrected it).

    A library sends the device time as `timestamp` (or `originalTimestamp`) with `sentAt`;
    it is corrected by the skew. A message Segment already processed (an archive: it
    carries `receivedAt` or `originalTimestamp`) holds the corrected time in `timestamp`,
    taken as is: correcting it again would move it by the skew twice. Without `timestamp`,
    its `originalTimestamp` is corrected. A device clock may be anywhere (a phone reset to
    1970): the range is checked on the corrected time."""
    field_name = next((name for name in ("timestamp", "originalTimestamp")
                       if message.get(name) not in (None, "")), None)
    if field_name is None:
        return received_at, "timestamp", False
    processed = _first(message, "receivedAt", "originalTimestamp") is not None
    skew = None if field_name == "timestamp" and processed else _skew(message, received_at)
    if skew is None:
        return parse_time(message[field_name], field_name), field_name, False
    corrected = read_time(message[field_name], field_name) + skew
    if not in_time_range(corrected):
        raise EventError(field_name, "time out of range (1990..2100) once corrected by sentAt "
                                     f"{message['sentAt']!r}: {message[field_name]!r}")
    return corrected, field_name, True


def _skew(message: Mapping[str, Any], received_at: float) -> float | None:
    """arrival - sentAt, how far behind the device clock is; None without a readable
    sentAt (a bad sentAt loses the correction, not the event)."""
    sent = message.get("sentAt")
    if sent is None:
        return None
    try:
        # an archive's skew is against Segment's receipt, not against ours (years later)
        arrival = (parse_time(message["receivedAt"], "receivedAt")
                   if message.get("receivedAt") not in (None, "") else received_at)
        return arrival - read_time(sent, "sentAt")
    except EventError:
        return None


def from_segment(message: object, received_at: float) -> Event:
    """One Segment message -> a validated canonical Event (EventError names what is wrong)."""
    if not isinstance(message, Mapping):
        raise EventError("message", "expected an object")
    kind = message.get("type")
    canonical: dict[str, Any] = {
        "client_id": message.get("userId"),
        "anonymous_id": message.get("anonymousId"),
        "received_at": received_at,
        "event_time": _event_time(message, received_at),
    }
    if kind == "track":
        _track(message, canonical)
    elif kind == "identify":
        traits = message.get("traits") or {}
        if not isinstance(traits, Mapping):
            raise EventError("traits", "expected an object")
        canonical.update(type=EventType.IDENTIFY.value, traits=dict(traits))
    elif kind in ("page", "screen"):
        properties = message.get("properties") or {}
        if not isinstance(properties, Mapping):
            raise EventError("properties", "expected an object")
        canonical.update(type=EventType.PAGE_VIEW.value, name=message.get("name"),
                         properties=dict(properties))
    elif kind == "alias":
        _alias(message, canonical)
    elif kind == "group":
        traits = message.get("traits")
        canonical.update(type=EventType.CUSTOM.value, name="group",
                         properties={"group_id": message.get("groupId"),
                                     "traits": dict(traits) if isinstance(traits, Mapping)
                                     else {}})
    else:
        raise EventError("type", f"unsupported message type {kind!r} (expected track, "
                                 "identify, page, screen, alias or group)")
    message_id = message.get("messageId")
    canonical["event_id"] = message_id if message_id else _content_id(message, canonical)
    try:
        return parse_event(canonical)
    except EventError as exc:  # name the field as the sender did, not as the canonical event
        field = segment_field(exc.field, canonical.get("type"), message)
        raise EventError(field, _SEGMENT_MESSAGES.get(exc.message, exc.message)) from None


def _id_text(value: object) -> object:
    """An id as the canonical event holds it (a number is its text); other values as sent,
    for the parser to refuse."""
    if value is None or value == "":
        return None
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _alias(message: Mapping[str, Any], canonical: dict[str, Any]) -> None:
    """Segment's `alias`: `previousId` is the id the user was known by before `userId`,
    an anonymous id or a previous user id. crmflow links an anonymous id to a client
    (features/identity.py) and cannot merge two clients, so:
    - previousId is the userId, or the message's own anonymousId: nothing more to link
      than any message with both ids links;
    - the message has an anonymousId and previousId is another id: analytics.js sends the
      previous userId there, so it is refused, naming previousId;
    - no anonymousId: previousId is taken as the anonymous id (linked), unless it is the
      user id of a known client: the ingest refuses that (`previous_user_id`)."""
    previous = _id_text(message.get("previousId"))
    canonical.update(type=EventType.CUSTOM.value, name="alias",
                     properties={"previous_id": message.get("previousId")})
    if previous is None:
        return
    if not isinstance(previous, str):
        raise EventError("previousId", "expected a string")
    if len(previous) > MAX_ID_LENGTH:
        raise EventError("previousId", f"longer than {MAX_ID_LENGTH} characters")
    if previous in (_id_text(canonical["client_id"]), _id_text(canonical["anonymous_id"])):
        return
    if canonical["anonymous_id"] is not None:
        raise EventError("previousId", f"{previous!r} is neither this message's anonymousId "
                                       "nor its userId, so it is a previous user id: crmflow "
                                       "merges an anonymous id into a client, never two "
                                       f"clients ({ALIAS_HINT})")
    canonical["anonymous_id"] = previous


ALIAS_HINT = ("send previousId as the anonymous id it replaces, or identify the user with "
              "userId and anonymousId")


def previous_user_id(message: object) -> str | None:
    """The `previousId` an alias message links as an anonymous id without saying it is one
    (it has no anonymousId of its own): the ingest refuses the message when a client has
    that user id. None for any other message."""
    if not isinstance(message, Mapping) or message.get("type") != "alias":
        return None
    previous = _id_text(message.get("previousId"))
    if (not isinstance(previous, str) or _id_text(message.get("anonymousId")) is not None
            or previous == _id_text(message.get("userId"))):
        return None
    # a client's id never begins with the anonymous prefix (features/events.py)
    return None if previous.startswith(ANONYMOUS_PREFIX) else previous


def known_user_error(previous: str) -> EventError:
    """The refusal of an alias whose previousId is a known client's user id."""
    return EventError("previousId", f"{previous!r} is the userId of a known client: crmflow "
                                    "merges an anonymous id into a client, never two clients "
                                    f"({ALIAS_HINT})")


_TOP_FIELDS = {"client_id": "userId", "anonymous_id": "anonymousId", "event_id": "messageId",
               "event_time": "timestamp", "channel": "properties.channel"}
_SEGMENT_MESSAGES = {"client_id or anonymous_id is required":
                     "userId or anonymousId is required"}
_ORDER_ITEMS = "order.items"


def segment_field(field: str, event_type: object, message: Mapping[str, Any]) -> str:
    """The Segment message's name for a canonical event's `field` (`products[0].price` of a
    Product Added is its `properties.price`)."""
    head, dot, rest = field.partition(".")
    if (field == "anonymous_id" and message.get("type") == "alias"
            and _id_text(message.get("anonymousId")) is None):
        return "previousId"  # the alias's anonymous id
    if field in _TOP_FIELDS:
        return _TOP_FIELDS[field]
    if field == "name":
        return "event" if message.get("type") == "track" else "name"
    if field == "nps_score":
        properties = message.get("properties")
        sent_as = "nps_score" if isinstance(properties, Mapping) and properties.get(
            "score") is None and "nps_score" in properties else "score"
        return f"properties.{sent_as}"
    if head == "products[0]" and event_type in {t.value for t in _PRODUCT_EVENTS}:
        return f"properties.{rest}" if dot else "properties"
    if head.startswith("products"):
        return f"properties.{field}"
    if field.startswith(_ORDER_ITEMS):
        return "properties.products" + field[len(_ORDER_ITEMS):]
    if head == "order":
        if rest == "total":  # sent as the first of these with a value
            properties = message.get("properties")
            rest = next((k for k in ("total", "revenue", "value") if isinstance(
                properties, Mapping) and properties.get(k) is not None), rest)
        return f"properties.{rest}" if dot else "properties"
    if head == "traits" and message.get("type") == "track":
        return f"context.{field}"  # a sign-up's traits come from its context
    return field


def _content_id(message: Mapping[str, Any], canonical: Mapping[str, Any]) -> str:
    """The id of a message sent without messageId: its own fields, times as sent, so a
    resend is recognised (not the corrected time, which moves with sentAt and the arrival).
    A message with no time of its own adds the arrival, so the same action repeated later
    is not mistaken for a resend."""
    content = {k: v for k, v in message.items() if k not in ("sentAt", "receivedAt")}
    if _first(message, "timestamp", "originalTimestamp") is None:
        content["event_time"] = canonical["event_time"]
    return content_event_id(content)


# the canonical event's fields (`event_to_dict`): `received_at` is stamped over
NATIVE_FIELDS = ("type", "client_id", "anonymous_id", "event_time", "event_id", "name",
                 "products", "order", "traits", "properties", "nps_score", "channel",
                 "history", "received_at")
# what Segment's habits, and other near misses, name the native fields
_NATIVE_HINTS = {"timestamp": "event_time", "originalTimestamp": "event_time",
                 "sentAt": "event_time", "userId": "client_id", "user_id": "client_id",
                 "anonymousId": "anonymous_id", "messageId": "event_id",
                 "event": "type (or name, for a custom event)", "score": "nps_score",
                 "product_id": "products", "price": "products", "quantity": "products",
                 "order_id": "order", "total": "order", "revenue": "order",
                 "currency": "order", "context": "traits or properties"}
_LOOSE_NAMES = {name.replace("_", ""): name for name in NATIVE_FIELDS}


class UnknownFieldError(EventError):
    """A native event's top-level field that is not one of NATIVE_FIELDS (a typo, or a
    Segment name): dropped, it would lose what the sender meant (an event time)."""


_NATIVE_SET = frozenset(NATIVE_FIELDS)


def _check_native_fields(raw: Mapping[str, Any]) -> None:
    if raw.keys() <= _NATIVE_SET:
        return
    for key in raw:
        if key in _NATIVE_SET:
            continue
        # named as text JSON can carry (a key may hold half an emoji)
        name = str(key).encode("utf-8", "backslashreplace").decode("utf-8") or '""'
        meant = _NATIVE_HINTS.get(name) or _LOOSE_NAMES.get(
            name.replace("_", "").replace("-", "").lower())
        raise UnknownFieldError(name, f"unknown field; did you mean {meant}?" if meant else
                                f"unknown field (known: {', '.join(NATIVE_FIELDS)})")


def from_native(raw: object, received_at: float) -> Event:
    """A native canonical event; the server stamps received_at and fills optional ids. An
    absent or null event_time is the time received."""
    if not isinstance(raw, Mapping):
        raise EventError("event", "expected an object")
    _check_native_fields(raw)
    canonical = dict(raw)
    canonical["received_at"] = received_at
    if canonical.get("event_time") is None:
        canonical["event_time"] = received_at
    if not canonical.get("event_id"):  # content and time: see from_segment
        canonical["event_id"] = content_event_id(
            {k: v for k, v in canonical.items() if k != "received_at"})
    return parse_event(canonical)
