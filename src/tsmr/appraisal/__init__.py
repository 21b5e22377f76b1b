"""Appraisal of evidence bundles: findings, Rego policies, reference values, per-domain appraisers.

::

    from tsmr.appraisal import appraise, ReferenceValues
    result = appraise(bundle, nonce=issued, now=now, trust=trust, policy=rego_source,
                      reference_values=ReferenceValues.from_json(text))
    result.status          # an EarStatus: "affirming", "warning" or "contraindicated"
    result.finding_ids()   # e.g. ["replay.gap", "freshness.not-checked"]
    result.to_dict()       # JSON-ready

See :mod:`tsmr.appraisal.core` for the steps, the finding catalogue and the
trustworthiness vector, :mod:`tsmr.appraisal.policy` for the policy input and
outputs, :mod:`tsmr.appraisal.refvals` for reference values and
:mod:`tsmr.appraisal.appraisers` for the plugin interface.
"""

from __future__ import annotations

from .core import DEFAULT_POLICY, appraise
from .appraisers import Appraiser, load_appraisers
from .model import EarStatus, Finding, Result
from .policy import check_policy
from .refvals import ReferenceValues, learn

__all__ = ["appraise", "EarStatus", "Finding", "Result", "ReferenceValues", "load_appraisers", "DEFAULT_POLICY",
           "Appraiser", "check_policy", "learn"]
