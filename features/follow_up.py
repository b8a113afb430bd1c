"""Follow-ups, the cascade's second half: one who did not open the email is caught by a push.

A marketing trigger of a type listed in `policy.follow_up.types`, once sent on a channel,
leaves a follow-up waiting in the client's state (a `PendingTrigger` with the channels
`tried` and the trigger ids it `follows`), due `policy.follow_up.after` seconds after the
send. It is released and decided as any waiting trigger is (features/triggers.py): it
lapses when its occasion ended meanwhile (`catalogue.released`), and the policy decides it
again, on a channel not yet tried. An open or click naming one of the trigger ids it
follows (`properties.trigger_id`, which an ESP echoes back from the trigger record) drops
it before it is due. Sent, it may leave the next one, up to `policy.follow_up.max`.

Waiting, a follow-up keeps the occasion's own key (what `catalogue.released` checks) and
is recorded under `follow_up_key` (`<key>#follow_up<n>`), so it has an id of its own,
derived as every id is; its payload names the trigger it follows (`follow_up_of`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from features.catalogue import Candidate
from features.events import Event, EventType
from features.rules import TriggerRules
from features.state import ClientState, PendingTrigger, evolve

FOLLOW_UP_OF = "follow_up_of"  # payload: the trigger id a follow-up follows up
TRIGGER_ID = "trigger_id"  # an open's or click's property naming the trigger opened
ENGAGEMENT = frozenset({EventType.MESSAGE_OPENED, EventType.MESSAGE_CLICKED})


def planned(candidate: Candidate, channel: str, sent_id: str, at: float,
            released: PendingTrigger | None, rules: TriggerRules) -> PendingTrigger | None:
    """The follow-up of `candidate`, sent at `at` on `channel` under id `sent_id`; None
    when its type has none or the chain is at its length. `released`: the waiting trigger
    the candidate was (a follow-up itself, the next one carries its channels on)."""
    config = rules.policy.follow_up
    if candidate.type not in config.types:
        return None
    tried = () if released is None else released.tried
    follows = () if released is None else released.follows
    if len(follows) >= config.max:
        return None
    key = candidate.key if released is None else released.key
    return PendingTrigger(at + config.after, candidate.type, key, candidate.at,
                          own_payload(candidate.payload), False, (*tried, channel),
                          (*follows, sent_id))


def own_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The occasion's payload, without what a follow-up adds to it (it is derived again)."""
    return {name: value for name, value in payload.items() if name != FOLLOW_UP_OF}


def still_configured(waiting: PendingTrigger, rules: TriggerRules) -> bool:
    """Whether the rules still ask for the waiting follow-up (an operator who takes its type
    off the list, or shortens the chain, stops those already waiting too); true for any
    other waiting trigger."""
    config = rules.policy.follow_up
    return not waiting.follows or (waiting.type in config.types
                                   and len(waiting.follows) <= config.max)


def as_follow_up(candidate: Candidate, waiting: PendingTrigger) -> Candidate:
    """The occasion `candidate`, released from `waiting`, as the follow-up `waiting` is
    (the same candidate when it is none)."""
    if not waiting.follows:
        return candidate
    return Candidate(candidate.type, waiting.decided_key, candidate.at,
                     {**candidate.payload, FOLLOW_UP_OF: waiting.follows[-1]})


def caught(state: ClientState, event: Event) -> tuple[ClientState, tuple[PendingTrigger, ...]]:
    """An open or click naming a trigger the client was sent (`properties.trigger_id`)
    drops the follow-ups waiting after it: the state without them, and them. Timers due
    at or before the event fired before it was applied, so those left are not due yet."""
    if not state.pending or event.type not in ENGAGEMENT:
        return state, ()
    named = event.properties.get(TRIGGER_ID)
    if not isinstance(named, str) or not named:
        return state, ()
    dropped = tuple(p for p in state.pending if named in p.follows)
    if not dropped:
        return state, ()
    return evolve(state, pending=tuple(p for p in state.pending if named not in p.follows)
                  ), dropped
