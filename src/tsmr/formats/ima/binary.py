"""Binary IMA measurement lists (``binary_runtime_measurements`` and its per-bank files): reader and writer.

Layout per entry: ``u32 pcr, template hash, u32 name length, name, u32 data
length, data``, host-endian.  The legacy ``ima`` template has no data length:
a 20-byte digest, then ``u32 strlen || name``, while its hash covers the digest
and the name NUL-padded to 256 bytes (see the package docstring).
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

from ...algorithms import HashAlg
from ...errors import InputError, ParseError
from .entry import IMAEntry, _check_name, _writable_fields
from .templates import (
    _NAME_RE, _U32, IMA_EVENT_NAME_LEN_MAX, MAX_FIELDS, MAX_PCR, MAX_TEMPLATE_DATA_LEN, MAX_TEMPLATE_NAME_LEN,
    _berr, split_fields, template_fields,
)


class _Layout:
    """The fixed part of an entry for one template-hash size and byte order."""

    __slots__ = ("alg", "size", "big", "head", "u32", "zero", "endian", "_runs")

    def __init__(self, alg: HashAlg, big_endian: bool) -> None:
        self.alg = HashAlg(alg)
        self.size = self.alg.digest_size
        self.big = bool(big_endian)
        self.endian = ">" if big_endian else "<"
        self.head = struct.Struct(f"{self.endian}I{self.size}sI")  # pcr, template hash, name length
        self.u32 = _U32[self.big]
        self.zero = bytes(self.size)
        self._runs: dict[str, tuple[Any, int, bytes, int | None]] = {}

    def run(self, name: str) -> tuple[Any, int, bytes, int | None]:
        """For entries of template ``name``: an unpack of (pcr bytes, hash, name length + name, data
        length), its size, the expected name length + name bytes, and the template's field count."""
        r = self._runs.get(name)
        if r is None:
            raw = name.encode("ascii")
            st = struct.Struct(f"{self.endian}4s{self.size}s{4 + len(raw)}sI")
            ids = template_fields(name)
            r = self._runs[name] = (st.unpack_from, st.size, self.u32.pack(len(raw)) + raw,
                                    len(ids) if ids is not None else None)
        return r


def _as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InputError(f"ima: expected bytes for {what}, got {type(data).__name__}")


def _short(need: int, what: str, pos: int, end: int, base: int, final: bool) -> int:
    """An incomplete entry: how many bytes it needs from ``pos``, or (at the end of input) an error."""
    if not final:
        return need
    raise _berr(f"truncated entry: {what} needs {need} bytes from offset {base + pos}, {end - pos} left",
                base + pos, what)


