"""Identity stitching in the pure core: link, merge, forward, and what the merged state
holds (cart, views, interests, visits, timers)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from features.catalogue import occasion_time
from features.events import (
    MAX_ID_LENGTH,
    Event,
    EventError,
    EventType,
    Order,
    Product,
    event_to_dict,
    parse_event,
)
from features.identity import (
    Outcome,
    Step,
    handle,
    link_digest,
    link_request,
    linked_steps,
    merge_states,
    with_links,
)
from features.rules import (
    ABANDONED_BROWSE,
    ABANDONED_CART,
    DAY,
    LOYALTY_STATUS,
    REPLENISHMENT_REMINDER,
    WELCOME,
    QuietHours,
    TriggerRules,
)
from features.state import MAX_LOST_LINKS, ClientState, evolve
from features.triggers import ANONYMOUS_WELCOME_WAIT, Trigger, fire_due, next_due
from features.values import FEATURES, Context
from tests.core_events import HOUR, OPEN, RULES, T0, of, only

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

ANON = "anon:cookie-1"
USER = "u1"
CART_ONLY = only(RULES, ABANDONED_CART)


def anon(kind: EventType, t: float, event_id: str, **fields: object) -> Event:
    return Event(event_id=event_id, type=kind, event_time=T0 + t, received_at=T0 + t,
                 anonymous_id="cookie-1", **fields)  # type: ignore[arg-type]


def user(kind: EventType, t: float, event_id: str, *, with_cookie: bool = False,
         **fields: object) -> Event:
    return Event(event_id=event_id, type=kind, event_time=T0 + t, received_at=T0 + t,
                 client_id=USER, anonymous_id="cookie-1" if with_cookie else None,
                 **fields)  # type: ignore[arg-type]


def shoes(pid: str) -> tuple[Product, ...]:
    return (Product(pid, "shoes", 30.0, 1),)


class World:
    """Clients by key, and a queue of events routed by key, like the streams (an event
    with both ids brings its link request, as the event log appends it)."""

    def __init__(self, rules: TriggerRules = CART_ONLY) -> None:
        self.rules = rules
        self.states: dict[str, ClientState | None] = {}
        self.triggers: list = []  # type: ignore[type-arg]

    def send(self, event: Event) -> None:
        queue = with_links([event])
        while queue:
            # through the stream's wire form, as the dataflow reads every entry back
            current = parse_event(event_to_dict(queue.pop(0)))
            key = current.client_key
            outcome: Outcome = handle(key, self.states.get(key), current, self.rules)
            self.states[key] = outcome.state
            self.triggers.extend(outcome.triggers)
            queue.extend(outcome.emitted)


def test_anonymous_cart_and_views_survive_registration_and_the_cart_fires_once() -> None:
    world = World()
    world.send(anon(EventType.VISIT, 0, "v1"))
    world.send(anon(EventType.PRODUCT_VIEW, 60, "pv1", products=shoes("p9")))
    world.send(anon(EventType.CART_ADD, 120, "ca1", products=shoes("p1")))
    world.send(user(EventType.REGISTERED, 600, "r1", with_cookie=True,
                    traits={"email": "a@example.com"}))
    merged = world.states[USER]
    assert merged is not None
    assert [line.product_id for line in merged.cart] == ["p1"]
    assert [pid for pid, _ in merged.viewed] == ["p9"]
    assert merged.visits == 2 and merged.aliases == (ANON,)
    assert merged.interests[0].category == "shoes"
    tombstone = world.states[ANON]
    assert tombstone is not None and tombstone.merged_into == USER and not tombstone.cart
    assert next_due(tombstone, CART_ONLY) is None
    # the cart's timer re-armed on the client: due one hour after the anonymous add
    assert next_due(merged, CART_ONLY) == T0 + 120 + HOUR
    state, fired = fire_due(USER, merged, T0 + 2 * HOUR, CART_ONLY)
    carts = of(fired, ABANDONED_CART)
    assert len(carts) == 1 and carts[0].client_id == USER
    state, fired = fire_due(USER, state, T0 + 10 * HOUR, CART_ONLY)
    assert of(fired, ABANDONED_CART) == []


def test_later_anonymous_events_are_forwarded_and_deduplicated() -> None:
    world = World()
    world.send(anon(EventType.PRODUCT_VIEW, 0, "pv1", products=shoes("p1")))
    world.send(user(EventType.IDENTIFY, 10, "i1", with_cookie=True))
    world.send(anon(EventType.PRODUCT_VIEW, 20, "pv2", products=shoes("p2")))
    world.send(anon(EventType.PRODUCT_VIEW, 20, "pv2", products=shoes("p2")))  # resent
    merged = world.states[USER]
    assert merged is not None
    assert [pid for pid, _ in merged.viewed] == ["p1", "p2"]
    context = Context(merged, T0 + 30, RULES.segments)
    assert FEATURES["views_24h"].get(context) == 2


def test_repeated_links_change_nothing_and_the_first_link_wins() -> None:
    world = World()
    world.send(anon(EventType.CART_ADD, 0, "ca1", products=shoes("p1")))
    world.send(user(EventType.IDENTIFY, 10, "i1", with_cookie=True))
    once = world.states[USER]
    world.send(user(EventType.IDENTIFY, 20, "i2", with_cookie=True))
    assert world.states[USER] is not None
    assert world.states[USER].cart == once.cart  # type: ignore[union-attr]
    other = Event(event_id="i3", type=EventType.IDENTIFY, event_time=T0 + 30,
                  received_at=T0 + 30, client_id="u2", anonymous_id="cookie-1")
    world.send(other)
    second = world.states["u2"]
    assert second is not None and second.cart == ()  # the cookie's history went to u1


def test_merge_adds_counts_and_keeps_the_clients_own_traits() -> None:
    world = World()
    world.send(anon(EventType.VISIT, 0, "v1"))
    world.send(anon(EventType.IDENTIFY, 1, "t1", traits={"city": "Porto", "gender": "f"}))
    world.send(user(EventType.VISIT, 5, "v2"))
    world.send(user(EventType.IDENTIFY, 6, "t2", traits={"city": "Lisbon"}))
    target = world.states[USER]
    source = world.states[ANON]
    assert target is not None and source is not None
    merged = merge_states(target, source, ANON, T0 + 10)
    assert merged.visits == 2
    assert merged.traits == {"city": "Lisbon", "gender": "f"}
    assert merged.first_seen_at == T0


def test_a_merged_cart_orders_lines_added_at_one_instant_by_product_whichever_side_held_them(
        ) -> None:
    """As one profile's cart does (`state.line_order`): the merged cart, and what its bound
    keeps, do not hang on which side saw which add."""
    carts = []
    for cookie_products, client_products in ((("p2", "p4"), ("p1", "p3")),
                                             (("p1", "p3"), ("p2", "p4"))):
        world = World()
        for n, pid in enumerate(cookie_products):
            world.send(anon(EventType.CART_ADD, 0, f"a{n}", products=shoes(pid)))
        for n, pid in enumerate(client_products):
            world.send(user(EventType.CART_ADD, 0, f"b{n}", products=shoes(pid)))
        world.send(user(EventType.IDENTIFY, 1, "i1", with_cookie=True))
        merged = world.states[USER]
        assert merged is not None and merged.aliases == (ANON,)
        carts.append([line.product_id for line in merged.cart])
    assert carts == [["p1", "p2", "p3", "p4"]] * 2


def test_merged_favourites_keep_each_products_latest_time_in_time_order() -> None:
    world = World()
    world.send(anon(EventType.FAVOURITE_ADD, 5, "f1", products=shoes("p1")))
    world.send(user(EventType.FAVOURITE_ADD, 3, "f2", products=shoes("p1")))
    world.send(user(EventType.FAVOURITE_ADD, 4, "f3", products=shoes("p2")))
    world.send(user(EventType.IDENTIFY, 6, "i1", with_cookie=True))
    merged = world.states[USER]
    assert merged is not None and merged.favourites == (("p2", T0 + 4), ("p1", T0 + 5))


def test_ids_at_the_length_limit_still_link_and_merge() -> None:
    """An anonymous id and a client id each as long as ingest allows: the identity steps
    derived from both must still be valid events (they were dead-lettered as too long)."""
    cookie, client = "k" * MAX_ID_LENGTH, "c" * MAX_ID_LENGTH
    world = World()
    world.send(Event(event_id="ca1", type=EventType.CART_ADD, event_time=T0, received_at=T0,
                     anonymous_id=cookie, products=shoes("p1")))
    world.send(Event(event_id="i1", type=EventType.IDENTIFY, event_time=T0 + 10,
                     received_at=T0 + 10, client_id=client, anonymous_id=cookie))
    merged = world.states[client]
    assert merged is not None and [line.product_id for line in merged.cart] == ["p1"]
    assert merged.aliases == ("anon:" + cookie,)
    tombstone = world.states["anon:" + cookie]
    assert tombstone is not None and tombstone.merged_into == client


def test_a_client_whose_link_lost_does_not_claim_the_cookie() -> None:
    """A shared device: the cookie's history went to the first client, so only that client
    lists it among its aliases (an erasure of the second one follows its aliases, and must
    not erase the first client's link)."""
    world = World()
    world.send(anon(EventType.CART_ADD, 0, "ca1", products=shoes("p1")))
    world.send(user(EventType.IDENTIFY, 10, "i1", with_cookie=True))
    world.send(Event(event_id="i2", type=EventType.IDENTIFY, event_time=T0 + 30,
                     received_at=T0 + 30, client_id="u2", anonymous_id="cookie-1"))
    first, second = world.states[USER], world.states["u2"]
    assert first is not None and first.aliases == (ANON,)
    assert second is not None and second.aliases == ()
    tombstone = world.states[ANON]
    assert tombstone is not None and tombstone.merged_into == USER
    assert tombstone.links_lost == (link_digest(f"link:{ANON}>u2"),)
    # the losing link delivered again, the winning one replayed: nothing more to note
    world.send(Event(event_id="i2", type=EventType.IDENTIFY, event_time=T0 + 30,
                     received_at=T0 + 30, client_id="u2", anonymous_id="cookie-1"))
    winning = link_request(ANON, USER, user(EventType.IDENTIFY, 10, "i1", with_cookie=True))
    assert handle(ANON, tombstone, winning, world.rules).state == tombstone
    assert world.states[ANON] == tombstone


def test_a_cookie_never_seen_alone_is_still_an_alias_of_its_client() -> None:
    world = World()
    world.send(user(EventType.IDENTIFY, 0, "i1", with_cookie=True))
    merged = world.states[USER]
    assert merged is not None and merged.aliases == (ANON,)
    tombstone = world.states[ANON]
    assert tombstone is not None and tombstone.merged_into == USER
    world.send(anon(EventType.PRODUCT_VIEW, 5, "pv1", products=shoes("p1")))
    merged = world.states[USER]
    assert merged is not None and [pid for pid, _ in merged.viewed] == ["p1"]


def test_a_merge_answer_without_history_parses_and_a_malformed_one_does_not() -> None:
    bare = {"event_id": "merge:anon:x>u1", "type": "profile_merged", "client_id": USER,
            "event_time": T0, "properties": {"from": "anon:x"}}
    assert parse_event(bare).properties == {"from": "anon:x"}
    for wrong in ("", 5):
        with pytest.raises(EventError, match="properties.state"):
            parse_event({**bare, "properties": {"from": "anon:x", "state": wrong}})


def test_a_reminder_waiting_for_quiet_hours_to_end_goes_to_the_client_after_the_merge() -> None:
    """The anonymous cart's reminder fell due at night and waits for the morning; the
    visitor logs in before then: the waiting reminder moves with the cart (it was lost,
    and the cart, marked reminded, never reminded again)."""
    rules = only(replace(RULES, policy=replace(OPEN, quiet_hours=QuietHours())), ABANDONED_CART)
    world = World(rules)
    world.send(anon(EventType.CART_ADD, 0, "ca1", products=shoes("p1")))  # 00:00 UTC
    world.send(anon(EventType.PAGE_VIEW, 2 * HOUR, "pg1"))
    assert [(t.status, t.until) for t in of(world.triggers, ABANDONED_CART)] == [
        ("deferred", T0 + 9 * HOUR)]
    world.send(user(EventType.IDENTIFY, 2 * HOUR + 10, "i1", with_cookie=True))
    merged = world.states[USER]
    assert merged is not None and next_due(merged, rules) == T0 + 9 * HOUR
    _, fired = fire_due(USER, merged, T0 + 12 * HOUR, rules)
    carts = of(fired, ABANDONED_CART)
    assert [(t.client_id, t.status, t.fired_at) for t in carts] == [
        (USER, "sent", T0 + HOUR)]
    assert [item["product_id"] for item in carts[0].payload["items"]] == ["p1"]


def test_waiting_reminders_of_both_sides_are_kept_once() -> None:
    rules = only(replace(RULES, policy=replace(OPEN, quiet_hours=QuietHours())), ABANDONED_CART)
    world = World(rules)
    world.send(anon(EventType.CART_ADD, 0, "ca1", products=shoes("p1")))
    world.send(anon(EventType.PAGE_VIEW, 2 * HOUR, "pg1"))
    source = world.states[ANON]
    assert source is not None and len(source.pending) == 1
    assert merge_states(source, source, ANON, T0 + 3 * HOUR).pending == source.pending
    own = replace(source.pending[0], key="own-occasion", release_at=T0 + 8 * HOUR)
    target = evolve(source, pending=(own,))
    merged = merge_states(target, source, ANON, T0 + 3 * HOUR)
    assert merged.pending == (own, source.pending[0])


def test_an_order_both_sides_saw_counts_once_with_its_cancellation_and_refund() -> None:
    """A guest checkout tracked on the site (the cookie) and sent by the shop's backend (the
    client): its cancellation or refund, seen by one side only, still holds after the merge
    (the other side's copy counted the money back in)."""
    world = World()
    world.send(anon(EventType.ORDER_PLACED, 0, "site-o1", order=Order("o1", 50.0)))
    world.send(user(EventType.ORDER_PLACED, 5, "shop-o1", order=Order("o1", 50.0)))
    world.send(user(EventType.ORDER_CANCELLED, 60, "shop-c1", order=Order("o1", -1.0)))
    world.send(anon(EventType.ORDER_PLACED, 70, "site-o2", order=Order("o2", 20.0)))
    world.send(user(EventType.ORDER_PLACED, 72, "shop-o2", order=Order("o2", 20.0)))
    world.send(anon(EventType.ORDER_REFUNDED, 80, "site-r2", order=Order("o2", 5.0)))
    world.send(anon(EventType.ORDER_PLACED, 90, "site-o3", order=Order("o3", 10.0)))
    world.send(anon(EventType.ORDER_CANCELLED, 95, "site-c3", order=Order("o3", -1.0)))
    world.send(user(EventType.ORDER_PLACED, 99, "shop-o3", order=Order("o3", 10.0)))
    world.send(user(EventType.IDENTIFY, 600, "i1", with_cookie=True))
    merged = world.states[USER]
    assert merged is not None
    assert merged.orders_count == 1 and merged.monetary_total == 15.0
    assert [(o.order_id, o.cancelled, o.returned) for o in merged.orders] == [
        ("o1", True, 50.0), ("o2", False, 5.0), ("o3", True, 10.0)]
    assert merged.first_order_at == T0 + 72 and merged.last_order_at == T0 + 72


def test_aliases_beyond_the_cap_are_handed_to_the_newest_tombstone() -> None:
    """The client lists its 8 latest cookies; each one it lets go of is kept by the tombstone
    of the cookie that took its place, so an erasure (which follows aliases, tombstone by
    tombstone) still reaches it. Its history stays merged, and its events still forwarded."""
    world = World()
    cookies = [f"browser-{n}" for n in range(10)]
    for n, cookie in enumerate(cookies):
        world.send(Event(event_id=f"v{n}", type=EventType.PRODUCT_VIEW, event_time=T0 + n,
                         received_at=T0 + n, anonymous_id=cookie, products=shoes(f"p{n}")))
        world.send(Event(event_id=f"i{n}", type=EventType.IDENTIFY, event_time=T0 + n + 0.5,
                         received_at=T0 + n + 0.5, client_id=USER, anonymous_id=cookie))
    merged = world.states[USER]
    assert merged is not None
    assert merged.aliases == tuple(f"anon:{c}" for c in cookies[2:])
    keeper_8, keeper_9 = world.states["anon:browser-8"], world.states["anon:browser-9"]
    assert keeper_8 is not None and keeper_8.aliases == ("anon:browser-0",)
    assert keeper_9 is not None and keeper_9.aliases == ("anon:browser-1",)
    assert all(world.states[f"anon:{c}"].merged_into == USER  # type: ignore[union-attr]
               for c in cookies)
    world.send(Event(event_id="late", type=EventType.PRODUCT_VIEW, event_time=T0 + 20,
                     received_at=T0 + 20, anonymous_id="browser-0", products=shoes("p-late")))
    merged = world.states[USER]
    assert merged is not None and merged.viewed[-1][0] == "p-late"
    # a hand-over to a tombstone that is gone, or points elsewhere, changes nothing
    stray = Event(event_id="stray", type=EventType.IDENTITY_LINKED, event_time=T0 + 30,
                  received_at=T0 + 30, anonymous_id="browser-5",
                  properties={"client_id": "someone-else", "alias": "anon:x"})
    assert handle("anon:browser-5", world.states["anon:browser-5"], stray,
                  CART_ONLY).state is world.states["anon:browser-5"]
    assert handle("anon:gone", None, replace(stray, anonymous_id="gone"), CART_ONLY).state is None


def test_a_guests_orders_per_category_join_the_client_for_replenishment() -> None:
    """Per-category replenishment: a guest bought shoes twice, 30 days apart, then signed
    up. The client's category history holds both orders, so the reminder is due 7 days
    before the next predicted order (the guest's categories were dropped in the merge)."""
    base = only(RULES, REPLENISHMENT_REMINDER)
    rules = replace(base, replenishment_reminder=replace(base.replenishment_reminder,
                                                         per_category=True))
    world = World(rules)
    item = (Product("p1", "shoes", 30.0, 1),)
    world.send(anon(EventType.ORDER_PLACED, 0, "o1", order=Order("o1", 30.0, items=item)))
    world.send(anon(EventType.ORDER_PLACED, DAY * 30, "o2", order=Order("o2", 30.0, items=item)))
    world.send(user(EventType.ORDER_PLACED, DAY * 31, "o3",
                    order=Order("o3", 20.0, items=(Product("p2", "bags", 20.0, 1),))))
    world.send(user(EventType.IDENTIFY, DAY * 31 + 60, "i1", with_cookie=True))
    merged = world.states[USER]
    assert merged is not None
    assert [(c.category, c.count, c.first_at, c.last_at) for c in merged.categories] == [
        ("shoes", 2, T0, T0 + 30 * DAY), ("bags", 1, T0 + 31 * DAY, T0 + 31 * DAY)]
    assert next_due(merged, rules) == T0 + 60 * DAY - 7 * DAY


def test_an_order_before_the_link_closes_the_cookies_cart_and_browse_as_one_after_it() -> None:
    """The visitor carts shoes and views a bag on the phone, then buys on the laptop while
    logged in; the phone logs in later. The order bought what was in the cart before it,
    whether the link came before or after it: no reminder of a cart or a browse it closed
    (the merge kept the phone's cart, and reminded of it at once)."""
    rules = only(RULES, ABANDONED_CART, ABANDONED_BROWSE)

    def run(link_first: bool) -> tuple[ClientState, list[str]]:
        world = World(rules)
        world.send(anon(EventType.PRODUCT_VIEW, 0, "pv1", products=shoes("p9")))
        world.send(anon(EventType.CART_ADD, 60, "ca1", products=shoes("p1")))
        world.send(anon(EventType.PRODUCT_VIEW, 120, "pv2", products=shoes("p8")))
        if link_first:
            world.send(user(EventType.IDENTIFY, 600, "i1", with_cookie=True))
        world.send(user(EventType.ORDER_PLACED, 1800, "o1", order=Order("o1", 30.0)))
        if not link_first:
            world.send(user(EventType.IDENTIFY, 2400, "i1", with_cookie=True))
        world.send(anon(EventType.CART_ADD, 3000, "ca2", products=shoes("p2")))
        state = world.states[USER]
        assert state is not None
        _, fired = fire_due(USER, state, T0 + 10 * HOUR, rules)
        return state, [f"{t.type}@{t.fired_at - T0:g}" for t in fired]

    linked_first, reminders = run(True)
    ordered_first, reminders_after = run(False)
    assert [line.product_id for line in ordered_first.cart] == ["p2"]
    assert reminders_after == reminders == [f"abandoned_cart@{3000 + HOUR:g}"]
    for name in ("cart", "cart_since", "cart_updated_at", "cart_reminded", "browse_since"):
        assert getattr(ordered_first, name) == getattr(linked_first, name), name


def test_a_cancellation_the_cookie_saw_before_its_order_still_cancels_it_after_the_merge(
        ) -> None:
    """Out of order: the cookie's cancellation arrived before its order. Whether the order
    then reaches the client late (forwarded) or the client knew it already, it stays
    cancelled, as in one profile (the cancellation waiting for it was dropped)."""
    world = World()
    world.send(anon(EventType.ORDER_CANCELLED, 10, "c1", order=Order("o1", -1.0)))
    world.send(anon(EventType.ORDER_REFUNDED, 11, "r2", order=Order("o2", 5.0)))
    world.send(user(EventType.ORDER_PLACED, 4, "o2", order=Order("o2", 20.0)))
    world.send(user(EventType.IDENTIFY, 20, "i1", with_cookie=True))
    world.send(anon(EventType.ORDER_PLACED, 5, "o1", order=Order("o1", 50.0)))  # forwarded
    merged = world.states[USER]
    assert merged is not None
    assert [(o.order_id, o.cancelled, o.returned) for o in merged.orders] == [
        ("o2", False, 5.0), ("o1", True, 50.0)]
    assert merged.orders_count == 1 and merged.monetary_total == 15.0
    assert merged.early_returns == ()


def test_products_the_cookie_bought_are_left_out_of_the_clients_browse_reminder() -> None:
    """The latest order's products (the cookie's here, the later one) join the client: a
    view of them after the link is no abandoned browse, as in one profile."""
    rules = only(RULES, ABANDONED_BROWSE)
    world = World(rules)
    world.send(user(EventType.ORDER_PLACED, 0, "o0", order=Order("o0", 9.0, items=shoes("p0"))))
    world.send(anon(EventType.ORDER_PLACED, 60, "o1", order=Order("o1", 30.0,
                                                                  items=shoes("p1"))))
    world.send(user(EventType.IDENTIFY, 120, "i1", with_cookie=True))
    world.send(user(EventType.PRODUCT_VIEW, 180, "pv1", products=(*shoes("p1"), *shoes("p0"))))
    merged = world.states[USER]
    assert merged is not None and merged.bought == ("p1",)
    _, fired = fire_due(USER, merged, T0 + 10 * HOUR, rules)
    assert [t.payload["products"] for t in fired] == [["p0"]]


def test_the_cookies_views_before_the_clients_browse_reminder_are_decided_by_it() -> None:
    """The client was reminded of a browse (the rule's mark: its due time, 2:00); the
    cookie's view at 1:00, joined later, is like a view arriving after the reminder it
    belongs to: no browse reminder of its own."""
    rules = only(RULES, ABANDONED_BROWSE)
    world = World(rules)
    world.send(user(EventType.PRODUCT_VIEW, 0, "pv1", products=shoes("p1")))
    world.send(anon(EventType.PRODUCT_VIEW, HOUR, "pv2", products=shoes("p2")))
    world.send(user(EventType.VISIT, 2.5 * HOUR, "v1"))  # the client's reminder fires first
    # linked before the cookie's own browse came due (3:00)
    world.send(user(EventType.IDENTIFY, 2.75 * HOUR, "i1", with_cookie=True))
    assert [t.key for t in of(world.triggers, ABANDONED_BROWSE)] == [f"{T0:.3f}"]
    merged = world.states[USER]
    assert merged is not None and merged.browse_since is None
    _, fired = fire_due(USER, merged, T0 + 10 * HOUR, rules)
    assert fired == []


def test_a_merge_files_the_client_by_the_history_it_joined() -> None:
    """A guest's order joins a registered client: the client is `new` at once, in the
    profile's segments as in its stage (they stayed those of the client's own history
    until its next event or timer, a day later for a guest's order)."""
    world = World(RULES)
    world.send(user(EventType.REGISTERED, 0, "r1", traits={"email": "a@example.com"}))
    assert dict(world.states[USER].segments).keys() >= {"lifecycle:prospect"}  # type: ignore[union-attr]
    world.send(anon(EventType.ORDER_PLACED, 60, "o1", order=Order("o1", 30.0, items=shoes("p1"))))
    world.send(user(EventType.IDENTIFY, 120, "i1", with_cookie=True))
    merged = world.states[USER]
    assert merged is not None and merged.orders_count == 1
    names = {name for name, _ in merged.segments}
    assert "lifecycle:new" in names and "lifecycle:prospect" not in names
    assert dict(merged.segments)["lifecycle:new"] == T0 + 120  # entered at the merge


def test_a_tier_reached_through_a_merge_is_announced_whichever_orders_came_first() -> None:
    """Two guest orders and one of the client's own make three: silver, announced at the
    merge and held by the state (the tier stayed the client's own until its next order when
    its own order came first)."""
    rules = only(RULES, LOYALTY_STATUS)
    for own_first in (True, False):
        world = World(rules)
        own = [user(EventType.REGISTERED, 0, "r1", traits={"email": "a@example.com"}),
               user(EventType.ORDER_PLACED, 30, "u-o1", order=Order("u-o1", 30.0))]
        guest = [anon(EventType.ORDER_PLACED, 10, f"a-o{n}", order=Order(f"a-o{n}", 30.0))
                 for n in (1, 2)]
        for event in (own + guest if own_first else guest + own):
            world.send(event)
        world.send(user(EventType.IDENTIFY, 120, "i1", with_cookie=True))
        merged = world.states[USER]
        assert merged is not None and merged.orders_count == 3
        assert merged.loyalty_tier == "silver", own_first
        assert [t.key for t in world.triggers if t.type == LOYALTY_STATUS] == ["silver"], own_first


def dedupe_name(step: Step) -> tuple[str, str, bool]:
    """What the event log de-duplicates `step` by: the digest of an ingested id."""
    if step.hashed or not step.ingested:
        return step.client_key, step.event_id, step.ingested
    return step.client_key, link_digest(step.event_id), True


def test_an_erasure_chain_forgets_every_identity_step_it_appended() -> None:
    """The steps that joined cookies to a client (link requests, merges, the hand-overs
    of aliases beyond the profile's 8, and the requests of later clients whose link lost,
    the newest 4 of them) are de-duplicated by id for a day; the client's erasure and its
    cookies' (tombstone by tombstone) name exactly those steps, so a sign-in after the
    erasure links and merges again."""
    world = World()
    appended: set[Step] = set()

    def sign_in(client_key: str, cookie: str, t: float) -> None:
        login = Event(event_id=f"i-{client_key}-{cookie}", type=EventType.IDENTIFY,
                      event_time=T0 + t, received_at=T0 + t, client_id=client_key,
                      anonymous_id=cookie)
        queue = [(event, event.type is EventType.IDENTITY_LINKED)
                 for event in with_links([login])]
        while queue:
            event, ingested = queue.pop(0)
            if event.type in (EventType.IDENTITY_LINKED, EventType.PROFILE_MERGED):
                appended.add(Step(event.client_key, event.event_id, ingested))
            key = event.client_key
            outcome = handle(key, world.states.get(key), event, world.rules)
            world.states[key] = outcome.state
            queue.extend((e, False) for e in outcome.emitted)

    cookies = [f"browser-{n}" for n in range(11)]
    for n, cookie in enumerate(cookies):
        world.send(Event(event_id=f"v{n}", type=EventType.VISIT, event_time=T0 + n,
                         received_at=T0 + n, anonymous_id=cookie))
        sign_in(USER, cookie, n)
    # later users of a shared device: their links lose to the first, and are forgotten too
    for n in range(MAX_LOST_LINKS + 1):
        sign_in(f"u-later-{n}", cookies[0], 20 + n)
    lost = [link_digest(f"link:anon:{cookies[0]}>u-later-{n}")
            for n in range(1, MAX_LOST_LINKS + 1)]
    assert world.states[f"anon:{cookies[0]}"].links_lost == tuple(lost)  # type: ignore[union-attr]
    assert not any("u-later" in kept for kept in lost)  # the tombstone names no later client
    appended.discard(Step(f"anon:{cookies[0]}", f"link:anon:{cookies[0]}>u-later-0", True))
    client = world.states[USER]
    assert client is not None and len(client.aliases) == 8
    named = set(linked_steps(USER, client))
    for cookie in cookies:
        tombstone = world.states[f"anon:{cookie}"]
        assert tombstone is not None and tombstone.merged_into == USER
        named |= set(linked_steps(f"anon:{cookie}", tombstone))
    assert any(step.event_id.startswith("alias:") for step in appended)  # hand-overs
    assert {dedupe_name(step) for step in named} == {dedupe_name(step) for step in appended}
    assert linked_steps(USER, None) == []


WELCOME_ONLY = only(RULES, WELCOME)


def welcomes(world: World, until: float) -> list[tuple[str, str]]:
    """Every welcome decided, with the clocks of both keys run on to `until`."""
    for key in (ANON, USER):
        state = world.states.get(key)
        if state is not None:
            world.states[key], fired = fire_due(key, state, T0 + until, world.rules)
            world.triggers.extend(fired)
    return [(t.client_id, t.status) for t in of(world.triggers, WELCOME)]


def test_a_visitor_who_registered_anonymously_and_then_as_the_client_is_welcomed_once() -> None:
    """The site sends the sign-up with the cookie alone, the backend with the user id, in
    the seconds before the link's answer: one person, one welcome."""
    world = World(WELCOME_ONLY)
    world.send(anon(EventType.REGISTERED, 0, "r-anon", traits={"email": "a@example.com"}))
    assert next_due(world.states[ANON], WELCOME_ONLY) == T0 + ANONYMOUS_WELCOME_WAIT
    world.send(user(EventType.REGISTERED, 5, "r-user", with_cookie=True))
    assert welcomes(world, DAY) == [(USER, "sent")]


def test_an_anonymous_registration_then_an_identify_welcomes_the_client() -> None:
    world = World(WELCOME_ONLY)
    world.send(anon(EventType.REGISTERED, 0, "r-anon", traits={"email": "a@example.com"}))
    world.send(user(EventType.IDENTIFY, 30, "i1", with_cookie=True))
    assert welcomes(world, DAY) == [(USER, "sent")]
    [sent] = of(world.triggers, WELCOME)
    assert sent.fired_at == T0 + ANONYMOUS_WELCOME_WAIT  # a delayed trigger's due time


def test_an_anonymous_registration_never_linked_is_welcomed_after_the_wait() -> None:
    world = World(WELCOME_ONLY)
    world.send(anon(EventType.REGISTERED, 0, "r-anon", traits={"email": "a@example.com"}))
    assert welcomes(world, ANONYMOUS_WELCOME_WAIT - 1) == []
    assert welcomes(world, DAY) == [(ANON, "sent")]


def cart_after(steps: list[tuple[str, Event]], rules: TriggerRules = CART_ONLY
               ) -> tuple[ClientState, list[Trigger]]:
    """Each (key, event) handled in this order, what it emits right after it; then a day of
    timers: the client's state and every trigger."""
    states: dict[str, ClientState | None] = {}
    out: list[Trigger] = []
    queue = list(steps)
    while queue:
        key, event = queue.pop(0)
        outcome = handle(key, states.get(key), event, rules)
        states[key] = outcome.state
        out.extend(outcome.triggers)
        queue[:0] = [(emitted.client_key, emitted) for emitted in outcome.emitted]
    state = states[USER]
    assert state is not None
    state, fired = fire_due(USER, state, T0 + DAY, rules)
    return state, out + fired


@pytest.mark.parametrize("removal_first", [False, True])
def test_a_removal_waiting_for_its_add_meets_it_across_the_merge(removal_first: bool) -> None:
    """The visitor carts p1, signs in, and removes it: whether the removal reaches the
    client before the cookie's answer or after it, the cart is empty and nothing is
    reminded (a removal owed on one side takes the units its add left on the other)."""
    login = user(EventType.IDENTIFY, 600, "i1", with_cookie=True)
    removal = (USER, user(EventType.CART_REMOVE, 700, "r1", products=shoes("p1")))
    merge = (ANON, link_request(ANON, USER, login))
    steps = [(ANON, anon(EventType.CART_ADD, 120, "a1", products=shoes("p1"))),
             (USER, login), *([removal, merge] if removal_first else [merge, removal])]
    state, triggers = cart_after(steps)
    assert (state.cart, state.cart_removals, state.cart_since) == ((), (), None)
    assert triggers == []


def test_a_cookies_removal_owed_is_kept_by_the_merge_for_its_late_add() -> None:
    """The cookie's removal arrives before its add, the sign-in comes, and then the add,
    forwarded to the client: it is taken back as in order."""
    login = user(EventType.IDENTIFY, 600, "i1", with_cookie=True)
    state, triggers = cart_after([
        (ANON, anon(EventType.CART_REMOVE, 130, "r1", products=shoes("p1"))),
        (USER, user(EventType.VISIT, 5, "v1")), (USER, login),
        (ANON, link_request(ANON, USER, login)),
        (ANON, anon(EventType.CART_ADD, 120, "a1", products=shoes("p1")))])
    assert (state.cart, state.cart_removals) == ((), ())
    assert triggers == []


def test_a_cart_reminder_waiting_for_the_morning_stands_after_the_merge() -> None:
    """The cookie's cart (b at 19:00) was reminded at 20:00; the client carted a at 20:30,
    its reminder due at 21:30 waits for 09:00; the sign-in at 22:00 joins the carts. As in
    one profile, a began an episode after the sent reminder: the waiting reminder is that
    episode's and goes out in the morning, naming both products."""
    rules = only(replace(RULES, policy=replace(OPEN, quiet_hours=QuietHours())),
                 ABANDONED_CART)
    states: dict[str, ClientState | None] = {}
    out: list[Trigger] = []

    def send(key: str, event: Event) -> None:
        outcome = handle(key, states.get(key), event, rules)
        states[key] = outcome.state
        out.extend(outcome.triggers)
        for emitted in outcome.emitted:
            send(emitted.client_key, emitted)

    def tick(key: str, at: float) -> None:
        state = states[key]
        assert state is not None
        states[key], fired = fire_due(key, state, T0 + at, rules)
        out.extend(fired)

    send(ANON, anon(EventType.CART_ADD, 19 * HOUR, "b1", products=shoes("b")))
    tick(ANON, 20.5 * HOUR)
    send(USER, user(EventType.CART_ADD, 20.5 * HOUR, "a1", products=shoes("a")))
    tick(USER, 21.6 * HOUR)
    login = user(EventType.IDENTIFY, 22 * HOUR, "i1", with_cookie=True)
    send(USER, login)
    send(ANON, link_request(ANON, USER, login))
    tick(USER, 40 * HOUR)
    sent = [(t.key, [item["product_id"] for item in t.payload["items"]])
            for t in out if t.status == "sent"]
    assert sent == [(occasion_time(T0 + 19 * HOUR), ["b"]),
                    (occasion_time(T0 + 20.5 * HOUR), ["b", "a"])]


def test_a_visitor_merged_after_the_clients_new_cart_episode_does_not_revive_the_old_one(
) -> None:
    """The client carted b at 20:30; its reminder, due at 21:30, waits for 09:00; c at 21:40,
    after it, began a new episode. A visitor (a page view, no cart) signs in at 21:50. The
    merge keeps the episode begun at 21:40: its reminder is deferred under its own key, and
    the 20:30 one, whose episode ended, is cancelled in the morning, as without the merge;
    the 20:30 occasion is not deferred a second time under the same id."""
    rules = only(replace(RULES, policy=replace(OPEN, quiet_hours=QuietHours())),
                 ABANDONED_CART)
    world = World(rules)
    world.send(anon(EventType.PAGE_VIEW, 21 * HOUR, "pv1"))
    world.send(user(EventType.CART_ADD, 20.5 * HOUR, "b1", products=shoes("b")))
    state = world.states[USER]
    assert state is not None
    world.states[USER], fired = fire_due(USER, state, T0 + 21.6 * HOUR, rules)
    world.triggers.extend(fired)
    world.send(user(EventType.CART_ADD, 21 * HOUR + 40 * 60, "c1", products=shoes("c")))
    world.send(user(EventType.IDENTIFY, 21 * HOUR + 50 * 60, "i1", with_cookie=True))
    merged = world.states[USER]
    assert merged is not None and merged.cart_since == T0 + 21 * HOUR + 40 * 60
    _, fired = fire_due(USER, merged, T0 + 40 * HOUR, rules)
    world.triggers.extend(fired)
    carts = of(world.triggers, ABANDONED_CART)
    fields = [t.ledger_field for t in carts]
    assert len(fields) == len(set(fields))
    assert [(t.status, t.key) for t in carts] == [
        ("deferred", occasion_time(T0 + 20.5 * HOUR)),
        ("deferred", occasion_time(T0 + 21 * HOUR + 40 * 60)),
        ("suppressed", occasion_time(T0 + 20.5 * HOUR)),
        ("sent", occasion_time(T0 + 21 * HOUR + 40 * 60))]
