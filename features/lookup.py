"""Finding a client by email or phone: the normalised forms a lookup index holds.

A manager types what the customer says on the phone; the index holds the traits in one
canonical form so that "Alice@Example.com " and "alice@example.com", or "+44 20 7946-0958"
and "+442079460958", find the same client. Entries are "<kind>:<value>" so one lexical
index serves both kinds, and a prefix of a value finds every client whose value starts so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EMAIL_TRAIT = "email"
PHONE_TRAIT = "phone"
POINT_TRAIT = "point_id"
MAX_VALUE = 200


def normalise_email(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return text if "@" in text and 3 <= len(text) <= MAX_VALUE else None


def normalise_phone(value: object) -> str | None:
    """Digits only, with a leading + kept: at least 5 digits to be a phone at all."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    if not 5 <= len(digits) <= 20:
        return None
    return ("+" if text.startswith("+") else "") + digits


def lookup_keys(traits: Mapping[str, Any]) -> frozenset[str]:
    """The index entries (without the client) that a client's traits give."""
    keys: set[str] = set()
    email = normalise_email(traits.get(EMAIL_TRAIT))
    if email is not None:
        keys.add(f"email:{email}")
    phone = normalise_phone(traits.get(PHONE_TRAIT))
    if phone is not None:
        keys.add(f"phone:{phone}")
    return frozenset(keys)


def query_prefixes(query: str) -> list[str]:
    """The index prefixes a typed query looks under: an email-looking query as an email,
    a phone-looking one as a phone (digits), else both as typed."""
    text = query.strip()
    prefixes: list[str] = []
    if "@" in text:
        email = text.lower()
        prefixes.append(f"email:{email}")
    digits = "".join(ch for ch in text if ch.isdigit())
    if digits and len(digits) >= 3 and all(ch.isdigit() or ch in "+-() ." for ch in text):
        prefixes.append("phone:" + ("+" if text.startswith("+") else "") + digits)
        if text.startswith("+"):
            prefixes.append("phone:" + digits)  # stored without the + when sent without
        else:
            prefixes.append("phone:+" + digits)
    if not prefixes and text:
        prefixes.append(f"email:{text.lower()}")
    return prefixes


def point_of(traits: Mapping[str, Any]) -> str | None:
    """The point (store, branch) a client belongs to: the `point_id` trait, if any."""
    value = traits.get(POINT_TRAIT)
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None
