"""`crmflow replay`: the live dataflow run on event time over a history, into Parquet.

Nothing is recomputed apart: the events go into the event streams of a private Redis (an
embedded server of the replay's own, unless one is given), the same Bytewax dataflow and
pure core run over them with the clock taken from event time alone, and the same exporter
as `crmflow export` writes the result. What differs from live is only the clock:

- every timer fires on its client's own next event or, at the end, at the as-of time;
  none on the arrival clock, whose times are the replay's, not the history's. So a
  client's outcome depends on its own events only, whatever the workers or batch size;
- RFM scores are relative to all buyers: the model is computed once, as of the end, and
  the dataflow then re-files every buyer under it (entered at the as-of time).

Identity steps are what a client receives from another: an anonymous visitor's merge
answer to a link and the events forwarded after it (features/identity.py). Live in event
time, each joins the client at once; written by the dataflow after the whole history was
appended, they would land among the client's own events wherever batch boundaries and the
processes' pace put them. So a history with links replays in two stages
(`identity_stages`). First the anonymous visitors that some event links to a client, with
the link requests at their places: what they do hangs on their own entries alone, and the
dataflow writes their identity steps apart. Then everything else, each of those steps
right after the entry that caused it (`in_event_time_order`): every client sees its
events and steps in the order live traffic in event time would give. What the second
stage writes (aliases handed over to tombstones beyond the alias cap) changes only those
tombstones' alias lists, in the order live would, and is applied after.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import heapq
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import orjson
import redis
from prometheus_client import CollectorRegistry

from config.settings import Settings
from crmflow.redis_server import EmbeddedRedis
from dataflows.flow import store_factory
from dataflows.run import run_dataflow
from features.events import ANONYMOUS_PREFIX, Event, EventType, format_time, parse_event
from features.identity import step_id, with_links
from features.rfm import RfmMode, RfmModel
from features.rules import SegmentRules
from history.load import History, Progress, describe, load_history
from history.replay_group import run_group
from sinks import rfm_index
from sinks.bucket_store import BucketStore
from sinks.event_log import AppendOptions, EventLog, encode_event
from sinks.keys import KeyLayout
from sinks.parquet_export import ExportSummary, write_profiles, write_triggers
from sinks.redis_client import sync_client

APPEND_CHUNK = 5000
HELD = "replay-held"  # under the replay's key prefix: the first stage's identity steps


FAILURES_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Failures:
    """What the rules raised on (the dataflow dead-letters it and goes on): the output
    leaves those events or timers out, so the summary must say so."""

    count: int = 0
    first: tuple[str, ...] = ()  # "client: reason" of the first few


@dataclass(slots=True)
class ReplayResult:
    history: History
    as_of: float
    export: ExportSummary
    seconds: dict[str, float] = field(default_factory=dict)
    failures: Failures = Failures()

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> list[str]:
        total = max(self.total_seconds, 1e-9)
        rows, events = self.history.tally.rows, len(self.history.events)
        lines = describe(self.history)
        lines.append(f"as of: {format_time(self.as_of)}")
        lines.append(f"profiles: {self.export.profiles:,}; memberships: "
                     f"{self.export.memberships:,}; merged clients: {self.export.tombstones:,}")
        lines.append(f"triggers: {self.export.triggers:,}")
        if self.failures.count:
            lines.append(f"left out, the rules failed on them: {self.failures.count:,} "
                         "(the dataflow's log has the tracebacks)")
            lines.extend(f"  {failure}" for failure in self.failures.first)
        by_type: dict[str, list[str]] = {}
        for (kind, status), count in sorted(self.export.triggers_by_type.items()):
            by_type.setdefault(kind, []).append(f"{status} {count:,}")
        lines.extend(f"  {kind}: {', '.join(parts)}" for kind, parts in by_type.items())
        lines.append("time: " + ", ".join(f"{stage} {s:.1f}s" for stage, s in
                                           self.seconds.items())
                     + f"; total {total:.1f}s ({rows / total:,.0f} rows/s, "
                       f"{events / total:,.0f} events/s)")
        return lines


def replay_settings(settings: Settings, redis_url: str, key_prefix: str, *,
                    workers: int | None, batch_size: int | None) -> Settings:
    """The settings a replay runs with: its Redis, and event time as the only clock.
    `workers` and `batch_size` default (None) to the configuration's; 0 or less is an error,
    not the default."""
    for name, value in (("workers", workers), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    # the replay's Redis is one server of its own (or the one given), never the live
    # configuration's cluster; its dataflow runs twice in one process, which Bytewax's own
    # metrics server does not survive (it registers its collectors once per process)
    redis_section = settings.redis.model_copy(update={
        "url": redis_url, "key_prefix": key_prefix, "dedupe_window": 0.0, "cluster": False})
    dataflow = settings.dataflow.model_copy(update={
        "workers": settings.dataflow.workers if workers is None else workers,
        "batch_size": settings.dataflow.batch_size if batch_size is None else batch_size,
        "allowed_lateness": 0.0, "metrics_port": 0, "bytewax_metrics_port": 0})
    rfm = settings.rfm.model_copy(update={"refresh": 0.0})  # one model, as of the end
    return settings.model_copy(update={"redis": redis_section, "dataflow": dataflow,
                                       "rfm": rfm})


@contextlib.contextmanager
def _private_redis() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="crmflow-replay-"))
    server = EmbeddedRedis(folder, appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()  # scratch data: nothing to save
        shutil.rmtree(folder, ignore_errors=True)


class _DataflowProgress:
    """Shows the dataflow's count of events while it runs, and the final count at its end.

    `count`: events read so far, from the dataflow's own metrics when it runs in this
    process (`_metrics_count`), else from the positions its processes committed to Redis
    (`_committed_count`)."""

    def __init__(self, progress: Progress, count: Callable[[], float], total: int,
                 processes: int = 1) -> None:
        self._progress = progress
        self._count = count
        self._total = total
        self._where = f" in {processes} processes" if processes > 1 else ""
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _show(self, *, force: bool = False) -> None:
        read = self._count()
        rate = read / max(time.monotonic() - self._started, 1e-9)
        # what the dataflow reads includes the events it writes itself (merges, forwards)
        self._progress.show(f"dataflow: {read:,.0f} events read ({self._total:,} from the "
                            f"history, {rate:,.0f}/s){self._where}", force=force)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._show()

    def __enter__(self) -> _DataflowProgress:
        if self._progress.enabled:  # no line to draw: nothing to count either
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._progress.enabled:
            return
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._show(force=True)


def _metrics_count(registry: CollectorRegistry) -> Callable[[], float]:
    def count() -> float:
        return sum(sample.value for metric in registry.collect()
                   if metric.name == "crmflow_dataflow_events_read"
                   for sample in metric.samples if sample.name.endswith("_total"))
    return count


def _committed_count(store: BucketStore) -> Callable[[], float]:
    """Entries applied by every bucket, over all partitions; a partition whose entry at its
    least position was trimmed since keeps its last figure."""
    last: dict[int, int] = {}

    def count() -> float:
        for partition in range(store.layout.partitions):
            with contextlib.suppress(redis.RedisError):
                applied = store.entries_applied(partition)
                if applied is not None:
                    last[partition] = max(applied, last.get(partition, 0))
        return sum(last.values())
    return count


def replay(inputs: Sequence[Path], fmt: str, out: Path, settings: Settings, *,
           as_of: float | None = None, workers: int | None = None,
           batch_size: int | None = None, mapping: Mapping[str, str] | None = None,
           strict: bool = False, redis_url: str | None = None, key_prefix: str = "replay",
           progress: Progress | None = None, processes: int = 1) -> ReplayResult:
    """Replay `inputs` and write profiles, segments and triggers as Parquet into `out`.

    `redis_url`: run on this Redis under `key_prefix` (which must hold no other data)
    instead of a private embedded server. `processes`: the dataflow's, one per core to use
    (history/replay_group.py); the output is the same for any number.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    progress = progress or Progress(enabled=False)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    history = load_history(inputs, fmt, mapping=mapping, strict=strict, as_of=as_of,
                           progress=progress)
    seconds["read"] = time.monotonic() - started
    end = as_of if as_of is not None else history.last_time
    if end is None:
        end = time.time()  # nothing to replay: empty tables, as of now
    with contextlib.ExitStack() as stack:
        url = redis_url or stack.enter_context(_private_redis())
        run = replay_settings(settings, url, key_prefix, workers=workers,
                              batch_size=batch_size)
        export, failures = _run(history, run, out, end, progress, seconds, processes)
    return ReplayResult(history, end, export, seconds, failures)


