"""Demo traffic: simulated shoppers sent through the public Segment ingest API.

The simulator goes through the same door as a real website (`POST /v1/batch` with the write
key), so a demo exercises ingest, the dataflow and the triggers end to end and shows nothing
that real traffic could not produce.

`ShopperSimulator` is a pure, seeded model: it never reads the clock or the global random
state, so a seed and a sequence of `now` values always give the same messages, and tests run
without a server. `run_demo` paces it in real time and posts the batches.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import httpx

from crmflow import __version__

__all__ = [
    "TRACK_EVENT_NAMES",
    "Behaviour",
    "CatalogueProduct",
    "ShopperSimulator",
    "build_catalogue",
    "run_demo",
]

log = logging.getLogger(__name__)

Message = dict[str, Any]

TRACK_EVENT_NAMES: tuple[str, ...] = (
    "Signed Up",
    "Session Started",
    "Session Ended",
    "Product Viewed",
    "Product Added",
    "Product Removed",
    "Product Added to Wishlist",
    "Checkout Started",
    "Order Completed",
    "Order Cancelled",
    "Order Refunded",
    "Support Requested",
    "NPS Answered",
    "Message Opened",
    "Message Clicked",
)
"""Every track event name the simulator sends; all are mapped by `features.segment`."""

MAX_BATCH = 100  # messages per request, as Segment's libraries send at most
FLUSH_INTERVAL = 0.5  # seconds: a slow trickle still reaches the server quickly
REQUEST_TIMEOUT = 10.0
FINAL_FLUSH_TIMEOUT = 2.0  # on stop, one short attempt: stopping must stay prompt
MAX_ATTEMPTS = 8
MAX_BACKOFF = 10.0
MAX_RETRY_AFTER = 60.0

RETURN_SHARE = 0.55  # of visits, by people who came before

SHOP_URL = "https://shop.example.com"
CURRENCY = "USD"

# --- catalogue -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CatalogueProduct:
    """One product of the demo shop; `replenishable` goods are bought again and again."""

    product_id: str
    name: str
    category: str
    price: float
    replenishable: bool


# (category, id prefix, replenishable, items (name, base price), variants (label, price factor))
_CATEGORIES: tuple[tuple[str, str, bool, tuple[tuple[str, float], ...],
                         tuple[tuple[str, float], ...]], ...] = (
    ("pet_food", "pf", True,
     (("Dry dog food", 18.0), ("Dry cat food", 15.0), ("Wet cat food 12-pack", 14.5),
      ("Puppy food", 21.0), ("Grain-free dog food", 32.0), ("Cat treats", 5.0)),
     (("small bag", 1.0), ("medium bag", 2.4), ("large bag", 3.6))),
    ("diapers", "dp", True,
     (("Newborn diapers", 11.0), ("Baby diapers size 3", 13.0), ("Baby diapers size 5", 15.0),
      ("Pull-up pants", 16.0), ("Overnight diapers", 17.0), ("Baby wipes", 4.0)),
     (("pack", 1.0), ("jumbo pack", 1.8), ("monthly box", 3.3))),
    ("kids_clothes", "kc", False,
     (("Cotton bodysuit", 9.0), ("Kids T-shirt", 12.0), ("Kids jeans", 25.0),
      ("Rain jacket", 39.0), ("Pyjama set", 19.0), ("Knit sweater", 29.0)),
     (("size 2T", 1.0), ("size 4T", 1.05), ("size 6", 1.1))),
    ("toys", "ty", False,
     (("Building blocks set", 29.0), ("Plush bear", 15.0), ("Wooden train", 35.0),
      ("Puzzle 100 pieces", 12.0), ("Remote control car", 45.0), ("Art and craft kit", 22.0)),
     (("classic", 1.0), ("deluxe", 1.5), ("mini", 0.6))),
    ("books", "bk", False,
     (("Picture book", 9.0), ("Bestselling novel", 16.0), ("Cookbook", 24.0),
      ("Travel guide", 19.0), ("Business handbook", 28.0), ("Sci-fi paperback", 11.0)),
     (("paperback", 1.0), ("hardcover", 1.7), ("gift edition", 2.2))),
    ("coffee_tea", "cf", True,
     (("Espresso beans", 13.0), ("Filter coffee ground", 10.0), ("Decaf beans", 14.0),
      ("Green tea", 7.0), ("Earl Grey tea", 6.5), ("Coffee capsules", 9.0)),
     (("250 g", 1.0), ("500 g", 1.8), ("1 kg", 3.2))),
    ("cosmetics", "cs", True,
     (("Moisturising cream", 18.0), ("Lipstick", 14.0), ("Shampoo", 8.0),
      ("Sunscreen SPF 50", 16.0), ("Eau de parfum", 55.0), ("Face serum", 29.0)),
     (("travel size", 0.5), ("regular", 1.0), ("value size", 1.6))),
    ("electronics_accessories", "ea", False,
     (("USB-C charger", 19.0), ("Wireless earbuds", 49.0), ("Phone case", 15.0),
      ("Power bank", 29.0), ("HDMI cable", 9.0), ("Bluetooth speaker", 39.0)),
     (("basic", 1.0), ("pro", 1.6), ("max", 2.3))),
    ("home_kitchen", "hk", False,
     (("Non-stick frying pan", 34.0), ("Chef's knife", 45.0), ("Ceramic mug set", 22.0),
      ("Glass food containers", 27.0), ("Bath towel set", 31.0), ("Scented candle", 12.0)),
     (("standard", 1.0), ("premium", 1.7), ("compact", 0.8))),
    ("sports_outdoors", "sp", False,
     (("Yoga mat", 25.0), ("Running socks", 12.0), ("Water bottle", 15.0),
      ("Resistance bands", 18.0), ("Hiking backpack", 69.0), ("Tennis balls", 8.0)),
     (("standard", 1.0), ("pro", 1.6), ("kids", 0.7))),
    ("household", "hh", True,
     (("Laundry detergent", 12.0), ("Dishwasher tablets", 11.0), ("Paper towels", 9.0),
      ("Toilet paper", 10.0), ("All-purpose cleaner", 5.0), ("Trash bags", 7.0)),
     (("regular", 1.0), ("family pack", 1.8), ("bulk box", 3.0))),
    ("vitamins", "vt", True,
     (("Multivitamin", 14.0), ("Vitamin D3", 9.0), ("Omega-3 fish oil", 17.0),
      ("Kids gummy vitamins", 12.0), ("Magnesium", 11.0), ("Probiotic", 24.0)),
     (("30 days", 1.0), ("60 days", 1.8), ("90 days", 2.5))),
)


def _shop_price(value: float) -> float:
    """Round to a shelf price ending in .99 (or .49 under 10), as shops print them."""
    if value < 10:
        return max(0.99, round(value * 2) / 2 - 0.01)
    return round(value) - 0.01


def build_catalogue() -> tuple[CatalogueProduct, ...]:
    """The demo shop's 216 products over 12 categories; fixed, so ids are stable across runs."""
    products: list[CatalogueProduct] = []
    for category, prefix, replenishable, items, variants in _CATEGORIES:
        number = 0
        for name, base in items:
            for label, factor in variants:
                number += 1
                products.append(CatalogueProduct(
                    product_id=f"{prefix}-{number:03d}",
                    name=f"{name}, {label}",
                    category=category,
                    price=_shop_price(base * factor),
                    replenishable=replenishable,
                ))
    return tuple(products)


