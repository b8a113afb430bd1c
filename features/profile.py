"""The features a profile read returns, computed from the state at a given `now`.

Features that depend on time (recency, windowed counts) are computed at read time, so a
profile is never stale just because the client has been quiet.
"""

from __future__ import annotations

from typing import Any

from features.events import format_time
from features.lifecycle import is_churned, is_loyal, mean_order_interval
from features.rules import DAY
from features.state import ClientState

ORDER_WINDOWS_DAYS = (30, 90, 365)


def lifecycle_stage(state: ClientState, now: float, churn_after_days: float = 180.0,
                    loyal_after_orders: int = 5) -> str:
    """visitor (never registered or ordered), prospect (registered, no order), new (1 order),
    repeat (2+), loyal (`loyal_after_orders`+), churned (no order for `churn_after_days`
    since the last order, or since registration for those who never ordered).

    The defaults are the documented ones (triggers.churn_winback.delay and
    policy.loyal_after_orders); callers with a configuration pass its values.
    """
    if is_churned(state, now, churn_after_days * DAY):
        return "churned"
    if state.orders_count == 0:
        return "prospect" if state.registered_at is not None else "visitor"
    if is_loyal(state, loyal_after_orders):
        return "loyal"
    return "new" if state.orders_count == 1 else "repeat"


def mean_days_between_orders(state: ClientState) -> float | None:
    interval = mean_order_interval(state)
    return None if interval is None else round(interval / DAY, 3)


def profile_features(state: ClientState, now: float, *, churn_after_days: float = 180.0,
                     loyal_after_orders: int = 5) -> dict[str, Any]:
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
    interval = mean_order_interval(state)
    last_live_order = max((o.placed_at for o in live_orders), default=None)
    # the same prediction the replenishment reminder uses
    predicted = (last_live_order + interval
                 if interval is not None and last_live_order is not None else None)
    return {
        "lifecycle_stage": lifecycle_stage(state, now, churn_after_days, loyal_after_orders),
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
        "loyalty_tier": state.loyalty_tier or None,
        "preferred_channel": state.channel_engagement[0][0] if state.channel_engagement else None,
    }


def profile_document(client_key: str, state: ClientState, now: float, *,
                     churn_after_days: float = 180.0, loyal_after_orders: int = 5
                     ) -> dict[str, Any]:
    return {
        "client_id": client_key,
        "updated_at": format_time(state.updated_at),
        "features": profile_features(state, now, churn_after_days=churn_after_days,
                                     loyal_after_orders=loyal_after_orders),
        "traits": dict(state.traits),
    }
