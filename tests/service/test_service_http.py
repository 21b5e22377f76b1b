"""The verifier over real HTTP on loopback: ``tsmr serve`` processes on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from tsmr.appraisal import ear
from tsmr.errors import SignatureError

from .conftest import ADMIN_TOKEN, COVERING, Emulator, Server, admin_headers

ALLOW_ALL = "package tsmr\n\nimport rego.v1\n\ndefault allow := true\n"
DENY_ALL = ('package tsmr\n\nimport rego.v1\n\ndefault allow := false\n\n'
            'deny contains {"id": "no-entry", "msg": "nothing is allowed here"}\n')


def refvals(ident: str, **members: Any) -> dict[str, Any]:
    return {"format": "tsmr-refvals", "version": 1, "id": ident, **members}


def _count_results(url: str) -> int:
    from sqlalchemy import func, select

    from tsmr.service.db import Store, StoredResult

    store = Store.open(url, migrate=False)
    try:
        with store.sessions() as s:
            return int(s.execute(select(func.count()).select_from(StoredResult)).scalar_one())
    finally:
        store.close()


def _no_stack_trace(r: httpx.Response) -> None:
    body = r.text
    assert "Traceback" not in body and 'File "' not in body, body[:500]
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json().get("error"), str)


def _attest(c: httpx.Client, emu: Emulator, **extra: Any) -> httpx.Response:
    nonce = c.post("/challenge").json()["nonce"]
    return c.post("/attest", json=emu.bundle(nonce), params=extra)


def test_challenge_attest_and_a_signed_ear(db_url: str, make_server: Callable[..., Server], emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root)
    srv.cover()  # reference values that judge the log's events: without them the result could only warn
    with srv.client() as c:
        r = c.post("/challenge")
        assert r.status_code == 201
        ch = r.json()
        assert len(bytes.fromhex(ch["nonce"])) == 32 and ch["expires_at"]
        bundle = emulator.bundle(ch["nonce"])
        r = c.post("/attest", json=bundle)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["status"] == "affirming", body["result"]["findings"]
        assert r.headers["location"] == f"/results/{body['id']}"
        keys = c.get("/.well-known/jwks.json").json()
        claims = ear.verify(body["ear"], keys)
        sub = claims["submods"]["tdx"]
        assert sub["ear.status"] == "affirming" and claims["jti"] == body["id"]
        assert base64.urlsafe_b64decode(claims["eat_nonce"] + "=") == bytes.fromhex(ch["nonce"])
        assert sub["tsmr.findings"] == body["findings"]
        assert {(x["register"], x["status"]) for x in sub["tsmr.registers"]} >= {("rtmr3", "matched")}
        # any change to the token breaks it
        h, p, s = body["ear"].split(".")
        forged = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
        forged["submods"]["tdx"]["ear.status"] = "affirming"
        forged["iat"] += 1
        repacked = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        for bad in (f"{h}.{repacked}.{s}", f"{h}.{p}.{s[:-2]}{'A' if s[-2] != 'A' else 'B'}{s[-1]}",
                    body["ear"][:-1]):
            with pytest.raises(SignatureError):
                ear.verify(bad, keys)
        # stored, and fetchable
        got = c.get(f"/results/{body['id']}")
        assert got.status_code == 200
        assert got.json()["ear"] == body["ear"] and got.json()["status"] == "affirming"
        assert got.json()["nonce"] == ch["nonce"]
        # the same bundle again: the nonce is spent
        again = c.post("/attest", json=bundle)
        assert again.status_code == 409 and again.json()["error"] == "freshness.nonce-reused"
        _no_stack_trace(again)
        # a nonce this verifier never issued: refused, nothing stored
        unknown = c.post("/attest", json=emulator.bundle("cd" * 32))
        assert unknown.status_code == 403 and unknown.json()["error"] == "freshness.nonce-unknown"
        assert c.get("/results/00000000-0000-4000-8000-000000000000").status_code == 404
        assert c.get("/results/not-a-uuid").status_code == 422
        assert c.get("/openapi.json").status_code == 200 and c.get("/no/such/page").status_code == 404
        metrics = c.get("/metrics").text
        # routes are labelled by their template, FastAPI's own pages included; unknown paths share one label
        assert 'tsmr_http_requests_total{method="GET",route="/results/{result_id}",status="404"} 1' in metrics
        assert 'tsmr_http_requests_total{method="GET",route="/openapi.json",status="200"} 1' in metrics
        assert 'tsmr_http_requests_total{method="GET",route="unmatched",status="404"} 1' in metrics
        assert 'tsmr_attestations_total{status="affirming"} 1' in metrics
        assert 'tsmr_attestations_total{status="refused-reused"} 1' in metrics
        assert 'tsmr_http_requests_total{method="POST",route="/attest",status="201"} 1' in metrics
        assert "tsmr_appraisal_duration_seconds_count 1" in metrics
        health = c.get("/healthz").json()
        assert health == {"status": "ok", "database": db_url.split(":")[0].split("+")[0], "revision": "0004"}
    assert _count_results(db_url) == 1
    # the log: one JSON object per line, no admin token, no bundle contents
    srv.stop()
    text = srv.log_path.read_text()
    assert ADMIN_TOKEN not in text and bundle["evidence"]["data"][:40] not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    assert any(json.loads(ln).get("msg") == "attested" for ln in lines)


def test_bad_evidence_is_a_stored_contraindicated_result(tmp_path: Path, make_server: Callable[..., Server],
                                                         emulator: Emulator) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    srv = make_server(database=url, trust_root=emulator.trust_root)
    with srv.client() as c:
        nonce = c.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        log = base64.b64decode(bundle["logs"][-1]["data"]).replace(b"sha256:1111", b"sha256:2222")
        bundle["logs"][-1]["data"] = base64.b64encode(log).decode()
        r = c.post("/attest", json=bundle)
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "contraindicated"
        assert ear.verify(r.json()["ear"], c.get("/.well-known/jwks.json").json())["submods"]["tdx"][
            "ear.status"] == "contraindicated"
        # a quote whose signature is broken
        nonce = c.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        quote = bytearray(base64.b64decode(bundle["evidence"]["data"]))
        quote[100] ^= 1
        bundle["evidence"]["data"] = base64.b64encode(bytes(quote)).decode()
        r = c.post("/attest", json=bundle)
        assert r.status_code == 201 and r.json()["status"] == "contraindicated", r.text
    # the verifier not trusting the emulator's root: the same evidence is contraindicated
    other = make_server(name="b", database=f"sqlite:///{tmp_path / 'w.db'}", trust_root=None)
    with other.client() as c:
        r = _attest(c, emulator)
        assert r.status_code == 201 and r.json()["status"] == "contraindicated", r.text


def test_expired_nonce_is_refused(tmp_path: Path, make_server: Callable[..., Server], emulator: Emulator) -> None:
    srv = make_server(database=f"sqlite:///{tmp_path / 'v.db'}", trust_root=emulator.trust_root,
                      extra=["--challenge-ttl", "1"])
    with srv.client() as c:
        nonce = c.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        time.sleep(1.3)
        r = c.post("/attest", json=bundle)
        assert r.status_code == 410 and r.json()["error"] == "freshness.nonce-expired"
    assert _count_results(f"sqlite:///{tmp_path / 'v.db'}") == 0


def test_two_replicas_share_one_postgresql(pg_url: str, tmp_path: Path, make_server: Callable[..., Server],
                                           emulator: Emulator) -> None:
    key = tmp_path / "shared" / "ear.pem"
    # both start at once on an empty database and no key: one schema, one key
    a = make_server(name="a", database=pg_url, trust_root=emulator.trust_root, key=key, wait=False)
    b = make_server(name="b", database=pg_url, trust_root=emulator.trust_root, key=key, workers=2, wait=False)
    a.wait_ready()
    b.wait_ready()
    with a.client() as ca, b.client() as cb:
        assert ca.get("/.well-known/jwks.json").json() == cb.get("/.well-known/jwks.json").json()
        nonce = ca.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        first = cb.post("/attest", json=bundle)
        assert first.status_code == 201, first.text
        second = ca.post("/attest", json=bundle)
        assert second.status_code == 409
        # a result stored through B is served by A, and its EAR verifies with A's JWKS
        got = ca.get(f"/results/{first.json()['id']}").json()
        ear.verify(got["ear"], ca.get("/.well-known/jwks.json").json())
        # the same nonces sent to both replicas at once: each is accepted exactly once
        nonces = [ca.post("/challenge").json()["nonce"] for _ in range(6)]
        bundles = {n: emulator.bundle(n) for n in nonces}
        codes: dict[str, list[int]] = {n: [] for n in nonces}
        lock = threading.Lock()

        def send(url: str, n: str) -> None:
            with httpx.Client(base_url=url, timeout=60) as c:
                code = c.post("/attest", json=bundles[n]).status_code
            with lock:
                codes[n].append(code)

        threads = [threading.Thread(target=send, args=(srv.url, n)) for n in nonces for srv in (a, b, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(sorted(v) == [201, 409, 409] for v in codes.values()), codes
    assert _count_results(pg_url) == 1 + len(nonces)
    # B's two workers sum their numbers: every scrape, whichever worker answers, counts all 13 of
    # B's /attest requests (1 + 2 per nonce), and their outcomes add up the same way
    for _ in range(6):
        text = httpx.get(b.url + "/metrics", timeout=30).text  # a new connection each time
        attests = _samples(text, "tsmr_http_requests_total", method="POST", route="/attest")
        assert sum(attests.values()) == 1 + 2 * len(nonces), text
        outcomes = _samples(text, "tsmr_attestations_total")
        assert sum(outcomes.values()) == 1 + 2 * len(nonces) and outcomes.get('status="refused-reused"', 0) >= len(nonces)
        assert "tsmr_worker_processes 2\n" in text


def _samples(text: str, name: str, **labels: str) -> dict[str, float]:
    """The samples of one metric whose labels include ``labels``, keyed by their label text."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        inner, value = line[len(name) + 1:].rsplit("} ", 1)
        if all(f'{k}="{v}"' in inner.split(",") for k, v in labels.items()):
            out[inner] = float(value)
    return out


