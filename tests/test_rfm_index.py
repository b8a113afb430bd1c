"""The RFM population and model against a real Redis: exact cuts by rank lookups, removal,
the stored model, and the once-per-period refresh under a lock."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.rfm import NO_CUTS, FixedThresholds, RfmModel, quantile_cuts, to_json
from sinks.keys import KeyLayout
from sinks.rfm_index import (
    compute_model,
    index_commands,
    load_model,
    load_model_async,
    refresh_model,
    store_model,
)

Values = tuple[float, int, float]
NOW = 1_700_000_000.0


@pytest.fixture
def layout(key_prefix: str) -> KeyLayout:
    return KeyLayout(key_prefix, 2, 8)


def index(client: redis.Redis, layout: KeyLayout, population: dict[str, Values | None]) -> None:
    pipe = client.pipeline(transaction=False)
    for client_key, values in population.items():
        index_commands(pipe, layout, client_key, values)
    pipe.execute()


def expected_cuts(population: dict[str, Values]) -> list[tuple[float, ...]]:
    return [quantile_cuts(sorted(float(v[d]) for v in population.values())) for d in range(3)]


def model_cuts(model: RfmModel) -> list[tuple[float, ...]]:
    return [model.recency_cuts, model.frequency_cuts, model.monetary_cuts]


def random_population(rng: random.Random, n: int) -> dict[str, Values]:
    times = [NOW - rng.randrange(0, 400) * 86400.0 - rng.choice([0.0, 0.5, 1234.125])
             for _ in range(7)]
    return {f"c{i}": (rng.choice(times) if rng.random() < 0.5 else NOW - rng.random() * 1e7,
                      rng.choice([1, 1, 1, 2, 2, 3, 5, 8, 13]),
                      round(rng.choice([0.0, 19.99, 50.0, -5.0]) if rng.random() < 0.6
                            else rng.uniform(-100, 10_000), 2))
            for i in range(n)}


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 10, 1000])
def test_cuts_from_redis_equal_the_sorted_population(redis_client: redis.Redis,
                                                     layout: KeyLayout, n: int) -> None:
    population = random_population(random.Random(n), n)
    index(redis_client, layout, dict(population))
    model = compute_model(redis_client, layout, NOW)
    assert model.mode == "quantile" and model.population == n and model.computed_at == NOW
    assert model_cuts(model) == expected_cuts(population)
    if n == 0:
        assert model_cuts(model) == [NO_CUTS] * 3


def test_all_equal_and_single_client(redis_client: redis.Redis, layout: KeyLayout) -> None:
    index(redis_client, layout, {"a": (NOW, 2, 10.0)})
    single = compute_model(redis_client, layout, NOW)
    assert single.frequency_cuts == (2.0, 2.0, float("inf"), float("inf"))  # scores 3
    assert model_cuts(single) == expected_cuts({"a": (NOW, 2, 10.0)})
    population = {f"c{i}": (NOW, 2, 10.0) for i in range(9)}
    index(redis_client, layout, dict(population))
    assert model_cuts(compute_model(redis_client, layout, NOW)) == expected_cuts(population)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4),
                          st.sampled_from([0.0, 0.1, 2.5, -1.0, 1e6])),
                min_size=0, max_size=40))
def test_cuts_match_for_arbitrary_populations(redis_client: redis.Redis,
                                              rows: list[tuple[int, int, float]]) -> None:
    layout = KeyLayout(f"h{uuid.uuid4().hex[:12]}", 2, 8)
    population: dict[str, Values] = {f"c{i}": (NOW + r, f, m) for i, (r, f, m) in enumerate(rows)}
    try:
        index(redis_client, layout, dict(population))
        model = compute_model(redis_client, layout, NOW)
        assert model.population == len(rows)
        assert model_cuts(model) == expected_cuts(population)
    finally:
        redis_client.delete(*(layout.rfm_values(d) for d in "rfm"))


def test_none_removes_the_client_from_all_three_sets(redis_client: redis.Redis,
                                                     layout: KeyLayout) -> None:
    index(redis_client, layout, {"a": (NOW, 3, 30.0), "b": (NOW - 5, 1, 5.0)})
    index(redis_client, layout, {"a": (NOW, 3, 30.0)})  # idempotent
    assert [redis_client.zcard(layout.rfm_values(d)) for d in "rfm"] == [2, 2, 2]
    assert redis_client.zscore(layout.rfm_values("m"), "a") == 30.0
    index(redis_client, layout, {"a": None})
    index(redis_client, layout, {"a": None})
    index(redis_client, layout, {"b": (NOW - 5, 0, 0.0)})  # no live order left
    assert [redis_client.zcard(layout.rfm_values(d)) for d in "rfm"] == [0, 0, 0]
    with pytest.raises(ValueError, match="not finite"):
        index_commands(redis_client.pipeline(), layout, "c", (float("inf"), 1, 1.0))


def test_store_and_load(redis_client: redis.Redis, layout: KeyLayout) -> None:
    assert load_model(redis_client, layout) is None
    model = RfmModel("quantile", NOW, 4, (1.0, 2.0, float("inf"), float("inf")))
    store_model(redis_client, layout, model)
    assert load_model(redis_client, layout) == model
    fixed = RfmModel("fixed", NOW, 0, fixed=FixedThresholds())
    store_model(redis_client, layout, fixed)
    assert load_model(redis_client, layout) == fixed
    redis_client.set(layout.rfm_model(), b"{}")
    with pytest.raises(ValueError, match="rfm model"):
        load_model(redis_client, layout)


def test_async_loader(redis_url: str, redis_client: redis.Redis, layout: KeyLayout) -> None:
    model = RfmModel("quantile", NOW, 2, (1.0, 1.0, 2.0, 2.0))

    async def read() -> tuple[RfmModel | None, RfmModel | None]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            before = await load_model_async(client, layout)
            store_model(redis_client, layout, model)
            return before, await load_model_async(client, layout)
        finally:
            await client.aclose()

    assert asyncio.run(read()) == (None, model)


def test_refresh_honours_the_period(redis_client: redis.Redis, layout: KeyLayout) -> None:
    index(redis_client, layout, {"a": (NOW, 1, 1.0)})
    first = refresh_model(redis_client, layout, NOW, period=3600)
    assert first is not None and first.population == 1 and first.computed_at == NOW
    assert load_model(redis_client, layout) == first
    assert redis_client.exists(layout.rfm_lock()) == 0  # released after computing

    index(redis_client, layout, {"b": (NOW, 2, 2.0)})
    assert refresh_model(redis_client, layout, NOW + 3599, period=3600) == first
    second = refresh_model(redis_client, layout, NOW + 3600, period=3600)
    assert second is not None and second.population == 2 and second.computed_at == NOW + 3600
    # Settings that changed recompute at once.
    fixed = refresh_model(redis_client, layout, NOW + 3601, 3600, "fixed", FixedThresholds())
    assert fixed is not None and fixed.mode == "fixed" and fixed.population == 2
    assert refresh_model(redis_client, layout, NOW + 3602, 3600, "fixed") == fixed
    other = FixedThresholds(frequency=(2, 4, 6, 8))
    changed = refresh_model(redis_client, layout, NOW + 3603, 3600, "fixed", other)
    assert changed is not None and changed.fixed == other


def test_refresh_replaces_a_corrupt_model(redis_client: redis.Redis, layout: KeyLayout) -> None:
    redis_client.set(layout.rfm_model(), b"garbage")
    model = refresh_model(redis_client, layout, NOW, period=60)
    assert model is not None and load_model(redis_client, layout) == model


def test_refresh_leaves_the_work_to_the_lock_holder(redis_client: redis.Redis,
                                                    layout: KeyLayout) -> None:
    index(redis_client, layout, {"a": (NOW, 1, 1.0)})
    redis_client.set(layout.rfm_lock(), "someone-else", px=60_000)
    assert refresh_model(redis_client, layout, NOW, period=60) is None  # nothing stored yet
    stale = RfmModel("quantile", NOW - 3600, 0)
    redis_client.set(layout.rfm_model(), to_json(stale))
    assert refresh_model(redis_client, layout, NOW, period=60) == stale
    assert redis_client.get(layout.rfm_lock()) == b"someone-else"  # not ours to release
    redis_client.delete(layout.rfm_lock())
    fresh = refresh_model(redis_client, layout, NOW, period=60)
    assert fresh is not None and fresh.population == 1


def test_lock_expires_when_its_holder_dies(redis_client: redis.Redis,
                                           layout: KeyLayout) -> None:
    redis_client.set(layout.rfm_lock(), "dead", px=50)
    time.sleep(0.2)
    assert refresh_model(redis_client, layout, NOW, period=60) is not None


def test_one_computation_per_period_across_processes(redis_url: str,
                                                     layout: KeyLayout) -> None:
    seed = redis.Redis.from_url(redis_url)
    index(seed, layout, {f"c{i}": (NOW - i, 1 + i % 4, float(i)) for i in range(500)})
    seed.set(layout.rfm_model(), to_json(RfmModel("quantile", NOW - 1e6, 0)))
    results: list[RfmModel | None] = []
    start = threading.Barrier(12)

    def worker(i: int) -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            start.wait()
            for step in range(5):
                # Each caller's own clock: the model records which caller computed it.
                results.append(refresh_model(client, layout, NOW + i * 1e-3 + step * 1e-6,
                                             period=3600))
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    computed = {m.computed_at for m in results if m is not None and m.computed_at >= NOW}
    assert len(computed) == 1
    final = load_model(seed, layout)
    assert final is not None and final.computed_at in computed and final.population == 500
    seed.close()
