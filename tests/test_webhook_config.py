"""The `webhooks` section: defaults, and every bad value refused naming its field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import ConfigError, load_settings

SECRET = "s3cret-signing-key-0123"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CRMFLOW_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)


def endpoint(**values: Any) -> dict[str, Any]:
    return {"name": "crm", "url": "https://crm.example/hooks", "secret": SECRET, **values}


def load(tmp_path: Path, *endpoints: dict[str, Any], **section: Any) -> Any:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"webhooks": {"endpoints": list(endpoints), **section}}))
    return load_settings(path)


def refused(tmp_path: Path, *endpoints: dict[str, Any], **section: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, *endpoints, **section)
    return str(info.value)


def test_no_endpoints_by_default_and_an_endpoint_has_documented_defaults(
        tmp_path: Path) -> None:
    assert load_settings().webhooks.endpoints == []
    [crm] = load(tmp_path, endpoint()).webhooks.endpoints
    assert (crm.types, crm.statuses, crm.timeout, crm.max_attempts, crm.start_from) == (
        [], ["sent"], 10.0, 8, "new")
    assert (crm.concurrency, crm.backoff_initial, crm.backoff_max) == (8, 1.0, 300.0)
    assert crm.signing_key() == SECRET.encode()
    assert SECRET not in repr(crm)  # kept out of a repr that a traceback or a log may show
    [other] = load(tmp_path, endpoint(types=["welcome", "abandoned_cart"], timeout="2s",
                                      statuses=["sent", "done"], start_from="oldest",
                                      backoff_initial="50ms", backoff_max="1s")
                   ).webhooks.endpoints
    assert (other.timeout, other.backoff_initial, other.start_from) == (2.0, 0.05, "oldest")


@pytest.mark.parametrize(("change", "words"), [
    ({"name": "CRM"}, "webhooks.endpoints.0.name: expected 1 to 64 of a-z, 0-9, _ and -"),
    ({"name": "a b"}, "webhooks.endpoints.0.name: expected 1 to 64"),
    ({"name": ""}, "webhooks.endpoints.0.name: expected 1 to 64"),
    ({"url": "ftp://crm.example/x"},
     "webhooks.endpoints.0.url: must be an http:// or https:// URL, got ftp scheme"),
    ({"url": "crm.example/hooks"}, "webhooks.endpoints.0.url: must be an http:// or https://"),
    ({"url": "https:///hooks"}, "webhooks.endpoints.0.url: names no host"),
    ({"url": "https://crm.example:99999/x"}, "webhooks.endpoints.0.url: not a usable URL"),
    ({"url": "https://crm.example/a b"}, "webhooks.endpoints.0.url: must not contain spaces"),
    # a zero-width space pasted with the URL: httpx refused every request, for ever
    ({"url": "https://crm\u200b.example/hooks"},
     "webhooks.endpoints.0.url: not a usable URL: Invalid IDNA hostname"),
    ({"url": "https://crm.example/\x7f"}, "webhooks.endpoints.0.url: not a usable URL"),
    ({"headers": {"X-Crmflow-Attempt": "9"}},
     "webhooks.endpoints.0.headers: X-Crmflow-Attempt is set by crmflow or by HTTP itself"),
    ({"headers": {"content-type": "text/plain"}}, "content-type is set by crmflow or by HTTP"),
    ({"headers": {"Bad Name": "x"}}, "'Bad Name' is not an HTTP header name"),
    ({"headers": {"X-Key": "a\r\nX-Evil: 1"}},
     "webhooks.endpoints.0.headers: the value of X-Key must be printable ASCII"),
    ({"headers": {"X-Key": "a", "x-key": "b"}}, "x-key is listed twice"),
    ({"secret": "short"}, "webhooks.endpoints.0.secret: must be at least 16 characters"),
    ({"secret": f" {SECRET}"}, "webhooks.endpoints.0.secret: has spaces around it"),
    ({"secret": None}, "webhooks.endpoints.0.secret: give the signing secret"),
    ({"secret_env": "CRM_SECRET"}, "webhooks.endpoints.0.secret: give the signing secret"),
    ({"types": ["welcome", "anniversary"]},
     "webhooks.endpoints.0.types.1: unknown trigger type 'anniversary'"),
    ({"types": ["welcome", "welcome"]},
     "webhooks.endpoints.0.types: listed more than once: welcome"),
    ({"statuses": ["sent", "bounced"]},
     "webhooks.endpoints.0.statuses.1: unknown decision status 'bounced' (known: sent, "
     "holdout, deferred, suppressed, done, skipped)"),
    ({"statuses": []}, "webhooks.endpoints.0.statuses: list the statuses to deliver"),
    ({"timeout": "soon"}, "webhooks.endpoints.0.timeout: invalid duration 'soon'"),
    ({"timeout": "0s"}, "webhooks.endpoints.0.timeout: Input should be greater than 0"),
    ({"timeout": "10m"}, "webhooks.endpoints.0.timeout: Input should be less than or equal"),
    ({"max_attempts": 0}, "webhooks.endpoints.0.max_attempts: Input should be greater than"),
    ({"concurrency": 0}, "webhooks.endpoints.0.concurrency: Input should be greater than"),
    ({"start_from": "backlog"}, "webhooks.endpoints.0.start_from: Input should be 'new' or"),
    ({"backoff_initial": "10m"},
     "webhooks.endpoints.0: backoff_initial (10m) is longer than backoff_max (5m)"),
    ({"method": "PUT"}, "webhooks.endpoints.0.method: unknown setting"),
    ({"previous_secret": "short"},
     "webhooks.endpoints.0.previous_secret: must be at least 16 characters"),
    ({"previous_secret": "p" * 20, "previous_secret_env": "OLD_SECRET"},
     "webhooks.endpoints.0.previous_secret: give it as previous_secret or as "
     "previous_secret_env, not both"),
    ({"previous_secret": SECRET}, "webhooks.endpoints.0.previous_secret: the same as secret"),
])
def test_a_bad_endpoint_stops_start_up_naming_the_field(tmp_path: Path, change: dict[str, Any],
                                                         words: str) -> None:
    message = refused(tmp_path, endpoint(**change))
    assert words in message, message
    assert SECRET not in message


def test_endpoint_names_are_unique_and_every_field_is_required(tmp_path: Path) -> None:
    assert "\n  webhooks.endpoints: names must be distinct: 'crm' is listed more than once" in (
        refused(tmp_path, endpoint(), endpoint(url="https://other.example/")))
    assert "webhooks.endpoints.0.url: Field required" in refused(tmp_path, {"name": "x",
                                                                           "secret": SECRET})


def test_the_secret_may_come_from_a_variable_which_the_deliverer_checks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the deliverer needs the variable: the API and the dataflow load the same file on
    hosts that hold no webhook secret."""
    hook = endpoint(secret=None, secret_env="CRM_SECRET")
    hooks = load(tmp_path, hook).webhooks
    with pytest.raises(ConfigError, match="webhooks.endpoints.0.secret_env: the environment "
                                          "variable CRM_SECRET is not set"):
        hooks.check_secrets()
    monkeypatch.setenv("CRM_SECRET", "short")
    with pytest.raises(ConfigError, match="webhooks.endpoints.0.secret_env: the secret in "
                                          "CRM_SECRET must be at least 16 characters"):
        hooks.check_secrets()
    monkeypatch.setenv("CRM_SECRET", SECRET)
    hooks.check_secrets()
    [crm] = hooks.endpoints
    assert crm.signing_key() == SECRET.encode() and crm.secret is None
    load(tmp_path, endpoint()).webhooks.check_secrets()  # a secret given: nothing to check
    assert "webhooks.endpoints.0.secret_env: not an environment variable name" in refused(
        tmp_path, endpoint(secret=None, secret_env="1-X"))
    both = endpoint(secret_env="CRM_SECRET")
    assert "webhooks.endpoints.0.secret: give the signing secret, either" in refused(
        tmp_path, both)


