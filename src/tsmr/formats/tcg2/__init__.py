"""TCG PC Client event logs (crypto-agile TCG2 and SHA-1 legacy): reader, writer, unified events, digest rules.

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
collections otherwise cost more than the parsing (see ``reader._gc_paused``).

Layout: :mod:`.records` (event types, limits, value classes), :mod:`.reader`,
:mod:`.writer`, :mod:`.events` (unified events) and :mod:`.digests` (which
digests follow from their data).  Replaying a log is :func:`tsmr.replay.replay`
over :func:`to_events` (or :func:`tsmr.replay.replay_tcg2_bytes` straight from
the bytes).
"""

from __future__ import annotations

from .digests import check_digests, digest_rules, match_rule, measured_bytes
from .events import register_name, to_events
from .reader import iter_events, parse, startup_locality
from .records import *  # noqa: F401,F403 - the EV_* event types, limits and record classes
from .records import __all__ as _records_all
from .writer import encode, encode_event, encode_legacy, encode_log, encode_spec_id

__all__ = [
    *_records_all,
    "check_digests",
    "digest_rules",
    "encode",
    "encode_event",
    "encode_legacy",
    "encode_log",
    "encode_spec_id",
    "iter_events",
    "match_rule",
    "measured_bytes",
    "parse",
    "register_name",
    "startup_locality",
    "to_events",
]
