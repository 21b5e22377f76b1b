"""CEL-TLV: the binary TLV encoding of the TCG Canonical Event Log (TCG CEL v1.0, "CEL-TLV").

Theory of operation
-------------------
Every field is a TLV: ``type`` (1 byte), ``length`` (4 bytes, **big-endian**),
``value`` (``length`` bytes).  A record (TCG CEL §5.1, ``TPMS_CEL_EVENT``) is
four TLVs back to back, in this order:

====  ==========================================================================
type  field
====  ==========================================================================
0     ``recnum``: unsigned big-endian integer.  go-tpm-tools / go-eventlog write
      8 bytes, libcel the minimal number of bytes (at least one); 1..8 are read.
1/2   the index: ``pcr`` (1) or ``nv_index`` (2), or the confidential-computing
      MR index (108, google/go-eventlog ``cel.CCMRType``; CC MR index N is
      RTMR N-1, 0 is MRTD).  Unsigned big-endian, 1..4 bytes.
3     ``digests``: nested TLVs whose type is the TPM_ALG_ID (it fits in a byte
      for every hash: 0x04 sha1, 0x0B sha256, 0x0C sha384 ...) and whose value
      is the digest.
4..   the content; its TLV type is the *content type*: 4 CEL management, 5
      PCClient STD, 7 IMA template, 8 IMA TLV, 80 Google COS (Confidential
      Space launcher, go-tpm-tools ``cel.CosEventType``; not reserved by TCG).
====  ==========================================================================

A log is records concatenated, nothing else: no header, no padding.  Records
are kept with the raw bytes of their content so that ``encode_tlv(parse_tlv(x))
== x``; the integer widths the writer chose are remembered for the same reason
(they are not part of equality).  Known content types are decoded while
parsing, so a malformed COS or management content is a :class:`ParseError` at
parse time, not later.

What the digests cover depends on the content type, which is why
:func:`to_events` sets ``data``/``data_rule`` per content type: COS records are
digested over their *whole content TLV* (type byte, length, value: go-tpm-tools
``CosTlv.GenerateDigest``), IMA template records over the template data; for
PCClient STD records the digest is whatever the firmware measured (not
recomputable in general) and for CEL management records no rule is
established here.

Google's launcher ships the log base64-encoded (``cel.b64``); see
:func:`looks_like_base64_cel` and :func:`decode_base64`.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..algorithms import HashAlg, find_digest
from ..errors import InputError, ParseError
from ..events import DATA, Event
from ..registers import ccmr_to_register
from . import tcg2  # the event type names live with the TCG2 codec

FORMAT = "cel-tlv"

# -- type numbers -------------------------------------------------------------------------------------

# Top-level TLV types (TCG CEL v1.0 §5.1; libcel include/cel_types.h).
TYPE_RECNUM = 0
TYPE_PCR = 1
TYPE_NV_INDEX = 2
TYPE_DIGESTS = 3
TYPE_CCMR = 108  # google/go-eventlog cel.CCMRType: the CC MR index (UEFI 2.10 §38.4.1)

INDEX_TYPES: Mapping[int, str] = {TYPE_PCR: "pcr", TYPE_NV_INDEX: "nv_index", TYPE_CCMR: "ccmr"}

# Content types (the type of the content TLV).
CONTENT_CEL_MGT = 4
CONTENT_PCCLIENT_STD = 5
CONTENT_IMA_TEMPLATE = 7
CONTENT_IMA_TLV = 8
CONTENT_COS = 80

CONTENT_TYPE_NAMES: Mapping[int, str] = {
    CONTENT_CEL_MGT: "cel",
    CONTENT_PCCLIENT_STD: "pcclient_std",
    CONTENT_IMA_TEMPLATE: "ima_template",
    CONTENT_IMA_TLV: "ima_tlv",
    CONTENT_COS: "cos",
}

# CEL management content (TCG CEL §5.2.1): a list of TLVs.  cel_timestamp and
# state_trans are 80/81 in libcel but 0x80/0x81 in whooo/eventlogs; both are read.
MGT_CEL_VERSION = 1
MGT_FIRMWARE_END = 2
MGT_CEL_TIMESTAMP = 80
MGT_STATE_TRANS = 81
_MGT_NAMES: Mapping[int, str] = {
    MGT_CEL_VERSION: "cel_version",
    MGT_FIRMWARE_END: "firmware_end",
    MGT_CEL_TIMESTAMP: "cel_timestamp",
    MGT_STATE_TRANS: "state_trans",
    0x80: "cel_timestamp",
    0x81: "state_trans",
}
_CEL_VERSION_FIELDS: Mapping[int, str] = {0: "major", 1: "minor"}
STATE_TRANS_NAMES: Mapping[int, str] = {0: "suspend", 1: "hibernate", 2: "kexec"}

# PCClient STD content (TCG CEL §5.2.2) and IMA template content (§5.2.3).
_PCCLIENT_FIELDS: Mapping[int, str] = {0: "event_type", 1: "event_data"}
_IMA_TEMPLATE_FIELDS: Mapping[int, str] = {0: "template_name", 1: "template_data"}
# IMA TLV content (safforddr/cel_util cel.h).
_IMA_TLV_FIELDS: Mapping[int, str] = {
    0: "path", 1: "datahash", 2: "datasig", 3: "owner", 4: "group", 5: "mode", 6: "timestamp", 7: "label",
}

# COS content: exactly one nested TLV whose type is the CosType (go-tpm-tools cel/cos_tlv.go,
# an iota sequence).  10 is confirmed by the go-tpm-tools cel.b64 capture ("ON"); 11 follows
# GpuCCModeType in the launcher's sources and is inferred from that order.
COS_TYPE_NAMES: Mapping[int, str] = {
    0: "image_ref",
    1: "image_digest",
    2: "restart_policy",
    3: "image_id",
    4: "arg",
    5: "env_var",
    6: "override_arg",
    7: "override_env",
    8: "launch_separator",
    9: "memory_monitor",
    10: "gpu_cc_mode",
    11: "gpu_device_attestation_binding",
}
COS_TYPES: Mapping[str, int] = {name: value for value, name in COS_TYPE_NAMES.items()}
_COS_TEXT_TYPES = frozenset((0, 1, 2, 3, 4, 5, 6, 7, 8, 10))

# -- limits (each one is named in the error that enforces it) -------------------------------------

MAX_VALUE_SIZE = 16 * 1024 * 1024
"""Largest TLV value accepted: 16 MiB (as tcg2.MAX_EVENT_SIZE); bounds every length field."""
MAX_DIGESTS = 16
"""Most digests one record may carry (one per bank)."""
MAX_DIGEST_SIZE = 128
"""Largest digest of an algorithm tsmr has no hash for (known ones must have their own size)."""
MAX_BASE64 = 16 * MAX_VALUE_SIZE
"""Longest base64 text :func:`decode_base64` accepts (256 MiB)."""
MAX_MGT_ITEMS = 16
"""Most items in one CEL management content (libcel's TPML_EVENT_CELMGT holds 16)."""
_MAX_INT_WIDTH = {TYPE_RECNUM: 8, TYPE_PCR: 4, TYPE_NV_INDEX: 4, TYPE_CCMR: 4}
_U64_MAX = (1 << 64) - 1
_U32_MAX = 0xFFFFFFFF
_DETAIL_HEX_LIMIT = 4096  # bytes shown as hex in details; Event.data keeps all of it

# -- wire structs -------------------------------------------------------------------------------------

_TL = struct.Struct(">BI")  # TLV head: type u8, length u32 big-endian
_TL_SIZE = _TL.size


# -- values -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CELTLVRecord:
    """One CEL-TLV record (TCG CEL v1.0 §5.1, ``TPMS_CEL_EVENT`` in TLV encoding).

    ``index_type`` is the index TLV's type (1 pcr, 2 nv_index, 108 CC MR) and
    ``index`` its value.  ``digests`` are (TPM_ALG_ID, digest) pairs in record
    order, raw ids kept (an algorithm tsmr cannot hash is carried, not
    dropped).  ``content_type`` is the content TLV's type and ``content`` its
    raw value.  ``recnum_width``/``index_width`` are the byte widths read (None:
    the writer's default, 8 and minimal); with ``offset`` they are not part of
    equality.
    """

    recnum: int
    index_type: int
    index: int
    digests: tuple[tuple[int, bytes], ...]
    content_type: int
    content: bytes
    recnum_width: int | None = field(default=None, compare=False)
    index_width: int | None = field(default=None, compare=False)
    offset: int = field(default=0, compare=False)

    def digest(self, alg: HashAlg | int) -> bytes | None:
        """This record's digest for ``alg``, or None if it has none."""
        return find_digest(self.digests, alg)

    @property
    def content_tlv(self) -> bytes:
        """The whole content TLV (type, length, value): what a COS digest covers."""
        return _TL.pack(self.content_type, len(self.content)) + self.content

    @property
    def index_name(self) -> str:
        return INDEX_TYPES.get(self.index_type, f"index_{self.index_type}")

    @property
    def register(self) -> str:
        """The unified register name: ``pcr13``, ``rtmr3`` (CC MR 4), ``mrtd``, ``nv0x01d10200``."""
        return _register(self.index_type, self.index)


def _register(index_type: int, index: int) -> str:
    if index_type == TYPE_PCR:
        return f"pcr{index}"
    if index_type == TYPE_CCMR:
        # CC MR index N is RTMR N-1 and 0 is MRTD (UEFI 2.10 §38.4.1); beyond 4 there is no name.
        return ccmr_to_register(index) if 0 <= index <= 4 else f"ccmr{index}"
    return f"nv0x{index:08x}"


# -- reader -------------------------------------------------------------------------------------------


def _fail(message: str, offset: int, where: str) -> ParseError:
    return ParseError(message, format=FORMAT, offset=offset, field=where)


def _read_tlv(buf: bytes, pos: int, end: int, where: str) -> tuple[int, int, int]:
    """Read a TLV head at ``pos``; return (type, value start, value end) inside ``buf[:end]``."""
    if end - pos < _TL_SIZE:
        raise _fail(f"truncated TLV: {end - pos} bytes left, a TLV head is {_TL_SIZE}", pos, where)
    t, n = _TL.unpack_from(buf, pos)
    if n > MAX_VALUE_SIZE:
        raise _fail(f"TLV length {n} exceeds the limit MAX_VALUE_SIZE={MAX_VALUE_SIZE}", pos + 1, where)
    start = pos + _TL_SIZE
    if n > end - start:
        raise _fail(f"TLV length {n} exceeds the {end - start} bytes left", pos + 1, where)
    return t, start, start + n


def _uint(buf: bytes, start: int, stop: int, max_width: int, what: str, where: str) -> tuple[int, int]:
    """A big-endian unsigned integer of 1..max_width bytes; returns (value, width)."""
    width = stop - start
    if not 1 <= width <= max_width:
        raise _fail(f"{what} is {width} bytes; it must be 1..{max_width}", start - 4, where)
    # Widths vary per writer (libcel: minimal, go-tpm-tools: fixed), so no fixed Struct fits.
    return int.from_bytes(buf[start:stop], "big"), width


def _nested(buf: bytes, start: int, stop: int, where: str, limit: int | None = None,
            what: str = "items") -> list[tuple[int, int, int]]:
    """The TLVs filling ``buf[start:stop]`` exactly, as (type, value start, value end)."""
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < stop:
        if limit is not None and len(out) >= limit:
            raise _fail(f"more than {limit} {what}", pos, where)
        t, vs, ve = _read_tlv(buf, pos, stop, f"{where}[{len(out)}]")
        out.append((t, vs, ve))
        pos = ve
    return out


def _digests(buf: bytes, start: int, stop: int) -> tuple[tuple[int, bytes], ...]:
    known = {int(a): a for a in HashAlg}
    out: list[tuple[int, bytes]] = []
    for i, (alg, vs, ve) in enumerate(_nested(buf, start, stop, "digests", MAX_DIGESTS,
                                              "digests (MAX_DIGESTS)")):
        where = f"digests[{i}]"
        size = ve - vs
        h = known.get(alg)
        if h is not None and size != h.digest_size:
            raise _fail(f"{h} digest is {size} bytes, must be {h.digest_size}", vs - 4, where)
        if h is None and not 1 <= size <= MAX_DIGEST_SIZE:
            raise _fail(f"digest of algorithm 0x{alg:02x} is {size} bytes, not 1..{MAX_DIGEST_SIZE} "
                        "(MAX_DIGEST_SIZE)", vs - 4, where)
        if any(a == alg for a, _ in out):
            raise _fail(f"two digests for algorithm 0x{alg:04x}", vs - _TL_SIZE, where)
        out.append((alg, buf[vs:ve]))
    return tuple(out)


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _hex(raw: bytes) -> str:
    if len(raw) > _DETAIL_HEX_LIMIT:
        return raw[:_DETAIL_HEX_LIMIT].hex() + "..."
    return raw.hex()


def _fields(buf: bytes, start: int, stop: int, names: Mapping[int, str], where: str,
            required: Sequence[str] = ()) -> dict[str, tuple[int, int]]:
    """Nested TLVs with known, distinct types: name -> (value start, value end)."""
    out: dict[str, tuple[int, int]] = {}
    for t, vs, ve in _nested(buf, start, stop, where, len(names), "fields"):
        name = names.get(t)
        if name is None:
            raise _fail(f"unknown field type {t}", vs - _TL_SIZE, where)
        if name in out:
            raise _fail(f"field {name} appears twice", vs - _TL_SIZE, f"{where}.{name}")
        out[name] = (vs, ve)
    for name in required:
        if name not in out:
            raise _fail(f"missing field {name}", start, where)
    return out


def _decode_mgt(buf: bytes, start: int, stop: int) -> dict[str, Any]:
    """CEL management content (TCG CEL §5.2.1): returns details {"items": [...]}."""
    items: list[dict[str, Any]] = []
    tlvs = _nested(buf, start, stop, "content", MAX_MGT_ITEMS, "management items (MAX_MGT_ITEMS)")
    if not tlvs:
        raise _fail("empty CEL management content", start, "content")
    for i, (t, vs, ve) in enumerate(tlvs):
        where = f"content[{i}]"
        name = _MGT_NAMES.get(t)
        if name is None:
            raise _fail(f"unknown CEL management type {t}", vs - _TL_SIZE, where)
        item: dict[str, Any] = {"type": name}
        if name == "cel_version":
            f = _fields(buf, vs, ve, _CEL_VERSION_FIELDS, where, ("major", "minor"))
            for key, (a, b) in f.items():
                item[key] = _uint(buf, a, b, 2, f"cel_version {key}", f"{where}.{key}")[0]
        elif name == "firmware_end":
            if ve != vs:
                raise _fail(f"firmware_end carries {ve - vs} bytes; it is empty", vs - 4, where)
        elif name == "cel_timestamp":
            item["value"] = _uint(buf, vs, ve, 8, "cel_timestamp", where)[0]
        else:
            value = _uint(buf, vs, ve, 4, "state_trans", where)[0]
            item["value"] = STATE_TRANS_NAMES.get(value, value)
        items.append(item)
    return {"items": items}


def _decode_cos(buf: bytes, start: int, stop: int) -> dict[str, Any]:
    """COS content: exactly one nested TLV (go-tpm-tools ``TLV.ParseToCosTlv`` requires it)."""
    if stop - start < _TL_SIZE:
        raise _fail("COS content is shorter than one TLV head", start, "content")
    t, vs, ve = _read_tlv(buf, start, stop, "content.cos")
    if ve != stop:
        raise _fail(f"{stop - ve} bytes after the COS event TLV", ve, "content.cos")
    raw = buf[vs:ve]
    name = COS_TYPE_NAMES.get(t, f"cos_type_{t}")
    out: dict[str, Any] = {"cos_type": name, "cos_type_id": t}
    text = _text(raw) if t in _COS_TEXT_TYPES else None
    if t == COS_TYPES["memory_monitor"] and len(raw) == 1 and raw[0] in (0, 1):
        out["enabled"] = bool(raw[0])  # one byte, 1 = enabled (go-tpm-tools server/eventlog.go)
    elif text is not None:
        out["value"] = text
    else:
        out["value_hex"] = _hex(raw)
    return out


def _decode_pcclient(buf: bytes, start: int, stop: int) -> dict[str, Any]:
    f = _fields(buf, start, stop, _PCCLIENT_FIELDS, "content", ("event_type", "event_data"))
    a, b = f["event_type"]
    etype = _uint(buf, a, b, 4, "event_type", "content.event_type")[0]
    a, b = f["event_data"]
    return {"event_type": tcg2.event_type_name(etype), "event_type_id": etype,
            "event_data": _hex(buf[a:b])}


def _decode_ima_template(buf: bytes, start: int, stop: int) -> dict[str, Any]:
    f = _fields(buf, start, stop, _IMA_TEMPLATE_FIELDS, "content", ("template_name", "template_data"))
    a, b = f["template_name"]
    name = buf[a:b]
    text = name.decode("latin-1")  # checked to be ASCII on the next line
    if not name.isascii() or not text.isprintable():
        raise _fail("template_name is not printable ASCII", a, "content.template_name")
    a, b = f["template_data"]
    return {"template_name": text, "template_data": _hex(buf[a:b])}


def _decode_ima_tlv(buf: bytes, start: int, stop: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (a, b) in _fields(buf, start, stop, _IMA_TLV_FIELDS, "content").items():
        raw = buf[a:b]
        text = _text(raw) if name in ("path", "label") else None
        out[name] = text if text is not None else _hex(raw)
    return out


_DECODERS = {
    CONTENT_CEL_MGT: _decode_mgt,
    CONTENT_PCCLIENT_STD: _decode_pcclient,
    CONTENT_IMA_TEMPLATE: _decode_ima_template,
    CONTENT_IMA_TLV: _decode_ima_tlv,
    CONTENT_COS: _decode_cos,
}


def decode_content(record: CELTLVRecord) -> dict[str, Any]:
    """The decoded content of ``record`` as JSON values (raises :class:`ParseError` if malformed).

    Unknown content types give ``{"raw": hex}``.
    """
    dec = _DECODERS.get(record.content_type)
    if dec is None:
        return {"raw": _hex(record.content)}
    try:
        return dec(record.content, 0, len(record.content))
    except ParseError as e:
        # The decoder saw the content value alone: move its offsets to where it sits in the log.
        raise ParseError(_msg(e), format=FORMAT, offset=(e.offset or 0) + _content_start(record),
                         field=e.field) from None


def _content_start(rec: CELTLVRecord) -> int:
    """Offset of the content value in the log the record was read from (estimated for built records)."""
    rw = 8 if rec.recnum_width is None else rec.recnum_width
    iw = rec.index_width or max(1, (int(rec.index).bit_length() + 7) // 8)
    return rec.offset + 4 * _TL_SIZE + rw + iw + sum(_TL_SIZE + len(d) for _, d in rec.digests)


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InputError(f"cel-tlv: expected bytes, got {type(data).__name__}")


def _record(buf: bytes, pos: int, end: int, position: int) -> tuple[CELTLVRecord, int]:
    start = pos
    where = f"records[{position}]"
    t, vs, ve = _read_tlv(buf, pos, end, where + ".recnum")
    if t != TYPE_RECNUM:
        raise _fail(f"record {position} starts with TLV type {t}, not recnum ({TYPE_RECNUM})", pos,
                    where + ".recnum")
    recnum, recnum_width = _uint(buf, vs, ve, 8, "recnum", where + ".recnum")
    pos = ve
    t, vs, ve = _read_tlv(buf, pos, end, where + ".index")
    if t not in INDEX_TYPES:
        raise _fail(f"TLV type {t} where an index (pcr 1, nv_index 2, CC MR 108) must be", pos,
                    where + ".index")
    index, index_width = _uint(buf, vs, ve, 4, INDEX_TYPES[t], where + "." + INDEX_TYPES[t])
    index_type = t
    pos = ve
    t, vs, ve = _read_tlv(buf, pos, end, where + ".digests")
    if t != TYPE_DIGESTS:
        raise _fail(f"TLV type {t} where digests ({TYPE_DIGESTS}) must be", pos, where + ".digests")
    try:
        digests = _digests(buf, vs, ve)
    except ParseError as e:
        raise ParseError(_msg(e), format=FORMAT, offset=e.offset, field=f"{where}.{e.field}") from None
    pos = ve
    t, vs, ve = _read_tlv(buf, pos, end, where + ".content")
    if t in (TYPE_RECNUM, TYPE_PCR, TYPE_NV_INDEX, TYPE_DIGESTS, TYPE_CCMR):
        raise _fail(f"TLV type {t} where the content must be", pos, where + ".content")
    dec = _DECODERS.get(t)
    if dec is not None:
        try:
            dec(buf, vs, ve)  # validate now; to_events decodes again from the record
        except ParseError as e:
            raise ParseError(_msg(e), format=FORMAT, offset=e.offset, field=f"{where}.{e.field}") from None
    rec = CELTLVRecord(recnum, index_type, index, digests, t, buf[vs:ve], recnum_width, index_width, start)
    return rec, ve


def _msg(e: ParseError) -> str:
    """The message of a ParseError without its "format: " prefix and "(field…)" suffix."""
    text = str(e)
    prefix = f"{e.format}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    cut = text.rfind(" (")
    return text[:cut] if cut > 0 and text.endswith(")") else text


def parse_tlv(data: bytes | bytearray | memoryview) -> tuple[CELTLVRecord, ...]:
    """Parse a CEL-TLV log (records back to back, TCG CEL v1.0 §5) into records.

    Empty input is an empty log.  Anything that is not a sequence of complete,
    well-formed records raises :class:`ParseError` with the offset and field.
    """
    buf = _as_bytes(data)
    end = len(buf)
    pos = 0
    records: list[CELTLVRecord] = []
    while pos < end:
        rec, pos = _record(buf, pos, end, len(records))
        records.append(rec)
    return tuple(records)


# -- base64 wrapper -----------------------------------------------------------------------------------

_B64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_WS = re.compile(rb"[ \t\r\n]+")


def looks_like_base64_cel(data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` is base64 text whose decoding starts like a CEL-TLV record.

    Confidential Space hands out its CEL base64-encoded; a raw CEL-TLV log starts
    with byte 0x00 (the recnum type), which is never base64 text, so the two
    cannot be confused.  Only the first bytes are decoded.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return False
    text = _WS.sub(b"", bytes(data[:4096]))
    if len(text) < 8 or not _B64.fullmatch(text):
        return False
    try:
        head = base64.b64decode(text[:8], validate=True)
    except (binascii.Error, ValueError):
        return False
    # recnum TLV: type 0, then a big-endian length of 1..8 bytes.
    return len(head) >= 5 and head[0] == TYPE_RECNUM and 1 <= int.from_bytes(head[1:5], "big") <= 8


def decode_base64(data: bytes | bytearray | memoryview | str) -> bytes:
    """Decode a base64-wrapped CEL (whitespace and line breaks ignored); ParseError if not base64."""
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise ParseError("base64 text must be ASCII", format=FORMAT, offset=0, field="base64") from None
    text = _WS.sub(b"", _as_bytes(data))
    if len(text) > MAX_BASE64:
        raise ParseError(f"base64 text of {len(text)} bytes exceeds MAX_BASE64={MAX_BASE64}", format=FORMAT,
                         offset=0, field="base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ParseError(f"invalid base64: {e}", format=FORMAT, offset=0, field="base64") from None


# -- writer -------------------------------------------------------------------------------------------


def _put(t: int, value: bytes) -> bytes:
    if len(value) > MAX_VALUE_SIZE:
        raise InputError(f"cel-tlv: a TLV value of {len(value)} bytes exceeds MAX_VALUE_SIZE={MAX_VALUE_SIZE}")
    return _TL.pack(t, len(value)) + value


def _put_uint(t: int, value: int, width: int | None, max_width: int, what: str) -> bytes:
    if type(value) is not int or value < 0 or value >= 1 << (8 * max_width):
        raise InputError(f"cel-tlv: {what} must be an unsigned {8 * max_width}-bit integer, got {value!r}")
    need = max(1, (value.bit_length() + 7) // 8)
    if width is None:
        width = need
    if not need <= width <= max_width:
        raise InputError(f"cel-tlv: {what} {value} does not fit in {width} bytes (1..{max_width})")
    return _put(t, value.to_bytes(width, "big"))


def encode_record(rec: CELTLVRecord) -> bytes:
    """One record's bytes.  Raises :class:`InputError` for a record that cannot be written."""
    if rec.index_type not in INDEX_TYPES:
        raise InputError(f"cel-tlv: index type must be one of {sorted(INDEX_TYPES)}, got {rec.index_type!r}")
    if type(rec.content_type) is not int or not 0 <= rec.content_type <= 255 or rec.content_type in (
            TYPE_RECNUM, TYPE_PCR, TYPE_NV_INDEX, TYPE_DIGESTS, TYPE_CCMR):
        raise InputError(f"cel-tlv: {rec.content_type!r} is not a content type")
    if len(rec.digests) > MAX_DIGESTS:
        raise InputError(f"cel-tlv: {len(rec.digests)} digests, at most MAX_DIGESTS={MAX_DIGESTS}")
    known = {int(a): a for a in HashAlg}
    parts: list[bytes] = []
    seen: set[int] = set()
    for alg, d in rec.digests:
        if type(alg) is not int and not isinstance(alg, HashAlg) or not 0 <= int(alg) <= 255:
            raise InputError(f"cel-tlv: algorithm {alg!r} does not fit a one-byte TLV type")
        alg = int(alg)
        h = known.get(alg)
        size = len(d)
        if (h is not None and size != h.digest_size) or (h is None and not 1 <= size <= MAX_DIGEST_SIZE):
            raise InputError(f"cel-tlv: digest for algorithm 0x{alg:04x} is {size} bytes")
        if alg in seen:
            raise InputError(f"cel-tlv: two digests for algorithm 0x{alg:04x}")
        seen.add(alg)
        parts.append(_put(alg, bytes(d)))
    content = bytes(rec.content)
    dec = _DECODERS.get(rec.content_type)
    if dec is not None:
        try:
            dec(content, 0, len(content))  # write only what parse_tlv reads back
        except ParseError as e:
            raise InputError(f"cel-tlv: malformed {CONTENT_TYPE_NAMES[rec.content_type]} content: {_msg(e)}") from None
    return b"".join((
        _put_uint(TYPE_RECNUM, rec.recnum, 8 if rec.recnum_width is None else rec.recnum_width, 8, "recnum"),
        _put_uint(rec.index_type, rec.index, rec.index_width, 4, INDEX_TYPES[rec.index_type]),
        _put(TYPE_DIGESTS, b"".join(parts)),
        _put(rec.content_type, content),
    ))


def encode_tlv(records: Iterable[CELTLVRecord]) -> bytes:
    """Write records as CEL-TLV; ``encode_tlv(parse_tlv(x)) == x`` for every log this reader accepts."""
    return b"".join(encode_record(r) for r in records)


def cos_content(cos_type: int | str, value: bytes) -> bytes:
    """The value of a COS content TLV: one nested TLV {cos_type, value}."""
    t = COS_TYPES.get(cos_type) if isinstance(cos_type, str) else cos_type
    if type(t) is not int or not 0 <= t <= 255:
        raise InputError(f"cel-tlv: unknown COS type {cos_type!r}")
    return _put(t, bytes(value))


def cos_record(
    recnum: int,
    cos_type: int | str,
    value: bytes,
    *,
    index: int = 4,
    index_type: int = TYPE_CCMR,
    algs: Sequence[HashAlg] = (HashAlg.SHA384,),
) -> CELTLVRecord:
    """A COS record as the Confidential Space launcher writes it (CC MR 4 = RTMR3, SHA-384 by default).

    The digests are H(content TLV) per bank (go-tpm-tools ``CosTlv.GenerateDigest``).
    """
    content = cos_content(cos_type, value)
    tlv = _TL.pack(CONTENT_COS, len(content)) + content
    return CELTLVRecord(recnum, index_type, index, tuple((int(a), HashAlg(a).hash(tlv)) for a in algs),
                        CONTENT_COS, content)


# -- unified events -----------------------------------------------------------------------------------


def _summary_text(value: str, limit: int = 120) -> str:
    one = value.replace("\n", "\\n")
    return one if len(one) <= limit else one[: limit - 1] + "\u2026"


def to_event(rec: CELTLVRecord, seq: int) -> Event:
    """The unified :class:`Event` of one record (``seq``: its position in the log)."""
    details = decode_content(rec)
    digests = tuple((HashAlg(a), d) for a, d in rec.digests if a in _KNOWN_IDS)
    ct = rec.content_type
    measured = True
    fill = None
    data_rule: str | None = None
    if ct == CONTENT_COS:
        etype = f"cos:{details['cos_type']}"
        data = rec.content_tlv  # the digest covers type byte + length + value (go-tpm-tools)
        data_rule = DATA
        if "enabled" in details:
            shown = "enabled" if details["enabled"] else "disabled"
        else:
            shown = details.get("value", details.get("value_hex", ""))
        summary = f"{details['cos_type']} {_summary_text(shown)}".rstrip()
    elif ct == CONTENT_CEL_MGT:
        names = [item["type"] for item in details["items"]]
        etype = "cel:" + "+".join(names)
        data = rec.content
        summary = ", ".join(
            f"{i['type']} {i['major']}.{i['minor']}" if i["type"] == "cel_version"
            else f"{i['type']} {i['value']}" if "value" in i else i["type"]
            for i in details["items"])
    elif ct == CONTENT_PCCLIENT_STD:
        etype = f"pcclient:{details['event_type']}"
        data = _pcclient_data(rec.content)
        # EV_NO_ACTION is never extended (TCG PC Client PFP §10.4.5).
        measured = details["event_type_id"] != 3
        summary = f"{details['event_type']} ({len(data)} bytes)"
    elif ct == CONTENT_IMA_TEMPLATE:
        etype = f"ima:{details['template_name']}"
        data = _ima_template_data(rec.content)
        data_rule = DATA  # the template hash is H(template data) in each bank
        if digests and all(not any(d) for _, d in digests):
            fill = 0xFF  # IMA violation: logged as zeros, every bank extended with 0xFF bytes
        summary = f"{details['template_name']} ({len(data)} bytes)"
    elif ct == CONTENT_IMA_TLV:
        etype = "ima_tlv"
        data = rec.content
        summary = str(details.get("path", "ima_tlv"))
    else:
        etype = f"cel:content_{ct}"
        data = rec.content
        summary = f"content type {ct} ({len(data)} bytes)"
    return Event(
        source="cel", seq=seq, index=rec.index, register=rec.register, type=etype, digests=digests,
        data=data, measured=measured, data_rule=data_rule, summary=summary,
        details={"recnum": rec.recnum, "content_type": CONTENT_TYPE_NAMES.get(ct, ct), **details},
        offset=rec.offset, fill=fill,
    )


_KNOWN_IDS = frozenset(int(a) for a in HashAlg)


def _field_value(content: bytes, wanted: int) -> bytes:
    for t, vs, ve in _nested(content, 0, len(content), "content"):
        if t == wanted:
            return content[vs:ve]
    return b""  # pragma: no cover - parse_tlv/decode_content checked the field is there


def _pcclient_data(content: bytes) -> bytes:
    return _field_value(content, 1)


def _ima_template_data(content: bytes) -> bytes:
    return _field_value(content, 1)


def to_events(records: Iterable[CELTLVRecord]) -> list[Event]:
    """Unified events for ``records`` (source ``cel``), in log order."""
    return [to_event(r, i) for i, r in enumerate(records)]


__all__ = [
    "CELTLVRecord",
    "CONTENT_CEL_MGT",
    "CONTENT_COS",
    "CONTENT_IMA_TEMPLATE",
    "CONTENT_IMA_TLV",
    "CONTENT_PCCLIENT_STD",
    "CONTENT_TYPE_NAMES",
    "COS_TYPES",
    "COS_TYPE_NAMES",
    "INDEX_TYPES",
    "MAX_BASE64",
    "MAX_DIGESTS",
    "MAX_DIGEST_SIZE",
    "MAX_MGT_ITEMS",
    "MAX_VALUE_SIZE",
    "TYPE_CCMR",
    "TYPE_NV_INDEX",
    "TYPE_PCR",
    "cos_content",
    "cos_record",
    "decode_base64",
    "decode_content",
    "encode_record",
    "encode_tlv",
    "looks_like_base64_cel",
    "parse_tlv",
    "to_event",
    "to_events",
]
