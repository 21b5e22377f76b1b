"""CEL-JSON: the JSON encoding of the TCG Canonical Event Log (TCG CEL v1.0, "CEL-JSON").

A record is one JSON object::

    {"recnum": 3, "rtmr": 2, "digests": [{"hashAlg": "sha384", "digest": "<hex>"}],
     "content_type": "tsmr", "content": {"record": "..."}}

with exactly one index member naming the kind of register: ``pcr`` (TPM),
``rtmr`` (Intel TDX, as systemd's ``cc-measure.log``) or ``rem`` (Arm CCA).
Records are stored either as a JSON array or as an RFC 7464 JSON text sequence
(0x1E before each object, LF after it), the form systemd appends to
``/run/log/systemd/tpm2-measure.log``.  tsmr exports its runtime logs this way
(shared/spec/runtime-log.md §5).

Reading is deliberately generic: ``content`` is kept as the decoded JSON value
whatever ``content_type`` says, and top-level members other than the ones above
(systemd's ``mapped_pcr``, say) are kept in ``extra`` and written back.  What is
checked is what replay depends on: the index, the hash names, and digests of the
right length (members of a digest object other than ``hashAlg`` and ``digest``
are ignored).  ``nv_index`` records (systemd's NvPCRs) are read only when asked
for (``parse_json(..., allow_nv_index=True)``) and are never written; CEL-TLV
lives in :mod:`tsmr.formats.cel_tlv`; CEL-CBOR is not read.

systemd writes no ``recnum``; a record without one gets its position in the
input (0-based) instead.  Duplicate member names, NaN/Infinity and invalid UTF-8
are errors, so that two readers cannot see different records in the same bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..algorithms import HashAlg, find_digest
from ..errors import InputError, ParseError

FORMAT = "cel-json"

INDEX_TYPES = ("pcr", "rtmr", "rem")
"""Index members this module reads and writes, one per kind of register."""
_UNSUPPORTED_INDEX_TYPES = ("nv_index",)
_RESERVED = frozenset(("recnum", "digests", "content_type", "content", *INDEX_TYPES, *_UNSUPPORTED_INDEX_TYPES))

MAX_DIGESTS = 16
"""Most digests one record may carry (one per bank; TPMs have a handful)."""

# The one place that maps HashAlg to CEL-JSON hashAlg names: libcel (src/cel_strings.c) and
# systemd (tpm2_hash_alg_to_string) write "sha1", "sha256", "sha384", "sha512", libcel "sm3_256";
# both compare case-insensitively.  The SHA-3 names follow the TPM_ALG_ spelling.
_CEL_NAMES: dict[HashAlg, str] = {
    HashAlg.SHA1: "sha1",
    HashAlg.SHA256: "sha256",
    HashAlg.SHA384: "sha384",
    HashAlg.SHA512: "sha512",
    HashAlg.SM3_256: "sm3_256",
    HashAlg.SHA3_256: "sha3_256",
    HashAlg.SHA3_384: "sha3_384",
    HashAlg.SHA3_512: "sha3_512",
}
_BY_CEL_NAME: dict[str, HashAlg] = {name: alg for alg, name in _CEL_NAMES.items()}
_HEX = re.compile(r"[0-9a-fA-F]*")
_U32_MAX = 0xFFFFFFFF


def hash_alg_name(alg: HashAlg) -> str:
    """The CEL-JSON ``hashAlg`` name of ``alg`` (``sha384``)."""
    return _CEL_NAMES[HashAlg(alg)]


def hash_alg_from_name(name: str) -> HashAlg | None:
    """The HashAlg of a CEL-JSON ``hashAlg`` name, case-insensitively; None if unknown."""
    return _BY_CEL_NAME.get(name.lower())


@dataclass(frozen=True, slots=True)
class CELRecord:
    """One CEL-JSON record (TCG Canonical Event Log Format v1.0, JSON encoding).

    ``index_type`` is the index member's name (``pcr``, ``rtmr``, ``rem``; also
    ``nv_index`` when read with ``allow_nv_index=True``) and ``index`` its value.  ``digests`` are (HashAlg, digest) pairs in record order.
    ``content`` is the decoded JSON value of ``content`` and ``extra`` holds the
    other top-level members; both are plain JSON values that callers must treat
    as read-only.  They take part in equality but not in the hash, so records
    stay usable in sets and as dict keys whatever their content.
    """

    recnum: int
    index_type: str
    index: int
    digests: tuple[tuple[HashAlg, bytes], ...]
    content_type: str
    content: Any = field(default=None, hash=False)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def digest(self, alg: HashAlg) -> bytes | None:
        """This record's digest for ``alg``, or None if it has none."""
        return find_digest(self.digests, alg)


# -- writer -------------------------------------------------------------------------------------------


