"""The verifier's node registry, against a real `tsmr serve` on SQLite and PostgreSQL.

Enrolment, listing, updates and retirement through the admin API (and `tsmr nodes`);
attestations as a node (``POST /attest?node=ID``) that change its state, with the
history that records each change; evidence of another identity than the node's
(an emulated TD with another MRTD, a TPM quote from another enrolled key) ends
``contraindicated`` with ``node.identity-mismatch`` in the signed EAR.  One server
per database for the whole module: each test uses node ids of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from forge import pem, tpm_bundle

from tsmr.appraisal import ear

from .conftest import ADMIN_TOKEN, Emulator, Server, admin_headers

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        emulator: Emulator) -> Iterator[Server]:
    """One verifier for the module on each database, trusting the emulator, with reference values that cover its log."""
    d = tmp_path_factory.mktemp(f"nodes-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{d / 'v.db'}"
    else:
        url = request.getfixturevalue("pg_cluster").create_database()
    with Server(d, database=url, trust_root=emulator.trust_root) as server:
        server.cover()
        yield server
        assert '"level":"error"' not in server.log(), server.log()


def mrtd_of(bundle: dict[str, Any]) -> str:
    """The MRTD of the bundle's TDX quote, read from the quote's bytes (TD report body, after the 48-byte header)."""
    quote = base64.b64decode(bundle["evidence"]["data"])
    version = struct.unpack_from("<H", quote)[0]
    body = 48 if version == 4 else 48 + 6  # v5: a type and a size precede the body
    # TD report: TEE_TCB_SVN 16, MRSEAM 48, MRSIGNERSEAM 48, SEAMATTRIBUTES 8, TDATTRIBUTES 8, XFAM 8, then MRTD 48
    return quote[body + 136: body + 184].hex()


def other(hex_value: str) -> str:
    """Another value of the same length (the first byte flipped)."""
    return f"{int(hex_value[:2], 16) ^ 0xFF:02x}{hex_value[2:]}"


def attest_as(c: httpx.Client, node: str | None, make: Any, **params: str) -> httpx.Response:
    nonce = c.post("/challenge").json()["nonce"]
    return c.post("/attest", json=make(nonce), params={**({"node": node} if node else {}), **params})


def node(c: httpx.Client, id: str, **params: Any) -> dict[str, Any]:
    r = c.get(f"/nodes/{id}", headers=admin_headers(), params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
def mrtd(emulator: Emulator) -> str:
    return mrtd_of(emulator.bundle(os.urandom(32)))


def test_admin_api_needs_the_token(srv: Server, mrtd: str) -> None:
    body = {"kind": "tdx", "identity": {"mrtd": mrtd}}
    with srv.client() as c:
        for headers in ({}, admin_headers("wrong-token")):
            assert c.put("/nodes/tok-1", json=body, headers=headers).status_code == 401
            assert c.get("/nodes", headers=headers).status_code == 401
            assert c.get("/nodes/tok-1", headers=headers).status_code == 401
            assert c.delete("/nodes/tok-1", headers=headers).status_code == 401
        assert c.get("/nodes/tok-1", headers=admin_headers()).json()["error"] == "node.unknown"  # nothing enrolled


def test_enrol_list_update_retire(srv: Server, mrtd: str) -> None:
    h = admin_headers()
    with srv.client() as c:
        r = c.put("/nodes/reg-1", json={"kind": "tdx", "identity": {"mrtd": mrtd.upper()}}, headers=h)
        assert r.status_code == 201, r.text
        made = r.json()
        assert (made["state"], made["interval_s"], made["identity"], made["policy"], made["retired_at"]) == \
            ("unknown", 60, {"mrtd": mrtd}, None, None)
        # enrol only: a live id is a conflict
        dup = c.put("/nodes/reg-1", json={"kind": "tdx", "identity": {"mrtd": mrtd}},
                    headers={**h, "If-None-Match": "*"})
        assert (dup.status_code, dup.json()["error"]) == (409, "node.exists")
        # an update replaces the settings and keeps the state
        up = c.put("/nodes/reg-1", json={"kind": "tdx", "identity": {"mrtd": mrtd}, "interval_s": 15}, headers=h)
        assert up.status_code == 200 and up.json()["interval_s"] == 15 and up.json()["state"] == "unknown"
        kind = c.put("/nodes/reg-1", json={"kind": "snp", "identity": {"measurement": mrtd}}, headers=h)
        assert (kind.status_code, kind.json()["error"]) == (409, "node.kind-conflict")
        # identities that do not fit the kind, names that are not stored, hostile ids
        for bad in ({"kind": "tdx", "identity": {"mrtd": mrtd[:-2]}},
                    {"kind": "tdx", "identity": {"measurement": mrtd}},
                    {"kind": "tdx", "identity": {"mrtd": mrtd, "extra": "00"}},
                    {"kind": "tpm", "identity": {"ak_fingerprint": "zz" * 32}},
                    {"kind": "tdx", "identity": {"mrtd": mrtd}, "interval_s": 0},
                    {"kind": "sgx", "identity": {"mrtd": mrtd}}):
            r = c.put("/nodes/reg-2", json=bad, headers=h)
            assert (r.status_code, r.json()["error"]) == (422, "request.invalid"), (bad, r.text)
        r = c.put("/nodes/reg-2", json={"kind": "tdx", "identity": {"mrtd": mrtd}, "policy": "no-such"}, headers=h)
        assert (r.status_code, r.json()["error"]) == (422, "node.policy-unknown")
        assert c.put("/nodes/-x", json={"kind": "tdx", "identity": {"mrtd": mrtd}}, headers=h).status_code == 422
        assert c.put("/nodes/reg-2", json={"kind": "tdx", "identity": {"mrtd": other(mrtd)}},
                     headers=h).status_code == 201
        live = [n["id"] for n in c.get("/nodes", headers=h).json()["items"]]
        assert {"reg-1", "reg-2"} <= set(live) and live == sorted(live)
        # retire: gone from the list, still shown, its id refused for attestation, and retiring twice is 404
        assert c.delete("/nodes/reg-2", headers=h).status_code == 204
        assert c.delete("/nodes/reg-2", headers=h).status_code == 404
        assert "reg-2" not in [n["id"] for n in c.get("/nodes", headers=h).json()["items"]]
        assert "reg-2" in [n["id"] for n in c.get("/nodes", params={"all": "true"}, headers=h).json()["items"]]
        assert node(c, "reg-2")["retired_at"] is not None
        # enrolled again: a new identity, state unknown, and the history says so
        again = c.put("/nodes/reg-2", json={"kind": "tdx", "identity": {"mrtd": mrtd}}, headers=h)
        assert again.status_code == 201 and again.json()["retired_at"] is None
        shown = node(c, "reg-2")
        assert shown["identity"] == {"mrtd": mrtd}
        assert [(x["seq"], x["state"]) for x in shown["history"]] == [(1, "unknown")]
        assert "again" in shown["history"][0]["reason"]


def test_attesting_as_a_node_changes_its_state(srv: Server, emulator: Emulator, mrtd: str) -> None:
    h = admin_headers()
    with srv.client() as c:
        keys = c.get("/.well-known/jwks.json").json()
        assert c.put("/nodes/td-1", json={"kind": "tdx", "identity": {"mrtd": mrtd}}, headers=h).status_code == 201
        r = attest_as(c, "td-1", emulator.bundle)
        assert r.status_code == 201, r.text
        good = r.json()
        assert good["status"] == "affirming", good["findings"]
        assert "node.identity-mismatch" not in good["findings"]
        assert c.get(f"/results/{good['id']}").json()["node_id"] == "td-1"
        shown = node(c, "td-1")
        assert (shown["state"], shown["last_result_id"]) == ("affirming", good["id"])
        assert [(x["seq"], x["state"], x["result_id"]) for x in shown["history"]] == [(1, "affirming", good["id"])]
        # the same state again: no new history row
        assert attest_as(c, "td-1", emulator.bundle).json()["status"] == "affirming"
        assert len(node(c, "td-1")["history"]) == 1

        # the node's pinned MRTD is now another: the same TD's evidence no longer shows it
        assert c.put("/nodes/td-1", json={"kind": "tdx", "identity": {"mrtd": other(mrtd)}},
                     headers=h).status_code == 200
        r = attest_as(c, "td-1", emulator.bundle)
        assert r.status_code == 201, r.text
        bad = r.json()
        assert bad["status"] == "contraindicated" and "node.identity-mismatch" in bad["findings"]
        finding = next(f for f in bad["result"]["findings"] if f["id"] == "node.identity-mismatch")
        assert (finding["severity"], finding["claim"]) == ("error", "instance-identity")
        assert (finding["context"]["expected"], finding["context"]["actual"]) == (other(mrtd), mrtd)
        assert bad["result"]["trustworthiness"]["instance-identity"] == 96
        sub = ear.verify(bad["ear"], keys)["submods"]["tdx"]  # the signed EAR says so too
        assert sub["ear.status"] == "contraindicated" and "node.identity-mismatch" in sub["tsmr.findings"]

        # back to the right MRTD, and affirming again
        assert c.put("/nodes/td-1", json={"kind": "tdx", "identity": {"mrtd": mrtd}}, headers=h).status_code == 200
        assert attest_as(c, "td-1", emulator.bundle).json()["status"] == "affirming"
        shown = node(c, "td-1")
        history = shown["history"]
        assert [(x["seq"], x["state"]) for x in history] == [
            (5, "affirming"), (4, "unknown"), (3, "contraindicated"), (2, "unknown"), (1, "affirming")]
        assert [x["at"] for x in history] == sorted((x["at"] for x in history), reverse=True)
        assert history[2]["result_id"] == bad["id"] and "node.identity-mismatch" in history[2]["reason"]
        assert history[1]["result_id"] is None and history[3]["result_id"] is None
        assert shown["state_since"] == history[0]["at"]
        assert [x["seq"] for x in node(c, "td-1", history=2)["history"]] == [5, 4]

        # a node enrolled with another TD's MRTD from the start
        assert c.put("/nodes/td-2", json={"kind": "tdx", "identity": {"mrtd": other(mrtd)}},
                     headers=h).status_code == 201
        assert attest_as(c, "td-2", emulator.bundle).json()["status"] == "contraindicated"
        assert [x["state"] for x in node(c, "td-2")["history"]] == ["contraindicated"]
        # a TDX node presenting a TPM quote: another kind of evidence is not its identity either
        r = attest_as(c, "td-2", lambda n: tpm_bundle(bytes.fromhex(n)))
        assert "node.identity-mismatch" in r.json()["findings"]


def test_unknown_or_retired_node_spends_no_nonce(srv: Server, emulator: Emulator, mrtd: str) -> None:
    h = admin_headers()
    with srv.client() as c:
        assert c.put("/nodes/gone-1", json={"kind": "tdx", "identity": {"mrtd": mrtd}}, headers=h).status_code == 201
        assert c.delete("/nodes/gone-1", headers=h).status_code == 204
        nonce = c.post("/challenge").json()["nonce"]
        bundle = emulator.bundle(nonce)
        for name in ("gone-1", "never-enrolled"):
            r = c.post("/attest", json=bundle, params={"node": name})
            assert (r.status_code, r.json()["error"]) == (404, "node.unknown")
        # a node does not choose its policy in the request
        assert c.put("/nodes/sel-1", json={"kind": "tdx", "identity": {"mrtd": mrtd}}, headers=h).status_code == 201
        r = c.post("/attest", json=bundle, params={"node": "sel-1", "policy": "default"}, headers=h)
        assert (r.status_code, r.json()["error"]) == (400, "node.selection-conflict")
        assert c.post("/attest", json=bundle, params={"node": "bad id!"}).status_code == 422
        # none of these spent the nonce: it still attests
        ok = c.post("/attest", json=bundle, params={"node": "sel-1"})
        assert ok.status_code == 201 and ok.json()["status"] == "affirming", ok.text
        assert node(c, "gone-1")["last_result_id"] is None


def test_tpm_node_is_its_attestation_key(srv: Server) -> None:
    h = admin_headers()
    mine, theirs = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    spki = mine.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with srv.client() as c:
        for name, key in (("tpm-mine", mine), ("tpm-theirs", theirs)):  # both trusted: each verifies
            assert c.put(f"/tpm-aks/{name}", json={"key": pem(key).decode()}, headers=h).status_code == 201
        r = c.put("/nodes/host-1", json={"kind": "tpm", "identity": {"ak_fingerprint": hashlib.sha256(spki).hexdigest()}},
                  headers=h)
        assert r.status_code == 201, r.text
        good = attest_as(c, "host-1", lambda n: tpm_bundle(bytes.fromhex(n), key=mine)).json()
        assert good["status"] == "affirming", good["findings"]
        bad = attest_as(c, "host-1", lambda n: tpm_bundle(bytes.fromhex(n), key=theirs)).json()
        assert bad["status"] == "contraindicated" and bad["findings"][0] == "node.identity-mismatch"
        assert [x["state"] for x in node(c, "host-1")["history"]] == ["contraindicated", "affirming"]


class Ran:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = code, stdout, stderr


def tsmr(*args: str, token: str | None = ADMIN_TOKEN) -> Ran:
    """``tsmr nodes ARGS`` (the CLI's own application, in this process), with the admin token in the environment."""
    from typer.testing import CliRunner

    from tsmr.cli.main import app

    env = {k: None for k in os.environ if k.startswith("TSMR_")}
    env["TSMR_ADMIN_TOKEN"] = token
    r = CliRunner().invoke(app, ["nodes", *args], env=env)
    return Ran(r.exit_code, r.stdout, r.stderr)


def test_nodes_cli(srv: Server, emulator: Emulator, mrtd: str) -> None:
    url = ["--verifier", srv.url]
    r = tsmr("enrol", "cli-1", "--kind", "tdx", "--identity", f"mrtd={mrtd}", "--interval", "30", *url, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "unknown" and json.loads(r.stdout)["interval_s"] == 30
    again = tsmr("enrol", "cli-1", "--kind", "tdx", "--identity", f"mrtd={mrtd}", *url)
    assert again.returncode == 2 and "enrolled already" in again.stderr
    assert tsmr("list", *url, token=None).returncode == 2  # no token: refused, said as bad usage
    denied = tsmr("list", *url, token="wrong")
    assert denied.returncode == 2 and "admin token" in denied.stderr
    with srv.client() as c:
        assert attest_as(c, "cli-1", emulator.bundle).json()["status"] == "affirming"
    listed = json.loads(tsmr("list", *url, "--json").stdout)
    assert {"id": "cli-1", "state": "affirming"}.items() <= next(n for n in listed if n["id"] == "cli-1").items()
    up = tsmr("update", "cli-1", "--interval", "120", *url, "--json")
    assert up.returncode == 0, up.stderr
    assert (json.loads(up.stdout)["interval_s"], json.loads(up.stdout)["identity"]) == (120, {"mrtd": mrtd})
    shown = tsmr("show", "cli-1", *url)
    assert shown.returncode == 0 and "affirming" in shown.stdout and "cli-1" in shown.stdout
    assert tsmr("retire", "cli-1", *url).returncode == 0
    missing = tsmr("show", "no-such-node", *url, "--json")
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]
    assert tsmr("retire", "cli-1", *url).returncode == 2
    unreachable = tsmr("list", "--verifier", "http://127.0.0.1:9")
    assert unreachable.returncode == 3
    bad = tsmr("enrol", "cli-2", "--kind", "tdx", "--identity", "mrtd", *url)
    assert bad.returncode == 2


def test_concurrent_attestations_of_one_node_change_its_state_one_at_a_time(db_url: str) -> None:
    """Threads recording results for one node at once: the history stays one numbered change after another."""
    import threading
    from datetime import timedelta

    from tsmr.service.db import Store, utcnow

    store = Store.open(db_url)
    try:
        store.enrol_node("busy-1", kind="tdx", identity={"mrtd": "ab" * 48})
        start = utcnow()
        statuses = ["affirming", "contraindicated", "warning"]
        barrier, errors = threading.Barrier(6), []

        def worker(i: int) -> None:
            barrier.wait()
            try:
                for j in range(5):
                    n = i * 5 + j
                    store.save_node_result(node_id="busy-1", status=statuses[n % 3], kind="tdx", nonce=f"{n:064x}",
                                           ear="x", result={"n": n}, now=start + timedelta(milliseconds=n))
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        view = store.get_node("busy-1", history=100)
        assert view is not None
        history = view.history
        assert [h.seq for h in history] == list(range(len(history), 0, -1)) and history
        # each change is a change, and the node is in the state its latest change says, since then
        assert all(a.state != b.state for a, b in zip(history, history[1:]))
        assert (view.node.state, view.node.state_since) == (history[0].state, history[0].at)
        assert view.node.last_attested_at is not None and view.node.last_attested_at >= history[0].at
    finally:
        store.close()
