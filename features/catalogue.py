"""The trigger catalogue: for each rule, when its occasion is due and what it says.

Two kinds of rule:
- timers: `rule_timers(state, rules)` derives each rule's next due time from the state
  alone, and `fire_rule` turns the due occasion into a `Candidate` while marking it decided
  in the state. A state change is all it takes to cancel or re-arm a timer.
- immediate: `on_event(before, after, event, rules)` raises candidates for the event itself
  (registration, order, cancellation, refund in full, NPS answer, loyalty tier change).

A trigger that waited (quiet hours) is decided again at its release: `released` gives it as
it stands then, or None when its occasion ended meanwhile, which an event that arrives late
can show too, stamped before the trigger was due.

Every candidate has an occasion key; (client, type, key) is the trigger's id, so the same
occasion always yields the same id. What happens to a candidate is the policy's business
(features/policy.py), applied by features/triggers.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from features.calendar import next_birthday, parse_birthday, zone
from features.events import Event, EventError, EventType, format_time, parse_time
from features.lifecycle import (
    churn_anchor,
    first_purchase,
    is_loyal,
    last_live_order,
    last_purchase,
    loyalty_tier,
    mean_order_interval,
    purchase_count,
    refunded_in_full,
    tier_rank,
)
from features.rules import (
    ABANDONED_BROWSE,
    ABANDONED_CART,
    BIRTHDAY,
    CHURN_WINBACK,
    DAY,
    FEEDBACK_REQUEST,
    FIRST_ORDER_PROMO,
    LOYALTY_STATUS,
    NPS_DETRACTOR_TASK,
    NPS_PASSIVE_OFFER,
    NPS_PROMOTER_REFERRAL,
    ONBOARDING,
    ORDER_CANCELLATION,
    ORDER_CONFIRMATION,
    ORDER_REFUND,
    REPLENISHMENT_REMINDER,
    SECOND_ORDER_NUDGE,
    SEGMENT_ENTERED,
    SERVICE_REMINDER,
    WELCOME,
    TriggerRules,
)
from features.state import (
    BIRTHDAY_KNOWN,
    FOLLOW_UP_SUFFIX,
    CategoryOrders,
    ClientState,
    OrderRecord,
    PendingTrigger,
    browse_gate,
    evolve,
    follow_up_key,
    mark_of,
    with_mark,
)

NPS_QUESTION = "How likely are you to recommend us to a friend or colleague, from 0 to 10?"
DONE_ONCE = 1.0  # the mark of a once-per-client rule that has fired


@dataclass(frozen=True, slots=True)
class Candidate:
    """A trigger that is due, before the policy has decided what to do with it."""

    type: str
    key: str  # the occasion: order id, cart episode, birthday year, ...
    at: float  # when the occasion became due: the timer's due time or the event's time
    payload: dict[str, Any]

    def __init__(self, type: str, key: str, at: float,
                 payload: dict[str, Any]) -> None:  # see `features.__init__`
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "payload", payload)


def occasion_time(seconds: float) -> str:
    """An occasion key made of a time: stable text for the same float."""
    return f"{seconds:.3f}"


def _key_time(key: str) -> float | None:
    """The time an occasion key made of a time stands for; None for another key (one raised
    under another configuration, say per-category replenishment switched on meanwhile)."""
    try:
        return float(key)
    except ValueError:
        return None


def _not_after(seconds: float, key: str) -> bool:
    """Whether `seconds` is no later than the time an occasion key made of a time stands for
    (compared at the key's precision, the millisecond); true for a key that is no time, as
    nothing then shows the occasion ended."""
    at = _key_time(key)
    return at is None or float(occasion_time(seconds)) <= at


# --- timer rules: (due time from the state, fire) ------------------------------------------------

DueFn = Callable[[ClientState, TriggerRules], float | None]
# None: the occasion was decided without a trigger (nothing left to say)
FireFn = Callable[[ClientState, TriggerRules], tuple[ClientState, Candidate | None]]


def _cart_due(state: ClientState, rules: TriggerRules) -> float | None:
    if state.cart and not state.cart_reminded and state.cart_updated_at is not None:
        return state.cart_updated_at + rules.abandoned_cart.delay
    return None


def _cart_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    assert state.cart_since is not None and state.cart_updated_at is not None
    due = state.cart_updated_at + rules.abandoned_cart.delay
    return (evolve(state, cart_reminded=due),
            Candidate(ABANDONED_CART, occasion_time(state.cart_since), due,
                      _cart_payload(state)))


def _cart_payload(state: ClientState) -> dict[str, Any]:
    """The cart as it stands: at the reminder's due time, and again at its release (a
    reminder that waited for quiet hours to end names what the cart holds then)."""
    assert state.cart_updated_at is not None
    return {
        "items": [{"product_id": line.product_id, "quantity": line.quantity,
                   "price": line.price, "category": line.category} for line in state.cart],
        "cart_value": state.cart_value,
        "cart_updated_at": format_time(state.cart_updated_at),
    }


def _browse_due(state: ClientState, rules: TriggerRules) -> float | None:
    if state.browse_since is not None and state.last_view_at is not None:
        return state.last_view_at + rules.abandoned_browse.delay
    return None


def _browse_fire(state: ClientState, rules: TriggerRules
                 ) -> tuple[ClientState, Candidate | None]:
    """The browse episode's reminder, keyed by its last view.

    The last view, unlike the first, does not depend on the order in which the events
    arrived: a cart add or an order that arrives late cuts the episode's start, and the
    state keeps each product's latest view only, not the view that then came first. The
    rule's mark, the due time, closes the episode: a view up to it that arrives late is no
    new browse. No reminder when every product viewed is in the cart or was just bought."""
    assert state.browse_since is not None and state.last_view_at is not None
    last_view = state.last_view_at
    due = last_view + rules.abandoned_browse.delay
    gate = browse_gate(state)
    products = _browsed_products(state, [pid for pid, at in reversed(state.viewed) if at > gate])
    decided = with_mark(evolve(state, browse_since=None), ABANDONED_BROWSE,
                        max(due, mark_of(state, ABANDONED_BROWSE) or due))
    if not products:
        return decided, None
    return decided, Candidate(ABANDONED_BROWSE, occasion_time(last_view), due,
                              {"products": products, "last_view_at": format_time(last_view)})


def _browsed_products(state: ClientState, viewed: list[str]) -> list[str]:
    """The products of `viewed` that a browse reminder may name: abandoned browse is viewing
    without adding or buying, so those in the cart or bought in the latest order are not."""
    taken = {line.product_id for line in state.cart}.union(state.bought)
    return [pid for pid in viewed if pid not in taken]


def _feedback_due(state: ClientState, rules: TriggerRules) -> float | None:
    """7 days after the latest purchase not asked about yet (a newer order supersedes an
    older one still waiting: the client is asked about the latest purchase; one cancelled or
    refunded in full is no purchase)."""
    last = last_purchase(state)
    if last is None or last.placed_at <= (mark_of(state, FEEDBACK_REQUEST) or float("-inf")):
        return None
    return last.placed_at + rules.feedback_request.delay


def _feedback_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    last = last_purchase(state)
    assert last is not None
    rule = rules.feedback_request
    payload: dict[str, Any] = {"order_id": last.order_id, "placed_at": format_time(last.placed_at),
                               "total": last.total, "nps_survey": rule.nps_survey}
    if rule.nps_survey:
        payload["nps_question"] = NPS_QUESTION
    return (with_mark(state, FEEDBACK_REQUEST, last.placed_at),
            Candidate(FEEDBACK_REQUEST, last.order_id, last.placed_at + rule.delay, payload))


def _nudge_due(state: ClientState, rules: TriggerRules) -> float | None:
    """14 days after the first purchase, while it is the only one."""
    if (state.orders_count < 1 or mark_of(state, SECOND_ORDER_NUDGE) is not None
            or purchase_count(state) != 1):  # cheap checks first: asked on every event
        return None
    first = first_purchase(state)
    return None if first is None else first.placed_at + rules.second_order_nudge.delay


def _nudge_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    first = first_purchase(state)
    assert first is not None
    return (with_mark(state, SECOND_ORDER_NUDGE, DONE_ONCE),
            Candidate(SECOND_ORDER_NUDGE, "", first.placed_at + rules.second_order_nudge.delay,
                      {"first_order_id": first.order_id,
                       "first_order_at": format_time(first.placed_at)}))


def _promo_due(state: ClientState, rules: TriggerRules) -> float | None:
    """30 days after registration for a client who never ordered."""
    if (state.registered_at is None or state.first_order_at is not None
            or mark_of(state, FIRST_ORDER_PROMO) is not None):
        return None
    return state.registered_at + rules.first_order_promo.delay


def _promo_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    assert state.registered_at is not None
    rule = rules.first_order_promo
    return (with_mark(state, FIRST_ORDER_PROMO, DONE_ONCE),
            Candidate(FIRST_ORDER_PROMO, "", state.registered_at + rule.delay,
                      {"registered_at": format_time(state.registered_at),
                       "promo_code": rule.promo_code}))


def _churn_due(state: ClientState, rules: TriggerRules) -> float | None:
    """180 days after the last live order (the registration, for those who never ordered);
    once per such silence: a new order starts another."""
    anchor = churn_anchor(state)
    if anchor is None or anchor <= (mark_of(state, CHURN_WINBACK) or float("-inf")):
        return None
    return anchor + rules.churn_winback.delay


def _churn_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    anchor = churn_anchor(state)
    assert anchor is not None
    last = last_live_order(state)
    payload = {"last_order_at": format_time(last.placed_at) if last else None,
               "registered_at": format_time(state.registered_at),
               "days_without_order": round(rules.churn_winback.delay / DAY, 3)}
    return (with_mark(state, CHURN_WINBACK, anchor),
            Candidate(CHURN_WINBACK, occasion_time(anchor), anchor + rules.churn_winback.delay,
                      payload))


def _category_due(stats: CategoryOrders, offset: float) -> float | None:
    if stats.count < 2 or stats.last_at <= stats.reminded_through:
        return None
    mean = (stats.last_at - stats.first_at) / (stats.count - 1)
    return stats.last_at + mean - offset if mean > offset else None


def _replenish_due(state: ClientState, rules: TriggerRules) -> float | None:
    """`offset` (7 days) before the predicted next order: the last live order plus the mean
    interval between live orders, from the second order on. Clients who re-order more often
    than every `offset` get none: the reminder would come before their last order."""
    rule = rules.replenishment_reminder
    if rule.per_category:
        dues = [d for c in state.categories if (d := _category_due(c, rule.offset)) is not None]
        return min(dues) if dues else None
    last = last_live_order(state)
    mean = mean_order_interval(state)
    if (last is None or mean is None or mean <= rule.offset
            or last.placed_at <= (mark_of(state, REPLENISHMENT_REMINDER) or float("-inf"))):
        return None
    return last.placed_at + mean - rule.offset


def _replenish_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    rule = rules.replenishment_reminder
    if rule.per_category:
        due, stats = min(((d, c) for c in state.categories
                          if (d := _category_due(c, rule.offset)) is not None),
                         key=lambda item: (item[0], item[1].category))
        cycle = (stats.last_at - stats.first_at) / (stats.count - 1)
        categories = tuple(replace(c, reminded_through=c.last_at) if c is stats else c
                           for c in state.categories)
        payload = {"category": stats.category, "last_order_at": format_time(stats.last_at),
                   "mean_days_between_orders": round(cycle / DAY, 3),
                   "predicted_order_at": format_time(stats.last_at + cycle)}
        return (evolve(state, categories=categories),
                Candidate(REPLENISHMENT_REMINDER,
                          f"{stats.category}:{occasion_time(stats.last_at)}", due, payload))
    last = last_live_order(state)
    mean = mean_order_interval(state)
    assert last is not None and mean is not None
    payload = {"category": None, "last_order_id": last.order_id,
               "last_order_at": format_time(last.placed_at),
               "mean_days_between_orders": round(mean / DAY, 3),
               "predicted_order_at": format_time(last.placed_at + mean)}
    return (with_mark(state, REPLENISHMENT_REMINDER, last.placed_at),
            Candidate(REPLENISHMENT_REMINDER, last.order_id,
                      last.placed_at + mean - rule.offset, payload))


def _service_interval(state: ClientState, rules: TriggerRules) -> float | None:
    raw = state.traits.get(rules.service_reminder.interval_trait)
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        days = float(raw)
    except (TypeError, ValueError):
        return None
    return days * DAY if 0 < days < 100_000 else None


def _service_anchor(state: ClientState, rules: TriggerRules) -> float | None:
    since = rules.service_reminder.since
    last = last_live_order(state)
    times = []
    if since in ("order", "any") and last is not None:
        times.append(last.placed_at)
    if since in ("visit", "any") and state.last_visit_at is not None:
        times.append(state.last_visit_at)
    return max(times) if times else None


def _service_due(state: ClientState, rules: TriggerRules) -> float | None:
    """When the client's own interval (a trait, in days) has passed since the last order or
    visit, less `offset`; once per interval: an order or visit restarts it."""
    interval = _service_interval(state, rules)
    if interval is None:  # most clients: no interval trait, no need for the anchor
        return None
    anchor = _service_anchor(state, rules)
    if anchor is None or anchor <= (mark_of(state, SERVICE_REMINDER) or float("-inf")):
        return None
    return anchor + interval - rules.service_reminder.offset


def _service_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    interval = _service_interval(state, rules)
    anchor = _service_anchor(state, rules)
    assert interval is not None and anchor is not None
    payload = {"interval_days": round(interval / DAY, 3), "since": format_time(anchor),
               "due_at": format_time(anchor + interval)}
    return (with_mark(state, SERVICE_REMINDER, anchor),
            Candidate(SERVICE_REMINDER, occasion_time(anchor),
                      anchor + interval - rules.service_reminder.offset, payload))


def _birthday_next(state: ClientState, rules: TriggerRules) -> tuple[int, float] | None:
    """The next birthday to greet: (year, due): the first after the year last greeted that is
    due at or after the birthday became known or changed, so only a birthday still to come
    then is greeted."""
    parsed = parse_birthday(state.traits.get("birthday"))
    if parsed is None:
        return None
    _, month, day = parsed
    rule = rules.birthday
    timezone = state.traits.get("timezone")
    tz = zone(timezone if isinstance(timezone, str) else None, rules.policy.timezone)
    last_year = mark_of(state, BIRTHDAY)
    return next_birthday(month, day, tz, rule.at, rule.offset,
                         after_year=None if last_year is None else int(last_year),
                         not_before=_birthday_known(state))


def _birthday_known(state: ClientState) -> float:
    """When the birthday was set or last changed (a state stored before that was marked:
    the latest update of any trait, later or the same)."""
    known = mark_of(state, BIRTHDAY_KNOWN)
    return state.traits_updated_at if known is None else known


def _birthday_due(state: ClientState, rules: TriggerRules) -> float | None:
    upcoming = _birthday_next(state, rules)
    return None if upcoming is None else upcoming[1]


def _birthday_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    upcoming = _birthday_next(state, rules)
    assert upcoming is not None
    year, due = upcoming
    return (with_mark(state, BIRTHDAY, float(year)),
            Candidate(BIRTHDAY, str(year), due,
                      {"birthday": str(state.traits.get("birthday"))[:10], "year": year}))


def _onboarding_due(state: ClientState, rules: TriggerRules) -> float | None:
    """The series' next step after the first purchase; stopped once the client is loyal."""
    steps = rules.onboarding.steps
    done = int(mark_of(state, ONBOARDING) or 0)
    if done >= len(steps) or is_loyal(state, rules.policy.loyal_after_orders):
        return None
    first = first_purchase(state)
    return None if first is None else first.placed_at + steps[done]


