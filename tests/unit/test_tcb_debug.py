"""Platform trust beyond signatures: TDX TCB statuses, SEV-SNP CRLs, debuggable guests (TDX, SEV-SNP, CCA).

Real data where it exists (trustee's ``tdx_quote_4.dat`` is a debug TD, go-sev-guest's report
allows debugging, go-sev-guest's Milan chain); otherwise the emulator's evidence, with collateral
and CRLs issued under its test chains (``tests/emulated_collateral.py``), so that every TCB status
and every CRL outcome is reached by real verification.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from typer.testing import CliRunner

from emulated_collateral import collateral, collateral_doc, quote, snp_crl
from tsmr.evidence import TrustAnchors
from tsmr.appraisal.platform import platform_findings
from tsmr.cli.main import app
from tsmr.errors import CollateralError, EvidenceError
from tsmr.evidence import cca, snp, tdx
from tsmr.evidence.bundle import make_bundle, verify_bundle, verify_evidence
from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner
from tsmr.backends.emulated_evidence.cca import EmulatedCCASigner, _sign1_es384
from tsmr.backends.emulated_evidence.snp import DEFAULT_POLICY, EmulatedSNPSigner

from conftest import FIXTURES  # noqa: E402

NOW = dt.datetime.now(dt.timezone.utc)
TRUSTEE_TIME = dt.datetime(2025, 11, 1, tzinfo=dt.timezone.utc)  # inside the trustee quotes' PCK validity
DEBUG = b"\x01" + bytes(7)


def _fixture(rel: str) -> Path:
    return FIXTURES.path(rel)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


# ------------------------------------------------------------------ TDX: debug


def test_trustee_debug_td_is_refused_unless_allowed() -> None:
    """trustee's tdx_quote_4.dat is a real quote of a TD with TD_ATTRIBUTES.DEBUG set."""
    data = _fixture("trustee/verifier-tdx/tdx_quote_4.dat").read_bytes()
    assert tdx.parse_quote(data).body.td_attributes[0] & 1
    with pytest.raises(EvidenceError) as ei:
        tdx.verify_quote(data, now=TRUSTEE_TIME)
    assert ei.value.check == "tdx.debug"
    claims = tdx.verify_quote(data, now=TRUSTEE_TIME, allow_debug=True)
    assert claims.debug is True
    assert [f.id for f in platform_findings("tdx", claims)] == ["evidence.collateral-missing", "evidence.debug-allowed"]
    # a production TD of the same corpus: not debuggable
    assert tdx.verify_quote(_fixture("trustee/verifier-tdx/tdx_quote_5.dat").read_bytes(), now=TRUSTEE_TIME).debug is False


