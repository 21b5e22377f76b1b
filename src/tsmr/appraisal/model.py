"""What an appraisal returns: findings with stable ids, a status, and the AR4SI trustworthiness vector.

The status and vector follow the EAT Attestation Result (EAR) information model
(draft-ietf-rats-ear, AR4SI trustworthiness claims, RFC 9334 terms): each finding
names the trustworthiness claim it affects, and the worst finding sets the status.
"""

from __future__ import annotations

from collections import abc
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Mapping

from ..findings import Finding, Severity

__all__ = ["EarStatus", "Finding", "Severity", "Result", "STATUS_ORDER", "TRUST_CLAIMS", "TIER", "frozen_json",
           "result_of_frozen"]

# AR4SI trustworthiness claims (draft-ietf-rats-ar4si §2.3) by EAR short name.
TRUST_CLAIMS = ("instance-identity", "configuration", "executables", "file-system", "hardware",
                "runtime-opaque", "storage-opaque", "sourced-data")


class EarStatus(StrEnum):
    """An appraisal's status, the EAR ``ear.status`` claim (draft-ietf-rats-ear §3.2; AR4SI §2.3.1 tiers).

    The members are strings: ``EarStatus.AFFIRMING == "affirming"``, and JSON
    carries the lower-case value.
    """

    NONE = "none"  # nothing was appraised
    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"


# Tiers of a trustworthiness value (AR4SI §2.3.1): 0 none, 2-31 affirming, 32-95 warning, 96-127 contraindicated.
TIER: dict[str, int] = {EarStatus.NONE: 0, EarStatus.AFFIRMING: 2, EarStatus.WARNING: 32, EarStatus.CONTRAINDICATED: 96}
# From best to worst; "none" appears only when nothing was appraised.
STATUS_ORDER = (EarStatus.AFFIRMING, EarStatus.WARNING, EarStatus.CONTRAINDICATED)
SEVERITY_STATUS = {"info": "affirming", "warning": "warning", "error": "contraindicated"}


# Scalars first, by exact type: a result holds thousands of them, and ``isinstance`` against
# ``typing.Mapping`` goes through the ABC machinery each time.
_SCALARS = frozenset({str, int, float, bool, type(None)})
# Most objects of a result (an event, a register row) hold scalars only: whether they do is asked
# in C (``all(map(_is_scalar, map(type, values)))``), and such an object is then copied whole.
_is_scalar = _SCALARS.__contains__


def _copy(value: Any) -> dict[str, Any]:
    """A new dict of a dict's or a mapping proxy's items (``dict(proxy)`` takes the slow, key by key
    way; a proxy's ``copy()`` is its dict's)."""
    if type(value) is dict:
        return value.copy()
    try:
        copied = value.copy()  # a proxy's mapping need not be a dict, nor have copy()
    except AttributeError:
        return dict(value)
    return copied if type(copied) is dict else dict(value)


def _frozen(value: Any) -> Any:
    """A JSON value made read-only all the way down: objects as mapping proxies, arrays as tuples."""
    t = type(value)
    if t in _SCALARS:
        return value
    scalars = _SCALARS
    if t is dict or t is MappingProxyType:
        if all(map(_is_scalar, map(type, value.values()))):
            return MappingProxyType(_copy(value))
        return MappingProxyType({k: v if type(v) in scalars else _frozen(v) for k, v in value.items()})
    if isinstance(value, abc.Mapping):
        return MappingProxyType({k: v if type(v) in scalars else _frozen(v) for k, v in value.items()})
    if t is list or t is tuple or isinstance(value, (list, tuple)):
        if all(map(_is_scalar, map(type, value))):
            return tuple(value)
        return tuple([v if type(v) in scalars else _frozen(v) for v in value])
    return value