def _record_to_json(rec: CELRecord, with_recnum: bool) -> dict[str, Any]:
    if type(rec.recnum) is not int or rec.recnum < 0:
        raise InputError(f"cel: recnum must be a non-negative integer, got {rec.recnum!r}")
    if rec.index_type not in INDEX_TYPES:
        raise InputError(f"cel: index type must be one of {', '.join(INDEX_TYPES)}, got {rec.index_type!r}")
    if type(rec.index) is not int or not 0 <= rec.index <= _U32_MAX:
        raise InputError(f"cel: {rec.index_type} index must be a 32-bit unsigned integer, got {rec.index!r}")
    if not isinstance(rec.content_type, str):
        raise InputError(f"cel: content_type must be a string, got {rec.content_type!r}")
    if len(rec.digests) > MAX_DIGESTS:
        raise InputError(f"cel: {len(rec.digests)} digests in one record, at most MAX_DIGESTS={MAX_DIGESTS}")
    digests = []
    seen: set[HashAlg] = set()
    for alg, d in rec.digests:
        try:
            alg = HashAlg(alg)
        except ValueError:
            raise InputError(f"cel: unknown hash algorithm {alg!r}") from None
        if alg in seen:
            raise InputError(f"cel: two {alg} digests in record {rec.recnum}")
        if len(d) != alg.digest_size:
            raise InputError(f"cel: {alg} digest of record {rec.recnum} is {len(d)} bytes, must be {alg.digest_size}")
        seen.add(alg)
        digests.append({"hashAlg": _CEL_NAMES[alg], "digest": bytes(d).hex()})
    obj: dict[str, Any] = {}
    if with_recnum:
        obj["recnum"] = rec.recnum
    obj[rec.index_type] = rec.index
    obj["digests"] = digests
    obj["content_type"] = rec.content_type
    obj["content"] = rec.content
    for key, value in rec.extra.items():
        if not isinstance(key, str) or key in _RESERVED:
            raise InputError(f"cel: extra member {key!r} clashes with a CEL-JSON member")
        obj[key] = value
    return obj


def _dumps(obj: Any) -> str:
    try:
        # ASCII output: any str content (even lone surrogates read from "\\ud800") can be written.
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise InputError(f"cel: record content is not JSON-serializable: {e}") from None


def encode_json(records: Iterable[CELRecord], *, seq: bool = False, recnum: bool = True) -> bytes:
    """Write records as CEL-JSON.

    By default a JSON array with one compact object per line (``[\\n{..},\\n{..}\\n]\\n``,
    which diffs well); with ``seq=True`` an RFC 7464 JSON text sequence (0x1E, object, LF per
    record), as systemd writes its measurement logs.  ``recnum=False`` leaves out the record
    numbers, as systemd does.  Raises :class:`InputError` for records that cannot be written.
    """
    texts = [_dumps(_record_to_json(r, recnum)) for r in records]
    if seq:
        return "".join(f"\x1e{t}\n" for t in texts).encode("ascii")
    if not texts:
        return b"[]\n"
    return ("[\n" + ",\n".join(texts) + "\n]\n").encode("ascii")


# -- reader -------------------------------------------------------------------------------------------


class _Reject(ValueError):
    """Raised inside the JSON decoder hooks; turned into a ParseError by the caller."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Reject(f"duplicate member {key!r} in an object")
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise _Reject(f"{name} is not JSON (RFC 8259)")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: not representable, and not writable back as JSON
        raise _Reject(f"number {text[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)


def _loads(raw: bytes, base: int, what: str, where: str | None) -> Any:
    """Decode one JSON text (``raw`` sits at byte ``base`` of the input; ``where`` is its field path)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"invalid UTF-8 in {what}", format=FORMAT, offset=base + e.start, field=where) from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as e:
        offset = base + len(text[: e.pos].encode("utf-8", "surrogatepass"))
        raise ParseError(f"invalid JSON in {what}: {e.msg}", format=FORMAT, offset=offset, field=where) from None
    except _Reject as e:
        raise ParseError(f"{what}: {e}", format=FORMAT, offset=base, field=where) from None
    except (ValueError, RecursionError) as e:  # e.g. integers over the int-to-str digit limit, deep nesting
        raise ParseError(f"{what} cannot be decoded: {type(e).__name__}: {e}", format=FORMAT,
                         offset=base, field=where) from None


