"""The RFM population in Redis, and the shared RFM model computed from it.

Three global sorted sets (`KeyLayout.rfm_values("r" | "f" | "m")`) hold every client with
orders, scored by last order time, orders count and net money. A quantile cut is then a
couple of rank lookups, so the model is computed exactly in three pipelined round trips
whatever the population size, without reading the sets. The model itself is one JSON
string (`KeyLayout.rfm_model()`), recomputed at most once per period by whichever process
takes the lock first.

Derivation of the cuts (see `features.rfm` for the definition): cut k is the smallest value v
with less(v) + equal(v)/2 >= t, t = k*N/5. Let j = floor(t) (< N for k <= 4) and p the
value at rank j (0-based, ascending). Any smaller distinct value w has
less(w) + equal(w) <= less(p) <= j <= t, so less(w) + equal(w)/2 < t: the cut is not below p.
The next distinct value q above p has less(q) >= j + 1 > t, so q always qualifies. Hence the
cut is p when p qualifies, else q (and +inf if there is no q, which cannot happen for k <= 4).

The sets move while the dataflow runs; the three round trips are not one snapshot, so under
concurrent writes the cuts are those of a population a few milliseconds wide. Quiescent,
they equal `quantile_cuts` of the sorted population exactly.
"""

from __future__ import annotations

import math
import secrets
from typing import cast

import redis
import redis.asyncio as aioredis

from features.rfm import (
    NO_CUTS,
    Cuts,
    FixedThresholds,
    RfmMode,
    RfmModel,
    model_from_json,
    to_json,
)
from sinks.keys import KeyLayout

DIMENSIONS = ("r", "f", "m")

# Deletes the lock only if it is still ours (it may have expired and been taken since).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def index_commands(pipe: redis.client.Pipeline, layout: KeyLayout, client_key: str,
                   values: tuple[float, int, float] | None) -> None:
    """Queue the client's (last order time, orders count, net money), or its removal.

    None (or no live order: count < 1) removes the client from all three sets, since RFM is
    defined over clients with orders. ZADD and ZREM overwrite, so replays are harmless.
    """
    if values is None or values[1] < 1:
        for dimension in DIMENSIONS:
            pipe.zrem(layout.rfm_values(dimension), client_key)
        return
    for dimension, value in zip(DIMENSIONS, values, strict=True):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"rfm value {dimension!r} of {client_key!r} is not finite: "
                             f"{value!r}")
        pipe.zadd(layout.rfm_values(dimension), {client_key: number})


def _excl(value: float) -> str:
    # redis-py sends floats as repr(), which Redis parses back to the same double.
    return f"({value!r}"


