"""Settings: defaults in code, then a YAML file, then environment variables (highest).

- `--config FILE` or `CRMFLOW_CONFIG` names the YAML file; it may set only some values.
- `CRMFLOW_<SECTION>__<FIELD>` overrides any value,
  e.g. `CRMFLOW_TRIGGERS__ABANDONED_CART__DELAY=30m`; `null` is YAML's null.
- `REDIS_URL`, `CRMFLOW_WRITE_KEY`, `CRMFLOW_READ_KEY`, `CRMFLOW_ADMIN_KEY` are shortcuts
  (keys may be comma-separated lists).

A bad value stops start-up with a `ConfigError` that names the field.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from redis.connection import parse_url

from config.durations import format_duration, parse_duration
from features.calendar import is_zone
from features.events import TOUCH_STATUSES
from features.policy import DEFERRED, HOLDOUT, SENT, SUPPRESSED
from features.rfm import FixedThresholds, fixed_thresholds
from features.rules import (
    DAY,
    DEFAULT_PRIORITY,
    TRANSACTIONAL,
    TRIGGER_TYPES,
    BirthdayRule,
    Channel,
    FeedbackRule,
    FollowUp,
    LifecycleRules,
    LoyaltyRule,
    LoyaltyTier,
    NpsBands,
    OfferRule,
    OnboardingRule,
    Policy,
    PromoRule,
    QuietHours,
    ReferralRule,
    ReplenishmentRule,
    SegmentEnteredRule,
    SegmentRules,
    ServiceRule,
    TaskRule,
    TriggerRule,
    TriggerRules,
)
from features.segments import RFM_FEATURES, all_segment_names, compile_catalog
from features.state import MAX_ORDERS, MAX_SENDS

Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveInt = Annotated[int, Field(ge=1)]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: off (metrics), or a free one (tests)
FixedPort = Annotated[int, Field(ge=1, le=65535)]  # where other processes must find it


def _key_list(value: object) -> object:
    """A list from YAML, a JSON list, or "a,b" as environment variables hold it."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError(f"not a JSON list: {value!r}") from None
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# NoDecode: an environment variable holds "a,b" (as CRMFLOW_WRITE_KEY does), not JSON.
KeyList = Annotated[list[str], NoDecode, BeforeValidator(_key_list)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(Section):
    url: str | None = None  # unset: crmflow runs an embedded Redis
    cluster: bool = False  # url names a node of a Redis Cluster
    key_prefix: str = "crmflow"
    data_dir: Path = Path("var/redis")
    embedded_port: FixedPort = 6390  # `api` and `dataflow` find each other's server there
    stream_maxlen: PositiveInt = 5_000_000
    # per event stream: ingest answers 503 beyond it (the dataflow is behind); 0 = no cap
    max_stream_length: Annotated[int, Field(ge=0)] = 1_000_000
    stream_retention: Duration = 86400.0
    dedupe_window: Duration = 86400.0
    ledger_max_entries: PositiveInt = 200
    socket_timeout: PositiveDuration = 5.0  # 0 would make every socket non-blocking
    # erasures: the audit stream keeps each record this long (proof of erasure, asked for
    # by compliance for a year or more), the status an API caller polls this long
    erasure_audit_retention: PositiveDuration = 400 * 86400.0
    erasure_status_retention: PositiveDuration = 30 * 86400.0

    @field_validator("url")
    @classmethod
    def _usable_url(cls, value: str | None) -> str | None:
        if value:  # an unusable URL would only fail later, in a traceback
            parse_url(value)  # type: ignore[no-untyped-call]  # ValueError: what is wrong
        return value

    @field_validator("key_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if not value or any(ch in value for ch in "{}: \t\n"):
            raise ValueError("must be non-empty, without braces, colons or spaces")
        return value


MIN_HEARTBEAT_TTL = 4.0  # twice the dataflow's beat: a long batch may delay one


class DataflowSettings(Section):
    partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    buckets: Annotated[int, Field(ge=1, le=1_048_576)] = 1024
    batch_size: PositiveInt = 8000
    tick_interval: Duration = 0.25
    idle_wait: Duration = 0.05
    allowed_lateness: Duration = 5.0
    offset_flush_interval: Duration = 5.0
    # the dataflow beats every HEARTBEAT_EVERY (2 s, dataflows/source.py); a shorter life
    # would have /readyz report it dead between beats
    heartbeat_ttl: Annotated[float, BeforeValidator(parse_duration),
                             Field(ge=MIN_HEARTBEAT_TTL)] = 15.0
    workers: PositiveInt = 1
    processes: Annotated[int, Field(ge=1, le=64)] = 1  # Bytewax processes on this host
    cluster_port: Port = 2101  # processes > 1: their loopback ports start here
    # several hosts: every process's host:port, and this one's index among them
    addresses: KeyList = Field(default_factory=list)
    process_id: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _every_partition_has_buckets(self) -> DataflowSettings:
        if self.buckets < self.partitions:  # partition p feeds buckets p, p + partitions, ...
            raise ValueError(f"dataflow.buckets: {self.buckets} is fewer than "
                             f"dataflow.partitions ({self.partitions}): partitions "
                             f"{self.buckets}..{self.partitions - 1} would never hold a client")
        return self

    @model_validator(mode="after")
    def _process_in_addresses(self) -> DataflowSettings:
        if self.addresses and (self.process_id is None
                               or self.process_id >= len(self.addresses)):
            raise ValueError(f"process_id must be an index into addresses (0.."
                             f"{len(self.addresses) - 1}), got {self.process_id}")
        return self
    metrics_host: str = "127.0.0.1"
    metrics_port: Port = 9101
    bytewax_metrics_port: Port = 0  # Bytewax's own metrics server (0 = off); + process id
    epoch_interval: PositiveDuration = 10.0

    @model_validator(mode="after")
    def _ports_apart(self) -> DataflowSettings:
        """Process I listens on metrics_port + I, bytewax_metrics_port + I and (a group on
        this host) cluster_port + I: ranges that overlap or pass 65535 fail one process."""
        count = len(self.addresses) or self.processes
        bases = {"metrics_port": self.metrics_port,
                 "bytewax_metrics_port": self.bytewax_metrics_port}
        if self.processes > 1 and not self.addresses:
            bases["cluster_port"] = self.cluster_port
        used = {name: range(base, base + count) for name, base in bases.items() if base}
        for name, ports in used.items():
            if ports[-1] > 65535:
                raise ValueError(f"dataflow.{name}: {ports.start} + one port for each of "
                                 f"{count} processes passes 65535")
        for (first, one), (second, other) in combinations(used.items(), 2):
            if one.start <= other[-1] and other.start <= one[-1]:
                raise ValueError(f"dataflow.{first} and dataflow.{second}: the ports of "
                                 f"{count} process(es) overlap ({one.start}..{one[-1]} and "
                                 f"{other.start}..{other[-1]})")
        for index, address in enumerate(self.addresses):  # process I's own cluster port
            port = address.rpartition(":")[2]
            for name, ports in used.items():
                if port.isdigit() and int(port) == ports[index]:
                    raise ValueError(f"dataflow.addresses.{index}: port {port} is also "
                                     f"process {index}'s dataflow.{name} + {index}")
        return self


class ApiSettings(Section):
    host: str = "127.0.0.1"
    port: FixedPort = 8000
    write_keys: KeyList = Field(default_factory=list)
    read_keys: KeyList = Field(default_factory=list)
    admin_keys: KeyList = Field(default_factory=list)
    # read keys limited to one point (store): key -> the point_id trait of its clients
    point_read_keys: dict[str, str] = Field(default_factory=dict)
    cors_origins: KeyList = Field(default_factory=list)  # closed unless sites are listed
    fast_reads: bool = True
    max_future_skew: Duration = 3600.0
    max_past_age: Duration = 0.0  # 0: any past time (from 1990) is accepted
    out_of_window: Literal["reject", "clamp"] = "reject"
    max_event_bytes: PositiveInt = 32 * 1024
    max_batch_bytes: PositiveInt = 500 * 1024

    @model_validator(mode="after")
    def _keys_are_distinct_and_not_empty(self) -> ApiSettings:
        """A key mistake must stop start-up, not widen access: an empty key would let an
        empty bearer token in, and a key in two roles gets the wider one (a point's key
        also listed in read_keys would read every point). Messages never show a key."""
        roles: dict[str, str] = {}
        lists = (("write_keys", self.write_keys), ("read_keys", self.read_keys),
                 ("admin_keys", self.admin_keys), ("point_read_keys", list(self.point_read_keys)))
        for name, keys in lists:
            for index, key in enumerate(keys):
                where = f"api.{name}" + ("" if name == "point_read_keys" else f"[{index}]")
                if not key.strip():
                    raise ValueError(f"{where}: an empty key (it would accept an empty "
                                     "token)")
                if key != key.strip():  # a token is read stripped: it could never match
                    raise ValueError(f"{where}: a key with spaces around it (no request "
                                     "can send it: remove them)")
                other = roles.setdefault(key, name)
                if other != name:
                    raise ValueError(f"api.{name}: a key is also in api.{other}; give each "
                                     "role its own keys")
        for point in self.point_read_keys.values():
            if not point.strip():
                raise ValueError("api.point_read_keys: a key with an empty point (expected "
                                 "{key: point_id})")
            if point != point.strip():  # the point_id trait is read stripped
                raise ValueError(f"api.point_read_keys: the point {point!r} has spaces "
                                 "around it (no client's point_id can match it)")
        return self

    @model_validator(mode="after")
    def _batch_holds_an_event(self) -> ApiSettings:
        if self.max_batch_bytes < self.max_event_bytes:
            raise ValueError(f"max_batch_bytes ({self.max_batch_bytes}) must be at least "
                             f"max_event_bytes ({self.max_event_bytes})")
        return self


class ConsoleSettings(Section):
    """The web console (/console) and what the store keeps for it."""

    enabled: bool = True
    # the last events kept per client for the timeline (0: none); memory per client grows
    # by about 30 bytes per entry
    timeline_events: Annotated[int, Field(ge=0, le=200)] = 10
    activity_retention: PositiveDuration = 3 * 3600.0  # per-minute counts, for the overview
    size_history_interval: PositiveDuration = 3600.0  # segment sizes recorded this often
    size_history_retention: PositiveDuration = 30 * 86400.0


Percent = Annotated[float, Field(ge=0, le=100)]
_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})")


