"""appraise() keeps the replay step's outcome by the logs' exact content: a kept outcome is the cold one.

Every test compares an appraisal that uses a kept outcome with one made from nothing (the caches
cleared), or alternates inputs that must give different verdicts over the same kept entry, so that
a cache keyed on too little (the sampled key, the logs without the signed registers, the quirks or
the pinned registers), a limit skipped on a hit, or an outcome changed by its user fails it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable

import pytest

from tsmr.algorithms import HashAlg
from tsmr.appraisal import appraise, learn
from tsmr.appraisal import core
from tsmr.evidence.bundle import make_bundle
from tsmr.evidence.limits import AppraisalCancelled, LimitExceeded, Limits

from .conftest import NOW, WHEN, EmulatedTDX, emulated_realm_bundle, replace_in_log, tdx_bundle

NONCE = bytes(range(32))


def _cold() -> None:
    """Forget every parsed log and replay outcome, as a fresh verifier process has none."""
    core._REPLAYS.clear()
    core._FIRMWARE_LOGS.clear()


def _entries() -> list[Any]:
    return list(core._REPLAYS._items.values())


def _twice(call: Callable[[], Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The result of ``call`` from nothing, and again from the entry the first call kept (checked to be used)."""
    _cold()
    cold = call().to_dict()
    kept = _entries()
    assert len(kept) == 1, "a clean appraisal keeps its replay"
    warm = call().to_dict()
    assert [e is k for e, k in zip(_entries(), kept)] == [True], "the second appraisal used the kept entry"
    return cold, warm


def _aael_quote(fixtures: Path) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """trustee's TDX quote with its AAEL v1 runtime log on RTMR3 and no firmware log, and refvals pinning RTMR0-2."""
    from tsmr.evidence import tdx

    d = fixtures / "trustee/aael"
    quote = (d / "AAEL_quote_tdx").read_bytes()
    body = tdx.parse_quote(quote).body
    nonce = body.report_data[:48]
    doc = make_bundle(nonce=nonce, evidence={"kind": "tdx", "data": quote},
                      logs=[{"format": "tsmr", "register": "rtmr3", "data": (d / "AAEL_data_1").read_bytes()}])
    pinned = {f"rtmr{i}": {"sha384": [getattr(body, f"rtmr{i}").hex()]} for i in range(3)}
    refvals = {"format": "tsmr-refvals", "version": 1, "id": "aael", "registers": pinned,
               "claims": {"mrtd": [body.mrtd.hex()]},
               "appraisers": {"allowlist": {"rules": [{"domain": "image-rs", "operation": "CreateContainer",
                                                       "content": "docker.io/library/busybox(:.*)?"}]}}}
    return doc, nonce, refvals


# -- a kept outcome gives the cold result -------------------------------------------------------------------


