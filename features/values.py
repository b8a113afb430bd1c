"""Every named feature of a client: how to read it from the state at a time `now`, and how it
moves when time passes with no event.

One table serves the profile a read returns and the segment rules that name features, so a
rule and the profile never disagree about what `visits_7d` means. Time-dependent features
are computed at read time; each tells when it next changes (`next_change`), or, if it grows
linearly with time, its anchor (`linear`), which is what lets segment memberships move with
time on exact timers instead of periodic scans.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from enum import StrEnum
from typing import Any

from features import rfm, windows
from features.calendar import birthday_in, parse_birthday, zone
from features.lifecycle import (
    last_live_order,
    lifecycle_next_change,
    lifecycle_stage,
    mean_order_interval,
    orders_within,
    recency_anchor,
)
from features.rules import DAY, SegmentRules
from features.state import ClientState
from features.windows import HOUR, VIEW_DAYS, VIEW_HOURS, VISIT_DAYS

ORDER_WINDOWS_DAYS = (30, 90, 365)


class Kind(StrEnum):
    NUMBER = "number"
    TEXT = "text"
    TIME = "time"
    BOOL = "bool"


@dataclass(frozen=True, slots=True)
class Context:
    """What a feature reads: the state, the moment, and the segment configuration."""

    state: ClientState
    now: float
    rules: SegmentRules

    def __init__(self, state: ClientState, now: float,
                 rules: SegmentRules) -> None:  # see `features.__init__`
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "now", now)
        object.__setattr__(self, "rules", rules)


Getter = Callable[[Context], Any]
Stepper = Callable[[Context], "float | None"]
Anchor = Callable[[Context], "float | None"]


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    kind: Kind
    group: str  # the feature group whose `updated_at` the profile reports
    get: Getter
    next_change: Stepper | None = None  # changes stepwise with time alone
    anchor: Anchor | None = None  # value = (now - anchor) / unit
    unit: float = DAY
    whole: bool = False  # a NUMBER that is always a whole number (a count, a score)


# --- helpers -------------------------------------------------------------------------------------

def _live(state: ClientState) -> list[tuple[float, float]]:
    return [(o.placed_at, o.total - o.returned) for o in state.orders if not o.cancelled]


def _orders_in(days: int) -> Getter:
    return lambda c: len(orders_within(c.state, c.now, days * DAY))


def _money_in(days: int) -> Getter:
    def get(c: Context) -> float:
        return round(sum(money for at, money in _live(c.state)
                         if 0 <= c.now - at < days * DAY), 2)
    return get


def _order_window_change(days: int) -> Stepper:
    """The oldest order in the window leaves it (or a future-dated one enters)."""
    def step(c: Context) -> float | None:
        times = [at + days * DAY for at, _ in _live(c.state) if 0 <= c.now - at < days * DAY]
        times += [at for at, _ in _live(c.state) if at > c.now]
        return min(times) if times else None
    return step


def _bucket_total(attr: str, width: float, span: int) -> Getter:
    return lambda c: windows.total(getattr(c.state, attr), c.now, width, span)


def _bucket_change(attr: str, width: float, span: int) -> Stepper:
    return lambda c: windows.next_change(getattr(c.state, attr), c.now, width, span)


def _stage(c: Context) -> str:
    return lifecycle_stage(c.state, c.now, c.rules.lifecycle)


def _birth_date(state: ClientState) -> date | None:
    parsed = parse_birthday(state.traits.get("birthday"))
    return None if parsed is None else date(*parsed)


def _client_zone(c: Context) -> tzinfo:
    """The client's `timezone` trait, else the configured default (`policy.timezone`):
    the zone the birthday greeting uses too, so the age turns with the greeting's day."""
    name = c.state.traits.get("timezone")
    return zone(name if isinstance(name, str) else None, c.rules.timezone)


