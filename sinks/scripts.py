"""The Lua scripts shipped with crmflow, loaded once from package files."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua(name: str) -> str:
    return resources.files("sinks").joinpath(f"{name}.lua").read_text(encoding="utf-8")
