"""Reading back what the dataflow wrote, for reports over the live system: a partition's
trigger log (its stream, a page at a time) and named clients' states (one pipelined HGET
each, never a scan)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import cast

import redis

from features.codec import decode_state
from features.state import ClientState
from sinks.keys import KeyLayout

PAGE = 5_000


def trigger_pages(client: redis.Redis, stream: str, page_size: int = PAGE
                  ) -> Iterator[list[dict[bytes, bytes]]]:
    """Every record a trigger stream holds, oldest first, a page of raw fields at a time."""
    start = "-"
    while True:
        page = cast(list[tuple[bytes, dict[bytes, bytes]]],
                    client.xrange(stream, min=start, max="+", count=page_size))
        if page:
            yield [fields for _, fields in page]
        if len(page) < page_size:
            return
        start = "(" + page[-1][0].decode()


def trigger_records(client: redis.Redis, stream: str) -> Iterator[dict[str, str]]:
    """Every record a trigger stream holds, oldest first, its fields as text."""
    for page in trigger_pages(client, stream):
        for fields in page:
            yield {name.decode(): value.decode() for name, value in fields.items()}


def client_states(client: redis.Redis, layout: KeyLayout, client_keys: Sequence[str]
                  ) -> Iterator[tuple[str, ClientState]]:
    """The states of `client_keys` that exist, a page of pipelined reads at a time."""
    for first in range(0, len(client_keys), PAGE):
        keys = client_keys[first:first + PAGE]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(layout.state(layout.bucket_of(key)), key)
        for key, raw in zip(keys, pipe.execute(), strict=True):
            if raw is not None:
                yield key, decode_state(cast(bytes, raw))
