"""Trust anchors and collateral from files, keyed as the evidence verifiers take them.

Shared by the command line (``tsmr quote verify``, ``tsmr verify``, ``tsmr appraise``) and the
verifier service's settings, so that a path means the same thing everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError, ParseError

__all__ = ["load_trust", "collateral_dir", "certificates", "read_file"]


def read_file(path: str | None, what: str) -> bytes:
    """The bytes of ``path``, or an InputError naming ``what``.

    Read by :func:`tsmr.evidence.limits.read_input`: bounded in size
    (``TSMR_MAX_INPUT``), and a FIFO without a writer is given up after a timeout.
    """
    from .limits import read_input

    if path is None:
        raise InputError(f"{what} is needed for this evidence")
    return read_input(path, what)


_read = read_file


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


def certificates(path: str) -> dict[str, Any]:
    """SEV-SNP certificates from a directory (vcek/vlek, ask, ark files, or a KDS cert_chain) or a certificate table.

    An ARK from a directory is the caller's choice and is trusted; an ARK inside
    a certificate table (the guest's ``auxblob``) is not: give ``--ark`` for it.
    """
    from ..evidence import snp

    out: dict[str, Any] = {}
    p = Path(path)
    if p.is_dir():
        for entry in sorted(p.iterdir()):
            name = entry.name.lower()
            if not entry.is_file():
                continue
            if "cert_chain" in name or "ask_ark" in name:
                out["ask"], out["ark"] = snp.split_chain(read_file(str(entry), "the SEV-SNP certificate chain"))
            for role in ("vcek", "vlek", "ask", "ark"):
                if name.startswith(role) and "ask_ark" not in name:
                    out["vcek" if role == "vlek" else role] = read_file(str(entry), f"the SEV-SNP {role.upper()}")
        if not out:
            raise InputError(f"SEV-SNP certificates {path}: no vcek/vlek, ask, ark or cert_chain file there")
        return out
    raw = _read(path, "the SEV-SNP certificates")
    try:
        table = {e.name: e.data for e in snp.parse_cert_table(raw)}
    except ParseError as exc:
        raise InputError(f"SEV-SNP certificates {path}: neither a directory nor an SEV-SNP certificate table ({exc})") from None
    if "vcek" in table or "vlek" in table:
        out["vcek"] = table.get("vcek") or table["vlek"]
    if "ask" in table:
        out["ask"] = table["ask"]
    if "ark" in table:
        out["table_ark"] = table["ark"]
    return out


def load_trust(*, trust_root: str | None = None, collateral: str | None = None, vcek: str | None = None,
               ask: str | None = None, ark: str | None = None, cpak: str | None = None,
               certs: str | None = None, tpm_ak: Sequence[str] = (), tpm_ca: Sequence[str] = (),
               crl: str | None = None) -> dict[str, Any]:
    """Trust anchors and collateral from the command line, keyed as the verifiers take them.

    ``tpm_ak`` are files of enrolled TPM attestation keys (public key, TPM2B_PUBLIC
    or AK certificate), ``tpm_ca`` files of CA certificates (PEM, possibly several
    in one file) that AK certificates in evidence must chain to.
    """
    trust: dict[str, Any] = {}
    if tpm_ak:
        from ..evidence import tpm

        trust["tpm_aks"] = [tpm.load_ak_anchor(read_file(p, "the TPM attestation key"), f"TPM AK {p}") for p in tpm_ak]
    if tpm_ca:
        from cryptography import x509

        cas: list[Any] = []
        for p in tpm_ca:
            raw = read_file(p, "the TPM CA certificate")
            try:
                cas.extend(x509.load_pem_x509_certificates(raw) if b"-----BEGIN" in raw
                           else [x509.load_der_x509_certificate(raw)])
            except ValueError as exc:
                raise InputError(f"TPM CA {p}: not a PEM or DER certificate ({exc})") from None
        trust["tpm_cas"] = cas
    if trust_root:
        from cryptography import x509

        try:
            trust["trust_root"] = x509.load_pem_x509_certificate(_read(trust_root, "the TDX trust root"))
        except ValueError as exc:
            raise InputError(f"TDX trust root {trust_root}: not a PEM certificate ({exc})") from None
    if collateral:
        from ..evidence import tdx

        try:
            if os.path.isdir(collateral):
                trust["collateral"] = tdx.Collateral.from_pcs(**collateral_dir(collateral))
            else:
                trust["collateral"] = tdx.Collateral.from_json(json.loads(_read(collateral, "the TDX collateral")))
        except ValueError as exc:
            raise InputError(f"TDX collateral {collateral}: {exc}") from None
    if certs:
        for name, value in certificates(certs).items():
            trust.setdefault(name, value)
    if vcek:
        trust["vcek"] = _read(vcek, "the SEV-SNP VCEK")
    if ask:
        if ark:
            trust["ask"] = _read(ask, "the SEV-SNP ASK")
        else:  # the KDS cert_chain: ASK then ARK
            from ..evidence import snp

            trust["ask"], trust["ark"] = snp.split_chain(_read(ask, "the SEV-SNP ASK"))
    if ark:
        trust["ark"] = _read(ark, "the SEV-SNP ARK")
    if crl:  # AMD's CRL for SEV-SNP: decoded here, checked against the ARK when a report is verified
        from ..errors import EvidenceError
        from ..evidence import snp

        try:
            trust["snp_crl"] = snp.load_crl(_read(crl, "the SEV-SNP CRL"))
        except EvidenceError as exc:
            raise InputError(f"SEV-SNP CRL {crl}: {exc}") from None
    if cpak:
        raw = _read(cpak, "the CCA platform key")
        if raw.lstrip()[:1] == b"{":
            trust["cpak"] = json.loads(raw)
        else:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                trust["cpak"] = load_pem_public_key(raw)
            except ValueError as exc:
                raise InputError(f"CCA platform key {cpak}: not a PEM public key or JWK ({exc})") from None
    return trust