def _onboarding_fire(state: ClientState, rules: TriggerRules) -> tuple[ClientState, Candidate]:
    steps = rules.onboarding.steps
    done = int(mark_of(state, ONBOARDING) or 0)
    first = first_purchase(state)
    assert first is not None
    payload = {"step": done + 1, "steps": len(steps),
               "days_after_first_order": round(steps[done] / DAY, 3),
               "first_order_at": format_time(first.placed_at)}
    return (with_mark(state, ONBOARDING, float(done + 1)),
            Candidate(ONBOARDING, str(done + 1), first.placed_at + steps[done], payload))


TIMER_RULES: dict[str, tuple[DueFn, FireFn]] = {
    ABANDONED_CART: (_cart_due, _cart_fire),
    ABANDONED_BROWSE: (_browse_due, _browse_fire),
    FEEDBACK_REQUEST: (_feedback_due, _feedback_fire),
    SECOND_ORDER_NUDGE: (_nudge_due, _nudge_fire),
    FIRST_ORDER_PROMO: (_promo_due, _promo_fire),
    CHURN_WINBACK: (_churn_due, _churn_fire),
    REPLENISHMENT_REMINDER: (_replenish_due, _replenish_fire),
    SERVICE_REMINDER: (_service_due, _service_fire),
    BIRTHDAY: (_birthday_due, _birthday_fire),
    ONBOARDING: (_onboarding_due, _onboarding_fire),
}


