"""The register model shared by every backend, and the one index table.

A *register* is a logical measurement register (``rtmr3``, ``pcr16``,
``rem0``).  It has one or more *banks*, one per hash algorithm; each bank is a
value of the algorithm's digest size that is extended with
``H(value || digest)``.  A register whose kernel attribute has no ``:hash``
suffix (``TSM_MR_F_NOHASH``, e.g. TDX ``mrconfigid``) has a single bank whose
algorithm is ``None``: its bytes are an opaque value.

Flags mirror ``include/linux/tsm-mr.h`` (Linux 6.16): READABLE, WRITABLE (a
write extends), LIVE (re-read from the hardware or firmware), NOHASH.

Index mapping (UEFI 2.10 section 38.4.1, "EFI_CC_MEASUREMENT_PROTOCOL"): TPM
PCR 0 maps to CC MR index 0 (TDX MRTD, CCA RIM); PCR 1 and 7 to index 1
(RTMR0 / REM0); PCR 2-6 to index 2 (RTMR1 / REM1); PCR 8-15 to index 3
(RTMR2 / REM2); every other PCR to index 4 (RTMR3 / REM3).  The CCA column
follows the proposal to reuse the TDX map for Realm Extensible Measurements.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence, runtime_checkable

from .algorithms import HashAlg
from .errors import InputError, UnknownRegisterError


class Flag(enum.IntFlag):
    """Register flags, valued as ``TSM_MR_F_*`` in the kernel."""

    NOHASH = 1
    WRITABLE = 2
    READABLE = 4
    LIVE = 8

    @classmethod
    def rtmr(cls) -> "Flag":
        """``TSM_MR_F_RTMR | TSM_MR_F_READABLE``: a readable, extendable, live register."""
        return cls.READABLE | cls.WRITABLE | cls.LIVE

    def names(self) -> list[str]:
        return [f.name.lower() for f in _FLAG_ORDER if f in self]  # type: ignore[union-attr]


_FLAG_ORDER = (Flag.READABLE, Flag.WRITABLE, Flag.LIVE, Flag.NOHASH)

BankKey = "HashAlg | None"


@dataclass(frozen=True, slots=True)
class Bank:
    """One hash bank of a register: the algorithm (``None`` for NOHASH), its size and flags.

    ``attribute`` is the backend's own name for the bank (the sysfs file name
    ``rtmr3:sha384``, ``pcr16:sha256`` for a TPM).
    """

    alg: HashAlg | None
    size: int
    flags: Flag
    attribute: str

    @property
    def label(self) -> str:
        return bank_label(self.alg)


def bank_label(alg: HashAlg | None) -> str:
    """What a bank is called in output: the algorithm name, or ``raw`` for NOHASH values."""
    return alg.kernel_name if alg is not None else "raw"


@dataclass(frozen=True, slots=True)
class Register:
    """A logical register and its banks, in ascending TPM_ALG_ID order."""

    name: str
    banks: tuple[Bank, ...]

    @property
    def flags(self) -> Flag:
        out = Flag(0)
        for b in self.banks:
            out |= b.flags
        return out

    @property
    def size(self) -> int | None:
        """The value size when every bank has the same size, else ``None`` (see ``sizes``)."""
        sizes = {b.size for b in self.banks}
        return sizes.pop() if len(sizes) == 1 else None

    @property
    def sizes(self) -> dict[str, int]:
        return {b.label: b.size for b in self.banks}

    @property
    def algs(self) -> tuple[HashAlg | None, ...]:
        return tuple(b.alg for b in self.banks)

    def bank(self, alg: HashAlg | None) -> Bank:
        for b in self.banks:
            if b.alg == alg:
                return b
        raise UnknownRegisterError(
            self.name,
            detail=f"register {self.name} has no {bank_label(alg)} bank "
            f"(banks: {', '.join(b.label for b in self.banks)})",
        )

    @property
    def readable(self) -> bool:
        return Flag.READABLE in self.flags

    @property
    def writable(self) -> bool:
        return Flag.WRITABLE in self.flags


def sort_banks(banks: Iterable[Bank]) -> tuple[Bank, ...]:
    return tuple(sorted(banks, key=lambda b: -1 if b.alg is None else int(b.alg)))


# Register names a backend accepts: what the kernel could plausibly create,
# and nothing that could walk out of a directory.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_register_name(name: str) -> str:
    """Refuse names with path separators, control characters or other oddities."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InputError(
            f"invalid register name {name!r}: names are 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return name


