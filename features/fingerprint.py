"""Fingerprints of configuration values that are equal in every process that holds an equal
value.

`hash()` will not do: string hashing is salted per process, and a frozenset's iteration
order follows it. A fingerprint walks the value into a canonical form first (sets and
mappings sorted, dataclasses by their compared fields) and digests its text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from enum import Enum


def fingerprint(value: object) -> int:
    """A 32-bit digest of `value`; TypeError for a value with no canonical form (an
    arbitrary object, whose text may hold an address)."""
    text = repr(_canonical(value)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little")


def _canonical(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Enum):
        return (type(value).__qualname__, _canonical(value.value))
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__,
                tuple((f.name, _canonical(getattr(value, f.name)))
                      for f in fields(value) if f.compare))
    if isinstance(value, (tuple, list)):
        return tuple(_canonical(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((_canonical(item) for item in value), key=repr)))
    if isinstance(value, Mapping):
        return ("map", tuple(sorted(((_canonical(k), _canonical(v)) for k, v in value.items()),
                                    key=repr)))
    raise TypeError(f"no canonical form for a {type(value).__name__}")
