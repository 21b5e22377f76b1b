"""CEL-TLV reader/writer (tsmr.formats.cel_tlv): known answers, the Confidential Space capture, round trips."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsmr.algorithms import HashAlg
from tsmr.errors import InputError, ParseError
from tsmr.events import DATA
from tsmr.formats import cel_tlv
from tsmr.replay import replay
from tsmr.formats.cel_tlv import CELTLVRecord


def tlv(t: int, value: bytes) -> bytes:
    """A TLV as the spec lays it out, written independently of the module under test."""
    return bytes([t]) + struct.pack(">I", len(value)) + value


def cos_bytes(recnum: int, cos_type: int, payload: bytes) -> tuple[bytes, bytes]:
    """A go-tpm-tools style COS record (8-byte recnum, CC MR 4, SHA-384) and its content TLV."""
    content = tlv(80, tlv(cos_type, payload))
    digest = hashlib.sha384(content).digest()
    rec = tlv(0, recnum.to_bytes(8, "big")) + tlv(108, b"\x04") + tlv(3, tlv(0x0C, digest)) + content
    return rec, content


# -- known answers -------------------------------------------------------------------------------------


def test_cos_record_known_answer() -> None:
    raw, content = cos_bytes(7, 4, b"--flag")
    assert raw[:5] == bytes.fromhex("0000000008")  # recnum TLV head: type 0, length 8
    (rec,) = cel_tlv.parse_tlv(raw)
    assert rec == CELTLVRecord(7, cel_tlv.TYPE_CCMR, 4, ((0x0C, hashlib.sha384(content).digest()),), 80,
                               content[5:])
    assert rec.recnum_width == 8 and rec.index_width == 1 and rec.offset == 0
    assert rec.register == "rtmr3"
    assert rec.content_tlv == content
    assert cel_tlv.encode_tlv([rec]) == raw
    assert cel_tlv.cos_record(7, "arg", b"--flag") == rec
    assert cel_tlv.encode_tlv([cel_tlv.cos_record(7, "arg", b"--flag")]) == raw

    (ev,) = cel_tlv.to_events([rec])
    assert (ev.source, ev.seq, ev.index, ev.register, ev.type) == ("cel", 0, 4, "rtmr3", "cos:arg")
    assert ev.data == content and ev.data_rule == DATA and ev.measured
    assert ev.check(HashAlg.SHA384) is True
    assert ev.digest(HashAlg.SHA256) == hashlib.sha256(content).digest()  # derivable bank
    assert ev.summary == "arg --flag"
    assert ev.details["cos_type"] == "arg" and ev.details["value"] == "--flag" and ev.details["recnum"] == 7


def test_libcel_minimal_integers_and_pcr_index() -> None:
    # libcel writes integers in as few bytes as they need: recnum 1234 -> 00 00000002 04d2.
    d1 = bytes(range(20))
    d256 = bytes(range(32))
    content = tlv(5, tlv(0, b"\x04") + tlv(1, b"\x00\x00\x00\x00"))  # PCClient STD: EV_SEPARATOR
    raw = tlv(0, bytes.fromhex("04d2")) + tlv(1, b"\x07") + tlv(3, tlv(4, d1) + tlv(0x0B, d256)) + content
    assert raw[:7] == bytes.fromhex("000000000204d2")
    (rec,) = cel_tlv.parse_tlv(raw)
    assert (rec.recnum, rec.index_type, rec.index, rec.recnum_width) == (1234, cel_tlv.TYPE_PCR, 7, 2)
    assert rec.digests == ((4, d1), (0x0B, d256))
    assert cel_tlv.encode_tlv([rec]) == raw  # widths survive the round trip
    (ev,) = cel_tlv.to_events([rec])
    assert ev.register == "pcr7" and ev.type == "pcclient:EV_SEPARATOR"
    assert ev.data == b"\x00\x00\x00\x00" and ev.data_rule is None and ev.measured
    assert [a for a, _ in ev.digests] == [HashAlg.SHA1, HashAlg.SHA256]


def test_management_pcclient_ima_and_unknown_contents() -> None:
    version = tlv(4, tlv(1, tlv(0, b"\x01") + tlv(1, b"\x00")))  # cel_version 1.0
    fw_end = tlv(4, tlv(2, b""))
    trans = tlv(4, tlv(0x81, b"\x02"))  # whooo/eventlogs numbering: 0x81 = state_trans, 2 = kexec
    stamp = tlv(4, tlv(80, (1700000000).to_bytes(8, "big")))  # libcel numbering: 80 = cel_timestamp
    no_action = tlv(5, tlv(0, b"\x03") + tlv(1, b"Spec ID Event03\x00"))
    tdata = bytes(40)
    ima = tlv(7, tlv(0, b"ima-ng") + tlv(1, tdata))
    other = tlv(200, b"opaque")
    log = b""
    for i, content in enumerate((version, fw_end, trans, stamp, no_action, ima, other)):
        log += tlv(0, bytes([i])) + tlv(1, b"\x0a") + tlv(3, b"") + content
    recs = cel_tlv.parse_tlv(log)
    assert cel_tlv.encode_tlv(recs) == log
    evs = cel_tlv.to_events(recs)
    assert [e.type for e in evs] == ["cel:cel_version", "cel:firmware_end", "cel:state_trans",
                                     "cel:cel_timestamp", "pcclient:EV_NO_ACTION", "ima:ima-ng",
                                     "cel:content_200"]
    assert evs[0].details["items"] == [{"type": "cel_version", "major": 1, "minor": 0}]
    assert evs[0].summary == "cel_version 1.0"
    assert evs[2].details["items"][0]["value"] == "kexec"
    assert evs[3].details["items"][0]["value"] == 1700000000
    assert evs[4].measured is False  # EV_NO_ACTION is never extended
    assert evs[5].data == tdata and evs[5].data_rule == DATA
    assert evs[6].data == b"opaque" and evs[6].details["raw"] == b"opaque".hex()
    assert all(e.digests == () for e in evs)


def test_nv_index_and_high_ccmr_registers() -> None:
    raw = tlv(0, b"\x00") + tlv(2, bytes.fromhex("01d10200")) + tlv(3, b"") + tlv(80, tlv(8, b""))
    raw += tlv(0, b"\x01") + tlv(108, b"\x00") + tlv(3, b"") + tlv(80, tlv(8, b""))
    raw += tlv(0, b"\x02") + tlv(108, b"\x09") + tlv(3, b"") + tlv(80, tlv(8, b""))
    assert [r.register for r in cel_tlv.parse_tlv(raw)] == ["nv0x01d10200", "mrtd", "ccmr9"]


def test_empty_log() -> None:
    assert cel_tlv.parse_tlv(b"") == ()
    assert cel_tlv.encode_tlv([]) == b""


GOOD, _ = cos_bytes(0, 0, b"image")


@pytest.mark.parametrize(
    "raw,field",
    [
        (GOOD[:3], "records[0].recnum"),  # truncated TLV head
        (GOOD[:-1], "records[0].content"),  # value runs past the end
        (tlv(1, b"\x01") + GOOD[13:], "records[0].recnum"),  # record not starting with recnum
        (tlv(0, bytes(9)) + GOOD[13:], "records[0].recnum"),  # recnum wider than 8 bytes
        (tlv(0, b"") + GOOD[13:], "records[0].recnum"),  # empty recnum
        (GOOD[:13] + tlv(9, b"\x04") + GOOD[19:], "records[0].index"),  # unknown index type
        (GOOD[:13] + tlv(1, bytes(5)) + GOOD[19:], "records[0].pcr"),  # index wider than 4 bytes
        (GOOD[:19] + tlv(3, tlv(0x0C, bytes(47))) + GOOD[19 + 58:], "records[0].digests[0]"),
        (GOOD[:19] + tlv(3, tlv(0x0C, bytes(48)) * 2) + GOOD[19 + 58:], "records[0].digests[1]"),
        (GOOD[:19] + tlv(3, tlv(0x0C, bytes(48))[:-1]) + GOOD[19 + 58:], "records[0].digests[0]"),
        (GOOD[:19] + tlv(3, tlv(0x77, b"")) + GOOD[19 + 58:], "records[0].digests[0]"),  # empty unknown
        (GOOD[:19] + tlv(3, tlv(0x77, b"x") * 17) + GOOD[19 + 58:], "records[0].digests"),  # > MAX_DIGESTS
        (GOOD[:19] + tlv(4, b"") + GOOD[19 + 58:], "records[0].digests"),  # wrong type where digests go
        (GOOD[:77] + tlv(3, b""), "records[0].content"),  # a field type where the content goes
        (GOOD[:77] + tlv(80, tlv(0, b"x") + b"!"), "records[0].content.cos"),  # bytes after the COS TLV
        (GOOD[:77] + tlv(80, b"\x00\x00"), "records[0].content"),  # COS content shorter than a TLV
        (GOOD[:77] + tlv(4, b""), "records[0].content"),  # empty management content
        (GOOD[:77] + tlv(4, tlv(2, b"x")), "records[0].content[0]"),  # firmware_end with a value
        (GOOD[:77] + tlv(4, tlv(1, tlv(0, b"\x01"))), "records[0].content[0]"),  # cel_version w/o minor
        (GOOD[:77] + tlv(4, tlv(9, b"")), "records[0].content[0]"),  # unknown management type
        (GOOD[:77] + tlv(5, tlv(0, b"\x04")), "records[0].content"),  # PCClient without event_data
        (GOOD[:77] + tlv(5, tlv(0, b"\x04") * 2), "records[0].content.event_type"),
        (GOOD[:77] + tlv(7, tlv(0, b"ima\x00") + tlv(1, b"")), "records[0].content.template_name"),
        (GOOD + GOOD[:20], "records[1].digests"),  # a second record cut short
    ],
)
def test_malformed_logs_raise_parse_error(raw: bytes, field: str) -> None:
    with pytest.raises(ParseError) as ei:
        cel_tlv.parse_tlv(raw)
    assert ei.value.format == "cel-tlv"
    assert ei.value.field == field
    assert ei.value.offset is not None and 0 <= ei.value.offset <= len(raw)


def test_length_limit_is_named() -> None:
    raw = bytes([0]) + struct.pack(">I", cel_tlv.MAX_VALUE_SIZE + 1)
    with pytest.raises(ParseError, match="MAX_VALUE_SIZE"):
        cel_tlv.parse_tlv(raw)


def test_non_bytes_input_is_an_input_error() -> None:
    with pytest.raises(InputError):
        cel_tlv.parse_tlv("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "rec",
    [
        CELTLVRecord(-1, 1, 0, (), 80, b"\x00\x00\x00\x00\x00"),
        CELTLVRecord(1 << 64, 1, 0, (), 80, b"\x00\x00\x00\x00\x00"),
        CELTLVRecord(0, 9, 0, (), 80, b"\x00\x00\x00\x00\x00"),
        CELTLVRecord(0, 1, 1 << 32, (), 80, b"\x00\x00\x00\x00\x00"),
        CELTLVRecord(0, 1, 300, (), 80, b"\x00\x00\x00\x00\x00", index_width=1),
        CELTLVRecord(0, 1, 0, ((0x0C, bytes(32)),), 80, b"\x00\x00\x00\x00\x00"),
        CELTLVRecord(0, 1, 0, ((0x0C, bytes(48)),) * 2, 80, b"\x00\x00\x00\x00\x00"),
        CELTLVRecord(0, 1, 0, ((0x1234, bytes(4)),), 80, b"\x00\x00\x00\x00\x00"),
        CELTLVRecord(0, 1, 0, (), 3, b""),
        CELTLVRecord(0, 1, 0, (), 80, b"not a tlv"),
    ],
)
def test_encoder_refuses_unwritable_records(rec: CELTLVRecord) -> None:
    with pytest.raises(InputError):
        cel_tlv.encode_tlv([rec])


# -- base64 wrapper ------------------------------------------------------------------------------------


def test_base64_detection() -> None:
    import base64

    raw, _ = cos_bytes(0, 2, b"Always")
    text = base64.b64encode(raw)
    wrapped = b"\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + b"\n"
    assert cel_tlv.looks_like_base64_cel(text)
    assert cel_tlv.looks_like_base64_cel(wrapped)
    assert cel_tlv.decode_base64(wrapped) == raw
    assert cel_tlv.decode_base64(wrapped.decode()) == raw
    assert not cel_tlv.looks_like_base64_cel(raw)  # raw TLV starts with 0x00
    assert not cel_tlv.looks_like_base64_cel(b'[{"pcr": 1}]')
    assert not cel_tlv.looks_like_base64_cel(base64.b64encode(b"\x01" * 12))
    with pytest.raises(ParseError):
        cel_tlv.decode_base64(b"AAAA*AAA")


# -- the Confidential Space capture (go-tpm-tools agent/testdata/cel.b64) ------------------------------


@pytest.fixture
def cel_fixture(fixtures):
    path = fixtures / "go-tpm-tools/cel/cel.b64"
    expected = json.loads((fixtures / "go-tpm-tools" / "cel" / "expected.json").read_text())
    return path.read_bytes(), expected["go-tpm-tools/cel/cel.b64"]


def test_fixture_decodes_replays_and_round_trips(cel_fixture) -> None:
    text, expected = cel_fixture
    assert cel_tlv.looks_like_base64_cel(text)
    raw = cel_tlv.decode_base64(text)
    recs = cel_tlv.parse_tlv(raw)
    assert len(recs) == expected["records"] == 18
    assert [r.recnum for r in recs] == list(range(18))
    assert {(r.index_type, r.index, r.content_type) for r in recs} == {(108, 4, 80)}
    assert all([a for a, _ in r.digests] == [int(HashAlg.SHA384)] for r in recs)
    assert cel_tlv.encode_tlv(recs) == raw

    evs = cel_tlv.to_events(recs)
    assert all(e.check(HashAlg.SHA384) is True for e in evs)  # digest = H(whole content TLV)
    assert [e.type for e in evs][:5] == ["cos:image_ref", "cos:image_digest", "cos:restart_policy",
                                         "cos:image_id", "cos:arg"]
    assert [e.type for e in evs][-3:] == ["cos:memory_monitor", "cos:gpu_cc_mode", "cos:launch_separator"]
    assert evs[2].details["value"] == "Never"
    assert evs[15].details["enabled"] is False
    assert evs[16].details["value"] == "ON"
    assert evs[0].details["value"].endswith("/gpu/cuda-vector-add:latest")

    value = HashAlg.SHA384.zero()
    for e in evs:
        value = HashAlg.SHA384.extend(value, e.digest(HashAlg.SHA384))
    assert value.hex() == expected["computed_register_value_from_zero"]
    assert replay(cel_tlv.to_events(recs)).registers == {"rtmr3": {HashAlg.SHA384: value}}


def test_fixture_mutations_are_total(cel_fixture) -> None:
    raw = cel_tlv.decode_base64(cel_fixture[0])
    for cut in range(0, len(raw), 37):
        _total(raw[:cut])
    for pos in range(0, len(raw), 11):
        for xor in (0x01, 0x80, 0xFF):
            b = bytearray(raw)
            b[pos] ^= xor
            _total(bytes(b))


# -- properties ----------------------------------------------------------------------------------------


def _total(data: bytes) -> None:
    try:
        recs = cel_tlv.parse_tlv(data)
    except ParseError:
        return
    assert cel_tlv.encode_tlv(recs) == data
    cel_tlv.to_events(recs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_are_total(data: bytes) -> None:
    _total(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 200), st.integers(0, 255))
def test_random_edits_of_a_valid_log_are_total(tail: bytes, pos: int, byte: int) -> None:
    b = bytearray(GOOD + GOOD)
    b[pos % len(b)] = byte
    _total(bytes(b) + tail)


_ALGS = st.sampled_from([HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512, HashAlg.SM3_256])


@st.composite
def records(draw) -> CELTLVRecord:
    algs = draw(st.lists(_ALGS, unique=True, max_size=4))
    digests = tuple((int(a), draw(st.binary(min_size=a.digest_size, max_size=a.digest_size))) for a in algs)
    kind = draw(st.sampled_from(["cos", "mgt", "pcclient", "ima", "raw"]))
    if kind == "cos":
        ctype, content = 80, cel_tlv.cos_content(draw(st.integers(0, 255)), draw(st.binary(max_size=40)))
    elif kind == "mgt":
        item = draw(st.sampled_from([tlv(2, b""), tlv(1, tlv(1, b"\x00") + tlv(0, b"\x01")),
                                     tlv(80, draw(st.binary(min_size=1, max_size=8)))]))
        ctype, content = 4, item
    elif kind == "pcclient":
        ctype, content = 5, tlv(0, draw(st.binary(min_size=1, max_size=4))) + tlv(1, draw(st.binary(max_size=40)))
    elif kind == "ima":
        name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)).encode()
        ctype, content = 7, tlv(0, name) + tlv(1, draw(st.binary(max_size=40)))
    else:
        ctype, content = draw(st.integers(9, 79)), draw(st.binary(max_size=40))
    recnum = draw(st.integers(0, (1 << 64) - 1))
    index_type = draw(st.sampled_from([1, 2, 108]))
    index = draw(st.integers(0, 0xFFFFFFFF))
    min_rw = max(1, (recnum.bit_length() + 7) // 8)
    rw = draw(st.one_of(st.none(), st.integers(min_rw, 8)))
    if rw is None and min_rw > 8:  # pragma: no cover - recnum < 2**64
        rw = 8
    return CELTLVRecord(recnum, index_type, index, digests, ctype, content, recnum_width=rw)


@settings(max_examples=200, deadline=None)
@given(st.lists(records(), max_size=6))
def test_round_trip(recs: list[CELTLVRecord]) -> None:
    data = cel_tlv.encode_tlv(recs)
    back = cel_tlv.parse_tlv(data)
    assert list(back) == recs
    assert cel_tlv.encode_tlv(back) == data
    assert len(cel_tlv.to_events(back)) == len(recs)