def test_quote_and_bundle_verify_refuse_the_debug_td(tmp_path: Path) -> None:
    path = _fixture("trustee/verifier-tdx/tdx_quote_4.dat")
    at = ["--at", TRUSTEE_TIME.isoformat()]
    r = _cli("quote", "verify", str(path), *at, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["check"] == "tdx.debug", r.output
    r = _cli("quote", "verify", str(path), *at)
    assert r.exit_code == 1 and "FAILED tdx.debug" in r.stdout
    r = _cli("quote", "verify", str(path), *at, "--allow-debug")
    assert r.exit_code == 0, r.output
    first = r.stdout.splitlines()[0]
    assert first == ("verified: tdx evidence, but not checked: freshness (no --nonce); "
                     "CRLs and TCB status (no --collateral)")
    assert "warning evidence.debug-allowed: the TD is debuggable" in r.stdout

    data = path.read_bytes()
    doc = make_bundle(nonce=tdx.parse_quote(data).body.report_data, evidence={"kind": "tdx", "data": data})
    with pytest.raises(EvidenceError) as ei:
        verify_bundle(doc, now=TRUSTEE_TIME)
    assert ei.value.check == "tdx.debug"
    assert verify_bundle(doc, now=TRUSTEE_TIME, allow_debug=True).claims.debug
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps(doc))
    r = _cli("verify", str(bundle), *at, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["check"] == "tdx.debug"
    r = _cli("verify", str(bundle), *at, "--allow-debug", "--json", "--nonce", doc["nonce"])
    out = json.loads(r.stdout)  # (the exit code is the replay's: no log explains RTMR0-1)
    assert out["verified"] is True and out["not_checked"] == ["tdx.crl"]
    assert [w["id"] for w in out["warnings"]] == ["evidence.debug-allowed"]


def test_emulated_debug_td(qe: EmulatedTDXSigner) -> None:
    q = quote(qe, report_data=b"n", td_attributes=DEBUG)
    with pytest.raises(EvidenceError) as ei:
        tdx.verify_quote(q, now=NOW, trust_root=qe.certs["root"], collateral=collateral(qe))
    assert ei.value.check == "tdx.debug"
    # checked after authenticity: a forged debug quote is a forgery, not a debug TD
    forged = bytearray(q)
    forged[48 + 100] ^= 1
    with pytest.raises(EvidenceError) as ei:
        tdx.verify_quote(bytes(forged), now=NOW, trust_root=qe.certs["root"])
    assert ei.value.check == "tdx.quote.signature"


# ------------------------------------------------------------------ TDX: TCB status


STATUSES = ["SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded", "OutOfDate",
            "OutOfDateConfigurationNeeded"]


@pytest.mark.parametrize("status", STATUSES)
def test_every_platform_tcb_status(qe: EmulatedTDXSigner, status: str) -> None:
    claims = tdx.verify_quote(quote(qe, report_data=b"n"), now=NOW, trust_root=qe.certs["root"],
                              collateral=collateral(qe, status=status, advisories=["INTEL-SA-00837"]))
    assert claims.tcb_status == status and claims.qe_tcb_status == "UpToDate" and claims.tdx_module_tcb_status is None
    assert claims.advisory_ids == ("INTEL-SA-00837",)
    [f] = platform_findings("tdx", claims)
    assert (f.id, f.severity, f.claim) == ("evidence.tdx.tcb-status", "warning", "hardware")
    assert f.context == {"tcb_status": status, "qe_tcb_status": "UpToDate", "tdx_module_tcb_status": None,
                         "advisory_ids": ["INTEL-SA-00837"]}
    assert status in f.message and "INTEL-SA-00837" in f.message


def test_qe_and_module_tcb_status(qe: EmulatedTDXSigner) -> None:
    q = quote(qe, report_data=b"n", tee_tcb_svn=bytes([0, 1]) + bytes(14))  # TDX module major version 1
    claims = tdx.verify_quote(q, now=NOW, trust_root=qe.certs["root"],
                              collateral=collateral(qe, qe_status="OutOfDate", module_status="SWHardeningNeeded"))
    assert (claims.tcb_status, claims.qe_tcb_status, claims.tdx_module_tcb_status) == (
        "UpToDate", "OutOfDate", "SWHardeningNeeded")
    [f] = platform_findings("tdx", claims)
    assert f.id == "evidence.tdx.tcb-status" and f.context["qe_tcb_status"] == "OutOfDate"
    assert "QE TCB OutOfDate" in f.message and "TDX module TCB SWHardeningNeeded" in f.message
    # Revoked, in any of the three, is no warning: verification fails as before.
    for kw, check in (({"status": "Revoked"}, "tdx.tcb_status"), ({"qe_status": "Revoked"}, "tdx.qe_identity.tcb_status"),
                      ({"module_status": "Revoked"}, "tdx.tcb_status")):
        with pytest.raises(CollateralError) as ei:
            tdx.verify_quote(q, now=NOW, trust_root=qe.certs["root"], collateral=collateral(qe, **kw))
        assert ei.value.check == check


def test_collateral_gaps_are_named(qe: EmulatedTDXSigner) -> None:
    q = quote(qe, report_data=b"n")
    bare = tdx.verify_quote(q, now=NOW, trust_root=qe.certs["root"])
    [f] = platform_findings("tdx", bare)
    assert (f.id, f.severity, f.claim) == ("evidence.collateral-missing", "warning", "hardware")
    assert "CRLs and TCB status were not checked" in f.message
    partial = tdx.verify_quote(q, now=NOW, trust_root=qe.certs["root"],
                               collateral=collateral(qe, qe_identity=False, root_crl=False))
    [f] = platform_findings("tdx", partial)
    assert f.id == "evidence.collateral-missing" and f.context["not_checked"] == ["tdx.crl.root", "tdx.qe_identity"]
    full = tdx.verify_quote(q, now=NOW, trust_root=qe.certs["root"], collateral=collateral(qe))
    assert platform_findings("tdx", full) == []
    with pytest.raises(CollateralError) as ei:  # the emulator's PCK on its CA's CRL
        tdx.verify_quote(q, now=NOW, trust_root=qe.certs["root"], collateral=collateral(qe, revoked_pck=True))
    assert ei.value.check == "tdx.crl"


def test_trustee_quote_is_out_of_date_by_its_tcb_info() -> None:
    """Real data: trustee's tdx_quote_6 against trustee's TCB info for its FMSPC matches an OutOfDate level.

    (That TCB info's signing chain is not in the corpus, so the level matching is checked on its own and
    its outcome put into the quote's verified claims.)"""
    import dataclasses

    data = _fixture("trustee/verifier-tdx/tdx_quote_6.dat").read_bytes()
    info = json.loads(_fixture("trustee/verifier-tdx/tcbInfo.json").read_text())["tcbInfo"]
    ident = json.loads(_fixture("trustee/verifier-tdx/enclaveIdentity.json").read_text())["enclaveIdentity"]
    q = tdx.parse_quote(data)
    ext = tdx._chain(q.pck_chain_pem, tdx._root_info(None), TRUSTEE_TIME, check="tdx.pck_chain").extensions()
    status, advisories, module = tdx._match_tcb_level(info, ext, q.body)
    assert (status, module) == ("OutOfDate", "UpToDate")
    claims = tdx.verify_quote(data, now=TRUSTEE_TIME)
    claims = dataclasses.replace(claims, tcb_status=status, advisory_ids=advisories, tdx_module_tcb_status=module,
                                 qe_tcb_status=tdx._check_qe_identity(ident, q.qe_report),
                                 checks=claims.checks + ("tdx.crl", "tdx.crl.root", "tdx.qe_identity", "tdx.tcb_status"))
    [f] = platform_findings("tdx", claims)
    assert (f.id, f.context["tcb_status"], f.context["qe_tcb_status"]) == ("evidence.tdx.tcb-status", "OutOfDate",
                                                                           "UpToDate")


def test_quote_verify_shows_the_tcb_status_and_what_was_not_checked(qe: EmulatedTDXSigner, tmp_path: Path) -> None:
    qfile, root = tmp_path / "q.dat", tmp_path / "root.pem"
    qfile.write_bytes(quote(qe, report_data=b"\x07" * 64))
    root.write_bytes(qe.certs["root"].public_bytes(serialization.Encoding.PEM))
    base = ["quote", "verify", str(qfile), "--trust-root", str(root), "--nonce", "07" * 64]
    r = _cli(*base)
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == (
        "verified: tdx evidence, but not checked: CRLs and TCB status (no --collateral)"), r.output
    good = tmp_path / "good.json"
    good.write_text(json.dumps(collateral_doc(qe)))
    r = _cli(*base, "--collateral", str(good))
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "verified: tdx evidence", r.output
    old = tmp_path / "old.json"
    old.write_text(json.dumps(collateral_doc(qe, status="OutOfDate", advisories=["INTEL-SA-00837", "INTEL-SA-00615"])))
    r = _cli(*base, "--collateral", str(old))
    assert r.exit_code == 0, r.output
    assert ("warning evidence.tdx.tcb-status: platform TCB OutOfDate (out of date: a newer TCB recovery fixes known "
            "vulnerabilities); advisories INTEL-SA-00837, INTEL-SA-00615") in r.stdout
    r = _cli(*base, "--collateral", str(old), "--json")
    out = json.loads(r.stdout)
    assert out["not_checked"] == [] and out["warnings"][0]["context"]["advisory_ids"] == ["INTEL-SA-00837",
                                                                                          "INTEL-SA-00615"]


# ------------------------------------------------------------------ SEV-SNP: CRL


def _snp_verify(sp: EmulatedSNPSigner, *, crl: Any = None, policy: int = DEFAULT_POLICY, **kw: Any) -> snp.SNPClaims:
    report = sp.report(report_data=bytes(64), measurement=b"\x11" * 48, policy=policy)
    c = sp.certs
    return snp.verify_report(report, vcek=c["vcek"], ask=c["ask"], ark=c["ark"], report_data=bytes(64),
                             trusted_arks=[c["ark"]], now=kw.pop("now", NOW), crl=crl, **kw)


def test_snp_crl_outcomes(sp: EmulatedSNPSigner) -> None:
    assert _snp_verify(sp).crl_checked is False
    assert platform_findings("snp", _snp_verify(sp))[0].context == {"kind": "snp", "not_checked": ["snp.crl"]}
    clean = _snp_verify(sp, crl=snp_crl(sp.dir))
    assert clean.crl_checked is True and platform_findings("snp", clean) == []
    assert _snp_verify(sp, crl=snp_crl(sp.dir, pem=True, revoked=[12345])).crl_checked
    for name in ("vcek", "ask"):
        with pytest.raises(CollateralError) as ei:
            _snp_verify(sp, crl=snp_crl(sp.dir, revoked=[sp.certs[name].serial_number]))
        assert ei.value.check == "snp.crl.revoked" and name.upper() in str(ei.value)
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CollateralError) as ei:  # the ARK's name, another key: a CRL anyone could make
        _snp_verify(sp, crl=snp_crl(sp.dir, signing_key=forged_key))
    assert ei.value.check == "snp.crl.signature"
    with pytest.raises(CollateralError) as ei:
        _snp_verify(sp, crl=snp_crl(sp.dir, issuer=sp.certs["ask"].subject))
    assert ei.value.check == "snp.crl.issuer"
    with pytest.raises(CollateralError) as ei:
        _snp_verify(sp, crl=snp_crl(sp.dir), now=NOW + dt.timedelta(days=30))
    assert ei.value.check == "snp.crl.expired"
    with pytest.raises(CollateralError) as ei:
        _snp_verify(sp, crl=b"not a CRL")
    assert ei.value.check == "snp.crl"


