"""The web console in a real browser: headless Chromium (Debian's package) driven by
Playwright against a running crmflow (the API on a socket, the dataflow in its own process)
holding the UCI Online Retail history, backfilled from ../shared/data.

Every page must load without a console error; the RFM map must show the API's counts, a
click on a cell must list its clients, a manual touch recorded in the form must show on the
timeline and in the API, and a point manager's key must not open another point's client.
Screenshots of every page go to test-artifacts/console/ (CRMFLOW_TEST_ARTIFACTS overrides).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from config.settings import Settings
from dataflows.flow import store_factory
from features.rfm import rfm_scores, rfm_segment
from history.backfill import backfill
from sinks import rfm_index
from sinks.bucket_store import lookup_member
from sinks.console_store import LOOKUP_SCAN
from sinks.keys import KeyLayout
from sinks.parquet_export import client_states
from tests.conftest import SHARED_DATA
from tests.support import (
    ADMIN_KEY,
    READ_KEY,
    REPO,
    WRITE_KEY,
    api_server,
    dataflow_process,
    drain,
    make_settings,
    post_events,
    wait_for,
    write_config,
)

UCI = SHARED_DATA / "uci_online_retail.csv.gz"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]
POINT = "store-france"
POINT_KEY = "rk-point-france-0001"
ARTIFACTS = Path(os.environ.get("CRMFLOW_TEST_ARTIFACTS", REPO / "test-artifacts")) / "console"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")


def chromium() -> str:
    """Debian's Chromium, installed here when missing and this is a root Debian machine."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True,
                       check=False, capture_output=True, timeout=900)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; `make test` "
                    "installs it on Debian as root)")
    return found


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass
class Crmflow:
    url: str
    settings: Settings
    layout: KeyLayout
    redis: redis.Redis
    buyers: int
    points: dict[str, str] = field(default_factory=dict)  # client -> point

    def api(self, path: str, key: str = READ_KEY, **params: Any) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=30,
                             headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, (path, response.text)
        return response.json()

    def applied(self) -> bool:
        store = store_factory(self.settings)
        try:
            return not store.partitions_behind(store.stream_heads())
        finally:
            store.client.close()

    def rfm_settled(self) -> bool:
        """Every buyer is filed in the cell and the RFM segment the stored model scores it
        into: buckets re-score on their next tick after a new model, so until then the map
        and the segments are still moving."""
        model = rfm_index.load_model(self.redis, self.layout)
        if model is None or model.population != self.buyers:
            return False
        values = [dict(self.redis.zrange(self.layout.rfm_values(dimension), 0, -1,
                                         withscores=True)) for dimension in "rfm"]
        scores = [rfm for key in values[0] if (rfm := rfm_scores(
            model, values[0][key], int(values[1][key]), values[2][key], 0.0)) is not None]
        cells = Counter((r, f) for r, f, _ in scores)
        named = Counter(f"rfm:{rfm_segment(*rfm)}" for rfm in scores)
        filed = {(cell["r"], cell["f"]): cell["clients"]
                 for cell in self.api("/v1/rfm/map")["cells"]}
        sizes = {segment["name"]: segment["size"] for segment in self.api("/v1/segments")[
            "segments"] if segment["kind"] == "rfm"}
        return (filed == {cell: cells.get(cell, 0) for cell in filed}
                and sizes == {name: named.get(name, 0) for name in sizes})


