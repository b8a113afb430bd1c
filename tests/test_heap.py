"""The dataflow's garbage-collector policy (dataflows/heap.py)."""

from __future__ import annotations

import gc
import weakref

from dataflows import heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_survivors_are_frozen_at_most_once_a_second_and_still_freed_by_refcount() -> None:
    heap._last_freeze = 0.0
    try:
        kept = [Node() for _ in range(100)]
        heap.freeze_survivors()
        frozen = gc.get_freeze_count()
        assert frozen >= len(kept)
        young = [Node() for _ in range(100)]
        heap.freeze_survivors()  # within the second: nothing more is frozen
        assert gc.get_freeze_count() == frozen
        # a frozen object without cycles still goes when its last reference does
        probe = weakref.ref(kept[0])
        del kept[0]
        assert probe() is None
        # a cycle born after the freeze is still collected
        a, b = young[0], young[1]
        a.other, b.other = b, a
        cycle = weakref.ref(a)
        del a, b, young
        gc.collect()
        assert cycle() is None
    finally:
        gc.unfreeze()


def test_objects_made_on_arrival_are_frozen_and_the_collector_is_restored() -> None:
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            with heap.frozen_on_arrival():
                assert not gc.isenabled()  # no full pass walks the states as they load
                loaded = Node()
                assert any(o is loaded for o in gc.get_objects())
            assert gc.isenabled() is enabled
            assert not any(o is loaded for o in gc.get_objects())  # frozen: out of sight
    finally:
        gc.enable()
        gc.unfreeze()
