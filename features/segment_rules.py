"""Rule-based customer segments: a small rule language, compiled once, evaluated per client.

Operators define segments in YAML (`segments:`). `compile_segments` checks every definition
up front -- names, keys, feature names and kinds -- so a typo fails when the file is loaded,
not silently per client. Rules are read by a tokenizer and a recursive-descent parser (never
`eval`) into a tree of frozen nodes; evaluation walks the tree without re-parsing.

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | atom
    atom       := "(" expr ")" | comparison | predicate
    comparison := operand OP operand | operand ["not"] "in" "[" literal ("," literal)* "]"
    operand    := feature | traits.NAME | literal | days_since(t) | days_until(t)
    predicate  := viewed|carted|bought|interested("category", DURATION) | has(feature)
                  | bool feature | traits.NAME (holds when the trait is true or "true")

What evaluation reads is the `Facts` protocol, implemented by the caller:
- `now`: the evaluation time, epoch seconds UTC (nothing here reads the clock).
- `value(name)`: a feature's value at `now`, None when unknown; `name` may be "traits.x".
- `linear(name)`: for NUMBER features that grow linearly with time, (anchor, unit) with
  value = (now - anchor) / unit, else None. When given, the value is computed from it and
  `value()` is not consulted, so evaluation and `next_change` agree to the last bit.
- `next_change(name)`: for features that change stepwise with time alone (windowed counts,
  lifecycle stage, age in years), the earliest time > now at which the value may change;
  None if it does not change with time alone. Times <= now are ignored.
- `category_time(category, kind)`: kind "viewed" | "carted" | "bought": the latest such
  time in the category, None if never.
- `time_of(name)`: a TIME feature, or a date trait parsed to epoch seconds; None if unknown.

Semantics: a comparison with an unknown (null) side is false, except `== null` / `!= null`;
so `not x == 1` holds when x is unknown while `x != 1` does not. Traits are untyped: they
compare as numbers when both sides parse as numbers, and anything incomparable is false.
Windows are inclusive (now - t <= duration); stage bands are [from, until) after the date;
`y` is calendar years (29 February + 1y = 1 March).
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import MAXYEAR, MINYEAR, UTC, date, datetime
from enum import Enum
from typing import Any, Protocol

from features.lifecycle import SEGMENT_STAGES, VISITOR
from features.rfm import RFM_SEGMENTS
from features.rules import DAY

MAX_RULE_LENGTH = 2000
MAX_DEPTH = 32
MAX_NAME_LENGTH = 64

_INF = math.inf
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_WINDOWS: dict[str, tuple[str, ...]] = {
    "viewed": ("viewed",),
    "carted": ("carted",),
    "bought": ("bought",),
    "interested": ("viewed", "carted", "bought"),
}
_PREDICATES = frozenset({*_WINDOWS, "has"})
_NUMBER_CALLS = frozenset({"days_since", "days_until"})
_FUNCTIONS = sorted(_PREDICATES | _NUMBER_CALLS)
_FIXED_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}
_UNITS_HELP = "a number followed by s, m, h, d, w or y, e.g. 30d"
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_DIGITS = frozenset("0123456789")
_NAME_CHARS = _NAME_START | _DIGITS
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}
_SEGMENT_NAME = re.compile(r"[a-z0-9_][a-z0-9_-]*")
# a trait's key, or a path into nested traits (`consents.email`); keys may hold '-'
# (a key starting with "__" is refused: names like `__class__` read as code, not data)
_TRAIT_NAME = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_-]*(?:\.(?!__)[A-Za-z_][A-Za-z0-9_-]*)*")
_TRAIT_READ = re.compile(r"\btraits\.(" + _TRAIT_NAME.pattern + ")")
_DURATION_TEXT = re.compile(r"\s*([-+]?\d{1,9}(?:\.\d{1,9})?)([A-Za-z]+)\s*")
_NUMBER_TEXT = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*")
MAX_YEARS = 10_000  # the longest span in years a rule may name
_SEARCH_LIMIT = 4000  # iterations of the float search; far more than any real crossing needs


class FeatureKind(Enum):
    """What a named feature holds, so rules can be type-checked when they are compiled."""

    NUMBER = "number"
    TEXT = "text"
    TIME = "time"  # epoch seconds: only in days_since/days_until, has(), or == / != null
    BOOL = "bool"


class Facts(Protocol):
    """One client's features at `now`; see the module docstring for the contract."""

    @property
    def now(self) -> float: ...

    def value(self, name: str) -> object | None: ...

    def linear(self, name: str) -> tuple[float, float] | None: ...

    def next_change(self, name: str) -> float | None: ...

    def category_time(self, category: str, kind: str) -> float | None: ...

    def time_of(self, name: str) -> float | None: ...


