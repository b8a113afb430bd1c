"""Per-client state and `apply_event`, the one place where an event changes it.

The state is a frozen value: `apply_event` returns a new one. Every collection in it is
bounded (see the MAX_* constants), so memory per client is a budget, not an accident.
Aggregates (counts, money, first/last times) are order-independent, so out-of-order
events give the same result as ordered ones; duplicates (same event id among the client's
recent events, or an order id already known) change nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

import features
from features import windows
from features.events import READ_TRAITS, Event, EventType, Product
from features.rules import ABANDONED_BROWSE, ABANDONED_CART, DAY
from features.windows import HOUR, VIEW_DAYS, VIEW_HOURS, VISIT_DAYS, Buckets

MAX_CART_LINES = 50
MAX_CART_REMOVALS = 8  # removals an add stamped before them may still reach
CART_REMOVALS_KEPT_FOR = DAY  # an add later than that behind its removal is not waited for
MAX_VIEWED = 20
MAX_FAVOURITES = 20
MAX_ORDERS = 64
MAX_RECENT_EVENT_IDS = 16
MAX_CHANNELS = 8
MAX_PENDING = 8  # triggers waiting for a configured delay or the end of quiet hours
MAX_SENDS = 32  # marketing sends kept for the rolling-day frequency cap
MAX_DECIDED = 16  # occasions recently decided (manual touches and marketing triggers)
MAX_CATEGORIES = 8  # product categories with order history, for per-category replenishment
MAX_EARLY_RETURNS = 4  # cancellations and refunds that arrived before their order
MAX_TOUCHED = 32  # occasions a manager decided by hand: automatic triggers must not repeat
MAX_INTERESTS = 8  # product categories the client interacted with, most recent kept
MAX_ALIASES = 8  # anonymous ids merged into a client
MAX_LOST_LINKS = 4  # later link requests for a merged anonymous id that lost (shared devices)
MAX_BOUGHT = MAX_CART_LINES  # products of the latest order, left out of browse reminders
MAX_TRAITS = 64  # traits kept per client: a new one beyond them is dropped, known ones kept
MAX_HELD = 16  # live events held back for a timer to settle (more: the oldest goes on)
BIRTHDAY_TRAIT = "birthday"
BIRTHDAY_KNOWN = "birthday_known"  # a mark: the event time the birthday was set or changed


@dataclass(frozen=True, slots=True)
class CartLine:
    product_id: str
    quantity: int
    price: float
    category: str | None = None
    added_at: float = 0.0  # the line's latest add: a late order removes only earlier lines

    def __init__(self, product_id: str, quantity: int, price: float, category: str | None = None,
                 added_at: float = 0.0) -> None:  # see `features.__init__`
        object.__setattr__(self, "product_id", product_id)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "category", category)
        object.__setattr__(self, "added_at", added_at)


@dataclass(frozen=True, slots=True)
class OrderRecord:
    order_id: str
    placed_at: float
    total: float
    returned: float = 0.0  # money given back through cancellations and refunds
    cancelled: bool = False

    def __init__(self, order_id: str, placed_at: float, total: float, returned: float = 0.0,
                 cancelled: bool = False) -> None:  # see `features.__init__`
        object.__setattr__(self, "order_id", order_id)
        object.__setattr__(self, "placed_at", placed_at)
        object.__setattr__(self, "total", total)
        object.__setattr__(self, "returned", returned)
        object.__setattr__(self, "cancelled", cancelled)


def in_time_order(order: OrderRecord) -> tuple[float, str]:
    """The orders' sort key: time, then id, so that two orders at one instant (invoices of
    the same minute) keep one order whichever arrived first, live as in replay."""
    return order.placed_at, order.order_id


@dataclass(frozen=True, slots=True)
class PendingTrigger:
    """A trigger decided later: after its rule's delay, or at the end of quiet hours; or a
    follow-up of one sent (features/follow_up.py): `tried` then names the channels the
    occasion was sent on, and `follows` the trigger ids of those sends, oldest first."""

    release_at: float
    type: str
    key: str  # the occasion key (a follow-up's too: its own is `decided_key`)
    fired_at: float  # when the occasion became due
    payload: Mapping[str, Any]
    deferred: bool = False  # True: already recorded with status `deferred`
    tried: tuple[str, ...] = ()  # a follow-up: the channels already tried
    follows: tuple[str, ...] = ()  # a follow-up: the trigger ids sent before it

    def __init__(self, release_at: float, type: str, key: str, fired_at: float,
                 payload: Mapping[str, Any], deferred: bool = False,
                 tried: tuple[str, ...] = (), follows: tuple[str, ...] = ()) -> None:
        # written out: see `features.__init__`
        object.__setattr__(self, "release_at", release_at)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "fired_at", fired_at)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "deferred", deferred)
        object.__setattr__(self, "tried", tried)
        object.__setattr__(self, "follows", follows)

    @property
    def decided_key(self) -> str:
        """The key its decision is recorded under: a follow-up's is its own."""
        return follow_up_key(self.key, len(self.follows))


FOLLOW_UP_SUFFIX = "#follow_up"


def follow_up_key(key: str, n: int) -> str:
    """The occasion key of the `n`th follow-up of the occasion `key` (0: the occasion's
    own), so a follow-up has an id of its own: `<key>#follow_up<n>`."""
    return f"{key}{FOLLOW_UP_SUFFIX}{n}" if n else key


@dataclass(frozen=True, slots=True)
class CategoryOrders:
    """Orders containing a product category: for per-category replenishment reminders.

    Cancellations do not take orders out of these counts (the state does not keep each
    order's items).
    """

    category: str
    first_at: float
    last_at: float
    count: int
    reminded_through: float = 0.0  # last_at of the latest order cycle reminded of

    def __init__(self, category: str, first_at: float, last_at: float, count: int,
                 reminded_through: float = 0.0) -> None:  # see `features.__init__`
        object.__setattr__(self, "category", category)
        object.__setattr__(self, "first_at", first_at)
        object.__setattr__(self, "last_at", last_at)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "reminded_through", reminded_through)


