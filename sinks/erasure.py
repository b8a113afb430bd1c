"""Erasure of a client on request: the last step, and the audit trail.

An erasure travels as an event in the client's own stream, so the dataflow applies it in
order: whatever arrived before it is erased with it, whatever arrives after it starts a
fresh profile. The bucket commit deletes the state, touch ledger and memberships and
records a job (commit_bucket.lua); this module then purges the entries that mention the
client from its partition's streams (events, triggers, segment changes, dead letters, up
to that moment), and writes the audit record, which holds no personal data: the erasure
id, the times, and how much was removed.

Purging reads the partition's streams a page at a time and deletes matching entries: its
cost grows with the streams' length (bounded by retention and `redis.stream_maxlen`), and
it is paid once per erasure.

Records are bounded in time (`Retention`): a status expires with its key, and each audit
record written trims the audit stream of the records older than its retention.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis

from config.settings import RedisSettings
from features.events import ANONYMOUS_PREFIX, EventError, format_time, parse_time
from sinks.keys import KeyLayout

log = logging.getLogger(__name__)

PAGE = 1000
Fields = dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long erasure records are kept, in seconds (`redis.erasure_*_retention`)."""

    status: float  # an erasure's status, for `GET /v1/erasures/{id}`
    audit: float  # its audit record: compliance asks for proof of erasure for a year or more

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> Retention:
        return cls(settings.erasure_status_retention, settings.erasure_audit_retention)


DEFAULT_RETENTION = Retention.from_settings(RedisSettings())


@dataclass(frozen=True, slots=True)
class ErasureRefusal:
    """An erasure the dataflow refused (features/identity.py `refuses_erasure`): nothing was
    erased; its status says why, without naming anybody."""

    erasure_id: str
    requested_at: float
    reason: str


def status_ttl_ms(retention: float, since: float, now: float) -> int:
    """Milliseconds a status record written `since` has left (at least 1: PX refuses 0)."""
    return max(1, int((since + retention - now) * 1000))


def refusal_record(refusal: ErasureRefusal, now: float) -> dict[str, Any]:
    return {"erasure_id": refusal.erasure_id, "status": "refused",
            "requested_at": format_time(refusal.requested_at), "completed_at": format_time(now),
            "reason": refusal.reason}


def record_refusals(client: redis.Redis, layout: KeyLayout, refusals: Sequence[ErasureRefusal],
                    now: float, retention: Retention) -> None:
    """Write the refusals' statuses (idempotent: a replay refuses again, alike)."""
    if not refusals:
        return
    pipe = client.pipeline(transaction=False)
    for refusal in refusals:
        pipe.set(layout.erasure_status(refusal.erasure_id),
                 json.dumps(refusal_record(refusal, now)), px=status_ttl_ms(
                     retention.status, now, now))
    pipe.execute()


def expire_legacy_statuses(client: redis.Redis, layout: KeyLayout, now: float,
                           retention: Retention) -> int:
    """Move the statuses of the hash that kept them forever (`legacy_erasure_status`) to
    expiring keys, each left the time its retention has left (gone if none), and delete
    the hash; how many were moved."""
    legacy = layout.legacy_erasure_status()
    moved = 0
    pipe = client.pipeline(transaction=False)
    for queued, (erasure_id, raw) in enumerate(
            cast(Any, client.hscan_iter(legacy, count=PAGE)), 1):
        since = _recorded_at(raw, now)
        if since + retention.status > now:  # each status set before its field goes
            pipe.set(layout.erasure_status(erasure_id.decode()), raw, nx=True,
                     px=status_ttl_ms(retention.status, since, now))
        pipe.hdel(legacy, erasure_id)
        if queued % PAGE == 0:  # a page per round trip, not a status
            moved += _statuses_set(pipe.execute())
    return moved + _statuses_set(pipe.execute())


def _statuses_set(replies: list[Any]) -> int:
    """The SETs that wrote a status (True; an HDEL answers a count): HSCAN may return a
    field twice while the hash shrinks, and the second SET NX writes nothing."""
    return sum(1 for reply in replies if reply is True)


