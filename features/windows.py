"""Counts over rolling time windows, kept as a few (bucket index, count) pairs.

A bucket is a UTC hour or day (index = floor(t / width)). A window of N buckets at `now`
covers the bucket holding `now` and the N - 1 before it, so "views in 24 h" is the current
hour and the 23 before. Buckets older than the window at the client's latest event are
dropped when an event applies: whatever the arrival order of the events, the same buckets
remain, and memory per client stays bounded by the window's length.
"""

from __future__ import annotations

import math

from features.rules import DAY

HOUR = 3600.0

Buckets = tuple[tuple[int, int], ...]


def bucket_index(t: float, width: float) -> int:
    return math.floor(t / width)


def add(buckets: Buckets, t: float, latest: float, width: float, span: int) -> Buckets:
    """`buckets` with one more occurrence at `t`, pruned to the `span` buckets up to `latest`
    (the client's latest event time, `t` included)."""
    first = bucket_index(latest, width) - span + 1
    index = bucket_index(t, width)
    counts = {i: n for i, n in buckets if i >= first}
    if index >= first:
        counts[index] = counts.get(index, 0) + 1
    return tuple(sorted(counts.items()))


def merge(a: Buckets, b: Buckets, latest: float, width: float, span: int) -> Buckets:
    """Two clients' buckets summed (identity merge), pruned as `add` does."""
    first = bucket_index(latest, width) - span + 1
    counts: dict[int, int] = {}
    for index, count in (*a, *b):
        if index >= first:
            counts[index] = counts.get(index, 0) + count
    return tuple(sorted(counts.items()))


def total(buckets: Buckets, now: float, width: float, span: int) -> int:
    first = bucket_index(now, width) - span + 1
    last = bucket_index(now, width)
    return sum(n for i, n in buckets if first <= i <= last)


def next_change(buckets: Buckets, now: float, width: float, span: int) -> float | None:
    """When the window's total next changes with no new event: its oldest counted bucket
    leaves the window (or a bucket ahead of `now` enters it)."""
    first = bucket_index(now, width) - span + 1
    last = bucket_index(now, width)
    times = [(i + span) * width for i, _ in buckets if first <= i <= last]
    times += [i * width for i, _ in buckets if i > last]
    return min(times) if times else None


VIEW_HOURS = 24  # views in 24 h
VIEW_DAYS = 7  # views in 7 days
VISIT_DAYS = 30  # visits in 7 and 30 days
__all__ = ["DAY", "HOUR", "VIEW_DAYS", "VIEW_HOURS", "VISIT_DAYS", "Buckets", "add", "merge",
           "next_change", "total"]
