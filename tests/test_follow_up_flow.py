"""Follow-ups through the real dataflow and Redis: a sent email's follow-up reaches the
trigger stream on the next channel; an open naming the trigger id (sent through the real
HTTP API, as an ESP's webhook would) or a purchase ending the cart stops it."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import redis

from features.events import format_time
from tests.histories import DAY
from tests.support import WRITE_KEY, all_triggers, api_server, drain, make_settings
from tests.test_dataflow import append

HOUR = 3600.0


def _cart(client: str, t0: float) -> list[dict[str, Any]]:
    return [
        {"event_id": f"{client}-id", "type": "identify", "client_id": client, "event_time": t0,
         "traits": {"email": f"{client}@example.com", "push_token": f"tok-{client}"}},
        {"event_id": f"{client}-cart", "type": "cart_add", "client_id": client,
         "event_time": t0 + 60, "products": [{"product_id": "p1", "price": 12.5}]},
    ]


def _carts(client: redis.Redis, settings: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for trigger in all_triggers(client, settings):
        if trigger["type"] == "abandoned_cart":
            out.setdefault(trigger["client_id"], []).append(trigger)
    for triggers in out.values():
        triggers.sort(key=lambda t: t["decided_at"])
    return out


def test_a_follow_up_reaches_the_stream_unless_an_open_or_a_purchase_stops_it(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"quiet_hours": None,
                                     "follow_up": {"types": ["abandoned_cart"], "after": "1d"}})
    t0 = (time.time() // DAY - 5) * DAY + 12 * HOUR  # noon, five days ago
    append(redis_client, settings, [
        *_cart("ann", t0), *_cart("bob", t0), *_cart("cy", t0),
        {"event_id": "cy-order", "type": "order_placed", "client_id": "cy",
         "event_time": t0 + 5 * HOUR,
         "order": {"order_id": "o1", "total": 12.5,
                   "items": [{"product_id": "p1", "price": 12.5}]}},
    ])
    drain(settings, as_of=t0 + 2 * HOUR)  # the reminders are sent, by email
    sent = _carts(redis_client, settings)
    assert {c: [(t["status"], t["channel"]) for t in ts] for c, ts in sent.items()} == {
        c: [("sent", "email")] for c in ("ann", "bob", "cy")}

    # bob opens his email: the ESP echoes the trigger id back as a Segment track
    opened = {"type": "track", "userId": "bob", "event": "Email Opened",
              "timestamp": format_time(t0 + 3 * HOUR),
              "properties": {"trigger_id": sent["bob"][0]["trigger_id"]}}
    with api_server(settings) as api:
        response = httpx.post(api + "/v1/track", json=opened, auth=(WRITE_KEY, ""), timeout=10)
    assert response.status_code == 200, response.text
    drain(settings)  # up to now: the follow-ups were due a day after the sends

    carts = _carts(redis_client, settings)
    email, push = carts["ann"]
    assert (push["status"], push["channel"]) == ("sent", "mobile_push")
    assert push["key"] == email["key"] + "#follow_up1"
    assert push["trigger_id"] != email["trigger_id"]
    assert json.loads(push["payload"])["follow_up_of"] == email["trigger_id"]
    assert push["fired_at"] == email["fired_at"]
    assert push["decided_at"] == format_time(t0 + 60 + HOUR + DAY)
    assert [t["channel"] for t in carts["bob"]] == ["email"]  # caught by the open
    assert [t["channel"] for t in carts["cy"]] == ["email"]  # bought the cart

    drain(settings)  # again: nothing more, nothing twice
    assert _carts(redis_client, settings) == carts
