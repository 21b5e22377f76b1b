"""Quotes made through tsmr on swtpm verify with tsmr's verifier; tampering is rejected."""

from __future__ import annotations

import hashlib

import pytest

from swtpm import Swtpm
from tsmr import HashAlg
from tsmr.errors import EvidenceError, SignatureError
from tsmr.evidence.tpm import verify_quote

pytestmark = pytest.mark.skipif(not Swtpm.available(), reason="swtpm not installed (make test installs it)")


def _pcrs(q) -> dict:  # type: ignore[no-untyped-def,type-arg]
    out: dict = {}  # type: ignore[type-arg]
    for reg, banks in q.pcrs.items():
        for alg, value in banks.items():
            out.setdefault(alg, {})[int(reg[3:])] = value
    return out


def test_quote_verifies_and_tampering_fails() -> None:
    from tsmr.backends.tpm import TpmRegisterSet

    with Swtpm() as tpm, TpmRegisterSet(tpm.tcti) as rs:
        rs.extend("pcr16", {HashAlg.SHA256: hashlib.sha256(b"x").digest()})
        nonce = b"\x5a" * 32
        q = rs.quote(nonce, [0, 7, 16])
        claims = verify_quote(q.attest, q.signature, q.ak_public, nonce=nonce, pcrs=_pcrs(q))
        assert claims.nonce == nonce and claims.pcr_digest_checked
        with pytest.raises(EvidenceError) as info:
            verify_quote(q.attest, q.signature, q.ak_public, nonce=b"\x00" * 32)
        assert info.value.check == "tpm.nonce"
        altered = _pcrs(q)
        altered[HashAlg.SHA256][16] = bytes(32)
        with pytest.raises(EvidenceError) as info:
            verify_quote(q.attest, q.signature, q.ak_public, nonce=nonce, pcrs=altered)
        assert info.value.check == "tpm.pcr_digest"
        # another TPM's attestation key
        with Swtpm() as other, TpmRegisterSet(other.tcti) as rs2:
            other_ak = rs2.quote(b"n", [0]).ak_public
        assert other_ak != q.ak_public
        with pytest.raises(SignatureError) as info:
            verify_quote(q.attest, q.signature, other_ak, nonce=nonce)
        assert info.value.check == "tpm.signature"
        # the attestation key is the same for every quote of one TPM (a primary from a fixed template)
        assert rs.quote(b"again", [0]).ak_public == q.ak_public
