"""Settings: code defaults < overlays < YAML file < environment; errors name the field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from config import ConfigError, Settings, load_settings
from config.durations import format_duration, parse_duration
from features.rules import (
    DAY,
    BirthdayRule,
    Channel,
    FollowUp,
    LoyaltyTier,
    OnboardingRule,
    Policy,
    QuietHours,
    TriggerRule,
    TriggerRules,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = ROOT / "config" / "default.yaml"
DEMO_YAML = ROOT / "config" / "demo.yaml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CRMFLOW_* or REDIS_URL from the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith("CRMFLOW_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "crmflow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)
    return str(info.value)


def field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= field_paths(annotation, f"{prefix}{name}.")
        else:
            paths.add(prefix + name)
    return paths


def yaml_paths(data: dict[str, Any], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict) and value:
            paths |= yaml_paths(value, f"{prefix}{key}.")
        else:
            paths.add(prefix + key)
    return paths


# --- the documented defaults ----------------------------------------------------------------------

def test_defaults_equal_the_documented_file() -> None:
    assert load_settings() == load_settings(DEFAULT_YAML)
    assert load_settings() == Settings()


def test_documented_file_names_every_setting() -> None:
    documented = yaml_paths(yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8")))
    assert documented == field_paths(Settings)


def test_some_defaults() -> None:
    settings = load_settings()
    assert settings.redis.url is None
    assert settings.redis.dedupe_window == 86400.0
    assert settings.dataflow.tick_interval == 0.25
    assert settings.api.write_keys == []
    assert settings.trigger_rules() == TriggerRules()
    assert settings.trigger_rules().policy == Policy()
    assert settings.policy.quiet_hours == "21:00-09:00"
    assert settings.triggers.churn_winback.delay == 180 * 86400.0
    assert settings.triggers.abandoned_cart.delay == 3600.0
    assert settings.triggers.abandoned_browse.delay == 7200.0


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.triggers.abandoned_cart.delay = 1.0


# --- files ----------------------------------------------------------------------------------------

def test_partial_yaml_keeps_other_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "triggers:\n  abandoned_cart:\n    delay: 45m\napi:\n  port: 9000\n")
    settings = load_settings(path)
    defaults = load_settings()
    assert settings.triggers.abandoned_cart.delay == 2700.0
    assert settings.triggers.abandoned_cart.enabled is True
    assert settings.api.port == 9000
    assert settings.api.host == defaults.api.host
    assert settings.triggers.abandoned_browse == defaults.triggers.abandoned_browse
    assert settings.redis == defaults.redis
    assert settings.dataflow == defaults.dataflow


def test_rules_from_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "triggers:\n  welcome:\n    enabled: false\n"
                           "  abandoned_browse:\n    delay: 90s\n")
    rules = load_settings(path).trigger_rules()
    assert rules.welcome == TriggerRule(enabled=False, delay=0.0)
    assert rules.abandoned_browse == TriggerRule(enabled=True, delay=90.0)
    assert rules.abandoned_cart == TriggerRules().abandoned_cart


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing here\n")) == load_settings()


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "api:\n  port: 9100\n")
    monkeypatch.setenv("CRMFLOW_CONFIG", str(path))
    assert load_settings().api.port == 9100


def test_overlays_are_below_the_file(tmp_path: Path) -> None:
    demo = yaml.safe_load(DEMO_YAML.read_text(encoding="utf-8"))
    settings = load_settings(overlays=(demo,))
    assert settings.triggers.abandoned_cart.delay == 20.0
    assert settings.triggers.abandoned_browse.delay == 30.0
    path = write(tmp_path, "triggers:\n  abandoned_cart:\n    delay: 5m\n")
    mine = load_settings(path, overlays=(demo,))
    assert mine.triggers.abandoned_cart.delay == 300.0
    assert mine.triggers.abandoned_browse.delay == 30.0


def test_missing_file(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_non_mapping_yaml(tmp_path: Path, text: str) -> None:
    assert "mapping" in config_error(write(tmp_path, text))


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notepad.yaml"
    path.write_bytes("redis:\n  key_prefix: x\n".encode("utf-16"))  # a BOM, then UTF-16
    with pytest.raises(ConfigError, match=r"notepad.yaml: not UTF-8 text .*save it as UTF-8"):
        load_settings(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    assert "YAML" in config_error(write(tmp_path, "triggers: [unclosed\n"))


def test_section_not_a_mapping(tmp_path: Path) -> None:
    assert "triggers" in config_error(write(tmp_path, "triggers: 5\n"))


# --- durations ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("7d", 604800.0), ("1h30m", 5400.0),
    ("1w", 604800.0), ("250ms", 0.25), ("1.5h", 5400.0), (" 2 h ", 7200.0), ("2H", 7200.0),
    ("1d2h3m4s", 93784.0), ("45", 45.0), ("0", 0.0), (45, 45.0), (2.5, 2.5), (0, 0.0),
])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "1h30", "h", "-5", "-5m", "5 minutes", "1.2.3s",
                                 "nan", "inf", float("nan"), float("inf"), -1, True, None, [1]])
def test_bad_duration(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("bad", "words"), [("-5m", "must not be negative"),
                                             ("-1h30m", "must not be negative"),
                                             ("-soon", "invalid duration"),
                                             ("-", "invalid duration")])
def test_negative_duration_says_so(bad: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_duration(bad)


def test_format_duration_round_trips() -> None:
    for seconds in (90.0, 1800.0, 7200.0, 604800.0, 5400.0, 0.25, 86400.0):
        assert parse_duration(format_duration(seconds)) == seconds
    assert format_duration(3600.0) == "1h"
    assert format_duration(5400.0) == "90m"


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("1h30m", 5400.0), ("7d", 604800.0),
                                                ("600", 600.0), ("12", 12.0)])
def test_durations_in_yaml(tmp_path: Path, text: str, seconds: float) -> None:
    path = write(tmp_path, f"triggers:\n  abandoned_cart:\n    delay: {text}\n")
    assert load_settings(path).triggers.abandoned_cart.delay == seconds


def test_bad_duration_names_the_field(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "triggers:\n  abandoned_cart:\n    delay: soonish\n"))
    assert "triggers.abandoned_cart.delay" in message
    assert "soonish" in message


@pytest.mark.parametrize("value", [".nan", ".inf", "-10m"])
def test_non_finite_or_negative_duration_in_yaml(tmp_path: Path, value: str) -> None:
    message = config_error(write(tmp_path, f"redis:\n  socket_timeout: {value}\n"))
    assert "redis.socket_timeout" in message


def test_unknown_key_names_the_field(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "triggers:\n  abandoned_cart:\n    delai: 1h\n"))
    assert "triggers.abandoned_cart.delai" in message
    assert "unknown setting" in message
    assert "unknown setting" in config_error(write(tmp_path, "nonsense: 1\n"))
    message = config_error(write(tmp_path, "triggers:\n  birthdy: {}\n"))
    assert "triggers.birthdy: unknown trigger type 'birthdy'" in message
    assert "birthday" in message  # the known names are listed


def test_every_bad_field_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "api:\n  port: 70000\ndataflow:\n  partitions: 0\n"
                                           "redis:\n  key_prefix: 'a:b'\n"))
    assert "api.port" in message
    assert "dataflow.partitions" in message
    assert "redis.key_prefix" in message


# --- environment ----------------------------------------------------------------------------------

def test_env_override_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "triggers:\n  abandoned_cart:\n    delay: 2h\n    enabled: false\n"
                           "  abandoned_browse:\n    delay: 3h\n")
    monkeypatch.setenv("CRMFLOW_TRIGGERS__ABANDONED_CART__DELAY", "30m")
    settings = load_settings(path)
    assert settings.triggers.abandoned_cart.delay == 1800.0
    assert settings.triggers.abandoned_cart.enabled is False  # the file's other values stay
    assert settings.triggers.abandoned_browse.delay == 10800.0
    assert load_settings().triggers.abandoned_cart.delay == 1800.0


def test_env_override_of_other_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_API__PORT", "8123")
    monkeypatch.setenv("CRMFLOW_TRIGGERS__WELCOME__ENABLED", "false")
    monkeypatch.setenv("crmflow_dataflow__partitions", "8")
    settings = load_settings()
    assert settings.api.port == 8123
    assert settings.triggers.welcome.enabled is False
    assert settings.dataflow.partitions == 8


def test_bad_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_TRIGGERS__ABANDONED_CART__DELAY", "later")
    assert "triggers.abandoned_cart.delay" in config_error()


def test_unknown_env_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_TRIGGERS__ABANDONED_CART__DELAI", "5m")
    assert "triggers.abandoned_cart.delai" in config_error()


def test_an_env_variable_of_no_section_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_POLICYY__QUIET_HOURS", "null")  # was silently ignored
    message = config_error()
    assert "CRMFLOW_POLICYY__QUIET_HOURS names no section" in message and "policy" in message
    monkeypatch.delenv("CRMFLOW_POLICYY__QUIET_HOURS")
    monkeypatch.setenv("CRMFLOW_PURE_PYTHON", "1")  # not a setting: one underscore
    load_settings()


def test_an_env_value_that_is_not_json_names_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_POLICY__PRIORITY", "welcome")
    message = config_error()
    assert "CRMFLOW_POLICY__PRIORITY" in message and "JSON" in message
    monkeypatch.delenv("CRMFLOW_POLICY__PRIORITY")
    monkeypatch.setenv("CRMFLOW_API__POINT_READ_KEYS", "shop1=pk_SECRET")  # not JSON
    monkeypatch.setenv("CRMFLOW_API__ADMIN_KEYS", "adm_SECRET")
    message = config_error()
    assert "CRMFLOW_API__POINT_READ_KEYS" in message and "SECRET" not in message


def test_nps_bands_are_configured_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "nps.yaml"
    config.write_text("nps:\n  detractor_max: 6\n  passive_max: 8\n")
    assert load_settings(config).trigger_rules().nps.detractor_max == 6
    config.write_text("nps:\n  detractor_max: 8\n  passive_max: 8\n")
    message = config_error(config)
    assert "nps" in message and "detractor_max (8) must be below passive_max (8)" in message


def test_the_repeat_stage_starts_where_configured(tmp_path: Path) -> None:
    config = tmp_path / "life.yaml"
    config.write_text("lifecycle:\n  repeat_orders: 3\n")
    assert load_settings(config).segment_rules().lifecycle.repeat_orders == 3
    config.write_text("lifecycle:\n  repeat_orders: 1\n")
    assert "lifecycle.repeat_orders" in config_error(config)


def test_a_missing_secrets_file_is_named_as_such(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("CRMFLOW_SECRETS_FILE", str(tmp_path / "nope.yaml"))
    assert "secrets file (CRMFLOW_SECRETS_FILE)" in config_error()


def test_section_names_that_are_not_text_are_named(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("1: x\n")
    with pytest.raises(ConfigError, match="section names are text; 1 is not"):
        load_settings(config)


def test_key_lists_from_env_as_comma_lists_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_API__WRITE_KEYS", "a,b")
    assert load_settings().api.write_keys == ["a", "b"]
    monkeypatch.setenv("CRMFLOW_API__WRITE_KEYS", '["a", "b"]')
    assert load_settings().api.write_keys == ["a", "b"]
    monkeypatch.setenv("CRMFLOW_API__WRITE_KEYS", '["a", ')
    assert "api.write_keys: not a JSON list" in config_error()


def test_redis_url_shortcut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    path = write(tmp_path, "redis:\n  url: redis://file:6379/0\n  key_prefix: mine\n")
    settings = load_settings(path)
    assert settings.redis.url == "redis://example:6379/2"
    assert settings.redis.key_prefix == "mine"


def test_key_shortcuts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_WRITE_KEY", "a,b")
    monkeypatch.setenv("CRMFLOW_READ_KEY", " r1 , ,r2 ")
    monkeypatch.setenv("CRMFLOW_ADMIN_KEY", "root")
    settings = load_settings()
    assert settings.api.write_keys == ["a", "b"]
    assert settings.api.read_keys == ["r1", "r2"]
    assert settings.api.admin_keys == ["root"]


def test_empty_shortcut_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    assert load_settings().redis.url is None


def test_key_list_in_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "api:\n  write_keys: [k1, k2]\n  read_keys: 'r1,r2'\n")
    settings = load_settings(path)
    assert settings.api.write_keys == ["k1", "k2"]
    assert settings.api.read_keys == ["r1", "r2"]



# --- the trigger catalogue and the policy ---------------------------------------------------------

def test_every_catalogue_rule_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
triggers:
  feedback_request: {delay: 5d, nps_survey: false, holdout_percent: 12.5}
  nps_detractor_task: {channel: crm_task}
  nps_passive_offer: {discount_percent: 15}
  first_order_promo: {promo_code: HELLO10}
  replenishment_reminder: {offset: 3d, per_category: true}
  service_reminder: {interval_trait: visit_every, since: visit}
  birthday: {offset: 2d, at: "08:30"}
  onboarding: {steps: [2d, 10d]}
  loyalty_status:
    tiers: [{name: vip, min_money: 1000}]
    announce_downgrades: true
""")
    rules = load_settings(path).trigger_rules()
    assert rules.feedback_request.delay == 5 * DAY
    assert rules.feedback_request.nps_survey is False
    assert rules.holdout_percent("feedback_request") == 12.5
    assert rules.holdout_percent("order_confirmation") == 0.0
    assert rules.nps_detractor_task.channel == "crm_task"
    assert rules.nps_passive_offer.discount_percent == 15
    assert rules.first_order_promo.promo_code == "HELLO10"
    assert (rules.replenishment_reminder.offset, rules.replenishment_reminder.per_category) == (
        3 * DAY, True)
    assert rules.service_reminder.interval_trait == "visit_every"
    assert rules.service_reminder.since == "visit"
    assert rules.birthday == BirthdayRule(offset=2 * DAY, at=8 * 60 + 30)
    assert rules.onboarding == OnboardingRule(steps=(2 * DAY, 10 * DAY))
    assert rules.loyalty_status.tiers == (LoyaltyTier("vip", 0, 1000.0),)
    assert rules.loyalty_status.announce_downgrades is True


