"""Profile reads for the API: one HGET of the client's compact record, no scans."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis

from features.codec import decode_state
from features.state import ClientState
from sinks.keys import KeyLayout
from sinks.read_batcher import HashReadBatcher


class ProfileStore:
    """One per app: single profile reads share its batcher (sinks/read_batcher.py)."""

    def __init__(self, client: aioredis.Redis, layout: KeyLayout) -> None:
        self._client = client
        self._layout = layout
        self._reads = HashReadBatcher(client)

    async def state(self, client_key: str) -> ClientState | None:
        raw = await self._reads.hget(self._layout.state(self._layout.bucket_of(client_key)),
                                     client_key)
        return decode_state(cast(bytes, raw)) if raw is not None else None

    async def states(self, client_keys: list[str]) -> dict[str, ClientState]:
        """Several clients' states in one round trip (unknown ones are left out)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key in client_keys:
                pipe.hget(self._layout.state(self._layout.bucket_of(key)), key)
            raws = await pipe.execute()
        return {key: decode_state(cast(bytes, raw))
                for key, raw in zip(client_keys, raws, strict=True) if raw is not None}

    async def touches(self, client_key: str, limit: int, aliases: Sequence[str] = ()
                      ) -> list[dict[str, Any]] | None:
        """The touches of the client and of the anonymous ids merged into it (`aliases`:
        what each decided before its merge stays in its own ledger), newest first; None
        when the client is unknown. Each touch names the id it was recorded for."""
        ledgers = (client_key, *aliases)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hexists(self._layout.state(self._layout.bucket_of(client_key)), client_key)
            for key in ledgers:
                pipe.hgetall(self._layout.ledger(key))
            known, *entries = await pipe.execute()
        if not known and not entries[0]:
            return None
        touches = [json.loads(value) for ledger in entries for value in ledger.values()]
        touches.sort(key=lambda t: (t["fired_at"], t["trigger_id"]), reverse=True)
        return touches[:limit]
