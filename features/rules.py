"""The trigger catalogue's configuration, as frozen values: what each rule waits for, and
the policy applied once a trigger is due.

`config.settings` builds a `TriggerRules` from the operator's file; the pure core only ever
sees these values. `TriggerRules()` equals the documented defaults (config/default.yaml).
Durations are float seconds; times of day are minutes after local midnight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from features.events import READ_TRAITS

if TYPE_CHECKING:
    from features.rfm import FixedThresholds, RfmModel
    from features.segment_rules import SegmentCatalog

DAY = 86400.0

# Trigger type names are a contract: downstream consumers route on them.
WELCOME = "welcome"
ORDER_CONFIRMATION = "order_confirmation"
ORDER_CANCELLATION = "order_cancellation"
ORDER_REFUND = "order_refund"
ABANDONED_CART = "abandoned_cart"
ABANDONED_BROWSE = "abandoned_browse"
FEEDBACK_REQUEST = "feedback_request"
NPS_DETRACTOR_TASK = "nps_detractor_task"
NPS_PASSIVE_OFFER = "nps_passive_offer"
NPS_PROMOTER_REFERRAL = "nps_promoter_referral"
SECOND_ORDER_NUDGE = "second_order_nudge"
FIRST_ORDER_PROMO = "first_order_promo"
CHURN_WINBACK = "churn_winback"
REPLENISHMENT_REMINDER = "replenishment_reminder"
SERVICE_REMINDER = "service_reminder"
BIRTHDAY = "birthday"
ONBOARDING = "onboarding"
LOYALTY_STATUS = "loyalty_status"
SEGMENT_ENTERED = "segment_entered"

TRIGGER_TYPES = (
    WELCOME, ORDER_CONFIRMATION, ORDER_CANCELLATION, ORDER_REFUND, ABANDONED_CART,
    ABANDONED_BROWSE, FEEDBACK_REQUEST, NPS_DETRACTOR_TASK, NPS_PASSIVE_OFFER,
    NPS_PROMOTER_REFERRAL, SECOND_ORDER_NUDGE, FIRST_ORDER_PROMO, CHURN_WINBACK,
    REPLENISHMENT_REMINDER, SERVICE_REMINDER, BIRTHDAY, ONBOARDING, LOYALTY_STATUS,
    SEGMENT_ENTERED,
)
# The rules that wait for a moment derived from the state (the others answer events).
TIMER_TYPES = (
    ABANDONED_CART, ABANDONED_BROWSE, FEEDBACK_REQUEST, SECOND_ORDER_NUDGE, FIRST_ORDER_PROMO,
    CHURN_WINBACK, REPLENISHMENT_REMINDER, SERVICE_REMINDER, BIRTHDAY, ONBOARDING,
)
# Never suppressed, capped, held out or deferred: the client (or a manager) must get them.
TRANSACTIONAL = frozenset({ORDER_CONFIRMATION, ORDER_CANCELLATION, ORDER_REFUND,
                           NPS_DETRACTOR_TASK})

# Which one wins when several marketing triggers compete for the same moment (first wins).
DEFAULT_PRIORITY = (
    ABANDONED_CART, ABANDONED_BROWSE, NPS_PROMOTER_REFERRAL, NPS_PASSIVE_OFFER,
    FEEDBACK_REQUEST, BIRTHDAY, LOYALTY_STATUS, WELCOME, REPLENISHMENT_REMINDER,
    SERVICE_REMINDER, SECOND_ORDER_NUDGE, FIRST_ORDER_PROMO, ONBOARDING, SEGMENT_ENTERED,
    CHURN_WINBACK,
)


@dataclass(frozen=True, slots=True)
class TriggerRule:
    """A rule that waits `delay` seconds after its occasion (0: at once)."""

    enabled: bool = True
    delay: float = 0.0
    holdout_percent: float | None = None  # None: the policy's


@dataclass(frozen=True, slots=True)
class OffsetRule:
    """A rule that fires `offset` seconds before a predicted or calendar moment."""

    enabled: bool = True
    offset: float = 0.0
    holdout_percent: float | None = None


@dataclass(frozen=True, slots=True)
class FeedbackRule:
    enabled: bool = True
    delay: float = 7 * DAY
    holdout_percent: float | None = None
    nps_survey: bool = True  # the request carries the NPS question


@dataclass(frozen=True, slots=True)
class TaskRule:
    """A task for a manager rather than a message: it goes to a fixed channel."""

    enabled: bool = True
    channel: str = "task"
    delay: float = 0.0  # seconds after the answer


@dataclass(frozen=True, slots=True)
class OfferRule:
    enabled: bool = True
    delay: float = 0.0
    holdout_percent: float | None = None
    discount_percent: float = 10.0


@dataclass(frozen=True, slots=True)
class ReferralRule:
    enabled: bool = True
    delay: float = 0.0
    holdout_percent: float | None = None
    bonus_per_friend: float | None = None


@dataclass(frozen=True, slots=True)
class PromoRule:
    enabled: bool = True
    delay: float = 30 * DAY
    holdout_percent: float | None = None
    promo_code: str | None = None


@dataclass(frozen=True, slots=True)
class ReplenishmentRule:
    enabled: bool = True
    offset: float = 7 * DAY
    holdout_percent: float | None = None
    per_category: bool = False


@dataclass(frozen=True, slots=True)
class ServiceRule:
    enabled: bool = True
    offset: float = 0.0
    holdout_percent: float | None = None
    interval_trait: str = "service_interval_days"
    since: str = "any"  # order | visit | any: what restarts the interval


@dataclass(frozen=True, slots=True)
class BirthdayRule:
    enabled: bool = True
    offset: float = 0.0  # before the birthday
    holdout_percent: float | None = None
    at: int = 10 * 60  # local time of day, minutes after midnight


@dataclass(frozen=True, slots=True)
class OnboardingRule:
    enabled: bool = True
    steps: tuple[float, ...] = (1 * DAY, 3 * DAY, 7 * DAY)  # after the first order
    holdout_percent: float | None = None


@dataclass(frozen=True, slots=True)
class LoyaltyTier:
    """Reached when both thresholds are met (orders not cancelled; money net of returns)."""

    name: str
    min_orders: int = 0
    min_money: float = 0.0


@dataclass(frozen=True, slots=True)
class LoyaltyRule:
    enabled: bool = True
    delay: float = 0.0
    holdout_percent: float | None = None
    tiers: tuple[LoyaltyTier, ...] = (LoyaltyTier("silver", min_orders=3),
                                      LoyaltyTier("gold", min_orders=10))  # lowest first
    announce_downgrades: bool = False


@dataclass(frozen=True, slots=True)
class SegmentEnteredRule:
    """A trigger when a client enters one of `segments` (e.g. "rfm:at_risk")."""

    enabled: bool = True
    delay: float = 0.0
    holdout_percent: float | None = None
    segments: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LifecycleRules:
    """Lifecycle stages: prospect (registered, no order), new (fewer than `repeat_orders`
    orders), repeat (`repeat_orders` or more), loyal (`loyal_orders` within `loyal_window`),
    at_risk (no order for `at_risk_after`), churned (no order for `churned_after`, or none
    at all that long after registering)."""

    loyal_orders: int = 4
    loyal_window: float = 365 * DAY
    at_risk_after: float = 90 * DAY
    churned_after: float = 180 * DAY
    repeat_orders: int = 2


@dataclass(frozen=True, slots=True)
class SegmentRules:
    """What segments a client can be in. `rfm_model` is the latest population model the
    adapter knows (None: no RFM segments yet); `catalog` holds the operator's rules."""

    lifecycle: LifecycleRules = LifecycleRules()
    rfm_enabled: bool = True
    rfm_mode: str = "quantile"  # or "fixed"
    rfm_refresh: float = 60.0
    rfm_fixed: FixedThresholds | None = None  # mode fixed: the thresholds
    rfm_model: RfmModel | None = None
    catalog: SegmentCatalog | None = None
    timezone: str = "UTC"  # for dates (a client's age) when the client names no zone


