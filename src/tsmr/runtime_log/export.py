"""Encapsulating a runtime log in TCG2 and CEL-JSON (spec/runtime-log.md section 5), pure.

Only hashed lines carry over: sync and event records become EV_ACTION /
``content_type: "tsmr"`` records with ``H_alg(line)`` per bank; a ``#
.EXTEND`` directive becomes a record whose data is the comment line and whose
digests are its listed bytes.  Comments and blank lines are dropped.

Both formats replay from zero and know nothing of sync records, so the export
says (in its warnings) when its replay cannot equal the register: the first
sync value is not what the replay from zero reaches there (the register held
earlier events, e.g. the firmware's CCEL), a later sync record declares a gap,
events precede the first sync, the log has no sync record at all (only
directives: whether the register started at zero is unknown), or a directive
extends only some banks.  A log may begin with directives (the writer puts no
sync record before them): a replay from zero counts them, as the register did
if it started at zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import replace
from typing import Iterator, Sequence

from ..algorithms import HashAlg
from ..errors import InputError, ParseError
from ..events import Event
from ..formats import cel, tcg2
from ..registers import pcr_index
from .records import FORMAT, Kind, Line, classify
from .replay import replay

CONTENT_TYPE = "tsmr"


@dataclass(frozen=True)
class Export:
    data: bytes
    records: int
    warnings: tuple[str, ...]


def register_index(register: str) -> tuple[str, int, int]:
    """``(CEL index type, CEL index, TCG2 pcrIndex)`` of a register name.

    ``pcrN`` -> ("pcr", N, N); ``rtmrN`` -> ("rtmr", N, N+1) and ``remN`` ->
    ("rem", N, N+1): in TCG2 logs of confidential VMs ``pcrIndex`` holds the CC
    MR index (UEFI 2.10 section 38.4.1), RTMR/REM n being index n+1.
    """
    p = pcr_index(register)
    if p is not None:
        return "pcr", p, p
    m = re.fullmatch(r"(rtmr|rem)(\d)", register)
    if m:
        n = int(m.group(2))
        return m.group(1), n, n + 1
    raise InputError(
        f"register {register} has no index in TCG2 or CEL (pcrN, rtmrN and remN do): give one with --index"
    )


def hashed_lines(data: bytes, algs: Sequence[HashAlg]) -> Iterator[tuple[int, Line, tuple[tuple[HashAlg, bytes], ...]]]:
    """(line number, line, digests) of every hashed line of a log."""
    if data and not data.endswith(b"\n"):
        raise ParseError("the log ends in a partial line: it is truncated", format=FORMAT, offset=len(data))
    for n, raw in enumerate(data.split(b"\n")[:-1], 1):
        line = classify(raw, lineno=n)
        if line.kind is Kind.EXTEND:
            yield n, line, line.values
        elif line.kind in (Kind.SYNC, Kind.EVENT):
            yield n, line, tuple((a, a.hash(raw)) for a in algs)


def _warnings(data: bytes, algs: Sequence[HashAlg], fmt: str) -> list[str]:
    out: list[str] = []
    lines = list(hashed_lines(data, algs))
    for n, line, digests in lines:
        if line.kind is Kind.EXTEND and {a for a, _ in digests} != set(algs):
            out.append(f"the .EXTEND directive at line {n} lists only some banks; {fmt} readers may not replay the others")
    first_sync = next((n for n, line, _ in lines if line.kind is Kind.SYNC), None)
    first_event = next((n for n, line, _ in lines if line.kind is Kind.EVENT), None)
    early = first_event is not None and (first_sync is None or first_event < first_sync)
    if early:
        out.append(f"line {first_event} comes before any sync record: a {fmt} replay counts it from zero")
    elif first_sync is None and lines:
        out.append(f"the log has no sync record: a {fmt} replay, which starts from zero, gives the register only if "
                   f"it held zero before line {lines[0][0]}")
    # A TCG2 or CEL replay starts from zero: every sync record that declares another value than the
    # replay from zero reaches there (directives before the first one included) is a break it cannot express.
    zero = {a: bytes(a.digest_size) for a in algs}
    for line_no in sorted({g.line for g in replay(data, algs=algs, initial=zero).gaps}):
        if line_no == first_sync:
            if early:
                continue  # said above
            out.append(
                f"the log starts from a non-zero register value (line {line_no}): a {fmt} replay, which starts from zero, "
                "gives the register only after the register's earlier events (e.g. the firmware's CCEL)"
            )
        else:
            out.append(f"the sync record at line {line_no} records a gap, which {fmt} cannot express: its replay will not equal the register")
    return out


def to_tcg2(data: bytes, *, algs: Sequence[HashAlg], index: int) -> Export:
    """A crypto-agile TCG2 log: Spec ID Event03 header, then one EV_ACTION per hashed line."""
    algs = sorted(set(algs))
    events = [
        tcg2.TCG2Event(index, tcg2.EV_ACTION, tuple((int(a), d) for a, d in digests), line.raw)
        for _, line, digests in hashed_lines(data, algs)
    ]
    return Export(tcg2.encode_log(events, algs), len(events), tuple(_warnings(data, algs, "TCG2")))


def to_cel_json(data: bytes, *, algs: Sequence[HashAlg], index_type: str, index: int, seq: bool = False) -> Export:
    """CEL-JSON records ``{"recnum", <index_type>, "digests", "content_type": "tsmr", "content": {"record": line}}``."""
    algs = sorted(set(algs))
    records = [
        cel.CELRecord(n, index_type, index, digests, CONTENT_TYPE, {"record": line.text})
        for n, (_, line, digests) in enumerate(hashed_lines(data, algs))
    ]
    return Export(cel.encode_json(records, seq=seq), len(records), tuple(_warnings(data, algs, "CEL")))


def read_tcg2_export(events: Sequence[Event]) -> list[Event] | None:
    """The events of a TCG2 log that :func:`to_tcg2` wrote, with each ``.EXTEND`` directive shown as one;
    None for any other TCG2 log.

    An export is recognised by its records alone: every one an EV_ACTION of one index whose data is a
    log line (a sync record, an event record or a ``.EXTEND`` directive) and whose digests are the ones
    the export gives that line (``H(line)`` per bank; the listed values for a directive).  A firmware
    log (a CCEL, a TPM log) fails at its first record.  A directive's digests are its listed values,
    not a hash of its data: its event says so instead of looking like a wrong digest.
    """
    if not events:
        return None
    out: list[Event] = []
    index = events[0].index
    for e in events:
        if e.type != "EV_ACTION" or e.index != index or not e.digests:
            return None
        try:
            line = classify(e.data)
        except ParseError:
            return None
        if line.kind is Kind.EXTEND:
            if dict(e.digests) != dict(line.values):
                return None
            listed = " ".join(f"{a.kernel_name}/{v.hex()}" for a, v in line.values)
            out.append(replace(e, data_rule=None, summary=f".EXTEND (a digest-only extend of {listed})",
                               details={"text": line.text, "directive": ".EXTEND",
                                        "extends": {a.kernel_name: v.hex() for a, v in line.values}}))
        elif line.kind in (Kind.SYNC, Kind.EVENT):
            if any(d != a.hash(e.data) for a, d in e.digests):
                return None
            out.append(e)
        else:
            return None
    return out


__all__ = ["Export", "register_index", "hashed_lines", "to_tcg2", "to_cel_json", "read_tcg2_export", "CONTENT_TYPE"]
