"""configfs-tsm: the client against the emulated tree, mounted through FUSE, and the report state machine."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tsmr.backends.configfs import ConfigfsTsm, report_data
from tsmr.backends.configfs_emulated import EmulatedTsm, ReportDesc, TsmReportItem, source_for
from tsmr.errors import BackendError, InputError

from conftest import emulator_mount, fuse_usable

NOW = dt.datetime.now(dt.timezone.utc)


class Echo:
    """A provider whose outblob tells what it was asked; big blobs on request."""

    name = "echo_guest"
    privlevel_floor = 1

    def __init__(self, size: int = 0) -> None:
        self.size = size
        self.calls = 0

    def report_new(self, desc: ReportDesc) -> tuple[bytes, bytes | None, bytes | None]:
        self.calls += 1
        head = json.dumps({"inblob": desc.inblob.hex(), "privlevel": desc.privlevel, "sp": desc.service_provider,
                           "guid": desc.service_guid, "mv": desc.service_manifest_version, "n": self.calls}).encode()
        big = bytes((i * 7) & 0xFF for i in range(self.size))
        return head + big, b"aux:" + big, b"manifest" if desc.service_provider else None


# --- the state machine, in process ---------------------------------------------------

def test_generation_advances_on_every_accepted_write_only():
    item = TsmReportItem(Echo())
    assert item.show("generation") == b"0\n"
    item.store("privlevel", b"2\n")
    item.store("service_provider", b"svsm\n")
    item.store("service_guid", b"c476f1eb-0123-45a5-9641-b4e7dde5bfe3")
    item.store("service_manifest_version", b"0x10")
    item.write_inblob(b"\x01" * 64)
    assert item.show("generation") == b"5\n"
    for name, bad in (("privlevel", b"0"), ("privlevel", b"4"), ("privlevel", b"x"), ("service_guid", b"nope"),
                      ("service_manifest_version", b"-1")):
        with pytest.raises(OSError) as exc:
            item.store(name, bad)
        assert exc.value.errno == errno.EINVAL, name
    # A bad GUID still counted as a write (the kernel advances before parsing) and reset the GUID.
    assert item.show("generation") == b"6\n"
    assert item.desc.service_guid == "00000000-0000-0000-0000-000000000000"
    assert item.desc.privlevel == 2 and item.desc.service_provider == "svsm"
    assert item.desc.service_manifest_version == 16


def test_report_is_cached_until_the_next_write():
    src = Echo()
    item = TsmReportItem(src)
    with pytest.raises(OSError) as exc:
        item.read_blob("outblob")  # no inblob yet
    assert exc.value.errno == errno.EINVAL
    item.write_inblob(b"a" * 64)
    first = item.read_blob("outblob")
    assert item.read_blob("auxblob").startswith(b"aux:") and item.read_blob("outblob") == first
    assert src.calls == 1
    item.write_inblob(b"b" * 64)
    assert json.loads(item.read_blob("outblob"))["inblob"] == (b"b" * 64).hex()
    assert src.calls == 2


def test_writes_without_a_read_stop_at_the_wraparound():
    item = TsmReportItem(Echo())
    item.write_inblob(b"x")
    item.read_blob("outblob")
    item.write_generation = (item.read_generation - 2) % (1 << 64)
    item.write_inblob(b"y")  # one more is allowed ...
    with pytest.raises(OSError) as exc:
        item.write_inblob(b"z")  # ... then the kernel wants a read first
    assert exc.value.errno == errno.EBUSY
    item.read_blob("outblob")
    item.write_inblob(b"z")


def test_in_process_emulated_reports(state_dir):
    import tsmr
    from tsmr.evidence import cca, tdx
    from tsmr.backends.emulated_evidence.cca import EmulatedCCASigner

    with tsmr.open("emulated:tdx") as regs:
        regs.extend("rtmr2", {tsmr.HashAlg.SHA384: bytes(range(48))})
        rep = EmulatedTsm(source_for(regs)).report(report_data(b"nonce"))
        assert rep.provider == "tdx_guest" and rep.kind == "tdx" and rep.auxblob is None
        root = (regs.dir / "qe" / "root.pem").read_bytes()
        from cryptography import x509

        claims = tdx.verify_quote(rep.outblob, now=NOW, report_data=report_data(b"nonce"),
                                  trust_root=x509.load_pem_x509_certificate(root))
        assert claims.registers["rtmr2"] == regs.read("rtmr2")[tsmr.HashAlg.SHA384]
        with pytest.raises(BackendError, match="EINVAL"):  # tdx_guest takes exactly 64 bytes
            EmulatedTsm(source_for(regs)).report(b"short")
    with tsmr.open("emulated:cca") as regs:
        rep = EmulatedTsm(source_for(regs)).report(b"c" * 40)
        assert rep.kind == "cca"
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        cpak = load_pem_public_key(EmulatedCCASigner(regs.dir / "rmm").cpak_pem.read_bytes())
        claims = cca.verify_token(rep.outblob, cpak=cpak, challenge=(b"c" * 40).ljust(64, b"\0"))
        assert claims.rem0 == regs.read("rem0")[next(iter(regs.read("rem0")))]
    with tsmr.open("emulated:sample") as regs, pytest.raises(InputError, match="no attestation provider"):
        source_for(regs)


def test_client_input_checks(tmp_path):
    client = ConfigfsTsm(tmp_path)
    with pytest.raises(InputError, match="1 to 64 bytes"):
        client.report(b"x" * 65)
    with pytest.raises(InputError, match="privlevel"):
        client.report(b"x", privlevel=4)
    with pytest.raises(InputError, match="not a GUID"):
        client.report(b"x", service_guid="zz")
    with pytest.raises(InputError, match="at most 64"):
        report_data(b"x" * 65)


def test_missing_configfs_explains_what_to_do(tmp_path):
    with pytest.raises(BackendError) as exc:
        ConfigfsTsm(tmp_path / "nowhere").report(b"x" * 64)
    assert exc.value.errno == errno.ENOENT
    assert "mount -t configfs" in str(exc.value) and "CONFIG_TSM_REPORTS" in str(exc.value)


# --- the mounted tree ----------------------------------------------------------------

@pytest.fixture
def echo_tree() -> Iterator[tuple[Path, Echo]]:
    """An ``Echo`` provider's configfs tree, served from a thread of this process."""
    reason = fuse_usable()
    if reason:
        pytest.skip(f"FUSE unavailable: {reason}")
    from tsmr.backends import configfs_emulated

    src = Echo(size=100_000)
    mnt = Path(tempfile.mkdtemp(prefix="tsmr-cfs-"))
    try:
        server = configfs_emulated.mount(src, mnt)
    except BackendError as exc:
        if exc.errno == errno.EPERM:
            pytest.skip(f"FUSE mount not permitted here: {exc}")
        raise
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mnt, src
    finally:
        server.stop()
        thread.join(10)
        assert not thread.is_alive()
        os.rmdir(mnt)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_tree_layout_modes_and_file_semantics(echo_tree):
    mnt, src = echo_tree
    assert sorted(os.listdir(mnt)) == ["report"]
    rep = mnt / "report" / "r1"
    os.mkdir(rep)
    with pytest.raises(FileExistsError):
        os.mkdir(rep)
    modes = {p.name: p.stat().st_mode & 0o777 for p in rep.iterdir()}
    assert modes == {"generation": 0o444, "provider": 0o444, "privlevel": 0o200, "privlevel_floor": 0o444,
                     "service_provider": 0o200, "service_guid": 0o200, "service_manifest_version": 0o200,
                     "inblob": 0o200, "outblob": 0o444, "auxblob": 0o444, "manifestblob": 0o444}
    assert (rep / "provider").read_text() == "echo_guest\n"
    assert (rep / "privlevel_floor").read_text() == "1\n"
    for name, flags in (("outblob", os.O_WRONLY), ("inblob", os.O_RDONLY), ("generation", os.O_RDWR)):
        with pytest.raises(PermissionError):
            os.open(rep / name, flags)
    with pytest.raises(OSError) as exc:
        (rep / "outblob").read_bytes()
    assert exc.value.errno == errno.EINVAL  # nothing to report on yet
    with pytest.raises(OSError) as exc:
        _write(rep / "inblob", b"\0" * 65)
    assert exc.value.errno == errno.EFBIG
    with pytest.raises(OSError) as exc:
        _write(rep / "privlevel", b"0")  # below the provider's floor
    assert exc.value.errno == errno.EINVAL
    assert (rep / "generation").read_text() == "0\n"
    # inblob is committed on close, whatever the write pattern was.
    fd = os.open(rep / "inblob", os.O_WRONLY)
    os.write(fd, b"ab")
    os.pwrite(fd, b"cd", 2)
    assert (rep / "generation").read_text() == "0\n"
    os.close(fd)
    assert (rep / "generation").read_text() == "1\n"
    out = (rep / "outblob").read_bytes()
    assert len(out) > 100_000  # far beyond the 4096 bytes stat reports
    assert json.loads(out[: out.index(b"}") + 1])["inblob"] == b"abcd".hex()
    assert (rep / "auxblob").read_bytes() == b"aux:" + out[out.index(b"}") + 1:]
    assert (rep / "manifestblob").read_bytes() == b""
    with pytest.raises(PermissionError):
        os.mkdir(mnt / "elsewhere")
    with pytest.raises(OSError):
        (rep / "newfile").write_bytes(b"x")
    os.rmdir(rep)
    assert os.listdir(mnt / "report") == []
    with pytest.raises(OSError):
        os.rmdir(mnt / "report")


