"""Durations as operators write them: `90s`, `30m`, `2h`, `7d`, `1h30m`, or plain seconds."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Seconds from a duration; raises ValueError with a message an operator can act on."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 30m, 2h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.startswith("-") and _is_duration(text[1:]):
            raise ValueError(f"duration must not be negative: {value!r}")
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(
                    f"invalid duration {value!r}: use a number with a unit "
                    "(ms, s, m, h, d, w), e.g. 90s, 30m, 2h, 7d"
                ) from None
    else:
        raise ValueError("expected a duration such as 90s, 30m, 2h or 7d")
    if not math.isfinite(seconds):  # float() accepts "nan" and "inf"; YAML has .nan and .inf
        raise ValueError(f"duration must be a finite number of seconds: {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative: {value!r}")
    return seconds


def _is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
