"""TCG PC Client event logs (crypto-agile TCG2 and SHA-1 legacy): reader, writer, replay, unified events.

This is the format of ``/sys/kernel/security/tpm0/binary_bios_measurements`` on
UEFI machines and of the confidential-computing event log (CCEL, ACPI table
``CCEL``) of TDX guests, where ``pcrIndex`` holds the CC MR index (1..4 =
RTMR0..3).  It is also how tsmr exports its runtime logs for TCG2 tools
(shared/spec/runtime-log.md §5).

Theory of operation
-------------------
A log is a ``TCG_PCR_EVENT`` in the old SHA-1 layout whose event data is the
``TCG_EfiSpecIDEvent`` ("Spec ID Event03"), followed by ``TCG_PCR_EVENT2``
records.  A ``TCG_PCR_EVENT2`` does not carry the size of its digests: the size
of each algorithm comes from the Spec ID event's ``digestSizes`` table, so the
table is parsed first and an algorithm id missing from it makes the rest of the
log unreadable (there is no way to find the next field).

Logs read from the CCEL ACPI area (and copies of firmware memory) come padded
to the size of the area with 0xFF (TDVF) or 0x00.  The reader stops when, at a
record boundary, the rest of the input is entirely 0x00 or entirely 0xFF.  A
record that merely *starts* like padding (Windows WBCL logs have records with
``pcrIndex`` 0xFFFFFFFF) is read as a record when other bytes follow it.  Any
other short tail is a truncated record and a :class:`ParseError`.

If the first record is *not* the Spec ID Event03, the log is a TPM 1.2-style
(SHA-1 "legacy") log: TCG_PCR_EVENT records only, each with one 20-byte SHA-1
digest (PC Client Implementation Specification for Conventional BIOS 1.21
§11.1.1; TCG EFI Platform 1.22).  :func:`parse` reads it into the same
:class:`TCG2Log` with ``legacy=True``, a synthesized Spec ID (:data:`LEGACY_SPEC_ID`,
or the fields of a leading "Spec ID Event00/02" record) listing SHA-1 only, no
header event, and every record, that leading one included, in ``events``.

The reader keeps every event's type, digests (raw TPM_ALG_IDs, in log order,
including algorithms tsmr has no hash for) and raw event data, so decoders of
individual event types (:mod:`tsmr.formats.uefi`) are layered on top without
reparsing: :func:`to_events` turns a log into unified :class:`tsmr.events.Event`
objects, and :func:`check_digests` says which digests follow from their data.

Every integer is little-endian.  All parsing goes through precompiled
``struct.Struct`` objects; the common case (each event lists the Spec ID
algorithms in table order) is decoded with one ``unpack_from`` per record.
:func:`parse` and :func:`to_events` pause the cyclic garbage collector while
they build their (acyclic) objects: on million-record logs its full
collections otherwise cost more than the parsing (see ``_gc_paused``).
"""

from __future__ import annotations

import contextlib
import gc
import struct
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

from ..algorithms import HashAlg, find_digest
from ..errors import InputError, ParseError, ReplayError
from ..events import Event
from ..registers import ccmr_to_register
from . import uefi

FORMAT = "tcg2"

# -- event types (TCG PC Client PFP §10.4.1, UEFI-specific ones in 0x80000000..0x800000FF) -------

EV_PREBOOT_CERT = 0x00000000
EV_POST_CODE = 0x00000001
EV_UNUSED = 0x00000002
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_ACTION = 0x00000005
EV_EVENT_TAG = 0x00000006
EV_S_CRTM_CONTENTS = 0x00000007
EV_S_CRTM_VERSION = 0x00000008
EV_CPU_MICROCODE = 0x00000009
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
EV_TABLE_OF_DEVICES = 0x0000000B
EV_COMPACT_HASH = 0x0000000C
EV_IPL = 0x0000000D
EV_IPL_PARTITION_DATA = 0x0000000E
EV_NONHOST_CODE = 0x0000000F
EV_NONHOST_CONFIG = 0x00000010
EV_NONHOST_INFO = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
EV_POST_CODE2 = 0x00000013
EV_EFI_EVENT_BASE = 0x80000000
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_GPT_EVENT2 = 0x8000000D
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2
EV_EFI_SPDM_DEVICE_POLICY = 0x800000E3
EV_EFI_SPDM_DEVICE_AUTHORITY = 0x800000E4

EVENT_TYPE_NAMES: Mapping[int, str] = {
    value: name for name, value in globals().items() if name.startswith("EV_") and isinstance(value, int)
}


def event_type_name(event_type: int) -> str:
    """``EV_SEPARATOR`` for 4; ``0x0000abcd`` for a type this table does not know."""
    return EVENT_TYPE_NAMES.get(event_type) or f"0x{event_type:08x}"


# -- limits (each one is named in the error that enforces it) -------------------------------------

MAX_ALGORITHMS = 16
"""Most algorithms a Spec ID event may list (and digests a record may carry)."""
MAX_EVENT_SIZE = 16 * 1024 * 1024
"""Largest eventSize accepted: 16 MiB, far above any firmware event, bounds allocation."""
MAX_DIGEST_SIZE = 128
"""Largest digestSize a Spec ID event may declare (SHA-512 and SHA3-512 are 64 bytes)."""

SPEC_ID_EVENT03_SIGNATURE = b"Spec ID Event03\x00"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
LEGACY_SPEC_ID_SIGNATURES = (b"Spec ID Event00\x00", b"Spec ID Event02\x00")
_SHA1_ID = int(HashAlg.SHA1)
_U32_MAX = 0xFFFFFFFF

# -- wire structs -------------------------------------------------------------------------------------

_PCR_EVENT = struct.Struct("<II20sI")  # TCG_PCR_EVENT: pcrIndex, eventType, digest[20], eventSize
_PCR_EVENT2_HEAD = struct.Struct("<III")  # TCG_PCR_EVENT2: pcrIndex, eventType, digests.count
_SPEC_ID_HEAD = struct.Struct("<16sIBBBBI")  # signature .. numberOfAlgorithms
_LEGACY_SPEC_ID_HEAD = struct.Struct("<16sIBBBBB")  # Spec ID Event00/02: signature .. vendorInfoSize
_ALG_SIZE = struct.Struct("<HH")  # TCG_EfiSpecIdEventAlgorithmSize: algorithmId, digestSize
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


