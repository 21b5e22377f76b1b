"""PE/COFF images: the Authenticode digest firmware measures, the sections, and the digests signatures embed.

The Authenticode digest (Microsoft, "Windows Authenticode Portable Executable Signature
Format", *Calculating the PE Image Hash*) is what UEFI firmware extends into PCR 4 (or
RTMR1) for every EFI application it starts, and what Secure Boot compares with ``db``.
It hashes the file except the optional header's ``CheckSum`` field, the certificate
table's data-directory entry and the certificate table itself:

1. the headers from the start of the file to ``CheckSum``, then from after it to the
   certificate table's data-directory entry, then from after that entry to
   ``SizeOfHeaders`` (with fewer than five data directories there is no such entry and
   everything after ``CheckSum`` up to ``SizeOfHeaders`` is hashed);
2. the raw data of each section with a non-zero ``SizeOfRawData``, in ascending
   ``PointerToRawData`` order (a stable sort: equal offsets keep header order);
3. ``SUM_OF_BYTES_HASHED`` being ``SizeOfHeaders`` plus the sizes of those sections,
   the bytes from that offset to ``file size - certificate table size``.

Step 3 is the rule EDK2 (``Tcg2Dxe``'s ``MeasurePeImage`` and ``DxeImageVerificationLib``)
applies, and the firmware's measurement is what a register holds, so this module follows
it to the byte: no padding is added to an image whose length is not a multiple of 8
(signing tools pad the file *before* signing, so a signed image is already aligned and
its padding is part of the file), and data after the last section of an unsigned image
is hashed.  For an image whose certificate table is the last thing in the file (every
signing tool writes it so) this equals the spec's "up to the certificate table".

Every offset the headers give is checked against the file: a truncated or malformed
image raises :class:`~tsmr.errors.InputError` naming what is wrong.  Hashing works on
``memoryview`` slices, so a 15 MiB kernel costs one pass of the hash and no copies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..algorithms import HashAlg
from ..errors import InputError

__all__ = ["PeImage", "PeSection", "authenticode"]

_PE32_MAGIC = 0x10B
_PE32_PLUS_MAGIC = 0x20B
_MACHINE_IA64 = 0x0200
_SECURITY_DIR = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY
_WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002

MACHINES = {0x014C: "i386", 0x8664: "x86_64", 0x01C0: "arm", 0x01C2: "thumb", 0x01C4: "armv7",
            0xAA64: "aarch64", 0x0200: "ia64", 0x5032: "riscv32", 0x5064: "riscv64",
            0x5128: "riscv128", 0x6232: "loongarch32", 0x6264: "loongarch64", 0x0EBC: "ebc"}


@dataclass(frozen=True)
class PeSection:
    """One section header, and access to the section's bytes in the file it came from."""

    name: str  # up to 8 bytes, NULs stripped (a "/123" long name is left as it is)
    virtual_address: int
    virtual_size: int
    raw_offset: int  # PointerToRawData
    raw_size: int  # SizeOfRawData
    characteristics: int
    _image: memoryview = field(repr=False, compare=False)

    @property
    def raw(self) -> memoryview:
        """The section's bytes in the file (``SizeOfRawData`` of them: padded to the file alignment)."""
        return self._image[self.raw_offset:self.raw_offset + self.raw_size]

    @property
    def contents(self) -> bytes:
        """The section as a loader maps it: ``VirtualSize`` bytes, zero-filled past the raw data.

        This is what systemd-stub measures of a UKI section (its in-memory extent), and,
        for sections ukify or objcopy added from a file, exactly that file's bytes.
        """
        if self.virtual_size <= self.raw_size:
            return bytes(self.raw[:self.virtual_size])
        return bytes(self.raw) + bytes(self.virtual_size - self.raw_size)