@runtime_checkable
class RegisterSet(Protocol):
    """What every backend implements.

    ``read`` returns the current value of the register in the requested banks
    (all of them when ``algs`` is None), keyed by algorithm (``None`` for a
    NOHASH register).  ``extend`` extends the given banks, each with a digest
    of that bank's size; banks not named are left alone (as TPM2_PCR_Extend
    does with a partial TPML_DIGEST_VALUES).
    """

    kind: str
    hardware_backed: bool

    @property
    def provider(self) -> str: ...

    def registers(self) -> Sequence[Register]: ...

    def register(self, name: str) -> Register: ...

    def read(self, name: str, algs: Iterable[HashAlg | None] | None = None) -> dict[HashAlg | None, bytes]: ...

    def extend(self, name: str, digests: Mapping[HashAlg | None, bytes]) -> None: ...

    def close(self) -> None: ...


class BaseRegisterSet:
    """Validation shared by the backends; subclasses provide the raw operations.

    Subclasses implement ``_discover()`` (the registers), ``_read_bank`` and
    ``_extend_banks``.  Everything a caller can get wrong is checked here,
    before any device is touched, and raises :class:`InputError`.
    """

    kind: str = "?"
    provider: str = "?"
    hardware_backed: bool = False

    def __init__(self) -> None:
        self._registers: dict[str, Register] | None = None

    # -- discovery -------------------------------------------------------
    def _discover(self) -> Sequence[Register]:
        raise NotImplementedError

    def registers(self) -> tuple[Register, ...]:
        if self._registers is None:
            self._registers = {r.name: r for r in self._discover()}
        return tuple(self._registers.values())

    def register(self, name: str) -> Register:
        check_register_name(name)
        self.registers()
        assert self._registers is not None
        reg = self._registers.get(name)
        if reg is None:
            raise UnknownRegisterError(name, available=sorted(self._registers))
        return reg

    # -- operations ------------------------------------------------------
    def _read_bank(self, reg: Register, bank: Bank) -> bytes:
        raise NotImplementedError

    def _read_banks(self, reg: Register, banks: Sequence[Bank]) -> dict[HashAlg | None, bytes]:
        return {b.alg: self._read_bank(reg, b) for b in banks}

    def _extend_banks(self, reg: Register, digests: dict[Bank, bytes]) -> None:
        raise NotImplementedError

    def read(self, name: str, algs: Iterable[HashAlg | None] | None = None) -> dict[HashAlg | None, bytes]:
        reg = self.register(name)
        banks = reg.banks if algs is None else tuple(reg.bank(a) for a in algs)
        unreadable = [b.attribute for b in banks if Flag.READABLE not in b.flags]
        if unreadable:
            raise InputError(f"register {name} is not readable ({', '.join(unreadable)})")
        return self._read_banks(reg, banks)

    def check_extend(self, name: str, digests: Mapping[HashAlg | None, bytes]) -> dict[Bank, bytes]:
        """Validate an extend without doing it: banks exist, are writable, digests have their size.

        Returns the plan in the register's bank order (ascending TPM_ALG_ID).
        """
        return self._plan(self.register(name), digests)

    def _plan(self, reg: Register, digests: Mapping[HashAlg | None, bytes]) -> dict[Bank, bytes]:
        if not digests:
            raise InputError(f"extend of {reg.name}: no digest given")
        plan: dict[Bank, bytes] = {}
        for alg, digest in digests.items():
            bank = reg.bank(alg)
            if Flag.WRITABLE not in bank.flags:
                raise InputError(f"register {bank.attribute} is read-only: it cannot be extended")
            digest = bytes(digest)
            if len(digest) != bank.size:
                raise InputError(
                    f"{bank.attribute} takes a {bank.size}-byte digest, got {len(digest)} bytes"
                )
            plan[bank] = digest
        return {b: plan[b] for b in reg.banks if b in plan}

    def extend(self, name: str, digests: Mapping[HashAlg | None, bytes]) -> None:
        reg = self.register(name)
        self._extend_banks(reg, self._plan(reg, digests))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind}:{self.provider}>"


