"""Identity stitching: an anonymous visitor's history joins the client it turns out to be.

Events with only an anonymous id build an anonymous client (key `anon:<id>`). When an event
carries both ids (an identify, a login, a registration), the event log appends, with the
event itself, an `identity_linked` event to the anonymous key's stream (`with_links`): so in
a replay the link sits at its place in the anonymous client's history, exactly as it did
live. The anonymous client fires what was due before the link, answers with a
`profile_merged` event carrying its whole state (none when it had no history) to the
client, which records the alias then, and becomes a tombstone pointing at it; events that
still reach the tombstone are forwarded.
Each step is a keyed event in the streams, so each key keeps exactly one writer, every
event id is derived from the two keys, and a replayed step changes nothing.

A client lists at most MAX_ALIASES aliases; one it lets go of is handed over to the
tombstone of the alias that took its place, which keeps it, so an erasure of the client
still reaches every anonymous id merged into it (tombstone by tombstone).

The first link wins: a tombstone ignores later links (a shared device does not hand one
client's history to the next), and sends no answer, so the later client does not list the
anonymous id among its aliases.

Erasure: the event log de-duplicates the steps by id for `redis.dedupe_window`, and their
ids stay the same for the same two keys (a replay gives the same ids), so an erasure
forgets the steps that joined the erased client's cookies to it (`linked_steps`): else the
client's next sign-in on the same browser within the window would not link again. An
erasure asked for by an anonymous id that was merged into a client is refused
(`refuses_erasure`): the client's profile holds the cookie's history now.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from features import windows
from features.codec import decode_state, encode_state
from features.events import ANONYMOUS_PREFIX, MAX_ID_LENGTH, READ_TRAITS, Event, EventType
from features.rules import DAY
from features.state import (
    MAX_ALIASES,
    MAX_BOUGHT,
    MAX_CART_LINES,
    MAX_CATEGORIES,
    MAX_CHANNELS,
    MAX_DECIDED,
    MAX_EARLY_RETURNS,
    MAX_FAVOURITES,
    MAX_INTERESTS,
    MAX_LOST_LINKS,
    MAX_ORDERS,
    MAX_PENDING,
    MAX_RECENT_EVENT_IDS,
    MAX_SENDS,
    MAX_TOUCHED,
    MAX_VIEWED,
    CartLine,
    CategoryInterest,
    CategoryOrders,
    ClientState,
    OrderRecord,
    PendingTrigger,
    Removals,
    browse_gate,
    by_time_then_product,
    capped_traits,
    event_fingerprint,
    evolve,
    first_view_after,
    in_time_order,
    recent_removals,
    return_order,
    settle_removals,
    with_removal,
)
from features.triggers import (
    INF,
    Trigger,
    TriggerRules,
    after_merge,
    fire_due,
    process_event,
    release_held,
)
from features.windows import HOUR, VIEW_DAYS, VIEW_HOURS, VISIT_DAYS


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one event did: the client's new state, its trigger decisions, and events for
    other clients (identity steps and forwards) that the adapter appends to their streams."""

    state: ClientState | None
    triggers: list[Trigger] = field(default_factory=list)
    emitted: list[Event] = field(default_factory=list)

    def __init__(self, state: ClientState | None, triggers: list[Trigger] | None = None,
                 emitted: list[Event] | None = None) -> None:  # see `features.__init__`
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "triggers", [] if triggers is None else triggers)
        object.__setattr__(self, "emitted", [] if emitted is None else emitted)


def handle(client_key: str, state: ClientState | None, event: Event, rules: TriggerRules,
           *, next_timer: float = -INF, settled: float = INF) -> Outcome:
    """`process_event` with identity: forwards, link requests, merges. `next_timer` and
    `settled`: see `process_event`."""
    if event.type is EventType.IDENTITY_LINKED and HANDED_OVER in event.properties:
        return _keep_handed_over(client_key, state, event)
    if state is not None and state.merged_into is not None:
        if event.type is EventType.IDENTITY_LINKED:
            return Outcome(_link_lost(state, event))  # the first link won
        return Outcome(state, emitted=[forwarded(event, state.merged_into)])
    if event.type is EventType.IDENTITY_LINKED:
        return _merge_away(client_key, state, event, rules)
    if event.type is EventType.PROFILE_MERGED:
        return _absorb(client_key, state, event, rules)
    # an event with both ids does not make its cookie an alias yet: the link may lose (the
    # cookie went to another client first); the anonymous client's answer records it
    after, fired = process_event(client_key, state, event, rules, next_timer=next_timer,
                                 settled=settled)
    return Outcome(after, fired)


