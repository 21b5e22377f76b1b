"""IMA list entries as values: :class:`IMAEntry`, entries built as the kernel builds them, template hash errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ...algorithms import HashAlg
from ...errors import InputError, ParseError, ReplayError
from .templates import (
    _NAME_RE, _U32, IMA_EVENT_NAME_LEN_MAX, MAX_FIELDS, MAX_TEMPLATE_NAME_LEN, _cstr, _show_field, split_fields,
    template_fields,
)


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


def template_digest(entry: IMAEntry, bank: HashAlg, *, padded: bool = False) -> bytes | None:
    """The digest the kernel extended bank ``bank`` of the entry's PCR with; None if the data is unknown.

    ima_calc_field_array_hash hashes the template data once per bank with that
    bank's algorithm (for ``ima``: the digest and the 256-byte padded name, no
    lengths; ``template_data`` holds exactly that), so the list's own bank gets
    the logged hash and every other bank ``H_bank(template data)``.  A violation
    (all-zero logged hash) was extended as 0xFF bytes of the bank's size
    (ima_add_violation).  ``padded``: a kernel before 5.8, which extended every
    bank with the SHA-1 template hash zero-padded (or cut) to the bank's size.
    """
    bank, own = HashAlg(bank), HashAlg(entry.alg)
    if entry.template_data is None and not (entry.violation or bank == own or padded):
        return None
    return bank_digest(bank, own, entry.template_hash, entry.template_data or b"", entry.violation, padded)


def bank_digest(bank: HashAlg, own: HashAlg, logged: bytes, data: bytes, violation: bool, padded: bool) -> bytes:
    """The rule of :func:`template_digest` on raw values (``own``: the algorithm of the logged hash)."""
    if violation:
        return b"\xff" * bank.digest_size
    if bank == own:
        return logged
    if padded:
        return logged[:bank.digest_size].ljust(bank.digest_size, b"\0")
    return bank.hash(data)


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
