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