def with_links(events: Sequence[Event]) -> list[Event]:
    """`events`, each one that carries both ids followed by its link request."""
    out: list[Event] = []
    for event in events:
        out.append(event)
        if (event.client_id is not None and event.anonymous_id is not None
                and event.type not in (EventType.IDENTITY_LINKED, EventType.PROFILE_MERGED)):
            out.append(link_request(ANONYMOUS_PREFIX + event.anonymous_id, event.client_id,
                                    event))
    return out


def step_id(step: str, source: str, target: str) -> str:
    """The id of an identity step from `source` to `target`: `<step>:<source>><target>`, or,
    when that would pass the id limit every stream entry is read back under (two ids of up
    to MAX_ID_LENGTH each), `<step>:#` and a digest of both keys. Deterministic either way,
    so a replayed step is still recognised."""
    text = f"{step}:{source}>{target}"
    if len(text) <= MAX_ID_LENGTH:
        return text
    digest = hashlib.sha256(f"{source}\x1f{target}".encode()).hexdigest()[:40]
    return f"{step}:#{digest}"


def link_request(alias: str, client_key: str, cause: Event) -> Event:
    return Event(event_id=step_id("link", alias, client_key), type=EventType.IDENTITY_LINKED,
                 event_time=cause.event_time, received_at=cause.received_at,
                 anonymous_id=alias.removeprefix(ANONYMOUS_PREFIX),
                 properties={"client_id": client_key})


def ingest_dedupe_id(client_key: str, event_id: str, event_type: EventType) -> str:
    """What ingest de-duplicates an event by: its id within its client's events (two
    clients' events may carry the same id, a shop's order number or a touch id, and the
    dataflow keeps them apart too), and a link request apart from every event sent (else a
    sender naming an event `link:anon:<cookie>><client>` would block that link). The
    client key's length goes first, so no two (client, id) pairs read alike."""
    if event_type is EventType.IDENTITY_LINKED:
        return "link>" + event_id
    return f"{len(client_key)}:{client_key}>{event_id}"


def id_digest(dedupe_id: str) -> str:
    """The digest a de-duplication id is kept under (sinks/append_events.lua): ids may name
    clients, and an erased client must leave no key naming it."""
    return hashlib.sha1(dedupe_id.encode()).hexdigest()  # noqa: S324 - a name, not a secret


def link_digest(link_id: str) -> str:
    """The digest the link request `link_id` is de-duplicated under at ingest."""
    return id_digest(ingest_dedupe_id("", link_id, EventType.IDENTITY_LINKED))


@dataclass(frozen=True, slots=True)
class Step:
    """An identity step as the event log de-duplicated it: the client whose stream it went
    to, its id (`hashed`: a link request's `link_digest`, all a tombstone keeps of a link
    that lost, since the id names the later client), and whether ingest appended it (a
    link request) or the dataflow did."""

    client_key: str
    event_id: str
    ingested: bool
    hashed: bool = False


def linked_steps(client_key: str, state: ClientState | None) -> list[Step]:
    """The identity steps that joined anonymous ids to the client, or (a tombstone) this
    anonymous id to its client, handed it the aliases it keeps, and asked for the links
    that lost to it: what an erasure of `client_key` forgets, so that a later sign-in links
    and merges again within the de-duplication window. Their ids follow from the two keys
    alone, as when appended."""
    if state is None:
        return []
    if state.merged_into is None:
        pairs = [(alias, client_key) for alias in state.aliases]
        others: list[Step] = []
    else:
        pairs = [(client_key, state.merged_into)]
        others = [Step(client_key, step_id("alias", dropped, client_key), False)
                  for dropped in state.aliases]
        others += [Step(client_key, digest, True, hashed=True) for digest in state.links_lost]
    return [step for alias, target in pairs
            for step in (Step(alias, step_id("link", alias, target), True),
                         Step(target, step_id("merge", alias, target), False))] + others