def test_when_rules_were_switched_on_from_a_file(tmp_path: Path) -> None:
    """A date (YAML reads it unquoted as a date) is midnight UTC; a time with a zone is that
    moment; rules not named are always on."""
    settings = load_settings(write(tmp_path, (
        "triggers:\n  birthday:\n    enabled_from: 2026-12-01\n"
        "  welcome:\n    enabled_from: '2026-12-01T09:30:00+01:00'\n"
        "  order_refund:\n    enabled_from: '2026-12-01 08:00'\n")))
    rules = settings.trigger_rules()
    assert rules.on_since("birthday") == 1_796_083_200.0  # 2026-12-01T00:00:00Z
    assert rules.on_since("welcome") == 1_796_083_200.0 + 8.5 * 3600
    assert rules.on_since("order_refund") == 1_796_083_200.0 + 8 * 3600
    assert rules.on_since("abandoned_cart") == float("-inf")
    assert settings.triggers.birthday.enabled and rules.birthday.enabled
    printed = write(tmp_path, yaml.safe_dump(settings.model_dump(mode="json")), "printed.yaml")
    assert load_settings(printed) == settings  # as `crmflow config` prints it: epoch seconds


def test_a_rule_reading_rfm_features_needs_rfm(tmp_path: Path) -> None:
    """With RFM off its features are always null: the rule was accepted and never matched."""
    text = ("rfm:\n  enabled: false\nsegments:\n  big: {rule: 'orders_count > 3'}\n"
            "  vips: {rule: 'rfm_segment == \"champions\" or rfm_r >= 4'}\n")
    message = config_error(write(tmp_path, text))
    assert "segments.vips: reads RFM features" in message, message
    assert "rfm.enabled: false" in message
    load_settings(write(tmp_path, text.replace("false", "true"), "on.yaml"))


