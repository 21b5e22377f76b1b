"""appraise() over the go-tdx-guest matched set (real quote, CCEL, nonce): one finding per failure mode."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest

from tsmr.appraisal import DEFAULT_POLICY, ReferenceValues, appraise, learn
from tsmr.errors import InputError, PolicyError

from .conftest import WHEN, tdx_bundle

AFFIRMING, WARNING, CONTRA = 2, 32, 96
# The go-tdx-guest quote has no collateral valid in 2025: CRLs and TCB status are never checked here.
NO_COLLATERAL = "evidence.collateral-missing"
UNCOVERED = "refvals.uncovered"


def covering(fixtures: Path) -> ReferenceValues:
    """Reference values learned from the clean bundle: they cover every register, so only the step under test speaks."""
    return learn(tdx_bundle(fixtures)[0], now=WHEN)


def test_clean_bundle_is_affirming(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    # without reference values nothing says what MRTD and RTMR0-2 may hold: executables and configuration are "no claim"
    bare = appraise(doc, nonce=nonce, now=WHEN)
    assert bare.status == "warning" and bare.finding_ids() == [NO_COLLATERAL, UNCOVERED]
    assert bare.trustworthiness["executables"] == 0 and bare.trustworthiness["configuration"] == 0
    rv = covering(fixtures)
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)
    assert r.status == "warning" and not r.ok and r.finding_ids() == [NO_COLLATERAL]  # all else is clean
    assert r.findings[0].claim == "hardware" and r.findings[0].context["not_checked"][:2] == ["tdx.crl", "tdx.tcb_status"]
    others = {claim: value for claim, value in r.trustworthiness.items() if claim != "hardware"}
    assert r.trustworthiness["hardware"] == WARNING
    assert set(others.values()) == {AFFIRMING} and len(others) == 7
    assert {(x["register"], x["status"]) for x in r.registers} == {
        ("mrtd", "signed-only"), ("rtmr0", "matched"), ("rtmr1", "matched"), ("rtmr2", "matched"), ("rtmr3", "signed-only")}
    assert r.kind == "tdx" and r.nonce == nonce.hex() and r.claims["mrtd"] == r.registers[0]["signed"]
    assert r.policy_id == "tsmr-default" and r.refvals_id == rv.id and bare.refvals_id is None
    d = r.to_dict()
    assert d["status"] == "warning" and [f["id"] for f in d["findings"]] == [NO_COLLATERAL] and d["claims"]["rtmr0"]


def test_bad_quote_signature(fixtures: Path) -> None:
    quote = bytearray((fixtures / "go-tdx-guest/ccel/cos-113-tdx-quote.dat").read_bytes())
    quote[200] ^= 1
    doc, nonce = tdx_bundle(fixtures, quote=bytes(quote))
    r = appraise(doc, nonce=nonce, now=WHEN)
    assert r.status == "contraindicated"
    assert r.finding_ids() == ["evidence.tdx.quote.signature", "policy.deny"]
    f = r.findings[0]
    assert f.claim == "hardware" and f.context["check"] == "tdx.quote.signature"
    # nothing else could be appraised: no claims are made beyond the failure
    assert r.trustworthiness["hardware"] == CONTRA and r.trustworthiness["executables"] == 0
    assert r.registers == () and r.claims == {} and r.kind == "tdx"


def test_evidence_bound_to_another_nonce(fixtures: Path) -> None:
    doc, _ = tdx_bundle(fixtures)
    doc["nonce"] = "01" * 64
    r = appraise(doc, nonce=bytes([1]) * 64, now=WHEN)
    assert "evidence.tdx.report_data" in r.finding_ids() and r.status == "contraindicated"
    assert r.trustworthiness["instance-identity"] == CONTRA


def test_nonce_mismatch(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    r = appraise(doc, nonce=b"\x07" * 32, now=WHEN, reference_values=covering(fixtures))
    assert r.finding_ids() == ["freshness.nonce-mismatch", "policy.deny", NO_COLLATERAL] and r.status == "contraindicated"
    assert r.findings[0].context == {"expected": "07" * 32, "bundle": nonce.hex()}
    assert r.trustworthiness["instance-identity"] == CONTRA and r.trustworthiness["executables"] == AFFIRMING


def test_stale_nonce(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    rv = covering(fixtures)
    r = appraise(doc, nonce=nonce, now=WHEN, nonce_expires_at=WHEN - timedelta(seconds=1), reference_values=rv)
    assert r.finding_ids() == ["freshness.nonce-expired", "policy.deny", NO_COLLATERAL] and r.status == "contraindicated"
    # a naive expiry (as SQLite returns it) is UTC
    fresh = appraise(doc, nonce=nonce, now=WHEN, nonce_expires_at=(WHEN + timedelta(minutes=5)).replace(tzinfo=None),
                     reference_values=rv)
    assert fresh.finding_ids() == [NO_COLLATERAL]


def test_reused_nonce(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    r = appraise(doc, nonce=nonce, now=WHEN, nonce_used=True, reference_values=covering(fixtures))
    assert r.finding_ids() == ["freshness.nonce-reused", "policy.deny", NO_COLLATERAL]
    assert r.trustworthiness["instance-identity"] == CONTRA


def test_no_nonce_is_a_warning(fixtures: Path) -> None:
    doc, _ = tdx_bundle(fixtures)
    r = appraise(doc, now=WHEN, reference_values=covering(fixtures))
    assert r.status == "warning" and r.finding_ids() == [NO_COLLATERAL, "freshness.not-checked"]
    assert r.trustworthiness["instance-identity"] == WARNING and r.trustworthiness["executables"] == AFFIRMING


def test_replay_mismatch(fixtures: Path) -> None:
    from tsmr.eventlog import parse

    ccel = bytearray((fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes())
    last = parse(bytes(ccel)).events[-1]
    ccel[last.offset + 12 + 2] ^= 1  # a byte of the last event's SHA-384 digest
    doc, nonce = tdx_bundle(fixtures, ccel=bytes(ccel))
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=covering(fixtures))
    assert r.finding_ids() == ["replay.mismatch", "policy.deny", NO_COLLATERAL] and r.status == "contraindicated"
    ctx = r.findings[0].context
    assert ctx["register"] == last.register and ctx["bank"] == "sha384"
    assert ctx["signed"] != ctx["replayed"] and ctx["explanation"]
    assert r.trustworthiness["executables"] == CONTRA and r.trustworthiness["hardware"] == WARNING


def test_malformed_bundles(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    r = appraise(dict(doc, format="something-else"), nonce=nonce, now=WHEN)
    assert r.finding_ids()[0] == "bundle.malformed" and r.findings[0].context["field"] == "format"
    assert r.kind == "tdx" and r.trustworthiness["instance-identity"] == CONTRA and r.trustworthiness["hardware"] == 0
    r = appraise(dict(doc, evidence={"kind": "tdx", "data": "%%%"}), nonce=nonce, now=WHEN)
    assert r.findings[0].id == "bundle.malformed" and r.findings[0].context["field"] == "evidence.data"
    r = appraise(dict(doc, evidence={"kind": "sgx"}), nonce=nonce, now=WHEN)
    assert r.findings[0].context["field"] == "evidence.kind" and r.kind is None
    r = appraise(dict(doc, logs={"not": "a list"}), nonce=nonce, now=WHEN)
    assert r.findings[0].id == "bundle.malformed" and r.findings[0].context["field"] == "logs"
    junk = base64.b64encode(b"\x04\x00\x02\x00\x81\x00\x00\x00" + bytes(40)).decode()
    r = appraise(dict(doc, evidence={"kind": "tdx", "data": junk}), nonce=nonce, now=WHEN)
    assert r.findings[0].id == "evidence.malformed" and r.status == "contraindicated"
    r = appraise(dict(doc, logs=[{"format": "ccel", "data": base64.b64encode(b"garbage").decode()}]), nonce=nonce, now=WHEN)
    assert "log.malformed" in r.finding_ids() and r.findings[0].context["log"] == 0
    r = appraise("not a mapping", nonce=nonce, now=WHEN)  # type: ignore[arg-type]
    assert r.finding_ids()[0] == "bundle.malformed" and r.kind is None


def test_learned_reference_values_affirm_and_catch_changes(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN)
    assert set(rv.registers) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"} and "mrtd" in rv.claims
    assert ReferenceValues.from_json(rv.dumps()) == rv
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv.to_json())
    assert r.finding_ids() == [NO_COLLATERAL] and r.refvals_id == rv.id
    assert {x["reference"] for x in r.registers} == {"matched"}

    data = rv.to_json()
    data["registers"]["rtmr2"]["sha384"] = ["ab" * 48]
    data["claims"]["mrconfigid"] = ["cd" * 48]
    data["claims"]["mrtd"] = ["ef" * 48, "12" * 48]
    data["events"] = [{"domain": "example.com/app", "operation": "deploy"}]
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=data, refvals_id="prod@3")
    assert sorted(r.finding_ids()) == [NO_COLLATERAL, "policy.deny", "refvals.claim-mismatch", "refvals.claim-mismatch",
                                       "refvals.event-missing", "refvals.register-mismatch"]
    reg = next(f for f in r.findings if f.id == "refvals.register-mismatch")
    assert reg.context["register"] == "rtmr2" and reg.context["allowed"] == ["ab" * 48]
    claims = {f.context["claim_name"]: f.claim for f in r.findings if f.id == "refvals.claim-mismatch"}
    assert claims == {"mrconfigid": "configuration", "mrtd": "executables"}
    assert r.refvals_id == "prod@3" and r.trustworthiness["configuration"] == CONTRA
    assert next(x for x in r.registers if x["register"] == "rtmr2")["reference"] == "mismatched"


def test_invalid_reference_values_raise(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    base = {"format": "tsmr-refvals", "version": 1, "id": "x"}
    for bad, where in ((dict(base, registers={"rtmr0": {"sha384": ["zz"]}}), "registers.rtmr0.sha384"),
                       (dict(base, registers={"rtmr0": {"md5": []}}), "registers.rtmr0.md5"),
                       (dict(base, events=[{"domain": "a", "operation": "b", "content": "("}]), "events[0].content"),
                       (dict(base, colour="blue"), "colour"),
                       (dict(base, version=2), "version"),
                       (dict(base, quirks=["no-such-quirk"]), "quirks")):
        with pytest.raises(InputError, match=where.replace("[", r"\[").replace("]", r"\]")):
            appraise(doc, nonce=nonce, now=WHEN, reference_values=bad)


def test_policy_compile_error_raises(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    with pytest.raises(PolicyError, match="does not compile"):
        appraise(doc, nonce=nonce, now=WHEN, policy="package tsmr\nallow if {")
    with pytest.raises(PolicyError, match="package tsmr"):
        appraise(doc, nonce=nonce, now=WHEN, policy="package other\nallow := true\n")
    with pytest.raises(PolicyError, match="could not be evaluated"):
        appraise(doc, nonce=nonce, now=WHEN, policy="package tsmr\nallow := no_such_function(1)\n")


def test_policy_denial_over_the_input(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    mrtd = appraise(doc, nonce=nonce, now=WHEN).claims["mrtd"]
    policy = f"""package tsmr