DIRECT = "direct"  # property of an erasure asked for by this very id (api/routes/erasure.py)
MERGED_REFUSAL = ("the anonymous id was merged into a client, whose profile holds its "
                  "history: erase that client, which erases the anonymous ids merged into it")


def refuses_erasure(state: ClientState | None, event: Event) -> bool:
    """Whether an erasure is refused: asked for directly by an anonymous id that is merged
    into a client (not reached through that client's erasure). Erasing the pointer alone
    would leave the id and its history in the client's profile; erasing the client on a
    cookie's word would erase a shared device's first user. The API refuses it up front
    (409, naming the client); this covers a link that was still on its way then."""
    return (event.type is EventType.ERASURE_REQUESTED and event.properties.get(DIRECT) is True
            and state is not None and state.merged_into is not None)


def forwarded(event: Event, client_key: str) -> Event:
    """The event as the client it now belongs to receives it (same id: deduplicated there)."""
    return replace(event, client_id=client_key)


def _link_lost(tombstone: ClientState, event: Event) -> ClientState:
    """The tombstone noting a link request of a later client that lost: its id is
    deterministic, so unless the tombstone's erasure forgets it, that client's next sign-in
    with the cookie would be ignored as a duplicate for the rest of the de-duplication
    window. Only the id's digest is kept, the de-duplication key's own name: the id names
    the later client, whose erasure cannot reach this tombstone."""
    if event.properties.get("client_id") == tombstone.merged_into:
        return tombstone  # the winning link, replayed
    digest = link_digest(event.event_id)
    if digest in tombstone.links_lost:
        return tombstone
    return evolve(tombstone, links_lost=(*tombstone.links_lost, digest)[-MAX_LOST_LINKS:])


def _merge_away(client_key: str, state: ClientState | None, event: Event,
                rules: TriggerRules) -> Outcome:
    target = str(event.properties["client_id"])
    fired: list[Trigger] = []
    if state is not None:  # what was due before the link is decided here, as it was live
        state, fired = release_held(client_key, state, rules)
        state, due = fire_due(client_key, state, event.event_time, rules)
        fired += due
    tombstone = ClientState(
        first_seen_at=event.event_time if state is None else state.first_seen_at,
        last_seen_at=event.event_time if state is None else state.last_seen_at,
        updated_at=event.event_time if state is None else max(state.updated_at,
                                                               event.event_time),
        last_received_at=event.received_at, merged_into=target,
        recent_event_ids=(event_fingerprint(event.event_id),))
    # the answer: the history to join, or (a cookie never seen alone) only the alias
    properties = {"from": client_key}
    if state is not None:
        properties["state"] = base64.b64encode(encode_state(state)).decode()
    merge = Event(event_id=step_id("merge", client_key, target), type=EventType.PROFILE_MERGED,
                  event_time=event.event_time, received_at=event.received_at,
                  client_id=target, properties=properties)
    return Outcome(tombstone, fired, [merge])


def _absorb(client_key: str, state: ClientState | None, event: Event, rules: TriggerRules
            ) -> Outcome:
    alias = str(event.properties["from"])
    fingerprint = event_fingerprint(event.event_id)
    if state is not None and fingerprint in state.recent_event_ids:
        return Outcome(state)
    if state is None:
        # The link follows the client's own event in its stream, so a client with no record
        # here was erased after it asked: the cookie it linked is erased in turn, not merged
        # into a client brought back from the cookie's history, and so is this answer.
        return Outcome(None, emitted=[_erasure_of(who, client_key, alias, event)
                                      for who in (alias, client_key)])
    if "state" not in event.properties:  # the cookie had no history: it becomes an alias
        if alias in state.aliases:
            return Outcome(state)
        merged = evolve(state, aliases=(*state.aliases, alias)[-MAX_ALIASES:],
                        recent_event_ids=(*state.recent_event_ids, fingerprint)[
                            -MAX_RECENT_EVENT_IDS:])
        return Outcome(merged, emitted=_hand_over(client_key, state, merged, alias, event))
    source = decode_state(base64.b64decode(str(event.properties["state"])))
    # fire what was due before the merge on the client's own history first
    base, fired = process_event(
        client_key, state, replace(event, type=EventType.CUSTOM, name="profile_merged"), rules)
    merged = merge_states(base, source, alias, event.event_time, rules.read_traits)
    merged = evolve(merged, recent_event_ids=(*merged.recent_event_ids, fingerprint)[
        -MAX_RECENT_EVENT_IDS:])
    # the visitor's history may raise the tier and move the client between segments
    merged, entered = after_merge(client_key, merged, event, rules)
    return Outcome(merged, fired + entered,
                   _hand_over(client_key, state, merged, alias, event))


