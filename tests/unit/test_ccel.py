"""tsmr.formats.ccel: the ACPI CCEL table, the log area, and replay against a real TDX quote."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsmr import HashAlg, ParseError
from tsmr.formats import ccel, tcg2
from tsmr.replay import replay


def table_bytes(laml: int = 0x40000, lasa: int = 0xBEDBF000, cc_type: int = 2, fix_checksum: bool = True) -> bytes:
    """A CCEL table as ACPI 6.5 §5.2.34 lays it out (36-byte ACPI header + 20 bytes)."""
    raw = bytearray(struct.pack("<4sIBB6s8sI4sIBBHQQ", b"CCEL", 56, 1, 0, b"INTEL ", b"EDK2    ", 2, b"    ",
                                0x01000013, cc_type, 0, 0, laml, lasa))
    if fix_checksum:
        raw[9] = (-sum(raw)) % 256
    return bytes(raw)


def test_known_answer_table() -> None:
    t = ccel.parse_table(table_bytes())
    assert (t.signature, t.length, t.revision, t.oem_id, t.oem_table_id, t.oem_revision) == (
        b"CCEL", 56, 1, b"INTEL ", b"EDK2    ", 2)
    assert (t.cc_type, t.cc_type_name, t.cc_subtype, t.laml, t.lasa, t.checksum_valid) == (
        2, "TDX", 0, 0x40000, 0xBEDBF000, True)
    assert t.to_json()["lasa"] == "0xbedbf000"


def test_bad_checksum_is_reported_and_rejected_only_when_strict() -> None:
    raw = table_bytes(fix_checksum=False)
    assert ccel.parse_table(raw).checksum_valid is False
    with pytest.raises(ParseError, match="checksum") as ei:
        ccel.parse_table(raw, strict=True)
    assert ei.value.field == "CCEL.Checksum"
    assert ccel.parse_table(table_bytes(), strict=True).checksum_valid


@pytest.mark.parametrize(
    "raw,field",
    [
        (table_bytes()[:55], "CCEL"),
        (b"TPM2" + table_bytes()[4:], "CCEL.Signature"),
        (table_bytes()[:4] + struct.pack("<I", 40) + table_bytes()[8:], "CCEL.Length"),
        (table_bytes()[:4] + struct.pack("<I", 64) + table_bytes()[8:], "CCEL.Length"),
    ],
)
def test_bad_tables(raw: bytes, field: str) -> None:
    with pytest.raises(ParseError) as ei:
        ccel.parse_table(raw)
    assert ei.value.format == "ccel" and ei.value.field == field


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_parse_table_is_total(data: bytes) -> None:
    try:
        ccel.parse_table(b"CCEL" + data)
    except ParseError:
        pass


def _log_area(events: list[tcg2.TCG2Event], pad: bytes, size: int) -> bytes:
    raw = tcg2.encode_log(events, [HashAlg.SHA384])
    return raw + pad * (size - len(raw))


def test_log_area_with_padding_and_laml() -> None:
    ev = tcg2.TCG2Event(1, tcg2.EV_SEPARATOR, ((0x000C, HashAlg.SHA384.hash(bytes(4))),), bytes(4))
    for pad in (b"\xff", b"\x00"):
        log = ccel.parse_log(_log_area([ev], pad, 4096), ccel.parse_table(table_bytes(laml=4096)))
        assert log.events == (ev,)
        assert replay(ccel.to_events(log)).registers == {"rtmr0": {HashAlg.SHA384: HashAlg.SHA384.extend(bytes(48), ev.digests[0][1])}}
        assert [(e.source, e.register, e.type) for e in ccel.to_events(log)] == [("ccel", "rtmr0", "EV_SEPARATOR")]
    with pytest.raises(ParseError, match="LAML"):
        ccel.parse_log(_log_area([ev], b"\xff", 4096), ccel.parse_table(table_bytes(laml=64)))


def test_a_sha1_log_is_not_a_ccel() -> None:
    legacy = struct.pack("<II20sI", 0, 8, bytes(20), 2) + b"v\x00"
    with pytest.raises(ParseError, match="crypto-agile") as ei:
        ccel.parse_log(legacy)
    assert ei.value.format == "ccel"


# -- real data ------------------------------------------------------------------------------------------


def _read(fixtures: Path, rel: str) -> bytes:
    return (fixtures / rel).read_bytes()


@pytest.mark.parametrize(
    "rel,laml,lasa",
    [
        ("go-tdx-guest/ccel/ccel_table.dat", 0x40000, 0xBEDBF000),
        ("go-eventlog/eventlogs/ccel/cos-113-intel-tdx.table.bin", 0x40000, 0xBEDBF000),
        ("go-eventlog/eventlogs/ccel/CCEL.bin", 0x10000, 0x7D649000),
    ],
)
def test_real_tables(fixtures: Path, rel: str, laml: int, lasa: int) -> None:
    t = ccel.parse_table(_read(fixtures, rel), strict=True)
    assert (t.cc_type_name, t.laml, t.lasa, t.oem_id, t.revision) == ("TDX", laml, lasa, b"INTEL ", 1)


def test_go_tdx_guest_ccel_replays_to_the_quote(fixtures: Path) -> None:
    """ccel_data.dat + ccel_table.dat replay to RTMR0-3 of cos-113-tdx-quote.dat (go-tdx-guest's matched set)."""
    table = ccel.parse_table(_read(fixtures, "go-tdx-guest/ccel/ccel_table.dat"), strict=True)
    data = _read(fixtures, "go-tdx-guest/ccel/ccel_data.dat")
    assert len(data) == table.laml  # the full log area, 0xFF-padded
    log = ccel.parse_log(data, table)
    assert log.algorithms == (HashAlg.SHA384,) and log.header_event is not None and log.header_event.index == 1
    values = replay(ccel.to_events(log)).registers
    # RTMR0..3 of the TD quote body (TDX quote v4: body at 0x30, RTMRs at body offset 0x148, 48 bytes each)
    quote = _read(fixtures, "go-tdx-guest/ccel/cos-113-tdx-quote.dat")
    rtmrs = [quote[0x30 + 0x148 + 48 * i:0x30 + 0x148 + 48 * (i + 1)] for i in range(4)]
    expected = json.loads((fixtures / "go-tdx-guest/expected.json").read_text())[
        "go-tdx-guest/ccel/cos-113-tdx-quote.dat"]
    assert [r.hex() for r in rtmrs] == expected["rtmr"]
    for i, rtmr in enumerate(rtmrs):
        assert values.get(f"rtmr{i}", {}).get(HashAlg.SHA384, bytes(48)) == rtmr, f"rtmr{i}"
    events = ccel.to_events(log)
    assert {e.register for e in events} == {"rtmr0", "rtmr1", "rtmr2"}
    assert all(e.source == "ccel" for e in events)


def test_aael_events_in_a_ccel(fixtures: Path) -> None:
    log = ccel.parse_log(_read(fixtures, "trustee/eventlog/CCEL_AAEL_alibabacloud"))
    aael = [e for e in ccel.to_events(log) if e.type == "EV_EVENT_TAG"]
    assert [(e.register, e.details["domain"], e.details["operation"]) for e in aael] == [
        ("rtmr3", "coco.com", "some-operation")] * 2
    assert aael[1].details["content_json"] == {"key": "value", "nested-key": {"sub-key": "value"}}
    assert all(e.data_rule == "data" and e.check(HashAlg.SHA384) for e in aael)
    computed = json.loads((fixtures / "COMPUTED_REPLAY.json").read_text())["trustee/eventlog/CCEL_AAEL_alibabacloud"]
    values = replay(ccel.to_events(log)).registers
    assert {k.upper(): v[HashAlg.SHA384].hex() for k, v in values.items()} == computed["rtmrs"]