# -- values -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpecIdEvent:
    """TCG_EfiSpecIDEvent ("Spec ID Event03"), TCG PC Client PFP §10.4.5.1.

    ``algorithms`` is the ``digestSizes`` table as (TPM_ALG_ID, digestSize) pairs
    in log order.  Ids tsmr has no hash for are kept: their sizes are what makes
    the rest of the log readable.  ``uintn_size`` is 1 for 32-bit and 2 for
    64-bit UINTN fields in event data.
    """

    platform_class: int = 0
    spec_version_minor: int = 0
    spec_version_major: int = 2
    spec_errata: int = 0
    uintn_size: int = 2
    algorithms: tuple[tuple[int, int], ...] = ()
    vendor_info: bytes = b""

    @classmethod
    def for_algorithms(cls, algorithms: Sequence[HashAlg]) -> "SpecIdEvent":
        """The header tsmr writes: client platform, spec 2.0 errata 0, 64-bit UINTN, no vendor info."""
        return cls(algorithms=tuple((int(a), HashAlg(a).digest_size) for a in algorithms))

    @property
    def digest_sizes(self) -> dict[int, int]:
        return dict(self.algorithms)

    @property
    def hash_algs(self) -> tuple[HashAlg, ...]:
        """The listed algorithms tsmr can hash with (the replayable banks), in table order."""
        known = {int(a) for a in HashAlg}
        return tuple(HashAlg(a) for a, _ in self.algorithms if a in known)


LEGACY_SPEC_ID = SpecIdEvent(platform_class=0, spec_version_minor=2, spec_version_major=1, spec_errata=0,
                             uintn_size=2, algorithms=((_SHA1_ID, 20),))
"""The Spec ID :func:`parse` gives a SHA-1 log without a Spec ID Event00/02 record: TPM 1.2, SHA-1 only.

``uintn_size`` 2 (64-bit UINTN) is a guess that holds for every x86-64 UEFI
legacy log seen; a 32-bit firmware would say so in a Spec ID Event02 record.
"""


@dataclass(frozen=True, slots=True)
class TCG2Event:
    """One TCG_PCR_EVENT2 record, TCG PC Client PFP §10.2.2.

    ``index`` is ``pcrIndex`` (the CC MR index in a CCEL).  ``digests`` are the
    (TPM_ALG_ID, digest) pairs of the record's TPML_DIGEST_VALUES in log order,
    with raw integer ids.  ``data`` is the raw event data.  ``offset`` is where
    the record starts in the parsed input (0 for events built in memory); it is
    not part of equality or hashing, so re-encoded logs compare equal.

    Events are not validated on construction (parsing a million of them must be
    cheap); :func:`encode` validates what it writes.
    """

    index: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    data: bytes = b""
    offset: int = field(default=0, compare=False)

    def digest(self, alg: HashAlg | int) -> bytes | None:
        """This record's digest for ``alg``, or None if it has none."""
        return find_digest(self.digests, alg)

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)


@dataclass(frozen=True, slots=True)
class TCG2Log:
    """A crypto-agile event log: the Spec ID header and the TCG_PCR_EVENT2 records after it.

    ``header_event`` is the first record, a TCG_PCR_EVENT (SHA-1 layout), as a
    :class:`TCG2Event` with one ``(TPM_ALG_SHA1, digest)`` pair and the Spec ID
    event bytes as data (its ``index`` is 1 in TDVF CCELs, 0 elsewhere).  It may
    be None for logs built in memory; :func:`encode` then writes index 0 and a
    zero digest.  ``end`` is the offset just past the last record read (the rest
    of the input, if any, was padding); not part of equality.

    ``legacy`` marks a SHA-1-only (TPM 1.2 style) log of TCG_PCR_EVENT records:
    its ``spec_id`` is synthesized (SHA-1 only), ``header_event`` is None and
    ``events`` holds every record, each with one ``(TPM_ALG_SHA1, digest)`` pair.
    """

    spec_id: SpecIdEvent
    events: tuple[TCG2Event, ...] = ()
    header_event: TCG2Event | None = None
    end: int = field(default=0, compare=False)
    legacy: bool = False

    @property
    def algorithms(self) -> tuple[HashAlg, ...]:
        return self.spec_id.hash_algs


# -- reader -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many acyclic objects.

    A million-record log allocates several million tuples and frozen dataclass
    instances; with the collector on, its full collections, which are
    triggered as the heap grows, cost about 4x the parsing itself.  None of
    these objects can form a cycle, so nothing is lost by pausing it.  The
    previous state is restored (a caller that disabled the collector keeps it
    disabled).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InputError(f"tcg2: expected bytes, got {type(data).__name__}")


def _is_padding(buf: bytes, pos: int, end: int) -> bool:
    """True if ``buf[pos:end]`` is fill: 0x00 bytes, then 0xFF bytes (either may be absent).

    A log area is erased to 0xFF (CCEL) or 0x00, and a zeroed log buffer may sit
    in an area erased to 0xFF; no record consists of such bytes alone.
    """
    if buf[pos] not in (0, 0xFF):
        return False
    return not bytes(buf[pos:end]).rstrip(b"\xff").strip(b"\x00")


def _parse_spec_id(d: bytes, base: int) -> SpecIdEvent:
    """Decode TCG_EfiSpecIDEvent from the first event's data; ``base`` is its offset for errors."""
    if len(d) < _SPEC_ID_HEAD.size + 1:
        raise ParseError(
            f"Spec ID event is {len(d)} bytes, shorter than its fixed part ({_SPEC_ID_HEAD.size + 1})",
            format=FORMAT, offset=base, field="TCG_EfiSpecIDEvent",
        )
    _sig, pclass, minor, major, errata, uintn, n = _SPEC_ID_HEAD.unpack_from(d, 0)
    if n == 0 or n > MAX_ALGORITHMS:
        raise ParseError(
            f"numberOfAlgorithms is {n}; must be 1..{MAX_ALGORITHMS} (MAX_ALGORITHMS)",
            format=FORMAT, offset=base + 24, field="TCG_EfiSpecIDEvent.numberOfAlgorithms",
        )
    pos = _SPEC_ID_HEAD.size
    if len(d) < pos + 4 * n + 1:
        raise ParseError(
            f"Spec ID event of {len(d)} bytes cannot hold {n} digestSizes entries and vendorInfoSize",
            format=FORMAT, offset=base + pos, field="TCG_EfiSpecIDEvent.digestSizes",
        )
    known = {int(a): a for a in HashAlg}
    algs: list[tuple[int, int]] = []
    for i in range(n):
        alg, size = _ALG_SIZE.unpack_from(d, pos)
        where = f"TCG_EfiSpecIDEvent.digestSizes[{i}]"
        if any(alg == a for a, _ in algs):
            raise ParseError(f"algorithm 0x{alg:04x} listed twice", format=FORMAT, offset=base + pos, field=where)
        if size == 0 or size > MAX_DIGEST_SIZE:
            raise ParseError(
                f"digestSize {size} of algorithm 0x{alg:04x} is not in 1..{MAX_DIGEST_SIZE} (MAX_DIGEST_SIZE)",
                format=FORMAT, offset=base + pos + 2, field=where,
            )
        if alg in known and known[alg].digest_size != size:
            # A wrong size for a known hash would silently misalign every record and
            # make replay fold digests of the wrong length; reject it here.
            raise ParseError(
                f"digestSize {size} for {known[alg].kernel_name} (0x{alg:04x}); it is "
                f"{known[alg].digest_size} bytes",
                format=FORMAT, offset=base + pos + 2, field=where,
            )
        algs.append((alg, size))
        pos += 4
    vsize = d[pos]
    pos += 1
    if len(d) - pos != vsize:
        # go-eventlog also requires vendorInfoSize to cover exactly the rest of the event.
        raise ParseError(
            f"vendorInfoSize {vsize} does not match the {len(d) - pos} bytes left in the Spec ID event",
            format=FORMAT, offset=base + pos - 1, field="TCG_EfiSpecIDEvent.vendorInfoSize",
        )
    return SpecIdEvent(pclass, minor, major, errata, uintn, tuple(algs), d[pos:])


