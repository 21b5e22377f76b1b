"""tsmr.formats.cel: CEL-JSON arrays and RFC 7464 sequences, systemd's logs, round trips, totality."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsmr import HashAlg, InputError, ParseError
from tsmr.eventlog import parse
from tsmr.formats import cel
from tsmr.replay import replay
from tsmr.formats.cel import CELRecord

H256 = {w: hashlib.sha256(w.encode()).hexdigest() for w in ("enter-initrd", "leave-initrd", "sysinit", "ready")}

# What systemd-pcrextend appends to /run/log/systemd/tpm2-measure.log (no recnum; RS ... LF).
SYSTEMD_LOG = b"".join(
    b"\x1e" + json.dumps(
        {"pcr": 11, "digests": [{"hashAlg": "sha256", "digest": H256[w]}], "content_type": "systemd",
         "content": {"string": w, "eventType": "phase", "bootId": "0f3c" * 8, "timestamp": 4182731 + i}},
        separators=(",", ":"),
    ).encode() + b"\n"
    for i, w in enumerate(("enter-initrd", "leave-initrd", "sysinit", "ready"))
)


def test_systemd_sequence_known_answer() -> None:
    records = cel.parse_json(SYSTEMD_LOG)
    assert [r.recnum for r in records] == [0, 1, 2, 3]  # no recnum in the log: positions
    assert [(r.index_type, r.index, r.content_type) for r in records] == [("pcr", 11, "systemd")] * 4
    assert records[0].content == {"string": "enter-initrd", "eventType": "phase", "bootId": "0f3c" * 8,
                                  "timestamp": 4182731}
    assert records[2].digest(HashAlg.SHA256) == bytes.fromhex(H256["sysinit"])
    value = bytes(32)
    for w in ("enter-initrd", "leave-initrd", "sysinit", "ready"):
        value = hashlib.sha256(value + hashlib.sha256(w.encode()).digest()).digest()
    assert replay(parse(SYSTEMD_LOG, "cel-json").events).registers == {"pcr11": {HashAlg.SHA256: value}}


def test_cc_measure_log_with_rtmr_and_mapped_pcr() -> None:
    d = hashlib.sha384(b"x").hexdigest().upper()  # hex is read case-insensitively
    line = ('\x1e{"rtmr":2,"mapped_pcr":9,"digests":[{"hashAlg":"SHA384","digest":"%s"}],'
            '"content_type":"systemd","content":{"string":"x"}}\n' % d).encode()
    (rec,) = cel.parse_json(line)
    assert (rec.index_type, rec.index, rec.extra) == ("rtmr", 2, {"mapped_pcr": 9})
    assert rec.digests == ((HashAlg.SHA384, hashlib.sha384(b"x").digest()),)
    out = cel.encode_json([rec], seq=True, recnum=False)
    assert out == ('\x1e{"rtmr":2,"digests":[{"hashAlg":"sha384","digest":"%s"}],"content_type":"systemd",'
                   '"content":{"string":"x"},"mapped_pcr":9}\n' % d.lower()).encode()
    assert cel.parse_json(out) == (rec,)


TSMR_RECORD = CELRecord(
    recnum=7, index_type="rtmr", index=3,
    digests=((HashAlg.SHA384, hashlib.sha384(b'example.com/app deploy {"image":"alpine"}').digest()),),
    content_type="tsmr", content={"record": 'example.com/app deploy {"image":"alpine"}'},
)


def test_encode_array_layout() -> None:
    other = CELRecord(8, "pcr", 16, ((HashAlg.SHA256, b"\xab" * 32),), "tsmr", {"record": "b"})
    out = cel.encode_json([TSMR_RECORD, other])
    d384 = TSMR_RECORD.digests[0][1].hex()
    assert out == (
        '[\n'
        '{"recnum":7,"rtmr":3,"digests":[{"hashAlg":"sha384","digest":"%s"}],"content_type":"tsmr",'
        '"content":{"record":"example.com/app deploy {\\"image\\":\\"alpine\\"}"}},\n'
        '{"recnum":8,"pcr":16,"digests":[{"hashAlg":"sha256","digest":"%s"}],"content_type":"tsmr",'
        '"content":{"record":"b"}}\n'
        ']\n' % (d384, "ab" * 32)
    ).encode()
    assert cel.encode_json([]) == b"[]\n"
    assert cel.encode_json([], seq=True) == b""
    assert cel.parse_json(out) == (TSMR_RECORD, other)


def test_encode_seq_layout() -> None:
    out = cel.encode_json([TSMR_RECORD], seq=True)
    assert out.startswith(b'\x1e{"recnum":7,"rtmr":3,') and out.endswith(b"}\n") and out.count(b"\x1e") == 1
    assert cel.parse_json(out) == (TSMR_RECORD,)


def test_records_are_hashable_and_names_round_trip() -> None:
    assert hash(TSMR_RECORD) == hash(cel.parse_json(cel.encode_json([TSMR_RECORD]))[0])
    for alg in HashAlg:
        assert cel.hash_alg_from_name(cel.hash_alg_name(alg).upper()) is alg
    assert cel.hash_alg_name(HashAlg.SHA384) == "sha384" and cel.hash_alg_name(HashAlg.SM3_256) == "sm3_256"


@pytest.mark.parametrize("data", [b"", b"  \n", b"[]", b" [ ] \n", b"\x1e\n\x1e \n"])
def test_empty_logs(data: bytes) -> None:
    assert cel.parse_json(data) == ()


def _rec(**kw: object) -> dict:
    base: dict = {"recnum": 0, "pcr": 1, "digests": [{"hashAlg": "sha256", "digest": "00" * 32}],
                  "content_type": "systemd", "content": {}}
    for k, v in kw.items():
        if v is ...:
            base.pop(k)
        else:
            base[k] = v
    return base


@pytest.mark.parametrize(
    "obj,field",
    [
        (5, "records[0]"),
        (_rec(recnum=-1), "recnum"),
        (_rec(recnum=True), "recnum"),
        (_rec(recnum="1"), "recnum"),
        (_rec(pcr=...), "records[0]"),
        (_rec(rtmr=1), "rtmr"),
        (_rec(pcr=...,nv_index=1), "nv_index"),
        (_rec(pcr=-1), "pcr"),
        (_rec(pcr=1 << 32), "pcr"),
        (_rec(pcr=1.0), "pcr"),
        (_rec(digests=...), "digests"),
        (_rec(digests={}), "digests"),
        (_rec(digests=[{"hashAlg": "sha256", "digest": "00" * 32}] * 17), "digests"),
        (_rec(digests=["00"]), "digests[0]"),
        (_rec(digests=[{"hashAlg": "md5", "digest": "00" * 16}]), "digests[0].hashAlg"),
        (_rec(digests=[{"hashAlg": 11, "digest": "00" * 32}]), "digests[0].hashAlg"),
        (_rec(digests=[{"hashAlg": "sha256", "digest": "00" * 31}]), "digests[0].digest"),
        (_rec(digests=[{"hashAlg": "sha256", "digest": "0" * 63}]), "digests[0].digest"),
        (_rec(digests=[{"hashAlg": "sha256", "digest": "zz" * 32}]), "digests[0].digest"),
        (_rec(digests=[{"hashAlg": "sha256", "digest": " 0" * 32}]), "digests[0].digest"),
        (_rec(digests=[{"hashAlg": "sha256"}]), "digests[0].digest"),
        (_rec(digests=[{"hashAlg": "sha256", "digest": "00" * 32}, {"hashAlg": "SHA256", "digest": "00" * 32}]),
         "digests[1].hashAlg"),
        (_rec(content_type=...), "content_type"),
        (_rec(content_type=3), "content_type"),
        (_rec(content=...), "content"),
    ],
)
def test_bad_records(obj: object, field: str) -> None:
    for data in (json.dumps([obj]).encode(), b"\x1e" + json.dumps(obj).encode() + b"\n"):
        with pytest.raises(ParseError) as ei:
            cel.parse_json(data)
        assert ei.value.format == "cel-json"
        assert ei.value.field is not None and ei.value.field.startswith("records[0]")
        assert ei.value.field.endswith(field)


@pytest.mark.parametrize(
    "data,offset",
    [
        (b"{}", 0),
        (b"  42", 2),
        (b"[{]", 2),
        (b'[{"a":1,"a":2}]', 0),
        (b"[NaN]", 0),
        (b"[1e99999]", 0),  # would decode to inf
        (b"[" * 100_000, 0),
        (b"[\xff]", 1),
        (b"[1] [2]", 4),
        (SYSTEMD_LOG[:-10], None),  # the last record cut short (writer still appending)
        (SYSTEMD_LOG + b"\x1e{\"pcr\":", None),
    ],
)
def test_invalid_input(data: bytes, offset: int | None) -> None:
    with pytest.raises(ParseError) as ei:
        cel.parse_json(data)
    assert ei.value.format == "cel-json"
    if offset is not None:
        assert ei.value.offset == offset


def test_truncated_sequence_names_the_record() -> None:
    with pytest.raises(ParseError, match="record 3") as ei:
        cel.parse_json(SYSTEMD_LOG[:-10])
    assert ei.value.offset is not None and ei.value.offset > SYSTEMD_LOG.rindex(b"\x1e")


@pytest.mark.parametrize(
    "rec",
    [
        CELRecord(-1, "pcr", 1, (), "x", None),
        CELRecord(0, "nv_index", 1, (), "x", None),
        CELRecord(0, "pcr", 1 << 32, (), "x", None),
        CELRecord(0, "pcr", 1, ((HashAlg.SHA256, b"short"),), "x", None),
        CELRecord(0, "pcr", 1, ((HashAlg.SHA256, bytes(32)),) * 2, "x", None),
        CELRecord(0, "pcr", 1, (), "x", {"f": float("nan")}),
        CELRecord(0, "pcr", 1, (), "x", object()),
        CELRecord(0, "pcr", 1, (), "x", None, {"digests": 1}),
    ],
)
def test_encode_rejects_bad_records(rec: CELRecord) -> None:
    with pytest.raises(InputError):
        cel.encode_json([rec])


# -- Hypothesis ----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def records(draw: st.DrawFn) -> CELRecord:
    algs = draw(st.lists(st.sampled_from(list(HashAlg)), max_size=4, unique=True))
    extra = draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in cel._RESERVED), json_values,
                                 max_size=2))
    return CELRecord(
        recnum=draw(st.integers(0, 2**64)),
        index_type=draw(st.sampled_from(cel.INDEX_TYPES)),
        index=draw(st.integers(0, 0xFFFFFFFF)),
        digests=tuple((a, draw(st.binary(min_size=a.digest_size, max_size=a.digest_size))) for a in algs),
        content_type=draw(st.text(max_size=12)),
        content=draw(json_values),
        extra=extra,
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(records(), max_size=5), st.booleans())
def test_round_trip(recs: list[CELRecord], seq: bool) -> None:
    data = cel.encode_json(recs, seq=seq)
    assert cel.parse_json(data) == tuple(recs)
    renumbered = cel.parse_json(cel.encode_json(recs, seq=seq, recnum=False))
    assert [r.recnum for r in renumbered] == list(range(len(recs)))


def _only_parse_errors(data: bytes) -> None:
    try:
        recs = cel.parse_json(data)
    except ParseError:
        return
    replay(parse(data, "cel-json").events)
    assert cel.parse_json(cel.encode_json(recs)) == recs


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    _only_parse_errors(data)
    _only_parse_errors(b"\x1e" + data)
    _only_parse_errors(b"[" + data)


@settings(max_examples=200, deadline=None)
@given(st.lists(records(), min_size=1, max_size=3), st.booleans(), st.data())
def test_mutated_logs_only_raise_parse_error(recs: list[CELRecord], seq: bool, data: st.DataObject) -> None:
    blob = bytearray(cel.encode_json(recs, seq=seq))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        if kind == "flip":
            blob[pos] = data.draw(st.sampled_from(b'0aF"{}[],:\\\x1e\n -1e.x\xff\xc3'))
        elif kind == "truncate":
            del blob[pos:]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        if not blob:
            break
    _only_parse_errors(bytes(blob))


# -- real data -----------------------------------------------------------------------------------------


def test_real_cel_tlv_is_not_cel_json(fixtures: Path) -> None:
    # go-tpm-tools/cel/cel.b64 is CEL-TLV (base64 text, MANIFEST.md); TLV is not read by this module,
    # and feeding it here must fail cleanly rather than crash.
    path = fixtures / "go-tpm-tools/cel/cel.b64"
    with pytest.raises(ParseError, match="JSON array or an RFC 7464"):
        cel.parse_json(path.read_bytes())