def test_firmware_log_matched_and_mismatched(fixtures: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    rv = learn(doc, now=WHEN)
    cold, warm = _twice(lambda: appraise(doc, nonce=nonce, now=WHEN, reference_values=rv))
    assert cold == warm and cold["status"] == "warning"  # (no collateral for the go-tdx-guest quote)
    assert {r["reference"] for r in warm["registers"] if r["register"].startswith("rtmr")} == {"matched"}

    digest = HashAlg.SHA384.hash(b"Calling EFI Application from Boot Option")  # an RTMR1 record
    changed = replace_in_log(doc, digest, bytes(48), index=0)
    cold, warm = _twice(lambda: appraise(changed, nonce=nonce, now=WHEN, reference_values=rv))
    assert cold == warm and "replay.mismatch" in [f["id"] for f in warm["findings"]]


def test_runtime_log_with_gap_and_unproven_events(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app one")
    emulated_tdx.rs.extend("rtmr3", {HashAlg.SHA384: bytes(48)})  # behind the log's back
    emulated_tdx.append("example.com/app two", "example.com/app three")
    doc = emulated_tdx.bundle(NONCE)
    cold, warm = _twice(lambda: appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust))
    assert cold == warm
    assert [f["id"] for f in warm["findings"]] == ["replay.gap", "refvals.uncovered"]
    assert [e["operation"] for e in warm["unproven"]] == ["one"]
    assert [e["operation"] for e in warm["events"]["example.com/app"]] == ["two", "three"]


def test_tampered_runtime_log(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy", "example.com/app start")
    doc = emulated_tdx.bundle(NONCE)
    rv = learn(doc, now=NOW, trust=emulated_tdx.trust)
    tampered = replace_in_log(doc, b"deploy", b"DEPLOY")
    cold, warm = _twice(lambda: appraise(tampered, nonce=NONCE, now=NOW, trust=emulated_tdx.trust,
                                         reference_values=rv))
    assert cold == warm and cold["status"] == "contraindicated"
    assert warm["events"] == {} and [e["operation"] for e in warm["unproven"]] == ["DEPLOY", "start"]


def test_unlogged_registers_and_appraiser_findings(fixtures: Path) -> None:
    doc, nonce, refvals = _aael_quote(fixtures)
    cold, warm = _twice(lambda: appraise(doc, nonce=nonce, now=WHEN, reference_values=refvals))
    assert cold == warm and warm["findings"][0]["id"] == "appraiser.allowlist.deny"


def test_cca_realm(state_dir: Path, tmp_path: Path) -> None:
    doc, trust, _ = emulated_realm_bundle(state_dir, tmp_path, NONCE, ["example.com/app start"])
    cold, warm = _twice(lambda: appraise(doc, nonce=NONCE, now=NOW, trust=trust))
    assert cold == warm and cold["kind"] == "cca" and "example.com/app" in warm["events"]


@pytest.mark.parametrize("log, finding", [
    ({"format": "tsmr", "register": "rtmr3", "data": "not base64!"}, "bundle.malformed"),
    ({"format": "ccel", "register": "rtmr3", "data": base64.b64encode(b"\x01\x02\x03").decode()}, "log.malformed"),
])
def test_a_log_that_does_not_parse_is_not_kept(fixtures: Path, log: dict[str, Any], finding: str) -> None:
    doc, nonce = tdx_bundle(fixtures)
    broken = dict(doc, logs=[doc["logs"][0], log])
    _cold()
    results = [appraise(broken, nonce=nonce, now=WHEN).to_dict() for _ in range(2)]
    assert results[0] == results[1] and _entries() == []
    assert [f["context"].get("log") for f in results[0]["findings"] if f["id"] == finding] == [1]
    # the firmware log beside it was still replayed and its events judged
    assert {r["status"] for r in results[0]["registers"] if r["register"] in ("rtmr0", "rtmr1")} == {"matched"}


# -- any input changed is replayed afresh -----------------------------------------------------------------


def test_a_runtime_log_edited_between_the_samples_is_replayed(emulated_tdx: EmulatedTDX) -> None:
    """One byte of a record changed where no sample of the key reads: same key, another text, a mismatch."""
    emulated_tdx.append(*[f"example.com/app step {i:03} of a long enough runtime log" for i in range(60)])
    doc = emulated_tdx.bundle(NONCE)
    log = doc["logs"][0]
    text = log["data"]
    data = base64.b64decode(text)
    key = core._firmware_key(text, "tsmr", "rtmr3")
    at = data.index(b"step 030")
    for i in range(at, at + 40):
        if not data[i:i + 1].isalpha():
            continue
        edited = base64.b64encode(data[:i] + data[i:i + 1].swapcase() + data[i + 1:]).decode()
        if core._firmware_key(edited, "tsmr", "rtmr3") == key:
            break
    else:
        pytest.fail("every character of the record is sampled")
    changed = dict(doc, logs=[dict(log, data=edited)])
    _cold()
    for _ in range(2):
        same = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust)
        assert "replay.mismatch" not in same.finding_ids() and len(same.events["example.com/app"]) == 60
        r = appraise(changed, nonce=NONCE, now=NOW, trust=emulated_tdx.trust)
        mismatch = next(f for f in r.findings if f.id == "replay.mismatch")
        assert mismatch.context["register"] == "rtmr3" and r.events == {}
    assert len(_entries()) == 1  # the two texts share one key: each replaced the other's entry


def test_other_signed_registers_over_the_same_log(emulated_tdx: EmulatedTDX) -> None:
    """The same log text over a quote whose RTMR3 was extended behind the log's back: a mismatch."""
    emulated_tdx.append("example.com/app start")
    before = emulated_tdx.bundle(NONCE)
    emulated_tdx.rs.extend("rtmr3", {HashAlg.SHA384: HashAlg.SHA384.hash(b"unlogged")})
    after = emulated_tdx.bundle(NONCE)
    assert before["logs"] == after["logs"] and before["evidence"] != after["evidence"]
    _cold()
    for _ in range(2):
        ok = appraise(before, nonce=NONCE, now=NOW, trust=emulated_tdx.trust)
        assert "replay.mismatch" not in ok.finding_ids() and "example.com/app" in ok.events
        r = appraise(after, nonce=NONCE, now=NOW, trust=emulated_tdx.trust)
        assert next(f for f in r.findings if f.id == "replay.mismatch").context["register"] == "rtmr3"
        assert r.events == {} and [e["operation"] for e in r.unproven] == ["start"]


def test_accepted_quirks_are_part_of_the_outcome(fixtures: Path) -> None:
    """A TPM log with boot applications and no Exit Boot Services: an anomaly unless the quirk is accepted."""
    doc, nonce = tdx_bundle(fixtures)
    tpm_log = {"format": "tcg2", "data": base64.b64encode(
        (fixtures / "go-eventlog/eventlogs/tpm/debian-10.bin").read_bytes()).decode(), "name": "tpm"}
    both = dict(doc, logs=[doc["logs"][0], tpm_log])
    none = {"format": "tsmr-refvals", "version": 1, "id": "none"}
    accepting = dict(none, id="accepting", quirks=["no-exit-boot-services"])
    _cold()
    for _ in range(2):
        r = appraise(both, nonce=nonce, now=WHEN, reference_values=none)
        assert "log.exit-boot-services-missing" in r.finding_ids() and r.quirks == ()
        r = appraise(both, nonce=nonce, now=WHEN, reference_values=accepting)
        assert "log.exit-boot-services-missing" not in r.finding_ids() and r.quirks == ("no-exit-boot-services",)
    assert len(_entries()) == 1  # the same logs: the quirks decide which outcome the entry holds


def test_pinned_registers_decide_on_a_kept_outcome(fixtures: Path) -> None:
    """RTMR0-2 changed without a log: errors unless the reference values pin them, whatever was kept."""
    doc, nonce, refvals = _aael_quote(fixtures)
    unpinned = {k: v for k, v in refvals.items() if k != "registers"}
    _cold()
    appraise(doc, nonce=nonce, now=WHEN, reference_values=refvals)
    kept = _entries()
    for _ in range(2):
        r = appraise(doc, nonce=nonce, now=WHEN, reference_values=unpinned)
        unlogged = [f.context["register"] for f in r.findings if f.id == "replay.unlogged"]
        assert unlogged == ["rtmr0", "rtmr1", "rtmr2"] and r.status == "contraindicated"
        r = appraise(doc, nonce=nonce, now=WHEN, reference_values=refvals)
        assert "replay.unlogged" not in r.finding_ids()
        assert [x["reference"] for x in r.registers if x["status"] == "unlogged"] == ["matched"] * 3
    assert [e is k for e, k in zip(_entries(), kept)] == [True]  # one entry served both


# -- limits hold on a kept outcome -----------------------------------------------------------------------


def _raised(call: Callable[[], Any]) -> BaseException:
    with pytest.raises((LimitExceeded, AppraisalCancelled)) as err:
        call()
    return err.value


def test_limits_hold_on_a_kept_outcome(fixtures: Path) -> None:
    """A bundle kept under the default limits raises under lower ones as if nothing were kept."""
    from tsmr.eventlog import parse

    doc, nonce = tdx_bundle(fixtures)
    aael = (fixtures / "trustee/eventlog/CCEL_AAEL_alibabacloud").read_bytes()
    with_aael = dict(doc, logs=[doc["logs"][0], {"format": "ccel", "data": base64.b64encode(aael).decode(),
                                                  "register": "rtmr3", "name": "aael"}])
    ccel = parse(base64.b64decode(doc["logs"][0]["data"]), "ccel").events
    longest = max(len(e.data) for e in ccel)
    cases = [
        (doc, Limits(max_records=len(ccel) - 1), None, ("max_records", len(ccel))),
        (doc, Limits(max_record_bytes=longest - 1), None, ("max_record_bytes", longest)),
        (with_aael, Limits(max_runtime_events=1), None, ("max_runtime_events", 2)),
        (doc, None, lambda: True, None),
    ]
    for bundle, limits, cancelled, expected in cases:
        def call() -> Any:
            return appraise(bundle, nonce=nonce, now=WHEN, limits=limits, cancelled=cancelled)

        _cold()
        cold = _raised(call)
        assert _entries() == []
        appraise(bundle, nonce=nonce, now=WHEN)  # kept under the default limits
        assert len(_entries()) == 1
        warm = _raised(call)
        assert (type(warm), str(warm)) == (type(cold), str(cold))
        if expected is not None:
            assert isinstance(warm, LimitExceeded) and (warm.limit, warm.value) == expected
        else:
            assert isinstance(warm, AppraisalCancelled) and "parsing logs[0] (CCEL)" in str(warm)


# -- nothing kept can be changed by its users ---------------------------------------------------------------


def test_results_and_plugins_change_nothing_kept(emulated_tdx: EmulatedTDX) -> None:
    class Vandal:
        name, domains = "vandal", ["*"]

        def appraise(self, events: list[dict[str, Any]], config: dict[str, Any]) -> list[Any]:
            for e in events:  # a plugin that writes into what it was given
                e["content"] = "vandalised"
                e["domain"] = "elsewhere"
                e.pop("line")
            events.clear()
            return []

    emulated_tdx.append('example.com/app deploy {"image":"alpine"}', "example.com/app start")
    doc = emulated_tdx.bundle(NONCE)
    rv = learn(doc, now=NOW, trust=emulated_tdx.trust)
    _cold()
    first = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=rv, appraisers=[Vandal()])
    expected = first.to_dict()
    assert "appraiser.vandal.failed" not in first.finding_ids()  # it was given dicts it may change
    assert expected["events"]["example.com/app"][0]["content"] == '{"image":"alpine"}'
    assert {r["reference"] for r in expected["registers"] if r["register"] == "rtmr3"} == {"matched"}
    changed = first.to_dict()
    changed["events"]["example.com/app"][0]["content"] = "changed"
    changed["registers"][0]["status"] = "changed"
    changed["unproven"].append({"reason": "changed"})
    with pytest.raises(TypeError):
        first.events["example.com/app"][0]["content"] = "changed"  # type: ignore[index]
    for _ in range(2):
        again = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=rv,
                         appraisers=[Vandal()])
        assert again.to_dict() == expected
    # The rows the reference values marked were the call's own: without them, no row is marked.
    bare = appraise(doc, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, appraisers=[])
    assert {r["reference"] for r in bare.registers} == {None}
    assert bare.events["example.com/app"][0]["content"] == '{"image":"alpine"}'


def test_the_kept_text_is_bounded() -> None:
    """The replay cache bounds its entries and the log text they hold in all (tsmr.lru.LRU's weights)."""
    from tsmr.lru import LRU

    cache: LRU[str] = LRU(3, max_weight=10)
    cache.put("a", "A", weight=4)
    cache.put("b", "B", weight=4)
    cache.put("a", "A2", weight=5)  # a replaced entry's weight is its new one: 9 in all
    assert cache.weight == 9 and cache.get("a") == "A2"
    cache.put("c", "C", weight=3)  # 12: the least recently used ("b") goes
    assert cache.get("b") is None and cache.weight == 8 and len(cache) == 2
    cache.put("big", "X", weight=11)  # heavier than the whole bound: not kept, and nothing else lost
    assert cache.get("big") is None and cache.get("a") == "A2" and cache.get("c") == "C" and cache.weight == 8
    for k in "defg":
        cache.put(k, k)
    assert len(cache) == 3 and cache.get("a") is None and cache.weight == 0
    assert core._REPLAYS.size == core.REPLAY_CACHE_SIZE and core._REPLAYS.max_weight == core.REPLAY_CACHE_MAX_CHARS
