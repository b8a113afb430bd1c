"""The console's reads over real HTTP, on state the real dataflow built from posted events:
the RFM map and its cells' members, point-scoped reads (a manager's key sees its point's
clients everywhere), client lookup by email or phone, the timeline of events and touches,
per-minute activity, segment size history, CSV download, the rules, and the page itself."""

from __future__ import annotations

import csv
import io
import time
import uuid
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis

from api.routes.segments import spreadsheet_safe
from config.settings import Settings
from sinks.keys import KeyLayout
from tests.support import (
    ADMIN_KEY,
    READ_KEY,
    WRITE_KEY,
    api_server,
    drain,
    make_settings,
    post_events,
    wait_for,
)
from tests.test_segments_http import FREQUENCY, MONETARY, RECENCY_DAYS, Client, events_of, roster

LEEDS_KEY = "rk-point-leeds-0001"
YORK_KEY = "rk-point-york-0002"
TIMELINE = 5
DAY = 86400.0

# traits of some roster clients: (point, email, phone)
TRAITS: dict[str, tuple[str | None, str | None, str | None]] = {
    "n00": ("leeds", "Ann.Smith@Example.com ", "+44 20 7946-0958"),
    "n01": ("leeds", "bob@example.com", "020 7946 0000"),
    "r01": ("leeds", "ann.smith@example.org", None),
    "r02": ("york", "carol@example.net", "+1 (555) 010-9999"),
    "a00": ("york", None, None),
    "l02": ("york", "dave@example.com", None),
    "h01": (None, "erin@example.com", None),
}


def cell_of(c: Client) -> tuple[int, int] | None:
    """The (R, F) cell under the fixed thresholds, from what was posted."""
    if not c.orders:
        return None
    idle = min(days for days, _ in c.orders)
    return 1 + sum(1 for days in RECENCY_DAYS if idle <= days), 1 + bisect_right(
        FREQUENCY, len(c.orders))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class World:
    url: str
    settings: Settings
    layout: KeyLayout
    clients: list[Client]

    def get(self, path: str, key: str = READ_KEY, **params: Any) -> Any:
        response = httpx.get(self.url + path, params=params, headers=auth(key), timeout=10)
        assert response.status_code == 200, (path, response.text)
        return response.json()


def identify_events(now: float) -> list[dict[str, Any]]:
    events = []
    for client_id, (point, email, phone) in TRAITS.items():
        traits = {name: value for name, value in
                  (("point_id", point), ("email", email), ("phone", phone)) if value}
        events.append({"event_id": f"id-{client_id}", "type": "identify",
                       "client_id": client_id, "event_time": now - 400 * DAY,
                       "traits": traits})
    return events


def browsing(now: float) -> list[dict[str, Any]]:
    """Seven product views of n00 in its last day: more than the timeline keeps."""
    return [{"event_id": f"view-n00-{k}", "type": "product_view", "client_id": "n00",
             "event_time": now - DAY + 60 * k,
             "products": [{"product_id": f"sku-{k}", "category": "tea"}]}
            for k in range(7)]


def settings_for(redis_url: str) -> Settings:
    return make_settings(
        redis_url, f"t{uuid.uuid4().hex[:12]}",
        rfm={"mode": "fixed", "fixed": {"recency_days": list(RECENCY_DAYS),
                                        "frequency": list(FREQUENCY),
                                        "monetary": list(MONETARY)}},
        api={"point_read_keys": {LEEDS_KEY: "leeds", YORK_KEY: "york"}},
        console={"timeline_events": TIMELINE})


@pytest.fixture(scope="module")
def world(redis_url: str) -> Iterator[World]:
    settings = settings_for(redis_url)
    now = time.time()
    clients = roster()
    with api_server(settings) as url:
        events = identify_events(now) + events_of(clients, now) + browsing(now)
        response = post_events(url, events)
        assert response.status_code == 200 and response.json()["rejected"] == []
        drain(settings)
        yield World(url, settings, KeyLayout.from_settings(settings), clients)


def point_of(client_id: str) -> str | None:
    return TRAITS.get(client_id, (None, None, None))[0]


# --- the RFM map --------------------------------------------------------------------------------

