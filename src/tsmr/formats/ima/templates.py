"""IMA templates and their fields: which fields a template has, how its data splits, how a field is shown.

Sources: Linux ``security/integrity/ima/ima_template.c`` (builtin templates,
supported fields), ``ima_template_lib.c`` (field init/show functions, ima_parse_buf)
and ``Documentation/security/IMA-templates.rst``.  The limits are named in the
errors that enforce them.
"""

from __future__ import annotations

import re
import struct
from typing import Mapping

from ...algorithms import HashAlg
from ...errors import ParseError


FORMAT_BINARY = "ima-binary"
FORMAT_ASCII = "ima-ascii"

# -- limits (each named in the error that enforces it) ------------------------------------------------

MAX_TEMPLATE_NAME_LEN = 255
"""Longest template name accepted (the kernel's longest, an evm-sig format string, is 70 bytes)."""
MAX_TEMPLATE_DATA_LEN = 16 * 1024 * 1024
"""Largest template data accepted: far above any signature or ima-buf buffer, bounds allocation."""
MAX_FIELDS = 15
"""IMA_TEMPLATE_NUM_FIELDS_MAX: most fields a template may have."""
MAX_PCR = 1023
"""Largest PCR index accepted; a larger u32 almost always means the wrong byte order."""
IMA_EVENT_NAME_LEN_MAX = 255
"""Longest name of the legacy ``ima`` template; its hash pads the name to 256 bytes."""
MAX_REPORTED_MISMATCHES = 1000
"""Template hash mismatches kept in a TemplateHashError (all are counted)."""


# -- templates (ima_template.c builtin_templates / supported_fields) ---------------------------------

TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-ngv2": ("d-ngv2", "n-ng"),
    "ima-sigv2": ("d-ngv2", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
    "ima-modsig": ("d-ng", "n-ng", "sig", "d-modsig", "modsig"),
    "evm-sig": ("d-ng", "n-ng", "evmsig", "xattrnames", "xattrlengths", "xattrvalues", "iuid", "igid", "imode"),
}

# How each field is shown in the ASCII list, and its key in Event.details.
_DIGEST, _ALGO_DIGEST, _STRING, _RAW_STRING, _HEX, _UINT = range(6)
_FIELDS: Mapping[str, tuple[int, str]] = {
    "d": (_DIGEST, "file_digest"),
    "n": (_STRING, "file_name"),
    "d-ng": (_ALGO_DIGEST, "file_digest"),
    "d-ngv2": (_ALGO_DIGEST, "file_digest"),
    "n-ng": (_STRING, "file_name"),
    "sig": (_HEX, "signature"),
    "buf": (_HEX, "buffer"),
    "d-modsig": (_ALGO_DIGEST, "modsig_digest"),
    "modsig": (_HEX, "modsig"),
    "evmsig": (_HEX, "evm_signature"),
    "iuid": (_UINT, "uid"),
    "igid": (_UINT, "gid"),
    "imode": (_UINT, "mode"),
    # Written raw (DATA_FMT_HEX, no NUL) but shown with %s: not rebuildable from text.
    "xattrnames": (_RAW_STRING, "xattr_names"),
    "xattrlengths": (_HEX, "xattr_lengths"),
    "xattrvalues": (_HEX, "xattr_values"),
}
_UINT_SIZES = {"iuid": 4, "igid": 4, "imode": 2}  # unsigned int uid/gid, u16 mode
_NAME_RE = re.compile(rb"[\x21-\x7e]{1,%d}\Z" % MAX_TEMPLATE_NAME_LEN)


def template_fields(name: str) -> tuple[str, ...] | None:
    """The field ids of template ``name``: a builtin, or a ``|`` format string of known ids; else None."""
    known = TEMPLATES.get(name)
    if known is not None:
        return known
    ids = tuple(name.split("|"))
    if len(ids) <= MAX_FIELDS and all(i in _FIELDS and i not in ("d", "n") for i in ids):
        return ids
    return None


