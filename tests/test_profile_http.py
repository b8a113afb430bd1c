"""The profile read follows the configured lifecycle thresholds."""

from __future__ import annotations

import time

import httpx
import redis

from tests.support import api_server, drain, make_settings, post_events, read_headers


def test_lifecycle_stage_uses_the_configuration(redis_client: redis.Redis, redis_url: str,
                                                key_prefix: str) -> None:
    now = time.time()
    orders = [{"event_id": f"o{i}", "type": "order_placed", "client_id": "bea",
               "event_time": now - 40 * 86400 + i, "order": {"order_id": f"o{i}", "total": 5}}
              for i in range(2)]
    stages = []
    for name, lifecycle in [("d", {}),
                            ("c", {"at_risk_after": "10d", "churned_after": "30d"}),
                            ("l", {"loyal_orders": 2})]:
        settings = make_settings(redis_url, key_prefix + name, lifecycle=lifecycle)
        with api_server(settings) as url:
            assert post_events(url, orders).status_code == 200
            drain(settings)
            profile = httpx.get(f"{url}/v1/profiles/bea", headers=read_headers()).json()
        stages.append(profile["features"]["lifecycle_stage"])
    assert stages == ["repeat", "churned", "loyal"]