@dataclass(frozen=True, slots=True)
class CategoryInterest:
    """The latest view, cart add and order of a product category, and how often."""

    category: str
    viewed_at: float | None = None
    carted_at: float | None = None
    bought_at: float | None = None
    count: int = 0

    def __init__(self, category: str, viewed_at: float | None = None,
                 carted_at: float | None = None, bought_at: float | None = None,
                 count: int = 0) -> None:  # see `features.__init__`
        object.__setattr__(self, "category", category)
        object.__setattr__(self, "viewed_at", viewed_at)
        object.__setattr__(self, "carted_at", carted_at)
        object.__setattr__(self, "bought_at", bought_at)
        object.__setattr__(self, "count", count)

    @property
    def last_at(self) -> float:
        return max(t for t in (self.viewed_at, self.carted_at, self.bought_at, 0.0)
                   if t is not None)


@dataclass(frozen=True, slots=True)
class ClientState:
    first_seen_at: float
    last_seen_at: float
    updated_at: float  # the latest event time applied
    last_received_at: float = 0.0  # when the event with the latest event time was received
    registered_at: float | None = None
    welcomed: bool = False
    traits: Mapping[str, Any] = field(default_factory=dict)
    traits_updated_at: float = 0.0
    last_visit_at: float | None = None
    visits: int = 0
    cart: tuple[CartLine, ...] = ()
    cart_updated_at: float | None = None  # last cart change: the abandoned-cart timer's base
    cart_since: float | None = None  # first add of the current cart episode
    cart_reminded: float = 0.0  # when abandoned_cart fired in this episode (0: not yet)
    cart_closed_at: float = 0.0  # last order: cart changes before it are void
    # (product_id, time, quantity) of removals that found fewer units added at or before
    # them than they took (their add arrived later, or was stamped after them), oldest
    # first: a late add stamped at or before one gives it its units first, as in order
    # (the newest MAX_CART_REMOVALS, within CART_REMOVALS_KEPT_FOR of the latest change)
    cart_removals: tuple[tuple[str, float, int], ...] = ()
    # (first add, reminded, emptied at) of the episode a removal emptied: an add stamped
    # before the emptying that arrives after it rejoins that episode, as in order
    cart_emptied: tuple[float, float, float] | None = None
    viewed: tuple[tuple[str, float], ...] = ()  # (product_id, time), newest last
    # the current browse episode's first view (set while one is open; after a late cart add
    # or order, the first the state still knows: it keeps each product's latest view only)
    browse_since: float | None = None
    last_view_at: float | None = None
    browse_closed_at: float = 0.0  # last cart add or order: views before it are no browse
    bought: tuple[str, ...] = ()  # products of the latest order (at cart_closed_at), sorted
    # (product_id, time it was last favourited), oldest first; each time is an event time,
    # so the bound drops the same one in any arrival order (states from before format 10
    # knew no times: their favourites read as favourited at 0, 1, 2... seconds, in order)
    favourites: tuple[tuple[str, float], ...] = ()
    orders: tuple[OrderRecord, ...] = ()  # newest last
    orders_count: int = 0  # orders placed and not cancelled, all time
    monetary_total: float = 0.0  # money received net of cancellations and refunds
    first_order_at: float | None = None
    last_order_at: float | None = None
    checkout_started_at: float | None = None
    support_requests: int = 0
    last_support_at: float | None = None
    nps_score: int | None = None
    nps_at: float | None = None
    channel_engagement: tuple[tuple[str, int], ...] = ()  # (channel, opens + clicks)
    recent_event_ids: tuple[int, ...] = ()  # CRC-32 of the latest event ids, for deduplication
    categories: tuple[CategoryOrders, ...] = ()  # most recently ordered last
    # --- what the trigger engine decided (features/triggers.py) ---
    marks: tuple[tuple[str, float], ...] = ()  # per rule: how far its occasions are decided
    loyalty_tier: str = ""  # the tier last announced (or passed silently)
    pending: tuple[PendingTrigger, ...] = ()  # by release time
    sends: tuple[float, ...] = ()  # times of recent marketing sends, oldest first
    decided: tuple[int, ...] = ()  # fingerprints of recently decided occasions
    touched: tuple[int, ...] = ()  # fingerprints of occasions decided by manual touches
    # (order id, amount or -1 for all, is a cancellation) seen before the order itself
    early_returns: tuple[tuple[str, float, bool], ...] = ()
    # --- rolling activity, interests, and when each feature group last changed ---
    visit_days: Buckets = ()  # visits per UTC day, the last VISIT_DAYS days
    view_hours: Buckets = ()  # product views per UTC hour, the last VIEW_HOURS hours
    view_days: Buckets = ()  # product views per UTC day, the last VIEW_DAYS days
    interests: tuple[CategoryInterest, ...] = ()  # least recently active first
    orders_updated_at: float | None = None  # latest order, cancellation or refund
    cart_changed_at: float | None = None  # latest cart change (also when it emptied)
    engagement_at: float | None = None  # latest message open or click
    # --- segments (features/segments.py) and identity (features/identity.py) ---
    segments: tuple[tuple[str, float], ...] = ()  # (segment, entered at), by name
    segments_at: float = 0.0  # when the memberships were last evaluated
    aliases: tuple[str, ...] = ()  # anonymous client keys merged into this client
    merged_into: str | None = None  # set on an anonymous client merged into that key
    # on such a tombstone: the digests (identity.link_digest) of later clients' link requests
    # that lost to it (the first link won), newest last, so that its erasure forgets them
    # too; digests, since a later client's erasure cannot reach this record
    links_lost: tuple[str, ...] = ()
    # --- backfill (history/backfill.py) ---
    history_until: float = 0.0  # when the latest backfilled history arrived: older is past
    # --- live events waiting for a timer due before them to settle (features/triggers.py) ---
    held: tuple[Event, ...] = ()  # by event time

    def __init__(self, first_seen_at: float, last_seen_at: float, updated_at: float,
                 last_received_at: float = 0.0, registered_at: float | None = None,
                 welcomed: bool = False, traits: Mapping[str, Any] | None = None,
                 traits_updated_at: float = 0.0, last_visit_at: float | None = None,
                 visits: int = 0, cart: tuple[CartLine, ...] = (),
                 cart_updated_at: float | None = None, cart_since: float | None = None,
                 cart_reminded: float = 0.0, cart_closed_at: float = 0.0,
                 cart_removals: tuple[tuple[str, float, int], ...] = (),
                 cart_emptied: tuple[float, float, float] | None = None,
                 viewed: tuple[tuple[str, float], ...] = (), browse_since: float | None = None,
                 last_view_at: float | None = None, browse_closed_at: float = 0.0,
                 bought: tuple[str, ...] = (),
                 favourites: tuple[tuple[str, float], ...] = (),
                 orders: tuple[OrderRecord, ...] = (),
                 orders_count: int = 0, monetary_total: float = 0.0,
                 first_order_at: float | None = None, last_order_at: float | None = None,
                 checkout_started_at: float | None = None, support_requests: int = 0,
                 last_support_at: float | None = None, nps_score: int | None = None,
                 nps_at: float | None = None,
                 channel_engagement: tuple[tuple[str, int], ...] = (),
                 recent_event_ids: tuple[int, ...] = (),
                 categories: tuple[CategoryOrders, ...] = (),
                 marks: tuple[tuple[str, float], ...] = (), loyalty_tier: str = "",
                 pending: tuple[PendingTrigger, ...] = (), sends: tuple[float, ...] = (),
                 decided: tuple[int, ...] = (), touched: tuple[int, ...] = (),
                 early_returns: tuple[tuple[str, float, bool], ...] = (),
                 visit_days: Buckets = (), view_hours: Buckets = (), view_days: Buckets = (),
                 interests: tuple[CategoryInterest, ...] = (),
                 orders_updated_at: float | None = None, cart_changed_at: float | None = None,
                 engagement_at: float | None = None,
                 segments: tuple[tuple[str, float], ...] = (),
                 segments_at: float = 0.0, aliases: tuple[str, ...] = (),
                 merged_into: str | None = None, links_lost: tuple[str, ...] = (),
                 history_until: float = 0.0,
                 held: tuple[Event, ...] = ()) -> None:  # see `features.__init__`
        object.__setattr__(self, "first_seen_at", first_seen_at)
        object.__setattr__(self, "last_seen_at", last_seen_at)
        object.__setattr__(self, "updated_at", updated_at)
        object.__setattr__(self, "last_received_at", last_received_at)
        object.__setattr__(self, "registered_at", registered_at)
        object.__setattr__(self, "welcomed", welcomed)
        object.__setattr__(self, "traits", {} if traits is None else traits)
        object.__setattr__(self, "traits_updated_at", traits_updated_at)
        object.__setattr__(self, "last_visit_at", last_visit_at)
        object.__setattr__(self, "visits", visits)
        object.__setattr__(self, "cart", cart)
        object.__setattr__(self, "cart_updated_at", cart_updated_at)
        object.__setattr__(self, "cart_since", cart_since)
        object.__setattr__(self, "cart_reminded", cart_reminded)
        object.__setattr__(self, "cart_closed_at", cart_closed_at)
        object.__setattr__(self, "cart_removals", cart_removals)
        object.__setattr__(self, "cart_emptied", cart_emptied)
        object.__setattr__(self, "viewed", viewed)
        object.__setattr__(self, "browse_since", browse_since)
        object.__setattr__(self, "last_view_at", last_view_at)
        object.__setattr__(self, "browse_closed_at", browse_closed_at)
        object.__setattr__(self, "bought", bought)
        object.__setattr__(self, "favourites", favourites)
        object.__setattr__(self, "orders", orders)
        object.__setattr__(self, "orders_count", orders_count)
        object.__setattr__(self, "monetary_total", monetary_total)
        object.__setattr__(self, "first_order_at", first_order_at)
        object.__setattr__(self, "last_order_at", last_order_at)
        object.__setattr__(self, "checkout_started_at", checkout_started_at)
        object.__setattr__(self, "support_requests", support_requests)
        object.__setattr__(self, "last_support_at", last_support_at)
        object.__setattr__(self, "nps_score", nps_score)
        object.__setattr__(self, "nps_at", nps_at)
        object.__setattr__(self, "channel_engagement", channel_engagement)
        object.__setattr__(self, "recent_event_ids", recent_event_ids)
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "marks", marks)
        object.__setattr__(self, "loyalty_tier", loyalty_tier)
        object.__setattr__(self, "pending", pending)
        object.__setattr__(self, "sends", sends)
        object.__setattr__(self, "decided", decided)
        object.__setattr__(self, "touched", touched)
        object.__setattr__(self, "early_returns", early_returns)
        object.__setattr__(self, "visit_days", visit_days)
        object.__setattr__(self, "view_hours", view_hours)
        object.__setattr__(self, "view_days", view_days)
        object.__setattr__(self, "interests", interests)
        object.__setattr__(self, "orders_updated_at", orders_updated_at)
        object.__setattr__(self, "cart_changed_at", cart_changed_at)
        object.__setattr__(self, "engagement_at", engagement_at)
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "segments_at", segments_at)
        object.__setattr__(self, "aliases", aliases)
        object.__setattr__(self, "merged_into", merged_into)
        object.__setattr__(self, "links_lost", links_lost)
        object.__setattr__(self, "history_until", history_until)
        object.__setattr__(self, "held", held)

    @property
    def cart_value(self) -> float:
        return round(sum(line.price * line.quantity for line in self.cart), 2)

    @property
    def cart_items(self) -> int:
        return sum(line.quantity for line in self.cart)


