"""Verified replay of IMA measurement lists into PCR banks, straight from the bytes (or parsed entries).

How it stays fast: no objects are built.  After one entry read with every
check, a loop frames the following entries of the same template on the
replayed PCR with one precompiled Struct unpack each; the run is then hashed
with list comprehensions and compared with the logged hashes in one list
comparison; runs holding a violation or a mismatch are walked entry by entry.
Mismatches are collected and raised at the end as :class:`TemplateHashError`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from ...algorithms import HashAlg
from ...errors import InputError, ReplayError
from .ascii import _ASCII_HEAD_RE, parse_ascii
from .binary import _as_bytes, _Layout, _read_entry
from .decoder import _Stream
from .entry import IMAEntry, TemplateHashError, TemplateHashMismatch, bank_digest
from .templates import MAX_PCR, MAX_REPORTED_MISMATCHES, MAX_TEMPLATE_DATA_LEN


DEFAULT_BANKS: tuple[HashAlg, ...] = (HashAlg.SHA1, HashAlg.SHA256)
"""The banks an IMA replay reports when nobody asked for others: the list's own SHA-1 and the
SHA-256 bank every TPM 2.0 allocates (and quotes)."""

_BATCH = 2048  # entries framed before they are hashed together: bounds the memory of a run


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
            values[b] = b.extend(values[b], bank_digest(b, lay.alg, th, data, violation, self.padded))

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
                self._need = r
                break
            pcr, th, name, data, nxt = r
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
