"""Incremental replay of a runtime log: a checkpoint, and the replay of what came after it.

A verifier that has replayed a node's runtime log up to some line keeps a
:class:`Checkpoint`: per bank the register's value after the last verified
line, where that line ends (line number, record count, byte offset), and a
running digest that commits to the exact bytes of every verified line.  At the
next attestation the node sends only the lines after that point (the *tail*)
and says where it believes the tail starts (:class:`TailClaim`); the verifier
checks the claim against its checkpoint (:func:`check_extends`) and replays the
tail from the checkpoint's values (:func:`continue_replay`).  The work is the
tail's, whatever the log's length.

Continuing is exact: for a log ``L`` cut at any line boundary, replaying
``L[:k]`` and then continuing with ``L[k:]`` gives the register values, gaps
and events of replaying ``L`` at once.  That holds because the replay of a
runtime log (spec/runtime-log.md section 3) is a left fold whose whole state
is what a checkpoint keeps: per bank a value or *unknown*, and, for the
events handed to appraisers, the banks the last sync record declared.  The
fold itself is :class:`~tsmr.runtime_log.replay.Replayer` (resumed, not
re-implemented) and the events are :func:`tsmr.eventlog.runtime_log_events`
read from the checkpoint's line on.

The running digest is a chain over lines, ``c = SHA-256(c || line || LF)``,
from 32 zero bytes, over *every* line (comments and blank lines too), so it
commits to exactly the bytes before the checkpoint's offset.  A line never
holds LF, so the framing is unambiguous.  A sender that rewrote, removed or
inserted anything before the tail computes another digest; one that starts the
tail at another line or offset names another position.  Either way the tail
does not extend what was verified: :class:`NotExtended` (finding
``log.not-extended``), and the verifier decides with :func:`needs_full_replay`
whether a restart explains it (a new boot identity, or a register back at its
launch value), which is the one case where a full replay from the start is
due.

The spec has no boot-identity record.  What a log declares about its start is
the value its first sync (or ``INIT``) record declares: the checkpoint keeps
that (``declared_start``) beside the launch values the verifier supplied
(``initial``), and a boot id the node reports may be stored with it
(``boot_id``).

CoCo AAEL v1 logs may end without a final LF.  As in a full replay, such a
log's last line is accepted; the checkpoint then records that the line is
*open*, and the next tail must begin with the LF that closes it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from ..algorithms import HashAlg
from ..errors import InputError, ParseError
from ..events import Event
from ..eventlog import runtime_log_events
from ..findings import Gap
from ..registers import check_register_name
from .records import EXTEND_PREFIX, FORMAT, INIT_PREFIX, MAX_RECORD_BYTES, classify
from .replay import ReplayReport, Replayer

VERSION = 1
NOT_EXTENDED = "log.not-extended"
ZERO_DIGEST = bytes(32)
_MAX_INT = 2**63 - 1
_BY_NAME = {a.kernel_name: a for a in HashAlg}
_HEX = re.compile(r"[0-9a-f]*")
_BOOT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_KEYS = frozenset({
    "version", "register", "banks", "initial", "declared_start", "anchors", "event_banks", "lines", "records",
    "first_record_line", "last_record_line", "offset", "digest", "gaps", "aael", "open", "boot_id",
})


class NotExtended(InputError):
    """A tail that does not continue the verified log; ``reason`` says how (finding ``log.not-extended``)."""

    finding = NOT_EXTENDED

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{NOT_EXTENDED}: {reason}")


def chain(digest: bytes, body: bytes) -> bytes:
    """The running digest after the complete lines in ``body`` (each ending in LF)."""
    sha = hashlib.sha256
    for line in body.split(b"\n")[:-1]:
        digest = sha(digest + line + b"\n").digest()
    return digest


@dataclass(frozen=True)
class TailClaim:
    """Where the sender says its tail starts: after ``lines`` lines, at byte ``offset``, and the
    running digest of the lines before it as the sender computes it from its own log."""

    lines: int
    offset: int
    digest: bytes

    def to_json(self) -> dict[str, object]:
        return {"from_line": self.lines, "from_offset": self.offset, "digest": self.digest.hex()}

    @classmethod
    def from_json(cls, obj: object) -> "TailClaim":
        if not isinstance(obj, dict):
            raise InputError(f"a tail claim is a JSON object, not {type(obj).__name__}")
        extra = set(obj) - {"from_line", "from_offset", "digest"}
        missing = {"from_line", "from_offset", "digest"} - set(obj)
        if extra or missing:
            raise InputError(f"tail claim: unknown keys {sorted(map(str, extra))}, missing keys {sorted(missing)}")
        return cls(_count(obj["from_line"], "from_line"), _count(obj["from_offset"], "from_offset"),
                   _hex(obj["digest"], 32, "digest"))

    @classmethod
    def of_prefix(cls, data: bytes) -> "TailClaim":
        """The claim a sender makes for the tail after ``data`` (the log's first lines, each ending in LF;
        a CoCo AAEL v1 log, opening with INIT, may leave its last line open)."""
        if data and not data.endswith(b"\n"):
            if not data.startswith(INIT_PREFIX):
                raise InputError("a tail starts after a complete line: the prefix must end in LF")
            return cls(data.count(b"\n") + 1, len(data), chain(ZERO_DIGEST, data + b"\n"))
        return cls(data.count(b"\n"), len(data), chain(ZERO_DIGEST, data))


@dataclass(frozen=True)
class Checkpoint:
    """The replay state of one register's runtime log after its last verified line."""

    register: str
    banks: Mapping[HashAlg, bytes | None]  # tracked banks: the value after the last line, None while unknown
    initial: Mapping[HashAlg, bytes] = field(default_factory=dict)  # launch values the verifier supplied
    declared_start: Mapping[HashAlg, bytes] = field(default_factory=dict)  # the first sync record's values
    anchors: Mapping[HashAlg, int] = field(default_factory=dict)  # known bank -> anchoring line (0: initial)
    event_banks: tuple[HashAlg, ...] = ()  # banks the last sync record declared: the events' digests
    lines: int = 0  # lines verified (every line, comments and blank ones included)
    records: int = 0  # hashed lines among them (events, sync records, .EXTEND directives)
    first_record_line: int = 0  # 0: no record yet
    last_record_line: int = 0
    offset: int = 0  # bytes verified
    digest: bytes = ZERO_DIGEST  # running digest of the verified lines
    gaps: int = 0  # gaps found so far
    aael: bool = False  # the log opens with INIT (CoCo AAEL v1): its last line may lack LF
    open: bool = False  # the last verified line had no LF: the next tail starts with it
    boot_id: str | None = None

    @classmethod
    def start(cls, register: str, *, initial: Mapping[HashAlg, bytes] | None = None,
              algs: Iterable[HashAlg] = (), boot_id: str | None = None) -> "Checkpoint":
        """The checkpoint before a log's first line: ``initial`` launch values (known banks),
        ``algs`` further banks to track from the start (unknown until a sync record)."""
        check_register_name(register)
        init = {a: bytes(v) for a, v in (initial or {}).items()}
        for a, v in init.items():
            if not isinstance(a, HashAlg) or len(v) != a.digest_size:
                raise InputError(f"initial value for {a} must be {getattr(a, 'digest_size', '?')} bytes")
        banks: dict[HashAlg, bytes | None] = {a: None for a in algs}
        banks.update(init)
        if boot_id is not None:
            _check_boot_id(boot_id)
        return cls(register, dict(sorted(banks.items())), dict(sorted(init.items())), {},
                   {a: 0 for a in sorted(init)}, boot_id=boot_id)

    def claim(self) -> TailClaim:
        """The claim a tail extending this checkpoint makes."""
        return TailClaim(self.lines, self.offset, self.digest)

    def values(self) -> dict[HashAlg, bytes]:
        """The known banks' values."""
        return {a: v for a, v in self.banks.items() if v is not None}

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "register": self.register,
            "banks": {a.kernel_name: (v.hex() if v is not None else None) for a, v in sorted(self.banks.items())},
            "initial": {a.kernel_name: v.hex() for a, v in sorted(self.initial.items())},
            "declared_start": {a.kernel_name: v.hex() for a, v in sorted(self.declared_start.items())},
            "anchors": {a.kernel_name: n for a, n in sorted(self.anchors.items())},
            "event_banks": [a.kernel_name for a in self.event_banks],
            "lines": self.lines,
            "records": self.records,
            "first_record_line": self.first_record_line,
            "last_record_line": self.last_record_line,
            "offset": self.offset,
            "digest": self.digest.hex(),
            "gaps": self.gaps,
            "aael": self.aael,
            "open": self.open,
            "boot_id": self.boot_id,
        }

    @classmethod
    def from_json(cls, obj: object) -> "Checkpoint":
        """Read a checkpoint, refusing anything malformed or inconsistent with :class:`InputError`."""
        if not isinstance(obj, dict):
            raise InputError(f"a checkpoint is a JSON object, not {type(obj).__name__}")
        keys = set(obj)
        if keys != _KEYS:
            raise InputError(f"checkpoint: unknown keys {sorted(map(str, keys - _KEYS))}, missing keys {sorted(_KEYS - keys)}")
        if obj["version"] != VERSION or isinstance(obj["version"], bool):
            raise InputError(f"checkpoint version {obj['version']!r} is not {VERSION}")
        register = obj["register"]
        if not isinstance(register, str):
            raise InputError("checkpoint register must be a string")
        check_register_name(register)
        banks: dict[HashAlg, bytes | None] = {
            a: (None if v is None else _hex(v, a.digest_size, f"banks.{a.kernel_name}"))
            for a, v in _bank_map(obj["banks"], "banks").items()
        }
        initial = {a: _hex(v, a.digest_size, f"initial.{a.kernel_name}") for a, v in _bank_map(obj["initial"], "initial").items()}
        declared = {a: _hex(v, a.digest_size, f"declared_start.{a.kernel_name}")
                    for a, v in _bank_map(obj["declared_start"], "declared_start").items()}
        anchors = {a: _count(v, f"anchors.{a.kernel_name}") for a, v in _bank_map(obj["anchors"], "anchors").items()}
        eb = obj["event_banks"]
        if not isinstance(eb, list) or not all(isinstance(n, str) for n in eb):
            raise InputError("checkpoint event_banks must be a list of bank names")
        event_banks = tuple(_bank(n, "event_banks") for n in eb)
        if list(event_banks) != sorted(set(event_banks)):
            raise InputError("checkpoint event_banks must name each bank once, in ascending algorithm id order")
        lines, records = _count(obj["lines"], "lines"), _count(obj["records"], "records")
        first, last = _count(obj["first_record_line"], "first_record_line"), _count(obj["last_record_line"], "last_record_line")
        offset, gaps = _count(obj["offset"], "offset"), _count(obj["gaps"], "gaps")
        digest = _hex(obj["digest"], 32, "digest")
        aael, is_open = obj["aael"], obj["open"]
        if not isinstance(aael, bool) or not isinstance(is_open, bool):
            raise InputError("checkpoint aael and open must be true or false")
        boot_id = obj["boot_id"]
        if boot_id is not None:
            _check_boot_id(boot_id)
        # Consistency: what no replay could have produced is refused, not carried on.
        problems = []
        if set(initial) - set(banks) or set(event_banks) - set(banks) or set(declared) - set(banks):
            problems.append("initial, declared_start and event_banks must name tracked banks")
        if any(banks[a] is None for a in initial):
            problems.append("a bank with an initial value cannot be unknown")
        if set(anchors) != {a for a, v in banks.items() if v is not None}:
            problems.append("anchors must name exactly the known banks")
        if any(n > last for n in anchors.values()):
            problems.append("a bank cannot be anchored after the last record")
        if records > lines or last > lines or first > last or (records == 0) != (last == 0) or (records == 0) != (first == 0):
            problems.append("line and record counts disagree")
        if records and last - first + 1 < records:
            problems.append("more records than lines between the first and the last record")
        if offset < lines or offset > lines * (MAX_RECORD_BYTES + 1):
            problems.append("the offset does not fit the number of lines")
        if gaps > records * len(banks):
            problems.append("more gaps than records times banks")
        if is_open and (not aael or lines == 0):
            problems.append("only an AAEL log's last line may be open")
        if (lines == 0) != (offset == 0) or (lines == 0 and digest != ZERO_DIGEST):
            problems.append("an empty prefix has offset 0 and the zero digest")
        if problems:
            raise InputError("inconsistent checkpoint: " + "; ".join(problems))
        return cls(register, dict(sorted(banks.items())), dict(sorted(initial.items())), dict(sorted(declared.items())),
                   dict(sorted(anchors.items())), event_banks, lines, records, first, last, offset, digest, gaps,
                   aael, is_open, boot_id)


