"""The TPM backend against a real swtpm (TPM 2.0 emulator, libtpms)."""

from __future__ import annotations

import errno
import socket
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tpm2_pytss")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from swtpm import Swtpm  # noqa: E402

from tsmr.algorithms import HashAlg, extend_chain  # noqa: E402
from tsmr.backends.tpm import TpmRegisterSet  # noqa: E402
from tsmr.errors import BackendError, InputError, UnknownRegisterError  # noqa: E402
from tsmr.registers import Flag  # noqa: E402

pytestmark = [
    pytest.mark.swtpm,
    pytest.mark.skipif(not Swtpm.available(), reason="swtpm not installed (make test installs it)"),
]

BANKS = (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)
LOCALITY_PCRS = range(17, 23)


@pytest.fixture(scope="module")
def swtpm():
    with Swtpm() as tpm:
        yield tpm


@pytest.fixture(scope="module")
def tpm(swtpm):
    with TpmRegisterSet(swtpm.tcti) as rs:
        yield rs


@pytest.fixture
def fresh_tpm():
    """A TPM no other test has touched, for tests that depend on initial state."""
    if not Swtpm.available():
        pytest.skip("swtpm not installed (make test installs it)")
    with Swtpm() as tpm, TpmRegisterSet(tpm.tcti) as rs:
        yield rs


def _count_calls(monkeypatch, rs, method):
    """Wrap one ESAPI method to count the TPM commands the backend sends."""
    calls = []
    real = getattr(rs._esapi, method)

    def wrapper(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(rs._esapi, method, wrapper)
    return calls


# -- discovery -------------------------------------------------------------

def test_discovery_lists_pcrs_banks_and_flags(tpm, monkeypatch):
    assert (tpm.kind, tpm.provider, tpm.hardware_backed) == ("tpm", "swtpm", False)
    regs = tpm.registers()
    assert [r.name for r in regs] == [f"pcr{i}" for i in range(24)]
    for i, reg in enumerate(regs):
        assert reg.algs == BANKS
        assert [b.attribute for b in reg.banks] == [f"pcr{i}:{a.kernel_name}" for a in BANKS]
        assert [b.size for b in reg.banks] == [20, 32, 48, 64]
        want = Flag.READABLE | Flag.LIVE if i in LOCALITY_PCRS else Flag.READABLE | Flag.WRITABLE | Flag.LIVE
        assert all(b.flags == want for b in reg.banks), reg
    calls = _count_calls(monkeypatch, tpm, "get_capability")
    assert tpm.registers() == regs and tpm.register("pcr16") is regs[16]
    assert calls == []  # discovery is cached


def test_initial_values(fresh_tpm):
    for i in range(24):
        values = fresh_tpm.read(f"pcr{i}")
        assert set(values) == set(BANKS)
        fill = 0xFF if i in LOCALITY_PCRS else 0x00
        for alg, value in values.items():
            assert value == bytes([fill]) * alg.digest_size, (i, alg)


# -- read and extend -------------------------------------------------------

@pytest.mark.parametrize("name", ["pcr16", "pcr23"])
@pytest.mark.parametrize("alg", [HashAlg.SHA256, HashAlg.SHA384])
def test_extend_matches_hashlib_chain(tpm, name, alg):
    before = tpm.read(name)
    digests = [alg.hash(f"{name}-{n}".encode()) for n in range(3)]
    for d in digests:
        tpm.extend(name, {alg: d})
    after = tpm.read(name)
    assert after[alg] == extend_chain(alg, before[alg], digests)
    assert tpm.read(name, [alg]) == {alg: after[alg]}
    assert {a: v for a, v in after.items() if a != alg} == {a: v for a, v in before.items() if a != alg}


def test_multi_bank_extend_is_one_command(tpm, monkeypatch):
    before = tpm.read("pcr16")
    digests = {a: a.hash(b"multi") for a in BANKS}
    calls = _count_calls(monkeypatch, tpm, "pcr_extend")
    tpm.extend("pcr16", digests)
    assert len(calls) == 1
    after = tpm.read("pcr16")
    assert after == {a: a.extend(before[a], digests[a]) for a in BANKS}


def test_read_all_banks_is_one_command(tpm, monkeypatch):
    calls = _count_calls(monkeypatch, tpm, "pcr_read")
    values = tpm.read("pcr16")
    assert len(calls) == 1 and list(values) == list(BANKS)


def test_read_loops_when_the_tpm_returns_fewer_digests(tpm, monkeypatch):
    """Emulate a TPM that returns only 2 digests per PCR_Read: every bank must still come back."""
    want = tpm.read("pcr16")
    real = tpm._esapi.pcr_read
    sent = []

    def stingy(selection, *args):
        sent.append(selection.count)
        first_two = tpm._selection(16, [HashAlg(s.hash) for s in list(selection)[:2]])
        return real(first_two, *args)

    monkeypatch.setattr(tpm._esapi, "pcr_read", stingy)
    assert tpm.read("pcr16") == want
    assert sent == [4, 2]


@settings(max_examples=25, deadline=None)
@given(digests=st.lists(st.binary(min_size=32, max_size=32), max_size=8))
def test_random_extends_equal_hashlib_chain(tpm, digests):
    start = tpm.read("pcr16", [HashAlg.SHA256])[HashAlg.SHA256]
    for d in digests:
        tpm.extend("pcr16", {HashAlg.SHA256: d})
    assert tpm.read("pcr16", [HashAlg.SHA256])[HashAlg.SHA256] == extend_chain(HashAlg.SHA256, start, digests)


# -- refusals ----------------------------------------------------------------

@pytest.mark.parametrize(
    "digests, message",
    [
        ({HashAlg.SHA256: b"\x01" * 31}, "pcr16:sha256 takes a 32-byte digest, got 31 bytes"),
        ({HashAlg.SHA1: b"\x01" * 20, HashAlg.SHA384: b"\x01" * 32}, "pcr16:sha384 takes a 48-byte digest, got 32"),
        ({HashAlg.SHA512: b""}, "pcr16:sha512 takes a 64-byte digest, got 0"),
    ],
)
def test_bad_digest_size_extends_nothing(tpm, digests, message):
    before = tpm.read("pcr16")
    with pytest.raises(InputError, match=message):
        tpm.extend("pcr16", digests)
    assert tpm.read("pcr16") == before


@pytest.mark.parametrize("pcr", LOCALITY_PCRS)
def test_locality_pcrs_are_read_only_and_the_tpm_agrees(tpm, pcr):
    name = f"pcr{pcr}"
    before = tpm.read(name)
    with pytest.raises(InputError, match=f"{name}:sha256 is read-only"):
        tpm.extend(name, {HashAlg.SHA256: bytes(32)})
    # Bypass the flag check: the TPM itself refuses at locality 0.
    reg = tpm.register(name)
    with pytest.raises(BackendError, match=r"0x907 .*locality") as info:
        tpm._extend_banks(reg, {reg.bank(HashAlg.SHA256): bytes(32)})
    assert info.value.register == name and info.value.backend == "tpm"
    assert tpm.read(name) == before


def test_unknown_register_and_bank(tpm):
    for name in ("pcr24", "rtmr0"):
        with pytest.raises(UnknownRegisterError, match=f"no register named '{name}'"):
            tpm.read(name)
        with pytest.raises(UnknownRegisterError):
            tpm.extend(name, {HashAlg.SHA256: bytes(32)})
    with pytest.raises(UnknownRegisterError, match="pcr16 has no sm3 bank"):
        tpm.read("pcr16", [HashAlg.SM3_256])
    with pytest.raises(UnknownRegisterError, match="pcr16 has no sha3-256 bank"):
        tpm.extend("pcr16", {HashAlg.SHA3_256: bytes(32)})


# -- connection and lifecycle ------------------------------------------------

def test_nothing_listening_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=f"opening TCTI 'swtpm:host=127.0.0.1,port={port}'.*ECONNREFUSED") as info:
        TpmRegisterSet(f"swtpm:host=127.0.0.1,port={port}")
    assert time.monotonic() - t0 < 3
    assert info.value.errno == errno.ECONNREFUSED and info.value.backend == "tpm"


