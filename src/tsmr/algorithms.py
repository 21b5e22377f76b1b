"""Hash algorithms of measurement registers, and the extend operation.

This is the only module that maps between TPM_ALG_ID values (TCG Algorithm
Registry), the names the Linux kernel uses in tsm-mr attribute names
(``crypto/hash_info.c``: ``sha384``, ``sm3``, ``sha3-256``) and hashlib.

Every measurement register in the field, TPM PCR, TDX RTMR and Arm CCA REM
alike, is extended the same way: ``MR = H(MR || digest)`` where ``digest`` has
the register's own size.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Callable, Iterable

from .errors import InputError


class HashAlg(enum.IntEnum):
    """A hash algorithm, valued by its TPM_ALG_ID (TCG Algorithm Registry)."""

    SHA1 = 0x0004
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    SM3_256 = 0x0012
    SHA3_256 = 0x0027
    SHA3_384 = 0x0028
    SHA3_512 = 0x0029

    @property
    def digest_size(self) -> int:
        return _SIZES[self]

    @property
    def kernel_name(self) -> str:
        """The name in tsm-mr attribute names and TCG logs' tools (``sha384``, ``sm3``)."""
        return _KERNEL_NAMES[self]

    def __str__(self) -> str:  # what users see everywhere
        return self.kernel_name

    def new(self) -> "hashlib._Hash":
        return _CONSTRUCTORS[self]()

    @property
    def constructor(self) -> Callable[..., "hashlib._Hash"]:
        """The hashlib constructor (``hashlib.sha384``): the fastest way to hash in a loop."""
        return _CONSTRUCTORS[self]

    def hash(self, data: bytes) -> bytes:
        return _CONSTRUCTORS[self](data).digest()

    def extend(self, value: bytes, digest: bytes) -> bytes:
        """Return ``H(value || digest)``; both must be ``digest_size`` bytes."""
        size = _SIZES[self]
        if len(value) != size or len(digest) != size:
            raise InputError(
                f"{self.kernel_name} extend takes {size}-byte operands, "
                f"got {len(value)} and {len(digest)} bytes"
            )
        h = _CONSTRUCTORS[self](value)
        h.update(digest)
        return h.digest()

    def zero(self) -> bytes:
        return bytes(_SIZES[self])

    @classmethod
    def from_name(cls, name: str) -> "HashAlg":
        """Parse ``sha384``, ``SHA-384``, ``sm3_256``, ``TPM_ALG_SHA384`` or ``0x000c``."""
        key = name.strip().lower()
        if key.startswith("tpm_alg_"):
            key = key[8:]
        if key.startswith("0x") or key.isdigit():
            try:
                return cls(int(key, 0))
            except ValueError:
                pass
        key = key.replace("-", "").replace("_", "")
        alg = _BY_NAME.get(key)
        if alg is None:
            raise InputError(
                f"unknown hash algorithm {name!r} (known: {', '.join(a.kernel_name for a in cls)})"
            )
        return alg

    @classmethod
    def from_id(cls, alg_id: int) -> "HashAlg":
        try:
            return cls(alg_id)
        except ValueError:
            raise InputError(f"unsupported TPM_ALG_ID 0x{alg_id:04x}") from None


_SIZES = {
    HashAlg.SHA1: 20,
    HashAlg.SHA256: 32,
    HashAlg.SHA384: 48,
    HashAlg.SHA512: 64,
    HashAlg.SM3_256: 32,
    HashAlg.SHA3_256: 32,
    HashAlg.SHA3_384: 48,
    HashAlg.SHA3_512: 64,
}
_KERNEL_NAMES = {
    HashAlg.SHA1: "sha1",
    HashAlg.SHA256: "sha256",
    HashAlg.SHA384: "sha384",
    HashAlg.SHA512: "sha512",
    HashAlg.SM3_256: "sm3",
    HashAlg.SHA3_256: "sha3-256",
    HashAlg.SHA3_384: "sha3-384",
    HashAlg.SHA3_512: "sha3-512",
}


def _sm3(data: bytes = b"") -> "hashlib._Hash":
    return hashlib.new("sm3", data)


_CONSTRUCTORS: dict[HashAlg, Callable[..., "hashlib._Hash"]] = {
    HashAlg.SHA1: hashlib.sha1,
    HashAlg.SHA256: hashlib.sha256,
    HashAlg.SHA384: hashlib.sha384,
    HashAlg.SHA512: hashlib.sha512,
    HashAlg.SM3_256: _sm3,
    HashAlg.SHA3_256: hashlib.sha3_256,
    HashAlg.SHA3_384: hashlib.sha3_384,
    HashAlg.SHA3_512: hashlib.sha3_512,
}

_BY_NAME: dict[str, HashAlg] = {}
for _alg in HashAlg:
    _BY_NAME[_alg.kernel_name.replace("-", "")] = _alg
    _BY_NAME[_alg.name.lower().replace("_", "")] = _alg
_BY_NAME["sm3256"] = HashAlg.SM3_256


def extend(alg: HashAlg, value: bytes, digest: bytes) -> bytes:
    """``H_alg(value || digest)``: the extend of TPM2_PCR_Extend, TDG.MR.RTMR.EXTEND and RSI."""
    return alg.extend(value, digest)


def find_digest(digests: "Iterable[tuple[HashAlg | int, bytes]]", alg: "HashAlg | int") -> bytes | None:
    """The digest for ``alg`` in a record's (algorithm, digest) pairs, or None."""
    for a, d in digests:
        if a == alg:
            return d
    return None


def extend_chain(alg: HashAlg, value: bytes, digests: "list[bytes]") -> bytes:
    for d in digests:
        value = alg.extend(value, d)
    return value


__all__ = ["HashAlg", "extend", "extend_chain", "find_digest"]
