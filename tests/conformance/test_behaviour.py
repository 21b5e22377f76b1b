"""One behavioural suite for every register backend built on the emulator.

Each test runs on the emulator used as a library (``emulated:P``) and on the
``sysfs`` backend pointed at the same emulator served through FUSE with the
kernel's semantics (``sysfs:MOUNT``), for every profile.  Expected register
tables come from the kernel sources (tests/expected_profiles.py), not from the
code under test.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import emulator_mount
from expected_profiles import (
    EXPECTED,
    SAMPLE_INITIAL_REPORT_DIGEST,
    SAMPLE_REPORT_DIGEST_AFTER_ZERO,
    SAMPLE_RTMR1_AFTER_ZERO,
)
from tsmr import HashAlg, InputError, UnknownRegisterError
from tsmr.backends.emulated import EmulatedRegisterSet
from tsmr.backends.sysfs import SysfsRegisterSet
from tsmr.errors import BackendError
from tsmr.registers import BaseRegisterSet

PROFILES = ["tdx", "cca", "tpm", "sample"]
KINDS = ["emulated", "sysfs-fuse"]


class Rig:
    """A backend under test plus the emulator state behind it (to reset between tests)."""

    def __init__(self, kind: str, profile: str, rs: BaseRegisterSet, state: Path) -> None:
        self.kind, self.profile, self.rs, self.state = kind, profile, rs, state

    def reset(self) -> None:
        with EmulatedRegisterSet(self.profile, self.state) as emu:
            emu.reset()


@pytest.fixture(scope="session")
def rigs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Rig]]:
    state = tmp_path_factory.mktemp("conformance-state")
    made: dict[tuple[str, str], Rig] = {}
    with contextlib.ExitStack() as stack:

        def get(kind: str, profile: str) -> Rig:
            key = (kind, profile)
            if key not in made:
                if kind == "emulated":
                    rs: BaseRegisterSet = EmulatedRegisterSet(profile, state)
                else:
                    EmulatedRegisterSet(profile, state).close()
                    mnt = stack.enter_context(emulator_mount(profile, state))
                    rs = SysfsRegisterSet(mnt)
                stack.callback(rs.close)
                made[key] = Rig(kind, profile, rs, state)
            return made[key]

        yield get  # type: ignore[misc]


@pytest.fixture(params=[(k, p) for p in PROFILES for k in KINDS], ids=lambda kp: f"{kp[0]}-{kp[1]}")
def rig(request: pytest.FixtureRequest, rigs) -> Rig:  # type: ignore[no-untyped-def]
    r = rigs(*request.param)
    r.reset()
    return r


@pytest.fixture(params=KINDS)
def sample_rig(request: pytest.FixtureRequest, rigs) -> Rig:  # type: ignore[no-untyped-def]
    r = rigs(request.param, "sample")
    r.reset()
    return r


def table(rs: BaseRegisterSet) -> list[tuple[str, str, int, tuple[str, ...]]]:
    return [(r.name, b.label, b.size, tuple(b.flags.names())) for r in rs.registers() for b in r.banks]


def test_discovery_matches_the_kernel_driver(rig: Rig) -> None:
    got = table(rig.rs)
    assert sorted(got) == sorted(EXPECTED[rig.profile])
    for reg in rig.rs.registers():  # banks in ascending TPM_ALG_ID order
        ids = [int(b.alg) for b in reg.banks if b.alg is not None]
        assert ids == sorted(ids)


def test_initial_values(rig: Rig) -> None:
    rs = rig.rs
    if rig.profile == "sample":
        assert rs.read("static_mr")[HashAlg.SHA384] == b"static_mr".ljust(48, b"\0")
        assert rs.read("config_mr")[None] == b"config_mr".ljust(64, b"\0")
        assert rs.read("rtmr0")[HashAlg.SHA256] == b"rtmr0".ljust(32, b"\0")
        assert rs.read("rtmr1")[HashAlg.SHA384] == b"rtmr1".ljust(48, b"\0")
        assert rs.read("report_digest")[HashAlg.SHA512].hex() == SAMPLE_INITIAL_REPORT_DIGEST
        agile = rs.read("rtmr_crypto_agile")
        assert agile == {HashAlg.SHA256: b"rtmr0".ljust(32, b"\0"), HashAlg.SHA384: b"rtmr1".ljust(48, b"\0")}
        return
    for reg in rs.registers():
        for alg, value in rs.read(reg.name).items():
            locked_pcr = rig.profile == "tpm" and reg.name in {f"pcr{i}" for i in range(17, 23)}
            assert value == (b"\xff" if locked_pcr else b"\0") * len(value), (reg.name, alg)


def test_sample_kernel_vectors(sample_rig: Rig) -> None:
    rig = sample_rig
    rig.rs.extend("rtmr1", {HashAlg.SHA384: bytes(48)})
    assert rig.rs.read("rtmr1")[HashAlg.SHA384].hex() == SAMPLE_RTMR1_AFTER_ZERO
    assert rig.rs.read("report_digest")[HashAlg.SHA512].hex() == SAMPLE_REPORT_DIGEST_AFTER_ZERO
    # rtmr_crypto_agile:sha384 is the same buffer as rtmr1
    assert rig.rs.read("rtmr_crypto_agile", [HashAlg.SHA384])[HashAlg.SHA384].hex() == SAMPLE_RTMR1_AFTER_ZERO


def test_sample_crypto_agile_alias_extends_rtmr0(sample_rig: Rig) -> None:
    rig = sample_rig
    d = hashlib.sha256(b"agile").digest()
    rig.rs.extend("rtmr_crypto_agile", {HashAlg.SHA256: d})
    want = hashlib.sha256(b"rtmr0".ljust(32, b"\0") + d).digest()
    assert rig.rs.read("rtmr0")[HashAlg.SHA256] == want
    assert rig.rs.read("rtmr1")[HashAlg.SHA384] == b"rtmr1".ljust(48, b"\0")
    report = hashlib.sha512(
        b"static_mr".ljust(48, b"\0") + b"config_mr".ljust(64, b"\0") + want + b"rtmr1".ljust(48, b"\0")
    ).digest()
    assert rig.rs.read("report_digest")[HashAlg.SHA512] == report


def _writable_banks(rs: BaseRegisterSet) -> list[tuple[str, HashAlg]]:
    return [(r.name, b.alg) for r in rs.registers() for b in r.banks if b.alg is not None and b.flags & b.flags.WRITABLE]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_extend_matches_a_hashlib_chain(rig: Rig, data: st.DataObject) -> None:
    name, alg = data.draw(st.sampled_from(_writable_banks(rig.rs)))
    digests = data.draw(st.lists(st.binary(min_size=alg.digest_size, max_size=alg.digest_size), max_size=8))
    value = rig.rs.read(name, [alg])[alg]
    h = getattr(hashlib, alg.kernel_name)
    for d in digests:
        rig.rs.extend(name, {alg: d})
        value = h(value + d).digest()
    assert rig.rs.read(name, [alg])[alg] == value


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("profile,name", [("tpm", "pcr16"), ("sample", "rtmr_crypto_agile")])
def test_multi_bank_extend(rigs, kind: str, profile: str, name: str) -> None:  # type: ignore[no-untyped-def]
    rig = rigs(kind, profile)
    rig.reset()
    reg = rig.rs.register(name)
    assert len(reg.banks) > 1
    before = rig.rs.read(reg.name)
    digests = {b.alg: bytes([i + 1]) * b.size for i, b in enumerate(reg.banks)}
    rig.rs.extend(reg.name, digests)
    after = rig.rs.read(reg.name)
    for alg, d in digests.items():
        assert alg is not None
        assert after[alg] == alg.extend(before[alg], d)


def test_wrong_digest_size_is_refused_and_changes_nothing(rig: Rig) -> None:
    name, alg = _writable_banks(rig.rs)[0]
    before = rig.rs.read(name)
    for size in (0, 1, alg.digest_size - 1, alg.digest_size + 1, 64 + 1):
        with pytest.raises(InputError, match=f"takes a {alg.digest_size}-byte digest, got {size} bytes"):
            rig.rs.extend(name, {alg: bytes(size)})
    assert rig.rs.read(name) == before


def test_read_only_registers_refuse_extend(rig: Rig) -> None:
    ro = [(r.name, b) for r in rig.rs.registers() for b in r.banks if not b.flags & b.flags.WRITABLE]
    assert ro, "every profile has read-only registers"
    for name, bank in ro:
        before = rig.rs.read(name)
        with pytest.raises(InputError, match="read-only"):
            rig.rs.extend(name, {bank.alg: bytes(bank.size)})
        assert rig.rs.read(name) == before


def test_unknown_register_and_bank(rig: Rig) -> None:
    with pytest.raises(UnknownRegisterError, match="no register named 'nope'"):
        rig.rs.read("nope")
    name, alg = _writable_banks(rig.rs)[0]
    missing = next(a for a in (HashAlg.SHA3_512, HashAlg.SM3_256) if a not in rig.rs.register(name).algs)
    with pytest.raises(UnknownRegisterError, match=f"has no {missing.kernel_name} bank"):
        rig.rs.extend(name, {missing: bytes(missing.digest_size)})


def test_empty_extend_is_refused(rig: Rig) -> None:
    name, _ = _writable_banks(rig.rs)[0]
    with pytest.raises(InputError, match="no digest"):
        rig.rs.extend(name, {})


# -- the kernel's write rules, seen through the FUSE mount ---------------------

@pytest.fixture
def fuse_tdx(rigs) -> Rig:  # type: ignore[no-untyped-def]
    r = rigs("sysfs-fuse", "tdx")
    r.reset()
    return r


def _errno_of(fn) -> int | None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except BackendError as exc:
        return exc.errno
    return None


def test_kernel_write_rules_through_fuse(fuse_tdx: Rig) -> None:
    rs = fuse_tdx.rs
    assert isinstance(rs, SysfsRegisterSet)
    zero = bytes(48)
    assert _errno_of(lambda: rs.write_attribute("rtmr3:sha384", bytes(10))) == errno.EINVAL
    assert _errno_of(lambda: rs.write_attribute("rtmr3:sha384", bytes(38), offset=10)) == errno.EINVAL
    assert _errno_of(lambda: rs.write_attribute("rtmr3:sha384", zero, offset=48)) == errno.EFBIG
    assert _errno_of(lambda: rs.write_attribute("mrtd:sha384", zero)) == errno.EACCES
    assert rs.read("rtmr3")[HashAlg.SHA384] == zero  # nothing above extended
    # sysfs clamps an oversized write to the attribute size: 64 bytes extend with the first 48
    data = bytes(range(64))
    assert rs.write_attribute("rtmr3:sha384", data) == 48
    assert rs.read("rtmr3")[HashAlg.SHA384] == hashlib.sha384(zero + data[:48]).digest()


def test_backend_error_names_register_and_errno(fuse_tdx: Rig) -> None:
    rs = fuse_tdx.rs
    assert isinstance(rs, SysfsRegisterSet)
    with pytest.raises(BackendError) as info:
        rs.write_attribute("rtmr2:sha384", bytes(5))
    assert info.value.errno == errno.EINVAL and info.value.register == "rtmr2:sha384"
    assert "rtmr2:sha384" in str(info.value) and "EINVAL" in str(info.value)


def test_reads_see_extends_made_by_another_process(fuse_tdx: Rig) -> None:
    """The FUSE mount and the library share one emulator state."""
    d = hashlib.sha384(b"x").digest()
    with EmulatedRegisterSet("tdx", fuse_tdx.state) as emu:
        emu.extend("rtmr1", {HashAlg.SHA384: d})
    assert fuse_tdx.rs.read("rtmr1")[HashAlg.SHA384] == hashlib.sha384(bytes(48) + d).digest()
    fuse_tdx.rs.extend("rtmr1", {HashAlg.SHA384: d})
    with EmulatedRegisterSet("tdx", fuse_tdx.state) as emu:
        entries = [e for e in emu.journal() if e.attribute == "rtmr1:sha384"]
    assert [e.data for e in entries] == [d, d]
    assert os.path.ismount(fuse_tdx.rs.directory)