def _recorded_at(raw: bytes, now: float) -> float:
    """When a status record was written: its completion, else its request (now if
    unreadable, so it is kept a whole retention rather than lost)."""
    try:
        record = json.loads(raw)
        return parse_time(record.get("completed_at") or record["requested_at"], "at")
    except (ValueError, KeyError, TypeError, AttributeError, EventError):
        return now


def _named_client(entry: bytes) -> str | None:
    """The client key a raw event names, as parsing would route it, even when the rest of
    it is invalid (a dead letter is usually an event that did not parse)."""
    try:
        raw = orjson.loads(entry)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    for name, prefix in (("client_id", ""), ("anonymous_id", ANONYMOUS_PREFIX)):
        value = raw.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
            return prefix + str(value)
    return None


def dead_letter_of(client_key: str, entry_key: str, entry: bytes) -> bool:
    """Whether a dead letter is about the client: filed under its key, or its event names
    it. Parsed keys, never a substring of the JSON (erasing "1" must not take "21"'s, and
    an anonymous id or one with a quote is written differently inside the JSON)."""
    return entry_key == client_key or _named_client(entry) == client_key


def _purge_stream(client: redis.Redis, stream: str, through: str,
                  mentions: Callable[[Fields], bool]) -> int:
    """Delete the entries up to `through` that mention the client; how many were."""
    removed = 0
    start = "-"
    while True:
        page = cast(list[tuple[bytes, Fields]],
                    client.xrange(stream, min=start, max=through, count=PAGE))
        doomed = [entry_id for entry_id, fields in page if mentions(fields)]
        if doomed:
            removed += client.xdel(stream, *doomed)
        if len(page) < PAGE:
            return removed
        start = "(" + page[-1][0].decode()


def _purge_job(client: redis.Redis, layout: KeyLayout, partition: int, job: dict[str, Any]
               ) -> dict[str, int]:
    """Delete every entry of the partition's streams that mentions the job's client, up to
    where the streams were when the erasure was committed; how many, per stream."""
    key = str(job["client"]).encode()
    return {
        "events": _purge_stream(client, layout.events(partition), job["events_through"],
                                lambda f: f.get(b"k") == key),
        "triggers": _purge_stream(client, layout.triggers(partition), job["triggers_through"],
                                  lambda f: f.get(b"client_id") == key),
        "segment_changes": _purge_stream(client, layout.segment_changes(partition),
                                         job["changes_through"],
                                         lambda f: f.get(b"client_id") == key),
        "dead_letters": _purge_stream(client, layout.dead_letters(partition),
                                      job["dead_through"],
                                      lambda f: dead_letter_of(
                                          str(job["client"]), f.get(b"client", b"").decode(
                                              "utf-8", "replace"), f.get(b"entry", b""))),
    }


def purge(client: redis.Redis, layout: KeyLayout, partition: int, now: float,
          retention: Retention = DEFAULT_RETENTION) -> int:
    """Finish the partition's pending erasures; how many were finished here."""
    jobs = cast(dict[bytes, bytes], client.hgetall(layout.erasures(partition)))
    done = 0
    for erasure_id_raw, raw in jobs.items():
        erasure_id = erasure_id_raw.decode()
        job: dict[str, Any] = json.loads(raw)
        removed = _purge_job(client, layout, partition, job)
        record = {"erasure_id": erasure_id, "status": "done",
                  "requested_at": job["requested_at"], "completed_at": format_time(now),
                  "memberships_removed": int(job["memberships"]),
                  **{f"{name}_removed": count for name, count in removed.items()}}
        if client.hdel(layout.erasures(partition), erasure_id):  # once, whoever purged too
            pipe = client.pipeline(transaction=False)
            # exact MINID trimming: the audit keeps what its retention asks, not a node more
            oldest = max(0, int((now - retention.audit) * 1000))
            pipe.xadd(layout.erasure_log(), {k: str(v) for k, v in record.items()},
                      minid=oldest, approximate=False)
            pipe.set(layout.erasure_status(erasure_id), json.dumps(record),
                     px=status_ttl_ms(retention.status, now, now))
            pipe.execute()
            log.info("erasure %s done: %s", erasure_id, removed)
            done += 1
    return done