@dataclass(frozen=True)
class PeImage:
    """A parsed PE/COFF image (PE32 or PE32+), with every header offset checked against the file."""

    data: memoryview = field(repr=False, compare=False)
    machine: int
    is_pe32_plus: bool
    pe_offset: int  # e_lfanew: where "PE\0\0" is
    checksum_offset: int  # file offset of the optional header's CheckSum field
    cert_dir_offset: int | None  # file offset of the certificate table's data-directory entry, if any
    size_of_headers: int
    sections: tuple[PeSection, ...]
    cert_table: tuple[int, int] | None  # (file offset, size) of the attribute certificate table, if any

    @property
    def machine_name(self) -> str:
        """``x86_64``, ``aarch64`` ... or the hex machine number."""
        return MACHINES.get(self.machine, f"0x{self.machine:04x}")

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> PeImage:
        """Parse the headers of ``data``; raise :class:`InputError` when any of them lies outside it."""
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
        size = len(view)

        def u16(off: int, what: str) -> int:
            _need(off, 2, size, what)
            return int(struct.unpack_from("<H", view, off)[0])

        def u32(off: int, what: str) -> int:
            _need(off, 4, size, what)
            return int(struct.unpack_from("<I", view, off)[0])

        if size < 2:
            raise InputError(f"not a PE image: {size} bytes")
        # EDK2 accepts an image without a DOS header (the PE header then starts the file).
        pe_offset = u32(0x3C, "the DOS header's e_lfanew") if bytes(view[:2]) == b"MZ" else 0
        _need(pe_offset, 24, size, f"the PE header at e_lfanew 0x{pe_offset:x}")
        if bytes(view[pe_offset:pe_offset + 4]) != b"PE\0\0":
            raise InputError(f"not a PE image: no PE signature at offset 0x{pe_offset:x}")
        machine = u16(pe_offset + 4, "Machine")
        nsections = u16(pe_offset + 6, "NumberOfSections")
        opt_size = u16(pe_offset + 20, "SizeOfOptionalHeader")
        opt = pe_offset + 24
        _need(opt, opt_size, size, "the optional header")
        if opt_size < 2:
            raise InputError(f"not a PE image: SizeOfOptionalHeader is {opt_size}")
        magic = u16(opt, "the optional header's Magic")
        if magic == _PE32_MAGIC and machine == _MACHINE_IA64:
            magic = _PE32_PLUS_MAGIC  # old ELILO images: EDK2 reads them as PE32+
        if magic == _PE32_MAGIC:
            plus, nrva_off, dirs_off = False, opt + 92, opt + 96
        elif magic == _PE32_PLUS_MAGIC:
            plus, nrva_off, dirs_off = True, opt + 108, opt + 112
        else:
            raise InputError(f"not a PE image: optional header magic 0x{magic:04x} (want 0x10b or 0x20b)")
        opt_end = opt + opt_size
        if nrva_off + 4 > opt_end:
            raise InputError(f"malformed PE image: the optional header ({opt_size} bytes) ends before "
                             "NumberOfRvaAndSizes")
        checksum_offset = opt + 64
        size_of_headers = u32(opt + 60, "SizeOfHeaders")
        nrva = u32(nrva_off, "NumberOfRvaAndSizes")
        cert_dir: int | None = None
        cert_table: tuple[int, int] | None = None
        if nrva > _SECURITY_DIR:
            cert_dir = dirs_off + 8 * _SECURITY_DIR
            if cert_dir + 8 > opt_end:
                raise InputError(f"malformed PE image: NumberOfRvaAndSizes is {nrva} but the optional header "
                                 f"({opt_size} bytes) ends before the certificate table entry")
            cert_off, cert_size = struct.unpack_from("<II", view, cert_dir)
            if cert_size:
                if cert_off + cert_size > size:
                    raise InputError(f"truncated PE image: the certificate table (0x{cert_off:x}+{cert_size}) "
                                     f"ends past the end of the file ({size} bytes)")
                cert_table = (int(cert_off), int(cert_size))
        if size_of_headers > size:
            raise InputError(f"truncated PE image: SizeOfHeaders is {size_of_headers}, the file {size} bytes")
        hashed_headers_end = cert_dir + 8 if cert_dir is not None else checksum_offset + 4
        if size_of_headers < hashed_headers_end:
            raise InputError(f"malformed PE image: SizeOfHeaders ({size_of_headers}) ends inside the optional "
                             "header")
        table = opt_end
        _need(table, 40 * nsections, size, f"the section table ({nsections} sections)")
        sections = []
        for i in range(nsections):
            off = table + 40 * i
            raw_name, vsize, va, rsize, roff = struct.unpack_from("<8sIIII", view, off)
            characteristics = struct.unpack_from("<I", view, off + 36)[0]
            name = raw_name.rstrip(b"\0").decode("latin-1")
            if rsize and roff + rsize > size:
                raise InputError(f"truncated PE image: section {i} ({name!r}) has its data at 0x{roff:x}+{rsize}, "
                                 f"past the end of the file ({size} bytes)")
            sections.append(PeSection(name=name, virtual_address=int(va), virtual_size=int(vsize),
                                      raw_offset=int(roff), raw_size=int(rsize),
                                      characteristics=int(characteristics), _image=view))
        return cls(data=view, machine=machine, is_pe32_plus=plus, pe_offset=pe_offset,
                   checksum_offset=checksum_offset, cert_dir_offset=cert_dir, size_of_headers=size_of_headers,
                   sections=tuple(sections), cert_table=cert_table)

    def section(self, name: str) -> PeSection | None:
        """The first section called ``name`` (``.linux``), or None."""
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def hashed_ranges(self) -> list[tuple[int, int]]:
        """The ``(start, end)`` file ranges the Authenticode digest covers, in hashing order."""
        ranges = [(0, self.checksum_offset)]
        if self.cert_dir_offset is None:
            ranges.append((self.checksum_offset + 4, self.size_of_headers))
        else:
            ranges.append((self.checksum_offset + 4, self.cert_dir_offset))
            ranges.append((self.cert_dir_offset + 8, self.size_of_headers))
        hashed = self.size_of_headers
        for s in sorted((s for s in self.sections if s.raw_size), key=lambda s: s.raw_offset):
            ranges.append((s.raw_offset, s.raw_offset + s.raw_size))
            hashed += s.raw_size
        cert_size = self.cert_table[1] if self.cert_table else 0
        end = len(self.data) - cert_size
        if hashed < end:
            ranges.append((hashed, end))
        elif len(self.data) > hashed and end < hashed:
            # EDK2 refuses to measure such an image (EFI_UNSUPPORTED): it cannot be started measured.
            raise InputError(f"malformed PE image: headers and sections ({hashed} bytes) and the certificate "
                             f"table ({cert_size} bytes) add up to more than the file ({len(self.data)} bytes)")
        return [(a, b) for a, b in ranges if b > a]

    def digests(self, algs: Sequence[HashAlg]) -> dict[HashAlg, bytes]:
        """The Authenticode digest in each of ``algs`` (one pass over the ranges per algorithm)."""
        ranges = self.hashed_ranges()
        out: dict[HashAlg, bytes] = {}
        for alg in algs:
            h = alg.new()
            for a, b in ranges:
                h.update(self.data[a:b])
            out[alg] = h.digest()
        return out

    def authenticode(self, alg: HashAlg = HashAlg.SHA256) -> bytes:
        """The Authenticode digest of the image in ``alg``."""
        return self.digests([alg])[alg]

    def certificates(self) -> Iterator[tuple[int, int, memoryview]]:
        """Each WIN_CERTIFICATE of the certificate table: (revision, type, certificate bytes)."""
        if self.cert_table is None:
            return
        start, size = self.cert_table
        pos, end = start, start + size
        while pos + 8 <= end:
            length, revision, ctype = struct.unpack_from("<IHH", self.data, pos)
            if length < 8 or pos + length > end:
                raise InputError(f"malformed PE certificate table: a WIN_CERTIFICATE at 0x{pos:x} says "
                                 f"{length} bytes, the table ends at 0x{end:x}")
            yield int(revision), int(ctype), self.data[pos + 8:pos + length]
            pos += (length + 7) & ~7  # entries are 8-byte aligned
        # fewer than 8 bytes left over is padding

    def signed_digests(self) -> list[tuple[HashAlg, bytes]]:
        """The image digests the Authenticode signatures embed (``SpcIndirectDataContent.messageDigest``).

        One entry per PKCS#7 SignedData in the certificate table, in table order, plus
        those of signatures nested in a signer's unsigned attributes (the
        ``1.3.6.1.4.1.311.2.4.1`` attribute dual-signed images carry).  A signature whose
        digest algorithm tsmr does not know is skipped; malformed DER raises InputError.
        """
        out: list[tuple[HashAlg, bytes]] = []
        for _rev, ctype, cert in self.certificates():
            if ctype == _WIN_CERT_TYPE_PKCS_SIGNED_DATA:
                _signed_data_digests(bytes(cert), out, depth=0)
        return out