def _erasure_of(who: str, client_key: str, alias: str, cause: Event) -> Event:
    """An erasure request for `who` after `client_key`'s erasure met `alias`'s answer; its
    id a digest, since an erasure's id stays in its audit record and the ids must not."""
    digest = hashlib.sha256(f"{who}\x1f{client_key}\x1f{alias}".encode()).hexdigest()[:32]
    anonymous = who.startswith(ANONYMOUS_PREFIX)
    return Event(event_id=f"erasure-{digest}", type=EventType.ERASURE_REQUESTED,
                 event_time=cause.event_time, received_at=cause.received_at,
                 client_id=None if anonymous else who,
                 anonymous_id=who.removeprefix(ANONYMOUS_PREFIX) if anonymous else None)


HANDED_OVER = "alias"  # the property of a hand-over (an `identity_linked` to a tombstone)


def _hand_over(client_key: str, before: ClientState | None, after: ClientState, alias: str,
               cause: Event) -> list[Event]:
    """The aliases the client's bounded list let go of to make room for `alias`, each handed
    to `alias`'s tombstone, which keeps it: an erasure of the client reaches that tombstone,
    and the tombstone's erasure the aliases it keeps, so every anonymous id merged into the
    client is still erased (and none keeps pointing at the erased client)."""
    kept = set(after.aliases)
    if before is None or alias not in kept:
        return []
    return [Event(event_id=step_id("alias", dropped, alias), type=EventType.IDENTITY_LINKED,
                  event_time=cause.event_time, received_at=cause.received_at,
                  anonymous_id=alias.removeprefix(ANONYMOUS_PREFIX),
                  properties={"client_id": client_key, HANDED_OVER: dropped})
            for dropped in before.aliases if dropped not in kept]


def _keep_handed_over(client_key: str, state: ClientState | None, event: Event) -> Outcome:
    """A tombstone keeps an alias its client handed over; anything else (the tombstone was
    erased meanwhile, or points elsewhere) ignores it."""
    dropped = str(event.properties[HANDED_OVER])
    if (state is None or state.merged_into != event.properties["client_id"]
            or dropped == client_key or dropped in state.aliases):
        return Outcome(state)
    return Outcome(evolve(state, aliases=(*state.aliases, dropped)[-MAX_ALIASES:]))


