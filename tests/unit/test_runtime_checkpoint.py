"""Replay checkpoints of runtime logs: real logs (trustee's AAEL data and quote, logs the writer keeps
against an emulated TDX register set), tails that do not extend what was verified, restarts, and
checkpoints read from hostile JSON."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from tsmr import HashAlg, InputError
from tsmr.backends.emulated import EmulatedRegisterSet
from tsmr.errors import ParseError
from tsmr.eventlog import runtime_log_events
from tsmr.runtime_log.checkpoint import (
    NOT_EXTENDED,
    Checkpoint,
    NotExtended,
    TailClaim,
    check_extends,
    continue_replay,
    needs_full_replay,
)
from tsmr.runtime_log.replay import replay as log_replay
from tsmr.runtime_log.store import RuntimeLog

H = HashAlg.SHA384
ZERO = {H: bytes(48)}


def _rtmr3_of(quote: bytes) -> bytes:
    from tsmr.evidence import tdx

    return tdx.parse_quote(quote).body.rtmr3


def test_trustee_aael_logs_continue_to_the_upstream_values(fixtures: Path) -> None:
    """AAEL_data_2 is AAEL_data_3 before its last record (both without a final LF): continuing from
    the first gives the second's upstream value, and the spec's vector for the first."""
    d = fixtures / "trustee/aael"
    two, three = (d / "AAEL_data_2").read_bytes(), (d / "AAEL_data_3").read_bytes()
    assert three.startswith(two) and not two.endswith(b"\n")
    first = continue_replay(Checkpoint.start("rtmr3", initial=ZERO), two)
    cp = first.checkpoint
    assert cp.banks[H].hex() == ("31fa17881137923029b1da5b368e92d8b22b14bbb4deaa360da61fce7aa530bd"
                                 "2f4c59ac7bd27021ef64104ff4dd04f9")  # spec section 6 / trustee aael_integrity_check
    assert cp.open and cp.aael and cp.lines == 2 and cp.offset == len(two) and cp.declared_start == ZERO
    claim = TailClaim.of_prefix(three[: len(two)])
    second = continue_replay(Checkpoint.from_json(json.loads(json.dumps(cp.to_json()))), three[len(two):], claim=claim)
    assert second.checkpoint.banks[H].hex().startswith("0de62b45")  # trustee's expected value (MANIFEST)
    assert [e.seq for e in second.events or ()] == [3]
    assert (second.events or ())[0] == runtime_log_events(three, register="rtmr3")[2]
    # The tail must bring the LF that closes the open line: a changed last line is not an extension.
    with pytest.raises(NotExtended, match="line 2 had no LF"):
        continue_replay(cp, b" tampered\nx y\n")


def test_trustee_aael_quote_signs_what_the_checkpoint_replays(fixtures: Path) -> None:
    d = fixtures / "trustee/aael"
    rtmr3 = _rtmr3_of((d / "AAEL_quote_tdx").read_bytes())
    log = (d / "AAEL_data_1").read_bytes()
    head = log[: log.index(b"\n") + 1]
    cp = continue_replay(Checkpoint.start("rtmr3", initial=ZERO), head).checkpoint
    c = continue_replay(cp, log[len(head):], claim=TailClaim.of_prefix(head), expected={H: rtmr3})
    assert c.report.banks[H].status == "matched" and c.report.banks[H].last_matching_line == 2
    assert c.checkpoint.banks[H] == rtmr3
    assert needs_full_replay(c.checkpoint, {H: rtmr3}) is None


@pytest.fixture
def writer(rs: EmulatedRegisterSet, tmp_path: Path) -> Any:
    lg = RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs")
    yield lg
    lg.close()


def test_a_log_the_writer_keeps_is_followed_tail_by_tail(writer: RuntimeLog, rs: EmulatedRegisterSet) -> None:
    """Tails of a real log (an unlogged extend in between, so a gap) replay to the register's value."""
    writer.append_many([f"example.com/app step {i}" for i in range(5)])
    cp = Checkpoint.start("rtmr3", initial=ZERO, boot_id="boot-a")
    seen = 0
    for round_ in range(3):
        if round_ == 1:
            rs.extend("rtmr3", {H: b"\x01" * 48})  # nobody logs it: the next append writes a sync record
        writer.append_many([f"example.com/app round {round_} {i}" for i in range(3)])
        data = writer.path.read_bytes()
        signed = rs.read("rtmr3")[H]
        assert needs_full_replay(cp, {H: signed}, boot_id="boot-a") is None
        c = continue_replay(cp, data[seen:], claim=TailClaim.of_prefix(data[:seen]), expected={H: signed})
        assert c.report.banks[H].status == "matched"
        assert c.events == tuple(runtime_log_events(data, register="rtmr3")[cp.records:])
        assert [g.line for g in c.gaps] == ([1 + 5 + 3 + 1] if round_ == 1 else [])  # sync, 5 steps, round 0, sync
        cp, seen = c.checkpoint, len(data)
    full = log_replay(writer.path.read_bytes(), initial=ZERO)
    assert cp.banks == {H: full.banks[H].value} and cp.gaps == 1 and cp.records == full.records
    # A reboot: the register is back at zero, or the node reports another boot.
    rs.reset()
    assert "back at its launch value" in str(needs_full_replay(cp, rs.read("rtmr3")))
    assert "new boot identity boot-b" in str(needs_full_replay(cp, {H: full.banks[H].value}, boot_id="boot-b"))