_U32 = {False: struct.Struct("<I"), True: struct.Struct(">I")}


def _cstr(raw: bytes) -> bytes:
    i = raw.find(0)
    return raw if i < 0 else raw[:i]


def split_fields(name: str, data: bytes, *, big_endian: bool = False) -> tuple[tuple[str, bytes], ...]:
    """Split template data into (field id, bytes): the kernel's ima_parse_buf with ENFORCE_FIELDS|BUFEND."""
    if name == "ima":
        if len(data) != 20 + IMA_EVENT_NAME_LEN_MAX + 1:
            raise _berr(f"template 'ima' data is {len(data)} bytes, must be 276 (digest + 256-byte name)",
                        None, "template_data")
        return (("d", data[:20]), ("n", _cstr(data[20:])))
    ids = template_fields(name)
    u32 = _U32[big_endian].unpack_from
    out: list[tuple[str, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        if len(out) >= MAX_FIELDS or (ids is not None and len(out) >= len(ids)):
            limit = f"template {name} has {len(ids)}" if ids is not None else f"MAX_FIELDS={MAX_FIELDS}"
            raise _berr(f"template data has more fields than {limit}", pos, "template_data")
        if end - pos < 4:
            raise _berr("truncated field length in template data", pos, "template_data")
        n = u32(data, pos)[0]
        pos += 4
        if n > end - pos:
            raise _berr(f"field length {n} exceeds the {end - pos} bytes left in the template data",
                        pos - 4, "template_data")
        fid = ids[len(out)] if ids is not None else f"field{len(out)}"
        out.append((fid, data[pos:pos + n]))
        pos += n
    if ids is not None and len(out) != len(ids):
        raise _berr(f"template {name} has {len(ids)} fields, the data holds {len(out)}", None, "template_data")
    return tuple(out)


def _show_field(fid: str, raw: bytes, big_endian: bool) -> str:
    """The field as ima_show_template_data_ascii prints it."""
    kind = _FIELDS[fid][0] if fid in _FIELDS else _HEX
    if kind == _ALGO_DIGEST:
        # strrchr(':'): the prefix up to the NUL, then the rest (after ':' and NUL) in hex.
        colon = raw.rfind(b":", 0, raw.find(0) if 0 in raw else len(raw))
        if colon < 0 or raw[colon + 1:colon + 2] != b"\0":
            raise _berr(f"{fid} field is not '<algo>:' NUL digest", None, fid)
        return raw[:colon + 1].decode("ascii", "backslashreplace") + raw[colon + 2:].hex()
    if kind in (_STRING, _RAW_STRING):
        return _cstr(raw).decode("utf-8", "backslashreplace")
    if kind == _UINT:  # printed by size: u8, u16, u32, u64
        return str(int.from_bytes(raw, "big" if big_endian else "little")) if len(raw) in (1, 2, 4, 8) else ""
    return raw.hex()


def _aerr(message: str, offset: int | None = None, field: str | None = None) -> ParseError:
    return ParseError(message, format=FORMAT_ASCII, offset=offset, field=field)


def _berr(message: str, offset: int | None = None, field: str | None = None) -> ParseError:
    return ParseError(message, format=FORMAT_BINARY, offset=offset, field=field)


def digest_field(algo: str | HashAlg, digest: bytes) -> bytes:
    """A d-ng / d-modsig field's bytes: ``"<algo>:" NUL digest`` (algo as the kernel names it)."""
    name = algo.kernel_name if isinstance(algo, HashAlg) else str(algo)
    return name.encode("ascii") + b":\0" + bytes(digest)


def name_field(name: str | bytes) -> bytes:
    """An n-ng field's bytes: the name with spaces as '_' (as the kernel stores it) and a NUL."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
    return raw.replace(b" ", b"_") + b"\0"