def _read_entry(buf: bytes, pos: int, lay: _Layout, base: int, final: bool, names: dict[bytes, str],
                hint: bool = True):
    """Read one binary entry at ``pos``: (pcr, hash, name, data, next) or, if incomplete and not
    ``final``, the number of bytes it needs from ``pos``.  ``hint``: errors in the first entry
    suggest the layout the list seems to have."""
    end = len(buf)
    guess = _alg_hint if hint and pos == 0 else _no_hint
    hs = lay.head.size
    if end - pos < hs:
        return _short(hs, "header", pos, end, base, final)
    pcr, th, nlen = lay.head.unpack_from(buf, pos)
    if pcr > MAX_PCR:
        why = guess(buf, lay) or ("" if lay.big else "; a list from a big-endian host? (big_endian=True)")
        raise _berr(f"PCR {pcr} exceeds MAX_PCR={MAX_PCR}{why}", base + pos, "pcr")
    if nlen == 0 or nlen > MAX_TEMPLATE_NAME_LEN:
        raise _berr(f"template name length {nlen} is not in 1..{MAX_TEMPLATE_NAME_LEN} (MAX_TEMPLATE_NAME_LEN)"
                    f"{guess(buf, lay)}", base + pos + 4 + lay.size, "template_name_len")
    p = pos + hs
    if end - p < nlen + 4:
        return _short(hs + nlen + 4, "template_name", pos, end, base, final)
    raw_name = buf[p:p + nlen]
    name = names.get(raw_name)
    if name is None:
        if not _NAME_RE.match(raw_name):
            raise _berr(f"template name {raw_name[:40]!r} is not printable ASCII{guess(buf, lay)}",
                        base + p, "template_name")
        name = names[raw_name] = raw_name.decode("ascii")
    p += nlen
    if name == "ima":
        # Legacy layout: 20-byte digest without length, then u32 strlen + name (see module docstring).
        if end - p < 24:
            return _short(p - pos + 24, "template_data", pos, end, base, final)
        d = buf[p:p + 20]
        n = lay.u32.unpack_from(buf, p + 20)[0]
        if n > IMA_EVENT_NAME_LEN_MAX + 1:
            raise _berr(f"'ima' template name length {n} exceeds IMA_EVENT_NAME_LEN_MAX+1=256", base + p + 20, "n")
        p += 24
        if end - p < n:
            return _short(p - pos + n, "n", pos, end, base, final)
        data = d + buf[p:p + n] + bytes(IMA_EVENT_NAME_LEN_MAX + 1 - n)
        return pcr, th, name, data, p + n
    dlen = lay.u32.unpack_from(buf, p)[0]
    if dlen > MAX_TEMPLATE_DATA_LEN:
        raise _berr(f"template data length {dlen} exceeds MAX_TEMPLATE_DATA_LEN={MAX_TEMPLATE_DATA_LEN}",
                    base + p, "template_data_len")
    p += 4
    if end - p < dlen:
        return _short(p - pos + dlen, "template_data", pos, end, base, final)
    return pcr, th, name, buf[p:p + dlen], p + dlen


def _no_hint(buf: bytes, lay: _Layout) -> str:
    return ""


def _alg_hint(buf: bytes, lay: _Layout) -> str:
    guess = guess_binary_layout(buf)
    if guess is None or guess == (lay.alg, lay.big):
        return ""
    alg, big = guess
    return (f"; this looks like a {alg} list{' from a big-endian host' if big else ''}: pass alg=HashAlg.{alg.name}"
            + (", big_endian=True" if big else ""))


def _fields_ok(data: bytes, count: int | None, u32: Any) -> bool:
    """Whether ``data`` splits exactly into ``count`` (any number up to MAX_FIELDS if None) fields."""
    pos, end, n = 0, len(data), 0
    while pos < end and n < (count or MAX_FIELDS):
        if end - pos < 4:
            return False
        pos += 4 + u32(data, pos)[0]
        n += 1
    return pos == end and (count is None or n == count)


_SET = tuple(getattr(IMAEntry, f).__set__ for f in IMAEntry.__dataclass_fields__)


def _new_entry(pcr: int, th: bytes, name: str, data: bytes | None, alg: HashAlg, offset: int) -> IMAEntry:
    """IMAEntry(pcr, th, name, data, alg, offset) without the frozen dataclass __init__.

    That __init__ calls object.__setattr__ once per field, 40% of a parse;
    setting the slots through their descriptors gives the same object.
    """
    e = object.__new__(IMAEntry)
    s_pcr, s_th, s_name, s_data, s_alg, s_off, s_text = _SET
    s_pcr(e, pcr)
    s_th(e, th)
    s_name(e, name)
    s_data(e, data)
    s_alg(e, alg)
    s_off(e, offset)
    s_text(e, None)
    return e


