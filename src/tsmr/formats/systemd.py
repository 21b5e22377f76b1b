"""systemd's userspace measurement logs: ``tpm2-measure.log`` and ``cc-measure.log``.

systemd records what it extends from userspace (``systemd-pcrextend``,
``systemd-cryptsetup``, ``systemd-tpm2-setup`` ...) in
``/run/log/systemd/tpm2-measure.log`` (TPM PCRs and NvPCRs) and, on Intel TDX,
``/run/log/systemd/cc-measure.log`` (RTMRs written through the tsm-mr sysfs
files).  Both are "close to TCG CEL-JSON" (systemd docs/TPM2_PCR_MEASUREMENTS.md;
src/shared/measurement-log.c): an RFC 7464 JSON text sequence of CEL-JSON
records without ``recnum`` (the consumer numbers them), ``content_type``
``"systemd"`` and a content object::

    {"pcr": 11, "digests": [{"hashAlg": "sha256", "digest": "<hex>"}],
     "content_type": "systemd",
     "content": {"string": "enter-initrd", "bootId": "<32 hex>", "timestamp": 4182731,
                 "eventType": "phase"}}

The index member is ``pcr``; ``nv_index`` (an NV index handle, with
``content.nvIndexName``) for NvPCRs; in ``cc-measure.log`` it is ``rtmr`` (the
RTMR number 0..3, src/shared/tdx-rtmr.c) with an optional ``mapped_pcr``.

What was hashed
---------------
``content.string`` is a *description*.  For the string measurements (boot
phases, ``machine-id:…``, ``product-id:…``, ``file-system:…``,
``cryptsetup-keyslot:…``, ``nvpcr-init:…``, ``verity:…``, ``login:…``) the
measured bytes are that string in UTF-8 without a NUL, so the digest is
``H(string)`` (TPM2_PCR_MEASUREMENTS.md, "Measured hash").  But
``systemd-pcrextend`` logs the word C-escaped (``cescape``) and cut to 1024
bytes plus ``...``; so a string containing a backslash, or a cut one, no longer
equals what was hashed, and ``volume-key`` records carry an HMAC keyed by the
LUKS volume key.  Such events get ``data_rule=None`` (their digests are still
replayed as recorded); every other string measurement gets
:data:`tsmr.events.DATA`.

Records of other content types (tools other than systemd append to
``tpm2-measure.log`` too) become events of type ``cel:<content_type>`` with
their digests as recorded.

A set sticky bit on the log file means a writer died between extending and
logging; that is file metadata, which this pure reader cannot see
(``tsmr.backends`` can).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..algorithms import HashAlg
from ..errors import InputError, ParseError
from ..events import DATA, Event
from . import cel
from .cel import CELRecord

FORMAT = "systemd"
CONTENT_TYPE = "systemd"

EVENT_TYPES = (
    "phase", "filesystem", "volume-key", "machine-id", "product-id", "keyslot", "nvpcr-init",
    "nvpcr-separator", "dm-verity", "os-separator", "login", "imds-userdata",
)
"""``eventType`` values written by systemd (Tpm2UserspaceEventType / UserspaceMeasurementEventType)."""

STRING_MEASURED = frozenset((
    "phase", "filesystem", "machine-id", "product-id", "keyslot", "nvpcr-init", "nvpcr-separator",
    "dm-verity", "os-separator", "login",
))
"""Event types whose measured bytes are the logged string (systemd docs/TPM2_PCR_MEASUREMENTS.md)."""

# libcel's JSON writer uses numbers for the first four event types (libcel cel_types.h
# CEL_TYPE_SYSTEMD_EVENT_*); systemd itself writes the names.
_NUMBERED_EVENT_TYPES = {0: "phase", 1: "filesystem", 2: "volume-key", 3: "machine-id"}

DESCRIPTION_LIMIT = 1024
"""systemd-pcrextend logs at most this many bytes of a word (EXTENSION_STRING_SAFE_LIMIT), then "..."."""
MAX_STRING = 1 << 20
"""Longest ``content.string`` accepted (1 MiB): bounds what one record can make us hash."""

_BOOT_ID = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True, slots=True)
class SystemdContent:
    """The ``content`` object of a systemd record (systemd src/shared/measurement-log.c).

    Every member is optional in the log; absent ones are None.  ``event_type``
    is the ``eventType`` name (libcel's numeric form is translated).
    """

    string: str | None = None
    event_type: str | None = None
    boot_id: str | None = None
    timestamp: int | None = None
    nv_index_name: str | None = None


def _fail(message: str, position: int, member: str) -> ParseError:
    return ParseError(f"record {position}: {message}", format=FORMAT, field=f"records[{position}].content{member}")


def decode_content(rec: CELRecord, position: int = 0) -> SystemdContent | None:
    """The decoded systemd content of ``rec``, or None for a record of another content type.

    Raises :class:`ParseError` when a systemd content member has the wrong type.
    """
    if rec.content_type != CONTENT_TYPE:
        return None
    c = rec.content
    if not isinstance(c, dict):
        raise _fail(f"content must be a JSON object, got {type(c).__name__}", position, "")
    string = c.get("string")
    if string is not None:
        if not isinstance(string, str):
            raise _fail("string must be a JSON string", position, ".string")
        if len(string) > MAX_STRING:
            raise _fail(f"string of {len(string)} characters exceeds MAX_STRING={MAX_STRING}", position, ".string")
    et = c.get("eventType")
    if et is not None:
        if type(et) is int and et in _NUMBERED_EVENT_TYPES:
            et = _NUMBERED_EVENT_TYPES[et]
        elif not isinstance(et, str) or not et:
            raise _fail(f"eventType must be a non-empty string, got {et!r}", position, ".eventType")
    boot_id = c.get("bootId")
    if boot_id is not None and (not isinstance(boot_id, str) or not _BOOT_ID.fullmatch(boot_id)):
        raise _fail("bootId must be a 128-bit id in hex", position, ".bootId")
    ts = c.get("timestamp")
    if ts is not None and (type(ts) is not int or ts < 0):
        raise _fail(f"timestamp must be a non-negative integer, got {ts!r}", position, ".timestamp")
    nv_name = c.get("nvIndexName")
    if nv_name is not None and not isinstance(nv_name, str):
        raise _fail("nvIndexName must be a JSON string", position, ".nvIndexName")
    return SystemdContent(string, et, boot_id.lower().replace("-", "") if boot_id else None, ts, nv_name)


def parse(data: bytes | bytearray | memoryview) -> tuple[CELRecord, ...]:
    """Parse a systemd measurement log (JSON-SEQ or a JSON array) into CEL-JSON records.

    Records are read by :func:`tsmr.formats.cel.parse_json` (``nv_index``
    records allowed), then each systemd content is checked; errors are
    :class:`ParseError` naming the record.  A record cut short at the end (a
    writer that died mid-append) is an error too: callers that want the
    complete prefix can split on 0x1E themselves.
    """
    records = cel.parse_json(data, allow_nv_index=True)
    for i, rec in enumerate(records):
        decode_content(rec, i)
    return records


def register_name(rec: CELRecord) -> str:
    """``pcr11``, ``rtmr2`` (cc-measure.log's ``rtmr`` is the RTMR number), ``rem1``, ``nv0x01d10200``."""
    if rec.index_type == "nv_index":
        return f"nv0x{rec.index:08x}"
    return f"{rec.index_type}{rec.index}"


def _is_cut(s: str) -> bool:
    return len(s.encode("utf-8")) > DESCRIPTION_LIMIT and s.endswith("...")


def to_event(rec: CELRecord, seq: int) -> Event:
    """The unified :class:`Event` of one record (``seq``: its position in the log)."""
    content = decode_content(rec, seq)
    details: dict[str, Any] = {}
    if rec.extra:
        details.update({k: v for k, v in rec.extra.items() if k in ("mapped_pcr", "mapped_nv_index")})
    if content is None:
        return Event(source=FORMAT, seq=seq, index=rec.index, register=register_name(rec),
                     type=f"cel:{rec.content_type}", digests=rec.digests, summary=rec.content_type,
                     details={"content_type": rec.content_type, **details})
    string = content.string
    data = string.encode("utf-8", "surrogatepass") if string is not None else b""
    data_rule = None
    if string is not None and content.event_type in STRING_MEASURED:
        if "\\" in string:
            details["escaped"] = True  # pcrextend's cescape changed what it logged
        elif _is_cut(string):
            details["truncated"] = True
        else:
            data_rule = DATA
    for key, value in (("eventType", content.event_type), ("string", string), ("bootId", content.boot_id),
                       ("timestamp", content.timestamp), ("nvIndexName", content.nv_index_name)):
        if value is not None:
            details[key] = value
    etype = f"systemd:{content.event_type}" if content.event_type else "systemd"
    text = (string or "").replace("\n", "\\n")
    if len(text) > 120:
        text = text[:119] + "\u2026"
    summary = f"{content.event_type}: {text}" if content.event_type else text
    return Event(source=FORMAT, seq=seq, index=rec.index, register=register_name(rec), type=etype,
                 digests=rec.digests, data=data, data_rule=data_rule, summary=summary, details=details)


def to_events(records: Iterable[CELRecord]) -> list[Event]:
    """Unified events (source ``systemd``) for the records of a systemd log, in log order."""
    return [to_event(r, i) for i, r in enumerate(records)]


def parse_events(data: bytes | bytearray | memoryview) -> list[Event]:
    """``to_events(parse(data))``."""
    return to_events(parse(data))


# -- writer (test logs, exports) ----------------------------------------------------------------------


def make_record(
    string: str,
    *,
    pcr: int | None = None,
    rtmr: int | None = None,
    event_type: str | None = "phase",
    algs: Sequence[HashAlg] = (HashAlg.SHA256,),
    boot_id: str | None = None,
    timestamp: int | None = None,
    mapped_pcr: int | None = None,
    digests: Sequence[tuple[HashAlg, bytes]] | None = None,
) -> CELRecord:
    """A record as systemd writes it for a string measurement: digests = H(string) per bank.

    Exactly one of ``pcr`` (tpm2-measure.log) and ``rtmr`` (cc-measure.log, where
    the bank is SHA-384) must be given.  ``digests`` overrides the computed ones
    (for measurements whose bytes are not the string, e.g. volume keys).
    """
    if (pcr is None) == (rtmr is None):
        raise InputError("systemd: give exactly one of pcr= and rtmr=")
    content: dict[str, Any] = {}
    if string is not None:
        content["string"] = string
    if boot_id is not None:
        content["bootId"] = boot_id
    if timestamp is not None:
        content["timestamp"] = timestamp
    if event_type is not None:
        content["eventType"] = event_type
    raw = string.encode("utf-8")
    if digests is None:
        digests = tuple((HashAlg(a), HashAlg(a).hash(raw)) for a in algs)
    extra = {"mapped_pcr": mapped_pcr} if mapped_pcr is not None else {}
    if pcr is not None:
        return CELRecord(0, "pcr", pcr, tuple(digests), CONTENT_TYPE, content, extra)
    return CELRecord(0, "rtmr", rtmr, tuple(digests), CONTENT_TYPE, content, extra)  # type: ignore[arg-type]


def encode(records: Iterable[CELRecord]) -> bytes:
    """Write records the way systemd does: JSON-SEQ, no recnum (``nv_index`` records cannot be written)."""
    return cel.encode_json(records, seq=True, recnum=False)


__all__ = [
    "CONTENT_TYPE",
    "DESCRIPTION_LIMIT",
    "EVENT_TYPES",
    "MAX_STRING",
    "STRING_MEASURED",
    "SystemdContent",
    "decode_content",
    "encode",
    "make_record",
    "parse",
    "parse_events",
    "register_name",
    "to_event",
    "to_events",
]
