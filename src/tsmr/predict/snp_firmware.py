"""What an SEV-SNP launch needs to know of an OVMF image: its GUIDed table and SEV metadata.

OVMF's reset vector ends with a table of GUID-tagged entries that a VMM reads
without understanding the firmware (edk2 ``OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm``,
"OVMF GUIDed structure table"; QEMU ``hw/i386/pc_sysfw_ovmf.c``).  The table ends
0x20 bytes before the end of the image; its last entry is the footer, whose GUID
sits at ``end - 0x30`` and whose 16-bit length (at ``end - 0x32``) is the length of
the whole table.  Every entry is laid out as ``data || u16 length || GUID`` and
``length`` counts all three, so the table is walked from the footer backwards.

Three entries matter to SEV-SNP:

* the SEV metadata (``dc886566-...``): a 32-bit offset, from the end of the image, of
  an ``"ASEV"`` header (signature, length, version 1, number of sections) followed
  by section descriptors ``{u32 gpa, u32 size, u32 type}``
  (edk2 ``OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm``).  The VMM must hand each
  section to the SEV firmware in order, with a page type given by the section type;
* the SEV-ES reset block (``00f771de-...``): the 32-bit address where application
  processors start (their CS base and IP come from it);
* the SEV hash table area (``7255371f-...``): ``u32 base, u32 size`` of the place
  where QEMU writes the hashes of the kernel, initrd and command line.

Everything here is pure: bytes in, values out; malformed input raises
:class:`~tsmr.errors.InputError` and never lets ``struct.error`` or ``IndexError`` out.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass
from typing import Mapping

from ..errors import InputError
from .ovmf import guided_table

__all__ = [
    "SEV_METADATA_GUID", "SEV_ES_RESET_BLOCK_GUID", "SEV_HASH_TABLE_RV_GUID",
    "SectionType", "MetadataSection", "OvmfImage", "parse_ovmf", "PAGE_SIZE",
]

PAGE_SIZE = 4096
#: The firmware image is mapped so that it ends at 4 GiB (the reset vector is at 0xFFFFFFF0).
FOUR_GIB = 1 << 32

SEV_METADATA_GUID = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc")
SEV_ES_RESET_BLOCK_GUID = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
SEV_HASH_TABLE_RV_GUID = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454")

_ASEV = struct.Struct("<4sIII")  # signature, length, version, number of sections
_SECTION = struct.Struct("<III")  # gpa, size, type
_MAX_SECTIONS = 256  # far above the handful OVMF declares; bounds a hostile count


class SectionType(enum.IntEnum):
    """Types of SEV metadata sections (``OvmfSevMetadata.asm``), in the spellings edk2 uses."""

    SNP_SEC_MEM = 1  # memory the SEC phase uses before it validates pages itself
    SNP_SECRETS = 2  # the secrets page the SEV firmware fills
    CPUID = 3  # the CPUID page the SEV firmware checks and fills
    SVSM_CAA = 4  # the SVSM calling area
    SNP_KERNEL_HASHES = 0x10  # where the VMM puts the hashes of kernel, initrd and command line


@dataclass(frozen=True)
class MetadataSection:
    """One SEV metadata section descriptor: guest-physical address, length in bytes, type."""

    gpa: int
    size: int
    type: SectionType

    @property
    def label(self) -> str:
        return f"{self.type.name} at {self.gpa:#x} ({self.size // PAGE_SIZE} page{'s' if self.size != PAGE_SIZE else ''})"


@dataclass(frozen=True)
class OvmfImage:
    """The parts of an OVMF image an SEV-SNP launch depends on."""

    data: bytes
    table: Mapping[uuid.UUID, bytes]  # GUIDed table entries: GUID -> data
    sections: tuple[MetadataSection, ...]
    ap_reset_address: int | None  # from the SEV-ES reset block; None when the image has none
    hash_table_area: tuple[int, int] | None  # (base, size) of the SEV hash table area; None when absent

    @property
    def gpa(self) -> int:
        """Where the image starts in guest-physical memory: it ends at 4 GiB."""
        return FOUR_GIB - len(self.data)

    def has_section(self, kind: SectionType) -> bool:
        return any(s.type == kind for s in self.sections)


def _u32(entry: bytes, what: str, index: int = 0) -> int:
    if len(entry) < 4 * (index + 1):
        raise InputError(f"OVMF GUIDed table: the {what} entry holds {len(entry)} bytes, too few")
    return int.from_bytes(entry[4 * index:4 * index + 4], "little")


def _parse_metadata(data: bytes, offset_from_end: int) -> tuple[MetadataSection, ...]:
    """The section descriptors of the ``"ASEV"`` structure ``offset_from_end`` bytes before the end."""
    n = len(data)
    start = n - offset_from_end
    if offset_from_end == 0 or start < 0 or start + _ASEV.size > n:
        raise InputError(f"SEV metadata: its offset {offset_from_end:#x} from the end points outside the {n}-byte image")
    signature, length, version, count = _ASEV.unpack_from(data, start)
    if signature != b"ASEV":
        raise InputError(f"SEV metadata: signature {signature!r} at offset {start:#x}, expected b'ASEV'")
    if version != 1:
        raise InputError(f"SEV metadata: version {version}, only version 1 is defined")
    if count > _MAX_SECTIONS:
        raise InputError(f"SEV metadata: {count} sections, more than the limit of {_MAX_SECTIONS}")
    need = _ASEV.size + count * _SECTION.size
    if length < need or start + length > n:
        raise InputError(f"SEV metadata: length {length} for {count} sections (needs {need}) does not fit the image")
    sections = []
    for i in range(count):
        gpa, size, kind = _SECTION.unpack_from(data, start + _ASEV.size + i * _SECTION.size)
        try:
            stype = SectionType(kind)
        except ValueError:
            raise InputError(f"SEV metadata: section {i} has unknown type {kind:#x}") from None
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size == 0:
            raise InputError(f"SEV metadata: section {i} ({stype.name}, gpa {gpa:#x}, {size:#x} bytes) "
                             "is not whole 4 KiB pages, which an SEV-SNP launch cannot add")
        sections.append(MetadataSection(gpa, size, stype))
    return tuple(sections)


def parse_ovmf(data: bytes) -> OvmfImage:
    """Parse an OVMF image for an SEV-SNP launch; InputError when it cannot be launched as one.

    The image must be whole pages (it is added page by page) and carry SEV metadata.
    """
    if not data:
        raise InputError("the firmware is empty")
    if len(data) % PAGE_SIZE:
        raise InputError(f"the firmware is {len(data)} bytes, not a whole number of 4 KiB pages (truncated?)")
    if len(data) > FOUR_GIB:
        raise InputError("the firmware is larger than the 4 GiB below which it is mapped")
    table = guided_table(data)
    if SEV_METADATA_GUID not in table:
        raise InputError("the firmware has no SEV metadata (GUID dc886566-984a-4798-a75e-5585a7bf67cc in its "
                         "GUIDed table): it was not built for SEV-SNP guests")
    sections = _parse_metadata(data, _u32(table[SEV_METADATA_GUID], "SEV metadata"))
    reset = table.get(SEV_ES_RESET_BLOCK_GUID)
    area = table.get(SEV_HASH_TABLE_RV_GUID)
    return OvmfImage(
        data=data, table=table, sections=sections,
        ap_reset_address=_u32(reset, "SEV-ES reset block") if reset is not None else None,
        hash_table_area=(_u32(area, "SEV hash table", 0), _u32(area, "SEV hash table", 1)) if area is not None else None,
    )