def test_the_rfm_map_counts_the_cells_the_profiles_are_in(world: World) -> None:
    expected = Counter(cell for c in world.clients if (cell := cell_of(c)) is not None)
    assert len(expected) >= 6  # the roster spreads over the grid
    body = world.get("/v1/rfm/map")
    cells = {(cell["r"], cell["f"]): cell for cell in body["cells"]}
    assert sorted(cells) == [(r, f) for r in range(1, 6) for f in range(1, 6)]
    assert {rf: cell["clients"] for rf, cell in cells.items() if cell["clients"]} == expected
    assert body["clients"] == sum(expected.values())
    assert body["model"]["mode"] == "fixed"
    # the same counts from the profiles' own RFM scores
    ids = ",".join(c.client_id for c in world.clients)
    profiles = world.get("/v1/profiles", ids=ids)["profiles"]
    from_profiles = Counter((p["rfm"]["r"], p["rfm"]["f"]) for p in profiles if p["rfm"])
    assert from_profiles == expected
    # no cell is a segment of the API
    assert not any(s["segment"].startswith("rfm-cell") for p in profiles for s in p["segments"])
    assert not any(s["name"].startswith("rfm-cell") for s in world.get("/v1/segments")[
        "segments"])


def test_cells_leave_no_record_in_the_segment_changes(world: World,
                                                     redis_client: redis.Redis) -> None:
    changes = [fields[b"segment"].decode() for p in range(world.layout.partitions)
               for _, fields in redis_client.xrange(world.layout.segment_changes(p))]
    assert any(name.startswith("rfm:") for name in changes)
    assert not any(name.startswith("rfm-cell") for name in changes)


