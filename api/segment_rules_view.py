"""The segment configuration the API reads profiles with, and the newest RFM model.

The dataflow publishes the model in Redis; the API re-reads it at most every few seconds,
so RFM scores in a profile follow the same quintiles the member sets were built with.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from features.rules import SegmentRules
from sinks import rfm_index
from sinks.keys import KeyLayout

log = logging.getLogger(__name__)


class SegmentRulesView:
    def __init__(self, client: aioredis.Redis, layout: KeyLayout, rules: SegmentRules, *,
                 poll: float = 5.0) -> None:
        self._client = client
        self._layout = layout
        self._rules = rules
        self._poll = poll
        self._checked = -float("inf")

    @property
    def base(self) -> SegmentRules:
        return self._rules

    async def current(self) -> SegmentRules:
        now = time.monotonic()
        if not self._rules.rfm_enabled or now - self._checked < self._poll:
            return self._rules
        self._checked = now
        try:
            model = await rfm_index.load_model_async(self._client, self._layout)
        except (RedisError, ValueError) as exc:
            log.warning("could not read the RFM model (%s); keeping the last one", exc)
            return self._rules
        if model is not None and not model.empty:
            self._rules = replace(self._rules, rfm_model=model)
        return self._rules