def _parse_header(buf: bytes) -> tuple[SpecIdEvent, TCG2Event | None, int]:
    """Read the leading TCG_PCR_EVENT; return the Spec ID, the header event and the next offset.

    For a legacy (SHA-1-only) log the header event is None and the next offset
    is 0: its first record is an ordinary event.
    """
    end = len(buf)
    if end == 0:
        raise ParseError("empty input", format=FORMAT, offset=0, field="TCG_PCR_EVENT")
    if _is_padding(buf, 0, end):
        raise ParseError("no event log: the input is only padding", format=FORMAT, offset=0, field="TCG_PCR_EVENT")
    if end < _PCR_EVENT.size:
        raise ParseError(
            f"truncated first record: {end} bytes, a TCG_PCR_EVENT header is {_PCR_EVENT.size}",
            format=FORMAT, offset=0, field="TCG_PCR_EVENT",
        )
    index, etype, digest, size = _PCR_EVENT.unpack_from(buf, 0)
    pos = _PCR_EVENT.size
    if size > MAX_EVENT_SIZE or size > end - pos:
        raise ParseError(
            f"eventSize {size} of the first record exceeds "
            + (f"the limit MAX_EVENT_SIZE={MAX_EVENT_SIZE}" if size > MAX_EVENT_SIZE
               else f"the {end - pos} bytes left"),
            format=FORMAT, offset=28, field="TCG_PCR_EVENT.eventSize",
        )
    data = buf[pos:pos + size]
    if etype != EV_NO_ACTION or not data.startswith(SPEC_ID_EVENT03_SIGNATURE):
        return _legacy_spec_id(etype, data), None, 0
    spec = _parse_spec_id(data, pos)
    return spec, TCG2Event(index, etype, ((_SHA1_ID, digest),), data, 0), pos + size


def _legacy_spec_id(etype: int, data: bytes) -> SpecIdEvent:
    """The Spec ID of a SHA-1 log: :data:`LEGACY_SPEC_ID`, or the fields of a leading Spec ID Event00/02.

    TCG_EfiSpecIdEventStruct (TCG EFI Platform Specification 1.22) and
    TCG_PCClientSpecIdEventStruct (PC Client Implementation Specification for
    Conventional BIOS 1.21): signature, u32 platformClass, u8 minor, u8 major,
    u8 errata, u8 uintnSize (reserved in Event00), u8 vendorInfoSize,
    vendorInfo; no algorithm table.
    """
    if etype == EV_NO_ACTION and data[:16] in LEGACY_SPEC_ID_SIGNATURES and len(data) >= _LEGACY_SPEC_ID_HEAD.size:
        _sig, pclass, minor, major, errata, uintn, vsize = _LEGACY_SPEC_ID_HEAD.unpack_from(data, 0)
        vendor = data[_LEGACY_SPEC_ID_HEAD.size:_LEGACY_SPEC_ID_HEAD.size + vsize]
        return SpecIdEvent(pclass, minor, major, errata, uintn if uintn in (1, 2) else 2, LEGACY_SPEC_ID.algorithms,
                           vendor)
    return LEGACY_SPEC_ID


def _legacy_events(buf: bytes, pos: int, result: list[int] | None = None) -> Iterator[TCG2Event]:
    """Yield the TCG_PCR_EVENT records (SHA-1 layout) of a legacy log from ``pos`` to the end or padding."""
    end = len(buf)
    unpack = _PCR_EVENT.unpack_from
    head = _PCR_EVENT.size
    event = TCG2Event
    while pos < end:
        start = pos
        if end - pos < head:
            if _is_padding(buf, pos, end):
                break
            raise ParseError(
                f"truncated TCG_PCR_EVENT: {end - pos} bytes left, the header is {head}",
                format=FORMAT, offset=pos, field="TCG_PCR_EVENT.pcrIndex",
            )
        index, etype, digest, size = unpack(buf, pos)
        if (index == etype == 0 or index == etype == _U32_MAX) and _is_padding(buf, pos, end):
            break
        pos += head
        if size > end - pos or size > MAX_EVENT_SIZE:
            raise ParseError(
                f"eventSize {size} exceeds "
                + (f"the limit MAX_EVENT_SIZE={MAX_EVENT_SIZE}" if size > MAX_EVENT_SIZE
                   else f"the {end - pos} bytes left (truncated record at offset {start})"),
                format=FORMAT, offset=pos - 4, field="TCG_PCR_EVENT.eventSize",
            )
        yield event(index, etype, ((_SHA1_ID, digest),), buf[pos:pos + size], start)
        pos += size
    if result is not None:
        result.append(pos)


def _digest_layout(spec: SpecIdEvent) -> struct.Struct:
    """The TPML_DIGEST_VALUES body + eventSize when a record lists the table's algorithms in order."""
    return struct.Struct("<" + "".join(f"H{size}s" for _, size in spec.algorithms) + "I")


