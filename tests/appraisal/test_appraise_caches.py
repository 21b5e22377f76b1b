"""What appraise() keeps between calls (policies, reference values, firmware logs, appraisers) never crosses over.

Each test alternates inputs that must give different verdicts, so that a cache keyed on the wrong thing
(a name, an object's identity, a stale version) or one that leaks an appraisal's state into the next fails it.
"""

from __future__ import annotations

import base64
import copy
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tsmr.appraisal import DEFAULT_POLICY, ReferenceValues, appraise, learn
from tsmr.appraisal.policy import check_policy, input_fields

from .conftest import NOW, WHEN, EmulatedTDX, replace_in_log, tdx_bundle

NO_COLLATERAL = "evidence.collateral-missing"
DENY_MRTD = """package tsmr
import rego.v1
deny contains "this MRTD is not welcome" if input.claims.mrtd == "{mrtd}"
"""
ALLOW_ALL = "package tsmr\nimport rego.v1\ndefault allow := true\n"


def _ids(r: Any) -> list[str]:
    return list(r.finding_ids())


def test_two_policies_in_turn_give_their_own_verdicts(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN)
    mrtd = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv).claims["mrtd"]
    deny = DENY_MRTD.format(mrtd=mrtd)
    other = DENY_MRTD.format(mrtd="00" * 48)  # the same rule over another value: must not be mistaken for it
    for _ in range(2):
        assert _ids(appraise(doc, nonce=nonce, now=WHEN, reference_values=rv, policy=deny)) == ["policy.deny",
                                                                                                 NO_COLLATERAL]
        assert _ids(appraise(doc, nonce=nonce, now=WHEN, reference_values=rv, policy=other)) == [NO_COLLATERAL]
        assert _ids(appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)) == [NO_COLLATERAL]


def test_a_policy_changed_under_the_same_id_is_used(fixtures: Path) -> None:
    """A verifier names versions (``p@1``, ``p@2``); what decides is the text given, never the id."""
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN)
    v1 = ALLOW_ALL
    v2 = ALLOW_ALL + 'deny contains "version 2 denies" if input.kind == "tdx"\n'
    r1 = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv, policy=v1, policy_id="p@1")
    r2 = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv, policy=v2, policy_id="p@2")
    r3 = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv, policy=v1, policy_id="p@1")
    assert (r1.status, r2.status, r3.status) == ("warning", "contraindicated", "warning")
    assert r2.findings[0].message == "version 2 denies" and r2.policy_id == "p@2"
    # the same text under another id: the verdict is the text's, the id the caller's
    r4 = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv, policy=v2, policy_id="p@7")
    assert r4.status == "contraindicated" and r4.policy_id == "p@7"


def test_two_reference_values_in_turn_give_their_own_verdicts(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    good = learn(doc, now=WHEN).to_json()
    bad = copy.deepcopy(good)
    bad["id"] = "bad"
    bad["registers"]["rtmr1"]["sha384"] = ["ab" * 48]
    policy = 'package tsmr\nimport rego.v1\ndeny contains r.id if { r := data.reference_values; r.id == "bad" }\n'
    for _ in range(2):
        ok = appraise(doc, nonce=nonce, now=WHEN, reference_values=good, policy=policy)
        no = appraise(doc, nonce=nonce, now=WHEN, reference_values=bad, policy=policy)
        assert _ids(ok) == [NO_COLLATERAL] and ok.refvals_id == good["id"]
        # the reference values reach the policy as data too: the bad ones, not the good ones cached before
        assert _ids(no) == ["refvals.register-mismatch", "policy.deny", NO_COLLATERAL] and no.refvals_id == "bad"
        assert no.findings[0].context["register"] == "rtmr1" and no.findings[1].message == "bad"


def test_reference_values_changed_in_place_are_read_again(fixtures: Path) -> None:
    """The same dict, changed by its owner after an appraisal, is a new document (nothing keyed on identity)."""
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN).to_json()
    assert _ids(appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)) == [NO_COLLATERAL]
    rv["registers"]["rtmr2"]["sha384"] = ["cd" * 48]
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)
    assert _ids(r) == ["refvals.register-mismatch", "policy.deny", NO_COLLATERAL]
    assert r.findings[0].context["allowed"] == ["cd" * 48]
    # a document that is not plain JSON (a tuple where JSON has an array) is read as given, each time
    rv["registers"]["rtmr2"]["sha384"] = tuple(rv["registers"]["rtmr2"]["sha384"])
    with pytest.raises(Exception) as err:
        ReferenceValues.from_json(rv)
    with pytest.raises(type(err.value)):
        appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)