def rule_timers(state: ClientState, rules: TriggerRules) -> list[tuple[float, str]]:
    """Each enabled timer rule's next due time, as (due, type); unordered."""
    timers = []
    for kind in rules.enabled_timers:
        due = TIMER_RULES[kind][0](state, rules)
        if due is not None:
            timers.append((due, kind))
    return timers


def fire_rule(kind: str, state: ClientState, rules: TriggerRules
              ) -> tuple[ClientState, Candidate | None]:
    """The due occasion of timer rule `kind`, marked decided in the returned state (None:
    decided without a trigger, as the rule found nothing to say)."""
    return TIMER_RULES[kind][1](state, rules)


def released(state: ClientState, pending: PendingTrigger, rules: TriggerRules
             ) -> Candidate | None:
    """A trigger that waited (a delay, or quiet hours), as it stands at its release; None
    when its occasion ended meanwhile: the client may have ordered, filled or emptied the
    cart, or come back. An event that arrives late, stamped before the trigger came due,
    ends it too, as it would have in order: each rule compares the state with the
    occasion's start (its key), not with the time the trigger came due."""
    if pending.type == ABANDONED_BROWSE:
        return _browse_released(state, pending)
    if not still_valid(state, pending, rules):
        return None
    payload = (_cart_payload(state) if pending.type == ABANDONED_CART
               else dict(pending.payload))
    return Candidate(pending.type, pending.key, pending.fired_at, payload)


