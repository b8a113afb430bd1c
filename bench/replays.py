"""Replay throughput: the real UCI Online Retail file and a synthetic event file, through
`crmflow replay` end to end (read, sort, append, dataflow, Parquet), on the command's own
scratch Redis as users run it by default (no append-only file, nothing else in it).

The synthetic file (a million events) is replayed as a user with a long history would, on
both cores (`--processes 2`); the UCI file (22k events), and the quick plan's 20k-event
file, in one process: a second process's start-up would cost more than it saves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.workload import events
from config.settings import Settings
from history.replay import ReplayResult, replay

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UCI = SHARED_DATA / "uci_online_retail.csv.gz"
DAY = 86400.0


def _figures(result: ReplayResult, processes: int) -> dict[str, Any]:
    total = result.total_seconds
    return {"processes": processes,
            "rows": result.history.tally.rows, "events": len(result.history.events),
            "clients": result.history.clients, "triggers": result.export.triggers,
            "seconds": round(total, 1),
            "stages_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
            "rows_per_s": round(result.history.tally.rows / total),
            "events_per_s": round(len(result.history.events) / total),
            "dataflow_events_per_s": round(len(result.history.events)
                                           / max(result.seconds["dataflow"], 1e-9))}


def replay_section(size: int, processes: int, folder: Path) -> dict[str, Any]:
    settings = Settings(dataflow={"metrics_port": 0})
    section: dict[str, Any] = {}
    if UCI.exists():
        result = replay([UCI], "uci-online-retail", folder / "uci-out", settings,
                        key_prefix="bench-replay-uci")
        section["uci"] = _figures(result, 1)
    else:
        section["uci"] = {"skipped": f"{UCI} not found"}
    path = folder / "synthetic.jsonl"
    start = time.time() - 60 * DAY
    with path.open("wb") as handle:
        handle.writelines(entry.body + b"\n" for entry in events(
            size, max(1, size // 10), start=start, span=30 * DAY, seed=5))
    result = replay([path], "events", folder / "synthetic-out", settings,
                    key_prefix="bench-replay-synthetic", processes=processes)
    section["synthetic"] = _figures(result, processes)
    return section
