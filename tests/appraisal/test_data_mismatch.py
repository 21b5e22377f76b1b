"""An event's data must be what was measured: a log that keeps the digests and changes the data proves nothing.

Formats that record digests next to the data (CEL, IMA lists, systemd's logs)
let a forger keep every digest, so that the log still replays to the signed
register, and change the data that policies and appraisers read.  Where the
format says the digest is the hash of the data, the appraisal recomputes it.
"""

from __future__ import annotations

import base64
import json

from tsmr.algorithms import HashAlg
from tsmr.appraisal import appraise
from tsmr.runtime_log.export import register_index, to_cel_json

from .conftest import NOW, EmulatedTDX

NONCE = bytes(range(32))
RULES = {"format": "tsmr-refvals", "version": 1, "id": "rules",
         "appraisers": {"allowlist": {"rules": [{"domain": "example.com/*", "operation": "deploy", "content": "v1"}]}}}


def _as_cel_json(doc: dict, edit: tuple[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    """The bundle with its runtime log as CEL-JSON; ``edit`` replaces a record's text, keeping its digests."""
    log = doc["logs"][-1]
    itype, index, _ = register_index("rtmr3")
    exported = to_cel_json(base64.b64decode(log["data"]), algs=[HashAlg.SHA384], index_type=itype, index=index)
    records = json.loads(exported.data)
    if edit is not None:
        hits = [r for r in records if r["content"]["record"] == edit[0]]
        assert len(hits) == 1
        hits[0]["content"]["record"] = edit[1]
    data = json.dumps(records).encode()
    return dict(doc, logs=[*doc["logs"][:-1], {"format": "cel-json", "register": "rtmr3",
                                                "data": base64.b64encode(data).decode()}])


def test_cel_log_with_its_own_records_affirms(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy v1")
    r = appraise(_as_cel_json(emulated_tdx.bundle(NONCE)), nonce=NONCE, now=NOW, trust=emulated_tdx.trust,
                 reference_values=RULES)
    assert r.status == "affirming", r.finding_ids()
    assert [e["content"] for e in r.events["example.com/app"]] == ["v1"]


def test_cel_record_changed_under_its_digest_is_not_judged(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append("example.com/app deploy v1", "example.com/app deploy v7")
    forged = _as_cel_json(emulated_tdx.bundle(NONCE), edit=("example.com/app deploy v7", "example.com/app deploy v1"))
    r = appraise(forged, nonce=NONCE, now=NOW, trust=emulated_tdx.trust, reference_values=RULES)
    assert r.status == "contraindicated"
    assert "replay.data-mismatch" in r.finding_ids()
    bad = next(f for f in r.findings if f.id == "replay.data-mismatch")
    assert bad.context["register"] == "rtmr3" and bad.context["bank"] == "sha384"
    # the forged record is not judged as if it had happened; the honest one before it still is
    assert [e["content"] for e in r.events.get("example.com/app", ())] == ["v1"]
    assert [e["line"] for e in r.unproven] == ["example.com/app deploy v1"]
    assert "not the hash of its data" in r.unproven[0]["reason"]


def test_ima_entry_changed_under_its_sha1_template_hash_is_not_proven() -> None:
    """A SHA-1 quote of PCR 10 and an IMA list whose entry kept its template hash but names another file."""
    from dataclasses import replace

    from tsmr.evidence.bundle import replay_logs
    from tsmr.formats import ima

    def entry(path: bytes, digest: bytes) -> ima.IMAEntry:
        return ima.build_entry("ima-ng", [ima.digest_field(HashAlg.SHA256, digest), ima.name_field(path)])

    honest = [entry(b"/usr/bin/good", bytes([1]) * 32), entry(b"/usr/bin/evil", bytes([2]) * 32)]
    pcr10 = ima.replay(honest, banks=(HashAlg.SHA1,))[HashAlg.SHA1]
    signed = {"pcr10": {HashAlg.SHA1: pcr10}}
    # the second entry now claims another file, under the template hash of the first
    forged = [honest[0], replace(honest[1], template_data=honest[0].template_data)]
    got = replay_logs({}, "tpm", signed, events=ima.to_events(ima.parse_binary(ima.encode_binary(forged))))
    assert [(r.register, r.bank, r.status) for r in got.rows] == [
        ("pcr10", "sha1", "matched"), ("pcr10", "sha1", "data-mismatch")]
    assert [e.seq for e in got.proven] == [0]
    assert [(e.seq, "not the hash of its data" in why) for e, why in got.unproven] == [(1, True)]
    # the honest list proves both entries
    got = replay_logs({}, "tpm", signed, events=ima.to_events(ima.parse_binary(ima.encode_binary(honest))))
    assert [r.status for r in got.rows] == ["matched"] and len(got.proven) == 2