@pytest.fixture(scope="module")
def crmflow(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Crmflow]:
    if not UCI.exists():
        pytest.skip(f"the UCI Online Retail file is not at {UCI} (CI has ../shared/data)")
    settings = make_settings(redis_url, f"t{uuid.uuid4().hex[:12]}",
                             api={"point_read_keys": {POINT_KEY: POINT}},
                             rfm={"refresh": "2s"},
                             dataflow={"allowed_lateness": 0.5})
    config = write_config(settings, tmp_path_factory.mktemp("console") / "crmflow.yaml")
    layout = KeyLayout.from_settings(settings)
    client = redis.Redis.from_url(redis_url)
    with dataflow_process(config) as dataflow, api_server(settings) as url:
        result = backfill([UCI], "uci-online-retail", settings, wait=600)
        assert result.caught_up, "the dataflow did not apply the backfill"
        assert dataflow.poll() is None
        states = dict(client_states(client, layout))
        points = {key: "store-" + slug(str(state.traits.get("country", "unknown")))
                  for key, state in states.items()}
        identify = [{"event_id": f"point-{key}", "type": "identify", "client_id": key,
                     "event_time": time.time(),
                     "traits": {"point_id": point, "email": f"c{key}@example.com",
                                "phone": f"+44 7700 9{key}"}}
                    for key, point in points.items()]
        for start in range(0, len(identify), 1000):
            response = httpx.post(url + "/v1/events", json={"events": identify[start:start
                                                                                + 1000]},
                                  auth=(WRITE_KEY, ""), timeout=30)
            assert response.status_code == 200 and not response.json()["rejected"]
        world = Crmflow(url, settings, layout, client,
                        sum(1 for s in states.values() if s.orders_count > 0), points)
        wait_for(world.applied, 300, "the dataflow applied the identify events")
        wait_for(world.rfm_settled, 120,
                 "every buyer filed in the RFM map and segments under the stored model")
        yield world
    client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()  # first: without a browser, the backfill is not worth its time
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@dataclass
class Console:
    page: Any
    url: str
    errors: list[str]

    def open(self, route: str, name: str) -> Any:
        self.page.goto(f"{self.url}/console#{route}")
        root = self.page.locator(f"[data-testid=page-{name}]")
        root.wait_for()
        self.page.locator(f"[data-testid=page-{name}][data-ready=true]").wait_for(
            timeout=30_000)
        return root

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(browser: Any, url: str, key: str, timezone: str | None = None) -> Console:
    context = browser.new_context(viewport={"width": 1440, "height": 900},
                                  accept_downloads=True, timezone_id=timezone)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"{message.type}: {message.text}")
            if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.goto(f"{url}/console")
    page.fill("[data-testid=login-key]", key)
    page.click("[data-testid=login-submit]")
    page.locator("[data-testid=whoami]").wait_for()
    return Console(page, url, errors)


@pytest.fixture
def console(browser: Any, crmflow: Crmflow) -> Iterator[Console]:  # browser first
    signed_in = sign_in(browser, crmflow.url, ADMIN_KEY)
    yield signed_in
    signed_in.page.context.close()


def test_every_page_loads_without_console_errors(console: Console, crmflow: Crmflow) -> None:
    console.open("/overview", "overview")
    console.page.locator("[data-testid=rfm-cell]").first.wait_for()
    console.shot("overview")
    console.open("/segments", "segments")
    console.page.locator("[data-testid=sparkline]").first.wait_for()
    console.shot("segments")
    segment = console.open("/segments/lifecycle%3Achurned", "segment")
    assert segment.locator("[data-testid=member-link]").count() > 0
    console.shot("segment")
    client_id = crmflow.api("/v1/segments/lifecycle:churned/members", limit=1)["members"][0]
    card = console.open(f"/client/{client_id}", "client")
    assert card.locator("[data-testid=client-id]").inner_text().strip().endswith(client_id)
    assert card.locator("[data-testid=timeline-entry]").count() > 0
    console.shot("client")
    rules = console.open("/rules", "rules")
    assert rules.locator("[data-testid=rules-section]").count() >= 4
    console.shot("rules")
    assert console.errors == []


