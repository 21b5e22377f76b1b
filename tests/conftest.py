"""Shared fixtures: per-test emulator state, FUSE-mounted emulators, fixtures path."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def fixtures_dir() -> Path:
    return Path(os.environ.get("TSMR_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture
def fixtures() -> Path:
    d = fixtures_dir()
    if not d.is_dir():
        pytest.skip(f"real-world fixtures not found at {d} (set TSMR_FIXTURES)")
    return d


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("TSMR_STATE_DIR", str(d))
    monkeypatch.setenv("TSMR_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("TSMR_BACKEND", raising=False)
    return d


def fuse_usable() -> str | None:
    """None if FUSE mounts can work here, else the reason they cannot."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0 and not any(
        os.access(os.path.join(p, "fusermount3"), os.X_OK) for p in os.environ.get("PATH", "").split(":")
    ):
        return "not root and no fusermount3 (Debian package fuse3)"
    return None


@contextlib.contextmanager
def emulator_mount(profile: str, state_dir: Path, *, extra: list[str] | None = None,
                   command: str = "mount") -> Iterator[Path]:
    """Serve an emulator profile through FUSE with `tsmr emulate mount` (or `configfs`) in a child process."""
    reason = fuse_usable()
    if reason:
        pytest.skip(f"FUSE unavailable: {reason}")
    mnt = Path(tempfile.mkdtemp(prefix=f"tsmr-mnt-{profile}-"))
    cmd = [sys.executable, "-m", "tsmr.cli.main", "emulate", command, str(mnt), "--profile", profile,
           "--state-dir", str(state_dir), *(extra or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                out, err = proc.communicate()
                if "not permitted" in err or "EPERM" in err:
                    pytest.skip(f"FUSE mount not permitted here: {err.strip()}")
                raise RuntimeError(f"tsmr emulate {command} exited {proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tsmr emulate {command} did not mount within 15 s")
            time.sleep(0.02)
        yield mnt
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()


@pytest.fixture(scope="module")
def qe(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An emulated TDX quoting enclave (test root, PCK chain, attestation key) of its own."""
    from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner

    return EmulatedTDXSigner(tmp_path_factory.mktemp("qe"))


@pytest.fixture(scope="module")
def sp(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An emulated SEV-SNP security processor (test ARK, ASK, VCEK) of its own."""
    from tsmr.backends.emulated_evidence.snp import EmulatedSNPSigner

    return EmulatedSNPSigner(tmp_path_factory.mktemp("sp"))


@pytest.fixture
def rs(state_dir: Path):  # type: ignore[no-untyped-def]
    """An emulated TDX register set in the test's own state directory."""
    from tsmr.backends.emulated import EmulatedRegisterSet

    r = EmulatedRegisterSet("tdx")
    yield r
    r.close()
