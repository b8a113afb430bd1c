"""The deployment files say what the README promises (no Docker engine runs in CI)."""

from __future__ import annotations

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
    packages = ["features", "dataflows", "sinks", "api", "config", "crmflow"]
    for package in packages:
        assert f"COPY {package} {package}" in dockerfile
        assert f'"{package}"' in pyproject
