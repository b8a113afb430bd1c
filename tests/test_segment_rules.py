"""The segment rule language: grammar, semantics, stage bands and exact change times."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.segment_rules import (
    FeatureKind,
    RuleError,
    SegmentCatalog,
    compile_rule,
    compile_segments,
)

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

DAY = 86400.0
NOW = 1_717_200_000.0  # 2024-06-01T00:00:00Z

FEATURES = {
    "orders_count": FeatureKind.NUMBER,
    "monetary_365d": FeatureKind.NUMBER,
    "orders_30d": FeatureKind.NUMBER,
    "tenure_days": FeatureKind.NUMBER,
    "loyalty_tier": FeatureKind.TEXT,
    "lifecycle_stage": FeatureKind.TEXT,
    "last_order_at": FeatureKind.TIME,
    "first_seen_at": FeatureKind.TIME,
    "is_subscribed": FeatureKind.BOOL,
}


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class DictFacts:
    """Facts backed by dicts; linear features and date traits are computed from `now`."""

    now: float = NOW
    values: dict[str, object] = field(default_factory=dict)
    lines: dict[str, tuple[float, float]] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    categories: dict[tuple[str, str], float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)

    def value(self, name: str) -> object | None:
        if name in self.lines:
            anchor, unit = self.lines[name]
            return (self.now - anchor) / unit
        if name in self.times:
            return self.times[name]
        return self.values.get(name)

    def linear(self, name: str) -> tuple[float, float] | None:
        return self.lines.get(name)

    def next_change(self, name: str) -> float | None:
        return self.steps.get(name)

    def category_time(self, category: str, kind: str) -> float | None:
        return self.categories.get((category, kind))

    def time_of(self, name: str) -> float | None:
        if name in self.times:
            return self.times[name]
        raw = self.values.get(name)
        if isinstance(raw, str):
            try:
                return ts(raw[:10])
            except ValueError:
                return None
        return None

    def at(self, t: float) -> DictFacts:
        return replace(self, now=t)


def holds(rule: str, facts: DictFacts | None = None, **values: object) -> bool:
    facts = facts or DictFacts()
    if values:
        facts = replace(facts, values={**facts.values, **values})
    return compile_rule(rule, FEATURES).evaluate(facts)


def change(rule: str, facts: DictFacts) -> float | None:
    return compile_rule(rule, FEATURES).next_change(facts)


def rejects(rule: str, *fragments: str) -> str:
    with pytest.raises(RuleError) as caught:
        compile_segments({"s": {"rule": rule}}, FEATURES)
    message = str(caught.value)
    assert message.startswith("segments.s.rule: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def catalog(segments: dict[str, Any]) -> SegmentCatalog:
    return compile_segments(segments, FEATURES)


# --- grammar and operators -----------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "expected"), [
    # values: orders_count=1, monetary_365d=100, loyalty_tier="gold", is_subscribed=True
    ("orders_count == 1 or orders_count == 5 and monetary_365d > 1000", True),  # and first
    ("(orders_count == 1 or orders_count == 5) and monetary_365d > 1000", False),
    ("not orders_count == 1 and monetary_365d > 1000", False),  # (not a) and b
    ("not orders_count == 1 or monetary_365d == 100", True),  # (not a) or b
    ("not (orders_count == 2 or monetary_365d == 100)", False),
    ("not not is_subscribed", True),
    ("is_subscribed and not loyalty_tier == 'silver'", True),
    ("((((orders_count == 1))))", True),
    ("(orders_count==1)and(monetary_365d>99)", True),  # whitespace is free
    ("orders_count == 1 and\n  monetary_365d > 99", True),
])
def test_precedence_and_parentheses(rule: str, expected: bool) -> None:
    facts = DictFacts(values={"orders_count": 1, "monetary_365d": 100, "loyalty_tier": "gold",
                              "is_subscribed": True})
    assert holds(rule, facts) is expected


MIRROR = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@pytest.mark.parametrize(("op", "results"), [
    ("==", (False, True, False)),
    ("!=", (True, False, True)),
    ("<", (True, False, False)),
    ("<=", (True, True, False)),
    (">", (False, False, True)),
    (">=", (False, True, True)),
])
def test_every_operator(op: str, results: tuple[bool, bool, bool]) -> None:
    for value, expected in zip((1, 2, 3), results, strict=True):
        assert holds(f"orders_count {op} 2", orders_count=value) is expected
        assert holds(f"2 {MIRROR[op]} orders_count", orders_count=value) is expected
        assert holds(f"loyalty_tier {op} 'b'", loyalty_tier="abc"[value - 1]) is expected
    assert holds("orders_count >= -1.5", orders_count=-1.5)
    assert holds("orders_count < monetary_365d", orders_count=1, monetary_365d=2)


def test_literal_on_the_left() -> None:
    assert holds("2 < orders_count", orders_count=3)
    assert not holds("2 < orders_count", orders_count=2)
    assert holds('"gold" == loyalty_tier', loyalty_tier="gold")


def test_strings_escapes_and_quotes() -> None:
    assert holds(r'loyalty_tier == "say \"hi\""', loyalty_tier='say "hi"')
    assert holds(r"loyalty_tier == 'it\'s'", loyalty_tier="it's")
    assert holds(r"loyalty_tier == 'a\\b'", loyalty_tier="a\\b")


def test_in_and_not_in() -> None:
    rule = 'loyalty_tier in ["gold", "platinum"]'
    assert holds(rule, loyalty_tier="gold")
    assert not holds(rule, loyalty_tier="silver")
    assert not holds(rule)  # unknown
    rule = 'loyalty_tier not in ["gold", "platinum"]'
    assert holds(rule, loyalty_tier="silver")
    assert not holds(rule, loyalty_tier="platinum")
    assert not holds(rule)  # null compares false
    assert holds("orders_count in [1, 2, 3]", orders_count=2)
    assert holds("orders_count in [1, null]")  # a null item matches an unknown value
    assert not holds("orders_count not in [1, null]")
    assert holds("orders_count not in [1, null]", orders_count=2)
    facts = DictFacts(values={"traits.size": "41"})
    assert holds("traits.size in [40, 41]", facts)
    assert holds('traits.size in ["41.0"]', facts)


def test_null_semantics() -> None:
    assert holds("orders_count == null")
    assert not holds("orders_count != null")
    assert holds("orders_count != null", orders_count=0)
    assert holds("null == orders_count")
    for rule in ("orders_count > 1", "orders_count < 1", "orders_count == 1",
                 "orders_count != 1", "loyalty_tier == 'gold'", "orders_count == monetary_365d"):
        assert not holds(rule), rule
    assert holds("not orders_count == 1")  # unknown: the comparison is false, not is true
    assert holds("null == null")
    assert not holds("null != null")
    assert holds("last_order_at == null")
    assert holds("last_order_at != null", DictFacts(times={"last_order_at": NOW}))
    assert not holds("days_since(last_order_at) > 0")
    assert holds("not days_since(last_order_at) > 0")


def test_bool_features_and_traits_as_conditions() -> None:
    assert holds("is_subscribed", is_subscribed=True)
    assert not holds("is_subscribed", is_subscribed=False)
    assert not holds("is_subscribed")
    assert holds("is_subscribed == false", is_subscribed=False)
    facts = DictFacts(values={"traits.vip": "TRUE", "traits.unsubscribed": True})
    assert holds("traits.vip", facts)
    assert holds("traits.unsubscribed == true", facts)
    assert holds("traits.vip == true", facts)
    assert not holds("traits.missing", facts)
    assert holds("not traits.missing == true", facts)


def test_numeric_strings_in_traits() -> None:
    facts = DictFacts(values={"traits.age": "42", "traits.zip": "01234", "traits.name": "abc",
                              "traits.score": 7})
    assert holds("traits.age > 40", facts)
    assert holds("traits.age == 42", facts)
    assert holds("traits.age == '42.0'", facts)  # both parse as numbers
    assert holds("traits.zip == 1234", facts)
    assert holds("traits.score > '6'", facts)
    assert holds("traits.age < orders_count", facts, orders_count=100)
    assert holds("traits.name == 'abc'", facts)
    assert holds("traits.name > 'abb'", facts)  # text compares as text
    for rule in ("traits.name > 1", "traits.name == 1", "traits.name != 1", "traits.age == true"):
        assert not holds(rule, facts), rule  # incomparable: false
    # U+001C-U+001F are whitespace to a regular expression but not to float(): such a
    # trait (ingest takes it) is text, not a crash of the dataflow's batch
    for odd in ("\x1c5", "5\x1f", "\x1d5\x1e"):
        odd_facts = DictFacts(values={"traits.score": odd})
        assert not holds("traits.score > 3", odd_facts), repr(odd)
        assert not holds("traits.score == 5", odd_facts), repr(odd)  # incomparable


def test_has() -> None:
    facts = DictFacts(values={"traits.email": "a@b.c", "traits.phone": "", "orders_count": 0},
                      times={"last_order_at": NOW - DAY})
    assert holds("has(traits.email)", facts)
    assert not holds("has(traits.phone)", facts)  # empty string counts as missing
    assert not holds("has(traits.fax)", facts)
    assert holds("has(orders_count)", facts)
    assert not holds("has(monetary_365d)", facts)
    assert holds("has(last_order_at)", facts)
    assert not holds("has(first_seen_at)", facts)


# --- category predicates -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["viewed", "carted", "bought"])
def test_category_windows_are_inclusive(kind: str) -> None:
    t = NOW - 30 * DAY
    facts = DictFacts(categories={("shoes", kind): t})
    rule = f'{kind}("shoes", 30d)'
    assert holds(rule, facts)
    assert not holds(rule, facts.at(math.nextafter(NOW, math.inf)))
    assert not holds(f'{kind}("shoes", 29d)', facts)
    assert not holds(f'{kind}("hats", 30d)', facts)
    assert not holds(rule, DictFacts())  # never
    edge = math.nextafter(t + 30 * DAY, math.inf)
    assert change(rule, facts.at(NOW - DAY)) == edge
    assert change(rule, facts.at(edge)) is None  # out, and no event brings it back
    for other in {"viewed", "carted", "bought"} - {kind}:
        assert not holds(f'{other}("shoes", 30d)', facts)
    assert holds('interested("shoes", 30d)', facts)


def test_interested_uses_the_latest_of_any_kind() -> None:
    facts = DictFacts(categories={("shoes", "viewed"): NOW - 40 * DAY,
                                  ("shoes", "bought"): NOW - 10 * DAY})
    assert holds('interested("shoes", 2w)', facts)
    assert not holds('interested("shoes", 1w)', facts)
    assert change('interested("shoes", 2w)', facts) == math.nextafter(NOW + 4 * DAY, math.inf)
    assert holds('viewed("shoes", 6w) and not bought("shoes", 36h)', facts)


def test_window_units() -> None:
    facts = DictFacts(categories={("a", "viewed"): NOW - 90.0})
    assert holds('viewed("a", 90s)', facts)
    assert holds('viewed("a", 1.5m)', facts)
    assert not holds('viewed("a", 1m)', facts)
    assert holds('viewed("a", 1h) and viewed("a", 1w) and viewed("a", 1y)', facts)
    leap = DictFacts(now=ts("2025-03-01"), categories={("a", "viewed"): ts("2024-02-29")})
    assert holds('viewed("a", 1y)', leap)
    assert not holds('viewed("a", 1y)', leap.at(ts("2025-03-01") + 1))


# --- days_since / days_until ---------------------------------------------------------------------


def test_days_since_and_until_values() -> None:
    facts = DictFacts(times={"last_order_at": NOW - 10.5 * DAY},
                      values={"traits.renewal_date": "2024-06-08"})
    assert holds("days_since(last_order_at) == 10.5", facts)
    assert holds("days_since(last_order_at) > 10 and days_since(last_order_at) < 11", facts)
    assert holds("days_until(traits.renewal_date) == 7", facts)
    assert holds("days_since(traits.renewal_date) == -7", facts)
    assert holds("days_until(last_order_at) < 0", facts)
    assert not holds("days_until(traits.bad) < 100",
                     DictFacts(values={"traits.bad": "not a date"}))


def test_days_since_flips_exactly_at_the_boundary() -> None:
    anchor = NOW - 30 * DAY
    facts = DictFacts(times={"last_order_at": anchor})
    strict = "days_since(last_order_at) > 90"
    boundary = anchor + 90 * DAY
    at = change(strict, facts)
    assert at == math.nextafter(boundary, math.inf)  # > 90: still 90 at the boundary itself
    assert not holds(strict, facts.at(boundary))
    assert holds(strict, facts.at(at))
    inclusive = "days_since(last_order_at) >= 90"
    assert change(inclusive, facts) == boundary
    assert not holds(inclusive, facts.at(math.nextafter(boundary, -math.inf)))
    assert holds(inclusive, facts.at(boundary))
    assert change(inclusive, facts.at(boundary)) is None  # only grows from there
    assert change("days_since(last_order_at) < 90", facts) == boundary


def test_days_until_counts_down() -> None:
    renewal = NOW + 30 * DAY
    facts = DictFacts(times={"first_seen_at": renewal})
    rule = "days_until(first_seen_at) <= 7"
    at = change(rule, facts)
    assert at == renewal - 7 * DAY
    assert not holds(rule, facts.at(math.nextafter(at, -math.inf)))
    assert holds(rule, facts.at(at))
    assert change(rule, facts.at(at)) is None


def test_linear_number_features() -> None:
    facts = DictFacts(lines={"tenure_days": (NOW - 5 * DAY, DAY)})
    assert holds("tenure_days == 5", facts)
    at = change("tenure_days > 7", facts)
    assert at == math.nextafter(NOW + 2 * DAY, math.inf)
    assert holds("tenure_days > 7", facts.at(at))
    equal = change("tenure_days == 6", facts)
    assert equal == NOW + DAY and holds("tenure_days == 6", facts.at(equal))
    assert change("tenure_days == 6", facts.at(equal)) == math.nextafter(equal, math.inf)
    assert change("tenure_days in [3, 9, 6]", facts) == NOW + DAY
    assert change("tenure_days == 2", facts) is None  # already past, only grows
    assert change("tenure_days > 1", facts) is None
    both = DictFacts(lines={"tenure_days": (NOW - 5 * DAY, DAY), "orders_count": (NOW, DAY / 2)})
    cross = change("orders_count > tenure_days", both)  # 2(t-now) > (t-now)+5: at now+5d
    assert cross is not None and abs(cross - (NOW + 5 * DAY)) < 1e-3
    assert not holds("orders_count > tenure_days", both.at(cross - 1e-3))
    assert holds("orders_count > tenure_days", both.at(cross))


def test_stepwise_features_use_facts_next_change() -> None:
    facts = DictFacts(values={"orders_30d": 3, "lifecycle_stage": "repeat"},
                      steps={"orders_30d": NOW + 3 * DAY, "lifecycle_stage": NOW + 9 * DAY})
    assert change("orders_30d > 2", facts) == NOW + 3 * DAY
    assert change("lifecycle_stage == 'repeat'", facts) == NOW + 9 * DAY
    assert change("orders_count > 2", facts) is None
    past = replace(facts, steps={"orders_30d": NOW})
    assert change("orders_30d > 2", past) is None  # times <= now are ignored


def test_boolean_combinations_of_change_times() -> None:
    facts = DictFacts(categories={("a", "viewed"): NOW - DAY, ("b", "viewed"): NOW - 2 * DAY})
    a_end = math.nextafter(NOW + 29 * DAY, math.inf)
    b_end = math.nextafter(NOW + 28 * DAY, math.inf)
    # true or: unchanged while any true part holds; false and: while any false part fails
    assert change('viewed("a", 30d) or viewed("b", 30d)', facts) == a_end
    assert change('viewed("a", 30d) and viewed("b", 30d)', facts) == b_end
    assert change('viewed("a", 30d) and viewed("c", 30d)', facts) is None
    assert change('viewed("a", 30d) or viewed("c", 30d)', facts) == a_end
    assert change('not viewed("a", 30d)', facts) == a_end
    assert change('viewed("c", 1d) or viewed("a", 30d) and viewed("b", 30d)', facts) == b_end


# --- stages --------------------------------------------------------------------------------------

CHILD_AGE = {
    "stages": {
        "from": "traits.child_birth_date",
        "bands": {
            "expecting": {"until": "0d"},
            "newborn": {"from": "0d", "until": "28d"},
            "under_1": {"from": "28d", "until": "1y"},
            "1_2": {"from": "1y", "until": "2y"},
            "over_2": {"from": "2y"},
        },
    },
}


def test_stage_names_in_definition_order() -> None:
    cat = catalog({"big": {"rule": "orders_count > 1"}, "child_age": CHILD_AGE,
                   "z": {"rule": "is_subscribed", "description": "opted in"}})
    assert cat.names == ("big", "child_age:expecting", "child_age:newborn", "child_age:under_1",
                         "child_age:1_2", "child_age:over_2", "z")


@pytest.mark.parametrize(("now", "band"), [
    ("2024-02-28T23:59:59", "expecting"),
    ("2024-02-29T00:00:00", "newborn"),
    ("2024-03-27T23:59:59", "newborn"),
    ("2024-03-28T00:00:00", "under_1"),
    ("2025-02-28T23:59:59", "under_1"),  # no 29 February in 2025: the year ends on 1 March
    ("2025-03-01T00:00:00", "1_2"),
    ("2026-02-28T23:59:59", "1_2"),
    ("2026-03-01T00:00:00", "over_2"),
])
def test_stage_bands_with_calendar_years(now: str, band: str) -> None:
    cat = catalog({"child_age": CHILD_AGE})
    facts = DictFacts(now=ts(now), values={"traits.child_birth_date": "2024-02-29"})
    assert cat.memberships(facts) == {f"child_age:{band}"}


def test_stage_next_change_is_the_next_band_edge() -> None:
    cat = catalog({"child_age": CHILD_AGE})
    facts = DictFacts(values={"traits.child_birth_date": "2024-02-29"})
    for now, edge in [("2024-01-01", "2024-02-29"), ("2024-03-01", "2024-03-28"),
                      ("2025-01-15", "2025-03-01"), ("2025-06-01", "2026-03-01")]:
        assert cat.next_change(facts.at(ts(now))) == ts(edge)
    assert cat.next_change(facts.at(ts("2027-01-01"))) is None
    assert cat.memberships(DictFacts()) == frozenset()
    assert cat.next_change(DictFacts()) is None


def test_stage_from_a_time_feature_with_gaps_and_negative_offsets() -> None:
    cat = catalog({"tenure": {"stages": {"from": "first_seen_at", "bands": {
        "soon": {"from": "-7d", "until": "0d"},
        "new": {"from": "0d", "until": "2w"},
        "veteran": {"from": "1y"},
    }}}})
    facts = DictFacts(times={"first_seen_at": NOW})
    assert cat.memberships(facts.at(NOW - 7 * DAY)) == {"tenure:soon"}
    assert cat.memberships(facts.at(NOW - 8 * DAY)) == frozenset()
    assert cat.memberships(facts.at(NOW + 20 * DAY)) == frozenset()  # the gap
    assert cat.next_change(facts.at(NOW + 20 * DAY)) == ts("2025-06-01")
    assert cat.memberships(facts.at(ts("2025-06-01"))) == {"tenure:veteran"}


def test_catalog_memberships_and_next_change() -> None:
    cat = catalog({
        "big_spenders": {"rule": "monetary_365d >= 500 and orders_count >= 2"},
        "shoe_fans": {"rule": 'viewed("shoes", 30d) or bought("shoes", 30d)'},
        "sleeping_vip": {"rule": 'loyalty_tier in ["gold", "platinum"] and '
                                 "days_since(last_order_at) > 60 and "
                                 "not traits.unsubscribed == true"},
    })
    facts = DictFacts(values={"monetary_365d": 900, "orders_count": 3, "loyalty_tier": "gold"},
                      times={"last_order_at": NOW - 50 * DAY},
                      categories={("shoes", "bought"): NOW - 25 * DAY})
    assert cat.memberships(facts) == {"big_spenders", "shoe_fans"}
    assert cat.next_change(facts) == math.nextafter(NOW + 5 * DAY, math.inf)
    later = facts.at(NOW + 11 * DAY)
    assert cat.memberships(later) == {"big_spenders", "sleeping_vip"}
    assert cat.next_change(later) is None
    unsubscribed = replace(later, values={**later.values, "traits.unsubscribed": "true"})
    assert cat.memberships(unsubscribed) == {"big_spenders"}


# --- the property: nothing changes before next_change -------------------------------------------

PROPERTY_FEATURES = {"x": FeatureKind.NUMBER, "y": FeatureKind.NUMBER,
                     "a": FeatureKind.TIME, "b": FeatureKind.TIME}
OPS = ["==", "!=", "<", "<=", ">", ">="]
constants = st.one_of(st.integers(-60, 60).map(str),
                      st.floats(-60, 60, allow_nan=False).map(lambda f: f"{f:.3f}"))
moving = st.sampled_from(["x", "y", "days_since(a)", "days_until(a)", "days_since(b)",
                          "days_until(b)"])
leaves = st.one_of(
    st.builds(lambda m, op, c: f"{m} {op} {c}", moving, st.sampled_from(OPS), constants),
    st.builds(lambda c, op, m: f"{c} {op} {m}", constants, st.sampled_from(OPS), moving),
    st.builds(lambda m, op, n: f"{m} {op} {n}", moving, st.sampled_from(OPS), moving),
    st.builds(lambda m, cs: f"{m} in [{', '.join(cs)}]", moving,
              st.lists(constants, min_size=1, max_size=3)),
    st.builds(lambda c, n: f'viewed("{c}", {n}d)', st.sampled_from("pq"), st.integers(1, 40)),
)
rules = st.recursive(leaves, lambda inner: st.one_of(
    st.builds(lambda p, q: f"({p}) and ({q})", inner, inner),
    st.builds(lambda p, q: f"({p}) or ({q})", inner, inner),
    inner.map(lambda p: f"not ({p})"),
), max_leaves=5)
offsets = st.floats(-200 * DAY, 200 * DAY, allow_nan=False)
units = st.sampled_from([DAY, -DAY, 3600.0, 7 * DAY, 1.0, 0.37 * DAY])


@st.composite
def linear_facts(draw: st.DrawFn) -> DictFacts:
    return DictFacts(
        now=NOW + draw(st.floats(0, DAY, allow_nan=False)),
        lines={"x": (NOW + draw(offsets), draw(units)), "y": (NOW + draw(offsets), draw(units))},
        times={"a": NOW + draw(offsets), "b": NOW + draw(offsets)},
        categories={("p", "viewed"): NOW + draw(st.floats(-50 * DAY, 0, allow_nan=False))},
    )


def _members(cat: SegmentCatalog, facts: DictFacts, t: float) -> frozenset[str]:
    return cat.memberships(facts.at(t))


@settings(max_examples=400, deadline=None)
@given(rule=rules, facts=linear_facts(), fractions=st.lists(st.floats(0, 1), max_size=6))
def test_nothing_changes_before_next_change(rule: str, facts: DictFacts,
                                            fractions: list[float]) -> None:
    cat = compile_segments({"s": {"rule": rule}}, PROPERTY_FEATURES)
    before = cat.memberships(facts)
    nxt = cat.next_change(facts)
    horizon = nxt if nxt is not None else facts.now + 5000 * DAY
    assert horizon > facts.now
    probes = [facts.now + (horizon - facts.now) * f for f in fractions]
    probes += [math.nextafter(horizon, -math.inf), math.nextafter(facts.now, math.inf)]
    for t in probes:
        if facts.now < t < horizon:
            assert _members(cat, facts, t) == before, (rule, t)
    if nxt is None:
        assert _members(cat, facts, horizon) == before


@settings(max_examples=400, deadline=None)
@given(m=moving, op=st.sampled_from(["<", "<=", ">", ">="]), c=constants, facts=linear_facts())
def test_single_crossing_is_exact(m: str, op: str, c: str, facts: DictFacts) -> None:
    cat = compile_segments({"s": {"rule": f"{m} {op} {c}"}}, PROPERTY_FEATURES)
    before = cat.memberships(facts)
    nxt = cat.next_change(facts)
    if nxt is None:  # monotone: once on the far side, forever
        assert _members(cat, facts, facts.now + 1e7 * DAY) == before
        return
    assert _members(cat, facts, nxt) != before
    just_before = math.nextafter(nxt, -math.inf)
    if just_before > facts.now:
        assert _members(cat, facts, just_before) == before


# --- rejections ----------------------------------------------------------------------------------


def test_unknown_feature_names_it_and_suggests() -> None:
    message = rejects("ordrs_count >= 2", "unknown feature 'ordrs_count'", "column 1",
                      "did you mean 'orders_count'?")
    assert message == ("segments.s.rule: unknown feature 'ordrs_count' at column 1 "
                       "(did you mean 'orders_count'?)")
    rejects("orders_count > 1 and zzz_qqq", "unknown feature 'zzz_qqq' at column 22")
    rejects("has(monetry_365d)", "did you mean 'monetary_365d'?")


@pytest.mark.parametrize(("rule", "fragments"), [
    ("(orders_count > 1", ("syntax error", "unbalanced parentheses", "column 1")),
    ("orders_count > 1)", ("syntax error", "unbalanced parentheses", "column 17")),
    ("((orders_count > 1) and is_subscribed", ("unbalanced parentheses",)),
    ("(orders_count > 1 is_subscribed)", ("expected ')'",)),
    ("orders_count > 1 is_subscribed", ("unexpected 'is_subscribed'", "column 18")),
    ("orders_count > 1 2", ("unexpected '2'",)),
    ("orders_count > 1 and", ("end of rule",)),
    ("orders_count >", ("end of rule",)),
    ("", ("empty rule",)),
    ("   ", ("empty rule",)),
    ("orders_count = 1", ("'=' is not an operator",)),
    ("orders_count > 1 && is_subscribed", ("unexpected '&'",)),
    ("orders_count AND is_subscribed", ("unexpected 'AND'",)),
    ("NOT is_subscribed", ("unknown feature 'NOT'",)),
    ("loyalty_tier == 'gold", ("unterminated string",)),
    (r"loyalty_tier == 'g\qold'", ("bad escape",)),
    ("loyalty_tier in []", ("expected a feature or a value",)),
    ("loyalty_tier in ['a' 'b']", ("expected ',' or ']'",)),
    ("loyalty_tier in [lifecycle_stage]", ("literal values",)),
    ("traits. x == 1", ("trait name",)),
    ("orders_count > 1.", ("unexpected '.'",)),
])
def test_syntax_errors(rule: str, fragments: tuple[str, ...]) -> None:
    rejects(rule, *fragments)


@pytest.mark.parametrize("rule", [
    '__import__("os")',
    '__import__("os").system("true")',
    "orders_count.__class__",
    "orders_count.__class__ == 1",
    "traits.x.__class__ == 1",
    'eval("1") == 1',
    "open('f')",
    "lambda: 1",
    "[c for c in orders_count]",
    "orders_count[0] == 1",
    "orders_count > 1 ; is_subscribed",
])
def test_code_is_a_syntax_error(rule: str) -> None:
    assert "syntax error" in rejects(rule)


@pytest.mark.parametrize(("rule", "fragments"), [
    ('viewed("shoes", 30x)', ("bad duration '30x'", "column 17")),
    ('viewed("shoes", 30)', ("bad duration '30'",)),
    ('viewed("shoes", 1.5y)', ("bad duration '1.5y'",)),
    ('viewed("shoes", 0d)', ("longer than 0",)),
    ('viewed("shoes", -3d)', ("longer than 0",)),
    ('viewed(shoes, 3d)', ("category in quotes",)),
    ('viewed("", 3d)', ("empty category",)),
    ("orders_count > 3d", ("duration",)),
])
def test_bad_durations_and_predicates(rule: str, fragments: tuple[str, ...]) -> None:
    rejects(rule, *fragments)


@pytest.mark.parametrize(("rule", "fragments"), [
    ('orders_count > "abc"', ('cannot compare orders_count (a number) with "abc" (text)',
                              "column 14")),
    ('"abc" == monetary_365d', ("cannot compare",)),
    ("loyalty_tier > 3", ("cannot compare loyalty_tier (text) with 3 (a number)",)),
    ("loyalty_tier in ['gold', 3]", ("cannot compare",)),
    ("is_subscribed == 1", ("cannot compare",)),
    ("is_subscribed < true", ("only be compared with == or !=",)),
    ("orders_count < null", ("null can only be compared with == or !=",)),
    ("last_order_at > 1700000000", ("'last_order_at' is a time", "days_since(last_order_at)")),
    ("orders_count < last_order_at", ("'last_order_at' is a time",)),
    ("last_order_at", ("'last_order_at' is a time",)),
    ("last_order_at in [1]", ("'last_order_at' is a time",)),
    ("days_since(orders_count) > 1", ("needs a time feature", "'orders_count' is a number")),
    ("days_since(3) > 1", ("takes a feature name",)),
    ("days_since(last_order_at) > '3'", ("cannot compare",)),
    ("orders_count", ("is a number, not a condition",)),
    ("loyalty_tier", ("is text, not a condition",)),
    ("days_since(last_order_at)", ("is a number, not a condition",)),
    ("true", ("expected a condition",)),
    ("viewed('a', 1d) > 1", ("unexpected '>'",)),
    ("has(viewed('a', 1d))", ("takes a feature name",)),
    ("orders_count > has(orders_count)", ("is a condition, not a value",)),
    ("dayz_since(last_order_at) > 1", ("unknown function 'dayz_since'",
                                       "did you mean 'days_since'?")),
])
def test_kind_errors(rule: str, fragments: tuple[str, ...]) -> None:
    rejects(rule, *fragments)


def test_limits() -> None:
    deep = "(" * 32 + "is_subscribed" + ")" * 32
    assert compile_rule(deep, FEATURES).evaluate(DictFacts(values={"is_subscribed": True}))
    rejects("(" * 33 + "is_subscribed" + ")" * 33, "nesting deeper than 32")
    rejects("not " * 33 + "is_subscribed", "nesting deeper than 32")
    long_ok = " or ".join(["is_subscribed"] * 117)
    assert len(long_ok) <= 2000
    compile_rule(long_ok, FEATURES)
    rejects(long_ok + " or is_subscribed", "too long", "at most 2000")
    rejects("(" * 1000 + ")" * 1000, "nesting deeper")


def test_multiline_rules_report_line_and_column() -> None:
    rejects("orders_count > 1 and\n  ordrs_count > 2", "at line 2 column 3")


# --- segment definitions -------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "fragments"), [
    ({"Big": {"rule": "is_subscribed"}}, ("segments.Big:", "bad segment name 'Big'")),
    ({"a:b": {"rule": "is_subscribed"}}, ("bad segment name",)),
    ({"-x": {"rule": "is_subscribed"}}, ("bad segment name",)),
    ({"x" * 65: {"rule": "is_subscribed"}}, ("bad segment name",)),
    ({3: {"rule": "is_subscribed"}}, ("segments.3:", "bad segment name 3")),
    ({"s": {"rule": "is_subscribed", "colour": "red"}}, ("segments.s.colour: unknown key",)),
    ({"s": {"rul": "is_subscribed"}}, ("segments.s.rul: unknown key", "did you mean 'rule'?")),
    ({"s": {"rule": 5}}, ("segments.s.rule: expected a string, got int",)),
    ({"s": {"rule": ["a"]}}, ("segments.s.rule: expected a string",)),
    ({"s": {"rule": "is_subscribed", "description": 1}}, ("segments.s.description:",)),
    ({"s": {}}, ("segments.s: give exactly one of 'rule' or 'stages'",)),
    ({"s": {"rule": "is_subscribed", "stages": CHILD_AGE["stages"]}}, ("exactly one",)),
    ({"s": "is_subscribed"}, ("segments.s: expected a mapping",)),
    ({"s": {"stages": []}}, ("segments.s.stages: expected a mapping",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {"a": {}}, "x": 1}}},
     ("segments.s.stages.x: unknown key",)),
    ({"s": {"stages": {"from": "last_ordr_at", "bands": {"a": {}}}}},
     ("segments.s.stages.from: unknown feature", "did you mean 'last_order_at'?")),
    ({"s": {"stages": {"from": "orders_count", "bands": {"a": {}}}}},
     ("segments.s.stages.from: 'orders_count' is a number, not a time",)),
    ({"s": {"stages": {"from": 3, "bands": {"a": {}}}}}, ("segments.s.stages.from:",)),
    ({"s": {"stages": {"from": "traits.x..y", "bands": {"a": {}}}}}, ("bad trait name",)),
    ({"s": {"stages": {"from": "traits.x.__class__", "bands": {"a": {}}}}},
     ("bad trait name",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {}}}}, ("segments.s.stages.bands:",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {"A": {}}}}},
     ("segments.s.stages.bands.A: bad band name",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {12: {}}}}}, ("bad band name 12",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {"a": "1d"}}}},
     ("segments.s.stages.bands.a: expected a mapping",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {"a": {"to": "1d"}}}}},
     ("segments.s.stages.bands.a.to: unknown key",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {"a": {"until": "3x"}}}}},
     ("segments.s.stages.bands.a.until: bad duration '3x'",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {"a": {"until": 3}}}}},
     ("segments.s.stages.bands.a.until: bad duration 3",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {"a": {"from": "5d", "until": "5d"}}}}},
     ("segments.s.stages.bands.a: empty band",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {"a": {"from": "9d", "until": "1w"}}}}},
     ("empty band",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {
        "a": {"from": "365d", "until": "1y"}}}}}, ("empty band",)),  # 1y may be 365 days
    ({"s": {"stages": {"from": "last_order_at", "bands": {
        "a": {"until": "30d"}, "b": {"from": "28d"}}}}},
     ("segments.s.stages.bands: bands 'a' (until 30d) and 'b' (from 28d) overlap",)),
    ({"s": {"stages": {"from": "last_order_at", "bands": {
        "a": {"from": "0d", "until": "1y"}, "b": {"from": "365d", "until": "2y"}}}}},
     ("overlap",)),  # 1y after a leap day is 366 days
    ({"s": {"stages": {"from": "last_order_at", "bands": {
        "a": {"from": "0d"}, "b": {"from": "1y"}}}}}, ("'a' (no until)", "overlap")),
    ({"s": {"stages": {"from": "last_order_at", "bands": {
        "a": {"until": "0d"}, "b": {"until": "5d"}}}}}, ("overlap",)),
])
def test_definition_errors(raw: dict[Any, Any], fragments: tuple[str, ...]) -> None:
    with pytest.raises(RuleError) as caught:
        compile_segments(raw, FEATURES)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


@pytest.mark.parametrize("rule", ['lifecycle_stage == "atrisk"',
                                  'lifecycle_stage in ["at_risk", "at-risk"]',
                                  '"Champions" == rfm_segment'])
def test_a_value_a_fixed_text_feature_never_takes_is_refused(rule: str) -> None:
    features = {**FEATURES, "rfm_segment": FeatureKind.TEXT}
    with pytest.raises(RuleError, match="never matches"):
        compile_segments({"s": {"rule": rule}}, features)
    compile_segments({"s": {"rule": 'lifecycle_stage in ["at_risk", "churned"] and '
                                    'rfm_segment != "lost"'}}, features)


def test_a_number_with_an_exponent_is_named_as_such() -> None:
    with pytest.raises(RuleError, match="without an exponent"):
        compile_segments({"big": {"rule": "monetary_365d >= 1e3"}}, FEATURES)


def test_a_span_of_more_years_than_any_calendar_is_named() -> None:
    """An OverflowError (the seconds of 10**309 years) came out of compiling it."""
    for years in ("9" * 309, "10001"):
        with pytest.raises(RuleError, match="segments.s.rule"):
            compile_segments({"s": {"rule": f'viewed("x", {years}y)'}}, FEATURES)
    compile_segments({"s": {"rule": 'viewed("x", 10000y)'}}, FEATURES)


def test_every_bad_segment_is_named_at_once() -> None:
    with pytest.raises(RuleError) as caught:
        compile_segments({"a": {"rule": "orders_count >"}, "ok": {"rule": "orders_count > 1"},
                          "b": {"rule": "nonsense_feature > 1"}}, FEATURES)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("segments.a.rule: ") and len(lines) == 2
    assert lines[1].startswith("  segments.b.rule: ")


def test_segments_must_be_a_mapping() -> None:
    with pytest.raises(RuleError, match="^segments: expected a mapping"):
        compile_segments(["a"], FEATURES)  # type: ignore[arg-type]


def test_mixed_unit_bands_that_surely_touch_are_accepted() -> None:
    cat = catalog({"s": {"description": "tenure", "stages": {"from": "first_seen_at", "bands": {
        "a": {"until": "12w"}, "b": {"from": "12w", "until": "1y"}, "c": {"from": "367d"},
    }}}})
    assert cat.names == ("s:a", "s:b", "s:c")
    assert cat.segments[0].description == "tenure"


def test_compiled_nodes_are_frozen_and_reusable() -> None:
    cat = catalog({"big": {"rule": "orders_count > 1"}})
    with pytest.raises(AttributeError):
        cat.segments = ()  # type: ignore[misc]
    for count, expected in [(1, set()), (2, {"big"}), (0, set())]:
        assert cat.memberships(DictFacts(values={"orders_count": count})) == expected