def _run(history: History, settings: Settings, out: Path, as_of: float, progress: Progress,
         seconds: dict[str, float], processes: int) -> tuple[ExportSummary, Failures]:
    client = sync_client(settings.redis)
    layout = KeyLayout.from_settings(settings)
    try:
        log = EventLog(client, layout, AppendOptions(dedupe_window=0))
        events = history.events
        seconds["append"] = seconds["dataflow"] = 0.0
        # Every event, and those the dataflow writes itself, with the head clock before
        # history began: nothing fires at the head yet. First the linked anonymous visitors,
        # their identity steps held apart; then the rest, those steps at their places.
        before = min(events[0].event_time - 1.0 if events else as_of, as_of)
        stages = identity_stages(events)
        held: list[Event] = []
        read = 0.0
        if stages.first:
            started = time.monotonic()
            _append(log, stages.first, len(stages.first), progress)
            seconds["append"] += time.monotonic() - started
            started = time.monotonic()
            held_prefix = f"{settings.redis.key_prefix}:{HELD}"
            read = _dataflow(settings, processes, before, None, progress, len(events),
                             emitted_prefix=held_prefix)
            held = _take_held(client, replace(layout, prefix=held_prefix))
            seconds["dataflow"] += time.monotonic() - started
        started = time.monotonic()
        _append(log, in_event_time_order(stages, held),
                len(stages.entries) - len(stages.first) + len(held), progress)
        seconds["append"] += time.monotonic() - started

        started = time.monotonic()
        _dataflow(settings, processes, before, None, progress, len(events), read_before=read)
        # Then the RFM model as of the end, and the head clock at the as-of time: what is
        # still due fires, and buyers are filed under the model.
        rules = settings.trigger_rules().segments
        model = _final_model(rules, client, layout, as_of)
        _dataflow(settings, processes, as_of, model, Progress(enabled=False), 0)
        if model is not None:
            rules = replace(rules, rfm_model=model)
        seconds["dataflow"] += time.monotonic() - started

        started = time.monotonic()
        progress.show("writing Parquet", force=True)
        out.mkdir(parents=True, exist_ok=True)
        summary = ExportSummary()
        write_profiles(client, layout, rules, out, as_of, summary)
        write_triggers(client, layout, out, summary, by_day=False)
        seconds["write"] = time.monotonic() - started
        progress.done()
        return summary, _failures(client, layout)
    finally:
        client.close()


