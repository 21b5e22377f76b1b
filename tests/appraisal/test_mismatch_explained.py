"""A register that differs from predicted reference values is explained by the component whose event differs.

The predictions here are made from real logs: the go-tdx-guest CCEL's RTMR1 events
(shim, grub and the firmware's actions) become the "predicted" events, then one is
changed, dropped or added, and the explanation is checked against the capture's own
bytes.  Runtime logs on an emulated TD, a real swtpm and an emulated CCA realm, and
SEV-SNP / TDX launch values (which have no log), cover the other branches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import pytest
from typer.testing import CliRunner

from emulated_collateral import snp_crl
from tsmr.algorithms import HashAlg
from tsmr.appraisal import ReferenceValues, appraise, ear
from tsmr.backends.emulated_evidence.snp import EmulatedSNPSigner
from tsmr.errors import InputError
from tsmr.events import Event
from tsmr.evidence import TrustAnchors
from tsmr.evidence.bundle import make_bundle
from tsmr.predict.model import PredictedEvent, Prediction, extend_all

from .conftest import NOW, WHEN, EmulatedTDX, emulated_realm_bundle, swtpm_runtime_bundle, tdx_bundle

CCEL = "go-tdx-guest/ccel/ccel_data.dat"
NONCE = bytes(range(32))
MISMATCH = "refvals.register-mismatch"
CLAIM_MISMATCH = "refvals.claim-mismatch"
# What the go-tdx-guest capture's RTMR1 events are (a COS boot: shim, then grub, from the firmware's boot manager).
COMPONENTS = {14: "firmware", 15: "separator", 16: "gpt", 17: "shim", 23: "grub", 41: "firmware", 42: "firmware"}


def _rtmr1_events(fixtures: Path) -> list[Event]:
    from tsmr.eventlog import parse

    return [e for e in parse((fixtures / CCEL).read_bytes()).events if e.measured and e.register == "rtmr1"]


def _predicted(events: Sequence[Event]) -> list[PredictedEvent]:
    """The log's events as a prediction would state them, each naming its component."""
    return [PredictedEvent(register="rtmr1", event_type=e.type, digests=dict(e.digests), component=COMPONENTS[e.seq],
                           description=f"{COMPONENTS[e.seq]} as the capture measured it") for e in events]


