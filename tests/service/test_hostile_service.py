"""Attacks on the verifier, end to end against real ``tsmr serve`` processes on SQLite and PostgreSQL.

Each test performs the attack over HTTP and checks the refusal, its error code, and that
nothing was stored (or spent) that should not be: the attester choosing a lenient policy,
hostile JSON that used to fail after the nonce was spent, database trouble behind a healthy
``/healthz``, start-up failures as tracebacks, and an unlimited ``/challenge``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import ADMIN_TOKEN, SERVE, Emulator, Server, admin_headers

ALLOW_ALL = "package tsmr\n\nimport rego.v1\n\ndefault allow := true\n"
DENY_ALL = ('package tsmr\n\nimport rego.v1\n\ndefault allow := false\n\n'
            'deny contains {"id": "no-entry", "msg": "nothing is allowed here"}\n')
NO_REFVALS = {"format": "tsmr-refvals", "version": 1, "id": "lenient"}


# -- helpers --------------------------------------------------------------------------------------

def _count(url: str, table: str, where: str = "") -> int:
    from sqlalchemy import text

    from tsmr.service.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table} {where}")).scalar_one())
    finally:
        engine.dispose()


def _tsmr(*args: str) -> "subprocess.CompletedProcess[str]":
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    return subprocess.run([sys.executable, "-m", "tsmr", *args], capture_output=True, text=True, timeout=120, env=env)


def _serve(*args: str, env: dict[str, str] | None = None) -> "subprocess.CompletedProcess[str]":
    base = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    return subprocess.run([sys.executable, SERVE, "serve", "--port", "0", *args], capture_output=True, text=True,
                          timeout=120, env={**base, **(env or {})})


def _json_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text
    assert r.json()["error"] == code, r.text[:500]


def _no_unhandled_error(srv: Server) -> None:
    log = srv.log()
    assert '"level":"error"' not in log and "Traceback" not in log, log


def _wait_listening(srv: Server, timeout: float = 60.0) -> None:
    """Wait until the server answers HTTP at all (its /healthz may rightly say 503)."""
    assert srv.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert srv.proc.poll() is None, srv.log()
        try:
            httpx.get(srv.url + "/healthz", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"the verifier did not listen within {timeout} s:\n{srv.log()}")


def _poll_health(c: httpx.Client, status: int, tries: int = 100) -> httpx.Response:
    """/healthz until it answers ``status``: a bounded number of tries, a tenth of a second apart."""
    for _ in range(tries):
        r = c.get("/healthz")
        if r.status_code == status:
            return r
        time.sleep(0.1)
    raise AssertionError(f"/healthz never answered {status}: {r.status_code} {r.text}")


def _pg(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("pg_cluster")


def _pg_admin(request: pytest.FixtureRequest, sql: str) -> None:
    import psycopg

    with psycopg.connect(_pg(request).dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql)


def _dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


# -- (4) the verifier, not the attester, chooses the policy ---------------------------------------

def test_an_attester_cannot_choose_a_lenient_policy(db_url: str, make_server: Callable[..., Server],
                                                    emulator: Emulator, tmp_path: Path) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root)
    with srv.client() as c, srv.client(headers=admin_headers()) as admin:
        assert admin.put("/policies/default", json={"rego": DENY_ALL}).status_code == 201
        assert admin.put("/policies/dev-lenient", json={"rego": ALLOW_ALL}).status_code == 201
        assert admin.put("/refvals/lenient", json={"document": NO_REFVALS}).status_code == 201
        nonce = c.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        # the attack: the attester names the lenient policy (or reference values) itself
        for extra, code in (({"policy": "dev-lenient"}, "policy.selection-forbidden"),
                            ({"refvals": "lenient"}, "refvals.selection-forbidden"),
                            ({"policy": "no-such-policy"}, "policy.selection-forbidden")):
            for headers in ({}, {"Authorization": "Bearer not-the-admin-token-0123456789abcdef"},
                            {"Authorization": f"Basic {ADMIN_TOKEN}"}):
                r = c.post("/attest", json=bundle, params=extra, headers=headers)
                _json_error(r, 403, code)
        assert _count(db_url, "results") == 0
        assert _count(db_url, "challenges", "WHERE used_at IS NOT NULL") == 0  # refused before the nonce was spent
        # the same nonce then gets the verifier's own policy, which says no
        # naming the verifier's own is harmless; a policy or reference values named in the body are not read
        r = c.post("/attest", json={**bundle, "policy": "dev-lenient", "refvals": "lenient"},
                   params={"policy": "default"})
        assert r.status_code == 201 and r.json()["status"] == "contraindicated", r.text
        assert r.json()["result"]["policy_id"] == "default@1"
        denied = tmp_path / "denied.jwt"
        denied.write_text(r.json()["ear"])
        jwks = srv.url + "/.well-known/jwks.json"
        no = _tsmr("ear", "verify", str(denied), "--jwks", jwks, "--require", "warning")
        assert no.returncode == 1 and "ear.status" in no.stderr, no.stderr
        # with the admin token a request may name another policy; the EAR says which, and a relying
        # party that requires the policy it expects refuses the result
        # (without TDX collateral the emulator's quote is at best "warning": that is what the relying party requires)
        r = _attest_with(admin, emulator, policy="dev-lenient", refvals="lenient")
        assert r.status_code == 201 and r.json()["status"] in ("affirming", "warning"), r.text
        lenient = tmp_path / "lenient.jwt"
        lenient.write_text(r.json()["ear"])
        assert _tsmr("ear", "verify", str(lenient), "--jwks", jwks, "--require", "warning").returncode == 0
        for args, check in ((["--policy-id", "default"], "ear.policy"), (["--policy-id", "dev-lenient@2"], "ear.policy"),
                            (["--refvals-id", "default"], "ear.refvals")):
            bad = _tsmr("ear", "verify", str(lenient), "--jwks", jwks, "--require", "warning", *args, "--json")
            assert bad.returncode == 1, bad.stdout + bad.stderr
            assert [p["check"] for p in json.loads(bad.stdout)["problems"]] == [check]
        ok = _tsmr("ear", "verify", str(lenient), "--jwks", jwks, "--require", "warning",
                   "--policy-id", "dev-lenient", "--refvals-id", "lenient@1")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert _tsmr("ear", "verify", str(denied), "--jwks", jwks, "--policy-id", "default@1").returncode == 0
    assert _count(db_url, "results") == 2
    _no_unhandled_error(srv)


def _attest_with(c: httpx.Client, emu: Emulator, **extra: Any) -> httpx.Response:
    nonce = c.post("/challenge").json()["nonce"]
    return c.post("/attest", json=emu.bundle(nonce), params=extra)


def test_the_configured_policy_applies_and_a_missing_one_refuses(db_url: str, make_server: Callable[..., Server],
                                                                 emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root, extra=["--policy", "strict"],
                      env={"TSMR_REFVALS": "site"})
    with srv.client() as c, srv.client(headers=admin_headers()) as admin:
        # not stored yet: refused before the nonce is spent, nothing stored
        nonce = c.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        _json_error(c.post("/attest", json=bundle), 503, "policy.missing")
        assert admin.put("/policies/strict", json={"rego": DENY_ALL}).status_code == 201
        _json_error(c.post("/attest", json=bundle), 503, "refvals.missing")
        assert _count(db_url, "results") == 0
        assert admin.put("/refvals/site", json={"document": NO_REFVALS}).status_code == 201
        assert admin.put("/policies/default", json={"rego": ALLOW_ALL}).status_code == 201
        # the same nonce: the configured policy, not the one called "default"
        r = c.post("/attest", json=bundle)
        assert r.status_code == 201 and r.json()["status"] == "contraindicated", r.text
        assert (r.json()["result"]["policy_id"], r.json()["result"]["refvals_id"]) == ("strict@1", "site@1")
        _json_error(_attest_with(c, emulator, policy="default"), 403, "policy.selection-forbidden")
    _no_unhandled_error(srv)


# -- (11) hostile JSON is refused before the nonce is spent --------------------------------------

def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def test_hostile_json_never_spends_the_nonce(db_url: str, make_server: Callable[..., Server],
                                             emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root)
    with srv.client() as c:
        nonce = c.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        good = json.dumps(bundle)
        assert good.endswith("}") and '"evidence": {' in good
        attacks: list[tuple[str, int, str]] = []
        # a deeply nested extra field: too deep to serialise once read (900: this was a 500 after the
        # nonce was spent), too deep to read at all (10,000), merely deeper than any bundle (100); at the
        # top and inside the evidence; 300 is past the fast JSON reader's own limit (then the standard one reads it)
        for depth in (900, 10_000, 100, 300):
            attacks.append((good[:-1] + f', "extra": {_nested(depth)}}}', 422, "request.too-deep"))
            attacks.append((good.replace('"evidence": {', f'"evidence": {{"extra": {_nested(depth)}, ', 1),
                            422, "request.too-deep"))
        deep_list = "[" * 5000 + "]" * 5000
        attacks.append((good[:-1] + f', "logs2": {deep_list}}}', 422, "request.too-deep"))
        for number in ("Infinity", "NaN", "1e999", "-1e999"):  # not JSON, and PostgreSQL refuses them
            attacks.append((good[:-1] + f', "extra": {number}}}', 422, "request.invalid"))
        attacks.append((good[:-1] + ', "extra": ' + "9" * 5000 + "}", 400, "request.malformed"))
        # the former request shape, {"bundle": ...}: a clear refusal, not an appraisal
        attacks.append((json.dumps({"bundle": bundle}), 422, "request.invalid"))
        for body, status, code in attacks:
            r = c.post("/attest", content=body.encode(), headers={"content-type": "application/json"})
            _json_error(r, status, code)
        assert _count(db_url, "results") == 0
        assert _count(db_url, "challenges", "WHERE used_at IS NOT NULL") == 0
        # a lone surrogate, which the result (and its EAR) would have carried: this was a 500 after the
        # nonce was spent
        for where in ("register", "name", "format"):
            odd = json.loads(good)
            odd["logs"].append({**odd["logs"][0], where: "rtmr3\ud800"})
            r = c.post("/attest", content=json.dumps(odd).encode(), headers={"content-type": "application/json"})
            _json_error(r, 422, "request.invalid")
        assert _count(db_url, "challenges", "WHERE used_at IS NOT NULL") == 0
        # NUL characters (PostgreSQL's text cannot hold them) are carried, escaped, not a 500
        odd = emulator.bundle(c.post("/challenge").json()["nonce"])
        odd["logs"].append({"format": "tsmr", "register": "rtmr3\u0000", "name": "x\u0000", "data": odd["logs"][0]["data"]})
        r = c.post("/attest", content=json.dumps(odd).encode(), headers={"content-type": "application/json"})
        assert r.status_code == 201, r.text
        # and the nonce every refusal left alone still works
        r = c.post("/attest", content=good.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 201, r.text
        assert _count(db_url, "results") == 2
        # the admin side too: deep or non-finite documents, a NUL in a policy
        admin = admin_headers() | {"content-type": "application/json"}
        for path, body, code in (("/refvals/x", '{"document": ' + _nested(900) + "}", "request.too-deep"),
                                 ("/refvals/x", '{"document": ' + _nested(10_000) + "}", "request.too-deep"),
                                 ("/refvals/x", '{"document": {"format": "tsmr-refvals", "version": 1, "id": '
                                                '"x", "n": NaN}}', "request.invalid"),
                                 ("/policies/p", json.dumps({"rego": ALLOW_ALL + "# \u0000\n"}), "policy.invalid"),
                                 ("/policies/p", '{"rego": "x", "e": ' + _nested(5000) + "}", "request.too-deep")):
            _json_error(c.put(path, content=body.encode(), headers=admin), 422, code)
        assert c.get("/refvals", headers=admin_headers()).json()["items"] == []
        assert c.get("/policies", headers=admin_headers()).json()["items"] == []
        # a NUL in a stored document (PostgreSQL's json takes it escaped)
        r = c.put("/refvals/nul", json={"document": {**NO_REFVALS, "id": "a\u0000b"}}, headers=admin_headers())
        assert r.status_code in (201, 422) and r.json().get("error") != "internal", r.text
    _no_unhandled_error(srv)


def test_a_failed_appraisal_gives_the_nonce_back(db_url: str, make_server: Callable[..., Server],
                                                 tmp_path: Path) -> None:
    """Evidence that cannot be evaluated (SEV-SNP without the ARK the verifier must be given) after the nonce was consumed."""
    from tsmr.system.acquire import acquire
    from tsmr.evidence.bundle import make_bundle

    srv = make_server(database=db_url, trust_root=None)
    with srv.client() as c:
        nonce = c.post("/challenge").json()["nonce"]
        got = acquire(bytes.fromhex(nonce), backend="emulated:snp", state_dir=str(tmp_path / "snp"))
        bundle = make_bundle(nonce=bytes.fromhex(nonce), evidence=got.evidence, logs=[])
        for _ in range(2):  # the second try is appraised again, not refused as a reused nonce
            _json_error(c.post("/attest", json=bundle), 422, "appraisal.failed")
    assert _count(db_url, "results") == 0
    assert _count(db_url, "challenges", "WHERE used_at IS NOT NULL") == 0
    _no_unhandled_error(srv)


# -- (12) database trouble ------------------------------------------------------------------------

def test_a_read_only_database_is_unavailable_not_internal(db_url: str, make_server: Callable[..., Server],
                                                          emulator: Emulator, request: pytest.FixtureRequest) -> None:
    first = make_server(name="rw", database=db_url, trust_root=emulator.trust_root)
    with first.client() as c:
        stored = _attest_with(c, emulator).json()["id"]
    first.stop()
    if db_url.startswith("sqlite"):
        readonly = "sqlite:///file:" + db_url[len("sqlite:///"):] + "?mode=ro&uri=true"
    else:
        _pg_admin(request, f'ALTER DATABASE "{_dbname(db_url)}" SET default_transaction_read_only = on')
        readonly = db_url
    srv = make_server(name="ro", database=readonly, trust_root=emulator.trust_root, wait=False)
    _wait_listening(srv)
    with srv.client() as c:
        health = _poll_health(c, 503)
        assert health.json()["status"] == "unavailable"
        _json_error(c.post("/challenge"), 503, "database.unavailable")
        assert c.post("/challenge").headers["retry-after"] == "5"
        _json_error(c.put("/policies/p", json={"rego": ALLOW_ALL}, headers=admin_headers()), 503,
                    "database.unavailable")
        assert c.get(f"/results/{stored}").status_code == 200  # reading still works
    assert _count(db_url, "challenges") == 1 and _count(db_url, "results") == 1
    _no_unhandled_error(srv)


def test_a_vanished_database_is_unavailable(db_url: str, make_server: Callable[..., Server], emulator: Emulator,
                                            request: pytest.FixtureRequest) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root)
    with srv.client() as c:
        nonce = c.post("/challenge").json()["nonce"]
        assert _attest_with(c, emulator).status_code == 201
        if db_url.startswith("sqlite"):
            path = Path(db_url[len("sqlite:///"):])
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
        else:
            _pg_admin(request, f'DROP DATABASE "{_dbname(db_url)}" WITH (FORCE)')
        assert _poll_health(c, 503).json()["status"] == "unavailable"
        _json_error(c.post("/challenge"), 503, "database.unavailable")
        _json_error(c.post("/attest", json=emulator.bundle(nonce)), 503, "database.unavailable")
        _json_error(c.get("/policies", headers=admin_headers()), 503, "database.unavailable")
        r = c.get("/results/00000000-0000-4000-8000-000000000000")
        assert r.status_code in (404, 503) and r.status_code != 500
    if db_url.startswith("sqlite"):
        assert not path.exists()  # no empty database was made in its place
    _no_unhandled_error(srv)


def test_start_up_failures_are_one_line(tmp_path: Path) -> None:
    from .conftest import free_port

    # sysfs takes no new directories, whoever asks (root included): an unwritable state directory
    unwritable = f"/sys/tsmr-test-{os.getpid()}"
    closed = free_port()  # nothing listens there
    for args, code, words in (
            (["--state-dir", unwritable], 3, unwritable),
            (["--database", f"sqlite:///{unwritable}/v.db", "--state-dir", str(tmp_path / "s")], 3, unwritable),
            (["--database", f"postgresql+psycopg://postgres@127.0.0.1:{closed}/x", "--state-dir", str(tmp_path / "s")],
             3, "connection"),
            # a URL that is not one is the operator's input: a usage error
            (["--database", "bogus://x", "--state-dir", str(tmp_path / "s")], 2, "unsupported database"),
            (["--state-dir", str(tmp_path / "s"), "--policy", "no/slash"], 2, "not a valid name")):
        r = _serve(*args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and words in r.stderr, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("tsmr: error:"), r.stderr


def test_short_admin_tokens_are_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 31 + "\n")
    r = _serve("--admin-token-file", str(token), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2 and "shorter than 32 bytes" in r.stderr, r.stderr
    r = _serve("--state-dir", str(tmp_path / "s"), env={"TSMR_ADMIN_TOKEN": "é" * 15 + "x"})  # 31 bytes
    assert r.returncode == 2 and "shorter than 32 bytes" in r.stderr, r.stderr


# -- (14) /challenge is rate-limited per client address -------------------------------------------

def test_challenges_are_rate_limited_per_address(db_url: str, make_server: Callable[..., Server]) -> None:
    # One nonce per 1,000 s after a burst of 3: the fourth request is refused however slow the test runs.
    srv = make_server(database=db_url, trust_root=None, extra=["--challenge-rate", "0.001", "--challenge-burst", "3"])
    with srv.client() as c:
        assert [c.post("/challenge").status_code for _ in range(3)] == [201] * 3
        for _ in range(20):
            r = c.post("/challenge")
            _json_error(r, 429, "rate.limited")
            assert 1 <= int(r.headers["retry-after"]) <= 1000
        assert c.get("/healthz").status_code == 200  # other routes are not limited
    assert _count(db_url, "challenges") == 3
    _no_unhandled_error(srv)
