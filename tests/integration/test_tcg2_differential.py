"""Differential test: tsmr's TCG2 reader and replay against tpm2-tools' ``tpm2_eventlog``.

For every fixture ``tpm2_eventlog FILE`` can read, its events (count, PCR index, event type,
digests) and its final ``pcrs:`` values must equal tsmr's.  Its YAML is read with a few regular
expressions on the fields compared (no YAML library).

Known disagreements, each asserted so that a change in either tool shows up:

* TDVF CCELs (cos-113, CCEL_unpadded, trustee OVMF/GCP/GKE/Alibaba/Hygon logs): the header
  TCG_PCR_EVENT has pcrIndex 1 (formats.md §1.8); tpm2_eventlog refuses it ("bad pcrIndex for
  EV_NO_ACTION event").  They are compared again from a copy with that index set to 0.
* trustee CCEL_data (td-shim, 0x00-padded 1 MiB area): tpm2_eventlog reads the zero padding as
  EV_PREBOOT_CERT records and fails at the end ("insufficient size for event header"); tsmr stops at
  padding.  Compared again from a copy trimmed at the end of the log.
* go-eventlog legacydata/short_no_action_eventlog (SHA-1 log, one StartupLocality EV_NO_ACTION):
  tpm2_eventlog takes any first EV_NO_ACTION for a Spec ID event ("invalid eventDataSize in specid
  event"); tsmr reads it as a legacy log.
* trustee CCEL_data_grub_gke: tpm2_eventlog (5.4) extends the two SP800-155 EV_NO_ACTION events'
  zero digests into index 0 and prints a value for it; EV_NO_ACTION is never extended (PFP §10.4.5),
  so tsmr has no measured event there.  The test checks that tpm2_eventlog's value is exactly that
  wrong fold.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from fixture_logs import CCEL_LOGS, TPM_LOGS
from replay_helpers import tcg2_values
from tsmr import HashAlg
from tsmr.formats import tcg2

TPM2_EVENTLOG = shutil.which("tpm2_eventlog")
pytestmark = pytest.mark.skipif(TPM2_EVENTLOG is None,
                                reason="tpm2_eventlog not installed (Debian package tpm2-tools)")

BAD_CCEL_HEADER = "bad pcrIndex for EV_NO_ACTION event"
KNOWN_FAILURES = {
    "go-eventlog/legacydata/short_no_action_eventlog": "invalid eventDataSize in specid event",
    "trustee/eventlog/CCEL_data": "insufficient size for event header",
    **{rel: BAD_CCEL_HEADER for rel in CCEL_LOGS if rel != "trustee/eventlog/CCEL_data"},
}

_PCR_INDEX = re.compile(r"^  PCRIndex: (\d+)$")
_EVENT_TYPE = re.compile(r"^  EventType: (\S+)$")
_ALG = re.compile(r"^  - AlgorithmId: (\S+)$")
_DIGEST = re.compile(r'^    Digest: "([0-9a-fA-F]*)"$')
_BANK = re.compile(r"^  (\w+):$")
_PCR = re.compile(r"^    (\d+)\s*: 0x([0-9a-fA-F]+)$")


def run(path: Path) -> tuple[int, str, str]:
    proc = subprocess.run([TPM2_EVENTLOG or "tpm2_eventlog", str(path)], capture_output=True, timeout=60)
    # Event strings with stray bytes make the output invalid UTF-8 in places
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def parse_yaml(text: str) -> tuple[list[tuple[int, str, dict[str, str]]], dict[str, dict[int, str]]]:
    """Events (pcr, type, {alg: hex digest}) and final PCRs ({bank: {pcr: hex}}) of tpm2_eventlog's output."""
    events: list[tuple[int, str, dict[str, str]]] = []
    pcrs: dict[str, dict[int, str]] = {}
    alg: str | None = None
    bank: str | None = None
    in_pcrs = False
    for line in text.splitlines():
        if line == "pcrs:":
            in_pcrs = True
            continue
        if in_pcrs:
            if m := _BANK.match(line):
                bank = m.group(1)
                pcrs[bank] = {}
            elif (m := _PCR.match(line)) and bank is not None:
                pcrs[bank][int(m.group(1))] = m.group(2).lower()
            continue
        if m := _PCR_INDEX.match(line):
            events.append((int(m.group(1)), "", {}))
        elif (m := _EVENT_TYPE.match(line)) and events:
            events[-1] = (events[-1][0], m.group(1), events[-1][2])
        elif m := _ALG.match(line):
            alg = m.group(1)
        elif (m := _DIGEST.match(line)) and alg is not None and events:
            events[-1][2][alg] = m.group(1).lower()
            alg = None
    return events, pcrs


