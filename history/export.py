"""`crmflow export`: the live system's profiles, memberships and trigger log as Parquet."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from config.settings import Settings
from sinks import rfm_index
from sinks.keys import KeyLayout
from sinks.parquet_export import ExportSummary, write_profiles, write_triggers
from sinks.redis_client import sync_client


def export(settings: Settings, out: Path, *, as_of: float | None = None) -> ExportSummary:
    """Profiles (features as of `as_of`, default now) with the RFM model the system serves,
    segment memberships, and the trigger log partitioned by day of `fired_at`."""
    client = sync_client(settings.redis)
    try:
        layout = KeyLayout.from_settings(settings)
        rules = settings.trigger_rules().segments
        if rules.rfm_enabled:
            rules = replace(rules, rfm_model=rfm_index.load_model(client, layout))
        out.mkdir(parents=True, exist_ok=True)
        summary = ExportSummary()
        write_profiles(client, layout, rules, out, time.time() if as_of is None else as_of,
                       summary)
        write_triggers(client, layout, out, summary, by_day=True)
        return summary
    finally:
        client.close()
