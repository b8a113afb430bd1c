"""Dependencies: the per-app resources and the key checks, as Annotated aliases.

All are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool,
which costs more than the whole profile read.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status

from api.metrics import ApiMetrics
from api.segment_rules_view import SegmentRulesView
from config.settings import Settings
from sinks.event_log import AsyncEventLog
from sinks.keys import KeyLayout


@dataclass(frozen=True)
class Resources:
    """Built in the app's lifespan; tests build their own app, so nothing is global."""

    settings: Settings
    redis: aioredis.Redis
    layout: KeyLayout
    event_log: AsyncEventLog
    metrics: ApiMetrics
    segments: SegmentRulesView


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def _credential(request: Request) -> tuple[str, str] | None:
    return credential_of(request.headers.get("authorization"))


def credential_of(header: str | None) -> tuple[str, str] | None:
    """(scheme, secret) from Authorization: Basic user:  or  Bearer token."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            user, _, _ = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return scheme, user
    if scheme == "bearer":
        return scheme, value.strip()
    return None


def _matches(secret: str, keys: list[str]) -> bool:
    return any(hmac.compare_digest(secret.encode(), key.encode()) for key in keys)


def _unauthorized(detail: str, scheme: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": scheme})


def check_write_key(request: Request, resources: Resources, body_key: object = None) -> None:
    """Segment style: the write key as the HTTP Basic user name (Bearer also accepted), or,
    as analytics.js sends it from browsers, as `writeKey` in the JSON body."""
    credential = _credential(request)
    key = credential[1] if credential is not None else body_key
    if not isinstance(key, str) or not key:
        raise _unauthorized("missing write key: send it as the HTTP Basic user name "
                            "or as writeKey in the body", 'Basic realm="crmflow"')
    api = resources.settings.api
    if not _matches(key, api.write_keys + api.admin_keys):
        raise _unauthorized("invalid write key", 'Basic realm="crmflow"')


async def require_write_key(request: Request, resources: ResourcesDep) -> None:
    check_write_key(request, resources)


def read_key_allows(resources: Resources, authorization: str | None) -> str | None:
    """None when the Authorization header carries a read (or admin) key, else the refusal."""
    credential = credential_of(authorization)
    if credential is None or credential[0] != "bearer":
        return "missing read key: send Authorization: Bearer <read key>"
    api = resources.settings.api
    if not _matches(credential[1], api.read_keys + api.admin_keys):
        return "invalid read key"
    return None


async def require_read_key(request: Request) -> Resources:
    """The resources, for a caller with a read key (one dependency: reads are the hot path)."""
    resources: Resources = request.app.state.resources
    refusal = read_key_allows(resources, request.headers.get("authorization"))
    if refusal is not None:
        raise _unauthorized(refusal, "Bearer")
    return resources


async def require_admin_key(request: Request, resources: ResourcesDep) -> None:
    """Writes that act on a client's record (manual touches) need a secret key: the write
    key is public in every browser that runs analytics.js."""
    credential = _credential(request)
    if credential is None:
        raise _unauthorized("missing admin key: send Authorization: Bearer <admin key>",
                            "Bearer")
    api = resources.settings.api
    if not _matches(credential[1], api.admin_keys):
        if _matches(credential[1], api.read_keys + api.write_keys):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                detail="this key may not do this: an admin key is required")
        raise _unauthorized("an admin key is required", "Bearer")


WriteKey = Depends(require_write_key)
AdminKey = Depends(require_admin_key)
ReadAccess = Annotated[Resources, Depends(require_read_key)]
