"""The RFM model the buckets score with: one per process, refreshed on a period.

RFM scores are relative to the population of buyers, so they change when others buy. The
model (quintile cuts per dimension) is recomputed from the global sorted sets every
`segments.rfm.refresh` by one process (a lock in Redis), and every process polls for the
newest one. A bucket that sees a new model re-scores its buyers on its next tick.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace

import redis

from features.rfm import RfmModel
from features.triggers import TriggerRules
from sinks import rfm_index
from sinks.keys import KeyLayout

log = logging.getLogger(__name__)


class RfmModelCache:
    def __init__(self, client: redis.Redis, layout: KeyLayout, rules: TriggerRules, *,
                 poll: float, model: RfmModel | None = None) -> None:
        self._client = client
        self._layout = layout
        self._base = rules
        self._rules = rules
        self._poll = poll
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self._adopt(model)  # a replay's model as of its end; live processes poll for theirs

    @property
    def rules(self) -> TriggerRules:
        """The rules with the newest model this process has seen."""
        return self._rules

    def poll(self) -> TriggerRules:
        """The rules with the current model, refreshing it when due (at most every `poll`
        seconds of this process's time; cheap otherwise)."""
        segments = self._base.segments
        fixed = segments.rfm_mode == "fixed"
        if not segments.rfm_enabled or (segments.rfm_refresh <= 0 and not fixed):
            return self._rules
        # Fixed thresholds need no recomputing: without a period, the stored model is kept
        # for as long as it carries the configured thresholds (one is stored if none does).
        period = segments.rfm_refresh if segments.rfm_refresh > 0 else math.inf
        now = time.monotonic()
        if now - self._checked < self._poll:
            return self._rules
        with self._lock:
            if now - self._checked < self._poll:
                return self._rules
            self._checked = now
            try:
                model = rfm_index.refresh_model(
                    self._client, self._layout, time.time(), period,
                    "fixed" if fixed else "quantile", segments.rfm_fixed)
            except (redis.RedisError, ValueError) as exc:
                log.warning("RFM model refresh failed (%s); keeping the current model", exc)
                return self._rules
            self._adopt(model)
        return self._rules

    def _adopt(self, model: RfmModel | None) -> None:
        current = self._rules.segments.rfm_model
        if model is None or model.empty:
            return  # no buyers yet: no RFM segments rather than everybody "lost"
        if current is not None and current == model:
            return
        self._rules = replace(self._rules, segments=replace(self._base.segments,
                                                             rfm_model=model))
