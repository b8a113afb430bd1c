"""RFM scoring and segments: the cuts against the brute-force mid-rank definition, fixed
thresholds, recency timers, the stored form, and the segment grid."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import features
from features.rfm import (
    NO_CUTS,
    RFM_SEGMENTS,
    SEGMENT_GRID,
    SEGMENT_PRECEDENCE,
    FixedThresholds,
    RfmModel,
    fixed_thresholds,
    fm_score,
    model_from_json,
    next_score_change,
    quantile_cuts,
    rfm_scores,
    rfm_segment,
    score,
    to_json,
)
from features.rules import DAY, SegmentRules
from features.segments import memberships
from features.values import FEATURES, Context
from tests.core_events import T0, order, state_of

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

SLUGS = [slug for slug, _ in RFM_SEGMENTS]
FIXED_LISTS: dict[str, object] = {"recency_days": [365, 180, 90, 30],
                                  "frequency": [2, 3, 5, 10], "monetary": [100, 250, 500, 1000]}


def brute_force(population: Sequence[float], value: float) -> int:
    """The definition, literally, in exact rational arithmetic."""
    n = len(population)
    less = sum(1 for v in population if v < value)
    equal = sum(1 for v in population if v == value)
    p = (Fraction(less) + Fraction(equal, 2)) / n
    return min(5, 1 + math.floor(5 * p))


def check_population(population: Sequence[float]) -> None:
    cuts = quantile_cuts(sorted(population))
    assert list(cuts) == sorted(cuts)
    for value in population:
        assert score(value, cuts) == brute_force(population, value), (population, value)
    # Each finite cut is a population value, the smallest reaching its level.
    for k, cut in enumerate(cuts, start=1):
        reaching = [v for v in population if brute_force(population, v) > k]
        assert cut == (min(reaching) if reaching else math.inf)


many_ties = st.lists(st.integers(0, 6), min_size=1, max_size=60)
tiny = st.lists(st.integers(-3, 3), min_size=1, max_size=3)
spread = st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(st.one_of(many_ties, tiny, spread))
def test_cuts_and_score_equal_the_mid_rank_definition(population: list[float]) -> None:
    check_population(population)


@settings(max_examples=100, deadline=None)
@given(st.floats(-1e12, 1e12, allow_nan=False), st.integers(1, 50))
def test_an_all_equal_population_scores_three(value: float, n: int) -> None:
    cuts = quantile_cuts([value] * n)
    assert score(value, cuts) == 3


@pytest.mark.parametrize(("population", "scores"), [
    ([7.0], [3]),
    ([1.0, 2.0], [2, 4]),
    ([1.0, 2.0, 3.0], [1, 3, 5]),
    ([1.0, 1.0, 2.0], [2, 5]),
    ([1.0, 2.0, 3.0, 4.0, 5.0], [1, 2, 3, 4, 5]),
    ([float(i) for i in range(10)], [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]),
])
def test_small_populations(population: list[float], scores: list[int]) -> None:
    cuts = quantile_cuts(population)
    assert [score(v, cuts) for v in sorted(set(population))] == scores
    check_population(population)


def test_empty_population_and_unsorted_input() -> None:
    assert quantile_cuts([]) == NO_CUTS
    assert score(123.0, NO_CUTS) == 1
    with pytest.raises(ValueError, match="ascending"):
        quantile_cuts([2.0, 1.0])


def test_values_outside_the_population_use_the_same_cuts() -> None:
    cuts = quantile_cuts([10.0, 20.0, 30.0, 40.0, 50.0])  # (20, 30, 40, 50)
    assert [score(v, cuts) for v in (-1e9, 15.0, 20.0, 35.0, 1e9)] == [1, 1, 2, 3, 5]


def test_quantile_scores_use_the_last_order_time_and_ignore_now() -> None:
    times = [1000.0, 2000.0, 3000.0, 4000.0, 5000.0]
    orders = [1.0, 1.0, 2.0, 5.0, 9.0]
    money = [10.0, 50.0, 50.0, 70.0, 900.0]
    model = RfmModel("quantile", 6000.0, 5, quantile_cuts(times), quantile_cuts(orders),
                     quantile_cuts(money))
    assert rfm_scores(model, 5000.0, 9, 900.0, now=6000.0) == (5, 5, 5)
    assert rfm_scores(model, 5000.0, 9, 900.0, now=1e12) == (5, 5, 5)
    assert rfm_scores(model, 1000.0, 1, 10.0, now=6000.0) == (1, 2, 1)
    assert rfm_scores(model, 3000.0, 2, 50.0, now=6000.0) == (3, 3, 3)
    assert rfm_scores(model, None, 0, 0.0, now=6000.0) is None
    assert rfm_scores(model, 3000.0, 0, 0.0, now=6000.0) is None
    assert next_score_change(model, 3000.0, 6000.0) is None


FIXED = FixedThresholds((365, 180, 90, 30), (2, 3, 5, 10), (100, 250, 500, 1000))
FIXED_MODEL = RfmModel("fixed", 0.0, 0, fixed=FIXED)


def test_fixed_thresholds() -> None:
    last = 1_700_000_000.0
    r = [rfm_scores(FIXED_MODEL, last, 1, 0.0, last + days * DAY)[0]  # type: ignore[index]
         for days in (-5, 0, 30, 30.5, 90, 91, 180, 181, 365, 366, 5000)]
    assert r == [5, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    f = [score(n, FIXED.frequency) for n in (1, 2, 3, 4, 5, 9, 10, 400)]
    assert f == [1, 2, 3, 3, 4, 4, 5, 5]
    m = [score(x, FIXED.monetary) for x in (-20, 99.99, 100, 250, 499, 500, 1000, 1e9)]
    assert m == [1, 1, 2, 3, 3, 4, 5, 5]
    assert rfm_scores(FIXED_MODEL, last, 10, 250.0, last + 100 * DAY) == (3, 5, 3)
    assert FixedThresholds() == FIXED
    assert fixed_thresholds(**FIXED_LISTS) == FIXED  # lists of ints, as from a config file


@settings(max_examples=300, deadline=None)
@given(st.floats(1e9, 2e9, allow_nan=False), st.floats(-10 * DAY, 400 * DAY, allow_nan=False))
def test_next_score_change_is_the_exact_first_moment_r_drops(last: float, elapsed: float) -> None:
    now = last + elapsed

    def r_at(t: float) -> int:
        scores = rfm_scores(FIXED_MODEL, last, 1, 0.0, t)
        assert scores is not None
        return scores[0]

    change = next_score_change(FIXED_MODEL, last, now)
    if change is None:
        assert r_at(now) == 1 and r_at(now + 1e6 * DAY) == 1
        return
    assert change > now
    assert r_at(change) == r_at(now) - 1
    assert r_at(math.nextafter(change, -math.inf)) == r_at(now)
    assert math.nextafter(change, -math.inf) in {last + d * DAY for d in FIXED.recency_days}


def test_next_score_change_walks_the_thresholds() -> None:
    last = 1_000_000.0
    moments = []
    now = last
    while (change := next_score_change(FIXED_MODEL, last, now)) is not None:
        moments.append(change)
        now = change
    assert [math.nextafter(m, -math.inf) for m in moments] == [
        last + d * DAY for d in (30, 90, 180, 365)]
    assert next_score_change(FIXED_MODEL, None, now) is None


@pytest.mark.parametrize("model", [
    RfmModel("quantile", 1.5, 0),
    RfmModel("quantile", 1_700_000_000.25, 7, (1.0, 2.0, math.inf, math.inf),
             (1.0, 1.0, 3.0, 8.0), (-5.5, 0.0, 12.25, 1e300)),
    FIXED_MODEL,
    RfmModel("fixed", 3.0, 12, fixed=FixedThresholds((400, 200, 50, 0), (1.5, 2, 3, 4),
                                                     (-10, 0, 10, 20))),
])
def test_json_round_trip(model: RfmModel) -> None:
    data = to_json(model)
    assert b"Infinity" not in data and b"NaN" not in data
    json.loads(data)  # strict JSON
    assert model_from_json(data) == model
    assert model_from_json(data.decode()) == model


def _record(**changes: object) -> bytes:
    record = json.loads(to_json(RfmModel("quantile", 1.0, 3, (1.0, 2.0, 3.0, math.inf))))
    record.update(changes)
    return json.dumps(record).encode()


@pytest.mark.parametrize(("data", "field"), [
    (b"not json", "not JSON"),
    (b"[1]", "object"),
    (_record(v=9), "v"),
    (_record(mode="median"), "mode"),
    (_record(computed_at="yesterday"), "computed_at"),
    (_record(population=2.5), "population"),
    (_record(population=-1), "population"),
    (_record(recency_cuts=[1, 2, 3]), "recency_cuts"),
    (_record(frequency_cuts="1,2,3,4"), "frequency_cuts"),
    (_record(monetary_cuts=[4, 3, 2, 1]), "monetary_cuts"),
    (_record(monetary_cuts=[1, 2, "x", 4]), "monetary_cuts"),
    (_record(mode="fixed"), "fixed"),
    (_record(mode="fixed", fixed={"recency_days": [1, 2, 3, 4], "frequency": [1, 2, 3, 4],
                                  "monetary": [1, 2, 3, 4]}), "recency_days"),
    (_record(fixed={"frequency": [1, 2, 3, 4]}), "fixed"),
])
def test_a_bad_record_names_the_field(data: bytes, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        model_from_json(data)
    missing = json.loads(_record())
    del missing["population"]
    with pytest.raises(ValueError, match="population: missing"):
        model_from_json(json.dumps(missing))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"frequency": (3, 2, 5, 10)}, "segments.rfm.fixed.frequency: "),
    ({"frequency": (2, 2, 5, 10)}, "segments.rfm.fixed.frequency: "),
    ({"frequency": (2, 3, 5)}, "segments.rfm.fixed.frequency: "),
    ({"monetary": (1, 2, 3, math.inf)}, "segments.rfm.fixed.monetary: "),
    ({"monetary": ("a", 2, 3, 4)}, "segments.rfm.fixed.monetary: "),
    ({"recency_days": (30, 90, 180, 365)}, "segments.rfm.fixed.recency_days: "),
    ({"recency_days": (365, 180, 90, -1)}, "segments.rfm.fixed.recency_days: "),
])
def test_fixed_threshold_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        fixed_thresholds(**{**FIXED_LISTS, **kwargs})


def test_model_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        RfmModel("median", 0.0, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fixed"):
        RfmModel("fixed", 0.0, 0)
    with pytest.raises(ValueError, match="recency_cuts"):
        RfmModel("quantile", 0.0, 1, (2.0, 1.0, 3.0, 4.0))
    with pytest.raises(ValueError, match="computed_at"):
        RfmModel("quantile", math.nan, 1)


def test_every_score_triple_has_exactly_one_segment_and_all_are_reachable() -> None:
    assert len(RFM_SEGMENTS) == 11 and len(set(SLUGS)) == 11
    assert {c.slug for c in SEGMENT_PRECEDENCE} == set(SLUGS)
    seen = set()
    for r in range(1, 6):
        for f in range(1, 6):
            for m in range(1, 6):
                slug = rfm_segment(r, f, m)
                assert slug in SLUGS
                seen.add(slug)
                # The cell lies inside its segment's practitioner range.
                claim = next(c for c in SEGMENT_PRECEDENCE if c.slug == slug)
                assert claim.covers(r, fm_score(f, m))
    assert seen == set(SLUGS)
    assert sorted(SEGMENT_GRID) == [(r, fm) for r in range(1, 6) for fm in range(1, 6)]


def test_segment_examples() -> None:
    assert rfm_segment(5, 5, 5) == "champions"
    assert rfm_segment(5, 1, 1) == "new"
    assert rfm_segment(1, 1, 1) == "lost"
    assert rfm_segment(1, 5, 4) == "cant_lose_them"  # FM = 4.5 -> 5
    assert rfm_segment(3, 1, 2) == "about_to_sleep"  # FM = 1.5 -> 2
    assert rfm_segment(2, 5, 5) == "at_risk"
    assert rfm_segment(3, 5, 3) == "loyal"
    assert dict(RFM_SEGMENTS)["cant_lose_them"] == "Can't Lose Them"
    for bad in ((0, 1, 1), (1, 6, 1), (1, 1, -3)):
        with pytest.raises(ValueError, match="1..5"):
            rfm_segment(*bad)


def test_the_docstring_grid_is_the_grid() -> None:
    # From the source: a compiled module (crmflow/compile_core.py) keeps no docstring.
    source = Path(features.__file__).with_name("rfm.py")
    doc = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8")))
    assert doc is not None
    rows = re.findall(r"^\s+([1-5])\s+(\w+)\s+(\w+)\s+(\w+)\s+(\w+)\s+(\w+)\s*$", doc, re.M)
    assert len(rows) == 5
    printed = {(int(row[0]), fm): row[fm] for row in rows for fm in range(1, 6)}
    assert printed == SEGMENT_GRID


def test_an_empty_quantile_model_scores_nobody() -> None:
    """Before the first re-score the stored model holds quintiles of no buyers: scoring
    with it called every buyer 1/1/1 "lost" in `crmflow export`, while the API, which
    skips an empty model, showed none. Now no consumer scores with it."""
    state = state_of(order(0, "o1", 30.0))
    empty = RfmModel(mode="quantile", computed_at=T0, population=0)
    assert empty.empty
    rules = SegmentRules(rfm_model=empty)
    context = Context(state, T0 + DAY, rules)
    assert [FEATURES[name].get(context) for name in ("rfm_r", "rfm_f", "rfm_m",
                                                     "rfm_segment")] == [None] * 4
    assert not any(name.startswith("rfm:") for name in memberships(state, T0 + DAY, rules))