def _events(buf: bytes, pos: int, spec: SpecIdEvent, result: list[int] | None = None) -> Iterator[TCG2Event]:
    """Yield the TCG_PCR_EVENT2 records from ``pos`` to the end (or padding) of ``buf``.

    If ``result`` is given, the offset where reading stopped is stored in it.
    """
    end = len(buf)
    sizes = spec.digest_sizes
    n = len(spec.algorithms)
    n2 = 2 * n
    ids = tuple(a for a, _ in spec.algorithms)
    i0, i1, i2 = (ids + (None, None))[:3]
    layout = _digest_layout(spec)
    layout_size = layout.size
    unpack_layout = layout.unpack_from
    unpack_head = _PCR_EVENT2_HEAD.unpack_from
    head_size = _PCR_EVENT2_HEAD.size
    unpack_u32 = _U32.unpack_from
    event = TCG2Event
    while pos < end:
        start = pos
        if end - pos < head_size:
            if _is_padding(buf, pos, end):
                break
            raise ParseError(
                f"truncated TCG_PCR_EVENT2: {end - pos} bytes left, the header is {head_size}",
                format=FORMAT, offset=pos, field="TCG_PCR_EVENT2.pcrIndex",
            )
        index, etype, count = unpack_head(buf, pos)
        if (index == etype == 0 or index == etype == _U32_MAX) and _is_padding(buf, pos, end):
            break
        pos += head_size
        v = None
        if count == n and end - pos >= layout_size:
            # Fast path: the table's algorithms in table order.  The one-, two- and
            # three-bank cases (CCEL; sha1+sha256(+sha384) TPMs) are spelled out
            # because building the pairs directly is ~3x faster than slicing+zip.
            v = unpack_layout(buf, pos)
            if n == 1:
                digests = ((i0, v[1]),) if v[0] == i0 else None
            elif n == 2:
                digests = ((i0, v[1]), (i1, v[3])) if v[0] == i0 and v[2] == i1 else None
            elif n == 3:
                digests = (((i0, v[1]), (i1, v[3]), (i2, v[5]))
                           if v[0] == i0 and v[2] == i1 and v[4] == i2 else None)
            else:
                digests = tuple(zip(ids, v[1:n2:2])) if v[0:n2:2] == ids else None
            if digests is None:
                v = None
            else:
                size = v[n2]
                pos += layout_size
        if v is None:  # another order or a subset of the algorithms: the general decoder
            digests, pos = _read_digests(buf, pos, end, count, sizes, n)
            if end - pos < 4:
                raise ParseError(
                    "truncated TCG_PCR_EVENT2: no room for eventSize",
                    format=FORMAT, offset=pos, field="TCG_PCR_EVENT2.eventSize",
                )
            size = unpack_u32(buf, pos)[0]
            pos += 4
        if size > end - pos or size > MAX_EVENT_SIZE:
            raise ParseError(
                f"eventSize {size} exceeds "
                + (f"the limit MAX_EVENT_SIZE={MAX_EVENT_SIZE}" if size > MAX_EVENT_SIZE
                   else f"the {end - pos} bytes left (truncated record at offset {start})"),
                format=FORMAT, offset=pos - 4, field="TCG_PCR_EVENT2.eventSize",
            )
        yield event(index, etype, digests, buf[pos:pos + size], start)
        pos += size
    if result is not None:
        result.append(pos)


def _read_digests(
    buf: bytes, pos: int, end: int, count: int, sizes: Mapping[int, int], n: int
) -> tuple[tuple[tuple[int, bytes], ...], int]:
    """The general TPML_DIGEST_VALUES decoder: any order, any subset of the Spec ID algorithms."""
    if count > n:
        raise ParseError(
            f"digests.count {count} exceeds the {n} algorithms of the Spec ID event "
            f"(at most MAX_ALGORITHMS={MAX_ALGORITHMS})",
            format=FORMAT, offset=pos - 4, field="TCG_PCR_EVENT2.digests.count",
        )
    out: list[tuple[int, bytes]] = []
    for i in range(count):
        where = f"TCG_PCR_EVENT2.digests[{i}]"
        if end - pos < 2:
            raise ParseError("truncated TPMT_HA: no room for hashAlg", format=FORMAT, offset=pos, field=where)
        alg = _U16.unpack_from(buf, pos)[0]
        size = sizes.get(alg)
        if size is None:
            # Without a size the end of this digest, and so the rest of the log, is unknown.
            raise ParseError(
                f"hashAlg 0x{alg:04x} is not in the Spec ID event's digestSizes table; "
                "the rest of the log cannot be read",
                format=FORMAT, offset=pos, field=where + ".hashAlg",
            )
        if any(alg == a for a, _ in out):
            raise ParseError(f"hashAlg 0x{alg:04x} appears twice in one record",
                             format=FORMAT, offset=pos, field=where + ".hashAlg")
        pos += 2
        if end - pos < size:
            raise ParseError(
                f"truncated digest: 0x{alg:04x} needs {size} bytes, {end - pos} left",
                format=FORMAT, offset=pos, field=where + ".digest",
            )
        out.append((alg, buf[pos:pos + size]))
        pos += size
    return tuple(out), pos


def iter_events(data: bytes | bytearray | memoryview) -> Iterator[TCG2Event]:
    """Yield the records after the Spec ID header (every record of a legacy SHA-1 log) one at a time.

    The header is checked before this returns (a bad header raises here); a bad
    record raises :class:`ParseError` when the iteration reaches it.
    """
    buf = _as_bytes(data)
    spec, header, pos = _parse_header(buf)
    return _events(buf, pos, spec) if header is not None else _legacy_events(buf, pos)


def parse(data: bytes | bytearray | memoryview) -> TCG2Log:
    """Parse a crypto-agile TCG2 event log (binary_bios_measurements, a CCEL log area, a tsmr export).

    A log whose first record is not the Spec ID Event03 is read as a SHA-1-only
    (TPM 1.2 style) log: ``legacy=True``, see :class:`TCG2Log`.  Trailing 0x00 /
    0xFF padding ends the log; see the module docstring.  Raises
    :class:`ParseError` for anything else that is not a well-formed log.
    """
    buf = _as_bytes(data)
    spec, header, pos = _parse_header(buf)
    stop: list[int] = []
    with _gc_paused():
        if header is None:
            return TCG2Log(spec, tuple(_legacy_events(buf, pos, stop)), None, stop[0], legacy=True)
        events = tuple(_events(buf, pos, spec, stop))
    return TCG2Log(spec, events, header, stop[0])


def startup_locality(events: Iterable[TCG2Event]) -> int | None:
    """The locality of the first StartupLocality EV_NO_ACTION event on PCR 0 (PFP §10.4.5.3), else None.

    When present, PCR 0 was reset to ``00..00 || locality`` rather than to zero.
    """
    for ev in events:
        if (ev.event_type == EV_NO_ACTION and ev.index == 0
                and ev.data.startswith(STARTUP_LOCALITY_SIGNATURE) and len(ev.data) >= 17):
            return ev.data[16]
    return None


# -- writer -------------------------------------------------------------------------------------------


