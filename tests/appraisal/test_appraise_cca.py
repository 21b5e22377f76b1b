"""appraise() over the emulator's Arm CCA tokens with a runtime log on REM3."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tsmr.evidence import TrustAnchors
from tsmr.appraisal import appraise, learn
from tsmr.errors import InputError

from .conftest import emulated_realm_bundle, replace_in_log

NONCE = b"\x5a" * 32
NOW = datetime.now(timezone.utc)


def test_cca_token_with_runtime_log(state_dir: Path, tmp_path: Path) -> None:
    doc, trust, _ = emulated_realm_bundle(state_dir, tmp_path, NONCE,
                                          ["example.com/model load {\"sha256\":\"ab\"}", "example.com/model serve"])

    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust)
    # verified and replayed, but nothing says what REM3 may hold: a warning naming it, never affirming
    assert r.status == "warning" and r.kind == "cca" and r.finding_ids() == ["refvals.uncovered"]
    assert r.findings[0].context["registers"] == ["rem3"] and r.trustworthiness["executables"] == 0
    assert [(x["register"], x["bank"], x["status"]) for x in r.registers if x["register"] == "rem3"] == [
        ("rem3", "sha256", "matched")]
    rv = learn(doc, now=NOW, trust=trust)
    assert set(rv.claims) == {"rim", "personalization_value"} and set(rv.registers) == {"rim", "rem0", "rem1", "rem2", "rem3"}
    assert appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=rv).status == "affirming"

    other = rv.to_json()
    other["claims"]["rim"] = ["ff" * 32]
    r = appraise(doc, nonce=NONCE, now=NOW, trust=trust, reference_values=other)
    assert sorted(r.finding_ids()) == ["policy.deny", "refvals.claim-mismatch"]
    assert r.findings[0].context["claim_name"] == "rim" and r.trustworthiness["executables"] == 96

    r = appraise(replace_in_log(doc, b"serve", b"train"), nonce=NONCE, now=NOW, trust=trust, reference_values=rv)
    assert "replay.mismatch" in r.finding_ids() and "refvals.event-missing" in r.finding_ids()

    # a token checked against another platform key; and no platform key at all (the verifier's configuration)
    stranger = TrustAnchors(cca_cpak=ec.generate_private_key(ec.SECP384R1()).public_key())
    r = appraise(doc, nonce=NONCE, now=NOW, trust=stranger)
    assert r.finding_ids() == ["evidence.cca.platform.signature", "policy.deny"] and r.trustworthiness["hardware"] == 96
    # a token over another challenge: the binding is instance identity, not hardware
    r = appraise(dict(doc, nonce="00" * 32), nonce=bytes(32), now=NOW, trust=trust)
    assert r.finding_ids()[0] == "evidence.cca.challenge" and r.trustworthiness["instance-identity"] == 96
    with pytest.raises(InputError, match="cpak"):
        appraise(doc, nonce=NONCE, now=NOW)
