"""What a verifier trusts: :class:`TrustAnchors`, one named field per anchor or piece of collateral.

The anchors are values, not files: :func:`tsmr.system.trust.load_anchors` reads
them from the files the command line and the service's settings name.  A field
left unset means the verifier has no such anchor; :func:`tsmr.evidence.verify`
then fails evidence that needs it with :class:`TrustAnchorMissing` (TDX is the
exception: without ``tdx_root`` the shipped Intel SGX Root CA anchors it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ..errors import InputError

__all__ = ["TrustAnchors", "TrustAnchorMissing"]


class TrustAnchorMissing(InputError):
    """The verifier was not given the trust anchors this kind of evidence needs (its configuration, not the evidence)."""


@dataclass(frozen=True, kw_only=True)
class TrustAnchors:
    """The verifier's trust anchors and collateral, per kind of evidence.

    * TDX: ``tdx_root``, an X.509 certificate that replaces the shipped Intel
      SGX Root CA (for test chains such as the emulator's); ``tdx_collateral``,
      a :class:`tsmr.evidence.tdx.Collateral` (CRLs, TCB info, QE identity).
    * SEV-SNP: ``snp_ark``, the trusted AMD Root Key (DER or PEM bytes, or an
      X.509 certificate): the only anchor of a report, never taken from the
      guest; ``snp_ask`` and ``snp_vcek``, the intermediate and the signing
      certificate when the evidence's certificate table does not carry them;
      ``snp_crl``, AMD's CRL (from :func:`tsmr.evidence.snp.load_crl`), which the
      ARK must have signed.
    * Arm CCA: ``cca_cpak``, the platform attestation key (a public key or a JWK).
    * TPM: ``tpm_aks``, enrolled attestation keys (public keys);
      ``tpm_cas``, CA certificates an AK certificate in the evidence must chain to.
    """

    tdx_root: Any = None
    tdx_collateral: Any = None
    snp_ark: Any = None
    snp_ask: Any = None
    snp_vcek: Any = None
    snp_crl: Any = None
    cca_cpak: Any = None
    tpm_aks: tuple[Any, ...] = ()
    tpm_cas: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        # Frozen means frozen: lists given for the sequences become tuples.
        object.__setattr__(self, "tpm_aks", tuple(self.tpm_aks))
        object.__setattr__(self, "tpm_cas", tuple(self.tpm_cas))

    def given(self) -> list[str]:
        """The names of the anchors set, sorted (what a log line may say of the verifier's trust)."""
        return sorted(f.name for f in fields(self) if getattr(self, f.name) not in (None, ()))

    def with_tpm_aks(self, *keys: Any) -> "TrustAnchors":
        """These anchors with more enrolled TPM attestation keys."""
        return replace(self, tpm_aks=(*self.tpm_aks, *keys))
