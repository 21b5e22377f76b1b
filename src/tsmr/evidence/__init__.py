"""Evidence (quotes, reports, tokens): pure parsers and verifiers, one module per TEE.

Every verifier takes the time, the expected nonce, trust anchors and collateral as
parameters, raises an :class:`tsmr.errors.EvidenceError` subclass whose ``check``
names the failed check, and returns typed claims when everything holds.  Nothing
here reads files, devices or the environment (:mod:`tsmr.system` does).

:func:`verify` is the one entry point for every kind, with the verifier's
:class:`TrustAnchors` (:mod:`tsmr.evidence.verification`).
"""

from .anchors import TrustAnchorMissing, TrustAnchors
from .verification import TpmQuoteParts, VerifiedEvidence, verify

__all__ = ["verify", "VerifiedEvidence", "TpmQuoteParts", "TrustAnchors", "TrustAnchorMissing"]
