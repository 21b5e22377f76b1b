"""The same attacks on what a verdict rests on, against a real `tsmr serve` on SQLite and PostgreSQL.

A TPM quote signed by a key the attacker just made, runtime-log lines no signed register
proves, and a log whose front was cut must each end `contraindicated` with the finding
that says why; an operator-enrolled key (from the command line or the admin API) is trusted.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from forge import pem, tpm_bundle

from .conftest import Emulator, Server, admin_headers


def attest(srv: Server, make: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
    with srv.client() as c:
        nonce = c.post("/challenge").json()["nonce"]
        r = c.post("/attest", json=make(bytes.fromhex(nonce)))
        assert r.status_code == 201, r.text
        return r.json()


def with_logs(doc: dict[str, Any], *logs: dict[str, Any]) -> dict[str, Any]:
    return dict(doc, logs=[dict(lg, data=base64.b64encode(lg["data"]).decode()) for lg in logs])


def test_tpm_quote_from_a_fresh_key_is_contraindicated_until_enrolled(make_server: Callable[..., Server],
                                                                      db_url: str, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    srv = make_server(database=db_url, trust_root=None)
    body = attest(srv, lambda n: tpm_bundle(n, key=key))
    assert body["status"] == "contraindicated" and body["findings"][0] == "evidence.tpm.ak.untrusted"
    assert body["result"]["trustworthiness"]["hardware"] == 96

    # The operator enrols the key through the admin API: its quotes are the TPM's from now on.
    with srv.client() as c:
        assert c.put("/tpm-aks/node-1", json={"key": pem(key).decode()}).status_code == 401  # not without the token
        r = c.put("/tpm-aks/node-1", json={"key": pem(key).decode()}, headers=admin_headers())
        assert r.status_code == 201, r.text
        assert [a["name"] for a in c.get("/tpm-aks", headers=admin_headers()).json()] == ["node-1"]
    assert attest(srv, lambda n: tpm_bundle(n, key=key))["status"] == "affirming"
    # another fresh key is still nobody's
    assert attest(srv, lambda n: tpm_bundle(n))["findings"][0] == "evidence.tpm.ak.untrusted"
    with srv.client() as c:
        assert c.delete("/tpm-aks/node-1", headers=admin_headers()).status_code == 204
    assert attest(srv, lambda n: tpm_bundle(n, key=key))["findings"][0] == "evidence.tpm.ak.untrusted"


def test_tpm_ak_given_at_start_up(make_server: Callable[..., Server], db_url: str, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ak = tmp_path / "ak.pem"
    ak.write_bytes(pem(key))
    srv = make_server(database=db_url, trust_root=None, extra=["--tpm-ak", str(ak)])
    assert attest(srv, lambda n: tpm_bundle(n, key=key))["status"] == "affirming"
    assert attest(srv, lambda n: tpm_bundle(n))["findings"][0] == "evidence.tpm.ak.untrusted"


@pytest.fixture
def fresh_emulator(tmp_path: Path) -> Emulator:
    emu = Emulator(tmp_path / "emulator")
    emu.append("example.com/app deploy alpine")
    return emu


def test_unproven_log_lines_are_findings_not_events(make_server: Callable[..., Server], db_url: str,
                                                    fresh_emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=fresh_emulator.trust_root)
    honest = attest(srv, fresh_emulator.bundle)
    assert honest["result"]["events"]["example.com/app"][0]["operation"] == "deploy"
    for register, finding in (("rtmr2", "replay.mismatch"), ("rtmr9", "replay.not-signed")):
        body = attest(srv, lambda n: with_logs(fresh_emulator.bundle(n), {"format": "tsmr", "register": register,
                                                                          "data": b"example.com/app start\n"}))
        assert body["status"] == "contraindicated", register
        assert finding in body["findings"] and "replay.unlogged" in body["findings"]
        assert body["result"]["events"] == {}
        assert [(e["register"], e["operation"]) for e in body["result"]["unproven"]] == [(register, "start")]


def test_cut_log_front_is_history_missing(make_server: Callable[..., Server], db_url: str,
                                          fresh_emulator: Emulator) -> None:
    log = fresh_emulator.log_dir / "emulated-tdx" / "rtmr3.log"
    assert log.exists()
    log.rename(log.with_name("rtmr3.log.cut"))  # the history is gone; a new writer anchors at the current value
    fresh_emulator.append("example.com/app harmless")
    srv = make_server(database=db_url, trust_root=fresh_emulator.trust_root)
    body = attest(srv, fresh_emulator.bundle)
    assert body["status"] == "contraindicated" and body["findings"][0] == "replay.history-missing"
    assert body["result"]["events"] == {} and [e["operation"] for e in body["result"]["unproven"]] == ["harmless"]
    with srv.client() as c:
        stored = c.get(f"/results/{body['id']}").json()
    assert stored["status"] == "contraindicated" and "replay.history-missing" in stored["findings"]


def test_enrol_refuses_junk_and_a_key_enrolled_twice(make_server: Callable[..., Server], db_url: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    srv = make_server(database=db_url, trust_root=None)
    with httpx.Client(base_url=srv.url, timeout=30, headers=admin_headers()) as c:
        r = c.put("/tpm-aks/node-1", json={"key": "not a key"})
        assert r.status_code == 422 and r.json()["error"] == "tpm-ak.invalid"
        assert c.put("/tpm-aks/node-1", json={"key": pem(key).decode()}).status_code == 201
        r = c.put("/tpm-aks/node-2", json={"key": pem(key).decode()})
        assert r.status_code == 409 and r.json()["error"] == "tpm-ak.conflict"
        assert c.delete("/tpm-aks/node-2").status_code == 404


def test_tpm_ak_enrolled_on_the_database_from_the_cli(make_server: Callable[..., Server], db_url: str,
                                                       tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    key = ec.generate_private_key(ec.SECP256R1())
    quote = tmp_path / "first.json"
    quote.write_text(json.dumps(tpm_bundle(bytes(32), key=key)))  # a quote taken on the trusted machine

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tsmr", "tpm-ak", *args, "--database", db_url],
                              capture_output=True, text=True, timeout=120)

    assert cli("enrol", "node-1", str(quote)).returncode == 0
    again = cli("enrol", "node-2", str(quote))
    assert again.returncode == 2 and "already enrolled" in again.stderr
    listed = cli("list", "--json")
    assert [a["name"] for a in json.loads(listed.stdout)] == ["node-1"]
    srv = make_server(database=db_url, trust_root=None)
    assert attest(srv, lambda n: tpm_bundle(n, key=key))["status"] == "affirming"
    assert cli("remove", "node-1").returncode == 0 and cli("remove", "node-1").returncode == 2
    assert attest(srv, lambda n: tpm_bundle(n, key=key))["findings"][0] == "evidence.tpm.ak.untrusted"
