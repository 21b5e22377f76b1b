"""The bytes-level TCG2 replay gives exactly what the unified replay gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixture_logs import CCEL_LOGS, TPM_LOGS
from tsmr import HashAlg
from tsmr.eventlog import parse
from tsmr.formats import tcg2
from tsmr.replay import replay, replay_tcg2_bytes


@pytest.mark.parametrize("rel", TPM_LOGS + CCEL_LOGS)
def test_real_logs(fixtures: Path, rel: str) -> None:
    data = (fixtures / rel).read_bytes()
    log = parse(data)
    full = replay(log.events, arch=log.arch)
    fast = replay_tcg2_bytes(data, arch=log.arch)
    assert fast.registers == full.registers and fast.missing == full.missing, rel


algs_st = st.sampled_from([(HashAlg.SHA256,), (HashAlg.SHA1, HashAlg.SHA256), (HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)])


@settings(max_examples=60, deadline=None)
@given(
    algs_st,
    st.lists(st.tuples(st.integers(0, 23), st.sampled_from([3, 4, 5, 0x80000007]), st.binary(max_size=24), st.booleans()),
             min_size=1, max_size=25),
    st.one_of(st.none(), st.integers(0, 4)),
)
def test_random_logs(algs: tuple, events: list, locality: int | None) -> None:  # type: ignore[type-arg]
    evs = []
    if locality is not None:
        evs.append(tcg2.TCG2Event(0, tcg2.EV_NO_ACTION, tuple((int(a), bytes(a.digest_size)) for a in algs),
                                  b"StartupLocality\0" + bytes([locality])))
    for idx, etype, data, partial in events:
        use = algs[:1] if partial and len(algs) > 1 else algs  # a record lacking banks
        evs.append(tcg2.TCG2Event(idx, etype, tuple((int(a), a.hash(data)) for a in use), data))
    data = tcg2.encode_log(evs, algs)
    full = replay(parse(data, "tcg2", arch="tpm").events, arch="tpm")
    fast = replay_tcg2_bytes(data, arch="tpm")
    assert fast.registers == full.registers
    assert fast.missing == full.missing


events_st = st.lists(st.tuples(st.integers(0, 4), st.sampled_from([3, 4, 5, 0x80000007]), st.binary(max_size=24)),
                     min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(events_st)
def test_random_ccel_logs(events: list) -> None:  # type: ignore[type-arg]
    """A CCEL (CC MR indices, SHA-384) through the fast path and the reference fold alike."""
    alg = HashAlg.SHA384
    evs = [tcg2.TCG2Event(idx, etype, ((int(alg), alg.hash(data)),), data) for idx, etype, data in events]
    data = tcg2.encode_log(evs, (alg,))
    full = replay(parse(data, "ccel", arch="tdx").events, arch="tdx")
    fast = replay_tcg2_bytes(data, arch="tdx")
    assert fast.registers == full.registers
    assert fast.missing == full.missing
    assert set(full.registers) <= {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 23), st.sampled_from([3, 4, 5, 0x80000007]), st.binary(min_size=1, max_size=24)),
                min_size=1, max_size=25))
def test_random_legacy_logs(events: list) -> None:  # type: ignore[type-arg]
    """A SHA-1-only (TPM 1.2 style) log: the fast path hands it to the reference fold; same values."""
    alg = HashAlg.SHA1
    evs = [tcg2.TCG2Event(idx, etype, ((int(alg), alg.hash(data)),), data) for idx, etype, data in events]
    data = tcg2.encode_legacy(evs)
    full = replay(parse(data, "tcg2-sha1", arch="tpm").events, arch="tpm")
    fast = replay_tcg2_bytes(data, arch="tpm")
    assert fast.registers == full.registers
    assert fast.missing == full.missing


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 23), st.sampled_from([3, 4, 5]), st.binary(max_size=24)), min_size=1, max_size=20))
def test_random_tpm_logs_mapped_to_tdx(events: list) -> None:  # type: ignore[type-arg]
    """A TPM log with a SHA-384 bank, replayed onto TDX registers through the UEFI CC-MR table."""
    algs = (HashAlg.SHA256, HashAlg.SHA384)
    evs = [tcg2.TCG2Event(idx, etype, tuple((int(a), a.hash(data)) for a in algs), data) for idx, etype, data in events]
    data = tcg2.encode_log(evs, algs)
    full = replay(parse(data, "tcg2", arch="tdx").events, arch="tdx")
    assert set(full.registers) <= {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"}
    assert all(set(banks) == {HashAlg.SHA384} for banks in full.registers.values())