def authenticode(data: bytes | bytearray | memoryview, alg: HashAlg = HashAlg.SHA256) -> bytes:
    """The Authenticode digest of the PE/COFF image ``data``, as UEFI firmware measures it."""
    return PeImage.parse(data).authenticode(alg)


def _need(off: int, length: int, size: int, what: str) -> None:
    if off < 0 or length < 0 or off + length > size:
        raise InputError(f"truncated PE image: {what} (0x{off:x}+{length}) lies past the end of the file "
                         f"({size} bytes)")


# --- a small DER reader: just what the SignedData -> SpcIndirectDataContent path needs ---

def _oid(dotted: str) -> bytes:
    """The DER content octets of an OBJECT IDENTIFIER."""
    parts = [int(p) for p in dotted.split(".")]
    arcs = [40 * parts[0] + parts[1], *parts[2:]]
    out = bytearray()
    for arc in arcs:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


_OID_SIGNED_DATA = _oid("1.2.840.113549.1.7.2")
_OID_SPC_INDIRECT_DATA = _oid("1.3.6.1.4.1.311.2.1.4")
_OID_NESTED_SIGNATURE = _oid("1.3.6.1.4.1.311.2.4.1")
_DIGEST_OIDS = {_oid("1.3.14.3.2.26"): HashAlg.SHA1,
                _oid("2.16.840.1.101.3.4.2.1"): HashAlg.SHA256,
                _oid("2.16.840.1.101.3.4.2.2"): HashAlg.SHA384,
                _oid("2.16.840.1.101.3.4.2.3"): HashAlg.SHA512}

