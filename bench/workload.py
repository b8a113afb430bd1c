"""A realistic synthetic event mix, fast to generate, identical for every contender.

Per event: 45% product views, 20% visits, 15% cart adds, 5% cart removes, 5% orders,
5% page views, 3% registrations, 2% checkout starts, over `clients` distinct clients.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from dataflows.heap import frozen_on_arrival

MIX = (("product_view", 45), ("visit", 20), ("cart_add", 15), ("cart_remove", 5),
       ("order_placed", 5), ("page_view", 5), ("registered", 3), ("checkout_started", 2))


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as a producer appends it: client key, event JSON."""

    client_key: str
    body: bytes


def events(count: int, clients: int, *, start: float, span: float, seed: int = 1,
           received_at: float | None = None, first_id: int = 0, cover: bool = True
           ) -> Iterator[Entry]:
    """`count` events over `clients` clients, times spread evenly over `span` seconds.

    With `cover`, every client gets at least one event when count >= clients (the first
    `clients` events visit each client once), so memory per client is measured over all of
    them; without, every event goes to a random client (more events for a base already
    built). Event ids run from `e<first_id>`, so a second batch does not repeat the first's.
    Without `received_at`, events carry none (a history file's rows).
    """
    rng = random.Random(seed)
    kinds = [kind for kind, weight in MIX for _ in range(weight)]
    step = span / max(count, 1)
    for n in range(count):
        covering = cover and n < clients
        client = f"c{n}" if covering else f"c{rng.randrange(clients)}"
        kind = "visit" if covering else rng.choice(kinds)
        t = start + n * step
        event: dict[str, object] = {"event_id": f"e{first_id + n}", "type": kind,
                                    "client_id": client, "event_time": round(t, 3)}
        if received_at is not None:
            event["received_at"] = round(received_at, 3)
        if kind in ("product_view", "cart_add", "cart_remove"):
            event["products"] = [{"product_id": f"p{rng.randrange(5000)}",
                                  "price": rng.randrange(1, 200), "quantity": 1}]
        elif kind == "order_placed":
            event["order"] = {"order_id": f"o{first_id + n}", "total": rng.randrange(5, 500)}
        elif kind == "registered":
            event["traits"] = {"email": f"{client}@example.com"}
        yield Entry(client, orjson.dumps(event))


def entry_list(entries: Iterable[Entry]) -> list[Entry]:
    """The entries in a list, made with the cyclic collector paused and then frozen: its
    full passes walked every entry made so far (2M for the 1M base), 20-25% of the time."""
    with frozen_on_arrival():
        return list(entries)