def ours(log: tcg2.TCG2Log) -> list[tuple[int, str, dict[str, str]]]:
    out = []
    for ev in log.events:
        digests = {}
        for alg_id, d in ev.digests:
            try:
                digests[HashAlg(alg_id).kernel_name] = d.hex()
            except ValueError:
                digests[f"0x{alg_id:04x}"] = d.hex()
        out.append((ev.index, ev.type_name, digests))
    return out


# PCRs for which tpm2_eventlog folds EV_NO_ACTION digests in (see the module docstring)
NO_ACTION_EXTENDED = {"trustee/eventlog/CCEL_data_grub_gke": {0}}


def compare(rel: str, yaml_text: str, log: tcg2.TCG2Log) -> int:
    """Assert tpm2_eventlog's events and PCRs equal tsmr's; return how many values were compared."""
    theirs, pcrs = parse_yaml(yaml_text)
    if not log.legacy:
        theirs = theirs[1:]  # tpm2_eventlog lists the Spec ID header as event 0; tsmr keeps it apart
    mine = ours(log)
    assert len(theirs) == len(mine), f"{rel}: tpm2_eventlog {len(theirs)} events, tsmr {len(mine)}"
    for i, (t, m) in enumerate(zip(theirs, mine)):
        t_digests = {HashAlg.from_name(a).kernel_name: d for a, d in t[2].items()}
        assert (t[0], t[1], t_digests) == m, f"{rel} event {i}"
    loc = tcg2.startup_locality(log.events)
    initial = None if loc is None else {(0, a): bytes(a.digest_size - 1) + bytes([loc]) for a in log.algorithms}
    values = tcg2_values(log, initial=initial)
    assert pcrs, f"{rel}: no pcrs section"
    n = 0
    no_action_extended = set()
    for bank, regs in pcrs.items():
        alg = HashAlg.from_name(bank)
        for index, hexval in regs.items():
            if index not in values:  # nothing measured there: tpm2_eventlog extended EV_NO_ACTION digests
                folded = alg.zero()
                for ev in log.events:
                    if ev.index == index and ev.event_type == tcg2.EV_NO_ACTION:
                        folded = alg.extend(folded, ev.digest(alg) or alg.zero())
                assert folded.hex() == hexval, f"{rel} {bank} PCR{index}"
                no_action_extended.add(index)
                continue
            assert values[index][alg].hex() == hexval, f"{rel} {bank} PCR{index}"
            n += 1
    assert no_action_extended == NO_ACTION_EXTENDED.get(rel, set()), rel
    return len(mine) + n


def _fixture(fixtures: Path, rel: str) -> Path:
    return fixtures / rel


@pytest.mark.parametrize("rel", TPM_LOGS + CCEL_LOGS)
def test_tpm2_eventlog_as_is(fixtures: Path, rel: str) -> None:
    path = _fixture(fixtures, rel)
    rc, out, err = run(path)
    log = tcg2.parse(path.read_bytes())
    if rel in KNOWN_FAILURES:
        assert rc != 0 and KNOWN_FAILURES[rel] in err, f"{rel}: tpm2_eventlog now says rc={rc} {err.strip()!r}"
        return
    assert rc == 0, f"{rel}: tpm2_eventlog failed: {err.strip()}"
    assert compare(rel, out, log) > 0


@pytest.mark.parametrize("rel", CCEL_LOGS)
def test_tpm2_eventlog_on_ccel_with_header_index_zero(fixtures: Path, rel: str, tmp_path: Path) -> None:
    """The same CCEL with the header's pcrIndex set to 0 and the padding cut: then tpm2_eventlog agrees."""
    data = _fixture(fixtures, rel).read_bytes()
    log = tcg2.parse(data)
    patched = tmp_path / "ccel.bin"
    patched.write_bytes(struct.pack("<I", 0) + data[4:log.end])
    rc, out, err = run(patched)
    assert rc == 0, f"{rel}: tpm2_eventlog failed on the patched copy: {err.strip()}"
    assert compare(rel, out, tcg2.parse(patched.read_bytes())) > 0
