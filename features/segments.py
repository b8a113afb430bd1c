"""Segment memberships: lifecycle stages, named RFM segments and the operator's rule
segments, kept in the client's state with the time each was entered.

Memberships are evaluated whenever the client's state changes and again when time alone
would change one (`next_change`: an at_risk threshold, a rule's window expiring, a child's
age band). The adapter diffs the memberships before and after to maintain the member sets
and to record entries and exits, so reads never evaluate rules nor scan clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from features import rfm
from features.calendar import parse_birthday
from features.lifecycle import (
    SEGMENT_STAGES,
    lifecycle_next_change,
    lifecycle_stage,
    recency_anchor,
)
from features.rules import SegmentRules
from features.segment_rules import (
    FeatureKind,
    RuleError,
    Segment,
    SegmentCatalog,
    compile_segments,
)
from features.state import ClientState, evolve
from features.values import FEATURES, Context, Kind, rfm_scores

LIFECYCLE_PREFIX = "lifecycle:"
RFM_PREFIX = "rfm:"
# The cell of the RFM map (R score x F score) a buyer is filed in: an internal membership,
# kept like a segment so the map's counts and member lists are set reads, never a scan; it
# is not a segment of the API (not listed, not in profiles, no entry/exit records).
RFM_CELL_PREFIX = "rfm-cell:"
SCORES = range(1, 6)


def rfm_cell_name(r: int, f: int) -> str:
    return f"{RFM_CELL_PREFIX}r{r}f{f}"


def rfm_cell_names() -> list[str]:
    return [rfm_cell_name(r, f) for r in SCORES for f in SCORES]


def is_public(name: str) -> bool:
    """A segment the API and exports show (not an RFM map cell)."""
    return not name.startswith(RFM_CELL_PREFIX)


def public_segments(state: ClientState) -> list[tuple[str, float]]:
    return [(name, at) for name, at in state.segments if is_public(name)]


def _is_rfm(name: str) -> bool:
    return name.startswith((RFM_PREFIX, RFM_CELL_PREFIX))


def trait_value(traits: Mapping[str, Any], path: str) -> object | None:
    """A trait by its key, or by a path into nested traits (`consents.email`)."""
    value: object | None = traits.get(path)
    if value is None and "." in path:
        value = traits
        for key in path.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
    return value


class ClientFacts:
    """The segment rules' view of one client at one moment (features/segment_rules.py)."""

    __slots__ = ("_context", "_values", "now")

    def __init__(self, state: ClientState, now: float, rules: SegmentRules) -> None:
        self.now = now
        self._context = Context(state, now, rules)
        self._values: dict[str, object | None] = {}

    def value(self, name: str) -> object | None:
        if name in self._values:
            return self._values[name]
        value: object | None
        if name.startswith("traits."):
            value = trait_value(self._context.state.traits, name[7:])
        else:
            feature = FEATURES.get(name)
            value = None if feature is None else feature.get(self._context)
        self._values[name] = value
        return value

    def linear(self, name: str) -> tuple[float, float] | None:
        feature = FEATURES.get(name)
        if feature is None or feature.anchor is None:
            return None
        anchor = feature.anchor(self._context)
        return None if anchor is None else (anchor, feature.unit)

    def next_change(self, name: str) -> float | None:
        feature = FEATURES.get(name)
        if feature is None or feature.next_change is None:
            return None
        return feature.next_change(self._context)

    def category_time(self, category: str, kind: str) -> float | None:
        for interest in self._context.state.interests:
            if interest.category == category:
                value: float | None = getattr(interest, f"{kind}_at")
                return value
        return None

    def time_of(self, name: str) -> float | None:
        if name.startswith("traits."):
            return trait_time(trait_value(self._context.state.traits, name[7:]))
        feature = FEATURES.get(name)
        if feature is None or feature.kind is not Kind.TIME:
            return None
        value = feature.get(self._context)
        return None if value is None else float(value)


def trait_time(value: object) -> float | None:
    """A date trait (YYYY-MM-DD, or an ISO date-time) as epoch seconds, UTC midnight."""
    parsed = parse_birthday(value)
    if parsed is None:
        return None
    return datetime(*parsed, tzinfo=UTC).timestamp()


def memberships(state: ClientState, now: float, rules: SegmentRules) -> set[str]:
    if state.merged_into is not None:
        return set()  # a merged anonymous client lives on in the client it joined
    names: set[str] = set()
    stage = lifecycle_stage(state, now, rules.lifecycle)
    if stage in SEGMENT_STAGES:
        names.add(LIFECYCLE_PREFIX + stage)
    names.update(_rfm_names(state, now, rules))
    if rules.catalog is not None:
        names.update(rules.catalog.memberships(ClientFacts(state, now, rules)))
    return names


def _rfm_names(state: ClientState, now: float, rules: SegmentRules) -> frozenset[str]:
    """The RFM segment and map cell the client belongs in at `now` (none for non-buyers)."""
    scores = rfm_scores(Context(state, now, rules))
    if scores is None:
        return frozenset()
    return frozenset((RFM_PREFIX + rfm.rfm_segment(*scores), rfm_cell_name(scores[0],
                                                                           scores[1])))


# The features a new RFM model changes: a rule segment naming one is re-filed with the RFM
# segment when a model is adopted.
RFM_FEATURES = frozenset(name for name, feature in FEATURES.items() if feature.group == "rfm")


def _model_dependent(name: str) -> bool:
    """A membership a new RFM model may change, going by its name: the RFM segment and
    cell, and any rule segment (which of those name an RFM feature, only the rules know)."""
    return not name.startswith(LIFECYCLE_PREFIX)


