"""From a client's state and an event (or the passing of time) to trigger decisions.

`process_event` and `fire_due` are the entry points the dataflow calls; `next_due` tells it
when to call `fire_due` next. Timers are not stored apart from the state: `due_timers`
derives them from it (the catalogue's rules, plus triggers waiting for a delay or the end
of quiet hours), so a timer is cancelled or re-armed simply by the state changing, and
there is nothing extra to persist or to get out of sync.

Each due occasion becomes a `Candidate` (features/catalogue.py); the policy decides its
fate (features/policy.py) and the result is a `Trigger` record with a status: sent,
holdout, deferred or suppressed (with a reason), or done/skipped for a manual touch. Every
decision is recorded, and the state remembers what was decided, so the same occasion is
never raised twice.

Every trigger id is a hash of (client, type, occasion key): the same history always yields
the same ids, which is what makes replays and at-least-once delivery safe downstream.

A marketing send may leave a follow-up waiting with the other waiting triggers, decided on
a channel not yet tried unless an open naming the send comes first (features/follow_up.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from features import catalogue, follow_up, segments
from features.catalogue import Candidate, occasion_time
from features.events import ANONYMOUS_PREFIX, Event, EventType, format_time
from features.policy import (
    BACKFILL,
    BEFORE_ENABLED,
    CANCELLED,
    DEFERRED,
    DONE,
    PENDING_LIMIT,
    SENT,
    SUPPRESSED,
    Decision,
    decide,
    is_marketing,
    priority_rank,
    record_send,
)
from features.rules import (
    ABANDONED_BROWSE,
    ABANDONED_CART,
    BIRTHDAY,
    CHURN_WINBACK,
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
    TRANSACTIONAL,
    TRIGGER_TYPES,
    WELCOME,
    TriggerRule,
    TriggerRules,
)
from features.state import (
    MAX_DECIDED,
    MAX_HELD,
    MAX_PENDING,
    MAX_TOUCHED,
    ClientState,
    PendingTrigger,
    apply_event,
    evolve,
    is_duplicate,
    occasion_fingerprint,
)

__all__ = [
    "ABANDONED_BROWSE", "ABANDONED_CART", "BIRTHDAY", "CHURN_WINBACK", "FEEDBACK_REQUEST",
    "FIRST_ORDER_PROMO", "LOYALTY_STATUS", "NPS_DETRACTOR_TASK", "NPS_PASSIVE_OFFER",
    "NPS_PROMOTER_REFERRAL", "ONBOARDING", "ORDER_CANCELLATION", "ORDER_CONFIRMATION",
    "ORDER_REFUND",
    "REPLENISHMENT_REMINDER", "SECOND_ORDER_NUDGE", "SEGMENT_ENTERED", "SERVICE_REMINDER",
    "TRANSACTIONAL",
    "TRIGGER_TYPES", "WELCOME", "Trigger", "TriggerRule", "TriggerRules", "due_timers",
    "after_merge", "fire_due", "next_due", "process_event", "refile", "regroup",
    "release_held", "trigger_id",
]

AUTO = "auto"
MANUAL = "manual"
INF = float("inf")


@dataclass(frozen=True, slots=True)
class Trigger:
    """One decision about one occasion of one client."""

    trigger_id: str
    type: str
    client_id: str
    fired_at: float  # event time of the occasion (a timer's due time), epoch seconds UTC
    payload: Mapping[str, Any] = field(default_factory=dict)
    status: str = SENT
    reason: str | None = None
    channel: str | None = None
    key: str = ""  # the occasion key
    decided_at: float | None = None  # when the decision applies; None: at `fired_at`
    source: str = AUTO  # auto, or manual for a touch a manager recorded
    until: float | None = None  # deferred: when it is decided again

    def __init__(self, trigger_id: str, type: str, client_id: str, fired_at: float,
                 payload: Mapping[str, Any] | None = None, status: str = SENT,
                 reason: str | None = None, channel: str | None = None, key: str = "",
                 decided_at: float | None = None, source: str = AUTO,
                 until: float | None = None) -> None:
        # written out (see `features.__init__`); None for `payload`: its default_factory
        object.__setattr__(self, "trigger_id", trigger_id)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "client_id", client_id)
        object.__setattr__(self, "fired_at", fired_at)
        object.__setattr__(self, "payload", {} if payload is None else payload)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "decided_at", decided_at)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "until", until)

    @property
    def ledger_field(self) -> str:
        """The touch-ledger field: a deferral and the final decision are both kept."""
        return f"{self.trigger_id}:deferred" if self.status == DEFERRED else self.trigger_id

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trigger_id": self.trigger_id,
            "type": self.type,
            "key": self.key,
            "client_id": self.client_id,
            "fired_at": format_time(self.fired_at),
            "decided_at": format_time(self.fired_at if self.decided_at is None
                                      else self.decided_at),
            "status": self.status,
            "reason": self.reason,
            "channel": self.channel,
            "source": self.source,
            "payload": dict(self.payload),
        }
        if self.until is not None:
            out["deferred_until"] = format_time(self.until)
        return out


def trigger_id(client_key: str, trigger_type: str, occasion: str) -> str:
    digest = hashlib.sha1(f"{client_key}\x1f{trigger_type}\x1f{occasion}".encode(),
                          usedforsecurity=False)
    return digest.hexdigest()[:24]


# --- timers ---------------------------------------------------------------------------------------

def due_timers(state: ClientState, rules: TriggerRules) -> list[tuple[float, str]]:
    """Pending timers as (due time, kind), earliest first: the catalogue's timer rules, the
    triggers waiting in the state (a delay, or the end of quiet hours), and the next moment
    a segment membership may change with time (kind `segments`)."""
    timers = [(p.release_at, p.type) for p in state.pending]
    timers.extend(catalogue.rule_timers(state, rules))
    regroup = segments.due(state, rules.segments)
    if regroup is not None:
        timers.append((regroup, SEGMENTS_TIMER))
    timers.sort()
    return timers


SEGMENTS_TIMER = "segments"


def next_due(state: ClientState, rules: TriggerRules) -> float | None:
    timers = due_timers(state, rules)
    return timers[0][0] if timers else None


def fire_due(client_key: str, state: ClientState, now: float, rules: TriggerRules
             ) -> tuple[ClientState, list[Trigger]]:
    """Decide every timer due at or before `now` (event time or wall time, the caller's
    clock), in due order; those due at the same moment compete by priority. Segment
    memberships are brought up to each of those moments too. Events held back (see
    `process_event`) are applied in their place among those timers, as far as `now` settles
    them."""
    fired: list[Trigger] = []
    if state.held:
        state, fired = _release(client_key, state, now, rules)
        if state.held:
            return state, fired  # the next timer is after `now`: nothing else is due
    rule_timers = catalogue.rule_timers(state, rules)
    while True:
        at = min((p.release_at for p in state.pending), default=INF)
        at = min(at, min((due for due, _ in rule_timers), default=INF))
        regroup = segments.due(state, rules.segments)
        if at > now and (regroup is None or regroup > now):
            return state, fired
        if at <= now and (regroup is None or at <= regroup):
            state, decided = _fire_at(client_key, state, at, rule_timers, rules)
            fired.extend(decided)
        else:
            assert regroup is not None
            at = regroup
        state, decided = _resegment(client_key, state, at, rules)
        fired.extend(decided)
        rule_timers = catalogue.rule_timers(state, rules)


def regroup(client_key: str, state: ClientState, at: float, rules: TriggerRules
            ) -> tuple[ClientState, list[Trigger]]:
    """The client's RFM segment refiled at `at` under a new RFM model (nothing else moves:
    memberships that time changes keep waiting for their own timer), with the
    `segment_entered` trigger that may follow, decided when the model is adopted (the
    policy's quiet hours of that moment, not of the client's last evaluation)."""
    return _entered(client_key, state, segments.refile_rfm(state, at, rules.segments), rules,
                    decided_at=max(at, state.segments_at))


def refile(client_key: str, state: ClientState, rules: TriggerRules
           ) -> tuple[ClientState, list[Trigger]]:
    """The client's memberships evaluated again as of their last evaluation, under rules
    that may have changed since (a new `segments:` configuration), with the
    `segment_entered` triggers that follow."""
    return _resegment(client_key, state, state.segments_at, rules)


def _resegment(client_key: str, state: ClientState, at: float, rules: TriggerRules, *,
               live: bool = False) -> tuple[ClientState, list[Trigger]]:
    """Memberships as of `at`; entering a watched segment raises `segment_entered`."""
    return _entered(client_key, state, segments.resegment(state, at, rules.segments), rules,
                    live=live)


def after_merge(client_key: str, state: ClientState, event: Event, rules: TriggerRules
                ) -> tuple[ClientState, list[Trigger]]:
    """What follows a merge (`event`) of another history into the client: the loyalty tier
    of the orders joined (announced as an order would announce it, so the outcome does not
    depend on which side's orders came first) and the memberships."""
    live = not event.history
    state, candidates = catalogue.retier(state, event, rules)
    decided: list[Trigger] = []
    if candidates:
        state, decided = _decide_all(client_key, state, [(c, None) for c in candidates],
                                     event.event_time, rules, delayable=True, live=live)
    state, entered = _resegment(client_key, state, event.event_time, rules, live=live)
    return state, decided + entered


def _entered(client_key: str, before: ClientState, state: ClientState, rules: TriggerRules,
             *, live: bool = False, decided_at: float | None = None
             ) -> tuple[ClientState, list[Trigger]]:
    rule = rules.segment_entered
    if not rule.enabled or not rule.segments:
        return state, []
    candidates = [Candidate(SEGMENT_ENTERED, f"{name}@{occasion_time(entered_at)}",
                            entered_at, {"segment": name})
                  for name, entered_at in segments.entered(before, state)
                  if name in rule.segments]
    if not candidates:
        return state, []
    return _decide_all(client_key, state, [(c, None) for c in candidates],
                       state.segments_at if decided_at is None else decided_at,
                       rules, delayable=True, live=live)


def _fire_at(client_key: str, state: ClientState, at: float,
             rule_timers: list[tuple[float, str]], rules: TriggerRules
             ) -> tuple[ClientState, list[Trigger]]:
    """Release the triggers waiting until `at` and fire the rules due at `at` (each rule's
    firing touches only its own part of the state, so the others' due times still hold)."""
    items: list[tuple[Candidate, PendingTrigger | None]] = []
    released = [p for p in state.pending if p.release_at <= at]
    if released:
        state = evolve(state, pending=tuple(p for p in state.pending if p.release_at > at))
        items.extend((_candidate_of(p), p) for p in released)
    for due, kind in rule_timers:
        if due <= at:
            state, candidate = catalogue.fire_rule(kind, state, rules)
            if candidate is not None:  # None: decided with nothing to say
                items.append((candidate, None))
    return _decide_all(client_key, state, items, at, rules)


# --- decisions ------------------------------------------------------------------------------------

ANONYMOUS_WELCOME_WAIT = 600.0  # seconds an anonymous visitor's welcome waits for a link


def _delay_of(client_key: str, trigger_type: str, rules: TriggerRules) -> float:
    """The rule's delay; a visitor who registered without a user id is welcomed no sooner
    than ANONYMOUS_WELCOME_WAIT, as the identify that names the client (and may carry its
    own registration) usually follows within seconds: a welcome still waiting joins the
    client with the cookie's history, where a welcome already decided on either side
    stands for both (the occasion is the client's, once), so the person gets one."""
    delay = float(getattr(rules.rule(trigger_type), "delay", 0.0))
    if trigger_type == WELCOME and client_key.startswith(ANONYMOUS_PREFIX):
        return max(delay, ANONYMOUS_WELCOME_WAIT)
    return delay


def _candidate_of(waiting: PendingTrigger) -> Candidate:
    """A waiting trigger as it was when it began to wait (a follow-up as itself)."""
    return follow_up.as_follow_up(
        Candidate(waiting.type, waiting.key, waiting.fired_at, dict(waiting.payload)), waiting)


def _waiting(candidate: Candidate, release_at: float, released: PendingTrigger | None, *,
             deferred: bool) -> PendingTrigger:
    """`candidate` waiting until `release_at`; one `released` from waiting before (a
    follow-up) keeps what it was: its occasion's key, the channels tried."""
    if released is None or not released.follows:
        return PendingTrigger(release_at, candidate.type, candidate.key, candidate.at,
                              candidate.payload, deferred)
    return PendingTrigger(release_at, candidate.type, released.key, candidate.at,
                          follow_up.own_payload(candidate.payload), deferred, released.tried,
                          released.follows)


def _record(client_key: str, candidate: Candidate, decision: Decision, at: float) -> Trigger:
    return Trigger(trigger_id(client_key, candidate.type, candidate.key), candidate.type,
                   client_key, candidate.at, candidate.payload, decision.status,
                   decision.reason, decision.channel, candidate.key,
                   None if at == candidate.at else at, AUTO, decision.until)


def _remember(state: ClientState, candidate: Candidate, decision: Decision, at: float
              ) -> ClientState:
    """A final decision: marketing occasions join the recently decided ones (transactional
    ones are unique by their rule's own state, but for a detractor's task: an answer older
    than the latest raises one too, and the state keeps the latest only), and a marketing
    send counts for the cap."""
    if candidate.type in TRANSACTIONAL and candidate.type != NPS_DETRACTOR_TASK:
        return state
    fingerprint = occasion_fingerprint(candidate.type, candidate.key)
    sends = (record_send(state.sends, at) if decision.status == SENT
             and candidate.type not in TRANSACTIONAL else state.sends)
    return evolve(state, decided=(*state.decided, fingerprint)[-MAX_DECIDED:], sends=sends)


def _wait(client_key: str, state: ClientState, waiting: PendingTrigger,
          rules: TriggerRules, at: float, out: list[Trigger]) -> ClientState | None:
    """The state with `waiting` added, or None when it cannot wait.

    When the bounded list is full, the lowest-priority waiting trigger makes room for a
    higher-priority newcomer; its final record (suppressed, `pending_limit`) goes to `out`.
    """
    pending = list(state.pending)
    if len(pending) >= MAX_PENDING:
        lowest = max(pending, key=lambda p: (priority_rank(p.type, rules), p.release_at))
        if priority_rank(lowest.type, rules) <= priority_rank(waiting.type, rules):
            return None
        pending.remove(lowest)
        evicted, decision = _candidate_of(lowest), Decision(SUPPRESSED, PENDING_LIMIT)
        out.append(_record(client_key, evicted, decision, at))
        if lowest.follows:  # remembered: it cannot come back (see process_event)
            state = _remember(state, evicted, decision, at)
    pending = sorted((*pending, waiting), key=lambda p: (p.release_at, p.type, p.decided_key))
    return evolve(state, pending=tuple(pending))


def _decide_all(client_key: str, state: ClientState,
                items: list[tuple[Candidate, PendingTrigger | None]], at: float,
                rules: TriggerRules, *, delayable: bool = False, live: bool = False
                ) -> tuple[ClientState, list[Trigger]]:
    """Decide candidates due at the same moment `at`, highest priority first, each seeing
    the sends decided before it (so the frequency cap keeps the most important).

    Occasions due before the client's backfilled history arrived are past: recorded as
    suppressed (`backfill`), unless `live` (raised by a live event, however late); so are
    those due before their rule was switched on (`before_enabled`)."""
    past_before = 0.0 if live else state.history_until
    items.sort(key=lambda item: (priority_rank(item[0].type, rules), item[0].key))
    out: list[Trigger] = []
    for candidate, pending in items:
        waited = pending is not None and pending.deferred
        fingerprint = occasion_fingerprint(candidate.type, candidate.key)
        if fingerprint in state.decided or fingerprint in state.touched:
            continue  # decided already, or meanwhile by a manual touch: its final record
        if pending is not None:  # decided again as it stands now, or ended meanwhile
            current = (catalogue.released(state, pending, rules)
                       if follow_up.still_configured(pending, rules) else None)
            if current is None:
                if not pending.follows:  # (a follow-up's occasion was announced: it stands)
                    state = catalogue.after_cancelled(state, pending, rules)
                if waited:
                    cancelled = Decision(SUPPRESSED, CANCELLED)
                    if pending.follows:  # remembered: it cannot come back (see process_event)
                        state = _remember(state, candidate, cancelled, at)
                    out.append(_record(client_key, candidate, cancelled, at))
                continue
            candidate = follow_up.as_follow_up(current, pending)
        delay = _delay_of(client_key, candidate.type, rules) if delayable else 0.0
        decision: Decision | None = None
        if delay > 0:  # an immediate trigger configured to wait: decided when it is due
            due = replace(candidate, at=candidate.at + delay)
            waiting = _wait(client_key, state, _waiting(due, due.at, None, deferred=False),
                            rules, at, out)
            if waiting is not None:
                state = waiting
                continue
            # no room to wait: a marketing trigger is dropped; a transactional one, never
            # suppressed, is decided now without its delay
            if candidate.type not in TRANSACTIONAL:
                decision = Decision(SUPPRESSED, PENDING_LIMIT)
        if decision is None:
            decision = (Decision(SUPPRESSED, BACKFILL) if at < past_before  # never sent late
                        else Decision(SUPPRESSED, BEFORE_ENABLED)
                        if at < rules.on_since(candidate.type)
                        else decide(client_key, state, candidate.type, at, rules,
                                    allow_defer=not waited,
                                    tried=() if pending is None else pending.tried))
        if decision.status == DEFERRED:
            assert decision.until is not None
            waiting = _wait(client_key, state,
                            _waiting(candidate, decision.until, pending, deferred=True),
                            rules, at, out)
            if waiting is not None:
                state = waiting
                out.append(_record(client_key, candidate, decision, at))
                continue
            decision = Decision(SUPPRESSED, PENDING_LIMIT, decision.channel)
        state = _remember(state, candidate, decision, at)
        out.append(_record(client_key, candidate, decision, at))
        if decision.status == SENT and decision.channel is not None:
            state = _follow(client_key, state, candidate, decision.channel, at, pending,
                            rules, out)
    return state, out


def _follow(client_key: str, state: ClientState, candidate: Candidate, channel: str,
            at: float, released: PendingTrigger | None, rules: TriggerRules,
            out: list[Trigger]) -> ClientState:
    """The state with the follow-up of `candidate`, just sent, waiting (if its type has
    one); with no room for it, its final record (suppressed, `pending_limit`) goes to
    `out`."""
    if candidate.type not in rules.policy.follow_up.types:
        return state
    sent_id = trigger_id(client_key, candidate.type, candidate.key)
    plan = follow_up.planned(candidate, channel, sent_id, at, released, rules)
    if plan is None:
        return state
    waiting = _wait(client_key, state, plan, rules, at, out)
    if waiting is None:  # remembered: it cannot come back (see process_event)
        dropped, decision = _candidate_of(plan), Decision(SUPPRESSED, PENDING_LIMIT)
        out.append(_record(client_key, dropped, decision, at))
        return _remember(state, dropped, decision, at)
    return waiting


# --- events ---------------------------------------------------------------------------------------


def _hold(state: ClientState, event: Event) -> ClientState:
    """`event` held back, in event-time order after those of the same time (at most
    MAX_HELD: the oldest of more is applied at once, see `_release`)."""
    held = [*state.held, event]
    held.sort(key=lambda e: e.event_time)  # stable: arrival order among equal times
    return evolve(state, held=tuple(held))


def release_held(client_key: str, state: ClientState, rules: TriggerRules
                 ) -> tuple[ClientState, list[Trigger]]:
    """Every held event applied now (the client leaves: a merge, not a timer, comes next)."""
    return _release(client_key, state, INF, rules) if state.held else (state, [])


def _release(client_key: str, state: ClientState, settled: float, rules: TriggerRules
             ) -> tuple[ClientState, list[Trigger]]:
    """Apply the held events in event-time order, each after the timers due before it, up to
    one that a timer due after `settled` comes before (INF: all of them)."""
    held, fired = state.held, list[Trigger]()
    state = evolve(state, held=())
    for n, event in enumerate(held):
        due = next_due(state, rules)
        if (due is not None and settled < due <= event.event_time
                and len(held) - n <= MAX_HELD):
            return evolve(state, held=held[n:]), fired
        state, decided = process_event(client_key, state, event, rules)
        fired.extend(decided)
    return state, fired


def _manual_touch(client_key: str, state: ClientState, event: Event
                  ) -> tuple[ClientState, list[Trigger]]:
    """A touch a manager recorded: it decides its occasion like an automatic trigger would
    (the same id for the same occasion and key), and a `done` marketing touch counts for the
    frequency cap. A touch of an occasion already decided is not recorded again."""
    properties = event.properties
    occasion = str(properties["occasion"])
    key = str(properties.get("key") or "")
    status = str(properties["status"])
    fingerprint = occasion_fingerprint(occasion, key)
    if (fingerprint in state.decided or fingerprint in state.touched
            or catalogue.decided_by_rule(state, occasion, key)):
        return state, []
    sends = (record_send(state.sends, event.event_time)
             if status == DONE and is_marketing(occasion) else state.sends)
    # kept apart from automatic decisions, so a burst of those cannot push a touch out
    state = evolve(state, touched=(*state.touched, fingerprint)[-MAX_TOUCHED:], sends=sends)
    payload = {name: properties.get(name) for name in ("comment", "author")}
    return state, [Trigger(trigger_id(client_key, occasion, key), occasion, client_key,
                           event.event_time, payload, status, None, event.channel, key,
                           None, MANUAL)]


def process_event(client_key: str, state: ClientState | None, event: Event, rules: TriggerRules,
                  *, next_timer: float = -INF, settled: float = INF
                  ) -> tuple[ClientState, list[Trigger]]:
    """Apply one event: first fire the client's timers due before it, then apply it.

    Firing first makes the outcome independent of when ticks arrive: a timer due at `d`
    always sees exactly the client's events before `d` that had arrived, in replay and live.
    `next_timer`: `next_due(state, rules)` when the caller already knows it (inf: none), so
    an event before it skips looking for due timers; the outcome is the same.

    `settled`: for a live event, the time up to which every event has arrived (its arrival
    clock less the allowed lateness). A timer due after it and before the event may still
    see an earlier event arrive late: the event is held in the state until the timer
    settles (`fire_due` at a later clock), so the timer decides on the same events as in
    replay. The default, and history, hold nothing (and first apply what is held).
    """
    if state is not None and is_duplicate(state, event):
        return state, []
    fired: list[Trigger] = []
    if state is not None and state.held:
        if settled != INF and not event.history:
            return fire_due(client_key, _hold(state, event), settled, rules)
        state, fired = _release(client_key, state, INF, rules)
        next_timer = -INF
    elif (state is not None and settled < event.event_time and not event.history
          and event.event_time >= next_timer):
        due = next_due(state, rules) if next_timer == -INF else next_timer
        if due is not None and settled < due <= event.event_time:
            return fire_due(client_key, _hold(state, event), settled, rules)
    if state is not None and event.event_time >= next_timer:
        state, due_fired = fire_due(client_key, state, event.event_time, rules)
        fired += due_fired
    after = apply_event(state, event, rules.read_traits)
    if after.pending and event.type in follow_up.ENGAGEMENT:
        after, caught = follow_up.caught(after, event)
        # one already recorded deferred gets its final record; the others were never told.
        # It is decided as of the end of its window, as a deferred trigger whose occasion
        # ended meanwhile is: as of the open, it would hang on which of two opens or clicks
        # naming the chain arrived first, and one stamped earlier may come within the
        # allowed lateness. Remembered as decided, as it cannot come back (its occasion was
        # sent), so a manual touch of it is not a second final record under its id
        for waiting in caught:
            if waiting.deferred:
                cancelled = _candidate_of(waiting)
                decision = Decision(SUPPRESSED, CANCELLED)
                after = _remember(after, cancelled, decision, waiting.release_at)
                fired.append(_record(client_key, cancelled, decision, waiting.release_at))
    if event.type is EventType.TOUCH_RECORDED:
        after, touched = _manual_touch(client_key, after, event)
        after, entered = _resegment(client_key, after, event.event_time, rules,
                                    live=not event.history)
        return after, fired + touched + entered
    after, candidates = catalogue.on_event(state, after, event, rules)
    decided: list[Trigger] = []
    if candidates:
        after, decided = _decide_all(client_key, after, [(c, None) for c in candidates],
                                     event.event_time, rules, delayable=True,
                                     live=not event.history)
    after, entered = _resegment(client_key, after, event.event_time, rules,
                                live=not event.history)
    return after, fired + decided + entered
