"""Segment reads for the API: sizes, member pages and membership checks, never a scan.

A segment's members live in one sorted set per partition (`KeyLayout.segment_members`),
maintained by the dataflow's bucket commits. All scores are 0, so members are in lexical
order: a page is a ZRANGE BYLEX from the cursor, the cursor is (partition, last member),
and paging stays stable while members come and go (each member present for the whole
walk is returned exactly once).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from features.events import ANONYMOUS_PREFIX, MAX_ID_LENGTH
from sinks.keys import KeyLayout


class BadCursor(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Page:
    members: list[str]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Sample:
    size: int
    members: list[str]
    whole: bool  # every member, not a random draw


# The longest cursor encode_cursor can return: a partition below 10,000, ':', and the
# longest client key (an anonymous id with its prefix) at 4 UTF-8 bytes a character, in
# unpadded base64 (4 characters for every 3 bytes).
_LONGEST_CURSOR_BYTES = 4 + 1 + 4 * (len(ANONYMOUS_PREFIX) + MAX_ID_LENGTH)
MAX_CURSOR_LENGTH = -(-_LONGEST_CURSOR_BYTES * 4 // 3)


def encode_cursor(partition: int, member: str) -> str:
    return base64.urlsafe_b64encode(f"{partition}:{member}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, partitions: int) -> tuple[int, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        partition_text, _, member = text.partition(":")
        partition = int(partition_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor: not a cursor this API returned") from None
    if not 0 <= partition < partitions or not member:
        raise BadCursor("cursor: not a cursor this API returned")
    return partition, member


def _lex_after(member: str) -> bytes:
    return b"(" + member.encode()


class SegmentStore:
    """One scope's view: every client, or (`point`) the clients of one point."""

    def __init__(self, client: aioredis.Redis, layout: KeyLayout,
                 point: str | None = None) -> None:
        self._client = client
        self._layout = layout
        self._point = point

    def _key(self, partition: int, name: str) -> str:
        return self._layout.members(partition, name, self._point)

    async def sizes(self, names: Sequence[str]) -> dict[str, int]:
        """Each segment's size: one ZCARD per partition and segment, one round trip."""
        partitions = range(self._layout.partitions)
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                for partition in partitions:
                    pipe.zcard(self._key(partition, name))
            counts = cast(list[int], await pipe.execute())
        width = len(partitions)
        return {name: sum(counts[i * width:(i + 1) * width]) for i, name in enumerate(names)}

    async def page(self, name: str, cursor: str | None, limit: int) -> Page:
        # no cursor, or an empty one (`?cursor=&limit=`): the first page
        partition, after = (0, None) if not cursor else decode_cursor(
            cursor, self._layout.partitions)
        # one member past the page, so the last page says so (no cursor to an empty page)
        found: list[tuple[int, str]] = []
        while partition < self._layout.partitions and len(found) <= limit:
            low = _lex_after(after) if after is not None else b"-"
            raw = cast(list[bytes], await self._client.zrange(
                self._key(partition, name), low, b"+", bylex=True,
                offset=0, num=limit + 1 - len(found)))
            found.extend((partition, item.decode()) for item in raw)
            partition, after = partition + 1, None
        members = [member for _, member in found[:limit]]
        if len(found) <= limit:
            return Page(members, None)  # every partition walked to its end
        last_partition, last = found[limit - 1]
        return Page(members, encode_cursor(last_partition, last))

    async def sample(self, name: str, size: int) -> Sample:
        """The segment's size and up to `size` members drawn at random, spread over the
        partitions by their share (a small segment is taken whole)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for partition in range(self._layout.partitions):
                pipe.zcard(self._key(partition, name))
            cards = cast(list[int], await pipe.execute())
        if not any(cards):
            return Sample(0, [], True)
        whole = sum(cards) <= size
        async with self._client.pipeline(transaction=False) as pipe:
            for partition, card in enumerate(cards):
                if whole:
                    pipe.zrange(self._key(partition, name), 0, -1)
                elif card:
                    share = max(1, round(size * card / sum(cards)))
                    pipe.zrandmember(self._key(partition, name), min(share, card))
            replies = cast(list[list[bytes] | None], await pipe.execute())
        members = [item.decode() for reply in replies for item in reply or ()]
        return Sample(sum(cards), members, whole)

    async def contains(self, name: str, client_ids: Sequence[str]) -> list[str]:
        """The given ids that are members, in the order given (ZMSCORE per partition)."""
        by_partition: dict[int, list[str]] = {}
        for client_id in dict.fromkeys(client_ids):
            by_partition.setdefault(self._layout.partition_of_client(client_id), []).append(
                client_id)
        async with self._client.pipeline(transaction=False) as pipe:
            for partition, ids in by_partition.items():
                pipe.zmscore(self._key(partition, name), ids)
            results = await pipe.execute()
        found: set[str] = set()
        for ids, scores in zip(by_partition.values(), results, strict=True):
            found.update(client_id for client_id, score in zip(ids, scores, strict=True)
                         if score is not None)
        return [client_id for client_id in dict.fromkeys(client_ids) if client_id in found]