def test_the_rfm_map_shows_the_apis_counts_and_lists_a_cells_clients(
        console: Console, crmflow: Crmflow) -> None:
    overview = console.open("/overview", "overview")
    cells = overview.locator("[data-testid=rfm-cell]")
    cells.first.wait_for()
    shown = {(int(cells.nth(i).get_attribute("data-r")), int(cells.nth(i).get_attribute("data-f"))):
             int(cells.nth(i).get_attribute("data-clients")) for i in range(cells.count())}
    api = {(c["r"], c["f"]): c["clients"] for c in crmflow.api("/v1/rfm/map")["cells"]}
    assert shown == api
    assert sum(shown.values()) == crmflow.buyers
    r, f = max(api, key=lambda rf: (api[rf] if api[rf] <= 50 else 0, rf))
    overview.locator(f"[data-testid=rfm-cell][data-r='{r}'][data-f='{f}']").click()
    members = console.page.locator("[data-testid=rfm-members] [data-testid=member-link]")
    members.first.wait_for()
    listed = sorted(members.nth(i).inner_text().strip() for i in range(members.count()))
    expected = crmflow.api(f"/v1/rfm/map/cells/{r}/{f}/members", limit=50)["members"]
    assert listed == sorted(expected) and len(listed) == api[(r, f)]
    console.shot("rfm-cell-members")
    members.first.click()
    console.page.locator("[data-testid=page-client][data-ready=true]").wait_for()
    assert console.errors == []


def test_a_manual_touch_recorded_in_the_form_shows_on_the_timeline_and_in_the_api(
        console: Console, crmflow: Crmflow) -> None:
    client_id = crmflow.api("/v1/segments/lifecycle:churned/members", limit=3)["members"][2]
    card = console.open(f"/client/{client_id}", "client")
    comment = f"called about the spring catalogue {uuid.uuid4().hex[:6]}"
    card.locator("[data-testid=touch-occasion]").fill("renewal_call")
    card.locator("[data-testid=touch-channel]").select_option("phone")
    card.locator("[data-testid=touch-status]").select_option("done")
    card.locator("[data-testid=touch-comment]").fill(comment)
    card.locator("[data-testid=touch-author]").fill("mia@example.com")
    card.locator("[data-testid=touch-submit]").click()
    entry = card.locator("[data-testid=timeline-entry][data-kind=touch]", has_text=comment)
    entry.wait_for(timeout=30_000)
    assert "mia@example.com" in entry.inner_text()
    console.shot("client-touch-recorded")
    touches = crmflow.api(f"/v1/profiles/{client_id}/touches")["touches"]
    recorded = [t for t in touches if t["payload"].get("comment") == comment]
    assert len(recorded) == 1
    assert (recorded[0]["type"], recorded[0]["status"], recorded[0]["source"]) == (
        "renewal_call", "done", "manual")
    assert console.errors == []


def test_a_merged_cookies_events_show_on_the_clients_card_marked_as_its(
        console: Console, crmflow: Crmflow) -> None:
    tag = uuid.uuid4().hex[:8]
    cookie, client_id, now = f"ck-{tag}", f"merged-{tag}", time.time()
    response = post_events(crmflow.url, [
        {"event_id": f"{tag}-view", "type": "product_view", "anonymous_id": cookie,
         "event_time": now - 60, "products": [{"product_id": "85123A"}]},
        {"event_id": f"{tag}-identify", "type": "identify", "client_id": client_id,
         "anonymous_id": cookie, "event_time": now - 30}])
    assert response.status_code == 200 and not response.json()["rejected"], response.text

    def merged() -> bool:
        answer = httpx.get(f"{crmflow.url}/v1/profiles/{client_id}", timeout=10,
                           headers={"Authorization": f"Bearer {READ_KEY}"})
        return answer.status_code == 200 and answer.json()["aliases"] == [f"anon:{cookie}"]

    wait_for(merged, 60, "the dataflow merged the cookie into the client")
    card = console.open(f"/client/{client_id}", "client")
    marked = card.locator("[data-testid=timeline-entry]",
                          has=console.page.locator("[data-testid=timeline-alias]"))
    assert marked.count() == 1
    assert "product_view" in marked.inner_text() and f"as anon:{cookie}" in marked.inner_text()
    console.shot("client-merged-cookie")
    assert console.errors == []


def test_search_by_email_opens_the_card(console: Console, crmflow: Crmflow) -> None:
    client_id = next(iter(crmflow.points))
    page = console.open("/client", "client")
    page.locator("[data-testid=client-search]").fill(f"  C{client_id}@EXAMPLE.com")
    page.locator("[data-testid=client-search-submit]").click()
    console.page.wait_for_url(re.compile(rf".*#/client/{client_id}$"))
    console.page.locator("[data-testid=page-client][data-ready=true]").wait_for()
    assert console.page.locator("[data-testid=client-id]").inner_text().strip().endswith(
        client_id)
    assert console.errors == []


