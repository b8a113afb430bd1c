"""What a trigger type earns: its treated clients' conversion next to its hold-out's.

The hold-out (features/policy.py) is drawn after suppression and before the channel, quiet
hours and the cap, by a stable hash of (client, type). So the honest comparison is by
intent to treat: the treated group is every client whose occasion passed the draw and was
not held out, sent or not (no channel, capped, cancelled while it waited), and the
hold-out group every client held out. Comparing only the clients `sent` with the hold-out
would credit the trigger with the difference between clients who have a channel and
those who may not.

The unit is the client, per type (a client's occasions of one type are not independent of
each other): a client converted when a purchase it kept (an order neither cancelled nor
refunded in full, as the lifecycle counts purchases) was placed within the
window after any of its occasions of that type, counted from the occasion's due time
(`fired_at`), which both groups share. Only occasions whose window has closed by the
as-of time count, so a recent occasion is not read as a failure. A follow-up is part of
its occasion, not an occasion of its own (the hold-out never gets one). Pure: the records
and the orders are arguments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from features.events import format_time, read_time
from features.lifecycle import is_purchase
from features.policy import (
    BACKFILL,
    BEFORE_ENABLED,
    CHURNED,
    DEFERRED,
    DETRACTOR,
    HOLDOUT,
    LOYAL,
    PENDING_LIMIT,
    SENT,
    SUPPRESSED,
)
from features.rules import TRANSACTIONAL
from features.state import FOLLOW_UP_SUFFIX, MAX_ORDERS, OrderRecord

TREATED = "treated"
# Suppressed before the hold-out draw, or never decided by the policy: in neither group. A
# trigger with no room to wait (`pending_limit`) is one or the other: a rule's delay comes
# before the draw (no channel chosen yet), quiet hours after it (the record names the
# channel chosen). Without a channel it is left out: counted as treated, the clients the
# hash holds out would join the treated.
_BEFORE_THE_DRAW = frozenset({LOYAL, CHURNED, DETRACTOR, BACKFILL, BEFORE_ENABLED,
                              PENDING_LIMIT})
_Z95 = 1.959963984540054  # the two-sided 95% point of the standard normal


@dataclass(frozen=True, slots=True)
class Occasion:
    """One automatic marketing decision as the trigger log records it."""

    client_id: str
    type: str
    key: str
    fired_at: float  # when the occasion became due (epoch seconds)
    status: str
    reason: str | None
    channel: str | None = None  # the channel chosen: the decision was past the draw



def group_of(occasion: Occasion) -> str | None:
    """`holdout`, `treated`, or None for a record in neither group: a transactional type
    (never held out), a follow-up, or a decision made before the draw.

    A deferral (quiet hours) is past the draw and not held out: treated, whatever its final
    record says (decided again when the window ends, the occasion may meet suppression
    then, `loyal` or `detractor`, which the hold-out, decided at the draw, never does)."""
    if occasion.type in TRANSACTIONAL or FOLLOW_UP_SUFFIX in occasion.key:
        return None
    if occasion.status == HOLDOUT:
        return HOLDOUT
    if occasion.status in (SENT, DEFERRED):
        return TREATED
    if occasion.status == SUPPRESSED and occasion.reason not in _BEFORE_THE_DRAW:
        return TREATED
    if occasion.reason == PENDING_LIMIT and occasion.channel:  # quiet hours: no room to wait
        return TREATED
    return None


def conversions(orders: Iterable[OrderRecord], fired_at: float, window: float
                ) -> list[OrderRecord]:
    """The purchases kept (neither cancelled nor refunded in full) placed within `window`
    seconds after `fired_at` (an order at `fired_at` itself came first: it is not a
    conversion).

    `fired_at` is read back from the trigger log, which records times to the millisecond;
    an order keeps its own time, so it is compared as the log would record it: the order
    that raised an occasion (a tier reached) is at its due time, not after it."""
    return [o for o in orders
            if is_purchase(o) and fired_at < _as_logged(o.placed_at) <= fired_at + window]


def orders_not_kept(orders: tuple[OrderRecord, ...], first_order_at: float | None
                    ) -> tuple[float, float] | None:
    """When the orders a client's state no longer keeps were placed (it keeps the latest
    MAX_ORDERS, oldest first): between its first order and the oldest kept; None when it
    keeps them all. Times as the log records them, as `conversions` compares them."""
    if len(orders) < MAX_ORDERS:
        return None
    oldest = _as_logged(orders[0].placed_at)
    return (-math.inf if first_order_at is None
            else min(_as_logged(first_order_at), oldest)), oldest


def _as_logged(seconds: float) -> float:
    """A time as the trigger log records it and a reader reads it back (milliseconds)."""
    return read_time(format_time(seconds), "placed_at")


@dataclass(frozen=True, slots=True)
class GroupTally:
    clients: int = 0
    converted: int = 0
    revenue: float = 0.0  # net money of the orders that converted them

    @property
    def rate(self) -> float | None:
        return self.converted / self.clients if self.clients else None

    @property
    def revenue_per_client(self) -> float | None:
        return self.revenue / self.clients if self.clients else None


@dataclass(frozen=True, slots=True)
class Uplift:
    """A type's two groups and what separates them: the difference of the conversion
    rates (treated less hold-out), its 95% interval and the two-sided p-value of the
    two-proportion z-test; None where a group is empty or the test has no variance."""

    type: str
    treated: GroupTally
    holdout: GroupTally
    mixed: int = 0  # clients found in both groups (the hold-out share changed): left out
    unknown: int = 0  # clients whose orders in a window are beyond those kept: left out

    @property
    def difference(self) -> float | None:
        a, b = self.treated.rate, self.holdout.rate
        return None if a is None or b is None else a - b

    @property
    def relative(self) -> float | None:
        """The difference as a share of the hold-out's rate (None when that rate is 0)."""
        difference, base = self.difference, self.holdout.rate
        return None if difference is None or not base else difference / base

    @property
    def interval(self) -> tuple[float, float] | None:
        """The difference's 95% interval (Wald, unpooled), within -1..1. Where a rate is 0
        or 1, Wald's spread for it is nothing (5 of 5 against 0 of 3 would read as exactly
        100 pp): Agresti-Caffo's then, one success and one failure added to each group."""
        a, b, difference = self.treated.rate, self.holdout.rate, self.difference
        if a is None or b is None or difference is None:
            return None
        n1, n2 = self.treated.clients, self.holdout.clients
        if a in (0.0, 1.0) or b in (0.0, 1.0):
            n1, n2 = n1 + 2, n2 + 2
            a = (self.treated.converted + 1) / n1
            b = (self.holdout.converted + 1) / n2
        centre = a - b
        spread = _Z95 * math.sqrt(a * (1 - a) / n1 + b * (1 - b) / n2)
        return max(-1.0, centre - spread), min(1.0, centre + spread)

    @property
    def p_value(self) -> float | None:
        """Two-sided, pooled two-proportion z-test of equal rates."""
        n1, n2 = self.treated.clients, self.holdout.clients
        if not n1 or not n2:
            return None
        pooled = (self.treated.converted + self.holdout.converted) / (n1 + n2)
        variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
        if variance <= 0:
            return None
        difference = self.difference
        assert difference is not None
        return math.erfc(abs(difference) / math.sqrt(variance) / math.sqrt(2))