def encode_spec_id(spec: SpecIdEvent) -> bytes:
    """The TCG_EfiSpecIDEvent bytes of ``spec`` (the event data of the header record)."""
    try:
        if not 1 <= len(spec.algorithms) <= MAX_ALGORITHMS:
            raise InputError(f"tcg2: a Spec ID event lists 1..{MAX_ALGORITHMS} algorithms, "
                             f"got {len(spec.algorithms)}")
        if len(spec.vendor_info) > 255:
            raise InputError(f"tcg2: vendorInfo is at most 255 bytes, got {len(spec.vendor_info)}")
        if len({a for a, _ in spec.algorithms}) != len(spec.algorithms):
            raise InputError("tcg2: an algorithm is listed twice in the Spec ID event")
        known = {int(a): a for a in HashAlg}
        for alg, size in spec.algorithms:
            if not 1 <= size <= MAX_DIGEST_SIZE or (alg in known and known[alg].digest_size != size):
                raise InputError(f"tcg2: bad digest size {size} for algorithm 0x{alg:04x}")
        parts = [_SPEC_ID_HEAD.pack(SPEC_ID_EVENT03_SIGNATURE, spec.platform_class, spec.spec_version_minor,
                                    spec.spec_version_major, spec.spec_errata, spec.uintn_size,
                                    len(spec.algorithms))]
        parts.extend(_ALG_SIZE.pack(a, s) for a, s in spec.algorithms)
        parts.append(bytes([len(spec.vendor_info)]))
        parts.append(bytes(spec.vendor_info))
        return b"".join(parts)
    except struct.error as e:  # a field out of range for its integer width
        raise InputError(f"tcg2: Spec ID field out of range: {e}") from None


def encode_event(event: TCG2Event, alg_sizes: Mapping[int, int]) -> bytes:
    """One TCG_PCR_EVENT2 record, checked against the Spec ID digest sizes ``alg_sizes``."""
    if not (0 <= event.index <= _U32_MAX and 0 <= event.event_type <= _U32_MAX):
        raise InputError(f"tcg2: index {event.index} and event type {event.event_type} must fit in 32 bits")
    if len(event.digests) > len(alg_sizes):
        raise InputError(f"tcg2: {len(event.digests)} digests for {len(alg_sizes)} algorithms")
    if len(event.data) > MAX_EVENT_SIZE:
        raise InputError(f"tcg2: event data of {len(event.data)} bytes exceeds MAX_EVENT_SIZE={MAX_EVENT_SIZE}")
    parts = [_PCR_EVENT2_HEAD.pack(event.index, event.event_type, len(event.digests))]
    seen: set[int] = set()
    for alg, digest in event.digests:
        size = alg_sizes.get(int(alg))
        if size is None:
            raise InputError(f"tcg2: algorithm 0x{int(alg):04x} is not declared in the Spec ID event")
        if int(alg) in seen:
            raise InputError(f"tcg2: two digests for algorithm 0x{int(alg):04x} in one event")
        if len(digest) != size:
            raise InputError(f"tcg2: digest for algorithm 0x{int(alg):04x} is {len(digest)} bytes, must be {size}")
        seen.add(int(alg))
        parts.append(_U16.pack(int(alg)))
        parts.append(bytes(digest))
    parts.append(_U32.pack(len(event.data)))
    parts.append(bytes(event.data))
    return b"".join(parts)


def encode(
    log: TCG2Log | Iterable[TCG2Event], *, algorithms: Sequence[HashAlg] | None = None
) -> bytes:
    """Write a crypto-agile log.

    Given a :class:`TCG2Log`, write it as is (its Spec ID; the header record's
    index and SHA-1 digest field if ``header_event`` is set; a legacy log as
    :func:`encode_legacy` does), so that
    ``encode(parse(x)) == x[:parse(x).end]`` for logs this reader accepts.  Given
    events, ``algorithms`` is required and the header is the one of
    :meth:`SpecIdEvent.for_algorithms`.  Raises :class:`InputError` for events
    that cannot be written (wrong digest size, undeclared algorithm, index
    beyond 32 bits, event data over MAX_EVENT_SIZE) or would not read back (a
    last event that encodes to zero bytes only, which reads as padding).
    """
    if isinstance(log, TCG2Log):
        if algorithms is not None:
            raise InputError("tcg2: algorithms come from the log's Spec ID event; do not pass them with a TCG2Log")
        if log.legacy:
            return encode_legacy(log.events)
        spec, events, header = log.spec_id, log.events, log.header_event
    else:
        if not algorithms:
            raise InputError("tcg2: algorithms (the banks of the log) are required when encoding events")
        spec, events, header = SpecIdEvent.for_algorithms(algorithms), log, None
    spec_bytes = encode_spec_id(spec)
    index, digest = 0, bytes(20)
    if header is not None:
        index = header.index
        digest = header.digest(_SHA1_ID) or bytes(20)
        if len(digest) != 20 or not 0 <= index <= _U32_MAX:
            raise InputError("tcg2: the header TCG_PCR_EVENT needs a 32-bit index and a 20-byte digest")
    sizes = spec.digest_sizes
    parts = [_PCR_EVENT.pack(index, EV_NO_ACTION, digest, len(spec_bytes)), spec_bytes]
    parts.extend(encode_event(ev, sizes) for ev in events)
    if len(parts) > 2 and not parts[-1].strip(b"\x00"):
        # pcrIndex 0, EV_PREBOOT_CERT, no digests, no data: sixteen zero bytes that every
        # reader (this one included) takes for the zero padding of a log area.
        raise InputError("tcg2: the last event would be all zero bytes and read back as padding")
    return b"".join(parts)


def encode_legacy(events: Iterable[TCG2Event]) -> bytes:
    """A SHA-1-only (TPM 1.2 style) log: one TCG_PCR_EVENT per event, each with exactly one SHA-1 digest.

    Raises :class:`InputError` for events that cannot be written or would not
    read back as written: no events, a first event that is a Spec ID Event03
    (the log would read as crypto-agile), a last record of zero bytes only.
    """
    parts: list[bytes] = []
    for ev in events:
        if not (0 <= ev.index <= _U32_MAX and 0 <= ev.event_type <= _U32_MAX):
            raise InputError(f"tcg2: index {ev.index} and event type {ev.event_type} must fit in 32 bits")
        if len(ev.digests) != 1 or ev.digests[0][0] != _SHA1_ID or len(ev.digests[0][1]) != 20:
            raise InputError("tcg2: an event of a SHA-1 log carries exactly one 20-byte SHA-1 digest")
        if len(ev.data) > MAX_EVENT_SIZE:
            raise InputError(f"tcg2: event data of {len(ev.data)} bytes exceeds MAX_EVENT_SIZE={MAX_EVENT_SIZE}")
        parts.append(_PCR_EVENT.pack(ev.index, ev.event_type, bytes(ev.digests[0][1]), len(ev.data)) + bytes(ev.data))
    if not parts:
        raise InputError("tcg2: a SHA-1 log needs at least one event")
    if parts[0][4:8] == b"\x03\x00\x00\x00" and parts[0][32:48] == SPEC_ID_EVENT03_SIGNATURE:
        raise InputError("tcg2: a SHA-1 log cannot start with a Spec ID Event03 (it would read as crypto-agile)")
    if not parts[-1].strip(b"\x00"):
        raise InputError("tcg2: the last event would be all zero bytes and read back as padding")
    return b"".join(parts)


