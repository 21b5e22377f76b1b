"""Conversions keep register values: TCG2 -> CEL-JSON -> replay, TCG2 -> TCG2, on real and random logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsmr import HashAlg
from tsmr.convert import to_cel_json, to_tcg2
from tsmr.eventlog import parse
from tsmr.formats import tcg2
from tsmr.replay import replay

from replay_helpers import tcg2_values

REAL = [
    "go-eventlog/eventlogs/tpm/rhel8-uefi.bin",
    "go-eventlog/eventlogs/tpm/debian-10.bin",
    "go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin",
    "trustee/eventlog/CCEL_data_grub",
    "trustee/eventlog/CCEL_data_csv",
    "trustee/aael/AAEL_data_3",
    "keylime/create-runtime-policy/ima-log-sha256",
]


@pytest.mark.parametrize("rel", REAL)
def test_real_logs_convert_and_replay_the_same(fixtures: Path, rel: str) -> None:
    log = parse((fixtures / rel).read_bytes())
    want = replay(log.events).registers
    for seq in (False, True):
        back = parse(to_cel_json(log, seq=seq), "cel-json")
        assert replay(back.events).registers == want, (rel, seq)
    if log.format != "tsmr":  # a runtime log's sync anchors do not survive TCG2
        back = parse(to_tcg2(log), arch=log.arch)
        assert replay(back.events).registers == want, rel


event = st.builds(
    lambda idx, etype, data: (idx, etype, data),
    st.integers(0, 23),
    st.sampled_from([tcg2.EV_ACTION, tcg2.EV_SEPARATOR, tcg2.EV_EFI_ACTION, tcg2.EV_IPL, 0x80000001]),
    st.binary(max_size=40),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(event, min_size=1, max_size=30), st.sampled_from([(HashAlg.SHA256,), (HashAlg.SHA1, HashAlg.SHA384)]))
def test_random_tcg2_logs_round_trip_through_cel(events: list, algs: tuple) -> None:  # type: ignore[type-arg]
    evs = [tcg2.TCG2Event(i, t, tuple((int(a), a.hash(d + b"x")) for a in algs), d) for i, t, d in events]
    data = tcg2.encode_log(evs, algs)
    log = parse(data, "tcg2", arch="tpm")
    want = replay(log.events).registers
    assert want == {f"pcr{i}": v for i, v in tcg2_values(tcg2.parse(data)).items()}
    assert replay(parse(to_cel_json(log), "cel-json").events).registers == want
    assert replay(parse(to_tcg2(log), "tcg2", arch="tpm").events).registers == want
