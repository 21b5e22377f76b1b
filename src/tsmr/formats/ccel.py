"""The confidential-computing event log: the ACPI CCEL table and its log area.

A TDX (or SEV) guest's virtual firmware publishes an ACPI table ``CCEL`` (ACPI
6.5 §5.2.34 "CC Event Log ACPI Table") giving the physical address (LASA) and
minimum length (LAML) of a log area.  The log area holds a TCG2 crypto-agile
log (UEFI 2.10 §38.4, EFI_CC_MEASUREMENT_PROTOCOL) whose ``pcrIndex`` is the CC
measurement-register index: 0 = MRTD, 1..4 = RTMR0..3.  Linux exposes the table
as ``/sys/firmware/acpi/tables/CCEL`` and the area, at its full LAML size and
padded with 0xFF (TDVF) or 0x00, as ``/sys/firmware/acpi/tables/data/CCEL``.

Checksum policy: :func:`parse_table` *reports* a bad ACPI checksum
(:attr:`CCELTable.checksum_valid`) and rejects it only with ``strict=True``.
The table carries no measurements, only where the log is; what makes a log
trustworthy is that it replays to the registers of a verified quote.  A bad
checksum means a damaged or hand-edited copy, which a caller may want to flag
but should not make the log unreadable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ParseError
from ..events import Event
from . import tcg2

FORMAT = "ccel"

CC_TYPES = {0: "reserved", 1: "SEV", 2: "TDX"}
"""CC Type values of the CCEL table (ACPI 6.5 Table 5.175)."""

_TABLE = struct.Struct("<4sIBB6s8sI4sIBBHQQ")  # ACPI header (36 bytes) + CC fields (20 bytes)


@dataclass(frozen=True, slots=True)
class CCELTable:
    """The ACPI CCEL table, ACPI 6.5 §5.2.34 (56 bytes: the 36-byte ACPI header, then the CC fields).

    ``checksum_valid`` is whether the bytes of the table (``length`` of them)
    sum to zero modulo 256, as the ACPI header's Checksum requires (§5.2.6).
    """

    signature: bytes
    length: int
    revision: int
    checksum: int
    oem_id: bytes
    oem_table_id: bytes
    oem_revision: int
    creator_id: bytes
    creator_revision: int
    cc_type: int
    cc_subtype: int
    reserved: int
    laml: int  # Log Area Minimum Length
    lasa: int  # Log Area Start Address
    checksum_valid: bool = True

    @property
    def cc_type_name(self) -> str:
        return CC_TYPES.get(self.cc_type, f"0x{self.cc_type:02x}")

    def to_json(self) -> dict[str, object]:
        return {
            "signature": self.signature.decode("ascii", "backslashreplace"), "length": self.length,
            "revision": self.revision, "checksum": f"0x{self.checksum:02x}", "checksum_valid": self.checksum_valid,
            "oem_id": self.oem_id.decode("ascii", "backslashreplace"),
            "oem_table_id": self.oem_table_id.decode("ascii", "backslashreplace"),
            "oem_revision": self.oem_revision, "creator_id": self.creator_id.decode("ascii", "backslashreplace"),
            "creator_revision": self.creator_revision, "cc_type": self.cc_type_name, "cc_subtype": self.cc_subtype,
            "laml": self.laml, "lasa": f"0x{self.lasa:x}",
        }


def parse_table(data: bytes | bytearray | memoryview, *, strict: bool = False) -> CCELTable:
    """Decode the ACPI CCEL table.

    Raises :class:`ParseError` if the input is not a CCEL table (signature,
    Length below 56 or beyond the input) and, with ``strict=True``, if its
    checksum is wrong.  Bytes after ``Length`` are ignored.
    """
    buf = bytes(data)
    if len(buf) < _TABLE.size:
        raise ParseError(f"{len(buf)} bytes; the CCEL table is {_TABLE.size}", format=FORMAT, offset=0,
                         field="CCEL")
    fields = _TABLE.unpack_from(buf)
    sig, length = fields[0], fields[1]
    if sig != b"CCEL":
        raise ParseError(f"signature {sig!r} is not 'CCEL'", format=FORMAT, offset=0, field="CCEL.Signature")
    if not _TABLE.size <= length <= len(buf):
        raise ParseError(f"Length {length} is not within {_TABLE.size}..{len(buf)} (the input)", format=FORMAT,
                         offset=4, field="CCEL.Length")
    valid = sum(buf[:length]) % 256 == 0
    if strict and not valid:
        raise ParseError(f"checksum 0x{fields[3]:02x} does not make the table sum to zero", format=FORMAT,
                         offset=9, field="CCEL.Checksum")
    (_, _, revision, checksum, oem_id, oem_table_id, oem_revision, creator_id, creator_revision,
     cc_type, cc_subtype, reserved, laml, lasa) = fields
    return CCELTable(sig, length, revision, checksum, oem_id, oem_table_id, oem_revision, creator_id,
                     creator_revision, cc_type, cc_subtype, reserved, laml, lasa, checksum_valid=valid)


def parse_log(data: bytes | bytearray | memoryview, table: CCELTable | None = None) -> tcg2.TCG2Log:
    """Parse a CCEL log area (full LAML size with 0xFF/0x00 padding, or trimmed).

    The log must be crypto-agile (a SHA-1-only log here is a :class:`ParseError`).
    With ``table``, a log running past the table's LAML is an error too.
    """
    log = tcg2.parse(data)
    if log.legacy:
        raise ParseError("the log area does not start with a Spec ID Event03: a CCEL is a crypto-agile log",
                         format=FORMAT, offset=0, field="TCG_PCR_EVENT")
    if table is not None and log.end > table.laml:
        raise ParseError(f"the log ends at {log.end}, beyond the log area minimum length {table.laml} (LAML)",
                         format=FORMAT, offset=table.laml, field="CCEL.LAML")
    return log


def to_events(log: tcg2.TCG2Log, *, arch: str = "tdx", decode: bool = True) -> list[Event]:
    """Unified events of a CCEL: source ``"ccel"``, registers ``mrtd``/``rtmr0..3`` (see :func:`tcg2.to_events`)."""
    return tcg2.to_events(log, arch=arch, decode=decode)


__all__ = ["CCELTable", "CC_TYPES", "parse_log", "parse_table", "to_events"]
