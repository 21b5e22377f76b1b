"""Findings the caller brings (the verifier's collateral cache) join the result before the policy."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tsmr.appraisal import appraise
from tsmr.evidence import TrustAnchorMissing, TrustAnchors
from tsmr.evidence.bundle import make_bundle
from tsmr.findings import Finding, Severity

from .conftest import WHEN, tdx_bundle

UNAVAILABLE = Finding("collateral.unavailable", Severity.ERROR, "no valid tdx.qe collateral: unreachable: down",
                      "hardware", {"key": "tdx.qe", "url": "http://127.0.0.1:9/", "reason": "unreachable"})
REFRESH_FAILED = Finding("collateral.refresh-failed", Severity.INFO, "using the cached tdx.qe", "hardware", {})


def test_an_error_finding_from_the_caller_contraindicates(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    plain = appraise(doc, nonce=nonce, now=WHEN)
    assert plain.status == "warning"
    r = appraise(doc, nonce=nonce, now=WHEN, extra_findings=[UNAVAILABLE])
    assert r.status == "contraindicated"
    assert r.finding_ids()[0] == "collateral.unavailable"  # worst first
    assert set(r.finding_ids()) == set(plain.finding_ids()) | {"collateral.unavailable", "policy.deny"}
    assert r.findings[0].context["key"] == "tdx.qe" and r.trustworthiness["hardware"] > plain.trustworthiness["hardware"]
    # The policy saw it (the plain result had no denial): the default policy denies when there are errors.
    # An info finding is carried as it is and changes no verdict...
    info = appraise(doc, nonce=nonce, now=WHEN, extra_findings=[REFRESH_FAILED])
    assert info.status == plain.status and "collateral.refresh-failed" in info.finding_ids()
    # ...unless a policy says so: the policy sees the caller's findings with the appraisal's own.
    strict = ("package tsmr\n\nimport rego.v1\n\ndefault allow := false\n\n"
              'allow if {\n    count(input.errors) == 0\n    not "collateral.refresh-failed" in input.findings\n}\n')
    assert appraise(doc, nonce=nonce, now=WHEN, policy=strict).status == plain.status
    assert appraise(doc, nonce=nonce, now=WHEN, policy=strict,
                    extra_findings=[REFRESH_FAILED]).status == "contraindicated"


def test_missing_anchors_explained_by_an_error_finding(fixtures: Path) -> None:
    """An SEV-SNP report whose VCEK could not be had: without a finding that is the verifier's
    misconfiguration (raised); with the collateral finding, a contraindicated result."""
    report = (fixtures / "go-sev-guest/attestation.bin").read_bytes()
    ark = x509.load_pem_x509_certificates((fixtures / "go-sev-guest/milan.testcer").read_bytes())[1]
    trust = TrustAnchors(snp_ark=ark.public_bytes(serialization.Encoding.DER))
    nonce = report[0x50:0x90]
    doc = make_bundle(nonce=nonce, evidence={"kind": "snp", "data": report})
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(TrustAnchorMissing):
        appraise(doc, nonce=nonce, now=when, trust=trust, allow_debug=True)
    with pytest.raises(TrustAnchorMissing):  # an info finding explains nothing
        appraise(doc, nonce=nonce, now=when, trust=trust, allow_debug=True, extra_findings=[REFRESH_FAILED])
    r = appraise(doc, nonce=nonce, now=when, trust=trust, allow_debug=True, extra_findings=[UNAVAILABLE])
    assert r.status == "contraindicated" and "collateral.unavailable" in r.finding_ids()
    assert r.claims in (None, {}) or not r.claims.get("measurement")  # nothing was verified
