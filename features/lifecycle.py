"""Facts derived from a client's state that rules, policy and profile share: live orders,
the mean interval between them, churn, loyalty and NPS groups.

"Live" orders are placed and not cancelled, among the latest `MAX_ORDERS` the state keeps:
the profile's statistics, RFM, the lifecycle stage and the rhythm rules (churn, replenishment,
service) count them. "Purchases" are live orders not refunded in full either: the rules that
follow up on a purchase (feedback, onboarding, the second-order nudge) and the loyal-client
count treat an order whose money all went back like a cancelled one.
"""

from __future__ import annotations

from features.rules import LifecycleRules, LoyaltyTier, NpsBands
from features.state import ClientState, OrderRecord


def last_live_order(state: ClientState) -> OrderRecord | None:
    for order in reversed(state.orders):
        if not order.cancelled:
            return order
    return None


def recency_anchor(state: ClientState) -> float | None:
    """When the client last bought, as RFM's recency counts it: the latest order not
    cancelled (None: no such order). Scores, their timers and the population index the
    quantile model is fitted on all take it from here, so they agree on it."""
    if state.orders_count <= 0:
        return None
    last = last_live_order(state)
    return None if last is None else last.placed_at


def refunded_in_full(order: OrderRecord) -> bool:
    """All of the order's money went back by refunds (a cancellation is not a refund)."""
    return not order.cancelled and 0 < order.total <= order.returned


def is_purchase(order: OrderRecord) -> bool:
    """An order the client kept: neither cancelled nor refunded in full."""
    return not order.cancelled and not refunded_in_full(order)


def last_purchase(state: ClientState) -> OrderRecord | None:
    for order in reversed(state.orders):
        if is_purchase(order):
            return order
    return None


def first_purchase(state: ClientState) -> OrderRecord | None:
    for order in state.orders:
        if is_purchase(order):
            return order
    return None


def purchase_count(state: ClientState) -> int:
    """Orders kept, all time: `orders_count` (not cancelled) less the orders refunded in full
    among the latest `MAX_ORDERS` (older refunds are beyond what the state keeps)."""
    return state.orders_count - sum(1 for order in state.orders if refunded_in_full(order))


def mean_order_interval(state: ClientState) -> float | None:
    """Mean seconds between the client's live orders (from the second order on)."""
    first: OrderRecord | None = None
    last: OrderRecord | None = None
    count = 0
    for order in state.orders:  # one pass: timer rules ask on every event
        if not order.cancelled:
            count += 1
            if first is None:
                first = order
            last = order
    if first is None or last is None or count < 2:
        return None
    return (last.placed_at - first.placed_at) / (count - 1)


def churn_anchor(state: ClientState) -> float | None:
    """Since when the client has not ordered: the last live order, else the registration."""
    last = last_live_order(state)
    if last is not None:
        return last.placed_at
    return state.registered_at


def is_churned(state: ClientState, at: float, churn_after: float) -> bool:
    anchor = churn_anchor(state)
    return anchor is not None and at - anchor >= churn_after


def is_loyal(state: ClientState, loyal_after_orders: int) -> bool:
    """Enough purchases kept: a refunded order counts no more than a cancelled one."""
    return loyal_after_orders > 0 and purchase_count(state) >= loyal_after_orders


def is_detractor(state: ClientState, bands: NpsBands) -> bool:
    return state.nps_score is not None and state.nps_score <= bands.detractor_max


def loyalty_tier(state: ClientState, tiers: tuple[LoyaltyTier, ...]) -> str:
    """The highest tier whose thresholds the client meets ("" for none); tiers lowest first."""
    reached = ""
    for tier in tiers:
        if state.orders_count >= tier.min_orders and state.monetary_total >= tier.min_money:
            reached = tier.name
    return reached


def tier_rank(name: str, tiers: tuple[LoyaltyTier, ...]) -> int:
    """0 for no tier, then 1, 2, ... in the configured order; -1 for a tier no longer known."""
    if not name:
        return 0
    for index, tier in enumerate(tiers):
        if tier.name == name:
            return index + 1
    return -1


VISITOR = "visitor"
PROSPECT = "prospect"
NEW = "new"
REPEAT = "repeat"
LOYAL = "loyal"
AT_RISK = "at_risk"
CHURNED = "churned"
# The stages that are segments ("lifecycle:<stage>"); visitors (never registered, never
# ordered: mostly anonymous traffic) are not materialised as a segment.
SEGMENT_STAGES = (PROSPECT, NEW, REPEAT, LOYAL, AT_RISK, CHURNED)


def orders_within(state: ClientState, now: float, window: float) -> list[float]:
    """Times of live orders placed in (now - window, now], newest first."""
    return sorted((o.placed_at for o in state.orders
                   if not o.cancelled and 0 <= now - o.placed_at < window), reverse=True)


def lifecycle_stage(state: ClientState, now: float, rules: LifecycleRules) -> str:
    """churned > at_risk > loyal > repeat > new for buyers; prospect or visitor otherwise."""
    last = last_live_order(state)
    if last is None:
        if state.registered_at is None:
            return VISITOR
        return CHURNED if now - state.registered_at >= rules.churned_after else PROSPECT
    idle = now - last.placed_at
    if idle >= rules.churned_after:
        return CHURNED
    if idle >= rules.at_risk_after:
        return AT_RISK
    if 0 < rules.loyal_orders <= len(orders_within(state, now, rules.loyal_window)):
        return LOYAL
    return NEW if state.orders_count < rules.repeat_orders else REPEAT


def lifecycle_next_change(state: ClientState, now: float, rules: LifecycleRules
                          ) -> float | None:
    """The earliest time after `now` at which the stage changes with no new event."""
    last = last_live_order(state)
    if last is None:
        if state.registered_at is None:
            return None
        at = state.registered_at + rules.churned_after
        return at if at > now else None
    times = [last.placed_at + rules.at_risk_after, last.placed_at + rules.churned_after]
    recent = orders_within(state, now, rules.loyal_window)
    if 0 < rules.loyal_orders <= len(recent):
        times.append(recent[rules.loyal_orders - 1] + rules.loyal_window)
    later = [t for t in times if t > now]
    return min(later) if later else None
