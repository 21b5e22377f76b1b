"""Several processes extending one emulated register at once lose nothing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import emulator_mount
from tsmr import HashAlg
from tsmr.backends.emulated import EmulatedRegisterSet

WORKER = r"""
import hashlib, sys
from tsmr import HashAlg, open as tsmr_open
backend, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with tsmr_open(backend, state_dir=sys.argv[4]) as rs:
    for i in range(count):
        rs.extend("rtmr3", {HashAlg.SHA384: hashlib.sha384(f"{tag}-{i}".encode()).digest()})
"""


def _run_workers(backends: list[str], state: Path, count: int) -> list[str]:
    tags = [f"w{i}" for i in range(len(backends))]
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, b, t, str(count), str(state)], stderr=subprocess.PIPE, text=True)
        for b, t in zip(backends, tags)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    return tags


def _check(state: Path, tags: list[str], count: int) -> None:
    with EmulatedRegisterSet("tdx", state) as rs:
        entries = [e for e in rs.journal() if e.attribute == "rtmr3:sha384"]
        final = rs.read("rtmr3")[HashAlg.SHA384]
    expected = Counter(hashlib.sha384(f"{t}-{i}".encode()).digest() for t in tags for i in range(count))
    assert Counter(e.data for e in entries) == expected  # every extend exactly once
    value = bytes(48)
    for e in entries:  # replay in the order the emulator recorded them
        value = hashlib.sha384(value + e.data).digest()
    assert value == final
    # and the writers really interleaved (otherwise this test proves little)
    firsts = [e.data for e in entries]
    switches = sum(1 for a, b in zip(firsts, firsts[1:]) if (a in expected) and a != b)
    assert switches > 0


def test_four_library_processes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    EmulatedRegisterSet("tdx", state).close()
    tags = _run_workers(["emulated:tdx"] * 4, state, 300)
    _check(state, tags, 300)


def test_library_and_fuse_writers_together(tmp_path: Path) -> None:
    state = tmp_path / "state"
    EmulatedRegisterSet("tdx", state).close()
    with emulator_mount("tdx", state) as mnt:
        tags = _run_workers(["emulated:tdx", "emulated:tdx", f"sysfs:{mnt}", f"sysfs:{mnt}"], state, 150)
    _check(state, tags, 150)
