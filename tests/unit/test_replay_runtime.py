"""Replay and verification of runtime logs (spec/runtime-log.md section 3)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsmr import HashAlg
from tsmr.errors import InputError, ParseError
from tsmr.runtime_log.records import extend_line, sync_line
from tsmr.runtime_log.replay import MATCHED, MISMATCHED, REPLAYED, UNANCHORED, Replayer, replay

S = HashAlg.SHA256


def chain(start: bytes, lines: list[bytes]) -> bytes:
    for line in lines:
        start = hashlib.sha256(start + hashlib.sha256(line).digest()).digest()
    return start


def log(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def test_unanchored_without_sync_or_initial() -> None:
    r = replay(log(b"a b", b"c d"), algs=[S])
    assert r.banks[S].status == UNANCHORED and r.banks[S].value is None
    assert "unanchored" in r.explain("rtmr3")[0] and not r.ok


def test_initial_value_anchors() -> None:
    init = b"\x01" * 32
    r = replay(log(b"a b"), initial={S: init})
    assert r.banks[S].value == chain(init, [b"a b"]) and r.banks[S].anchor_line == 0 and r.banks[S].status == REPLAYED


def test_events_before_the_first_sync_do_not_count() -> None:
    s = sync_line({S: bytes(32)})
    r = replay(log(b"early event", s, b"x y"))
    assert r.banks[S].value == chain(bytes(32), [s, b"x y"]) and r.banks[S].anchor_line == 2


def test_comments_and_blank_lines_are_not_hashed() -> None:
    s = sync_line({S: bytes(32)})
    r = replay(log(s, b"", b"# a comment", b"#", b"x y"))
    assert r.banks[S].value == chain(bytes(32), [s, b"x y"]) and r.records == 2 and r.lines == 5


def test_extend_directive_and_gap() -> None:
    s = sync_line({S: bytes(32)})
    d = b"\x07" * 32
    value = chain(bytes(32), [s])
    value = hashlib.sha256(value + d).digest()
    # a later sync that declares another value: a gap at that line
    other = b"\x09" * 32
    s2 = sync_line({S: other})
    r = replay(log(s, extend_line({S: d}), s2, b"e f"), expected={S: chain(other, [s2, b"e f"])})
    assert r.banks[S].status == MATCHED
    assert [(g.line, g.replayed, g.declared) for g in r.gaps] == [(3, value, other)]
    assert not r.ok and "gap before line 3" in r.explain()[0]
    # a sync that agrees with the replayed state is no gap
    s3 = sync_line({S: value})
    assert not replay(log(s, extend_line({S: d}), s3)).gaps


def test_extend_directive_only_touches_listed_banks() -> None:
    s = sync_line({S: bytes(32), HashAlg.SHA384: bytes(48)})
    r = replay(log(s, extend_line({HashAlg.SHA384: b"\x01" * 48})))
    assert r.banks[S].value == chain(bytes(32), [s])


def test_a_log_may_begin_with_directives_anchored_by_a_later_sync_record() -> None:
    """Directives before the first sync record leave an unknown state unknown; the sync record anchors it."""
    d1, d2 = b"\x07" * 32, b"\x08" * 32
    register = hashlib.sha256(hashlib.sha256(b"\x05" * 32 + d1).digest() + d2).digest()  # whatever it held before
    s = sync_line({S: register})
    data = log(extend_line({S: d1}), extend_line({S: d2}), s, b"e f")
    r = replay(data, expected={S: chain(register, [s, b"e f"])})
    assert r.ok and r.banks[S].anchor_line == 3 and r.records == 4 and not r.gaps
    # directives alone prove nothing: the state stays unknown
    r = replay(log(extend_line({S: d1}), extend_line({S: d2})), algs=[S], expected={S: register})
    assert r.banks[S].status == UNANCHORED and r.banks[S].value is None and not r.gaps and not r.ok


def test_directives_before_the_first_sync_extend_a_known_initial_value() -> None:
    """A verifier that knows the launch value replays the directives into it: a sync record that then
    declares the register's value is no gap, one that declares another value is (history missing)."""
    d1 = b"\x07" * 32
    after = hashlib.sha256(bytes(32) + d1).digest()
    s = sync_line({S: after})
    r = replay(log(extend_line({S: d1}), s, b"e f"), initial={S: bytes(32)}, expected={S: chain(after, [s, b"e f"])})
    assert r.ok and not r.gaps and r.banks[S].anchor_line == 0
    s_other = sync_line({S: b"\x09" * 32})
    r = replay(log(extend_line({S: d1}), s_other), initial={S: bytes(32)})
    assert [(g.line, g.replayed) for g in r.gaps] == [(2, after)]


def test_mismatch_names_the_last_line_the_register_covers() -> None:
    s = sync_line({S: bytes(32)})
    lines = [s, b"a 1", b"a 2", b"a 3"]
    quoted = chain(bytes(32), lines[:3])  # quoted after line 3, log went on
    r = replay(log(*lines), expected={S: quoted})
    b = r.banks[S]
    assert b.status == MISMATCHED and b.last_matching_line == 3
    assert "equals the log up to line 3" in r.explain("rtmr3")[0]
    r = replay(log(*lines), expected={S: b"\x05" * 32})
    assert r.banks[S].last_matching_line is None and "no prefix" in r.explain()[0]


def test_matched_is_ok() -> None:
    s = sync_line({S: bytes(32)})
    r = replay(log(s, b"x y"), expected={S: chain(bytes(32), [s, b"x y"])})
    assert r.ok and r.matched and r.explain() == []
    j = r.to_json("pcr16")
    assert j["ok"] is True and j["banks"]["sha256"]["status"] == "matched"  # type: ignore[index]


@given(st.lists(st.text(alphabet="abc xyz{}\"é", min_size=1, max_size=20).map(str.strip).filter(bool), max_size=20), st.integers(1, 50))
def test_chunking_does_not_matter(events: list[str], size: int) -> None:
    data = log(sync_line({S: bytes(32)}), *[e.encode() for e in events])
    whole = replay(data)
    r = Replayer()
    for i in range(0, len(data), size):
        r.feed(data[i : i + size])
    assert r.finish().banks == whole.banks


@pytest.mark.parametrize(
    "data,message",
    [
        (b"SYNC sha256/" + b"0" * 64 + b"\nno newline at end", "partial line"),
        (b"SYNC sha256/" + b"0" * 64 + b"\r\nx\r\n", "CRLF"),
        (b"SYNC sha256/" + b"0" * 64 + b"\n\xff\xfe\n", "not UTF-8"),
        (b"SYNC sha256/" + b"0" * 64 + b"\nnul\x00byte\n", "control character 0x00"),
        (b"SYNC sha256/" + b"0" * 64 + b"\ntrailing \n", "begins or ends with a space"),
        (b"SYNC sha256/" + b"0" * 10 + b"\n", "64 lowercase hex"),
        (b"x" * 70000, "longer than 65536"),
    ],
)
def test_corrupt_logs_are_errors(data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message) as info:
        replay(data)
    assert info.value.format == "tsmr-log"


def test_error_names_the_line() -> None:
    with pytest.raises(ParseError) as info:
        replay(log(sync_line({S: bytes(32)}), b"ok", b"ok", b"bad\x01"))
    assert info.value.field == "line 4"


def test_bad_initial_or_expected_sizes() -> None:
    with pytest.raises(InputError, match="32 bytes"):
        Replayer(initial={S: b"\0"})
    with pytest.raises(InputError, match="32 bytes"):
        Replayer(expected={S: b"\0" * 48})