def test_a_crl_not_signed_by_amds_ark_is_refused() -> None:
    """The real Milan chain: a CRL carrying the ARK-Milan name but signed by another key fails."""
    report = _fixture("go-sev-guest/attestation.bin").read_bytes()
    vcek = _fixture("go-sev-guest/vcek.testcer").read_bytes()
    ask, ark = snp.split_chain(_fixture("go-sev-guest/milan.testcer").read_bytes())
    when = dt.datetime(2023, 6, 1, tzinfo=dt.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = (x509.CertificateRevocationListBuilder().issuer_name(ark.subject)
              .last_update(when - dt.timedelta(days=1)).next_update(when + dt.timedelta(days=1))
              .sign(key, hashes.SHA384(), rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)))
    with pytest.raises(CollateralError) as ei:
        snp.verify_report(report, vcek=vcek, ask=ask, ark=ark, report_data=None, trusted_arks=[ark], now=when,
                          crl=forged, allow_debug=True)
    assert ei.value.check == "snp.crl.signature"


def test_snp_crl_through_bundles_and_the_command_line(sp: EmulatedSNPSigner, tmp_path: Path) -> None:
    nonce = bytes(range(32))
    report = sp.report(report_data=nonce.ljust(64, b"\0"), measurement=b"\x11" * 48)
    doc = make_bundle(nonce=nonce, evidence={"kind": "snp", "data": report, "auxblob": sp.cert_table()})
    trust = TrustAnchors(snp_ark=sp.der("ark"), snp_crl=snp_crl(sp.dir))
    assert verify_evidence(doc, now=NOW, trust=trust).claims.crl_checked
    revoked = dataclasses.replace(trust, snp_crl=snp_crl(sp.dir, revoked=[sp.certs["vcek"].serial_number]))
    with pytest.raises(CollateralError) as ei:
        verify_evidence(doc, now=NOW, trust=revoked)
    assert ei.value.check == "snp.crl.revoked"

    rfile, aux, crl, bad = tmp_path / "r.bin", tmp_path / "aux", tmp_path / "amd.crl", tmp_path / "revoked.crl"
    rfile.write_bytes(report)
    aux.write_bytes(sp.cert_table())
    crl.write_bytes(snp_crl(sp.dir))
    bad.write_bytes(snp_crl(sp.dir, revoked=[sp.certs["ask"].serial_number]))
    base = ["quote", "verify", str(rfile), "--ark", str(sp.ark_pem), "--certs", str(aux), "--nonce", nonce.hex()]
    r = _cli(*base)
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == (
        "verified: snp evidence, but not checked: VCEK/ASK revocation (no --crl)"), r.output
    r = _cli(*base, "--crl", str(crl))
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "verified: snp evidence", r.output
    r = _cli(*base, "--crl", str(bad), "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["check"] == "snp.crl.revoked"
    r = _cli(*base, "--crl", str(rfile))
    assert r.exit_code == 2 and "SEV-SNP CRL" in r.output and "does not decode" in r.output
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps(doc))
    r = _cli("verify", str(bundle), "--ark", str(sp.ark_pem), "--crl", str(bad), "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["check"] == "snp.crl.revoked"


# ------------------------------------------------------------------ SEV-SNP and CCA: debug


def test_snp_debug_policy(sp: EmulatedSNPSigner) -> None:
    with pytest.raises(EvidenceError) as ei:
        _snp_verify(sp, policy=DEFAULT_POLICY | snp.POLICY_DEBUG)
    assert ei.value.check == "snp.policy.debug"
    claims = _snp_verify(sp, policy=DEFAULT_POLICY | snp.POLICY_DEBUG, allow_debug=True, crl=snp_crl(sp.dir))
    assert claims.debug is True
    [f] = platform_findings("snp", claims)
    assert (f.id, f.claim, f.context) == ("evidence.debug-allowed", "configuration",
                                          {"kind": "snp", "check": "snp.policy.debug"})
    # go-sev-guest's real report: guest policy 0xB0000 allows debugging
    report = _fixture("go-sev-guest/attestation.bin").read_bytes()
    vcek = _fixture("go-sev-guest/vcek.testcer").read_bytes()
    ask, ark = snp.split_chain(_fixture("go-sev-guest/milan.testcer").read_bytes())
    with pytest.raises(EvidenceError) as ei:
        snp.verify_report(report, vcek=vcek, ask=ask, ark=ark, report_data=None, trusted_arks=[ark])
    assert ei.value.check == "snp.policy.debug"


def _cca_token(signer: EmulatedCCASigner, lifecycle: int) -> bytes:
    """The emulator's token with another platform security lifecycle, its platform token signed again by the CPAK."""
    token = signer.token(challenge=b"\x05" * 64, rim=bytes(32), rems=[bytes(32)] * 4)
    top = cbor2.loads(token)
    collection = dict(top.value)
    claims = dict(cbor2.loads(cbor2.loads(collection[44234]).value[2]))
    claims[2395] = lifecycle
    collection[44234] = _sign1_es384(signer.keys["cpak"], cbor2.dumps(claims))
    return cbor2.dumps(cbor2.CBORTag(top.tag, collection))


@pytest.mark.parametrize("lifecycle, state", [(0x0000, "unknown"), (0x1000, "assembly-and-test"),
                                              (0x2001, "cca-platform-rot-provisioning"),
                                              (0x4000, "non-cca-platform-rot-debug"),
                                              (0x50FF, "recoverable-cca-platform-rot-debug"),
                                              (0x6000, "decommissioned"), (0x7000, "invalid")])
def test_cca_platform_not_secured_is_debug(tmp_path: Path, lifecycle: int, state: str) -> None:
    signer = EmulatedCCASigner(tmp_path / "cca")
    cpak = signer.keys["cpak"].public_key()
    token = _cca_token(signer, lifecycle)
    with pytest.raises(EvidenceError) as ei:
        cca.verify_token(token, cpak=cpak, challenge=b"\x05" * 64)
    assert ei.value.check == "cca.debug" and state in str(ei.value)
    claims = cca.verify_token(token, cpak=cpak, challenge=b"\x05" * 64, allow_debug=True)
    assert claims.debug and [f.id for f in platform_findings("cca", claims)] == ["evidence.debug-allowed"]
    for secured in (0x3000, 0x3003, 0x30FF):
        assert cca.verify_token(_cca_token(signer, secured), cpak=cpak, challenge=b"\x05" * 64).debug is False


def test_real_cca_token_is_secured_and_a_debug_one_is_not(tmp_path: Path) -> None:
    token = _fixture("ccatoken/cca_token_rmm_legacy.cbor").read_bytes()
    jwk = json.loads(_fixture("ccatoken/keys/testRMMCPAK.pub.jwk.json").read_text())
    claims = cca.verify_token(token, cpak=jwk, challenge=None)
    assert claims.platform.lifecycle == 0x3003 and claims.debug is False
    signer = EmulatedCCASigner(tmp_path / "cca")
    token = tmp_path / "token.cbor"
    token.write_bytes(_cca_token(signer, 0x5000))
    cpak = tmp_path / "cpak.pem"
    cpak.write_bytes(signer.cpak_pem.read_bytes())
    r = _cli("quote", "verify", str(token), "--cpak", str(cpak), "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["check"] == "cca.debug", r.output
    r = _cli("quote", "verify", str(token), "--cpak", str(cpak), "--allow-debug", "--json")
    assert r.exit_code == 0 and [w["id"] for w in json.loads(r.stdout)["warnings"]] == ["evidence.debug-allowed"]
