"""Arm CCA attestation tokens from the built-in emulator, signed with keys it generates.

An emulated realm answers an attestation request the way the RMM does (Arm RMM
specification DEN0137, A7.2): a *realm token* carrying the realm challenge, the
personalization value, the RIM and the four REMs, signed by the Realm
Attestation Key (RAK), and a *platform token* whose challenge is the hash of that
RAK, signed by the CCA Platform Attestation Key (CPAK). Both are COSE_Sign1
(RFC 9052 §4.2, ES384 with P-384 keys), collected in the legacy tag-399 map
``{44234: platform token, 44241: realm token}``; the claim layout follows the
TF-RMM sample token (profile-less realm claims with the RAK as a raw SEC1 point,
platform profile ``http://arm.com/CCA-SSD/1.0.0``).

Both keys are generated once per state directory and kept there (private keys
mode 0600, directory 0700). Nothing about them is rooted in hardware: the
platform is NOT A REAL TEE, and its software components and ids say so. A
token verifies only for a verifier that is explicitly given the emulator's
``cpak.pem`` as the platform key, e.g. ``tsmr.evidence.cca.verify_token(token,
cpak=load_pem_public_key(cpak_pem.read_bytes()), challenge=...)`` or
``tsmr quote verify --cpak cpak.pem``; no verifier should trust it by default.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from ...algorithms import HashAlg
from ...errors import InputError
from ..emulated import EmulatedRegisterSet

# Realm measurement algorithms an RMM offers (DEN0137 RmiHashAlgorithm: SHA-256, SHA-512),
# by the text the token carries, with their digest sizes.
_REALM_HASHES = {"sha-256": 32, "sha-512": 64}
_KEYS = ("cpak", "rak")
PLATFORM_PROFILE = "http://arm.com/CCA-SSD/1.0.0"
#: PSA security lifecycle "secured" (0x3000): what a deployed platform reports.
LIFECYCLE_SECURED = 0x3000
VERIFICATION_SERVICE = "https://verifier.invalid/tsmr-emulated-cca"
_EMULATED = "tsmr emulator (NOT A REAL TEE)"


def _h(label: str) -> bytes:
    return hashlib.sha256(f"{_EMULATED} {label}".encode()).digest()


class EmulatedCCASigner:
    """The CPAK and RAK of an emulated CCA platform and realm, kept in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._load_or_create()

    @property
    def cpak_pem(self) -> Path:
        """The CPAK public key (PEM SubjectPublicKeyInfo): the trust anchor to give a verifier."""
        return self.dir / "cpak.pem"

    def _load_or_create(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        if not all((self.dir / f"{n}.key").exists() for n in _KEYS) or not self.cpak_pem.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            for n in _KEYS:
                key = ec.generate_private_key(ec.SECP384R1())
                path = self.dir / f"{n}.key"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
            cpak = serialization.load_pem_private_key((self.dir / "cpak.key").read_bytes(), None)
            self.cpak_pem.write_bytes(cpak.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.keys = {n: serialization.load_pem_private_key((self.dir / f"{n}.key").read_bytes(), None) for n in _KEYS}

    def token(self, *, challenge: bytes, rim: bytes, rems: Sequence[bytes], hash_algorithm: str = "sha-256",
              personalization_value: bytes = bytes(64)) -> bytes:
        """A CCA attestation token (tag-399 collection) over the given realm measurements.

        *challenge* takes 32 to 64 bytes and is zero-padded to the 64-byte realm
        challenge, as the Linux arm-cca-guest TSM driver pads its inblob.
        *hash_algorithm* ("sha-256" or "sha-512") is the realm's measurement
        algorithm; *rim* and the four *rems* must be digests of its size. The RAK
        is hashed for the platform challenge with the same algorithm.
        """
        import cbor2
        from cryptography.hazmat.primitives import serialization

        challenge = bytes(challenge)
        if not 32 <= len(challenge) <= 64:
            raise InputError(f"a CCA realm challenge takes 32 to 64 bytes, got {len(challenge)}")
        challenge = challenge.ljust(64, b"\0")
        if hash_algorithm not in _REALM_HASHES:
            raise InputError(f"a CCA realm measures with {' or '.join(_REALM_HASHES)}, not {hash_algorithm!r}")
        size = _REALM_HASHES[hash_algorithm]
        rems = [bytes(r) for r in rems]
        if len(rems) != 4:
            raise InputError(f"a CCA realm has 4 REMs, got {len(rems)}")
        for name, value in (("rim", bytes(rim)), *((f"rem{i}", r) for i, r in enumerate(rems))):
            if len(value) != size:
                raise InputError(f"{name} must be a {size}-byte {hash_algorithm} digest, got {len(value)} bytes")
        if len(personalization_value) != 64:
            raise InputError(f"the personalization value is 64 bytes, got {len(personalization_value)}")

        rak = self.keys["rak"].public_key().public_bytes(serialization.Encoding.X962,
                                                         serialization.PublicFormat.UncompressedPoint)
        # Key order as in the TF-RMM sample token.
        realm_claims = {
            10: challenge,
            44236: hash_algorithm,
            44240: hash_algorithm,
            44235: bytes(personalization_value),
            44237: rak,
            44238: bytes(rim),
            44239: rems,
        }
        cpak_point = self.keys["cpak"].public_key().public_bytes(serialization.Encoding.X962,
                                                                 serialization.PublicFormat.UncompressedPoint)
        platform_claims = {
            265: PLATFORM_PROFILE,
            # The platform vouches for the RAK exactly as the realm token encodes it.
            10: hashlib.new(hash_algorithm.replace("-", ""), rak).digest(),
            2396: _h("implementation"),
            # PSA instance id: type 0x01 (EUID) and a hash of the attestation key.
            256: b"\x01" + hashlib.sha256(cpak_point).digest(),
            2401: _h("platform configuration"),
            2395: LIFECYCLE_SECURED,
            2402: "sha-256",
            2399: [_sw_component(name, version) for name, version in
                   (("BL", "0.0.0-emulated"), ("M1", "0.0.0-emulated"), ("RMM", "0.0.0-emulated"))],
            2400: VERIFICATION_SERVICE,
        }
        platform = _sign1_es384(self.keys["cpak"], cbor2.dumps(platform_claims))
        realm = _sign1_es384(self.keys["rak"], cbor2.dumps(realm_claims))
        return cbor2.dumps(cbor2.CBORTag(399, {44234: platform, 44241: realm}))


def _sw_component(name: str, version: str) -> dict[int, object]:
    return {
        1: f"{name} (emulated)",
        5: _h("firmware signer"),
        4: version,
        2: _h(f"{name} measurement"),
        6: "sha-256",
    }


def _sign1_es384(key, payload: bytes) -> bytes:
    """A tagged COSE_Sign1 (RFC 9052 §4.2) with protected {alg: ES384}; r || s per RFC 9053 §2.1."""
    import cbor2
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    protected = cbor2.dumps({1: -35})
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA384())))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")]))


def emulated_cca_token(regs, challenge: bytes) -> tuple[bytes, Path]:
    """A token of an ``emulated:cca`` register set over its current values; and the CPAK to trust."""
    if not isinstance(regs, EmulatedRegisterSet) or regs.profile_name != "cca":
        raise InputError("emulated CCA tokens come from the emulated:cca backend")
    names = {HashAlg.SHA256: "sha-256", HashAlg.SHA512: "sha-512"}
    values: dict[str, bytes] = {}
    algs: set[HashAlg] = set()
    for reg in regs.registers():
        for alg, value in regs.read(reg.name).items():
            values[reg.name] = value
            if alg is not None:
                algs.add(alg)
    if len(algs) != 1 or next(iter(algs)) not in names:
        raise InputError(f"an emulated CCA realm measures with one of sha256, sha512; found {sorted(map(str, algs))}")
    signer = EmulatedCCASigner(regs.dir / "rmm")
    token = signer.token(challenge=challenge, rim=values["rim"], rems=[values[f"rem{i}"] for i in range(4)],
                         hash_algorithm=names[algs.pop()])
    return token, signer.cpak_pem


__all__ = ["PLATFORM_PROFILE", "EmulatedCCASigner", "emulated_cca_token"]