def merge_states(target: ClientState | None, source: ClientState, alias: str, at: float,
                 read_traits: frozenset[str] = READ_TRAITS) -> ClientState:
    """The client's state with an anonymous client's history joined in.

    Counts add up, times take the earliest first and the latest last, collections unite
    (the newer entry wins for the same product or category), the client's own traits win,
    what either side decided stays decided, so nothing fires twice, and what either side
    had waiting (a delay, quiet hours) still waits, so nothing is lost. `read_traits`: kept
    first when the traits are too many (`TriggerRules.read_traits`).
    """
    if target is None:
        return evolve(source, merged_into=None, segments=(), segments_at=0.0,
                       aliases=(alias,))
    t, s = target, source
    latest = max(t.updated_at, s.updated_at)
    cart = {line.product_id: line for line in s.cart}
    for line in t.cart:
        other = cart.get(line.product_id)
        if other is None or line.added_at >= other.added_at:
            cart[line.product_id] = line
    # an order on either side bought what was in the cart before it, as it does in one
    # profile: lines added before the latest order are void, whichever side saw them (else
    # the outcome would hang on whether the link came before or after the order)
    closed = max(t.cart_closed_at, s.cart_closed_at)
    cart_changed = _latest(t.cart_changed_at, s.cart_changed_at)
    # a removal owed on one side takes the units its add left on the other, as in order
    owed: Removals = ()
    for pid, at, units in (*t.cart_removals, *s.cart_removals):
        if at > closed:
            owed = with_removal(owed, pid, at, units)
    cart_lines, owed, taken = settle_removals(
        tuple(line for line in cart.values() if line.added_at > closed), owed)
    cart_lines = cart_lines[-MAX_CART_LINES:]
    owed = owed if cart_changed is None else recent_removals(owed, cart_changed)
    open_sides = [x for x in (t, s) if any(line.added_at > closed for line in x.cart)]
    # a side's reminder stays decided while its cart episode is intact
    reminders = sorted({x.cart_reminded for x in open_sides if x.cart_reminded
                        and all(line.added_at > closed for line in x.cart)})
    # a side whose episode began after lines it still holds (an add after its reminder)
    # keeps that start: the lines before it are an ended episode's, whose key is spent
    starts = [x.cart_since for x in open_sides if x.cart_since is not None
              and any(closed < line.added_at < x.cart_since for line in x.cart)]
    cart_since, reminded = _merged_episode(cart_lines, reminders, starts)
    cart_updated = max((x.cart_updated_at for x in open_sides
                        if x.cart_updated_at is not None), default=None)
    if not cart_lines:
        cart_updated = None
    elif taken is not None and cart_updated is not None:
        cart_updated = max(cart_updated, taken)  # that removal changed the cart, in order
    viewed_items = _merge_latest(t.viewed, s.viewed, MAX_VIEWED)
    browse_closed = max(t.browse_closed_at, s.browse_closed_at)
    # views up to either side's latest browse reminder are decided, as in one profile
    gate = max(browse_gate(t), browse_gate(s))
    browse_since = _earliest(t.browse_since, s.browse_since)
    if browse_since is not None and browse_since <= gate:  # as an order closes it
        browse_since = first_view_after(viewed_items, gate)
    orders, orders_count, money, first_order, last_order = _merge_orders(t, s)
    (orders, orders_count, money, first_order, last_order), early_returns = _early_returns(
        t, s, (orders, orders_count, money, first_order, last_order))
    channels = dict(s.channel_engagement)
    for name, count in t.channel_engagement:
        channels[name] = channels.get(name, 0) + count
    return evolve(
        t,
        first_seen_at=min(t.first_seen_at, s.first_seen_at),
        last_seen_at=max(t.last_seen_at, s.last_seen_at),
        updated_at=latest,
        registered_at=_earliest(t.registered_at, s.registered_at),
        welcomed=t.welcomed or s.welcomed,
        traits=capped_traits({**s.traits, **t.traits}, read_traits),
        traits_updated_at=max(t.traits_updated_at, s.traits_updated_at),
        last_visit_at=_latest(t.last_visit_at, s.last_visit_at),
        visits=t.visits + s.visits,
        cart=cart_lines,
        cart_updated_at=cart_updated,
        cart_since=cart_since,
        cart_reminded=reminded,
        cart_closed_at=closed,
        cart_removals=owed,
        viewed=viewed_items,
        browse_since=browse_since,
        last_view_at=_latest(t.last_view_at, s.last_view_at),
        browse_closed_at=browse_closed,
        bought=_merge_bought(t, s),
        favourites=_merge_latest(t.favourites, s.favourites, MAX_FAVOURITES),
        orders=orders,
        orders_count=orders_count,
        monetary_total=money,
        first_order_at=first_order,
        last_order_at=last_order,
        checkout_started_at=_latest(t.checkout_started_at, s.checkout_started_at),
        support_requests=t.support_requests + s.support_requests,
        last_support_at=_latest(t.last_support_at, s.last_support_at),
        nps_score=t.nps_score if (t.nps_at or 0) >= (s.nps_at or 0) else s.nps_score,
        nps_at=_latest(t.nps_at, s.nps_at),
        channel_engagement=tuple(sorted(channels.items(),
                                        key=lambda c: (-c[1], c[0])))[:MAX_CHANNELS],
        recent_event_ids=(*s.recent_event_ids, *t.recent_event_ids)[-MAX_RECENT_EVENT_IDS:],
        marks=tuple(sorted({**dict(s.marks), **{k: max(v, dict(s.marks).get(k, v))
                                                for k, v in t.marks}}.items())),
        pending=_merge_pending(t.pending, s.pending),
        sends=tuple(sorted({*t.sends, *s.sends}))[-MAX_SENDS:],
        decided=tuple(dict.fromkeys((*s.decided, *t.decided)))[-MAX_DECIDED:],
        touched=tuple(dict.fromkeys((*s.touched, *t.touched)))[-MAX_TOUCHED:],
        history_until=max(t.history_until, s.history_until),
        visit_days=windows.merge(t.visit_days, s.visit_days, latest, DAY, VISIT_DAYS),
        view_hours=windows.merge(t.view_hours, s.view_hours, latest, HOUR, VIEW_HOURS),
        view_days=windows.merge(t.view_days, s.view_days, latest, DAY, VIEW_DAYS),
        interests=_merge_interests(t.interests, s.interests),
        categories=_merge_categories(t.categories, s.categories),
        early_returns=early_returns,
        orders_updated_at=_latest(t.orders_updated_at, s.orders_updated_at),
        cart_changed_at=cart_changed or at,
        engagement_at=_latest(t.engagement_at, s.engagement_at),
        aliases=tuple(dict.fromkeys((*t.aliases, alias, *s.aliases)))[-MAX_ALIASES:],
    )