def after_cancelled(state: ClientState, pending: PendingTrigger, rules: TriggerRules
                    ) -> ClientState:
    """The state once `pending` was cancelled at its release. A tier announcement that was
    not sent (an order returned meanwhile took the tier away) gives back its mark, so that
    reaching the tier again announces it: the mark falls to the rank held before the
    announcement or now, whichever is higher (a tier announced before that and lost since
    may then be announced once more, where the exact mark is not known)."""
    if pending.type != LOYALTY_STATUS or pending.payload.get("direction") != "up":
        return state
    tiers = rules.loyalty_status.tiers
    previous = pending.payload.get("previous_tier")
    rank = max(tier_rank(state.loyalty_tier, tiers),
               tier_rank(previous if isinstance(previous, str) else "", tiers), 0)
    if rank >= (mark_of(state, LOYALTY_STATUS) or 0):
        return state
    return with_mark(state, LOYALTY_STATUS, float(rank))


def _browse_released(state: ClientState, pending: PendingTrigger) -> Candidate | None:
    """A browse reminder stands while no later one was fired (its mark) and no cart add or
    order came after the episode's last view (its key); it names the products still viewed
    after the last cart add or order and still neither in the cart nor bought. A cart add
    or order that arrives late, stamped within the episode, cuts it as it would have in
    order; one stamped after it ends it."""
    mark = mark_of(state, ABANDONED_BROWSE)
    closed = state.browse_closed_at
    last_view = _last_view(pending)
    if (mark is not None and mark > pending.fired_at) or (
            last_view is not None and float(occasion_time(closed)) >= last_view):
        return None
    latest = dict(state.viewed)  # a product no longer listed: nothing shows it was closed
    named = pending.payload.get("products")
    products = _browsed_products(state, [
        str(pid) for pid in (named if isinstance(named, list) else [])
        if latest.get(pid, float("inf")) > closed])
    if not products:
        return None
    return Candidate(pending.type, pending.key, pending.fired_at,
                     {**pending.payload, "products": products})