def _age(c: Context) -> int | None:
    born = _birth_date(c.state)
    if born is None:
        return None
    today = datetime.fromtimestamp(c.now, _client_zone(c)).date()
    if born > today:  # a birth date still to come (an expected child): no age yet
        return None
    had_birthday = today >= birthday_in(today.year, born.month, born.day)
    return today.year - born.year - (0 if had_birthday else 1)


def _age_change(c: Context) -> float | None:
    born = _birth_date(c.state)
    if born is None:
        return None
    tz = _client_zone(c)
    birth = datetime.combine(born, datetime.min.time(), tz).timestamp()
    if birth > c.now:  # the age begins then
        return birth
    year = datetime.fromtimestamp(c.now, tz).year
    for candidate in (year, year + 1):
        moment = datetime.combine(birthday_in(candidate, born.month, born.day),
                                  datetime.min.time(), tz).timestamp()
        if moment > c.now:
            return moment
    return None


def _predicted_next_order(c: Context) -> float | None:
    interval = mean_order_interval(c.state)
    last = last_live_order(c.state)
    return None if interval is None or last is None else last.placed_at + interval


def rfm_scores(c: Context) -> tuple[int, int, int] | None:
    model = c.rules.rfm_model
    last = recency_anchor(c.state)
    # an empty model (quintiles of no buyers, before the first re-score) would call every
    # buyer "lost": no scores yet, wherever the model was read (API, export, dataflow)
    if not c.rules.rfm_enabled or model is None or model.empty or last is None:
        return None
    return rfm.rfm_scores(model, last, c.state.orders_count, c.state.monetary_total, c.now)


def _rfm_part(index: int) -> Getter:
    def get(c: Context) -> int | None:
        scores = rfm_scores(c)
        return None if scores is None else scores[index]
    return get


def _rfm_segment(c: Context) -> str | None:
    scores = rfm_scores(c)
    return None if scores is None else rfm.rfm_segment(*scores)


def _rfm_change(c: Context) -> float | None:
    model = c.rules.rfm_model
    last = recency_anchor(c.state)
    if model is None or last is None or not c.rules.rfm_enabled:
        return None
    return rfm.next_score_change(model, last, c.now)


def _top_category(c: Context) -> str | None:
    interests = c.state.interests
    if not interests:
        return None
    # the first of `profile.category_interest`: most interactions, then most recent, then name
    return min(interests, key=lambda i: (-i.count, -i.last_at, i.category)).category


def _latest_view(state: ClientState) -> float | None:
    return max((at for _, at in state.viewed), default=None)


def _state(attr: str) -> Getter:
    return lambda c: getattr(c.state, attr)


def _since(name: str, group: str, attr: str, unit: float = DAY) -> Feature:
    """A feature that grows linearly with time: units elapsed since a time in the state."""
    def get(c: Context) -> float | None:
        anchor = getattr(c.state, attr)
        return None if anchor is None else round((c.now - anchor) / unit, 3)
    return Feature(name, Kind.NUMBER, group, get, anchor=lambda c: getattr(c.state, attr),
                   unit=unit)


# --- the table -----------------------------------------------------------------------------------

