"""Reading TCG2 logs: the Spec ID header, crypto-agile and SHA-1 records, padding (see the package docstring)."""

from __future__ import annotations

import contextlib
import gc
import re
import struct
from typing import Iterable, Iterator, Mapping

from ...algorithms import HashAlg
from ...errors import InputError, ParseError
from .records import (_ALG_SIZE, _LEGACY_SPEC_ID_HEAD, _PCR_EVENT, _PCR_EVENT2_HEAD, _SHA1_ID, _SPEC_ID_HEAD,
                      _U16, _U32, _U32_MAX, EV_NO_ACTION, FORMAT, LEGACY_SPEC_ID, LEGACY_SPEC_ID_SIGNATURES,
                      MAX_ALGORITHMS, MAX_DIGEST_SIZE, MAX_EVENT_SIZE, SPEC_ID_EVENT03_SIGNATURE,
                      STARTUP_LOCALITY_SIGNATURE, SpecIdEvent, TCG2Event, TCG2Log)


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


_FILL = re.compile(rb"\x00*\xff*", re.DOTALL)


def _is_padding(buf: bytes, pos: int, end: int) -> bool:
    """True if ``buf[pos:end]`` is fill: 0x00 bytes, then 0xFF bytes (either may be absent).

    A log area is erased to 0xFF (CCEL) or 0x00, and a zeroed log buffer may sit
    in an area erased to 0xFF; no record consists of such bytes alone.
    """
    if buf[pos] not in (0, 0xFF):
        return False
    return _FILL.fullmatch(buf, pos, end) is not None  # no copy of a (often large) erased area


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
    i0, i1, i2 = (ids + (-1, -1))[:3]  # -1: no such algorithm (never compared when n is smaller)
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
        digests: tuple[tuple[int, bytes], ...] | None = None
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
        if v is None or digests is None:  # another order or a subset of the algorithms: the general decoder
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


__all__ = ["iter_events", "parse", "startup_locality"]
