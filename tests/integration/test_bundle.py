"""Evidence bundles: the go-tdx-guest matched set (quote + CCEL + nonce), and swtpm end to end."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from swtpm import Swtpm
from tsmr.errors import EvidenceError
from tsmr.evidence.bundle import SCHEMA, make_bundle, verify_bundle

TSMR = os.path.join(os.path.dirname(sys.executable), "tsmr")
WHEN = datetime(2025, 6, 1, tzinfo=timezone.utc)


def _tdx_bundle(fixtures: Path, ccel: bytes | None = None, quote: bytes | None = None) -> dict:  # type: ignore[type-arg]
    d = fixtures / "go-tdx-guest/ccel"
    return make_bundle(nonce=(d / "nonce.dat").read_bytes(),
                       evidence={"kind": "tdx", "data": quote or (d / "cos-113-tdx-quote.dat").read_bytes()},
                       logs=[{"format": "ccel", "data": ccel or (d / "ccel_data.dat").read_bytes(), "name": "CCEL"}])


def test_tdx_matched_set_verifies_with_every_rtmr_matched(fixtures: Path) -> None:
    result = verify_bundle(_tdx_bundle(fixtures), now=WHEN)
    assert result.ok and {(r.register, r.status) for r in result.rows} == {
        ("rtmr0", "matched"), ("rtmr1", "matched"), ("rtmr2", "matched")}
    assert set(SCHEMA["required"]) <= set(_tdx_bundle(fixtures))


def test_tampered_log_and_quote(fixtures: Path) -> None:
    from tsmr.eventlog import parse

    ccel = bytearray((fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes())
    last = parse(bytes(ccel)).events[-1]
    ccel[last.offset + 12 + 2] ^= 1  # a byte of the last event's SHA-384 digest (pcrIndex, type, count, alg id)
    result = verify_bundle(_tdx_bundle(fixtures, ccel=bytes(ccel)), now=WHEN)
    bad = [r for r in result.rows if r.status == "mismatched"]
    assert not result.ok and [r.register for r in bad] == [last.register] and bad[0].explanation
    quote = bytearray((fixtures / "go-tdx-guest/ccel/cos-113-tdx-quote.dat").read_bytes())
    quote[200] ^= 1
    with pytest.raises(EvidenceError) as info:
        verify_bundle(_tdx_bundle(fixtures, quote=bytes(quote)), now=WHEN)
    assert info.value.check == "tdx.quote.signature"
    wrong_nonce = _tdx_bundle(fixtures)
    wrong_nonce["nonce"] = "01" * 64
    with pytest.raises(EvidenceError) as info:
        verify_bundle(wrong_nonce, now=WHEN)
    assert info.value.check == "tdx.report_data"


@pytest.mark.skipif(not Swtpm.available(), reason="swtpm not installed (make test installs it)")
def test_attest_and_verify_on_swtpm(tmp_path: Path) -> None:
    env = dict(os.environ, TSMR_LOG_DIR=str(tmp_path / "logs"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TSMR, *args], capture_output=True, text=True, env=env, timeout=60)

    out = tmp_path / "bundle.json"
    with Swtpm() as tpm:
        b = f"tpm:{tpm.tcti}"
        assert run("log", "append", "pcr16", "example.com/app start", "example.com/app ready", "-b", b).returncode == 0
        r = run("attest", "--nonce", "aa" * 16, "-o", str(out), "-b", b)
        assert r.returncode == 0, r.stderr
    r = run("verify", str(out), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)["registers"]
    assert {(x["register"], x["status"]) for x in rows} == {("pcr16", "matched")} and len(rows) == 4  # four banks
    # a log that says something else than what was extended
    doc = json.loads(out.read_text())
    log = base64.b64decode(doc["logs"][-1]["data"]).replace(b"ready", b"READY")
    doc["logs"][-1]["data"] = base64.b64encode(log).decode()
    out.write_text(json.dumps(doc))
    r = run("verify", str(out), "--json")
    assert r.returncode == 1
    assert {x["status"] for x in json.loads(r.stdout)["registers"]} == {"mismatched"}
