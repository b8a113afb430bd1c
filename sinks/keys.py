"""The Redis key layout, in one place.

Every key of a partition carries the hash tag `{pN}`: its event stream, its buckets'
states and stream positions, its clients' touch ledgers and its trigger stream share one
Redis Cluster slot, so each bucket commit is a single-slot atomic script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.routing import bucket_of, partition_of_bucket

if TYPE_CHECKING:
    import redis

    from config.settings import Settings


@dataclass(frozen=True, slots=True)
class KeyLayout:
    prefix: str
    partitions: int
    buckets: int

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyLayout:
        return cls(settings.redis.key_prefix, settings.dataflow.partitions,
                   settings.dataflow.buckets)

    def _tag(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition}}}"

    def meta(self) -> str:
        return f"{self.prefix}:meta"

    def heartbeat(self) -> str:
        return f"{self.prefix}:dataflow:heartbeat"

    def events(self, partition: int) -> str:
        return f"{self._tag(partition)}:events"

    def events_count(self, partition: int) -> str:
        """How many entries were ever appended to the partition's stream."""
        return f"{self.events(partition)}:count"

    def seen(self, partition: int) -> str:
        """Prefix of the ingest de-duplication keys; the SHA-1 of the event id follows."""
        return f"{self._tag(partition)}:seen:"

    def emitted_seen(self, partition: int) -> str:
        """Prefix of the de-duplication keys of the events the dataflow appends itself:
        apart from `seen(partition)`, so that no ingested event id (free text) can take
        the key of one of the dataflow's own and make it a duplicate."""
        return f"{self._tag(partition)}:emitted:"

    def offsets(self, partition: int) -> str:
        return f"{self._tag(partition)}:offsets"

    def state(self, bucket: int) -> str:
        return f"{self._tag(self.partition_of_bucket(bucket))}:state:{bucket}"

    def ledger_prefix(self, partition: int) -> str:
        return f"{self._tag(partition)}:touches:"

    def ledger(self, client_key: str) -> str:
        return self.ledger_prefix(self.partition_of_client(client_key)) + client_key

    def triggers(self, partition: int) -> str:
        return f"{self._tag(partition)}:triggers"

    def dead_letters(self, partition: int) -> str:
        return f"{self._tag(partition)}:deadletter"

    def webhook_failed(self, partition: int) -> str:
        """Records a webhook endpoint gave up on (crmflow deliver): endpoint, entry id,
        trigger id, attempts and the last answer; no client id."""
        return f"{self._tag(partition)}:webhook_failed"

    def segment_members(self, partition: int, segment: str) -> str:
        """A segment's members in one partition: a sorted set of client keys, all scored 0,
        so members page in lexical order with a stable cursor."""
        return f"{self._tag(partition)}:segment:{segment}"

    def point_segment_members(self, partition: int, segment: str, point: str) -> str:
        """The members of a segment who belong to one point (store, branch): what a point
        manager's key reads instead of `segment_members`."""
        return f"{self._tag(partition)}:point:{point}:segment:{segment}"

    def members(self, partition: int, segment: str, point: str | None) -> str:
        return (self.segment_members(partition, segment) if point is None
                else self.point_segment_members(partition, segment, point))

    def points(self, partition: int) -> str:
        """The points this partition holds clients of: a hash of point -> how many, which
        the commit script keeps (a point leaves it with its last client), so its fields
        are the points to list, never more than the partition has clients."""
        return f"{self._tag(partition)}:point-clients"

    def points_counted(self, partition: int) -> str:
        """The buckets whose clients `points` counts: a set. A bucket from before the
        counts is counted by its first commit after a load (dataflows/buckets.py)."""
        return f"{self._tag(partition)}:point-clients:buckets"

    def retired_points(self, partition: int) -> str:
        """Before `points`: every point the partition had ever seen, a set that only grew.
        Nothing writes it now; the size-history recorder expires those points' histories
        and deletes it (sinks/console_store.py)."""
        return f"{self._tag(partition)}:points"

    def lookup(self, partition: int) -> str:
        """Email and phone index: a sorted set of "<kind>:<value>\\0<client>", all scored
        0, so an exact value or a prefix is a ZRANGE BYLEX (see features/lookup.py)."""
        return f"{self._tag(partition)}:lookup"

    def timeline(self, bucket: int) -> str:
        """A bucket's clients' recent events: client -> lines (features/timeline.py)."""
        return f"{self._tag(self.partition_of_bucket(bucket))}:timeline:{bucket}"

    def activity(self, partition: int, minute: int, point: str | None = None) -> str:
        """Events and triggers of one minute (epoch seconds of its start), by type, of all
        clients or of one point's: a hash kept for a few hours, for the console's overview
        (the commit script appends "@<point>" to the first form for the second)."""
        scope = "" if point is None else f"@{point}"
        return f"{self._tag(partition)}:activity:{minute}{scope}"

    def segment_sizes(self, segment: str, point: str | None) -> str:
        """A segment's size over time: hash of epoch seconds -> size (api/size_history.py)."""
        scope = "" if point is None else f"@{point}"
        return f"{self.prefix}:segment-sizes:{segment}{scope}"

    def segment_changes(self, partition: int) -> str:
        """Entries and exits of segments, in the order the dataflow decided them."""
        return f"{self._tag(partition)}:segment-changes"

    def last_commits(self, partition: int) -> str:
        """Per bucket, the id of its last applied commit: a resent commit (its reply lost)
        is recognised even when it moved no position."""
        return f"{self._tag(partition)}:last-commits"

    def erasures(self, partition: int) -> str:
        """Erasures committed but not yet purged from the partition's streams: a hash of
        erasure id -> job (the only place an erased client's id waits, until purged)."""
        return f"{self._tag(partition)}:erasures"

    def erasure_log(self) -> str:
        """The audit trail of erasures (no personal data): a stream, trimmed by age
        (`redis.erasure_audit_retention`)."""
        return f"{self.prefix}:audit:erasures"

    def erasure_status(self, erasure_id: str) -> str:
        """An erasure's outcome, for the API (no personal data): a string that expires
        (`redis.erasure_status_retention`)."""
        return f"{self.prefix}:erasure-status:{erasure_id}"

    def legacy_erasure_status(self) -> str:
        """Before `erasure_status`: one hash of every erasure's outcome, kept forever. The
        dataflow moves its records to expiring keys and deletes it (sinks/erasure.py)."""
        return f"{self.prefix}:erasure-status"

    def rfm_values(self, dimension: str) -> str:
        """Clients with orders by one RFM dimension ("r": last order time, "f": orders,
        "m": money): global sorted sets, so quantiles are exact rank lookups."""
        return f"{self.prefix}:rfm:{dimension}"

    def rfm_model(self) -> str:
        return f"{self.prefix}:rfm:model"

    def rfm_lock(self) -> str:
        return f"{self.prefix}:rfm:lock"

    def bucket_of(self, client_key: str) -> int:
        return bucket_of(client_key, self.buckets)

    def partition_of_bucket(self, bucket: int) -> int:
        return partition_of_bucket(bucket, self.partitions)

    def partition_of_client(self, client_key: str) -> int:
        return self.partition_of_bucket(self.bucket_of(client_key))

    def all_trigger_streams(self) -> list[str]:
        return [self.triggers(p) for p in range(self.partitions)]

    def all_event_streams(self) -> list[str]:
        return [self.events(p) for p in range(self.partitions)]


class LayoutMismatch(RuntimeError):
    pass


def _layout_of(client: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()
            if k in (b"partitions", b"buckets")}


def claim_layout(client: redis.Redis, layout: KeyLayout) -> None:
    """Record the partition and bucket counts on first use; refuse to run with others.

    Routing depends on both counts, so changing them under existing data would send
    clients to buckets that do not hold their state.
    """
    key = layout.meta()
    stored = _layout_of(client, key)
    if len(stored) < 2:  # first use: only then a write (a full Redis still lets us start)
        client.hsetnx(key, "partitions", layout.partitions)
        client.hsetnx(key, "buckets", layout.buckets)
        stored = _layout_of(client, key)
    wanted = {"partitions": layout.partitions, "buckets": layout.buckets}
    for name, value in wanted.items():
        if stored.get(name) != value:
            raise LayoutMismatch(
                f"dataflow.{name} is {value}, but the data under key prefix "
                f"{layout.prefix!r} was laid out with {stored.get(name)}; keep the original "
                "value or use another redis.key_prefix")