def _refvals(preds: Sequence[PredictedEvent], *, platform: str = "tdx", claims: dict[str, str] | None = None,
             inputs: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    regs = {r: v for r, v in extend_all(preds, [HashAlg.SHA384]).items()} if preds else {}
    doc = Prediction(platform=platform, registers=regs, claims=claims or {}, events=list(preds),
                     inputs=inputs or {"firmware": {"file": "OVMF.fd"}}).to_refvals("predicted")
    return json.loads(json.dumps(doc))  # as a file or the database hands it over


def _finding(r: Any, fid: str) -> Any:
    found = [f for f in r.findings if f.id == fid]
    assert len(found) == 1, r.finding_ids()
    return found[0]


def _changed(pred: PredictedEvent, what: bytes) -> PredictedEvent:
    return PredictedEvent(pred.register, pred.event_type, {HashAlg.SHA384: hashlib.sha384(what).digest()},
                          pred.component, pred.description)


# --- the real CCEL's RTMR1 ------------------------------------------------------------------------

def test_the_prediction_made_from_the_log_matches_and_explains_nothing(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    events = _rtmr1_events(fixtures)
    assert [e.seq for e in events] == sorted(COMPONENTS)
    rv = _refvals(_predicted(events))
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)
    assert MISMATCH not in r.finding_ids()
    assert next(x for x in r.registers if x["register"] == "rtmr1")["reference"] == "matched"
    assert rv["predicted"]["events"][4]["component"] == "grub"
    assert ReferenceValues.from_json(rv).predicted is not None


def test_a_changed_component_is_named_with_both_digests(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    raw = (fixtures / CCEL).read_bytes()
    events = _rtmr1_events(fixtures)
    preds = _predicted(events)
    preds[4] = _changed(preds[4], b"another grub")
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=_refvals(preds))
    f = _finding(r, MISMATCH)
    ctx = f.context
    expected = hashlib.sha384(b"another grub").hexdigest()
    actual = ctx["actual"]
    # the log's digest is the capture's own bytes, at the event's record
    grub = events[4]
    assert raw.find(bytes.fromhex(actual), grub.offset) > grub.offset and raw.count(bytes.fromhex(actual)) == 1
    assert (ctx["event_index"], ctx["seq"], ctx["component"], ctx["event_type"]) == (
        4, 23, "grub", "EV_EFI_BOOT_SERVICES_APPLICATION")
    assert ctx["expected"] == expected and actual != expected and ctx["predicted_bank"] == "sha384"
    text = (f"rtmr1 event 23 EV_EFI_BOOT_SERVICES_APPLICATION (grub): the predicted digest is {expected}, the log "
            f"says {actual} (grub as the capture measured it)")
    assert ctx["explanation"] == text and f.message == f"rtmr1 sha384: its signed value is not a reference value; {text}"

    # the first difference is named, wherever it is
    preds = _predicted(events)
    preds[0] = _changed(preds[0], b"another action")
    ctx = _finding(appraise(doc, nonce=nonce, now=WHEN, reference_values=_refvals(preds[:-1])), MISMATCH).context
    assert (ctx["event_index"], ctx["seq"], ctx["component"], ctx["event_type"]) == (0, 14, "firmware", "EV_EFI_ACTION")


def test_more_or_fewer_events_than_predicted(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    events = _rtmr1_events(fixtures)
    preds = _predicted(events)

    ctx = _finding(appraise(doc, nonce=nonce, now=WHEN, reference_values=_refvals(preds[:-2])), MISMATCH).context
    assert (ctx["extra_events"], ctx["event_index"], ctx["seq"], ctx["event_type"]) == (2, 5, 41, "EV_EFI_ACTION")
    assert ctx["explanation"] == (f"rtmr1: the log has 2 events more than predicted, first: event 41 EV_EFI_ACTION: "
                                  f"{events[5].summary}")
    assert ctx["actual"] == events[5].digest(HashAlg.SHA384).hex()  # type: ignore[union-attr]

    initrd = PredictedEvent("rtmr1", "EV_EVENT_TAG", {HashAlg.SHA384: hashlib.sha384(b"initrd").digest()}, "initrd",
                            "the Linux EFI stub's initrd event")
    ctx = _finding(appraise(doc, nonce=nonce, now=WHEN, reference_values=_refvals([*preds, initrd])), MISMATCH).context
    assert (ctx["missing_events"], ctx["event_index"], ctx["component"]) == (1, 7, "initrd")
    assert ctx["explanation"] == ("rtmr1: the log has 1 event fewer than predicted, first missing: EV_EVENT_TAG "
                                  "(initrd) (the Linux EFI stub's initrd event)")
    assert ctx["expected"] == hashlib.sha384(b"initrd").hexdigest() and ctx["actual"] is None


def test_events_that_agree_with_a_value_that_does_not(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    rv = _refvals(_predicted(_rtmr1_events(fixtures)))
    rv["registers"]["rtmr1"]["sha384"] = ["ab" * 48]  # not what the predicted events give
    ctx = _finding(appraise(doc, nonce=nonce, now=WHEN, reference_values=rv), MISMATCH).context
    assert ctx["explanation"] == ("rtmr1: the log's 7 events are the predicted ones; the log replays to the signed "
                                  "value, so the reference value does not follow from the predicted events")


def test_launch_values_without_a_log_name_the_inputs(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    events = _rtmr1_events(fixtures)
    preds = _predicted(events)
    preds[3] = _changed(preds[3], b"another shim")
    inputs = {"firmware": {"file": "OVMF.fd", "sha256": "ab" * 32}, "kernel": {"file": "vmlinuz"}}
    rv = _refvals(preds, claims={"mrtd": "cd" * 48, "rtmr1": extend_all(preds, [HashAlg.SHA384])["rtmr1"][
        HashAlg.SHA384].hex()}, inputs=inputs)
    r = appraise(doc, nonce=nonce, now=WHEN, reference_values=rv)
    claims = {f.context["claim_name"]: f for f in r.findings if f.id == CLAIM_MISMATCH}
    mrtd = claims["mrtd"].context
    assert mrtd["inputs"] == inputs and mrtd["components"] == []
    assert mrtd["explanation"] == ("mrtd: no log shows what was measured into it; the tdx prediction used these "
                                   f"inputs: firmware (file OVMF.fd, sha256 {'ab' * 32}); kernel (file vmlinuz)")
    assert claims["mrtd"].message.endswith(mrtd["explanation"]) and claims["mrtd"].claim == "executables"
    # a lifted RTMR claim has a log: the event is named as for the register
    assert (claims["rtmr1"].context["seq"], claims["rtmr1"].context["component"]) == (17, "shim")
    assert _finding(r, MISMATCH).context["seq"] == 17


def test_without_predicted_events_nothing_is_added(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    rv = _refvals(_predicted(_rtmr1_events(fixtures)))
    del rv["predicted"]
    rv["registers"]["rtmr1"]["sha384"] = ["ab" * 48]
    f = _finding(appraise(doc, nonce=nonce, now=WHEN, reference_values=rv), MISMATCH)
    assert f.message == "rtmr1 sha384: its signed value is not a reference value" and "explanation" not in f.context


def test_shown_on_the_command_line_and_in_the_ear(fixtures: Path, tmp_path: Path) -> None:
    from .test_appraise_cli import _app

    doc, nonce = tdx_bundle(fixtures)
    preds = _predicted(_rtmr1_events(fixtures))
    preds[4] = _changed(preds[4], b"another grub")
    bundle, refvals = tmp_path / "bundle.json", tmp_path / "refvals.json"
    bundle.write_text(json.dumps(doc))
    refvals.write_text(json.dumps(_refvals(preds)))
    app, runner = _app(), CliRunner()
    args = ["appraise", str(bundle), "--nonce", nonce.hex(), "--at", "2025-06-01T00:00:00", "--refvals", str(refvals)]

    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 1
    f = next(f for f in json.loads(r.stdout)["findings"] if f["id"] == MISMATCH)
    assert (f["context"]["seq"], f["context"]["component"]) == (23, "grub")
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "explained by component:" in r.stdout
    flat = " ".join(r.stdout.split())
    assert f"{MISMATCH}: rtmr1 event 23 EV_EFI_BOOT_SERVICES_APPLICATION (grub): the predicted digest is" in flat

    result = appraise(doc, nonce=nonce, now=WHEN, reference_values=json.loads(refvals.read_text()))
    key = ear.generate_key()
    claims = ear.verify(ear.sign(result, key, now=WHEN), ear.jwks([key]))
    sub = claims["submods"]["tdx"]
    [explained] = sub["tsmr.explanations"]
    assert explained["finding"] == MISMATCH and explained["register"] == "rtmr1"
    assert (explained["seq"], explained["component"], explained["event_index"]) == (23, "grub", 4)
    assert explained["expected"] == hashlib.sha384(b"another grub").hexdigest() and explained["actual"]
    assert sub["tsmr.uncovered"] == ["mrtd", "rtmr0", "rtmr2"]  # the prediction covers RTMR1 only


# --- runtime logs: an emulated TD, a real swtpm, an emulated realm --------------------------------

def _line_events(register: str, lines: Sequence[str], banks: Sequence[HashAlg], component: str) -> list[PredictedEvent]:
    return [PredictedEvent(register, "tsmr", {a: a.hash(line.encode()) for a in banks}, component, f"the line {line!r}")
            for line in lines]


def test_runtime_log_on_an_emulated_td(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy image=sha256:1111", "example.com/app start")
    doc = emulated_tdx.bundle(NONCE)
    log = emulated_tdx.log.read().decode().splitlines()
    assert log[0].startswith("SYNC ") and len(log) == 3
    preds = _line_events("rtmr3", [log[0], "example.com/app deploy image=sha256:2222", log[2]], [HashAlg.SHA384], "app")
    rv = Prediction(platform="tdx", registers=extend_all(preds, [HashAlg.SHA384]), events=preds).to_refvals("p")
    r = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=rv)
    ctx = _finding(r, MISMATCH).context
    assert (ctx["seq"], ctx["event_index"], ctx["event_type"], ctx["component"]) == (2, 1, "event", "app")
    assert ctx["actual"] == hashlib.sha384(log[1].encode()).hexdigest()
    assert ctx["expected"] == hashlib.sha384(b"example.com/app deploy image=sha256:2222").hexdigest()
    assert ctx["explanation"].endswith("; the prediction has tsmr there")


@pytest.mark.swtpm
def test_runtime_log_on_a_tpm_pcr(tmp_path: Path) -> None:
    doc, trust, data = swtpm_runtime_bundle(tmp_path, NONCE[:16], ["example.com/app start", "example.com/app ready"],
                                            [16])
    lines = data.decode().splitlines()
    preds = _line_events("pcr16", [lines[0], lines[1]], [HashAlg.SHA256], "app")  # "ready" is not predicted
    rv = Prediction(platform="tpm", registers=extend_all(preds, [HashAlg.SHA256]), events=preds).to_refvals("p")
    ctx = _finding(appraise(doc, nonce=NONCE[:16], now=NOW, trust=trust, reference_values=rv), MISMATCH).context
    assert (ctx["extra_events"], ctx["seq"], ctx["predicted_bank"]) == (1, 3, "sha256")
    assert ctx["actual"] == hashlib.sha256(b"example.com/app ready").hexdigest()
    assert ctx["explanation"].startswith("pcr16: the log has 1 event more than predicted, first: event 3 event")


def test_runtime_log_and_rim_of_an_emulated_realm(state_dir: Path, tmp_path: Path) -> None:
    doc, trust, data = emulated_realm_bundle(state_dir, tmp_path, NONCE, ["example.com/model load", "example.com/model serve"],
                                             rim=bytes(range(32)))
    lines = data.decode().splitlines()
    bank = HashAlg.from_name(next(x["bank"] for x in appraise(doc, nonce=NONCE, now=NOW, trust=trust).registers
                                  if x["register"] == "rem3"))
    preds = _line_events("rem3", [lines[0], "example.com/model train", lines[2]], [bank], "model")
    rv = Prediction(platform="cca", registers=extend_all(preds, [bank]), claims={"rim": "ee" * 32}, events=preds,
                    inputs={"realm image": {"file": "realm.img"}}).to_refvals("p")
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=rv)
    assert (_finding(r, MISMATCH).context["seq"], _finding(r, MISMATCH).context["component"]) == (2, "model")
    rim = _finding(r, CLAIM_MISMATCH).context
    assert rim["inputs"] == {"realm image": {"file": "realm.img"}} and "realm image (file realm.img)" in rim["explanation"]


def test_snp_measurement_without_a_log(sp: EmulatedSNPSigner) -> None:
    report = sp.report(report_data=NONCE.ljust(64, b"\0"), measurement=b"\x11" * 48)
    doc = make_bundle(nonce=NONCE, evidence={"kind": "snp", "data": report, "auxblob": sp.cert_table()})
    trust = TrustAnchors(snp_ark=sp.der("ark"), snp_crl=snp_crl(sp.dir))
    inputs = {"firmware": {"file": "OVMF.fd"}, "vcpus": {"count": "4", "type": "EPYC-v4"}}
    rv = Prediction(platform="snp", claims={"measurement": "22" * 48}, inputs=inputs).to_refvals("p")
    rv["registers"] = {"measurement": {"sha384": ["22" * 48]}}
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=rv)
    for fid in (MISMATCH, CLAIM_MISMATCH):
        ctx = _finding(r, fid).context
        assert ctx["inputs"] == inputs and ctx["explanation"] == (
            "measurement: no log shows what was measured into it; the snp prediction used these inputs: "
            "firmware (file OVMF.fd); vcpus (count 4, type EPYC-v4)")


# --- the document: strict reading -----------------------------------------------------------------

def _event(**kw: Any) -> dict[str, Any]:
    return {"register": "rtmr1", "type": "EV_SEPARATOR", "digests": {"sha384": "00" * 48}, "component": "separator",
            "description": "", **kw}


@pytest.mark.parametrize("predicted, where", [
    ("x", "predicted: must be an object"),
    ({"events": []}, "predicted.platform"),
    ({"platform": "tdx"}, "predicted.events: must be an array"),
    ({"platform": "tdx", "events": [], "colour": 1}, "predicted.colour: unknown member"),
    ({"platform": "t d x", "events": []}, "predicted.platform"),
    ({"platform": "tdx", "events": [_event(register="../x")]}, r"predicted.events\[0\].register"),
    ({"platform": "tdx", "events": [_event(digests={})]}, r"predicted.events\[0\].digests"),
    ({"platform": "tdx", "events": [_event(digests={"md5": "00" * 16})]}, r"predicted.events\[0\].digests.md5: unknown"),
    ({"platform": "tdx", "events": [_event(digests={"sha384": "00" * 32})]}, r"digests.sha384: .* is not 48 bytes"),
    ({"platform": "tdx", "events": [_event(digests={"sha384": "zz" * 48})]}, r"digests.sha384"),
    ({"platform": "tdx", "events": [_event(digests={"sha384": "00" * 48, "SHA-384": "00" * 48})]}, "names a bank twice"),
    ({"platform": "tdx", "events": [_event(component="")]}, r"events\[0\].component"),
    ({"platform": "tdx", "events": [_event(type=7)]}, r"events\[0\].type"),
    ({"platform": "tdx", "events": [_event(description="x" * 1001)]}, r"events\[0\].description"),
    ({"platform": "tdx", "events": [_event(data="0")]}, r"events\[0\].data"),
    ({"platform": "tdx", "events": [_event(data="00" * 65537)]}, r"events\[0\].data"),
    ({"platform": "tdx", "events": [_event(data="00" * 65536)] * 17}, r"events\[16\].data: .* together"),
    ({"platform": "tdx", "events": [_event(colour=1)]}, r"events\[0\].colour: unknown member"),
    ({"platform": "tdx", "events": [_event()] * 4097}, "predicted.events: holds 4097 events"),
    ({"platform": "tdx", "events": [], "inputs": {"kernel": {"file": 3}}}, "predicted.inputs.kernel.file"),
    ({"platform": "tdx", "events": [], "inputs": {"kernel": "vmlinuz"}}, "predicted.inputs.kernel"),
    ({"platform": "tdx", "events": [], "notes": ["x" * 1001]}, r"predicted.notes\[0\]"),
    ({"platform": "tdx", "events": [], "notes": "a note"}, "predicted.notes"),
])
def test_bad_predicted_members_are_refused_by_name(predicted: Any, where: str) -> None:
    doc = {"format": "tsmr-refvals", "version": 1, "id": "p", "predicted": predicted}
    with pytest.raises(InputError, match=where):
        ReferenceValues.from_json(doc)


def test_the_document_round_trips(fixtures: Path) -> None:
    preds = _predicted(_rtmr1_events(fixtures))
    with_data = PredictedEvent("rtmr1", "EV_SEPARATOR", {HashAlg.SHA384: HashAlg.SHA384.hash(bytes(4))}, "separator",
                               "", data=bytes(4))
    doc = _refvals([*preds, with_data], inputs={"kernel": {"file": "vmlinuz", "sha256": "ab" * 32}})
    doc["predicted"]["notes"] = ["QEMU 8.2 setup-header patching assumed"]
    rv = ReferenceValues.from_json(doc)
    assert rv.predicted is not None and rv.predicted.events[-1].data == bytes(4)
    assert rv.predicted.for_register("rtmr1")[4].component == "grub" and rv.predicted.for_register("rtmr2") == []
    assert ReferenceValues.from_json(rv.dumps()) == rv
    assert rv.to_json()["predicted"] == doc["predicted"]
