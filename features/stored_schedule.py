"""A client's timer schedule stored beside its state, so a process loading a bucket can
trust it instead of recomputing it.

Computing each client's next due time (every timer rule, every segment's next change) was
a quarter of loading a bucket once the collector was out of the way. A stored due time holds
only for the code and rules it was computed under, so it carries their fingerprints: the
rules' own (with the RFM population model left out, plus the allowed lateness that decides
the clock, plus a digest of the core's code), and the model's, which matters only to
buyers (`depends_on_model`). Anything else is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from features.fingerprint import fingerprint
from features.rules import TriggerRules
from features.state import ClientState


class StoredSchedule(NamedTuple):  # a tuple: made for every client a process loads
    due: float | None  # next_due under the rules fingerprinted (None: no timer)
    live: bool  # is_live(state, allowed lateness) when stored
    buyer: bool  # depends_on_model(state)
    rules_print: int
    model_print: int


@dataclass(frozen=True, slots=True)
class SchedulePrints:
    """Fingerprints of the rules a process schedules under (None: not fingerprintable, so
    nothing stored is trusted and nothing stored will be)."""

    rules: int | None
    model: int | None

    @classmethod
    def of(cls, rules: TriggerRules, allowed_lateness: float, code: bytes | None
           ) -> SchedulePrints:
        """`code`: a digest of the code that computes due times (None: unknown, so nothing
        is trusted)."""
        if code is None:
            return cls(None, None)
        without_model = replace(rules, segments=replace(rules.segments, rfm_model=None))
        try:
            return cls(fingerprint((without_model, allowed_lateness, code)),
                       fingerprint(rules.segments.rfm_model))
        except TypeError:
            return cls(None, None)

    def stamp(self, due: float | None, live: bool, state: ClientState) -> StoredSchedule | None:
        """The schedule to store with `state`, or None when it could never be trusted."""
        if self.rules is None or self.model is None:
            return None
        return StoredSchedule(due, live, depends_on_model(state), self.rules, self.model)

    def trusts(self, stored: StoredSchedule) -> bool:
        return stored.rules_print == self.rules and (
            not stored.buyer or stored.model_print == self.model)


def depends_on_model(state: ClientState) -> bool:
    """Whether the RFM model can move the client's due times: only a buyer is scored (a
    property test checks a non-buyer's next due time is the same under any model)."""
    return state.orders_count > 0 or state.last_order_at is not None or bool(state.orders)
