"""The emulator's evidence, in the real formats, signed under test keys it generates.

One module per kind: :mod:`.tdx` (TDX Quote v4 and its PCS collateral), :mod:`.cca`
(Arm CCA attestation tokens) and :mod:`.snp` (SEV-SNP attestation reports with their
certificate table).  They belong to the emulator backend: they read the emulated
registers and keep their keys in its state directory.  The verifiers
(:mod:`tsmr.evidence`) know nothing of them, and they import nothing of the verifiers:
a verifier accepts this evidence only when told to trust the test key.
"""