def rfm_filing(state: ClientState, now: float, rules: SegmentRules) -> frozenset[str]:
    """What `current_filing` should hold under `rules`' RFM model: the RFM segment and map
    cell, and the rule segments as recorded except those naming an RFM feature, which are
    evaluated again. All as of the last evaluation (`now` before there was one): a new
    model changes what the population says, and what time alone changes (R in mode fixed,
    a rule's window) waits for the client's own timer, which may be behind `now`."""
    if state.merged_into is not None:
        return frozenset()
    at = state.segments_at or now
    names = set(_rfm_names(state, at, rules))
    dependent = () if rules.catalog is None else rules.catalog.naming(RFM_FEATURES)
    recorded = {name for name, _ in state.segments
                if _model_dependent(name) and not _is_rfm(name)}
    if dependent:
        recorded.difference_update(name for segment in dependent for name in segment.names)
        facts = ClientFacts(state, at, rules)
        found = (segment.current(facts) for segment in dependent)
        recorded.update(name for name in found if name is not None)
    return frozenset(names | recorded)


def current_filing(state: ClientState) -> frozenset[str]:
    """The memberships recorded in the state that a new RFM model may change (see
    `rfm_filing`): the RFM segment and map cell, and the rule segments."""
    return frozenset(name for name, _ in state.segments if _model_dependent(name))


def next_change(state: ClientState, now: float, rules: SegmentRules) -> float | None:
    """The earliest time after `now` at which a membership may change with no new event."""
    if state.merged_into is not None:
        return None
    times = [lifecycle_next_change(state, now, rules.lifecycle)]
    last_bought = recency_anchor(state)
    if rules.rfm_enabled and rules.rfm_model is not None and last_bought is not None:
        times.append(rfm.next_score_change(rules.rfm_model, last_bought, now))
    if rules.catalog is not None:
        times.append(rules.catalog.next_change(ClientFacts(state, now, rules)))
    later = [t for t in times if t is not None and t > now]
    return min(later) if later else None


def due(state: ClientState, rules: SegmentRules) -> float | None:
    """When the memberships are next evaluated by the clock (None: not until an event)."""
    return next_change(state, state.segments_at, rules)


def resegment(state: ClientState, now: float, rules: SegmentRules) -> ClientState:
    """The state with its memberships as of `now` (never earlier than the last evaluation);
    a segment kept keeps the time it was entered."""
    now = max(now, state.segments_at)
    entered = dict(state.segments)
    names = memberships(state, now, rules)
    segments = tuple(sorted((name, entered.get(name, now)) for name in names))
    return evolve(state, segments=segments, segments_at=now)


def filed_elsewhere(state: ClientState, rules: SegmentRules) -> bool:
    """Whether `rules` would file the client otherwise than it is, as of its last
    evaluation: rules changed since (a new configuration), not time passing."""
    return memberships(state, state.segments_at, rules) != {name for name, _ in state.segments}


def refile_rfm(state: ClientState, now: float, rules: SegmentRules) -> ClientState:
    """The memberships a new RFM model changes (the RFM segment and map cell, and the rule
    segments naming an RFM feature) brought up to date; a membership kept keeps its entry
    time, one entered is stamped with `now` (the model's adoption)."""
    wanted = rfm_filing(state, now, rules)
    filed = current_filing(state)
    if wanted == filed:
        return state
    kept = [(name, at) for name, at in state.segments if name not in filed or name in wanted]
    had = {name for name, _ in kept}
    kept += [(name, max(now, state.segments_at)) for name in wanted if name not in had]
    return evolve(state, segments=tuple(sorted(kept)))


def changed_at(state: ClientState) -> float:
    """When the state's latest membership change happened: its last evaluation, or a later
    RFM model's adoption, whose entries `refile_rfm` stamps after it. A segment left then
    is left at that time too, not before the segments entered with it."""
    return max(state.segments_at, *(at for _, at in state.segments)) if state.segments else (
        state.segments_at)


def entered(before: ClientState | None, after: ClientState) -> list[tuple[str, float]]:
    old = set() if before is None else {name for name, _ in before.segments}
    return [(name, at) for name, at in after.segments if name not in old]


def left(before: ClientState | None, after: ClientState) -> list[str]:
    if before is None:
        return []
    new = {name for name, _ in after.segments}
    return [name for name, _ in before.segments if name not in new]


def all_segment_names(rules: SegmentRules) -> list[str]:
    """Every segment this configuration can produce, in a stable order."""
    names = [LIFECYCLE_PREFIX + stage for stage in SEGMENT_STAGES]
    if rules.rfm_enabled:
        names += [RFM_PREFIX + slug for slug, _ in rfm.RFM_SEGMENTS]
    if rules.catalog is not None:
        names += list(rules.catalog.names)
    return names


def compile_catalog(raw: dict[str, Any]) -> SegmentCatalog:
    """The operator's `segments:` compiled against the feature table (RuleError if bad)."""
    kinds = {name: FeatureKind(feature.kind.value) for name, feature in FEATURES.items()}
    return compile_segments(raw, kinds, _not_built_in)


def _not_built_in(segment: Segment) -> None:
    if f"{segment.name}:" in _BUILT_IN_PREFIXES:
        raise RuleError(f"segments.{segment.name}", "the name is reserved for crmflow's "
                                                    "built-in segments")
    taken = [name for name in segment.names if name.startswith(_BUILT_IN_PREFIXES)]
    if taken:
        raise RuleError(f"segments.{segment.name}", f"the name is reserved: it would give "
                                                    f"{taken[0]!r}, a built-in segment's name")


# Stage bands are named "<segment>:<band>", so a segment named "lifecycle" or "rfm" would
# produce the built-in segments' names.
_BUILT_IN_PREFIXES = (LIFECYCLE_PREFIX, RFM_PREFIX, RFM_CELL_PREFIX)
