"""appraise() over emulated TDX quotes with tsmr runtime logs: gaps, learned events, allowlist and CoCo appraisers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tsmr.algorithms import HashAlg
from tsmr.appraisal import appraise, learn, load_appraisers
from tsmr.appraisal.facts import runtime_events
from tsmr.evidence.bundle import make_bundle
from tsmr.errors import InputError

from .conftest import ALPINE_DIGEST, COCO, NOW, WHEN, EmulatedTDX, replace_in_log

NONCE = bytes(range(32))
PULL_ALPINE = f'{COCO} PullImage {{"digest":"{ALPINE_DIGEST}","image":"docker.io/library/alpine:3.20"}}'
PULL_NGINX = f'{COCO} PullImage {{"digest":"sha256:{"ee" * 32}","image":"docker.io/library/nginx:1"}}'


def test_learned_runtime_events_affirm_and_a_changed_record_does_not(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy {\"image\":\"alpine\"}", PULL_ALPINE)
    doc = emulated_tdx.bundle(NONCE)
    rv = learn(doc, now=NOW, trust=emulated_tdx.trust, id="known-good")
    assert [(e.domain, e.operation) for e in rv.events] == [("example.com/app", "deploy"), (COCO, "PullImage")]
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=rv)
    assert r.status == "affirming" and r.finding_ids() == [] and r.refvals_id == "known-good"
    assert set(r.events) == {"example.com/app", COCO}
    assert r.events["example.com/app"] == ({"register": "rtmr3", "seq": 2, "domain": "example.com/app",
                                            "operation": "deploy", "content": '{"image":"alpine"}',
                                            "line": 'example.com/app deploy {"image":"alpine"}'},)
    assert [(x["register"], x["status"], x["reference"]) for x in r.registers if x["register"] == "rtmr3"] == [
        ("rtmr3", "matched", "matched")]

    tampered = replace_in_log(doc, b"deploy", b"DEPLOY")
    r = appraise(tampered, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=rv)
    assert r.status == "contraindicated"
    # the mismatched log proves none of its events: both required events are missing
    assert sorted(r.finding_ids()) == ["policy.deny", "refvals.event-missing", "refvals.event-missing", "replay.mismatch"]
    assert r.events == {} and [e["operation"] for e in r.unproven] == ["DEPLOY", "PullImage"]
    mismatch = next(f for f in r.findings if f.id == "replay.mismatch")
    assert mismatch.context["register"] == "rtmr3" and "no prefix" in mismatch.context["explanation"]
    assert r.trustworthiness["executables"] == 96 and r.trustworthiness["hardware"] == 2


def test_unlogged_extend_is_a_gap(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app one")
    emulated_tdx.rs.extend("rtmr3", {HashAlg.SHA384: bytes(48)})  # behind the log's back
    emulated_tdx.append("example.com/app two")
    r = appraise(emulated_tdx.bundle(NONCE), nonce=NONCE, now=NOW, trust=emulated_tdx.trust)
    # what the unlogged extension measured is unknown, so nothing covers RTMR3 either
    assert r.finding_ids() == ["replay.gap", "refvals.uncovered"] and r.status == "warning"
    gap = r.findings[0]
    assert gap.severity == "warning" and gap.context["register"] == "rtmr3" and gap.context["bank"] == "sha384"
    assert r.trustworthiness["executables"] == 32
    assert [x["status"] for x in r.registers if x["register"] == "rtmr3"] == ["matched", "gap"]


def test_emulated_quote_without_its_root_is_untrusted(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app one")
    r = appraise(emulated_tdx.bundle(NONCE), nonce=NONCE, now=NOW)  # the shipped Intel root only
    assert r.finding_ids()[0] == "evidence.tdx.pck_chain" and r.status == "contraindicated"


def test_allowlist_appraiser_denies_unlisted_events(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy v1", "example.com/app debug on", "other.org/x anything")
    doc = emulated_tdx.bundle(NONCE)
    refvals = {"format": "tsmr-refvals", "version": 1, "id": "rules",
               "appraisers": {"allowlist": {"rules": [{"domain": "example.com/*", "operation": "deploy",
                                                       "content": "v[0-9]+"}]}}}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=refvals)
    # the rules judge example.com/* only: the other.org event is judged by nothing, so RTMR3 is not covered
    assert r.finding_ids() == ["appraiser.allowlist.deny", "policy.deny", "refvals.uncovered"]
    f = r.findings[0]
    assert f.context["operation"] == "debug" and f.context["seq"] == 3 and f.context["rule"] is None
    assert "record 4 of its log (other.org/x anything)" in r.findings[2].context["uncovered"][0]["reason"]
    assert r.trustworthiness["executables"] == 96
    # an explicit deny rule, and default allow for the rest of the domain
    refvals["appraisers"]["allowlist"] = {"rules": [{"domain": "other.org/*", "action": "deny"}], "default": "allow",
                                          "domains": ["example.com/*"]}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=refvals)
    assert [f.context["domain"] for f in r.findings if f.id == "appraiser.allowlist.deny"] == ["other.org/x"]
    assert "refvals.uncovered" not in r.finding_ids()  # every event is judged now
    refvals["appraisers"]["allowlist"] = {"rules": [{"domain": "x", "content": "("}]}
    with pytest.raises(InputError, match="allowlist"):
        appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=refvals)


def test_coco_appraiser_judges_images(emulated_tdx: EmulatedTDX, fixtures: Path) -> None:
    # the CoCo events of trustee's AAEL v1 test log, then PullImage events as the CoCo event spec writes them
    legacy = [ln for ln in (fixtures / "trustee/aael/AAEL_data_3").read_text().splitlines() if ln.startswith(COCO)]
    assert legacy == [f"{COCO} CreateContainer docker.io/library/alpine", f"{COCO} CreateContainer docker.io/library/busybox"]
    emulated_tdx.append(PULL_ALPINE, PULL_NGINX, *legacy, f"{COCO} SetPolicy {{}}", f"{COCO} PullImage not-json")
    doc = emulated_tdx.bundle(NONCE)
    config = {"images": [{"image": "docker.io/library/alpine*", "digests": [ALPINE_DIGEST.upper().replace("SHA", "sha")]},
                         "docker.io/library/busybox"]}
    refvals = {"format": "tsmr-refvals", "version": 1, "id": "coco", "appraisers": {"coco": config}}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=refvals)
    ids = r.finding_ids()
    denied = [f for f in r.findings if f.id == "appraiser.coco.image-denied"]
    # nginx: not an allowed image; CreateContainer alpine: the entry pins a digest the event cannot show
    assert sorted((f.context["image"], f.context["digest"]) for f in denied) == [
        ("docker.io/library/alpine", None), ("docker.io/library/nginx:1", "sha256:" + "ee" * 32)]
    assert ids.count("appraiser.coco.unknown-operation") == 1 and ids.count("appraiser.coco.malformed") == 1
    assert next(f for f in r.findings if f.id == "appraiser.coco.unknown-operation").severity == "warning"
    assert r.status == "contraindicated" and len(r.events[COCO]) == 6
    # strict: the unknown operation and the unreadable content become errors; 'operations' accepts SetPolicy
    config.update(strict=True, operations=["SetPolicy"])
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=refvals)
    assert "appraiser.coco.unknown-operation" not in r.finding_ids()
    assert next(f for f in r.findings if f.id == "appraiser.coco.malformed").severity == "error"


def test_coco_init_data(emulated_tdx: EmulatedTDX) -> None:
    good, bad = "sha256:" + "11" * 32, "sha256:" + "22" * 32
    emulated_tdx.append(f'{COCO} InitData {{"digest":"{good}"}}', f"{COCO} InitData {bad}")
    refvals = {"format": "tsmr-refvals", "version": 1, "id": "init", "appraisers": {"coco": {"init_data": [good]}}}
    r = appraise(emulated_tdx.bundle(NONCE), nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=refvals)
    assert r.finding_ids() == ["appraiser.coco.init-data-denied", "policy.deny"]
    assert r.findings[0].context["digest"] == bad and r.findings[0].claim == "configuration"
    assert r.trustworthiness["configuration"] == 96 and r.trustworthiness["executables"] == 2


def test_appraiser_plugins(emulated_tdx: EmulatedTDX) -> None:
    names = [a.name for a in load_appraisers()]
    assert names[:2] == ["allowlist", "coco"] or {"allowlist", "coco"} <= set(names)

    class Broken:
        name, domains = "broken", ["example.com/*"]

        def appraise(self, events, config):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    class Counting:
        name, domains = "counting", ["*"]

        def appraise(self, events, config):  # type: ignore[no-untyped-def]
            from tsmr.appraisal import Finding
            return [Finding("seen", "info", f"{len(events)} events, limit {config.get('limit')}", "executables")]

    emulated_tdx.append("example.com/app one")
    doc = emulated_tdx.bundle(NONCE)
    refvals = {"format": "tsmr-refvals", "version": 1, "id": "p", "appraisers": {"counting": {"limit": 3}, "ghost": {}}}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=refvals,
                 appraisers=[Broken(), Counting()])
    assert sorted(r.finding_ids()) == ["appraiser.broken.failed", "appraiser.counting.seen", "appraiser.missing",
                                       "policy.deny"]
    assert next(f for f in r.findings if f.id == "appraiser.counting.seen").message == "1 events, limit 3"


def test_runtime_events_of_every_log_kind(fixtures: Path) -> None:
    from tsmr.eventlog import parse

    ccel = parse((fixtures / "trustee/eventlog/CCEL_AAEL_alibabacloud").read_bytes())
    aael_v2 = runtime_events(ccel.events)
    assert [(e["register"], e["domain"], e["operation"]) for e in aael_v2] == [
        ("rtmr3", "coco.com", "some-operation"), ("rtmr3", "coco.com", "some-operation")]
    assert json.loads(aael_v2[1]["content"])["nested-key"] == {"sub-key": "value"}
    v1 = runtime_events(parse((fixtures / "trustee/aael/AAEL_data_3").read_bytes(), "tsmr").events)
    assert [e["content"] for e in v1] == ["docker.io/library/alpine", "docker.io/library/busybox"]
    assert {e["domain"] for e in v1} == {COCO} and [e["seq"] for e in v1] == [2, 3]


def test_real_aael_v1_quote_with_allowlist(fixtures: Path) -> None:
    """trustee's TDX quote whose RTMR3 is the AAEL v1 log's: replay matches, the allowlist judges the event."""
    from tsmr.evidence import tdx

    d = fixtures / "trustee/aael"
    quote = (d / "AAEL_quote_tdx").read_bytes()
    nonce = tdx.parse_quote(quote).body.report_data[:48]
    doc = make_bundle(nonce=nonce, evidence={"kind": "tdx", "data": quote},
                      logs=[{"format": "tsmr", "register": "rtmr3", "data": (d / "AAEL_data_1").read_bytes()}])
    # The bundle has no firmware log: RTMR0-2 are explained only by reference values pinning them.
    body = tdx.parse_quote(quote).body
    pinned = {f"rtmr{i}": {"sha384": [getattr(body, f"rtmr{i}").hex()]} for i in range(3)}
    refvals = {"format": "tsmr-refvals", "version": 1, "id": "aael", "registers": pinned,
               "claims": {"mrtd": [body.mrtd.hex()]},
               "appraisers": {"allowlist": {"rules": [{"domain": "image-rs", "operation": "CreateContainer",
                                                       "content": "docker.io/library/busybox(:.*)?"}]}}}
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=refvals)
    assert [(x["register"], x["status"]) for x in r.registers if x["status"] != "signed-only"] == [
        ("rtmr0", "unlogged"), ("rtmr1", "unlogged"), ("rtmr2", "unlogged"), ("rtmr3", "matched")]
    assert r.finding_ids() == ["appraiser.allowlist.deny", "policy.deny", "evidence.collateral-missing"]
    assert r.findings[0].context["content"] == "docker.io/library/alpine"
    assert base64.b64decode(doc["logs"][0]["data"]).startswith(b"INIT sha384/")
    # Without them, the changed registers nothing accounts for are errors of their own.
    del refvals["registers"]
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=refvals)
    assert r.finding_ids().count("replay.unlogged") == 3 and r.status == "contraindicated"


def test_policy_sees_events_by_domain(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append('example.com/app deploy {"image":"alpine","tag":"3.20"}', "example.com/app debug on", PULL_NGINX)
    doc = emulated_tdx.bundle(NONCE)
    policy = """package tsmr
import rego.v1
deny contains {"id": "no-alpine", "msg": sprintf("record %d deploys alpine", [e.seq])} if {
    some e in input.events["example.com/app"]
    e.json.image == "alpine"
}
deny contains sprintf("debugging: %s", [e.content]) if {
    some e in input.events["example.com/app"]
    e.operation == "debug"
}
deny contains "nginx" if {
    some e in input.events["github.com/confidential-containers"]
    startswith(e.json.image, "docker.io/library/nginx")
}
"""
    # reference values that judge every event (the policy is what is under test)
    covering = {"format": "tsmr-refvals", "version": 1, "id": "any",
                "appraisers": {"allowlist": {"rules": [{"domain": "*"}]}}}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, policy=policy, reference_values=covering)
    assert sorted(f.message for f in r.findings) == ["debugging: on", "nginx", "record 2 deploys alpine"]
    assert {f.id for f in r.findings} == {"policy.deny"}
    text = json.dumps(r.to_dict())  # the whole result is plain JSON
    assert json.loads(text)["events"]["example.com/app"][1]["operation"] == "debug"
