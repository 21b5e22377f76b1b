"""Discovery of a tsm-mr directory from file names and modes.

A plain directory stands in for sysfs here: discovery only looks at names,
types, sizes and modes.  Behaviour (extend semantics, kernel errors) is tested
against a FUSE-mounted emulator in tests/conformance.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tsmr import BackendError, Flag, HashAlg, InputError
from tsmr.backends.sysfs import SysfsRegisterSet, find_measurement_dirs, provider_name


def make(d: Path, name: str, size: int, mode: int) -> None:
    p = d / name
    p.write_bytes(bytes(size))
    os.chmod(p, mode)


@pytest.fixture
def tdx_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tdx_guest" / "measurements"
    d.mkdir(parents=True)
    make(d, "mrtd:sha384", 48, 0o444)
    for n in ("mrconfigid", "mrowner", "mrownerconfig"):
        make(d, n, 48, 0o444)
    for i in range(4):
        make(d, f"rtmr{i}:sha384", 48, 0o644)
    return d


def test_discovery(tdx_dir: Path) -> None:
    rs = SysfsRegisterSet(tdx_dir)
    assert rs.provider == "tdx_guest" and rs.kind == "sysfs"
    regs = {r.name: r for r in rs.registers()}
    assert sorted(regs) == ["mrconfigid", "mrowner", "mrownerconfig", "mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"]
    assert regs["rtmr3"].flags == Flag.READABLE | Flag.WRITABLE | Flag.LIVE
    assert regs["rtmr3"].algs == (HashAlg.SHA384,)
    assert regs["mrtd"].flags == Flag.READABLE
    assert regs["mrconfigid"].flags == Flag.READABLE | Flag.NOHASH and regs["mrconfigid"].algs == (None,)
    assert rs.read("mrconfigid")[None] == bytes(48)


def test_crypto_agile_banks_merge(tmp_path: Path) -> None:
    make(tmp_path, "rtmr_crypto_agile:sha384", 48, 0o644)
    make(tmp_path, "rtmr_crypto_agile:sha256", 32, 0o644)
    make(tmp_path, "report_digest:sha512", 64, 0o444)
    regs = {r.name: r for r in SysfsRegisterSet(tmp_path).registers()}
    assert regs["rtmr_crypto_agile"].algs == (HashAlg.SHA256, HashAlg.SHA384)
    assert [b.attribute for b in regs["rtmr_crypto_agile"].banks] == ["rtmr_crypto_agile:sha256", "rtmr_crypto_agile:sha384"]
    assert Flag.LIVE in regs["report_digest"].flags


def test_odd_entries_are_skipped_and_reported(tmp_path: Path) -> None:
    make(tmp_path, "rtmr0:sha384", 48, 0o644)
    make(tmp_path, "weird name", 48, 0o644)
    make(tmp_path, "x:md5", 16, 0o444)
    make(tmp_path, "short:sha384", 47, 0o444)
    (tmp_path / "subdir").mkdir()
    os.symlink(tmp_path / "rtmr0:sha384", tmp_path / "link:sha384")
    rs = SysfsRegisterSet(tmp_path)
    assert [r.name for r in rs.registers()] == ["rtmr0"]
    text = "\n".join(rs.skipped)
    for frag in ("'weird name'", "unknown hash 'md5'", "short:sha384: size 47", "subdir: not a regular file", "link:sha384"):
        assert frag in text


def test_unreadable_register_and_bad_names(tdx_dir: Path) -> None:
    make(tdx_dir, "wo:sha256", 32, 0o200)
    rs = SysfsRegisterSet(tdx_dir)
    with pytest.raises(InputError, match="not readable"):
        rs.read("wo")
    with pytest.raises(InputError, match="invalid register name"):
        rs.read("../tdx_guest")
    with pytest.raises(InputError, match="invalid attribute name"):
        rs.read_attribute("../../etc/passwd")


def test_missing_directory() -> None:
    with pytest.raises(BackendError, match="is not a directory"):
        SysfsRegisterSet("/nonexistent/measurements")


def test_provider_name_and_search(tmp_path: Path) -> None:
    for prov in ("tsm_mr_sample", "tdx_guest", "arm_cca_guest"):
        (tmp_path / prov / "measurements").mkdir(parents=True)
    found = find_measurement_dirs(str(tmp_path / "*" / "measurements"))
    assert [p.parent.name for p in found] == ["tdx_guest", "arm_cca_guest", "tsm_mr_sample"]
    assert provider_name(tmp_path / "mnt") == "mnt"
