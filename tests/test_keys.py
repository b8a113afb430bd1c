"""Keys and their scopes over real HTTP: a point's read key sees its own clients only
(another point's client is unknown to it; segments count and list its clients only), a
write key cannot read, keys can live in a secrets file, and `crmflow config` never prints
them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from config.settings import ConfigError, load_settings
from tests.support import REPO, WRITE_KEY, api_server, drain, make_settings, post_events

LEEDS_KEY = "rk-point-leeds-123456"


@pytest.mark.parametrize("fast_reads", [True, False])
def test_a_point_key_reads_its_own_clients_only(redis_client: redis.Redis, redis_url: str,
                                                key_prefix: str, fast_reads: bool) -> None:
    settings = make_settings(redis_url, key_prefix, api={
        "point_read_keys": {LEEDS_KEY: "leeds"}, "fast_reads": fast_reads})
    with api_server(settings) as url:
        events = [{"event_id": f"r{n}", "type": "registered", "client_id": client,
                   "event_time": 1_700_000_000 + n, "traits": {"point_id": point}}
                  for n, (client, point) in enumerate([("ann", "leeds"), ("bob", "york")])]
        assert post_events(url, events).status_code == 200
        drain(settings)
        leeds = {"Authorization": f"Bearer {LEEDS_KEY}"}
        assert httpx.get(url + "/v1/profiles/ann", headers=leeds).status_code == 200
        other = httpx.get(url + "/v1/profiles/bob", headers=leeds)
        assert other.status_code == 404 and "bob" in other.json()["detail"]
        assert httpx.get(url + "/v1/profiles/bob/segments", headers=leeds).status_code == 404
        assert httpx.get(url + "/v1/profiles/bob/touches", headers=leeds).status_code == 404
        both = httpx.get(url + "/v1/profiles", params={"ids": "ann,bob"}, headers=leeds).json()
        assert [p["client_id"] for p in both["profiles"]] == ["ann"]
        assert both["missing"] == ["bob"]
        # segment reads answer for the point's clients: ann is Leeds's one client
        def lifecycle(key: str) -> dict[str, int]:
            listing = httpx.get(url + "/v1/segments", headers={"Authorization": f"Bearer {key}"})
            return {s["name"]: s["size"] for s in listing.json()["segments"]
                    if s["kind"] == "lifecycle" and s["size"]}

        [(stage, one)] = lifecycle(LEEDS_KEY).items()
        assert (one, lifecycle("test-read-key")[stage]) == (1, 2)
        members = httpx.get(url + f"/v1/segments/{stage}/members", headers=leeds)
        assert members.json()["members"] == ["ann"]
        writer = httpx.get(url + "/v1/profiles/ann", headers={
            "Authorization": f"Bearer {WRITE_KEY}"})
        assert writer.status_code == 403
        stranger = httpx.get(url + "/v1/profiles/ann", headers={"Authorization": "Bearer x"})
        assert stranger.status_code == 401 and stranger.headers["www-authenticate"] == "Bearer"


def test_keys_from_a_secrets_file_and_never_printed(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text("write_keys: [wk-from-file-0001]\nread_keys: [rk-from-file-0002]\n"
                       "admin_keys: [ak-from-file-0003]\n"
                       "point_read_keys: {rk-point-file-0004: leeds}\n")
    monkeypatch.setenv("CRMFLOW_SECRETS_FILE", str(secrets))
    api = load_settings().api
    assert (api.write_keys, api.read_keys, api.admin_keys, api.point_read_keys) == (
        ["wk-from-file-0001"], ["rk-from-file-0002"], ["ak-from-file-0003"],
        {"rk-point-file-0004": "leeds"})
    shown = subprocess.run([sys.executable, "-m", "crmflow.cli", "config"], cwd=REPO,
                           capture_output=True, text=True, check=True, timeout=60).stdout
    assert "from-file" not in shown and "point-file" not in shown and "leeds" in shown
    secrets.write_text("read_keys: [a]\nredis: {url: 'redis://elsewhere'}\n")
    with pytest.raises(ConfigError, match="unknown entry 'redis'"):
        load_settings()