def _minutes(text: str) -> int:
    match = _TIME_OF_DAY.fullmatch(text.strip())
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"expected a time of day HH:MM, got {text!r}")
    return int(match.group(1)) * 60 + int(match.group(2))


def _time_of_day(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a time of day HH:MM, got {value!r}")
    minutes = _minutes(value)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _quiet_hours(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected HH:MM-HH:MM (e.g. 21:00-09:00) or null, got {value!r}")
    parts = re.split(r"\s*[-\u2013]\s*", value.strip())
    if len(parts) != 2:
        raise ValueError(f"expected HH:MM-HH:MM (e.g. 21:00-09:00) or null, got {value!r}")
    start, end = (_minutes(part) for part in parts)
    if start == end:
        raise ValueError("quiet hours must not start and end at the same time")
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def _moment(value: object) -> float:
    """Epoch seconds from a date or a date and time (ISO 8601), without a zone in UTC so
    every process reads the same moment; or epoch seconds, as `crmflow config` prints it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"expected a date or a date and time (ISO 8601), got {value!r}")
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("expected a date or a date and time (ISO 8601, e.g. 2026-12-01 "
                             f"or 2026-12-01T09:00:00+01:00), got {value!r}") from None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if not isinstance(value, dt.datetime):
        raise ValueError(f"expected a date or a date and time (ISO 8601), got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


Moment = Annotated[float, BeforeValidator(_moment)]


def _trigger_type(value: object) -> str:
    if not isinstance(value, str) or value not in TRIGGER_TYPES:
        raise ValueError(f"unknown trigger type {value!r} (known: {', '.join(TRIGGER_TYPES)})")
    return value


def _marketing_type(value: object) -> str:
    name = _trigger_type(value)
    if name in TRANSACTIONAL:
        raise ValueError(f"{name} is transactional: it is never suppressed")
    return name


TimeOfDay = Annotated[str, BeforeValidator(_time_of_day)]
TriggerType = Annotated[str, BeforeValidator(_trigger_type)]
MarketingType = Annotated[str, BeforeValidator(_marketing_type)]
ChannelName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class _RuleSwitch(Section):
    """A rule can be switched off; `enabled_from` is when it was switched on: its occasions
    due before then are recorded `suppressed`, reason `before_enabled`, not sent late."""

    enabled: bool = True
    enabled_from: Moment | None = None


class ImmediateRuleSettings(_RuleSwitch):
    """A transactional trigger raised by an event itself: it can be switched off, or wait
    `delay` after the event (never suppressed, capped, held out or deferred)."""

    delay: Duration = 0.0

    def rule(self) -> TriggerRule:
        return TriggerRule(enabled=self.enabled, delay=self.delay)


class _DelayedRule(_RuleSwitch):
    """A marketing trigger `delay` after its occasion (0 = at once)."""

    delay: Duration = 0.0
    holdout_percent: Percent | None = None  # null: policy.holdout_percent


class TriggerRuleSettings(_DelayedRule):
    def rule(self) -> TriggerRule:
        return TriggerRule(enabled=self.enabled, delay=self.delay,
                           holdout_percent=self.holdout_percent)


# The types whose default delay is their own declare it as a field, as FeedbackSettings
# does: a default instance (`TriggerRuleSettings(delay=...)`) is replaced whole by a
# configuration that names the type, so `holdout_percent` alone set the delay to 0.
class AbandonedCartSettings(TriggerRuleSettings):
    delay: Duration = 3600.0


class AbandonedBrowseSettings(TriggerRuleSettings):
    delay: Duration = 7200.0


class SecondOrderNudgeSettings(TriggerRuleSettings):
    delay: Duration = 14 * DAY


class ChurnWinbackSettings(TriggerRuleSettings):
    delay: Duration = 180 * DAY


class FeedbackSettings(_DelayedRule):
    delay: Duration = 7 * DAY
    nps_survey: bool = True

    def rule(self) -> FeedbackRule:
        return FeedbackRule(self.enabled, self.delay, self.holdout_percent, self.nps_survey)


class TaskSettings(_RuleSwitch):
    channel: ChannelName = "task"
    delay: Duration = 0.0

    def rule(self) -> TaskRule:
        return TaskRule(self.enabled, self.channel, self.delay)


class OfferSettings(_DelayedRule):
    discount_percent: Percent = 10.0

    def rule(self) -> OfferRule:
        return OfferRule(self.enabled, self.delay, self.holdout_percent, self.discount_percent)


class ReferralSettings(_DelayedRule):
    bonus_per_friend: Annotated[float, Field(ge=0)] | None = None

    def rule(self) -> ReferralRule:
        return ReferralRule(self.enabled, self.delay, self.holdout_percent,
                            self.bonus_per_friend)


class PromoSettings(_DelayedRule):
    delay: Duration = 30 * DAY
    promo_code: str | None = None

    def rule(self) -> PromoRule:
        return PromoRule(self.enabled, self.delay, self.holdout_percent, self.promo_code)


class ReplenishmentSettings(_RuleSwitch):
    offset: Duration = 7 * DAY
    holdout_percent: Percent | None = None
    per_category: bool = False

    def rule(self) -> ReplenishmentRule:
        return ReplenishmentRule(self.enabled, self.offset, self.holdout_percent,
                                 self.per_category)


class ServiceSettings(_RuleSwitch):
    offset: Duration = 0.0
    holdout_percent: Percent | None = None
    interval_trait: Annotated[str, Field(min_length=1, max_length=64)] = "service_interval_days"
    since: Literal["order", "visit", "any"] = "any"

    def rule(self) -> ServiceRule:
        return ServiceRule(self.enabled, self.offset, self.holdout_percent, self.interval_trait,
                           self.since)


class BirthdaySettings(_RuleSwitch):
    offset: Annotated[Duration, Field(le=365 * DAY)] = 0.0
    holdout_percent: Percent | None = None
    at: TimeOfDay = "10:00"

    def rule(self) -> BirthdayRule:
        return BirthdayRule(self.enabled, self.offset, self.holdout_percent, _minutes(self.at))


class OnboardingSettings(_RuleSwitch):
    steps: list[Duration] = Field(default_factory=lambda: [1 * DAY, 3 * DAY, 7 * DAY])
    holdout_percent: Percent | None = None

    @field_validator("steps")
    @classmethod
    def _ascending(cls, steps: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError("steps must be in increasing order, e.g. [1d, 3d, 7d]")
        return steps

    def rule(self) -> OnboardingRule:
        return OnboardingRule(self.enabled, tuple(self.steps), self.holdout_percent)


class LoyaltyTierSettings(Section):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    min_orders: Annotated[int, Field(ge=0)] = 0
    min_money: Annotated[float, Field(ge=0)] = 0.0


class LoyaltySettings(_DelayedRule):
    tiers: list[LoyaltyTierSettings] = Field(default_factory=lambda: [
        LoyaltyTierSettings(name="silver", min_orders=3),
        LoyaltyTierSettings(name="gold", min_orders=10)])
    announce_downgrades: bool = False

    @field_validator("tiers")
    @classmethod
    def _distinct(cls, tiers: list[LoyaltyTierSettings]) -> list[LoyaltyTierSettings]:
        names = [tier.name for tier in tiers]
        if len(set(names)) != len(names):
            raise ValueError("tier names must be distinct")
        for lower, upper in zip(tiers, tiers[1:], strict=False):
            if upper.min_orders < lower.min_orders or upper.min_money < lower.min_money:
                raise ValueError(f"tiers must be listed lowest first: {upper.name!r} needs "
                                 f"less than {lower.name!r} before it")
        return tiers

    def rule(self) -> LoyaltyRule:
        return LoyaltyRule(self.enabled, self.delay, self.holdout_percent,
                           tuple(LoyaltyTier(t.name, t.min_orders, t.min_money)
                                 for t in self.tiers),
                           self.announce_downgrades)


class SegmentEnteredSettings(_DelayedRule):
    segments: list[str] = Field(default_factory=list)  # e.g. [rfm:at_risk, lifecycle:churned]

    def rule(self) -> SegmentEnteredRule:
        return SegmentEnteredRule(self.enabled, self.delay, self.holdout_percent,
                                  frozenset(self.segments))


class TriggerSettings(Section):
    welcome: TriggerRuleSettings = TriggerRuleSettings()
    order_confirmation: ImmediateRuleSettings = ImmediateRuleSettings()
    order_cancellation: ImmediateRuleSettings = ImmediateRuleSettings()
    order_refund: ImmediateRuleSettings = ImmediateRuleSettings()
    abandoned_cart: AbandonedCartSettings = AbandonedCartSettings()
    abandoned_browse: AbandonedBrowseSettings = AbandonedBrowseSettings()
    feedback_request: FeedbackSettings = FeedbackSettings()
    nps_detractor_task: TaskSettings = TaskSettings()
    nps_passive_offer: OfferSettings = OfferSettings()
    nps_promoter_referral: ReferralSettings = ReferralSettings()
    second_order_nudge: SecondOrderNudgeSettings = SecondOrderNudgeSettings()
    first_order_promo: PromoSettings = PromoSettings()
    churn_winback: ChurnWinbackSettings = ChurnWinbackSettings()
    replenishment_reminder: ReplenishmentSettings = ReplenishmentSettings()
    service_reminder: ServiceSettings = ServiceSettings()
    birthday: BirthdaySettings = BirthdaySettings()
    onboarding: OnboardingSettings = OnboardingSettings()
    loyalty_status: LoyaltySettings = LoyaltySettings()
    segment_entered: SegmentEnteredSettings = SegmentEnteredSettings()


class LifecycleSettings(Section):
    loyal_orders: Annotated[int, Field(ge=0, le=MAX_ORDERS)] = 4  # 0 = nobody is loyal
    loyal_window: Duration = 365 * DAY
    at_risk_after: Duration = 90 * DAY
    churned_after: Duration = 180 * DAY
    repeat_orders: Annotated[int, Field(ge=2)] = 2  # fewer orders: stage new

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleSettings:
        if not 0 < self.at_risk_after < self.churned_after:
            raise ValueError("at_risk_after must be positive and shorter than churned_after")
        if self.loyal_window <= 0:
            raise ValueError("loyal_window must be positive")
        return self

    def rules(self) -> LifecycleRules:
        return LifecycleRules(self.loyal_orders, self.loyal_window, self.at_risk_after,
                              self.churned_after, self.repeat_orders)


class NpsSettings(Section):
    detractor_max: Annotated[int, Field(ge=0, le=9)] = 5  # answers 0..5: detractors
    passive_max: Annotated[int, Field(ge=1, le=10)] = 8  # 6..8 passives; 9..10 promoters

    @model_validator(mode="after")
    def _ordered(self) -> NpsSettings:
        if self.detractor_max >= self.passive_max:
            raise ValueError(f"detractor_max ({self.detractor_max}) must be below "
                             f"passive_max ({self.passive_max})")
        return self

    def bands(self) -> NpsBands:
        return NpsBands(self.detractor_max, self.passive_max)


_FIXED = FixedThresholds()


class RfmFixedSettings(Section):
    recency_days: list[float] = Field(default_factory=lambda: list(_FIXED.recency_days))
    frequency: list[float] = Field(default_factory=lambda: list(_FIXED.frequency))
    monetary: list[float] = Field(default_factory=lambda: list(_FIXED.monetary))

    @model_validator(mode="after")
    def _valid(self) -> RfmFixedSettings:
        self.thresholds()
        return self

    def thresholds(self) -> FixedThresholds:
        try:
            return fixed_thresholds(self.recency_days, self.frequency, self.monetary)
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("segments.rfm.fixed.")) from None


class RfmSettings(Section):
    enabled: bool = True
    mode: Literal["quantile", "fixed"] = "quantile"
    refresh: Duration = 60.0  # how often quantiles are recomputed (0 = never by itself)
    fixed: RfmFixedSettings = RfmFixedSettings()


class ChannelSettings(Section):
    name: ChannelName
    contact: str | None = None  # the trait holding the client's contact; null: none needed


class FollowUpSettings(Section):
    """Follow-ups of marketing sends on a channel not yet tried (README, The policy)."""

    after: PositiveDuration = DAY  # after the send
    types: list[MarketingType] = Field(default_factory=list)  # none: no follow-ups
    max: PositiveInt = 1  # follow-ups of one occasion, one after the other

    @field_validator("types")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        return _distinct(value)

    def follow_up(self) -> FollowUp:
        return FollowUp(self.after, frozenset(self.types), self.max)


class PolicySettings(Section):
    timezone: str = "UTC"
    quiet_hours: Annotated[str | None, BeforeValidator(_quiet_hours)] = "21:00-09:00"
    frequency_cap_per_day: Annotated[int, Field(ge=0, le=MAX_SENDS)] = 2
    priority: list[TriggerType] = Field(default_factory=lambda: list(DEFAULT_PRIORITY))
    holdout_percent: Percent = 0.0
    loyal_after_orders: Annotated[int, Field(ge=0)] = 5
    suppress_for_loyal: list[MarketingType] = Field(
        default_factory=lambda: sorted(Policy().suppress_for_loyal))
    suppress_for_churned: list[MarketingType] = Field(
        default_factory=lambda: sorted(Policy().suppress_for_churned))
    suppress_for_detractors: list[MarketingType] = Field(
        default_factory=lambda: sorted(Policy().suppress_for_detractors))
    channels: list[ChannelSettings] = Field(default_factory=lambda: [
        ChannelSettings(name=c.name, contact=c.contact) for c in Policy().channels])
    learn_preferred_channel: bool = True
    require_consent: bool = False
    follow_up: FollowUpSettings = FollowUpSettings()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not is_zone(value):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as "
                             "Europe/London)")
        return value

    @field_validator("priority")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        return _distinct(value)

    @field_validator("channels")
    @classmethod
    def _distinct_channels(cls, value: list[ChannelSettings]) -> list[ChannelSettings]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError("channel names must be distinct")
        return value

    @field_validator("follow_up")
    @classmethod
    def _follow_ups_have_channels(cls, value: FollowUpSettings, info: ValidationInfo
                                  ) -> FollowUpSettings:
        """Each follow-up goes on a channel not yet tried: a chain longer than the cascade
        could never be sent."""
        channels = info.data.get("channels")
        if value.types and channels is not None and value.max >= len(channels):
            raise ValueError(
                f"max is {value.max}, but with {len(channels)} channel(s) in policy.channels "
                f"at most {len(channels) - 1} follow-up(s) can find a channel not yet tried")
        return value

    def policy(self) -> Policy:
        quiet = None
        if self.quiet_hours is not None:
            start, end = self.quiet_hours.split("-")
            quiet = QuietHours(_minutes(start), _minutes(end))
        return Policy(
            timezone=self.timezone, quiet_hours=quiet,
            frequency_cap_per_day=self.frequency_cap_per_day, priority=tuple(self.priority),
            holdout_percent=self.holdout_percent, loyal_after_orders=self.loyal_after_orders,
            suppress_for_loyal=frozenset(self.suppress_for_loyal),
            suppress_for_churned=frozenset(self.suppress_for_churned),
            suppress_for_detractors=frozenset(self.suppress_for_detractors),
            channels=tuple(Channel(c.name, c.contact) for c in self.channels),
            learn_preferred_channel=self.learn_preferred_channel,
            require_consent=self.require_consent, follow_up=self.follow_up.follow_up())


class DemoSettings(Section):
    events_per_second: Annotated[float, Field(gt=0, le=100_000)] = 20.0
    shoppers: PositiveInt = 2000
    seed: int = 7


# Decision statuses a webhook may deliver: the policy's, and a manual touch's verdicts.
WEBHOOK_STATUSES = (SENT, HOLDOUT, DEFERRED, SUPPRESSED, *TOUCH_STATUSES)
_ENDPOINT_NAME = re.compile(r"[a-z0-9_-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")  # an HTTP token
# what crmflow sets on every request, or HTTP itself: an endpoint's headers may not replace
_OWN_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "host",
                          "connection", "user-agent", "idempotency-key",
                          "x-crmflow-signature", "x-crmflow-attempt"})
MIN_SECRET_LENGTH = 16


def _webhook_status(value: object) -> str:
    if not isinstance(value, str) or value not in WEBHOOK_STATUSES:
        raise ValueError(f"unknown decision status {value!r} (known: "
                         f"{', '.join(WEBHOOK_STATUSES)})")
    return value


WebhookStatus = Annotated[str, BeforeValidator(_webhook_status)]


def _distinct(value: list[str]) -> list[str]:
    repeated = sorted({name for name in value if value.count(name) > 1})
    if repeated:
        raise ValueError(f"listed more than once: {', '.join(repeated)}")
    return value


class WebhookEndpoint(Section):
    """One receiver of trigger decisions (crmflow deliver; README, Webhooks)."""

    name: str  # a-z, 0-9, _ and -: its consumer groups (webhook:<name>) and metric label
    url: str
    # the HMAC-SHA256 key of the signature header (kept out of repr; `crmflow config` masks it)
    secret: str | None = Field(default=None, repr=False)
    secret_env: str | None = None  # or the environment variable that holds it
    # while rotating: the secret receivers may still check against, signed with too
    previous_secret: str | None = Field(default=None, repr=False)
    previous_secret_env: str | None = None
    types: list[TriggerType] = Field(default_factory=list)  # empty: every type
    statuses: list[WebhookStatus] = Field(default_factory=lambda: [SENT])
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=300)] = 10.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8  # requests in flight
    start_from: Literal["new", "oldest"] = "new"
    backoff_initial: PositiveDuration = 1.0
    backoff_max: PositiveDuration = 300.0  # also the cap on a Retry-After
    # sent with every request, e.g. the receiver's own API key (`crmflow config` masks the
    # values; kept out of repr)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f"{name} is set by crmflow or by HTTP itself")
            if name.lower() in seen:
                raise ValueError(f"{name} is listed twice (header names ignore case)")
            seen.add(name.lower())
            # printable ASCII and tabs only: a line break would start a header of the
            # value's choosing (the message names the header, never the value)
            if not all(ch == "\t" or " " <= ch <= "~" for ch in text) or not text.strip():
                raise ValueError(f"the value of {name} must be printable ASCII, not empty")
        return value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _ENDPOINT_NAME.fullmatch(value):
            raise ValueError(f"expected 1 to 64 of a-z, 0-9, _ and -, got {value!r}")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            port = parts.port  # ValueError when it is not a port
        except ValueError as exc:
            raise ValueError(f"not a usable URL: {exc}") from None
        if value != value.strip() or any(ch.isspace() for ch in value):
            raise ValueError("must not contain spaces")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL, got {parts.scheme or 'no'} "
                             "scheme")
        if not parts.hostname:
            raise ValueError("names no host")
        if port == 0:
            raise ValueError("port 0 cannot be reached")
        import httpx  # what the deliverer sends with: a URL it refuses, refused at start

        try:
            httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a usable URL: {exc}") from None
        return value

    @field_validator("secret", "previous_secret")
    @classmethod
    def _strong_secret(cls, value: str | None) -> str | None:
        if value is not None:
            _check_secret(value)
        return value

    @field_validator("secret_env", "previous_secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"not an environment variable name: {value!r}")
        return value

    @field_validator("types", "statuses")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        return _distinct(value)

    @field_validator("statuses")
    @classmethod
    def _some_status(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"list the statuses to deliver ({', '.join(WEBHOOK_STATUSES)})")
        return value

    @model_validator(mode="after")
    def _backoff_ordered(self) -> WebhookEndpoint:
        if self.backoff_initial > self.backoff_max:
            raise ValueError(f"backoff_initial ({format_duration(self.backoff_initial)}) is "
                             f"longer than backoff_max ({format_duration(self.backoff_max)})")
        return self

    def signing_key(self) -> bytes:
        """The secret as HMAC key bytes: `secret`, or the variable `secret_env` names (checked
        when the deliverer starts: `WebhookSettings.check_secrets`)."""
        return _secret_bytes(self.secret, self.secret_env)

    def signing_keys(self) -> list[bytes]:
        """The keys each request is signed with: the secret, then the previous one while a
        rotation is under way (a receiver accepts a signature by either)."""
        if self.previous_secret is None and self.previous_secret_env is None:
            return [self.signing_key()]
        return [self.signing_key(), _secret_bytes(self.previous_secret,
                                                  self.previous_secret_env)]


def _secret_bytes(secret: str | None, variable: str | None) -> bytes:
    """A secret given in the file, else the one the environment variable holds."""
    if secret is not None:
        return secret.encode()
    assert variable is not None
    return os.environ.get(variable, "").encode()


def _check_secret(value: str) -> None:
    if value != value.strip():
        raise ValueError("has spaces around it")
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters (a short secret "
                         "can be guessed)")


class WebhookSettings(Section):
    """`crmflow deliver`: trigger decisions POSTed to HTTP endpoints (README, Webhooks)."""

    endpoints: list[WebhookEndpoint] = Field(default_factory=list)
    # this process's consumer name in every group: null = the host name; keep it stable so a
    # restarted process finds its unacknowledged records again
    consumer: str | None = None
    # a record held this long by a consumer that no longer reads (a host gone) is taken over
    claim_after: Annotated[float, BeforeValidator(parse_duration), Field(ge=1)] = 60.0
    metrics_host: str = "127.0.0.1"
    metrics_port: Port = 9180

    @field_validator("consumer")
    @classmethod
    def _plain_consumer(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", value):
            raise ValueError("expected 1 to 128 letters, digits and _ . : @ -")
        return value

    @model_validator(mode="after")
    def _endpoints_usable(self) -> WebhookSettings:
        names = [endpoint.name for endpoint in self.endpoints]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"webhooks.endpoints: names must be distinct: {repeated[0]!r} is "
                             "listed more than once")
        for index, endpoint in enumerate(self.endpoints):
            if (endpoint.secret is None) == (endpoint.secret_env is None):
                raise ValueError(f"webhooks.endpoints.{index}.secret: give the signing "
                                 "secret, either as secret or as secret_env (the environment "
                                 "variable holding it)")
            if endpoint.previous_secret is not None and endpoint.previous_secret_env is not None:
                raise ValueError(f"webhooks.endpoints.{index}.previous_secret: give it as "
                                 "previous_secret or as previous_secret_env, not both")
            if endpoint.previous_secret is not None and endpoint.previous_secret == (
                    endpoint.secret):
                raise ValueError(f"webhooks.endpoints.{index}.previous_secret: the same as "
                                 "secret (a rotation signs with a new secret and the old one)")
        return self

    def check_secrets(self) -> None:
        """ConfigError naming the field when a `secret_env` variable is unset or holds a
        weak secret. Checked by the deliverer's start (`crmflow deliver`, `crmflow up`), not
        with the rest: the API and the dataflow need no webhook secret, and their hosts
        should not hold one."""
        errors = []
        for index, endpoint in enumerate(self.endpoints):
            for field, variable in (("secret_env", endpoint.secret_env),
                                    ("previous_secret_env", endpoint.previous_secret_env)):
                where = f"webhooks.endpoints.{index}.{field}"
                if variable is None:
                    continue
                value = os.environ.get(variable)
                if not value:
                    errors.append(f"  {where}: the environment variable {variable} is not set")
                    continue
                try:
                    _check_secret(value)
                except ValueError as exc:
                    errors.append(f"  {where}: the secret in {variable} {exc}")
        if errors:
            raise ConfigError("\n".join(["invalid configuration (environment):", *errors]))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CRMFLOW_", env_nested_delimiter="__", extra="forbid", frozen=True,
        env_parse_none_str="null",  # as in YAML: e.g. CRMFLOW_POLICY__QUIET_HOURS=null
    )

    redis: RedisSettings = RedisSettings()
    dataflow: DataflowSettings = DataflowSettings()
    api: ApiSettings = ApiSettings()
    triggers: TriggerSettings = TriggerSettings()
    policy: PolicySettings = PolicySettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    nps: NpsSettings = NpsSettings()
    rfm: RfmSettings = RfmSettings()
    segments: dict[str, Any] = Field(default_factory=dict)  # rule segments (README)
    demo: DemoSettings = DemoSettings()
    console: ConsoleSettings = ConsoleSettings()
    webhooks: WebhookSettings = WebhookSettings()

    @field_validator("segments")
    @classmethod
    def _compiled(cls, value: dict[str, Any]) -> dict[str, Any]:
        compile_catalog(value)  # raises RuleError (a ValueError) naming the segment
        return value

    @model_validator(mode="after")
    def _segments_fit_the_rest(self) -> Settings:
        """The segments compiled once for both checks: with `rfm.enabled: false` the RFM
        features are always null, so a rule that reads them would be accepted and never
        match; and `segment_entered` watches only segments that exist."""
        rules = self.segment_rules()
        naming = () if self.rfm.enabled or rules.catalog is None else rules.catalog.naming(
            RFM_FEATURES)
        if naming:
            raise ValueError(f"segments.{naming[0].name}: reads RFM features "
                             f"({', '.join(sorted(RFM_FEATURES))}), which are always null "
                             "with rfm.enabled: false")
        known = set(all_segment_names(rules))
        unknown = [name for name in self.triggers.segment_entered.segments
                   if name not in known]
        if unknown:
            raise ValueError(f"triggers.segment_entered.segments: unknown segment "
                             f"{unknown[0]!r} (known: {', '.join(sorted(known))})")
        return self

    @model_validator(mode="after")
    def _webhook_metrics_apart(self) -> Settings:
        """`crmflow up` runs the deliverer beside the API and the dataflow: its metrics port
        must be none of theirs (checked only when there is something to deliver)."""
        port = self.webhooks.metrics_port
        if not self.webhooks.endpoints or not port:
            return self
        flow = self.dataflow
        count = len(flow.addresses) or flow.processes
        taken = {"api.port": range(self.api.port, self.api.port + 1)}
        for name in ("metrics_port", "bytewax_metrics_port"):
            base = getattr(flow, name)
            if base:
                taken[f"dataflow.{name}"] = range(base, base + count)
        for name, ports in taken.items():
            if port in ports:
                offset = f" + {port - ports.start}" if port != ports.start else ""
                raise ValueError(f"webhooks.metrics_port: {port} is also {name}{offset}")
        return self

    def segment_rules(self) -> SegmentRules:
        """Lifecycle, RFM and the rule segments as the pure core's frozen values."""
        return SegmentRules(
            lifecycle=self.lifecycle.rules(), rfm_enabled=self.rfm.enabled,
            rfm_mode=self.rfm.mode, rfm_refresh=self.rfm.refresh,
            rfm_fixed=self.rfm.fixed.thresholds() if self.rfm.mode == "fixed" else None,
            catalog=compile_catalog(self.segments) if self.segments else None,
            timezone=self.policy.timezone)

    def trigger_rules(self) -> TriggerRules:
        """The catalogue and the policy, as the pure core's frozen values."""
        t = self.triggers
        return TriggerRules(
            welcome=t.welcome.rule(), order_confirmation=t.order_confirmation.rule(),
            order_cancellation=t.order_cancellation.rule(), order_refund=t.order_refund.rule(),
            abandoned_cart=t.abandoned_cart.rule(), abandoned_browse=t.abandoned_browse.rule(),
            feedback_request=t.feedback_request.rule(),
            nps_detractor_task=t.nps_detractor_task.rule(),
            nps_passive_offer=t.nps_passive_offer.rule(),
            nps_promoter_referral=t.nps_promoter_referral.rule(),
            second_order_nudge=t.second_order_nudge.rule(),
            first_order_promo=t.first_order_promo.rule(), churn_winback=t.churn_winback.rule(),
            replenishment_reminder=t.replenishment_reminder.rule(),
            service_reminder=t.service_reminder.rule(), birthday=t.birthday.rule(),
            onboarding=t.onboarding.rule(), loyalty_status=t.loyalty_status.rule(),
            segment_entered=t.segment_entered.rule(), policy=self.policy.policy(),
            segments=self.segment_rules(), nps=self.nps.bands(),
            enabled_from=tuple((name, since) for name in TRIGGER_TYPES
                               if (since := getattr(t, name).enabled_from) is not None))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file: load_settings passes the file's values as init values.
        return (env_settings, init_settings)


class ConfigError(Exception):
    """A configuration that cannot run; the message names every bad field."""


_SHORTCUTS = {
    "REDIS_URL": ("redis", "url"),
    "CRMFLOW_WRITE_KEY": ("api", "write_keys"),
    "CRMFLOW_READ_KEY": ("api", "read_keys"),
    "CRMFLOW_ADMIN_KEY": ("api", "admin_keys"),
}


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ConfigLoader(yaml.SafeLoader):
    """YAML as the settings read it: a date stays text, so the field that holds it checks
    it and names itself (PyYAML's own dates made `2026-13-01` a bare ValueError)."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # e.g. saved as UTF-16 by Windows Notepad
        raise ConfigError(f"config file {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                          f"at offset {exc.start}): save it as UTF-8") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top")
    named_otherwise = [key for key in data if not isinstance(key, str)]
    if named_otherwise:
        raise ConfigError(f"config file {path}: section names are text; {named_otherwise[0]!r} "
                          f"is not (sections: {', '.join(Settings.model_fields)})")
    return data


_ENV_PREFIX = "CRMFLOW_"
_ENV_FIELD = re.compile(r'field "(\w+)"')


def _unknown_env_sections(env: Mapping[str, str]) -> list[str]:
    """CRMFLOW_<SECTION>__<NAME> variables whose section does not exist: pydantic-settings
    ignores them, so a typo would silently leave the default in place."""
    sections = set(Settings.model_fields)
    return sorted(name for name in env if name.startswith(_ENV_PREFIX) and "__" in name
                  and name[len(_ENV_PREFIX):].partition("__")[0].lower() not in sections)


def _env_decoding_error(exc: SettingsError, env: Mapping[str, str]) -> str:
    """pydantic-settings names only the section it could not decode; name the variables."""
    found = _ENV_FIELD.search(str(exc))
    section = found.group(1) if found else None
    own = f"{_ENV_PREFIX}{(section or '').upper()}"
    variables = sorted(name for name in env if section and (
        name.upper() == own or name.upper().startswith(own + "__")))
    shown = ", ".join(variables) or str(exc)  # names only: values may be keys or passwords
    return (f"invalid configuration (environment): {shown}: a list or mapping setting takes "
            'JSON, such as \'["welcome", "birthday"]\' or \'{"start": "21:00", ...}\'')


SECRET_NAMES = ("write_keys", "read_keys", "admin_keys", "point_read_keys")


def redacted_url(url: str) -> str:
    """A Redis URL fit to print: its password (`redis://user:pw@host`, or `?password=`)
    replaced by `***`."""
    netloc = urlsplit(url).netloc
    if urlsplit(url).password is not None:
        credentials, _, host = netloc.rpartition("@")
        url = url.replace(netloc, f"{credentials.partition(':')[0]}:***@{host}", 1)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def _secrets(path: Path) -> dict[str, Any]:
    """The key lists of a secrets file (YAML: write_keys, read_keys, admin_keys,
    point_read_keys), and nothing else."""
    try:
        data = read_yaml(path)
    except ConfigError as exc:  # named as what it is, and where its path came from
        raise ConfigError(str(exc).replace("config file", "secrets file (CRMFLOW_SECRETS_FILE)",
                                           1)) from None
    unknown = sorted(set(data) - set(SECRET_NAMES))
    if unknown:
        raise ConfigError(f"secrets file {path}: unknown entry {unknown[0]!r} (expected "
                          f"{', '.join(SECRET_NAMES)})")
    return data


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if message.startswith(f"{where}.") or (
                where == "(top level)" and re.match(r"[a-z_][\w.]*: ", message)):
            where, _, message = message.partition(": ")  # the message names the field

        if error["type"] == "extra_forbidden":
            message = "unknown setting"
            if len(error["loc"]) == 2 and error["loc"][0] == "triggers":
                message = (f"unknown trigger type {error['loc'][1]!r} "
                           f"(known: {', '.join(TRIGGER_TYPES)})")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def load_settings(
    config_file: Path | str | None = None,
    *,
    overlays: tuple[Mapping[str, Any], ...] = (),
) -> Settings:
    """Build the Settings: code defaults < overlays < YAML file < environment.

    `overlays` are lower than the user's file (e.g. the demo's short timings), so what the
    user wrote always wins.
    """
    env = os.environ
    path = config_file if config_file is not None else env.get("CRMFLOW_CONFIG")
    values: dict[str, Any] = {}
    for overlay in overlays:
        values = _deep_merge(values, overlay)
    source = "defaults"
    if path:
        values = _deep_merge(values, read_yaml(Path(path)))
        source = str(path)
    if env.get("CRMFLOW_SECRETS_FILE"):  # keys kept apart from the configuration
        values = _deep_merge(values, {"api": _secrets(Path(env["CRMFLOW_SECRETS_FILE"]))})
    for variable, (section, name) in _SHORTCUTS.items():
        if env.get(variable):
            values = _deep_merge(values, {section: {name: env[variable]}})
    unknown = _unknown_env_sections(env)
    if unknown:
        raise ConfigError(f"invalid configuration (environment): {unknown[0]} names no "
                          f"section (sections: {', '.join(Settings.model_fields)})")
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, f"{source} and environment")) from None
    except SettingsError as exc:  # an environment value pydantic-settings cannot even decode
        raise ConfigError(_env_decoding_error(exc, env)) from None
