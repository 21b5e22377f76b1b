"""Evidence (quotes, reports, tokens): pure parsers and verifiers, one module per TEE.

Every verifier takes the time, the expected nonce, trust anchors and collateral as
parameters, raises an :class:`tsmr.errors.EvidenceError` subclass whose ``check``
names the failed check, and returns typed claims when everything holds.
"""
