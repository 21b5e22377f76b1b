"""Reading any measurement log: format detection, parsing into unified events.

>>> from tsmr.formats import tcg2
>>> from tsmr import HashAlg, eventlog
>>> from tsmr.replay import replay
>>> data = tcg2.encode_log([tcg2.TCG2Event(7, tcg2.EV_SEPARATOR, ((int(HashAlg.SHA256), HashAlg.SHA256.hash(bytes(4))),), bytes(4))], [HashAlg.SHA256])
>>> log = eventlog.parse(data)
>>> log.format, [(e.register, e.type, e.summary) for e in log.events]
('tcg2', [('pcr7', 'EV_SEPARATOR', 'separator 0x00000000')])
>>> replay(log.events).registers["pcr7"][HashAlg.SHA256].hex()[:16]
'3d458cfe55cc03ea'

Formats: ``tcg2`` (crypto-agile PC Client log), ``tcg2-sha1`` (SHA-1 only,
TPM 1.2 style), ``ccel`` (a TDX/CSV CC event log: the same records, indexed
by CC MR index), ``cel-json`` / ``cel-tlv`` (TCG Canonical Event Log),
``systemd`` (systemd's tpm2-measure.log / cc-measure.log), ``ima-binary`` /
``ima-ascii`` (Linux IMA measurement lists), ``tsmr`` (tsmr runtime logs and
CoCo AAEL v1 text logs).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Sequence

from .algorithms import HashAlg
from .errors import InputError, ParseError
from .events import DATA, Event
from .formats import cel, cel_tlv, ima, systemd, tcg2, uefi
from .quirks import check
from .runtime_log.export import read_tcg2_export
from .runtime_log.records import _FORBIDDEN_BYTES, Kind, classify

FORMATS = ("tcg2", "tcg2-sha1", "ccel", "cel-json", "cel-tlv", "systemd", "ima-binary", "ima-ascii", "tsmr")


@dataclass(frozen=True)
class EventLog:
    format: str
    events: tuple[Event, ...]
    arch: str = "tpm"  # tpm, tdx (CC MR indices), cca
    banks: tuple[HashAlg, ...] = ()
    notes: tuple[str, ...] = ()
    raw: Any = field(default=None, compare=False, repr=False)

    def registers(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.events:
            if e.measured:
                seen.setdefault(e.register)
        return list(seen)


_SPEC_ID = b"Spec ID Event03\0"


def detect(data: bytes) -> str:
    """The format of a log, from its bytes."""
    head = data[:64]
    if not data:
        raise ParseError("empty input", format="eventlog", offset=0)
    if head[:4] == b"CCEL":
        raise InputError("this is the ACPI CCEL table, not the log: give the log area (e.g. /sys/firmware/acpi/tables/data/CCEL)")
    if len(data) >= 48 and data[32:48] == _SPEC_ID and struct.unpack_from("<I", data, 4)[0] == 3:
        return "tcg2"
    stripped = data.lstrip(b" \t\r\n")
    if stripped[:1] in (b"[", b"\x1e", b"{"):
        return "systemd" if b'"content_type":"systemd"' in data[:4096].replace(b" ", b"") else "cel-json"
    if data[:5] in (b"SYNC ", b"INIT ") or data[:1] == b"#":
        return "tsmr"
    kind = ima.detect(data)
    if kind:
        return kind
    if cel_tlv.looks_like_base64_cel(data):
        return "cel-tlv"
    if data[:1] == b"\x00" and len(data) >= 5:  # a CEL-TLV record starts with its recnum TLV (type 0)
        try:
            cel_tlv.parse_tlv(data)
            return "cel-tlv"
        except ParseError:
            pass
    if len(data) >= 32:
        pcr, etype = struct.unpack_from("<II", data, 0)
        (size,) = struct.unpack_from("<I", data, 28)
        if pcr < 32 and (etype < 0x100 or 0x80000000 <= etype <= 0x800000FF) and size <= len(data) - 32:
            return "tcg2-sha1"
    raise ParseError("unknown log format (not TCG2, CCEL, CEL, IMA, systemd or a tsmr runtime log)", format="eventlog", offset=0)


def parse(
    data: bytes, format: str | None = None, *, arch: str | None = None, decode: bool = True, register: str = "rtmr3"
) -> EventLog:
    """Parse a log into unified events; ``format`` (one of FORMATS) skips detection.

    ``arch`` (tpm, tdx or cca) names the machine the log's registers belong to.
    A TPM log keeps its PCRs whatever ``arch`` says (the replay maps them onto a
    confidential VM's registers through the UEFI index table); a CC event log
    (``ccel``, or a TCG2 log declaring one SHA-384 or SM3 bank) names its CC MR
    indices after ``arch`` (``rtmrN`` for tdx, ``remN`` for cca).
    """
    fmt = format or detect(data)
    if fmt not in FORMATS:
        raise InputError(f"unknown log format {fmt!r} (formats: {', '.join(FORMATS)})")
    if arch not in (None, "tpm", "tdx", "cca"):
        raise InputError(f"unknown architecture {arch!r}: use tpm, tdx or cca")
    if fmt in ("tcg2", "tcg2-sha1", "ccel"):
        log = tcg2.parse(data)
        algs = tuple(log.algorithms)
        cc_log = fmt == "ccel" or (not log.legacy and _tcg2_arch(algs) == "tdx")
        log_arch = (arch or "tdx") if cc_log else "tpm"  # PCR indices: with another arch the replay maps them
        events = tcg2.to_events(log, arch=log_arch, decode=decode)
        if fmt == "tcg2":  # a runtime log's TCG2 export is TCG2 whatever its banks, its directives shown as such
            exported = read_tcg2_export(events)
            if exported is not None:
                return EventLog(fmt, tuple(exported), log_arch, algs, raw=log)
        if cc_log and fmt == "tcg2":
            fmt = "ccel"
        return EventLog(fmt, tuple(events), log_arch, algs, raw=log)
    if fmt == "cel-json":
        recs = cel.parse_json(data)
        return EventLog(fmt, tuple(_cel_json_events(recs)), _cel_arch(recs), raw=recs)
    if fmt == "systemd":
        events = systemd.to_events(systemd.parse(data))
        return EventLog(fmt, tuple(events), "tdx" if any(e.register.startswith("rtmr") for e in events) else "tpm")
    if fmt == "cel-tlv":
        raw = cel_tlv.decode_base64(data) if cel_tlv.looks_like_base64_cel(data) else data
        tlv = cel_tlv.parse_tlv(raw)
        events = cel_tlv.to_events(tlv)
        return EventLog(fmt, tuple(events), "tdx" if any(e.register.startswith(("rtmr", "mrtd")) for e in events) else "tpm", raw=tlv)
    if fmt in ("ima-binary", "ima-ascii"):
        if fmt == "ima-binary":
            # Per-bank lists (binary_runtime_measurements_sha256, ...) and big-endian hosts: guess the layout.
            alg, big = ima.guess_binary_layout(data) or (HashAlg.SHA1, False)
            entries = ima.parse_binary(data, alg=alg, big_endian=big)
        else:
            entries = ima.parse_ascii(data)
        return EventLog(fmt, tuple(ima.to_events(entries)), "tpm", raw=entries)
    events = runtime_log_events(data, register=register)
    return EventLog("tsmr", tuple(events), "tpm" if register.startswith("pcr") else "tdx")


def show(log: EventLog, *, quirks: Sequence[str] = ()) -> dict[str, Any]:
    """What ``tsmr eventlog show --json`` prints: every event, decoded, with its digest check.

    ``digest_matches_data`` is True when every recorded digest is the hash of the
    event's data (under the named quirks), False when one is not, and None when
    the data does not determine the digest (a PE image, a firmware volume ...).
    """
    rows = []
    for e in log.events:
        row = e.to_json()
        results = [check(e, a, quirks) for a in e.algs] if e.measured else []
        verdicts = [r for r, _ in results]
        row["digest_matches_data"] = None if not verdicts or any(v is None for v in verdicts) else all(verdicts)
        used = sorted({q for _, q in results if q})
        if used:
            row["quirks"] = used
        rows.append(row)
    return {"format": log.format, "arch": log.arch, "events": rows}


def _tcg2_arch(algs: Sequence[HashAlg]) -> str:
    # A CC event log (TDX CCEL, Hygon CSV) declares one bank, SHA-384 or SM3; a TPM log more.
    return "tdx" if len(algs) == 1 and algs[0] in (HashAlg.SHA384, HashAlg.SM3_256) else "tpm"


def tcg2_arch(data: bytes) -> str:
    """``tdx`` for a CC event log, ``tpm`` for a TPM log, from the Spec ID event alone."""
    spec, header, _ = tcg2.reader._parse_header(data)
    return _tcg2_arch(spec.hash_algs) if header is not None else "tpm"


def _cel_arch(recs: Sequence[Any]) -> str:
    types = {r.index_type for r in recs}
    return "tdx" if "rtmr" in types else "cca" if "rem" in types else "tpm"


def _register(index_type: str, index: int) -> str:
    return f"{index_type}{index}"


def _cel_json_events(recs: Sequence[Any]) -> list[Event]:
    out = []
    for n, r in enumerate(recs):
        content = r.content
        data = b""
        rule = None
        summary = r.content_type
        measured = True
        etype = r.content_type
        if r.content_type == "tsmr" and isinstance(content, dict) and isinstance(content.get("record"), str):
            data = content["record"].encode()
            summary = content["record"][:120]
            if not data.startswith(b"# .EXTEND "):
                rule = DATA
        elif r.content_type == "pcclient_std" and isinstance(content, dict) and type(content.get("event_type")) is int:
            try:
                data = bytes.fromhex(str(content.get("event_data", "")))
            except ValueError:
                raise ParseError("pcclient_std event_data is not hex", format="cel-json", field=f"record {n}") from None
            code = content["event_type"]
            etype = tcg2.event_type_name(code)
            measured = code != tcg2.EV_NO_ACTION
            rule = uefi.data_rule(code, data)
            summary = uefi.describe(code, data)[0]
        else:
            data = json.dumps(content, separators=(",", ":"), sort_keys=True).encode() if content is not None else b""
        out.append(
            Event("cel", n, r.index, _register(r.index_type, r.index), etype, tuple(r.digests), data,
                  measured, rule, summary, {"content": content} if content is not None else None)
        )
    return out


def runtime_log_events(
    data: bytes, *, register: str = "rtmr3", first_line: int = 1, banks: Sequence[HashAlg] = ()
) -> list[Event]:
    """A tsmr runtime log (or CoCo AAEL v1) as unified events; sync records carry their declared values.

    ``first_line`` and ``banks`` read a later part of a log (the records after a replay checkpoint,
    :mod:`tsmr.runtime_log.checkpoint`): its first line is line ``first_line`` of the log, and its
    event records carry digests for ``banks``, the banks the last sync record before it declared.
    Both default to the start of a log, so that the events of a log read in parts are the events of
    the whole log.

    A log that is valid UTF-8 without control characters (every honest one) is read in one pass:
    decoded once, and only its lines that may be something other than a plain event record
    (blank, ``#``, ``SYNC``, ``INIT``, a space at either end) go through
    :func:`~tsmr.runtime_log.records.classify`.  Any other log is read line by line
    (:func:`_runtime_log_events_by_line`), which finds its first fault in line order; both give
    the same events, and the same error, for every input.
    """
    if first_line < 1:
        raise InputError(f"first_line is {first_line}: lines are numbered from 1")
    if data and not data.endswith(b"\n") and not (first_line == 1 and data.startswith(b"INIT ")):
        raise ParseError("the log ends in a partial line: it is truncated", format="tsmr-log", offset=len(data))
    if not data.endswith(b"\n") or _FORBIDDEN_BYTES.search(data) is not None:
        return _runtime_log_events_by_line(data, register, first_line, banks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _runtime_log_events_by_line(data, register, first_line, banks)
    # Valid UTF-8, so every LF byte is a character of its own: the two splits align line for line.
    lines = data.split(b"\n")
    texts = text.split("\n")
    lines.pop()
    texts.pop()
    out: list[Event] = []
    append = out.append
    hashers: list[tuple[HashAlg, Any]] = [(a, a.constructor) for a in banks]
    one: tuple[HashAlg, Any] | None = hashers[0] if len(hashers) == 1 else None
    special = _SPECIAL_FIRST
    skip = first_line  # texts[n - skip] is line n's text
    for n, raw in enumerate(lines, first_line):
        if raw and raw[0] not in special and raw[-1] != 0x20:  # a plain event record (what classify says of it)
            if one is not None:  # one bank (a CC register's): no comprehension per line
                digests: tuple[tuple[HashAlg, bytes], ...] = ((one[0], one[1](raw).digest()),)
            else:
                digests = tuple([(a, h(raw).digest()) for a, h in hashers])
            append(Event("tsmr", n, 0, register, "event", digests, raw, True, DATA, texts[n - skip][:120]))
            continue
        line = classify(raw, lineno=n)
        if line.kind is Kind.SYNC:
            hashers = [(a, a.constructor) for a, _ in line.values]
            one = hashers[0] if len(hashers) == 1 else None
            append(Event("tsmr", n, 0, register, "sync", tuple([(a, h(raw).digest()) for a, h in hashers]), raw, True,
                         DATA, texts[n - skip][:120], {"declares": {a.kernel_name: v.hex() for a, v in line.values}}))
        elif line.kind is Kind.EXTEND:
            append(Event("tsmr", n, 0, register, "extend", line.values, raw, True, None, texts[n - skip][:120]))
        elif line.kind is Kind.EVENT:
            append(Event("tsmr", n, 0, register, "event", tuple([(a, h(raw).digest()) for a, h in hashers]), raw,
                         True, DATA, texts[n - skip][:120]))
    return out


# First bytes of lines that may be something other than a plain event record: the one-pass way
# of runtime_log_events leaves those to classify(), as it does any log holding a byte classify()
# refuses in every line (records._FORBIDDEN_BYTES: C0 controls but LF, and DEL).  A property test
# holds both ways to the same events and errors.
_SPECIAL_FIRST = frozenset(b"#SI ")


def _runtime_log_events_by_line(data: bytes, register: str, first_line: int = 1,
                                banks: Sequence[HashAlg] = ()) -> list[Event]:
    """:func:`runtime_log_events` one line at a time: classified, then decoded for its summary."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out: list[Event] = []
    algs: tuple[HashAlg, ...] = tuple(banks)
    for n, raw in enumerate(lines, first_line):
        line = classify(raw, lineno=n)
        if line.kind is Kind.SYNC:
            algs = tuple(a for a, _ in line.values)
            out.append(Event("tsmr", n, 0, register, "sync", tuple((a, a.hash(raw)) for a in algs), raw, True, DATA,
                             line.text[:120], {"declares": {a.kernel_name: v.hex() for a, v in line.values}}))
        elif line.kind is Kind.EXTEND:
            out.append(Event("tsmr", n, 0, register, "extend", line.values, raw, True, None, line.text[:120]))
        elif line.kind is Kind.EVENT:
            out.append(Event("tsmr", n, 0, register, "event", tuple((a, a.hash(raw)) for a in algs), raw, True, DATA,
                             line.text[:120]))
    return out


__all__ = ["EventLog", "FORMATS", "detect", "parse", "show", "runtime_log_events"]
