"""Segment reads over HTTP, on memberships the real dataflow built from events posted through
the ingest API: sizes, member paging (also while members come and go), membership checks,
a client's segments, batched profile reads, and the segment-changes stream."""

from __future__ import annotations

import base64
import time
import uuid
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
import redis

from config.settings import Settings
from features.events import format_time
from features.rfm import RFM_SEGMENTS, SEGMENT_GRID
from sinks import rfm_index
from sinks.keys import KeyLayout
from sinks.segment_store import MAX_CURSOR_LENGTH, encode_cursor
from tests.support import WRITE_KEY, api_server, drain, make_settings, post_events, read_headers

DAY = 86400.0
LIFECYCLE = ["lifecycle:prospect", "lifecycle:new", "lifecycle:repeat", "lifecycle:loyal",
             "lifecycle:at_risk", "lifecycle:churned"]
RFM = [f"rfm:{slug}" for slug, _ in RFM_SEGMENTS]
# rfm.mode fixed with these thresholds (the defaults, spelled out so the expectations below
# do not depend on them silently)
RECENCY_DAYS = (365.0, 180.0, 90.0, 30.0)
FREQUENCY = (2.0, 3.0, 5.0, 10.0)
MONETARY = (100.0, 250.0, 500.0, 1000.0)
BIG = 100.0  # segments: big: monetary_total >= 100


def segment_settings(redis_url: str, prefix: str) -> Settings:
    return make_settings(
        redis_url, prefix,
        rfm={"mode": "fixed", "fixed": {"recency_days": list(RECENCY_DAYS),
                                        "frequency": list(FREQUENCY),
                                        "monetary": list(MONETARY)}},
        segments={"big": {"rule": "monetary_total >= 100"}})


# --- what was posted, and what it must produce -------------------------------------------------

@dataclass
class Client:
    client_id: str
    registered_days_ago: float | None = None
    visit_days_ago: float | None = None
    orders: list[tuple[float, float]] = field(default_factory=list)  # (days ago, total)


def roster() -> list[Client]:
    """31 clients: prospects, new, repeat, loyal, at risk, churned and one plain visitor.
    Ids mix case, a colon and a non-ASCII letter, so lexical paging meets them all."""
    clients = [Client(cid, registered_days_ago=10 + i)
               for i, cid in enumerate(["p01", "p02", "p03", "Zed", "p05"])]
    for i, total in enumerate([20, 50, 99.99, 100, 150, 30, 260, 10]):
        cid = "x:colon" if i == 2 else f"n{i:02d}"
        clients.append(Client(cid, registered_days_ago=40, orders=[(5 + i, total)]))
    repeat_orders: list[list[tuple[float, float]]] = [
        [(60, 40), (20, 70)], [(60, 10), (3, 15)], [(50, 200), (25, 200), (2, 200)],
        [(80, 5), (40, 5), (10, 5)], [(45, 120), (15, 30)], [(35, 600), (33, 600)],
        [(89, 20), (31, 20)]]
    for i, orders in enumerate(repeat_orders):
        clients.append(Client("café-1" if i == 0 else f"r{i:02d}", orders=orders))
    at_risk: list[list[tuple[float, float]]] = [
        [(100, 30)], [(150, 60), (100, 60)], [(100, 500)], [(130, 10), (120, 10), (100, 10)],
        [(100, 1200)]]
    clients += [Client(f"a{i:02d}", orders=orders) for i, orders in enumerate(at_risk)]
    clients.append(Client("l01", orders=[(300, 100), (200, 100), (120, 100), (40, 100)]))
    clients.append(Client("l02", orders=[(40, 400), (30, 300), (20, 200), (1, 100)]))
    clients.append(Client("h01", orders=[(200, 80)]))
    clients.append(Client("h02", registered_days_ago=200))
    clients.append(Client("v01", visit_days_ago=3))
    return clients


