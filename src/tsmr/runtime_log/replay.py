"""Replay and verification of a tsmr runtime log (spec/runtime-log.md section 3), pure.

Per bank the state is *unknown* until the first sync record, or an initial
value supplied by the verifier.  Then, line by line: blank lines and plain
comments do nothing; ``# .EXTEND`` extends the listed banks with the listed
bytes where the state is known, and leaves an unknown state unknown (a log
may begin with directives: the writer puts no sync record before them, and
the sync record before the next event anchors the state); a sync record
reports a *gap* if the state is known and differs from the declared value,
takes the declared value, and is then extended like an event; an event
extends every known bank with ``H(line)``.

:class:`Replayer` is incremental (``feed`` any chunks, then ``finish``), so a
log of millions of lines replays in memory bounded by one chunk and one line.
While replaying it remembers, per bank with an expected value, the last line
after which the state equalled that value: when the register was quoted
before the log grew, that line is where the quote stops.  It also lists the
lines holding characters a writer refuses but that are still well-delimited
lines (C1 controls, line separators, bidirectional controls): they are
replayed as hashed, and reported so that nobody trusts how they look.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from ..algorithms import HashAlg
from ..errors import InputError, ParseError
from ..findings import Gap, ReplayStatus
from ..registers import bank_label
from .records import EXTEND_PREFIX, FORMAT, HIDDEN_BYTES, INIT_PREFIX, MAX_RECORD_BYTES, Line, classify

MATCHED = ReplayStatus.MATCHED
MISMATCHED = ReplayStatus.MISMATCHED
UNANCHORED = ReplayStatus.UNANCHORED
REPLAYED = ReplayStatus.REPLAYED  # a state, but nothing to compare it with

_BAD = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")
# First bytes of lines that may be something other than a plain event.
_SPECIAL_FIRST = frozenset(b"#SI ")
# Every byte a log may hold (C0 controls and DEL are forbidden, LF separates lines).
_ALLOWED = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)) + b"\n"
MAX_HIDDEN_LINES = 100  # lines with hidden characters listed in a report; more are only counted


@dataclass(frozen=True, slots=True)
class BankResult:
    alg: HashAlg
    status: str
    value: bytes | None  # the replayed state at the end (None: unanchored)
    expected: bytes | None
    anchor_line: int | None  # 0: caller's initial value; n: first sync record
    last_matching_line: int | None  # last line after which the state equalled ``expected``


@dataclass(frozen=True)
class ReplayReport:
    banks: dict[HashAlg, BankResult]
    gaps: tuple[Gap, ...]
    lines: int
    records: int  # hashed lines: events, sync records, .EXTEND directives
    last_record_line: int
    # Lines holding characters a writer refuses but that hash as they are (C1, separators, bidi
    # controls): replayed, but what a terminal shows of them is not what was hashed.
    hidden_lines: tuple[int, ...] = ()
    hidden_count: int = 0

    @property
    def matched(self) -> bool:
        """Every bank has an expected value and ends equal to it."""
        return bool(self.banks) and all(b.status == MATCHED for b in self.banks.values())

    @property
    def ok(self) -> bool:
        return self.matched and not self.gaps

    def values(self) -> dict[HashAlg, bytes]:
        return {a: b.value for a, b in self.banks.items() if b.value is not None}

    def explain(self, register: str = "register") -> list[str]:
        """One sentence per finding, in the order a reader should act on them."""
        out: list[str] = []
        for b in self.banks.values():
            name = f"{register} {bank_label(b.alg)}"
            if b.status == UNANCHORED:
                out.append(f"{name}: unanchored: no sync record and no initial value, so the log proves nothing about it")
            elif b.status == MISMATCHED:
                assert b.value is not None and b.expected is not None
                s = f"{name}: mismatched: the log replays to {b.value.hex()} but the register holds {b.expected.hex()}"
                if b.last_matching_line is not None:
                    covered = b.last_matching_line
                    if covered < self.last_record_line:
                        s += f"; the register equals the log up to line {covered}, so the later records are not in it (the log is ahead of the register)"
                    else:
                        s += f"; the register matched at line {covered}"
                else:
                    s += "; no prefix of the log matches the register (it was extended with something not in the log)"
                out.append(s)
        if self.hidden_count:
            n = self.hidden_count
            lines = ", ".join(map(str, self.hidden_lines[:10])) + (f", ... ({n} in all)" if n > 10 else "")
            out.append(
                f"{register}: {'line' if n == 1 else 'lines'} {lines} {'holds' if n == 1 else 'hold'} characters a writer "
                "must refuse (C1 controls, line separators, bidirectional controls): hashed as they are, but a "
                "terminal may show them otherwise"
            )
        for g in self.gaps:
            out.append(
                f"{register} {bank_label(g.alg)}: gap before line {g.line}: the register changed without being logged (an unlogged extend, or a reset) "
                f"(log replayed to {g.replayed.hex()}, sync record declares {g.declared.hex()})"
            )
        return out

    def to_json(self, register: str | None = None) -> dict[str, object]:
        obj: dict[str, object] = {}
        if register is not None:
            obj["register"] = register
        obj.update(
            {
                "ok": self.ok,
                "lines": self.lines,
                "records": self.records,
                "banks": {
                    bank_label(a): {
                        "status": b.status,
                        "value": b.value.hex() if b.value is not None else None,
                        "expected": b.expected.hex() if b.expected is not None else None,
                        "anchor_line": b.anchor_line,
                        "last_matching_line": b.last_matching_line,
                    }
                    for a, b in self.banks.items()
                },
                "hidden_lines": list(self.hidden_lines),
                "gaps": [
                    {"line": g.line, "bank": bank_label(g.alg), "replayed": g.replayed.hex(), "declared": g.declared.hex()}
                    for g in self.gaps
                ],
                "findings": self.explain(register or "register"),
            }
        )
        return obj


class Replayer:
    """Incremental replay of a runtime log.

    ``algs`` names banks to track from the start (with ``initial`` values,
    if known); banks first seen in a sync record are tracked from there.
    """

    def __init__(
        self,
        algs: Iterable[HashAlg] = (),
        *,
        initial: Mapping[HashAlg, bytes] | None = None,
        expected: Mapping[HashAlg, bytes] | None = None,
    ) -> None:
        self._state: dict[HashAlg, bytes | None] = {}
        self._anchor: dict[HashAlg, int | None] = {}
        self._hashers: dict[HashAlg, Callable[..., "hashlib._Hash"]] = {}
        self._expected: dict[HashAlg, bytes] = {}
        self._last_match: dict[HashAlg, int | None] = {}
        for alg in list(algs) + list((initial or {}).keys()) + list((expected or {}).keys()):
            self._track(alg)
        for alg, v in (initial or {}).items():
            self._check_size(alg, v, "initial")
            self._state[alg] = bytes(v)
            self._anchor[alg] = 0
        for alg, v in (expected or {}).items():
            self._check_size(alg, v, "expected")
            self._expected[alg] = bytes(v)
            if self._state.get(alg) == v:
                self._last_match[alg] = 0
        self.gaps: list[Gap] = []
        self.hidden_lines: list[int] = []
        self.hidden_count = 0
        self.lineno = 0
        self.records = 0
        self.last_record_line = 0
        self._offset = 0
        self._partial = b""
        self._aael = False
        self._refresh()

    @classmethod
    def resume(
        cls,
        values: Mapping[HashAlg, bytes | None],
        *,
        anchors: Mapping[HashAlg, int],
        lineno: int,
        records: int,
        last_record_line: int,
        offset: int,
        expected: Mapping[HashAlg, bytes] | None = None,
    ) -> "Replayer":
        """A replayer that goes on where an earlier one stopped after line ``lineno`` (byte ``offset``).

        ``values`` holds every tracked bank's state (None: still unknown), ``anchors`` the line
        that anchored each known bank (0: an initial value).  Lines, records, gaps and offsets
        it reports are the whole log's.  With ``expected``, a bank whose state already equals
        its expected value matches at ``last_record_line``; earlier lines are not known here.
        """
        known = {a: v for a, v in values.items() if v is not None}
        r = cls([a for a, v in values.items() if v is None], initial=known, expected=expected)
        for alg in known:
            r._anchor[alg] = anchors.get(alg, 0)
        for alg in r._expected:
            r._last_match[alg] = last_record_line if r._state.get(alg) == r._expected[alg] else None
        r.lineno = lineno
        r.records = records
        r.last_record_line = last_record_line
        r._offset = offset
        return r

    @staticmethod
    def _check_size(alg: HashAlg, v: bytes, what: str) -> None:
        if len(v) != alg.digest_size:
            raise InputError(f"{what} value for {alg} must be {alg.digest_size} bytes, got {len(v)}")

    def _track(self, alg: HashAlg) -> None:
        if alg not in self._state:
            self._state[alg] = None
            self._anchor[alg] = None
            self._last_match[alg] = None
            self._hashers[alg] = alg.constructor

    def _refresh(self) -> None:
        # The banks with a known state, with their hash constructors: the hot loop's working set.
        self._live = [(a, self._hashers[a]) for a, s in self._state.items() if s is not None]

    # -- feeding -----------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Replay complete lines in ``data``; a trailing partial line waits for more."""
        if self._partial:
            data = self._partial + data
            self._partial = b""
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) > MAX_RECORD_BYTES:
                raise ParseError(f"line longer than {MAX_RECORD_BYTES} bytes", format=FORMAT, offset=self._offset, field=f"line {self.lineno + 1}")
            self._partial = data
            return
        self._partial = data[end + 1 :]
        body = data[: end + 1]
        if self._offset == 0 and body.startswith(INIT_PREFIX):
            self._aael = True
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = self.lineno + body.count(b"\n", 0, exc.start) + 1
            raise ParseError("not UTF-8", format=FORMAT, offset=self._offset + exc.start, field=f"line {line}") from None
        m = _BAD.search(body) if body.translate(None, _ALLOWED) else None
        if m:
            line = self.lineno + body.count(b"\n", 0, m.start()) + 1
            raise ParseError(
                f"control character 0x{body[m.start()]:02x}" + (" (CR: CRLF line ends are not allowed)" if body[m.start()] == 13 else ""),
                format=FORMAT, offset=self._offset + m.start(), field=f"line {line}",
            )
        # Every hidden character's UTF-8 form starts with C2 or E2: most chunks skip the regex.
        if b"\xc2" in body or b"\xe2" in body:
            self._find_hidden(body)
        self._body(body)
        self._offset += len(body)

    def _find_hidden(self, body: bytes) -> None:
        line, pos, last = self.lineno + 1, 0, 0
        for m in HIDDEN_BYTES.finditer(body):
            line += body.count(b"\n", pos, m.start())  # counted from the previous match: linear in the chunk
            pos = m.start()
            if line != last:
                last = line
                self.hidden_count += 1
                if len(self.hidden_lines) < MAX_HIDDEN_LINES:
                    self.hidden_lines.append(line)

    def _body(self, body: bytes) -> None:
        """Replay complete, validated lines: ordinary events in tight runs, the rest one by one."""
        lines = body.split(b"\n")
        lines.pop()
        if max(map(len, lines)) > MAX_RECORD_BYTES:
            n = next(i for i, raw in enumerate(lines) if len(raw) > MAX_RECORD_BYTES)
            raise ParseError(f"record of {len(lines[n])} bytes is over {MAX_RECORD_BYTES}", format=FORMAT, field=f"line {self.lineno + n + 1}")
        # Lines that are not plain events (blank, '#', 'SYNC', 'INIT', a space at either end)
        # are picked out in one comprehension; the runs between them are folded in tight loops.
        sf = _SPECIAL_FIRST
        specials = [i for i, raw in enumerate(lines) if not raw or raw[0] in sf or raw[-1] == 0x20]
        base = self.lineno + 1  # line number of lines[0]
        prev = 0
        for si in specials:
            self._run(lines[prev:si], base + prev)
            self._one(lines[si], base + si)
            prev = si + 1
        self._run(lines[prev:], base + prev)
        self.lineno = base + len(lines) - 1

    def _run(self, run: list[bytes], first: int) -> None:
        """Fold a run of ordinary event lines into every known bank."""
        if not run:
            return
        state = self._state
        for alg, h in self._live:
            v = state[alg]
            want = self._expected.get(alg)
            if want is None:
                for raw in run:
                    v = h(v + h(raw).digest()).digest()  # type: ignore[operator]
            else:
                for i, raw in enumerate(run):
                    v = h(v + h(raw).digest()).digest()  # type: ignore[operator]
                    if v == want:
                        self._last_match[alg] = first + i
            state[alg] = v
        self.records += len(run)
        self.last_record_line = first + len(run) - 1

    def _one(self, raw: bytes, lineno: int) -> None:
        if not raw or (raw[0] == 0x23 and not raw.startswith(EXTEND_PREFIX)):
            return  # blank or plain comment
        line = classify(raw, lineno=lineno)  # raises on malformed lines
        if line.kind.name == "EVENT":
            self._run([raw], lineno)
            return
        self._special(line, lineno)
        self.records += 1
        self.last_record_line = lineno
        for alg, want in self._expected.items():
            if self._state.get(alg) == want:
                self._last_match[alg] = lineno

    def _special(self, line: Line, lineno: int) -> None:
        raw = line.raw
        state = self._state
        if line.kind.name == "EXTEND":
            for alg, value in line.values:
                self._track(alg)
                if state[alg] is not None:
                    state[alg] = alg.extend(state[alg], value)  # type: ignore[arg-type]
            return
        # sync record
        for alg, declared in line.values:
            self._track(alg)
            cur = state[alg]
            if cur is not None and not hmac.compare_digest(cur, declared):
                self.gaps.append(Gap(alg, cur, declared, lineno))
            if cur is None:
                self._anchor[alg] = lineno
            state[alg] = declared
        self._refresh()
        for alg, h in self._live:
            state[alg] = h(state[alg] + h(raw).digest()).digest()  # type: ignore[operator]

    @property
    def first_line_is_init(self) -> bool:
        """Whether the log opens like a CoCo AAEL v1 log (``INIT alg/hex``)."""
        return self._aael

    def finish(self, *, accept_unterminated: bool = False) -> ReplayReport:
        """End the replay.  A last line without LF is a truncated log, unless
        ``accept_unterminated`` (CoCo AAEL v1 writers left the last line open)."""
        if self._partial and accept_unterminated:
            partial, self._partial = self._partial, b""
            self.feed(partial + b"\n")
        if self._partial:
            raise ParseError(
                "the log ends in a partial line (no final LF): it is truncated",
                format=FORMAT, offset=self._offset, field=f"line {self.lineno + 1}",
            )
        banks: dict[HashAlg, BankResult] = {}
        for alg in sorted(self._state):
            value = self._state[alg]
            want = self._expected.get(alg)
            if value is None:
                status = UNANCHORED
            elif want is None:
                status = REPLAYED
            else:
                status = MATCHED if hmac.compare_digest(value, want) else MISMATCHED
            banks[alg] = BankResult(alg, status, value, want, self._anchor[alg], self._last_match.get(alg))
        return ReplayReport(banks, tuple(self.gaps), self.lineno, self.records, self.last_record_line,
                            tuple(self.hidden_lines), self.hidden_count)


def replay(
    data: bytes | Iterable[bytes],
    *,
    algs: Iterable[HashAlg] = (),
    initial: Mapping[HashAlg, bytes] | None = None,
    expected: Mapping[HashAlg, bytes] | None = None,
    accept_unterminated: bool = False,
) -> ReplayReport:
    """Replay a whole log (bytes, or an iterable of chunks)."""
    r = Replayer(algs, initial=initial, expected=expected)
    if isinstance(data, (bytes, bytearray, memoryview)):
        r.feed(bytes(data))
    else:
        for chunk in data:
            r.feed(chunk)
    return r.finish(accept_unterminated=accept_unterminated)


__all__ = ["Replayer", "ReplayReport", "BankResult", "Gap", "replay", "MATCHED", "MISMATCHED", "UNANCHORED", "REPLAYED"]
