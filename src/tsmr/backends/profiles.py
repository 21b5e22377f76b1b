"""Register profiles of the built-in emulator.

A profile describes a backing buffer and the kernel attributes carved out of
it, the way a tsm-mr driver does: each attribute is ``(register, alg,
offset, size, flags)``, and two attributes may share storage (the sample
driver's crypto-agile aliases).  A LIVE attribute may be *derived* from the
buffer on every read (the sample's ``report_digest``).

* ``tdx``: Intel TDX as exposed by ``drivers/virt/coco/tdx-guest`` (Linux
  6.16): ``mrtd:sha384`` and the NOHASH ``mrconfigid``, ``mrowner``,
  ``mrownerconfig`` read-only; ``rtmr0..3:sha384`` readable, extendable, live.
* ``cca``: Arm CCA: ``rim`` read-only and ``rem0..3`` extendable, SHA-256 or
  SHA-512 as chosen when the realm (here: the emulator) is created.
* ``snp``: AMD SEV-SNP, which has no runtime-extendable registers: the launch
  digest ``measurement:sha384`` (48 bytes; a fixed emulated value unless set
  at init) and the NOHASH ``host_data`` (32 bytes, zero unless set), both
  read-only, as the report's MEASUREMENT and HOST_DATA carry them.
* ``tpm``: PCR 0-23 in SHA-1, SHA-256 and SHA-384 banks; PCR 17-22 start at
  all 0xFF (after TPM2_Startup(CLEAR)) and, as on a TPM used from locality 0,
  cannot be extended.
* ``sample``: an exact model of ``samples/tsm-mr/tsm_mr_sample.c``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from ..algorithms import HashAlg
from ..errors import InputError
from ..registers import Flag

R = Flag.READABLE
RTMR = Flag.rtmr()
NOHASH = Flag.NOHASH


@dataclass(frozen=True, slots=True)
class AttrSpec:
    register: str
    alg: HashAlg | None
    offset: int
    size: int
    flags: Flag
    derive: Callable[[bytes], bytes] | None = None

    @property
    def attribute(self) -> str:
        return self.register if self.alg is None else f"{self.register}:{self.alg.kernel_name}"

    @property
    def mode(self) -> int:
        return (0o444 if Flag.READABLE in self.flags else 0) | (0o200 if Flag.WRITABLE in self.flags else 0)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    provider: str
    size: int
    attrs: tuple[AttrSpec, ...]
    initial: bytes
    options: dict[str, str]

    def attr(self, name: str) -> AttrSpec:
        for a in self.attrs:
            if a.attribute == name:
                return a
        raise KeyError(name)


PROFILES = ("tdx", "cca", "snp", "tpm", "sample")


def _padded(text: str, size: int) -> bytes:
    raw = text.encode()
    return raw + bytes(size - len(raw))


def tdx_profile(values: dict[str, bytes]) -> Profile:
    attrs: list[AttrSpec] = []
    off = 0
    for name, alg, flags in (
        ("mrtd", HashAlg.SHA384, R),
        ("mrconfigid", None, R | NOHASH),
        ("mrowner", None, R | NOHASH),
        ("mrownerconfig", None, R | NOHASH),
        ("rtmr0", HashAlg.SHA384, RTMR),
        ("rtmr1", HashAlg.SHA384, RTMR),
        ("rtmr2", HashAlg.SHA384, RTMR),
        ("rtmr3", HashAlg.SHA384, RTMR),
    ):
        attrs.append(AttrSpec(name, alg, off, 48, flags))
        off += 48
    buf = bytearray(off)
    _apply_values(buf, attrs, values)
    return Profile("tdx", "emulated-tdx", off, tuple(attrs), bytes(buf), {})


def cca_profile(values: dict[str, bytes], alg: HashAlg = HashAlg.SHA256) -> Profile:
    if alg not in (HashAlg.SHA256, HashAlg.SHA512):
        raise InputError(f"an Arm CCA realm measures with sha256 or sha512, not {alg}")
    size = alg.digest_size
    attrs = [AttrSpec("rim", alg, 0, size, R)]
    attrs += [AttrSpec(f"rem{i}", alg, size * (i + 1), size, RTMR) for i in range(4)]
    buf = bytearray(size * 5)
    _apply_values(buf, attrs, values)
    return Profile("cca", "emulated-cca", len(buf), tuple(attrs), bytes(buf), {"hash": alg.kernel_name})


#: The emulated SEV-SNP guest's launch digest unless another is set at init (no real launch measures to it).
SNP_EMULATED_MEASUREMENT = hashlib.sha384(b"tsmr emulator (NOT A REAL TEE) SEV-SNP launch digest").digest()


def snp_profile(values: dict[str, bytes]) -> Profile:
    """What an SEV-SNP guest can show of its measurements: fixed at launch, read-only."""
    attrs = [AttrSpec("measurement", HashAlg.SHA384, 0, 48, R), AttrSpec("host_data", None, 48, 32, R | NOHASH)]
    buf = bytearray(SNP_EMULATED_MEASUREMENT + bytes(32))
    _apply_values(buf, attrs, values)
    return Profile("snp", "emulated-snp", len(buf), tuple(attrs), bytes(buf), {})


TPM_BANKS = (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384)


def tpm_profile(values: dict[str, bytes]) -> Profile:
    attrs: list[AttrSpec] = []
    off = 0
    buf = bytearray()
    for pcr in range(24):
        locality_locked = 17 <= pcr <= 22
        for alg in TPM_BANKS:
            flags = (R | Flag.LIVE) if locality_locked else RTMR
            attrs.append(AttrSpec(f"pcr{pcr}", alg, off, alg.digest_size, flags))
            buf += (b"\xff" if locality_locked else b"\x00") * alg.digest_size
            off += alg.digest_size
    _apply_values(buf, attrs, values)
    return Profile("tpm", "emulated-tpm", off, tuple(attrs), bytes(buf), {})


# samples/tsm-mr/tsm_mr_sample.c: struct { static_mr[48]; config_mr[64];
# rtmr0[32]; rtmr1[48]; report_digest[64]; } with the first four initialised
# to their own names; report_digest = SHA-512 over the 192 bytes before it.
_SAMPLE_DIGEST_OFF = 48 + 64 + 32 + 48


def _sample_report_digest(buf: bytes) -> bytes:
    return hashlib.sha512(buf[:_SAMPLE_DIGEST_OFF]).digest()


def sample_profile(values: dict[str, bytes]) -> Profile:
    if values:
        raise InputError("the sample profile has fixed initial values, as the kernel sample does")
    attrs = (
        AttrSpec("static_mr", HashAlg.SHA384, 0, 48, R),
        AttrSpec("config_mr", None, 48, 64, R | NOHASH),
        AttrSpec("rtmr0", HashAlg.SHA256, 112, 32, R | Flag.LIVE),
        AttrSpec("rtmr1", HashAlg.SHA384, 144, 48, RTMR),
        AttrSpec("rtmr_crypto_agile", HashAlg.SHA256, 112, 32, RTMR),
        AttrSpec("rtmr_crypto_agile", HashAlg.SHA384, 144, 48, RTMR),
        AttrSpec("report_digest", HashAlg.SHA512, 192, 64, R | Flag.LIVE, derive=_sample_report_digest),
    )
    buf = (
        _padded("static_mr", 48)
        + _padded("config_mr", 64)
        + _padded("rtmr0", 32)
        + _padded("rtmr1", 48)
        + bytes(64)
    )
    return Profile("sample", "emulated-sample", len(buf), attrs, buf, {})


def _apply_values(buf: bytearray, attrs: list[AttrSpec], values: dict[str, bytes]) -> None:
    """Set initial values given at init (``mrtd=<hex>``), by register or attribute name."""
    for key, value in values.items():
        targets = [a for a in attrs if a.attribute == key or (a.register == key and len(value) == a.size)]
        if not targets:
            known = sorted({a.register for a in attrs})
            raise InputError(f"cannot set {key!r}: no such register of that size (registers: {', '.join(known)})")
        for a in targets:
            if len(value) != a.size:
                raise InputError(f"{a.attribute} holds {a.size} bytes, got {len(value)}")
            buf[a.offset : a.offset + a.size] = value


def build_profile(name: str, options: dict[str, str] | None = None, values: dict[str, bytes] | None = None) -> Profile:
    options = dict(options or {})
    values = dict(values or {})
    if name == "tdx":
        return tdx_profile(values)
    if name == "cca":
        return cca_profile(values, HashAlg.from_name(options.get("hash", "sha256")))
    if name == "snp":
        return snp_profile(values)
    if name == "tpm":
        return tpm_profile(values)
    if name == "sample":
        return sample_profile(values)
    raise InputError(f"unknown emulator profile {name!r} (profiles: {', '.join(PROFILES)})")