_FIELD_NAMES = tuple(f.name for f in fields(ClientState))
_SETTERS: dict[str, Callable[[ClientState, Any], None]] = {
    name: getattr(ClientState, name).__set__ for name in _FIELD_NAMES}


def _descriptor_copy() -> Callable[[ClientState], ClientState]:
    """The sources' copy of every slot of a state, generated once from the fields and
    setting each through its descriptor.

    As Python, `__init__` sets each of the 50-odd fields through `object.__setattr__`,
    about 5.4 µs a state; setting the slots through their descriptors is about 1.9 µs.
    `evolve` was a third of the dataflow's time with `dataclasses.replace`
    (bench/README.md). The compiled core copies with `_slot_copy` instead.
    """
    source = "".join(f"    set_{n}(new, state.{n})\n" for n in _FIELD_NAMES)
    code = f"def copy(state):\n    new = make(ClientState)\n{source}    return new\n"
    namespace: dict[str, Any] = {"make": ClientState.__new__, "ClientState": ClientState}
    namespace.update({f"set_{n}": setter for n, setter in _SETTERS.items()})
    exec(code, namespace)  # noqa: S102 - our own text, from the dataclass's own fields
    return cast(Callable[[ClientState], ClientState], namespace["copy"])


_copy = _descriptor_copy()