def test_missing_device_keeps_errno():
    with pytest.raises(BackendError, match="/nonexistent/tpmrm9.*ENOENT") as info:
        TpmRegisterSet("device:/nonexistent/tpmrm9")
    assert info.value.errno == errno.ENOENT


def test_close_twice_and_use_after_close(swtpm):
    rs = TpmRegisterSet(swtpm.tcti)
    assert rs.read("pcr0", [HashAlg.SHA1]) == {HashAlg.SHA1: bytes(20)}
    rs.close()
    rs.close()
    with pytest.raises(BackendError, match="closed"):
        rs.read("pcr0", [HashAlg.SHA1])


def test_provider_names():
    from tsmr.backends.tpm import _provider

    assert _provider("device", "/dev/tpmrm0") == "tpm0"
    assert _provider("device", "/dev/tpm0") == "tpm0"
    assert _provider("device", "/dev/tpmrm1") == "tpm1"
    assert _provider("mssim", "port=2321") == "mssim"


def test_harness_cleans_up():
    with Swtpm() as tpm:
        assert tpm.tcti == f"swtpm:host=127.0.0.1,port={tpm.port}"
        proc, state = tpm.proc, tpm.state_dir
        assert proc is not None and proc.poll() is None and state.is_dir()
    assert proc.returncode is not None and not state.exists()


def test_tpm_gone_mid_session_names_the_register():
    with Swtpm() as tpm:
        rs = TpmRegisterSet(tpm.tcti)
        rs.registers()
    try:
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"reading pcr16 failed: TSS response code 0x[0-9a-f]+ \(tcti:") as info:
            rs.read("pcr16")
        assert time.monotonic() - t0 < 3 and info.value.register == "pcr16"
    finally:
        rs.close()


def test_unknown_tcti_library():
    with pytest.raises(BackendError, match="libtss2-tcti-nosuch.so"):
        TpmRegisterSet("nosuch:whatever")
