"""The bucket commit script against a real Redis: fencing, replays, ledger cap, layout."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import redis

from features.triggers import Trigger
from sinks.bucket_store import (
    START,
    BucketCommit,
    BucketStore,
    DeadLetter,
    FencedError,
    minute_of,
)
from sinks.keys import KeyLayout, LayoutMismatch, claim_layout


def store(client: redis.Redis, prefix: str, ledger_max: int = 100) -> BucketStore:
    return BucketStore(client, KeyLayout(prefix, 2, 8), ledger_max_entries=ledger_max,
                       stream_maxlen=1000)


def trigger(n: int, client: str = "c1") -> Trigger:
    return Trigger(f"id{n}", "welcome", client, 1_700_000_000.0 + n, {"n": n}, channel="email")


def test_commit_writes_everything_and_a_replay_is_a_no_op(redis_client: redis.Redis,
                                                          key_prefix: str) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    partition = s.layout.partition_of_bucket(bucket)
    commit = BucketCommit(bucket=bucket, base=START, position="5-0", states=[("c1", b"state")],
                          triggers=[trigger(1)],
                          dead_letters=[DeadLetter("invalid json", "4-0", b"{")])
    assert s.commit([commit]) == [("welcome", "sent")]
    assert s.commit([commit]) == []  # delivered again after a crash: nothing new
    layout = s.layout
    loaded = s.load(bucket)
    assert loaded.position == "5-0" and loaded.states == {"c1": b"state"}
    assert redis_client.xlen(layout.triggers(partition)) == 1
    assert redis_client.xlen(layout.dead_letters(partition)) == 1
    entry = json.loads(redis_client.hget(layout.ledger("c1"), "id1"))
    assert entry["type"] == "welcome" and entry["payload"] == {"n": 1}
    assert entry["status"] == "sent" and entry["channel"] == "email"
    [(_, fields)] = redis_client.xrange(layout.triggers(partition))
    assert {k.decode(): v.decode() for k, v in fields.items()} == {
        "trigger_id": "id1", "type": "welcome", "key": "", "client_id": "c1",
        "fired_at": "2023-11-14T22:13:21.000Z", "decided_at": "2023-11-14T22:13:21.000Z",
        "status": "sent", "channel": "email", "source": "auto", "payload": '{"n":1}'}


def test_a_deferral_and_the_final_decision_are_both_recorded_once(
        redis_client: redis.Redis, key_prefix: str) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    partition = s.layout.partition_of_bucket(bucket)
    deferred = replace(trigger(1), status="deferred", reason="quiet_hours",
                       until=1_700_050_000.0)
    sent = replace(trigger(1), decided_at=1_700_050_000.0)
    assert s.commit([BucketCommit(bucket=bucket, base=START, position="1-0",
                                  triggers=[deferred])]) == [("welcome", "deferred")]
    assert s.commit([BucketCommit(bucket=bucket, base="1-0", position="2-0",
                                  triggers=[sent, deferred, sent])]) == [("welcome", "sent")]
    ledger = {k.decode(): json.loads(v) for k, v in
              redis_client.hgetall(s.layout.ledger("c1")).items()}
    assert ledger["id1:deferred"]["status"] == "deferred"
    assert ledger["id1:deferred"]["deferred_until"] == "2023-11-15T12:06:40.000Z"
    assert ledger["id1"]["status"] == "sent"
    assert ledger["id1"]["decided_at"] == "2023-11-15T12:06:40.000Z"
    entries = [{k.decode(): v.decode() for k, v in fields.items()}
               for _, fields in redis_client.xrange(s.layout.triggers(partition))]
    assert [(e["trigger_id"], e["status"], e.get("reason")) for e in entries] == [
        ("id1", "deferred", "quiet_hours"), ("id1", "sent", None)]


def test_a_commit_from_a_stale_owner_is_fenced(redis_client: redis.Redis,
                                               key_prefix: str) -> None:
    s = store(redis_client, key_prefix)
    s.commit([BucketCommit(bucket=2, base=START, position="9-0")])
    with pytest.raises(FencedError, match="bucket 2 is at 9-0"):
        s.commit([BucketCommit(bucket=2, base="3-0", position="4-0", states=[("x", b"old")])])
    assert s.load(2).states == {}  # never older data over newer


def test_a_batch_holding_two_commits_of_a_bucket_is_a_no_op_when_sent_again(
        redis_client: redis.Redis, key_prefix: str) -> None:
    """Applied, its reply lost, sent again: the first commit's base is gone, but its id is
    one the bucket's process numbered before the last it applied."""
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    batch = [BucketCommit(bucket=bucket, base=START, position="1-0", commit_id="p.1",
                          triggers=[trigger(1)]),
             BucketCommit(bucket=bucket, base="1-0", position="2-0", commit_id="p.2",
                          triggers=[trigger(2)])]
    assert s.commit(batch) == [("welcome", "sent")] * 2
    assert s.commit(batch) == []
    assert s.load(bucket).position == "2-0"
    partition = s.layout.partition_of_bucket(bucket)
    assert redis_client.xlen(s.layout.triggers(partition)) == 2


@pytest.mark.parametrize("commit_id", ["p.3", "q.1", "q.9", "p.x"],
                         ids=["later number", "other process", "other process, higher",
                              "malformed"])