def encode_log(events: Iterable[TCG2Event], algorithms: Sequence[HashAlg]) -> bytes:
    """A crypto-agile log of ``events`` whose Spec ID event declares ``algorithms`` (in that order)."""
    return encode(events, algorithms=algorithms)


# -- replay -------------------------------------------------------------------------------------------


def replay(
    log: TCG2Log, *, initial: Mapping[tuple[int, HashAlg], bytes] | None = None
) -> dict[int, dict[HashAlg, bytes]]:
    """Recompute the registers: per index and bank, fold ``H(value || digest)`` over the events.

    Banks are the Spec ID algorithms tsmr can hash.  Every register starts at
    zero, or at ``initial[(index, alg)]`` (e.g. PCR 0 after a StartupLocality
    event, see :func:`startup_locality`).  EV_NO_ACTION events are never
    extended (PFP §10.4.5).  A bank of a register is reported only if every
    measured event of that register carries a digest for it (otherwise the log
    cannot tell its value); an index appears once it has a measured event or an
    initial value.
    """
    banks: dict[int, tuple[HashAlg, object, int]] = {}
    for alg in log.spec_id.hash_algs:
        proto = alg.new()  # copy() of an empty hash object is the cheapest constructor
        banks[int(alg)] = (alg, proto, alg.digest_size)
    start: dict[tuple[int, int], bytes] = {}
    for (index, alg), value in (initial or {}).items():
        alg = HashAlg(alg)
        if len(value) != alg.digest_size:
            raise InputError(f"tcg2: initial value of {index}/{alg} is {len(value)} bytes, "
                             f"must be {alg.digest_size}")
        start[(index, int(alg))] = bytes(value)

    # state[index][alg_id] = (value, number of events folded into it)
    state: dict[int, dict[int, tuple[bytes, int]]] = {}
    measured: dict[int, int] = {}
    for ev in log.events:
        if ev.event_type == EV_NO_ACTION:
            continue
        index = ev.index
        regs = state.get(index)
        if regs is None:
            regs = state[index] = {}
            measured[index] = 0
        measured[index] += 1
        for alg_id, digest in ev.digests:
            bank = banks.get(alg_id)
            if bank is None:
                continue  # an algorithm tsmr cannot hash: that bank is not replayed
            _alg, proto, size = bank
            if len(digest) != size:
                raise ReplayError(f"tcg2: event at offset {ev.offset} has a {len(digest)}-byte "
                                  f"{_alg} digest, expected {size}")
            cur = regs.get(alg_id)
            if cur is None:
                value, n = start.get((index, alg_id)) or bytes(size), 0
            else:
                value, n = cur
            h = proto.copy()  # type: ignore[attr-defined]
            h.update(value)
            h.update(digest)
            regs[alg_id] = (h.digest(), n + 1)

    out: dict[int, dict[HashAlg, bytes]] = {}
    for (index, alg_id), value in start.items():
        if index not in state:
            out.setdefault(index, {})[HashAlg(alg_id)] = value
    for index, regs in state.items():
        banks_out = out.setdefault(index, {})
        for alg_id, (value, n) in regs.items():
            if n == measured[index]:
                banks_out[banks[alg_id][0]] = value
    return out


def replay_bytes(
    data: bytes | bytearray | memoryview, *, initial: Mapping[tuple[int, HashAlg], bytes] | None = None
) -> tuple[dict[int, dict[HashAlg, bytes]], dict[int, tuple[HashAlg, ...]]]:
    """``replay(parse(data))`` in one pass over the bytes, building no event objects.

    Same semantics as :func:`replay`, plus the TPM's StartupLocality rule: an
    EV_NO_ACTION "StartupLocality" event on PCR 0 sets PCR 0's initial value in
    every bank (unless ``initial`` gives one).  Also returns, per index, the
    banks that some measured events record and others lack (not replayed).  Logs this
    fast path does not cover (SHA-1-only logs, records whose digests are not in
    the Spec ID's order) go through :func:`parse` and :func:`replay`.
    """
    buf = _as_bytes(data)
    spec, header, pos = _parse_header(buf)
    start: dict[tuple[int, int], bytes] = {(i, int(a)): bytes(v) for (i, a), v in (initial or {}).items()}
    if header is None:
        log = parse(buf)
        return _with_locality(log, initial)
    algs = spec.hash_algs
    n = len(spec.algorithms)
    ids = tuple(a for a, _ in spec.algorithms)
    known = [(k, int(a) in {int(x) for x in algs}) for k, a in enumerate(ids)]
    hashers = {int(a): a.constructor for a in algs}
    layout = _digest_layout(spec)
    lsize = layout.size
    unpack_layout = layout.unpack_from
    unpack_head = _PCR_EVENT2_HEAD.unpack_from
    hsize = _PCR_EVENT2_HEAD.size
    end = len(buf)
    n2 = 2 * n
    # state[index][alg_id] = [value, events folded]; measured[index] = events on the index
    state: dict[int, dict[int, list]] = {}  # type: ignore[type-arg]
    measured: dict[int, int] = {}
    while pos < end:
        if end - pos < hsize:
            if _is_padding(buf, pos, end):
                break
            return _slow(buf, initial)
        index, etype, count = unpack_head(buf, pos)
        if (index == etype == 0 or index == etype == _U32_MAX) and _is_padding(buf, pos, end):
            break
        if count != n or end - pos - hsize < lsize:
            return _slow(buf, initial)
        v = unpack_layout(buf, pos + hsize)
        if v[0:n2:2] != ids:
            return _slow(buf, initial)
        size = v[n2]
        body = pos + hsize + lsize
        if size > end - body or size > MAX_EVENT_SIZE:
            return _slow(buf, initial)  # the full parser names the error
        pos = body + size
        if etype == EV_NO_ACTION:
            if index == 0 and size == 17 and buf[body:body + 16] == b"StartupLocality\0":
                for a in algs:
                    start.setdefault((0, int(a)), bytes(a.digest_size - 1) + buf[body + 16:body + 17])
            continue
        regs = state.get(index)
        if regs is None:
            regs = state[index] = {}
            measured[index] = 0
        measured[index] += 1
        for k, ok in known:
            if not ok:
                continue
            a = ids[k]
            d = v[2 * k + 1]
            cur = regs.get(a)
            if cur is None:
                regs[a] = [hashers[a]((start.get((index, a)) or bytes(len(d))) + d).digest(), 1]
            else:
                cur[0] = hashers[a](cur[0] + d).digest()
                cur[1] += 1
    out: dict[int, dict[HashAlg, bytes]] = {}
    missing: dict[int, tuple[HashAlg, ...]] = {}
    for index, regs in state.items():
        out[index] = {_KNOWN_ALGS[a]: val for a, (val, k) in regs.items() if k == measured[index]}
        lacking = tuple(sorted(_KNOWN_ALGS[a] for a, (_, k) in regs.items() if k != measured[index]))
        if lacking:
            missing[index] = lacking
    return out, missing


