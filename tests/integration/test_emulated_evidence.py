"""The emulator's TDX quotes: the real verifier accepts them only when their test root is trusted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509

from tsmr.evidence import TrustAnchors
from tsmr import HashAlg
from tsmr.backends.emulated import EmulatedRegisterSet
from tsmr.errors import CollateralError, SignatureError
from tsmr.evidence import tdx
from tsmr.backends.emulated_evidence.tdx import emulated_tdx_quote

TSMR = os.path.join(os.path.dirname(sys.executable), "tsmr")
NOW = datetime.now(timezone.utc)


def test_quote_over_the_emulated_registers(state_dir: Path) -> None:
    with EmulatedRegisterSet("tdx") as rs:
        rs.extend("rtmr2", {HashAlg.SHA384: hashlib.sha384(b"kernel").digest()})
        quote, root_pem = emulated_tdx_quote(rs, b"nonce-1")
        live = {r.name: next(iter(rs.read(r.name).values())) for r in rs.registers()}
    root = x509.load_pem_x509_certificate(root_pem.read_bytes())
    claims = tdx.verify_quote(quote, now=NOW, trust_root=root, report_data=b"nonce-1".ljust(64, b"\0"))
    assert dict(claims.registers) == {k: live[k] for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")}
    assert claims.mrconfigid == live["mrconfigid"]
    with pytest.raises(CollateralError) as info:  # never trusted by default
        tdx.verify_quote(quote, now=NOW)
    assert info.value.check == "tdx.pck_chain"
    bad = bytearray(quote)
    bad[48 + 16] ^= 1
    with pytest.raises(SignatureError) as sig:
        tdx.verify_quote(bytes(bad), now=NOW, trust_root=root)
    assert sig.value.check == "tdx.quote.signature"


def test_the_same_test_root_every_time(state_dir: Path) -> None:
    with EmulatedRegisterSet("tdx") as rs:
        _, first = emulated_tdx_quote(rs, b"a")
        data = first.read_bytes()
        _, again = emulated_tdx_quote(rs, b"b")
    assert again.read_bytes() == data and oct(os.stat(first.parent / "root.key").st_mode & 0o777) == "0o600"


def test_attest_and_verify_end_to_end(state_dir: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TSMR, *args], capture_output=True, text=True, timeout=60)

    b = ["--backend", "emulated:tdx"]
    assert run("log", "append", "rtmr3", "example.com/app deploy", *b).returncode == 0
    out = tmp_path / "bundle.json"
    assert run("attest", "--nonce", "ab" * 32, "-o", str(out), *b).returncode == 0
    r = run("verify", str(out), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "tdx.pck_chain"
    root = state_dir / "emulator" / "tdx" / "qe" / "root.pem"
    r = run("verify", str(out), "--trust-root", str(root), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [(x["register"], x["status"]) for x in json.loads(r.stdout)["registers"]] == [
        ("mrtd", "signed-only"), ("rtmr0", "signed-only"), ("rtmr1", "signed-only"), ("rtmr2", "signed-only"),
        ("rtmr3", "matched")]


def test_bundle_reports_gaps(state_dir: Path, tmp_path: Path) -> None:
    from tsmr.evidence.bundle import make_bundle, verify_bundle
    from tsmr.runtime_log.store import RuntimeLog

    with EmulatedRegisterSet("tdx") as rs, RuntimeLog(rs, "rtmr3", log_dir=tmp_path) as log:
        log.append("example.com/app one")
        rs.extend("rtmr3", {HashAlg.SHA384: bytes(48)})  # behind the log's back
        log.append("example.com/app two")
        quote, root_pem = emulated_tdx_quote(rs, b"n")
        data = log.read()
    doc = make_bundle(nonce=b"n", evidence={"kind": "tdx", "data": quote},
                      logs=[{"format": "tsmr", "register": "rtmr3", "data": data}])
    result = verify_bundle(doc, now=NOW, trust=TrustAnchors(tdx_root=x509.load_pem_x509_certificate(root_pem.read_bytes())))
    assert [(r.register, r.status) for r in result.rows if r.register == "rtmr3"] == [("rtmr3", "matched"), ("rtmr3", "gap")]
    assert not result.ok
