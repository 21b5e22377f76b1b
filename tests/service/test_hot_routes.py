"""``POST /challenge`` and ``POST /attest`` answer the same through the hot routes as through FastAPI.

A request for either route without a query string is served by :class:`tsmr.service.app.VerifierApp`
beside FastAPI's machinery; the same request with a query string FastAPI accepts and that changes
nothing (``?refvals=default``, the verifier's own reference values, needs no token) goes through
FastAPI.  Each case here is sent both ways to one real ``tsmr serve`` and the answers compared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from .conftest import Emulator, Server

VIA_FASTAPI = {"refvals": "default"}


def _shape(r: httpx.Response) -> tuple[int, Any]:
    """What must agree between the two ways: the status and the error code and detail (or the success's keys)."""
    body = r.json()
    if r.status_code >= 400:
        return r.status_code, (body["error"], body["detail"])
    return r.status_code, sorted(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, emulator: Emulator) -> Iterator[Server]:
    """One verifier for the module: every case uses fresh nonces, so they do not interfere."""
    work = tmp_path_factory.mktemp("hot")
    srv = Server(work / "a", database=f"sqlite:///{work / 'v.db'}", trust_root=emulator.trust_root).start()
    try:
        srv.cover()
        yield srv
    finally:
        srv.stop()


def _both(c: httpx.Client, path: str, **kw: Any) -> tuple[httpx.Response, httpx.Response]:
    return c.post(path, **kw), c.post(path, params=VIA_FASTAPI, **kw)


def test_challenges_are_the_same_both_ways(server: Server) -> None:
    with server.client() as c:
        hot, api = c.post("/challenge"), c.post("/challenge", params={"unused": "1"})
    assert hot.status_code == api.status_code == 201
    assert hot.headers["content-type"] == api.headers["content-type"] == "application/json"
    for r in (hot, api):
        assert sorted(r.json()) == ["expires_at", "nonce"] and re.fullmatch("[0-9a-f]{64}", r.json()["nonce"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", r.json()["expires_at"]), r.text
        assert re.fullmatch("[0-9a-f]{16}", r.headers["x-request-id"])
    assert hot.json()["nonce"] != api.json()["nonce"]


def _counts(text: str) -> dict[tuple[str, str], int]:
    """POST /attest requests by status, and attestations by outcome, from the Prometheus text."""
    out: dict[tuple[str, str], int] = {("/attest", "201"): 0, ("/attest", "409"): 0, ("affirming", ""): 0}
    for route, status, n in re.findall(r'tsmr_http_requests_total\{method="POST",route="([^"]+)",status="(\d+)"\} (\d+)',
                                       text):
        out[(route, status)] = int(n)
    for status, n in re.findall(r'tsmr_attestations_total\{status="([^"]+)"\} (\d+)', text):
        out[(status, "")] = int(n)
    return out


def test_attestations_are_the_same_both_ways(server: Server, emulator: Emulator) -> None:
    with server.client() as c:
        before = _counts(c.get("/metrics").text)
        answers = []
        for params in ({}, VIA_FASTAPI):
            nonce = c.post("/challenge").json()["nonce"]
            answers.append(c.post("/attest", json=emulator.bundle(nonce), params=params))
        hot, api = answers
        assert _shape(hot) == _shape(api) == (201, ["ear", "findings", "id", "result", "status"])
        assert hot.json()["status"] == api.json()["status"] == "affirming", hot.text[:2000]
        assert hot.json()["result"]["registers"] == api.json()["result"]["registers"]
        for r in (hot, api):
            assert r.headers["location"] == f"/results/{r.json()['id']}"
            stored = c.get(r.headers["location"]).json()
            assert stored["status"] == r.json()["status"] and stored["ear"] == r.json()["ear"]
        # the same nonce again, both ways: used
        again = emulator.bundle(hot.json()["result"]["nonce"])
        assert [_shape(r) for r in _both(c, "/attest", json=again)] == [
            (409, ("freshness.nonce-reused", "this nonce was already used"))] * 2
        # both counted under the route's template, whichever way they came
        after = _counts(c.get("/metrics").text)
        assert after[("/attest", "201")] - before[("/attest", "201")] == 2
        assert after[("/attest", "409")] - before[("/attest", "409")] == 2
        assert after[("affirming", "")] - before[("affirming", "")] == 2


def _deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize("case,content,headers,expect", [
    ("not JSON", b"{nope", {"content-type": "application/json"}, (400, "request.json")),
    ("empty", b"", {"content-type": "application/json"}, (422, "request.invalid")),
    ("media type", b"{}", {"content-type": "text/plain"}, (415, "request.media-type")),
    ("too deep", _deep(100), {"content-type": "application/json"}, (422, "request.too-deep")),
    ("wrapped", json.dumps({"bundle": {}}).encode(), {"content-type": "application/json"}, (422, "request.invalid")),
    ("no evidence", json.dumps({"format": "tsmr-evidence", "version": 1, "nonce": "00" * 32}).encode(),
     {"content-type": "application/json"}, (422, "request.invalid")),
    ("unknown nonce", None, {"content-type": "application/json"}, (403, "freshness.nonce-unknown")),
    ("no media type", b"{nope", {}, (400, "request.json")),  # read as JSON, as FastAPI does
])
def test_refusals_are_the_same_both_ways(server: Server, emulator: Emulator, case: str, content: bytes | None,
                                         headers: dict[str, str], expect: tuple[int, str]) -> None:
    if content is None:
        content = json.dumps(emulator.bundle("ab" * 32)).encode()  # a nonce this verifier never issued
    with server.client() as c:
        hot, api = _both(c, "/attest", content=content, headers=headers)
    assert _shape(hot) == _shape(api), (hot.text[:1000], api.text[:1000])
    assert (hot.status_code, hot.json()["error"]) == expect, hot.text[:1000]
    assert "Traceback" not in hot.text


def test_a_body_over_the_limit_is_refused_both_ways(server: Server) -> None:
    big = b"x" * (16 * 1024 * 1024 + 1)
    with server.client() as c:
        hot, api = _both(c, "/attest", content=big, headers={"content-type": "application/json"})
        assert _shape(hot) == _shape(api) and hot.status_code == 413 and hot.json()["error"] == "request.too-large"
        # a challenge takes no body over the default limit (1 MiB) either way
        small = b"x" * (1024 * 1024 + 1)
        hot, api = _both(c, "/challenge", content=small)
        assert _shape(hot) == _shape(api) and hot.status_code == 413


@pytest.mark.filterwarnings("ignore:Using `httpx` with")
def test_only_requests_with_a_query_go_through_fastapi(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from tsmr.service.app import create_app
    from tsmr.service.settings import Settings

    app = create_app(Settings(state_dir=str(tmp_path)))
    with TestClient(app) as c:
        stack, seen = app.middleware_stack, []
        assert stack is not None  # built by the lifespan's startup

        async def spy(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope["method"], scope["path"], scope["query_string"]))
            await stack(scope, receive, send)

        app.middleware_stack = spy
        assert c.post("/challenge").status_code == 201
        assert c.post("/attest", content=b"{nope").status_code == 400
        assert c.post("/challenge", params={"x": "1"}).status_code == 201
        assert c.get("/challenge").status_code == 405
        assert seen == [("POST", "/challenge", b"x=1"), ("GET", "/challenge", b"")]