@dataclass(frozen=True, slots=True)
class QuietHours:
    """[start, end) in local minutes after midnight; start > end spans midnight."""

    start: int = 21 * 60
    end: int = 9 * 60


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel of the cascade and the trait holding the client's contact for it
    (None: the channel needs no contact, e.g. one that resolves contacts downstream)."""

    name: str
    contact: str | None = None


@dataclass(frozen=True, slots=True)
class FollowUp:
    """The cascade's second half: a marketing trigger of one of `types` sent on a channel
    is sent again `after` seconds later on a channel not yet tried, unless the client
    opened or clicked it meanwhile (an event naming its trigger id), up to `max` times.
    No types (the default): no follow-ups."""

    after: float = DAY
    types: frozenset[str] = frozenset()
    max: int = 1


@dataclass(frozen=True, slots=True)
class Policy:
    timezone: str = "UTC"  # when the client's `timezone` trait is missing or unknown
    quiet_hours: QuietHours | None = QuietHours()
    frequency_cap_per_day: int = 2  # marketing triggers per client per rolling day; 0 = off
    priority: tuple[str, ...] = DEFAULT_PRIORITY
    holdout_percent: float = 0.0
    loyal_after_orders: int = 5
    suppress_for_loyal: frozenset[str] = frozenset({FIRST_ORDER_PROMO, SECOND_ORDER_NUDGE,
                                                    ONBOARDING})
    # none by default: crmflow raises no broadcasts, and its rhythm reminders come on the
    # client's own schedule (a yearly service is not churn, though 6 months pass)
    suppress_for_churned: frozenset[str] = frozenset()
    suppress_for_detractors: frozenset[str] = frozenset({SECOND_ORDER_NUDGE})
    channels: tuple[Channel, ...] = (Channel("email", "email"),
                                     Channel("mobile_push", "push_token"),
                                     Channel("sms", "phone"))
    learn_preferred_channel: bool = True
    require_consent: bool = False  # True: only channels with consents.<channel> = true
    follow_up: FollowUp = FollowUp()


AnyRule = (TriggerRule | OffsetRule | FeedbackRule | TaskRule | OfferRule | ReferralRule
           | PromoRule | ReplenishmentRule | ServiceRule | BirthdayRule | OnboardingRule
           | LoyaltyRule | SegmentEnteredRule)


@dataclass(frozen=True, slots=True)
class NpsBands:
    """NPS answers 0..`detractor_max` are detractors (a task for a manager, and suppressed
    from the marketing triggers the policy names), up to `passive_max` passives (an offer),
    the rest promoters (a referral invitation)."""

    detractor_max: int = 5
    passive_max: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.detractor_max < self.passive_max <= 10:
            raise ValueError("NPS bands need 0 <= detractor_max < passive_max <= 10, not "
                             f"{self.detractor_max} and {self.passive_max}")


@dataclass(frozen=True, slots=True)
class TriggerRules:
    welcome: TriggerRule = TriggerRule()
    order_confirmation: TriggerRule = TriggerRule()
    order_cancellation: TriggerRule = TriggerRule()
    order_refund: TriggerRule = TriggerRule()
    abandoned_cart: TriggerRule = TriggerRule(delay=3600.0)
    abandoned_browse: TriggerRule = TriggerRule(delay=7200.0)
    feedback_request: FeedbackRule = FeedbackRule()
    nps_detractor_task: TaskRule = TaskRule()
    nps_passive_offer: OfferRule = OfferRule()
    nps_promoter_referral: ReferralRule = ReferralRule()
    second_order_nudge: TriggerRule = TriggerRule(delay=14 * DAY)
    first_order_promo: PromoRule = PromoRule()
    churn_winback: TriggerRule = TriggerRule(delay=180 * DAY)
    replenishment_reminder: ReplenishmentRule = ReplenishmentRule()
    service_reminder: ServiceRule = ServiceRule()
    birthday: BirthdayRule = BirthdayRule()
    onboarding: OnboardingRule = OnboardingRule()
    loyalty_status: LoyaltyRule = LoyaltyRule()
    segment_entered: SegmentEnteredRule = SegmentEnteredRule()
    policy: Policy = field(default_factory=Policy)
    segments: SegmentRules = SegmentRules()
    nps: NpsBands = NpsBands()
    # (type, epoch seconds): when a rule was switched on. Its occasions due before then are
    # decided without a send, so switching a rule on does not send what fell due while it
    # was off (a birthday rule switched on years after the dates were set), and a replay
    # under the same configuration decides the same. A type not listed: always on.
    enabled_from: tuple[tuple[str, float], ...] = ()
    # derived: the timer rules switched on (the catalogue asks on every event), the traits
    # the rules read (kept first when a client has too many), `enabled_from` by type
    enabled_timers: tuple[str, ...] = field(init=False, repr=False, compare=False)
    read_traits: frozenset[str] = field(init=False, repr=False, compare=False)
    switched_on: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "enabled_timers", tuple(
            kind for kind in TIMER_TYPES if getattr(self, kind).enabled))
        object.__setattr__(self, "switched_on", dict(self.enabled_from))
        catalog = self.segments.catalog
        object.__setattr__(self, "read_traits", READ_TRAITS.union(
            (channel.contact for channel in self.policy.channels if channel.contact),
            (self.service_reminder.interval_trait,),
            () if catalog is None else catalog.traits))

    def on_since(self, trigger_type: str) -> float:
        """When the rule was switched on (-inf: always)."""
        return self.switched_on.get(trigger_type, -math.inf)

    def rule(self, trigger_type: str) -> AnyRule:
        rule: AnyRule = getattr(self, trigger_type)
        return rule

    @property
    def churn_after(self) -> float:
        """No order for this long makes a client churned (the win-back delay)."""
        return self.churn_winback.delay

    def holdout_percent(self, trigger_type: str) -> float:
        if trigger_type in TRANSACTIONAL:
            return 0.0
        own = getattr(self.rule(trigger_type), "holdout_percent", None)
        return self.policy.holdout_percent if own is None else float(own)
