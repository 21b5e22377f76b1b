"""The verifier's OpenAPI schema, fuzzed by schemathesis against a running ``tsmr serve`` (bounded).

Every operation gets at most 30 generated requests (valid and invalid ones),
with the admin token, so the admin operations run too.  Checks: no 5xx, status
codes, content types and response bodies as the schema documents them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import Server, admin_headers  # noqa: E402


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d: Path = tmp_path_factory.mktemp("openapi")
    with Server(d, database=f"sqlite:///{d / 'v.db'}", trust_root=None) as srv:
        yield srv
        log = srv.log()
        assert '"level":"error"' not in log, log  # no unhandled exception while fuzzing


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_operations_conform_to_the_schema(fuzzed_server: Server, mode: str) -> None:
    """Each operation in turn, driven through hypothesis directly (bounded: 30 examples each)."""
    from hypothesis import given

    api = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json", wait_for_schema=30)
    generation = schemathesis.GenerationMode.POSITIVE if mode == "positive" else schemathesis.GenerationMode.NEGATIVE
    failures: list[str] = []
    ran = 0
    for item in api.get_all_operations():
        operation = item.ok()

        @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=generation))
        def run(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(base_url=fuzzed_server.url, headers=admin_headers(), timeout=30, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            pass  # negative data for an operation without parameters or body: there is none
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
        ran += 1
    assert ran >= 12
    assert not failures, "\n\n".join(failures)


def test_schema_covers_every_route(fuzzed_server: Server) -> None:
    import httpx

    doc = httpx.get(f"{fuzzed_server.url}/openapi.json", timeout=10).json()
    paths = doc["paths"]
    assert {"/challenge", "/attest", "/results/{result_id}", "/.well-known/jwks.json", "/healthz", "/metrics",
            "/policies", "/policies/{name}", "/policies/{name}/versions", "/refvals", "/refvals/{name}",
            "/refvals/{name}/versions", "/nodes", "/nodes/{node_id}"} <= set(paths)
    assert {"get", "put", "delete"} <= set(paths["/nodes/{node_id}"])
    attest = paths["/attest"]["post"]
    # the body is the bundle itself, described by its schema
    ref = attest["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/Bundle"
    bundle = doc["components"]["schemas"]["Bundle"]
    assert {"format", "version", "nonce", "evidence"} <= set(bundle["required"])
    assert bundle["properties"]["evidence"]["$ref"] == "#/components/schemas/BundleEvidence"
    assert "BundleLog" in doc["components"]["schemas"]
    assert {p["name"] for p in attest["parameters"] if p["in"] == "query"} == {"policy", "refvals", "node"}
    assert {"201", "403", "409", "410", "413", "422"} <= set(attest["responses"])
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
