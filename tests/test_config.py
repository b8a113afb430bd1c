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
from features.triggers import TriggerRule, TriggerRules

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
        if isinstance(value, dict):
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
    assert settings.triggers.rules() == TriggerRules()
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
    rules = load_settings(path).triggers.rules()
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
    assert "triggers.birthday" in config_error(write(tmp_path, "triggers:\n  birthday: {}\n"))


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


def test_undecodable_env_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_API__WRITE_KEYS", "a,b")  # a list must be JSON here
    assert "api" in config_error()
    monkeypatch.setenv("CRMFLOW_API__WRITE_KEYS", '["a", "b"]')
    assert load_settings().api.write_keys == ["a", "b"]


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

