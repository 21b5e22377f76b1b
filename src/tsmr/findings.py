"""What checks report, shared by every layer: severities, replay statuses, findings and gaps.

These are plain values low in the import graph (beside :mod:`tsmr.errors`), so
that a log reader, the replay, the evidence layer and the appraisal all report
with the same classes.  The enums are :class:`enum.StrEnum`: a member compares
equal to its string and serialises to JSON as that string, so ``--json``
output and stored results read the same as plain strings did.
"""

from __future__ import annotations

from types import MappingProxyType
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Mapping

from .algorithms import HashAlg

__all__ = ["Severity", "ReplayStatus", "Finding", "Gap"]


class Severity(StrEnum):
    """How much a finding weighs: ``info`` affirms, ``warning`` warns, ``error`` contraindicates."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class ReplayStatus(StrEnum):
    """The outcome of replaying one register bank.

    ``matched`` / ``mismatched``: compared with an expected (signed) value;
    ``replayed``: a value, but nothing to compare it with; ``unanchored``: no
    sync record and no initial value, so the log proves nothing about it;
    ``not-covered``: an expected value no log can explain (a launch measurement
    such as TDX MRTD).  A bundle's register rows also use ``not-signed``,
    ``signed-only``, ``unlogged``, ``gap``, ``history-missing`` and ``data-mismatch`` (a
    record whose recorded digest is not the hash of its data).
    """

    MATCHED = "matched"
    MISMATCHED = "mismatched"
    REPLAYED = "replayed"
    UNANCHORED = "unanchored"
    NOT_COVERED = "not-covered"
    NOT_SIGNED = "not-signed"
    SIGNED_ONLY = "signed-only"
    UNLOGGED = "unlogged"
    GAP = "gap"
    HISTORY_MISSING = "history-missing"
    DATA_MISMATCH = "data-mismatch"


@dataclass(frozen=True)
class Finding:
    """One thing a check found, with a stable dotted id.

    ``id`` is a stable dotted identifier (``evidence.signature``,
    ``freshness.nonce-reused``, ``replay.mismatch``,
    ``log.pcr7.duplicate-separator``, ...); ``severity`` a :class:`Severity`
    (a string is accepted and converted; one that is not a severity counts as
    ``error``, the worst); ``claim`` is the AR4SI trustworthiness claim it
    affects; ``context`` holds the details (register, bank, expected and actual
    values, check name, ...).
    """

    id: str
    severity: Severity
    message: str
    claim: str = "configuration"
    context: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.severity, Severity):
            try:
                sev = Severity(self.severity)
            except ValueError:
                sev = Severity.ERROR
            object.__setattr__(self, "severity", sev)
        if not isinstance(self.context, MappingProxyType):  # read-only, like the rest of a finding
            object.__setattr__(self, "context", MappingProxyType(dict(self.context)))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity, "message": self.message, "claim": self.claim,
                "context": dict(self.context)}


@dataclass(frozen=True, slots=True)
class Gap:
    """An unlogged change: a sync record declares another value than the replay reached.

    ``seq`` is the sync record's position in its own log (its line number in a
    runtime log, also readable as ``line``); ``register`` and ``source`` say
    where it was found when several logs are replayed together, ``position`` is
    its place among all the events replayed, and ``history_missing`` marks the
    register's first record when the value it held at launch is known: what
    came before the log was replaced.
    """

    alg: HashAlg
    replayed: bytes
    declared: bytes
    seq: int
    register: str = ""
    source: str = "tsmr"
    position: int = -1
    history_missing: bool = False

    @property
    def line(self) -> int:
        """The sync record's line number (a runtime log's name for ``seq``)."""
        return self.seq