def _slot_copy(state: ClientState) -> ClientState:
    """`_copy` for the compiled core: there the written-out `__init__` is a slot store per
    field, and a call naming every field is a direct call (the exec'd copy calls the
    fields' descriptors from interpreted code, 12% of the compiled dataflow's samples,
    bench/README.md). As Python the call costs 5.7 µs against the exec'd copy's 1.9, so
    the sources keep that. `test_state` checks that it copies every field."""
    return ClientState(
        first_seen_at=state.first_seen_at,
        last_seen_at=state.last_seen_at,
        updated_at=state.updated_at,
        last_received_at=state.last_received_at,
        registered_at=state.registered_at,
        welcomed=state.welcomed,
        traits=state.traits,
        traits_updated_at=state.traits_updated_at,
        last_visit_at=state.last_visit_at,
        visits=state.visits,
        cart=state.cart,
        cart_updated_at=state.cart_updated_at,
        cart_since=state.cart_since,
        cart_reminded=state.cart_reminded,
        cart_closed_at=state.cart_closed_at,
        cart_removals=state.cart_removals,
        cart_emptied=state.cart_emptied,
        viewed=state.viewed,
        browse_since=state.browse_since,
        last_view_at=state.last_view_at,
        browse_closed_at=state.browse_closed_at,
        bought=state.bought,
        favourites=state.favourites,
        orders=state.orders,
        orders_count=state.orders_count,
        monetary_total=state.monetary_total,
        first_order_at=state.first_order_at,
        last_order_at=state.last_order_at,
        checkout_started_at=state.checkout_started_at,
        support_requests=state.support_requests,
        last_support_at=state.last_support_at,
        nps_score=state.nps_score,
        nps_at=state.nps_at,
        channel_engagement=state.channel_engagement,
        recent_event_ids=state.recent_event_ids,
        categories=state.categories,
        marks=state.marks,
        loyalty_tier=state.loyalty_tier,
        pending=state.pending,
        sends=state.sends,
        decided=state.decided,
        touched=state.touched,
        early_returns=state.early_returns,
        visit_days=state.visit_days,
        view_hours=state.view_hours,
        view_days=state.view_days,
        interests=state.interests,
        orders_updated_at=state.orders_updated_at,
        cart_changed_at=state.cart_changed_at,
        engagement_at=state.engagement_at,
        segments=state.segments,
        segments_at=state.segments_at,
        aliases=state.aliases,
        merged_into=state.merged_into,
        links_lost=state.links_lost,
        history_until=state.history_until,
        held=state.held,
    )


if features.COMPILED:
    _copy = _slot_copy


def evolve(state: ClientState, **changes: Any) -> ClientState:
    """`dataclasses.replace` for the client state, several times faster: see `_copy`."""
    new = _copy(state)
    for name, value in changes.items():
        try:
            _SETTERS[name](new, value)
        except KeyError:
            raise TypeError(f"ClientState has no field {name!r}") from None
    return new


def mark_of(state: ClientState, name: str) -> float | None:
    for key, value in state.marks:
        if key == name:
            return value
    return None


def with_mark(state: ClientState, name: str, value: float) -> ClientState:
    return evolve(state, marks=_marked(state.marks, name, value))


def _marked(marks: tuple[tuple[str, float], ...], name: str, value: float
            ) -> tuple[tuple[str, float], ...]:
    return tuple(sorted({**dict(marks), name: value}.items()))


def occasion_fingerprint(trigger_type: str, key: str) -> int:
    return zlib.crc32(f"{trigger_type}\x1f{key}".encode())


def event_fingerprint(event_id: str) -> int:
    return zlib.crc32(event_id.encode())


def is_duplicate(state: ClientState | None, event: Event) -> bool:
    if state is None:
        return False
    if event_fingerprint(event.event_id) in state.recent_event_ids:
        return True
    return (
        event.type is EventType.ORDER_PLACED
        and event.order is not None
        and any(o.order_id == event.order.order_id for o in state.orders)
    )


def new_state(event: Event) -> ClientState:
    t = event.event_time
    return ClientState(first_seen_at=t, last_seen_at=t, updated_at=t,
                       last_received_at=event.received_at,
                       history_until=event.received_at if event.history else 0.0)


def is_live(state: ClientState, allowed_lateness: float) -> bool:
    """The client's latest event arrived as it happened (not backfilled history).

    Timers of live clients may fire on the arrival clock; those of backfilled clients wait
    for the client's own next event or for the stream head, so that replaying history
    never fires a timer before the client's own later events are read.
    """
    return state.last_received_at - state.updated_at <= allowed_lateness


def apply_event(state: ClientState | None, event: Event,
                read_traits: frozenset[str] = READ_TRAITS) -> ClientState:
    """The state after `event`. Duplicates return `state` itself. `read_traits`: the traits
    the rules read, kept first when a client has too many (`TriggerRules.read_traits`)."""
    if state is None:
        state = new_state(event)
    elif is_duplicate(state, event):
        return state
    t = event.event_time
    changes: dict[str, Any] = {
        "first_seen_at": min(state.first_seen_at, t),
        "last_seen_at": max(state.last_seen_at, t),
        "updated_at": max(state.updated_at, t),
        "last_received_at": (event.received_at if t >= state.updated_at
                             else state.last_received_at),
        "recent_event_ids": (state.recent_event_ids + (event_fingerprint(event.event_id),))[
            -MAX_RECENT_EVENT_IDS:
        ],
    }
    if event.history and event.received_at > state.history_until:
        changes["history_until"] = event.received_at
    handler = _HANDLERS.get(event.type)
    if handler is not None:
        changes.update(handler(state, event))
    if event.traits:
        changes.update(_merge_traits(state, event, read_traits))
    return evolve(state, **changes)