def test_an_open_blob_keeps_its_bytes_while_the_report_changes(echo_tree):
    mnt, src = echo_tree
    rep = mnt / "report" / "r2"
    os.mkdir(rep)
    _write(rep / "inblob", b"1" * 64)
    fd = os.open(rep / "outblob", os.O_RDONLY)
    first = os.read(fd, 10)
    _write(rep / "inblob", b"2" * 64)
    rest = b""
    while chunk := os.read(fd, 65536):
        rest += chunk
    os.close(fd)
    assert (first + rest).startswith(b'{"inblob": "' + (b"1" * 64).hex().encode())
    assert json.loads((rep / "outblob").read_bytes().split(b"}")[0] + b"}")["inblob"] == (b"2" * 64).hex()
    os.rmdir(rep)


def test_client_report_through_the_tree(echo_tree):
    mnt, src = echo_tree
    rep = ConfigfsTsm(mnt).report(b"n" * 10, privlevel=2, service_provider="svsm",
                                  service_guid="C476F1EB-0123-45A5-9641-B4E7DDE5BFE3", service_manifest_version=1)
    head = json.loads(rep.outblob[: rep.outblob.index(b"}") + 1])
    assert head == {"inblob": (b"n" * 10).hex(), "privlevel": 2, "sp": "svsm",
                    "guid": "c476f1eb-0123-45a5-9641-b4e7dde5bfe3", "mv": 1, "n": 1}
    assert rep.generation == 5 and rep.provider == "echo_guest" and rep.kind is None
    assert rep.manifestblob == b"manifest" and rep.auxblob.startswith(b"aux:")
    assert os.listdir(mnt / "report") == []  # cleaned up


