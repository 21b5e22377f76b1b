"""One entry point to verify evidence of any kind: :func:`verify`.

Every caller (``tsmr quote verify``, ``tsmr verify``, ``tsmr appraise``, the
verifier service) verifies through here, so that two rules hold once:

* **The nonce rule.**  ``nonce=None`` means freshness is not checked; any bytes
  (even none) are checked.  A TDX quote's REPORTDATA, an SEV-SNP report's
  REPORT_DATA and a CCA realm challenge are 64 bytes: the nonce is zero-padded
  to that size, as configfs-tsm pads a shorter inblob.  An SEV-SNP report made
  through an SVSM service (``manifest`` given) binds
  ``SHA-512(nonce || manifest)`` instead.  A TPM quote's extraData is the nonce
  as it is.
* **The guest's own ARK is never trusted.**  An SEV-SNP certificate table from
  the guest (``auxblob``) may supply the VCEK and the ASK the verifier lacks;
  its ARK is used only to build the chain, and must be the verifier's
  ``snp_ark``.  Without ``snp_ark`` an SEV-SNP report does not verify.

The other anchors: TDX quotes chain to the Intel SGX Root CA (or ``tdx_root``),
CCA tokens to ``cca_cpak``, TPM quotes to an enrolled AK or a configured CA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from ..algorithms import HashAlg
from ..errors import EvidenceError, InputError
from .anchors import TrustAnchorMissing, TrustAnchors

__all__ = ["verify", "VerifiedEvidence", "TpmQuoteParts", "KINDS", "REPORT_DATA_SIZE"]

KINDS = ("tdx", "snp", "cca", "tpm")
REPORT_DATA_SIZE = 64  # TDX REPORTDATA, SEV-SNP REPORT_DATA, the CCA realm challenge


@dataclass(frozen=True)
class TpmQuoteParts:
    """What a TPM quote carries besides its TPMS_ATTEST: the signature, the key, and the quoted values.

    ``pcrs`` (bank -> PCR index -> value), when given, must be what the quote's
    pcrDigest covers; ``ak_cert`` and ``ak_chain`` (DER or PEM) let a configured
    TPM CA vouch for ``ak_public``.
    """

    signature: bytes
    ak_public: bytes
    pcrs: Mapping[Any, Mapping[int, bytes]] | None = None  # banks by HashAlg (or its name or TPM_ALG_ID)
    ak_cert: bytes | None = None
    ak_chain: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class VerifiedEvidence:
    """What :func:`verify` established: the kind, the verifier's claims, the signed registers, the nonce."""

    kind: str
    claims: Any
    signed: dict[str, dict[HashAlg, bytes]]  # register -> bank -> value, as the evidence signs them
    nonce: bytes | None  # what the evidence was checked to be bound to (None: not checked)


def _padded(nonce: bytes | None, kind: str) -> bytes | None:
    if nonce is None:
        return None
    if len(nonce) > REPORT_DATA_SIZE:  # no such evidence can be bound to it
        raise EvidenceError(f"the nonce is {len(nonce)} bytes; {kind} evidence binds at most {REPORT_DATA_SIZE}",
                            check=f"{kind}.report_data")
    return bytes(nonce).ljust(REPORT_DATA_SIZE, b"\0")