def _slow(buf: bytes, initial: Mapping[tuple[int, HashAlg], bytes] | None) -> tuple[
        dict[int, dict[HashAlg, bytes]], dict[int, tuple[HashAlg, ...]]]:
    return _with_locality(parse(buf), initial)


def _with_locality(log: TCG2Log, initial: Mapping[tuple[int, HashAlg], bytes] | None) -> tuple[
        dict[int, dict[HashAlg, bytes]], dict[int, tuple[HashAlg, ...]]]:
    start = dict(initial or {})
    loc = startup_locality(e for e in log.events if e.index == 0)
    if loc is not None:
        for a in log.spec_id.hash_algs:
            start.setdefault((0, a), bytes(a.digest_size - 1) + bytes([loc]))
    values = replay(log, initial=start)
    measured_idx = {e.index for e in log.events if e.event_type != EV_NO_ACTION}
    values = {i: v for i, v in values.items() if i in measured_idx}
    seen: dict[int, set[HashAlg]] = {}
    for e in log.events:
        if e.event_type != EV_NO_ACTION:
            seen.setdefault(e.index, set()).update(_KNOWN_ALGS[a] for a, _ in e.digests if a in _KNOWN_ALGS)
    missing = {i: tuple(sorted(a for a in seen.get(i, ()) if a not in values.get(i, {}))) for i in measured_idx}
    return values, {i: m for i, m in missing.items() if m}


# -- unified events -------------------------------------------------------------------------------

_KNOWN_ALGS: dict[int, HashAlg] = {int(a): a for a in HashAlg}
_ARCH_SOURCES = {"tpm": "tcg2", "tdx": "ccel", "cca": "ccel"}


def register_name(index: int, arch: str = "tpm") -> str:
    """The unified register name of a log index: ``pcrN`` for a TPM log, ``rtmrN``/``remN`` for a CCEL."""
    if arch == "tpm":
        return f"pcr{index}"
    if 0 <= index <= 4:
        return ccmr_to_register(index, arch)
    return f"ccmr{index}"  # not a CC MR index: keep the event, name what it says


def to_events(log: TCG2Log, *, arch: str = "tpm", decode: bool = True) -> list[Event]:
    """The log's records as unified :class:`tsmr.events.Event` objects (the Spec ID header is not one).

    ``arch="tpm"``: source ``"tcg2"``, register ``pcrN``.  ``arch="tdx"`` (or
    ``"cca"``): the index is a CC MR index (a CCEL), source ``"ccel"``, register
    ``mrtd``/``rtmr0..3`` (``rim``/``rem0..3``); an index above 4 is named
    ``ccmrN``.  Digests keep the algorithms tsmr knows (others are dropped: the
    bank could not be replayed anyway), ``measured`` is False for EV_NO_ACTION,
    ``data_rule`` comes from :func:`tsmr.formats.uefi.data_rule`, ``summary``
    and ``details`` from :func:`tsmr.formats.uefi.describe`.  ``decode=False``
    skips the last two (a million-event log then costs about one Event
    construction per record).
    """
    source = _ARCH_SOURCES.get(arch)
    if source is None:
        raise InputError(f"tcg2: unknown architecture {arch!r} (known: {', '.join(_ARCH_SOURCES)})")
    out: list[Event] = []
    with _gc_paused():
        _fill_events(log, source, arch, decode, out)
    return out


def _fill_events(log: TCG2Log, source: str, arch: str, decode: bool, out: list[Event]) -> None:
    # Locals instead of globals and attribute lookups: this loop runs once per record.
    names: dict[int, str] = {}
    known = _KNOWN_ALGS
    type_names = EVENT_TYPE_NAMES
    rule_of = uefi.data_rule
    describe = uefi.describe
    uintn = log.spec_id.uintn_size
    append = out.append
    for seq, ev in enumerate(log.events):
        index = ev.index
        register = names.get(index)
        if register is None:
            register = names[index] = register_name(index, arch)
        etype = ev.event_type
        data = ev.data
        digests = tuple([(known[a], d) for a, d in ev.digests if a in known])
        if decode:
            summary, details = describe(etype, data, uintn_size=uintn)
        else:
            summary, details = "", None
        append(Event(source, seq, index, register, type_names.get(etype) or event_type_name(etype), digests, data,
                     etype != EV_NO_ACTION, rule_of(etype, data), summary, details, ev.offset))