def _failures(client: redis.Redis, layout: KeyLayout) -> Failures:
    """The dead letters of the replay's own Redis: its events were validated as they were
    read, so each is one the rules raised on."""
    count, first = 0, []
    for partition in range(layout.partitions):
        stream = layout.dead_letters(partition)
        count += client.xlen(stream)
        for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]],
                              client.xrange(stream, count=FAILURES_SHOWN)):
            first.append(f"{fields[b'client'].decode()}: {fields[b'reason'].decode()}")
    return Failures(count, tuple(first[:FAILURES_SHOWN]))


@dataclass(slots=True)
class IdentityStages:
    """A history in event-time order as a replay's two stages (`identity_stages`).

    Places are indexes in `entries`, the whole history with its link requests, each right
    after the event that carries both ids (where ingest appends it): the order in which
    live traffic in event time would apply them, each identity step at once."""

    entries: list[Event]
    linked: set[str]  # the keys of the anonymous visitors some event links to a client
    first: list[Event] = field(default_factory=list)  # their entries, link requests included
    places: dict[tuple[str, str], int] = field(default_factory=dict)  # (key, id) of those
    contents: dict[bytes, int] = field(default_factory=dict)  # digests of those entries

    def second(self) -> Iterator[tuple[int, Event]]:
        """Every other entry, with its place."""
        return ((place, entry) for place, entry in enumerate(self.entries)
                if entry.client_key not in self.linked)

    def place_of(self, step: Event) -> tuple[int, int]:
        """The place of the entry whose application wrote the identity step (a merge: the
        link; a forward: the visitor's event), and 1: the step follows it at once. (Not
        found, which the identity steps do not allow: after the entries of its time, 2.)"""
        if step.type is EventType.PROFILE_MERGED:
            alias = str(step.properties.get("from", ""))
            place = self.places.get((alias, step_id("link", alias, step.client_key)))
        else:
            place = self.contents.get(_digest(replace(step, client_id=None)))
            if place is None and step.anonymous_id is not None:
                place = self.places.get((ANONYMOUS_PREFIX + step.anonymous_id, step.event_id))
        if place is not None:
            return place, 1
        return bisect.bisect_right(self.entries, step.event_time,
                                   key=lambda entry: entry.event_time) - 1, 2


