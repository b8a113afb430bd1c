"""A client's timer schedule stored beside its state: trusted on loading only under the code
and rules it was computed with, recomputed otherwise, and invisible to every reader."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from config.settings import Settings
from dataflows.buckets import LIVE, BucketConfig, BucketLogic, core_digest
from dataflows.flow import store_factory
from dataflows.metrics import DataflowMetrics
from features.codec import (
    StateFormatError,
    decode_state,
    encode_state,
    encode_stored,
    stored_schedule,
)
from features.events import EventType, parse_event
from features.fingerprint import fingerprint
from features.rfm import RfmModel
from features.rules import SegmentRules, TriggerRule, TriggerRules
from features.state import apply_event, is_live
from features.stored_schedule import SchedulePrints, StoredSchedule, depends_on_model
from features.triggers import next_due
from sinks.keys import KeyLayout
from tests.core_events import T0, cart_add, order, visit
from tests.histories import DAY, histories
from tests.support import drain, make_settings
from tests.test_dataflow import append

pytestmark = pytest.mark.core  # run again on the pure-Python core (Makefile)

RULES = TriggerRules()
MODEL = RfmModel("quantile", T0, 3, (T0 - 10, T0 - 5, T0 - 2, T0 - 1), (2, 3, 4, 5),
                 (100, 200, 300, 400))
MOVED = RfmModel("quantile", T0 + 5, 3, (T0 + 1, T0 + 2, T0 + 3, T0 + 4), (1, 2, 3, 4),
                 (100, 200, 300, 400))
CODE = b"code"


def with_model(rules: TriggerRules, model: RfmModel | None) -> TriggerRules:
    return replace(rules, segments=replace(rules.segments, rfm_model=model))


# --- the stored bytes --------------------------------------------------------------------------

def test_a_stored_schedule_reads_back_and_readers_see_the_state_alone() -> None:
    state = apply_event(None, cart_add(0, "p1"))
    encoded = encode_state(state)
    for schedule in (StoredSchedule(T0 + 3600, True, False, 7, 2**32 - 1),
                     StoredSchedule(None, False, True, 0, 0)):
        stored = encode_stored(encoded, schedule)
        assert stored.endswith(encoded) and len(stored) == len(encoded) + 18
        assert stored_schedule(stored) == schedule
        assert decode_state(stored) == state
    assert encode_stored(encoded, None) == encoded
    assert stored_schedule(encoded) is None  # a state stored before schedules were
    with pytest.raises(StateFormatError, match="truncated"):
        stored_schedule(encode_stored(encoded, StoredSchedule(None, False, False, 1, 1))[:9])


# --- fingerprints ------------------------------------------------------------------------------

def test_fingerprints_are_the_same_in_every_process() -> None:
    """String hashing is salted per process, and rules hold frozensets: the fingerprint must
    not follow their iteration order."""
    script = ("from config.settings import Settings; from features.fingerprint import "
              "fingerprint; print(fingerprint(Settings().trigger_rules()))")
    prints = {subprocess.run([sys.executable, "-c", script], check=True, text=True,
                             capture_output=True, env={"PYTHONHASHSEED": seed}).stdout
              for seed in ("1", "2", "3")}
    assert prints == {f"{fingerprint(Settings().trigger_rules())}\n"}


def test_fingerprints_follow_every_part_of_the_rules() -> None:
    assert fingerprint(RULES) == fingerprint(TriggerRules())
    assert fingerprint(RULES) != fingerprint(replace(RULES, abandoned_cart=TriggerRule(
        delay=7200.0)))
    assert fingerprint(frozenset({"a", "b"})) == fingerprint(frozenset({"b", "a"}))
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint((1.0,)) != fingerprint((1.5,))
    with pytest.raises(TypeError, match="no canonical form"):
        fingerprint(object())


def test_a_schedule_is_trusted_under_its_own_code_rules_and_for_buyers_model() -> None:
    buyer = apply_event(None, order(0, "o1"))
    browser = apply_event(None, visit(0))
    assert depends_on_model(buyer) and not depends_on_model(browser)
    prints = SchedulePrints.of(with_model(RULES, MODEL), 0.0, CODE)
    for state in (buyer, browser):
        stamped = prints.stamp(T0, True, state)
        assert stamped is not None and prints.trusts(stamped)
        assert not SchedulePrints.of(with_model(RULES, MODEL), 0.0, b"other").trusts(stamped)
        assert not SchedulePrints.of(with_model(RULES, MODEL), 5.0, CODE).trusts(stamped)
        assert not SchedulePrints.of(replace(with_model(RULES, MODEL), abandoned_browse=(
            TriggerRule(delay=60.0))), 0.0, CODE).trusts(stamped)
        # a new population model moves only a buyer's due times
        assert SchedulePrints.of(with_model(RULES, MOVED), 0.0, CODE).trusts(stamped) is (
            state is browser)
    unknown = SchedulePrints.of(RULES, 0.0, None)
    assert unknown.stamp(T0, True, browser) is None


def test_a_non_buyers_due_time_is_the_same_under_any_model() -> None:
    """What `depends_on_model` promises, over random histories: a client that never
    ordered has the same next due time whatever the population model."""
    start = T0 - 10 * DAY
    rules = [with_model(RULES, model) for model in (None, MODEL, MOVED)]
    checked = 0
    for history in histories(7, 300, start):
        state = None
        for raw in history:
            event = parse_event({**raw, "received_at": raw["event_time"]})
            if event.type is EventType.ORDER_PLACED:
                break
            state = apply_event(state, event)
            assert not depends_on_model(state)
            dues = {next_due(state, r) for r in rules}
            assert len(dues) == 1
            checked += 1
    assert checked > 500


# --- loading a bucket --------------------------------------------------------------------------

def _loaded(settings: Settings, rules: TriggerRules) -> list[BucketLogic]:
    metrics = DataflowMetrics.create(CollectorRegistry())
    config = BucketConfig(rules=rules, offset_flush_interval=1.0,
                          allowed_lateness=settings.dataflow.allowed_lateness)
    store = store_factory(settings)
    return [BucketLogic(bucket, store, config, metrics)
            for bucket in range(KeyLayout.from_settings(settings).buckets)]


def _events(clients: int) -> list[dict[str, Any]]:
    start = (time.time() // DAY - 10) * DAY
    return [e for h in histories(3, clients, start) for e in h]


def test_a_loaded_bucket_schedules_as_if_it_had_computed_every_due_time(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0})
    append(redis_client, settings, _events(150))
    drain(settings)
    layout = KeyLayout.from_settings(settings)
    stored = [stored_schedule(raw) for bucket in range(layout.buckets)
              for raw in redis_client.hvals(layout.state(bucket))]
    assert len(stored) == 150 and all(s is not None for s in stored)
    assert any(s is not None and s.due is not None for s in stored)
    assert core_digest() is not None

    changed = replace(settings.trigger_rules(), second_order_nudge=TriggerRule(delay=12 * DAY))
    lateness = settings.dataflow.allowed_lateness
    same = SchedulePrints.of(settings.trigger_rules(), lateness, core_digest())
    assert all(s is not None and same.trusts(s) for s in stored)
    assert not any(s is not None and SchedulePrints.of(changed, lateness, core_digest()).trusts(s)
                   for s in stored)
    for rules in (settings.trigger_rules(), changed):  # trusted, then recomputed
        scheduled = 0
        for logic in _loaded(settings, rules):
            for key, state in logic._states.items():
                due = next_due(state, rules)
                expected = None if due is None else (
                    due, LIVE if is_live(state, lateness) else 1)
                assert logic._scheduled.get(key) == expected, key
                scheduled += expected is not None
        assert scheduled > 0
    # the rules changed: a due time differs, so the second pass above recomputed
    assert any(next_due(decode_state(raw), changed) != next_due(decode_state(raw),
                                                               settings.trigger_rules())
               for bucket in range(layout.buckets)
               for raw in redis_client.hvals(layout.state(bucket)))


def test_segment_rules_are_part_of_the_print() -> None:
    lifecycle = SegmentRules()
    assert SchedulePrints.of(RULES, 0.0, CODE) == SchedulePrints.of(
        replace(RULES, segments=lifecycle), 0.0, CODE)
    assert SchedulePrints.of(RULES, 0.0, CODE) != SchedulePrints.of(
        replace(RULES, segments=replace(lifecycle, rfm_enabled=False)), 0.0, CODE)
