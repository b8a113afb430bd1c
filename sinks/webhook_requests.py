"""What a webhook request is and what its answer means: pure functions, no I/O.

`sinks/webhooks.py` reads the trigger streams, sends and records; everything it decides is
here, where it is tested without a network or a Redis: which records an endpoint takes, the
body and the signature sent, whether an answer delivered the record, failed it for good,
or asks for another attempt, and when that attempt is due.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

# The trigger stream's fields (sinks/bucket_store.py writes them), in the body's order. The
# stream leaves out the empty ones; the body carries them all, null when empty.
RECORD_FIELDS = ("trigger_id", "type", "key", "client_id", "fired_at", "decided_at",
                 "status", "reason", "channel", "source", "deferred_until", "payload")
SIGNATURE_HEADER = "X-Crmflow-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
ATTEMPT_HEADER = "X-Crmflow-Attempt"
# Answers that may succeed if asked again: a timeout, too early, too many, a server error.
RETRY_STATUSES = frozenset({408, 425, 429})


class Verdict(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result: the HTTP status, or no status and what went wrong (a timeout,
    a refused connection); `retry_after` is the answer's Retry-After header, as sent."""

    status: int | None
    error: str = ""
    retry_after: str | None = None

    def describe(self) -> str:
        """For the failed-delivery record and the logs: `HTTP 503` or the error."""
        return f"HTTP {self.status}" if self.status is not None else self.error


class RecordError(ValueError):
    """A stream entry that cannot become a request body (its payload is not a JSON object)."""


def wanted(fields: Mapping[bytes, bytes], types: Collection[str],
           statuses: Collection[str]) -> bool:
    """Whether an endpoint takes this record: its status is one of `statuses`, and its type
    one of `types` (empty: any type, a manual touch's own occasion name included)."""
    status = fields.get(b"status", b"").decode("utf-8", "replace")
    kind = fields.get(b"type", b"").decode("utf-8", "replace")
    return status in statuses and (not types or kind in types)


def record_body(fields: Mapping[bytes, bytes]) -> bytes:
    """The request body: the record as a JSON object with the stream's field names, `payload`
    parsed (an object, not text), fields the stream left out as null. A field the stream
    gains later is passed on as text after these."""
    record: dict[str, Any] = {}
    text = {name.decode("utf-8", "replace"): value.decode("utf-8", "replace")
            for name, value in fields.items()}
    for name in RECORD_FIELDS:
        record[name] = text.get(name)
    raw_payload = fields.get(b"payload")
    if raw_payload is None:
        record["payload"] = {}
    else:
        try:
            payload = orjson.loads(raw_payload)
        except orjson.JSONDecodeError as exc:
            raise RecordError(f"payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise RecordError(f"payload is a JSON {type(payload).__name__}, not an object")
        record["payload"] = payload
    for name, value in text.items():
        if name not in record:
            record[name] = value
    return orjson.dumps(record)


def idempotency_key(prefix: str, partition: int, entry_id: str) -> str:
    """The same on every attempt at a record, and distinct for every record: its stream entry
    (a deferral and the final decision share the trigger id, never the entry)."""
    return f"{prefix}:p{partition}:{entry_id}"


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value, as Stripe's: `t=<unix seconds>,v1=<hex>`, the hex being
    HMAC-SHA256 under the secret of `<t>.` followed by the body's exact bytes."""
    signed = str(timestamp).encode() + b"." + body
    return f"t={timestamp},v1={hmac.new(secret, signed, hashlib.sha256).hexdigest()}"


def signatures(secrets: list[bytes], body: bytes, timestamp: int) -> str:
    """The header's value signed by each secret (a rotation: the new one, then the old):
    `t=<unix seconds>,v1=<hex>,v1=<hex>`; a receiver accepts a match with any `v1`."""
    return ",".join([f"t={timestamp}", *(signature(secret, body, timestamp).partition(",")[2]
                                         for secret in secrets)])


def signature_matches(secret: bytes, body: bytes, header: str, now: float,
                      tolerance: float = 300.0) -> bool:
    """What a receiver checks (README, Webhooks): a `v1` that matches, on a `t` no further
    than `tolerance` seconds from `now` (an old request replayed fails)."""
    parts = [part.partition("=") for part in header.split(",")]
    stamps = [value for name, _, value in parts if name == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).partition(",v1=")[2]
    return any(name == "v1" and hmac.compare_digest(value, expected)
               for name, _, value in parts)


def classify(outcome: Outcome) -> Verdict:
    """2xx delivers. 408, 425, 429, 5xx, a timeout or a connection error may pass later:
    retry. Any other answer fails at once: a 4xx will not change, and a 3xx is not followed
    (the configured URL is where records go; a redirect is a misconfiguration)."""
    status = outcome.status
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in RETRY_STATUSES or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.FAILED


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header in seconds from `now` (epoch seconds): delay-seconds, or an
    HTTP date (past: 0); None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # not '²', which isdigit() takes and float() not
        return float(text)  # inf when past a float's range: `next_delay` caps it
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year past datetime's
        return None
    if moment.tzinfo is None:  # an HTTP date is always GMT
        return None
    return max(0.0, moment.timestamp() - now)


def next_delay(attempt: int, initial: float, maximum: float, retry_after: float | None,
               jitter: float) -> float:
    """Seconds to wait before attempt `attempt + 1`, after `attempt` attempts (1, 2, ...).

    The receiver's Retry-After when it gave one, up to `maximum`; else `initial` doubled per
    attempt, up to `maximum`, less up to a fifth by `jitter` (a number in [0, 1) the caller
    draws): records that failed together do not all come back at the same moment.
    """
    if retry_after is not None and not math.isnan(retry_after):  # inf: wait the most
        return min(max(retry_after, 0.0), maximum)
    base = min(maximum, initial * 2.0 ** min(attempt - 1, 64))
    return base * (1.0 - 0.2 * min(max(jitter, 0.0), 1.0))