# -- digest checks ----------------------------------------------------------------------------------
#
# How the digest of a record relates to its data.  Rule names (``"data"`` is tsmr.events.DATA):
#   data             digest = H(event data)
#   variable-data    H(UEFI_VARIABLE_DATA.VariableData): EDK2/OVMF/TDVF/GCE firmware for EV_EFI_VARIABLE_BOOT
#   text             H(text after a boot loader prefix, no NUL): upstream GRUB "grub_cmd: ",
#                    "kernel_cmdline: ", "module_cmdline: "; RHEL GRUB "grub_kernel_cmdline "
#   text-nul         H(text after the prefix, up to and including its NUL): RHEL/Fedora/Alibaba GRUB
#                    "grub_cmd " (the byte after the NUL is not hashed; often uninitialised memory)
#   utf8-nul         H(UTF-8 of the UTF-16 description + NUL): systemd-stub's first event of each UKI
#                    section pair (".linux", ".cmdline", ...); the second one hashes the section
#   separator-error  H(LE32(1)): an error separator, whatever its data
#
# Observed on shared/fixtures (tests/unit/test_tcg2_events.py recomputes these numbers with
# check_digests):
#   * H(data) on every event of EV_SEPARATOR, EV_EFI_ACTION, EV_EFI_VARIABLE_DRIVER_CONFIG,
#     EV_EFI_GPT_EVENT, EV_S_CRTM_VERSION (GCE), EV_NONHOST_INFO (GCE), EV_EVENT_TAG "AAEL" (Alibaba).
#   * EV_EFI_VARIABLE_AUTHORITY: H(data) everywhere except 2 of 3 events of go-eventlog cos-85-amd-sev
#     (an old shim: a bare DER vendor certificate + 6 trailing bytes; no slice of the data matches).
#   * EV_EFI_VARIABLE_BOOT: H(VariableData) on every fixture (GCE, OVMF, TDVF, Alibaba, Hygon CSV),
#     never H(data) as PFP says (other vendors' firmware does hash the whole structure, formats.md §1.8).
#   * EV_IPL: never H(data).  GRUB strings follow "text" / "text-nul"; shim's "MokList*" and GRUB's
#     file paths hash the variable or file; systemd-stub section names follow "utf8-nul".
#   * EV_EVENT_TAG with the Linux initrd / load-options tags hashes the initrd / the command line.
#   * Never H(data): EV_EFI_BOOT_SERVICES_APPLICATION (Authenticode), EV_EFI_PLATFORM_FIRMWARE_BLOB(2),
#     EV_EFI_HANDOFF_TABLES(2), EV_PLATFORM_CONFIG_FLAGS ("ACPI DATA", fw_cfg names, td-shim td_hob /
#     td_payload_info), EV_POST_CODE ("ACPI DATA" on Alibaba).

_GRUB_RULES = ((b"grub_cmd: ", "text"), (b"kernel_cmdline: ", "text"), (b"module_cmdline: ", "text"),
               (b"grub_kernel_cmdline ", "text"), (b"grub_cmd ", "text-nul"))
_SEPARATOR_VALUES = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x00\x00\x00")


def digest_rules(event_type: int, data: bytes) -> tuple[str, ...]:
    """Every rule by which this event's digest may follow from its data, most likely first; () if none."""
    if event_type == EV_NO_ACTION:
        return ()
    if event_type == EV_EFI_VARIABLE_BOOT:
        return ("variable-data", uefi.DATA)
    if event_type == EV_SEPARATOR:
        return (uefi.DATA, "separator-error") if data in _SEPARATOR_VALUES else ("separator-error",)
    if event_type == EV_IPL:
        for prefix, rule in _GRUB_RULES:
            if data.startswith(prefix):
                return (rule,)
        # systemd-stub section names; sd-boot's UTF-16 command line on PCR 12 is H(data)
        return ("utf8-nul", uefi.DATA) if uefi.looks_utf16(data) else ()
    if uefi.data_rule(event_type, data) == uefi.DATA:
        return (uefi.DATA,)
    if event_type == EV_EVENT_TAG and len(data) >= 8 and _U32.unpack_from(data, 4)[0] == len(data) - 8 \
            and _U32.unpack_from(data)[0] not in uefi.EVENT_TAG_NAMES:
        return (uefi.DATA,)  # unknown tags: plausible per PFP; Linux's and systemd's hash files instead
    if event_type in (EV_TABLE_OF_DEVICES, EV_COMPACT_HASH):
        return (uefi.DATA,)  # plausible per PFP, not seen on real logs
    return ()


def measured_bytes(rule: str, data: bytes) -> bytes | None:
    """The bytes whose hash is the digest under ``rule``, or None if the rule does not apply to ``data``."""
    if rule == uefi.DATA:
        return data
    if rule == "separator-error":
        return b"\x01\x00\x00\x00"
    if rule == "variable-data":
        if len(data) < 32:
            return None
        nlen, dlen = struct.unpack_from("<QQ", data, 16)
        start = 32 + 2 * nlen
        return data[start:start + dlen] if start + dlen <= len(data) else None
    if rule in ("text", "text-nul"):
        for prefix, _rule in _GRUB_RULES:
            if data.startswith(prefix):
                text = data[len(prefix):].split(b"\x00", 1)[0]
                return text + b"\x00" if rule == "text-nul" else text
        return None
    if rule == "utf8-nul":
        return uefi.utf16(data).encode("utf-8") + b"\x00"
    return None


def match_rule(event: TCG2Event) -> str | None:
    """The first of :func:`digest_rules` that reproduces every digest of ``event`` tsmr can compute, else None."""
    checkable = []
    for alg_id, digest in event.digests:
        alg = _KNOWN_ALGS.get(alg_id)
        if alg is not None:
            try:
                alg.hash(b"")
            except ValueError:  # e.g. sm3 where OpenSSL lacks it
                continue
            checkable.append((alg, digest))
    if not checkable:
        return None
    for rule in digest_rules(event.event_type, event.data):
        b = measured_bytes(rule, event.data)
        if b is not None and all(alg.hash(b) == d for alg, d in checkable):
            return rule
    return None


def check_digests(log: TCG2Log) -> dict[str, dict[str, int]]:
    """Per event type name: how many measured events, and how many each rule (or none) reproduces.

    ``{"EV_EFI_VARIABLE_BOOT": {"events": 3, "variable-data": 3}, "EV_IPL": {"events": 4, "text": 2,
    "unmatched": 2}}``: "unmatched" counts events with a candidate rule that none reproduces,
    "not-derivable" events without any candidate rule (PE images, firmware blobs).
    EV_NO_ACTION events are not measured and not counted.
    """
    out: dict[str, dict[str, int]] = {}
    for ev in log.events:
        if ev.event_type == EV_NO_ACTION:
            continue
        counts = out.setdefault(ev.type_name, {"events": 0})
        counts["events"] += 1
        rule = match_rule(ev)
        key = rule or ("unmatched" if digest_rules(ev.event_type, ev.data) else "not-derivable")
        counts[key] = counts.get(key, 0) + 1
    return out


__all__ = [
    "LEGACY_SPEC_ID",
    "check_digests",
    "digest_rules",
    "encode_legacy",
    "register_name",
    "match_rule",
    "measured_bytes",
    "to_events",
    "EV_NO_ACTION",
    "EV_SEPARATOR",
    "EV_ACTION",
    "EV_EVENT_TAG",
    "EVENT_TYPE_NAMES",
    "MAX_ALGORITHMS",
    "MAX_DIGEST_SIZE",
    "MAX_EVENT_SIZE",
    "SpecIdEvent",
    "TCG2Event",
    "TCG2Log",
    "encode",
    "encode_event",
    "encode_log",
    "encode_spec_id",
    "event_type_name",
    "iter_events",
    "parse",
    "replay",
    "startup_locality",
]