# --- handlers: each returns the fields it changes ------------------------------------------------

Changes = dict[str, Any]


def _merge_traits(state: ClientState, event: Event, read: frozenset[str]) -> Changes:
    """Newer traits win; an older event only fills traits the client does not have yet.

    When the birthday is set or changed, its own time is marked: which birthdays are still
    to come is decided from it, not from the latest update of any trait (a late identify
    carrying the birthday would otherwise lose a birthday between it and a newer one)."""
    merged = dict(state.traits)
    newer = event.event_time >= state.traits_updated_at
    for key, value in event.traits.items():
        if newer or key not in merged:
            merged[key] = value
    changes: Changes = {"traits": capped_traits(merged, read),
                        "traits_updated_at": max(state.traits_updated_at, event.event_time)}
    birthday = merged.get(BIRTHDAY_TRAIT)
    if birthday is not None and birthday != state.traits.get(BIRTHDAY_TRAIT):
        changes["marks"] = _marked(state.marks, BIRTHDAY_KNOWN, event.event_time)
    return changes


def capped_traits(traits: dict[str, Any], read: frozenset[str] = READ_TRAITS
                  ) -> dict[str, Any]:
    """At most MAX_TRAITS traits: those crmflow reads first (`read`: the built-in ones and
    those the configuration names: channel contacts, the service interval, the segments'),
    then by name, the same in any arrival order. A client sending a new trait name with
    every identify must not grow its state for ever, nor push out a trait a rule reads."""
    if len(traits) <= MAX_TRAITS:
        return traits
    kept = sorted(traits, key=lambda key: (key not in read, key))[:MAX_TRAITS]
    return {key: traits[key] for key in kept}


def _visit(state: ClientState, event: Event) -> Changes:
    last = event.event_time if state.last_visit_at is None else max(state.last_visit_at,
                                                                     event.event_time)
    latest = max(state.updated_at, event.event_time)
    return {"last_visit_at": last, "visits": state.visits + 1,
            "visit_days": windows.add(state.visit_days, event.event_time, latest, DAY,
                                      VISIT_DAYS)}


def _registered(state: ClientState, event: Event) -> Changes:
    changes = _visit(state, event)  # registration counts as the first visit
    registered = state.registered_at
    changes["registered_at"] = event.event_time if registered is None else min(
        registered, event.event_time)
    changes["welcomed"] = True
    return changes


def _product_view(state: ClientState, event: Event) -> Changes:
    t = event.event_time
    newest = max(state.updated_at, t)
    changes: Changes = {
        "viewed": _touched_at(state.viewed, event.products, t, MAX_VIEWED),
        "view_hours": windows.add(state.view_hours, t, newest, HOUR, VIEW_HOURS),
        "view_days": windows.add(state.view_days, t, newest, DAY, VIEW_DAYS),
        "interests": _touch_interests(state.interests, event.products, t, "viewed_at"),
    }
    if t > browse_gate(state):
        changes["browse_since"] = t if state.browse_since is None else min(state.browse_since, t)
        changes["last_view_at"] = t if state.last_view_at is None else max(state.last_view_at, t)
    return changes


def _favourite_add(state: ClientState, event: Event) -> Changes:
    return {"favourites": _touched_at(state.favourites, event.products, event.event_time,
                                      MAX_FAVOURITES)}


def _touched_at(items: tuple[tuple[str, float], ...], products: tuple[Product, ...], t: float,
                bound: int) -> tuple[tuple[str, float], ...]:
    """(product, latest time) pairs with `products` touched at `t`, oldest first, the newest
    `bound` kept. A late event keeps a product's newer time; ties go by product id, not by
    arrival: which one a bound drops, or a reminder names first, must not depend on the
    order in which events of the same instant arrived."""
    ids = dict.fromkeys(p.product_id for p in products)
    latest = {pid: at for pid, at in items if pid in ids}
    touched = [(pid, at) for pid, at in items if pid not in ids]
    touched.extend((pid, max(t, latest.get(pid, t))) for pid in ids)
    return tuple(sorted(touched, key=by_time_then_product)[-bound:])


def by_time_then_product(item: tuple[str, float]) -> tuple[float, str]:
    return item[1], item[0]


