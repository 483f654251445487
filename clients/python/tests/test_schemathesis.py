"""schemathesis against the server's own ``/openapi.json``: generated requests to every operation
(the endless streams excepted) never get a 5xx, and every response matches the document
(status code and body schema).

Bounded in time: a fixed number of examples per operation, long polls capped short, and the
server's request deadline at 2 s.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from conftest import BatonServer

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatonServer]:
    # A 2 s request deadline bounds every long poll to 1 s, whatever body the fuzzer sends.
    server = BatonServer(
        tmp_path_factory.mktemp("schemathesis"),
        secrets.token_urlsafe(24),
        ["--request-timeout", "2s"],
    )
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def api_schema(fuzzed: BatonServer) -> Any:
    return schemathesis.openapi.from_url(
        f"{fuzzed.url}/openapi.json",
        headers={"Authorization": f"Bearer {fuzzed.token}"},
        timeout=10,
    )


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=r"/stream$")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_keeps_its_openapi_document(case: Any, fuzzed: BatonServer) -> None:
    # A long poll holds its request up to wait_ms (the document's own example is 59,999):
    # capped, generated and explicit examples alike, so that the run stays short.
    if case.path.endswith("/poll") and isinstance(case.body, dict):
        wait = case.body.get("wait_ms", 20_000)
        if isinstance(wait, int) and not isinstance(wait, bool):
            case.body["wait_ms"] = min(wait, 50)
    case.call_and_validate(
        base_url=fuzzed.url,
        headers={"Authorization": f"Bearer {fuzzed.token}"},
        checks=CHECKS,
        timeout=15,
    )
