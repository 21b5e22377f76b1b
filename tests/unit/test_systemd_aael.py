"""systemd measurement logs (tsmr.formats.systemd) and AAEL v2 tagged events (tsmr.formats.aael).

The systemd logs here are built by the test in the shape systemd writes them
(src/shared/measurement-log.c appends ``0x1E <compact JSON> LF``; the members
are in the order of its sd_json_buildo calls, see src/shared/tdx-rtmr.c:
``pcr``|``rtmr`` [, ``mapped_pcr``], ``digests``, ``content_type``, ``content`` =
{[``nvIndexName``,] ``string``, ``bootId``, ``timestamp``, ``eventType``}),
with the measured strings systemd documents in docs/TPM2_PCR_MEASUREMENTS.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsmr.algorithms import HashAlg
from tsmr.errors import InputError, ParseError
from tsmr.events import DATA
from tsmr.formats import aael, systemd, tcg2

from replay_helpers import tcg2_values

BOOT_ID = "0f3c1b2a9d8e4f70a1b2c3d4e5f60718"


def sd_record(index_member: str, index: int, digests: dict[str, bytes], content: dict, **extra) -> bytes:
    obj: dict = {index_member: index}
    obj.update(extra)
    obj["digests"] = [{"hashAlg": a, "digest": d.hex()} for a, d in digests.items()]
    obj["content_type"] = "systemd"
    obj["content"] = content
    return b"\x1e" + json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def measured(word: str) -> dict[str, bytes]:
    raw = word.encode()
    return {"sha256": hashlib.sha256(raw).digest(), "sha384": hashlib.sha384(raw).digest()}


def content(string: str, event_type: str | None, ts: int, **more) -> dict:
    c = dict(more)
    c.update({"string": string, "bootId": BOOT_ID, "timestamp": ts})
    if event_type:
        c["eventType"] = event_type
    return c


MACHINE_ID = "machine-id:4fd0b0cd41e24b07a7e2c4b96e1d9c3b"
KEYSLOT = "cryptsetup-keyslot:root:1e023a55-60f9-4b6b-9b80-67438dc5f065:tpm2:1"
VOLUME_KEY = hmac.new(b"\x11" * 64, b"cryptsetup:root:1e023a55-60f9-4b6b-9b80-67438dc5f065", "sha256").digest()


def tpm2_measure_log() -> bytes:
    log = b""
    ts = 4182731
    for word in ("enter-initrd", "leave-initrd", "sysinit", "ready"):
        log += sd_record("pcr", 11, measured(word), content(word, "phase", ts))
        ts += 1000
    log += sd_record("pcr", 15, measured(MACHINE_ID), content(MACHINE_ID, "machine-id", ts))
    # volume keys are HMAC'd: the digest cannot be recomputed from the log
    log += sd_record("pcr", 15, {"sha256": VOLUME_KEY}, content("cryptsetup:root:1e023a55", "volume-key", ts + 1))
    # an NvPCR extend: nv_index member, nvIndexName in the content
    log += sd_record("nv_index", 0x01D10201, {"sha256": hashlib.sha256(KEYSLOT.encode()).digest()},
                     content(KEYSLOT, "keyslot", ts + 2, nvIndexName="cryptsetup"))
    return log


def test_tpm2_measure_log_events() -> None:
    log = tpm2_measure_log()
    recs = systemd.parse(log)
    assert len(recs) == 7 and [r.recnum for r in recs] == list(range(7))  # consumer numbers them
    evs = systemd.to_events(recs)
    assert [e.register for e in evs] == ["pcr11"] * 4 + ["pcr15", "pcr15", "nv0x01d10201"]
    assert [e.type for e in evs] == ["systemd:phase"] * 4 + ["systemd:machine-id", "systemd:volume-key",
                                                             "systemd:keyslot"]
    assert all(e.source == "systemd" for e in evs)
    assert evs[0].data == b"enter-initrd" and evs[0].data_rule == DATA
    assert evs[0].summary == "phase: enter-initrd"
    assert evs[0].details == {"eventType": "phase", "string": "enter-initrd", "bootId": BOOT_ID,
                              "timestamp": 4182731}
    for e in evs[:5] + evs[6:]:
        assert e.check(HashAlg.SHA256) is True
    assert evs[4].check(HashAlg.SHA384) is True
    assert evs[5].data_rule is None and evs[5].check(HashAlg.SHA256) is None
    assert evs[6].details["nvIndexName"] == "cryptsetup" and evs[6].index == 0x01D10201

    # replay PCR 11 from the events, against an independent fold
    value = bytes(32)
    for word in ("enter-initrd", "leave-initrd", "sysinit", "ready"):
        value = hashlib.sha256(value + hashlib.sha256(word.encode()).digest()).digest()
    folded = HashAlg.SHA256.zero()
    for e in evs:
        if e.register == "pcr11":
            folded = HashAlg.SHA256.extend(folded, e.digest(HashAlg.SHA256))
    assert folded == value


def test_cc_measure_log_rtmr_records() -> None:
    log = b"".join(
        sd_record("rtmr", 2, {"sha384": hashlib.sha384(w.encode()).digest()}, content(w, "phase", 10 + i),
                  mapped_pcr=11)
        for i, w in enumerate(("enter-initrd", "leave-initrd"))
    )
    log += sd_record("rtmr", 2, {"sha384": hashlib.sha384(MACHINE_ID.encode()).digest()},
                     content(MACHINE_ID, "machine-id", 20), mapped_pcr=15)
    evs = systemd.parse_events(log)
    assert [e.register for e in evs] == ["rtmr2"] * 3  # cc-measure.log's rtmr is the RTMR number
    assert [e.details["mapped_pcr"] for e in evs] == [11, 11, 15]
    assert all(e.check(HashAlg.SHA384) for e in evs)
    # what the RTMR holds after these extends (TDG.MR.RTMR.EXTEND = SHA384(RTMR || digest))
    value = bytes(48)
    for w in ("enter-initrd", "leave-initrd", MACHINE_ID):
        value = hashlib.sha384(value + hashlib.sha384(w.encode()).digest()).digest()
    folded = HashAlg.SHA384.zero()
    for e in evs:
        folded = HashAlg.SHA384.extend(folded, e.digest(HashAlg.SHA384))
    assert folded == value


def test_writer_matches_systemd_shape() -> None:
    recs = [systemd.make_record(w, pcr=11, algs=(HashAlg.SHA256, HashAlg.SHA384), boot_id=BOOT_ID,
                                timestamp=4182731 + 1000 * i)
            for i, w in enumerate(("enter-initrd", "leave-initrd", "sysinit", "ready"))]
    written = systemd.encode(recs)
    by_hand = b"".join(sd_record("pcr", 11, measured(w), content(w, "phase", 4182731 + 1000 * i))
                       for i, w in enumerate(("enter-initrd", "leave-initrd", "sysinit", "ready")))
    assert json.loads(b"[" + written.replace(b"\x1e", b"").replace(b"\n", b",")[:-1] + b"]") == \
        json.loads(b"[" + by_hand.replace(b"\x1e", b"").replace(b"\n", b",")[:-1] + b"]")
    assert systemd.parse(written) == systemd.parse(by_hand)
    rtmr = systemd.make_record("sysinit", rtmr=2, algs=(HashAlg.SHA384,), mapped_pcr=11)
    assert systemd.to_event(rtmr, 0).register == "rtmr2"
    with pytest.raises(InputError):
        systemd.make_record("x", pcr=1, rtmr=1)


def test_escaped_cut_and_untyped_strings_are_not_data_rule() -> None:
    long_word = "login:root:" + "x" * 2000
    logged_long = long_word[:1024] + "..."  # pcrextend cuts at 1024 bytes
    quoted = 'file-system:ext4:"root"'
    log = sd_record("pcr", 15, measured(quoted), content(quoted.replace('"', '\\"'), "filesystem", 1))
    log += sd_record("nv_index", 0x01D10203, {"sha256": hashlib.sha256(long_word.encode()).digest()},
                     content(logged_long, "login", 2, nvIndexName="login"))
    log += sd_record("pcr", 11, measured("ready"), content("ready", None, 3))
    e1, e2, e3 = systemd.parse_events(log)
    assert e1.data_rule is None and e1.details["escaped"] is True
    assert e2.data_rule is None and e2.details["truncated"] is True
    assert e3.data_rule is None and e3.type == "systemd"  # no eventType: what was hashed is unknown


def test_other_content_types_and_libcel_numbers() -> None:
    foreign = {"pcr": 11, "digests": [{"hashAlg": "sha256", "digest": "00" * 32}],
               "content_type": "luks-header", "content": {"uuid": "x"}}
    libcel = {"pcr": 1, "digests": [], "content_type": "systemd",
              "content": {"eventType": 2, "string": "falafel", "bootId": "fa" * 16, "timestamp": 4000}}
    log = b"".join(b"\x1e" + json.dumps(o).encode() + b"\n" for o in (foreign, libcel))
    e1, e2 = systemd.parse_events(log)
    assert e1.type == "cel:luks-header" and e1.source == "systemd" and e1.data_rule is None
    assert e2.type == "systemd:volume-key"  # libcel numbers: 0 phase, 1 filesystem, 2 volume-key


def test_empty_and_array_forms() -> None:
    assert systemd.parse(b"") == ()
    arr = b"[" + json.dumps({"pcr": 11, "digests": [], "content_type": "systemd",
                             "content": {"string": "ready", "eventType": "phase"}}).encode() + b"]"
    assert systemd.parse_events(arr)[0].data == b"ready"


@pytest.mark.parametrize(
    "content_obj,field",
    [
        ("text", "records[0].content"),
        ({"string": 5}, "records[0].content.string"),
        ({"string": "x", "eventType": 7}, "records[0].content.eventType"),
        ({"string": "x", "eventType": ""}, "records[0].content.eventType"),
        ({"string": "x", "bootId": "nothex"}, "records[0].content.bootId"),
        ({"string": "x", "timestamp": -1}, "records[0].content.timestamp"),
        ({"string": "x", "timestamp": 1.5}, "records[0].content.timestamp"),
        ({"string": "x", "nvIndexName": 3}, "records[0].content.nvIndexName"),
    ],
)
def test_bad_content_members(content_obj, field: str) -> None:
    log = b"\x1e" + json.dumps({"pcr": 1, "digests": [], "content_type": "systemd",
                                "content": content_obj}).encode() + b"\n"
    with pytest.raises(ParseError) as ei:
        systemd.parse(log)
    assert ei.value.format == "systemd" and ei.value.field == field


def test_record_cut_short_is_a_parse_error() -> None:
    log = tpm2_measure_log()
    with pytest.raises(ParseError) as ei:
        systemd.parse(log[:-40])
    assert ei.value.field == "records[6]"


# -- AAEL v2 ------------------------------------------------------------------------------------------

# guest-components test vectors (reference/tsm-mr-abi.md §5.3): H(tagged event of "domain operation content")
VECTORS = {
    HashAlg.SHA256: "46df8dacf00a07d34a83cdf56d7978697790787cf2ba1432ef7c38f22cd96351",
    HashAlg.SHA384: "dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440fb00f3aa0609db7e49cd8d793f670d02",
    HashAlg.SHA512: "b708d222ca8bd44dfe6ba0c4ca2cbb72379276fba8091025217064be45a813e5d6124ccf073219edb617d1faf"
                    "007d55061465bdf34b7437dbdc9a7405bd4e9c0",
}


def test_aael_vectors_and_layout() -> None:
    data = aael.encode_tagged("domain", "operation", "content")
    assert data[:8] == bytes.fromhex("4c454141") + (24).to_bytes(4, "little")
    assert data[8:] == b"domain operation content"
    for alg, hexd in VECTORS.items():
        assert aael.digest("domain", "operation", "content", alg).hex() == hexd
    entry = aael.decode_tagged(data)
    assert entry == aael.AAELEntry("domain", "operation", "content")
    assert entry.content_json is None and entry.text == "domain operation content"


def test_aael_json_content_and_spaces() -> None:
    e = aael.decode_tagged(aael.encode_tagged("github.com/confidential-containers", "PullImage",
                                              '{"digest":"sha256:ab","image":"alpine"}'))
    assert e.content_json == {"digest": "sha256:ab", "image": "alpine"}
    e = aael.decode_tagged(aael.encode_tagged("d", "op", "a b  c"))
    assert e.content == "a b  c" and e.content_json is None
    assert aael.decode_tagged(aael.encode_tagged("d", "op", "")).content == ""
    for scalar in ("1.0", "null", '"s"', "[1", '{"a":1,"a":2}'):
        assert aael.decode_tagged(aael.encode_tagged("d", "op", scalar)).content_json is None
    assert aael.decode_tagged(aael.encode_tagged("d", "op", "[1, 2]")).content_json == [1, 2]


@pytest.mark.parametrize(
    "data,field",
    [
        (b"", "TCG_PCClientTaggedEvent"),
        (bytes.fromhex("4c454141") + b"\x00\x00", "TCG_PCClientTaggedEvent"),
        (bytes.fromhex("ec223b8f0d000000") + b"Linux initrd\x00", "taggedEventID"),
        (bytes.fromhex("4c45414105000000") + b"a b c d", "taggedEventDataSize"),
        (bytes.fromhex("4c45414109000000") + b"a b c", "taggedEventDataSize"),
        (bytes.fromhex("4c454141ffffffff"), "taggedEventDataSize"),
        (bytes.fromhex("4c45414105000000") + b"a b \xff", "taggedEventData"),
        (bytes.fromhex("4c45414103000000") + b"a b", "taggedEventData"),
        (bytes.fromhex("4c45414104000000") + b" a b", "taggedEventData"),
        (bytes.fromhex("4c45414104000000") + b"a  b", "taggedEventData"),
        (bytes.fromhex("4c45414105000000") + b"a b\nc", "taggedEventData"),
        (bytes.fromhex("4c45414106000000") + b"a\tb c ", "taggedEventData"),
    ],
)
def test_aael_malformed(data: bytes, field: str) -> None:
    with pytest.raises(ParseError) as ei:
        aael.decode_tagged(data)
    assert ei.value.format == "aael" and ei.value.field == field


def test_aael_encoder_refuses_bad_text() -> None:
    for args in (("", "op", "c"), ("d d", "op", "c"), ("d", "o p", "c"), ("d", "op", "c\nx")):
        with pytest.raises(InputError):
            aael.encode_tagged(*args)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1).filter(lambda s: not any(c.isspace() for c in s)),
       st.text(min_size=1).filter(lambda s: not any(c.isspace() for c in s)),
       st.text().filter(lambda s: "\n" not in s and "\r" not in s))
def test_aael_round_trip(domain: str, operation: str, content_text: str) -> None:
    try:
        data = aael.encode_tagged(domain, operation, content_text)
    except UnicodeEncodeError:  # lone surrogates cannot be written as UTF-8
        return
    e = aael.decode_tagged(data)
    assert (e.domain, e.operation, e.content) == (domain, operation, content_text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_aael_decode_is_total(tail: bytes) -> None:
    for data in (tail, bytes.fromhex("4c454141") + tail):
        try:
            aael.decode_tagged(data)
        except ParseError:
            pass


def test_is_aael_and_to_events_on_synthetic_log() -> None:
    evs = [aael.make_tcg2_event("example.com/app", "deploy", '{"image":"x"}'),
           tcg2.TCG2Event(4, tcg2.EV_EVENT_TAG, ((int(HashAlg.SHA384), bytes(48)),),
                          bytes.fromhex("ec223b8f0d000000") + b"Linux initrd\x00"),
           aael.make_tcg2_event("d", "op", "c", index=3)]
    assert [aael.is_aael(e) for e in evs] == [True, False, True]
    out = aael.to_events(evs)
    assert [e.seq for e in out] == [0, 2] and [e.register for e in out] == ["rtmr3", "rtmr2"]
    assert out[0].type == "aael" and out[0].data_rule == DATA
    assert out[0].details == {"domain": "example.com/app", "operation": "deploy", "content": {"image": "x"}}
    assert out[0].summary == 'example.com/app deploy {"image":"x"}'
    assert all(e.check(HashAlg.SHA384) for e in out)
    assert aael.is_aael(out[0])
    assert aael.to_events(evs[:1], index_kind="pcr")[0].register == "pcr4"
    log = tcg2.parse(tcg2.encode_log(evs, [HashAlg.SHA384]))
    assert aael.entries(log.events) == [aael.AAELEntry("example.com/app", "deploy", '{"image":"x"}'),
                                        aael.AAELEntry("d", "op", "c")]


# -- the Alibaba Cloud CCEL with AAEL events (trustee deps/eventlog/test_data) --------------------------


@pytest.fixture
def alibaba(fixtures):
    path = fixtures / "trustee/eventlog/CCEL_AAEL_alibabacloud"
    base = path.parent
    out = json.loads((base / "CCEL_AAEL_alibabacloud_out.json").read_text())["uefi_event_logs"]
    replay = json.loads((fixtures / "COMPUTED_REPLAY.json").read_text())["trustee/eventlog/CCEL_AAEL_alibabacloud"]
    return tcg2.parse(path.read_bytes()), out, replay


def test_alibaba_aael_entries_match_trustee(alibaba) -> None:
    log, out, _ = alibaba
    assert len(log.events) == len(out) == 87
    theirs = [(i, o) for i, o in enumerate(out) if o["details"].get("unicode_name") == "AAEL"]
    ours = aael.to_events(log.events)
    assert [e.seq for e in ours] == [i for i, _ in theirs] and len(ours) == 2
    for ev, (i, o) in zip(ours, theirs):
        assert base64.b64decode(o["event"]) == ev.data == log.events[i].data
        assert o["index"] == ev.index == 4 and ev.register == "rtmr3"
        assert ev.details == o["details"]["data"]  # domain, operation, content (JSON when it is JSON)
        assert ev.summary == o["details"]["string"]
        assert ev.digest(HashAlg.SHA384).hex() == o["digests"][0]["digest"]
        # the digest rule: H(whole tagged event data), as trustee's digest_matches_event says
        assert ev.check(HashAlg.SHA384) is o["digest_matches_event"] is True
        assert hashlib.sha384(ev.data[8:]).digest() != ev.digest(HashAlg.SHA384)  # not H(text)


def test_alibaba_rtmr3_replay(alibaba) -> None:
    log, _, replay = alibaba
    regs = tcg2_values(log, arch="tdx")
    for n in range(4):
        assert regs[n + 1][HashAlg.SHA384].hex() == replay["rtmrs"][f"RTMR{n}"]
    # RTMR3 again, with the AAEL digests recomputed from the event data instead of read from the log
    aael_seqs = {e.seq: e for e in aael.to_events(log.events)}
    value = HashAlg.SHA384.zero()
    for i, ev in enumerate(log.events):
        if ev.index != 4 or ev.event_type == tcg2.EV_NO_ACTION:
            continue
        d = HashAlg.SHA384.hash(aael_seqs[i].data) if i in aael_seqs else ev.digest(HashAlg.SHA384)
        value = HashAlg.SHA384.extend(value, d)
    assert value.hex() == replay["rtmrs"]["RTMR3"]
