"""One entry point to verify evidence (tsmr.evidence.verify) and the trust anchors it takes.

Real SEV-SNP report bytes from the emulator's secure processor (its own test chain),
TDX quotes from the emulator's quoting enclave; the command line run as a user runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tsmr.errors import EvidenceError, InputError
from tsmr.evidence import TrustAnchorMissing, TrustAnchors, verify
from tsmr.evidence.bundle import make_bundle, verify_evidence
from tsmr.system.trust import SNP_CERT_FILES, load_anchors

NOW = datetime.now(timezone.utc)
NONCE = bytes(range(32))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tsmr.cli.main", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def test_trust_anchors_are_frozen_values() -> None:
    anchors = TrustAnchors(tpm_aks=["k1"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        anchors.snp_ark = b"x"  # type: ignore[misc]
    assert anchors.tpm_aks == ("k1",) and anchors.with_tpm_aks("k2").tpm_aks == ("k1", "k2")
    assert anchors.given() == ["tpm_aks"] and TrustAnchors().given() == []


def test_the_nonce_is_padded_to_the_report_data_and_checked(sp) -> None:  # type: ignore[no-untyped-def]
    report = sp.report(report_data=NONCE.ljust(64, b"\0"), measurement=b"\x11" * 48)
    anchors = TrustAnchors(snp_ark=sp.der("ark"))
    got = verify("snp", report, nonce=NONCE, now=NOW, anchors=anchors, auxblob=sp.cert_table())
    assert got.kind == "snp" and got.nonce == NONCE and got.signed["measurement"]
    assert verify("snp", report, nonce=None, now=NOW, anchors=anchors, auxblob=sp.cert_table()).nonce is None
    with pytest.raises(EvidenceError) as ei:
        verify("snp", report, nonce=b"\x01" + NONCE[1:], now=NOW, anchors=anchors, auxblob=sp.cert_table())
    assert ei.value.check == "snp.report_data"
    with pytest.raises(EvidenceError) as ei:  # no 64-byte report data can carry it
        verify("snp", report, nonce=bytes(65), now=NOW, anchors=anchors, auxblob=sp.cert_table())
    assert ei.value.check == "snp.report_data"


def test_the_guests_own_ark_is_never_trusted(sp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The certificate table carries the ARK too: it builds the chain, but only the verifier's ARK anchors it."""
    from tsmr.backends.emulated_evidence.snp import EmulatedSNPSigner

    report = sp.report(report_data=NONCE.ljust(64, b"\0"), measurement=b"\x11" * 48)
    with pytest.raises(TrustAnchorMissing, match="ark"):
        verify("snp", report, nonce=NONCE, now=NOW, anchors=TrustAnchors(), auxblob=sp.cert_table())
    stranger = EmulatedSNPSigner(tmp_path / "other")
    with pytest.raises(EvidenceError) as ei:
        verify("snp", report, nonce=NONCE, now=NOW, anchors=TrustAnchors(snp_ark=stranger.der("ark")),
               auxblob=sp.cert_table())
    assert ei.value.check == "snp.chain.ark"
    # The same rule for a bundle, which goes through the same entry point.
    doc = make_bundle(nonce=NONCE, evidence={"kind": "snp", "data": report, "auxblob": sp.cert_table()})
    with pytest.raises(TrustAnchorMissing):
        verify_evidence(doc, now=NOW, trust=TrustAnchors())
    assert verify_evidence(doc, now=NOW, trust=TrustAnchors(snp_ark=sp.der("ark"))).kind == "snp"


def test_a_mapping_is_not_trust_anchors(sp) -> None:  # type: ignore[no-untyped-def]
    doc = make_bundle(nonce=NONCE, evidence={"kind": "snp", "data": b"", "auxblob": sp.cert_table()})
    with pytest.raises(TypeError, match="TrustAnchors"):
        verify_evidence(doc, now=NOW, trust={"ark": sp.der("ark")})  # type: ignore[arg-type]


def _certs_dir(sp, tmp_path: Path, *names: str) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "certs"
    d.mkdir()
    for name in names:
        (d / f"{name}.der").write_bytes(sp.der(name))
    return d


def test_certs_directory_names_the_files_it_looked_for(sp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = _certs_dir(sp, tmp_path, "vcek")
    with pytest.raises(InputError) as ei:
        load_anchors(certs=str(d), certs_complete=True)
    text = str(ei.value)
    for name in SNP_CERT_FILES["ask"] + SNP_CERT_FILES["ark"]:
        assert name in text
    assert "no ASK, ARK there" in text and "found: vcek.der" in text
    # With the chain given by options, nothing is missing; a bundle's table may give the VCEK and ASK,
    # never the ARK.
    assert load_anchors(certs=str(d), ark=str(sp.ark_pem), ask=str(tmp_path / "certs" / "vcek.der")).snp_ark
    with pytest.raises(InputError, match=r"ARK: ark\* or cert_chain\* or ask_ark\*"):
        load_anchors(certs=str(d))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="found: nothing"):
        load_anchors(certs=str(empty))


def test_quote_verify_certs_directory(sp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "report.bin"
    report.write_bytes(sp.report(report_data=NONCE.ljust(64, b"\0"), measurement=b"\x11" * 48))
    whole = _certs_dir(sp, tmp_path, "vcek", "ask", "ark")
    r = _cli("quote", "verify", str(report), "--certs", str(whole), "--nonce", NONCE.hex(), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verified"] is True
    (whole / "ask.der").unlink()
    r = _cli("quote", "verify", str(report), "--certs", str(whole), "--nonce", NONCE.hex())
    assert r.returncode == 2 and "ask* or cert_chain* or ask_ark*" in r.stderr and "Traceback" not in r.stderr


def test_quote_verify_and_bundle_verify_agree(qe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same TDX quote, alone and in a bundle, verifies (and fails) the same way through both commands."""
    quote = qe.quote(report_data=NONCE.ljust(64, b"\0"), registers={})
    (tmp_path / "q.dat").write_bytes(quote)
    root = str(qe.root_pem)
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps(make_bundle(nonce=NONCE, evidence={"kind": "tdx", "data": quote})))
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(make_bundle(nonce=b"\x07" * 32, evidence={"kind": "tdx", "data": quote})))
    ok_q = _cli("quote", "verify", str(tmp_path / "q.dat"), "--nonce", NONCE.hex(), "--trust-root", root, "--json")
    ok_b = _cli("verify", str(bundle), "--trust-root", root, "--json")
    assert ok_q.returncode == ok_b.returncode == 0, ok_q.stderr + ok_b.stderr
    bad_q = _cli("quote", "verify", str(tmp_path / "q.dat"), "--nonce", "07" * 32, "--trust-root", root, "--json")
    bad_b = _cli("verify", str(stale), "--trust-root", root, "--json")
    assert bad_q.returncode == bad_b.returncode == 1
    assert json.loads(bad_q.stdout)["check"] == json.loads(bad_b.stdout)["check"] == "tdx.report_data"
