"""The features a profile read returns, computed from the state at a given `now`.

Features that depend on time (recency, windowed counts) are computed at read time, so a
profile is never stale just because the client has been quiet.
"""

from __future__ import annotations

from typing import Any

from features.events import format_time
from features.state import ClientState

DAY = 86400.0
ORDER_WINDOWS_DAYS = (30, 90, 365)


def lifecycle_stage(state: ClientState, now: float, churn_after_days: float = 180.0) -> str:
    """prospect (no order), new (1), repeat (2+), churned (no order for `churn_after_days`)."""
    anchor = state.last_order_at or state.registered_at or state.first_seen_at
    if now - anchor >= churn_after_days * DAY and (state.orders_count or state.registered_at):
        return "churned"
    if state.orders_count == 0:
        return "prospect" if state.registered_at is not None else "visitor"
    return "new" if state.orders_count == 1 else "repeat"


def mean_days_between_orders(state: ClientState) -> float | None:
    times = sorted(o.placed_at for o in state.orders if not o.cancelled)
    if len(times) < 2:
        return None
    return round((times[-1] - times[0]) / (len(times) - 1) / DAY, 3)


def profile_features(state: ClientState, now: float) -> dict[str, Any]:
    live_orders = [o for o in state.orders if not o.cancelled]
    windows = {
        f"orders_{days}d": sum(1 for o in live_orders if now - o.placed_at <= days * DAY)
        for days in ORDER_WINDOWS_DAYS
    }
    money_windows = {
        f"monetary_{days}d": round(sum(o.total - o.returned for o in live_orders
                                       if now - o.placed_at <= days * DAY), 2)
        for days in ORDER_WINDOWS_DAYS
    }
    mean_interval = mean_days_between_orders(state)
    last_live_order = max((o.placed_at for o in live_orders), default=None)
    predicted = (last_live_order + mean_interval * DAY
                 if mean_interval is not None and last_live_order is not None else None)
    return {
        "lifecycle_stage": lifecycle_stage(state, now),
        "registered_at": format_time(state.registered_at),
        "first_seen_at": format_time(state.first_seen_at),
        "last_seen_at": format_time(state.last_seen_at),
        "last_visit_at": format_time(state.last_visit_at),
        "visits": state.visits,
        "cart_items": state.cart_items,
        "cart_value": state.cart_value,
        "cart_products": [line.product_id for line in state.cart],
        "cart_updated_at": format_time(state.cart_updated_at),
        "recently_viewed": [pid for pid, _ in reversed(state.viewed)],
        "last_view_at": format_time(state.last_view_at),
        "favourites": list(state.favourites),
        "orders_count": state.orders_count,
        "monetary_total": state.monetary_total,
        "avg_order_value": (round(state.monetary_total / state.orders_count, 2)
                            if state.orders_count else None),
        "first_order_at": format_time(state.first_order_at),
        "last_order_at": format_time(state.last_order_at),
        "recency_days": (round((now - state.last_order_at) / DAY, 3)
                         if state.last_order_at is not None else None),
        **windows,
        **money_windows,
        "mean_days_between_orders": mean_interval,
        "predicted_next_order_at": format_time(predicted),
        "checkout_started_at": format_time(state.checkout_started_at),
        "support_requests": state.support_requests,
        "nps_score": state.nps_score,
        "preferred_channel": state.channel_engagement[0][0] if state.channel_engagement else None,
    }


def profile_document(client_key: str, state: ClientState, now: float) -> dict[str, Any]:
    return {
        "client_id": client_key,
        "updated_at": format_time(state.updated_at),
        "features": profile_features(state, now),
        "traits": dict(state.traits),
    }
