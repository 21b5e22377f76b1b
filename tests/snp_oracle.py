"""sev-snp-measure (PyPI) as the differential oracle of ``tsmr predict snp``, and the firmware the tests launch.

The oracle is run as its own command line in a subprocess, never imported into tsmr.
Debian's OVMF.fd (package ``ovmf``) carries SEV metadata but, being the generic build,
no SNP_KERNEL_HASHES section; :func:`with_kernel_hashes` derives from it the layout of
OVMF's AmdSev build (a one-page SNP_KERNEL_HASHES section and the SEV hash table area
inside it) by rewriting two table entries in place, with its own small parser.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fixtures_dir import in_ci

OVMF = Path("/usr/share/ovmf/OVMF.fd")  # Debian ovmf: TDX and SEV metadata, 2 MiB
OVMF_NO_SEV = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")  # Debian ovmf: a GUIDed table without SEV metadata
SHIM = Path("/usr/lib/shim/shimx64.efi")  # a real binary to stand in for a kernel: only its SHA-256 counts
SHIM_SIGNED = Path("/usr/lib/shim/shimx64.efi.signed")


def _oracle_path() -> str | None:
    beside = Path(sys.executable).parent / "sev-snp-measure"
    return str(beside) if beside.exists() else shutil.which("sev-snp-measure")


ORACLE = _oracle_path()


def need(condition: bool, reason: str) -> None:
    """Skip without ``condition``; under CI=true (where make test installs everything) fail instead."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} [CI=true: it must be installed]", pytrace=False)
    pytest.skip(reason)


def need_oracle() -> str:
    need(ORACLE is not None, "sev-snp-measure is not installed (pip install sev-snp-measure; the test extra has it)")
    assert ORACLE is not None
    return ORACLE


def oracle(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run sev-snp-measure with ``args``."""
    return subprocess.run([need_oracle(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def oracle_measurement(*args: str, cwd: Path | None = None) -> str:
    """The hex measurement sev-snp-measure prints for ``--mode snp`` and ``args``."""
    r = oracle("--mode", "snp", *args, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


_FOOTER = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
_SEV_METADATA = uuid.UUID("dc886566-984a-4798-a75e-5585a7bf67cc").bytes_le
_HASH_TABLE = uuid.UUID("7255371f-3a3b-4b04-927b-1da6efa8d454").bytes_le


def _entry_offsets(data: bytes) -> dict[bytes, int]:
    """GUID (bytes_le) -> offset of the entry's data, for the GUIDed table at the end of ``data``."""
    n = len(data)
    assert data[n - 0x30:n - 0x20] == _FOOTER, "no OVMF GUIDed table"
    total = struct.unpack_from("<H", data, n - 0x32)[0]
    start, end = n - 0x20 - total, n - 0x32
    out = {}
    while end > start:
        size = struct.unpack_from("<H", data, end - 18)[0]
        out[data[end - 16:end]] = end - size
        end -= size
    return out


def with_kernel_hashes(data: bytes, *, table_offset: int = 0) -> bytes:
    """``data`` with its last SEV metadata section turned into a one-page SNP_KERNEL_HASHES section
    and the SEV hash table area put ``table_offset`` bytes into that page (size 0x400, as AmdSev's)."""
    buf = bytearray(data)
    entries = _entry_offsets(data)
    meta = len(data) - struct.unpack_from("<I", data, entries[_SEV_METADATA])[0]
    assert data[meta:meta + 4] == b"ASEV"
    count = struct.unpack_from("<I", data, meta + 12)[0]
    last = meta + 16 + 12 * (count - 1)
    gpa = struct.unpack_from("<I", data, last)[0]
    struct.pack_into("<III", buf, last, gpa, 0x1000, 0x10)
    struct.pack_into("<II", buf, entries[_HASH_TABLE], gpa + table_offset, 0x400)
    return bytes(buf)


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    os.chmod(path, 0o644)
    return path
