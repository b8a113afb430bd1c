"""What the entry points share: finding (or starting) Redis, and the access keys of `up`."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import redis

from config.settings import Settings
from crmflow.redis_server import EmbeddedRedis
from sinks.redis_client import connection_name

log = logging.getLogger(__name__)


def _running_embedded(settings: Settings) -> str | None:
    """An embedded Redis already serving our data folder (e.g. started by `crmflow api`)."""
    url = f"redis://127.0.0.1:{settings.redis.embedded_port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=1)
    try:
        served = client.config_get("dir").get("dir")
    except redis.RedisError:
        return None
    finally:
        client.close()
    return url if served == str(settings.redis.data_dir.resolve()) else None


class EmbeddedLease:
    """This process's use of the embedded Redis, started by it or by a sibling.

    `crmflow api` and `crmflow dataflow` run separately share one embedded server; the last
    of them to leave shuts it down (saving), whichever started it.
    """

    def __init__(self, url: str, server: EmbeddedRedis | None) -> None:
        self.url = url
        self._server = server

    @property
    def server(self) -> EmbeddedRedis | None:
        """The server process, when this process started it."""
        return self._server

    def release(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=5, client_name=connection_name())
        try:
            others = [c for c in client.client_list() if c.get("name") != connection_name()]
            if others:
                log.info("embedded redis stays up: %d other connection(s)", len(others))
                return
            if self._server is not None:
                client.close()
                self._server.stop()
            else:
                with contextlib.suppress(redis.ConnectionError):  # it closes the connection
                    client.shutdown(save=True)
        except redis.ConnectionError:
            log.debug("embedded redis already stopped")
        except redis.RedisError as exc:
            log.warning("embedded redis: %s", exc)
        finally:
            client.close()


def with_redis(settings: Settings) -> tuple[Settings, EmbeddedLease | None]:
    """Settings pointing at a live Redis, and our lease on the embedded one, if used."""
    if settings.redis.url:
        return settings, None
    url = _running_embedded(settings)
    server = None
    if url is None:
        server = EmbeddedRedis(settings.redis.data_dir, port=settings.redis.embedded_port)
        try:
            server.start()
        except RuntimeError as exc:  # e.g. another Redis, not serving our folder, has the port
            raise SystemExit(f"crmflow: the embedded Redis (redis.embedded_port "
                             f"{settings.redis.embedded_port}, redis.data_dir "
                             f"{settings.redis.data_dir}) did not start: {exc}") from None
        url = server.url
    redis_section = settings.redis.model_copy(update={"url": url})
    return settings.model_copy(update={"redis": redis_section}), EmbeddedLease(url, server)


def ensure_keys(settings: Settings, keys_file: Path) -> Settings:
    """For `crmflow up`: generate keys once (kept in var/) when none are configured."""
    api = settings.api
    if api.write_keys and api.read_keys and api.admin_keys:
        return settings
    stored: Any = {}
    if keys_file.exists():
        try:
            stored = json.loads(keys_file.read_text())
        except ValueError:
            stored = None
        if not isinstance(stored, dict):  # e.g. emptied by a crash: never replace keys quietly
            raise SystemExit(f"crmflow up: {keys_file} is not the JSON object of keys it "
                             "wrote; fix it, or delete it to generate new keys")
    missing = {name: prefix for name, prefix in (("write_key", "wk_"), ("read_key", "rk_"),
                                                 ("admin_key", "ak_")) if not stored.get(name)}
    if missing:
        stored.update({name: prefix + secrets.token_urlsafe(18)
                       for name, prefix in missing.items()})
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        keys_file.write_text(json.dumps(stored, indent=2))
        keys_file.chmod(0o600)
    update = {
        "write_keys": api.write_keys or [stored["write_key"]],
        "read_keys": api.read_keys or [stored["read_key"]],
        "admin_keys": api.admin_keys or [stored["admin_key"]],
    }
    return settings.model_copy(update={"api": api.model_copy(update=update)})


def check_api_keys(settings: Settings) -> None:
    if not settings.api.write_keys and not settings.api.admin_keys:
        raise SystemExit("config error: api.write_keys is empty: set CRMFLOW_WRITE_KEY "
                         "(or api.write_keys in the config file)")
    if not settings.api.read_keys and not settings.api.admin_keys:
        raise SystemExit("config error: api.read_keys is empty: set CRMFLOW_READ_KEY "
                         "(or api.read_keys in the config file)")
