"""The unified event: one measurement, whatever log format it came from.

Every format reader (``tsmr.formats``) turns its records into :class:`Event`
objects, and :mod:`tsmr.replay` folds events into register values without
knowing where they came from.  An event says

* where it went: ``register`` (the unified name: ``pcr10``, ``mrtd``,
  ``rtmr2``, ``rem1``) and ``index`` (as the source recorded it: pcrIndex, CC MR
  index, CEL index, IMA PCR);
* what was extended: ``digests``, one per bank the log records; where the
  digest is a plain hash of the event data (``data_rule == "data"``) and the
  format's writer extends every bank so (IMA, tsmr, CEL, systemd; not firmware
  logs), a bank the log does not record is derived from the data;
* what it was: ``type`` (``EV_SEPARATOR``, ``ima-ng``, ``tsmr``), the raw
  ``data``, a one-line ``summary`` and decoded ``details`` (JSON values).

Events are values: frozen, comparable, cheap to build in bulk.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any, Mapping

from .algorithms import HashAlg

DATA = "data"  # the digest is H(data) in every bank
# Formats whose writer extends every bank with H(data) for a "data" event, so that a bank the
# log does not record can be derived: IMA (the kernel hashes the template data per bank),
# tsmr runtime logs, CEL content (COS, tsmr), systemd, AAEL.  Not firmware logs (tcg2, ccel):
# there a missing digest means the log does not say what the bank was extended with.
DERIVABLE_SOURCES = frozenset({"ima", "tsmr", "cel", "systemd", "aael"})
# Of those, the formats whose records carry their digests next to the data, so that the two can
# disagree: a tsmr runtime log records lines only, and its reader derives the digests from them.
RECORDED_DIGEST_SOURCES = DERIVABLE_SOURCES - {"tsmr"}


@dataclass(frozen=True, slots=True)
class Event:
    source: str  # the format: tcg2, ccel, cel, ima, systemd, tsmr, aael
    seq: int  # position in its log, from 0
    index: int
    register: str
    type: str
    digests: tuple[tuple[HashAlg, bytes], ...]
    data: bytes = b""
    measured: bool = True  # False for records that are never extended (EV_NO_ACTION)
    data_rule: str | None = None  # DATA when digest == H(data); None when not recomputable
    summary: str = ""
    details: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    offset: int = field(default=0, compare=False)
    fill: int | None = None  # IMA violations: the log shows zeros, every bank was extended with 0xFF bytes

    def digest(self, alg: HashAlg) -> bytes | None:
        """The digest extended into bank ``alg``: recorded, or derived from the data when the format allows."""
        if self.fill is not None:
            return bytes([self.fill]) * alg.digest_size
        for a, d in self.digests:
            if a == alg:
                return d
        if self.data_rule == DATA and self.source in DERIVABLE_SOURCES:
            return alg.hash(self.data)
        return None

    def check(self, alg: HashAlg) -> bool | None:
        """Whether the recorded digest for ``alg`` equals the hash of the event data (None: cannot tell)."""
        if self.data_rule != DATA or self.fill is not None:
            return None
        for a, d in self.digests:
            if a == alg:
                return hmac.compare_digest(d, alg.hash(self.data))
        return None

    @property
    def algs(self) -> tuple[HashAlg, ...]:
        return tuple(a for a, _ in self.digests)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "seq": self.seq,
            "index": self.index,
            "register": self.register,
            "type": self.type,
            "digests": {a.kernel_name: d.hex() for a, d in self.digests},
            "summary": self.summary,
        }
        if not self.measured:
            obj["measured"] = False
        if self.details:
            obj["details"] = self.details
        if self.fill is not None:
            obj["extended_with"] = f"0x{self.fill:02x} bytes"
        return obj


__all__ = ["Event", "DATA", "DERIVABLE_SOURCES", "RECORDED_DIGEST_SOURCES"]
