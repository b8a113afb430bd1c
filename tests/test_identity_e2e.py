"""Identity stitching through the whole path: Segment messages over HTTP -> event streams ->
the real dataflow (link, merge, forward) -> the merged profile over HTTP and the abandoned
cart trigger, sent once, to the registered client."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

import httpx
import pytest
import redis

from config.settings import Settings
from features.events import format_time
from sinks.keys import KeyLayout
from tests.support import (
    ADMIN_KEY,
    WRITE_KEY,
    all_triggers,
    api_server,
    drain,
    make_settings,
    read_headers,
)

USER = "ann"
COOKIE = "cookie-7f3a"
ANON = f"anon:{COOKIE}"
CART_DELAY = 60.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def identity_settings(redis_url: str, prefix: str) -> Settings:
    return make_settings(
        redis_url, prefix,
        triggers={"abandoned_cart": {"delay": "1m"}, "abandoned_browse": {"enabled": False}},
        policy={"quiet_hours": None, "frequency_cap_per_day": 0, "holdout_percent": 0})


def anonymous_visit(t0: float) -> list[dict[str, Any]]:
    """A visitor with a cookie only: a session, two product views, a cart add."""
    def track(message_id: str, offset: float, event: str, **properties: Any) -> dict[str, Any]:
        return {"type": "track", "anonymousId": COOKIE, "messageId": message_id,
                "event": event, "timestamp": iso(t0 + offset), "properties": properties}

    return [
        track("m-session", 0, "Session Started"),
        track("m-view-1", 5, "Product Viewed", product_id="p9", category="shoes", price=30),
        track("m-view-2", 8, "Product Viewed", product_id="p7", category="bags", price=80),
        track("m-add", 10, "Product Added", product_id="p1", category="shoes", price=30,
              quantity=2),
    ]


def registration(t0: float) -> list[dict[str, Any]]:
    """Both ids in one message: the identify that links the cookie, then the sign-up."""
    return [
        {"type": "identify", "userId": USER, "anonymousId": COOKIE, "messageId": "m-identify",
         "timestamp": iso(t0 + 30), "traits": {"email": "ann@example.com", "city": "Leeds"}},
        {"type": "track", "userId": USER, "anonymousId": COOKIE, "messageId": "m-signup",
         "event": "Signed Up", "timestamp": iso(t0 + 31)},
    ]


LATE_VIEW_OFFSET = 50.0


def late_view(t0: float) -> dict[str, Any]:
    """An anonymous event sent after the merge (the old cookie on another tab)."""
    return {"type": "track", "anonymousId": COOKIE, "messageId": "m-view-late",
            "event": "Product Viewed", "timestamp": iso(t0 + LATE_VIEW_OFFSET),
            "properties": {"product_id": "p5", "category": "hats", "price": 15}}


def post_batch(url: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(url + "/v1/batch", json={"batch": messages}, auth=(WRITE_KEY, ""),
                          timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["rejected"] == []
    return body


def stream_entries(client: redis.Redis, settings: Settings) -> int:
    layout = KeyLayout.from_settings(settings)
    return sum(int(client.xlen(stream)) for stream in layout.all_event_streams())


def settle(client: redis.Redis, settings: Settings, as_of: float | None = None) -> int:
    """Drain until a drain appends nothing new to the event streams: the identity steps
    (link request, merge, forwards) are stream entries the dataflow writes itself, and a
    drain stops at the head it first reached (see test_one_drain_applies_the_identity_steps).
    Returns the number of drains it took."""
    for rounds in range(1, 8):
        before = stream_entries(client, settings)
        drain(settings, as_of=as_of)
        if stream_entries(client, settings) == before:
            return rounds
    raise AssertionError("the dataflow keeps appending events")


def profile(url: str, client_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/profiles/{client_id}", headers=read_headers(), timeout=10)
    assert response.status_code == 200, (client_id, response.text)
    body: dict[str, Any] = response.json()
    return body


def stored_state(client: redis.Redis, settings: Settings, key: str) -> bytes | None:
    layout = KeyLayout.from_settings(settings)
    return cast(bytes | None, client.hget(layout.state(layout.bucket_of(key)), key))


STABLE = ("updated_at", "category_interest", "segments", "traits", "aliases", "freshness")
STABLE_FEATURES = ("visits", "views_7d", "last_view_at", "cart_items", "cart_value",
                   "cart_products", "recently_viewed", "cart_updated_at", "registered_at",
                   "first_seen_at", "last_visit_at", "top_category", "lifecycle_stage")


def stable_view(document: dict[str, Any]) -> dict[str, Any]:
    """The parts of a profile that do not move with the reading clock."""
    view = {name: document[name] for name in STABLE}
    view["features"] = {name: document["features"][name] for name in STABLE_FEATURES}
    return view


def test_an_anonymous_history_joins_the_registered_client(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    settings = identity_settings(redis_url, key_prefix)
    t0 = time.time() - 2 * 3600
    cart_due = t0 + 10 + CART_DELAY

    def triggers_of(kind: str) -> list[dict[str, str]]:
        return [t for t in all_triggers(redis_client, settings) if t["type"] == kind]

    with api_server(settings) as url:
        post_batch(url, anonymous_visit(t0) + registration(t0))
        # history as of just after the registration: the cart's timer is not due yet
        settle(redis_client, settings, as_of=t0 + 40)
        assert triggers_of("abandoned_cart") == []

        merged = profile(url, USER)
        features = merged["features"]
        assert merged["client_id"] == USER and "requested_id" not in merged
        assert merged["aliases"] == [ANON]
        assert merged["traits"]["email"] == "ann@example.com"
        assert features["cart_items"] == 2 and features["cart_value"] == 60
        assert features["cart_products"] == ["p1"]
        assert features["recently_viewed"] == ["p7", "p9"]
        assert features["views_7d"] == 2
        assert features["visits"] == 2  # the anonymous session and the sign-up
        assert features["last_visit_at"] == format_time(t0 + 31)
        assert features["first_seen_at"] == format_time(t0)
        assert features["registered_at"] == format_time(t0 + 31)
        assert features["lifecycle_stage"] == "prospect"
        interest = {c["category"]: c["interactions"] for c in merged["category_interest"]}
        assert interest == {"shoes": 2, "bags": 1}
        assert [s["segment"] for s in merged["segments"]] == ["lifecycle:prospect"]

        by_cookie = profile(url, ANON)
        assert by_cookie["client_id"] == USER and by_cookie["requested_id"] == ANON
        assert stable_view(by_cookie) == stable_view(merged)
        batch = httpx.get(f"{url}/v1/profiles", params={"ids": f"{ANON},{USER}"},
                          headers=read_headers(), timeout=10).json()
        assert [p["client_id"] for p in batch["profiles"]] == [USER, USER]
        assert batch["profiles"][0]["requested_id"] == ANON and batch["missing"] == []
        segments = httpx.get(f"{url}/v1/profiles/{ANON}/segments", headers=read_headers(),
                             timeout=10).json()
        assert segments["client_id"] == USER and segments["requested_id"] == ANON
        assert [s["segment"] for s in segments["segments"]] == ["lifecycle:prospect"]
        timeline = httpx.get(f"{url}/v1/profiles/{ANON}/timeline", headers=read_headers(),
                             timeout=10).json()
        assert timeline["client_id"] == USER and timeline["requested_id"] == ANON
        own = httpx.get(f"{url}/v1/profiles/{USER}/timeline", headers=read_headers(),
                        timeout=10).json()
        assert "requested_id" not in own and own["entries"] == timeline["entries"]
        # the cookie's events from before the merge are on the client's card, marked as its
        assert [(e["kind"], e["type"], e.get("alias")) for e in own["entries"]] == [
            ("event", "registered", None), ("touch", "welcome", None),
            ("event", "identify", None),
            ("event", "cart_add", ANON), ("event", "product_view", ANON),
            ("event", "product_view", ANON), ("event", "visit", ANON)]
        # the cookie's own record is a tombstone: no memberships of its own
        members = httpx.get(f"{url}/v1/segments/lifecycle:prospect/members",
                            headers=read_headers(), timeout=10).json()["members"]
        assert members == [USER]
        # ... yet asked about by the cookie, a segment answers for the client, as /segments
        contains = httpx.post(f"{url}/v1/segments/lifecycle:prospect/contains",
                              json={"client_ids": [ANON, USER, "anon:nobody"]},
                              headers=read_headers(), timeout=10).json()
        assert contains["members"] == [ANON, USER] and contains["checked"] == 3

        # after the merge the cookie alone still speaks for the client: forwarded, and a
        # resend of the same message is not counted twice
        assert post_batch(url, [late_view(t0)])["duplicates"] == 0
        settle(redis_client, settings, as_of=t0 + 55)
        assert post_batch(url, [late_view(t0)])["duplicates"] == 1
        settle(redis_client, settings, as_of=t0 + 55)
        features = profile(url, USER)["features"]
        assert features["recently_viewed"] == ["p5", "p7", "p9"]
        assert features["views_7d"] == 3
        assert features["last_view_at"] == format_time(t0 + LATE_VIEW_OFFSET)
        interest = {c["category"]: c["interactions"]
                    for c in profile(url, USER)["category_interest"]}
        assert interest == {"shoes": 2, "bags": 1, "hats": 1}

        # now: the cart has waited past its delay, and fires for the client, once
        settle(redis_client, settings)
        carts = triggers_of("abandoned_cart")
        assert len(carts) == 1, carts
        cart = carts[0]
        assert cart["client_id"] == USER
        assert cart["status"] == "sent" and cart["channel"] == "email", cart
        assert cart["fired_at"] == format_time(cart_due)
        assert '"product_id":"p1"' in cart["payload"]
        assert [t for t in all_triggers(redis_client, settings) if t["client_id"] == ANON] == []
        assert sorted(t["type"] for t in all_triggers(redis_client, settings)) == [
            "abandoned_cart", "welcome"]
        touches = httpx.get(f"{url}/v1/profiles/{USER}/touches", headers=read_headers(),
                            timeout=10).json()["touches"]
        assert sorted(t["type"] for t in touches) == ["abandoned_cart", "welcome"]

        # a restart (two more drains) changes nothing
        triggers = all_triggers(redis_client, settings)
        states = {key: stored_state(redis_client, settings, key) for key in (USER, ANON)}
        before = stable_view(profile(url, USER))
        entries = stream_entries(redis_client, settings)
        for _ in range(2):
            drain(settings)
        assert all_triggers(redis_client, settings) == triggers
        assert {key: stored_state(redis_client, settings, key) for key in (USER, ANON)} == states
        assert stable_view(profile(url, USER)) == before
        assert stable_view(profile(url, ANON)) == before
        assert stream_entries(redis_client, settings) == entries


def test_one_drain_applies_the_identity_steps_as_well(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """The link request and the merge are stream entries the dataflow writes itself;
    `drain` runs the dataflow "until every stream entry is processed"."""
    settings = identity_settings(redis_url, key_prefix)
    t0 = time.time() - 2 * 3600
    with api_server(settings) as url:
        post_batch(url, anonymous_visit(t0) + registration(t0))
        drain(settings, as_of=t0 + 40)
        merged = profile(url, USER)
    assert merged["aliases"] == [ANON]
    assert merged["features"]["cart_products"] == ["p1"]


def test_a_backfilled_history_gives_the_cart_to_the_registered_client(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    settings = identity_settings(redis_url, key_prefix)
    t0 = time.time() - 2 * 3600
    with api_server(settings) as url:
        post_batch(url, anonymous_visit(t0) + registration(t0))
        settle(redis_client, settings)
    owners = [(t["client_id"], t["status"]) for t in all_triggers(redis_client, settings)
              if t["type"] == "abandoned_cart"]
    assert owners == [(USER, "sent")]


def test_erasing_the_second_client_of_a_shared_device_keeps_the_first_clients_link(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """The cookie's history went to the first client (the first link wins); the second
    client to log in on the device must not list the cookie as its alias, so erasing the
    second client leaves the cookie speaking for the first."""
    settings = identity_settings(redis_url, key_prefix)
    t0 = time.time() - 2 * 3600
    with api_server(settings) as url:
        post_batch(url, anonymous_visit(t0) + registration(t0))
        post_batch(url, [{"type": "identify", "userId": "bob", "anonymousId": COOKIE,
                          "messageId": "m-bob", "timestamp": iso(t0 + 40),
                          "traits": {"email": "bob@example.com"}}])
        settle(redis_client, settings, as_of=t0 + 45)
        assert profile(url, "bob")["aliases"] == []
        erased = httpx.delete(f"{url}/v1/profiles/bob", params={"wait": 0},
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        assert erased.status_code == 202, erased.text
        settle(redis_client, settings, as_of=t0 + 45)
        by_cookie = profile(url, ANON)
        assert by_cookie["client_id"] == USER and by_cookie["requested_id"] == ANON
        assert profile(url, USER)["aliases"] == [ANON]
        assert profile(url, USER)["features"]["cart_products"] == ["p1"]


def test_a_message_named_like_a_link_does_not_block_the_link(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """Link requests are de-duplicated apart from what senders send: a message whose id is
    the cookie's link to the client (sent before the sign-in, by mistake or to block the
    link) is an event of its own, and the sign-in still links."""
    settings = identity_settings(redis_url, key_prefix)
    t0 = time.time() - 2 * 3600
    named_like_the_link = {"type": "track", "anonymousId": COOKIE, "event": "Product Viewed",
                           "messageId": f"link:{ANON}>{USER}", "timestamp": iso(t0 + 20),
                           "properties": {"product_id": "p3"}}
    with api_server(settings) as url:
        assert post_batch(url, [*anonymous_visit(t0), named_like_the_link])["duplicates"] == 0
        assert post_batch(url, registration(t0))["duplicates"] == 0
        settle(redis_client, settings, as_of=t0 + 45)
        assert profile(url, USER)["aliases"] == [ANON]
        assert profile(url, USER)["features"]["cart_products"] == ["p1"]


def test_erasing_a_client_erases_every_cookie_merged_into_it_beyond_the_alias_cap(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """A client who logged in from more browsers than the profile lists aliases (8): the
    erasure still reaches every cookie, so none keeps pointing at the client or answers for
    it afterwards."""
    settings = identity_settings(redis_url, key_prefix)
    t0 = time.time() - 2 * 3600
    cookies = [f"browser-{n}" for n in range(11)]
    with api_server(settings) as url:
        for n, cookie in enumerate(cookies):
            post_batch(url, [
                {"type": "track", "anonymousId": cookie, "messageId": f"m-view-{n}",
                 "event": "Product Viewed", "timestamp": iso(t0 + 10 * n),
                 "properties": {"product_id": f"p{n}", "category": "shoes", "price": 30}},
                {"type": "identify", "userId": USER, "anonymousId": cookie,
                 "messageId": f"m-login-{n}", "timestamp": iso(t0 + 10 * n + 5)}])
            settle(redis_client, settings, as_of=t0 + 10 * n + 6)
        assert profile(url, USER)["aliases"] == [f"anon:{c}" for c in cookies[-8:]]
        for cookie in cookies:
            assert profile(url, f"anon:{cookie}")["client_id"] == USER
        erased = httpx.delete(f"{url}/v1/profiles/{USER}", params={"wait": 0},
                              headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        assert erased.status_code == 202, erased.text
        settle(redis_client, settings, as_of=t0 + 200)
        for cookie in [USER] + [f"anon:{c}" for c in cookies]:
            response = httpx.get(f"{url}/v1/profiles/{cookie}", headers=read_headers(),
                                 timeout=10)
            assert response.status_code == 404, (cookie, response.text)
        for cookie in cookies:  # no tombstone left holding the client's id
            assert stored_state(redis_client, settings, f"anon:{cookie}") is None, cookie


@pytest.mark.parametrize("returning", [USER, "bob"])
def test_a_sign_in_after_an_erasure_merges_the_cookie_again(
        redis_client: redis.Redis, redis_url: str, key_prefix: str, returning: str) -> None:
    """Erased, the client comes back within `redis.dedupe_window` on the same browser: its
    link and merge have the same ids as the first time (deterministic), and the erasure
    forgot them, so the new cookie history joins the new profile (it stayed anonymous).

    Or a shared device: bob's link lost to ann's (the first link wins), ann is erased, her
    cookie with her, and bob signs in again on the device. His link request has the id of
    the one that lost, so the cookie's erasure must forget that one too, or his sign-in
    would be ignored as a duplicate for the rest of the day."""
    settings = identity_settings(redis_url, key_prefix)
    t0 = time.time() - 2 * 3600
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def signs_in(message_id: str, offset: float) -> dict[str, Any]:
        return {"type": "identify", "userId": returning, "anonymousId": COOKIE,
                "messageId": message_id, "timestamp": iso(t0 + offset)}

    with api_server(settings) as url:
        post_batch(url, anonymous_visit(t0) + registration(t0))
        settle(redis_client, settings, as_of=t0 + 35)
        if returning != USER:
            post_batch(url, [signs_in("m-first", 40)])
            settle(redis_client, settings, as_of=t0 + 45)
            assert profile(url, returning)["aliases"] == []
        assert profile(url, USER)["aliases"] == [ANON]
        erased = httpx.delete(f"{url}/v1/profiles/{USER}", params={"wait": 0}, headers=admin,
                              timeout=10)
        assert erased.status_code == 202, erased.text
        settle(redis_client, settings, as_of=t0 + 45)
        assert stored_state(redis_client, settings, ANON) is None

        post_batch(url, [
            {"type": "track", "anonymousId": COOKIE, "messageId": "m-again-view",
             "event": "Product Viewed", "timestamp": iso(t0 + 60),
             "properties": {"product_id": "p2", "category": "hats", "price": 20}},
            signs_in("m-again-identify", 70)])
        settle(redis_client, settings, as_of=t0 + 75)
        again = profile(url, returning)
        assert again["aliases"] == [ANON]
        assert again["features"]["recently_viewed"] == ["p2"]
        assert profile(url, ANON)["client_id"] == returning


def test_a_segment_alias_links_only_an_anonymous_previous_id(
        redis_client: redis.Redis, redis_url: str, key_prefix: str) -> None:
    """Segment's `alias` names in `previousId` the id the user had before `userId`: an
    anonymous id, or a previous user id. crmflow merges anonymous visitors into clients,
    never two clients: a previousId that is a user id (a known client's, or the one
    analytics.js sends beside an anonymousId) is refused naming previousId, the rest of
    the batch is kept, and no user id becomes a fake anonymous alias."""
    settings = identity_settings(redis_url, key_prefix)
    t0 = time.time() - 2 * 3600
    old = "ann-old-account"
    with api_server(settings) as url:
        post_batch(url, anonymous_visit(t0) + [
            {"type": "identify", "userId": old, "messageId": "m-old", "timestamp": iso(t0),
             "traits": {"email": "ann.old@example.com"}}])
        settle(redis_client, settings, as_of=t0 + 20)
        batch = [
            {"type": "alias", "userId": USER, "previousId": old, "messageId": "al-known",
             "timestamp": iso(t0 + 21)},
            {"type": "alias", "userId": USER, "previousId": USER, "messageId": "al-self",
             "timestamp": iso(t0 + 22)},
            {"type": "alias", "userId": USER, "anonymousId": "cookie-other",
             "previousId": "ann-older", "messageId": "al-previous-user",
             "timestamp": iso(t0 + 23)},
            {"type": "alias", "userId": USER, "previousId": COOKIE, "messageId": "al-cookie",
             "timestamp": iso(t0 + 24)},
            {"type": "track", "userId": USER, "event": "Session Started",
             "messageId": "m-session-2", "timestamp": iso(t0 + 25)},
        ]
        response = httpx.post(url + "/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""),
                              timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["success"] is False and body["accepted"] == 3, body
        rejected = {r["messageId"]: r for r in body["rejected"]}
        assert [r["index"] for r in body["rejected"]] == [0, 2]
        assert {r["field"] for r in rejected.values()} == {"previousId"}
        assert f"{old!r} is the userId of a known client" in rejected["al-known"]["error"]
        assert "'ann-older' is neither this message's anonymousId nor its userId" in (
            rejected["al-previous-user"]["error"])
        assert "never two clients" in rejected["al-known"]["error"]

        single = httpx.post(url + "/v1/alias", auth=(WRITE_KEY, ""), timeout=10, json={
            "userId": USER, "previousId": old, "messageId": "al-single"})
        assert single.status_code == 400, single.text
        assert single.json()["field"] == "previousId"

        settle(redis_client, settings, as_of=t0 + 30)
        merged = profile(url, USER)
        assert merged["aliases"] == [ANON]  # the cookie, linked by its alias
        assert merged["features"]["cart_products"] == ["p1"]
        assert profile(url, old)["client_id"] == old  # untouched, and not an alias
        for fake in (f"anon:{old}", f"anon:{USER}", "anon:ann-older"):
            assert stored_state(redis_client, settings, fake) is None, fake