class RuleError(ValueError):
    """A segment definition that cannot be compiled; `path` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


# --- durations and calendar years ----------------------------------------------------------------


def _add_years(t: float, years: int) -> float:
    """`t` moved by whole calendar years; 29 February lands on 1 March in common years."""
    try:
        moment = datetime.fromtimestamp(math.floor(t), UTC)  # floor: the date `t` falls on
    except (OverflowError, OSError, ValueError):
        return t + years * 365.2425 * DAY
    day = moment.date()
    year = day.year + years
    if not MINYEAR <= year <= MAXYEAR:
        return _INF if years > 0 else -_INF
    try:
        target = day.replace(year=year)
    except ValueError:
        target = date(year, 3, 1)
    return t + (target - day).days * DAY


@dataclass(frozen=True, slots=True)
class Duration:
    """A span: whole calendar years (`years`), else fixed `seconds`."""

    seconds: float = 0.0
    years: int = 0
    text: str = field(default="", compare=False)

    def after(self, t: float) -> float:
        """The moment this long after `t` (before it, when negative)."""
        return _add_years(t, self.years) if self.years else t + self.seconds

    def bounds(self) -> tuple[float, float]:
        """The shortest and longest this span can be in seconds, over every start date."""
        if not self.years:
            return self.seconds, self.seconds
        short, long = self.years * 365 * DAY, self.years * 366 * DAY
        return (short, long) if self.years > 0 else (long, short)


def _duration(number: str, unit: str, text: str) -> Duration | None:
    """`number` `unit` as a Duration, or None when it is not one (unit, fractional years)."""
    if unit == "y":
        if "." in number:
            return None
        years = int(number)
        if abs(years) > MAX_YEARS:  # no calendar reaches it (and no float holds its seconds)
            return None
        return Duration(years=years, text=text) if years else Duration(text=text)
    scale = _FIXED_UNITS.get(unit)
    if scale is None:
        return None
    seconds = float(number) * scale
    return Duration(seconds=seconds, text=text) if math.isfinite(seconds) else None


def _surely_before(a: Duration, b: Duration, *, strict: bool) -> bool:
    """Whether a <= b (a < b when strict) after every possible start date."""
    if bool(a.years) == bool(b.years):
        x, y = (float(a.years), float(b.years)) if a.years else (a.seconds, b.seconds)
    else:
        x, y = a.bounds()[1], b.bounds()[0]
    return x < y if strict else x <= y


# --- values: comparisons with untyped traits and nulls -------------------------------------------


def _number(value: object) -> float | None:
    """`value` as a float: numbers and numeric strings (never booleans)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        try:
            return float(value)
        except ValueError:  # U+001C-U+001F: whitespace to the pattern, not to float()
            return None
    return None


def _strict_number(value: object) -> float | None:
    """`value` as a float only when it is a number (typed features)."""
    return _number(value) if isinstance(value, int | float) else None


def _boolean(value: object, loose: bool) -> bool | None:
    if isinstance(value, bool):
        return value
    if loose and isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower())
    return None


def _comparable(a: object, b: object, loose: bool) -> tuple[Any, Any] | None:
    """Both values in one domain (floats, strings or booleans), or None when incomparable."""
    if isinstance(a, bool) or isinstance(b, bool):
        x, y = _boolean(a, loose), _boolean(b, loose)
        return None if x is None or y is None else (x, y)
    if isinstance(a, str) and isinstance(b, str):
        if loose:
            p, q = _number(a), _number(b)
            if p is not None and q is not None:
                return p, q
        return a, b
    to_number = _number if loose else _strict_number
    p, q = to_number(a), to_number(b)
    return None if p is None or q is None else (p, q)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


def _compare(op: str, a: object, b: object, loose: bool) -> bool:
    """`a op b`; false when either side is null or they are incomparable."""
    if a is None or b is None:
        return False
    pair = _comparable(a, b, loose)
    if pair is None:
        return False
    x, y = pair
    if isinstance(x, bool) and op not in ("==", "!="):
        return False
    return _OPS[op](x, y)


def _equal(a: object, b: object, loose: bool) -> bool:
    """`a == b` where a literal null matches only an unknown value."""
    if a is None or b is None:
        return a is None and b is None
    return _compare("==", a, b, loose)


def _differs(a: object, b: object, loose: bool) -> bool:
    if b is None:
        return a is not None
    return _compare("!=", a, b, loose)


# --- time: lines, crossings and change times -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    """A value that moves linearly with time: (t - anchor) / unit, or (anchor - t) / unit."""

    anchor: float
    unit: float
    reverse: bool = False

    def at(self, t: float) -> float:
        return ((self.anchor - t) if self.reverse else (t - self.anchor)) / self.unit

    @property
    def slope(self) -> float:
        return (-1.0 if self.reverse else 1.0) / self.unit

    def solve(self, c: float) -> float:
        """About when the value equals `c` (a first guess for the exact search)."""
        return self.anchor - c * self.unit if self.reverse else self.anchor + c * self.unit


def _earliest(times: Iterable[float | None]) -> float | None:
    found = [t for t in times if t is not None]
    return min(found) if found else None


def _latest(times: Iterable[float | None]) -> float | None:
    """The latest time, or None (never) as soon as one of them is None."""
    latest = -_INF
    for t in times:
        if t is None:
            return None
        latest = max(latest, t)
    return latest


def _step(facts: Facts, name: str) -> float | None:
    t = facts.next_change(name)
    return t if t is not None and t > facts.now else None


def _linear(facts: Facts, name: str) -> _Line | None:
    got = facts.linear(name)
    if got is None:
        return None
    anchor, unit = float(got[0]), float(got[1])
    if not (math.isfinite(anchor) and math.isfinite(unit)) or unit == 0:
        return None
    return _Line(anchor, unit)


def _first_change(h: Callable[[float], object], now: float, guess: float) -> float | None:
    """The earliest float t > now with h(t) != h(now), for h monotone in t that is known to
    change; `guess` is a nearby estimate. Exact to the float, found in a few steps."""
    base = h(now)
    hi = guess if guess > now and math.isfinite(guess) else math.nextafter(now, _INF)
    lo, step = now, math.ulp(hi)
    for _ in range(_SEARCH_LIMIT):  # walk forward until h has changed
        if h(hi) != base:
            break
        lo, hi, step = hi, hi + step, step * 2
        if not math.isfinite(hi):
            return None
    else:
        return None
    step = math.ulp(hi)
    for _ in range(_SEARCH_LIMIT):  # walk back to a point where it has not
        probe = hi - step
        if probe <= lo:
            break
        if h(probe) == base:
            lo = probe
            break
        hi, step = probe, step * 2
    for _ in range(_SEARCH_LIMIT):  # bisect [lo, hi] down to adjacent floats
        mid = lo + (hi - lo) / 2
        if not lo < mid < hi:
            break
        if h(mid) == base:
            lo = mid
        else:
            hi = mid
    return hi


