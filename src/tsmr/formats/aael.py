"""AAEL v2: Confidential Containers Attestation-Agent event log entries in TCG2 ``EV_EVENT_TAG`` events.

Since July 2025 (guest-components 74cbe4b3, trustee ee6e9a28) the CoCo
Attestation Agent records each runtime measurement as a crypto-agile TCG2
event appended to the CCEL (reference/tsm-mr-abi.md §5.3)::

    pcrIndex   = CC MR index (4 = RTMR3 for AA's default PCR 17)
    eventType  = EV_EVENT_TAG (6)
    digests    = one digest: H(event data)
    event data = TCG_PCClientTaggedEvent (TCG PC Client PFP §10.4.2.1):
                 u32 taggedEventID = 0x4141454C ("AAEL"; LE bytes 4C 45 41 41)
                 u32 taggedEventDataSize
                 taggedEventData = UTF-8 text "<domain> <operation> <content>"

The digest covers the **whole tagged event** (ID, size and text), not the text
alone; on the Alibaba Cloud capture in trustee's test data both AAEL events
satisfy it and trustee reports ``digest_matches_event: true`` for them.  So an
AAEL event's :class:`~tsmr.events.Event` has ``data`` = the whole event data
and ``data_rule`` = :data:`~tsmr.events.DATA`.

Text rules (trustee AAEL spec, PR #792): domain and operation contain no
whitespace and are separated by single spaces; content is the rest of the
line (it may contain spaces, is often RFC 8785 JSON) and has no line break.
``content_json`` is the decoded content when it is a JSON object or array;
scalars stay text, so that ``"1.0"`` or ``"null"`` keep their spelling.

AAEL v1 (plain text lines with an INIT record) is the runtime-log reader's
business, not this module's.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..algorithms import HashAlg
from ..errors import InputError, ParseError
from ..events import DATA, Event
from ..registers import ccmr_to_register

FORMAT = "aael"

AAEL_TAG_ID = 0x4141454C
"""taggedEventID of AAEL entries: the ASCII bytes 'AAEL' read as a big-endian number."""
EV_EVENT_TAG = 0x00000006  # TCG PC Client PFP §10.4.1

MAX_TEXT = 1 << 20
"""Longest entry text accepted (1 MiB); AA events are a line of text."""

_TAGGED_HEAD = struct.Struct("<II")  # TCG_PCClientTaggedEvent: taggedEventID, taggedEventDataSize
_TAG_PREFIX = _TAGGED_HEAD.pack(AAEL_TAG_ID, 0)[:4]


@dataclass(frozen=True, slots=True)
class AAELEntry:
    """One AAEL v2 entry (trustee AAEL spec; tsm-mr-abi.md §5.3): ``<domain> <operation> <content>``.

    ``content_json`` is the decoded content when it is a JSON object or array,
    else None.  It takes no part in equality (``content`` says it all).
    """

    domain: str
    operation: str
    content: str
    content_json: Any = field(default=None, compare=False, hash=False)

    @property
    def text(self) -> str:
        return f"{self.domain} {self.operation} {self.content}"


class _Dup(ValueError):
    pass


def _no_dups(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Dup("duplicate member")
    return obj


def _reject_constant(name: str) -> Any:
    raise _Dup(name)


_JSON = json.JSONDecoder(object_pairs_hook=_no_dups, parse_constant=_reject_constant)


def _content_json(content: str) -> Any:
    # Only structured content is decoded: a quick look at the first character avoids running
    # the decoder over every plain-text content.
    if not content or content[0] not in "{[":
        return None
    try:
        value = _JSON.decode(content)
    except (ValueError, RecursionError):  # JSONDecodeError, duplicates, NaN, deep nesting
        return None
    return value if isinstance(value, (dict, list)) else None


def _fail(message: str, offset: int, where: str) -> ParseError:
    return ParseError(message, format=FORMAT, offset=offset, field=where)


def is_tagged_aael(data: bytes) -> bool:
    """True if event data starts with the AAEL taggedEventID (cheap; does not validate the rest)."""
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:4]) == _TAG_PREFIX


def split_text(text: str, *, offset: int = 0) -> AAELEntry:
    """Split ``<domain> <operation> <content>`` into an :class:`AAELEntry` (ParseError if malformed)."""
    if "\n" in text or "\r" in text:
        raise _fail("AAEL text contains a line break", offset, "taggedEventData")
    first = text.find(" ")
    second = text.find(" ", first + 1) if first >= 0 else -1
    if first <= 0 or second < 0 or second == first + 1:
        raise _fail("AAEL text is not '<domain> <operation> <content>'", offset, "taggedEventData")
    domain, operation, content = text[:first], text[first + 1:second], text[second + 1:]
    if any(c.isspace() for c in domain) or any(c.isspace() for c in operation):
        raise _fail("AAEL domain and operation must not contain whitespace", offset, "taggedEventData")
    return AAELEntry(domain, operation, content, _content_json(content))


def decode_tagged(data: bytes | bytearray | memoryview) -> AAELEntry:
    """Decode the event data of an AAEL ``EV_EVENT_TAG`` event (TCG_PCClientTaggedEvent with ID 'AAEL').

    Raises :class:`ParseError` if the data is not exactly one AAEL tagged event:
    another taggedEventID, a size that does not match the bytes, text that is
    not UTF-8 or not ``<domain> <operation> <content>``.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InputError(f"aael: expected bytes, got {type(data).__name__}")
    if len(data) < _TAGGED_HEAD.size:
        raise _fail(f"tagged event of {len(data)} bytes is shorter than its {_TAGGED_HEAD.size}-byte head",
                    0, "TCG_PCClientTaggedEvent")
    tag, size = _TAGGED_HEAD.unpack_from(data, 0)
    if tag != AAEL_TAG_ID:
        raise _fail(f"taggedEventID 0x{tag:08x} is not AAEL (0x{AAEL_TAG_ID:08x})", 0, "taggedEventID")
    if size > MAX_TEXT:
        raise _fail(f"taggedEventDataSize {size} exceeds the limit MAX_TEXT={MAX_TEXT}", 4, "taggedEventDataSize")
    if size != len(data) - _TAGGED_HEAD.size:
        raise _fail(f"taggedEventDataSize {size} does not match the {len(data) - _TAGGED_HEAD.size} bytes "
                    "that follow", 4, "taggedEventDataSize")
    try:
        text = data[_TAGGED_HEAD.size:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail("AAEL text is not UTF-8", _TAGGED_HEAD.size + e.start, "taggedEventData") from None
    return split_text(text, offset=_TAGGED_HEAD.size)


def encode_tagged(domain: str, operation: str, content: str) -> bytes:
    """The event data AA writes for an entry (raises :class:`InputError` for text AAEL forbids)."""
    for name, value in (("domain", domain), ("operation", operation)):
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise InputError(f"aael: {name} must be a non-empty string without whitespace, got {value!r}")
    if not isinstance(content, str) or "\n" in content or "\r" in content:
        raise InputError("aael: content must be a string without line breaks")
    text = f"{domain} {operation} {content}".encode("utf-8")
    if len(text) > MAX_TEXT:
        raise InputError(f"aael: entry text of {len(text)} bytes exceeds MAX_TEXT={MAX_TEXT}")
    return _TAGGED_HEAD.pack(AAEL_TAG_ID, len(text)) + text


def is_aael(event: object) -> bool:
    """True for an AAEL v2 event: a TCG2 event (``tcg2.TCG2Event``) or a unified :class:`Event`.

    Checks the event type (EV_EVENT_TAG) and the taggedEventID; the rest is
    validated by :func:`decode_tagged`.
    """
    etype = getattr(event, "event_type", None)
    if etype is None:
        t = getattr(event, "type", None)
        if t == "aael":
            return True
        if t != "EV_EVENT_TAG":
            return False
    elif etype != EV_EVENT_TAG:
        return False
    return is_tagged_aael(getattr(event, "data", b""))


def to_event(ev: Any, seq: int, *, index_kind: str = "ccmr", source: str = FORMAT) -> Event:
    """The unified :class:`Event` of one AAEL TCG2 event (``seq``: its position in the log).

    ``index_kind`` says what the TCG2 ``pcrIndex`` holds: ``ccmr`` (a CCEL, as
    AA writes it; 4 = RTMR3) or ``pcr`` (a TPM log).  Raises
    :class:`ParseError` if the event data is not an AAEL tagged event.
    """
    entry = decode_tagged(ev.data)
    if index_kind == "ccmr":
        register = ccmr_to_register(ev.index) if 0 <= ev.index <= 4 else f"ccmr{ev.index}"
    elif index_kind == "pcr":
        register = f"pcr{ev.index}"
    else:
        raise InputError(f"aael: index_kind must be 'ccmr' or 'pcr', got {index_kind!r}")
    known = {int(a) for a in HashAlg}
    digests = tuple((HashAlg(a), d) for a, d in ev.digests if a in known)
    content = entry.content_json if entry.content_json is not None else entry.content
    summary = entry.text.replace("\n", "\\n")
    if len(summary) > 120:
        summary = summary[:119] + "\u2026"
    return Event(
        source=source, seq=seq, index=ev.index, register=register, type="aael", digests=digests,
        data=bytes(ev.data), data_rule=DATA, summary=summary,
        details={"domain": entry.domain, "operation": entry.operation, "content": content},
        offset=getattr(ev, "offset", 0),
    )


def to_events(tcg2_events: Iterable[Any], *, index_kind: str = "ccmr") -> list[Event]:
    """Unified events for the AAEL entries among ``tcg2_events``; ``seq`` is the position in that input.

    Events that are not AAEL (:func:`is_aael` false) are skipped; an event tagged
    AAEL whose data is malformed raises :class:`ParseError`.
    """
    return [to_event(ev, i, index_kind=index_kind) for i, ev in enumerate(tcg2_events) if is_aael(ev)]


def entries(tcg2_events: Iterable[Any]) -> list[AAELEntry]:
    """The decoded AAEL entries among ``tcg2_events``, in log order."""
    return [decode_tagged(ev.data) for ev in tcg2_events if is_aael(ev)]


def digest(domain: str, operation: str, content: str, alg: HashAlg) -> bytes:
    """What AA extends for an entry: H(whole tagged event data)."""
    return HashAlg(alg).hash(encode_tagged(domain, operation, content))


def make_tcg2_event(domain: str, operation: str, content: str, *, index: int = 4,
                    algs: Sequence[HashAlg] = (HashAlg.SHA384,)) -> Any:
    """The TCG2 event AA appends for an entry (a ``tcg2.TCG2Event``; CC MR 4 = RTMR3 by default)."""
    from .tcg2 import TCG2Event  # lazily: aael is usable without the TCG2 codec loaded

    data = encode_tagged(domain, operation, content)
    return TCG2Event(index, EV_EVENT_TAG, tuple((int(a), HashAlg(a).hash(data)) for a in algs), data)


__all__ = [
    "AAELEntry",
    "AAEL_TAG_ID",
    "MAX_TEXT",
    "decode_tagged",
    "digest",
    "encode_tagged",
    "entries",
    "is_aael",
    "is_tagged_aael",
    "make_tcg2_event",
    "split_text",
    "to_event",
    "to_events",
]