def test_policy_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
policy:
  timezone: Europe/Berlin
  quiet_hours: "22:30 – 07:15"
  frequency_cap_per_day: 0
  priority: [birthday, abandoned_cart]
  holdout_percent: 5
  loyal_after_orders: 0
  suppress_for_churned: []
  channels: [{name: sms, contact: phone}, {name: crm}]
  require_consent: true
""")
    policy = load_settings(path).trigger_rules().policy
    assert policy.timezone == "Europe/Berlin"
    assert policy.quiet_hours == QuietHours(22 * 60 + 30, 7 * 60 + 15)
    assert policy.frequency_cap_per_day == 0
    assert policy.priority == ("birthday", "abandoned_cart")
    assert policy.holdout_percent == 5
    assert policy.loyal_after_orders == 0
    assert policy.suppress_for_churned == frozenset()
    assert policy.suppress_for_loyal == Policy().suppress_for_loyal
    assert policy.channels == (Channel("sms", "phone"), Channel("crm", None))
    assert policy.require_consent is True
    assert load_settings(write(tmp_path, "policy:\n  quiet_hours: null\n")
                         ).trigger_rules().policy.quiet_hours is None


def test_follow_ups_from_a_file_and_off_by_default(tmp_path: Path) -> None:
    assert load_settings().trigger_rules().policy.follow_up == FollowUp()
    assert FollowUp().types == frozenset()  # off: today's outputs do not change
    path = write(tmp_path, "policy:\n  follow_up:\n    types: [abandoned_cart, birthday]\n"
                           "    after: 1d12h\n    max: 2\n")
    assert load_settings(path).trigger_rules().policy.follow_up == FollowUp(
        1.5 * DAY, frozenset({"abandoned_cart", "birthday"}), 2)
    # with no types, max is not held to the channels: the section may sit switched off
    load_settings(write(tmp_path, "policy:\n  follow_up: {max: 5}\n", "off.yaml"))


@pytest.mark.parametrize(("text", "field", "words"), [
    ("triggers:\n  feedback_request:\n    delay: -2d\n", "triggers.feedback_request.delay",
     "must not be negative"),
    ("triggers:\n  replenishment_reminder:\n    offset: -1h\n",
     "triggers.replenishment_reminder.offset", "must not be negative"),
    ("triggers:\n  onboarding:\n    steps: [3d, -1d]\n", "triggers.onboarding.steps.1",
     "must not be negative"),
    ("triggers:\n  onboarding:\n    steps: [3d, 1d]\n", "triggers.onboarding.steps",
     "increasing"),
    ("triggers:\n  abandoned_cart:\n    holdout_percent: 120\n",
     "triggers.abandoned_cart.holdout_percent", "less than or equal to 100"),
    ("triggers:\n  birthday:\n    at: '25:00'\n", "triggers.birthday.at", "HH:MM"),
    ("triggers:\n  birthday:\n    enabled_from: soon\n", "triggers.birthday.enabled_from",
     "expected a date or a date and time"),
    ("triggers:\n  welcome:\n    enabled_from: 2026-13-01\n", "triggers.welcome.enabled_from",
     "expected a date"),
    ("triggers:\n  service_reminder:\n    since: week\n", "triggers.service_reminder.since",
     "'order', 'visit' or 'any'"),
    ("triggers:\n  order_confirmation:\n    delay: -1h\n",
     "triggers.order_confirmation.delay", "negative"),
    ("triggers:\n  loyalty_status:\n    tiers: [{name: a}, {name: a}]\n",
     "triggers.loyalty_status.tiers", "distinct"),
    ("policy:\n  quiet_hours: 'late'\n", "policy.quiet_hours", "HH:MM-HH:MM"),
    ("policy:\n  quiet_hours: '09:00-09:00'\n", "policy.quiet_hours", "same time"),
    ("policy:\n  timezone: Mars/Olympus\n", "policy.timezone", "unknown time zone"),
    ("policy:\n  frequency_cap_per_day: -1\n", "policy.frequency_cap_per_day",
     "greater than or equal to 0"),
    ("policy:\n  priority: [birthday, birthdya]\n", "policy.priority.1",
     "unknown trigger type 'birthdya'"),
    ("policy:\n  priority: [birthday, birthday]\n", "policy.priority", "more than once"),
    ("policy:\n  suppress_for_churned: [order_confirmation]\n",
     "policy.suppress_for_churned.0", "transactional"),
    ("policy:\n  channels: [{name: Email}]\n", "policy.channels.0.name", "pattern"),
    ("policy:\n  channels: [{name: sms}, {name: sms}]\n", "policy.channels", "distinct"),
    ("policy:\n  follow_up: {types: [abandoned_crat]}\n", "policy.follow_up.types.0",
     "unknown trigger type 'abandoned_crat'"),
    ("policy:\n  follow_up: {types: [order_confirmation]}\n", "policy.follow_up.types.0",
     "transactional"),
    ("policy:\n  follow_up: {types: [birthday, birthday]}\n", "policy.follow_up.types",
     "more than once"),
    ("policy:\n  follow_up: {types: [birthday], after: 0s}\n", "policy.follow_up.after",
     "greater than 0"),
    ("policy:\n  follow_up: {types: [birthday], after: -1h}\n", "policy.follow_up.after",
     "must not be negative"),
    ("policy:\n  follow_up: {types: [birthday], max: 0}\n", "policy.follow_up.max",
     "greater than or equal to 1"),
    ("policy:\n  follow_up: {types: [birthday], max: 3}\n", "policy.follow_up",
     "max is 3, but with 3 channel(s) in policy.channels at most 2"),
    ("policy:\n  channels: [{name: sms}]\n  follow_up: {types: [birthday]}\n",
     "policy.follow_up", "at most 0 follow-up(s)"),
    ("policy:\n  follow_up: {types: [birthday], after_send: 1h}\n",
     "policy.follow_up.after_send", "unknown setting"),
])
def test_bad_catalogue_and_policy_values_name_the_field(tmp_path: Path, text: str, field: str,
                                                        words: str) -> None:
    message = config_error(write(tmp_path, text))
    line = next((line for line in message.splitlines() if line.strip().startswith(field + ":")),
                None)
    assert line is not None, message
    assert words in line, message


def test_policy_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_POLICY__QUIET_HOURS", "20:00-08:00")
    monkeypatch.setenv("CRMFLOW_TRIGGERS__BIRTHDAY__OFFSET", "3d")
    rules = load_settings().trigger_rules()
    assert rules.policy.quiet_hours == QuietHours(20 * 60, 8 * 60)
    assert rules.birthday.offset == 3 * DAY


def test_loyalty_tiers_must_be_listed_lowest_first(tmp_path: Path) -> None:
    path = write(tmp_path, "triggers:\n  loyalty_status:\n    tiers:\n"
                           "      - {name: gold, min_orders: 10}\n"
                           "      - {name: silver, min_orders: 3}\n")
    with pytest.raises(ConfigError, match="triggers.loyalty_status.tiers: .*lowest first"):
        load_settings(path)


def test_several_hosts_are_configured_by_addresses_and_process_id(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_DATAFLOW__ADDRESSES", "10.0.0.1:2101,10.0.0.2:2101")
    monkeypatch.setenv("CRMFLOW_DATAFLOW__PROCESS_ID", "1")
    dataflow = load_settings().dataflow
    assert (dataflow.addresses, dataflow.process_id) == (["10.0.0.1:2101", "10.0.0.2:2101"], 1)
    monkeypatch.setenv("CRMFLOW_DATAFLOW__PROCESS_ID", "2")
    with pytest.raises(ConfigError, match=r"dataflow.*process_id must be an index"):
        load_settings()


@pytest.mark.parametrize(("api", "expected"), [
    ("read_keys: ['']", "api.read_keys[0]: an empty key"),
    ("write_keys: [w, '  ']", "api.write_keys[1]: an empty key"),
    ("point_read_keys: {'': leeds}", "api.point_read_keys: an empty key"),
    ("point_read_keys: {pk: ''}", "api.point_read_keys: a key with an empty point"),
    ("read_keys: [rk]\n  point_read_keys: {rk: leeds}",
     "api.point_read_keys: a key is also in api.read_keys"),
    ("write_keys: [k1]\n  admin_keys: [k1]", "api.admin_keys: a key is also in api.write_keys"),
    ("read_keys: [' rk-padded ']", "api.read_keys[0]: a key with spaces around it"),
    ("point_read_keys: {pk: ' leeds'}", "api.point_read_keys: the point ' leeds' has spaces"),
])
def test_key_mistakes_that_would_widen_access_stop_start_up(
        tmp_path: Path, api: str, expected: str) -> None:
    message = config_error(write(tmp_path, f"api:\n  {api}\n"))
    assert expected in message


def test_env_null_turns_off_what_yaml_null_turns_off(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """default.yaml documents `null` values (quiet_hours: null = off, holdout_percent: null =
    the policy's): an environment override must be able to say it too."""
    path = write(tmp_path, "triggers:\n  welcome:\n    holdout_percent: 20\n")
    monkeypatch.setenv("CRMFLOW_POLICY__QUIET_HOURS", "null")
    monkeypatch.setenv("CRMFLOW_TRIGGERS__WELCOME__HOLDOUT_PERCENT", "null")
    settings = load_settings(path)
    assert settings.policy.quiet_hours is None
    assert settings.trigger_rules().policy.quiet_hours is None
    assert settings.triggers.welcome.holdout_percent is None


def test_a_zero_redis_socket_timeout_is_refused(tmp_path: Path, redis_url: str) -> None:
    """0 makes redis-py's sockets non-blocking: every connection fails with EINPROGRESS."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url, socket_timeout=0, socket_connect_timeout=0)
    with pytest.raises(redis_lib.ConnectionError):
        client.ping()
    message = config_error(write(tmp_path, "redis:\n  socket_timeout: 0s\n"))
    assert "redis.socket_timeout: Input should be greater than 0" in message
    assert load_settings(write(tmp_path, "redis:\n  socket_timeout: 250ms\n")
                         ).redis.socket_timeout == 0.25


@pytest.mark.parametrize(("url", "words"), [
    ("localhost:6379", "one of the following schemes"),
    ("http://redis:6379", "one of the following schemes"),
    ("redis://redis:port/0", "Port could not be cast to integer"),
])
def test_a_redis_url_redis_cannot_use_is_refused_naming_the_field(
        monkeypatch: pytest.MonkeyPatch, url: str, words: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    message = config_error()
    assert "redis.url:" in message and words in message, message


def test_redis_urls_of_every_scheme_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("redis://:pw@redis:6379/0", "rediss://u:pw@redis.example:6380/1",
                "unix:///run/redis.sock?db=2"):
        monkeypatch.setenv("REDIS_URL", url)
        assert load_settings().redis.url == url


def test_a_heartbeat_ttl_shorter_than_the_beat_is_refused(tmp_path: Path) -> None:
    """With a 1 s life and a beat every 2 s, /readyz said "no heartbeat" half the time."""
    from config.settings import MIN_HEARTBEAT_TTL
    from dataflows.source import HEARTBEAT_EVERY

    assert MIN_HEARTBEAT_TTL >= 2 * HEARTBEAT_EVERY
    message = config_error(write(tmp_path, "dataflow:\n  heartbeat_ttl: 1s\n"))
    assert "dataflow.heartbeat_ttl: Input should be greater than or equal to 4" in message
    assert load_settings(write(tmp_path, "dataflow:\n  heartbeat_ttl: 4s\n")
                         ).dataflow.heartbeat_ttl == 4.0


@pytest.mark.parametrize(("text", "words"), [
    ("dataflow: {processes: 2, metrics_port: 9101, bytewax_metrics_port: 9102}",
     "dataflow.metrics_port and dataflow.bytewax_metrics_port: the ports of 2 process(es) "
     "overlap (9101..9102 and 9102..9103)"),
    ("dataflow: {metrics_port: 3030, bytewax_metrics_port: 3030}",
     "dataflow.metrics_port and dataflow.bytewax_metrics_port"),
    ("dataflow: {processes: 4, cluster_port: 9100}",
     "dataflow.metrics_port and dataflow.cluster_port"),
    ("dataflow: {processes: 4, metrics_port: 65534}",
     "dataflow.metrics_port: 65534 + one port for each of 4 processes passes 65535"),
    ("dataflow: {addresses: [a:1, b:1, c:1], process_id: 0, bytewax_metrics_port: 65534}",
     "dataflow.bytewax_metrics_port: 65534 + one port for each of 3 processes"),
    ("dataflow: {addresses: [a:2101, b:9102], process_id: 0}",
     "dataflow.addresses.1: port 9102 is also process 1's dataflow.metrics_port + 1"),
])
def test_dataflow_ports_that_collide_are_refused(tmp_path: Path, text: str, words: str) -> None:
    """Process I listens on each base + I: process 1's metrics on 9102 took the port of
    process 0's Bytewax metrics, and the group died at start."""
    message = config_error(write(tmp_path, text + "\n"))
    assert words in message, message


def test_dataflow_ports_apart_are_accepted(tmp_path: Path) -> None:
    for text in ("dataflow: {processes: 4, metrics_port: 9101, bytewax_metrics_port: 9105}",
                 "dataflow: {processes: 64, metrics_port: 0, cluster_port: 2101}",
                 "dataflow: {addresses: [a:2101, b:2101], process_id: 1}"):
        load_settings(write(tmp_path, text + "\n"))


@pytest.mark.parametrize("field", ["redis.embedded_port", "api.port"])
def test_a_port_others_must_find_cannot_be_zero(tmp_path: Path, field: str) -> None:
    """Port 0 is a random port: `crmflow api` and `crmflow dataflow` each started their own
    embedded Redis on the same data folder (so the dataflow never saw the API's events), and
    `crmflow up` waited for an API on port 0."""
    section, name = field.split(".")
    message = config_error(write(tmp_path, f"{section}:\n  {name}: 0\n"))
    assert f"{field}: Input should be greater than or equal to 1" in message, message


def test_fewer_buckets_than_partitions_is_refused(tmp_path: Path) -> None:
    """Partition p feeds the buckets b with b mod partitions = p: with 8 partitions and 4
    buckets, no client ever lived in partitions 4..7 and the processes owning them idled."""
    from features.routing import bucket_of, partition_of_bucket

    fed = {partition_of_bucket(bucket_of(f"c{n}", 4), 8) for n in range(1000)}
    assert fed == {0, 1, 2, 3}
    message = config_error(write(tmp_path, "dataflow: {partitions: 8, buckets: 4}\n"))
    assert "dataflow.buckets: 4 is fewer than dataflow.partitions (8)" in message, message
    assert load_settings(write(tmp_path, "dataflow: {partitions: 8, buckets: 8}\n"))


@pytest.mark.parametrize(("kind", "delay"), [
    ("abandoned_cart", 3600.0), ("abandoned_browse", 7200.0),
    ("second_order_nudge", 14 * 86400.0), ("churn_winback", 180 * 86400.0)])
def test_a_trigger_given_only_its_holdout_keeps_its_own_delay(tmp_path: Path, kind: str,
                                                               delay: float) -> None:
    """`triggers.<type>.holdout_percent`, as Measuring uplift suggests, alone: the types
    whose default delay is their own lost it (0: a nudge at the first order, not 14 days
    later; a cart reminder at the add)."""
    path = tmp_path / "crmflow.yaml"
    path.write_text(yaml.safe_dump({"triggers": {kind: {"holdout_percent": 10}}}))
    rule = getattr(load_settings(path).triggers, kind)
    assert (rule.delay, rule.holdout_percent) == (delay, 10.0)
    assert getattr(Settings().triggers, kind).delay == delay