def _parse_binary(buf: bytes, lay: _Layout, base: int, final: bool, out: list[IMAEntry],
                  check_fields: bool) -> tuple[int, int]:
    """Append the entries of ``buf`` to ``out``; return (stop offset, bytes the next entry needs).

    As in replay, an entry read by the general path sets up a one-unpack loop
    for the entries of the same template after it.
    """
    pos, end = 0, len(buf)
    names: dict[bytes, str] = {}
    alg, big, u32 = lay.alg, lay.big, lay.u32.unpack_from
    add, new = out.append, _new_entry
    run = None
    name = ""  # the template of the current run (set by the general path before a run starts)
    maxd = MAX_TEMPLATE_DATA_LEN
    while pos < end:
        if run is not None:
            unpack, hs, key, count = run
            lim = end - hs
            while pos <= lim:
                q4, th, k, dl = unpack(buf, pos)
                pcr = u32(q4)[0]
                e = pos + hs + dl
                if k != key or pcr > MAX_PCR or dl > maxd or e > end:
                    break
                data = buf[pos + hs:e]
                if check_fields:
                    if count == 2:  # ima-ng, ima-ngv2: inline, the common case
                        if dl < 8:
                            break
                        a = u32(data)[0]
                        if a > dl - 8 or a + 8 + u32(data, a + 4)[0] != dl:
                            break
                    elif not _fields_ok(data, count, u32):
                        break
                add(new(pcr, th, name, data, alg, base + pos))
                pos = e
            if pos >= end:
                break
        r = _read_entry(buf, pos, lay, base, final, names)
        if r.__class__ is int:
            return pos, r
        pcr, th, name, data, nxt = r
        if check_fields:
            try:
                split_fields(name, data, big_endian=big)
            except ParseError as err:
                raise _berr(f"the {name} entry's template data does not split into its fields ({err})",
                            base + pos, "template_data") from None
        add(new(pcr, th, name, data, alg, base + pos))
        pos = nxt
        run = lay.run(name) if name != "ima" else None
    return pos, 0


def parse_binary(data: bytes | bytearray | memoryview, *, alg: HashAlg = HashAlg.SHA1,
                 big_endian: bool = False, check_fields: bool = True) -> tuple[IMAEntry, ...]:
    """Parse a binary measurement list; ``alg`` is the template-hash algorithm (SHA-1 for the default file).

    ``check_fields`` also checks that each template data splits into its
    template's fields (what the kernel's kexec restore enforces).
    """
    buf = _as_bytes(data, "parse_binary")
    out: list[IMAEntry] = []
    _parse_binary(buf, _Layout(alg, big_endian), 0, True, out, check_fields)
    return tuple(out)


def guess_binary_layout(data: bytes | bytearray | memoryview) -> tuple[HashAlg, bool] | None:
    """(template-hash algorithm, big_endian) under which the first entry of ``data`` reads cleanly.

    32-byte hashes are reported as SHA-256 (SM3 and SHA3-256 lists look the same).
    """
    buf = bytes(data[:65536])
    for alg in (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512):
        for big in (False, True):
            try:  # an entry cut by the 64 KiB window counts as readable
                _read_entry(buf, 0, _Layout(alg, big), 0, len(buf) == len(data), {}, hint=False)
            except ParseError:
                continue
            return alg, big
    return None


def encode_binary(entries: Iterable[IMAEntry], *, big_endian: bool = False) -> bytes:
    """The binary_runtime_measurements bytes of ``entries`` (as Linux >= 3.15 writes them)."""
    u32 = _U32[big_endian]
    parts: list[bytes] = []
    for e in entries:
        if e.template_data is None:
            raise InputError(f"ima: cannot encode a {e.template_name} entry whose template data is unknown")
        if not 0 <= e.pcr <= MAX_PCR or len(e.template_hash) != HashAlg(e.alg).digest_size:
            raise InputError(f"ima: bad PCR {e.pcr} or template hash size {len(e.template_hash)}")
        name = _check_name(e.template_name)
        parts.append(u32.pack(e.pcr) + bytes(e.template_hash) + u32.pack(len(name)) + name)
        if e.template_name == "ima":
            (_, d), (_, n) = _writable_fields(e, big_endian)
            parts.append(d + u32.pack(len(n)) + n)
        else:
            if len(e.template_data) > MAX_TEMPLATE_DATA_LEN:
                raise InputError("ima: template data exceeds MAX_TEMPLATE_DATA_LEN")
            _writable_fields(e, big_endian)  # what parse_binary would reject is not written
            parts.append(u32.pack(len(e.template_data)) + bytes(e.template_data))
    return b"".join(parts)
