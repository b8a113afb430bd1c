"""What a webhook request is and what its answer means: the pure functions."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from sinks.webhook_metrics import answer_label
from sinks.webhook_requests import (
    RECORD_FIELDS,
    Outcome,
    RecordError,
    Verdict,
    classify,
    idempotency_key,
    next_delay,
    record_body,
    retry_after_seconds,
    signature,
    signature_matches,
    wanted,
)

SECRET = b"whsec_0123456789abcdef"


def fields(**values: str) -> dict[bytes, bytes]:
    base = {"trigger_id": "abc123", "type": "welcome", "key": "", "client_id": "ann",
            "fired_at": "2024-01-01T10:00:00.000Z", "decided_at": "2024-01-01T10:00:00.000Z",
            "status": "sent", "channel": "email", "source": "auto",
            "payload": '{"cart":{"items":2},"value":12.5}'}
    base.update(values)
    return {name.encode(): value.encode() for name, value in base.items()}


def test_the_body_is_the_record_with_its_payload_an_object_and_every_field_named() -> None:
    body = record_body(fields())
    record = json.loads(body)
    assert list(record) == list(RECORD_FIELDS)
    assert record["payload"] == {"cart": {"items": 2}, "value": 12.5}
    assert record["trigger_id"] == "abc123" and record["client_id"] == "ann"
    assert record["reason"] is None and record["deferred_until"] is None  # left out: null
    deferred = json.loads(record_body(fields(status="deferred", reason="quiet_hours",
                                             deferred_until="2024-01-01T09:00:00.000Z")))
    assert deferred["deferred_until"] == "2024-01-01T09:00:00.000Z"
    assert deferred["reason"] == "quiet_hours"
    later = json.loads(record_body({**fields(), b"campaign": b"spring"}))
    assert later["campaign"] == "spring"  # a field the stream gains later is passed on


@pytest.mark.parametrize(("payload", "words"), [
    ("not json", "payload is not JSON"), ("[1, 2]", "JSON list, not an object")])
def test_a_record_whose_payload_is_not_an_object_cannot_be_a_body(payload: str,
                                                                  words: str) -> None:
    with pytest.raises(RecordError, match=words):
        record_body(fields(payload=payload))


def test_types_and_statuses_filter_records() -> None:
    assert wanted(fields(), (), ("sent",))
    assert not wanted(fields(status="holdout"), (), ("sent",))
    assert wanted(fields(status="holdout"), (), ("sent", "holdout"))
    assert wanted(fields(), ("welcome", "birthday"), ("sent",))
    assert not wanted(fields(type="abandoned_cart"), ("welcome",), ("sent",))
    # a manual touch's own occasion name: only an endpoint taking every type gets it
    assert wanted(fields(type="renewal_call", status="done"), (), ("done",))
    assert not wanted(fields(type="renewal_call", status="done"), ("welcome",), ("done",))


def test_the_signature_is_hmac_sha256_of_the_timestamp_and_the_exact_body() -> None:
    body = record_body(fields())
    header = signature(SECRET, body, 1700000000)
    expected = hmac.new(SECRET, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert signature_matches(SECRET, body, header, now=1700000100)
    assert not signature_matches(SECRET, body + b" ", header, now=1700000100)
    assert not signature_matches(b"another-secret-of-16", body, header, now=1700000100)
    assert not signature_matches(SECRET, body, header, now=1700000000 + 301)  # too old
    assert not signature_matches(SECRET, body, "v1=" + expected, now=1700000000)
    assert not signature_matches(SECRET, body, "t=x,v1=" + expected, now=1700000000)


def test_the_idempotency_key_names_the_stream_entry() -> None:
    assert idempotency_key("crmflow", 3, "1700000000000-0") == "crmflow:p3:1700000000000-0"
    assert idempotency_key("crmflow", 3, "1700000000000-0") != idempotency_key(
        "crmflow", 2, "1700000000000-0")


@pytest.mark.parametrize(("status", "verdict"), [
    (200, Verdict.DELIVERED), (201, Verdict.DELIVERED), (204, Verdict.DELIVERED),
    (299, Verdict.DELIVERED),
    (408, Verdict.RETRY), (425, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY),
    (502, Verdict.RETRY), (503, Verdict.RETRY), (599, Verdict.RETRY),
    (None, Verdict.RETRY),  # a timeout or a connection error
    (400, Verdict.FAILED), (401, Verdict.FAILED), (404, Verdict.FAILED),
    (410, Verdict.FAILED), (422, Verdict.FAILED),
    (301, Verdict.FAILED), (302, Verdict.FAILED), (307, Verdict.FAILED),  # not followed
    (100, Verdict.FAILED), (600, Verdict.FAILED),
])
def test_answers_are_classified(status: int | None, verdict: Verdict) -> None:
    assert classify(Outcome(status, "" if status else "ConnectError")) is verdict


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(" 120 ", now) == 120.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0.0  # past
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("-5", now) is None
    assert retry_after_seconds("1.5", now) is None  # delay-seconds are whole
    # what a receiver may send that no parse should raise on (a raise killed the delivery
    # and left the record pending for ever): a digit that is not ASCII, a year past datetime's
    assert retry_after_seconds("\u00b2", now) is None
    assert retry_after_seconds("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", now) is None
    assert retry_after_seconds("9" * 400, now) == float("inf")  # capped by next_delay


def test_backoff_doubles_up_to_its_cap_and_retry_after_wins_capped() -> None:
    delays = [next_delay(attempt, 1.0, 300.0, None, 0.0) for attempt in range(1, 12)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert next_delay(1000, 1.0, 300.0, None, 0.0) == 300.0  # no overflow
    assert next_delay(3, 1.0, 300.0, None, 0.999) == pytest.approx(4 * 0.8002)
    assert 3.2 <= next_delay(3, 1.0, 300.0, None, 0.5) <= 4.0
    assert next_delay(1, 1.0, 300.0, 30.0, 0.5) == 30.0  # the receiver's word, no jitter
    assert next_delay(1, 1.0, 300.0, 3600.0, 0.5) == 300.0  # capped
    assert next_delay(5, 1.0, 300.0, 0.0, 0.5) == 0.0
    assert next_delay(1, 1.0, 300.0, float("inf"), 0.5) == 300.0  # beyond any float: the cap


def test_outcomes_describe_themselves_and_label_boundedly() -> None:
    assert Outcome(503).describe() == "HTTP 503"
    assert Outcome(None, "ConnectError: refused").describe() == "ConnectError: refused"
    assert [answer_label(s, False) for s in (200, 302, 404, 503, 99, 700)] == [
        "2xx", "3xx", "4xx", "5xx", "error", "error"]
    assert answer_label(None, True) == "timeout" and answer_label(None, False) == "error"
