"""Trust anchors and collateral from files: :func:`load_anchors` makes the verifier's :class:`TrustAnchors`.

The one place that turns the trust options of the command line (``tsmr quote
verify``, ``tsmr verify``, ``tsmr appraise``, ``tsmr serve``) and the service's
settings into anchors, so that a path means the same thing everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..errors import EvidenceError, InputError, ParseError
from ..evidence import snp, tdx, tpm
from ..evidence.anchors import TrustAnchors
from .inputs import read_input

__all__ = ["load_anchors", "collateral_dir", "certificates", "read_file", "SNP_CERT_FILES"]


def read_file(path: str | None, what: str) -> bytes:
    """The bytes of ``path``, or an InputError naming ``what``.

    Read by :func:`tsmr.system.inputs.read_input`: bounded in size
    (``TSMR_MAX_INPUT``), and a FIFO without a writer is given up after a timeout.
    """
    if path is None:
        raise InputError(f"{what} is needed for this evidence")
    return read_input(path, what)



# Intel PCS responses in a directory, by role: (words in the file name, whether it is an issuer chain).
_PCS_ROLES = {
    "tcb_info_response": (("tcbinfo", "tcb_info"), False),
    "tcb_info_issuer_chain": (("tcbinfo", "tcb_info"), True),
    "pck_crl": (("pckcrl", "pck_crl"), False),
    "pck_crl_issuer_chain": (("pckcrl", "pck_crl"), True),
    "qe_identity_response": (("qeidentity", "qe_identity", "enclaveidentity"), False),
    "qe_identity_issuer_chain": (("qeidentity", "qe_identity", "enclaveidentity"), True),
    "root_ca_crl": (("rootcrl", "root_ca_crl", "rootcacrl"), False),
}


def collateral_dir(path: str) -> dict[str, bytes]:
    """Intel PCS responses from a directory, keyed as ``tdx.Collateral.from_pcs`` takes them.

    Files are recognised by name (case and ``-``/``_`` ignored): ``tcb_info`` /
    ``tcbInfo``, ``pck_crl`` / ``pckcrl``, ``qe_identity`` / ``qeIdentity`` /
    ``enclaveIdentity``, ``root_ca_crl`` / ``rootcrl``, each with an
    ``..._issuer_chain`` (``.pem``) beside it.
    """
    found: dict[str, list[Path]] = {}
    for entry in sorted(Path(path).iterdir()):
        if not entry.is_file():
            continue
        name = entry.name.lower().replace("-", "_")
        flat = name.replace("_", "")
        chain = "chain" in name
        for role, (words, is_chain) in _PCS_ROLES.items():
            if is_chain == chain and any(w.replace("_", "") in flat for w in words):
                found.setdefault(role, []).append(entry)
    for role, paths in found.items():
        if len(paths) > 1:
            raise InputError(f"collateral {path}: more than one {role} ({', '.join(p.name for p in paths)})")
    needed = ("tcb_info_response", "tcb_info_issuer_chain", "pck_crl", "pck_crl_issuer_chain")
    missing = [r for r in needed if r not in found]
    if missing:
        raise InputError(f"collateral {path}: no {', '.join(missing)} file (see 'tsmr quote verify --help' for the file names)")
    return {role: read_file(str(paths[0]), f"the collateral's {role}") for role, paths in found.items()}


# The file names a --certs directory is searched for (lower case; what follows the prefix is free:
# vcek.pem, vcek.der, ark_milan.pem), by the certificate they hold.
SNP_CERT_FILES = {
    "vcek": ("vcek*", "vlek*"),
    "ask": ("ask*", "cert_chain*", "ask_ark*"),
    "ark": ("ark*", "cert_chain*", "ask_ark*"),
}


def _looked_for(role: str) -> str:
    return " or ".join(SNP_CERT_FILES[role])


def certificates(path: str, *, require: Sequence[str] = ()) -> dict[str, Any]:
    """SEV-SNP certificates from a directory (vcek/vlek, ask, ark files, or a KDS cert_chain) or a certificate table.

    Returns ``{"vcek": ..., "ask": ..., "ark": ...}`` (those found).  An ARK
    from a directory is the caller's choice and is trusted; a certificate table
    (the guest's ``auxblob``) gives its VCEK and ASK only: its ARK came from the
    guest and is left out.  A directory that lacks a certificate named in
    ``require`` is an InputError naming the file names looked for
    (:data:`SNP_CERT_FILES`).
    """
    out: dict[str, Any] = {}
    p = Path(path)
    if p.is_dir():
        files = sorted(e for e in p.iterdir() if e.is_file())
        for entry in files:
            name = entry.name.lower()
            if "cert_chain" in name or "ask_ark" in name:
                out["ask"], out["ark"] = snp.split_chain(read_file(str(entry), "the SEV-SNP certificate chain"))
            for role in ("vcek", "vlek", "ask", "ark"):
                if name.startswith(role) and "ask_ark" not in name:
                    out["vcek" if role == "vlek" else role] = read_file(str(entry), f"the SEV-SNP {role.upper()}")
        missing = [r for r in ("vcek", "ask", "ark") if r not in out and (r in require or not out)]
        if missing:
            there = ", ".join(e.name for e in files[:8]) + (", ..." if len(files) > 8 else "") if files else "nothing"
            raise InputError(f"SEV-SNP certificates {path}: no {', '.join(m.upper() for m in missing)} there: looked "
                             f"for files named {'; '.join(f'{m.upper()}: {_looked_for(m)}' for m in missing)} "
                             f"(found: {there})")
        return out
    raw = read_file(path, "the SEV-SNP certificates")
    try:
        table = {e.name: e.data for e in snp.parse_cert_table(raw)}
    except ParseError as exc:
        raise InputError(f"SEV-SNP certificates {path}: neither a directory nor an SEV-SNP certificate table ({exc})") from None
    if "vcek" in table or "vlek" in table:
        out["vcek"] = table.get("vcek") or table["vlek"]
    if "ask" in table:
        out["ask"] = table["ask"]
    return out


def load_anchors(*, trust_root: str | None = None, collateral: str | None = None, vcek: str | None = None,
                 ask: str | None = None, ark: str | None = None, cpak: str | None = None,
                 certs: str | None = None, tpm_ak: Sequence[str] = (), tpm_ca: Sequence[str] = (),
                 crl: str | None = None, certs_complete: bool = False) -> TrustAnchors:
    """The verifier's :class:`TrustAnchors` from the files the trust options name.

    ``trust_root`` (PEM) replaces the Intel SGX Root CA; ``collateral`` is a
    PCCS-style JSON document or a directory of Intel PCS responses
    (:func:`collateral_dir`).  SEV-SNP: ``vcek``, ``ask`` (alone: a KDS
    cert_chain, ASK then ARK), ``ark``, or ``certs`` (:func:`certificates`;
    the options win over it), and ``crl``, AMD's CRL.  ``certs_complete`` says
    no certificate table comes with the evidence, so a ``certs`` directory must
    hold every certificate the options do not give.  ``cpak`` is the CCA
    platform key (PEM public key or JWK).  ``tpm_ak`` are files of enrolled TPM
    attestation keys (public key, TPM2B_PUBLIC or AK certificate), ``tpm_ca``
    files of CA certificates (PEM, possibly several in one file) that AK
    certificates in evidence must chain to.
    """
    fields: dict[str, Any] = {}
    if tpm_ak:
        fields["tpm_aks"] = tuple(tpm.load_ak_anchor(read_file(p, "the TPM attestation key"), f"TPM AK {p}")
                                  for p in tpm_ak)
    if tpm_ca:
        cas: list[Any] = []
        for p in tpm_ca:
            raw = read_file(p, "the TPM CA certificate")
            try:
                cas.extend(x509.load_pem_x509_certificates(raw) if b"-----BEGIN" in raw
                           else [x509.load_der_x509_certificate(raw)])
            except ValueError as exc:
                raise InputError(f"TPM CA {p}: not a PEM or DER certificate ({exc})") from None
        fields["tpm_cas"] = tuple(cas)
    if trust_root:
        try:
            fields["tdx_root"] = x509.load_pem_x509_certificate(read_file(trust_root, "the TDX trust root"))
        except ValueError as exc:
            raise InputError(f"TDX trust root {trust_root}: not a PEM certificate ({exc})") from None
    if collateral:
        try:
            if os.path.isdir(collateral):
                fields["tdx_collateral"] = tdx.Collateral.from_pcs(**collateral_dir(collateral))
            else:
                fields["tdx_collateral"] = tdx.Collateral.from_json(json.loads(read_file(collateral, "the TDX collateral")))
        except ValueError as exc:
            raise InputError(f"TDX collateral {collateral}: {exc}") from None
    snp_certs: dict[str, Any] = {}
    if vcek:
        snp_certs["vcek"] = read_file(vcek, "the SEV-SNP VCEK")
    if ask:
        if ark:
            snp_certs["ask"] = read_file(ask, "the SEV-SNP ASK")
        else:  # the KDS cert_chain: ASK then ARK
            snp_certs["ask"], snp_certs["ark"] = snp.split_chain(read_file(ask, "the SEV-SNP ASK"))
    if ark:
        snp_certs["ark"] = read_file(ark, "the SEV-SNP ARK")
    if certs:
        # The ARK never comes from the guest, so a directory must hold it unless --ark gives it.
        needed = [r for r in ("vcek", "ask", "ark") if r not in snp_certs and (certs_complete or r == "ark")]
        for name, value in certificates(certs, require=needed).items():
            snp_certs.setdefault(name, value)
    fields.update({f"snp_{name}": value for name, value in snp_certs.items()})
    if crl:  # AMD's CRL for SEV-SNP: decoded here, checked against the ARK when a report is verified
        try:
            fields["snp_crl"] = snp.load_crl(read_file(crl, "the SEV-SNP CRL"))
        except EvidenceError as exc:
            raise InputError(f"SEV-SNP CRL {crl}: {exc}") from None
    if cpak:
        raw = read_file(cpak, "the CCA platform key")
        if raw.lstrip()[:1] == b"{":
            fields["cca_cpak"] = json.loads(raw)
        else:
            try:
                fields["cca_cpak"] = load_pem_public_key(raw)
            except ValueError as exc:
                raise InputError(f"CCA platform key {cpak}: not a PEM public key or JWK ({exc})") from None
    return TrustAnchors(**fields)
