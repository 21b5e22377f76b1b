"""Collateral for the emulator's test chains: TDX TCB info, QE identity and CRLs; an SEV-SNP CRL.

The emulator issues TDX collateral under its test root itself
(:func:`tsmr.backends.emulated_evidence.tdx.emulated_collateral`), with the TCB levels the caller asks for,
so that every TCB status can be reached by real verification.

It also re-signs an emulated quote with another TEE_TCB_SVN (the emulator always reports zeros),
so that the TDX module identity levels can be exercised.

For SEV-SNP, :func:`snp_crl` is what AMD's KDS serves per product: a CRL signed by the ARK
(RSASSA-PSS/SHA-384, as AMD signs), here by the emulator's ARK, listing the serials asked for.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tsmr.evidence import tdx
from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner, _rs, emulated_collateral

_HEADER = 48
_BODY = 584


def collateral_doc(signer: EmulatedTDXSigner, **kw: Any) -> dict[str, Any]:
    """A PCCS-style collateral document for the emulated platform (see tsmr.backends.emulated_evidence.tdx.emulated_collateral)."""
    return emulated_collateral(signer, **kw)


def collateral(signer: EmulatedTDXSigner, **kw: Any) -> tdx.Collateral:
    return tdx.Collateral.from_json(collateral_doc(signer, **kw))


def write_collateral(signer: EmulatedTDXSigner, path: Path, **kw: Any) -> Path:
    path.write_text(json.dumps(collateral_doc(signer, **kw)))
    return path


def quote(signer: EmulatedTDXSigner, *, report_data: bytes, tee_tcb_svn: bytes | None = None,
          td_attributes: bytes = bytes(8), registers: dict[str, bytes] | None = None) -> bytes:
    """An emulated quote; with ``tee_tcb_svn`` the body carries it and the attestation key signs again."""
    q = bytearray(signer.quote(report_data=report_data, registers=registers or {}, td_attributes=td_attributes))
    if tee_tcb_svn is not None:
        assert len(tee_tcb_svn) == 16
        q[_HEADER:_HEADER + 16] = tee_tcb_svn
        sig_at = _HEADER + _BODY + 4  # after header, body and the signature data's length
        q[sig_at:sig_at + 64] = _rs(signer.keys["attestation"], bytes(q[:_HEADER + _BODY]))
        assert struct.unpack_from("<I", q, _HEADER + _BODY)[0] > 64
    return bytes(q)


def snp_crl(sp_dir: Path, *, revoked: Sequence[int] = (), signing_key: Any = None, issuer: x509.Name | None = None,
            now: dt.datetime | None = None, pem: bool = False) -> bytes:
    """A CRL of the emulated SEV-SNP chain in ``sp_dir`` (EmulatedSNPSigner's directory), signed by its ARK.

    ``signing_key`` signs instead of the ARK (a forged CRL), ``issuer`` names another issuer.
    """
    from cryptography.hazmat.primitives.asymmetric import padding

    now = now or dt.datetime.now(dt.timezone.utc)
    ark = x509.load_pem_x509_certificate((sp_dir / "ark.pem").read_bytes())
    key = signing_key or serialization.load_pem_private_key((sp_dir / "private" / "ark.key").read_bytes(), None)
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer or ark.subject)
         .last_update(now - dt.timedelta(hours=1)).next_update(now + dt.timedelta(days=7)))
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(now - dt.timedelta(hours=1)).build())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    crl = b.sign(key, hashes.SHA384(), rsa_padding=pss)
    return crl.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER)