_SEQUENCE, _SET, _OID_TAG, _OCTETS, _CTX0, _CTX1 = 0x30, 0x31, 0x06, 0x04, 0xA0, 0xA1


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read one DER TLV at ``pos`` (not past ``end``): (tag, content start, content end)."""
    if pos + 2 > end:
        raise InputError("malformed Authenticode signature: DER element truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise InputError("malformed Authenticode signature: multi-byte DER tag")
    first = buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise InputError("malformed Authenticode signature: indefinite length (BER) in DER")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > end:
            raise InputError("malformed Authenticode signature: bad DER length")
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise InputError("malformed Authenticode signature: DER element longer than its container")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The TLVs that fill ``buf[start:end]``: (tag, content start, content end, element start) each."""
    out = []
    pos = start
    while pos < end:
        tag, a, b = _tlv(buf, pos, end)
        out.append((tag, a, b, pos))
        pos = b
    return out


def _expect(item: tuple[int, int, int] | tuple[int, int, int, int], tag: int, what: str) -> tuple[int, int]:
    if item[0] != tag:
        raise InputError(f"malformed Authenticode signature: {what} has DER tag 0x{item[0]:02x}, want 0x{tag:02x}")
    return item[1], item[2]


def _signed_data_digests(buf: bytes, out: list[tuple[HashAlg, bytes]], depth: int) -> None:
    """Append the SpcIndirectDataContent digest of the ContentInfo in ``buf`` (and of nested signatures)."""
    if depth > 4:
        raise InputError("malformed Authenticode signature: signatures nested too deep")
    a, b = _expect(_tlv(buf, 0, len(buf)), _SEQUENCE, "ContentInfo")
    ci = _children(buf, a, b)
    if len(ci) < 2 or buf[ci[0][1]:ci[0][2]] != _OID_SIGNED_DATA or ci[0][0] != _OID_TAG:
        raise InputError("malformed Authenticode signature: not a PKCS#7 SignedData")
    a, b = _expect(ci[1], _CTX0, "SignedData wrapper")
    a, b = _expect(_tlv(buf, a, b), _SEQUENCE, "SignedData")
    sd = _children(buf, a, b)
    # version, digestAlgorithms, encapContentInfo, [0] certificates?, [1] crls?, signerInfos
    if len(sd) < 4:
        raise InputError("malformed Authenticode signature: SignedData has too few fields")
    a, b = _expect(sd[2], _SEQUENCE, "encapContentInfo")
    eci = _children(buf, a, b)
    if len(eci) < 2 or eci[0][0] != _OID_TAG or buf[eci[0][1]:eci[0][2]] != _OID_SPC_INDIRECT_DATA:
        raise InputError("malformed Authenticode signature: the signed content is not SpcIndirectDataContent")
    a, b = _expect(eci[1], _CTX0, "SpcIndirectDataContent wrapper")
    a, b = _expect(_tlv(buf, a, b), _SEQUENCE, "SpcIndirectDataContent")
    spc = _children(buf, a, b)
    if len(spc) < 2:
        raise InputError("malformed Authenticode signature: SpcIndirectDataContent has too few fields")
    a, b = _expect(spc[1], _SEQUENCE, "DigestInfo")
    di = _children(buf, a, b)
    if len(di) != 2:
        raise InputError("malformed Authenticode signature: DigestInfo must have 2 fields")
    a, b = _expect(di[0], _SEQUENCE, "DigestInfo's AlgorithmIdentifier")
    alg_fields = _children(buf, a, b)
    if not alg_fields or alg_fields[0][0] != _OID_TAG:
        raise InputError("malformed Authenticode signature: AlgorithmIdentifier without an OID")
    alg = _DIGEST_OIDS.get(buf[alg_fields[0][1]:alg_fields[0][2]])
    a, b = _expect(di[1], _OCTETS, "DigestInfo's digest")
    if alg is not None:
        if b - a != alg.digest_size:
            raise InputError(f"malformed Authenticode signature: a {alg} digest of {b - a} bytes")
        out.append((alg, buf[a:b]))
    # Nested signatures: signerInfos is the last field; each SignerInfo may carry [1] unsignedAttrs.
    a, b = _expect(sd[-1], _SET, "signerInfos")
    for signer in _children(buf, a, b):
        sa, sb = _expect(signer, _SEQUENCE, "SignerInfo")
        for tag, xa, xb, _ in _children(buf, sa, sb):
            if tag != _CTX1:
                continue
            for attr in _children(buf, xa, xb):
                aa, ab = _expect(attr, _SEQUENCE, "Attribute")
                parts = _children(buf, aa, ab)
                if len(parts) != 2 or parts[0][0] != _OID_TAG or buf[parts[0][1]:parts[0][2]] != _OID_NESTED_SIGNATURE:
                    continue
                va, vb = _expect(parts[1], _SET, "nested signature values")
                for _tag, _ca, cb, start in _children(buf, va, vb):
                    _signed_data_digests(buf[start:cb], out, depth + 1)
