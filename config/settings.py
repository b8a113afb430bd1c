"""Settings: defaults in code, then a YAML file, then environment variables (highest).

- `--config FILE` or `CRMFLOW_CONFIG` names the YAML file; it may set only some values.
- `CRMFLOW_<SECTION>__<FIELD>` overrides any value,
  e.g. `CRMFLOW_TRIGGERS__ABANDONED_CART__DELAY=30m`.
- `REDIS_URL`, `CRMFLOW_WRITE_KEY`, `CRMFLOW_READ_KEY`, `CRMFLOW_ADMIN_KEY` are shortcuts
  (keys may be comma-separated lists).

A bad value stops start-up with a `ConfigError` that names the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from config.durations import parse_duration
from features.triggers import TriggerRule, TriggerRules

Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveInt = Annotated[int, Field(ge=1)]
Port = Annotated[int, Field(ge=0, le=65535)]


def _key_list(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


KeyList = Annotated[list[str], BeforeValidator(_key_list)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(Section):
    url: str | None = None  # unset: crmflow runs an embedded Redis
    key_prefix: str = "crmflow"
    data_dir: Path = Path("var/redis")
    embedded_port: Port = 6390
    stream_maxlen: PositiveInt = 5_000_000
    dedupe_window: Duration = 86400.0
    ledger_max_entries: PositiveInt = 200
    socket_timeout: Duration = 5.0

    @field_validator("key_prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        if not value or any(ch in value for ch in "{}: \t\n"):
            raise ValueError("must be non-empty, without braces, colons or spaces")
        return value


class DataflowSettings(Section):
    partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    buckets: Annotated[int, Field(ge=1, le=1_048_576)] = 1024
    batch_size: PositiveInt = 2000
    tick_interval: Duration = 0.25
    idle_wait: Duration = 0.05
    allowed_lateness: Duration = 5.0
    offset_flush_interval: Duration = 5.0
    heartbeat_ttl: Duration = 15.0
    workers: PositiveInt = 1
    metrics_host: str = "127.0.0.1"
    metrics_port: Port = 9101
    epoch_interval: Duration = 10.0


class ApiSettings(Section):
    host: str = "127.0.0.1"
    port: Port = 8000
    write_keys: KeyList = Field(default_factory=list)
    read_keys: KeyList = Field(default_factory=list)
    admin_keys: KeyList = Field(default_factory=list)
    max_future_skew: Duration = 3600.0
    max_event_bytes: PositiveInt = 32 * 1024
    max_batch_bytes: PositiveInt = 500 * 1024


class ImmediateRuleSettings(Section):
    """A trigger raised by an event itself: it can be switched off, it does not wait."""

    enabled: bool = True

    def rule(self) -> TriggerRule:
        return TriggerRule(enabled=self.enabled)


class TriggerRuleSettings(Section):
    enabled: bool = True
    delay: Duration = 0.0

    def rule(self) -> TriggerRule:
        return TriggerRule(enabled=self.enabled, delay=self.delay)


class TriggerSettings(Section):
    welcome: ImmediateRuleSettings = ImmediateRuleSettings()
    order_confirmation: ImmediateRuleSettings = ImmediateRuleSettings()
    abandoned_cart: TriggerRuleSettings = TriggerRuleSettings(delay=3600.0)
    abandoned_browse: TriggerRuleSettings = TriggerRuleSettings(delay=7200.0)

    def rules(self) -> TriggerRules:
        return TriggerRules(
            welcome=self.welcome.rule(),
            order_confirmation=self.order_confirmation.rule(),
            abandoned_cart=self.abandoned_cart.rule(),
            abandoned_browse=self.abandoned_browse.rule(),
        )


class DemoSettings(Section):
    events_per_second: Annotated[float, Field(gt=0, le=100_000)] = 20.0
    shoppers: PositiveInt = 2000
    seed: int = 7


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CRMFLOW_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    redis: RedisSettings = RedisSettings()
    dataflow: DataflowSettings = DataflowSettings()
    api: ApiSettings = ApiSettings()
    triggers: TriggerSettings = TriggerSettings()
    demo: DemoSettings = DemoSettings()

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


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top")
    return data


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
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
    for variable, (section, name) in _SHORTCUTS.items():
        if env.get(variable):
            values = _deep_merge(values, {section: {name: env[variable]}})
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, f"{source} and environment")) from None
    except SettingsError as exc:  # an environment value pydantic-settings cannot even decode
        raise ConfigError(f"invalid configuration (environment): {exc}") from None
