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
from tsmr.evidence import TrustAnchors
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
        ("rtmr0", "matched"), ("rtmr1", "matched"), ("rtmr2", "matched"),
        ("mrtd", "signed-only"), ("rtmr3", "signed-only")}  # no log covers MRTD and RTMR3: shown, not failed
    assert [r.register for r in result.rows] == ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"]
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
    assert r.returncode == 1 and "tpm.ak.untrusted" in r.stdout  # nobody vouched for the AK yet
    assert run("quote", "ak", str(out), "-o", str(tmp_path / "ak.pem")).returncode == 0
    enrolled = ("--tpm-ak", str(tmp_path / "ak.pem"))
    r = run("verify", str(out), "--json", *enrolled)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)["registers"]
    logged = [x for x in rows if x["status"] != "signed-only"]
    assert {(x["register"], x["status"]) for x in logged} == {("pcr16", "matched")} and len(logged) == 4  # four banks
    assert {x["register"] for x in rows} == {f"pcr{i}" for i in range(24)}  # every quoted PCR is in the table
    # a log that says something else than what was extended
    doc = json.loads(out.read_text())
    log = base64.b64decode(doc["logs"][-1]["data"]).replace(b"ready", b"READY")
    doc["logs"][-1]["data"] = base64.b64encode(log).decode()
    out.write_text(json.dumps(doc))
    r = run("verify", str(out), "--json", *enrolled)
    assert r.returncode == 1
    assert {x["status"] for x in json.loads(r.stdout)["registers"] if x["register"] == "pcr16"} == {"mismatched"}
    assert {x["status"] for x in json.loads(r.stdout)["registers"] if x["register"] != "pcr16"} == {"signed-only"}


def _snp_chain():  # type: ignore[no-untyped-def]
    """A P-384 ARK -> ASK -> VCEK chain made here (the verifier accepts EC issuers as well as AMD's RSA-PSS)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    keys = {n: ec.generate_private_key(ec.SECP384R1()) for n in ("ark", "ask", "vcek")}
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    start = dt.datetime(2024, 1, 1, tzinfo=timezone.utc)

    def cert(subject: str, issuer: str) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(keys[subject].public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
                .sign(keys[issuer], hashes.SHA384()))

    return keys, {n: cert(n, i) for n, i in (("ark", "ark"), ("ask", "ark"), ("vcek", "ask"))}


def _signed_snp_report(fixtures: Path, key, report_data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """The fixture report with new REPORT_DATA, re-signed with ``key`` (SNP ABI layout: R, S little-endian)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    raw = bytearray((fixtures / "go-sev-guest/attestation.bin").read_bytes())
    raw[0x50:0x90] = report_data
    raw[0x08:0x10] = (0x30000).to_bytes(8, "little")  # a guest policy without the fixture's DEBUG bit
    r, s = decode_dss_signature(key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x4A0] = bytes(0x200)
    raw[0x2A0:0x2A0 + 72] = r.to_bytes(72, "little")
    raw[0x2E8:0x2E8 + 72] = s.to_bytes(72, "little")
    return bytes(raw)


def test_snp_bundle_with_certificate_table_and_svsm_manifest(fixtures: Path) -> None:
    """An SVSM-style request: REPORT_DATA = SHA-512(nonce || manifest), certificates from the auxblob."""
    import struct

    from cryptography.hazmat.primitives.serialization import Encoding

    from tsmr.errors import InputError
    from tsmr.evidence import snp

    keys, certs = _snp_chain()
    der = {n: c.public_bytes(Encoding.DER) for n, c in certs.items()}
    entries = [(snp.GUID_VCEK, der["vcek"]), (snp.GUID_ASK, der["ask"]), (snp.GUID_ARK, der["ark"])]
    head, table, blobs = 24 * (len(entries) + 1), b"", b""
    for guid, data in entries:
        table += struct.pack("<16sII", guid.bytes, head + len(blobs), len(data))
        blobs += data
    auxblob = table + bytes(24) + blobs
    nonce, manifest = b"\x42" * 32, b"an EK TPMT_PUBLIC would be here"
    report = _signed_snp_report(fixtures, keys["vcek"], snp.svsm_report_data(nonce, manifest))
    doc = make_bundle(nonce=nonce, evidence={"kind": "snp", "data": report, "auxblob": auxblob,
                                             "manifestblob": manifest, "service_provider": "svsm"})
    json.dumps(doc)  # the bundle is plain JSON
    result = verify_bundle(doc, now=WHEN, trust=TrustAnchors(snp_ark=der["ark"]))
    assert result.kind == "snp" and result.claims.report_data == snp.svsm_report_data(nonce, manifest)
    with pytest.raises(InputError, match="ark"):
        verify_bundle(doc, now=WHEN)  # the table's own ARK is not an anchor
    other_keys, other = _snp_chain()
    with pytest.raises(EvidenceError) as ei:
        verify_bundle(doc, now=WHEN, trust=TrustAnchors(snp_ark=other["ark"].public_bytes(Encoding.DER)))
    assert ei.value.check == "snp.chain.ark"
    bad = dict(doc, evidence=dict(doc["evidence"], manifestblob=base64.b64encode(manifest + b"!").decode()))
    with pytest.raises(EvidenceError) as ei:
        verify_bundle(bad, now=WHEN, trust=TrustAnchors(snp_ark=der["ark"]))
    assert ei.value.check == "snp.report_data"
    stale = dict(doc, nonce="43" * 32)
    with pytest.raises(EvidenceError) as ei:
        verify_bundle(stale, now=WHEN, trust=TrustAnchors(snp_ark=der["ark"]))
    assert ei.value.check == "snp.report_data"