def identity_stages(events: Sequence[Event]) -> IdentityStages:
    """The events of the anonymous visitors that some event links to a client first, the
    rest second (all of it when nothing links)."""
    entries = with_links(events)
    linked = ({e.client_key for e in entries if e.type is EventType.IDENTITY_LINKED}
              if len(entries) > len(events) else set())
    stages = IdentityStages(entries, linked)
    for place, entry in enumerate(entries if linked else ()):
        if entry.client_key in linked:
            stages.first.append(entry)
            stages.places.setdefault((entry.client_key, entry.event_id), place)
            stages.contents.setdefault(_digest(entry), place)
    return stages


def _digest(event: Event) -> bytes:
    """The event as appended, in 16 bytes: a map of a long history's visitors' entries
    stays small."""
    return hashlib.blake2b(encode_event(event), digest_size=16).digest()


def in_event_time_order(stages: IdentityStages, held: Iterable[Event]) -> Iterator[Event]:
    """The second stage's events with the `held` identity steps the first stage wrote, each
    right after the entry that caused it (`IdentityStages.place_of`), each step once (a
    commit sent again writes its steps again)."""
    steps = sorted({(*stages.place_of(step), encode_event(step)): step
                    for step in held}.items(), key=lambda item: item[0])
    own = (((place, 0), event) for place, event in stages.second())
    for _, event in heapq.merge(own, steps, key=lambda item: item[0]):
        yield event


def _append(log: EventLog, events: Iterable[Event], count: int, progress: Progress) -> None:
    """Appends `events` in order, link requests being in place already."""
    chunk: list[Event] = []
    done = 0
    for event in events:
        chunk.append(event)
        if len(chunk) == APPEND_CHUNK:
            log.append(chunk, links=False)
            done += len(chunk)
            chunk = []
            progress.show(f"appending: {done:,} of {count:,} events")
    if chunk:
        log.append(chunk, links=False)
        progress.show(f"appending: {done + len(chunk):,} of {count:,} events")


def _take_held(client: redis.Redis, layout: KeyLayout) -> list[Event]:
    """The events the first stage wrote to `layout`'s streams, which are then deleted."""
    held: list[Event] = []
    for partition in range(layout.partitions):
        stream = layout.events(partition)
        after = "-"
        while True:
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                           client.xrange(stream, min=after, max="+", count=APPEND_CHUNK))
            held.extend(parse_event(orjson.loads(fields[b"e"])) for _, fields in entries)
            if len(entries) < APPEND_CHUNK:
                break
            after = "(" + entries[-1][0].decode()
        client.delete(stream, layout.events_count(partition))
    return held


def _dataflow(settings: Settings, processes: int, as_of: float, model: RfmModel | None,
              progress: Progress, events: int, *, read_before: float = 0.0,
              emitted_prefix: str | None = None) -> float:
    """The replay's dataflow to its end, in this process or a group (`model`: as stored in
    Redis by `_final_model`; `emitted_prefix`: see `dataflows.flow.store_factory`).
    Returns the events read so far: in one process, this run's count and `read_before`
    (an earlier run's); in a group, counted from the positions in Redis."""
    if processes > 1:
        store = store_factory(settings)
        try:
            committed = _committed_count(store)
            with _DataflowProgress(progress, committed, events, processes):
                run_group(settings, processes, as_of=as_of, stored_model=model is not None,
                          emitted_prefix=emitted_prefix)
            return committed()
        finally:
            store.client.close()
    registry = CollectorRegistry()
    metrics_count = _metrics_count(registry)

    def count() -> float:
        return read_before + metrics_count()

    with _DataflowProgress(progress, count, events):
        run_dataflow(settings, stop_when_caught_up=True, registry=registry, metrics_port=0,
                     as_of=as_of, replay=True, rfm_model=model, emitted_prefix=emitted_prefix)
    return count()


def _final_model(rules: SegmentRules, client: redis.Redis, layout: KeyLayout, as_of: float
                 ) -> RfmModel | None:
    if not rules.rfm_enabled:
        return None
    mode: RfmMode = "fixed" if rules.rfm_mode == "fixed" else "quantile"
    model = rfm_index.compute_model(client, layout, as_of, mode, rules.rfm_fixed)
    if model.empty:
        return None
    rfm_index.store_model(client, layout, model)
    return model