def _build() -> dict[str, Feature]:
    N, T, X = Kind.NUMBER, Kind.TIME, Kind.TEXT
    table = [
        Feature("orders_count", N, "orders", _state("orders_count"), whole=True),
        Feature("monetary_total", N, "orders", _state("monetary_total")),
        Feature("avg_order_value", N, "orders", lambda c: (
            round(c.state.monetary_total / c.state.orders_count, 2)
            if c.state.orders_count > 0 else None)),
        Feature("first_order_at", T, "orders", _state("first_order_at")),
        Feature("last_order_at", T, "orders", _state("last_order_at")),
        _since("recency_days", "orders", "last_order_at"),
        *(Feature(f"orders_{d}d", N, "orders", _orders_in(d),
                  next_change=_order_window_change(d), whole=True) for d in ORDER_WINDOWS_DAYS),
        *(Feature(f"monetary_{d}d", N, "orders", _money_in(d),
                  next_change=_order_window_change(d)) for d in ORDER_WINDOWS_DAYS),
        Feature("mean_days_between_orders", N, "orders", lambda c: (
            None if (i := mean_order_interval(c.state)) is None else round(i / DAY, 3))),
        Feature("predicted_next_order_at", T, "orders", _predicted_next_order),
        Feature("lifecycle_stage", X, "orders", _stage,
                next_change=lambda c: lifecycle_next_change(c.state, c.now, c.rules.lifecycle)),
        Feature("rfm_r", N, "rfm", _rfm_part(0), next_change=_rfm_change, whole=True),
        Feature("rfm_f", N, "rfm", _rfm_part(1), whole=True),
        Feature("rfm_m", N, "rfm", _rfm_part(2), whole=True),
        Feature("rfm_segment", X, "rfm", _rfm_segment, next_change=_rfm_change),
        Feature("registered_at", T, "profile", _state("registered_at")),
        _since("days_since_registration", "profile", "registered_at"),
        Feature("first_seen_at", T, "visits", _state("first_seen_at")),
        Feature("last_seen_at", T, "visits", _state("last_seen_at")),
        Feature("last_visit_at", T, "visits", _state("last_visit_at")),
        _since("days_since_last_visit", "visits", "last_visit_at"),
        Feature("visits", N, "visits", _state("visits"), whole=True),
        Feature("visits_7d", N, "visits", _bucket_total("visit_days", DAY, 7),
                next_change=_bucket_change("visit_days", DAY, 7), whole=True),
        Feature("visits_30d", N, "visits", _bucket_total("visit_days", DAY, VISIT_DAYS),
                next_change=_bucket_change("visit_days", DAY, VISIT_DAYS), whole=True),
        Feature("views_24h", N, "views", _bucket_total("view_hours", HOUR, VIEW_HOURS),
                next_change=_bucket_change("view_hours", HOUR, VIEW_HOURS), whole=True),
        Feature("views_7d", N, "views", _bucket_total("view_days", DAY, VIEW_DAYS),
                next_change=_bucket_change("view_days", DAY, VIEW_DAYS), whole=True),
        Feature("last_view_at", T, "views", lambda c: _latest_view(c.state)),
        Feature("cart_items", N, "cart", lambda c: c.state.cart_items, whole=True),
        Feature("cart_value", N, "cart", lambda c: c.state.cart_value),
        Feature("cart_updated_at", T, "cart", _state("cart_updated_at")),
        _since("cart_age_hours", "cart", "cart_since", HOUR),
        Feature("top_category", X, "categories", _top_category),
        Feature("preferred_channel", X, "engagement", lambda c: (
            c.state.channel_engagement[0][0] if c.state.channel_engagement else None)),
        Feature("nps_score", N, "nps", _state("nps_score"), whole=True),
        Feature("nps_at", T, "nps", _state("nps_at")),
        Feature("support_requests", N, "support", _state("support_requests"), whole=True),
        Feature("loyalty_tier", X, "orders", lambda c: c.state.loyalty_tier or None),
        Feature("age", N, "profile", _age, next_change=_age_change, whole=True),
    ]
    return {f.name: f for f in table}


FEATURES: dict[str, Feature] = _build()


def group_times(state: ClientState) -> dict[str, float | None]:
    """When each feature group last changed (event time)."""
    categories = max((i.last_at for i in state.interests), default=None)
    return {
        "orders": state.orders_updated_at,
        "visits": state.last_visit_at,
        "views": _latest_view(state),
        "cart": state.cart_changed_at,
        "categories": categories,
        "engagement": state.engagement_at,
        "nps": state.nps_at,
        "support": state.last_support_at,
        "profile": max((t for t in (state.traits_updated_at, state.registered_at) if t),
                       default=None),
        "segments": state.segments_at or None,
    }
