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
             "--ask", str(f / "go-sev-guest/milan.testcer"), "--at", "2023-06-01T00:00:00", "--json",
             "--allow-debug")  # the fixture's guest policy (0xB0000) allows debugging
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
    # the quote's own key is not trusted until it is enrolled
    r = tsmr("quote", "verify", str(out), "--nonce", "ab" * 20, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "tpm.ak.untrusted"
    ak = tmp_path / "ak.pem"
    r = tsmr("quote", "ak", str(out), "-o", str(ak))
    assert r.returncode == 0 and ak.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----"), r.stderr
    enrolled = ("--tpm-ak", str(ak))
    r = tsmr("quote", "verify", str(out), "--nonce", "ab" * 20, "--json", *enrolled)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["claims"]["pcr_digest_checked"] is True
    r = tsmr("quote", "verify", str(out), "--nonce", "cd" * 20, "--json", *enrolled)
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "tpm.nonce"
    doc = json.loads(out.read_text())
    doc["pcrs"]["sha256"]["16"] = "11" * 32
    out.write_text(json.dumps(doc))
    r = tsmr("quote", "verify", str(out), "--nonce", "ab" * 20, "--json", *enrolled)
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "tpm.pcr_digest"


def test_quote_get_refuses_backends_without_a_provider(state_dir: Path) -> None:
    r = tsmr("quote", "get", "--nonce", "00", "--backend", "emulated:sample")
    assert r.returncode == 2 and "no attestation provider" in r.stderr
    r = tsmr("quote", "get", "--nonce", "00", "--backend", "emulated:tdx", "--pcrs", "0")
    assert r.returncode == 2 and "--pcrs" in r.stderr


def test_tdx_collateral_as_a_directory_of_pcs_responses(fixtures: Path, tmp_path: Path) -> None:
    g = fixtures / "go-tdx-guest"
    col = tmp_path / "col"
    col.mkdir()
    for name in ("sample_tcbInfo_response", "tcbinfo_issuer_chain.pem", "pckcrl", "pckcrl_issuer_chain.pem",
                 "sample_qeIdentity_response", "qeidentity_issuer_chain.pem", "rootcrl.der"):
        (col / name).symlink_to(g / name)
    q = str(g / "tdx_prod_quote_SPR_E4.dat")
    # Every signature of the collateral checks out; the platform's TCB is in none of the sample's
    # levels, as Intel's verifier also says (TCB not supported): the last check is the one that fails.
    r = tsmr("quote", "verify", q, "--collateral", str(col), "--at", "2023-07-01T01:00:00", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "tdx.tcb_status", r.stdout + r.stderr
    # The same directory after the collateral expired: refused earlier, naming the expired item.
    r = tsmr("quote", "verify", q, "--collateral", str(col), "--at", "2023-09-01T00:00:00", "--json")
    check = json.loads(r.stdout)["check"]
    assert r.returncode == 1 and check != "tdx.tcb_status" and check.startswith("tdx."), r.stdout
    (col / "tcbInfo_other.json").symlink_to(g / "sample_tcbinfo_response_v5")
    r = tsmr("quote", "verify", q, "--collateral", str(col), "--at", "2023-07-01T01:00:00")
    assert r.returncode == 2 and "more than one tcb_info_response" in r.stderr
    (col / "tcbInfo_other.json").unlink()
    (col / "pckcrl").unlink()
    r = tsmr("quote", "verify", q, "--collateral", str(col), "--at", "2023-07-01T01:00:00")
    assert r.returncode == 2 and "no pck_crl file" in r.stderr


def _cert_table(entries: list[tuple[str, bytes]]) -> bytes:
    import struct
    import uuid

    head = 24 * (len(entries) + 1)
    table, blobs = b"", b""
    for guid, data in entries:
        table += struct.pack("<16sII", uuid.UUID(guid).bytes, head + len(blobs), len(data))
        blobs += data
    return table + bytes(24) + blobs


def test_snp_certificates_from_a_directory_or_the_certificate_table(fixtures: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from tsmr.evidence import snp

    s = fixtures / "go-sev-guest"
    report = str(s / "attestation.bin")
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "vcek.der").symlink_to(s / "vcek.testcer")
    (certs / "cert_chain.pem").symlink_to(s / "milan.testcer")
    at = ["--at", "2023-06-01T00:00:00", "--allow-debug"]  # the fixture's guest policy allows debugging
    r = tsmr("quote", "verify", report, "--certs", str(certs), "--nonce", "0102030405", *at, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    r = tsmr("quote", "verify", report, "--certs", str(certs), "--nonce", "0102030406", *at, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "snp.report_data"
    ask, ark = snp.split_chain((s / "milan.testcer").read_bytes())
    der = lambda c: c.public_bytes(Encoding.DER)  # noqa: E731
    table = tmp_path / "auxblob"
    table.write_bytes(_cert_table([(str(snp.GUID_VCEK), (s / "vcek.testcer").read_bytes()),
                                   (str(snp.GUID_ASK), der(ask)), (str(snp.GUID_ARK), der(ark))]))
    r = tsmr("quote", "verify", report, "--certs", str(table), *at)
    assert r.returncode == 2 and "give --ark" in r.stderr  # the guest's own ARK is not an anchor
    ark_file = tmp_path / "ark.pem"
    ark_file.write_bytes(ark.public_bytes(Encoding.PEM))
    r = tsmr("quote", "verify", report, "--certs", str(table), "--ark", str(ark_file), *at, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    # A table whose ARK is not the trusted one is refused.
    other = tmp_path / "other.pem"
    other.write_bytes(ask.public_bytes(Encoding.PEM))
    r = tsmr("quote", "verify", report, "--certs", str(table), "--ark", str(other), *at, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "snp.chain.ark"