def _cart_change(state: ClientState, event: Event) -> Changes:
    """A cart add or removal, decided per product by event time, not by arrival: a removal
    takes only units added at or before it (a line's units count as added at its latest
    add), and what it could not take is kept (`cart_removals`), so that an add stamped at
    or before it, arriving after it, gives it those units first, as in order."""
    t = event.event_time
    adding = event.type is EventType.CART_ADD
    changes: Changes = {}
    if adding:
        changes.update(_close_browse(state, t))
        changes["interests"] = _touch_interests(state.interests, event.products, t,
                                                "carted_at")
    if t <= state.cart_closed_at:
        # a late change to a cart that an order already closed; one at the order's very
        # instant too, as the order buys a line added then (whichever arrives first)
        return changes
    cart = {line.product_id: line for line in state.cart}
    removals = state.cart_removals
    stays = False  # a unit the add added is in the cart
    taken: float | None = None  # the latest removal that took units the add added
    deleted = False  # a removal took a line whole
    for product in event.products:
        pid = product.product_id
        line = cart.get(pid)
        if adding:
            removals, quantity, until = _taken_back(removals, pid, t, product.quantity)
            if until is not None:
                taken = until if taken is None else max(taken, until)
            if quantity == 0:
                continue
            stays = True
            cart[pid] = CartLine(
                pid, quantity + (line.quantity if line else 0),
                product.price or (line.price if line else 0.0),
                product.category or (line.category if line else None),
                max(line.added_at, t) if line else t)
            continue
        held = 0  # units added at or before the removal; a newer add keeps its own
        if line is not None and line.added_at <= t:
            held = line.quantity
            if held > product.quantity:
                cart[pid] = replace(line, quantity=held - product.quantity)
                continue
            del cart[pid]
            deleted = True
        if product.quantity > held:
            removals = with_removal(removals, pid, t, product.quantity - held)
    # in time order, ties by product: which line the bound drops must not hang on arrival
    lines = tuple(sorted(cart.values(), key=line_order))[-MAX_CART_LINES:]
    changes["cart"] = lines
    changes["cart_changed_at"] = latest = _later(state.cart_changed_at, t)
    removals = recent_removals(removals, latest)
    if removals != state.cart_removals:
        changes["cart_removals"] = removals
    if not lines:
        changes.update(cart_since=None, cart_reminded=0.0, cart_updated_at=None)
        if deleted and state.cart_since is not None:
            changes["cart_emptied"] = (state.cart_since, state.cart_reminded, t)
        elif adding and taken is not None:
            # it came and went: in order it began an episode that removal ended
            before = state.cart_emptied
            changes["cart_emptied"] = ((t, 0.0, taken) if before is None or before[2] < t
                                       else (min(before[0], t), before[1],
                                             max(before[2], taken)))
        return changes
    # an add all of whose units a later removal took back was in the cart until then: in
    # order it changed this episode if that removal came in it, else it came and went before
    since = state.cart_since
    counts = not adding or stays or (taken is not None and since is not None
                                     and taken >= since)
    updated = _later(state.cart_updated_at, t)
    if adding and stays and state.cart_changed_at is not None:
        # the cart holds what it added ever since: in order, every change after it (the
        # latest, say a removal that found an empty cart on arrival) changed this episode
        updated = max(updated, state.cart_changed_at)
    elif counts and taken is not None:
        updated = max(updated, taken)  # that removal changed this episode's cart, in order
    changes["cart_updated_at"] = _rearmed(state, updated)
    if not counts:
        return changes
    emptied = state.cart_emptied
    if adding and since is None and emptied is not None and t <= emptied[2]:
        # added before a removal emptied the cart, arriving after it: in order the cart
        # was never empty, and this is still that episode, reminded or not
        first, reminded, _ = emptied
        changes.update(cart_since=first if reminded else min(first, t),
                       cart_reminded=reminded, cart_emptied=None)
    elif deleted and since is not None and since <= t and all(
            line.added_at > t for line in lines):
        # a late removal in the episode took every line added before it: in order the cart
        # was empty then, and the lines left are an episode of their own, as after an order
        reminded = 0.0 if _cart_reminder_waits(state) else state.cart_reminded
        changes.update(cart_since=lines[0].added_at, cart_reminded=reminded)
    elif since is None or (adding and state.cart_reminded and t >= state.cart_reminded):
        # a first add, or an add after the reminder (not a late one from before it): a new
        # episode, re-armed
        changes.update(cart_since=t, cart_reminded=0.0, cart_emptied=None)
    elif adding and not state.cart_reminded and t < since:
        changes["cart_since"] = t  # a late first add: the episode (and its id) began then
    return changes


Removals = tuple[tuple[str, float, int], ...]  # (product, time, units owed), oldest first


def _taken_back(removals: Removals, pid: str, t: float, quantity: int
                ) -> tuple[Removals, int, float | None]:
    """An add of `quantity` units of `pid` at `t`, after removals of it stamped at or after
    `t` (at its very instant too, as with an order) that found too few units: in order they
    took these units, the earliest first. The removals still owed, the units that stay, and
    the latest removal that took some (None: none)."""
    if not any(r[0] == pid and r[1] >= t for r in removals):
        return removals, quantity, None
    kept: list[tuple[str, float, int]] = []
    taken: float | None = None
    for removal in removals:  # oldest first
        product_id, at, owed = removal
        if quantity and product_id == pid and at >= t:
            given = min(quantity, owed)
            quantity -= given
            taken = at
            if owed > given:
                kept.append((product_id, at, owed - given))
            continue
        kept.append(removal)
    return tuple(kept), quantity, taken


def recent_removals(removals: Removals, latest_change: float) -> Removals:
    """The removals owed within CART_REMOVALS_KEPT_FOR of the latest cart change: a remove
    for an add never seen (a cart from before tracking) must not stay for ever."""
    if removals and removals[0][1] < latest_change - CART_REMOVALS_KEPT_FOR:
        return tuple(r for r in removals if r[1] >= latest_change - CART_REMOVALS_KEPT_FOR)
    return removals


def settle_removals(lines: tuple[CartLine, ...], removals: Removals
                    ) -> tuple[tuple[CartLine, ...], Removals, float | None]:
    """`lines` once the removals owed (oldest first) took the units added at or before
    them, as in order: what joining two profiles' carts needs, a removal owed on one side
    meeting its add on the other. The lines left (in line order), the removals still owed,
    and the latest removal that took units (None: none did)."""
    cart = {line.product_id: line for line in lines}
    owed: list[tuple[str, float, int]] = []
    taken: float | None = None
    for pid, at, units in removals:
        line = cart.get(pid)
        if line is None or line.added_at > at:
            owed.append((pid, at, units))
            continue
        given = min(units, line.quantity)
        taken = at if taken is None else max(taken, at)
        if line.quantity > given:
            cart[pid] = replace(line, quantity=line.quantity - given)
        else:
            del cart[pid]
        if units > given:
            owed.append((pid, at, units - given))
    return tuple(sorted(cart.values(), key=line_order)), tuple(owed), taken


def with_removal(removals: Removals, pid: str, t: float, quantity: int) -> Removals:
    """`removals` with `quantity` units of `pid` owed at `t`: oldest first, ties by product,
    the newest MAX_CART_REMOVALS kept (an add older than all of them is rare: it would
    arrive later than that many removals after it)."""
    owed = {(r[0], r[1]): r[2] for r in removals}
    owed[(pid, t)] = owed.get((pid, t), 0) + quantity
    ordered = sorted(((p, at, n) for (p, at), n in owed.items()), key=by_removal_time)
    return tuple(ordered[-MAX_CART_REMOVALS:])


def by_removal_time(removal: tuple[str, float, int]) -> tuple[float, str]:
    return removal[1], removal[0]


