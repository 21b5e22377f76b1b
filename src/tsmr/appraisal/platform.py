"""Findings about the platform verified evidence came from: TCB status, collateral not given, debug guests.

The evidence verifiers fail what must never pass (a bad signature, a revoked TCB
or key, a debuggable guest unless the caller allows it).  What they let through
is not all equally good, and an appraisal must say so rather than stay silent:

* a TDX platform, quoting enclave or TDX module whose TCB level is short of
  ``UpToDate`` (Intel PCS TCB info v3 and enclave identity v2 statuses) is a
  warning on the AR4SI ``hardware`` claim, with the status and Intel's advisory
  ids in the finding's context (``evidence.tdx.tcb-status``);
* a check that needs collateral the verifier was not given (TDX CRLs, TCB info
  and QE identity; AMD's CRL for SEV-SNP) did not happen, which is a warning on
  ``hardware`` (``evidence.collateral-missing``), never silence;
* a debuggable guest the caller chose to allow is still a warning on
  ``configuration`` (``evidence.debug-allowed``): the host can read and change
  its memory, so the default policy must not affirm it.

:func:`platform_findings` makes these from a verifier's claims alone, so the
command line (``tsmr quote verify``, ``tsmr verify``) and :func:`~tsmr.appraisal.appraise`
say the same thing.
"""

from __future__ import annotations

from typing import Any

from .model import Finding, Severity

__all__ = ["platform_findings", "TDX_TCB_STATUSES", "UP_TO_DATE"]

UP_TO_DATE = "UpToDate"

#: Intel's TCB statuses short of ``UpToDate`` that verification lets through (``Revoked`` fails it),
#: and what each means for the platform (Intel PCS API v4, TCB info ``tcbStatus``).
TDX_TCB_STATUSES = {
    "SWHardeningNeeded": "up to date, but software hardening is needed against known vulnerabilities",
    "ConfigurationNeeded": "up to date, but its configuration must change to mitigate known vulnerabilities",
    "ConfigurationAndSWHardeningNeeded": "up to date, but needs a configuration change and software hardening",
    "OutOfDate": "out of date: a newer TCB recovery fixes known vulnerabilities",
    "OutOfDateConfigurationNeeded": "out of date, and its configuration must change as well",
}

_DEBUG_CHECKS = {"tdx": "tdx.debug", "snp": "snp.policy.debug", "cca": "cca.debug"}
_DEBUG_TEXT = {
    "tdx": "the TD is debuggable (TD_ATTRIBUTES.DEBUG): the host can read and change its memory",
    "snp": "the SEV-SNP guest policy allows debugging: the host can decrypt and change the guest's memory",
    "cca": "the CCA platform is not in the secured lifecycle state: it may be debuggable",
}


def _tdx(claims: Any) -> list[Finding]:
    out: list[Finding] = []
    checks = tuple(getattr(claims, "checks", ()) or ())
    if getattr(claims, "tcb_status", None) is None:
        out.append(Finding(
            "evidence.collateral-missing", Severity.WARNING,
            "no TDX collateral was given: CRLs and TCB status were not checked (the platform may be revoked or "
            "out of date)", "hardware",
            {"kind": "tdx", "not_checked": ["tdx.crl", "tdx.tcb_status", "tdx.qe_identity"]}))
    else:
        missing = [c for c in ("tdx.crl.root", "tdx.qe_identity") if c not in checks]
        if missing:
            what = {"tdx.crl.root": "the root CA CRL", "tdx.qe_identity": "the QE identity"}
            out.append(Finding(
                "evidence.collateral-missing", Severity.WARNING,
                f"the TDX collateral has no {' and no '.join(what[c] for c in missing)}: "
                f"{', '.join(missing)} not checked", "hardware", {"kind": "tdx", "not_checked": missing}))
    statuses = {"platform": getattr(claims, "tcb_status", None), "QE": getattr(claims, "qe_tcb_status", None),
                "TDX module": getattr(claims, "tdx_module_tcb_status", None)}
    short = {part: status for part, status in statuses.items() if status is not None and status != UP_TO_DATE}
    if short:
        advisories = list(getattr(claims, "advisory_ids", ()) or ())
        parts = []
        for part, status in short.items():
            meaning = TDX_TCB_STATUSES.get(status, "a TCB status tsmr does not know")
            parts.append(f"{part} TCB {status} ({meaning})")
        text = "; ".join(parts)
        if advisories:
            text += f"; advisories {', '.join(advisories)}"
        out.append(Finding(
            "evidence.tdx.tcb-status", Severity.WARNING, text, "hardware",
            {"tcb_status": statuses["platform"], "qe_tcb_status": statuses["QE"],
             "tdx_module_tcb_status": statuses["TDX module"], "advisory_ids": advisories}))
    return out


def _snp(claims: Any) -> list[Finding]:
    if getattr(claims, "crl_checked", False):
        return []
    return [Finding("evidence.collateral-missing", Severity.WARNING,
                    "no AMD CRL was given: the VCEK and ASK were not checked for revocation", "hardware",
                    {"kind": "snp", "not_checked": ["snp.crl"]})]


def platform_findings(kind: str | None, claims: Any) -> list[Finding]:
    """What a verifier's claims say about the platform beyond "verified" (see the module docstring).

    ``kind`` is the evidence kind (``tdx``, ``snp``, ``cca``, ``tpm``) and
    ``claims`` what its verifier returned; TPM quotes give no such findings.
    """
    out: list[Finding] = []
    if kind == "tdx":
        out += _tdx(claims)
    elif kind == "snp":
        out += _snp(claims)
    if kind in _DEBUG_CHECKS and getattr(claims, "debug", False):
        out.append(Finding("evidence.debug-allowed", Severity.WARNING, _DEBUG_TEXT[kind] + "; allowed by the verifier's "
                           "configuration", "configuration", {"kind": kind, "check": _DEBUG_CHECKS[kind]}))
    return out