import rego.v1
default allow := true
allow := false if input.claims.mrtd == "{mrtd}"
deny contains {{"id": "kind", "msg": sprintf("no %s today", [input.kind])}} if input.kind == "tdx"
deny contains "rtmr0 is signed" if input.registers.rtmr0.sha384
"""
    rv = covering(fixtures)
    r = appraise(doc, nonce=nonce, now=WHEN, policy=policy, policy_id="p@1", reference_values=rv)
    assert r.finding_ids() == ["policy.deny"] * 3 + [NO_COLLATERAL] and r.status == "contraindicated" and r.policy_id == "p@1"
    msgs = {f.context["rule"]: f.message for f in r.findings if f.id == "policy.deny"}
    assert msgs == {"allow": "the policy does not allow this evidence", "kind": "no tdx today", "deny": "rtmr0 is signed"}
    assert r.trustworthiness["configuration"] == CONTRA
    # an undefined decision is no decision; the default policy denies only on errors
    assert appraise(doc, nonce=nonce, now=WHEN, policy="package tsmr\nx := 1\n",
                    reference_values=rv).finding_ids() == [NO_COLLATERAL]
    assert appraise(doc, nonce=nonce, now=WHEN, policy=DEFAULT_POLICY, reference_values=rv).finding_ids() == [NO_COLLATERAL]
    warn = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv,
                    policy='package tsmr\nimport rego.v1\ndeny contains {"id": "w", "msg": "hm", "severity": "warning"} if true\n')
    assert warn.status == "warning" and warn.findings[0].severity == "warning"


def test_default_policy_sees_findings(fixtures: Path) -> None:
    doc, _ = tdx_bundle(fixtures)
    policy = 'package tsmr\nimport rego.v1\ndeny contains "no freshness" if "freshness.not-checked" in input.findings\n'
    r = appraise(doc, now=WHEN, policy=policy, reference_values=covering(fixtures))
    assert r.finding_ids() == ["policy.deny", NO_COLLATERAL, "freshness.not-checked"]  # worst first
    # registers no reference value covers are a finding the policy sees too
    strict = 'package tsmr\nimport rego.v1\ndeny contains "uncovered" if "refvals.uncovered" in input.warnings\n'
    r = appraise(doc, now=WHEN, policy=strict)
    assert r.finding_ids() == ["policy.deny", NO_COLLATERAL, "freshness.not-checked", UNCOVERED]
