"""Dependencies: the per-app resources and the key checks, as Annotated aliases.

All are `async def` on purpose: FastAPI runs a plain `def` dependency in a thread pool,
which costs more than the whole profile read.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status

from api.keys import KeyScopes
from api.metrics import ApiMetrics
from api.segment_rules_view import SegmentRulesView
from config.settings import Settings
from features.lookup import point_of
from features.state import ClientState
from sinks.event_log import AsyncEventLog
from sinks.keys import KeyLayout
from sinks.profile_store import ProfileStore


@dataclass(frozen=True)
class Resources:
    """Built in the app's lifespan; tests build their own app, so nothing is global."""

    settings: Settings
    redis: aioredis.Redis
    layout: KeyLayout
    event_log: AsyncEventLog
    metrics: ApiMetrics
    segments: SegmentRulesView
    keys: KeyScopes = field(init=False)
    profiles: ProfileStore = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", KeyScopes.from_settings(self.settings.api))
        object.__setattr__(self, "profiles", ProfileStore(self.redis, self.layout))


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


def _forbidden(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail=detail)


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
    scopes = resources.keys.of(key)
    if not scopes & {"write", "admin"}:
        if scopes:
            raise _forbidden("a read key may not write events: send a write key")
        raise _unauthorized("invalid write key", 'Basic realm="crmflow"')


@dataclass(frozen=True, slots=True)
class ReadGrant:
    """A read key's reach: every client, or (a point's key) the clients of one point."""

    point: str | None = None
    scope: str = "read"  # read, admin or point: what the key was issued as

    def sees(self, state: ClientState) -> bool:
        """A client of another point is answered as unknown (404): its existence is not
        the key's business either."""
        return self.point is None or point_of(state.traits) == self.point


READ_GRANT, ADMIN_GRANT = ReadGrant(), ReadGrant(scope="admin")


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 401: no valid key; 403: a valid key of another scope
    detail: str


def read_grant(resources: Resources, authorization: str | None, *, needs: str = "read key",
               action: str = "read") -> ReadGrant | Refusal:
    """What the Authorization header's read (or admin) key may read, else the refusal;
    `needs` and `action` name the key and the act in the refusal's words."""
    credential = credential_of(authorization)
    if credential is None or credential[0] != "bearer":
        return Refusal(401, f"missing {needs}: send Authorization: Bearer <{needs}>")
    scopes = resources.keys.of(credential[1])
    if "admin" in scopes:
        return ADMIN_GRANT
    if "read" in scopes:
        return READ_GRANT
    if "point" in scopes:
        return ReadGrant(resources.keys.point(credential[1]), "point")
    if scopes:
        article = "an" if needs[0] in "aeiou" else "a"
        return Refusal(403, f"a write key may not {action}: send {article} {needs}")
    return Refusal(401, f"invalid {needs}")


def granted(resources: Resources, request: Request, **words: str) -> ReadGrant:
    """`read_grant` of the request's key, or the refusal raised as 401 or 403."""
    grant = read_grant(resources, request.headers.get("authorization"), **words)
    if isinstance(grant, Refusal):
        if grant.status == status.HTTP_403_FORBIDDEN:
            raise _forbidden(grant.detail)
        raise _unauthorized(grant.detail, "Bearer")
    return grant


async def require_read_key(request: Request) -> Resources:
    """The resources, for a caller with a read key (one dependency: reads are the hot path).
    The key's reach is left in `request.state.grant`."""
    resources: Resources = request.app.state.resources
    request.state.grant = granted(resources, request)
    return resources


async def grant_of(request: Request) -> ReadGrant:
    grant: ReadGrant = request.state.grant
    return grant


async def require_admin_key(request: Request, resources: ResourcesDep) -> None:
    """Writes that act on a client's record (erasures) need a secret key: the write key is
    public in every browser that runs analytics.js. Sent as every secret key is (Bearer),
    with the same refusals as reads and touches."""
    grant = granted(resources, request, needs="admin key", action="do this")
    if grant.scope != "admin":
        raise _forbidden("this key may not do this: an admin key is required")


AdminKey = Depends(require_admin_key)
ReadAccess = Annotated[Resources, Depends(require_read_key)]
Grant = Annotated[ReadGrant, Depends(grant_of)]