@dataclass(frozen=True)
class Continuation:
    """What replaying a tail gave: the new checkpoint, the tail's events and gaps, and the report
    (bank values and statuses against ``expected``; lines, records and gaps numbered in the whole log)."""

    checkpoint: Checkpoint
    events: tuple[Event, ...] | None  # None when not asked for
    gaps: tuple[Gap, ...]
    report: ReplayReport


def check_extends(checkpoint: Checkpoint, claim: TailClaim) -> None:
    """Raise :class:`NotExtended` unless ``claim`` starts exactly where ``checkpoint`` stops.

    (:func:`continue_replay` also takes a claim that starts earlier, checking the lines sent again.)"""
    if claim.lines != checkpoint.lines:
        if claim.lines < checkpoint.lines:
            raise NotExtended(f"the tail starts after line {claim.lines}, but {checkpoint.lines} lines were verified: "
                              "the sender's log is shorter than what was verified (lines removed, or an older log)")
        raise NotExtended(f"the tail starts after line {claim.lines}, but only {checkpoint.lines} lines were verified: "
                          "the lines in between were never sent")
    if claim.offset != checkpoint.offset:
        raise NotExtended(f"the tail starts at byte {claim.offset}, but the {checkpoint.lines} verified lines end at byte "
                          f"{checkpoint.offset}: verified lines changed length")
    if not hmac.compare_digest(claim.digest, checkpoint.digest):
        raise NotExtended(f"the sender's first {checkpoint.lines} lines are not the lines verified (running digest "
                          f"{claim.digest.hex()[:16]}... instead of {checkpoint.digest.hex()[:16]}...): records were changed or replaced")


