"""The active configuration as tables a marketer can read (the console's Rules page)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from config.durations import format_duration
from config.settings import Settings
from features.rules import TRANSACTIONAL, TriggerRules

# Settings that are durations, by field name: shown as "1h", "7d" rather than seconds.
_DURATIONS = frozenset({"delay", "offset", "loyal_window", "at_risk_after", "churned_after",
                        "refresh", "steps"})


def _cell(name: str, value: Any) -> Any:
    if name == "follow_up" and isinstance(value, dict):
        return _follow_up(value)
    if name in _DURATIONS and isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(float(value))
    if name in _DURATIONS and isinstance(value, list):
        return ", ".join(format_duration(float(v)) for v in value)
    if isinstance(value, list):
        return ", ".join(_flat(item) for item in value)
    if isinstance(value, dict):
        return _flat(value)
    return value


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={_flat(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, BaseModel):
        return _flat(value.model_dump())
    return str(value)


def _follow_up(value: dict[str, Any]) -> str:
    """The policy's follow-ups as a sentence, "off" without types."""
    types = value.get("types") or []
    if not types:
        return "off"
    chain = "once" if value.get("max") == 1 else f"up to {value.get('max')} times"
    return (f"{', '.join(types)}: {chain}, {format_duration(float(value['after']))} after "
            "the send, on a channel not yet tried, unless opened")


def _holdout(name: str, own: float | None, rules: TriggerRules) -> str:
    """The share held out as the policy applies it: never for a transactional trigger."""
    if name in TRANSACTIONAL:
        return "none (transactional)"
    percent = f"{rules.holdout_percent(name):g}%"
    return f"{percent} (policy default)" if own is None else percent


def _triggers(settings: Settings) -> dict[str, Any]:
    common = ("enabled", "delay", "holdout_percent")
    rules = settings.trigger_rules()
    rows: list[list[Any]] = []
    for name, rule in settings.triggers:
        fields = rule.model_dump()
        timing = fields.get("delay", fields.get("offset"))
        timing_name = "delay" if "delay" in fields else "offset"
        extra = {k: _cell(k, v) for k, v in fields.items()
                 if k not in common and k != "offset" and v not in (None, [], {})}
        rows.append([name, fields.get("enabled", True), _cell(timing_name, timing),
                     _holdout(name, fields.get("holdout_percent"), rules),
                     "; ".join(f"{k}: {v}" for k, v in extra.items())])
    return {"title": "Triggers", "columns": ["trigger", "enabled", "delay / offset",
                                             "holdout", "settings"], "rows": rows}


def _pairs(title: str, model: BaseModel) -> dict[str, Any]:
    return {"title": title, "columns": ["setting", "value"],
            "rows": [[name, _cell(name, value)] for name, value in model.model_dump().items()]}


def rules_sections(settings: Settings) -> list[dict[str, Any]]:
    sections = [_triggers(settings), _pairs("Contact policy", settings.policy),
                _pairs("Lifecycle", settings.lifecycle), _pairs("RFM", settings.rfm)]
    catalog = settings.segment_rules().catalog
    if catalog is not None:
        sections.append({"title": "Rule segments", "columns": ["segment", "description"],
                         "rows": [[segment.name, segment.description]
                                  for segment in catalog.segments]})
    return sections
