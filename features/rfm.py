"""RFM scores (recency, frequency, monetary; 1 to 5 each) and the named RFM segments.

Only clients with at least one order that is not cancelled take part; a client without one
has no RFM scores at all. The three values of a client are:

- R: the time of the last order (epoch seconds; later is better, so scores higher),
- F: the number of orders that are not cancelled,
- M: the money of those orders, net of cancellations and refunds.

Quantile scoring (mode "quantile")
----------------------------------
Each dimension is scored against the population of clients with orders by its mid-rank
percentile, so that ties always share a score and the scores do not depend on how ties
happen to be ordered::

    less  = number of clients whose value is strictly smaller
    equal = number of clients with the same value (the client included)
    N     = number of clients with orders
    p     = (less + 0.5 * equal) / N
    score = min(5, 1 + floor(5 * p))

It is computed in integers, `min(5, 1 + (10 * less + 5 * equal) // (2 * N))`, so no float
rounding can move a client across a boundary. A population of one, and a population whose
values are all equal, score 3 (p = 0.5). In pandas, for a Series `s` of one dimension::

    p = (s.rank(method="min") - 1 + 0.5 * s.map(s.value_counts())) / len(s)
    score = numpy.minimum(5, 1 + numpy.floor(5 * p))   # up to float rounding at exact k/5

Recency is scored on the last-order time itself rather than on "days since", so an R score
does not change while time passes: it only moves when the population moves.

Because p grows with the value, a dimension's scoring function is four cut values:
`score(v) = 1 + #{k in 1..4 : cut_k <= v}` where `cut_k` is the smallest population value
with `5 * p >= k` (math.inf when there is none). `quantile_cuts` computes them exactly from a
sorted population; `sinks.rfm_index` finds the same cuts with rank lookups in Redis. A value
that is not in the population (a client scored against a model computed a while ago) is
scored by the same cuts. A model computed over an empty population has only infinite cuts,
and scores every client 1.

Fixed scoring (mode "fixed")
----------------------------
Operator thresholds instead of quantiles (`FixedThresholds`): recency in days since the last
order, descending (e.g. (365, 180, 90, 30): at most 30 days -> 5, at most 90 -> 4, at most
180 -> 3, at most 365 -> 2, else 1); orders and money ascending (e.g. orders (2, 3, 5, 10):
at least 10 -> 5, at least 5 -> 4, at least 3 -> 3, at least 2 -> 2, else 1). Here R does
drop as time passes; `next_score_change` says when.

Named segments
--------------
`rfm_segment(r, f, m)` names the cell of R against FM, where FM = the F and M scores
combined, round half up of their mean: `(f + m + 1) // 2`. Each segment claims the cells of
the usual practitioner table; where claims overlap, the first segment in this order of
precedence wins (narrow claims before broad ones):

    champions        R4-5 FM4-5      hibernating          R1-2 FM1-2
    cant_lose_them   R1   FM4-5      at_risk              R1-2 FM2-5
    lost             R1   FM1        about_to_sleep       R2-3 FM1-2
    new              R4-5 FM1        need_attention       R2-3 FM2-3
    promising        R3-4 FM1        potential_loyalist   R3-5 FM1-3
                                     loyal                R2-5 FM3-5

The resulting grid (every cell is named exactly once, all 11 segments occur)::

    R\\FM  1               2                   3                   4               5
    5     new             potential_loyalist  potential_loyalist  champions       champions
    4     new             potential_loyalist  potential_loyalist  champions       champions
    3     promising       about_to_sleep      need_attention      loyal           loyal
    2     hibernating     hibernating         at_risk             at_risk         at_risk
    1     lost            hibernating         at_risk             cant_lose_them  cant_lose_them
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from features.rules import DAY

RfmMode: TypeAlias = Literal["quantile", "fixed"]
MODES: tuple[RfmMode, ...] = ("quantile", "fixed")

Cuts: TypeAlias = tuple[float, float, float, float]
# No cut is ever reached: every value scores 1 (an empty population, or fixed mode).
NO_CUTS: Cuts = (math.inf, math.inf, math.inf, math.inf)

_FIELD = "segments.rfm.fixed"
_FORMAT = 1  # version of the stored model record


def quantile_cuts(sorted_values: Sequence[float]) -> Cuts:
    """The four cuts of the mid-rank scoring of `sorted_values` (ascending, ties allowed).

    One pass over runs of equal values: the running `less` and the run length `equal` give
    each distinct value its mid-rank, which only grows, so each k takes the first value
    that reaches it. Integer comparison (10*less + 5*equal >= 2*k*N) keeps it exact.
    """
    n = len(sorted_values)
    cuts = list(NO_CUTS)
    k = 1
    i = 0
    while i < n and k <= 4:
        value = sorted_values[i]
        j = i + 1
        while j < n and sorted_values[j] == value:
            j += 1
        if j < n and sorted_values[j] < value:
            raise ValueError("quantile_cuts needs values in ascending order")
        less, equal = i, j - i
        while k <= 4 and 10 * less + 5 * equal >= 2 * k * n:
            cuts[k - 1] = float(value)
            k += 1
        i = j
    return cuts[0], cuts[1], cuts[2], cuts[3]


def score(value: float, cuts: Sequence[float]) -> int:
    """1 plus the number of cuts at or below `value` (cuts ascending, so a bisection)."""
    return 1 + bisect_right(cuts, value)


def _four(name: str, values: object, order: str) -> tuple[float, float, float, float]:
    """Four finite, strictly monotone numbers; strict, so each score 1..5 is reachable."""
    try:
        numbers = tuple(float(v) for v in values)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"{_FIELD}.{name}: expected 4 numbers, got {values!r}") from None
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{_FIELD}.{name}: expected 4 finite numbers, got {values!r}")
    pairs = zip(numbers, numbers[1:], strict=False)
    monotone = (all(a > b for a, b in pairs) if order == "descending"
                else all(a < b for a, b in pairs))
    if not monotone:
        raise ValueError(f"{_FIELD}.{name}: the 4 thresholds must be strictly {order}, "
                         f"got {values!r}")
    return numbers[0], numbers[1], numbers[2], numbers[3]


@dataclass(frozen=True, slots=True)
class FixedThresholds:
    """Operator thresholds for mode "fixed" (see the module docstring for their meaning).

    Validated here, so a bad configuration fails at start-up with the field named rather
    than producing scores that skip a level.
    """

    recency_days: tuple[float, float, float, float] = (365.0, 180.0, 90.0, 30.0)
    frequency: tuple[float, float, float, float] = (2.0, 3.0, 5.0, 10.0)
    monetary: tuple[float, float, float, float] = (100.0, 250.0, 500.0, 1000.0)

    def __post_init__(self) -> None:
        recency = _four("recency_days", self.recency_days, "descending")
        if recency[-1] < 0:
            raise ValueError(f"{_FIELD}.recency_days: days cannot be negative, "
                             f"got {self.recency_days!r}")
        object.__setattr__(self, "recency_days", recency)
        object.__setattr__(self, "frequency", _four("frequency", self.frequency, "ascending"))
        object.__setattr__(self, "monetary", _four("monetary", self.monetary, "ascending"))


def fixed_thresholds(recency_days: object, frequency: object, monetary: object
                     ) -> FixedThresholds:
    """FixedThresholds from untrusted values (a config file's lists, a stored record).

    Checked before they reach the class: the compiled core (crmflow/compile_core.py)
    refuses a value of the wrong type (a list, three numbers) with a TypeError at the
    constructor, before `__post_init__` could name the field.
    """
    return FixedThresholds(_four("recency_days", recency_days, "descending"),
                           _four("frequency", frequency, "ascending"),
                           _four("monetary", monetary, "ascending"))


def _cuts(name: str, values: Any) -> Cuts:
    """Cuts as stored: 4 ascending numbers, +inf allowed (never NaN or -inf)."""
    if not isinstance(values, list | tuple) or len(values) != 4:
        raise ValueError(f"rfm model: {name}: expected 4 cut values, got {values!r}")
    cuts: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"rfm model: {name}: not a number: {value!r}")
        number = float(value)
        if math.isnan(number) or number == -math.inf:
            raise ValueError(f"rfm model: {name}: invalid cut {value!r}")
        cuts.append(number)
    if any(a > b for a, b in zip(cuts, cuts[1:], strict=False)):
        raise ValueError(f"rfm model: {name}: cuts must be ascending, got {values!r}")
    return cuts[0], cuts[1], cuts[2], cuts[3]


@dataclass(frozen=True, slots=True)
class RfmModel:
    """How to turn a client's R, F and M values into scores, as of `computed_at`.

    A snapshot of the population (quantile cuts) or the operator's thresholds (fixed); it
    is computed periodically and shared, so scoring a client is a few comparisons.
    In mode "quantile" the recency cuts are last-order times. `population` is the number of
    clients with orders when the model was computed.
    """

    mode: RfmMode
    computed_at: float
    population: int
    recency_cuts: Cuts = NO_CUTS
    frequency_cuts: Cuts = NO_CUTS
    monetary_cuts: Cuts = NO_CUTS
    fixed: FixedThresholds | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"rfm model: mode: expected one of {MODES}, got {self.mode!r}")
        if self.mode == "fixed" and self.fixed is None:
            raise ValueError("rfm model: fixed: mode 'fixed' needs thresholds")
        if not math.isfinite(self.computed_at):
            raise ValueError(f"rfm model: computed_at: not a finite time: {self.computed_at!r}")
        if self.population < 0:
            raise ValueError(f"rfm model: population: negative: {self.population!r}")
        for name in ("recency_cuts", "frequency_cuts", "monetary_cuts"):
            object.__setattr__(self, name, _cuts(name, getattr(self, name)))

    @property
    def empty(self) -> bool:
        """Quintiles of no buyers: scoring with it would call everybody "lost"."""
        return self.mode == "quantile" and self.population == 0


def rfm_scores(model: RfmModel, last_order_at: float | None, orders_count: int,
               monetary: float, now: float) -> tuple[int, int, int] | None:
    """(R, F, M) scores 1..5, or None for a client without orders (no RFM at all).

    `now` matters only in mode "fixed", where recency is days since the last order.
    """
    if last_order_at is None or orders_count < 1:
        return None
    if model.mode == "fixed":
        assert model.fixed is not None  # checked by RfmModel
        fixed = model.fixed
        r = 1 + sum(1 for days in fixed.recency_days if now <= last_order_at + days * DAY)
        return r, score(orders_count, fixed.frequency), score(monetary, fixed.monetary)
    return (score(last_order_at, model.recency_cuts), score(orders_count, model.frequency_cuts),
            score(monetary, model.monetary_cuts))


def next_score_change(model: RfmModel, last_order_at: float | None, now: float) -> float | None:
    """The first moment after `now` at which the R score drops with time alone, or None.

    In mode "fixed", R is at least 5 - k while `now <= last_order_at + days_k * DAY`, so it
    drops at the first float after the nearest boundary still ahead (the returned moment
    already scores lower; the instant before it does not). In mode "quantile" R is scored on
    the last-order time, so time alone never changes it: None, as for a client whose R is
    already 1 or who has no orders.
    """
    if model.mode != "fixed" or last_order_at is None:
        return None
    assert model.fixed is not None
    ahead = [last_order_at + days * DAY for days in model.fixed.recency_days
             if now <= last_order_at + days * DAY]
    return math.nextafter(min(ahead), math.inf) if ahead else None


def _encode_cuts(cuts: Cuts) -> list[float | None]:
    # JSON has no infinity; null means "never reached" (the only non-finite cut there is).
    return [None if math.isinf(c) else c for c in cuts]


def to_json(model: RfmModel) -> bytes:
    """The stored form: strict JSON (no NaN/Infinity tokens), readable by any consumer."""
    record: dict[str, Any] = {
        "v": _FORMAT,
        "mode": model.mode,
        "computed_at": model.computed_at,
        "population": model.population,
        "recency_cuts": _encode_cuts(model.recency_cuts),
        "frequency_cuts": _encode_cuts(model.frequency_cuts),
        "monetary_cuts": _encode_cuts(model.monetary_cuts),
        "fixed": None if model.fixed is None else {
            "recency_days": list(model.fixed.recency_days),
            "frequency": list(model.fixed.frequency),
            "monetary": list(model.fixed.monetary),
        },
    }
    return json.dumps(record, allow_nan=False, separators=(",", ":")).encode()


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"rfm model: {name}: not a number: {value!r}")
    return float(value)


def _decode_cuts(name: str, values: Any) -> Cuts:
    if not isinstance(values, list):
        raise ValueError(f"rfm model: {name}: expected a list, got {values!r}")
    return _cuts(name, [math.inf if v is None else _number(name, v) for v in values])


def model_from_json(data: bytes | str) -> RfmModel:
    """Parse `to_json`'s output; anything else raises ValueError naming the field."""
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"rfm model: not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError("rfm model: expected a JSON object")
    if record.get("v") != _FORMAT:
        raise ValueError(f"rfm model: v: unknown format {record.get('v')!r}")
    for name in ("mode", "computed_at", "population", "recency_cuts", "frequency_cuts",
                 "monetary_cuts", "fixed"):
        if name not in record:
            raise ValueError(f"rfm model: {name}: missing")
    population = record["population"]
    if isinstance(population, bool) or not isinstance(population, int):
        raise ValueError(f"rfm model: population: not an integer: {population!r}")
    fixed: FixedThresholds | None = None
    raw_fixed = record["fixed"]
    if raw_fixed is not None:
        if not isinstance(raw_fixed, dict):
            raise ValueError(f"rfm model: fixed: expected an object, got {raw_fixed!r}")
        try:
            fixed = fixed_thresholds(raw_fixed["recency_days"], raw_fixed["frequency"],
                                     raw_fixed["monetary"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"rfm model: fixed: malformed thresholds: {exc}") from None
    cuts = {name: _decode_cuts(name, record[name])
            for name in ("recency_cuts", "frequency_cuts", "monetary_cuts")}
    return RfmModel(mode=record["mode"], computed_at=_number("computed_at", record["computed_at"]),
                    population=population, recency_cuts=cuts["recency_cuts"],
                    frequency_cuts=cuts["frequency_cuts"], monetary_cuts=cuts["monetary_cuts"],
                    fixed=fixed)


# Segments -------------------------------------------------------------------------------

RFM_SEGMENTS: tuple[tuple[str, str], ...] = (
    ("champions", "Champions"),
    ("loyal", "Loyal"),
    ("potential_loyalist", "Potential Loyalist"),
    ("new", "New"),
    ("promising", "Promising"),
    ("need_attention", "Need Attention"),
    ("about_to_sleep", "About to Sleep"),
    ("at_risk", "At Risk"),
    ("cant_lose_them", "Can't Lose Them"),
    ("hibernating", "Hibernating"),
    ("lost", "Lost"),
)


@dataclass(frozen=True, slots=True)
class _Claim:
    slug: str
    r: tuple[int, int]  # inclusive range
    fm: tuple[int, int]

    def covers(self, r: int, fm: int) -> bool:
        return self.r[0] <= r <= self.r[1] and self.fm[0] <= fm <= self.fm[1]


# The practitioner table, in order of precedence: the first claim covering a cell names it.
SEGMENT_PRECEDENCE: tuple[_Claim, ...] = (
    _Claim("champions", (4, 5), (4, 5)),
    _Claim("cant_lose_them", (1, 1), (4, 5)),
    _Claim("lost", (1, 1), (1, 1)),
    _Claim("new", (4, 5), (1, 1)),
    _Claim("promising", (3, 4), (1, 1)),
    _Claim("hibernating", (1, 2), (1, 2)),
    _Claim("at_risk", (1, 2), (2, 5)),
    _Claim("about_to_sleep", (2, 3), (1, 2)),
    _Claim("need_attention", (2, 3), (2, 3)),
    _Claim("potential_loyalist", (3, 5), (1, 3)),
    _Claim("loyal", (2, 5), (3, 5)),
)


def _build_grid() -> dict[tuple[int, int], str]:
    grid: dict[tuple[int, int], str] = {}
    for r in range(1, 6):
        for fm in range(1, 6):
            grid[(r, fm)] = next(c.slug for c in SEGMENT_PRECEDENCE if c.covers(r, fm))
    return grid


# (R, FM) -> slug, resolved once: segment lookups are a dict access.
SEGMENT_GRID: dict[tuple[int, int], str] = _build_grid()


def fm_score(f: int, m: int) -> int:
    """F and M combined: the mean, rounded half up (so (4, 5) counts as 5, (1, 2) as 2)."""
    return (f + m + 1) // 2


def rfm_segment(r: int, f: int, m: int) -> str:
    """The named segment (a slug of RFM_SEGMENTS) of scores r, f, m, each 1..5."""
    for name, value in (("r", r), ("f", f), ("m", m)):
        if not isinstance(value, int) or not 1 <= value <= 5:
            raise ValueError(f"rfm_segment: {name} must be an integer 1..5, got {value!r}")
    return SEGMENT_GRID[(r, fm_score(f, m))]
