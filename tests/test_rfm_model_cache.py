"""The dataflow's RFM model cache (dataflows/rfm_model.py) against a real Redis."""

from __future__ import annotations

import redis

from dataflows.rfm_model import RfmModelCache
from features.rfm import FixedThresholds
from sinks import rfm_index
from sinks.keys import KeyLayout
from tests.support import make_settings


def test_fixed_mode_scores_without_a_refresh_period(redis_url: str, key_prefix: str) -> None:
    """`rfm.refresh: 0` means quintiles are never recomputed by themselves; fixed thresholds
    need no recomputing at all, so fixed mode still scores (and the API, which reads the
    stored model, scores the same way)."""
    thresholds = {"recency_days": [400, 200, 100, 50], "frequency": [2, 4, 6, 8],
                  "monetary": [10, 20, 30, 40]}
    settings = make_settings(redis_url, key_prefix,
                             rfm={"mode": "fixed", "refresh": 0, "fixed": thresholds})
    layout = KeyLayout.from_settings(settings)
    client = redis.Redis.from_url(redis_url)
    try:
        cache = RfmModelCache(client, layout, settings.trigger_rules(), poll=0.0)
        model = cache.poll().segments.rfm_model
        assert model is not None and model.mode == "fixed"
        assert model.fixed == FixedThresholds((400, 200, 100, 50), (2, 4, 6, 8),
                                              (10, 20, 30, 40))
        assert rfm_index.load_model(client, layout) == model
        # computed once: later polls keep it
        assert cache.poll().segments.rfm_model == model
        assert rfm_index.load_model(client, layout) == model
    finally:
        client.close()


def test_quantile_mode_without_a_refresh_period_waits_for_a_model(
        redis_url: str, key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0})
    client = redis.Redis.from_url(redis_url)
    try:
        cache = RfmModelCache(client, KeyLayout.from_settings(settings),
                              settings.trigger_rules(), poll=0.0)
        assert cache.poll().segments.rfm_model is None
    finally:
        client.close()
