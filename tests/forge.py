"""What an attacker can make without any TPM: a fresh key and a TPM2_Quote it signs over any PCR values.

The structures are built byte by byte (TPM 2.0 Part 2: TPMS_ATTEST §10.12.12, TPMT_SIGNATURE
§11.3.4, TPMT_PUBLIC §12.2.4), so that the signature, nonce and PCR digest all verify: only the
verifier's own trust in the key can tell the quote from a real one.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tsmr.algorithms import HashAlg
from tsmr.evidence import tpm
from tsmr.evidence.bundle import make_bundle


def _tpm2b(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def ecc_public(key: ec.EllipticCurvePublicKey) -> bytes:
    """TPM2B_PUBLIC of a P-256 signing key, as a TPM would describe it."""
    n = key.public_numbers()
    body = (struct.pack(">HHI", tpm.TPM_ALG_ECC, HashAlg.SHA256, 0x00050072) + _tpm2b(b"")
            + struct.pack(">H", tpm.TPM_ALG_NULL) + struct.pack(">HH", tpm.TPM_ALG_ECDSA, HashAlg.SHA256)
            + struct.pack(">H", 0x0003) + struct.pack(">H", tpm.TPM_ALG_NULL)
            + _tpm2b(n.x.to_bytes(32, "big")) + _tpm2b(n.y.to_bytes(32, "big")))
    return _tpm2b(body)


def quote(key: ec.EllipticCurvePrivateKey, nonce: bytes, pcrs: Mapping[int, bytes]) -> dict[str, Any]:
    """Bundle evidence: a SHA-256-bank quote over ``pcrs`` and ``nonce``, signed by ``key``."""
    bitmap = bytearray(3)
    for i in pcrs:
        bitmap[i // 8] |= 1 << (i % 8)
    digest = hashlib.sha256(b"".join(pcrs[i] for i in sorted(pcrs))).digest()
    attest = (struct.pack(">IH", tpm.TPM_GENERATED_VALUE, tpm.TPM_ST_ATTEST_QUOTE) + _tpm2b(b"\x00\x0b" + bytes(32))
              + _tpm2b(nonce) + struct.pack(">QIIB", 7, 1, 2, 1) + struct.pack(">Q", 0x1234)
              + struct.pack(">I", 1) + struct.pack(">HB", HashAlg.SHA256, 3) + bytes(bitmap) + _tpm2b(digest))
    r, s = decode_dss_signature(key.sign(attest, ec.ECDSA(hashes.SHA256())))
    sig = struct.pack(">HH", tpm.TPM_ALG_ECDSA, HashAlg.SHA256) + _tpm2b(r.to_bytes(32, "big")) + _tpm2b(s.to_bytes(32, "big"))
    return {"kind": "tpm", "attest": attest.hex(), "signature": sig.hex(), "ak_public": ecc_public(key.public_key()).hex(),
            "pcrs": {"sha256": {str(i): v.hex() for i, v in pcrs.items()}}}


def tpm_bundle(nonce: bytes, pcrs: Mapping[int, bytes] | None = None, *, key: ec.EllipticCurvePrivateKey | None = None,
               logs: list[Mapping[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """A complete bundle over ``nonce`` that verifies under the key it carries (a fresh one by default)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    return make_bundle(nonce=nonce, evidence=quote(key, nonce, pcrs or {0: bytes(32), 16: bytes(32)}), logs=list(logs))


def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