def test_a_cell_lists_its_clients_and_their_average_money(world: World) -> None:
    by_cell: dict[tuple[int, int], list[Client]] = {}
    for c in world.clients:
        cell = cell_of(c)
        if cell is not None:
            by_cell.setdefault(cell, []).append(c)
    cells = {(cell["r"], cell["f"]): cell for cell in world.get("/v1/rfm/map")["cells"]}
    for (r, f), members in by_cell.items():
        listed: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = world.get(f"/v1/rfm/map/cells/{r}/{f}/members", **params)
            listed += page["members"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(listed) == sorted(c.client_id for c in members)
        money = [sum(total for _, total in c.orders) for c in members]
        cell = cells[(r, f)]
        assert cell["money_exact"] and cell["money_sample"] == len(members)
        assert cell["average_money"] == pytest.approx(sum(money) / len(money), abs=0.01)
    empty = next(rf for rf, cell in cells.items() if not cell["clients"])
    assert cells[empty]["average_money"] is None
    assert world.get(f"/v1/rfm/map/cells/{empty[0]}/{empty[1]}/members")["members"] == []
    bad = httpx.get(world.url + "/v1/rfm/map/cells/6/1/members", headers=auth(READ_KEY))
    assert bad.status_code == 422


# --- a point's key -------------------------------------------------------------------------------

def test_a_point_key_sees_its_clients_everywhere(world: World) -> None:
    leeds = {cid for cid, traits in TRAITS.items() if traits[0] == "leeds"}
    assert world.get("/v1/me", LEEDS_KEY) == {"scope": "point", "point": "leeds",
                                              "can_record_touches": True}
    assert world.get("/v1/me") == {"scope": "read", "point": None,
                                   "can_record_touches": False}
    assert world.get("/v1/me", ADMIN_KEY)["can_record_touches"] is True
    expected = Counter(cell_of(c) for c in world.clients
                       if c.client_id in leeds and cell_of(c) is not None)
    leeds_map = world.get("/v1/rfm/map", LEEDS_KEY)
    cells = leeds_map["cells"]
    assert {(c["r"], c["f"]): c["clients"] for c in cells if c["clients"]} == expected
    # the model's population counts every point's buyers: not a point's to see
    assert leeds_map["model"]["population"] is None
    assert isinstance(world.get("/v1/rfm/map")["model"]["population"], int)
    sizes = {s["name"]: s["size"] for s in world.get("/v1/segments", LEEDS_KEY)["segments"]}
    assert sum(size for name, size in sizes.items() if name.startswith("lifecycle:")) == len(
        leeds)
    for name, size in sizes.items():
        members = world.get(f"/v1/segments/{name}/members", LEEDS_KEY, limit=1000)["members"]
        assert len(members) == size and set(members) <= leeds
    # lookup finds only the point's clients; the card of another point's client is unknown
    found = world.get("/v1/lookup", LEEDS_KEY, q="ann.smith@")["clients"]
    assert [c["client_id"] for c in found] == ["n00", "r01"]
    assert world.get("/v1/lookup", YORK_KEY, q="ann.smith@")["clients"] == []
    york_client = httpx.get(world.url + "/v1/profiles/r02/timeline", headers=auth(LEEDS_KEY))
    assert york_client.status_code == 404
    touch = httpx.post(world.url + "/v1/profiles/r02/touches", headers=auth(LEEDS_KEY),
                       json={"occasion": "call", "status": "done"})
    assert touch.status_code == 404
    read_only = httpx.post(world.url + "/v1/profiles/n00/touches", headers=auth(READ_KEY),
                           json={"occasion": "call", "status": "done"})
    assert read_only.status_code == 403 and "admin key" in read_only.json()["detail"]


def test_a_client_who_changes_point_moves_with_its_memberships(redis_url: str) -> None:
    settings = settings_for(redis_url)
    now = time.time()
    with api_server(settings) as url:
        def sizes(key: str) -> dict[str, int]:
            listing = httpx.get(url + "/v1/segments", headers=auth(key), timeout=10).json()
            return {s["name"]: s["size"] for s in listing["segments"] if s["size"]}

        first = [{"event_id": "reg", "type": "registered", "client_id": "zoe",
                  "event_time": now - 3 * DAY, "traits": {"point_id": "leeds"}},
                 {"event_id": "o1", "type": "order_placed", "client_id": "zoe",
                  "event_time": now - 2 * DAY, "order": {"order_id": "o1", "total": 50}}]
        assert post_events(url, first).status_code == 200
        drain(settings)
        assert sizes(LEEDS_KEY) == {"lifecycle:new": 1, "rfm:new": 1}
        assert sizes(YORK_KEY) == {}
        moved = [{"event_id": "move", "type": "identify", "client_id": "zoe",
                  "event_time": now - DAY, "traits": {"point_id": "york"}}]
        assert post_events(url, moved).status_code == 200
        drain(settings)
        assert sizes(LEEDS_KEY) == {}
        assert sizes(YORK_KEY) == {"lifecycle:new": 1, "rfm:new": 1}
        assert httpx.get(url + "/v1/rfm/map/cells/5/1/members",
                         headers=auth(YORK_KEY)).json()["members"] == ["zoe"]


# --- lookup, timeline, touches ------------------------------------------------------------

@pytest.mark.parametrize(("query", "expected"), [
    ("ann.smith@example.com", [("n00", "email")]),
    ("  ANN.SMITH@EXAMPLE.COM ", [("n00", "email")]),
    ("ann.smith@", [("n00", "email"), ("r01", "email")]),
    ("+44 (20) 7946 0958", [("n00", "phone")]),
    ("+442079460958", [("n00", "phone")]),
    ("020 7946", [("n01", "phone")]),
    ("555-010", []),  # a phone is found from its start, not its middle
    ("+1 555 010 9999", [("r02", "phone")]),
    ("r02", [("r02", "client_id")]),
    ("nobody@nowhere.example", []),
])
def test_lookup_by_id_email_or_phone(world: World, query: str,
                                     expected: list[tuple[str, str]]) -> None:
    found = world.get("/v1/lookup", q=query)["clients"]
    assert [(c["client_id"], c["matched"]) for c in found] == expected


def test_the_timeline_shows_the_last_events_and_every_touch(world: World) -> None:
    entries = world.get("/v1/profiles/n00/timeline")["entries"]
    events = [e for e in entries if e["kind"] == "event"]
    assert len(events) == TIMELINE  # the budget: the newest events only
    assert [e["summary"] for e in events] == [f"sku-{k} (tea)" for k in (6, 5, 4, 3, 2)]
    assert {e["type"] for e in events} == {"product_view"}
    times = [e["at"] for e in entries]
    assert times == sorted(times, reverse=True)
    touches = [e for e in entries if e["kind"] == "touch"]
    assert any(t["type"] == "order_confirmation" and t["status"] == "sent"
               and t["source"] == "auto" for t in touches)
    older = world.get("/v1/profiles/r02/timeline", limit=2)["entries"]
    assert len(older) == 2


def test_a_recorded_touch_appears_on_the_timeline(world: World) -> None:
    response = httpx.post(world.url + "/v1/profiles/n01/touches", headers=auth(LEEDS_KEY),
                          json={"occasion": "renewal_call", "channel": "phone",
                                "status": "done", "comment": "renews in March",
                                "author": "mia@example.com"}, timeout=10)
    assert response.status_code == 202, response.text
    touch_id = response.json()["touch_id"]
    drain(world.settings)
    entries = world.get("/v1/profiles/n01/timeline", LEEDS_KEY)["entries"]
    [touch] = [e for e in entries if e.get("trigger_id") == touch_id]
    assert (touch["source"], touch["status"], touch["author"], touch["comment"]) == (
        "manual", "done", "mia@example.com", "renews in March")
    assert touch["type"] == "renewal_call" and touch["channel"] == "phone"


# --- activity, size history, CSV, rules, the page -------------------------------------------------

def test_activity_counts_every_applied_event_and_sent_trigger(world: World,
                                                             redis_client: redis.Redis) -> None:
    minutes = world.get("/v1/activity", minutes=60)["minutes"]
    assert len(minutes) == 60
    assert [m["minute"] for m in minutes] == sorted(m["minute"] for m in minutes)
    events = Counter[str]()
    sent = Counter[str]()
    for minute in minutes:
        events.update(minute["events"])
        sent.update(minute["triggers"])
    posted = identify_events(0) + events_of(world.clients, 0) + browsing(0)
    assert events["product_view"] == 7
    assert events["order_placed"] == sum(len(c.orders) for c in world.clients)
    assert sum(events.values()) >= len(posted)  # plus the touches recorded meanwhile
    streams = Counter(entry["type"] for stream in world.layout.all_trigger_streams()
                      for _, fields in redis_client.xrange(stream)
                      if (entry := {k.decode(): v.decode() for k, v in fields.items()})[
                          "status"] == "sent")
    assert sent == streams
    leeds = Counter[str]()
    for minute in world.get("/v1/activity", LEEDS_KEY, minutes=60)["minutes"]:
        leeds.update(minute["events"])
    assert leeds["product_view"] == 7 and leeds["identify"] == 3


def test_segment_sizes_are_recorded_and_served_as_history(world: World) -> None:
    import asyncio

    from api.app import create_app
    from api.size_history import record_once

    app = create_app(world.settings)

    async def record() -> int:
        async with app.router.lifespan_context(app):
            resources = app.state.resources
            now = time.time()
            await record_once(resources, now - 2 * 86400)
            return await record_once(resources, now)

    assert asyncio.run(record()) > 0
    points = world.get("/v1/segments/lifecycle:repeat/history", days=14)["points"]
    assert len(points) >= 2 and points[-1]["size"] == points[0]["size"] > 0
    leeds = world.get("/v1/segments/lifecycle:new/history", LEEDS_KEY)["points"]
    assert leeds[-1]["size"] == 2  # n00 and n01
    assert world.get("/v1/segments/lifecycle:new/history", days=1)["points"][0]["at"] == \
        points[-1]["at"]


def test_members_download_as_csv(world: World) -> None:
    response = httpx.get(world.url + "/v1/segments/lifecycle:new/members.csv",
                         headers=auth(READ_KEY), timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "lifecycle-new.csv" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    listed = world.get("/v1/segments/lifecycle:new/members", limit=1000)["members"]
    assert rows == [["client_id"], *([member] for member in listed)]
    leeds = httpx.get(world.url + "/v1/segments/lifecycle:new/members.csv",
                      headers=auth(LEEDS_KEY), timeout=10).text.split()
    assert leeds == ["client_id", "n00", "n01"] or sorted(leeds[1:]) == ["n00", "n01"]
    unknown = httpx.get(world.url + "/v1/segments/nope/members.csv", headers=auth(READ_KEY))
    assert unknown.status_code == 404


@pytest.mark.parametrize(("member", "written"), [
    ("=HYPERLINK(\"http://evil\",\"x\")", "'=HYPERLINK(\"http://evil\",\"x\")"),
    ("@SUM(A1)", "'@SUM(A1)"), ("+A1+B1", "'+A1+B1"), ("-cmd", "'-cmd"),
    ("\tx", "'\tx"), ("+441234567", "+441234567"), ("-5", "-5"), ("ann", "ann"),
    ("+44 20 7946 0958", "+44 20 7946 0958"), ("+1 (555) 010-0199", "+1 (555) 010-0199"),
    ("-2.5", "-2.5"), ("+1 555 SUM(A1)", "'+1 555 SUM(A1)"), ("+ ()", "'+ ()"), ("", "")])
def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted(member: str,
                                                                  written: str) -> None:
    assert spreadsheet_safe(member) == written


def test_the_rules_are_served_as_readable_tables(world: World) -> None:
    sections = {s["title"]: s for s in world.get("/v1/rules")["sections"]}
    assert {"Triggers", "Contact policy", "Lifecycle", "RFM"} <= set(sections)
    triggers = {row[0]: row for row in sections["Triggers"]["rows"]}
    assert triggers["abandoned_cart"][1:3] == [True, "1h"]
    assert len(triggers) == len(world.settings.triggers.model_dump())
    rfm = dict(sections["RFM"]["rows"])
    assert rfm["mode"] == "fixed"


def test_the_console_page_and_assets_are_served_with_a_strict_policy(world: World) -> None:
    page = httpx.get(world.url + "/console", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "/console/static/console.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    script = httpx.get(world.url + "/console/static/console.js", timeout=10)
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    for bad in ("..%2Fapp.py", "nope.js", ".hidden.css"):
        assert httpx.get(world.url + f"/console/static/{bad}").status_code == 404
    # the page holds no data: every read needs a key
    assert httpx.get(world.url + "/v1/rfm/map").status_code == 401
    assert httpx.get(world.url + "/v1/me", headers=auth(WRITE_KEY)).status_code == 403


def test_an_erased_client_leaves_the_lookup_timeline_and_point_sets(redis_url: str) -> None:
    settings = settings_for(redis_url)
    now = time.time()
    with api_server(settings) as url:
        events = [{"event_id": "reg", "type": "registered", "client_id": "gus",
                   "event_time": now - 2 * DAY,
                   "traits": {"point_id": "leeds", "email": "gus@example.com"}},
                  {"event_id": "o1", "type": "order_placed", "client_id": "gus",
                   "event_time": now - DAY, "order": {"order_id": "o1", "total": 20}}]
        assert post_events(url, events).status_code == 200
        drain(settings)
        lookup = httpx.get(url + "/v1/lookup", params={"q": "gus@"}, headers=auth(LEEDS_KEY))
        assert [c["client_id"] for c in lookup.json()["clients"]] == ["gus"]
        erased = httpx.delete(url + "/v1/profiles/gus", params={"wait": 0},
                              headers=auth(ADMIN_KEY), timeout=10)
        assert erased.status_code == 202, erased.text
        drain(settings)
        wait_for(lambda: httpx.get(url + "/v1/lookup", params={"q": "gus@"},
                                   headers=auth(READ_KEY)).json()["clients"] == [],
                 10, "the erased client left the lookup index")
        layout = KeyLayout.from_settings(settings)
        client = redis.Redis.from_url(redis_url)
        leftovers = [key for p in range(layout.partitions)
                     for key in client.scan_iter(f"{settings.redis.key_prefix}:{{p{p}}}:point:*")
                     if client.zcard(key)]
        assert leftovers == []
        assert client.hget(layout.timeline(layout.bucket_of("gus")), "gus") is None
        assert httpx.get(url + "/v1/rfm/map", headers=auth(LEEDS_KEY)).json()["clients"] == 0


def test_a_points_lookup_is_limited_after_other_points_are_left_out(redis_url: str) -> None:
    """Other points' matches sorting first must not use up a point key's limit."""
    settings = make_settings(redis_url, f"t{uuid.uuid4().hex[:12]}",
                             api={"point_read_keys": {LEEDS_KEY: "leeds", YORK_KEY: "york"}})
    now = time.time()
    york = [f"y{n}" for n in range(12)]  # their emails sort before every leeds email
    leeds = ["l0", "l1", "l2"]
    events = [{"event_id": f"id-{cid}", "type": "identify", "client_id": cid,
               "event_time": now - 60,
               "traits": {"point_id": point, "email": f"aa{rank:02d}@x.example"}}
              for rank, (cid, point) in enumerate([(c, "york") for c in york]
                                                  + [(c, "leeds") for c in leeds])]
    with api_server(settings) as url:
        assert post_events(url, events).json()["rejected"] == []
        drain(settings)

        def found(key: str, limit: int) -> list[str]:
            response = httpx.get(url + "/v1/lookup", params={"q": "aa", "limit": limit},
                                 headers=auth(key))
            assert response.status_code == 200, response.text
            assert response.json()["complete"] is True  # a few entries: all were read
            return [c["client_id"] for c in response.json()["clients"]]

        assert found(LEEDS_KEY, 1) == ["l0"]
        assert found(LEEDS_KEY, 2) == ["l0", "l1"]
        assert found(LEEDS_KEY, 20) == leeds
        assert found(YORK_KEY, 3) == york[:3]
        assert found(ADMIN_KEY, 3) == york[:3]