def _quantile_cuts(client: redis.Redis, layout: KeyLayout, n: int) -> list[Cuts] | None:
    """The cuts of the three dimensions for a population of `n`, or None when a set shrank
    below a rank we looked up in the meantime (the caller retries)."""
    keys = [layout.rfm_values(d) for d in DIMENSIONS]
    targets = [(k, min(k * n // 5, n - 1)) for k in range(1, 5)]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        for _, rank in targets:
            pipe.zrange(key, rank, rank, withscores=True)
    pivots: list[float] = []
    for reply in pipe.execute():
        entries = cast(list[tuple[bytes, float]], reply)
        if not entries:
            return None
        pivots.append(float(entries[0][1]))

    pipe = client.pipeline(transaction=False)
    for i, key in enumerate(keys):
        for t, _ in enumerate(targets):
            p = pivots[i * 4 + t]
            pipe.zcount(key, "-inf", _excl(p))
            pipe.zcount(key, p, p)
            pipe.zrangebyscore(key, _excl(p), "+inf", start=0, num=1, withscores=True)
    replies = pipe.execute()

    out: list[Cuts] = []
    for i in range(len(keys)):
        cuts: list[float] = []
        for t, (k, _) in enumerate(targets):
            slot = i * 4 + t
            less, equal = int(replies[3 * slot]), int(replies[3 * slot + 1])
            above = cast(list[tuple[bytes, float]], replies[3 * slot + 2])
            # less + equal/2 >= k*N/5, in integers.
            if 10 * less + 5 * equal >= 2 * k * n:
                cuts.append(pivots[slot])
            else:
                cuts.append(float(above[0][1]) if above else math.inf)
        # Concurrent writes could break monotonicity between lookups; keep the cuts usable.
        for c in range(1, 4):
            cuts[c] = max(cuts[c], cuts[c - 1])
        out.append((cuts[0], cuts[1], cuts[2], cuts[3]))
    return out


def compute_model(client: redis.Redis, layout: KeyLayout, now: float,
                  mode: RfmMode = "quantile", fixed: FixedThresholds | None = None) -> RfmModel:
    """The model of the current population, computed at `now`.

    Mode "fixed" only counts the population (its thresholds are the operator's; `fixed`
    defaults to `FixedThresholds()`). N is the size of the "f" set; the three sets always
    hold the same members (see `index_commands`).
    """
    if mode == "fixed":
        population = int(client.zcard(layout.rfm_values("f")))
        return RfmModel("fixed", now, population,
                        fixed=fixed if fixed is not None else FixedThresholds())
    if mode != "quantile":
        raise ValueError(f"segments.rfm.mode: expected 'quantile' or 'fixed', got {mode!r}")
    for _ in range(5):
        n = int(client.zcard(layout.rfm_values("f")))
        if n == 0:
            return RfmModel("quantile", now, 0)
        found = _quantile_cuts(client, layout, n)
        if found is not None:
            recency, frequency, monetary = found
            return RfmModel("quantile", now, n, recency, frequency, monetary)
    # The population kept shrinking under us; an empty model is wrong but safe, and the
    # next period recomputes.
    return RfmModel("quantile", now, 0, NO_CUTS, NO_CUTS, NO_CUTS)


def store_model(client: redis.Redis, layout: KeyLayout, model: RfmModel) -> None:
    client.set(layout.rfm_model(), to_json(model))


def load_model(client: redis.Redis, layout: KeyLayout) -> RfmModel | None:
    """The stored model, None when there is none; a corrupt record raises ValueError."""
    raw = cast(bytes | None, client.get(layout.rfm_model()))
    return model_from_json(raw) if raw is not None else None


async def load_model_async(client: aioredis.Redis, layout: KeyLayout) -> RfmModel | None:
    """`load_model` for the API's asyncio client."""
    raw = cast(bytes | None, await client.get(layout.rfm_model()))
    return model_from_json(raw) if raw is not None else None


def _current(model: RfmModel | None, now: float, period: float, mode: RfmMode,
             fixed: FixedThresholds | None) -> bool:
    """Fresh enough, and built with the settings in force (a settings change recomputes)."""
    if model is None or model.mode != mode or now - model.computed_at >= period:
        return False
    if model.empty:
        return False  # no buyers at the last look: look again rather than wait a period
    return mode != "fixed" or model.fixed == (fixed if fixed is not None else FixedThresholds())


def _load_or_none(client: redis.Redis, layout: KeyLayout) -> RfmModel | None:
    try:
        return load_model(client, layout)
    except ValueError:
        return None  # corrupt: recompute and overwrite it


def refresh_model(client: redis.Redis, layout: KeyLayout, now: float, period: float,
                  mode: RfmMode = "quantile", fixed: FixedThresholds | None = None, *,
                  lock_timeout: float = 60.0) -> RfmModel | None:
    """The current stored model, recomputed first when it is `period` seconds old or more.

    Any number of processes may call this every tick: only the one that takes the lock
    (SET NX PX) recomputes, and it checks again under the lock, so one computation happens
    per period. The others return the stored model as it is (None before the first one).
    The lock expires after `lock_timeout` seconds should its holder die mid-computation.
    """
    stored = _load_or_none(client, layout)
    if _current(stored, now, period, mode, fixed):
        return stored
    token = secrets.token_hex(16)
    lock = layout.rfm_lock()
    if not client.set(lock, token, nx=True, px=max(1, int(lock_timeout * 1000))):
        return stored
    try:
        stored = _load_or_none(client, layout)
        if _current(stored, now, period, mode, fixed):
            return stored  # another process computed it between our read and our lock
        model = compute_model(client, layout, now, mode, fixed)
        store_model(client, layout, model)
        return model
    finally:
        client.eval(_RELEASE, 1, lock, token)
