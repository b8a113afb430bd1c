"""An API fuzz run from the OpenAPI spec (schemathesis) over real HTTP: no 5xx, and no
response that breaks the documented schema, whatever the requests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from sinks.keys import KeyLayout
from tests.support import ADMIN_KEY, api_server, make_settings


@pytest.fixture
def api_schema(redis_url: str, key_prefix: str) -> Iterator[Any]:
    settings = make_settings(redis_url, key_prefix)
    client = redis.Redis.from_url(redis_url)  # a dataflow's heartbeat: /readyz is ready
    client.set(KeyLayout.from_settings(settings).heartbeat(), "fuzz", ex=600)
    client.close()
    with api_server(settings) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_no_5xx_and_responses_match_the_schema(case: Any) -> None:
    if case.method == "DELETE":  # no dataflow runs here: an erasure would wait for nothing
        case.query = {**(case.query or {}), "wait": 0}
    case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, checks=CHECKS)


# What the API promises: no server error, only documented status codes, content types,
# headers and bodies. (Not "every schema-valid body is accepted": a Segment message's rules
# are richer than its JSON schema, and the 400 that says which field is wrong is documented.)
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance]
