"""tsmr quote get/show/verify on real evidence and on swtpm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swtpm import Swtpm

TSMR = os.path.join(os.path.dirname(sys.executable), "tsmr")


def tsmr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TSMR, *args], capture_output=True, text=True, timeout=60)


def test_tdx_quote_verifies_and_names_the_failed_check(fixtures: Path, tmp_path: Path) -> None:
    q = fixtures / "go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
    r = tsmr("quote", "verify", str(q), "--at", "2023-07-01T01:00:00", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["kind"] == "tdx" and out["verified"] and out["claims"]["fmspc"] == "50806f000000"
    bad = tmp_path / "q"
    data = bytearray(q.read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    r = tsmr("quote", "verify", str(bad), "--at", "2023-07-01T01:00:00", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "tdx.quote.signature"
    r = tsmr("quote", "verify", str(q), "--at", "2023-07-01T01:00:00", "--nonce", "00" * 64)
    assert r.returncode == 1 and "tdx.report_data" in r.stdout


def test_snp_cca_and_tpm_evidence(fixtures: Path) -> None:
    f = fixtures
    r = tsmr("quote", "verify", str(f / "go-sev-guest/attestation.bin"), "--vcek", str(f / "go-sev-guest/vcek.testcer"),
             "--ask", str(f / "go-sev-guest/milan.testcer"), "--at", "2023-06-01T00:00:00", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["kind"] == "snp"
    r = tsmr("quote", "verify", str(f / "ccatoken/cca_token_good.cbor"), "--cpak", str(f / "ccatoken/keys/testIAK.pub.jwk.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = tsmr("quote", "verify", str(f / "ccatoken/cca_token_good.cbor"), "--cpak", str(f / "ccatoken/keys/testAltIAK.pub.jwk.json"))
    assert r.returncode == 1 and "cca.platform.signature" in r.stdout
    nonce = json.loads((f / "keylime/tpm2-quote/expected.json").read_text())["extraData_nonce_hex"]
    tpm_args = ["--signature", str(f / "keylime/tpm2-quote/quotesig.out"), "--ak", str(f / "keylime/tpm2-quote/akpub.pem")]
    r = tsmr("quote", "verify", str(f / "keylime/tpm2-quote/quote.out"), *tpm_args, "--nonce", nonce)
    assert r.returncode == 0, r.stdout + r.stderr
    r = tsmr("quote", "verify", str(f / "keylime/tpm2-quote/quote.out"), *tpm_args, "--nonce", "00" * 20)
    assert r.returncode == 1 and "tpm.nonce" in r.stdout
    r = tsmr("quote", "show", str(f / "go-sev-guest/attestation.bin"))
    assert json.loads(r.stdout)["evidence"]["version"] == 2


@pytest.mark.skipif(not Swtpm.available(), reason="swtpm not installed (make test installs it)")
def test_quote_get_on_swtpm_then_verify(tmp_path: Path) -> None:
    with Swtpm() as tpm:
        out = tmp_path / "q.json"
        r = tsmr("quote", "get", "--nonce", "ab" * 20, "--pcrs", "0,16", "-o", str(out), "--backend", f"tpm:{tpm.tcti}")
        assert r.returncode == 0, r.stderr
    r = tsmr("quote", "verify", str(out), "--nonce", "ab" * 20, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["claims"]["pcr_digest_checked"] is True
    r = tsmr("quote", "verify", str(out), "--nonce", "cd" * 20, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "tpm.nonce"
    doc = json.loads(out.read_text())
    doc["pcrs"]["sha256"]["16"] = "11" * 32
    out.write_text(json.dumps(doc))
    r = tsmr("quote", "verify", str(out), "--nonce", "ab" * 20, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "tpm.pcr_digest"


def test_quote_get_refuses_unsupported_backends(state_dir: Path) -> None:
    r = tsmr("quote", "get", "--nonce", "00", "--backend", "emulated:cca")
    assert r.returncode == 2 and "not available yet" in r.stderr
