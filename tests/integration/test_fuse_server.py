"""The FUSE server against the kernel ABI: sysfs binary-attribute semantics through a real mount.

A helper process (this very file, run as a script) serves ``ChainProvider``
on a temporary directory; the tests then use plain ``os`` calls on it, the
way programs written for ``/sys/class/misc/*/measurements`` do.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Iterator

import pytest

pytestmark = pytest.mark.fuse

JOURNAL = 1024  # first byte of every extend, in the order the provider saw them
MRCONFIGID = bytes(range(48))
RTMR0 = hashlib.sha256(b"rtmr0").digest()
MODES = {
    "rtmr3:sha384": (48, 0o644),
    "mrconfigid": (48, 0o444),
    "rtmr0:sha256": (32, 0o444),
    "count": (8, 0o444),
    "journal": (JOURNAL, 0o444),
    "eio": (16, 0o644),
    "crash": (16, 0o644),
    "wo": (32, 0o200),
}


class ChainProvider:
    """rtmr3 is a real SHA-384 chain; ``count`` and ``journal`` expose what the server delivered."""

    def __init__(self) -> None:
        self.rtmr3 = bytes(48)
        self.count = 0
        self.journal = bytearray()
        self.wo = bytes(32)

    def attributes(self) -> list:
        from tsmr.backends.fuse import Attribute

        return [Attribute(name, size, mode) for name, (size, mode) in MODES.items()]

    def read_attribute(self, name: str) -> bytes:
        if name == "rtmr3:sha384":
            return self.rtmr3
        if name == "mrconfigid":
            return MRCONFIGID
        if name == "rtmr0:sha256":
            return RTMR0
        if name == "count":
            return self.count.to_bytes(8, "little")
        if name == "journal":
            return bytes(self.journal[:JOURNAL]).ljust(JOURNAL, b"\0")
        return self._fail(name)

    def write_attribute(self, name: str, data: bytes) -> None:
        assert len(data) == MODES[name][0]
        if name == "rtmr3:sha384":
            self.rtmr3 = hashlib.sha384(self.rtmr3 + data).digest()
            self.count += 1
            self.journal.append(data[0])
        elif name == "wo":
            self.wo = data
        else:
            self._fail(name)

    def _fail(self, name: str) -> bytes:
        if name == "eio":
            raise OSError(errno.EIO, "injected EIO")
        if name == "crash":
            raise RuntimeError("boom: injected provider bug")
        raise OSError(errno.EACCES, name)


def _server_main(mountpoint: str) -> None:
    import faulthandler

    from tsmr.backends.fuse import serve
    from tsmr.errors import BackendError

    faulthandler.register(signal.SIGUSR1)  # a test that waits too long asks where the server is stuck
    try:
        serve(ChainProvider(), mountpoint, ready=lambda: print("READY", flush=True))
    except BackendError as e:
        print(f"MOUNT-FAILED errno={e.errno}: {e}", file=sys.stderr, flush=True)
        sys.exit(3)


# --- helpers -----------------------------------------------------------------

class Served:
    def __init__(self, mountpoint: Path, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        self.mountpoint, self.proc, self.log = mountpoint, proc, log

    def path(self, name: str) -> str:
        return str(self.mountpoint / name)

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")


def _start(base: Path) -> Served:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is absent: no FUSE in this kernel or container")
    mountpoint = base / "mnt"
    mountpoint.mkdir()
    log = open(base / "server.log", "w+b")
    proc = subprocess.Popen([sys.executable, __file__, str(mountpoint)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    served = Served(mountpoint, proc, log)
    deadline = time.monotonic() + 15
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None:
            text = served.log_text()
            if proc.returncode == 3 and any(f"errno={c}:" in text for c in (errno.EPERM, errno.EACCES)):
                pytest.skip(f"not permitted to mount FUSE here: {text.strip()}")
            pytest.fail(f"FUSE server exited with {proc.returncode}: {text}")
        if time.monotonic() > deadline:
            _stop(served)
            pytest.fail("FUSE mount did not appear within 15 s")
        time.sleep(0.02)
    return served


def _stop(served: Served) -> None:
    from tsmr.backends.fuse import unmount

    try:
        if served.proc.poll() is None:
            served.proc.send_signal(signal.SIGTERM)
            try:
                served.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        unmount(served.mountpoint, missing_ok=True)
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(5)
        served.log.close()


def _is_mounted(path: Path) -> bool:
    target = str(path).encode()
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == target for line in f)


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = _start(tmp_path_factory.mktemp("fuse"))
    try:
        yield served
    finally:
        _stop(served)
    assert served.proc.returncode == 0, served.log_text()
    assert not _is_mounted(served.mountpoint)


def _read(path: str, size: int = 4096) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _errno_of(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


@pytest.fixture
def rtmr3(fs: Served) -> Iterator[int]:
    fd = os.open(fs.path("rtmr3:sha384"), os.O_RDWR)
    yield fd
    os.close(fd)


def _count(fs: Served) -> int:
    return int.from_bytes(_read(fs.path("count")), "little")


# --- the directory -------------------------------------------------------------

def test_listing_gives_exactly_the_attributes(fs: Served) -> None:
    assert sorted(os.listdir(fs.mountpoint)) == sorted(MODES)


def test_stat_sizes_modes_and_owner(fs: Served) -> None:
    root = os.stat(fs.mountpoint)
    assert stat.S_ISDIR(root.st_mode) and stat.S_IMODE(root.st_mode) == 0o755
    for name, (size, mode) in MODES.items():
        st = os.stat(fs.path(name))
        assert stat.S_ISREG(st.st_mode), name
        assert (st.st_size, stat.S_IMODE(st.st_mode)) == (size, mode), name
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_namespace_is_fixed_like_kernfs(fs: Served) -> None:
    assert _errno_of(os.open, fs.path("new"), os.O_WRONLY | os.O_CREAT, 0o644) == errno.EACCES
    assert _errno_of(os.mkdir, fs.path("dir")) == errno.EPERM
    assert _errno_of(os.unlink, fs.path("mrconfigid")) == errno.EPERM
    assert _errno_of(os.rename, fs.path("mrconfigid"), fs.path("x")) == errno.EPERM
    assert _errno_of(os.stat, fs.path("missing")) == errno.ENOENT
    assert os.statvfs(fs.mountpoint).f_namemax == 255


# --- reads -----------------------------------------------------------------------

def test_reads_full_at_offsets_and_past_end(fs: Served) -> None:
    assert _read(fs.path("mrconfigid")) == MRCONFIGID
    assert Path(fs.path("rtmr0:sha256")).read_bytes() == RTMR0
    fd = os.open(fs.path("mrconfigid"), os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 5) == MRCONFIGID[5:15]
        assert os.pread(fd, 100, 40) == MRCONFIGID[40:]  # clamped to size - pos
        assert os.pread(fd, 10, 48) == b""
        assert os.pread(fd, 10, 4096) == b""
        assert os.read(fd, 20) == MRCONFIGID[:20] and os.read(fd, 100) == MRCONFIGID[20:]
    finally:
        os.close(fd)


def test_reads_are_live_not_cached(fs: Served, rtmr3: int) -> None:
    reader = os.open(fs.path("rtmr3:sha384"), os.O_RDONLY)
    try:
        before = os.pread(reader, 48, 0)
        os.pwrite(rtmr3, b"\x01" * 48, 0)
        assert os.pread(reader, 48, 0) == hashlib.sha384(before + b"\x01" * 48).digest()
    finally:
        os.close(reader)


# --- writes ----------------------------------------------------------------------

def test_whole_write_extends_the_hash_chain(fs: Served, rtmr3: int) -> None:
    before, data = os.pread(rtmr3, 48, 0), hashlib.sha384(b"event").digest()
    assert os.write(rtmr3, data) == 48
    assert os.pread(rtmr3, 48, 0) == hashlib.sha384(before + data).digest()


def test_partial_writes_are_einval(fs: Served, rtmr3: int) -> None:
    before = os.pread(rtmr3, 48, 0)
    assert _errno_of(os.write, rtmr3, b"x" * 10) == errno.EINVAL
    assert _errno_of(os.pwrite, rtmr3, b"x" * 48, 10) == errno.EINVAL  # clamped to 38 at 10
    assert _errno_of(os.pwrite, rtmr3, b"x" * 38, 10) == errno.EINVAL
    assert os.pread(rtmr3, 48, 0) == before


def test_oversized_write_extends_with_first_size_bytes(fs: Served, rtmr3: int) -> None:
    before, data = os.pread(rtmr3, 48, 0), bytes(range(64))
    assert os.pwrite(rtmr3, data, 0) == 48
    assert os.pread(rtmr3, 48, 0) == hashlib.sha384(before + data[:48]).digest()


def test_write_at_or_past_end_is_efbig(fs: Served, rtmr3: int) -> None:
    assert _errno_of(os.pwrite, rtmr3, b"x" * 48, 48) == errno.EFBIG
    assert _errno_of(os.pwrite, rtmr3, b"x", 4096) == errno.EFBIG


def test_open_without_the_mode_bit_is_eacces_even_for_root(fs: Served) -> None:
    for name in ("mrconfigid", "rtmr0:sha256", "count"):
        assert _errno_of(os.open, fs.path(name), os.O_WRONLY) == errno.EACCES
        assert _errno_of(os.open, fs.path(name), os.O_RDWR) == errno.EACCES
    assert _errno_of(os.open, fs.path("wo"), os.O_RDONLY) == errno.EACCES
    fd = os.open(fs.path("wo"), os.O_WRONLY)
    try:
        assert os.write(fd, b"w" * 32) == 32
    finally:
        os.close(fd)


def test_echo_style_open_with_truncate_then_write(fs: Served) -> None:
    before, data = _read(fs.path("rtmr3:sha384")), b"\xee" * 48
    fd = os.open(fs.path("rtmr3:sha384"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, data) == 48
    finally:
        os.close(fd)
    assert _read(fs.path("rtmr3:sha384")) == hashlib.sha384(before + data).digest()
    assert os.stat(fs.path("rtmr3:sha384")).st_size == 48


# --- provider failures -----------------------------------------------------------

def test_provider_oserror_reaches_the_caller(fs: Served) -> None:
    assert _errno_of(_read, fs.path("eio")) == errno.EIO
    fd = os.open(fs.path("eio"), os.O_WRONLY)
    try:
        assert _errno_of(os.write, fd, b"e" * 16) == errno.EIO
    finally:
        os.close(fd)


def test_provider_bug_is_eio_and_server_survives(fs: Served, rtmr3: int) -> None:
    assert _errno_of(_read, fs.path("crash")) == errno.EIO
    fd = os.open(fs.path("crash"), os.O_WRONLY)
    try:
        assert _errno_of(os.write, fd, b"c" * 16) == errno.EIO
    finally:
        os.close(fd)
    before = os.pread(rtmr3, 48, 0)
    assert os.pwrite(rtmr3, b"\x02" * 48, 0) == 48
    assert os.pread(rtmr3, 48, 0) == hashlib.sha384(before + b"\x02" * 48).digest()
    assert "boom: injected provider bug" in fs.log_text()


# --- sequences and concurrency ---------------------------------------------------

def test_200_sequential_extends(fs: Served, rtmr3: int) -> None:
    value, n0 = os.pread(rtmr3, 48, 0), _count(fs)
    for i in range(200):
        data = hashlib.sha384(i.to_bytes(4, "little")).digest()
        assert os.pwrite(rtmr3, data, 0) == 48
        value = hashlib.sha384(value + data).digest()
    assert os.pread(rtmr3, 48, 0) == value
    assert _count(fs) == n0 + 200


_WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
data = bytes([int(sys.argv[2])]) * 48
print("ready", flush=True)
sys.stdin.readline()
for _ in range(100):
    assert os.pwrite(fd, data, 0) == 48
"""


