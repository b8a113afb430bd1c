"""The deployment files say what the README promises (no Docker engine runs in CI)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_has_redis_with_persistence_api_and_dataflow() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"redis", "api", "dataflow"}
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert "healthcheck" in redis and "ports" not in redis  # not published beyond compose
    for name in ("api", "dataflow"):
        service = services[name]
        assert service["command"] == [name]
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_dockerfile_installs_every_package_the_image_runs() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    declared = tomllib.loads(pyproject)["tool"]["setuptools"]["packages"]
    for package in {name.split(".")[0] for name in declared}:  # every one pip will build
        assert f"COPY {package} {package}" in dockerfile, package


def exported_metric_names() -> set[str]:
    """Every sample name the API, the store gauges, the dataflow and the webhook deliverer
    export."""
    from prometheus_client import CollectorRegistry

    from api.metrics import ApiMetrics
    from api.store_metrics import StoreMetrics
    from dataflows.metrics import DataflowMetrics
    from sinks.webhook_metrics import WebhookMetrics

    registry = CollectorRegistry()
    ApiMetrics.create(registry)
    StoreMetrics(registry)
    DataflowMetrics.create(registry)
    WebhookMetrics.create(registry)
    names = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(
            family.type, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_the_dashboard_queries_only_metrics_the_code_exports() -> None:
    import json
    import re

    dashboard = json.loads((REPO / "deploy/grafana/dashboards/crmflow.json").read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    exported = exported_metric_names()
    titles = set()
    for panel in dashboard["panels"]:
        assert panel["type"] == "timeseries" and {"h", "w", "x", "y"} <= set(panel["gridPos"])
        titles.add(panel["title"])
        for target in panel["targets"]:
            named = set(re.findall(r"\bcrmflow_[a-z_]+", target["expr"]))
            bytewax = set(re.findall(r"\bbytewax_[a-z_]+", target["expr"]))
            assert named or bytewax, panel["title"]  # Bytewax's: see test_metrics.py
            assert named <= exported, (panel["title"], named - exported)
            # a panel in seconds draws only times in seconds, unless the series says otherwise
            counted = not any(name.endswith(("_seconds", "_seconds_bucket", "_seconds_sum"))
                              for name in named | bytewax)
            if panel["fieldConfig"]["defaults"].get("unit") == "s" and counted:
                overridden = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]
                              if o["matcher"]["id"] == "byFrameRefID"
                              and any(p["id"] == "unit" for p in o["properties"])}
                assert target["refId"] in overridden, (panel["title"], target["expr"])
    wanted = ("Ingest", "lag", "Triggers", "Segment sizes", "API latency")
    assert all(any(word in title for title in titles) for word in wanted)


def test_prometheus_scrapes_the_api_and_the_dataflow_and_grafana_is_provisioned() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prometheus", "grafana"} <= set(services)
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for group in job["static_configs"]
               for t in group["targets"]}
    assert {"api:8000", "dataflow:9101", "dataflow:3030", "deliver:9180"} <= targets
    deliver = services["deliver"]  # the webhook deliverer, with the `webhooks` profile
    assert deliver["command"] == ["deliver"] and deliver["profiles"] == ["webhooks"]
    assert deliver["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert deliver["environment"]["CRMFLOW_WEBHOOKS__METRICS_HOST"] == "0.0.0.0"
    # Bytewax's server serves crmflow's series as well: scraped twice, sums read double
    [bytewax] = [job for job in scrape["scrape_configs"] if job["job_name"] == "bytewax"]
    assert bytewax["metric_relabel_configs"] == [
        {"source_labels": ["__name__"], "regex": "crmflow_.*", "action": "drop"}]
    environment = services["dataflow"]["environment"]
    assert environment["CRMFLOW_DATAFLOW__PROCESSES"].startswith("${CRMFLOW_DATAFLOW_PROCESSES")
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = volume.split(":")[0]
        assert not source.startswith("./") or (REPO / source).exists(), source


def test_docker_compose_validates_the_file() -> None:
    import os
    import shutil
    import subprocess

    import pytest

    if shutil.which("docker-compose"):
        command = ["docker-compose", "config", "-q"]
    elif shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=60,
            check=False).returncode == 0:
        command = ["docker", "compose", "config", "-q"]
    else:
        pytest.skip("neither docker-compose nor docker's compose plugin is installed (make "
                    "test installs Debian's docker-compose when it runs as root)")
    env = {**os.environ, "CRMFLOW_WRITE_KEY": "w", "CRMFLOW_READ_KEY": "r",
           "GRAFANA_ADMIN_PASSWORD": "g"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    missing = subprocess.run(command, cwd=REPO, env={**env, "CRMFLOW_WRITE_KEY": ""},
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode != 0 and "CRMFLOW_WRITE_KEY" in missing.stderr


def test_the_alert_rules_parse_and_watch_what_the_code_exports() -> None:
    """Every rule's query parses as PromQL, names only metrics the code exports (and
    scrape jobs Prometheus has), and Prometheus loads the file the compose stack mounts."""
    import re

    import promql_parser

    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["prometheus"]["volumes"])
    assert mounts["./deploy/prometheus/alerts.yml"] in scrape["rule_files"]
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    exported = exported_metric_names()
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {"CrmflowDataflowDown", "CrmflowConsumerLag", "CrmflowIngestRefused",
            "CrmflowDeadLetters", "CrmflowWebhookFailures", "CrmflowWebhookNotDelivering",
            "CrmflowWebhookRecordsLost"} <= {rule["alert"] for rule in alerts}
    for rule in alerts:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        named = set(re.findall(r"\bcrmflow_[a-z_]+", rule["expr"]))
        assert named <= exported, (rule["alert"], named - exported)
        assert set(re.findall(r'job="([^"]+)"', rule["expr"])) <= jobs, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and re.fullmatch(r"\d+[smh]", rule["for"])
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/crmflow.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql_parser.parse(target["expr"])