def events_of(clients: list[Client], now: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for c in clients:
        if c.registered_days_ago is not None:
            events.append({"event_id": f"reg-{c.client_id}", "type": "registered",
                           "client_id": c.client_id,
                           "event_time": now - c.registered_days_ago * DAY})
        if c.visit_days_ago is not None:
            events.append({"event_id": f"visit-{c.client_id}", "type": "visit",
                           "client_id": c.client_id, "event_time": now - c.visit_days_ago * DAY})
        for j, (days, total) in enumerate(c.orders):
            events.append({"event_id": f"order-{c.client_id}-{j}", "type": "order_placed",
                           "client_id": c.client_id, "event_time": now - days * DAY,
                           "order": {"order_id": f"{c.client_id}-{j}", "total": total}})
    return events


def stage(c: Client) -> str | None:
    """The lifecycle segment (default thresholds: at risk 90 d, churned 180 d, loyal 4
    orders within 365 d), computed here from what was posted."""
    if not c.orders:
        if c.registered_days_ago is None:
            return None  # a visitor: no segment
        return "lifecycle:churned" if c.registered_days_ago >= 180 else "lifecycle:prospect"
    idle = min(days for days, _ in c.orders)
    if idle >= 180:
        return "lifecycle:churned"
    if idle >= 90:
        return "lifecycle:at_risk"
    if sum(1 for days, _ in c.orders if days < 365) >= 4:
        return "lifecycle:loyal"
    return "lifecycle:new" if len(c.orders) == 1 else "lifecycle:repeat"


def stage_entered_at(c: Client, now: float) -> float:
    """When the client entered its current lifecycle segment."""
    name = stage(c)
    if not c.orders:
        assert c.registered_days_ago is not None
        start = now - c.registered_days_ago * DAY
        return start + 180 * DAY if name == "lifecycle:churned" else start
    last = now - min(days for days, _ in c.orders) * DAY
    if name == "lifecycle:churned":
        return last + 180 * DAY
    if name == "lifecycle:at_risk":
        return last + 90 * DAY
    times = sorted(now - days * DAY for days, _ in c.orders)
    if name == "lifecycle:loyal":
        return times[3]
    return times[1] if name == "lifecycle:repeat" else times[0]


def rfm_of(c: Client) -> str | None:
    if not c.orders:
        return None
    idle = min(days for days, _ in c.orders)
    r = 1 + sum(1 for days in RECENCY_DAYS if idle <= days)
    f = 1 + bisect_right(FREQUENCY, len(c.orders))
    m = 1 + bisect_right(MONETARY, round(sum(total for _, total in c.orders), 2))
    return "rfm:" + SEGMENT_GRID[(r, (f + m + 1) // 2)]


def expected_memberships(clients: list[Client]) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {name: set() for name in [*LIFECYCLE, *RFM, "big"]}
    for c in clients:
        for name in (stage(c), rfm_of(c)):
            if name is not None:
                members[name].add(c.client_id)
        if sum(total for _, total in c.orders) >= BIG:
            members["big"].add(c.client_id)
    return members


def stable_order(layout: KeyLayout, members: set[str]) -> list[str]:
    """The documented paging order: partition by partition, lexical (bytes) within one."""
    return sorted(members, key=lambda m: (layout.partition_of_client(m), m.encode()))


# --- HTTP helpers ------------------------------------------------------------------------------

def get(url: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(url + path, params=params, headers=read_headers(), timeout=10)


def walk(url: str, name: str, limit: int) -> list[list[str]]:
    """Every page of a segment's members, following next_cursor until null."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        response = get(url, f"/v1/segments/{name}/members", **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["segment"] == name
        assert len(body["members"]) <= limit
        pages.append(body["members"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "paging does not end"


def contains(url: str, name: str, ids: list[str], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/segments/{name}/contains", json={"client_ids": ids},
                      **{"headers": read_headers(), "timeout": 10, **kwargs})


@dataclass
class World:
    url: str
    settings: Settings
    layout: KeyLayout
    now: float
    clients: list[Client]
    expected: dict[str, set[str]]

    def client(self, client_id: str) -> Client:
        return next(c for c in self.clients if c.client_id == client_id)


@pytest.fixture(scope="module")
def world(redis_url: str) -> Iterator[World]:
    settings = segment_settings(redis_url, f"t{uuid.uuid4().hex[:12]}")
    now = time.time()
    clients = roster()
    with api_server(settings) as url:
        response = post_events(url, events_of(clients, now))
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == []
        drain(settings)
        yield World(url, settings, KeyLayout.from_settings(settings), now, clients,
                    expected_memberships(clients))


# --- tests -------------------------------------------------------------------------------------

def test_the_roster_covers_the_stages() -> None:
    """Guards the test data itself: every lifecycle segment and several RFM cells occur."""
    expected = expected_memberships(roster())
    assert all(expected[name] for name in LIFECYCLE)
    assert len([name for name in RFM if expected[name]]) >= 6
    assert 0 < len(expected["big"]) < len(roster())


def test_list_gives_every_segment_with_its_size(world: World) -> None:
    response = get(world.url, "/v1/segments")
    assert response.status_code == 200, response.text
    listed = response.json()["segments"]
    names = [entry["name"] for entry in listed]
    assert sorted(names) == sorted([*LIFECYCLE, *RFM, "big"])
    assert len(names) == len(set(names))
    sizes = {entry["name"]: entry["size"] for entry in listed}
    assert sizes == {name: len(members) for name, members in world.expected.items()}
    kinds = {entry["name"]: entry["kind"] for entry in listed}
    assert {kinds[n] for n in LIFECYCLE} == {"lifecycle"}
    assert {kinds[n] for n in RFM} == {"rfm"} and kinds["big"] == "rule"
    titles = {entry["name"]: entry.get("title") for entry in listed}
    assert titles["rfm:cant_lose_them"] == "Can't Lose Them"


@pytest.mark.parametrize("name", ["lifecycle:new", "lifecycle:repeat", "lifecycle:prospect",
                                  "lifecycle:at_risk", "big", "rfm:at_risk"])
def test_paging_walks_every_member_once_in_a_stable_order(world: World, name: str) -> None:
    pages = walk(world.url, name, limit=3)
    walked = [member for page in pages for member in page]
    assert len(walked) == len(set(walked))
    assert set(walked) == world.expected[name]
    assert walked == stable_order(world.layout, world.expected[name])
    assert all(len(page) == 3 for page in pages[:-1])
    # the same walk with one big page
    assert walk(world.url, name, limit=1000) == [walked]
    # a page that ends on the last member is the last: no cursor to an empty page
    assert walk(world.url, name, limit=max(len(walked), 1)) == [walked]
    for limit in (n for n in (1, 2, 3) if walked and len(walked) % n == 0):
        assert walk(world.url, name, limit=limit)[-1] != [], limit


def test_an_empty_segment_has_one_empty_page(world: World) -> None:
    empty = next(name for name in RFM if not world.expected[name])
    assert walk(world.url, empty, limit=3) == [[]]


def test_contains_checks_the_key_before_it_reads_the_body(world: World) -> None:
    """A body parameter is decoded before any dependency runs: a stranger's malformed JSON
    got 422, not the 401 every keyed route answers."""
    path = f"{world.url}/v1/segments/lifecycle:new/contains"
    for headers, expected in (({}, 401), ({"Authorization": "Bearer nope"}, 401),
                              ({"Authorization": f"Bearer {WRITE_KEY}"}, 403),
                              (read_headers(), 422)):
        response = httpx.post(path, content=b"{not json", headers=headers, timeout=10)
        assert response.status_code == expected, (headers, response.text)
    bad = httpx.post(path, json={"client_ids": []}, headers=read_headers(), timeout=10)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "client_ids"]


def test_member_reads_refuse_bad_cursors_unknown_segments_and_missing_keys(
        world: World) -> None:
    path = "/v1/segments/lifecycle:new/members"
    for cursor in ["not a cursor!", "zzzz", base64.urlsafe_b64encode(b"99:n01").decode(),
                   base64.urlsafe_b64encode(b"0:").decode(),
                   base64.urlsafe_b64encode(b"x:n01").decode(), "é"]:
        response = get(world.url, path, cursor=cursor)
        assert response.status_code == 422, (cursor, response.text)
        assert "cursor" in response.json()["detail"], cursor
    assert get(world.url, path, limit=0).status_code == 422
    assert get(world.url, path, limit=1001).status_code == 422

    unknown = get(world.url, "/v1/segments/nope/members")
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["detail"]
    assert contains(world.url, "nope", ["n01"]).status_code == 404

    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}]:
        for target in [path, "/v1/segments", "/v1/segments/nope/members"]:
            response = httpx.get(world.url + target, headers=headers, timeout=10)
            assert response.status_code == 401, (target, headers)
        response = contains(world.url, "lifecycle:new", ["n01"], headers=headers)
        assert response.status_code == 401


def test_an_empty_cursor_means_the_first_page(world: World) -> None:
    path = "/v1/segments/lifecycle:new/members"
    first = get(world.url, path, limit=3)
    empty = get(world.url, path, cursor="", limit=3)
    assert empty.status_code == 200, empty.text
    assert empty.json() == first.json()
    cell = get(world.url, "/v1/rfm/map/cells/3/1/members", cursor="")
    assert cell.status_code == 200, cell.text
    assert cell.json() == get(world.url, "/v1/rfm/map/cells/3/1/members").json()


def test_cursors_after_the_longest_client_keys_are_accepted(world: World) -> None:
    """A page ending on a 200-character id of 3- or 4-byte characters gives a cursor of
    800 to 1,080 characters: the API takes back every cursor it can emit."""
    for member in ["中" * 200, "anon:" + "中" * 200, "anon:" + "\U0001F600" * 200]:
        cursor = encode_cursor(world.settings.dataflow.partitions - 1, member)
        assert len(cursor) <= MAX_CURSOR_LENGTH
        for path in ["/v1/segments/lifecycle:new/members", "/v1/rfm/map/cells/3/1/members"]:
            response = get(world.url, path, cursor=cursor)
            assert response.status_code == 200, (len(cursor), response.text)
            assert response.json()["next_cursor"] is None
    too_long = get(world.url, "/v1/segments/lifecycle:new/members",
                   cursor="A" * (MAX_CURSOR_LENGTH + 1))
    assert too_long.status_code == 422


def test_contains_returns_exactly_the_members_in_the_order_given(world: World) -> None:
    new = world.expected["lifecycle:new"]
    members = stable_order(world.layout, new)
    outsiders = sorted(world.expected["lifecycle:repeat"])[:3] + ["v01", "p01"]
    unknown = ["ghost-1", "ghost-2"]
    asked = [members[3], outsiders[0], unknown[0], members[0], outsiders[3], members[-1],
             unknown[1], members[3], outsiders[4], members[1]]
    response = contains(world.url, "lifecycle:new", asked)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["segment"] == "lifecycle:new"
    assert body["members"] == [members[3], members[0], members[-1], members[1]]
    assert body["checked"] == len(set(asked))

    everyone = [c.client_id for c in world.clients] + [f"ghost-{i}" for i in range(900)]
    for name, expected in world.expected.items():
        answer = contains(world.url, name, everyone).json()
        assert answer["members"] == [cid for cid in everyone if cid in expected], name

    too_many = [f"c{i}" for i in range(1001)]
    assert contains(world.url, "lifecycle:new", too_many).status_code == 422
    assert contains(world.url, "lifecycle:new", too_many[:1000]).status_code == 200
    assert contains(world.url, "lifecycle:new", []).status_code == 422


TIME_DRIVEN = ("lifecycle:at_risk", "lifecycle:churned")  # entered with no event


def test_a_profile_lists_its_segments_with_the_time_each_was_entered(world: World) -> None:
    for c in world.clients:
        response = get(world.url, f"/v1/profiles/{c.client_id}/segments")
        assert response.status_code == 200, (c.client_id, response.text)
        body = response.json()
        assert body["client_id"] == c.client_id
        listed = {entry["segment"]: entry["entered_at"] for entry in body["segments"]}
        wanted = {name for name, members in world.expected.items() if c.client_id in members}
        assert set(listed) == wanted, c.client_id
        assert all(isinstance(at, str) for at in listed.values())
        name = stage(c)
        if name is not None:
            expected_at = format_time(stage_entered_at(c, world.now))
            if name in TIME_DRIVEN and c.orders:
                # see test_time_driven_entries_keep_their_time_under_a_new_rfm_model
                assert expected_at is not None
                assert expected_at <= listed[name] <= str(format_time(time.time()))
            else:
                assert listed[name] == expected_at, (c.client_id, name)
        if "big" in listed:
            spent, crossed = 0.0, None
            for days, total in sorted(c.orders, reverse=True):
                spent += total
                if spent >= BIG and crossed is None:
                    crossed = world.now - days * DAY
            assert listed["big"] == format_time(crossed), c.client_id
        # the profile document carries the same memberships
        profile = get(world.url, f"/v1/profiles/{c.client_id}").json()
        assert {e["segment"]: e["entered_at"] for e in profile["segments"]} == listed
    assert get(world.url, "/v1/profiles/ghost/segments").status_code == 404


def at_risk_and_churned(redis_url: str, prefix: str, **sections: dict[str, Any]
                        ) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(entered_at reported, entered_at expected) of lifecycle:at_risk / churned buyers."""
    settings = make_settings(redis_url, prefix, **sections)
    now = time.time()
    clients = [Client("risky", orders=[(150, 60), (100, 60)]), Client("gone", orders=[(200, 5)])]
    with api_server(settings) as url:
        assert post_events(url, events_of(clients, now)).status_code == 200
        drain(settings)
        reported = {}
        for c in clients:
            listed = get(url, f"/v1/profiles/{c.client_id}/segments").json()["segments"]
            name = stage(c)
            reported[c.client_id] = next(e["entered_at"] for e in listed if e["segment"] == name)
    return reported, {c.client_id: format_time(stage_entered_at(c, now)) for c in clients}


def test_time_driven_entries_carry_the_time_they_became_due(redis_url: str,
                                                            key_prefix: str) -> None:
    """Without RFM, a buyer enters at_risk 90 d and churned 180 d after the last order, even
    when the dataflow only learns of it now (a backfill)."""
    reported, expected = at_risk_and_churned(redis_url, key_prefix, rfm={"enabled": False})
    assert reported == expected


def test_time_driven_entries_keep_their_time_under_a_new_rfm_model(
        redis_url: str, key_prefix: str) -> None:
    reported, expected = at_risk_and_churned(redis_url, key_prefix,
                                             rfm={"mode": "fixed"})
    assert reported == expected


def test_profiles_by_ids(world: World) -> None:
    response = get(world.url, "/v1/profiles", ids="n01,café-1,unknown")
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["client_id"] for p in body["profiles"]] == ["n01", "café-1"]
    assert body["missing"] == ["unknown"]
    features = {p["client_id"]: p["features"] for p in body["profiles"]}
    assert features["n01"]["orders_count"] == 1
    assert features["café-1"]["lifecycle_stage"] == "repeat"
    assert features["café-1"]["monetary_total"] == 110

    assert get(world.url, "/v1/profiles", ids=",".join(f"c{i}" for i in range(101)
                                                         )).status_code == 422
    hundred = get(world.url, "/v1/profiles", ids=",".join(f"c{i}" for i in range(100)))
    assert hundred.status_code == 200 and len(hundred.json()["missing"]) == 100
    assert get(world.url, "/v1/profiles", ids=" , ,").status_code == 422
    unauthorised = httpx.get(world.url + "/v1/profiles", params={"ids": "n01"}, timeout=10)
    assert unauthorised.status_code == 401


def test_the_changes_stream_records_every_entry(world: World,
                                                redis_client: redis.Redis) -> None:
    replayed: dict[str, set[str]] = {name: set() for name in world.expected}
    entered: dict[tuple[str, str], list[str]] = {}
    for partition in range(world.layout.partitions):
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       redis_client.xrange(world.layout.segment_changes(partition)))
        for _, raw in entries:
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            client_id, segment = fields["client_id"], fields["segment"]
            assert world.layout.partition_of_client(client_id) == partition
            assert fields["change"] in ("entered", "left"), fields
            if fields["change"] == "entered":
                assert client_id not in replayed[segment], fields
                replayed[segment].add(client_id)
                entered.setdefault((client_id, segment), []).append(fields["at"])
            else:
                replayed[segment].remove(client_id)
    # replaying the stream in order rebuilds exactly the member sets
    assert replayed == world.expected
    # and each current membership has its `entered` entry, at the time the profile reports
    for c in world.clients:
        listed = get(world.url, f"/v1/profiles/{c.client_id}/segments").json()["segments"]
        for entry in listed:
            times = entered[(c.client_id, entry["segment"])]
            assert times[-1] == entry["entered_at"], (c.client_id, entry)


def test_paging_stays_exact_while_members_come_and_go(
        redis_url: str, key_prefix: str) -> None:
    settings = segment_settings(redis_url, key_prefix)
    layout = KeyLayout.from_settings(settings)
    now = time.time()
    clients = [Client(f"m{i:02d}", orders=[(5, 20)]) for i in range(14)]
    with api_server(settings) as url:
        assert post_events(url, events_of(clients, now)).status_code == 200
        drain(settings)
        order = stable_order(layout, {c.client_id for c in clients})
        assert walk(url, "lifecycle:new", limit=1000) == [order]

        first = get(url, "/v1/segments/lifecycle:new/members", limit=3).json()
        assert first["members"] == order[:3]
        # between pages: one member already returned and two not yet returned move on to
        # repeat, and two clients become new (one sorting before the cursor, one after)
        leaving = [order[1], order[6], order[-1]]
        joining = ["m00a", "zz-new"]
        moves = [{"event_id": f"second-{cid}", "type": "order_placed", "client_id": cid,
                  "event_time": now - DAY, "order": {"order_id": f"{cid}-2", "total": 5}}
                 for cid in leaving]
        moves += events_of([Client(cid, orders=[(2, 20)]) for cid in joining], now)
        assert post_events(url, moves).status_code == 200
        drain(settings)
        assert get(url, "/v1/segments").json()["segments"][1] == {
            "name": "lifecycle:new", "kind": "lifecycle", "size": 14 - 3 + 2}

        walked = list(first["members"])
        cursor = first["next_cursor"]
        while cursor is not None:
            page = get(url, "/v1/segments/lifecycle:new/members", limit=3,
                       cursor=cursor).json()
            walked += page["members"]
            cursor = page["next_cursor"]

    throughout = [cid for cid in order if cid not in leaving]
    assert len(walked) == len(set(walked)), walked
    assert [cid for cid in walked if cid in throughout] == throughout
    assert order[6] not in walked and order[-1] not in walked  # gone before reached
    # a newcomer is returned exactly when it sorts after the cursor's position
    cursor_at = (layout.partition_of_client(order[2]), order[2].encode())
    for cid in joining:
        after = (layout.partition_of_client(cid), cid.encode()) > cursor_at
        assert (cid in walked) == after, cid


def test_rule_segments_on_rfm_features_follow_each_new_model(redis_url: str,
                                                             key_prefix: str) -> None:
    """A rule naming an RFM feature moves with the model the dataflow adopts, as the RFM
    segment does: its member set always equals what the clients' RFM scores say."""
    settings = make_settings(redis_url, key_prefix, segments={
        "vip": {"rule": 'rfm_segment == "champions"'}, "top_m": {"rule": "rfm_m >= 4"}})
    layout = KeyLayout.from_settings(settings)
    client = redis.Redis.from_url(redis_url)
    now = time.time()

    def buyers(prefix: str, count: int, total: float, days_ago: float) -> list[dict[str, Any]]:
        return [{"event_id": f"o-{prefix}{i}-{j}", "type": "order_placed",
                 "client_id": f"{prefix}{i}", "event_time": now - (days_ago - j) * DAY,
                 "order": {"order_id": f"{prefix}{i}-{j}", "total": total}}
                for i in range(count) for j in range(3 if total > 100 else 1)]

    def members(name: str) -> set[str]:
        return {m.decode() for p in range(layout.partitions)
                for m in client.zrange(layout.segment_members(p, name), 0, -1)}

    def adopt() -> None:
        rfm_index.store_model(client, layout, rfm_index.compute_model(client, layout,
                                                                      time.time()))
        drain(settings)  # the next run adopts the stored model and re-files the buyers

    try:
        with api_server(settings) as url:
            # ten big recent buyers and ten small old ones
            events = buyers("big", 10, 500.0, 10) + buyers("small", 10, 20.0, 60)
            assert post_events(url, events).status_code == 200
            drain(settings)
            adopt()
            champions = members("rfm:champions")
            assert champions and champions <= {f"big{i}" for i in range(10)}
            assert members("vip") == champions
            assert members("top_m") == {f"big{i}" for i in range(10)}
            # forty bigger and more recent buyers arrive: the first ones drop
            more = buyers("huge", 40, 5000.0, 5)
            assert post_events(url, more).status_code == 200
            drain(settings)
            adopt()
            champions = members("rfm:champions")
            assert champions and not champions & {f"big{i}" for i in range(10)}
            assert members("vip") == champions
            assert members("top_m") == {f"huge{i}" for i in range(40)}
    finally:
        client.close()


def test_a_new_segments_configuration_refiles_the_clients_without_their_events(
        redis_url: str, key_prefix: str) -> None:
    """Rules changed between two runs: the dataflow files each client under the new ones as
    soon as it loads them, not at the client's next event or timer."""
    now = time.time()
    clients = [Client("spender", orders=[(3, 100)]), Client("modest", orders=[(3, 50)])]
    first = make_settings(redis_url, key_prefix, rfm={"enabled": False},
                          segments={"big": {"rule": "monetary_total >= 100"}})
    with api_server(first) as url:
        assert post_events(url, events_of(clients, now)).status_code == 200
        drain(first)
        assert get(url, "/v1/segments/big/members").json()["members"] == ["spender"]
    second = make_settings(redis_url, key_prefix, rfm={"enabled": False},
                           segments={"big": {"rule": "monetary_total >= 150"},
                                     "small": {"rule": "monetary_total < 100"}})
    drain(second)  # no new event
    with api_server(second) as url:
        assert get(url, "/v1/segments/big/members").json()["members"] == []
        assert get(url, "/v1/segments/small/members").json()["members"] == ["modest"]
        listed = get(url, "/v1/profiles/modest/segments").json()["segments"]
        assert "small" in {e["segment"] for e in listed}