def test_a_segment_downloads_as_csv(console: Console, crmflow: Crmflow) -> None:
    segment = console.open("/segments/rfm%3Achampions", "segment")
    with console.page.expect_download(timeout=60_000) as download:
        segment.locator("[data-testid=download-csv]").click()
    rows = Path(download.value.path()).read_text().split()
    expected = httpx.get(crmflow.url + "/v1/segments/rfm:champions/members.csv", timeout=30,
                         headers={"Authorization": f"Bearer {READ_KEY}"}).text.split()
    assert rows == expected and len(rows) > 1
    assert console.errors == []


def test_a_point_key_sees_only_its_point(browser: Any, crmflow: Crmflow) -> None:
    manager = sign_in(browser, crmflow.url, POINT_KEY)
    try:
        assert POINT in manager.page.locator("[data-testid=whoami]").inner_text()
        overview = manager.open("/overview", "overview")
        cells = overview.locator("[data-testid=rfm-cell]")
        cells.first.wait_for()
        shown = sum(int(cells.nth(i).get_attribute("data-clients"))
                    for i in range(cells.count()))
        ours = crmflow.api("/v1/rfm/map", POINT_KEY)["clients"]
        assert shown == ours and 0 < ours < crmflow.buyers
        rows = overview.locator("[data-testid=funnel-row]")
        funnel = {rows.nth(i).get_attribute("data-segment"): int(
            rows.nth(i).locator("[data-testid=count]").inner_text().replace(",", ""))
            for i in range(rows.count())}
        sizes = {s["name"]: s["size"] for s in crmflow.api("/v1/segments", POINT_KEY)[
            "segments"] if s["kind"] == "lifecycle"}
        assert funnel == sizes
        assert sum(sizes.values()) == sum(1 for p in crmflow.points.values() if p == POINT)
        manager.shot("point-overview")
        manager.open("/segments", "segments")
        manager.page.locator("[data-testid=sparkline]").first.wait_for()
        manager.shot("point-segments")
        own = next(c for c, p in crmflow.points.items() if p == POINT)
        other = next(c for c, p in crmflow.points.items() if p != POINT)
        manager.open(f"/client/{own}", "client")
        assert manager.page.locator("[data-testid=client-id]").inner_text().strip().endswith(
            own)
        assert manager.errors == []
        manager.open(f"/client/{other}", "client")
        alert = manager.page.locator("[data-testid=alert]")
        alert.wait_for()
        assert "unknown client" in alert.inner_text()
        assert manager.page.locator("[data-testid=traits]").count() == 0
        manager.shot("point-other-client-refused")
        # the refusal is the API's 404, which the browser logs as a failed resource only
        assert all("404" in error for error in manager.errors), manager.errors
        page = manager.open("/client", "client")
        page.locator("[data-testid=client-search]").fill(f"c{other}@example.com")
        page.locator("[data-testid=client-search-submit]").click()
        manager.page.get_by_text("No client matches").wait_for()
    finally:
        manager.page.context.close()


# --- a few clients, no backfill -----------------------------------------------------------------

@dataclass
class Small:
    url: str
    layout: KeyLayout
    redis: redis.Redis


