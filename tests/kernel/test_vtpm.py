"""Assertions on the vTPM guests (SeaBIOS and OVMF firmware, swtpm, ima_policy=tcb).

tests/kernel/run.py booted the kernel twice with swtpm as its TPM and copied out the
firmware event log, every IMA measurement list (binary and ASCII, each bank) and every
PCR of every bank.  Here tsmr replays the logs and must reproduce every PCR they cover,
in every bank; and the runtime log the guest kept on PCR 16 through /dev/tpmrm0 verified.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tsmr import HashAlg
from tsmr.eventlog import parse
from tsmr.formats import ima
from tsmr.replay import explain, replay

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("TSMR_KERNEL_VTPM", ROOT / ".state" / "kernel-vtpm"))
FIRMWARES = ["seabios", "ovmf"]


def _guest(firmware: str) -> tuple[Path, dict]:  # type: ignore[type-arg]
    d = OUT / firmware
    if not (d / "report.json").exists():
        if os.environ.get("CI"):
            pytest.fail(f"no vTPM guest output in {d}: run tests/kernel/run.py first (make test-kernel does)")
        pytest.skip(f"no vTPM guest output in {d} (make test-kernel writes it)")
    report = json.loads((d / "report.json").read_text())
    assert "exception" not in report, report["exception"] + "\n--- console ---\n" + report.get("console_tail", "")
    return d, report


def _pcrs(report: dict) -> dict[str, dict[HashAlg, bytes]]:  # type: ignore[type-arg]
    return {reg: {HashAlg.from_name(a): bytes.fromhex(v) for a, v in banks.items()} for reg, banks in report["pcrs"].items()}


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_firmware_log_reproduces_every_pcr_it_covers(firmware: str) -> None:
    d, report = _guest(firmware)
    pcrs = _pcrs(report)
    log = parse((d / "binary_bios_measurements").read_bytes())
    assert log.format == "tcg2" and len(log.events) > 5
    result = replay(log.events)
    assert result.registers and not result.missing
    covered = 0
    for reg, banks in result.registers.items():
        for alg, value in banks.items():
            assert value == pcrs[reg][alg], f"{firmware} {reg} {alg}"
            covered += 1
    assert covered >= 8 * 4  # PCR 0-7 in the sha1, sha256, sha384 and sha512 banks
    assert explain(log.events, {r: pcrs[r] for r in result.registers}) == []


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_every_ima_list_reproduces_pcr10_in_every_bank(firmware: str) -> None:
    d, report = _guest(firmware)
    pcr10 = {"pcr10": _pcrs(report)["pcr10"]}
    lists = sorted(p for p in d.iterdir() if "runtime_measurements" in p.name and p.name != "runtime_measurements_count")
    assert len(lists) >= 4
    for path in lists:
        log = parse(path.read_bytes())
        assert log.format in ("ima-binary", "ima-ascii") and len(log.events) > 10, path.name
        # PCRs were read first: the list may hold entries measured after (a prefix must match).
        for m in explain(log.events, pcr10):
            assert "the register equals the log after event" in m.explanation, f"{path.name}: {m.explanation}"
        if log.format == "ima-binary":
            alg, big = ima.guess_binary_layout(path.read_bytes()) or (HashAlg.SHA1, False)
            ima.replay(path.read_bytes(), alg=alg, big_endian=big, banks=(alg,), verify=True)  # template hashes


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_runtime_log_on_pcr16_through_the_kernel_resource_manager(firmware: str) -> None:
    _, report = _guest(firmware)
    log = report["runtime_log"]
    assert log["ok"], log["findings"]
    assert log["banks"] == ["sha1", "sha256", "sha384", "sha512"]
    assert log["lines"][0].startswith("SYNC sha1/") and len(log["lines"]) == 3
