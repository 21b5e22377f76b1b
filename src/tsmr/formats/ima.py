"""Linux IMA runtime measurement lists: binary and ASCII readers, writers, fast verified replay.

Sources: Linux ``security/integrity/ima/`` (``ima_fs.c`` ima_measurements_show and
ima_ascii_measurements_show, ``ima_template_lib.c`` field init/show functions,
``ima_template.c`` builtin templates, ``ima_crypto.c`` ima_calc_field_array_hash_tfm,
``ima_queue.c``) and ``Documentation/security/IMA-templates.rst``.

Theory of operation
-------------------
An entry is (pcr, template hash, template name, template data); the data is the
template's fields, each ``u32 length || bytes``, and the hash is ``H(data)``.
Every bank of the PCR was extended with ``H_bank(data)`` (Linux >= 5.8; older
kernels padded the SHA-1 hash, ``replay(padded=True)``).  ``IMAEntry.template_data``
always holds the bytes the hash covers.

Binary lists (``binary_runtime_measurements``, and per bank ``..._<alg>`` since
Linux 6.10, whose hashes have that bank's size): ``u32 pcr, hash, u32 name
length, name, u32 data length, data``, host-endian (LE on x86/arm64; LE
everywhere with ``ima_canonical_fmt``; ``big_endian=True`` for s390x/ppc64).
The legacy ``ima`` template (``d|n``) has no data length; ``d`` is 20 bytes
without length and ``n`` is ``u32 strlen || name`` (IMA_SHOW_BINARY_OLD_STRING_FMT;
Linux 3.13-3.14 wrote the 256-byte padded field), while its hash covers ``d``
and the name NUL-padded to IMA_EVENT_NAME_LEN_MAX+1 = 256 bytes, no lengths.

ASCII lists: ``"%2d <hash hex> <name>"`` plus ``" " + field`` per field:
``<algo>:<hex>`` (d-ng, d-modsig), ``<type>:<algo>:<hex>`` (d-ngv2), strings
as raw text, uid/gid/mode in decimal, the rest hex; empty fields leave empty
tokens.  Spaces in names were replaced by ``_`` before hashing
(ima_write_template_field_data), so the data of every builtin and ``|``-format
template is rebuilt exactly from the text.  Not rebuildable: names with a
newline (unescaped: the line breaks and parsing fails), evm-sig's
``xattrnames`` (a raw buffer printed with %s) and unknown templates: those keep
``template_data=None`` and ``text_fields``.  The text does not say the host
byte order of the lengths (``big_endian=``).

Violations (ToMToU, open-writers) log an all-zero hash and file digest, but
every bank was extended with 0xFF bytes (ima_add_template_entry; the kernel's
kexec restore also reads a zero hash so): ``IMAEntry.violation``, ``Event.fill``.

Replay (:class:`IMAReplayer`) builds no objects: after one entry read with
every check, a loop frames the following entries of the same template on the
replayed PCR with one precompiled Struct unpack each, then the run is hashed
with list comprehensions and compared with the logged hashes in one list
comparison; runs holding a violation or a mismatch are walked entry by entry.
Mismatches are collected and raised at the end as :class:`TemplateHashError`.
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..algorithms import HashAlg
from ..errors import InputError, ParseError, ReplayError
from ..events import DATA, Event

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
_BATCH = 2048  # entries framed before they are hashed together: bounds the memory of a run
_MAX_ASCII_LINE = 4 + 2 * 64 + 2 + MAX_TEMPLATE_NAME_LEN + 2 * MAX_TEMPLATE_DATA_LEN + MAX_FIELDS

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
_ASCII_HEAD_RE = re.compile(
    rb" ?\d{1,4} (?:[0-9a-f]{40}|[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128}) [\x21-\x7e]{1,255} ")


def template_fields(name: str) -> tuple[str, ...] | None:
    """The field ids of template ``name``: a builtin, or a ``|`` format string of known ids; else None."""
    known = TEMPLATES.get(name)
    if known is not None:
        return known
    ids = tuple(name.split("|"))
    if len(ids) <= MAX_FIELDS and all(i in _FIELDS and i not in ("d", "n") for i in ids):
        return ids
    return None


# -- wire structs -------------------------------------------------------------------------------------

_U32 = {False: struct.Struct("<I"), True: struct.Struct(">I")}


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


# -- values -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IMAEntry:
    """One entry of an IMA measurement list (Linux ima_fs.c, Documentation/security/IMA-templates.rst).

    ``template_hash`` is as logged, of algorithm ``alg`` (SHA-1 in the default
    lists, the bank's in ``*_runtime_measurements_<alg>``); all zero for a
    violation.  ``template_data`` is what the hash covers (see the module
    docstring for the legacy ``ima`` template), or None for an ASCII line whose
    data cannot be rebuilt; ``text_fields`` then keeps its field tokens.
    ``offset`` is where the entry starts in its input (byte offset; for ASCII
    lists, of its line).
    """

    pcr: int
    template_hash: bytes
    template_name: str
    template_data: bytes | None
    alg: HashAlg = HashAlg.SHA1
    offset: int = field(default=0, compare=False)
    text_fields: tuple[str, ...] | None = field(default=None, compare=False)

    @property
    def violation(self) -> bool:
        return not any(self.template_hash)

    def fields(self, *, big_endian: bool = False) -> tuple[tuple[str, bytes], ...]:
        """(field id, raw bytes) of the template data; unknown templates get ids ``field0``...

        For ``ima`` the name comes without its padding.  Raises ParseError if the
        data does not split into the template's fields.
        """
        if self.template_data is None:
            raise InputError(f"ima: the template data of this {self.template_name} entry is unknown "
                             "(an ASCII line that cannot be rebuilt)")
        return split_fields(self.template_name, self.template_data, big_endian=big_endian)

    def computed_hash(self, alg: HashAlg | None = None) -> bytes | None:
        """``H_alg(template data)`` (the entry's own algorithm by default); None if the data is unknown."""
        if self.template_data is None:
            return None
        return HashAlg(alg if alg is not None else self.alg).hash(self.template_data)

    @property
    def file_name(self) -> str:
        """The ``n``/``n-ng`` field as text (undecodable bytes backslash-escaped); '' if none."""
        return self._show(("n", "n-ng"))

    @property
    def file_digest(self) -> str:
        """``sha256:<hex>`` (d-ng), ``ima:sha256:<hex>`` (d-ngv2) or ``<hex>`` (d); '' if none."""
        return self._show(("d", "d-ng", "d-ngv2"))

    def _show(self, ids: tuple[str, ...]) -> str:
        if self.template_data is None:
            pairs: Iterable[tuple[str, Any]] = zip(template_fields(self.template_name) or (), self.text_fields or ())
        else:
            try:
                pairs = self.fields()
            except ParseError:
                return ""
        for fid, value in pairs:
            if fid in ids:
                if isinstance(value, str):  # ASCII text, raw bytes kept as surrogates
                    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                try:
                    return _show_field(fid, value, False)
                except ParseError:
                    return value.hex()
        return ""


def _cstr(raw: bytes) -> bytes:
    i = raw.find(0)
    return raw if i < 0 else raw[:i]


@dataclass(frozen=True, slots=True)
class TemplateHashMismatch:
    """An entry whose logged template hash is not the hash of its template data."""

    seq: int  # entry number in the list, from 0
    offset: int
    pcr: int
    template_name: str
    file_name: str
    logged: bytes
    computed: bytes

    def __str__(self) -> str:
        what = f" ({self.file_name})" if self.file_name else ""
        return (f"entry {self.seq}{what}: template hash mismatch (logged {self.logged.hex()}, "
                f"computed {self.computed.hex()})")


class TemplateHashError(ReplayError):
    """Some entries' template hashes do not match their data; raised after the whole list was replayed.

    ``mismatches`` holds the first MAX_REPORTED_MISMATCHES, ``count`` all of
    them; ``values`` are the register values replayed anyway (logged hashes in
    the list's own bank, recomputed hashes in the others).
    """

    def __init__(self, mismatches: Sequence[TemplateHashMismatch], count: int,
                 values: Mapping[HashAlg, bytes]) -> None:
        self.mismatches = tuple(mismatches)
        self.count = count
        self.values = dict(values)
        first = "; ".join(str(m) for m in self.mismatches[:3])
        more = f"; and {count - 3} more" if count > 3 else ""
        noun = "entry has a template hash" if count == 1 else "entries have a template hash"
        super().__init__(f"ima: {count} {noun} that does not match the template data: {first}{more}")


# -- template fields ----------------------------------------------------------------------------------


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


def _details(e: IMAEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.violation:
        out["violation"] = True
    if e.template_data is None:
        texts = [t.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                 for t in e.text_fields or ()]
        for fid, text in zip(template_fields(e.template_name) or (), texts):
            out[_FIELDS[fid][1]] = text
        if not out.get("file_name") and texts:
            out["fields"] = texts
        out["template_data"] = "not recoverable from the ASCII list"
        return out
    try:
        fields = e.fields()
    except ParseError as err:
        out["decode_error"] = str(err)
        return out
    for fid, raw in fields:
        key = _FIELDS[fid][1] if fid in _FIELDS else fid
        if fid == "d-ng" or fid == "d-ngv2" or fid == "d-modsig":
            try:
                out[key] = _show_field(fid, raw, False) if raw else ""
            except ParseError as err:
                out[key] = raw.hex()
                out["decode_error"] = str(err)
        elif fid in ("n", "n-ng", "xattrnames"):
            out[key] = _cstr(raw).decode("utf-8", "backslashreplace")
        elif fid in _UINT_SIZES:
            out[key] = int.from_bytes(raw, "little") if raw else None
        elif raw or fid == "buf":
            out[key] = raw.hex()
            if fid == "buf" and raw.isascii() and raw.decode("ascii").isprintable():
                out["buffer_text"] = raw.decode("ascii")
    return out


def _summary(e: IMAEntry, details: Mapping[str, Any]) -> str:
    digest = str(details.get("file_digest", ""))
    head, _, hexpart = digest.rpartition(":")
    short = (f"{head}:" if head else "") + f"{hexpart[:12]}..." if hexpart else ""
    if e.violation:
        short = "violation (logged 0, extended 0xff)"
    name = details.get("file_name") or ""
    parts = [e.template_name, short, name]
    if e.template_name not in TEMPLATES and not name and e.template_data is not None:
        parts.append(f"{len(e.template_data)} bytes")
    return " ".join(p for p in parts if p)


# -- binary reader ------------------------------------------------------------------------------------


def _aerr(message: str, offset: int | None = None, field: str | None = None) -> ParseError:
    return ParseError(message, format=FORMAT_ASCII, offset=offset, field=field)


def _berr(message: str, offset: int | None = None, field: str | None = None) -> ParseError:
    return ParseError(message, format=FORMAT_BINARY, offset=offset, field=field)


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
            return pos, r  # type: ignore[return-value]
        pcr, th, name, data, nxt = r  # type: ignore[misc]
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


# -- ASCII reader -------------------------------------------------------------------------------------


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


def detect(data: bytes | bytearray | memoryview) -> str | None:
    """``"ima-ascii"``, ``"ima-binary"`` or None, from the first entry of ``data``."""
    try:
        head = bytes(data[:8192])
    except TypeError:
        return None
    if _ASCII_HEAD_RE.match(head):
        return FORMAT_ASCII
    return FORMAT_BINARY if guess_binary_layout(data) is not None else None


class _Stream:
    """Chunk buffering for the incremental decoder and replayer: holds at most one incomplete entry."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]
        self._need = 0  # bytes the incomplete entry at the start of self._buf needs

    @property
    def offset(self) -> int:
        """Stream offset just past the last complete entry."""
        return self._base

    def _push(self, chunk: bytes | bytearray | memoryview, final: bool) -> None:
        self._buf += chunk
        if final or len(self._buf) >= self._need:
            stop = self._consume(bytes(self._buf), final)
            del self._buf[:stop]
            self._base += stop

    def _consume(self, buf: bytes, final: bool) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class IMADecoder(_Stream):
    """Incremental decoder: :meth:`feed` chunks of a binary (or ASCII) list, get the complete entries.

    :meth:`close` returns the last entries and raises ParseError if the input
    ended inside an entry.  ``offset`` and ``count`` tell the progress.
    """

    def __init__(self, *, format: str = FORMAT_BINARY, alg: HashAlg | None = None, big_endian: bool = False,
                 check_fields: bool = True) -> None:
        if format not in (FORMAT_BINARY, FORMAT_ASCII):
            raise InputError(f"ima: format must be {FORMAT_BINARY!r} or {FORMAT_ASCII!r}, not {format!r}")
        super().__init__()
        self.format = format
        self._alg = HashAlg(alg) if alg is not None else None
        self._lay = _Layout(self._alg or HashAlg.SHA1, big_endian)
        self._check = check_fields
        self._out: list[IMAEntry] = []
        self.count = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[IMAEntry]:
        self._push(chunk, False)
        out, self._out = self._out, []
        return out

    def close(self) -> list[IMAEntry]:
        self._push(b"", True)
        out, self._out = self._out, []
        return out

    def _consume(self, buf: bytes, final: bool) -> int:
        out = self._out
        if self.format == FORMAT_BINARY:
            stop, self._need = _parse_binary(buf, self._lay, self._base, final, out, self._check)
        else:
            stop = _parse_ascii(buf, self._base, final, self._alg, self._lay.big, out)
            if out and self._alg is None:
                self._alg = out[0].alg  # the first line fixes the hash size for the rest
        self.count += len(out)
        return stop


# -- writers --------------------------------------------------------------------------------------------


def digest_field(algo: str | HashAlg, digest: bytes) -> bytes:
    """A d-ng / d-modsig field's bytes: ``"<algo>:" NUL digest`` (algo as the kernel names it)."""
    name = algo.kernel_name if isinstance(algo, HashAlg) else str(algo)
    return name.encode("ascii") + b":\0" + bytes(digest)


def name_field(name: str | bytes) -> bytes:
    """An n-ng field's bytes: the name with spaces as '_' (as the kernel stores it) and a NUL."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
    return raw.replace(b" ", b"_") + b"\0"


def build_entry(template_name: str, fields: Sequence[bytes], *, pcr: int = 10, alg: HashAlg = HashAlg.SHA1,
                violation: bool = False, big_endian: bool = False) -> IMAEntry:
    """An entry as the kernel makes it: template data from raw ``fields``, hash ``H_alg`` of it.

    For ``ima`` give (20-byte digest, name); for other templates the field bytes
    in template order (see :func:`digest_field`, :func:`name_field`).
    ``violation``: the hash is logged as zeros.
    """
    alg = HashAlg(alg)
    _check_name(template_name)
    if template_name == "ima":
        if len(fields) != 2 or len(fields[0]) != 20 or len(fields[1]) > IMA_EVENT_NAME_LEN_MAX:
            raise InputError("ima: the 'ima' template takes a 20-byte digest and a name of at most 255 bytes")
        data = bytes(fields[0]) + _cstr(bytes(fields[1])).ljust(IMA_EVENT_NAME_LEN_MAX + 1, b"\0")
    else:
        if len(fields) > MAX_FIELDS:
            raise InputError(f"ima: a template has at most MAX_FIELDS={MAX_FIELDS} fields")
        u32 = _U32[big_endian]
        data = b"".join(u32.pack(len(f)) + bytes(f) for f in fields)
    th = bytes(alg.digest_size) if violation else alg.hash(data)
    return IMAEntry(pcr, th, template_name, data, alg)


def _check_name(name: str) -> bytes:
    raw = name.encode("ascii", "replace") if isinstance(name, str) else b""
    if not _NAME_RE.match(raw) or not name.isascii():
        raise InputError(f"ima: template name {name!r} must be 1..{MAX_TEMPLATE_NAME_LEN} printable ASCII "
                         "characters without spaces")
    return raw


def _writable_fields(e: IMAEntry, big_endian: bool) -> tuple[tuple[str, bytes], ...]:
    try:
        return split_fields(e.template_name, e.template_data or b"", big_endian=big_endian)
    except ParseError as err:
        raise InputError(f"ima: the template data of this {e.template_name} entry is malformed: {err}") from None


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


# -- unified events -------------------------------------------------------------------------------------


def to_events(entries: Iterable[IMAEntry], *, register: str | None = None) -> list[Event]:
    """Unified events: register ``pcr<N>`` (or ``register``), type = template name, data = template data.

    A violation keeps its logged (zero) hash, as CEL IMA records do, and has
    ``fill=0xFF``: every bank was extended with 0xFF bytes, and the recorded
    bank tells a replay that the event exists even when it comes first.
    Entries whose data is unknown (some ASCII lines) keep their logged hash
    only (``data_rule=None``).
    """
    out: list[Event] = []
    for seq, e in enumerate(entries):
        details = _details(e)
        known = e.template_data is not None
        out.append(Event(
            source="ima", seq=seq, index=e.pcr, register=register or f"pcr{e.pcr}", type=e.template_name,
            digests=((HashAlg(e.alg), e.template_hash),),
            data=e.template_data if known else b"",  # type: ignore[arg-type]
            data_rule=DATA if known else None, summary=_summary(e, details), details=details,
            offset=e.offset, fill=0xFF if e.violation else None,
        ))
    return out


# -- replay ---------------------------------------------------------------------------------------------


class IMAReplayer(_Stream):
    """Streaming verified replay of one PCR of a binary list: :meth:`feed` chunks, then :meth:`finish`.

    Per entry on ``pcr``: unless it is a violation, check (``verify``) that the
    logged hash is ``H_alg(template data)``; extend each bank with the logged
    hash (the list's own bank), ``H_bank(template data)`` (other banks; with
    ``padded``: the logged SHA-1 hash zero-padded, as kernels before 5.8 did),
    or 0xFF bytes (violations).  Entries on other PCRs are framed and skipped.
    ``count``: entries read; ``extended``: entries folded; ``mismatches``.
    """

    def __init__(self, *, banks: Sequence[HashAlg] = (HashAlg.SHA1,), pcr: int = 10, verify: bool = True,
                 alg: HashAlg = HashAlg.SHA1, big_endian: bool = False,
                 initial: Mapping[HashAlg, bytes] | None = None, padded: bool = False) -> None:
        super().__init__()
        self._lay = _Layout(alg, big_endian)
        self.banks = tuple(HashAlg(b) for b in banks)
        if not self.banks or len(set(self.banks)) != len(self.banks):
            raise InputError("ima: replay needs one or more distinct banks")
        if padded and self._lay.alg != HashAlg.SHA1:
            raise InputError("ima: padded replay (kernels before 5.8) needs the SHA-1 list")
        self.values = {b: bytes((initial or {}).get(b, bytes(b.digest_size))) for b in self.banks}
        if any(len(v) != b.digest_size for b, v in self.values.items()):
            raise InputError("ima: an initial value has the wrong size for its bank")
        self.pcr, self.verify, self.padded = pcr, verify, padded
        self.count = self.extended = self.mismatch_count = 0
        self.mismatches: list[TemplateHashMismatch] = []
        self._names: dict[bytes, str] = {}

    def feed(self, chunk: bytes | bytearray | memoryview) -> int:
        """Fold the complete entries now available; returns the number of entries read so far."""
        self._push(chunk, False)
        return self.count

    def finish(self) -> dict[HashAlg, bytes]:
        """The PCR values; raises ParseError for a truncated tail, TemplateHashError for mismatches."""
        self._push(b"", True)
        if self.mismatch_count:
            raise TemplateHashError(self.mismatches, self.mismatch_count, self.values)
        return dict(self.values)

    def _entry(self, seq: int, offset: int, pcr: int, th: bytes, name: str, data: bytes,
               computed: bytes | None = None) -> None:
        """The general path: one entry on the replayed PCR, with every case."""
        lay = self._lay
        violation = th == lay.zero
        if self.verify and not violation:
            computed = computed or lay.alg.hash(data)
            if computed != th:
                self.mismatch_count += 1
                if len(self.mismatches) < MAX_REPORTED_MISMATCHES:
                    fname = IMAEntry(pcr, th, name, data, lay.alg).file_name
                    self.mismatches.append(TemplateHashMismatch(seq, offset, pcr, name, fname, th, computed))
        values = self.values
        for b in self.banks:
            if violation:
                d = b"\xff" * b.digest_size
            elif b == lay.alg:
                d = th
            elif self.padded:
                d = th[:b.digest_size].ljust(b.digest_size, b"\0")
            else:
                d = b.hash(data)
            values[b] = b.extend(values[b], d)

    def _consume(self, buf: bytes, final: bool) -> int:
        """Fold the entries of ``buf``; return where the first incomplete entry starts."""
        lay, base, names = self._lay, self._base, self._names
        end, pos, seq, pcr_sel = len(buf), 0, self.count, self.pcr
        p4 = lay.u32.pack(pcr_sel) if 0 <= pcr_sel <= MAX_PCR else b""
        maxd = MAX_TEMPLATE_DATA_LEN
        fast = None
        name = ""  # the template of the current run (set by the general path before a run starts)
        self._need = 0
        while pos < end:
            if fast is not None and not self.padded:
                # Phase 1: frame a run of entries of the last template on the replayed PCR
                # (one unpack each); phase 2 (_bulk) hashes the run with list comprehensions.
                unpack, hs, key, _ = fast
                lim = end - hs
                ths: list[bytes] = []
                ds: list[bytes] = []
                add_th, add_d = ths.append, ds.append
                start = pos
                for _ in range(_BATCH):
                    if pos > lim:
                        break
                    q4, th, k, dl = unpack(buf, pos)
                    if k != key or q4 != p4 or dl > maxd:
                        break
                    s = pos + hs
                    e = s + dl
                    if e > end:
                        break
                    add_th(th)
                    add_d(buf[s:e])
                    pos = e
                if ds:
                    self._bulk(ths, ds, seq, name, buf, start, base, unpack, hs)
                    seq += len(ds)
                    if len(ds) == _BATCH:
                        continue
                    if pos >= end:
                        break
            r = _read_entry(buf, pos, lay, base, final, names)
            if r.__class__ is int:
                self._need = r  # type: ignore[assignment]
                break
            pcr, th, name, data, nxt = r  # type: ignore[misc]
            if pcr == pcr_sel:
                self._entry(seq, base + pos, pcr, th, name, data)
                self.extended += 1
            seq += 1
            pos = nxt
            fast = lay.run(name) if name != "ima" else None
        self.count = seq
        return pos

    def _bulk(self, ths: list[bytes], ds: list[bytes], seq: int, name: str, buf: bytes, start: int,
              base: int, unpack: Any, hs: int) -> None:
        """Verify and fold a run of same-template entries on the replayed PCR."""
        lay, k = self._lay, len(ds)
        zero = lay.zero
        if self.verify:
            H = lay.alg.constructor
            computed = [H(d).digest() for d in ds]
            # One C-level list comparison; only a run with a violation or mismatch is walked.
            bad = None if computed == ths else [i for i in range(k) if computed[i] != ths[i]]
        else:
            computed = ths
            bad = None if zero not in ths else [i for i in range(k) if ths[i] == zero]
        if bad is None:
            self._chain(ths, ds)
        else:
            lo, j, offset = 0, 0, start
            for i in bad:
                if lo < i:
                    self._chain(ths[lo:i], ds[lo:i])
                for j in range(j, i):  # offsets are only needed here: walk to entry i
                    offset += hs + unpack(buf, offset)[3]
                j = i
                self._entry(seq + i, base + offset, self.pcr, ths[i], name, ds[i], computed[i])
                lo = i + 1
            if lo < k:
                self._chain(ths[lo:], ds[lo:])
        self.extended += k

    def _chain(self, ths: list[bytes], ds: list[bytes]) -> None:
        values, own = self.values, self._lay.alg
        for bank in self.banks:
            H = bank.constructor
            digests = ths if bank == own else [H(d).digest() for d in ds]
            v = values[bank]
            for d in digests:
                v = H(v + d).digest()
            values[bank] = v

    def fold_entries(self, entries: Iterable[IMAEntry]) -> None:
        """Fold parsed entries (any source) instead of bytes."""
        seq = self.count
        for e in entries:
            if e.pcr == self.pcr:
                if e.template_data is None:
                    if self.verify or any(b != e.alg for b in self.banks):
                        raise ReplayError(
                            f"ima: entry {seq} ({e.template_name}): its template data cannot be rebuilt from "
                            "the ASCII list, so it cannot be verified or hashed into other banks; use the "
                            "binary list")
                    data = b""
                else:
                    data = e.template_data
                if HashAlg(e.alg) != self._lay.alg:
                    self._lay = _Layout(e.alg, self._lay.big)
                self._entry(seq, e.offset, e.pcr, e.template_hash, e.template_name, data)
                self.extended += 1
            seq += 1
        self.count = seq


def replay(entries_or_data: bytes | bytearray | memoryview | Iterable[IMAEntry], *,
           banks: Sequence[HashAlg] = (HashAlg.SHA1,), pcr: int = 10, verify: bool = True,
           alg: HashAlg = HashAlg.SHA1, big_endian: bool = False,
           initial: Mapping[HashAlg, bytes] | None = None, padded: bool = False) -> dict[HashAlg, bytes]:
    """Replay PCR ``pcr`` of a measurement list into ``banks``; returns ``{bank: value}``.

    Takes a binary list (bytes; ``alg``/``big_endian`` describe it), an ASCII
    list (bytes, detected) or parsed entries.  With ``verify`` every template
    hash is recomputed; mismatches are collected and raised at the end as
    :class:`TemplateHashError` (whose ``mismatches`` name each entry and whose
    ``values`` are the replayed values).  See :class:`IMAReplayer`.
    """
    r = IMAReplayer(banks=banks, pcr=pcr, verify=verify, alg=alg, big_endian=big_endian, initial=initial,
                    padded=padded)
    if isinstance(entries_or_data, (bytes, bytearray, memoryview)):
        buf = _as_bytes(entries_or_data, "replay")
        if _ASCII_HEAD_RE.match(buf[:8192]):
            r.fold_entries(parse_ascii(buf, big_endian=big_endian))
        else:
            r._base += r._consume(buf, True)  # no copy into the stream buffer
    else:
        r.fold_entries(entries_or_data)
    return r.finish()


__all__ = [
    "FORMAT_ASCII", "FORMAT_BINARY", "IMA_EVENT_NAME_LEN_MAX", "MAX_FIELDS", "MAX_PCR", "MAX_TEMPLATE_DATA_LEN",
    "MAX_TEMPLATE_NAME_LEN", "TEMPLATES", "IMADecoder", "IMAEntry", "IMAReplayer", "TemplateHashError",
    "TemplateHashMismatch", "build_entry", "detect", "digest_field", "encode_ascii", "encode_binary",
    "guess_binary_layout", "name_field", "parse_ascii", "parse_binary", "replay", "split_fields",
    "template_fields", "to_events",
]