def test_concurrent_writers_lose_nothing(fs: Served, rtmr3: int) -> None:
    start, n0 = os.pread(rtmr3, 48, 0), _count(fs)
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, fs.path("rtmr3:sha384"), str(tag)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for tag in (0xAA, 0xBB)]
    try:
        for w in writers:  # both poised before either starts, so that they overlap
            assert w.stdout is not None and w.stdout.readline() == b"ready\n"
        for w in writers:
            assert w.stdin is not None
            w.stdin.write(b"go\n")
            w.stdin.flush()
        assert [w.wait(20) for w in writers] == [0, 0]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    n1 = _count(fs)
    assert n1 == n0 + 200 and n1 <= JOURNAL
    order = _read(fs.path("journal"), JOURNAL)[n0:n1]
    assert sorted(order) == [0xAA] * 100 + [0xBB] * 100
    value = start
    for tag in order:  # the final value is the chain over the interleaving the server applied
        value = hashlib.sha384(value + bytes([tag]) * 48).digest()
    assert os.pread(rtmr3, 48, 0) == value


# --- lifecycle -------------------------------------------------------------------

def test_sigterm_unmounts_and_exits(tmp_path: Path) -> None:
    served = _start(tmp_path)
    try:
        assert _read(served.path("mrconfigid")) == MRCONFIGID
        served.proc.send_signal(signal.SIGTERM)
        try:
            code = served.proc.wait(60)
        except subprocess.TimeoutExpired:
            served.proc.send_signal(signal.SIGUSR1)  # the server's stacks, into its log
            time.sleep(1)
            pytest.fail(f"the server did not exit within 60 s of SIGTERM; its log and stacks:\n{served.log_text()}")
        assert code == 0, served.log_text()
        assert not _is_mounted(served.mountpoint)
        assert os.listdir(served.mountpoint) == []
    finally:
        _stop(served)


