"""`crmflow uplift` over what the real dataflow wrote to Redis: groups and conversions
against a count made independently from the events sent, in the report and through the
command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from config.settings import Settings
from features.policy import in_holdout
from history.uplift import format_report, uplift
from sinks.keys import KeyLayout
from tests.histories import DAY
from tests.support import REPO, drain, make_settings, write_config
from tests.test_dataflow import append

HOUR = 3600.0
CART = "abandoned_cart"


def _shopper(client: str, t0: float, *, email: bool, orders_at: float | None
             ) -> list[dict[str, Any]]:
    traits = {"email": f"{client}@example.com"} if email else {"name": client}
    events: list[dict[str, Any]] = [
        {"event_id": f"{client}-id", "type": "identify", "client_id": client,
         "event_time": t0, "traits": traits},
        {"event_id": f"{client}-cart", "type": "cart_add", "client_id": client,
         "event_time": t0 + 60, "products": [{"product_id": "p1", "price": 20.0}]}]
    if orders_at is not None:
        events.append({"event_id": f"{client}-order", "type": "order_placed",
                       "client_id": client, "event_time": orders_at,
                       "order": {"order_id": f"{client}-o", "total": 20.0,
                                 "items": [{"product_id": "p1", "price": 20.0}]}})
    return events


def test_uplift_counts_what_the_dataflow_decided_against_an_independent_count(
        redis_client: redis.Redis, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"quiet_hours": None, "frequency_cap_per_day": 0},
                             triggers={CART: {"holdout_percent": 50}})
    now = time.time()
    t0 = (now // DAY - 12) * DAY + 12 * HOUR  # noon, twelve days ago
    reminder = t0 + 60 + HOUR  # the cart reminder's due time (its default delay)
    clients = [f"c{n:03d}" for n in range(120)]
    buyers = {c for n, c in enumerate(clients) if n % 3 == 0}
    late = "c001"  # orders eight days after the reminder: outside a 7-day window
    events = [e for n, c in enumerate(clients) for e in _shopper(
        c, t0, email=n >= 10,  # the first ten have no channel: suppressed, yet treated
        orders_at=reminder + 4 * HOUR if c in buyers
        else reminder + 8 * DAY if c == late else None)]
    events += _shopper("recent", now - 2 * DAY, email=True, orders_at=None)  # window open
    events.append({"event_id": "v-cart", "type": "cart_add", "anonymous_id": "v1",
                   "event_time": t0 + 60, "products": [{"product_id": "p1", "price": 20.0}]})
    append(redis_client, settings, events)
    drain(settings, as_of=now)

    held = {c for c in clients if in_holdout(c, CART, 50)}
    assert 20 < len(held) < 100  # both groups are there to compare
    expected = {"treated": (len(clients) - len(held), len(buyers - held)),
                "holdout": (len(held), len(buyers & held))}

    report = uplift(settings, window=7 * DAY, as_of=now)
    cart = report.types[CART]
    assert {"treated": (cart.treated.clients, cart.treated.converted),
            "holdout": (cart.holdout.clients, cart.holdout.converted)} == expected
    assert cart.treated.revenue == 20.0 * len(buyers - held)
    assert cart.mixed == 0
    assert report.open_windows >= 1  # the recent shopper's reminder, among others
    closed = uplift(settings, window=7 * DAY, as_of=now + 7 * DAY).types[CART]
    assert closed.treated.clients + closed.holdout.clients == len(clients) + 1  # + recent
    assert report.anonymous == 1  # the visitor's reminder: its orders would be a client's
    assert CART in format_report(report)

    later = uplift(settings, window=7 * DAY, as_of=now, since=now - 3 * DAY)
    assert CART not in later.types  # every occasion before --since

    config = write_config(settings, tmp_path / "crmflow.yaml")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CRMFLOW_") and k != "REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "crmflow.cli", "uplift", "--json", "--window", "7d",
         "--config", str(config)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)["types"][CART]
    assert (printed["treated"]["clients"], printed["treated"]["converted"]) == \
        expected["treated"]
    assert (printed["holdout"]["clients"], printed["holdout"]["converted"]) == \
        expected["holdout"]


def test_a_treated_client_suppressed_after_its_deferral_stays_treated(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """The draw comes before quiet hours: a nudge deferred for the night was past it, not
    held out. Decided again at 09:00, it met suppression (an NPS detractor answer in the
    night): the client was dropped from the treated group, while its held-out twins stayed
    in theirs (the hold-out is decided at the draw, never again)."""
    nudge = "second_order_nudge"
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"frequency_cap_per_day": 0},
                             triggers={nudge: {"delay": "14d", "holdout_percent": 50}})
    now = time.time()
    first = (now // DAY - 40) * DAY + 23 * HOUR  # 23:00 UTC: the nudge is due in quiet hours
    due = first + 14 * DAY
    clients = [f"d{n:03d}" for n in range(40)]
    events: list[dict[str, Any]] = []
    for c in clients:
        events += [
            {"event_id": f"{c}-id", "type": "identify", "client_id": c,
             "event_time": first - HOUR, "traits": {"email": f"{c}@example.com"}},
            {"event_id": f"{c}-o1", "type": "order_placed", "client_id": c,
             "event_time": first, "order": {"order_id": f"{c}-o1", "total": 10.0}},
            {"event_id": f"{c}-nps", "type": "nps_answer", "client_id": c,
             "event_time": due + 2 * HOUR, "nps_score": 2},  # 01:00, before the release
            {"event_id": f"{c}-o2", "type": "order_placed", "client_id": c,
             "event_time": due + 2 * DAY, "order": {"order_id": f"{c}-o2", "total": 10.0}}]
    append(redis_client, settings, events)
    drain(settings, as_of=now)

    _everyone_converted(settings, nudge, clients, now)


def _everyone_converted(settings: Settings, kind: str, clients: list[str], now: float
                        ) -> None:
    """Each client in its group (half held out, by the hash), and every one converted."""
    held = {c for c in clients if in_holdout(c, kind, 50)}
    assert 5 < len(held) < 35
    found = uplift(settings, window=7 * DAY, as_of=now).types[kind]
    assert (found.holdout.clients, found.holdout.converted) == (len(held), len(held))
    assert (found.treated.clients, found.treated.converted) == \
        (len(clients) - len(held), len(clients) - len(held))


def test_a_treated_client_with_no_room_to_wait_out_quiet_hours_stays_treated(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """A welcome due in the night, past the draw, found the client's waiting list full
    (eight feedback requests deferred before it, of higher priority): `pending_limit`, with
    its channel chosen. The held-out twins were recorded `holdout` at the same moment; the
    others were in neither group, so the treated group lost exactly the busiest clients."""
    welcome = "welcome"
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"frequency_cap_per_day": 0},
                             triggers={welcome: {"holdout_percent": 50},
                                       "feedback_request": {"delay": "0s"}})
    now = time.time()
    night = (now // DAY - 20) * DAY + HOUR  # 01:00 UTC, inside the default quiet hours
    clients = [f"w{n:03d}" for n in range(40)]
    events: list[dict[str, Any]] = []
    for c in clients:
        events.append({"event_id": f"{c}-id", "type": "identify", "client_id": c,
                       "event_time": night - 10, "traits": {"email": f"{c}@example.com"}})
        events += [{"event_id": f"{c}-o{n}", "type": "order_placed", "client_id": c,
                    "event_time": night + n * 60,
                    "order": {"order_id": f"{c}-o{n}", "total": 10.0}} for n in range(8)]
        events += [{"event_id": f"{c}-reg", "type": "registered", "client_id": c,
                    "event_time": night + HOUR},
                   {"event_id": f"{c}-buy", "type": "order_placed", "client_id": c,
                    "event_time": night + 2 * DAY,
                    "order": {"order_id": f"{c}-buy", "total": 10.0}}]
    append(redis_client, settings, events)
    drain(settings, as_of=now)

    _everyone_converted(settings, welcome, clients, now)


def test_the_order_that_raised_an_occasion_does_not_convert_it(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """A tier announcement is due at the very order that reached the tier. The log records
    times to the millisecond, an order keeps its own (a backend sends microseconds): the
    occasion's due time read back was before its own order, which then converted every
    client of both groups."""
    tier = "loyalty_status"
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"quiet_hours": None, "frequency_cap_per_day": 0},
                             triggers={tier: {"holdout_percent": 50}})
    now = time.time()
    t0 = (now // DAY - 20) * DAY + 12 * HOUR + 0.000_4  # a time with microseconds
    clients = [f"l{n:03d}" for n in range(30)]
    events: list[dict[str, Any]] = []
    for c in clients:
        events.append({"event_id": f"{c}-id", "type": "identify", "client_id": c,
                       "event_time": t0 - HOUR, "traits": {"email": f"{c}@example.com"}})
        events += [{"event_id": f"{c}-o{n}", "type": "order_placed", "client_id": c,
                    "event_time": t0 + n * HOUR + n * 0.000_123,
                    "order": {"order_id": f"{c}-o{n}", "total": 10.0}} for n in range(3)]
    append(redis_client, settings, events)
    drain(settings, as_of=now)

    found = uplift(settings, window=7 * DAY, as_of=now).types[tier]
    assert found.treated.clients + found.holdout.clients == len(clients)
    assert (found.treated.converted, found.holdout.converted) == (0, 0)  # none since


def test_a_conversion_beyond_the_orders_the_state_keeps_is_not_a_failure(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """The state keeps a client's latest 64 orders: a client who bought the day after the
    reminder and 64 times since had its converting order dropped, and was counted as one
    the reminder did not convert (the more a group buys, the more it loses so)."""
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"quiet_hours": None, "frequency_cap_per_day": 0},
                             triggers={CART: {"holdout_percent": 0}})
    now = time.time()
    t0 = (now // DAY - 60) * DAY + 12 * HOUR
    reminder = t0 + 60 + HOUR
    events = _shopper("big", t0, email=True, orders_at=reminder + DAY)
    events += [{"event_id": f"big-o{n}", "type": "order_placed", "client_id": "big",
                "event_time": reminder + 10 * DAY + n * 600,
                "order": {"order_id": f"big-o{n}", "total": 5.0}} for n in range(64)]
    events += _shopper("small", t0, email=True, orders_at=None)
    append(redis_client, settings, events)
    drain(settings, as_of=now)

    report = uplift(settings, window=7 * DAY, as_of=now)
    cart = report.types[CART]
    # "big" converted, but its order is no longer known: not counted as a failure
    assert (cart.treated.clients, cart.treated.converted) == (1, 0)  # "small"
    assert cart.unknown == 1
    assert report.to_dict()["types"][CART]["clients_with_orders_not_kept"] == 1


def _uplift_cli(redis_url: str, key_prefix: str, tmp_path: Path, *options: str
                ) -> subprocess.CompletedProcess[str]:
    config = write_config(make_settings(redis_url, key_prefix), tmp_path / "crmflow.yaml")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CRMFLOW_") and k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "crmflow.cli", "uplift", *options, "--config", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_an_as_of_in_the_future_is_refused(redis_url: str, key_prefix: str,
                                           tmp_path: Path) -> None:
    """Windows closed by a time still to come are not closed: a future --as-of counted the
    occasions of the last days, their orders not yet placed, as failures."""
    result = _uplift_cli(redis_url, key_prefix, tmp_path, "--as-of", str(time.time() + 3 * DAY))
    assert result.returncode != 0
    assert "--as-of" in result.stderr and "future" in result.stderr


def test_a_since_not_before_the_as_of_is_refused(redis_url: str, key_prefix: str,
                                                 tmp_path: Path) -> None:
    """No occasion can count: an empty report would read as "no data", not as a mistake."""
    now = time.time()
    for options in (("--since", str(now - DAY), "--as-of", str(now - 2 * DAY)),
                    ("--since", str(now + 60))):  # after now, the default --as-of
        result = _uplift_cli(redis_url, key_prefix, tmp_path, *options)
        assert result.returncode != 0, options
        assert "--since" in result.stderr and "--as-of" in result.stderr


def test_a_client_whose_state_is_gone_is_left_out_not_counted_a_failure(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """An erasure deletes the state first and purges the client's trigger records after
    (sinks/erasure.py): in between, or when the purge has not run, the records name a
    client with no orders to read, who was counted as one the trigger did not convert."""
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"quiet_hours": None, "frequency_cap_per_day": 0},
                             triggers={CART: {"holdout_percent": 0}})
    now = time.time()
    t0 = (now // DAY - 12) * DAY + 12 * HOUR
    reminder = t0 + 60 + HOUR
    events = [e for c in ("gone", "kept") for e in _shopper(
        c, t0, email=True, orders_at=reminder + DAY)]
    append(redis_client, settings, events)
    drain(settings, as_of=now)
    layout = KeyLayout.from_settings(settings)
    assert redis_client.hdel(layout.state(layout.bucket_of("gone")), "gone") == 1

    report = uplift(settings, window=7 * DAY, as_of=now)
    cart = report.types[CART]
    assert (cart.treated.clients, cart.treated.converted) == (1, 1)
    assert report.to_dict()["clients_without_state"] == 1


def test_an_occasion_deferred_then_decided_counts_once(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """A deferral and its final record are one occasion: the report's count of occasions
    (and of windows still open) counted both."""
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"frequency_cap_per_day": 0},
                             triggers={CART: {"holdout_percent": 0}})
    now = time.time()
    night = (now // DAY - 12) * DAY + 22 * HOUR  # the reminder falls due at 23:01
    recent = now // DAY * DAY - 2 * DAY + 22 * HOUR
    events = [e for n in range(5) for e in _shopper(f"n{n}", night, email=True,
                                                    orders_at=None)]
    events += [e for n in range(3) for e in _shopper(f"r{n}", recent, email=True,
                                                     orders_at=None)]
    append(redis_client, settings, events)
    drain(settings, as_of=now)

    report = uplift(settings, window=7 * DAY, as_of=now)
    assert report.types[CART].treated.clients == 5
    assert (report.counted, report.open_windows) == (5, 3)


def test_a_p_value_below_a_thousandth_is_not_printed_as_zero() -> None:
    from features.uplift import GroupTally, Uplift
    from history.uplift import UpliftReport

    report = UpliftReport(7 * DAY, time.time(), None)
    report.types = {CART: Uplift(CART, GroupTally(1000, 300), GroupTally(1000, 150))}
    line = next(x for x in format_report(report).splitlines() if x.startswith(CART))
    assert " 0.000 " not in line and "<0.001" in line


def test_the_report_says_when_the_dataflow_has_not_applied_every_event(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """The orders read are those the dataflow has applied: with events still waiting (the
    dataflow behind or stopped), windows read as closed may miss their orders, and the
    report said nothing of it."""
    settings = make_settings(redis_url, key_prefix, rfm={"refresh": 0},
                             policy={"quiet_hours": None, "frequency_cap_per_day": 0})
    now = time.time()
    t0 = (now // DAY - 12) * DAY + 12 * HOUR
    append(redis_client, settings, _shopper("a", t0, email=True, orders_at=None))
    drain(settings, as_of=now)
    assert uplift(settings, window=7 * DAY, as_of=now).to_dict()["partitions_behind"] == []
    late = {"event_id": "a-late", "type": "order_placed", "client_id": "a",
            "event_time": t0 + DAY, "order": {"order_id": "a-late", "total": 5.0}}
    append(redis_client, settings, [late])  # not applied yet
    report = uplift(settings, window=7 * DAY, as_of=now)
    layout = KeyLayout.from_settings(settings)
    assert report.to_dict()["partitions_behind"] == [layout.partition_of_client("a")]
    assert "not applied" in format_report(report)