def continue_replay(
    checkpoint: Checkpoint,
    tail: bytes | Iterable[bytes],
    *,
    claim: TailClaim | None = None,
    expected: Mapping[HashAlg, bytes] | None = None,
    events: bool = True,
) -> Continuation:
    """Replay the lines after ``checkpoint`` (``tail``: bytes, or chunks of them) from its values.

    ``claim``, if given, says where ``tail`` starts.  At the checkpoint, or after it, it is checked
    first (:func:`check_extends`).  Before it (a sender that lost its place sends verified lines
    again), those lines are only chained from the claim's digest, must end at the checkpoint's
    offset with its digest, and are not replayed again; otherwise :class:`NotExtended`.  ``expected`` (the signed
    register values) gives each bank's status and the last line after which it equalled the
    expected value, looked for from the checkpoint on.  ``events=False`` skips building the
    tail's :class:`~tsmr.events.Event` objects (memory bounded by one chunk whatever the tail's
    size).  Malformed lines raise :class:`~tsmr.errors.ParseError` naming the whole log's line.
    """
    cp = checkpoint
    # Lines the sender sends again (its tail starts before the checkpoint, e.g. after it lost its
    # place): they are only chained, and must chain to the checkpoint's digest.
    skip, skip_digest, skip_offset = 0, ZERO_DIGEST, 0
    if claim is not None:
        if claim.lines < cp.lines and claim.offset < cp.offset:
            skip, skip_digest, skip_offset = cp.lines - claim.lines, claim.digest, claim.offset
        else:
            check_extends(cp, claim)
    chunks: Iterable[bytes] = (bytes(tail),) if isinstance(tail, (bytes, bytearray, memoryview)) else tail
    r = Replayer.resume(cp.banks, anchors=cp.anchors, lineno=cp.lines, records=cp.records,
                        last_record_line=cp.last_record_line, offset=cp.offset, expected=expected)
    digest, lines, offset = cp.digest, cp.lines, cp.offset
    first_record, aael, is_open = cp.first_record_line, cp.aael, cp.open
    declared_start = dict(cp.declared_start)
    event_banks = cp.event_banks
    out: list[Event] | None = [] if events else None
    pending = b""
    started = False

    def take(body: bytes) -> None:
        """Replay, chain and read the complete lines in ``body``."""
        nonlocal digest, lines, offset, first_record, aael, event_banks
        if offset == 0 and body.startswith(INIT_PREFIX):
            aael = True
        r.feed(body)  # validates every line before anything else uses it
        if out is not None:
            evs = runtime_log_events(body, register=cp.register, first_line=lines + 1, banks=event_banks)
            out.extend(evs)
            for ev in reversed(evs):
                if ev.type == "sync":
                    event_banks = tuple(a for a, _ in ev.digests)
                    break
        else:
            event_banks = _last_sync_banks(body, event_banks)
        if not declared_start or not first_record:
            first_record = _first_record(body, lines, first_record, declared_start)
        digest = chain(digest, body)
        lines += body.count(b"\n")
        offset += len(body)

    def resent_differs() -> NotExtended:
        return NotExtended(f"the sender's lines {claim.lines + 1 if claim else 0}-{cp.lines}, sent again, are not the lines "
                           "verified: records were changed or replaced")

    for chunk in chunks:
        data = bytes(chunk)
        if skip:
            data, pending = pending + data, b""
            pos, sha = 0, hashlib.sha256
            while skip and (j := data.find(b"\n", pos)) >= 0:
                skip_digest = sha(skip_digest + data[pos:j + 1]).digest()
                pos, skip = j + 1, skip - 1
            skip_offset += pos
            if skip:
                pending = data[pos:]
                if len(pending) > MAX_RECORD_BYTES:
                    raise resent_differs()
                continue
            data = data[pos:]
            if not hmac.compare_digest(skip_digest, cp.digest) or skip_offset != cp.offset + (1 if is_open else 0):
                raise resent_differs()
            if is_open:  # the LF that closes the open line came with the resent lines
                offset += 1
                is_open = False
            started = True
        if not started and data:
            started = True
            if is_open:
                if not data.startswith(b"\n"):
                    raise NotExtended(f"line {cp.lines} had no LF when it was verified, and the tail does not begin "
                                      "with one: the line was changed")
                data = data[1:]
                offset += 1
                is_open = False
        if pending:
            data = pending + data
        end = data.rfind(b"\n")
        if end < 0:
            pending = data
            if len(pending) > MAX_RECORD_BYTES:
                raise ParseError(f"line longer than {MAX_RECORD_BYTES} bytes", format=FORMAT, offset=offset,
                                 field=f"line {lines + 1}")
            continue
        pending = data[end + 1:]
        take(data[: end + 1])
    if skip:
        # An open last line sent again, still open: nothing new.  Anything else stops short.
        if not (skip == 1 and is_open and chain(skip_digest, pending + b"\n") == cp.digest
                and skip_offset + len(pending) == cp.offset):
            raise NotExtended(f"the tail ends before line {cp.lines}, the last line verified: the sender's log is "
                              "shorter than what was verified")
        pending = b""
    if pending:
        if not aael and not (offset == 0 and pending.startswith(INIT_PREFIX)):
            raise ParseError("the log ends in a partial line (no final LF): it is truncated", format=FORMAT,
                             offset=offset, field=f"line {lines + 1}")
        take(pending + b"\n")  # an AAEL writer leaves its last line open; the next tail brings its LF
        offset -= 1
        is_open = True
    report = r.finish()
    base_gaps = len(report.gaps)
    values: dict[HashAlg, bytes | None] = {a: b.value for a, b in report.banks.items()}
    anchors = {a: b.anchor_line or 0 for a, b in report.banks.items() if b.value is not None}
    gaps = tuple(
        Gap(g.alg, g.replayed, g.declared, g.seq, cp.register, "tsmr",
            history_missing=g.seq == first_record and g.alg in cp.initial)
        for g in report.gaps
    )
    new = replace(cp, banks=values, declared_start=dict(sorted(declared_start.items())), anchors=anchors,
                  event_banks=event_banks, lines=lines, records=report.records, first_record_line=first_record,
                  last_record_line=report.last_record_line, offset=offset, digest=digest, gaps=cp.gaps + base_gaps,
                  aael=aael, open=is_open)
    return Continuation(new, tuple(out) if out is not None else None, gaps, report)


