"""OVMF's GUIDed structure table: how an OVMF image tells the VMM where its launch metadata is.

The table sits at the end of the image, before the 0x20-byte reset area: entries are walked
backwards from the footer entry (GUID 96b582de-1fb2-45f7-baea-a366c55a082d at 0x30 bytes
before the end), each ending in a UINT16 length and its GUID.  The TDX metadata offset
(:mod:`tsmr.predict.tdvf`), the SEV metadata, the SEV-ES reset block and the SEV hash table
(:mod:`tsmr.predict.snp_firmware`) are entries of this one table.
"""

from __future__ import annotations

import struct
import uuid

from ..errors import InputError

__all__ = ["FOOTER_GUID", "guided_table"]

FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d")
_FOOTER_OFFSET = 0x30  # the footer GUID starts this far before the end of the image
_RESET_AREA = 0x20  # what follows the footer GUID
_ENTRY_TAIL = 18  # UINT16 length + GUID


def guided_table(image: bytes | bytearray | memoryview) -> dict[uuid.UUID, bytes]:
    """The entries of the OVMF GUIDed structure table at the end of ``image``: GUID -> entry data.

    A GUID listed twice keeps the entry nearer the footer (the first one a VMM walking
    backwards finds, as QEMU's lookup does).

    Raises :class:`InputError` when the image has no table (no footer GUID where it
    belongs) or the table is truncated (a length running outside the table).
    """
    buf = memoryview(image)
    n = len(buf)
    if n < _FOOTER_OFFSET + 2:
        raise InputError(f"firmware: {n} bytes is too small for an OVMF image (no GUIDed table footer)")
    footer_at = n - _FOOTER_OFFSET
    if uuid.UUID(bytes_le=bytes(buf[footer_at:footer_at + 16])) != FOOTER_GUID:
        raise InputError("firmware: no OVMF GUIDed table footer 0x30 bytes before the end "
                         "(not an OVMF/TDVF image, or not a whole one)")
    (total,) = struct.unpack_from("<H", buf, footer_at - 2)
    table_end = n - _RESET_AREA
    table_start = table_end - total
    if total < _ENTRY_TAIL or table_start < 0:
        raise InputError(f"firmware: the GUIDed table's length {total} is impossible (truncated table)")
    entries: dict[uuid.UUID, bytes] = {}
    pos = footer_at - 2  # the footer entry (its length and GUID) is not a data entry
    while pos > table_start:
        if pos - _ENTRY_TAIL < table_start:
            raise InputError(f"firmware: truncated GUIDed table entry ending at offset 0x{pos:x}")
        guid = uuid.UUID(bytes_le=bytes(buf[pos - 16:pos]))
        (length,) = struct.unpack_from("<H", buf, pos - _ENTRY_TAIL)
        if length < _ENTRY_TAIL or pos - length < table_start:
            raise InputError(f"firmware: GUIDed table entry {guid} has length {length}, "
                             "which runs outside the table (truncated or corrupt)")
        entries.setdefault(guid, bytes(buf[pos - length:pos - _ENTRY_TAIL]))
        pos -= length
    return entries
