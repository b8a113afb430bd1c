"""The whole path over the wire: a Segment client library -> HTTP API -> Redis streams ->
the dataflow process -> triggers in the stream and in the profile's touches."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis
from segment.analytics import Client

from tests.support import (
    WRITE_KEY,
    all_triggers,
    api_server,
    dataflow_process,
    make_settings,
    read_headers,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow


def test_segment_client_abandoned_cart_and_order_cancel(
        redis_client: redis.Redis, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, key_prefix,
                             triggers={"abandoned_cart": {"delay": "3s"},
                                       "abandoned_browse": {"enabled": False}})
    errors: list[object] = []
    with api_server(settings) as url, dataflow_process(write_config(settings, tmp_path / "c.yaml")):
        analytics = Client(WRITE_KEY, host=url, sync_mode=True, max_retries=2,
                           on_error=lambda error, batch: errors.append(error))
        analytics.identify("ann", {"email": "ann@example.com", "city": "Leeds"})
        analytics.track("ann", "Signed Up")
        analytics.track("ann", "Product Added", {"product_id": "mug", "price": 12.0,
                                                 "quantity": 2, "category": "kitchen"})
        analytics.track("bob", "Product Added", {"product_id": "tea", "price": 4.5})
        analytics.track("bob", "Order Completed", {"order_id": "b-1", "total": 4.5,
                                                   "currency": "GBP",
                                                   "products": [{"product_id": "tea",
                                                                 "price": 4.5}]})
        analytics.flush()
        assert errors == []

        def abandoned() -> list[dict[str, str]]:
            return [t for t in all_triggers(redis_client, settings)
                    if t["type"] == "abandoned_cart"]

        fired = wait_for(abandoned, 30, "ann's abandoned cart in the trigger stream")
        assert [t["client_id"] for t in fired] == ["ann"]
        touches = httpx.get(f"{url}/v1/profiles/ann/touches", headers=read_headers()).json()
        types = [t["type"] for t in touches["touches"]]
        assert types[0] == "abandoned_cart" and "welcome" in types
        assert touches["touches"][0]["payload"]["items"][0]["product_id"] == "mug"

        time.sleep(2)  # bob's cart was due at the same time: his order cancelled it
        bob = [t["type"] for t in all_triggers(redis_client, settings)
               if t["client_id"] == "bob"]
        assert bob == ["order_confirmation"]
        profile = httpx.get(f"{url}/v1/profiles/bob", headers=read_headers()).json()
        assert profile["features"]["orders_count"] == 1
        assert profile["features"]["cart_items"] == 0
