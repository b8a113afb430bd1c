"""The policy applied, in one place, to every trigger once it is due: `decide`.

In this order (the first that applies wins):
1. transactional triggers (order confirmation, cancellation and refund, the detractor
   task) are sent on a channel with a contact, consent aside: no suppression, cap,
   hold-out or quiet hours;
2. suppression: loyal clients get no new-customer triggers, churned clients no routine
   broadcasts, detractors no second-order nudge (the lists are configurable);
3. hold-out: a stable, hash-chosen share of clients per trigger type is the control group;
4. channel: the client's learned preferred channel, else the first of the cascade with a
   contact and consent (for a follow-up, one not yet tried); none means `suppressed`,
   reason `no_channel`;
5. quiet hours, in the client's time zone: deferred to the end of the window;
6. frequency cap: at most N marketing sends per client in any rolling day.
Decisions are a function of the state and the decision time only (event time), so replay
and live decide alike.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from features.calendar import quiet_until, zone
from features.lifecycle import is_churned, is_detractor, is_loyal
from features.rules import DAY, TRANSACTIONAL, Channel, TaskRule, TriggerRules
from features.state import MAX_SENDS, ClientState

SENT = "sent"
HOLDOUT = "holdout"
DEFERRED = "deferred"
SUPPRESSED = "suppressed"
# A manual touch carries the manager's own verdict, `done` or skipped.
DONE = "done"

# Reasons for `suppressed` (and `deferred`): a bounded set, used as metric labels too.
LOYAL = "loyal"
CHURNED = "churned"
DETRACTOR = "detractor"
NO_CHANNEL = "no_channel"
QUIET_HOURS = "quiet_hours"
FREQUENCY_CAP = "frequency_cap"
CANCELLED = "cancelled"  # the occasion ended while the trigger waited
PENDING_LIMIT = "pending_limit"  # too many triggers already waiting for this client
BACKFILL = "backfill"  # due before the history that raised it arrived: never sent late
BEFORE_ENABLED = "before_enabled"  # due before its rule was switched on (`enabled_from`)

SENDS_KEPT_FOR = 7 * DAY  # how far back of the newest send a late one still counts


@dataclass(frozen=True, slots=True)
class Decision:
    status: str
    reason: str | None = None
    channel: str | None = None
    until: float | None = None  # deferred: when it is decided again

    def __init__(self, status: str, reason: str | None = None, channel: str | None = None,
                 until: float | None = None) -> None:  # see `features.__init__`
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "until", until)


def is_marketing(trigger_type: str) -> bool:
    return trigger_type not in TRANSACTIONAL


def in_holdout(client_key: str, trigger_type: str, percent: float) -> bool:
    """Stable across processes and replays: CRC-32 of (client, type) in 10,000 slots."""
    if percent <= 0:
        return False
    slot = zlib.crc32(f"{client_key}\x1f{trigger_type}".encode()) % 10_000
    return slot < round(percent * 100)


def _usable(channel: Channel, traits: Mapping[str, object], consents: Mapping[str, object],
            *, require_consent: bool, needs_consent: bool) -> bool:
    if channel.contact is not None:
        contact = traits.get(channel.contact)
        if contact is None or contact == "" or contact is False:
            return False
    if not needs_consent:
        return True
    consent = consents.get(channel.name)
    return consent is True if require_consent else consent is not False


def choose_channel(state: ClientState, trigger_type: str, rules: TriggerRules,
                   tried: tuple[str, ...] = ()) -> str | None:
    """The channel for a trigger: a task's fixed channel; else the client's preferred
    channel (most opens and clicks) when usable; else the first usable one of the cascade.

    Usable: the client has the contact the channel needs and has not withdrawn consent
    (has given it, with `require_consent`), and is none of `tried` (a follow-up's channels
    already sent on); transactional triggers need no consent.
    """
    if trigger_type in TRANSACTIONAL:
        rule = rules.rule(trigger_type)
        if isinstance(rule, TaskRule):
            return rule.channel
    policy = rules.policy
    traits = state.traits
    consents_raw = traits.get("consents")
    consents: Mapping[str, object] = consents_raw if isinstance(consents_raw, Mapping) else {}
    needs_consent = is_marketing(trigger_type)
    usable = [c.name for c in policy.channels
              if c.name not in tried
              and _usable(c, traits, consents, require_consent=policy.require_consent,
                          needs_consent=needs_consent)]
    if not usable:
        return None
    if policy.learn_preferred_channel:
        for name, _ in state.channel_engagement:  # most engaged first
            if name in usable:
                return name
    return usable[0]


def cap_reached(sends: tuple[float, ...], at: float, cap: int) -> bool:
    """Whether a send at `at` would make some rolling day hold more than `cap` sends.

    A send decided late (a late event) may land before sends already made: every day-long
    window holding `at` counts, not only the one ending at it. Windows are open at the
    start, as (t - 1 day, t]: sends a day or more apart never share one."""
    # two sends share a window when the later one's window start (later - DAY) is before
    # the earlier: written so, and never as a difference compared with DAY, which rounds
    # differently at a day's edge
    near = sorted(s for s in sends if at - DAY < s and s - DAY < at)
    for first in range(len(near) - cap + 1):
        group = near[first:first + cap]
        if max(group[-1], at) - DAY < min(group[0], at):
            return True
    return False


def record_send(sends: tuple[float, ...], at: float) -> tuple[float, ...]:
    """Add a send; keep those of the week before the newest, at most MAX_SENDS.

    Not only the latest day's: a send decided late (a late event) lands before the newest,
    and forgetting it at once let a second late decision beside it pass the cap."""
    kept = sorted((*sends, at))
    newest = kept[-1]
    return tuple(s for s in kept if s > newest - SENDS_KEPT_FOR)[-MAX_SENDS:]


def priority_rank(trigger_type: str, rules: TriggerRules) -> tuple[int, str]:
    """Sort key among triggers competing for the same moment: transactional first (they
    are never capped), then the configured priority, then the others by name."""
    if trigger_type in TRANSACTIONAL:
        return -1, trigger_type
    order = rules.policy.priority
    rank = order.index(trigger_type) if trigger_type in order else len(order)
    return rank, trigger_type


def decide(client_key: str, state: ClientState, trigger_type: str, at: float,
           rules: TriggerRules, *, allow_defer: bool = True,
           tried: tuple[str, ...] = ()) -> Decision:
    """What to do with a trigger of `trigger_type` due at `at` (epoch seconds) for a client
    in `state`. `allow_defer=False` when deciding a trigger that was already deferred.

    `tried`: a follow-up's channels already sent on. Its channel is another one (none left:
    `no_channel`), and the hold-out is not drawn again: the occasion was sent."""
    if not is_marketing(trigger_type):
        channel = choose_channel(state, trigger_type, rules)
        if channel is None:
            return Decision(SUPPRESSED, NO_CHANNEL)
        return Decision(SENT, channel=channel)
    policy = rules.policy
    if trigger_type in policy.suppress_for_loyal and is_loyal(state, policy.loyal_after_orders):
        return Decision(SUPPRESSED, LOYAL)
    if (trigger_type in policy.suppress_for_churned
            and is_churned(state, at, rules.churn_after)):
        return Decision(SUPPRESSED, CHURNED)
    if trigger_type in policy.suppress_for_detractors and is_detractor(state, rules.nps):
        return Decision(SUPPRESSED, DETRACTOR)
    if not tried and in_holdout(client_key, trigger_type, rules.holdout_percent(trigger_type)):
        return Decision(HOLDOUT)
    channel = choose_channel(state, trigger_type, rules, tried)
    if channel is None:
        return Decision(SUPPRESSED, NO_CHANNEL)
    if allow_defer and policy.quiet_hours is not None:
        timezone = state.traits.get("timezone")
        tz = zone(timezone if isinstance(timezone, str) else None, policy.timezone)
        until = quiet_until(at, policy.quiet_hours, tz)
        if until is not None:
            return Decision(DEFERRED, QUIET_HOURS, channel, until)
    cap = policy.frequency_cap_per_day
    if cap and cap_reached(state.sends, at, cap):
        return Decision(SUPPRESSED, FREQUENCY_CAP, channel)
    return Decision(SENT, channel=channel)