def test_a_stale_base_is_fenced_unless_the_id_was_applied(
        redis_client: redis.Redis, key_prefix: str, commit_id: str) -> None:
    s = store(redis_client, key_prefix)
    s.commit([BucketCommit(bucket=2, base=START, position="9-0", commit_id="p.2")])
    with pytest.raises(FencedError, match="bucket 2 is at 9-0"):
        s.commit([BucketCommit(bucket=2, base="3-0", position="4-0", commit_id=commit_id,
                               states=[("x", b"old")])])
    assert s.load(2).states == {}


def test_ledger_keeps_the_newest_entries(redis_client: redis.Redis, key_prefix: str) -> None:
    s = store(redis_client, key_prefix, ledger_max=3)
    bucket = s.layout.bucket_of("c1")
    position = START
    for n in range(5):
        new = f"{n + 1}-0"
        s.commit([BucketCommit(bucket=bucket, base=position, position=new, triggers=[trigger(n)])])
        position = new
    kept = redis_client.hkeys(s.layout.ledger("c1"))
    assert sorted(k.decode() for k in kept) == ["id2", "id3", "id4"]


def test_ledger_trims_in_batches_of_a_quarter(redis_client: redis.Redis,
                                              key_prefix: str) -> None:
    s = store(redis_client, key_prefix, ledger_max=8)
    bucket = s.layout.bucket_of("c1")
    sizes = []
    for n in range(12):
        s.commit([BucketCommit(bucket=bucket, base=f"{n}-0" if n else START,
                               position=f"{n + 1}-0", triggers=[trigger(n)])])
        sizes.append(redis_client.hlen(s.layout.ledger("c1")))
    assert sizes == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 8, 9]  # never below the newest eight
    kept = {k.decode() for k in redis_client.hkeys(s.layout.ledger("c1"))}
    assert kept == {f"id{n}" for n in range(3, 12)}


def test_a_commit_of_more_states_than_one_call_takes(redis_client: redis.Redis,
                                                     key_prefix: str) -> None:
    """The script writes states in calls of up to 1,000 fields: 2,501 go in three calls and
    one more, and a client given twice keeps the later state."""
    s = store(redis_client, key_prefix)
    states = [(f"c{n}", f"state {n}".encode()) for n in range(2_500)]
    states.append(("c7", b"state 7, later"))
    s.commit([BucketCommit(bucket=0, base=START, position="1-0", states=states)])
    loaded = s.load(0)
    assert loaded.position == "1-0" and len(loaded.states) == 2_500
    assert loaded.states["c2499"] == b"state 2499" and loaded.states["c7"] == b"state 7, later"


def test_activity_counts_are_summed_per_field(redis_client: redis.Redis,
                                              key_prefix: str) -> None:
    s = store(redis_client, key_prefix)
    bucket = s.layout.bucket_of("c1")
    partition = s.layout.partition_of_bucket(bucket)
    clock = 1_700_000_030.0
    minute = minute_of(clock)
    s.commit([BucketCommit(
        bucket=bucket, base=START, position="1-0", clock=clock,
        triggers=[trigger(1), trigger(2), trigger(3, "c2")], trigger_points={"c1": "leeds"},
        activity=[(minute, None, "e:visit", 2), (minute, "leeds", "e:visit", 1),
                  (minute, None, "e:visit", 3)])])
    every = s.layout.activity(partition, minute)
    leeds = s.layout.activity(partition, minute, "leeds")
    assert redis_client.hgetall(every) == {b"t:welcome|sent": b"3", b"e:visit": b"5"}
    assert redis_client.hgetall(leeds) == {b"t:welcome|sent": b"2", b"e:visit": b"1"}
    assert redis_client.ttl(every) > 0 and redis_client.ttl(leeds) > 0


def test_a_timeline_keeps_its_newest_lines(redis_client: redis.Redis, key_prefix: str) -> None:
    s = BucketStore(redis_client, KeyLayout(key_prefix, 2, 8), ledger_max_entries=100,
                    stream_maxlen=1000, timeline_events=3)
    bucket = s.layout.bucket_of("c1")
    stored = []
    for n, lines in enumerate(["a", "c\nb", "d", "h\ng\nf\ne"]):
        s.commit([BucketCommit(bucket=bucket, base=f"{n}-0" if n else START,
                               position=f"{n + 1}-0", timelines=[("c1", lines)])])
        stored.append(redis_client.hget(s.layout.timeline(bucket), "c1"))
    # newest first: all of a short one, exactly three kept whole, the oldest dropped past
    # three, and a batch of four cut to its newest three
    assert stored == [b"a", b"c\nb\na", b"d\nc\nb", b"h\ng\nf"]


def test_resume_position_is_the_least_of_the_partition_buckets(
        redis_client: redis.Redis, key_prefix: str) -> None:
    s = store(redis_client, key_prefix)
    assert s.resume_position(0) == START
    for bucket in (0, 2, 4, 6):
        s.commit([BucketCommit(bucket=bucket, base=START, position=f"{10 + bucket}-0")])
    assert s.resume_position(0) == "10-0"


def test_layout_is_claimed_once(redis_client: redis.Redis, key_prefix: str) -> None:
    claim_layout(redis_client, KeyLayout(key_prefix, 4, 64))
    claim_layout(redis_client, KeyLayout(key_prefix, 4, 64))
    with pytest.raises(LayoutMismatch, match="dataflow.buckets is 128"):
        claim_layout(redis_client, KeyLayout(key_prefix, 4, 128))