def _thawed(value: Any) -> Any:
    """The plain JSON value (dicts and lists) of a :func:`_frozen` one."""
    t = type(value)
    if t in _SCALARS:
        return value
    scalars = _SCALARS
    if t is MappingProxyType or t is dict:
        if all(map(_is_scalar, map(type, value.values()))):
            return _copy(value)
        return {k: v if type(v) in scalars else _thawed(v) for k, v in value.items()}
    if isinstance(value, abc.Mapping):
        return {k: v if type(v) in scalars else _thawed(v) for k, v in value.items()}
    if t is tuple or isinstance(value, tuple):
        if all(map(_is_scalar, map(type, value))):
            return list(value)
        return [v if type(v) in scalars else _thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class Result:
    """The outcome of :func:`tsmr.appraisal.appraise`: JSON-ready through :meth:`to_dict`.

    A result is immutable: the sequences are tuples and the mappings read-only
    (:class:`types.MappingProxyType`), down to the JSON values of rows, events
    and claims.  Lists and dicts given to the constructor are converted so.
    """

    status: EarStatus
    kind: str | None  # evidence kind (tdx, snp, cca, tpm), None if the evidence could not be read
    nonce: str  # hex, the bundle's
    findings: tuple[Finding, ...]  # worst first
    trustworthiness: Mapping[str, int]  # AR4SI vector: claim -> value
    registers: tuple[Mapping[str, Any], ...] = ()  # register, bank, signed, replayed, status, explanation, reference
    # proven runtime-log events by domain
    events: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    unproven: tuple[Mapping[str, Any], ...] = ()  # runtime-log events nothing signed proves, with why
    claims: Mapping[str, Any] = field(default_factory=dict)  # the evidence's claims as JSON values
    quirks: tuple[str, ...] = ()  # log quirks applied during replay
    policy_id: str | None = None
    refvals_id: str | None = None

    def __post_init__(self) -> None:
        # A frozen dataclass sets its own fields here only: once, before anyone holds the result.
        set_ = object.__setattr__
        set_(self, "status", EarStatus(self.status))
        set_(self, "findings", tuple(self.findings))
        set_(self, "trustworthiness", MappingProxyType(dict(self.trustworthiness)))
        for name in ("registers", "events", "unproven", "claims"):
            set_(self, name, _frozen(getattr(self, name)))
        set_(self, "quirks", tuple(self.quirks))

    @property
    def ok(self) -> bool:
        return self.status == EarStatus.AFFIRMING

    def finding_ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON values (new dicts and lists, which the caller may change)."""
        return {"status": str(self.status), "kind": self.kind, "nonce": self.nonce,
                "findings": [f.to_dict() for f in self.findings], "trustworthiness": dict(self.trustworthiness),
                "registers": _thawed(self.registers), "events": _thawed(self.events),
                "unproven": _thawed(self.unproven), "claims": _thawed(self.claims),
                "quirks": list(self.quirks), "policy_id": self.policy_id, "refvals_id": self.refvals_id}


# A JSON value made read-only all the way down (as a Result holds it), from new containers: what it
# returns shares no dict or list with the value given, so no one can change it.  (The function itself,
# not a wrapper: appraise() freezes each runtime event with it.)
frozen_json = _frozen


def result_of_frozen(frozen: Mapping[str, Any], **fields: Any) -> Result:
    """A :class:`Result` of ``fields`` and of ``frozen``, fields whose values :func:`frozen_json` made
    (tuples and mapping proxies of them too): those are taken as they are instead of being frozen again.

    For values that are read-only already and shared between results (the runtime events an
    appraisal keeps with a replay): copying them again for every result would protect nothing.
    Only ``events`` and ``unproven`` may be given so.
    """
    if not set(frozen) <= {"events", "unproven"}:
        raise ValueError(f"not a field that may be given frozen: {sorted(set(frozen) - {'events', 'unproven'})}")
    result = Result(**fields)
    for name, value in frozen.items():
        object.__setattr__(result, name, value)
    return result