def test_section_values_are_checked(tmp_path: Path) -> None:
    assert "webhooks.claim_after: Input should be greater than or equal to 1" in refused(
        tmp_path, claim_after="500ms")
    assert "webhooks.consumer: expected 1 to 128" in refused(tmp_path, consumer="a b")
    assert "webhooks.metrics_port: Input should be less than" in refused(
        tmp_path, metrics_port=70000)
    assert "webhooks.nope: unknown setting" in refused(tmp_path, nope=1)


def test_the_metrics_port_is_none_the_api_or_dataflow_listen_on(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "dataflow": {"processes": 4},
        "webhooks": {"endpoints": [endpoint()], "metrics_port": 9103}}))
    with pytest.raises(ConfigError, match=r"webhooks.metrics_port: 9103 is also "
                                          r"dataflow.metrics_port \+ 2"):
        load_settings(path)
    path.write_text(yaml.safe_dump({"webhooks": {"endpoints": [endpoint()],
                                                 "metrics_port": 8000}}))
    with pytest.raises(ConfigError, match="webhooks.metrics_port: 8000 is also api.port"):
        load_settings(path)
    path.write_text(yaml.safe_dump({"webhooks": {"metrics_port": 8000}}))
    assert load_settings(path).webhooks.metrics_port == 8000  # nothing to deliver: no clash


def test_endpoints_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMFLOW_WEBHOOKS__ENDPOINTS", json.dumps(
        [{"name": "crm", "url": "http://127.0.0.1:9/x", "secret": SECRET}]))
    monkeypatch.setenv("CRMFLOW_WEBHOOKS__CLAIM_AFTER", "5m")
    settings = load_settings()
    assert [e.name for e in settings.webhooks.endpoints] == ["crm"]
    assert settings.webhooks.claim_after == 300.0
