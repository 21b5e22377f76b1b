"""Converting unified events to CEL-JSON and TCG2, so other verifiers can read any log.

CEL-JSON records keep what each source knows: ``pcclient_std`` content
(``event_type``, ``event_data`` in hex) for TCG2/CCEL events, ``ima_template``
(``template_name``, ``template_data``) for IMA entries, ``tsmr`` (``record``)
for runtime-log lines, and the source's own content otherwise.  TCG2 output is
a crypto-agile log whose Spec ID event lists every bank the events record;
events from other formats become EV_ACTION records with their data.
"""

from __future__ import annotations

import re
from typing import Any

from .algorithms import HashAlg
from .errors import InputError
from .eventlog import EventLog
from .events import Event
from .formats import cel, tcg2


def cel_index(register: str) -> tuple[str, int]:
    m = re.fullmatch(r"(pcr|rtmr|rem)(\d{1,3})", register)
    if not m:
        raise InputError(f"register {register} has no CEL index (pcrN, rtmrN, remN)")
    return m.group(1), int(m.group(2))


def tcg2_index(event: Event, arch: str) -> int:
    if event.source in ("tcg2", "ccel"):
        return event.index
    kind, n = cel_index(event.register)
    return n if kind == "pcr" else n + 1  # CC MR index of RTMR/REM n


_TYPE_CODES = {name: code for code, name in tcg2.EVENT_TYPE_NAMES.items()}


def event_type_code(name: str) -> int:
    code = _TYPE_CODES.get(name)
    if code is not None:
        return code
    m = re.fullmatch(r"(?:EV_)?(?:UNKNOWN_)?(0x[0-9a-fA-F]+)", name)
    if m:
        return int(m.group(1), 16)
    return tcg2.EV_ACTION


def _bank_set(log: EventLog) -> tuple[HashAlg, ...]:
    seen: dict[HashAlg, None] = dict.fromkeys(log.banks)
    for e in log.events:
        for a in e.algs:
            seen.setdefault(a)
    return tuple(sorted(seen))


def _digests(e: Event, banks: tuple[HashAlg, ...]) -> tuple[tuple[HashAlg, bytes], ...]:
    if e.fill is not None:
        return tuple((a, bytes([e.fill]) * a.digest_size) for a in banks)
    return tuple(e.digests)


def _content(e: Event) -> tuple[str, Any]:
    if e.source in ("tcg2", "ccel"):
        return "pcclient_std", {"event_type": event_type_code(e.type), "event_data": e.data.hex()}
    if e.source == "ima":
        return "ima_template", {"template_name": e.type, "template_data": e.data.hex()}
    if e.source == "tsmr":
        return "tsmr", {"record": e.data.decode("utf-8", "replace")}
    return e.source, {"type": e.type, "data": e.data.hex()}


def to_cel_json(log: EventLog, *, seq: bool = False) -> bytes:
    banks = _bank_set(log)
    records = []
    for n, e in enumerate(log.events):
        itype, index = cel_index(e.register) if e.register != "mrtd" else ("rtmr", -1)
        if index < 0:
            raise InputError(f"event {e.seq} is on MRTD, which CEL cannot name")
        ctype, content = _content(e)
        records.append(cel.CELRecord(n, itype, index, _digests(e, banks), ctype, content))
    return cel.encode_json(records, seq=seq)


def to_tcg2(log: EventLog) -> bytes:
    banks = _bank_set(log)
    events = []
    for e in log.events:
        code = event_type_code(e.type) if e.source in ("tcg2", "ccel") else tcg2.EV_ACTION
        events.append(tcg2.TCG2Event(tcg2_index(e, log.arch), code, tuple((int(a), d) for a, d in _digests(e, banks)), e.data))
    return tcg2.encode_log(events, banks)


__all__ = ["to_cel_json", "to_tcg2", "cel_index", "event_type_code"]