# --- population ----------------------------------------------------------------------------------


class Behaviour(StrEnum):
    """How a shopper behaves; the mix gives every trigger something to react to."""

    BROWSER = "browser"  # views, maybe wishlists, never buys: abandoned browse
    CART_ABANDONER = "cart_abandoner"  # fills the cart and leaves: abandoned cart
    ONE_TIME_BUYER = "one_time_buyer"  # one order, then only the odd visit
    REPEAT_BUYER = "repeat_buyer"  # buys again and again, mostly consumables
    LAPSING = "lapsing"  # buys for a few visits, then stops coming: churn
    NEWCOMER = "newcomer"  # anonymous for a few visits, then registers


_BEHAVIOUR_MIX: tuple[tuple[Behaviour, float], ...] = (
    (Behaviour.BROWSER, 0.22),
    (Behaviour.CART_ABANDONER, 0.20),
    (Behaviour.ONE_TIME_BUYER, 0.15),
    (Behaviour.REPEAT_BUYER, 0.16),
    (Behaviour.LAPSING, 0.12),
    (Behaviour.NEWCOMER, 0.15),
)

# Chance per visit that the visitor means to fill a cart / to buy.
_CART_INTENT: dict[Behaviour, float] = {
    Behaviour.BROWSER: 0.0, Behaviour.CART_ABANDONER: 0.75, Behaviour.ONE_TIME_BUYER: 0.35,
    Behaviour.REPEAT_BUYER: 0.25, Behaviour.LAPSING: 0.3, Behaviour.NEWCOMER: 0.35,
}
_BUY_INTENT: dict[Behaviour, float] = {
    Behaviour.BROWSER: 0.0, Behaviour.CART_ABANDONER: 0.08, Behaviour.ONE_TIME_BUYER: 0.55,
    Behaviour.REPEAT_BUYER: 0.6, Behaviour.LAPSING: 0.5, Behaviour.NEWCOMER: 0.35,
}
_VISIT_WEIGHT: dict[Behaviour, float] = {
    Behaviour.BROWSER: 1.0, Behaviour.CART_ABANDONER: 1.0, Behaviour.ONE_TIME_BUYER: 1.0,
    Behaviour.REPEAT_BUYER: 1.6, Behaviour.LAPSING: 1.4, Behaviour.NEWCOMER: 1.2,
}

