"""The dataflow's heap and Python's cyclic garbage collector.

A dataflow process holds the decoded state of every client in its buckets: millions of
small, long-lived objects, none in a reference cycle. Python's full collections walk all
of them, and ran often enough to take a third of the process's time (bench/README.md).
So what has survived is moved out of the collector's sight with `gc.freeze()`, at most
once a second. Reference counting still frees a frozen object when its last reference
goes, as it frees every state a newer one replaces; only a reference cycle that was alive
at a freeze and dies later is never reclaimed.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

FREEZE_EVERY = 1.0  # seconds: cycles younger than this are still collected as usual

_last_freeze = 0.0


def freeze_survivors() -> None:
    """Freeze the objects alive now, if the last freeze is over `FREEZE_EVERY` ago."""
    global _last_freeze
    now = time.monotonic()
    if now - _last_freeze >= FREEZE_EVERY:
        _last_freeze = now
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
