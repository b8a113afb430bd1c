"""Values JSON can carry that the event log cannot store.

`json.loads` accepts integers of any size, numbers beyond any float (read as infinity)
and lone UTF-16 surrogates (`"\\ud83d"`, what JavaScript leaves when it cuts a string
inside an emoji); orjson, which encodes every stored event, refuses the integers and the
surrogates (so does Redis's UTF-8) and would store infinity as null. Found at the door,
they reject the one item that holds them, named by its path, instead of failing the whole
request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson

from features.events import MAX_DEPTH, EventError

MIN_INT, MAX_INT = -(2**63), 2**64 - 1  # what orjson encodes


class NotANumber:
    """`NaN`, `Infinity` or `-Infinity` where JSON has a number: Python's json reads them
    (`parse_constant`), JSON does not have them, and orjson would store them as null."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class OutOfRange(NotANumber):
    """A number literal beyond any float (`1e400`): Python's json reads it as infinity,
    which orjson would store as null."""


def finite_float(text: str) -> float | OutOfRange:
    """json's `parse_float`: the number, or OutOfRange for a literal beyond any float."""
    value = float(text)
    return value if math.isfinite(value) else OutOfRange(text)


def _problem(value: object) -> str | None:
    if isinstance(value, OutOfRange) or (isinstance(value, float)
                                         and not math.isfinite(value)):
        return "number out of range"
    if isinstance(value, NotANumber):
        return f"{value.text} is not a JSON number"
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return "is not valid Unicode text (a lone surrogate, such as half an emoji)"
    elif isinstance(value, int) and not isinstance(value, bool) and not (
            MIN_INT <= value <= MAX_INT):
        return f"integer outside the 64-bit range [{MIN_INT}, {MAX_INT}]"
    return None


def unencodable(value: object) -> tuple[str, str] | None:
    """(path, problem) of the first part of `value` that cannot be stored, or None; the
    path names keys as sent (`properties.order_ref`, `products[2].sku`). Nesting deeper than
    the events' limit is named by its top-level field, as the event parser names it."""
    stack: list[tuple[str, str, object, int]] = [("", "", value, 0)]
    while stack:
        here, top, item, depth = stack.pop()
        if isinstance(item, Mapping | list | tuple) and depth > MAX_DEPTH:
            return (top or "(value)"), f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, Mapping):
            for key, child in reversed(list(item.items())):
                problem = _problem(key)
                if problem is not None:
                    return (here or "(object)"), f"a key {problem}"
                stack.append((f"{here}.{key}" if here else str(key), top or str(key), child,
                              depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((f"{here}[{i}]", top or f"[{i}]", child, depth + 1)
                         for i, child in reversed(list(enumerate(item))))
        else:
            problem = _problem(item)
            if problem is not None:
                return (here or "(value)"), problem
    return None


def encoded(value: object, what: str) -> bytes:
    """`value` as compact JSON (UTF-8: its length is its size in bytes). Raises EventError
    naming the part that cannot be stored (`what` when it is the whole)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        path, problem = unencodable(value) or (what, "cannot be encoded as JSON")
        raise EventError(path, problem) from None