def needs_full_replay(checkpoint: Checkpoint, signed_values: Mapping[HashAlg, bytes], *,
                      boot_id: str | None = None) -> str | None:
    """Why the register restarted since ``checkpoint`` (so only a replay from the log's first line
    is right), or None if continuing is right.

    A restart is a new boot identity (``boot_id`` differs from the one stored), or a signed
    value equal to the register's launch value (the verifier's ``initial`` value, else the value
    the log's first sync record declared) while the checkpoint has moved past it.
    """
    if boot_id is not None and checkpoint.boot_id is not None and boot_id != checkpoint.boot_id:
        return f"new boot identity {boot_id} (the verified log was of boot {checkpoint.boot_id})"
    for alg, value in sorted(signed_values.items()):
        launch = checkpoint.initial.get(alg, checkpoint.declared_start.get(alg))
        current = checkpoint.banks.get(alg)
        if launch is None or current is None or len(value) != len(launch):
            continue
        if hmac.compare_digest(value, launch) and not hmac.compare_digest(current, launch):
            return (f"{checkpoint.register} {alg.kernel_name} is back at its launch value {launch.hex()[:16]}...: "
                    "the register was reset (a reboot)")
    return None


# -- helpers -----------------------------------------------------------------------------------

def _first_record(body: bytes, lines: int, first_record: int, declared_start: dict[HashAlg, bytes]) -> int:
    """The first record's line and the first sync record's values, found in ``body`` if not yet known."""
    for n, raw in enumerate(body.split(b"\n")[:-1], lines + 1):
        if not raw or (raw[0] == 0x23 and not raw.startswith(EXTEND_PREFIX)):
            continue
        if not first_record:
            first_record = n
        if raw[:5] in (b"SYNC ", b"INIT "):
            declared_start.update(classify(raw, lineno=n).values)
            return first_record
    return first_record


