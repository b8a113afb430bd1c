"""Seeded client histories for dataflow tests: every trigger kind, duplicates, disorder."""

from __future__ import annotations

import random
from typing import Any

DAY = 86400.0


def client_history(rng: random.Random, client: str, start: float) -> list[dict[str, Any]]:
    """One client's events over a few past days, in the canonical native format."""
    t = start + rng.uniform(0, DAY)
    events: list[dict[str, Any]] = []
    n = 0

    def add(kind: str, **fields: Any) -> None:
        nonlocal t, n
        n += 1
        t += rng.uniform(60, 3 * 3600)
        events.append({"event_id": f"{client}-{n}", "type": kind, "client_id": client,
                       "event_time": round(t, 3), **fields})

    if rng.random() < 0.7:
        add("registered", traits={"email": f"{client}@example.com"})
    for _ in range(rng.randint(1, 4)):
        add("visit")
        for _ in range(rng.randint(0, 3)):
            add("product_view", products=[{"product_id": f"p{rng.randint(1, 40)}",
                                           "price": rng.randint(2, 90)}])
        for _ in range(rng.randint(0, 2)):
            add("cart_add", products=[{"product_id": f"p{rng.randint(1, 40)}",
                                       "price": rng.randint(2, 90),
                                       "quantity": rng.randint(1, 3)}])
        if rng.random() < 0.2:
            add("cart_remove", products=[{"product_id": f"p{rng.randint(1, 40)}"}])
        if rng.random() < 0.4:
            order_id = f"{client}-o{n}"
            add("order_placed", order={"order_id": order_id, "total": rng.randint(5, 300)})
            if rng.random() < 0.15:
                add("order_cancelled", order={"order_id": order_id})
    if events and rng.random() < 0.3:
        events.append(dict(events[rng.randrange(len(events))]))  # a resent duplicate
    if len(events) > 2 and rng.random() < 0.3:
        i = rng.randrange(len(events) - 1)
        events[i], events[i + 1] = events[i + 1], events[i]  # arrives out of order
    return events


def histories(seed: int, clients: int, start: float) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    return [client_history(rng, f"c{i}", start) for i in range(clients)]