class Interfering(ConfigfsTsm):
    """Another writer changes inblob between our writes and our read, ``times`` times."""

    def __init__(self, root: Path, times: int) -> None:
        super().__init__(root)
        self.times = times

    def _read(self, path, attr, *, optional=False):  # type: ignore[no-untyped-def]
        if attr == "outblob" and self.times > 0:
            self.times -= 1
            _write(path / "inblob", b"X" * 64)
        return super()._read(path, attr, optional=optional)


def test_a_concurrent_writer_is_detected_and_retried(echo_tree):
    mnt, src = echo_tree
    rep = Interfering(mnt, 1).report(b"m" * 64)
    assert json.loads(rep.outblob[: rep.outblob.index(b"}") + 1])["inblob"] == (b"m" * 64).hex()
    with pytest.raises(BackendError, match="changed by another writer") as exc:
        Interfering(mnt, 99).report(b"m" * 64)
    assert exc.value.errno == errno.EBUSY
    assert os.listdir(mnt / "report") == []


def test_emulated_tdx_and_cca_through_configfs_cli(state_dir, tmp_path):
    """`tsmr emulate configfs` serves the tree; quote get/attest/verify use it like a real guest's."""
    env = dict(os.environ, TSMR_STATE_DIR=str(state_dir))
    tsmr_cmd = [sys.executable, "-m", "tsmr.cli.main"]
    for profile, flag, anchor in (("tdx", "--trust-root", "qe/root.pem"), ("cca", "--cpak", "rmm/cpak.pem")):
        subprocess.run([*tsmr_cmd, "emulate", "init", "--profile", profile], env=env, check=True, capture_output=True)
        with emulator_mount(profile, state_dir, command="configfs") as mnt:
            assert (mnt / "report").is_dir()
            run_env = dict(env, TSMR_CONFIGFS_TSM=str(mnt))
            run_env.pop("TSMR_BACKEND", None)
            out = tmp_path / f"{profile}.bin"
            got = subprocess.run([*tsmr_cmd, "quote", "get", "--nonce", "c0ffee" * 8, "-o", str(out), "--json"],
                                 env=run_env, capture_output=True, text=True)
            assert got.returncode == 0, got.stderr
            summary = json.loads(got.stdout)
            assert summary["source"] == "configfs" and summary["kind"] == profile
            key = str(state_dir / "emulator" / profile / anchor)
            ok = subprocess.run([*tsmr_cmd, "quote", "verify", str(out), flag, key, "--nonce",
                                 ("c0ffee" * 8).ljust(128, "0"), "--json"], env=run_env, capture_output=True, text=True)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert json.loads(ok.stdout)["verified"] is True
            bad = subprocess.run([*tsmr_cmd, "quote", "verify", str(out), "--nonce", "00" * 64, flag, key, "--json"],
                                 env=run_env, capture_output=True, text=True)
            assert bad.returncode == 1
            assert json.loads(bad.stdout)["check"] in ("tdx.report_data", "cca.challenge")
            bundle = tmp_path / f"{profile}.json"
            got = subprocess.run([*tsmr_cmd, "attest", "--nonce", "c0ffee", "-o", str(bundle), "--json"],
                                 env=run_env, capture_output=True, text=True)
            assert got.returncode == 0, got.stderr
            doc = json.loads(bundle.read_text())
            assert doc["evidence"]["kind"] == profile and doc["evidence"]["provider"].endswith("_guest")
            ok = subprocess.run([*tsmr_cmd, "verify", str(bundle), flag, key, "--json"], env=run_env,
                                capture_output=True, text=True)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            # Not trusted by default: without the test key, TDX falls back to the Intel root and fails.
            if profile == "tdx":
                no = subprocess.run([*tsmr_cmd, "verify", str(bundle), "--json"], env=run_env,
                                    capture_output=True, text=True)
                assert no.returncode == 1 and json.loads(no.stdout)["check"].startswith("tdx.pck_chain")
            assert os.listdir(mnt / "report") == []
