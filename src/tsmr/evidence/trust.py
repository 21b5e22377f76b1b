"""Trust anchors and collateral from files, keyed as the evidence verifiers take them.

Shared by the command line (``tsmr quote verify``, ``tsmr verify``, ``tsmr appraise``) and the
verifier service's settings, so that a path means the same thing everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, ParseError

__all__ = ["load_trust", "collateral_dir", "certificates", "read_file"]


def read_file(path: str | None, what: str) -> bytes:
    """The bytes of ``path``, or an InputError naming ``what``."""
    if path is None:
        raise InputError(f"{what} is needed for this evidence")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None


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
    return {role: paths[0].read_bytes() for role, paths in found.items()}


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
                out["ask"], out["ark"] = snp.split_chain(entry.read_bytes())
            for role in ("vcek", "vlek", "ask", "ark"):
                if name.startswith(role) and "ask_ark" not in name:
                    out["vcek" if role == "vlek" else role] = entry.read_bytes()
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
               certs: str | None = None) -> dict[str, Any]:
    """Trust anchors and collateral from the command line, keyed as the verifiers take them."""
    trust: dict[str, Any] = {}
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


