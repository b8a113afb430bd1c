"""The pure core behind the console: lookup keys from traits, timeline lines, and the RFM
map cell a buyer is filed in (kept with its RFM segment, hidden from the API's segments)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from api.rules_table import rules_sections
from config.settings import Settings
from features import segments
from features.events import Event, EventType, Order, Product, parse_event
from features.lookup import (
    lookup_keys,
    normalise_email,
    normalise_phone,
    point_of,
    query_prefixes,
)
from features.rfm import RfmModel
from features.rules import TRANSACTIONAL, SegmentRules
from features.state import ClientState, OrderRecord
from features.timeline import MAX_SUMMARY, SEPARATOR, parse_timeline, timeline_entry
from sinks import console_store
from sinks.bucket_store import lookup_member
from sinks.keys import KeyLayout

T0 = 1_700_000_000.0


@pytest.mark.parametrize(("raw", "expected"), [
    (" Ann.Smith@Example.COM ", "ann.smith@example.com"),
    ("no-at-sign", None), ("", None), (None, None), (42, None), ("a@" + "x" * 300, None),
])
def test_emails_are_normalised(raw: object, expected: str | None) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("+44 (20) 7946-0958", "+442079460958"), ("020 7946 0000", "02079460000"),
    (4420794609, "4420794609"), ("12-34", None), ("+1" + "9" * 25, None), (True, None),
    (None, None),
])
def test_phones_keep_their_digits_and_plus(raw: object, expected: str | None) -> None:
    assert normalise_phone(raw) == expected


def test_lookup_keys_and_queries_meet() -> None:
    keys = lookup_keys({"email": "Ann@Example.com", "phone": "+44 20 7946 0958",
                        "city": "Leeds"})
    assert keys == {"email:ann@example.com", "phone:+442079460958"}
    for query in ("ANN@example.com", "ann@", "+44 20 7946", "+442079460958"):
        assert any(key.startswith(prefix) for key in keys for prefix in query_prefixes(query))
    assert not any(key.startswith(prefix) for key in keys
                   for prefix in query_prefixes("bob@example.com"))
    # a number sent without its + is found with or without one
    assert any(p == "phone:02079" for p in query_prefixes("020 79"))
    assert "phone:+02079" in query_prefixes("020 79")


@pytest.mark.parametrize(("traits", "point"), [
    ({"point_id": " leeds "}, "leeds"), ({"point_id": 12}, "12"), ({"point_id": ""}, None),
    ({"point_id": True}, None), ({}, None)])
def test_the_point_is_the_point_id_trait(traits: dict[str, object], point: str | None) -> None:
    assert point_of(traits) == point


def _event(kind: EventType, **fields: object) -> Event:
    return Event("e1", kind, T0, T0, client_id="c1", **fields)  # type: ignore[arg-type]


def test_timeline_lines_summarise_events() -> None:
    order = _event(EventType.ORDER_PLACED, order=Order("o-7", 1234.5, "GBP", (
        Product("p1"), Product("p2"))))
    view = _event(EventType.PRODUCT_VIEW, products=(Product("sku-1", "tea"), Product("x")))
    nps = _event(EventType.NPS_ANSWER, nps_score=9)
    cancelled = _event(EventType.ORDER_CANCELLED, order=Order("o-7", -1.0))  # no amount named
    lines = [timeline_entry(e) for e in (order, view, nps, cancelled)]
    entries = parse_timeline(SEPARATOR.join(line for line in lines if line))
    assert [(e.type, e.at, e.summary) for e in entries] == [
        ("order_placed", T0, "order o-7, 1,234.50 GBP, 2 items"),
        ("product_view", T0, "sku-1 (tea), +1 more"),
        ("nps_answer", T0, "score 9"),
        ("order_cancelled", T0, "order o-7, whole order")]
    assert timeline_entry(_event(EventType.TOUCH_RECORDED)) is None
    assert timeline_entry(_event(EventType.PROFILE_MERGED)) is None
    assert parse_timeline("") == [] and parse_timeline("junk\nvisit\tnot-a-time\t") == []


@given(name=st.text(max_size=300), product=st.text(min_size=1, max_size=200))
def test_a_timeline_line_is_one_short_line_whatever_the_event(name: str, product: str) -> None:
    event = parse_event({"event_id": "e", "type": "product_view", "client_id": "c",
                         "event_time": T0, "received_at": T0, "name": name or None,
                         "products": [{"product_id": product}]})
    line = timeline_entry(event)
    assert line is not None and SEPARATOR not in line
    [entry] = parse_timeline(line)
    assert entry.type == "product_view" and entry.at == T0
    assert len(entry.summary) <= MAX_SUMMARY


def _buyer(orders: int, last: float) -> ClientState:
    records = tuple(OrderRecord(f"o{n}", last - n * 86400, 50.0) for n in reversed(range(orders)))
    return ClientState(first_seen_at=last - orders * 86400, last_seen_at=last, updated_at=last,
                       orders=records, orders_count=orders, monetary_total=50.0 * orders,
                       last_order_at=last)


def test_a_buyer_is_filed_in_one_map_cell_beside_its_rfm_segment() -> None:
    model = RfmModel("quantile", T0, 3, (T0 - 10, T0 - 5, T0 - 2, T0 - 1), (2, 3, 4, 5),
                     (100, 200, 300, 400))
    rules = SegmentRules(rfm_model=model)
    state = segments.resegment(_buyer(2, T0), T0, rules)
    names = [name for name, _ in state.segments]
    assert "rfm-cell:r5f2" in names and any(n.startswith("rfm:") for n in names)
    assert all(segments.is_public(n) for n, _ in segments.public_segments(state))
    assert segments.rfm_cell_names()[0] == "rfm-cell:r1f1" and len(
        segments.rfm_cell_names()) == 25
    # a new model moves the cell and keeps the rest, entry times included
    moved = RfmModel("quantile", T0 + 5, 3, (T0 + 1, T0 + 2, T0 + 3, T0 + 4), (1, 2, 3, 4),
                     (100, 200, 300, 400))
    refiled = segments.refile_rfm(state, T0 + 5, SegmentRules(rfm_model=moved))
    cells = [n for n, _ in refiled.segments if n.startswith(segments.RFM_CELL_PREFIX)]
    assert cells == ["rfm-cell:r1f3"]
    kept = dict(refiled.segments)
    assert all(kept[n] == at for n, at in state.segments if n in kept)
    assert segments.refile_rfm(refiled, T0 + 6, SegmentRules(rfm_model=moved)) is refiled


def test_size_history_keeps_its_retention(redis_url: str, key_prefix: str) -> None:
    layout = KeyLayout(key_prefix, 2, 8)

    async def scenario() -> list[tuple[int, int]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            for day, size in enumerate([5, 6, 7, 8]):
                await console_store.record_sizes(
                    client, layout, T0 + day * 86400, {("lifecycle:new", None): size,
                                                       ("lifecycle:new", "leeds"): 1},
                    3600, 2.5 * 86400)
            # a second record in the same hour overwrites the hour's size
            await console_store.record_sizes(client, layout, T0 + 3 * 86400 + 60,
                                             {("lifecycle:new", None): 9}, 3600, 2.5 * 86400)
            return await console_store.size_history(client, layout, "lifecycle:new", None, 0)
        finally:
            await client.aclose()

    history = asyncio.run(scenario())
    hour = int((T0 + 86400) // 3600 * 3600)
    assert history == [(hour, 6), (hour + 86400, 7), (hour + 2 * 86400, 9)]


def test_a_points_lookup_reads_a_bounded_part_of_the_index(redis_url: str,
                                                            key_prefix: str) -> None:
    """A point's key typing a prefix nearly every client shares ("+4420") must not walk the
    whole index when few of the matches are its own: it reads about LOOKUP_SCAN entries and
    says the answer is not complete; a longer prefix still finds its client."""
    layout = KeyLayout(key_prefix, 4, 16)
    others = [f"other{n:05d}" for n in range(20 * console_store.LOOKUP_SCAN)]

    async def scenario() -> tuple[console_store.Found, int, console_store.Found,
                                  console_store.Found]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            async with client.pipeline(transaction=False) as pipe:
                for n, other in enumerate(others):
                    pipe.zadd(layout.lookup(layout.partition_of_client(other)),
                              {lookup_member(f"phone:+4420{n:08d}", other): 0})
                pipe.zadd(layout.lookup(layout.partition_of_client("mine")),
                          {lookup_member("phone:+442099999999", "mine"): 0})
                await pipe.execute()
            offered: list[console_store.Match] = []

            async def ours(matches: list[console_store.Match]) -> list[console_store.Match]:
                offered.extend(matches)
                return [m for m in matches if m.client_id == "mine"]

            broad = await console_store.lookup(client, layout, ["phone:+4420"], 20, ours)
            read = len(offered)
            exact = await console_store.lookup(client, layout, ["phone:+44209999"], 20, ours)
            everyone = await console_store.lookup(client, layout, ["phone:+4420"], 20)
            return broad, read, exact, everyone
        finally:
            await client.aclose()

    broad, read, exact, everyone = asyncio.run(scenario())
    assert read <= console_store.LOOKUP_SCAN + 4 * 20  # at most one round past the budget
    assert broad.matches == [] and not broad.complete
    assert [m.client_id for m in exact.matches] == ["mine"] and exact.complete
    assert [m.client_id for m in everyone.matches] == others[:20] and everyone.complete


def test_the_rules_table_shows_each_triggers_hold_out_as_the_policy_applies_it() -> None:
    """Transactional triggers are never held out, whatever the policy's default; the others
    show the share that applies to them, their own or the policy's."""
    settings = Settings(policy={"holdout_percent": 10},
                        triggers={"welcome": {"holdout_percent": 25}})
    triggers = rules_sections(settings)[0]
    column = triggers["columns"].index("holdout")
    holdout = {row[0]: row[column] for row in triggers["rows"]}
    for transactional in TRANSACTIONAL:
        assert holdout[transactional] == "none (transactional)"
    assert holdout["welcome"] == "25%"
    assert holdout["abandoned_cart"] == "10% (policy default)"
    rules = settings.trigger_rules()
    for name, shown in holdout.items():
        assert shown.startswith("none" if name in TRANSACTIONAL
                                else f"{rules.holdout_percent(name):g}%")


def test_the_rules_table_tells_the_follow_ups_in_words() -> None:
    def shown(settings: Settings) -> str:
        return dict(rules_sections(settings)[1]["rows"])["follow_up"]

    assert shown(Settings()) == "off"
    assert shown(Settings(policy={"follow_up": {"types": ["abandoned_cart", "birthday"],
                                                "after": "36h", "max": 2}})) == (
        "abandoned_cart, birthday: up to 2 times, 36h after the send, on a channel not "
        "yet tried, unless opened")