_FIRST_NAMES = {
    "female": ("Anna", "Maria", "Emma", "Olivia", "Sofia", "Mia", "Laura", "Chloe", "Nina",
               "Grace", "Julia", "Eva", "Lucy", "Hannah", "Zoe", "Alice"),
    "male": ("James", "Liam", "Noah", "Lucas", "Max", "Leo", "Daniel", "Adam", "Oscar",
             "Ethan", "Victor", "Hugo", "Samuel", "Jacob", "Felix", "Tom"),
}
_LAST_NAMES = ("Smith", "Brown", "Garcia", "Miller", "Davis", "Martin", "Lopez", "Wilson",
               "Taylor", "Moore", "Clark", "Lewis", "Walker", "Young", "King", "Scott")
_CITIES = ("Austin", "Boston", "Chicago", "Denver", "Miami", "Portland", "Seattle",
           "San Diego", "Atlanta", "Phoenix", "Nashville", "Minneapolis")
_POINTS = ("online", "store-01", "store-02", "store-03", "store-04", "store-05")
_AREA_CODES = ("206", "212", "305", "312", "415", "512", "617", "720")
_SUPPORT_TOPICS = ("delivery", "return", "payment", "product_question", "account")
# Mostly satisfied buyers, a tail of detractors: every NPS branch gets traffic.
_NPS_WEIGHTS = (2, 1, 1, 1, 2, 3, 4, 6, 10, 12, 10)
_LANDING = (("Home", "/"), ("Sale", "/sale"), ("New arrivals", "/new"), ("Search", "/search"))


@dataclass(slots=True)
class _Shopper:
    index: int
    behaviour: Behaviour
    anonymous_id: str  # the site's cookie: stable for the person
    user_id: str  # the id the site gives at sign-up (used only once registered)
    sign_up_visit: int | None  # 0: registered before the demo; k: signs up on visit k; None: never
    traits: dict[str, Any]
    favourites: tuple[str, ...]
    channels: tuple[str, ...]  # where marketing reaches them (opens/clicks come from these)
    lapse_after: int  # LAPSING: visits before they stop coming back
    registered: bool = False
    identified: bool = False  # an identify has been sent during this run
    visits: int = 0
    orders: int = 0
    cart: dict[str, int] = field(default_factory=dict)
    follow_ups: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def visit_weight(self) -> float:
        """How likely this person is to arrive next: clients come back, lapsers fade away."""
        weight = _VISIT_WEIGHT[self.behaviour]
        if self.behaviour is Behaviour.LAPSING and self.visits >= self.lapse_after:
            return weight * 0.02
        if self.behaviour is Behaviour.ONE_TIME_BUYER and self.orders:
            return weight * 0.3
        return weight