def test_external_unmount_is_lazy_then_server_exits(tmp_path: Path) -> None:
    from tsmr.backends.fuse import unmount

    served = _start(tmp_path)
    try:
        fd = os.open(served.path("rtmr3:sha384"), os.O_RDWR)
        try:
            assert unmount(served.mountpoint) is True
            assert not _is_mounted(served.mountpoint)
            # Detached, not dead: an already-open register keeps working, as after umount -l.
            before = os.pread(fd, 48, 0)
            assert os.pwrite(fd, b"\x03" * 48, 0) == 48
            assert os.pread(fd, 48, 0) == hashlib.sha384(before + b"\x03" * 48).digest()
            assert served.proc.poll() is None
        finally:
            os.close(fd)
        assert served.proc.wait(5) == 0, served.log_text()
        assert unmount(served.mountpoint, missing_ok=True) is False
    finally:
        _stop(served)


def test_missing_device_is_a_clear_backend_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tsmr.backends import fuse
    from tsmr.errors import BackendError

    monkeypatch.setattr(fuse, "_DEVICE", str(tmp_path / "no-fuse-device"))
    with pytest.raises(BackendError) as info:
        fuse.mount(ChainProvider(), tmp_path)
    assert info.value.backend == "fuse" and "is missing" in str(info.value)
    with pytest.raises(BackendError, match="nothing is mounted"):
        fuse.unmount(tmp_path)


if __name__ == "__main__":
    _server_main(sys.argv[1])
