"""Verdicts that mean something: a register holding a measurement that no reference value covers is never affirmed.

Every branch of :mod:`tsmr.appraisal.coverage` on real evidence: the go-tdx-guest
quote and CCEL, emulated TDX quotes with runtime logs, emulated SEV-SNP reports,
emulated CCA tokens and a real swtpm's quotes; ``require_refvals`` in the library
and on the command line (the service's is in tests/service/test_require_refvals.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from emulated_collateral import snp_crl
from tsmr.algorithms import HashAlg
from tsmr.appraisal import appraise, learn
from tsmr.backends.emulated_evidence.snp import EmulatedSNPSigner
from tsmr.evidence import TrustAnchors
from tsmr.evidence.bundle import make_bundle

from .conftest import COCO, NOW, WHEN, EmulatedTDX, emulated_realm_bundle, swtpm_runtime_bundle, tdx_bundle

AFFIRMING, WARNING, CONTRA, NO_CLAIM = 2, 32, 96, 0
NO_COLLATERAL = "evidence.collateral-missing"
UNCOVERED = "refvals.uncovered"
NONCE = bytes(range(32))

# The TDX quote body (Intel TDX DCAP Quote Generation Library, "TD Quote Body"), after the 48-byte header:
# TEE_TCB_SVN 16, MRSEAM 48, MRSIGNERSEAM 48, SEAMATTRIBUTES 8, TDATTRIBUTES 8, XFAM 8, MRTD 48,
# MRCONFIGID 48, MROWNER 48, MROWNERCONFIG 48, RTMR0-3 48 each.
_MRTD_AT = 48 + 16 + 48 + 48 + 8 + 8 + 8
_RTMR_AT = _MRTD_AT + 4 * 48


def _nonzero_tdx_registers(quote: bytes) -> list[str]:
    """The TDX registers the quote's bytes give a non-zero value, read at the spec's offsets."""
    values = {"mrtd": quote[_MRTD_AT:_MRTD_AT + 48]}
    values.update({f"rtmr{i}": quote[_RTMR_AT + 48 * i:_RTMR_AT + 48 * (i + 1)] for i in range(4)})
    return [name for name, v in values.items() if v != bytes(48)]


def _uncovered(r: Any) -> Any:
    found = [f for f in r.findings if f.id == UNCOVERED]
    assert len(found) == 1, r.finding_ids()
    return found[0]


def _without(doc: dict[str, Any], *, registers: tuple[str, ...] = (), claims: tuple[str, ...] = ()) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    for name in registers:
        del out["registers"][name]
    for name in claims:
        del out["claims"][name]
    return out


# --- TDX: the go-tdx-guest quote and its CCEL ----------------------------------------------------

def test_real_tdx_quote_without_reference_values_is_a_warning_naming_the_registers(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    quote = (fixtures / "go-tdx-guest/ccel/cos-113-tdx-quote.dat").read_bytes()
    expected = _nonzero_tdx_registers(quote)
    assert expected == ["mrtd", "rtmr0", "rtmr1", "rtmr2"]  # RTMR3 is zero in this capture: nothing to cover

    r = appraise(doc, nonce=nonce, now=WHEN)
    assert r.status == "warning" and not r.ok
    assert r.finding_ids() == [NO_COLLATERAL, UNCOVERED]
    f = _uncovered(r)
    assert f.severity == "warning" and f.claim == "executables" and f.context["required"] is False
    assert f.context["registers"] == expected
    assert [(u["register"], u["bank"]) for u in f.context["uncovered"]] == [(n, "sha384") for n in expected]
    assert all(n in f.message for n in expected) and "rtmr3" not in f.message
    # nothing established executables or configuration: "no claim", not "approved"
    assert r.trustworthiness["executables"] == NO_CLAIM and r.trustworthiness["configuration"] == NO_CLAIM
    assert r.trustworthiness["hardware"] == WARNING and r.trustworthiness["instance-identity"] == AFFIRMING

    required = appraise(doc, nonce=nonce, now=WHEN, require_refvals=True)
    assert required.status == "contraindicated"
    assert required.finding_ids() == [UNCOVERED, "policy.deny", NO_COLLATERAL]
    assert _uncovered(required).severity == "error" and _uncovered(required).context["required"] is True
    assert required.trustworthiness["executables"] == CONTRA
    # the default policy denies on errors: that denial is a configuration finding
    assert required.trustworthiness["configuration"] == CONTRA
    allow = "package tsmr\nimport rego.v1\ndefault allow := true\n"
    lenient = appraise(doc, nonce=nonce, now=WHEN, require_refvals=True, policy=allow)
    assert lenient.finding_ids() == [UNCOVERED, NO_COLLATERAL] and lenient.status == "contraindicated"
    assert lenient.trustworthiness["executables"] == CONTRA and lenient.trustworthiness["configuration"] == NO_CLAIM


def test_real_tdx_quote_with_covering_reference_values_is_judged_by_them(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN).to_json()
    for require in (False, True):
        r = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv, require_refvals=require)
        assert r.finding_ids() == [NO_COLLATERAL] and r.status == "warning"  # the collateral, nothing else
        assert r.trustworthiness["executables"] == AFFIRMING and r.trustworthiness["configuration"] == AFFIRMING

    # rtmr2 without a value: its log holds firmware events (EV_IPL), which only a register value judges
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=_without(rv, registers=("rtmr2",)))
    f = _uncovered(r)
    assert f.context["registers"] == ["rtmr2"] and r.trustworthiness["executables"] == NO_CLAIM
    assert re.search(r"record \d+ \(EV_IPL\), which only a reference value for the register can judge",
                     f.context["uncovered"][0]["reason"])
    # a claim of the register's name pins the same value (TDX lifts the RTMRs to claims)
    rtmr2 = r.claims["rtmr2"]
    lifted = _without(rv, registers=("rtmr2",))
    lifted["claims"]["rtmr2"] = [rtmr2.upper()]
    assert appraise(doc, nonce=nonce, now=WHEN, reference_values=lifted).finding_ids() == [NO_COLLATERAL]

    # MRTD: the launch claim covers it without a register entry; with neither it is uncovered, and no log exists
    assert appraise(doc, nonce=nonce, now=WHEN,
                    reference_values=_without(rv, registers=("mrtd",))).finding_ids() == [NO_COLLATERAL]
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=_without(rv, registers=("mrtd",), claims=("mrtd",)))
    f = _uncovered(r)
    assert f.context["uncovered"] == [{"register": "mrtd", "bank": "sha384",
                                       "reason": "no reference value names it, and no log shows what it holds"}]

    # a covered register that does not match is an error of its own, not a coverage question
    wrong = json.loads(json.dumps(rv))
    wrong["registers"]["rtmr0"]["sha384"] = ["ab" * 48]
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=wrong)
    assert UNCOVERED not in r.finding_ids() and "refvals.register-mismatch" in r.finding_ids()


def test_a_broken_log_covers_nothing(fixtures: Path) -> None:
    from tsmr.eventlog import parse

    ccel = bytearray((fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes())
    last = parse(bytes(ccel)).events[-1]
    ccel[last.offset + 12 + 2] ^= 1  # the last event (rtmr1) no longer replays
    doc, nonce = tdx_bundle(fixtures, ccel=bytes(ccel))
    rv = _without(learn(tdx_bundle(fixtures)[0], now=WHEN).to_json(), registers=("rtmr1",))
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)
    assert "replay.mismatch" in r.finding_ids()
    assert _uncovered(r).context["uncovered"][0]["reason"].endswith("its log does not account for it "
                                                                   "(see the replay findings)")


# --- TDX: emulated quotes with a runtime log on RTMR3 --------------------------------------------

def _events_rv(*refs: dict[str, Any], **members: Any) -> dict[str, Any]:
    return {"format": "tsmr-refvals", "version": 1, "id": "events", "events": list(refs), **members}


def test_runtime_log_covered_by_reference_events(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append('example.com/app deploy {"image":"alpine"}', "example.com/app start")
    doc = emulated_tdx.bundle(NONCE)
    trust = emulated_tdx.trust

    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    # the emulator's MRTD and RTMR0-2 stay zero: only RTMR3 holds measurements
    assert r.finding_ids() == [UNCOVERED] and _uncovered(r).context["registers"] == ["rtmr3"]
    assert r.status == "warning" and r.trustworthiness["executables"] == NO_CLAIM

    every = _events_rv({"domain": "example.com/app", "operation": "deploy", "content": re.escape('{"image":"alpine"}')},
                       {"domain": "example.com/app", "operation": "start"})
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=every, require_refvals=True)
    assert r.status == "affirming" and r.finding_ids() == []
    assert r.trustworthiness["executables"] == AFFIRMING and r.trustworthiness["configuration"] == AFFIRMING

    # one event no reference event matches: RTMR3 is uncovered, and the reason names the record
    emulated_tdx.append("example.com/app debug-shell")
    doc = emulated_tdx.bundle(NONCE)
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=every)
    f = _uncovered(r)
    assert r.status == "warning" and f.context["uncovered"] == [{
        "register": "rtmr3", "bank": "sha384",
        "reason": "record 4 of its log (example.com/app debug-shell) is matched by no reference event and judged "
                  "by no configured appraiser"}]
    # a pattern matching the whole content covers it; one matching part of it does not
    partial = _events_rv(*every["events"], {"domain": "example.com/app", "operation": "debug", "content": "shell"})
    assert _uncovered(appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=partial))
    whole = _events_rv(*every["events"], {"domain": "example.com/app", "operation": "debug-shell"})
    assert appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=whole).status == "affirming"
    # or a value for the register itself
    pinned = _events_rv(registers={"rtmr3": {"sha384": [r.claims["rtmr3"]]}})
    assert appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=pinned).status == "affirming"


def test_runtime_log_covered_by_configured_appraisers(emulated_tdx: EmulatedTDX) -> None:
    alpine = f'{COCO} PullImage {{"digest":"sha256:{"0c" * 32}","image":"docker.io/library/alpine:3.20"}}'
    emulated_tdx.append("example.com/app start", alpine)
    doc = emulated_tdx.bundle(NONCE)
    trust = emulated_tdx.trust

    def reasons(appraisers: dict[str, Any]) -> list[str]:
        r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=_events_rv(appraisers=appraisers))
        return [u["reason"] for f in r.findings if f.id == UNCOVERED for u in f.context["uncovered"]]

    allow_app = {"rules": [{"domain": "example.com/*"}]}
    images = {"images": ["docker.io/library/alpine:*"]}
    assert reasons({"allowlist": allow_app, "coco": images}) == []
    # the allowlist judges only the domains its rules and `domains` name; the image pull is left unjudged
    assert reasons({"allowlist": allow_app}) == [
        f"record 3 of its log ({COCO} PullImage) is matched by no reference event and judged by no configured appraiser"]
    assert reasons({"allowlist": {"domains": [COCO, "example.com/app"], "default": "allow"}}) == []
    # coco judges image pulls only when images are configured
    assert reasons({"allowlist": allow_app, "coco": {"init_data": ["sha256:" + "ab" * 32]}}) != []
    # an appraiser the reference values do not configure judges nothing
    assert reasons({}) != []

    # a denied event is covered (judged), and is an error of the appraiser
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=_events_rv(
        appraisers={"allowlist": allow_app, "coco": {"images": ["docker.io/library/nginx:*"]}}))
    assert r.finding_ids() == ["appraiser.coco.image-denied", "policy.deny"]


def test_a_gap_leaves_the_register_uncovered(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app one")
    emulated_tdx.rs.extend("rtmr3", {HashAlg.SHA384: bytes(48)})  # behind the log's back: unknown content
    emulated_tdx.append("example.com/app two")
    # "one" is before the gap and proves nothing, so only "two" can be required
    rv = _events_rv({"domain": "example.com/app", "operation": "two"})
    r = appraise(emulated_tdx.bundle(NONCE), nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=rv)
    assert r.finding_ids() == ["replay.gap", UNCOVERED] and r.status == "warning"
    assert "does not account for it" in _uncovered(r).context["uncovered"][0]["reason"]
    assert r.trustworthiness["executables"] == WARNING  # the gap's warning; nothing affirms it


# --- SEV-SNP: the launch measurement -------------------------------------------------------------

def test_snp_measurement_is_covered_by_a_claim_or_a_register(sp: EmulatedSNPSigner) -> None:
    measurement = bytes(range(48))
    report = sp.report(report_data=NONCE.ljust(64, b"\0"), measurement=measurement)
    doc = make_bundle(nonce=NONCE, evidence={"kind": "snp", "data": report, "auxblob": sp.cert_table()})
    trust = TrustAnchors(snp_ark=sp.der("ark"), snp_crl=snp_crl(sp.dir))

    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    assert r.finding_ids() == [UNCOVERED] and r.status == "warning"
    assert _uncovered(r).context["uncovered"] == [{"register": "measurement", "bank": "sha384",
                                                   "reason": "no reference values were given"}]
    assert r.trustworthiness["executables"] == NO_CLAIM and r.trustworthiness["hardware"] == AFFIRMING
    assert appraise(doc, nonce=NONCE, now=NOW, trust=trust, require_refvals=True).status == "contraindicated"

    base = {"format": "tsmr-refvals", "version": 1, "id": "snp"}
    for rv in (dict(base, claims={"measurement": [measurement.hex()]}),
               dict(base, registers={"measurement": {"sha384": [measurement.hex()]}}),
               learn(doc, now=NOW, trust=trust).to_json()):
        r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=rv, require_refvals=True)
        assert r.status == "affirming" and r.finding_ids() == [], rv
    # a claim of another name covers nothing
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=dict(base, claims={"host_data": ["00" * 32]}))
    assert _uncovered(r).context["registers"] == ["measurement"]


# --- Arm CCA: the RIM and a runtime log on REM3 --------------------------------------------------

def test_cca_rim_and_rem3(state_dir: Path, tmp_path: Path) -> None:
    doc, trust, _ = emulated_realm_bundle(state_dir, tmp_path, NONCE, ["example.com/model load", "example.com/model serve"],
                                          rim=bytes(range(32)))

    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    held = [x["register"] for x in r.registers if x["signed"] and set(x["signed"]) != {"0"}]
    assert sorted(held) == ["rem3", "rim"]  # REM0-2 stay zero
    assert r.finding_ids() == [UNCOVERED] and _uncovered(r).context["registers"] == held  # in register order
    bank = next(x["bank"] for x in r.registers if x["register"] == "rem3")

    events = [{"domain": "example.com/model", "operation": "load"}, {"domain": "example.com/model", "operation": "serve"}]
    rv = {"format": "tsmr-refvals", "version": 1, "id": "cca", "events": events}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=rv)
    assert _uncovered(r).context["uncovered"] == [{"register": "rim", "bank": bank,
                                                   "reason": "no reference value names it, and no log shows what "
                                                             "it holds"}]
    rv["claims"] = {"rim": [r.claims["rim"]]}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=rv, require_refvals=True)
    assert r.status == "affirming" and r.finding_ids() == []


# --- TPM: a real swtpm's quotes ------------------------------------------------------------------

@pytest.mark.swtpm
def test_tpm_quoted_pcrs(tmp_path: Path) -> None:
    doc, trust, _ = swtpm_runtime_bundle(tmp_path, NONCE[:16], ["example.com/app start", "example.com/app ready"],
                                         [0, 9, 16, 17], unlogged_pcr9=True)
    banks = sorted({x["bank"] for x in appraise(doc, nonce=NONCE[:16], now=NOW, trust=trust).registers})
    assert len(banks) >= 2

    r = appraise(doc, nonce=NONCE[:16], now=NOW, trust=trust)
    # PCR 0 (no firmware ran) and PCR 17 (all 0xFF at reset) hold their initial values; 9 and 16 measured
    f = _uncovered(r)
    assert f.context["registers"] == ["pcr9", "pcr16"]
    assert [(u["register"], u["bank"]) for u in f.context["uncovered"]] == (
        [("pcr9", b) for b in banks] + [("pcr16", b) for b in banks])
    assert "replay.unlogged" in r.finding_ids()  # pcr9 changed without a log: an error of its own

    pcr9 = {b: next(x["signed"] for x in r.registers if (x["register"], x["bank"]) == ("pcr9", b)) for b in banks}
    refs = [{"domain": "example.com/app", "operation": "start"}, {"domain": "example.com/app", "operation": "ready"}]
    rv = {"format": "tsmr-refvals", "version": 1, "id": "tpm", "events": refs,
          "registers": {"pcr9": {b: [v] for b, v in pcr9.items()}}}
    r = appraise(doc, nonce=NONCE[:16], now=NOW, trust=trust, reference_values=rv, require_refvals=True)
    assert r.finding_ids() == [] and r.status == "affirming"
    # coverage is per bank: a value for one bank of PCR 9 leaves the others uncovered
    one_bank = dict(rv, registers={"pcr9": {banks[0]: [pcr9[banks[0]]]}})
    r = appraise(doc, nonce=NONCE[:16], now=NOW, trust=trust, reference_values=one_bank)
    assert [(u["register"], u["bank"]) for u in _uncovered(r).context["uncovered"]] == [("pcr9", b) for b in banks[1:]]


# --- the command line ----------------------------------------------------------------------------

def test_appraise_command_line_require_refvals(fixtures: Path, tmp_path: Path) -> None:
    from .test_appraise_cli import _app

    doc, nonce = tdx_bundle(fixtures)
    bundle, refvals = tmp_path / "bundle.json", tmp_path / "refvals.json"
    bundle.write_text(json.dumps(doc))
    app, runner = _app(), CliRunner()
    common = [str(bundle), "--nonce", nonce.hex(), "--at", "2025-06-01T00:00:00"]

    r = runner.invoke(app, ["appraise", *common, "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 1 and out["status"] == "warning"
    assert [f["id"] for f in out["findings"]] == [NO_COLLATERAL, UNCOVERED]
    assert out["findings"][1]["context"]["registers"] == ["mrtd", "rtmr0", "rtmr1", "rtmr2"]
    assert out["trustworthiness"]["executables"] == 0

    r = runner.invoke(app, ["appraise", *common, "--require-refvals", "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 1 and out["status"] == "contraindicated" and out["findings"][0]["severity"] == "error"
    r = runner.invoke(app, ["appraise", *common, "--require-refvals"])
    assert r.exit_code == 1 and "CONTRAINDICATED" in r.stdout and UNCOVERED in r.stdout
    assert "not covered by reference values:" in r.stdout
    assert "mrtd sha384: no reference values were given" in r.stdout

    assert runner.invoke(app, ["refvals", "learn", str(bundle), "-o", str(refvals), "--at", "2025-06-01T00:00:00"]
                         ).exit_code == 0
    r = runner.invoke(app, ["appraise", *common, "--require-refvals", "--refvals", str(refvals), "--json"])
    out = json.loads(r.stdout)
    assert out["status"] == "warning" and [f["id"] for f in out["findings"]] == [NO_COLLATERAL]
    assert out["trustworthiness"]["executables"] == AFFIRMING