def _last_view(pending: PendingTrigger) -> float | None:
    """The browse episode's last view: in its payload (a reminder that waited across the
    upgrade to state format 8 is keyed by the episode's first view), else its key."""
    sent = pending.payload.get("last_view_at")
    if isinstance(sent, str):
        try:  # as a key holds it: a time to the millisecond
            return _key_time(occasion_time(parse_time(sent, "last_view_at")))
        except EventError:
            pass
    return _key_time(pending.key)


def still_valid(state: ClientState, pending: PendingTrigger, rules: TriggerRules) -> bool:
    """Whether a trigger that waited still has its occasion (see `released`, which decides
    a browse reminder itself: it may be cut, not only stand or end)."""
    kind = pending.type
    if kind == ABANDONED_CART:
        return (bool(state.cart) and state.cart_since is not None
                and occasion_time(state.cart_since) == pending.key)
    if kind == FIRST_ORDER_PROMO:
        return state.first_order_at is None
    if kind == SEGMENT_ENTERED:  # still in the segment it entered
        return any(f"{name}@{occasion_time(at)}" == pending.key for name, at in state.segments)
    if kind == SECOND_ORDER_NUDGE:
        return purchase_count(state) == 1
    if kind == FEEDBACK_REQUEST:  # about the purchase in its key, still the latest one
        last = last_purchase(state)
        return last is not None and last.order_id == pending.key
    if kind == ONBOARDING:  # a series after the first purchase: some purchase must stand
        return last_purchase(state) is not None
    if kind == REPLENISHMENT_REMINDER:
        return _replenishment_stands(state, pending, rules)
    if kind in (NPS_PASSIVE_OFFER, NPS_PROMOTER_REFERRAL):  # a detractor's task stands
        # its answer is still the latest: a later one decided its own occasion
        return (state.nps_at is not None and state.nps_score is not None
                and occasion_time(state.nps_at) == pending.key
                and nps_band(state.nps_score, rules) == kind)
    if kind == LOYALTY_STATUS:  # the client still holds the tier announced
        announced = pending.payload.get("tier")
        return state.loyalty_tier == (announced if isinstance(announced, str) else "")
    if kind == CHURN_WINBACK:
        anchor = churn_anchor(state)
    elif kind == SERVICE_REMINDER:
        anchor = _service_anchor(state, rules)
    else:
        return True
    # the silence or interval in its key still runs: no order or visit since it began
    return anchor is None or _not_after(anchor, pending.key)


