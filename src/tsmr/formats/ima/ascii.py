"""ASCII IMA measurement lists (``ascii_runtime_measurements``): reader and writer.

Each line is ``"%2d <hash hex> <name>"`` and ``" " + field`` per field, as
ima_ascii_measurements_show prints it; the template data is rebuilt from the
text where the kernel's printing allows (see the package docstring).
"""

from __future__ import annotations

import binascii
import re
import struct
from typing import Iterable

from ...algorithms import HashAlg
from ...errors import InputError, ParseError
from .binary import _as_bytes
from .entry import IMAEntry, _check_name, _writable_fields
from .templates import (
    _ALGO_DIGEST, _FIELDS, _HEX, _NAME_RE, _RAW_STRING, _STRING, _U32, _UINT, _UINT_SIZES, IMA_EVENT_NAME_LEN_MAX,
    MAX_FIELDS, MAX_PCR, MAX_TEMPLATE_DATA_LEN, MAX_TEMPLATE_NAME_LEN, _aerr, _cstr, _show_field, template_fields,
)


_ASCII_HEAD_RE = re.compile(
    rb" ?\d{1,4} (?:[0-9a-f]{40}|[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128}) [\x21-\x7e]{1,255} ")


_MAX_ASCII_LINE = 4 + 2 * 64 + 2 + MAX_TEMPLATE_NAME_LEN + 2 * MAX_TEMPLATE_DATA_LEN + MAX_FIELDS


def _unhex(tok: bytes, offset: int, fid: str) -> bytes:
    try:
        return binascii.unhexlify(tok)
    except (binascii.Error, ValueError):
        raise _aerr(f"{fid} is not hexadecimal: {tok[:40]!r}", offset, fid) from None


def _rebuild(fid: str, tok: bytes, offset: int, u32: struct.Struct, big: bool) -> bytes | None:
    """The kernel's field bytes (length-prefixed) from the ASCII token; None if not rebuildable."""
    kind = _FIELDS[fid][0]
    if kind == _ALGO_DIGEST:
        if not tok:
            raw = b""
        else:
            colon = tok.rfind(b":")
            if colon < 0:
                raise _aerr(f"{fid} {tok[:40]!r} has no '<algo>:' prefix", offset, fid)
            raw = tok[:colon + 1] + b"\0" + _unhex(tok[colon + 1:], offset, fid)
    elif kind == _STRING:
        raw = tok + b"\0"  # DATA_FMT_STRING stores the NUL
    elif kind == _HEX:
        raw = _unhex(tok, offset, fid)
    elif kind == _UINT:
        if not tok:
            raw = b""
        elif not tok.isdigit() or len(tok) > 20:
            raise _aerr(f"{fid} {tok[:40]!r} is not a decimal number", offset, fid)
        else:
            try:
                raw = int(tok).to_bytes(_UINT_SIZES[fid], "big" if big else "little")
            except OverflowError:
                raise _aerr(f"{fid} {tok.decode()} does not fit in {_UINT_SIZES[fid]} bytes", offset, fid) from None
    else:
        return None
    return u32.pack(len(raw)) + raw