def _sign(x: float, y: float) -> int:
    return (x > y) - (x < y)


def _crossing(op: str, now: float, a: object, la: _Line | None, b: object,
              lb: _Line | None) -> float | None:
    """When `a op b` may next change because a linear side moves; None if it cannot.

    Ordering operators give the exact flip; == and != the moment the sides meet or pass
    (a float line may step over the constant, so this may be early, never late).
    """
    if la is None and lb is None:
        return None
    fa: Callable[[float], float]
    fb: Callable[[float], float]
    if la is not None and lb is not None:
        ds = la.slope - lb.slope
        if ds == 0 or not math.isfinite(ds):
            return None  # parallel: the difference never changes
        guess = (lb.at(0.0) - la.at(0.0)) / ds
        fa, fb = la.at, lb.at
        ea, eb = (_INF if ds > 0 else -_INF), 0.0
    else:
        line = la if la is not None else lb
        assert line is not None
        c = _number(b if la is not None else a)
        if c is None:
            return None  # compared with null or text: false, whatever the line does

        def const(_t: float) -> float:
            return c

        guess, end = line.solve(c), (_INF if line.slope > 0 else -_INF)
        fa, fb, ea, eb = (line.at, const, end, c) if la is not None else (const, line.at, c, end)
    h = _sign if op in ("==", "!=") else _OPS[op]
    base = h(fa(now), fb(now))
    if base == h(ea, eb):
        return None  # already on the side the line is heading to
    found = _first_change(lambda t: h(fa(t), fb(t)), now, guess)
    if found is not None and la is not None and lb is not None:
        # two rounded lines need not cross monotonically: take any flip a few floats earlier
        t = found
        for _ in range(32):
            t = math.nextafter(t, -_INF)
            if t <= now:
                break
            if h(fa(t), fb(t)) != base:
                found = t
    return found


# --- operands ------------------------------------------------------------------------------------


class _Operand:
    """A value in a rule; `line` is set when it moves linearly with time alone."""

    __slots__ = ()

    def value(self, facts: Facts) -> object | None:
        raise NotImplementedError

    def sample(self, facts: Facts) -> tuple[object | None, _Line | None]:
        return self.value(facts), None

    def step(self, facts: Facts) -> float | None:
        return None


@dataclass(frozen=True, slots=True)
class _Const(_Operand):
    constant: object | None

    def value(self, facts: Facts) -> object | None:
        return self.constant


@dataclass(frozen=True, slots=True)
class _Feature(_Operand):
    name: str
    kind: FeatureKind

    def value(self, facts: Facts) -> object | None:
        return self.sample(facts)[0]

    def sample(self, facts: Facts) -> tuple[object | None, _Line | None]:
        if self.kind is FeatureKind.NUMBER:
            line = _linear(facts, self.name)
            if line is not None:
                return line.at(facts.now), line
        elif self.kind is FeatureKind.TIME:
            return facts.time_of(self.name), None
        return facts.value(self.name), None

    def step(self, facts: Facts) -> float | None:
        return _step(facts, self.name)


@dataclass(frozen=True, slots=True)
class _Trait(_Operand):
    name: str  # "traits.x"

    def value(self, facts: Facts) -> object | None:
        return facts.value(self.name)

    def step(self, facts: Facts) -> float | None:
        return _step(facts, self.name)


@dataclass(frozen=True, slots=True)
class _Days(_Operand):
    """days_since(name) = (now - t) / 1 day; days_until(name) = (t - now) / 1 day."""

    name: str
    until: bool

    def value(self, facts: Facts) -> object | None:
        return self.sample(facts)[0]

    def sample(self, facts: Facts) -> tuple[object | None, _Line | None]:
        t = facts.time_of(self.name)
        if t is None or not math.isfinite(t):
            return None, None
        line = _Line(float(t), DAY, self.until)
        return line.at(facts.now), line

    def step(self, facts: Facts) -> float | None:
        return _step(facts, self.name)


# --- conditions ----------------------------------------------------------------------------------


class Condition:
    """A compiled rule: whether it holds at facts.now, and when that may next change."""

    __slots__ = ()

    def evaluate(self, facts: Facts) -> bool:
        raise NotImplementedError

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        """(holds now, earliest time > now it may change with no new event, None: never)."""
        raise NotImplementedError

    def next_change(self, facts: Facts) -> float | None:
        return self.probe(facts)[1]


@dataclass(frozen=True, slots=True)
class _Constant(Condition):
    holds: bool

    def evaluate(self, facts: Facts) -> bool:
        return self.holds

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        return self.holds, None


@dataclass(frozen=True, slots=True)
class _Or(Condition):
    parts: tuple[Condition, ...]

    def evaluate(self, facts: Facts) -> bool:
        return any(part.evaluate(facts) for part in self.parts)

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        probes = [part.probe(facts) for part in self.parts]
        if any(holds for holds, _ in probes):  # stays true while any true part does
            return True, _latest(t for holds, t in probes if holds)
        return False, _earliest(t for _, t in probes)


