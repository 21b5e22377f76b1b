"""TCG2 log records: event types, limits, wire structs and the value classes (TCG PC Client PFP §10).

The reader (:mod:`.reader`), writer (:mod:`.writer`), digest rules
(:mod:`.digests`) and unified events (:mod:`.events`) all build on these.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ...algorithms import HashAlg, find_digest

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


_KNOWN_ALGS: dict[int, HashAlg] = {int(a): a for a in HashAlg}

__all__ = [
    "EV_PREBOOT_CERT",
    "EV_POST_CODE",
    "EV_UNUSED",
    "EV_NO_ACTION",
    "EV_SEPARATOR",
    "EV_ACTION",
    "EV_EVENT_TAG",
    "EV_S_CRTM_CONTENTS",
    "EV_S_CRTM_VERSION",
    "EV_CPU_MICROCODE",
    "EV_PLATFORM_CONFIG_FLAGS",
    "EV_TABLE_OF_DEVICES",
    "EV_COMPACT_HASH",
    "EV_IPL",
    "EV_IPL_PARTITION_DATA",
    "EV_NONHOST_CODE",
    "EV_NONHOST_CONFIG",
    "EV_NONHOST_INFO",
    "EV_OMIT_BOOT_DEVICE_EVENTS",
    "EV_POST_CODE2",
    "EV_EFI_EVENT_BASE",
    "EV_EFI_VARIABLE_DRIVER_CONFIG",
    "EV_EFI_VARIABLE_BOOT",
    "EV_EFI_BOOT_SERVICES_APPLICATION",
    "EV_EFI_BOOT_SERVICES_DRIVER",
    "EV_EFI_RUNTIME_SERVICES_DRIVER",
    "EV_EFI_GPT_EVENT",
    "EV_EFI_ACTION",
    "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    "EV_EFI_HANDOFF_TABLES",
    "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    "EV_EFI_HANDOFF_TABLES2",
    "EV_EFI_VARIABLE_BOOT2",
    "EV_EFI_GPT_EVENT2",
    "EV_EFI_HCRTM_EVENT",
    "EV_EFI_VARIABLE_AUTHORITY",
    "EV_EFI_SPDM_FIRMWARE_BLOB",
    "EV_EFI_SPDM_FIRMWARE_CONFIG",
    "EV_EFI_SPDM_DEVICE_POLICY",
    "EV_EFI_SPDM_DEVICE_AUTHORITY",
    "EVENT_TYPE_NAMES",
    "FORMAT",
    "LEGACY_SPEC_ID",
    "LEGACY_SPEC_ID_SIGNATURES",
    "MAX_ALGORITHMS",
    "MAX_DIGEST_SIZE",
    "MAX_EVENT_SIZE",
    "SPEC_ID_EVENT03_SIGNATURE",
    "STARTUP_LOCALITY_SIGNATURE",
    "SpecIdEvent",
    "TCG2Event",
    "TCG2Log",
    "event_type_name",
]
