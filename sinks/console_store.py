"""What the console reads besides profiles and segments: per-minute activity, the lookup
index, client timelines, and segment sizes over time. Every read is a bounded number of
key reads (minutes x partitions, partitions, one field); none scans the keyspace.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from features.timeline import TimelineEntry, parse_timeline
from sinks.bucket_store import minute_of
from sinks.keys import KeyLayout


@dataclass(frozen=True, slots=True)
class Minute:
    start: int  # epoch seconds
    events: dict[str, int] = field(default_factory=dict)  # by event type
    triggers: dict[str, int] = field(default_factory=dict)  # sent, by trigger type
    decisions: dict[str, int] = field(default_factory=dict)  # every decision, by status


async def activity(client: aioredis.Redis, layout: KeyLayout, now: float, minutes: int,
                   point: str | None = None) -> list[Minute]:
    """The last `minutes` minutes up to the one `now` falls in, oldest first, zeros kept."""
    last = minute_of(now)
    starts = [last - 60 * k for k in range(minutes - 1, -1, -1)]
    async with client.pipeline(transaction=False) as pipe:
        for start in starts:
            for partition in range(layout.partitions):
                pipe.hgetall(layout.activity(partition, start, point))
        replies = cast(list[dict[bytes, bytes]], await pipe.execute())
    out: list[Minute] = []
    for i, start in enumerate(starts):
        events: Counter[str] = Counter()
        sent: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        for reply in replies[i * layout.partitions:(i + 1) * layout.partitions]:
            for raw_name, raw_count in reply.items():
                count = int(raw_count)
                kind, _, rest = raw_name.decode().partition(":")
                if kind == "e":
                    events[rest] += count
                elif kind == "t":
                    trigger_type, _, status = rest.partition("|")
                    statuses[status] += count
                    if status == "sent":
                        sent[trigger_type] += count
        out.append(Minute(start, dict(events), dict(sent), dict(statuses)))
    return out


@dataclass(frozen=True, slots=True)
class Match:
    client_id: str
    matched: str  # email or phone
    value: str


Keep = Callable[[list[Match]], Awaitable[list[Match]]]

# With `keep`, index entries read per lookup at most (give or take one round): a point's
# key typing a prefix most clients share ("+44", "a") must not walk the whole index.
LOOKUP_SCAN = 2000


@dataclass(frozen=True, slots=True)
class Found:
    matches: list[Match]
    complete: bool  # False: LOOKUP_SCAN entries were read before the answer was certain


async def lookup(client: aioredis.Redis, layout: KeyLayout, prefixes: Sequence[str],
                 limit: int, keep: Keep | None = None, scan: int = LOOKUP_SCAN) -> Found:
    """The first `limit` clients, in value order, whose email or phone starts with one of
    `prefixes` ("email:ali"...) and that `keep` keeps (a point's key: its own clients).

    Each (prefix, partition) range is read `limit` entries at a time; with `keep`, a range
    is read further while it may still hold a kept match that sorts among the first
    `limit`, so matches `keep` drops do not use up the limit, but no further once `scan`
    entries were read: then the kept matches found so far come back, not `complete`."""
    ranges = [(layout.lookup(partition), prefix.encode()) for prefix in prefixes
              for partition in range(layout.partitions)]
    starts = {i: b"[" + prefix for i, (_, prefix) in enumerate(ranges)}
    last: dict[int, tuple[str, str]] = {}  # each open range's last entry read
    found: dict[tuple[str, str], Match] = {}
    scanned = 0
    while starts:
        if keep is not None and scanned >= scan:
            break  # the rest of the answer would cost a walk through the index
        order = list(starts)
        async with client.pipeline(transaction=False) as pipe:
            for i in order:
                key, prefix = ranges[i]
                pipe.zrange(key, starts[i], b"[" + prefix + b"\xff", bylex=True, offset=0,
                            num=limit)
            replies = cast(list[list[bytes]], await pipe.execute())
        read: list[Match] = []
        for i, reply in zip(order, replies, strict=True):
            scanned += len(reply)
            for raw in reply:
                entry, _, client_id = raw.decode().partition("\0")
                kind, _, value = entry.partition(":")
                if (client_id, entry) not in found:
                    found[(client_id, entry)] = Match(client_id, kind, value)
                    read.append(found[(client_id, entry)])
            if len(reply) < limit:
                del starts[i]  # read to its end
            else:
                starts[i] = b"(" + reply[-1]
                entry, _, client_id = reply[-1].decode().partition("\0")
                last[i] = (entry.partition(":")[2], client_id)
        if keep is None:
            break  # each range's first `limit` hold the first `limit` of all
        dropped = set(read) - set(await keep(read))
        for match in dropped:
            del found[(match.client_id, f"{match.matched}:{match.value}")]
        kept = sorted((m.value, m.client_id) for m in found.values())
        if len(kept) >= limit:  # read on only where something earlier may still be
            cutoff = kept[limit - 1]
            starts = {i: start for i, start in starts.items() if last[i] < cutoff}
    ordered = sorted(found.values(), key=lambda m: (m.value, m.client_id))[:limit]
    return Found(ordered, complete=keep is None or not starts)


async def timelines(client: aioredis.Redis, layout: KeyLayout, client_keys: Sequence[str]
                    ) -> list[list[TimelineEntry]]:
    """Each client's timeline, newest first, in one round trip (a client merged away
    keeps the lines from before its merge: its client's card reads them with its own)."""
    async with client.pipeline(transaction=False) as pipe:
        for key in client_keys:
            pipe.hget(layout.timeline(layout.bucket_of(key)), key)
        raws = await pipe.execute()
    return [parse_timeline(cast(bytes, raw).decode()) if raw is not None else []
            for raw in raws]


async def points(client: aioredis.Redis, layout: KeyLayout) -> list[str]:
    """Every point some partition holds a client of now (a point whose clients all left,
    were erased or merged away is not listed)."""
    async with client.pipeline(transaction=False) as pipe:
        for partition in range(layout.partitions):
            pipe.hkeys(layout.points(partition))
        replies = cast(list[list[bytes]], await pipe.execute())
    return sorted({item.decode() for reply in replies for item in reply})


def _history_ttl(retention: float) -> int:
    return max(1, math.ceil(retention))


async def record_sizes(client: aioredis.Redis, layout: KeyLayout, at: float,
                       sizes: dict[tuple[str, str | None], int], interval: float,
                       retention: float) -> None:
    """Each (segment, point) size at the start of `at`'s interval (a repeat within the
    interval overwrites: any number of API processes may record), and the entries older
    than `retention` dropped. Each history recorded expires `retention` after: one no
    longer recorded (a point gone, a segment no longer configured) goes with its last entry."""
    slot = int(at // interval * interval)
    oldest = at - retention
    async with client.pipeline(transaction=False) as pipe:
        for (name, point), size in sizes.items():
            pipe.hset(layout.segment_sizes(name, point), str(slot), size)
            pipe.expire(layout.segment_sizes(name, point), _history_ttl(retention))
            pipe.hkeys(layout.segment_sizes(name, point))
        replies = await pipe.execute()
    stale: dict[str, list[bytes]] = {}
    for (name, point), fields in zip(sizes, replies[2::3], strict=True):
        old = [f for f in cast(list[bytes], fields) if int(f) < oldest]
        if old:
            stale[layout.segment_sizes(name, point)] = old
    if stale:
        async with client.pipeline(transaction=False) as pipe:
            for key, old in stale.items():
                pipe.hdel(key, *old)
            await pipe.execute()


RETIRE_PAGE = 500  # points of a retired set handled per round trip


async def retire_old_points(client: aioredis.Redis, layout: KeyLayout, names: Sequence[str],
                            retention: float) -> int:
    """Give the size histories of every point in the partitions' retired sets
    (`KeyLayout.retired_points`, kept before the points were counted) the retention, and
    delete the sets; how many points were in them. Their histories were never expired: a
    point gone before the counts would keep its own for ever. One still recorded is
    refreshed by `record_sizes`. Once per deployment; then a read of an absent key per
    partition. Repeated after a failure, it does the same again."""
    retired = 0
    for partition in range(layout.partitions):
        key = layout.retired_points(partition)
        page: list[str] = []
        found = 0
        async for raw in client.sscan_iter(key, count=RETIRE_PAGE):
            page.append(cast(bytes, raw).decode())
            if len(page) == RETIRE_PAGE:
                await _expire_histories(client, layout, names, page, retention)
                found, page = found + len(page), []
        await _expire_histories(client, layout, names, page, retention)
        found += len(page)
        if found:
            await client.unlink(key)
            retired += found
    return retired


async def _expire_histories(client: aioredis.Redis, layout: KeyLayout, names: Sequence[str],
                            points: Sequence[str], retention: float) -> None:
    if not points:
        return
    async with client.pipeline(transaction=False) as pipe:
        for point in points:
            for name in names:
                pipe.expire(layout.segment_sizes(name, point), _history_ttl(retention))
        await pipe.execute()


async def size_history(client: aioredis.Redis, layout: KeyLayout, name: str,
                       point: str | None, since: float) -> list[tuple[int, int]]:
    """(epoch seconds, size) recorded since `since`, oldest first."""
    raw = cast(dict[bytes, bytes], await client.hgetall(layout.segment_sizes(name, point)))
    return sorted((int(at), int(size)) for at, size in raw.items() if int(at) >= since)