def tally(occasions: Iterable[Occasion], orders_of: Mapping[str, tuple[OrderRecord, ...]],
          window: float, not_kept: Mapping[str, tuple[float, float]] | None = None
          ) -> dict[str, Uplift]:
    """Each type's uplift from its occasions (those in neither group are skipped) and each
    client's orders (`orders_of`; a client missing from it has none). `not_kept`: when the
    orders a client's state dropped were placed (`orders_not_kept`); a client not converted
    by the orders kept, with a window reaching into that time, may have converted: it is
    left out and counted."""
    groups: dict[tuple[str, str], set[str]] = {}
    bought: dict[tuple[str, str], dict[str, float]] = {}  # (type, client) -> order: money
    unsure: set[tuple[str, str]] = set()  # a window reaching orders no longer kept
    for occasion in occasions:
        group = group_of(occasion)
        if group is None:
            continue
        member = (occasion.type, occasion.client_id)
        groups.setdefault(member, set()).add(group)
        dropped = None if not_kept is None else not_kept.get(occasion.client_id)
        if (dropped is not None and dropped[0] <= occasion.fired_at + window
                and occasion.fired_at < dropped[1]):
            unsure.add(member)
        for order in conversions(orders_of.get(occasion.client_id, ()), occasion.fired_at,
                                 window):  # windows may overlap: an order counts once
            bought.setdefault(member, {})[order.order_id] = order.total - order.returned
    counts: dict[str, dict[str, list[float]]] = {}
    mixed: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for (kind, client), found in groups.items():
        if len(found) > 1:
            mixed[kind] = mixed.get(kind, 0) + 1
            continue
        orders = bought.get((kind, client))
        if not orders and (kind, client) in unsure:
            unknown[kind] = unknown.get(kind, 0) + 1
            continue
        (group,) = found
        row = counts.setdefault(kind, {TREATED: [0, 0, 0.0], HOLDOUT: [0, 0, 0.0]})[group]
        row[0] += 1
        if orders:
            row[1] += 1
            row[2] += sum(orders.values())
    result: dict[str, Uplift] = {}
    for kind in sorted(set(counts) | set(mixed) | set(unknown)):
        rows = counts.get(kind, {TREATED: [0, 0, 0.0], HOLDOUT: [0, 0, 0.0]})
        result[kind] = Uplift(kind, _group(rows[TREATED]), _group(rows[HOLDOUT]),
                              mixed.get(kind, 0), unknown.get(kind, 0))
    return result


def _group(row: list[float]) -> GroupTally:
    return GroupTally(int(row[0]), int(row[1]), round(row[2], 2))


def merged(parts: Iterable[Mapping[str, Uplift]]) -> dict[str, Uplift]:
    """Tallies of disjoint sets of clients (one per partition: a client's records are all
    in its partition's log) added up by type."""
    total: dict[str, Uplift] = {}
    for part in parts:
        for kind, found in part.items():
            before = total.get(kind)
            total[kind] = found if before is None else Uplift(
                kind, _added(before.treated, found.treated),
                _added(before.holdout, found.holdout), before.mixed + found.mixed,
                before.unknown + found.unknown)
    return dict(sorted(total.items()))


def _added(a: GroupTally, b: GroupTally) -> GroupTally:
    return GroupTally(a.clients + b.clients, a.converted + b.converted,
                      round(a.revenue + b.revenue, 2))