def verify(
    kind: str,
    data: bytes,
    *,
    nonce: bytes | None,
    now: datetime,
    anchors: TrustAnchors,
    allow_debug: bool = False,
    auxblob: bytes | None = None,
    manifest: bytes | None = None,
    tpm: TpmQuoteParts | None = None,
) -> VerifiedEvidence:
    """Verify evidence of ``kind`` (``tdx``, ``snp``, ``cca``, ``tpm``) bound to ``nonce`` at time ``now``.

    ``data`` is the TDX quote, the SEV-SNP report, the CCA token, or the TPM
    quote's TPMS_ATTEST (with ``tpm`` carrying the rest).  ``auxblob`` is an
    SEV-SNP report's certificate table; ``manifest`` the SVSM service manifest
    it binds.  A debuggable guest fails ``tdx.debug`` / ``snp.policy.debug`` /
    ``cca.debug`` unless ``allow_debug``.

    Raises the verifier's :class:`~tsmr.errors.EvidenceError` when the
    evidence does not verify, :class:`~tsmr.errors.ParseError` when it cannot
    be read, and :class:`TrustAnchorMissing` (an :class:`~tsmr.errors.InputError`)
    when ``anchors`` lack what this kind needs.
    """
    signed: dict[str, dict[HashAlg, bytes]] = {}
    claims: Any
    if kind == "tdx":
        from . import tdx

        claims = tdx.verify_quote(data, now=now, report_data=_padded(nonce, kind), trust_root=anchors.tdx_root,
                                  collateral=anchors.tdx_collateral, allow_debug=allow_debug)
        signed = {name: {HashAlg.SHA384: value} for name, value in claims.registers.items()}
    elif kind == "snp":
        from . import snp

        vcek, ask, chain_ark = anchors.snp_vcek, anchors.snp_ask, anchors.snp_ark
        if auxblob is not None:
            # The guest's certificate table supplies what the verifier did not; its ARK came from
            # the guest too, so it only builds the chain, which must end at the verifier's ARK.
            table = {e.name: e.data for e in snp.parse_cert_table(auxblob)}
            vcek = vcek if vcek is not None else table.get("vcek", table.get("vlek"))
            ask = ask if ask is not None else table.get("ask")
            if anchors.snp_ark is not None and "ark" in table:
                chain_ark = table["ark"]
        missing = [n for n, v in (("vcek", vcek), ("ask", ask), ("ark", anchors.snp_ark)) if v is None]
        if missing:
            raise TrustAnchorMissing(f"an SEV-SNP report needs the {', '.join(missing)} certificate(s): give "
                                     f"{', '.join('--' + m for m in missing)} or --certs (snp_{missing[0]} of the "
                                     "trust anchors); the trusted ARK is never taken from the guest's certificate "
                                     "table")
        if manifest is not None:  # an SVSM service: REPORT_DATA = SHA-512(nonce || manifest)
            if nonce is None:
                raise InputError("an SVSM report binds SHA-512(nonce || manifest): the nonce is needed")
            binding: bytes | None = snp.svsm_report_data(nonce, manifest)
        else:
            binding = _padded(nonce, kind)
        claims = snp.verify_report(data, vcek=vcek, ask=ask, ark=chain_ark, trusted_arks=[anchors.snp_ark],
                                   report_data=binding, now=now, crl=anchors.snp_crl, allow_debug=allow_debug)
        signed = {"measurement": {HashAlg.SHA384: claims.measurement}}  # the launch digest; SNP has no RTMRs
    elif kind == "cca":
        from . import cca

        if anchors.cca_cpak is None:
            raise TrustAnchorMissing("a CCA token needs the platform attestation key (cca_cpak; --cpak on the command line)")
        claims = cca.verify_token(data, cpak=anchors.cca_cpak, challenge=_padded(nonce, kind), allow_debug=allow_debug)
        alg = {"sha-256": HashAlg.SHA256, "sha-512": HashAlg.SHA512, "sha-384": HashAlg.SHA384}.get(
            str(claims.hash_algorithm))
        if alg is not None:
            signed = {name: {alg: value} for name, value in claims.registers.items() if len(value) == alg.digest_size}
    elif kind == "tpm":
        from . import tpm as tpm_mod

        if tpm is None:
            raise InputError("a TPM quote needs its signature and attestation key")
        claims = tpm_mod.verify_quote(data, tpm.signature, tpm.ak_public, nonce=nonce,
                                      pcrs=tpm.pcrs or None)
        # The quote's AK signed it; only the verifier's own anchors say it is a TPM's.
        tpm_mod.check_ak_trusted(tpm.ak_public, now=now, enrolled=anchors.tpm_aks, cas=anchors.tpm_cas,
                                 cert=tpm.ak_cert, chain=list(tpm.ak_chain))
        for alg, vals in (tpm.pcrs or {}).items():
            for i, v in vals.items():
                signed.setdefault(f"pcr{i}", {})[alg] = v
    else:
        raise InputError(f"unknown evidence kind {kind!r} (kinds: {', '.join(KINDS)})")
    return VerifiedEvidence(kind, claims, signed, nonce)