def _log(*lines: bytes) -> bytes:
    return b"".join(line + b"\n" for line in lines)


SYNC0 = b"SYNC sha384/" + b"00" * 48
LOG = _log(SYNC0, b"example.com/a one", b"# a comment", b"example.com/a two")


def test_tails_that_do_not_extend_what_was_verified() -> None:
    cp = continue_replay(Checkpoint.start("rtmr3", initial=ZERO), LOG).checkpoint
    tail = _log(b"example.com/a three")
    continue_replay(cp, tail, claim=TailClaim.of_prefix(LOG))  # the honest one
    cases: list[tuple[bytes, str]] = [
        (LOG.replace(b"one", b"uno"), "not the lines verified"),  # a record rewritten, same length
        (LOG.replace(b"# a comment", b"# a c0mment"), "not the lines verified"),  # even a comment
        (LOG + _log(b"example.com/a extra"), "never sent"),  # the sender skips a line
        (LOG.replace(b"one", b"one!"), "changed length"),
    ]
    for prefix, reason in cases:
        with pytest.raises(NotExtended, match=reason) as info:
            continue_replay(cp, tail, claim=TailClaim.of_prefix(prefix))
        assert info.value.finding == NOT_EXTENDED and str(info.value).startswith("log.not-extended: ")
    with pytest.raises(NotExtended, match="not the lines verified"):
        check_extends(cp, TailClaim(cp.lines, cp.offset, b"\x00" * 32))
    with pytest.raises(NotExtended, match="shorter than what was verified"):
        check_extends(cp, TailClaim(cp.lines - 1, cp.offset + 5, cp.digest))


def test_a_sender_that_lost_its_place_sends_verified_lines_again() -> None:
    """A tail may start before the checkpoint: the lines sent again must chain to its digest."""
    cp = continue_replay(Checkpoint.start("rtmr3", initial=ZERO), LOG).checkpoint
    tail = _log(b"example.com/a three")
    want = continue_replay(cp, tail, claim=cp.claim())
    again = continue_replay(cp, LOG + tail, claim=TailClaim(0, 0, bytes(32)))
    assert again.checkpoint == want.checkpoint and again.events == want.events
    first = LOG[: LOG.index(b"\n") + 1]
    assert continue_replay(cp, [LOG[len(first):], tail], claim=TailClaim.of_prefix(first)).checkpoint == want.checkpoint
    removed = _log(SYNC0, b"example.com/a one", b"example.com/a two")  # a line removed, the rest sent again
    with pytest.raises(NotExtended, match="sent again, are not the lines verified"):
        continue_replay(cp, removed + tail + tail, claim=TailClaim(0, 0, bytes(32)))
    with pytest.raises(NotExtended, match="sent again, are not the lines verified"):  # same length, one record rewritten
        continue_replay(cp, LOG.replace(b"one", b"uno") + tail, claim=TailClaim(0, 0, bytes(32)))
    with pytest.raises(NotExtended, match="ends before line 4"):
        continue_replay(cp, LOG[: -len(b"example.com/a two\n")], claim=TailClaim(0, 0, bytes(32)))


def test_restarts_and_what_is_not_one() -> None:
    start = Checkpoint.start("rtmr3", initial=ZERO)
    assert needs_full_replay(start, ZERO) is None  # nothing verified yet: continuing is a full replay
    cp = continue_replay(start, LOG).checkpoint
    assert needs_full_replay(cp, {H: cp.banks[H] or b""}) is None
    assert needs_full_replay(cp, {H: b"\x09" * 48}) is None  # a mismatch, judged by the replay, not a restart
    assert "reset" in str(needs_full_replay(cp, ZERO))
    assert needs_full_replay(cp, {H: b"\x00" * 48}, boot_id="b1") is not None
    # Without launch values, the first sync record's declared value is the launch value.
    bare = continue_replay(Checkpoint.start("rtmr3"), LOG).checkpoint
    assert bare.declared_start == ZERO and bare.initial == {}
    assert "launch value" in str(needs_full_replay(bare, ZERO))


def test_a_gap_in_the_tail_and_history_missing_at_the_first_record() -> None:
    other = b"SYNC sha384/" + b"11" * 48
    c = continue_replay(Checkpoint.start("rtmr3", initial=ZERO), _log(b"# header", other, b"example.com/a x"))
    assert [(g.line, g.history_missing, g.declared) for g in c.gaps] == [(2, True, b"\x11" * 48)]
    c2 = continue_replay(c.checkpoint, _log(b"example.com/a y", other))
    assert [(g.line, g.history_missing) for g in c2.gaps] == [(5, False)] and c2.checkpoint.gaps == 2