@dataclass(frozen=True, slots=True)
class _And(Condition):
    parts: tuple[Condition, ...]

    def evaluate(self, facts: Facts) -> bool:
        return all(part.evaluate(facts) for part in self.parts)

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        probes = [part.probe(facts) for part in self.parts]
        if all(holds for holds, _ in probes):
            return True, _earliest(t for _, t in probes)
        return False, _latest(t for holds, t in probes if not holds)  # false while any is


@dataclass(frozen=True, slots=True)
class _Not(Condition):
    part: Condition

    def evaluate(self, facts: Facts) -> bool:
        return not self.part.evaluate(facts)

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        holds, t = self.part.probe(facts)
        return not holds, t


@dataclass(frozen=True, slots=True)
class _Compare(Condition):
    op: str
    left: _Operand
    right: _Operand
    loose: bool  # a trait is involved: numeric strings compare as numbers

    def evaluate(self, facts: Facts) -> bool:
        return _compare(self.op, self.left.value(facts), self.right.value(facts), self.loose)

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        a, la = self.left.sample(facts)
        b, lb = self.right.sample(facts)
        holds = _compare(self.op, a, b, self.loose)
        cross = _crossing(self.op, facts.now, a, la, b, lb)
        return holds, _earliest((self.left.step(facts), self.right.step(facts), cross))


@dataclass(frozen=True, slots=True)
class _IsNull(Condition):
    operand: _Operand
    negate: bool  # != null

    def evaluate(self, facts: Facts) -> bool:
        return (self.operand.value(facts) is None) != self.negate

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        return self.evaluate(facts), self.operand.step(facts)


@dataclass(frozen=True, slots=True)
class _In(Condition):
    operand: _Operand
    values: tuple[object | None, ...]
    negate: bool
    loose: bool

    def _holds(self, x: object | None) -> bool:
        if self.negate:
            return all(_differs(x, v, self.loose) for v in self.values)
        return any(_equal(x, v, self.loose) for v in self.values)

    def evaluate(self, facts: Facts) -> bool:
        return self._holds(self.operand.value(facts))

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        x, line = self.operand.sample(facts)
        times = [self.operand.step(facts)]
        if line is not None:
            times += [_crossing("==", facts.now, x, line, v, None) for v in self.values]
        return self._holds(x), _earliest(times)


@dataclass(frozen=True, slots=True)
class _Truthy(Condition):
    operand: _Operand
    loose: bool

    def evaluate(self, facts: Facts) -> bool:
        return _boolean(self.operand.value(facts), self.loose) is True

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        return self.evaluate(facts), self.operand.step(facts)


@dataclass(frozen=True, slots=True)
class _Has(Condition):
    operand: _Operand

    def evaluate(self, facts: Facts) -> bool:
        value = self.operand.value(facts)
        return value is not None and value != ""

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        return self.evaluate(facts), self.operand.step(facts)


@dataclass(frozen=True, slots=True)
class _Window(Condition):
    """The latest view / cart add / order in a category is at most `window` before now."""

    category: str
    kinds: tuple[str, ...]
    window: Duration

    def _end(self, facts: Facts) -> float | None:
        times = [facts.category_time(self.category, kind) for kind in self.kinds]
        latest = max((t for t in times if t is not None), default=None)
        return None if latest is None else self.window.after(latest)

    def evaluate(self, facts: Facts) -> bool:
        end = self._end(facts)
        return end is not None and facts.now <= end

    def probe(self, facts: Facts) -> tuple[bool, float | None]:
        end = self._end(facts)
        if end is None or facts.now > end:
            return False, None
        after = math.nextafter(end, _INF)  # inclusive: still in at `end`, out just after
        return True, after if math.isfinite(after) else None


# --- the parser ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # name number string duration op ( ) [ ] , end
    text: str
    pos: int
    value: Any = None  # Any, not object: mypyc cannot compile a field annotated `object`


# text features with a fixed set of values: a value outside it is a typo that would leave
# the segment empty for ever
_CHOICES: dict[str, tuple[str, ...]] = {
    "lifecycle_stage": (VISITOR, *SEGMENT_STAGES),
    "rfm_segment": tuple(slug for slug, _ in RFM_SEGMENTS),
}


@dataclass(frozen=True, slots=True)
class _Term:
    """A parsed operand with what the checks need: its kind and source text."""

    node: _Operand
    kind: str  # number text time bool, "any" (a trait) or "null"
    label: str
    pos: int


_AS_NOUN = {"number": "a number", "text": "text", "bool": "true/false", "time": "a time",
            "any": "a trait", "null": "null"}


def _locate(text: str, pos: int) -> str:
    if "\n" not in text:
        return f"column {pos + 1}"
    line_start = text.rfind("\n", 0, pos) + 1
    return f"line {text.count(chr(10), 0, pos) + 1} column {pos - line_start + 1}"


