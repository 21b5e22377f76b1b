"""What an appraisal returns: findings with stable ids, a status, and the AR4SI trustworthiness vector.

The status and vector follow the EAT Attestation Result (EAR) information model
(draft-ietf-rats-ear, AR4SI trustworthiness claims, RFC 9334 terms): each finding
names the trustworthiness claim it affects, and the worst finding sets the status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..findings import Finding, Severity

__all__ = ["Finding", "Severity", "Result", "STATUS_ORDER", "TRUST_CLAIMS", "TIER"]

# AR4SI trustworthiness claims (draft-ietf-rats-ar4si §2.3) by EAR short name.
TRUST_CLAIMS = ("instance-identity", "configuration", "executables", "file-system", "hardware",
                "runtime-opaque", "storage-opaque", "sourced-data")
# Tiers of a trustworthiness value (AR4SI §2.3.1): 0 none, 2-31 affirming, 32-95 warning, 96-127 contraindicated.
TIER = {"none": 0, "affirming": 2, "warning": 32, "contraindicated": 96}
STATUS_ORDER = ("affirming", "warning", "contraindicated")  # "none" appears only when nothing was appraised
SEVERITY_STATUS = {"info": "affirming", "warning": "warning", "error": "contraindicated"}


@dataclass
class Result:
    """The outcome of :func:`tsmr.appraisal.appraise`: JSON-ready through :meth:`to_dict`."""

    status: str  # affirming / warning / contraindicated
    kind: str | None  # evidence kind (tdx, snp, cca, tpm), None if the evidence could not be read
    nonce: str  # hex, the bundle's
    findings: list[Finding]
    trustworthiness: dict[str, int]  # AR4SI vector: claim -> value
    registers: list[dict[str, Any]] = field(default_factory=list)  # register, bank, signed, replayed, status, explanation
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # proven runtime-log events by domain
    unproven: list[dict[str, Any]] = field(default_factory=list)  # runtime-log events nothing signed proves, with why
    claims: dict[str, Any] = field(default_factory=dict)  # the evidence's claims as JSON values
    quirks: list[str] = field(default_factory=list)  # log quirks applied during replay
    policy_id: str | None = None
    refvals_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "affirming"

    def finding_ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "kind": self.kind, "nonce": self.nonce,
                "findings": [f.to_dict() for f in self.findings], "trustworthiness": dict(self.trustworthiness),
                "registers": list(self.registers), "events": dict(self.events), "unproven": list(self.unproven),
                "claims": self.claims,
                "quirks": list(self.quirks), "policy_id": self.policy_id, "refvals_id": self.refvals_id}
