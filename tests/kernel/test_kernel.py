"""Assertions on the kernel tier's report (tests/kernel/run.py writes it; make test-kernel runs both).

The guest ran one sequence of operations on Linux's own tsm_mr_sample module through
tsmr's sysfs backend, the same sequence on the emulator's ``sample`` profile, a logged
digest-only extend next to the kernel's own digest write, and the runtime log on rtmr1:sha384.  Here the same sequence also runs on the host against the
emulator mounted through FUSE: all three must agree, value for value and errno for errno.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT = Path(os.environ.get("TSMR_KERNEL_REPORT", ROOT / ".state" / "kernel-report.json"))
TSMR = os.path.join(os.path.dirname(sys.executable), "tsmr")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

SAMPLE_INITIAL_REPORT_DIGEST = (
    "106d079f9954b62443dc0595906460dba92ce1398aeeb6430e27ac5704322307"
    "cdd16d1512d7cbae214c99ff484f7bb5d8bb267d1f4f4d5cd75f4f77fe3d63cf"
)


@pytest.fixture(scope="module")
def report() -> dict:  # type: ignore[type-arg]
    if not REPORT.exists():
        if os.environ.get("CI"):
            pytest.fail(f"no kernel report at {REPORT}: run tests/kernel/run.py first (make test-kernel does)")
        pytest.skip(f"no kernel report at {REPORT} (make test-kernel builds the guest and writes it)")
    data = json.loads(REPORT.read_text())
    assert "exception" not in data, data["exception"] + "\n--- console ---\n" + data.get("console_tail", "")
    return data


def _ops(seq: list) -> dict:  # type: ignore[type-arg]
    return {s["op"]: s["result"] for s in seq}


def test_module_loaded_and_discovered(report: dict) -> None:  # type: ignore[type-arg]
    assert "TSMR: module loaded" in report["console_tail"], report["console_tail"]
    found = _ops(report["kernel"])["discover"]
    assert ["rtmr1", "sha384", 48, ["readable", "writable", "live"]] in found
    assert ["rtmr0", "sha256", 32, ["readable", "live"]] in found
    assert ["config_mr", "raw", 64, ["readable", "nohash"]] in found
    assert ["rtmr_crypto_agile", "sha256", 32, ["readable", "writable", "live"]] in found
    assert _ops(report["kernel"])["read-all"]["report_digest"]["sha512"] == SAMPLE_INITIAL_REPORT_DIGEST


def test_kernel_and_emulator_library_agree(report: dict) -> None:  # type: ignore[type-arg]
    kernel, emu = _ops(report["kernel"]), _ops(report["emulator"])
    for op, result in emu.items():
        assert kernel[op] == result, f"{op}: kernel {kernel[op]} != emulator {result}"


def test_kernel_errnos(report: dict) -> None:  # type: ignore[type-arg]
    k = _ops(report["kernel"])
    assert k["raw short write"] == {"errno": "EINVAL"}
    assert k["raw write at offset"] == {"errno": "EINVAL"}
    assert k["raw write past end"] == {"errno": "EFBIG"}
    assert k["raw oversized write"] == {"written": 48}
    assert k["raw write read-only"] == {"open_errno": "EACCES"}
    assert k["extend read-only rtmr0"]["error"] == "InputError"


def test_kernel_and_fuse_mounted_emulator_agree(report: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from conftest import emulator_mount
    from guest import sequence
    from tsmr.backends.emulated import EmulatedRegisterSet
    from tsmr.backends.sysfs import SysfsRegisterSet

    EmulatedRegisterSet("sample", tmp_path).close()
    with emulator_mount("sample", tmp_path) as mnt, SysfsRegisterSet(mnt) as rs:
        fuse = _ops(sequence(rs, str(mnt)))
    kernel = _ops(report["kernel"])
    assert fuse.keys() == kernel.keys()
    for op in kernel:
        assert fuse[op] == kernel[op], f"{op}: FUSE {fuse[op]} != kernel {kernel[op]}"


def test_logged_extend_changes_the_register_as_the_kernel_digest_write(report: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """`tsmr extend rtmr1 --digest D` with logging on changes the real rtmr1 as the kernel's own write of D
    does, H(value || D) and nothing else; the log (a directive, then the sync record of the next event)
    verifies.  The tsmr command itself, on the emulator mounted as a tsm-mr directory after the same
    sequence, gives every value the kernel gave."""
    from conftest import emulator_mount
    from guest import logged_extend, sequence
    from tsmr.backends.emulated import EmulatedRegisterSet
    from tsmr.backends.sysfs import SysfsRegisterSet

    got = report["logged_extend"]
    d = bytes.fromhex(got["digest"])
    after = hashlib.sha384(bytes.fromhex(got["before"]) + d).hexdigest()
    assert got["after_logged_extend"] == after
    assert got["kernel_write"] == {"written": 48}
    assert got["after_kernel_write"] == hashlib.sha384(bytes.fromhex(after) + d).hexdigest()
    assert got["verify"] == {"ok": True, "findings": []}
    assert got["lines"] == [f"# .EXTEND sha384/{d.hex()}", f"SYNC sha384/{got['after_kernel_write']}",
                            "example.com/kernel-test after-digest-only-extend"]

    state, logs = tmp_path / "state", tmp_path / "logs"
    EmulatedRegisterSet("sample", state).close()
    with emulator_mount("sample", state) as mnt, SysfsRegisterSet(mnt) as rs:
        sequence(rs, str(mnt))

        def tsmr_extend(digest: bytes) -> None:
            cmd = [TSMR, "extend", "rtmr1", "--digest", digest.hex(), "--backend", f"sysfs:{mnt}", "--log-dir", str(logs)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr

        fuse = logged_extend(rs, str(mnt), str(logs), tsmr_extend)
    assert fuse == got


def test_runtime_log_on_the_real_rtmr1(report: dict) -> None:  # type: ignore[type-arg]
    log = report["runtime_log"]
    assert log["ok"] and log["findings"] == []
    assert log["lines"][0].startswith("SYNC sha384/") and log["lines"][-1].startswith("# .EXTEND sha384/")


def test_configfs_tsm_without_a_provider(report: dict) -> None:  # type: ignore[type-arg]
    """The real configfs-tsm (tsm_report) in a guest that is no TEE: the tree is there, reports are refused
    with ENXIO, and the client says why and leaves nothing behind."""
    got = report.get("configfs_tsm")
    assert got is not None, report.get("exception")
    assert got["root"] == ["report"]  # the same top level the emulated tree serves
    assert got["mkdir"] == "ENXIO"
    client = got["client"]
    assert client["error"] == "BackendError" and client["errno"] == errno.ENXIO
    assert "no attestation provider" in client["message"]
    assert got["left_over"] == []
