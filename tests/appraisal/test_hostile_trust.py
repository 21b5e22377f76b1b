"""Attacks on what a verdict rests on: who signed the evidence, and which events the signed registers prove.

Each test builds the bundle an attacker would send and checks that the appraisal (and the
CLI's `tsmr appraise` / `tsmr verify`) refuses it with the finding that names the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from forge import pem, tpm_bundle

from tsmr.evidence import TrustAnchors
from tsmr.appraisal import appraise
from tsmr.evidence.bundle import make_bundle

from .conftest import NOW, EmulatedTDX

NONCE = bytes(range(32))
TSMR = [sys.executable, "-m", "tsmr"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TSMR, *args], capture_output=True, text=True, timeout=120, env={"COLUMNS": "200",
                          "PATH": "/usr/bin:/bin"})


# -- 1. the TPM attestation key must be one the verifier trusts -----------------------------------

def test_quote_signed_by_a_fresh_key_is_refused() -> None:
    doc = tpm_bundle(NONCE)  # signature, nonce and PCR digest all check out under the bundle's own key
    r = appraise(doc, nonce=NONCE, now=NOW)
    assert r.status == "contraindicated"
    assert r.finding_ids()[0] == "evidence.tpm.ak.untrusted"
    assert r.trustworthiness["hardware"] == 96 and r.registers == ()


def test_only_the_enrolled_key_is_trusted() -> None:
    from tsmr.evidence.tpm import load_ak_anchor

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    doc = tpm_bundle(NONCE, key=key)
    assert appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(tpm_aks=[load_ak_anchor(pem(key))])).status == "affirming"
    r = appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(tpm_aks=[load_ak_anchor(pem(other))]))
    assert r.finding_ids()[0] == "evidence.tpm.ak.untrusted" and r.status == "contraindicated"


def _cert(subject: str, key: Any, issuer: str, signer: Any, *, ca: bool, days: int = 30) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return b.sign(signer, hashes.SHA256())


def test_ak_certificate_must_chain_to_the_configured_ca() -> None:
    ca_key, int_key, ak = (ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1()),
                           ec.generate_private_key(ec.SECP256R1()))
    ca = _cert("tpm ca", ca_key, "tpm ca", ca_key, ca=True)
    inter = _cert("tpm intermediate", int_key, "tpm ca", ca_key, ca=True)
    ak_cert = _cert("ak", ak, "tpm intermediate", int_key, ca=False)
    doc = tpm_bundle(NONCE, key=ak)
    der = lambda c: base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()  # noqa: E731
    doc["evidence"].update(ak_cert=der(ak_cert), ak_chain=[der(inter)])
    assert appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(tpm_cas=[ca])).status == "affirming"

    # the attacker's own CA issues a certificate with the same names
    fake_key = ec.generate_private_key(ec.SECP384R1())
    fake = _cert("tpm ca", fake_key, "tpm ca", fake_key, ca=True)
    r = appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(tpm_cas=[fake]))
    assert r.finding_ids()[0] == "evidence.tpm.ak.untrusted"
    # a real certificate for another key, carried beside a quote signed by the attacker's key
    forged = tpm_bundle(NONCE)
    forged["evidence"].update(ak_cert=der(ak_cert), ak_chain=[der(inter)])
    r = appraise(forged, nonce=NONCE, now=NOW, trust=TrustAnchors(tpm_cas=[ca]))
    assert r.finding_ids()[0] == "evidence.tpm.ak.certificate"
    # an end-entity certificate cannot act as an intermediate
    leafy = _cert("tpm intermediate", int_key, "tpm ca", ca_key, ca=False)
    doc["evidence"]["ak_chain"] = [der(leafy)]
    assert appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(tpm_cas=[ca])).finding_ids()[0] == "evidence.tpm.ak.certificate"


def test_cli_refuses_a_fresh_key_and_accepts_an_enrolled_one(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(tpm_bundle(NONCE, key=key)))
    (tmp_path / "ak.pem").write_bytes(pem(key))
    for cmd in (["appraise", str(bundle), "--nonce", NONCE.hex(), "--json"], ["verify", str(bundle), "--json"]):
        refused = run_cli(*cmd)
        assert refused.returncode == 1, refused.stderr
        assert "tpm.ak.untrusted" in refused.stdout
        accepted = run_cli(*cmd, "--tpm-ak", str(tmp_path / "ak.pem"))
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr


# -- 2. only events that a signed register proves reach reference values, appraisers and policy ----

DENY_ALPINE = """package tsmr
import rego.v1
deny contains "alpine deployed" if {
    some e in input.events["example.com/app"]
    e.operation == "deploy"
    contains(e.content, "alpine")
}
"""
REQUIRE_START = {"format": "tsmr-refvals", "version": 1, "id": "needs-start",
                 "events": [{"domain": "example.com/app", "operation": "start"}]}


def _with_logs(doc: dict[str, Any], *logs: dict[str, Any]) -> dict[str, Any]:
    return dict(doc, logs=[dict(lg, data=base64.b64encode(lg["data"]).decode()) for lg in logs])


def test_forged_lines_that_no_signed_register_proves_are_not_judged(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy alpine")
    doc = emulated_tdx.bundle(NONCE)
    # One line on RTMR2 (no sync record), and a log for RTMR9, which no quote signs: the line
    # would satisfy the reference values if it were believed.
    for register, finding in (("rtmr2", "replay.mismatch"), ("rtmr9", "replay.not-signed")):
        forged = _with_logs(doc, {"format": "tsmr", "register": register, "data": b"example.com/app start\n"})
        r = appraise(forged, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=REQUIRE_START)
        assert r.status == "contraindicated", register
        assert finding in r.finding_ids() and "refvals.event-missing" in r.finding_ids()
        assert next(f for f in r.findings if f.id == finding).severity == "error"
        assert r.events == {}
        assert [(e["register"], e["operation"]) for e in r.unproven] == [(register, "start")]
        # and the signed RTMR3 whose log was dropped is no silent row
        assert "replay.unlogged" in r.finding_ids()
        assert ("rtmr3", "unlogged") in [(x["register"], x["status"]) for x in r.registers]


def test_dropping_the_log_does_not_hide_its_events(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy alpine")
    doc = emulated_tdx.bundle(NONCE)
    assert "policy.deny" in appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, policy=DENY_ALPINE).finding_ids()
    r = appraise(dict(doc, logs=[]), nonce=NONCE, now=NOW, trust=emulated_tdx.trust, policy=DENY_ALPINE)
    assert r.status == "contraindicated" and r.finding_ids()[0] == "replay.unlogged"


def test_events_before_a_gap_are_unproven(emulated_tdx: EmulatedTDX) -> None:
    """A sync record replaces the value before it: events there could say anything and still match."""
    from tsmr.algorithms import HashAlg

    emulated_tdx.append("example.com/app deploy alpine")
    emulated_tdx.rs.extend("rtmr3", {HashAlg.SHA384: bytes(48)})  # an unlogged extend: the next append syncs
    emulated_tdx.append("example.com/app ready")
    doc = emulated_tdx.bundle(NONCE)
    real = base64.b64decode(doc["logs"][0]["data"]).decode()
    assert real.count("SYNC ") == 2
    forged = real.replace("example.com/app deploy alpine", "example.com/app start")
    r = appraise(_with_logs(doc, {"format": "tsmr", "register": "rtmr3", "data": forged.encode()}),
                 nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=REQUIRE_START)
    assert ("rtmr3", "matched") in [(x["register"], x["status"]) for x in r.registers]
    assert "replay.gap" in r.finding_ids() and "refvals.event-missing" in r.finding_ids()
    assert [e["operation"] for e in r.events["example.com/app"]] == ["ready"]
    assert [e["operation"] for e in r.unproven] == ["start"]


# -- 3. cutting the front of a log is history missing, not a fresh anchor ---------------------------

def _truncate_then_append(emulated_tdx: EmulatedTDX, record: str) -> dict[str, Any]:
    """Start the log anew (moved aside; a writer refuses a log cut under it), and let a fresh writer append.

    The new log anchors at the register's current value, as if its front had been cut.
    """
    from tsmr.runtime_log.store import RuntimeLog

    emulated_tdx.log.path.rename(emulated_tdx.log.path.with_name("rtmr3.log.old"))
    with RuntimeLog(emulated_tdx.rs, "rtmr3", log_dir=emulated_tdx.log.path.parent.parent) as fresh:
        fresh.append(record)
        data = fresh.read()
    return _with_logs(emulated_tdx.bundle(NONCE), {"format": "tsmr", "register": "rtmr3", "data": data})


def test_cut_front_of_a_runtime_log_is_history_missing(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy alpine")
    doc = _truncate_then_append(emulated_tdx, "example.com/app harmless")
    text = base64.b64decode(doc["logs"][0]["data"]).decode()
    assert text.startswith("SYNC sha384/") and "alpine" not in text and "harmless" in text
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, policy=DENY_ALPINE)
    assert r.status == "contraindicated"
    assert r.finding_ids()[0] == "replay.history-missing"
    row = next(x for x in r.registers if x["status"] == "history-missing")
    assert row["register"] == "rtmr3" and "removed" in row["explanation"]
    assert r.events == {} and [e["operation"] for e in r.unproven] == ["harmless"]


def test_a_log_anchored_at_zero_still_affirms(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy busybox")
    doc = emulated_tdx.bundle(NONCE)
    # reference values that name the one event: with the log replaying from zero, they cover RTMR3
    rv = {"format": "tsmr-refvals", "version": 1, "id": "deploy",
          "events": [{"domain": "example.com/app", "operation": "deploy", "content": "busybox"}]}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=rv)
    assert r.status == "affirming" and r.finding_ids() == []
    assert [e["operation"] for e in r.events["example.com/app"]] == ["deploy"] and r.unproven == ()


def test_tsmr_verify_fails_on_history_missing(emulated_tdx: EmulatedTDX, tmp_path: Path) -> None:
    emulated_tdx.append("example.com/app one")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(_truncate_then_append(emulated_tdx, "example.com/app two")))
    root = emulated_tdx.state / "emulator" / "tdx" / "qe" / "root.pem"
    out = run_cli("verify", str(bundle), "--trust-root", str(root), "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    rows = json.loads(out.stdout)["registers"]
    assert "history-missing" in [r["status"] for r in rows]


@pytest.mark.parametrize("value", ["00" * 48, "ff" * 48])
def test_sync_that_declares_the_launch_value_is_no_gap(emulated_tdx: EmulatedTDX, value: str) -> None:
    """A first sync record must declare exactly the launch value: zero for RTMR3."""
    emulated_tdx.append("example.com/app x")
    doc = emulated_tdx.bundle(NONCE)
    log = f"SYNC sha384/{value}\nexample.com/app x\n".encode()
    r = appraise(_with_logs(doc, {"format": "tsmr", "register": "rtmr3", "data": log}), nonce=NONCE, now=NOW,
                 trust=emulated_tdx.trust)
    statuses = {x["status"] for x in r.registers if x["register"] == "rtmr3"}
    if value == "00" * 48:
        assert "history-missing" not in statuses
    else:
        assert "history-missing" in statuses and r.status == "contraindicated"


def test_make_bundle_roundtrip_keeps_ak_certificate_fields() -> None:
    doc = make_bundle(nonce=NONCE, evidence={"kind": "tpm", "ak_cert": "AA==", "ak_chain": ["AA=="]})
    assert doc["evidence"]["ak_cert"] == "AA==" and doc["evidence"]["ak_chain"] == ["AA=="]


def test_cli_appraise_does_not_judge_unproven_lines(emulated_tdx: EmulatedTDX, tmp_path: Path) -> None:
    emulated_tdx.append("example.com/app deploy busybox")
    forged = _with_logs(emulated_tdx.bundle(NONCE), {"format": "tsmr", "register": "rtmr9",
                                                     "data": b"example.com/app start\n"})
    bundle, refvals = tmp_path / "bundle.json", tmp_path / "refvals.json"
    bundle.write_text(json.dumps(forged))
    refvals.write_text(json.dumps(REQUIRE_START))
    qe = emulated_tdx.state / "emulator" / "tdx" / "qe"
    from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner, write_emulated_collateral

    collateral = write_emulated_collateral(EmulatedTDXSigner(qe), tmp_path / "collateral.json")
    out = run_cli("appraise", str(bundle), "--nonce", NONCE.hex(), "--refvals", str(refvals), "--json",
                  "--trust-root", str(qe / "root.pem"), "--collateral", str(collateral))
    assert out.returncode == 1, out.stdout + out.stderr
    result = json.loads(out.stdout)
    ids = [f["id"] for f in result["findings"]]
    assert "replay.not-signed" in ids and "refvals.event-missing" in ids and "replay.unlogged" in ids
    assert result["events"] == {} and result["unproven"][0]["register"] == "rtmr9"
    human = run_cli("appraise", str(bundle), "--nonce", NONCE.hex(), "--trust-root", str(qe / "root.pem"),
                    "--collateral", str(collateral))
    assert "unproven events (not judged)" in human.stdout and "the evidence does not sign rtmr9" in human.stdout