def _last_sync_banks(body: bytes, banks: tuple[HashAlg, ...]) -> tuple[HashAlg, ...]:
    """The banks the last sync record in ``body`` declares (``banks`` if it has none)."""
    pos = max(body.rfind(b"\nSYNC "), body.rfind(b"\nINIT "))
    if pos >= 0:
        start = pos + 1
    elif body.startswith((b"SYNC ", b"INIT ")):
        start = 0
    else:
        return banks
    return tuple(a for a, _ in classify(body[start:body.index(b"\n", start)]).values)


def _bank(name: object, where: str) -> HashAlg:
    if not isinstance(name, str) or name not in _BY_NAME:
        raise InputError(f"checkpoint {where}: unknown bank {str(name)[:20]!r} (banks: {', '.join(_BY_NAME)})")
    return _BY_NAME[name]


def _bank_map(obj: object, where: str) -> dict[HashAlg, object]:
    if not isinstance(obj, dict):
        raise InputError(f"checkpoint {where} must be an object of banks")
    return {_bank(k, where): v for k, v in obj.items()}


def _hex(v: object, size: int, where: str) -> bytes:
    if not isinstance(v, str) or len(v) != 2 * size or not _HEX.fullmatch(v):
        raise InputError(f"{where} must be {2 * size} lowercase hex digits")
    return bytes.fromhex(v)


def _count(v: object, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_INT:
        raise InputError(f"{where} must be a non-negative integer")
    return v


def _check_boot_id(v: object) -> None:
    if not isinstance(v, str) or not _BOOT_ID.fullmatch(v):
        raise InputError("boot_id must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")


__all__ = ["Checkpoint", "Continuation", "NotExtended", "TailClaim", "check_extends", "continue_replay",
           "needs_full_replay", "chain", "NOT_EXTENDED"]
