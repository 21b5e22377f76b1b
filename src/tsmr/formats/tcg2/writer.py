"""Writing TCG2 logs: crypto-agile (Spec ID Event03 header) and SHA-1-only."""

from __future__ import annotations

import struct
from typing import Iterable, Mapping, Sequence

from ...algorithms import HashAlg
from ...errors import InputError
from .records import (_ALG_SIZE, _PCR_EVENT, _PCR_EVENT2_HEAD, _SHA1_ID, _SPEC_ID_HEAD, _U16, _U32, _U32_MAX,
                      EV_NO_ACTION, MAX_ALGORITHMS, MAX_DIGEST_SIZE, MAX_EVENT_SIZE, SPEC_ID_EVENT03_SIGNATURE,
                      SpecIdEvent, TCG2Event, TCG2Log)


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
        spec, events, header = SpecIdEvent.for_algorithms(algorithms), tuple(log), None
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


__all__ = ["encode", "encode_event", "encode_legacy", "encode_log", "encode_spec_id"]