# ---------------------------------------------------------------------------
# The index table (UEFI 2.10 section 38.4.1)
# ---------------------------------------------------------------------------

def pcr_to_ccmr(pcr: int) -> int:
    """The CC MR index a TPM PCR maps to (EFI_CC_MEASUREMENT_PROTOCOL.MapPcrToMrIndex)."""
    if not 0 <= pcr <= 23:
        raise InputError(f"PCR index {pcr} is out of range 0-23")
    if pcr == 0:
        return 0
    if pcr in (1, 7):
        return 1
    if 2 <= pcr <= 6:
        return 2
    if 8 <= pcr <= 15:
        return 3
    return 4


_CCMR_NAMES = {
    "tdx": ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"),
    "cca": ("rim", "rem0", "rem1", "rem2", "rem3"),
}


def ccmr_to_register(ccmr: int, arch: str = "tdx") -> str:
    """CC MR index to register name: 0 -> mrtd/rim, 1..4 -> rtmr0..3 / rem0..3."""
    names = _CCMR_NAMES.get(arch)
    if names is None:
        raise InputError(f"unknown architecture {arch!r} (known: tdx, cca)")
    if not 0 <= ccmr < len(names):
        raise InputError(f"CC MR index {ccmr} is out of range 0-4")
    return names[ccmr]


def register_to_ccmr(name: str) -> int | None:
    """CC MR index of a confidential-VM register name, or None (e.g. for ``pcr16``)."""
    for names in _CCMR_NAMES.values():
        if name in names:
            return names.index(name)
    return None


def pcr_to_register(pcr: int, arch: str = "tdx") -> str:
    return ccmr_to_register(pcr_to_ccmr(pcr), arch)


def register_on(name: str, arch: str | None) -> str:
    """The register a measurement into ``name`` lands in on a machine of ``arch``.

    With ``arch`` ``"tdx"`` or ``"cca"``, a TPM PCR maps onto the confidential
    VM's register through the index table above (PCR 0 -> MRTD/RIM, 1 and 7 ->
    RTMR0/REM0, ...); any other name, or another ``arch``, stays as it is.
    """
    if arch in ("tdx", "cca"):
        p = pcr_index(name)
        if p is not None:
            return pcr_to_register(p, arch)
    return name


def pcr_index(name: str) -> int | None:
    m = re.fullmatch(r"pcr(\d{1,2})", name)
    if m and int(m.group(1)) <= 23:
        return int(m.group(1))
    return None


def register_order(name: str) -> tuple[str, int]:
    """Sort key for register names: rtmr2 before rtmr10, pcr9 before pcr10, a name without a number first."""
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return head, int(tail) if tail else -1


__all__ = [
    "Flag",
    "Bank",
    "Register",
    "RegisterSet",
    "BaseRegisterSet",
    "bank_label",
    "sort_banks",
    "check_register_name",
    "pcr_to_ccmr",
    "ccmr_to_register",
    "register_to_ccmr",
    "pcr_to_register",
    "pcr_index",
    "register_on",
    "register_order",
]
