"""TDX virtual firmware (TDVF) images: the TDX metadata, and the MRTD a launch of them gives.

Theory of operation
-------------------
*Finding the metadata.*  An OVMF/TDVF image ends with the reset vector; just before
its last 0x20 bytes lies the "OVMF GUIDed structure table", read backwards from its
footer: the footer GUID (96b582de-1fb2-45f7-baea-a366c55a082d) sits 0x30 bytes before
the end, preceded by a UINT16 holding the size of the whole table (footer included).
Walking back from there, every entry is ``data || UINT16 length || GUID`` where
``length`` counts all three.  The entry e47a6535-984a-4798-865e-4685a7bf8ec2 carries a
UINT32: the distance from the *end* of the image back to the TDX metadata.

*The metadata* (TDX Virtual Firmware Design Guide, "TDVF metadata"): a descriptor
``TDVF_DESCRIPTOR`` (signature "TDVF", Length, Version 1, NumberOfSectionEntries)
followed by that many 32-byte ``TDVF_SECTION`` entries (DataOffset, RawDataSize,
MemoryAddress, MemoryDataSize, Type, Attributes).  A section tells the VMM which guest
pages to add before the TD starts and what goes into them: the boot firmware volume
(BFV) and configuration firmware volume (CFV) are copied from the image; the TD HOB
and temporary memory start empty (QEMU builds the HOB in the TD_HOB pages itself).

*MRTD* is not an extend-style register: the TDX module keeps one running SHA-384
over every build-time operation and finalizes it at TDH.MR.FINALIZE.  Each
TDH.MEM.PAGE.ADD contributes a 128-byte block ("MEM.PAGE.ADD", zero-padded to 16
bytes, then the page's GPA as a little-endian UINT64, then zeros), and each
TDH.MR.EXTEND a 128-byte block of the same form ("MR.EXTEND", the chunk's GPA)
followed by the 256 bytes of the chunk (TDX module ABI/base specification,
TDH.MEM.PAGE.ADD and TDH.MR.EXTEND).  The order of those operations is the VMM's:

* upstream QEMU with upstream KVM (``KVM_TDX_INIT_MEM_REGION``) adds a page and, if
  the section has the MR.EXTEND attribute, extends its sixteen 256-byte chunks at
  once, page after page (the default here);
* some downstream qemu-tdx/KVM builds add every page of a section first and then
  extend them (``two_pass=True``, ``--two-pass-add``).

Which sections are added: every section is added page by page as QEMU does,
except those with the PAGE.AUG attribute (the guide's permanent memory, which the
VMM maps later with TDH.MEM.PAGE.AUG and which is therefore never in MRTD).  What an
extended page holds: for BFV and CFV the image bytes QEMU maps from DataOffset on;
TD_HOB and TempMem pages are not extended by any TDVF (their contents are VMM-built
or zero); a firmware asking to extend a TD_HOB, or a td-shim payload whose contents
come from elsewhere, is refused as not modelled rather than guessed.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError
from .ovmf import guided_table

__all__ = ["TdvfMetadata", "TdvfSection", "SECTION_TYPES", "parse_metadata", "mrtd",
           "TDX_METADATA_OFFSET_GUID", "ATTR_MR_EXTEND", "ATTR_PAGE_AUG"]

TDX_METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2")

#: TDVF_SECTION.Type values (TDX Virtual Firmware Design Guide, table "TDVF section types").
SECTION_TYPES = {0: "BFV", 1: "CFV", 2: "TD_HOB", 3: "TempMem", 4: "PermMem", 5: "Payload", 6: "PayloadParam"}
BFV, CFV, TD_HOB, TEMP_MEM, PERM_MEM, PAYLOAD, PAYLOAD_PARAM = range(7)
ATTR_MR_EXTEND = 0x1  # measure the section's contents with TDH.MR.EXTEND
ATTR_PAGE_AUG = 0x2  # the VMM adds the pages with TDH.MEM.PAGE.AUG (unmeasured), after launch

PAGE_SIZE = 4096
CHUNK_SIZE = 256  # TDH.MR.EXTEND granularity
_DESCRIPTOR = struct.Struct("<4sIII")
_SECTION = struct.Struct("<IIQQII")
MAX_SECTIONS = 64
MAX_MEASURED_BYTES = 4 << 30  # bound on the memory a metadata may ask to add (each page costs a hash block)

_PAGE_ADD = struct.Struct("<16sQ104x")  # "MEM.PAGE.ADD" padded, GPA, zeros: 128 bytes
_MR_EXTEND = struct.Struct("<16sQ104x")  # "MR.EXTEND" padded, GPA, zeros: 128 bytes (then the 256-byte chunk)
_PAGE_ADD_TAG = b"MEM.PAGE.ADD".ljust(16, b"\0")
_MR_EXTEND_TAG = b"MR.EXTEND".ljust(16, b"\0")


@dataclass(frozen=True, slots=True)
class TdvfSection:
    """One TDVF_SECTION entry (TDX Virtual Firmware Design Guide, "TDVF metadata")."""

    data_offset: int  # DataOffset: where the section's bytes start in the image
    raw_data_size: int  # RawDataSize: how many bytes the image holds for it (0 for TD_HOB, TempMem)
    memory_address: int  # MemoryAddress: the GPA of the first page
    memory_data_size: int  # MemoryDataSize: bytes of guest memory (whole pages)
    type: int
    attributes: int

    @property
    def type_name(self) -> str:
        return SECTION_TYPES.get(self.type, f"type {self.type}")

    @property
    def mr_extend(self) -> bool:
        return bool(self.attributes & ATTR_MR_EXTEND)

    @property
    def page_aug(self) -> bool:
        return bool(self.attributes & ATTR_PAGE_AUG)

    @property
    def pages(self) -> int:
        return self.memory_data_size // PAGE_SIZE

    def to_json(self) -> dict[str, object]:
        return {"type": self.type_name, "data_offset": self.data_offset, "raw_data_size": self.raw_data_size,
                "memory_address": f"0x{self.memory_address:x}", "memory_data_size": self.memory_data_size,
                "attributes": self.attributes, "mr_extend": self.mr_extend, "page_aug": self.page_aug}


@dataclass(frozen=True, slots=True)
class TdvfMetadata:
    """The TDVF_DESCRIPTOR and its sections; ``offset`` is where the descriptor starts in the image."""

    offset: int
    length: int
    version: int
    sections: tuple[TdvfSection, ...]

    def of_type(self, section_type: int) -> tuple[TdvfSection, ...]:
        return tuple(s for s in self.sections if s.type == section_type)


def parse_metadata(image: bytes | bytearray | memoryview) -> TdvfMetadata:
    """The TDX metadata of an OVMF/TDVF image, checked as QEMU checks it before a launch.

    Raises :class:`InputError` for an image without TDX metadata, truncated metadata, a
    section outside the image, misaligned pages, or a RawDataSize larger than the memory.
    """
    buf = memoryview(image)
    n = len(buf)
    entries = guided_table(buf)
    data = entries.get(TDX_METADATA_OFFSET_GUID)
    if data is None:
        raise InputError("firmware: no TDX metadata (the GUIDed table has no entry "
                         f"{TDX_METADATA_OFFSET_GUID}); this image cannot launch a TD")
    if len(data) < 4:
        raise InputError(f"firmware: the TDX metadata offset entry holds {len(data)} bytes, needs 4")
    (back,) = struct.unpack_from("<I", data, len(data) - 4)
    offset = n - back
    if back == 0 or offset < 0 or offset + _DESCRIPTOR.size > n:
        raise InputError(f"firmware: the TDX metadata offset 0x{back:x} from the end points outside the image")
    signature, length, version, count = _DESCRIPTOR.unpack_from(buf, offset)
    if signature != b"TDVF":
        raise InputError(f"firmware: the TDX metadata at 0x{offset:x} has signature {signature!r}, not 'TDVF'")
    if version != 1:
        raise InputError(f"firmware: TDVF metadata version {version} (only version 1 is defined)")
    if not 1 <= count <= MAX_SECTIONS:
        raise InputError(f"firmware: {count} TDVF sections (1..{MAX_SECTIONS} expected)")
    if length != _DESCRIPTOR.size + count * _SECTION.size:
        raise InputError(f"firmware: TDVF descriptor length {length} does not fit {count} sections "
                         f"({_DESCRIPTOR.size + count * _SECTION.size} expected)")
    if offset + length > n:
        raise InputError(f"firmware: the TDVF metadata runs past the end of the image (truncated at {n} bytes)")
    sections = []
    total = 0
    for i in range(count):
        s = TdvfSection(*_SECTION.unpack_from(buf, offset + _DESCRIPTOR.size + i * _SECTION.size))
        where = f"firmware: TDVF section {i} ({s.type_name})"
        if s.memory_address % PAGE_SIZE or s.memory_data_size % PAGE_SIZE:
            raise InputError(f"{where}: MemoryAddress 0x{s.memory_address:x} and MemoryDataSize "
                             f"0x{s.memory_data_size:x} must be 4 KiB aligned")
        if s.raw_data_size > s.memory_data_size:
            raise InputError(f"{where}: RawDataSize 0x{s.raw_data_size:x} exceeds MemoryDataSize "
                             f"0x{s.memory_data_size:x}")
        if s.data_offset + s.raw_data_size > n:
            raise InputError(f"{where}: its data 0x{s.data_offset:x}+0x{s.raw_data_size:x} lies beyond "
                             f"the end of the image ({n} bytes)")
        if s.type not in SECTION_TYPES:
            raise InputError(f"{where}: unknown section type")
        if s.type in (BFV, CFV) and s.raw_data_size == 0:
            raise InputError(f"{where}: a firmware volume section with RawDataSize 0")
        total += s.memory_data_size
        sections.append(s)
    if total > MAX_MEASURED_BYTES:
        raise InputError(f"firmware: the TDVF sections ask for {total} bytes of memory "
                         f"(more than the {MAX_MEASURED_BYTES} this tool measures)")
    return TdvfMetadata(offset=offset, length=length, version=version, sections=tuple(sections))


def _extended_bytes(buf: memoryview, s: TdvfSection, i: int) -> memoryview:
    """What TDH.MR.EXTEND sees of section ``i``: its pages as the VMM filled them."""
    where = f"firmware: TDVF section {i} ({s.type_name})"
    if s.type in (BFV, CFV):
        # QEMU maps the section straight from the image at DataOffset, MemoryDataSize bytes long.
        end = s.data_offset + s.memory_data_size
        if end > len(buf):
            raise InputError(f"{where}: MR.EXTEND of 0x{s.memory_data_size:x} bytes from 0x{s.data_offset:x} "
                             f"runs beyond the end of the image ({len(buf)} bytes)")
        return buf[s.data_offset:end]
    if s.type in (TEMP_MEM, PERM_MEM):
        return memoryview(bytes(s.memory_data_size))  # fresh, zeroed memory
    raise InputError(f"{where} has the MR.EXTEND attribute, but its contents come from the VMM "
                     "(the TD HOB, a td-shim payload): not modelled")


def mrtd(image: bytes | bytearray | memoryview, metadata: TdvfMetadata | None = None, *,
         two_pass: bool = False) -> bytes:
    """The MRTD (48 bytes) of a TD launched from ``image`` (see the module's theory of operation).

    ``two_pass`` selects the page order of VMMs that add every page of a section before
    extending any (``--two-pass-add``); the default is upstream QEMU/KVM's add-then-extend
    per page.
    """
    buf = memoryview(image)
    meta = metadata if metadata is not None else parse_metadata(buf)
    h = hashlib.sha384()
    update = h.update
    add_head = bytearray(_PAGE_ADD.pack(_PAGE_ADD_TAG, 0))
    ext_head = bytearray(_MR_EXTEND.pack(_MR_EXTEND_TAG, 0))
    pack_gpa = struct.Struct("<Q").pack_into
    for i, s in enumerate(meta.sections):
        if s.page_aug:
            continue  # TDH.MEM.PAGE.AUG after launch: never part of MRTD
        data = _extended_bytes(buf, s, i) if s.mr_extend else None
        base = s.memory_address
        pages = range(s.pages)

        def extend_page(page: int, data: memoryview) -> None:
            off = page * PAGE_SIZE
            for chunk in range(off, off + PAGE_SIZE, CHUNK_SIZE):
                pack_gpa(ext_head, 16, base + chunk)
                update(ext_head)
                update(data[chunk:chunk + CHUNK_SIZE])

        if data is None or two_pass:
            for page in pages:
                pack_gpa(add_head, 16, base + page * PAGE_SIZE)
                update(add_head)
            if data is not None:
                for page in pages:
                    extend_page(page, data)
        else:
            for page in pages:
                pack_gpa(add_head, 16, base + page * PAGE_SIZE)
                update(add_head)
                extend_page(page, data)
    return h.digest()


def section_data(image: bytes | bytearray | memoryview, section: TdvfSection) -> memoryview:
    """The image bytes of ``section`` (RawDataSize of them from DataOffset)."""
    return memoryview(image)[section.data_offset:section.data_offset + section.raw_data_size]


def describe(meta: TdvfMetadata) -> Sequence[str]:
    """One line per section, for notes and errors."""
    return [f"{s.type_name} 0x{s.memory_address:x}+0x{s.memory_data_size:x}"
            f"{' MR.EXTEND' if s.mr_extend else ''}{' PAGE.AUG' if s.page_aug else ''}" for s in meta.sections]
