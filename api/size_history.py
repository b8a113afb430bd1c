"""Segment sizes over time, for the console's sparklines.

Sizes are sets the dataflow keeps current; their history is nobody's event, so the API
records it: on start and every `console.size_history_interval`, each segment's size (and
each point's share) goes into a small hash per segment. Several API processes may record
the same interval: the slot is the interval's start, so they overwrite one another.
Points are those that hold clients now (`console_store.points`): a point gone stops being
recorded, and its history expires with its last entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import redis

from api.deps import Resources
from features.segments import all_segment_names
from sinks import console_store
from sinks.segment_store import SegmentStore

log = logging.getLogger(__name__)

CANCEL_AGAIN_AFTER = 1.0  # seconds: see `recording`


async def record_once(resources: Resources, at: float) -> int:
    """Record every segment's size at `at`; returns how many sizes were written."""
    settings = resources.settings.console
    names = all_segment_names(resources.segments.base)
    sizes: dict[tuple[str, str | None], int] = {}
    retired = await console_store.retire_old_points(resources.redis, resources.layout, names,
                                                    settings.size_history_retention)
    if retired:
        log.info("histories of %d points from before the points were counted now expire",
                 retired)
    scopes: list[str | None] = [None, *await console_store.points(resources.redis,
                                                                   resources.layout)]
    for point in scopes:
        found = await SegmentStore(resources.redis, resources.layout, point).sizes(names)
        sizes.update(((name, point), size) for name, size in found.items())
    await console_store.record_sizes(resources.redis, resources.layout, at, sizes,
                                     settings.size_history_interval,
                                     settings.size_history_retention)
    return len(sizes)


async def keep_recording(resources: Resources) -> None:
    """Record now, then once per interval, until cancelled; a Redis outage skips a round."""
    interval = resources.settings.console.size_history_interval
    while True:
        try:
            await record_once(resources, time.time())
        except (redis.RedisError, OSError) as exc:
            log.warning("segment sizes not recorded (%s); trying again in %.0fs", exc,
                        min(interval, 60.0))
            await asyncio.sleep(min(interval, 60.0))
            continue
        await asyncio.sleep(interval - time.time() % interval)


@contextlib.asynccontextmanager
async def recording(resources: Resources) -> AsyncIterator[None]:
    task = asyncio.create_task(keep_recording(resources))
    try:
        yield
    finally:
        # a cancellation landing mid-command can be swallowed inside redis-py: the task then
        # went on to its hour-long sleep, and the app's shutdown waited for it (one run in
        # a few hundred). Cancelled again until it ends.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=CANCEL_AGAIN_AFTER)
        if not task.cancelled() and task.exception() is not None:
            log.warning("segment size recording ended: %s", task.exception())
