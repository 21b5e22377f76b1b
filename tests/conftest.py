"""Shared fixtures: the shared fixture data, per-test emulator state, FUSE-mounted emulators.

Fixture data (real logs, quotes, certificates) is found in one way, here: tests take the
``fixtures`` fixture (``fixtures / "go-tdx-guest/ccel/ccel_data.dat"``); module-level helpers
use the same object, ``from conftest import FIXTURES``; a test can also say what it needs with
``@pytest.mark.fixture_data("rel/path")``.  All of them resolve paths with tests/fixtures_dir.py
(``TSMR_FIXTURES``, default ``../shared/fixtures``) and apply :func:`fixture_missing`: missing
data skips the test with the path and the variable in the reason, and under ``CI=true`` fails
it, so that a CI run without the data cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixtures_dir import FixtureMissing, fixture_file, fixtures_root, in_ci  # noqa: E402


def fixture_missing(message: str) -> NoReturn:
    """The rule for missing fixture data: fail under CI=true, else skip; ``message`` names path and variable."""
    if in_ci():
        pytest.fail(f"{message} [CI=true: missing fixture data fails the run]", pytrace=False)
    pytest.skip(message)


def need_file(path: Path | str, package: str) -> Path:
    """A file a Debian package installs (``make test`` installs it): skips without it, fails under CI=true."""
    if not os.path.isfile(path):
        fixture_missing(f"{path} is missing (Debian package {package}; make test installs it)")
    return Path(path)


def need_tool(name: str, package: str) -> str:
    """A program a Debian package installs (``make test`` installs it): skips without it, fails under CI=true."""
    found = shutil.which(name)
    if found is None:
        fixture_missing(f"{name} is not installed (Debian package {package}; make test installs it)")
    return found


class Fixtures:
    """The shared fixture data.  Every lookup checks that the data is there (see :func:`fixture_missing`).

    ``fixtures / "a/b"`` is ``fixtures.path("a/b")``; :attr:`root` is the directory, unchecked,
    for code that runs at collection time (parametrisation) and checks nothing itself.
    """

    @property
    def root(self) -> Path:
        return fixtures_root()

    def path(self, rel: str = "") -> Path:
        try:
            return fixture_file(rel)
        except FixtureMissing as e:
            message = str(e)
        fixture_missing(message)

    def optional(self, rel: str) -> Path | None:
        """For data a test can do without: None when missing (a failure under CI=true, as for all data)."""
        try:
            return fixture_file(rel)
        except FixtureMissing as e:
            message = str(e)
        if in_ci():
            fixture_missing(message)
        return None

    def __truediv__(self, rel: str) -> Path:
        return self.path(rel)

    def __fspath__(self) -> str:
        return str(self.path())

    def read(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def __repr__(self) -> str:
        return f"Fixtures({self.root})"


FIXTURES = Fixtures()


@pytest.fixture(scope="session")
def fixtures() -> Fixtures:
    """The shared fixture data (``TSMR_FIXTURES``, default ``../shared/fixtures``): skips, or fails under CI, without it."""
    FIXTURES.path()
    return FIXTURES


KERNEL_IMAGE = Path(os.environ.get("TSMR_KERNEL_IMAGE") or Path(__file__).resolve().parents[1] / ".state" / "kernel" / "vmlinuz")


@pytest.fixture(scope="session")
def linux_kernel() -> Path:
    """A real Linux bzImage (Debian's cloud kernel; ``make test`` fetches it with tools/fetch-kernel).

    ``TSMR_KERNEL_IMAGE`` names it (default ``.state/kernel/vmlinuz``); skips without it, fails under CI."""
    if not KERNEL_IMAGE.is_file():
        message = f"no Linux kernel image at {KERNEL_IMAGE} (run tools/fetch-kernel {KERNEL_IMAGE}, or set TSMR_KERNEL_IMAGE)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return KERNEL_IMAGE


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fixture_data(*rel): the test needs these paths under TSMR_FIXTURES (skip, or fail under CI=true)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("fixture_data"):
        for rel in mark.args:
            FIXTURES.path(rel)


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


@pytest.fixture
def pcs_server(fixtures: Fixtures) -> Iterator[Any]:
    """The fixture collateral served on 127.0.0.1 in Intel PCS/PCCS and AMD KDS shapes, for one test."""
    from pcs_server import PcsServer

    server = PcsServer.from_fixtures(fixtures.root).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def milan_ark(fixtures: Fixtures, tmp_path: Path) -> Path:
    """The Milan ARK alone (the second certificate of go-sev-guest's KDS cert_chain), as an operator pins it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ark = x509.load_pem_x509_certificates((fixtures / "go-sev-guest/milan.testcer").read_bytes())[1]
    path = tmp_path / "ark-milan.pem"
    path.write_bytes(ark.public_bytes(serialization.Encoding.PEM))
    return path