def _replenishment_stands(state: ClientState, pending: PendingTrigger,
                          rules: TriggerRules) -> bool:
    """Predicted from the orders as they were: the last must still be the last live one, and
    still follow another (a cancellation may leave a single order: no prediction). Per
    category (key `<category>:<its last order>`): no order of that category since."""
    if rules.replenishment_reminder.per_category:
        category, _, since = pending.key.rpartition(":")
        stats = next((c for c in state.categories if c.category == category), None)
        return stats is None or _not_after(stats.last_at, since)
    last = last_live_order(state)
    return (last is not None and last.order_id == pending.key
            and mean_order_interval(state) is not None)


# --- immediate rules ------------------------------------------------------------------------------

def _nps(before: ClientState | None, after: ClientState, event: Event, rules: TriggerRules
         ) -> list[Candidate]:
    """On an NPS answer: the offer or invitation for the client's latest answer only (a late
    older one changes nothing), a manager's task for every detractor answer, however late
    (a complaint is not superseded by a later score)."""
    t = event.event_time
    if event.nps_score is None:
        return []
    latest = after.nps_at == t and (before is None or before.nps_at is None
                                    or t > before.nps_at)
    score = event.nps_score
    band = nps_band(score, rules)
    if not latest and band != NPS_DETRACTOR_TASK:
        return []
    key = occasion_time(t)
    base: dict[str, Any] = {"score": score, "answered_at": format_time(t)}
    if band == NPS_DETRACTOR_TASK:
        if not rules.nps_detractor_task.enabled:
            return []
        comment = event.properties.get("comment")
        return [Candidate(NPS_DETRACTOR_TASK, key, t,
                          {**base, "comment": comment if isinstance(comment, str) else None})]
    if band == NPS_PASSIVE_OFFER:
        if not rules.nps_passive_offer.enabled:
            return []
        return [Candidate(NPS_PASSIVE_OFFER, key, t,
                          {**base, "discount_percent": rules.nps_passive_offer.discount_percent})]
    if not rules.nps_promoter_referral.enabled:
        return []
    return [Candidate(NPS_PROMOTER_REFERRAL, key, t,
                      {**base, "bonus_per_friend": rules.nps_promoter_referral.bonus_per_friend})]


