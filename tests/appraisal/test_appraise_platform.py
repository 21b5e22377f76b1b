"""appraise() on what the platform is, beyond genuine: TDX TCB statuses, collateral not given, SEV-SNP CRLs, debug guests.

Each TDX TCB status is reached by real verification of the emulator's quote against collateral
issued under its test root (tests/emulated_collateral.py); each outcome is checked as finding id,
severity, AR4SI claim, status and trustworthiness vector.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pytest
from typer.testing import CliRunner

from emulated_collateral import collateral, quote, snp_crl
from tsmr.evidence import TrustAnchors
from tsmr.appraisal import appraise
from tsmr.cli.main import app
from tsmr.evidence import snp, tdx
from tsmr.evidence.bundle import make_bundle
from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner
from tsmr.backends.emulated_evidence.snp import DEFAULT_POLICY, EmulatedSNPSigner

NOW = datetime.now(timezone.utc)
TRUSTEE_TIME = datetime(2025, 11, 1, tzinfo=timezone.utc)
AFFIRMING, WARNING, CONTRA = 2, 32, 96
NONCE = bytes(range(48))


def _tdx(qe: EmulatedTDXSigner, **kw: Any) -> tuple[dict[str, Any], TrustAnchors]:
    q = quote(qe, report_data=NONCE, tee_tcb_svn=kw.pop("tee_tcb_svn", None), td_attributes=kw.pop("td_attributes", bytes(8)))
    trust = TrustAnchors(tdx_root=qe.certs["root"],
                         tdx_collateral=collateral(qe, **kw) if kw.pop("with_collateral", True) else None)
    return make_bundle(nonce=NONCE, evidence={"kind": "tdx", "data": q}), trust


def _others(vector: Mapping[str, int], claim: str) -> set[int]:
    return {v for k, v in vector.items() if k != claim}


@pytest.mark.parametrize("status", ["SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                                    "OutOfDate", "OutOfDateConfigurationNeeded"])
def test_tcb_status_short_of_up_to_date_is_a_hardware_warning(qe: EmulatedTDXSigner, status: str) -> None:
    doc, trust = _tdx(qe, status=status, advisories=["INTEL-SA-00837", "INTEL-SA-00960"])
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    assert r.status == "warning" and not r.ok and r.finding_ids() == ["evidence.tdx.tcb-status"]
    f = r.findings[0]
    assert f.severity == "warning" and f.claim == "hardware"
    assert f.context == {"tcb_status": status, "qe_tcb_status": "UpToDate", "tdx_module_tcb_status": None,
                         "advisory_ids": ["INTEL-SA-00837", "INTEL-SA-00960"]}
    assert r.trustworthiness["hardware"] == WARNING and _others(r.trustworthiness, "hardware") == {AFFIRMING}
    assert r.claims["tcb_status"] == status and r.claims["advisory_ids"] == ("INTEL-SA-00837", "INTEL-SA-00960")




@pytest.mark.parametrize("kw, where", [({"qe_status": "OutOfDate"}, "qe_tcb_status"),
                                       ({"module_status": "OutOfDateConfigurationNeeded"}, "tdx_module_tcb_status")])
def test_qe_and_module_tcb_status(qe: EmulatedTDXSigner, kw: dict[str, str], where: str) -> None:
    doc, trust = _tdx(qe, tee_tcb_svn=bytes([0, 1]) + bytes(14), **kw)
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    assert r.finding_ids() == ["evidence.tdx.tcb-status"] and r.status == "warning"
    assert r.findings[0].context[where] == next(iter(kw.values())) and r.findings[0].context["tcb_status"] == "UpToDate"
    assert r.trustworthiness["hardware"] == WARNING


def test_missing_collateral_is_a_finding_never_silence(qe: EmulatedTDXSigner) -> None:
    doc, trust = _tdx(qe, with_collateral=False)
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    assert r.status == "warning" and r.finding_ids() == ["evidence.collateral-missing"]
    f = r.findings[0]
    assert (f.severity, f.claim) == ("warning", "hardware") and "CRLs and TCB status were not checked" in f.message
    assert f.context == {"kind": "tdx", "not_checked": ["tdx.crl", "tdx.tcb_status", "tdx.qe_identity"]}
    assert r.trustworthiness["hardware"] == WARNING and _others(r.trustworthiness, "hardware") == {AFFIRMING}
    doc, trust = _tdx(qe, qe_identity=False)
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    assert r.finding_ids() == ["evidence.collateral-missing"]
    assert r.findings[0].context["not_checked"] == ["tdx.qe_identity"]
    # the ends of the scale: everything given and UpToDate affirms; Revoked stays contraindicated
    doc, trust = _tdx(qe)
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    assert r.status == "affirming" and r.finding_ids() == [] and set(r.trustworthiness.values()) == {AFFIRMING}
    for kw, check in (({"status": "Revoked"}, "tdx.tcb_status"), ({"qe_status": "Revoked"}, "tdx.qe_identity.tcb_status"),
                      ({"revoked_pck": True}, "tdx.crl")):
        doc, trust = _tdx(qe, **kw)
        r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
        assert r.status == "contraindicated" and r.finding_ids() == [f"evidence.{check}", "policy.deny"]
        assert r.findings[0].claim == "hardware" and r.trustworthiness["hardware"] == CONTRA


# ------------------------------------------------------------------ debug guests


def test_trustee_debug_td(fixtures: Path) -> None:
    data = (fixtures / "trustee/verifier-tdx/tdx_quote_4.dat").read_bytes()
    doc = make_bundle(nonce=tdx.parse_quote(data).body.report_data, evidence={"kind": "tdx", "data": data})
    r = appraise(doc, now=TRUSTEE_TIME)
    assert r.status == "contraindicated" and r.finding_ids()[:2] == ["evidence.tdx.debug", "policy.deny"]
    assert r.findings[0].claim == "configuration" and r.trustworthiness["configuration"] == CONTRA
    assert r.claims == {}  # nothing of a refused TD is vouched for
    r = appraise(doc, now=TRUSTEE_TIME, allow_debug=True)
    assert "evidence.tdx.debug" not in r.finding_ids() and "evidence.debug-allowed" in r.finding_ids()
    f = next(x for x in r.findings if x.id == "evidence.debug-allowed")
    assert (f.severity, f.claim, f.context) == ("warning", "configuration", {"kind": "tdx", "check": "tdx.debug"})
    assert r.claims["debug"] is True and r.trustworthiness["configuration"] >= WARNING


def test_emulated_debug_td_allowed_is_never_affirming(qe: EmulatedTDXSigner) -> None:
    doc, trust = _tdx(qe, td_attributes=b"\x01" + bytes(7))
    assert appraise(doc, nonce=NONCE, now=NOW, trust=trust).finding_ids() == ["evidence.tdx.debug", "policy.deny"]
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, allow_debug=True)
    assert r.status == "warning" and r.finding_ids() == ["evidence.debug-allowed"]
    assert r.trustworthiness["configuration"] == WARNING and _others(r.trustworthiness, "configuration") == {AFFIRMING}


def _snp(sp: EmulatedSNPSigner, policy: int = DEFAULT_POLICY) -> dict[str, Any]:
    report = sp.report(report_data=NONCE.ljust(64, b"\0"), measurement=b"\x11" * 48, policy=policy)
    return make_bundle(nonce=NONCE, evidence={"kind": "snp", "data": report, "auxblob": sp.cert_table()})


# The launch measurement of _snp's reports as a reference value: the platform findings are the only ones left.
SNP_REFVALS = {"format": "tsmr-refvals", "version": 1, "id": "snp-launch", "claims": {"measurement": ["11" * 48]}}


def test_snp_crl_missing_given_revoked(sp: EmulatedSNPSigner) -> None:
    doc = _snp(sp)
    rv = SNP_REFVALS
    r = appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(snp_ark=sp.der("ark")), reference_values=rv)
    assert r.status == "warning" and r.finding_ids() == ["evidence.collateral-missing"]
    assert r.findings[0].context == {"kind": "snp", "not_checked": ["snp.crl"]} and r.trustworthiness["hardware"] == WARNING
    r = appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(snp_ark=sp.der("ark"), snp_crl=snp_crl(sp.dir)),
                 reference_values=rv)
    assert r.status == "affirming" and r.finding_ids() == []
    for name in ("vcek", "ask"):
        crl = snp_crl(sp.dir, revoked=[sp.certs[name].serial_number])
        r = appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(snp_ark=sp.der("ark"), snp_crl=crl))
        assert r.status == "contraindicated" and r.finding_ids() == ["evidence.snp.crl.revoked", "policy.deny"]
        assert r.findings[0].claim == "hardware" and r.trustworthiness["hardware"] == CONTRA
    other = EmulatedSNPSigner(sp.dir.parent / "other-sp")  # an ARK's CRL, but not the trusted ARK's
    r = appraise(doc, nonce=NONCE, now=NOW, trust=TrustAnchors(snp_ark=sp.der("ark"), snp_crl=snp_crl(other.dir)))
    assert r.finding_ids()[0] in ("evidence.snp.crl.issuer", "evidence.snp.crl.signature")
    assert r.status == "contraindicated"


def test_snp_debug_guest(sp: EmulatedSNPSigner) -> None:
    doc = _snp(sp, DEFAULT_POLICY | snp.POLICY_DEBUG)
    trust = TrustAnchors(snp_ark=sp.der("ark"), snp_crl=snp_crl(sp.dir))
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    assert r.finding_ids() == ["evidence.snp.policy.debug", "policy.deny"] and r.status == "contraindicated"
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, allow_debug=True, reference_values=SNP_REFVALS)
    assert r.status == "warning" and r.finding_ids() == ["evidence.debug-allowed"]
    assert r.findings[0].context == {"kind": "snp", "check": "snp.policy.debug"}


def test_appraise_command_line(qe: EmulatedTDXSigner, sp: EmulatedSNPSigner, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    doc, _ = _tdx(qe, td_attributes=b"\x01" + bytes(7))
    bundle, root = tmp_path / "tdx.json", tmp_path / "root.pem"
    bundle.write_text(json.dumps(doc))
    root.write_bytes(qe.certs["root"].public_bytes(serialization.Encoding.PEM))
    run = lambda *a: CliRunner().invoke(app, ["appraise", *a, "--nonce", NONCE.hex(), "--json"])  # noqa: E731
    r = run(str(bundle), "--trust-root", str(root))
    assert r.exit_code == 1 and json.loads(r.stdout)["findings"][0]["id"] == "evidence.tdx.debug", r.output
    r = run(str(bundle), "--trust-root", str(root), "--allow-debug")
    assert r.exit_code == 1 and [f["id"] for f in json.loads(r.stdout)["findings"]] == [
        "evidence.collateral-missing", "evidence.debug-allowed"]
    snp_bundle, crl, refvals = tmp_path / "snp.json", tmp_path / "amd.crl", tmp_path / "refvals.json"
    snp_bundle.write_text(json.dumps(_snp(sp)))
    crl.write_bytes(snp_crl(sp.dir))
    refvals.write_text(json.dumps(SNP_REFVALS))
    r = run(str(snp_bundle), "--ark", str(sp.ark_pem), "--crl", str(crl), "--refvals", str(refvals))
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "affirming", r.output
    r = run(str(snp_bundle), "--ark", str(sp.ark_pem), "--refvals", str(refvals))
    assert r.exit_code == 1 and json.loads(r.stdout)["status"] == "warning"
    # without reference values the launch measurement is uncovered: a warning even with the CRL
    r = run(str(snp_bundle), "--ark", str(sp.ark_pem), "--crl", str(crl))
    assert r.exit_code == 1 and [f["id"] for f in json.loads(r.stdout)["findings"]] == ["refvals.uncovered"]