def _merged_episode(lines: tuple[CartLine, ...], reminders: list[float],
                    starts: list[float]) -> tuple[float | None, float]:
    """The joined cart's episode (its first add) and reminder, as one profile would have
    them: an add at or after a reminder began a new episode, so the latest reminder that
    fired before the last add ends the episode before it, and the lines added since are
    the episode, reminded only by a reminder that came after it (one may wait for quiet
    hours: keyed by that episode, it still stands). `starts`: episodes a side began after
    a reminder it no longer holds; none of the lines before the latest is the episode's
    (else the ended episode's key, perhaps still waiting, would be raised again)."""
    if not lines:
        return None, 0.0
    last_add = max(line.added_at for line in lines)
    before = [r for r in reminders if r <= last_add]
    begun = max((*before[-1:], *starts), default=None)
    if begun is None:
        return min(line.added_at for line in lines), max(reminders, default=0.0)
    since = min((line.added_at for line in lines if line.added_at >= begun), default=begun)
    if not before:
        return since, max(reminders, default=0.0)
    return since, next((r for r in reminders if r > before[-1]), 0.0)


def _merge_latest(a: tuple[tuple[str, float], ...], b: tuple[tuple[str, float], ...],
                  bound: int) -> tuple[tuple[str, float], ...]:
    """(product, time) pairs of both sides, each product at its latest time, as one
    profile keeps them (`state.by_time_then_product`)."""
    latest = dict(b)
    for pid, at in a:
        latest[pid] = max(at, latest.get(pid, at))
    return tuple(sorted(latest.items(), key=by_time_then_product))[-bound:]


def _merge_bought(t: ClientState, s: ClientState) -> tuple[str, ...]:
    """The products of the latest order either side saw (both sides' at the same instant)."""
    closed = max(t.cart_closed_at, s.cart_closed_at)
    products = {pid for x in (t, s) if x.cart_closed_at == closed for pid in x.bought}
    return tuple(sorted(products)[:MAX_BOUGHT])


def _merge_orders(t: ClientState, s: ClientState) -> tuple[
        tuple[OrderRecord, ...], int, float, float | None, float | None]:
    """Orders, their count, money, first and last order time of both sides.

    The same order seen by both (a guest checkout tracked on the site and sent by the
    shop's backend) counts once, with what either side knows of it: cancelled if either saw
    it cancelled, the larger refund. Each side's own count and money already hold its copy,
    so both copies come out and the merged one goes in; the first and last order times are
    taken again from the orders that still stand when both lists are complete.
    """
    mine = {o.order_id: o for o in t.orders}
    merged = {o.order_id: o for o in s.orders}
    count = t.orders_count + s.orders_count
    money = t.monetary_total + s.monetary_total
    both = [order_id for order_id in mine if order_id in merged]
    for order_id in both:
        own, other = mine[order_id], merged[order_id]
        cancelled = own.cancelled or other.cancelled
        returned = own.total if cancelled else min(own.total, max(own.returned, other.returned))
        kept = replace(own, returned=round(returned, 2), cancelled=cancelled)
        count += _live(kept) - _live(own) - _live(other)
        money += _net(kept) - _net(own) - _net(other)
        merged[order_id] = kept
    merged.update({order_id: order for order_id, order in mine.items() if order_id not in both})
    ordered = sorted(merged.values(), key=in_time_order)
    first = _earliest(t.first_order_at, s.first_order_at)
    last = _latest(t.last_order_at, s.last_order_at)
    if both and len(t.orders) < MAX_ORDERS and len(s.orders) < MAX_ORDERS:
        live = [o.placed_at for o in ordered if not o.cancelled]
        first, last = (min(live), max(live)) if live else (None, None)
    return (tuple(ordered[-MAX_ORDERS:]), max(0, count), max(0.0, round(money, 2)), first,
            last)