def _iso(seconds: float) -> str:
    """Epoch seconds -> ISO-8601 UTC with milliseconds and 'Z', as analytics.js stamps."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


# --- the simulator -------------------------------------------------------------------------------


class ShopperSimulator:
    """Seeded shoppers visiting a web shop; `next_messages(now)` plays the next step.

    Several sessions are open at once (`concurrency`) and advance in turns, so a session's
    steps are spread over time like a person reading pages, and an abandoned cart is followed
    by silence the server's timers can notice.
    """

    def __init__(self, seed: int, shoppers: int, *, concurrency: int | None = None) -> None:
        if shoppers < 1:
            raise ValueError("shoppers must be at least 1")
        self._seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not security
        self.catalogue = build_catalogue()
        self._products = {p.product_id: p for p in self.catalogue}
        self._by_category: dict[str, list[CatalogueProduct]] = {}
        for product in self.catalogue:
            self._by_category.setdefault(product.category, []).append(product)
        self._categories = tuple(self._by_category)
        if concurrency is None:
            concurrency = min(20, max(1, shoppers // 20))
        self._concurrency = max(1, min(concurrency, shoppers))
        self._shoppers = [self._make_shopper(i) for i in range(shoppers)]
        self._sessions: dict[int, Iterator[list[Message]]] = {}
        self._now = 0.0
        self._counter = 0

    # -- population --

    def _make_shopper(self, index: int) -> _Shopper:
        rng = self._rng
        behaviour = rng.choices([b for b, _ in _BEHAVIOUR_MIX],
                                weights=[w for _, w in _BEHAVIOUR_MIX])[0]
        gender = rng.choice(("female", "male"))
        first = rng.choice(_FIRST_NAMES[gender])
        last = rng.choice(_LAST_NAMES)
        tag = f"{rng.getrandbits(48):012x}"
        traits: dict[str, Any] = {
            "first_name": first,
            "last_name": last,
            "gender": gender,
            "city": rng.choice(_CITIES),
            "birthday": f"{rng.randint(1958, 2006)}-{rng.randint(1, 12):02d}-"
                        f"{rng.randint(1, 28):02d}",
            "point_id": rng.choice(_POINTS),
        }
        has_email = rng.random() < 0.9
        has_phone = not has_email or rng.random() < 0.6
        if has_email:
            traits["email"] = f"{first}.{last}.{tag[:6]}@example.com".lower()
        if has_phone:  # 555-01xx numbers are reserved for fiction
            traits["phone"] = f"+1{rng.choice(_AREA_CODES)}55501{rng.randint(0, 99):02d}"
        consents = {"email": has_email and rng.random() < 0.85,
                    "sms": has_phone and rng.random() < 0.4}
        traits["consents"] = consents
        channels = tuple(ch for ch, ok in consents.items() if ok)
        if rng.random() < 0.3:
            channels += ("push",)  # has the app
        favourites = tuple(rng.sample(self._categories, rng.randint(1, 3)))
        if behaviour is Behaviour.REPEAT_BUYER:  # repeat buying is mostly consumables
            consumable = [c for c in self._categories if self._by_category[c][0].replenishable]
            favourites = (rng.choice(consumable), *favourites[:1])
        sign_up_visit: int | None
        draw = rng.random()
        if behaviour is Behaviour.NEWCOMER:
            sign_up_visit = rng.randint(2, 4)
        elif behaviour is Behaviour.BROWSER:
            sign_up_visit = None if draw < 0.4 else (0 if draw < 0.7 else 1)
        elif behaviour is Behaviour.CART_ABANDONER:
            sign_up_visit = None if draw < 0.25 else (0 if draw < 0.65 else 1)
        elif behaviour is Behaviour.REPEAT_BUYER:
            sign_up_visit = 0 if draw < 0.75 else 1
        else:
            sign_up_visit = 0 if draw < 0.55 else 1
        return _Shopper(
            index=index,
            behaviour=behaviour,
            anonymous_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            user_id=f"u-{tag}",
            sign_up_visit=sign_up_visit,
            traits=traits,
            favourites=favourites,
            channels=channels,
            lapse_after=rng.randint(2, 5),
            registered=sign_up_visit == 0,
        )

    # -- public --

    def next_messages(self, now: float) -> list[Message]:
        """The messages of the next step (one shopper's next action), all stamped `now`."""
        self._now = now
        while True:
            messages = self._step()
            if messages:
                return messages

    def cart(self, anonymous_id: str) -> dict[str, int]:
        """A shopper's cart (product id -> quantity), as the model holds it; for tests."""
        for shopper in self._shoppers:
            if shopper.anonymous_id == anonymous_id:
                return dict(shopper.cart)
        raise KeyError(anonymous_id)

    # -- scheduling --

    def _step(self) -> list[Message]:
        rng = self._rng
        if rng.random() < 0.03:
            engagement = self._engagement()
            if engagement:
                return engagement
        if len(self._sessions) < self._concurrency and (not self._sessions or rng.random() < 0.5):
            shopper = self._pick_idle()
            if shopper is not None:
                return self._start(shopper)
        if not self._sessions:
            return []
        index = rng.choice(list(self._sessions))
        try:
            return next(self._sessions[index])
        except StopIteration:
            del self._sessions[index]
            return []

    def _pick_idle(self) -> _Shopper | None:
        """Half the visits are returns of people seen before, whatever the population size,
        so repeat orders (and lapses) show up within minutes, not after everyone came once."""
        rng = self._rng
        idle = [s for s in self._shoppers if s.index not in self._sessions]
        returning = [s for s in idle if s.visits]
        fresh = [s for s in idle if not s.visits]
        pool = returning if returning and (not fresh or rng.random() < RETURN_SHARE) else fresh
        if not pool:
            return None
        return rng.choices(pool, weights=[s.visit_weight() for s in pool])[0]

    def _start(self, shopper: _Shopper) -> list[Message]:
        session = self._session(shopper)
        self._sessions[shopper.index] = session
        return next(session)

    def _engagement(self) -> list[Message]:
        """A marketing message opened (and maybe clicked, bringing the person back)."""
        rng = self._rng
        reachable = [s for s in self._shoppers
                     if s.identified and s.channels and s.index not in self._sessions]
        if not reachable:
            return []
        shopper = rng.choice(reachable)
        channel = rng.choice(shopper.channels)
        messages = [self._track(shopper, "Message Opened", {"channel": channel})]
        if rng.random() < 0.4:
            messages.append(self._track(shopper, "Message Clicked", {"channel": channel}))
            if len(self._sessions) < self._concurrency:
                messages.extend(self._start(shopper))
        return messages

    # -- a visit, step by step --

    def _session(self, s: _Shopper) -> Iterator[list[Message]]:
        """One visit as a generator: each `yield` is a step, built when the step is played."""
        rng = self._rng
        s.visits += 1
        session_id = f"{rng.getrandbits(64):016x}"
        intent = self._intent(s)
        first: list[Message] = []
        if s.registered and (not s.identified or rng.random() < 0.15):
            first.append(self._identify(s))  # logged in: the site identifies on load
        first.append(self._track(s, "Session Started", {"session_id": session_id}))
        title, path = rng.choice(_LANDING)
        first.append(self._page(s, title, path))
        yield first

        if not s.registered and s.sign_up_visit is not None and s.visits >= s.sign_up_visit:
            yield self._sign_up(s)

        while s.follow_ups:  # what happened since the last visit: a survey, a complaint
            name, properties = s.follow_ups.pop(0)
            yield [self._track(s, name, properties)]

        views = rng.randint(2, 8) if intent == "browse" else rng.randint(1, 5)
        added = 0
        for _ in range(views):
            product = self._pick_product(s)
            if rng.random() < 0.2:
                yield [self._page(s, product.category.replace("_", " ").title(),
                                  f"/c/{product.category}")]
            yield [self._page(s, product.name, f"/p/{product.product_id}"),
                   self._track(s, "Product Viewed", self._product_props(product))]
            if rng.random() < 0.1:
                yield [self._track(s, "Product Added to Wishlist", self._product_props(product))]
            if intent != "browse" and rng.random() < 0.45:
                yield [self._add_to_cart(s, product)]
                added += 1
            if s.cart and rng.random() < 0.08:
                yield [self._remove_from_cart(s)]
        if intent != "browse" and not added:
            yield [self._add_to_cart(s, self._pick_product(s))]

        if intent == "buy" and s.cart:
            if not s.registered:  # guest checkout is not offered: register to pay
                yield self._sign_up(s)
            yield [self._page(s, "Cart", "/cart"), self._checkout_started(s)]
            if rng.random() < 0.88:  # the rest leave at the payment page
                yield self._order_completed(s)
        yield [self._track(s, "Session Ended", {"session_id": session_id})]

    def _intent(self, s: _Shopper) -> str:
        """browse, cart or buy for this visit; anonymous people who never register do not buy."""
        rng = self._rng
        buy = _BUY_INTENT[s.behaviour]
        if s.behaviour is Behaviour.ONE_TIME_BUYER and s.orders:
            buy = 0.0
        if s.behaviour is Behaviour.NEWCOMER and not s.registered:
            buy *= 0.5
        if s.sign_up_visit is None:
            buy = 0.0
        draw = rng.random()
        if draw < buy:
            return "buy"
        if draw < buy + _CART_INTENT[s.behaviour]:
            return "cart"
        return "browse"

    def _pick_product(self, s: _Shopper) -> CatalogueProduct:
        rng = self._rng
        category = rng.choice(s.favourites) if rng.random() < 0.75 else rng.choice(self._categories)
        return rng.choice(self._by_category[category])

    # -- actions that change state --

    def _sign_up(self, s: _Shopper) -> list[Message]:
        """identify (traits) then Signed Up: the anonymous cookie history joins the client."""
        s.registered = True
        s.sign_up_visit = s.visits
        identify = self._identify(s)
        signed_up = self._track(s, "Signed Up", {"method": "email"})
        signed_up["context"]["traits"] = dict(s.traits)
        return [identify, signed_up]

    def _add_to_cart(self, s: _Shopper, product: CatalogueProduct) -> Message:
        quantity = self._rng.randint(1, 3) if product.replenishable else 1
        s.cart[product.product_id] = s.cart.get(product.product_id, 0) + quantity
        return self._track(s, "Product Added", self._product_props(product, quantity))

    def _remove_from_cart(self, s: _Shopper) -> Message:
        product_id = self._rng.choice(sorted(s.cart))
        quantity = s.cart.pop(product_id)
        return self._track(s, "Product Removed",
                           self._product_props(self._products[product_id], quantity))

    def _cart_lines(self, s: _Shopper) -> tuple[list[dict[str, Any]], float]:
        lines = [self._product_props(self._products[pid], qty) for pid, qty in s.cart.items()]
        total = round(sum(line["price"] * line["quantity"] for line in lines), 2)
        return lines, total

    def _checkout_started(self, s: _Shopper) -> Message:
        lines, total = self._cart_lines(s)
        return self._track(s, "Checkout Started",
                           {"products": lines, "value": total, "currency": CURRENCY})

    def _order_completed(self, s: _Shopper) -> list[Message]:
        """The order empties the cart and may bring follow-ups to the next visit."""
        rng = self._rng
        lines, total = self._cart_lines(s)
        order_id = "o-" + self._digest("order")[:16]
        s.cart.clear()
        s.orders += 1
        draw = rng.random()
        if draw < 0.04:
            s.follow_ups.append(("Order Cancelled", {"order_id": order_id, "total": total}))
        elif draw < 0.08:
            s.follow_ups.append(("Order Refunded", {"order_id": order_id, "total": total}))
        if rng.random() < 0.08:
            s.follow_ups.append(("Support Requested", {"topic": rng.choice(_SUPPORT_TOPICS)}))
        if rng.random() < 0.35:  # "a few days later" approximated as the next visit
            score = rng.choices(range(11), weights=_NPS_WEIGHTS)[0]
            s.follow_ups.append(("NPS Answered", {"score": score}))
        order = self._track(s, "Order Completed", {"order_id": order_id, "total": total,
                                                   "currency": CURRENCY, "products": lines})
        return [order, self._page(s, "Order confirmation", f"/orders/{order_id}")]

    # -- message building --

    def _digest(self, kind: str) -> str:
        """A unique id from seed, counter and `now`: deterministic, yet a rerun with the same
        seed at another time gets new ids, so the server's dedupe does not drop it."""
        self._counter += 1
        text = f"{kind}:{self._seed}:{self._counter}:{self._now!r}"
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def _base(self, s: _Shopper, kind: str) -> Message:
        message: Message = {
            "type": kind,
            "messageId": str(uuid.UUID(hex=self._digest("message"), version=4)),
            "timestamp": _iso(self._now),
            "anonymousId": s.anonymous_id,
            "context": {"library": {"name": "crmflow-demo", "version": __version__}},
        }
        if s.registered:
            message["userId"] = s.user_id
        return message

    def _identify(self, s: _Shopper) -> Message:
        s.identified = True
        message = self._base(s, "identify")
        message["traits"] = {k: (dict(v) if isinstance(v, dict) else v)
                             for k, v in s.traits.items()}
        return message

    def _track(self, s: _Shopper, event: str, properties: dict[str, Any]) -> Message:
        message = self._base(s, "track")
        message["event"] = event
        message["properties"] = properties
        return message

    def _page(self, s: _Shopper, name: str, path: str) -> Message:
        message = self._base(s, "page")
        message["name"] = name
        message["properties"] = {"url": SHOP_URL + path, "path": path, "title": name}
        return message

    @staticmethod
    def _product_props(product: CatalogueProduct, quantity: int | None = None) -> dict[str, Any]:
        props: dict[str, Any] = {"product_id": product.product_id, "name": product.name,
                                 "category": product.category, "price": product.price}
        if quantity is not None:
            props["quantity"] = quantity
        return props


# --- sending -------------------------------------------------------------------------------------


def _retry_after(response: httpx.Response, now: float) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if it said."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _server_message(response: httpx.Response) -> str:
    """What the server said was wrong: crmflow's `detail` and the first rejected items."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if not isinstance(body, dict):
        return str(body)[:500]
    parts: list[str] = []
    if body.get("detail"):
        parts.append(str(body["detail"]))
    rejected = body.get("rejected")
    if isinstance(rejected, list) and rejected:
        parts.extend(str(item.get("error", item)) if isinstance(item, dict) else str(item)
                     for item in rejected[:3])
        if len(rejected) > 3:
            parts.append(f"... and {len(rejected) - 3} more")
    return "; ".join(parts) or response.text[:500]


class _Sender:
    """Posts batches like a tracking library: retry what may succeed later, log the rest."""

    def __init__(self, client: httpx.Client, url: str, stop: threading.Event,
                 clock: Callable[[], float], seed: int) -> None:
        self._client = client
        self._url = url
        self._stop = stop
        self._clock = clock
        self._jitter = random.Random(seed)  # noqa: S311 - backoff jitter, not security

    def send(self, batch: list[Message], *, retry: bool = True) -> int:
        """Post one batch; the number of messages the server accepted (0 if dropped)."""
        attempt = 0
        while True:
            attempt += 1
            delay = self._backoff(attempt)
            body = {"batch": batch, "sentAt": _iso(self._clock())}
            try:
                if retry:
                    response = self._client.post(self._url, json=body)
                else:
                    response = self._client.post(self._url, json=body,
                                                 timeout=FINAL_FLUSH_TIMEOUT)
            except httpx.TransportError as exc:
                log.warning("demo: posting %d messages to %s failed (attempt %d): %s",
                            len(batch), self._url, attempt, exc)
            else:
                status = response.status_code
                if status < 300:
                    return self._accepted(response, len(batch))
                if status in (401, 403):  # no retry or later batch can fare better
                    raise DemoRefused(f"crmflow refused the write key: HTTP {status}: "
                                      f"{_server_message(response)}")
                if status not in (408, 429) and status < 500:
                    log.error("demo: crmflow refused %d messages: HTTP %d: %s",
                              len(batch), status, _server_message(response))
                    return 0
                log.warning("demo: crmflow answered HTTP %d to %d messages (attempt %d): %s",
                            status, len(batch), attempt, _server_message(response))
                asked = _retry_after(response, self._clock())
                if asked is not None:
                    delay = asked
            if not retry or attempt >= MAX_ATTEMPTS:
                log.error("demo: dropping %d messages after %d attempts", len(batch), attempt)
                return 0
            if self._stop.wait(delay):
                log.info("demo: stopping; %d unsent messages dropped", len(batch))
                return 0

    def _backoff(self, attempt: int) -> float:
        """Exponential with jitter, so many senders do not retry in step."""
        base = min(MAX_BACKOFF, 0.5 * 2.0 ** (attempt - 1))
        return base * (0.5 + self._jitter.random() / 2)

    @staticmethod
    def _accepted(response: httpx.Response, sent: int) -> int:
        try:
            body = response.json()
        except ValueError:
            return sent  # plain Segment semantics: 200 means all taken
        if not isinstance(body, dict):
            return sent
        rejected = body.get("rejected")
        if isinstance(rejected, list) and rejected:
            log.warning("demo: crmflow rejected %d of %d messages: %s",
                        len(rejected), sent, _server_message(response))
        accepted = body.get("accepted")
        if isinstance(accepted, int) and not isinstance(accepted, bool):
            return accepted
        return sent - len(rejected) if isinstance(rejected, list) else sent


class DemoRefused(RuntimeError):
    """The server refused the write key: the demo stops (it retried for ever)."""


def run_demo(base_url: str, write_key: str, *, events_per_second: float, shoppers: int,
             seed: int, stop: threading.Event,
             on_batch: Callable[[int, int], None] | None = None,
             clock: Callable[[], float] = time.time) -> None:
    """Play simulated shoppers into crmflow at about `events_per_second` until `stop` is set.

    Messages go to `POST {base_url}/v1/batch` with the write key as the Basic user name, at
    most 100 per request, flushed at 100 or every 0.5 s. `on_batch(sent, accepted)` is called
    after each batch's request (after its retries). Nothing is printed; problems are logged.
    """
    if events_per_second <= 0:
        raise ValueError("events_per_second must be positive")
    # About two steps a second per open session: pages seconds apart, as a person reads.
    concurrency = max(1, min(shoppers, 50, round(events_per_second / 2)))
    simulator = ShopperSimulator(seed, shoppers, concurrency=concurrency)
    url = base_url.rstrip("/") + "/v1/batch"
    max_owed = max(float(MAX_BATCH), events_per_second)  # after a stall, do not flood

    def flush(buffer: list[Message], *, retry: bool = True, whole_only: bool = False) -> None:
        """Send the buffer in batches of at most 100; `whole_only` keeps a partial tail."""
        while buffer and (len(buffer) >= MAX_BATCH or not whole_only):
            batch = buffer[:MAX_BATCH]
            del buffer[:MAX_BATCH]
            accepted = sender.send(batch, retry=retry)
            if on_batch is not None:
                on_batch(len(batch), accepted)
            if stop.is_set() and retry:
                return

    with httpx.Client(timeout=REQUEST_TIMEOUT, auth=(write_key, ""),
                      headers={"User-Agent": f"crmflow-demo/{__version__}"}) as client:
        sender = _Sender(client, url, stop, clock, seed)
        buffer: list[Message] = []
        last_tick = last_flush = clock()
        owed = 0.0
        log.info("demo: %d shoppers, about %g events/s, to %s", shoppers, events_per_second, url)
        while not stop.is_set():
            now = clock()
            owed = min(max_owed, owed + max(0.0, now - last_tick) * events_per_second)
            last_tick = now
            while owed >= 1 and len(buffer) < MAX_BATCH:
                messages = simulator.next_messages(now)
                buffer.extend(messages)
                owed -= len(messages)
            timed_out = bool(buffer) and now - last_flush >= FLUSH_INTERVAL
            if len(buffer) >= MAX_BATCH or timed_out:
                flush(buffer, whole_only=not timed_out)
                last_flush = clock()
                continue
            until_event = (1 - owed) / events_per_second if owed < 1 else 0.0
            until_flush = FLUSH_INTERVAL - (now - last_flush) if buffer else FLUSH_INTERVAL
            stop.wait(min(max(0.005, min(until_event, until_flush)), FLUSH_INTERVAL))
        if buffer:  # what a page would send on unload: one quick try, no retries
            flush(buffer, retry=False)
    log.info("demo: stopped")