def test_reference_values_keep_their_own_order(fixtures: Path) -> None:
    """Two documents with the same members in another order list their findings in their own order."""
    doc, nonce = tdx_bundle(fixtures)
    base = learn(doc, now=WHEN).to_json()
    claims = {"mrconfigid": ["11" * 48], "mrowner": ["22" * 48]}
    one = dict(base, claims=claims)
    two = dict(base, claims=dict(reversed(list(claims.items()))))
    for _ in range(2):
        first = [f.context["claim_name"] for f in appraise(doc, nonce=nonce, now=WHEN, reference_values=one).findings
                 if f.id == "refvals.claim-mismatch"]
        second = [f.context["claim_name"] for f in appraise(doc, nonce=nonce, now=WHEN, reference_values=two).findings
                  if f.id == "refvals.claim-mismatch"]
        assert first == ["mrconfigid", "mrowner"] and second == ["mrowner", "mrconfigid"]


def _changed_digest(doc: dict[str, Any], data: bytes) -> dict[str, Any]:
    """The bundle with the CCEL's record of ``data`` carrying another SHA-384 digest."""
    from tsmr.algorithms import HashAlg

    assert HashAlg.SHA384.hash(data) in base64.b64decode(doc["logs"][0]["data"])
    return replace_in_log(doc, HashAlg.SHA384.hash(data), bytes(48), index=0)


def test_firmware_logs_in_turn_give_their_own_replay(fixtures: Path) -> None:
    """The CCEL's events are kept by the log's content: a changed log is parsed and judged afresh."""
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN)
    changed = _changed_digest(doc, b"Calling EFI Application from Boot Option")  # an RTMR1 record
    broken = dict(doc, logs=[dict(doc["logs"][0], data=doc["logs"][0]["data"][:-8] + "!!!!!!!!")])
    for _ in range(2):
        assert _ids(appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)) == [NO_COLLATERAL]
        r = appraise(changed, nonce=nonce, now=WHEN, reference_values=rv)
        assert "replay.mismatch" in _ids(r) and r.status == "contraindicated"
        assert [x["status"] for x in r.registers if x["register"] == "rtmr1"] == ["mismatched"]
        assert "bundle.malformed" in _ids(appraise(broken, nonce=nonce, now=WHEN, reference_values=rv))



def test_firmware_logs_that_share_a_cache_key_give_their_own_replay(fixtures: Path) -> None:
    """The cache's key samples the text: a log edited between the samples has the same key, and must
    still be parsed and judged as the text it is (the text, not the key, decides)."""
    from tsmr.algorithms import HashAlg
    from tsmr.appraisal.core import _firmware_key

    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN)
    text = doc["logs"][0]["data"]
    data = base64.b64decode(text)
    digest = HashAlg.SHA384.hash(b"Calling EFI Application from Boot Option")  # an RTMR1 record's digest
    at = data.index(digest)
    # One byte of that digest changed, at a byte whose base64 characters no sample of the key reads.
    key = _firmware_key(text, "ccel", "rtmr3")
    for i in range(at, at + len(digest)):
        edited = base64.b64encode(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]).decode()
        if edited != text and _firmware_key(edited, "ccel", "rtmr3") == key:
            break
    else:
        pytest.fail("every byte of the digest is sampled")
    changed = dict(doc, logs=[dict(doc["logs"][0], data=edited)])
    for _ in range(2):
        assert _ids(appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)) == [NO_COLLATERAL]
        r = appraise(changed, nonce=nonce, now=WHEN, reference_values=rv)
        assert [x["status"] for x in r.registers if x["register"] == "rtmr1"] == ["mismatched"]


def test_an_appraiser_changing_its_configuration_changes_nothing_kept(emulated_tdx: EmulatedTDX) -> None:
    class Greedy:
        name, domains = "greedy", ["*"]

        def appraise(self, events: list[dict[str, Any]], config: dict[str, Any]) -> list[Any]:
            seen = list(config["seen"])
            config["seen"].append("mine")  # a plugin that writes into what it was given
            return [{"id": "seen", "severity": "info", "message": json.dumps(seen), "claim": "executables"}]

    emulated_tdx.append("example.com/app start")
    doc = emulated_tdx.bundle(b"\x01" * 32)
    rv = {"format": "tsmr-refvals", "version": 1, "id": "g", "appraisers": {"greedy": {"seen": []}}}
    for _ in range(3):
        r = appraise(doc, nonce=b"\x01" * 32, now=NOW, trust=emulated_tdx.trust, reference_values=rv,
                     appraisers=[Greedy()])
        assert next(f for f in r.findings if f.id == "appraiser.greedy.seen").message == "[]"
    assert rv["appraisers"]["greedy"]["seen"] == []


