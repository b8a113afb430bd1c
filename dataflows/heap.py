"""The dataflow's heap and Python's cyclic garbage collector.

A dataflow process holds the decoded state of every client in its buckets: millions of
small, long-lived objects, none in a reference cycle. Python's full collections walk all
of them, and ran often enough to take a third of the process's time (bench/README.md).
So what survives a batch is moved out of the collector's sight with `gc.freeze()` as the
batch ends. Reference counting still frees a frozen object when its last reference goes,
as it frees every state a newer one replaces. A frozen reference cycle is never
reclaimed: a cycle dropped within the batch that made it goes in the young collection
before the freeze (unless an automatic one earlier in the batch had seen it alive and
moved it on); one alive at the end of its batch stays. The dataflow makes almost none
(tests/test_heap.py counts them).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def freeze_survivors() -> None:
    """Collect the batch's young cyclic garbage, then freeze the rest.

    Freezing once a second left each second's survivors to the collector until then: the
    middle and full collections walked them again and again, 11% of the process's time
    (bench/README.md). `gc.freeze()` itself only moves lists; the young collection walks at
    most one generation's worth of objects (700 by default)."""
    gc.collect(0)
    gc.freeze()


@contextmanager
def frozen_on_arrival() -> Iterator[None]:
    """Objects made inside are all long-lived (a bucket's states as it loads): the collector
    is paused while they are made and they are frozen at once. Loading a bucket with the
    collector on took about half of a 100,000-client start-up: each full pass walked the
    states loaded since the last freeze."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.freeze()