OrderTotals = tuple[tuple[OrderRecord, ...], int, float, float | None, float | None]


def _early_returns(t: ClientState, s: ClientState, totals: OrderTotals
                   ) -> tuple[OrderTotals, tuple[tuple[str, float, bool], ...]]:
    """Cancellations and refunds either side saw before their order: applied now to an
    order the other side knew, else kept for the order to come (a late order reaches the
    client, forwarded, and must find them). A refund is applied only to an order nothing
    was given back for yet: the same refund may have reached both sides."""
    orders, count, money, first, last = totals
    current: dict[str, Any] = {"orders": orders, "orders_count": count,
                               "monetary_total": money, "first_order_at": first,
                               "last_order_at": last}
    waiting: dict[str, tuple[str, float, bool]] = {r[0]: r for r in s.early_returns}
    waiting.update({r[0]: r for r in t.early_returns})
    kept: list[tuple[str, float, bool]] = []
    for order_id, amount, cancel in waiting.values():
        index = next((i for i, o in enumerate(current["orders"]) if o.order_id == order_id),
                     None)
        if index is None:
            kept.append((order_id, amount, cancel))
        elif cancel or current["orders"][index].returned == 0:
            current.update(return_order(current, index, amount=amount, cancel=cancel))
    return ((current["orders"], current["orders_count"], current["monetary_total"],
             current["first_order_at"], current["last_order_at"]),
            tuple(kept)[-MAX_EARLY_RETURNS:])


def _live(order: OrderRecord) -> int:
    return 0 if order.cancelled else 1


def _net(order: OrderRecord) -> float:
    return 0.0 if order.cancelled else order.total - order.returned


def _merge_pending(a: tuple[PendingTrigger, ...], b: tuple[PendingTrigger, ...]
                   ) -> tuple[PendingTrigger, ...]:
    """Both sides' triggers waiting for a delay or the end of quiet hours (the anonymous
    client's, say a cart reminder due at night, now wait on the client: released there, they
    are checked against the merged state and recorded under the client). The same occasion
    waits once, the client's own copy kept; the earliest MAX_PENDING are kept."""
    waiting = {(p.type, p.decided_key): p for p in b}  # a follow-up: an occasion apart
    waiting.update({(p.type, p.decided_key): p for p in a})
    return tuple(sorted(waiting.values(), key=lambda p: (p.release_at, p.type, p.decided_key))
                 )[:MAX_PENDING]


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _merge_categories(a: tuple[CategoryOrders, ...], b: tuple[CategoryOrders, ...]
                      ) -> tuple[CategoryOrders, ...]:
    """Per-category order history of both sides (per-category replenishment): first and
    last order, their count, and the latest cycle already reminded of. (An order both sides
    saw counts twice here: the state keeps no order's items to tell.)"""
    merged = {c.category: c for c in b}
    for mine in a:
        other = merged.get(mine.category)
        merged[mine.category] = mine if other is None else CategoryOrders(
            mine.category, min(mine.first_at, other.first_at), max(mine.last_at, other.last_at),
            mine.count + other.count, max(mine.reminded_through, other.reminded_through))
    ordered = sorted(merged.values(), key=lambda c: (c.last_at, c.category))
    return tuple(ordered[-MAX_CATEGORIES:])


def _merge_interests(a: tuple[CategoryInterest, ...], b: tuple[CategoryInterest, ...]
                     ) -> tuple[CategoryInterest, ...]:
    merged = {i.category: i for i in b}
    for mine in a:
        other = merged.get(mine.category)
        merged[mine.category] = mine if other is None else CategoryInterest(
            mine.category, _latest(mine.viewed_at, other.viewed_at),
            _latest(mine.carted_at, other.carted_at), _latest(mine.bought_at, other.bought_at),
            mine.count + other.count)
    ordered = sorted(merged.values(), key=lambda i: (i.last_at, i.category))
    return tuple(ordered[-MAX_INTERESTS:])