def test_policies_see_every_input_field_they_can_reach(fixtures: Path) -> None:
    """Only the input fields a policy names are built; any other way of reaching the input gets them all."""
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN)
    reach = {
        "by name": 'deny contains "signed" if input.registers.rtmr0.sha384\n',
        "by string": 'deny contains "signed" if input["registers"]["rtmr0"]["sha384"]\n',
        "by variable": 'deny contains "signed" if { some k, v in input; k == "registers"; v.rtmr0.sha384 }\n',
        "as a whole": 'deny contains "signed" if { x := input; x.registers.rtmr0.sha384 }\n',
        "by walk": 'deny contains "signed" if { walk(input, [["registers", "rtmr0", "sha384"], _]) }\n',
    }
    for how, rule in reach.items():
        r = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv, policy="package tsmr\nimport rego.v1\n" + rule)
        assert _ids(r) == ["policy.deny", NO_COLLATERAL], how


def test_input_fields_of_a_policy() -> None:
    assert input_fields(DEFAULT_POLICY) == {"errors"}
    assert input_fields('package tsmr\nx if input.kind == "tdx"\ny if input["claims"].mrtd\n') == {"kind", "claims"}
    assert input_fields("package tsmr\nx := 1\n") == frozenset()
    for whole in ("x if input[k]", "import input\nx if input.kind", "x := walk(input)", "x if input [`kind`]",
                  'x if input["ki\\u006ed"]', "# the input\nx := 1"):
        assert input_fields(f"package tsmr\n{whole}\n") is None, whole


def test_concurrent_appraisals_give_the_serial_results(fixtures: Path, emulated_tdx: EmulatedTDX) -> None:
    """Appraisals in threads (as the service runs them), mixing policies, reference values and logs."""
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN).to_json()
    bad_rv = dict(rv, id="bad", registers=dict(rv["registers"], rtmr1={"sha384": ["ab" * 48]}))
    changed = _changed_digest(doc, b"Calling EFI Application from Boot Option")
    mrtd = appraise(doc, nonce=nonce, now=WHEN).claims["mrtd"]
    policies = [None, DENY_MRTD.format(mrtd=mrtd), ALLOW_ALL,
                'package tsmr\nimport rego.v1\ndeny contains e.line if { some e in input.events[_]; e.line != "" }\n']
    emulated_tdx.append("example.com/app deploy", "example.com/app start")
    emu_nonce = b"\x02" * 32
    emu_doc = emulated_tdx.bundle(emu_nonce)
    emu = {"format": "tsmr-refvals", "version": 1, "id": "apps",
           "appraisers": {"allowlist": {"rules": [{"domain": "example.com/*"}]}}}

    jobs: list[dict[str, Any]] = []
    for policy in policies:
        for refvals in (rv, bad_rv):
            for bundle in (doc, changed):
                jobs.append(dict(bundle=bundle, nonce=nonce, now=WHEN, reference_values=refvals, policy=policy))
        jobs.append(dict(bundle=emu_doc, nonce=emu_nonce, now=NOW, trust=emulated_tdx.trust, reference_values=emu,
                         policy=policy))

    def run(job: dict[str, Any]) -> dict[str, Any]:
        job = dict(job)
        return appraise(job.pop("bundle"), **job).to_dict()

    serial = [run(j) for j in jobs]
    assert len({json.dumps(s["findings"], sort_keys=True) for s in serial}) >= 6  # the mix gives many verdicts
    assert {s["status"] for s in serial} == {"affirming", "warning", "contraindicated"}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(run, jobs * 2)) == serial * 2


def test_check_policy_agrees_with_evaluation() -> None:
    """The verifier refuses at upload what could not be evaluated later, before and after caching it."""
    for _ in range(2):
        check_policy(ALLOW_ALL)
        with pytest.raises(Exception, match="could not be evaluated"):
            check_policy("package tsmr\nallow := no_such_function(1)\n")
