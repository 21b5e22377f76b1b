"""The Linux tsm-mr sysfs backend (``drivers/virt/coco/tsm-mr.c``, Linux 6.16).

A tsm-mr provider exposes one binary attribute per register bank in a
``measurements/`` directory: ``<name>:<hash>`` (``rtmr3:sha384``), or a bare
``<name>`` for a NOHASH register (``mrconfigid``).  The mode says what is
allowed: 0444 readable, 0200 writable (a write extends).  Several attributes
with one name and different hashes are the banks of one crypto-agile register.

Reads are one ``pread`` of the attribute size at offset 0.  An extend is one
``pwrite`` of exactly the digest size at offset 0: anything else the kernel
refuses with EINVAL.  File descriptors are kept open per attribute so that a
long-lived register set costs one system call per operation.

The LIVE flag cannot be seen in sysfs; it is filled in from what the known
drivers declare (tdx-guest, the tsm_mr_sample module, Arm CCA) and, for a
directory of unknown origin, from the register names those drivers use.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
from pathlib import Path
from typing import Sequence

from ..algorithms import HashAlg
from ..errors import BackendError, InputError
from ..registers import Bank, BaseRegisterSet, Flag, Register, sort_banks

MISC_GLOB = "/sys/class/misc/*/measurements"

# Which registers the known drivers flag LIVE (TSM_MR_F_LIVE): tdx-guest's
# RTMRs; the sample's rtmr0, rtmr1, crypto-agile aliases and report_digest;
# Arm CCA REMs; TPM PCRs (read from the device on every access).
_LIVE_RE = re.compile(r"^(rtmr\d+|rtmr_crypto_agile|rem\d+|pcr\d+|report_digest)$")

_ATTR_RE = re.compile(r"^([A-Za-z0-9_.\-]{1,64})(?::([A-Za-z0-9\-_]{1,32}))?$")

# Kernel errors of a tsm-mr write, and what they mean (tdx-guest.c, tsm-mr.c).
_WRITE_HINTS = {
    errno.EINVAL: "the kernel takes exactly the digest size at offset 0",
    errno.EACCES: "the register is read-only",
    errno.EPERM: "not permitted (root is needed to extend)",
    errno.ENXIO: "the TDX module rejected the operand (TDG.MR.RTMR.EXTEND)",
    errno.EBUSY: "the TDX module is busy; try again",
    errno.EIO: "the firmware or TDX module failed",
    errno.EINTR: "interrupted while waiting for the register lock",
    errno.ENODEV: "the device went away",
}


def find_measurement_dirs(pattern: str = MISC_GLOB) -> list[Path]:
    """tsm-mr ``measurements/`` directories present, preferred providers first."""
    found = [Path(p) for p in glob.glob(pattern) if os.path.isdir(p)]
    order = {"tdx_guest": 0, "arm_cca_guest": 1}
    return sorted(found, key=lambda p: (order.get(p.parent.name, 9), p.parent.name))


def provider_name(directory: Path) -> str:
    d = directory.resolve() if directory.exists() else directory
    if d.name == "measurements" and d.parent.name:
        return d.parent.name
    return d.name or "sysfs"


class SysfsRegisterSet(BaseRegisterSet):
    kind = "sysfs"

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        if directory is None:
            dirs = find_measurement_dirs()
            if not dirs:
                raise BackendError(f"no tsm-mr measurements directory found ({MISC_GLOB})", backend="sysfs")
            directory = dirs[0]
        elif isinstance(directory, str) and "/" not in directory:
            directory = Path("/sys/class/misc") / directory / "measurements"
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise BackendError(f"{self.directory} is not a directory", backend="sysfs")
        self.provider = provider_name(self.directory)
        real = str(self.directory.resolve())
        self.hardware_backed = real.startswith("/sys/") and self.provider != "tsm_mr_sample"
        self._fds: dict[str, int] = {}
        self.skipped: list[str] = []

    def _discover(self) -> Sequence[Register]:
        groups: dict[str, list[Bank]] = {}
        self.skipped = []
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError as exc:
            raise BackendError.from_oserror(exc, backend="sysfs", register=None, action=f"list {self.directory}") from exc
        for entry in entries:
            m = _ATTR_RE.fullmatch(entry.name)
            if m is None or entry.name.startswith("."):
                self.skipped.append(f"{entry.name!r}: not a register attribute name")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                self.skipped.append(f"{entry.name}: not a regular file")
                continue
            name, suffix = m.group(1), m.group(2)
            alg: HashAlg | None = None
            flags = Flag(0)
            if suffix is None:
                flags |= Flag.NOHASH
            else:
                try:
                    alg = HashAlg.from_name(suffix)
                except InputError:
                    self.skipped.append(f"{entry.name}: unknown hash {suffix!r}")
                    continue
            if st.st_mode & 0o444:
                flags |= Flag.READABLE
            if st.st_mode & 0o222:
                flags |= Flag.WRITABLE
            if _LIVE_RE.fullmatch(name):
                flags |= Flag.LIVE
            size = alg.digest_size if alg is not None else st.st_size
            if alg is not None and st.st_size not in (0, size):
                self.skipped.append(f"{entry.name}: size {st.st_size} is not the {alg} digest size")
                continue
            if size <= 0:
                self.skipped.append(f"{entry.name}: size unknown")
                continue
            groups.setdefault(name, []).append(Bank(alg, size, flags, entry.name))
        return [Register(n, sort_banks(b)) for n, b in groups.items()]

    # -- raw attribute I/O ------------------------------------------------
    def _attr_fd(self, attribute: str, flags: int) -> int:
        key = f"{attribute}\0{flags}"
        fd = self._fds.get(key)
        if fd is None:
            if not _ATTR_RE.fullmatch(attribute) or attribute.startswith("."):
                raise InputError(f"invalid attribute name {attribute!r}")
            fd = os.open(self.directory / attribute, flags | os.O_CLOEXEC)
            self._fds[key] = fd
        return fd

    def read_attribute(self, attribute: str, size: int | None = None) -> bytes:
        """Read an attribute as the kernel serves it (no validation); OSError becomes BackendError."""
        try:
            fd = self._attr_fd(attribute, os.O_RDONLY)
            want = size if size is not None else os.fstat(fd).st_size or 4096
            out = bytearray()
            while len(out) < want:
                chunk = os.pread(fd, want - len(out), len(out))
                if not chunk:
                    break
                out += chunk
            return bytes(out)
        except OSError as exc:
            raise BackendError.from_oserror(exc, backend="sysfs", register=attribute, action="read") from exc

    def write_attribute(self, attribute: str, data: bytes, offset: int = 0) -> int:
        """One ``pwrite`` to an attribute, returning what the kernel returned (no validation)."""
        try:
            fd = self._attr_fd(attribute, os.O_WRONLY)
            return os.pwrite(fd, data, offset)
        except OSError as exc:
            raise BackendError.from_oserror(
                exc, backend="sysfs", register=attribute, action="extend", hint=_WRITE_HINTS.get(exc.errno or 0, "")
            ) from exc

    def _read_bank(self, reg: Register, bank: Bank) -> bytes:
        value = self.read_attribute(bank.attribute, bank.size)
        if len(value) != bank.size:
            raise BackendError(
                f"sysfs: read {bank.attribute} returned {len(value)} bytes, expected {bank.size}",
                backend="sysfs",
                register=bank.attribute,
            )
        return value

    def _extend_banks(self, reg: Register, digests: dict[Bank, bytes]) -> None:
        # One write per bank: the kernel ABI has no multi-bank extend.
        for bank, digest in digests.items():
            n = self.write_attribute(bank.attribute, digest)
            if n != bank.size:
                raise BackendError(
                    f"sysfs: extend {bank.attribute} wrote {n} of {bank.size} bytes",
                    backend="sysfs",
                    register=bank.attribute,
                )

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


__all__ = ["SysfsRegisterSet", "find_measurement_dirs", "provider_name", "MISC_GLOB"]