def _show(token: _Token) -> str:
    return "end of rule" if token.kind == "end" else repr(token.text)


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Parser:
    """Recursive descent over the token list; one instance per rule."""

    def __init__(self, text: str, features: Mapping[str, FeatureKind], where: str) -> None:
        self.text, self.features, self.where = text, features, where
        self.named: set[str] = set()  # the features (not traits) the rule names
        self.depth = 0
        self.i = 0
        self.tokens = self._tokenize()

    def error(self, message: str, pos: int, hint: str = "") -> RuleError:
        return RuleError(self.where, f"{message} at {_locate(self.text, pos)}{hint}")

    # tokens

    def _tokenize(self) -> list[_Token]:
        text, n, i = self.text, len(self.text), 0
        tokens: list[_Token] = []
        while i < n:
            ch, start = text[i], i
            if ch in " \t\r\n":
                i += 1
                continue
            if ch in _NAME_START:
                i = self._scan_name(i)
                if text[start:i] == "traits" and i < n and text[i] == ".":
                    found = _TRAIT_NAME.match(text, i + 1)
                    if found is None:
                        raise self.error("syntax error: expected a trait name after 'traits.'", i)
                    i = found.end()
                    if i < n and text[i] == ".":  # a path that goes on with no valid key
                        raise self.error("syntax error: expected a trait name after '.'", i)
                tokens.append(_Token("name", text[start:i], start))
            elif ch in _DIGITS or (ch == "-" and i + 1 < n and text[i + 1] in _DIGITS):
                i, token = self._scan_number(i)
                tokens.append(token)
            elif ch in "\"'":
                i, token = self._scan_string(i)
                tokens.append(token)
            elif text.startswith(("==", "!=", "<=", ">="), i):
                tokens.append(_Token("op", text[i:i + 2], start))
                i += 2
            elif ch in "<>":
                tokens.append(_Token("op", ch, start))
                i += 1
            elif ch in "()[],":
                tokens.append(_Token(ch, ch, start))
                i += 1
            elif ch == "=":
                raise self.error("syntax error: '=' is not an operator (use '==')", i)
            else:
                raise self.error(f"syntax error: unexpected {ch!r}", i)
        tokens.append(_Token("end", "", n))
        return tokens

    def _scan_name(self, i: int) -> int:
        if i >= len(self.text) or self.text[i] not in _NAME_START:
            return i
        while i < len(self.text) and self.text[i] in _NAME_CHARS:
            i += 1
        return i

    def _scan_number(self, start: int) -> tuple[int, _Token]:
        text, n = self.text, len(self.text)
        i = start + 1
        while i < n and text[i] in _DIGITS:
            i += 1
        if i + 1 < n and text[i] == "." and text[i + 1] in _DIGITS:
            i += 2
            while i < n and text[i] in _DIGITS:
                i += 1
        number = text[start:i]
        if i < n and text[i] in _NAME_CHARS:  # a unit follows: a duration
            end = i
            while end < n and text[end] in _NAME_CHARS:
                end += 1
            whole = text[start:end]
            found = _duration(number, text[i:end], whole)
            if found is None and re.fullmatch(r"[eE][+-]?\d*", text[i:end]):
                raise self.error(f"write the number {whole!r} without an exponent "
                                 "(1000, not 1e3)", start)
            if found is None:
                raise self.error(f"bad duration {whole!r} (expected {_UNITS_HELP})", start)
            return end, _Token("duration", whole, start, found)
        value = float(number)
        if not math.isfinite(value):
            raise self.error(f"number {number!r} is too large", start)
        return i, _Token("number", number, start, value)

    def _scan_string(self, start: int) -> tuple[int, _Token]:
        text, quote, i = self.text, self.text[start], start + 1
        chars: list[str] = []
        while True:
            if i >= len(text) or text[i] == "\n":
                raise self.error("syntax error: unterminated string", start)
            ch = text[i]
            if ch == quote:
                return i + 1, _Token("string", text[start:i + 1], start, "".join(chars))
            if ch == "\\":
                escaped = _ESCAPES.get(text[i + 1]) if i + 1 < len(text) else None
                if escaped is None:
                    raise self.error("syntax error: bad escape in string", i)
                chars.append(escaped)
                i += 2
                continue
            chars.append(ch)
            i += 1

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def keyword(self, word: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "name" and token.text == word

    def expect(self, kind: str) -> _Token:
        token = self.advance()
        if token.kind != kind:
            raise self.error(f"syntax error: expected {kind!r}, found {_show(token)}", token.pos)
        return token

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels", token.pos)

    # grammar

    def parse(self) -> Condition:
        if self.peek().kind == "end":
            raise self.error("syntax error: empty rule", 0)
        node = self.expr()
        token = self.peek()
        if token.kind == ")":
            raise self.error("syntax error: unbalanced parentheses: unexpected ')'", token.pos)
        if token.kind != "end":
            raise self.error(f"syntax error: unexpected {_show(token)} after a complete "
                             "condition (missing 'and' or 'or'?)", token.pos)
        return node

    def expr(self) -> Condition:
        parts = [self.and_expr()]
        while self.keyword("or"):
            self.advance()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else _Or(tuple(parts))

    def and_expr(self) -> Condition:
        parts = [self.not_expr()]
        while self.keyword("and"):
            self.advance()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else _And(tuple(parts))

    def not_expr(self) -> Condition:
        if not self.keyword("not"):
            return self.atom()
        self.enter(self.advance())
        inner = self.not_expr()
        self.depth -= 1
        return _Not(inner)

    def atom(self) -> Condition:
        token = self.peek()
        if token.kind == "(":
            self.enter(self.advance())
            node = self.expr()
            close = self.advance()
            if close.kind == "end":
                raise self.error("syntax error: unbalanced parentheses: this '(' is never closed",
                                 token.pos)
            if close.kind != ")":
                raise self.error(f"syntax error: expected ')', 'and' or 'or', found "
                                 f"{_show(close)}", close.pos)
            self.depth -= 1
            return node
        if token.kind == "name" and token.text in _PREDICATES and self.peek(1).kind == "(":
            return self.predicate()
        left = self.operand()
        token = self.peek()
        if token.kind == "op":
            self.advance()
            return self.comparison(token, left, self.operand())
        if self.keyword("in"):
            self.advance()
            return self.membership(token, left, negate=False)
        if self.keyword("not") and self.keyword("in", 1):
            self.advance()
            self.advance()
            return self.membership(token, left, negate=True)
        if not (token.kind in ("end", ")") or self.keyword("and") or self.keyword("or")):
            raise self.error(f"syntax error: unexpected {_show(token)} after {left.label!r}",
                             token.pos)
        return self.condition_of(left)

    def predicate(self) -> Condition:
        name = self.advance()
        self.expect("(")
        if name.text == "has":
            term = self.feature_argument(name)
            self.expect(")")
            return _Has(term.node)
        category = self.advance()
        if category.kind != "string" or not isinstance(category.value, str):
            raise self.error(f"syntax error: {name.text}() takes a category in quotes first, "
                             f'e.g. {name.text}("shoes", 30d)', category.pos)
        if not category.value.strip():
            raise self.error("empty category", category.pos)
        self.expect(",")
        window = self.advance()
        if window.kind != "duration" or not isinstance(window.value, Duration):
            raise self.error(f"bad duration {_show(window)} (expected {_UNITS_HELP})",
                             window.pos)
        if window.value.bounds()[0] <= 0:
            raise self.error(f"the window {window.text!r} must be longer than 0", window.pos)
        self.expect(")")
        return _Window(category.value, _WINDOWS[name.text], window.value)

    def feature_argument(self, function: _Token) -> _Term:
        token = self.advance()
        if token.kind != "name" or token.text in _KEYWORDS or self.peek().kind == "(":
            raise self.error(f"{function.text}() takes a feature name, e.g. "
                             f"{function.text}(traits.birthday)", token.pos)
        return self.feature(token)

    def operand(self) -> _Term:
        token = self.advance()
        label, pos = token.text, token.pos
        if token.kind == "number":
            return _Term(_Const(token.value), "number", label, pos)
        if token.kind == "string":
            return _Term(_Const(token.value), "text", label, pos)
        if token.kind == "duration":
            raise self.error(f"a duration like {label!r} can only be the window of viewed, "
                             "carted, bought or interested", pos)
        if token.kind != "name" or label in ("and", "or", "not", "in"):
            raise self.error(f"syntax error: expected a feature or a value, found "
                             f"{_show(token)}", pos)
        if label in ("true", "false", "null"):
            constant = None if label == "null" else label == "true"
            return _Term(_Const(constant), "null" if constant is None else "bool", label, pos)
        if self.peek().kind != "(":
            return self.feature(token)
        if label in _PREDICATES:
            raise self.error(f"{label}(...) is a condition, not a value", pos)
        if label not in _NUMBER_CALLS:
            raise self.error(f"syntax error: unknown function {label!r}", pos,
                             _suggest(label, _FUNCTIONS))
        self.expect("(")
        term = self.feature_argument(token)
        if term.kind not in ("time", "any"):
            raise self.error(f"{label}() needs a time feature or a date trait; "
                             f"{term.label!r} is {_AS_NOUN[term.kind]}", term.pos)
        close = self.expect(")")
        node = _Days(term.label, until=label == "days_until")
        return _Term(node, "number", self.text[pos:close.pos + 1], pos)

    def feature(self, token: _Token) -> _Term:
        name = token.text
        if name.startswith("traits."):
            return _Term(_Trait(name), "any", name, token.pos)
        kind = self.features.get(name)
        if kind is None:
            raise self.error(f"unknown feature {name!r}", token.pos,
                             _suggest(name, self.features))
        self.named.add(name)
        return _Term(_Feature(name, kind), kind.value, name, token.pos)

    def check_pair(self, op: _Token, left: _Term, right: _Term) -> None:
        """Reject comparisons whose kinds are known not to fit."""
        for term in (left, right):
            if term.kind == "time":
                raise self.error(f"{term.label!r} is a time: use days_since({term.label}), "
                                 f"days_until({term.label}), has({term.label}) or == null",
                                 term.pos)
        kinds = {left.kind, right.kind}
        if "any" in kinds or "null" in kinds:
            return
        if left.kind != right.kind:
            raise self.error(f"cannot compare {left.label} ({_AS_NOUN[left.kind]}) with "
                             f"{right.label} ({_AS_NOUN[right.kind]})", op.pos)
        if left.kind == "bool" and op.text not in ("==", "!="):
            raise self.error("true/false can only be compared with == or !=", op.pos)
        for feature, other in ((left, right), (right, left)):
            choices = (_CHOICES.get(feature.node.name)
                       if isinstance(feature.node, _Feature) else None)
            if (choices is not None and isinstance(other.node, _Const)
                    and other.node.constant not in choices):
                raise self.error(f"{feature.label} is one of {', '.join(map(repr, choices))}: "
                                 f"{other.node.constant!r} never matches", other.pos)

    def comparison(self, op: _Token, left: _Term, right: _Term) -> Condition:
        if "null" in (left.kind, right.kind):
            if op.text not in ("==", "!="):
                raise self.error("null can only be compared with == or !=", op.pos)
            if left.kind == right.kind:
                return _Constant(op.text == "==")
            other = right if left.kind == "null" else left
            return _IsNull(other.node, negate=op.text == "!=")
        self.check_pair(op, left, right)
        return _Compare(op.text, left.node, right.node, "any" in (left.kind, right.kind))

    def membership(self, op: _Token, left: _Term, *, negate: bool) -> Condition:
        self.check_pair(op, left, _Term(_Const(None), "null", "null", op.pos))
        if left.kind == "null":
            raise self.error("use == null or != null to test for null", op.pos)
        self.expect("[")
        values: list[object | None] = []
        while True:
            item = self.operand()
            if not isinstance(item.node, _Const):
                raise self.error("syntax error: list items must be literal values (numbers, "
                                 "strings, true, false or null)", item.pos)
            self.check_pair(op, left, item)
            values.append(item.node.constant)
            separator = self.advance()
            if separator.kind == "]":
                break
            if separator.kind != ",":
                raise self.error(f"syntax error: expected ',' or ']', found {_show(separator)}",
                                 separator.pos)
        return _In(left.node, tuple(values), negate, left.kind == "any")

    def condition_of(self, term: _Term) -> Condition:
        """A lone operand as a condition: only booleans (and untyped traits) qualify."""
        if isinstance(term.node, _Feature | _Trait) and term.kind in ("bool", "any"):
            return _Truthy(term.node, loose=term.kind == "any")
        if term.kind == "time":
            self.check_pair(_Token("op", "==", term.pos), term, term)
        if isinstance(term.node, _Const):
            raise self.error(f"syntax error: expected a condition, found {term.label}",
                             term.pos)
        example = f"{term.label} > 0" if term.kind == "number" else f'{term.label} == "..."'
        raise self.error(f"{term.label} is {_AS_NOUN[term.kind]}, not a condition: compare "
                         f"it, e.g. {example}", term.pos)


def compile_rule(rule: object, features: Mapping[str, FeatureKind],
                 where: str = "rule") -> Condition:
    """Parse and check one rule string; errors are RuleErrors prefixed with `where`."""
    return _compile(rule, features, where)[0]


def _compile(rule: object, features: Mapping[str, FeatureKind],
             where: str) -> tuple[Condition, frozenset[str]]:
    """The rule compiled, and the features it names."""
    if not isinstance(rule, str):
        raise RuleError(where, f"expected a string, got {type(rule).__name__}")
    if len(rule) > MAX_RULE_LENGTH:
        raise RuleError(where, f"rule is too long ({len(rule)} characters, at most "
                               f"{MAX_RULE_LENGTH})")
    parser = _Parser(rule, features, where)
    condition = parser.parse()
    return condition, frozenset(parser.named)


# --- segments ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleSegment:
    """A segment defined by one rule."""

    name: str
    condition: Condition
    rule: str
    description: str = ""
    features: frozenset[str] = frozenset()  # the features the rule names (not traits)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def current(self, facts: Facts) -> str | None:
        return self.name if self.condition.evaluate(facts) else None

    def probe(self, facts: Facts) -> tuple[str | None, float | None]:
        holds, t = self.condition.probe(facts)
        return (self.name if holds else None), t


@dataclass(frozen=True, slots=True)
class Band:
    """One stage band: from <= now - date < until (None: unbounded)."""

    name: str
    segment: str  # "<stage>:<band>"
    start: Duration | None
    end: Duration | None


@dataclass(frozen=True, slots=True)
class StageSegment:
    """Consecutive bands of time since a date; a client is in at most one of them."""

    name: str
    source: str  # a TIME feature or "traits.<date trait>"
    bands: tuple[Band, ...]
    description: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(band.segment for band in self.bands)

    @property
    def features(self) -> frozenset[str]:
        return frozenset() if self.source.startswith("traits.") else frozenset({self.source})

    def current(self, facts: Facts) -> str | None:
        return self.probe(facts)[0]

    def probe(self, facts: Facts) -> tuple[str | None, float | None]:
        step = _step(facts, self.source)
        t = facts.time_of(self.source)
        if t is None or not math.isfinite(t):
            return None, step
        now, current, edges = facts.now, None, [step]
        for band in self.bands:
            lo = band.start.after(t) if band.start is not None else -_INF
            hi = band.end.after(t) if band.end is not None else _INF
            if lo <= now < hi:
                current = band.segment
            edges += [edge for edge in (lo, hi) if now < edge < _INF]
        return current, _earliest(edges)


Segment = RuleSegment | StageSegment


@dataclass(frozen=True, slots=True)
class SegmentCatalog:
    """Every compiled segment, in definition order."""

    segments: tuple[Segment, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every segment name the catalogue can produce, `<stage>:<band>` included."""
        return tuple(name for segment in self.segments for name in segment.names)

    def memberships(self, facts: Facts) -> frozenset[str]:
        """The segments the client is in at facts.now."""
        found = (segment.current(facts) for segment in self.segments)
        return frozenset(name for name in found if name is not None)

    @property
    def traits(self) -> frozenset[str]:
        """The traits the definitions read (the top key of a path such as `consents.email`):
        a client's state keeps them when it has too many."""
        texts = [segment.rule if isinstance(segment, RuleSegment) else segment.source
                 for segment in self.segments]
        return frozenset(found.group(1).split(".")[0] for text in texts
                         for found in _TRAIT_READ.finditer(text))

    def naming(self, features: frozenset[str]) -> tuple[Segment, ...]:
        """The segments whose definition names any of `features`."""
        return tuple(segment for segment in self.segments if segment.features & features)

    def next_change(self, facts: Facts) -> float | None:
        """The earliest time > now at which a membership may change with no new event (never
        later than the real change; None: not with time alone)."""
        return _earliest(segment.probe(facts)[1] for segment in self.segments)


def _check_name(name: object, path: str, what: str) -> str:
    if (not isinstance(name, str) or len(name) > MAX_NAME_LENGTH
            or not _SEGMENT_NAME.fullmatch(name)):
        raise RuleError(path, f"bad {what} name {name!r}: use lower-case letters, digits, '_' "
                              f"and '-' (not starting with '-'), at most {MAX_NAME_LENGTH}")
    return name


def _check_keys(spec: Mapping[Any, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in spec:
        if key not in allowed:
            hint = _suggest(key, allowed) if isinstance(key, str) else ""
            raise RuleError(f"{path}.{key}", f"unknown key (expected {', '.join(allowed)}){hint}")


def _band_duration(value: object, path: str) -> Duration:
    found = None
    if isinstance(value, str) and (match := _DURATION_TEXT.fullmatch(value)):
        found = _duration(match.group(1), match.group(2), value.strip())
    if found is None:
        raise RuleError(path, f"bad duration {value!r} (expected {_UNITS_HELP})")
    return found


def _compile_stages(name: str, raw: object, features: Mapping[str, FeatureKind],
                    path: str, description: str) -> StageSegment:
    if not isinstance(raw, Mapping):
        raise RuleError(path, "expected a mapping with 'from' and 'bands'")
    _check_keys(raw, ("from", "bands"), path)
    source = raw.get("from")
    if not isinstance(source, str):
        raise RuleError(f"{path}.from", "expected a time feature or a date trait, e.g. "
                                        "traits.child_birth_date")
    source = source.strip()
    if source.startswith("traits."):
        if not _TRAIT_NAME.fullmatch(source.removeprefix("traits.")):
            raise RuleError(f"{path}.from", f"bad trait name {source!r}")
    elif source not in features:
        raise RuleError(f"{path}.from", f"unknown feature {source!r}{_suggest(source, features)}")
    elif features[source] is not FeatureKind.TIME:
        raise RuleError(f"{path}.from", f"{source!r} is {_AS_NOUN[features[source].value]}, "
                                        "not a time")
    raw_bands = raw.get("bands")
    if not isinstance(raw_bands, Mapping) or not raw_bands:
        raise RuleError(f"{path}.bands", "expected a mapping of band names to {from, until}")
    bands: list[Band] = []
    for band_name, spec in raw_bands.items():
        band_path = f"{path}.bands.{band_name}"
        _check_name(band_name, band_path, "band")
        if not isinstance(spec, Mapping):
            raise RuleError(band_path, "expected a mapping with 'from' and/or 'until'")
        _check_keys(spec, ("from", "until"), band_path)
        start = _band_duration(spec["from"], f"{band_path}.from") if "from" in spec else None
        end = _band_duration(spec["until"], f"{band_path}.until") if "until" in spec else None
        if start is not None and end is not None and not _surely_before(start, end,
                                                                         strict=True):
            raise RuleError(band_path, f"empty band: from {start.text} is not always before "
                                       f"until {end.text}")
        bands.append(Band(band_name, f"{name}:{band_name}", start, end))
    _check_overlaps(bands, f"{path}.bands")
    return StageSegment(name, source, tuple(bands), description)


def _check_overlaps(bands: list[Band], path: str) -> None:
    """Bands must be disjoint for every date: sorted by start, each ends before the next."""
    def key(band: Band) -> tuple[float, float]:
        return band.start.bounds() if band.start is not None else (-_INF, -_INF)

    ordered = sorted(bands, key=key)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.end is None or b.start is None or not _surely_before(a.end, b.start,
                                                                  strict=False):
            until = f"until {a.end.text}" if a.end is not None else "no until"
            start = f"from {b.start.text}" if b.start is not None else "no from"
            raise RuleError(path, f"bands {a.name!r} ({until}) and {b.name!r} ({start}) "
                                  "overlap: a client must fall in at most one band")


def compile_segments(raw: Mapping[Any, Any], features: Mapping[str, FeatureKind],
                     check: Callable[[Segment], None] | None = None) -> SegmentCatalog:
    """Compile the `segments:` mapping; a problem raises a RuleError naming its field, and
    the problems of the other segments follow it in its message, one line each (so that
    `crmflow check-config` shows every one at once). `check`: the caller's own test of
    each compiled segment (a RuleError of it is one of those problems)."""
    if not isinstance(raw, Mapping):
        raise RuleError("segments", "expected a mapping of segment names to definitions")
    segments: list[Segment] = []
    errors: list[RuleError] = []
    for name, spec in raw.items():
        try:
            segment = _compile_segment(name, spec, features)
            if check is not None:
                check(segment)
            segments.append(segment)
        except RuleError as exc:
            errors.append(exc)
    if len(errors) > 1:
        first = str(errors[0]).removeprefix(f"{errors[0].path}: ")
        raise RuleError(errors[0].path, first + "".join(f"\n  {e}" for e in errors[1:]))
    if errors:
        raise errors[0]
    return SegmentCatalog(tuple(segments))


def _compile_segment(name: Any, spec: Any, features: Mapping[str, FeatureKind]) -> Segment:
    """One segment's definition, compiled; a RuleError names what is wrong."""
    path = f"segments.{name}"
    _check_name(name, path, "segment")
    if not isinstance(spec, Mapping):
        raise RuleError(path, "expected a mapping with 'rule' or 'stages'")
    _check_keys(spec, ("rule", "stages", "description"), path)
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise RuleError(f"{path}.description",
                        f"expected a string, got {type(description).__name__}")
    if ("rule" in spec) == ("stages" in spec):
        raise RuleError(path, "give exactly one of 'rule' or 'stages'")
    if "rule" in spec:
        rule = spec["rule"]
        condition, named = _compile(rule, features, f"{path}.rule")
        return RuleSegment(name, condition, rule, description, named)
    return _compile_stages(name, spec["stages"], features, f"{path}.stages", description)
