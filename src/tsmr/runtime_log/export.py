"""Encapsulating a runtime log in TCG2 and CEL-JSON (spec/runtime-log.md section 5), pure.

Only hashed lines carry over: sync and event records become EV_ACTION /
``content_type: "tsmr"`` records with ``H_alg(line)`` per bank; a ``#
.EXTEND`` directive becomes a record whose data is the comment line and whose
digests are its listed bytes.  Comments and blank lines are dropped.

Both formats replay from zero and know nothing of sync records, so the export
says (in its warnings) when its replay cannot equal the register: the first
sync value is not zero (the register held earlier events, e.g. the firmware's
CCEL), a later sync record declares a gap, records precede the first sync,
or a directive extends only some banks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Sequence

from ..algorithms import HashAlg
from ..errors import InputError, ParseError
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
    first: tuple[int, Line] | None = None
    for n, line, digests in hashed_lines(data, algs):
        if first is None:
            first = (n, line)
        if line.kind is Kind.EXTEND and {a for a, _ in digests} != set(algs):
            out.append(f"the .EXTEND directive at line {n} lists only some banks; {fmt} readers may not replay the others")
    if first is not None:
        n, line = first
        if line.kind is not Kind.SYNC:
            out.append(f"line {n} comes before any sync record: a {fmt} replay counts it from zero")
        elif any(any(v) for _, v in line.values):
            out.append(
                f"the log starts from a non-zero register value (line {n}): a {fmt} replay, which starts from zero, "
                "gives the register only after the register's earlier events (e.g. the firmware's CCEL)"
            )
    for line_no in sorted({g.line for g in replay(data, algs=algs).gaps}):
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


__all__ = ["Export", "register_index", "hashed_lines", "to_tcg2", "to_cel_json", "CONTENT_TYPE"]