def browse_gate(state: ClientState) -> float:
    """Views at or before this time are no browse: the last cart add or order closed them, or
    the abandoned-browse rule decided them (its mark: the due time of its latest reminder)."""
    return max(state.browse_closed_at, mark_of(state, ABANDONED_BROWSE) or 0.0)


def _close_browse(state: ClientState, t: float) -> Changes:
    """A cart add or an order at `t` ends browsing that began before it, not views after it:
    when it arrives late, the views after it are a browse of their own, as in order."""
    changes: Changes = {"browse_closed_at": max(state.browse_closed_at, t)}
    if state.browse_since is not None and state.browse_since <= t:
        changes["browse_since"] = first_view_after(state.viewed, t)
    return changes


def first_view_after(viewed: tuple[tuple[str, float], ...], t: float) -> float | None:
    """When browsing after `t` began (its earliest view), or None: what a cart add or an
    order at `t` leaves of a browse episode."""
    return min((at for _, at in viewed if at > t), default=None)


def line_order(line: CartLine) -> tuple[float, str]:
    """Cart lines in time order, ties by product: so the bound drops the same lines, and a
    merged cart reads the same, whatever order the adds arrived in."""
    return line.added_at, line.product_id


def _rearmed(state: ClientState, updated: float) -> float:
    """The cart's last update, counting a checkout started since the last order: in order,
    the checkout found the cart holding what was added before it and re-armed the reminder;
    when an add before it arrives after it, the checkout found an empty cart, so the add
    re-arms it in its stead (else the reminder's time would hang on arrival)."""
    checkout = state.checkout_started_at
    if checkout is None or checkout < state.cart_closed_at:
        return updated
    return max(updated, checkout)


def _checkout_started(state: ClientState, event: Event) -> Changes:
    t = event.event_time
    changes: Changes = {"checkout_started_at": t if state.checkout_started_at is None
                        else max(state.checkout_started_at, t)}
    if state.cart and t >= state.cart_closed_at:
        changes["cart_updated_at"] = max(state.cart_updated_at or t, t)  # re-arms the reminder
    return changes


def _order_placed(state: ClientState, event: Event) -> Changes:
    assert event.order is not None
    t = event.event_time
    record = OrderRecord(event.order.order_id, t, round(event.order.total, 2))
    orders = sorted((*state.orders, record), key=in_time_order)[-MAX_ORDERS:]
    changes: Changes = {
        "orders": tuple(orders),
        "orders_count": state.orders_count + 1,
        "monetary_total": round(state.monetary_total + record.total, 2),
        "first_order_at": t if state.first_order_at is None else min(state.first_order_at, t),
        "last_order_at": t if state.last_order_at is None else max(state.last_order_at, t),
        **_close_browse(state, t),
    }
    categories = _order_categories(state, event)
    if categories is not None:
        changes["categories"] = categories
    changes["orders_updated_at"] = _later(state.orders_updated_at, t)
    changes["interests"] = _touch_interests(state.interests, event.order.items, t, "bought_at")
    changes.update(_order_closes_cart(state, t))
    if t >= state.cart_closed_at:
        changes["bought"] = _bought(state, event.order.items, t)
    changes["cart_closed_at"] = closed = max(state.cart_closed_at, t)
    if state.cart_removals and state.cart_removals[0][1] <= closed:
        # the adds those removals wait for are void now: the order closed the cart
        changes["cart_removals"] = tuple(r for r in state.cart_removals if r[1] > closed)
    if state.cart_emptied is not None and state.cart_emptied[0] <= closed:
        changes["cart_emptied"] = None  # that episode ended with the order, not the removal
    early = next((r for r in state.early_returns if r[0] == record.order_id), None)
    if early is not None:  # its cancellation or refund arrived first: apply it now
        undone = return_order(changes, len(changes["orders"]) - 1 - [
            o.order_id for o in reversed(changes["orders"])].index(record.order_id),
            amount=early[1], cancel=early[2])
        changes.update(undone)
        changes["early_returns"] = tuple(r for r in state.early_returns
                                        if r[0] != record.order_id)
    return changes


def _order_closes_cart(state: ClientState, t: float) -> Changes:
    """An order at `t` bought the cart lines added at or before it.

    Lines added after it (the order arrived late) stay, last changed when the cart last
    changed. If the abandoned-cart reminder of their episode was already decided, they stay
    reminded: it covered them, and one occasion gets one trigger. If it still waits (quiet
    hours), they are an episode of their own, re-armed, and the waiting one, whose episode
    (and key) the order changed, is cancelled on release, as in order.
    """
    later = tuple(line for line in state.cart if line.added_at > t)
    if later == state.cart and (state.cart_since is None or state.cart_since > t):
        return {}  # (an episode begun before it, its lines since removed, still ends here)
    changes: Changes = {"cart_changed_at": _later(state.cart_changed_at, t)}
    if not later:
        changes.update(cart=(), cart_updated_at=None, cart_since=None, cart_reminded=0.0,
                       cart_emptied=None)
        return changes
    reminded = 0.0 if _cart_reminder_waits(state) else state.cart_reminded
    changes.update(cart=later, cart_since=min(line.added_at for line in later),
                   cart_updated_at=state.cart_updated_at, cart_reminded=reminded)
    return changes


def _cart_reminder_waits(state: ClientState) -> bool:
    """The cart episode's reminder fired and waits for the end of quiet hours (its due
    time, `cart_reminded`, is the waiting trigger's `fired_at`)."""
    return any(p.type == ABANDONED_CART and p.fired_at == state.cart_reminded
               and not p.follows for p in state.pending)  # a follow-up: the reminder was sent


def _bought(state: ClientState, items: tuple[Product, ...], t: float) -> tuple[str, ...]:
    """The products of the latest order (two at the same instant: both), sorted and
    bounded, so the result does not depend on the order in which orders arrive."""
    products = {p.product_id for p in items}
    if t == state.cart_closed_at:
        products.update(state.bought)
    return tuple(sorted(products)[:MAX_BOUGHT])