def nps_band(score: int, rules: TriggerRules) -> str:
    """The trigger an NPS answer of `score` raises: detractor, passive or promoter."""
    if score <= rules.nps.detractor_max:
        return NPS_DETRACTOR_TASK
    return NPS_PASSIVE_OFFER if score <= rules.nps.passive_max else NPS_PROMOTER_REFERRAL


def _cancellation(before: ClientState | None, after: ClientState, event: Event
                  ) -> list[Candidate]:
    """When a known order becomes cancelled (an unknown one, or a second cancellation of the
    same order, changes nothing and raises nothing)."""
    was, now = _order_before_and_after(before, after, event)
    if was is None or now is None or was.cancelled or not now.cancelled:
        return []
    return [_returned(ORDER_CANCELLATION, now, event.event_time)]


def _order_before_and_after(before: ClientState | None, after: ClientState, event: Event
                            ) -> tuple[OrderRecord | None, OrderRecord | None]:
    """The event's order as the client's state held it before the event and after it
    (None: not known then, or the event names no order)."""
    if before is None or event.order is None:
        return None, None
    order_id = event.order.order_id
    return (next((o for o in before.orders if o.order_id == order_id), None),
            next((o for o in after.orders if o.order_id == order_id), None))


def _refund(before: ClientState | None, after: ClientState, event: Event) -> list[Candidate]:
    """When a known order becomes refunded in full (by one refund or the last of several;
    once per order, like a cancellation: a partial refund raises nothing)."""
    was, now = _order_before_and_after(before, after, event)
    if was is None or now is None or refunded_in_full(was) or not refunded_in_full(now):
        return []
    return [_returned(ORDER_REFUND, now, event.event_time)]


def _returned(kind: str, order: OrderRecord, at: float) -> Candidate:
    """A cancellation or refund confirmation: transactional, once per order (its key)."""
    return Candidate(kind, order.order_id, at,
                     {"order_id": order.order_id, "total": order.total,
                      "returned": order.returned, "placed_at": format_time(order.placed_at)})


def _placed(after: ClientState, event: Event, rules: TriggerRules) -> list[Candidate]:
    """On a new order: its confirmation. A cancellation or refund in full that arrived
    before it was applied with it: the cancellation replaces the confirmation, and the
    refund's confirmation follows it, as if they had arrived in order."""
    assert event.order is not None
    placed = next((o for o in after.orders if o.order_id == event.order.order_id), None)
    if placed is not None and placed.cancelled:  # its cancellation had come first
        if rules.order_cancellation.enabled:
            return [_returned(ORDER_CANCELLATION, placed, event.event_time)]
        return []
    candidates = []
    if rules.order_confirmation.enabled:
        order = event.order
        candidates.append(Candidate(
            ORDER_CONFIRMATION, order.order_id, event.event_time,
            {"order_id": order.order_id, "total": round(order.total, 2),
             "currency": order.currency,
             "items": [{"product_id": p.product_id, "quantity": p.quantity, "price": p.price}
                       for p in order.items]}))
    if placed is not None and refunded_in_full(placed) and rules.order_refund.enabled:
        candidates.append(_returned(ORDER_REFUND, placed, event.event_time))
    return candidates