@pytest.fixture(scope="module")
def small(browser: Any, redis_url: str) -> Iterator[Small]:  # browser first: it may skip
    """The API over a handful of clients the in-process dataflow applied."""
    settings = make_settings(redis_url, f"t{uuid.uuid4().hex[:12]}",
                             api={"point_read_keys": {POINT_KEY: POINT}})
    events = [{"event_id": "tz-identify", "type": "identify", "client_id": "tz-client",
               "event_time": time.time() - 60,
               "traits": {"point_id": POINT, "renewal_at": "2026-03-01T10:00:00",
                          "renewal_utc": "2026-03-01T10:00:00Z",
                          "renewal_spaced": "2026-03-01 10:00",
                          "phone": "+44 20 9999 9999"}},
              # an id a path would read as another client's sub-resource
              {"event_id": "slash-identify", "type": "identify",
               "client_id": "tz-client/segments", "event_time": time.time() - 60,
               "traits": {"point_id": POINT, "city": "Slashville"}},
              # an id `?ids=` would read as two clients
              {"event_id": "comma-identify", "type": "identify",
               "client_id": "tz-client,north", "event_time": time.time() - 60,
               "traits": {"city": "Commaville"}}]
    client = redis.Redis.from_url(redis_url)
    with api_server(settings) as url:
        response = post_events(url, events)
        assert response.status_code == 200 and response.json()["rejected"] == []
        drain(settings)
        yield Small(url, KeyLayout.from_settings(settings), client)
    client.close()


def test_a_time_without_a_zone_is_shown_as_utc_as_crmflow_reads_it(browser: Any,
                                                                    small: Small) -> None:
    """crmflow reads an ISO time without a zone as UTC; a browser's Date takes it as local
    time, which put such a trait hours away from the same instant written with a Z."""
    console = sign_in(browser, small.url, ADMIN_KEY, timezone="America/New_York")
    try:
        console.open("/client/tz-client", "client")
        traits = console.page.locator("[data-testid=traits]")

        def shown(name: str) -> str:
            row = traits.locator("tr").filter(has=console.page.locator(f"th:text-is('{name}')"))
            return str(row.locator("td").inner_text()).strip()

        utc = shown("renewal_utc")
        assert "5:00" in utc  # 10:00 UTC is 05:00 in New York in March
        assert shown("renewal_at") == utc
        assert shown("renewal_spaced") == utc
        assert console.errors == []
    finally:
        console.page.context.close()


def test_the_card_of_an_id_ending_in_a_sub_resource_shows_that_client(browser: Any,
                                                                      small: Small) -> None:
    """`/v1/profiles/tz-client%2Fsegments` is tz-client's segments (the server decodes the
    slash before routing): the card reads profiles by `?id=`, which takes the id whole, so
    an id with a comma shows that client too, not the one before the comma."""
    console = sign_in(browser, small.url, ADMIN_KEY)
    try:
        console.open("/client/tz-client%2Fsegments", "client")
        assert console.page.locator("[data-testid=client-id]").inner_text().strip().endswith(
            "tz-client/segments")
        traits = console.page.locator("[data-testid=traits]").inner_text()
        assert "Slashville" in traits
        console.open("/client/tz-client%2Cnorth", "client")
        assert console.page.locator("[data-testid=client-id]").inner_text().strip().endswith(
            "tz-client,north")
        assert "Commaville" in console.page.locator("[data-testid=traits]").inner_text()
        assert console.errors == []
    finally:
        console.page.context.close()


def test_a_points_search_through_part_of_the_index_says_so(browser: Any,
                                                           small: Small) -> None:
    """A point's search reads a bounded part of the lookup index: when other points' clients
    fill it, the page says more may match rather than "No client matches", and a lone match
    is listed, not opened as if it were the only one."""
    layout = small.layout
    with small.redis.pipeline(transaction=False) as pipe:
        for n in range(3 * LOOKUP_SCAN):  # other points' phones, sorting before ours
            pipe.zadd(layout.lookup(n % layout.partitions),
                      {lookup_member(f"phone:+4420{n:08d}", f"elsewhere-{n}"): 0})
        pipe.execute()
    manager = sign_in(browser, small.url, POINT_KEY)
    try:
        page = manager.open("/client", "client")
        page.locator("[data-testid=client-search]").fill("+44 20")
        page.locator("[data-testid=client-search-submit]").click()
        manager.page.locator("[data-testid=search-partial]").wait_for()
        assert page.locator("[data-testid=search-result]").count() == 0
        page.locator("[data-testid=client-search]").fill("+44 20 9999")
        page.locator("[data-testid=client-search-submit]").click()
        manager.page.wait_for_url(re.compile(r".*#/client/tz-client$"))
        assert manager.errors == []
    finally:
        manager.page.context.close()