def _record(obj: Any, position: int, offset: int | None, allow_nv_index: bool = False) -> CELRecord:
    """Check one decoded JSON value and make it a CELRecord; ``position`` is its 0-based place."""
    where = f"records[{position}]"

    def fail(message: str, member: str | None = None) -> ParseError:
        return ParseError(f"record {position}: {message}", format=FORMAT, offset=offset,
                          field=f"{where}.{member}" if member else where)

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")

    if "recnum" in obj:
        recnum = obj["recnum"]
        if type(recnum) is not int or recnum < 0:
            raise fail(f"recnum must be a non-negative integer, got {recnum!r}", "recnum")
    else:
        recnum = position  # systemd's logs carry no recnum: the consumer numbers records

    keys = [k for k in (*INDEX_TYPES, *_UNSUPPORTED_INDEX_TYPES) if k in obj]
    if not keys:
        raise fail(f"no index member (one of {', '.join(INDEX_TYPES)})")
    if len(keys) > 1:
        raise fail(f"more than one index member: {', '.join(keys)}", keys[1])
    index_type = keys[0]
    if index_type in _UNSUPPORTED_INDEX_TYPES and not allow_nv_index:
        raise fail(f"{index_type} records are not supported", index_type)
    index = obj[index_type]
    if type(index) is not int or not 0 <= index <= _U32_MAX:
        raise fail(f"{index_type} must be a 32-bit unsigned integer, got {index!r}", index_type)

    if "digests" not in obj:
        raise fail("missing member digests", "digests")
    raw_digests = obj["digests"]
    if not isinstance(raw_digests, list):
        raise fail("digests must be an array", "digests")
    if len(raw_digests) > MAX_DIGESTS:
        raise fail(f"{len(raw_digests)} digests, at most MAX_DIGESTS={MAX_DIGESTS}", "digests")
    digests: list[tuple[HashAlg, bytes]] = []
    for i, item in enumerate(raw_digests):
        member = f"digests[{i}]"
        if not isinstance(item, dict):
            raise fail("a digest must be an object", member)
        name = item.get("hashAlg")
        if not isinstance(name, str):
            raise fail("hashAlg must be a string", member + ".hashAlg")
        alg = _BY_CEL_NAME.get(name.lower())
        if alg is None:
            raise fail(f"unknown hashAlg {name!r} (known: {', '.join(_CEL_NAMES.values())})", member + ".hashAlg")
        if any(a is alg for a, _ in digests):
            raise fail(f"two {name} digests", member + ".hashAlg")
        text = item.get("digest")
        if not isinstance(text, str):
            raise fail("digest must be a hex string", member + ".digest")
        if len(text) != 2 * alg.digest_size or not _HEX.fullmatch(text):
            raise fail(f"{name} digest must be {2 * alg.digest_size} hex digits, got {text[:140]!r}",
                       member + ".digest")
        digests.append((alg, bytes.fromhex(text)))

    content_type = obj.get("content_type")
    if not isinstance(content_type, str):
        raise fail("content_type must be a string" if "content_type" in obj else "missing member content_type",
                   "content_type")
    if "content" not in obj:
        raise fail("missing member content", "content")
    extra = {k: v for k, v in obj.items() if k not in _RESERVED}
    return CELRecord(recnum, index_type, index, tuple(digests), content_type, obj["content"], extra)


def parse_json(data: bytes | bytearray | memoryview, *, allow_nv_index: bool = False) -> tuple[CELRecord, ...]:
    """Parse CEL-JSON: a JSON array of records, or an RFC 7464 JSON text sequence of records.

    The form is detected from the first byte after leading whitespace (0x1E:
    sequence; ``[``: array).  Empty input, or input of only whitespace, is an
    empty log (a systemd log before its first measurement).  In a sequence every
    element must be one complete record: a record cut short (a writer still
    appending, or a crash) is a :class:`ParseError` naming its record number.

    ``allow_nv_index=True`` also accepts records indexed by ``nv_index`` (an NV
    index handle, as systemd logs its NvPCR extends); they have
    ``index_type == "nv_index"`` and :func:`encode_json` does not write them.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InputError(f"cel: expected bytes, got {type(data).__name__}")
    body = data.lstrip(b" \t\r\n")
    if not body:
        return ()
    start = len(data) - len(body)
    if body[0] == 0x1E:
        return _parse_seq(data, start, allow_nv_index)
    if body[0] != ord("["):
        raise ParseError("expected a JSON array or an RFC 7464 JSON text sequence (0x1E)",
                         format=FORMAT, offset=start)
    value = _loads(data, 0, "the log", None)
    if not isinstance(value, list):  # pragma: no cover - a text starting with "[" decodes to a list
        raise ParseError("expected a JSON array", format=FORMAT, offset=start)
    return tuple(_record(obj, i, None, allow_nv_index) for i, obj in enumerate(value))


def _parse_seq(data: bytes, start: int, allow_nv_index: bool = False) -> tuple[CELRecord, ...]:
    # 0x1E cannot occur inside a valid JSON text (control characters must be escaped in strings)
    # nor inside a UTF-8 multi-byte sequence, so splitting the bytes on it is exact.
    records: list[CELRecord] = []
    pos = start
    for chunk in data[start + 1:].split(b"\x1e"):
        offset = pos
        pos += 1 + len(chunk)
        if not chunk.strip(b" \t\r\n"):
            continue  # RFC 7464 §2.1: empty elements between separators are skipped
        position = len(records)
        value = _loads(chunk, offset + 1, f"record {position}", f"records[{position}]")
        records.append(_record(value, position, offset, allow_nv_index))
    return tuple(records)


__all__ = [
    "CELRecord",
    "INDEX_TYPES",
    "MAX_DIGESTS",
    "encode_json",
    "hash_alg_from_name",
    "hash_alg_name",
    "parse_json",
]