def retier(after: ClientState, event: Event, rules: TriggerRules
           ) -> tuple[ClientState, list[Candidate]]:
    """The tier after an order, a return or a merge (`event`), and its announcement.

    A tier is announced the first time it is reached (the rule's mark is the highest rank
    announced, so a tier regained after a downgrade is not announced again); a downgrade
    only with `announce_downgrades`. The state follows the tier either way."""
    rule = rules.loyalty_status
    tier = loyalty_tier(after, rule.tiers)
    previous = after.loyalty_tier
    if tier == previous:
        return after, []
    after = evolve(after, loyalty_tier=tier)
    rank = tier_rank(tier, rule.tiers)
    up = rank > tier_rank(previous, rule.tiers)
    if not rule.enabled:
        return after, []
    if up:
        if rank <= (mark_of(after, LOYALTY_STATUS) or 0):
            return after, []
        after = with_mark(after, LOYALTY_STATUS, float(rank))
    elif not rule.announce_downgrades:
        return after, []
    key = tier if up else f"{previous}>{tier}"
    return after, [Candidate(LOYALTY_STATUS, key, event.event_time,
                             {"tier": tier or None, "previous_tier": previous or None,
                              "direction": "up" if up else "down",
                              "orders_count": after.orders_count,
                              "monetary_total": after.monetary_total})]


ONCE_RULES = frozenset({WELCOME, SECOND_ORDER_NUDGE, FIRST_ORDER_PROMO})  # occasion key ""
COUNTED_RULES = frozenset({ONBOARDING})  # key: the step, fired in order


def decided_by_rule(state: ClientState, occasion: str, key: str) -> bool:
    """Whether a rule's own mark shows the occasion decided already.

    `state.decided` keeps the 16 most recent marketing decisions; a once-only or numbered
    occasion outlives them (a welcome touched by hand a month and many abandoned carts
    after the automatic one), and a touch of it then would be a second record with its id.
    An occasion still waiting in `pending` is not decided yet: its release will be."""
    mark = mark_of(state, occasion)
    if mark is None or any(p.type == occasion and p.decided_key == key for p in state.pending):
        return False
    base, suffix, n = key.rpartition(FOLLOW_UP_SUFFIX)
    if suffix and n.isascii() and n.isdigit() and key == follow_up_key(base, int(n)):
        # a follow-up (`<key>#follow_up<n>`), not waiting: decided with its occasion, sent,
        # suppressed, or dropped unrecorded, whose key no record ever showed
        return decided_by_rule(state, occasion, base)
    if occasion in ONCE_RULES:
        return key == ""
    if occasion in COUNTED_RULES:
        return key.isascii() and key.isdigit() and int(key) <= mark
    if occasion == BIRTHDAY:
        return key == str(int(mark))  # the latest year fired; earlier ones may never have
    return False


def on_event(before: ClientState | None, after: ClientState, event: Event, rules: TriggerRules
             ) -> tuple[ClientState, list[Candidate]]:
    """Candidates raised by the event itself (applied: `after`), and the state with the
    loyalty tier it has now."""
    candidates: list[Candidate] = []
    kind = event.type
    if (kind is EventType.REGISTERED and rules.welcome.enabled
            and (before is None or not before.welcomed)):
        after = with_mark(after, WELCOME, DONE_ONCE)  # what a later touch of it must know
        candidates.append(Candidate(WELCOME, "", event.event_time, {"traits": dict(after.traits)}))
    elif kind is EventType.ORDER_PLACED and event.order is not None:
        candidates.extend(_placed(after, event, rules))
    elif kind is EventType.ORDER_CANCELLED and rules.order_cancellation.enabled:
        candidates.extend(_cancellation(before, after, event))
    elif kind is EventType.ORDER_REFUNDED and rules.order_refund.enabled:
        candidates.extend(_refund(before, after, event))
    elif kind is EventType.NPS_ANSWER:
        candidates.extend(_nps(before, after, event, rules))
    if kind in (EventType.ORDER_PLACED, EventType.ORDER_CANCELLED, EventType.ORDER_REFUNDED):
        after, changed = retier(after, event, rules)
        candidates.extend(changed)
    return after, candidates
