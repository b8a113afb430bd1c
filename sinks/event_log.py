"""Appending events to the partitioned event streams: what ingest acknowledges.

An event is acknowledged only once its stream entry exists in Redis. Entries carry the
client key (`k`, for routing without parsing), the event time (`t`, for the watermark)
and the canonical event JSON (`e`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import orjson
import redis
import redis.asyncio as aioredis

from features.events import Event, event_to_dict
from features.identity import Step, id_digest, ingest_dedupe_id, link_digest, with_links
from sinks.keys import KeyLayout
from sinks.scripts import lua, run_scripts, run_scripts_async


@dataclass(frozen=True, slots=True)
class AppendOptions:
    dedupe_window: float
    max_stream_length: int = 0  # per event stream; 0: no cap (the dataflow's own appends)


class BacklogFull(RuntimeError):
    """A partition's event stream is at its cap: the dataflow is behind or stopped. Nothing
    of that partition's share was appended; the rest of the request may have been."""

    def __init__(self, partition: int, length: int, cap: int) -> None:
        super().__init__(f"event stream {partition} holds {length} entries (cap {cap}): "
                         "the dataflow is behind; retry later")
        self.partition = partition
        self.length = length
        self.cap = cap


# partition, indexes of its events in the request, script keys, script args
Call = tuple[int, list[int], list[str], list[str | bytes | int | float]]


def encode_event(event: Event) -> bytes:
    return orjson.dumps(event_to_dict(event))


def emitted_dedupe_id(client_key: str, event_id: str) -> str:
    """The id an event the dataflow appends for `client_key` is de-duplicated by."""
    return f"dataflow>{client_key}>{event_id}"


def dedupe_key(layout: KeyLayout, step: Step) -> str:
    """The key that de-duplicates an identity step, as append_events.lua names it (a digest
    of the id: no key names a client)."""
    partition = layout.partition_of_client(step.client_key)
    if step.hashed:
        return layout.seen(partition) + step.event_id
    if step.ingested:
        return layout.seen(partition) + link_digest(step.event_id)
    return layout.emitted_seen(partition) + id_digest(emitted_dedupe_id(step.client_key,
                                                                        step.event_id))


def _script_calls(layout: KeyLayout, options: AppendOptions, events: Sequence[Event],
                  dedupe_ids: Sequence[str] | None = None) -> list[Call]:
    """One script call per partition: (indexes of its events, keys, args). Events are
    de-duplicated by their id within their client (`ingest_dedupe_id`), or, when given, by
    `dedupe_ids`: the dataflow's own keys, in their own key space."""
    grouped: dict[int, list[int]] = {}
    for index, event in enumerate(events):
        grouped.setdefault(layout.partition_of_client(event.client_key), []).append(index)
    calls = []
    for partition, indexes in grouped.items():
        args: list[str | bytes | int | float] = [int(options.dedupe_window),
                                                 options.max_stream_length,
                                                 layout.seen(partition) if dedupe_ids is None
                                                 else layout.emitted_seen(partition)]
        for index in indexes:
            event = events[index]
            key = event.client_key
            args += [ingest_dedupe_id(key, event.event_id, event.type) if dedupe_ids is None
                     else dedupe_ids[index], key, encode_event(event)]
        calls.append((partition, indexes, [layout.events(partition)], args))
    return calls


def _outcomes(count: int, options: AppendOptions, calls: list[Call],
              results: list[list[object]], lengths: dict[int, int] | None = None
              ) -> list[bool]:
    """Per event, in request order: True when appended, False for a duplicate. Raises
    BacklogFull (after the other partitions' shares were appended) when a stream is full.
    `lengths` receives each partition's stream length."""
    stored = [False] * count
    full: BacklogFull | None = None
    for (partition, indexes, _, _), result in zip(calls, results, strict=True):
        length = int(cast(int, result[1] if result[0] == -1 else result[0]))
        if lengths is not None:
            lengths[partition] = length
        if result[0] == -1:
            full = BacklogFull(partition, length, options.max_stream_length)
            continue
        for index, outcome in zip(indexes, result[1:], strict=True):
            stored[index] = outcome not in (0, b"0", "0")
    if full is not None:
        raise full
    return stored


def _own_outcomes(events: Sequence[Event], linked: Sequence[Event], outcomes: list[bool]
                  ) -> list[bool]:
    """The outcomes of the caller's events, without those of the link requests added."""
    if len(linked) == len(events):
        return outcomes
    own = {id(event) for event in events}
    return [ok for event, ok in zip(linked, outcomes, strict=True) if id(event) in own]


class AsyncEventLog:
    """For the API: one pipelined round trip per request, however many events it carries."""

    def __init__(self, client: aioredis.Redis, layout: KeyLayout, options: AppendOptions) -> None:
        self._client = client
        self._layout = layout
        self._options = options
        self._script = client.register_script(lua("append_events"))

    async def append(self, events: Sequence[Event], lengths: dict[int, int] | None = None
                     ) -> list[bool]:
        """Per event: True when appended, False for a duplicate. Link requests for events
        that carry both ids go with them (features/identity.py). Raises BacklogFull;
        `lengths` receives each touched partition's stream length."""
        if not events:
            return []
        linked = with_links(events)
        calls = _script_calls(self._layout, self._options, linked)
        results = await run_scripts_async(self._client, self._script,
                                          [(keys, args) for _, _, keys, args in calls])
        return _own_outcomes(events, linked,
                             _outcomes(len(linked), self._options, calls, results, lengths))


class EventLog:
    """The synchronous twin, for loaders and tools that are not in an event loop."""

    def __init__(self, client: redis.Redis, layout: KeyLayout, options: AppendOptions) -> None:
        self._client = client
        self._layout = layout
        self._options = options
        self._script = client.register_script(lua("append_events"))

    def append(self, events: Sequence[Event], dedupe_ids: Sequence[str] | None = None, *,
               links: bool = True) -> list[bool]:
        """Per event: True when appended, False for a duplicate. `links`: add the link
        requests of events that carry both ids (False: the caller placed them already, as
        a replay does)."""
        if not events:
            return []
        # the dataflow's own events (identity steps, forwards; dedupe_ids) need no new links,
        # and are de-duplicated apart from ingested ids
        linked = with_links(events) if links and dedupe_ids is None else list(events)
        calls = _script_calls(self._layout, self._options, linked, dedupe_ids)
        results = run_scripts(self._client, self._script,
                              [(keys, args) for _, _, keys, args in calls])
        return _own_outcomes(events, linked,
                             _outcomes(len(linked), self._options, calls, results))

    def forget(self, steps: Sequence[Step]) -> None:
        """Drop the de-duplication keys of identity steps (an erasure's: features/identity.py
        `linked_steps`), so the same steps may be appended again."""
        if not steps:
            return
        pipe = self._client.pipeline(transaction=False)  # one key a command: any slot
        for step in steps:
            pipe.delete(dedupe_key(self._layout, step))
        pipe.execute()
