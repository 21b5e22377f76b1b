"""The runtime log on every backend: emulator, sysfs on a FUSE-mounted emulator, swtpm."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

import pytest

from conftest import emulator_mount
from swtpm import Swtpm
from tsmr.backends.emulated import EmulatedRegisterSet
from tsmr.backends.sysfs import SysfsRegisterSet
from tsmr.registers import BaseRegisterSet
from tsmr.runtime_log.replay import replay
from tsmr.runtime_log.store import RuntimeLog


@contextlib.contextmanager
def backend(kind: str, tmp: Path) -> Iterator[tuple[BaseRegisterSet, str]]:
    if kind == "emulated":
        with EmulatedRegisterSet("tdx", tmp / "s") as rs:
            yield rs, "rtmr3"
    elif kind == "sysfs-fuse":
        EmulatedRegisterSet("tdx", tmp / "s").close()
        with emulator_mount("tdx", tmp / "s") as mnt, SysfsRegisterSet(mnt) as rs:
            yield rs, "rtmr3"
    else:
        if not Swtpm.available():
            pytest.skip("swtpm not installed (make test installs it)")
        from tsmr.backends.tpm import TpmRegisterSet

        with Swtpm() as tpm, TpmRegisterSet(tpm.tcti) as rs:
            yield rs, "pcr16"


@pytest.mark.parametrize("kind", ["emulated", "sysfs-fuse", "swtpm"])
def test_append_verify_gap_and_export(kind: str, tmp_path: Path) -> None:
    with backend(kind, tmp_path) as (rs, reg), RuntimeLog(rs, reg, log_dir=tmp_path / "logs") as log:
        res = log.append_many(['example.com/app deploy {"image":"alpine"}', "example.com/app start"])
        assert res.synced and len(res.lines) == 3
        live = {a: v for a, v in rs.read(reg, log.algs).items() if a is not None}
        assert res.values == live
        # an independent replay with hashlib
        for alg, value in live.items():
            state = alg.zero()
            for line in res.lines:
                state = alg.extend(state, alg.hash(line.encode()))
            assert state == value
        assert log.verify().ok
        # digest-only extend through the log
        log.extend_digest({a: bytes([3]) * a.digest_size for a in log.algs})
        assert log.verify().ok
        # out-of-band extend: mismatch, then recorded as a gap by the next append
        alg = log.algs[-1]
        rs.extend(reg, {alg: hashlib.new(alg.new().name, b"rogue").digest()})
        report = log.verify()
        assert report.banks[alg].status == "mismatched" and report.banks[alg].last_matching_line is None
        res = log.append("example.com/app after")
        assert res.gap
        report = log.verify()
        assert report.matched and len({g.line for g in report.gaps}) == 1
        now = {a: v for a, v in rs.read(reg, log.algs).items() if a is not None}
        assert replay(log.read(), expected=now).matched
