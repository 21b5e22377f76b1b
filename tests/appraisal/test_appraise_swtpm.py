"""appraise() over TPM quotes from a real swtpm, with a runtime log on PCR 16."""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

import pytest

from swtpm import Swtpm
from tsmr.evidence import TrustAnchors
from tsmr.appraisal import appraise, learn
from tsmr.evidence.bundle import make_bundle

from .conftest import replace_in_log

pytest.importorskip("tpm2_pytss")
pytestmark = [pytest.mark.swtpm,
              pytest.mark.skipif(not Swtpm.available(), reason="swtpm not installed (make test installs it)")]

NONCE = b"\xaa" * 16
NOW = datetime.now(timezone.utc)


def enrolled(evidence: dict) -> TrustAnchors:
    """The verifier's trust in this swtpm's attestation key, as an operator enrols it."""
    from tsmr.evidence.tpm import load_ak_anchor

    return TrustAnchors(tpm_aks=[load_ak_anchor(bytes.fromhex(evidence["ak_public"]))])


def test_tpm_quote_with_runtime_log(tmp_path: Path) -> None:
    from tsmr.backends.tpm import TpmRegisterSet
    from tsmr.system.acquire import acquire
    from tsmr.runtime_log.store import RuntimeLog

    with Swtpm() as tpm:
        with TpmRegisterSet(tpm.tcti) as rs, RuntimeLog(rs, "pcr16", log_dir=tmp_path) as log:
            log.append_many(["example.com/app start", "example.com/app ready"])
            data = log.read()
        got = acquire(NONCE, backend=f"tpm:{tpm.tcti}", pcrs=[0, 7, 16])
        without16 = acquire(NONCE, backend=f"tpm:{tpm.tcti}", pcrs=[0, 7])
    doc = make_bundle(nonce=NONCE, evidence=got.evidence, logs=[{"format": "tsmr", "register": "pcr16", "data": data}])
    trust = enrolled(got.evidence)

    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    # verified and replayed, but nothing says what PCR 16 may hold (PCR 0 and 7 of this swtpm are still zero)
    assert r.status == "warning" and r.finding_ids() == ["refvals.uncovered"] and r.kind == "tpm"
    assert r.findings[0].context["registers"] == ["pcr16"]
    pcr16 = [x for x in r.registers if x["register"] == "pcr16"]
    assert len(pcr16) == 4 and {x["status"] for x in pcr16} == {"matched"}  # four banks
    assert [e["operation"] for e in r.events["example.com/app"]] == ["start", "ready"]

    rv = learn(doc, now=NOW, trust=trust)
    assert set(rv.registers) == {"pcr0", "pcr7", "pcr16"} and len(rv.events) == 2
    assert appraise(doc, nonce=NONCE, now=NOW, reference_values=rv, trust=trust).status == "affirming"

    # the log says something other than what was extended
    changed = appraise(replace_in_log(doc, b"ready", b"READY"), nonce=NONCE, now=NOW, reference_values=rv, trust=trust)
    assert changed.status == "contraindicated"
    assert changed.finding_ids().count("replay.mismatch") == 4 and "refvals.event-missing" in changed.finding_ids()

    # a quote that does not cover the logged PCR: the log proves nothing, and its events are not judged
    unsigned = appraise(dict(doc, evidence=without16.evidence), nonce=NONCE, now=NOW, trust=trust)
    assert unsigned.finding_ids() == ["replay.not-signed"] * 4 + ["policy.deny"] and unsigned.status == "contraindicated"
    assert unsigned.findings[0].severity == "error" and unsigned.findings[0].context["signed"] is None
    assert unsigned.events == {} and [e["operation"] for e in unsigned.unproven] == ["start", "ready"]

    # a quote over another nonce, and a broken signature
    stale = appraise(dict(doc, nonce="bb" * 16), nonce=b"\xbb" * 16, now=NOW, trust=trust)
    assert stale.finding_ids()[0] == "evidence.tpm.nonce" and stale.trustworthiness["instance-identity"] == 96
    sig = bytearray(bytes.fromhex(doc["evidence"]["signature"]))
    sig[-1] ^= 1
    bad = appraise(dict(doc, evidence=dict(doc["evidence"], signature=sig.hex())), nonce=NONCE, now=NOW, trust=trust)
    assert bad.finding_ids() == ["evidence.tpm.signature", "policy.deny"] and bad.status == "contraindicated"
    assert bad.trustworthiness["hardware"] == 96 and base64.b64decode(doc["logs"][0]["data"])


def test_firmware_log_anomaly_and_the_quirk_that_accepts_it(tmp_path: Path) -> None:
    """Two EV_SEPARATORs on PCR 7: a log.duplicate-separator warning, unless the reference values accept the quirk."""
    from tsmr.algorithms import HashAlg
    from tsmr.backends.tpm import TpmRegisterSet
    from tsmr.system.acquire import acquire
    from tsmr.formats import tcg2

    sep = HashAlg.SHA256.hash(bytes(4))
    events = [tcg2.TCG2Event(7, tcg2.EV_SEPARATOR, ((int(HashAlg.SHA256), sep),), bytes(4))] * 2
    with Swtpm() as tpm:
        with TpmRegisterSet(tpm.tcti) as rs:
            for _ in events:
                rs.extend("pcr7", {HashAlg.SHA256: sep})
        got = acquire(NONCE, backend=f"tpm:{tpm.tcti}", pcrs=[7])
    log = tcg2.encode_log(events, [HashAlg.SHA256])
    doc = make_bundle(nonce=NONCE, evidence=got.evidence, logs=[{"format": "tcg2", "data": log, "name": "firmware"}])
    trust = enrolled(got.evidence)

    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    # a firmware log judges nothing by itself: PCR 7 is uncovered too
    assert r.finding_ids() == ["log.duplicate-separator", "refvals.uncovered"] and r.status == "warning"
    assert r.quirks == ()
    assert r.findings[0].context == {"register": "pcr7"}
    assert [(x["register"], x["bank"], x["status"]) for x in r.registers if x["status"] != "signed-only"] == [
        ("pcr7", "sha256", "matched")]
    pcr7 = next(x["signed"] for x in r.registers if (x["register"], x["bank"]) == ("pcr7", "sha256"))
    accepted = {"format": "tsmr-refvals", "version": 1, "id": "q", "quirks": ["duplicate-separators"],
                "registers": {"pcr7": {"sha256": [pcr7]}}}
    r = appraise(doc, nonce=NONCE, now=NOW, reference_values=accepted, trust=trust)
    assert r.finding_ids() == [] and r.quirks == ("duplicate-separators",) and r.status == "affirming"
