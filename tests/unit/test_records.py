"""Record rules of spec/runtime-log.md section 2 and RFC 8785 canonical JSON."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsmr import HashAlg
from tsmr.errors import ParseError
from tsmr.runtime_log.records import (
    Kind,
    RecordError,
    canonical_json,
    check_record,
    classify,
    event,
    extend_line,
    split_event,
    sync_line,
)


@pytest.mark.parametrize("code", list(range(0x20)) + [0x7F])
def test_every_forbidden_character_is_refused(code: int) -> None:
    with pytest.raises(RecordError, match=r"control character U\+%04X at character 3 \(rule: no C0 controls or DEL\)" % code):
        check_record("abc" + chr(code) + "def")


# Section 2.1: characters a terminal acts on instead of showing, one test per class and its edges.
HIDDEN = [
    (0x80, "C1 control character U+0080"),
    (0x85, "C1 control character U+0085 NEXT LINE (NEL)"),
    (0x9B, "C1 control character U+009B CONTROL SEQUENCE INTRODUCER (CSI)"),
    (0x9F, "C1 control character U+009F"),
    (0x2028, "line or paragraph separator U+2028 LINE SEPARATOR"),
    (0x2029, "line or paragraph separator U+2029 PARAGRAPH SEPARATOR"),
    (0x200E, "bidirectional control character U+200E LEFT-TO-RIGHT MARK"),
    (0x200F, "bidirectional control character U+200F RIGHT-TO-LEFT MARK"),
    (0x202A, "bidirectional control character U+202A LEFT-TO-RIGHT EMBEDDING"),
    (0x202E, "bidirectional control character U+202E RIGHT-TO-LEFT OVERRIDE"),
    (0x2066, "bidirectional control character U+2066 LEFT-TO-RIGHT ISOLATE"),
    (0x2069, "bidirectional control character U+2069 POP DIRECTIONAL ISOLATE"),
]


@pytest.mark.parametrize("code,named", HIDDEN)
def test_hidden_characters_are_refused_naming_character_and_position(code: int, named: str) -> None:
    with pytest.raises(RecordError) as info:
        check_record("example.com/app déjà " + chr(code) + "x")
    assert str(info.value) == (f"invalid record: {named} at character 21 "
                               "(rule: no C1, line separator or bidirectional controls)")
    assert info.value.position == 21
    with pytest.raises(RecordError):
        event("example.com/app", "deploy", {"name": "a" + chr(code)})  # JSON content is checked too
    hidden = {c for c, _ in HIDDEN} | {*range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    for near in (code - 1, code + 1):  # the ranges end where the spec says
        if near not in hidden and near != 0x7F:
            assert check_record("a" + chr(near) + "b") == ("a" + chr(near) + "b").encode()


@pytest.mark.parametrize("code,named", HIDDEN)
def test_readers_keep_and_flag_hidden_characters(code: int, named: str) -> None:
    from tsmr.runtime_log.replay import replay

    record = ("example.com/app x" + chr(code) + "y").encode()
    line = classify(record, lineno=2)
    assert line.kind is Kind.EVENT and line.raw == record and line.hidden == ((17, code),)
    assert classify(b"example.com/app plain").hidden == ()
    sync = b"SYNC sha256/" + b"0" * 64
    report = replay(sync + b"\n" + record + b"\n" + b"example.com/app ok\n" + record + record + b"\n")
    state = bytes(32)
    for raw in (sync, record, b"example.com/app ok", record + record):  # hashed as they are
        state = hashlib.sha256(state + hashlib.sha256(raw).digest()).digest()
    assert report.values()[HashAlg.SHA256] == state
    assert report.hidden_lines == (2, 4) and report.hidden_count == 2
    assert any(s.startswith("register: lines 2, 4 hold characters a writer must refuse") for s in report.explain())


def test_the_byte_scan_finds_exactly_the_hidden_characters() -> None:
    from tsmr.runtime_log.records import HIDDEN_BYTES, HIDDEN_CODEPOINTS, hidden_characters

    for code in range(0x20, 0x3000):
        raw = chr(code).encode()
        assert bool(HIDDEN_BYTES.fullmatch(raw)) == (code in HIDDEN_CODEPOINTS) == bool(hidden_characters(chr(code))), hex(code)


def test_hidden_lines_are_found_across_chunks_and_counted_past_the_list() -> None:
    from tsmr.runtime_log.replay import MAX_HIDDEN_LINES, Replayer

    r = Replayer()
    data = b"SYNC sha256/" + b"0" * 64 + b"\n" + ("a \u202eb\n" * (MAX_HIDDEN_LINES + 5)).encode()
    for i in range(0, len(data), 7):  # chunks that cut lines and characters
        r.feed(data[i:i + 7])
    report = r.finish()
    assert report.hidden_lines == tuple(range(2, MAX_HIDDEN_LINES + 2)) and report.hidden_count == MAX_HIDDEN_LINES + 5


@pytest.mark.parametrize(
    "text,rule",
    [
        ("", "empty"),
        (" lead", "no leading or trailing space"),
        ("trail ", "no leading or trailing space"),
        ("# comment", "event, not comment"),
        ("SYNC sha384/00", "reserved prefix"),
        ("INIT sha384/00", "reserved prefix"),
        ("SYNC", "reserved prefix"),
        ("x" * 65537, "length"),
        ("bad \udc80 surrogate", "UTF-8"),
    ],
)
def test_rules(text: str, rule: str) -> None:
    with pytest.raises(RecordError) as info:
        check_record(text)
    assert info.value.rule == rule
    assert "invalid record" in str(info.value)


def test_accepted_records_are_bytes_as_is() -> None:
    assert check_record("x" * 65536) == b"x" * 65536
    assert check_record("déjà vu — ok") == "déjà vu — ok".encode()
    assert check_record("a  b") == b"a  b"  # inner spaces are part of the record
    assert check_record("SYNCHRONIZE x") == b"SYNCHRONIZE x"  # only 'SYNC ' is reserved


def test_event_grammar() -> None:
    assert event("example.com/app", "deploy", {"image": "alpine", "a": 1}) == 'example.com/app deploy {"a":1,"image":"alpine"}'
    assert event("d", "op") == "d op"
    assert event("d", "op", "raw content") == "d op raw content"
    for bad in (("", "op"), ("a b", "op"), ("d", ""), ("d", "o\tp")):
        with pytest.raises(RecordError, match="event grammar"):
            event(*bad)
    assert split_event('example.com/app deploy {"a": 1}') == ("example.com/app", "deploy", '{"a": 1}')
    assert split_event("x") is None


def test_sync_and_extend_lines_order_banks() -> None:
    vals = {HashAlg.SHA384: bytes(48), HashAlg.SHA256: b"\xab" * 32}
    assert sync_line(vals) == b"SYNC sha256/" + b"ab" * 32 + b" sha384/" + b"00" * 48
    assert extend_line({HashAlg.SHA1: bytes(20)}) == b"# .EXTEND sha1/" + b"00" * 20


@pytest.mark.parametrize(
    "line,kind",
    [(b"", Kind.BLANK), (b"# hi", Kind.COMMENT), (b"#", Kind.COMMENT), (b"a b", Kind.EVENT),
     (b"SYNC sha256/" + b"0" * 64, Kind.SYNC), (b"INIT sha256/" + b"0" * 64, Kind.SYNC),
     (b"# .EXTEND sha256/" + b"0" * 64, Kind.EXTEND), (b"#.EXTEND x", Kind.COMMENT)],
)
def test_classify(line: bytes, kind: Kind) -> None:
    assert classify(line).kind is kind
    assert kind.hashed == (kind in (Kind.SYNC, Kind.EVENT, Kind.EXTEND))


@pytest.mark.parametrize(
    "line,message",
    [
        (b"SYNC sha256/" + b"0" * 63, "64 lowercase hex digits"),
        (b"SYNC sha256/" + b"A" * 64, "64 lowercase hex digits"),
        (b"SYNC sha256/" + b"g" * 64, "not hexadecimal"),
        (b"SYNC md5/" + b"0" * 32, "unknown hash algorithm"),
        (b"SYNC sha256", "is not ALG/HEX"),
        (b"SYNC sha384/" + b"0" * 96 + b" sha256/" + b"0" * 64, "ascending algorithm id order"),
        (b"SYNC sha256/" + b"0" * 64 + b" sha256/" + b"0" * 64, "ascending algorithm id order"),
        (b"INIT sha256/" + b"0" * 64 + b" sha384/" + b"0" * 96, "exactly one bank"),
        (b"SYNC", "without values"),
        (b"# .EXTEND sha256/00", ".EXTEND value"),
        (b" lead", "begins or ends with a space"),
        (b"a\rb", "control character 0x0d"),
    ],
)
def test_malformed_lines(line: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        classify(line, lineno=7)


# RFC 8785 Appendix B: IEEE-754 doubles and their canonical text.
@pytest.mark.parametrize(
    "bits,text",
    [
        (0x0000000000000000, "0"), (0x8000000000000000, "0"), (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"), (0x7FEFFFFFFFFFFFFF, "1.7976931348623157e+308"),
        (0xFFEFFFFFFFFFFFFF, "-1.7976931348623157e+308"), (0x4340000000000000, "9007199254740992"),
        (0xC340000000000000, "-9007199254740992"), (0x4430000000000000, "295147905179352830000"),
        (0x44B52D02C7E14AF5, "9.999999999999997e+22"), (0x44B52D02C7E14AF6, "1e+23"),
        (0x44B52D02C7E14AF7, "1.0000000000000001e+23"), (0x444B1AE4D6E2EF4E, "999999999999999700000"),
        (0x444B1AE4D6E2EF4F, "999999999999999900000"), (0x444B1AE4D6E2EF50, "1e+21"),
        (0x3EB0C6F7A0B5ED8C, "9.999999999999997e-7"), (0x3EB0C6F7A0B5ED8D, "0.000001"),
        (0x41B3DE4355555553, "333333333.3333332"), (0x41B3DE4355555554, "333333333.33333325"),
        (0x41B3DE4355555555, "333333333.3333333"), (0x41B3DE4355555556, "333333333.3333334"),
        (0x41B3DE4355555557, "333333333.33333343"), (0xBECBF647612F3696, "-0.0000033333333333333333"),
        (0x43143FF3C1CB0959, "1424953923781206.2"),
    ],
)
def test_jcs_numbers(bits: int, text: str) -> None:
    (x,) = struct.unpack(">d", bits.to_bytes(8, "big"))
    assert canonical_json(x) == text


def test_jcs_rfc_example() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    assert canonical_json(value) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_jcs_key_order_is_utf16() -> None:
    # U+1F600 (surrogates D83D DE00) sorts before U+FB01 in UTF-16, after it in code points.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2, "a": 3}) == '{"a":3,"\U0001f600":2,"\ufb01":1}'


def test_jcs_big_integers() -> None:
    assert canonical_json(2**53) == "9007199254740992"
    assert canonical_json(10**21) == "1e+21"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**53 + 1, 10**400, {1: 2}, object()])
def test_jcs_refuses(bad: object) -> None:
    with pytest.raises(Exception) as info:
        canonical_json(bad)
    assert "JSON" in str(info.value) or "double" in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_jcs_is_json_and_round_trips(value: object) -> None:
    text = canonical_json(value)
    # parse numbers as a JSON (ECMAScript) reader does: every number is a double
    back = json.loads(text, parse_int=lambda s: int(s) if abs(int(s)) <= 2**53 else float(s))
    assert canonical_json(back) == text  # idempotent: parse then canonicalise gives the same bytes