def _parse_ascii_line(line: bytes, offset: int, alg: HashAlg | None, big: bool) -> IMAEntry:
    parts = line.lstrip(b" ").split(b" ", 3)
    if len(parts) < 4:
        raise _aerr(f"line has {len(parts)} of the at least 4 space-separated columns "
                    "(pcr, template hash, template name, fields)", offset)
    spcr, shash, sname, rest = parts
    if not spcr.isdigit() or len(spcr) > 10 or int(spcr) > MAX_PCR:
        raise _aerr(f"PCR {spcr[:20]!r} is not a number in 0..{MAX_PCR} (MAX_PCR)", offset, "pcr")
    th = _unhex(shash, offset, "template_hash")
    if alg is None:
        alg = {20: HashAlg.SHA1, 32: HashAlg.SHA256, 48: HashAlg.SHA384, 64: HashAlg.SHA512}.get(len(th))
        if alg is None:
            raise _aerr(f"a {len(th)}-byte template hash matches no hash algorithm", offset, "template_hash")
    elif len(th) != alg.digest_size:
        raise _aerr(f"template hash is {len(th)} bytes, {alg} is {alg.digest_size}", offset, "template_hash")
    if not _NAME_RE.match(sname):
        raise _aerr(f"template name {sname[:40]!r} is not printable ASCII", offset, "template_name")
    name = sname.decode("ascii")
    tokens = rest.split(b" ")
    ids = template_fields(name)
    texts = None
    if ids is not None and len(tokens) != len(ids):
        raise _aerr(f"template {name} has {len(ids)} fields, the line has {len(tokens)} "
                    "(the kernel writes spaces in names as '_')", offset, "fields")
    data: bytes | None
    if name == "ima":
        name_b = tokens[1]
        if len(name_b) > IMA_EVENT_NAME_LEN_MAX:
            raise _aerr(f"'ima' template name is {len(name_b)} bytes, over IMA_EVENT_NAME_LEN_MAX=255", offset, "n")
        d = _unhex(tokens[0], offset, "d")
        if len(d) != 20:
            raise _aerr(f"'ima' template digest is {len(d)} bytes, must be 20 (IMA_DIGEST_SIZE)", offset, "d")
        data = d + name_b.ljust(IMA_EVENT_NAME_LEN_MAX + 1, b"\0")
    elif ids is None:
        data = None
    else:
        u32 = _U32[big]
        pieces = [_rebuild(fid, tok, offset, u32, big) for fid, tok in zip(ids, tokens)]
        data = None if None in pieces else b"".join(pieces)  # type: ignore[arg-type]
    if data is None:
        texts = tuple(t.decode("utf-8", "surrogateescape") for t in tokens)  # exact bytes back
    elif len(data) > MAX_TEMPLATE_DATA_LEN:
        raise _aerr(f"template data of {len(data)} bytes exceeds MAX_TEMPLATE_DATA_LEN", offset, "fields")
    return IMAEntry(int(spcr), th, name, data, alg, offset, texts)


def _parse_ascii(buf: bytes, base: int, final: bool, alg: HashAlg | None, big: bool,
                 out: list[IMAEntry]) -> int:
    pos, end = 0, len(buf)
    while pos < end:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > _MAX_ASCII_LINE:
                raise _aerr("line longer than the longest possible entry", base + pos)
            if not final:
                return pos
            nl = end  # a last line without its newline
        line = buf[pos:nl]
        if not line:
            # The kernel never writes one; it is what a file name ending in a newline leaves
            # (names are printed unescaped), after a line that then reads with a wrong name.
            raise _aerr("empty line (a file name with a newline? the kernel does not escape them)", base + pos)
        e = _parse_ascii_line(line, base + pos, alg, big)
        if alg is None:
            alg = e.alg  # every line of one file has the same hash size
        out.append(e)
        pos = nl + 1
    return min(pos, end)


def parse_ascii(data: bytes | bytearray | memoryview, *, alg: HashAlg | None = None,
                big_endian: bool = False) -> tuple[IMAEntry, ...]:
    """Parse an ASCII measurement list; ``alg`` defaults to the one the hash length implies.

    ``big_endian``: the producing host's byte order, needed to rebuild the
    template data's length fields.
    """
    buf = _as_bytes(data, "parse_ascii")
    out: list[IMAEntry] = []
    _parse_ascii(buf, 0, True, HashAlg(alg) if alg is not None else None, big_endian, out)
    return tuple(out)


def encode_ascii(entries: Iterable[IMAEntry], *, big_endian: bool = False) -> bytes:
    """The ascii_runtime_measurements bytes of ``entries``, as ima_ascii_measurements_show prints them."""
    lines: list[bytes] = []
    for e in entries:
        head = f"{e.pcr:2d} {e.template_hash.hex()} ".encode() + _check_name(e.template_name)
        if e.template_data is None:
            shown = [t.encode("utf-8", "surrogateescape") for t in e.text_fields or ()]
        else:
            if e.template_name != "ima" and template_fields(e.template_name) is None:
                raise InputError(f"ima: no ASCII form is known for the fields of template {e.template_name!r}")
            # Strings are printed with %s: raw bytes, whatever their encoding.
            try:
                shown = [b"" if not raw else _cstr(raw) if _FIELDS[fid][0] in (_STRING, _RAW_STRING)
                         else _show_field(fid, raw, big_endian).encode("ascii")
                         for fid, raw in _writable_fields(e, big_endian)]
            except ParseError as err:
                raise InputError(f"ima: cannot write this {e.template_name} entry as text: {err}") from None
        lines.append(head + b"".join(b" " + f for f in shown) + b"\n")
    return b"".join(lines)