def test_errors_in_a_tail_name_the_whole_logs_line() -> None:
    cp = continue_replay(Checkpoint.start("rtmr3", initial=ZERO), LOG).checkpoint
    with pytest.raises(ParseError, match="line 6"):
        continue_replay(cp, _log(b"example.com/a ok", b"bad\x01line"))
    with pytest.raises(ParseError, match="truncated"):
        continue_replay(cp, b"example.com/a no lf")
    with pytest.raises(ParseError, match="longer than"):
        continue_replay(cp, [b"x" * 40000, b"y" * 40000], events=False)


# -- hostile JSON -----------------------------------------------------------------------------

def _good() -> dict[str, Any]:
    return continue_replay(Checkpoint.start("rtmr3", initial=ZERO, boot_id="b1"), LOG).checkpoint.to_json()


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            obj = obj[p]
        obj[last] = value
    return apply


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj.pop(key)


HOSTILE: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown key", _set("extra", 1), "unknown keys"),
    ("missing key", _drop("digest"), "missing keys"),
    ("version", _set("version", 2), "version"),
    ("version bool", _set("version", True), "version"),
    ("register type", _set("register", 3), "register"),
    ("register name", _set("register", "../etc"), "register"),
    ("bank unknown", _set("banks.md5", "00" * 16), "unknown bank"),
    ("bank alias", _set("banks", {"SHA-384": "00" * 48}), "unknown bank"),
    ("bank short", _set("banks.sha384", "00" * 47), "96 lowercase hex"),
    ("bank upper", _set("banks.sha384", "AB" * 48), "96 lowercase hex"),
    ("bank type", _set("banks.sha384", 5), "96 lowercase hex"),
    ("banks list", _set("banks", ["sha384"]), "object of banks"),
    ("initial unknown", _set("initial.sha384", None), "96 lowercase hex"),
    ("lines bool", _set("lines", True), "non-negative integer"),
    ("lines negative", _set("lines", -1), "non-negative integer"),
    ("lines float", _set("lines", 4.0), "non-negative integer"),
    ("offset huge", _set("offset", 2**64), "non-negative integer"),
    ("digest short", _set("digest", "00"), "64 lowercase hex"),
    ("event banks order", _set("event_banks", ["sha384", "sha256"]), "unknown bank|ascending"),
    ("event banks repeated", _set("event_banks", ["sha384", "sha384"]), "once"),
    ("event banks type", _set("event_banks", "sha384"), "list"),
    ("aael type", _set("aael", 1), "true or false"),
    ("boot id", _set("boot_id", "a b"), "boot_id"),
    ("boot id type", _set("boot_id", 7), "boot_id"),
    ("records > lines", _set("records", 99), "disagree"),
    ("offset < lines", _set("offset", 2), "offset"),
    ("anchor for unknown bank", _set("anchors.sha256", 0), "anchors"),
    ("unknown initial bank", _set("banks.sha384", None), "cannot be unknown|anchors"),
    ("open without aael", _set("open", True), "open"),
    ("many gaps", _set("gaps", 1000), "gaps"),
    ("not an object", lambda obj: obj.clear(), "missing keys"),
]


@pytest.mark.parametrize("name,mutate,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_checkpoints_are_refused(name: str, mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    obj = _good()
    assert Checkpoint.from_json(copy.deepcopy(obj)).to_json() == obj
    mutate(obj)
    with pytest.raises(InputError, match=message):
        Checkpoint.from_json(json.loads(json.dumps(obj)))


@pytest.mark.parametrize("obj", [None, [], "x", 1, {"from_line": 1, "from_offset": 1}, {"from_line": True, "from_offset": 1, "digest": "00" * 32},
                                 {"from_line": 1, "from_offset": 1, "digest": "00" * 31}, {"from_line": 1, "from_offset": 1, "digest": "00" * 32, "x": 1}])
def test_hostile_tail_claims_are_refused(obj: Any) -> None:
    with pytest.raises(InputError):
        TailClaim.from_json(obj)


def test_tail_claim_round_trip_and_prefix_rules() -> None:
    c = TailClaim.of_prefix(LOG)
    assert TailClaim.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert c.lines == 4 and c.offset == len(LOG)
    # The chain is SHA-256 over each line with its LF, from 32 zero bytes (independently computed here).
    d = bytes(32)
    for line in LOG.split(b"\n")[:-1]:
        d = hashlib.sha256(d + line + b"\n").digest()
    assert c.digest == d
    with pytest.raises(InputError, match="end in LF"):
        TailClaim.of_prefix(b"example.com/a half")


@pytest.mark.parametrize("obj", [None, [], "checkpoint", 3])
def test_a_checkpoint_is_an_object(obj: Any) -> None:
    with pytest.raises(InputError, match="JSON object"):
        Checkpoint.from_json(obj)