def _order_categories(state: ClientState, event: Event) -> tuple[CategoryOrders, ...] | None:
    assert event.order is not None
    names = dict.fromkeys(p.category for p in event.order.items if p.category)
    if not names:
        return None
    t = event.event_time
    stats = {c.category: c for c in state.categories}
    for name in names:
        assert name is not None
        known = stats.get(name)
        stats[name] = (CategoryOrders(name, t, t, 1) if known is None else
                       replace(known, first_at=min(known.first_at, t),
                               last_at=max(known.last_at, t), count=known.count + 1))
    ordered = sorted(stats.values(), key=lambda c: (c.last_at, c.category))
    return tuple(ordered[-MAX_CATEGORIES:])


def _order_returned(state: ClientState, event: Event) -> Changes:
    """Cancellation or refund: money goes back; a cancellation also removes the order.

    One that arrives before its order (out of order) is kept, bounded, and applied when the
    order arrives.
    """
    assert event.order is not None
    cancel = event.type is EventType.ORDER_CANCELLED
    index = next((i for i, o in enumerate(state.orders)
                  if o.order_id == event.order.order_id), None)
    if index is None:
        order_id, amount = event.order.order_id, event.order.total
        known = next((r for r in state.early_returns if r[0] == order_id), None)
        if known is not None:  # several returns before the order: they add up
            if known[2]:
                return {}  # cancelled already: nothing more to give back
            if not cancel:
                amount = -1.0 if amount < 0 or known[1] < 0 else round(known[1] + amount, 2)
        early = (order_id, amount, cancel)
        kept = tuple(r for r in state.early_returns if r[0] != order_id)
        return {"early_returns": (*kept, early)[-MAX_EARLY_RETURNS:]}
    current = {"orders": state.orders, "orders_count": state.orders_count,
               "monetary_total": state.monetary_total, "first_order_at": state.first_order_at,
               "last_order_at": state.last_order_at}
    changes = return_order(current, index, amount=event.order.total, cancel=cancel)
    if changes:
        changes["orders_updated_at"] = _later(state.orders_updated_at, event.event_time)
    return changes


def return_order(current: Changes, index: int, *, amount: float, cancel: bool) -> Changes:
    """Undo (part of) the order at `index`; `amount` < 0 means all of it."""
    order: OrderRecord = current["orders"][index]
    if order.cancelled:
        return {}
    outstanding = round(order.total - order.returned, 2)
    # A cancellation undoes the whole order; a refund gives back what it says (all if silent).
    given = outstanding if cancel or amount < 0 else min(amount, outstanding)
    updated = replace(order, returned=round(order.returned + given, 2), cancelled=cancel)
    orders = current["orders"][:index] + (updated,) + current["orders"][index + 1:]
    changes: Changes = {
        "orders": orders,
        "orders_count": current["orders_count"] - 1 if cancel else current["orders_count"],
        "monetary_total": max(0.0, round(current["monetary_total"] - given, 2)),
    }
    if cancel:  # a cancelled order no longer counts as the first or the last one
        live = [o.placed_at for o in orders if not o.cancelled]
        # no older live order lies beyond the list: it is not full, or its first live order
        # is still one of its own (a full list dropped only orders older than it)
        first = current.get("first_order_at")
        complete = len(orders) < MAX_ORDERS or (
            first is not None and first >= min(o.placed_at for o in orders))
        if live or complete:
            changes["last_order_at"] = max(live) if live else None
        if complete:
            changes["first_order_at"] = min(live) if live else None
    return changes


def _support_request(state: ClientState, event: Event) -> Changes:
    last = state.last_support_at
    return {"support_requests": state.support_requests + 1,
            "last_support_at": event.event_time if last is None else max(last, event.event_time)}


def _nps_answer(state: ClientState, event: Event) -> Changes:
    """A strictly later answer replaces the stored one; one at the same instant does not: the
    trigger rule (`catalogue._nps`) acts on the first answer of an instant to arrive only,
    so the state keeps that one, the answer its follow-up was decided on."""
    if state.nps_at is not None and event.event_time <= state.nps_at:
        return {}
    return {"nps_score": event.nps_score, "nps_at": event.event_time}


def _message_engagement(state: ClientState, event: Event) -> Changes:
    channel = event.channel or "unknown"
    counts = dict(state.channel_engagement)
    counts[channel] = counts.get(channel, 0) + 1
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_CHANNELS]
    return {"channel_engagement": tuple(top),
            "engagement_at": _later(state.engagement_at, event.event_time)}


def _later(current: float | None, t: float) -> float:
    return t if current is None else max(current, t)


def _touch_interests(interests: tuple[CategoryInterest, ...], products: tuple[Product, ...],
                     t: float, kind: str) -> tuple[CategoryInterest, ...]:
    """Record an interaction of `kind` (viewed_at, carted_at or bought_at) at `t` with the
    products' categories; the least recently active categories make room for new ones."""
    names = dict.fromkeys(p.category for p in products if p.category)
    if not names:
        return interests
    known = {i.category: i for i in interests}
    for name in names:
        assert name is not None
        interest = known.get(name, CategoryInterest(name))
        times = {"viewed_at": interest.viewed_at, "carted_at": interest.carted_at,
                 "bought_at": interest.bought_at}
        previous = times[kind]
        times[kind] = t if previous is None else max(previous, t)
        known[name] = CategoryInterest(name, times["viewed_at"], times["carted_at"],
                                       times["bought_at"], interest.count + 1)
    ordered = sorted(known.values(), key=lambda i: (i.last_at, i.category))
    return tuple(ordered[-MAX_INTERESTS:])


_HANDLERS: dict[EventType, Any] = {
    EventType.REGISTERED: _registered,
    EventType.VISIT: _visit,
    EventType.PRODUCT_VIEW: _product_view,
    EventType.FAVOURITE_ADD: _favourite_add,
    EventType.CART_ADD: _cart_change,
    EventType.CART_REMOVE: _cart_change,
    EventType.CHECKOUT_STARTED: _checkout_started,
    EventType.ORDER_PLACED: _order_placed,
    EventType.ORDER_CANCELLED: _order_returned,
    EventType.ORDER_REFUNDED: _order_returned,
    EventType.SUPPORT_REQUEST: _support_request,
    EventType.NPS_ANSWER: _nps_answer,
    EventType.MESSAGE_OPENED: _message_engagement,
    EventType.MESSAGE_CLICKED: _message_engagement,
}