def test_oversized_and_malformed_bodies(tmp_path: Path, make_server: Callable[..., Server]) -> None:
    srv = make_server(database=f"sqlite:///{tmp_path / 'v.db'}", trust_root=None)
    big = b"x" * (16 * 1024 * 1024 + 1)
    with srv.client() as c:
        r = c.post("/attest", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
        _no_stack_trace(r)
        # /attest takes up to 16 MiB: a 3 MiB bundle is read (and refused for its nonce, not its size)
        large = {"format": "tsmr-bundle", "version": 1, "nonce": "ab" * 32, "evidence": {"kind": "tdx"},
                 "logs": [{"format": None, "data": base64.b64encode(bytes(3 << 20)).decode()}]}
        r = c.post("/attest", json=large)
        assert r.status_code == 403, r.text
        r = c.put("/policies/p", content=b"x" * (1024 * 1024 + 1), headers={**admin_headers(),
                                                                          "content-type": "application/json"})
        assert r.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies as the body arrives
            for _ in range(40):
                yield b" " * (64 * 1024)

        r = c.put("/refvals/x", content=chunks(), headers={**admin_headers(), "content-type": "application/json"})
        assert r.status_code == 413 and "content-length" not in r.request.headers
        _no_stack_trace(r)
        for body, code in ((b"{not json", 400), (b'{"bundle": 1}', 422), (b"[]", 422), (b"", 422), (b"1", 422),
                           (b'{"format": "tsmr-bundle", "version": 1, "nonce": "XYZ", "evidence": {"kind": "tdx"}}', 422),
                           (b'{"format": "tsmr-bundle", "version": 1, "nonce": "00", "evidence": {"kind": "sgx"}}', 422),
                           (b'{"format": "tsmr-bundle", "version": "1", "nonce": "00", "evidence": {"kind": "tdx"}}',
                            422),
                           (b'{"format": "tsmr-bundle", "version": 1, "nonce": "00", "evidence": {"kind": "tdx"}, '
                            b'"logs": [{"format": "tsmr"}]}', 422),
                           (b'{"bundle": {}, "extra": 1}', 422),
                           ("{\"format\": \"\udcff\"}".encode("utf-8", "surrogatepass"), 422),
                           (b"\xff\xfe{", 400)):
            r = c.post("/attest", content=body, headers={"content-type": "application/json"})
            assert r.status_code == code, (body, r.status_code, r.text)
            _no_stack_trace(r)
        r = c.post("/attest", content=b'{"format": "tsmr-bundle"}', headers={"content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"] == "request.media-type", r.text
        assert c.get("/no/such/route").status_code == 404
        assert c.delete("/challenge").status_code == 405
        assert c.get("/healthz").status_code == 200  # still serving


def test_admin_endpoints_need_the_token(tmp_path: Path, make_server: Callable[..., Server]) -> None:
    srv = make_server(database=f"sqlite:///{tmp_path / 'v.db'}", trust_root=None)
    with srv.client() as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                        {"Authorization": f"Bearer {ADMIN_TOKEN}x"}, {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
                        {"Authorization": "Bearer"}):
            for method, path in (("GET", "/policies"), ("PUT", "/policies/p"), ("DELETE", "/refvals/r"),
                                 ("GET", "/refvals/r/versions")):
                r = c.request(method, path, headers=headers, json={"rego": "package p"})
                assert r.status_code == 401, (headers, method, path, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                _no_stack_trace(r)
        assert c.get("/policies", headers=admin_headers()).status_code == 200
    none = make_server(name="b", database=f"sqlite:///{tmp_path / 'w.db'}", trust_root=None, admin_token=None)
    with none.client() as c:
        assert c.get("/policies", headers=admin_headers()).status_code == 404
        assert not any(p.startswith(("/policies", "/refvals")) for p in c.get("/openapi.json").json()["paths"])


def test_policy_and_refvals_versions(db_url: str, make_server: Callable[..., Server], emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root)
    h = admin_headers()
    with srv.client(headers=h) as c:
        for kind, body1, body2, field in (("policies", {"rego": ALLOW_ALL}, {"rego": DENY_ALL}, "rego"),
                                          ("refvals", {"document": refvals("one", appraisers=COVERING["appraisers"])},
                                           {"document": refvals("two")},
                                           "document")):
            assert c.get(f"/{kind}/x").status_code == 404
            r1 = c.put(f"/{kind}/x", json=body1)
            r2 = c.put(f"/{kind}/x", json=body2)
            assert (r1.status_code, r1.json()["version"], r2.json()["version"]) == (201, 1, 2)
            assert c.get(f"/{kind}/x").json()[field] == body2[field]
            assert c.get(f"/{kind}/x", params={"version": 1}).json()[field] == body1[field]
            assert c.get(f"/{kind}/x", params={"version": 7}).status_code == 404
            assert [v["version"] for v in c.get(f"/{kind}/x/versions").json()["items"]] == [1, 2]
            assert [(i["name"], i["version"]) for i in c.get(f"/{kind}").json()["items"]] == [("x", 2)]
            assert c.put(f"/{kind}/bad%20name", json=body1).status_code == 422
            assert c.put(f"/{kind}/x", json={"wrong": 1}).status_code == 422
            invalid = {"rego": "package other\n"} if kind == "policies" else {"document": {"format": "x"}}
            r = c.put(f"/{kind}/x", json=invalid)
            assert r.status_code == 422 and r.json()["error"] in ("policy.invalid", "refvals.invalid"), r.text
            assert c.delete(f"/{kind}/x").status_code == 204
            assert c.get(f"/{kind}/x").status_code == 404 and c.delete(f"/{kind}/x").status_code == 404
            assert c.get(f"/{kind}").json()["items"] == []
            assert c.put(f"/{kind}/x", json=body1).json()["version"] == 3
        # naming a policy that does not exist is refused before the nonce is spent
        nonce = c.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        r = c.post("/attest", json=bundle, params={"policy": "missing"})
        assert r.status_code == 404 and r.json()["error"] == "policy.unknown"
        r = c.post("/attest", json=bundle, params={"refvals": "missing"})
        assert r.status_code == 404 and r.json()["error"] == "refvals.unknown"
        r = c.post("/attest", json=bundle)
        assert r.status_code == 201, r.text
        # a named policy and reference values take part, and the result names their versions
        r = _attest(c, emulator, policy="x", refvals="x")  # policy x@3 allows all; refvals x@3 allow every event
        assert r.status_code == 201 and r.json()["status"] == "affirming", r.text
        assert (r.json()["result"]["policy_id"], r.json()["result"]["refvals_id"]) == ("x@3", "x@3")
        claims = ear.verify(r.json()["ear"], c.get("/.well-known/jwks.json").json())
        assert claims["submods"]["tdx"]["ear.appraisal-policy-id"] == "x@3"
        # the policy called "default" applies when a request names none
        assert c.put("/policies/default", json={"rego": DENY_ALL}).status_code == 201
        r = _attest(c, emulator)
        assert r.json()["status"] == "contraindicated" and "policy.deny" in r.json()["findings"], r.text
        assert c.delete("/policies/default").status_code == 204
        # reference values the evidence does not meet
        strict = refvals("strict", registers={"rtmr3": {"sha384": ["00" * 48]}})
        assert c.put("/refvals/strict", json={"document": strict}).status_code == 201
        r = _attest(c, emulator, refvals="strict")
        assert r.json()["status"] == "contraindicated", r.text
        assert "refvals.register-mismatch" in r.json()["findings"]


def test_tsmr_attest_against_the_verifier(tmp_path: Path, make_server: Callable[..., Server],
                                          emulator: Emulator) -> None:
    """The CLI's client side (``tsmr attest --verifier``) against ``tsmr serve``."""
    import os
    import subprocess
    import sys

    tsmr = os.path.join(os.path.dirname(sys.executable), "tsmr")
    srv = make_server(database=f"sqlite:///{tmp_path / 'v.db'}", trust_root=emulator.trust_root)
    srv.cover()
    out = tmp_path / "ear.jwt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    r = subprocess.run([tsmr, "attest", "--verifier", srv.url, "--backend", "emulated:tdx", "--state-dir",
                        str(emulator.state), "--log-dir", str(emulator.log_dir), "--ear", str(out), "--json"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    body = json.loads(r.stdout)
    assert body["status"] == "affirming"
    with srv.client() as c:
        claims = ear.verify(out.read_text().strip(), c.get("/.well-known/jwks.json").json())
        assert claims["jti"] == body["id"] and c.get(f"/results/{body['id']}").status_code == 200


def _tsmr(*args: str) -> "subprocess.CompletedProcess[str]":

    return subprocess.run([sys.executable, "-m", "tsmr", *args], capture_output=True, text=True, timeout=120)


def test_signing_key_rotation_keeps_earlier_results_verifiable(make_server: Callable[..., Server], emulator: Emulator,
                                                               tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'verifier.db'}"
    old_key, new_key = tmp_path / "old.pem", tmp_path / "new.pem"
    made = _tsmr("ear", "key", str(old_key), "--json")
    assert made.returncode == 0 and json.loads(made.stdout)["created"] is True
    old_kid = json.loads(made.stdout)["jwk"]["kid"]
    new_kid = json.loads(_tsmr("ear", "key", str(new_key), "--alg", "ES384", "--json").stdout)["jwk"]["kid"]
    again = _tsmr("ear", "key", str(old_key), "--json")  # an existing key is kept, never replaced
    assert json.loads(again.stdout) == {"path": str(old_key), "created": False, "jwk": json.loads(made.stdout)["jwk"]}

    def attest(srv: Server, name: str) -> tuple[str, Path]:
        with srv.client() as c:
            nonce = c.post("/challenge").json()["nonce"]
            body = c.post("/attest", json=emulator.bundle(nonce)).json()
        path = tmp_path / f"{name}.jwt"
        path.write_text(body["ear"] + "\n")
        return nonce, path

    # 1. the old key signs; the next one is published ahead of its use
    srv = make_server(name="one", database=db, trust_root=emulator.trust_root, key=old_key,
                      extra=["--publish-key", str(new_key)])
    assert [k["kid"] for k in httpx.get(srv.url + "/.well-known/jwks.json").json()["keys"]] == [old_kid, new_kid]
    srv.cover()  # stored in the database both verifiers share
    nonce1, ear1 = attest(srv, "first")
    srv.stop()
    # 2. the new key signs; the old one stays published
    srv = make_server(name="two", database=db, trust_root=emulator.trust_root, key=new_key,
                      extra=["--publish-key", str(old_key)])
    jwks_url = srv.url + "/.well-known/jwks.json"
    assert [k["kid"] for k in httpx.get(jwks_url).json()["keys"]] == [new_kid, old_kid]
    nonce2, ear2 = attest(srv, "second")
    assert json.loads(base64.urlsafe_b64decode(ear2.read_text().split(".")[0] + "==")) == {
        "alg": "ES384", "typ": "JWT", "kid": new_kid}
    for token, nonce in ((ear1, nonce1), (ear2, nonce2)):
        ok = _tsmr("ear", "verify", str(token), "--jwks", jwks_url, "--nonce", nonce, "--require", "affirming", "--json")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        out = json.loads(ok.stdout)
        assert out["ok"] and out["submods"][0]["status"] == "affirming" and out["problems"] == []
    wrong = _tsmr("ear", "verify", str(ear1), "--jwks", jwks_url, "--nonce", nonce2)
    assert wrong.returncode == 1 and "ear.nonce" in wrong.stderr
    srv.stop()
    # 3. the old key retired: its results no longer verify against the verifier's keys
    srv = make_server(name="three", database=db, trust_root=emulator.trust_root, key=new_key)
    gone = _tsmr("ear", "verify", str(ear1), "--jwks", srv.url + "/.well-known/jwks.json")
    assert gone.returncode == 1 and "ear.key" in gone.stderr
    # a key to publish that cannot be read stops the verifier before it serves
    bad = make_server(name="four", database=db, trust_root=emulator.trust_root, key=new_key, wait=False,
                      extra=["--publish-key", str(tmp_path / "missing.pem")])
    assert bad.proc is not None and bad.proc.wait(timeout=60) == 2
    assert "cannot read the EAR key to publish" in bad.log()
