"""Continuing a runtime log's replay from a checkpoint is the same as replaying the whole log.

For random logs (event records, SYNC and INIT records that do and do not agree with the register,
``# .EXTEND`` directives, comments, blank lines, characters a reader keeps but a writer refuses,
AAEL logs without a final LF) cut at random line boundaries into several tails, each fed in random
chunks, the chain of :func:`continue_replay` calls must give exactly what the existing full replays
give: :func:`tsmr.runtime_log.replay.replay` (bank values, statuses, anchors, gaps, line and record
counts, the last line matching the signed value), :func:`tsmr.eventlog.runtime_log_events` (the
events) and :func:`tsmr.replay.replay` (register values and gaps, ``history_missing`` included).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsmr import HashAlg, eventlog
from tsmr.errors import ParseError
from tsmr.replay import replay as unified_replay
from tsmr.runtime_log.checkpoint import Checkpoint, TailClaim, chain, continue_replay
from tsmr.runtime_log.records import extend_line, sync_line
from tsmr.runtime_log.replay import replay as log_replay

S256, S384 = HashAlg.SHA256, HashAlg.SHA384
REG = "rtmr3"
EVENT_TEXT = st.text(alphabet="ab xyz{}\"\u00e9\u202e\u0085:/", min_size=1, max_size=12).map(str.strip).filter(
    lambda t: bool(t) and not t.startswith(("#", "SYNC", "INIT")))
BANK_SETS = [(S384,), (S256,), (S256, S384)]


@st.composite
def logs(draw: st.DrawFn) -> tuple[bytes, dict[HashAlg, bytes]]:
    """A log and the launch values it is replayed from ({} or zero in both banks).

    Sync records declare either the register's current value (as an honest writer does) or
    another one (a gap); the current value is tracked with a few lines of fold here, used only
    to choose what to declare, never as an expected result.
    """
    launch = draw(st.booleans())
    initial = {S256: bytes(32), S384: bytes(48)} if launch else {}
    state: dict[HashAlg, bytes | None] = dict(initial) if launch else {S256: None, S384: None}
    lines: list[bytes] = []
    aael = draw(st.integers(0, 5)) == 0
    if aael:
        v = state[S384] if state[S384] is not None and draw(st.booleans()) else draw(st.sampled_from([bytes(48), b"\x07" * 48]))
        lines.append(b"INIT sha384/" + v.hex().encode())
        state[S384] = v
        state[S384] = hashlib.sha384(v + hashlib.sha384(lines[-1]).digest()).digest()
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["event", "event", "event", "sync", "comment", "blank", "extend"]))
        if kind == "event":
            raw = draw(EVENT_TEXT).encode()
        elif kind == "sync":
            banks = draw(st.sampled_from(BANK_SETS))
            honest = draw(st.booleans())
            decl = {}
            for a in banks:
                cur = state[a]
                decl[a] = cur if honest and cur is not None else draw(st.sampled_from([a.zero(), b"\x05" * a.digest_size]))
                state[a] = decl[a]
            raw = sync_line(decl)
        elif kind == "extend":
            banks = draw(st.sampled_from(BANK_SETS))
            values = {a: bytes([draw(st.integers(0, 255))]) * a.digest_size for a in banks}
            raw = extend_line(values)
            for a, d in values.items():
                cur = state[a]
                if cur is not None:
                    state[a] = a.extend(cur, d)
            lines.append(raw)
            continue
        elif kind == "comment":
            raw = b"# note " + draw(EVENT_TEXT).encode()
        else:
            raw = b""
        if kind in ("event", "sync"):
            for a in (S256, S384):
                cur = state[a]
                if cur is not None:
                    state[a] = a.hash(cur + a.hash(raw))
        lines.append(raw)
    data = b"".join(line + b"\n" for line in lines)
    if aael and data and draw(st.booleans()):
        data = data[:-1]  # a CoCo AAEL v1 writer leaves its last line open
    return data, initial


def _cuts(data: bytes, picks: list[int]) -> list[bytes]:
    """``data`` cut at the line boundaries ``picks`` selects (indices into the boundaries)."""
    bounds = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A]
    chosen = sorted({bounds[p % len(bounds)] for p in picks} | {0})
    return [data[a:b] for a, b in zip(chosen, chosen[1:] + [len(data)])]


def _chunks(part: bytes, size: int) -> list[bytes]:
    return [part[i:i + size] for i in range(0, len(part), size)] or [b""]


def _continue_all(parts: list[bytes], initial: dict[HashAlg, bytes], expected: dict[HashAlg, bytes] | None,
                  size: int, resend: int = 0) -> tuple[Checkpoint, list, list, object]:
    """Continue part after part; with ``resend``, each tail starts some lines before the checkpoint
    (the sender lost its place and sends verified lines again)."""
    cp = Checkpoint.start(REG, initial=initial)
    events: list = []
    gaps: list = []
    seen = b""
    report = None
    for part in parts:
        cp = Checkpoint.from_json(cp.to_json())  # what a verifier stores and reads back
        assert cp.claim() == TailClaim.of_prefix(seen) if seen else cp.claim() == TailClaim(0, 0, bytes(32))
        bounds = [0] + [i + 1 for i, b in enumerate(seen) if b == 0x0A]
        back = bounds[-1 - resend % len(bounds)] if resend else len(seen)
        claim = TailClaim.of_prefix(seen[:back]) if back else TailClaim(0, 0, bytes(32))
        c = continue_replay(cp, _chunks(seen[back:] + part, size), claim=claim, expected=expected)
        events += c.events or ()
        gaps += c.gaps
        report = c.report
        cp = c.checkpoint
        seen += part
    return cp, events, gaps, report


def _gap_key(g: object) -> tuple:
    return (g.alg, g.replayed, g.declared, g.seq, g.history_missing)  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(logs(), st.lists(st.integers(0, 40), max_size=4), st.integers(1, 40), st.integers(0, 20), st.integers(0, 5))
def test_continuing_from_any_split_equals_the_full_replay(log: tuple[bytes, dict[HashAlg, bytes]], picks: list[int],
                                                          size: int, signed_at: int, resend: int) -> None:
    data, initial = log
    aael = data.startswith(b"INIT ")
    # The signed value: what the log replays to after some line (the quote may predate later records).
    bounds = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A]
    head = data[: bounds[signed_at % len(bounds)]]
    expected = log_replay(head, initial=initial).values() or None

    full = log_replay(data, initial=initial, expected=expected, accept_unterminated=aael)
    full_events = eventlog.runtime_log_events(data, register=REG)
    # The way a verifier that knows the launch values calls it: those banks, from those values.
    unified = unified_replay(full_events, initial={REG: initial} if initial else None, launch=bool(initial),
                             banks=sorted(initial) if initial else None)

    parts = _cuts(data, picks)
    cp, events, gaps, report = _continue_all(parts, initial, expected, size, resend)
    assert report is not None
    # Register values, line and record counts, anchors, statuses.
    assert cp.banks == {a: b.value for a, b in full.banks.items()}
    assert (cp.lines, cp.records, cp.last_record_line) == (full.lines, full.records, full.last_record_line)
    assert {a: (b.status, b.anchor_line or 0) for a, b in report.banks.items()} == {
        a: (b.status, b.anchor_line or 0) for a, b in full.banks.items()}
    assert cp.offset == len(data) and cp.open == (bool(data) and not data.endswith(b"\n"))
    # The last line the signed value covers, as far as the last tail can see it.
    last_cp_record = _continue_all(parts[:-1], initial, None, size)[0].last_record_line if len(parts) > 1 else 0
    for a, b in full.banks.items():
        want = b.last_matching_line if b.last_matching_line is not None and b.last_matching_line >= last_cp_record else None
        assert report.banks[a].last_matching_line == want
    # Gaps, and the same ones the unified fold finds (with history_missing).
    assert [(g.alg, g.replayed, g.declared, g.seq) for g in gaps] == [(g.alg, g.replayed, g.declared, g.line) for g in full.gaps]
    assert list(map(_gap_key, gaps)) == list(map(_gap_key, unified.gaps))
    assert cp.gaps == len(full.gaps)
    # Events: the same objects, in the same order.
    assert events == full_events
    # (a register no record extends is reported by the unified fold as absent: it holds its start value)
    assert cp.values() == unified.registers.get(REG, {} if unified.counts.get(REG) else initial)
    # The running digest commits to every line's bytes.
    closed = data + b"\n" if cp.open else data
    assert cp.digest == chain(bytes(32), closed)


@settings(max_examples=150, deadline=None)
@given(logs(), st.lists(st.text(alphabet="ab c", min_size=1, max_size=5).map(str.strip).filter(bool), min_size=1, max_size=4))
def test_an_open_aael_line_is_closed_by_the_next_tail(log: tuple[bytes, dict[HashAlg, bytes]], more: list[str]) -> None:
    data, initial = log
    if not data.startswith(b"INIT ") or data.endswith(b"\n"):
        return
    grown = data + b"\n" + b"\n".join(m.encode() for m in more)
    cp = continue_replay(Checkpoint.start(REG, initial=initial), data).checkpoint
    assert cp.open and cp.claim() == TailClaim.of_prefix(data)
    c = continue_replay(cp, grown[len(data):], claim=cp.claim())
    full = log_replay(grown, initial=initial, accept_unterminated=True)
    assert c.checkpoint.banks == {a: b.value for a, b in full.banks.items()}
    assert list(c.events or ()) == eventlog.runtime_log_events(grown, register=REG)[cp.records:]
    # Sent again from the start: the same; the unchanged log sent again: nothing new.
    zero = TailClaim(0, 0, bytes(32))
    again = continue_replay(cp, grown, claim=zero)
    assert again.checkpoint == c.checkpoint and again.events == c.events
    assert continue_replay(cp, data, claim=zero).checkpoint == cp


FAULTS = [b"\x01", b"\r", b"\xff", b"\xc3", b" lead", b"SYNC sha384/zz", b"SYNC", b"# .EXTEND sha1/00"]


@settings(max_examples=150, deadline=None)
@given(logs(), st.sampled_from(FAULTS), st.integers(0, 40), st.lists(st.integers(0, 40), max_size=3))
def test_a_fault_anywhere_is_an_error_in_whichever_part_holds_it(log: tuple[bytes, dict[HashAlg, bytes]], fault: bytes,
                                                                  where: int, picks: list[int]) -> None:
    data, initial = log
    if not data.endswith(b"\n"):
        data += b"\n"
    bounds = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A]
    at = bounds[where % len(bounds)]
    bad = data[:at] + fault + b"\n" + data[at:]
    with pytest.raises(ParseError):
        log_replay(bad, initial=initial)
    with pytest.raises(ParseError):
        _continue_all(_cuts(bad, picks), initial, None, 7)
