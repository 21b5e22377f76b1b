"""The emulator boots a TDX image: emulate init --firmware, then attest and verify the emulated quote.

The registers the emulated quote signs must be the ones ``tsmr predict tdx`` predicts for
the same inputs, and the CCEL the bundle carries as the firmware log must replay to them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tsmr.cli.main import app
from tsmr.replay import replay_tcg2_bytes

from conftest import need_file

OVMF = "/usr/share/ovmf/OVMF.fd"  # Debian package ovmf
STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"  # systemd-boot-efi: a real EFI PE image to boot as the kernel
CCEL = "trustee/eventlog/CCEL_data_ovmf"


def tsmr(*args: str) -> str:
    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert r.exit_code == 0, (args, r.stdout, r.stderr, r.exception)
    return r.stdout


@pytest.mark.parametrize("with_ccel", [False, True])
def test_emulated_td_boots_to_the_predicted_registers(state_dir: Path, tmp_path: Path, fixtures: Path,
                                                      with_ccel: bool) -> None:
    need_file(OVMF, "ovmf")
    need_file(STUB, "systemd-boot-efi")
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x07\x07\x01" + bytes(4000))
    inputs = ["--firmware", OVMF, "--kernel", STUB, "--initrd", str(initrd), "--cmdline", "console=hvc0 quiet"]
    if with_ccel:
        inputs += ["--ccel", str(fixtures / CCEL)]
    predicted = json.loads(tsmr("predict", "tdx", *inputs, "--json"))
    regs = {r: b["sha384"] for r, b in predicted["registers"].items()}
    assert set(regs) == ({"rtmr0", "rtmr1", "rtmr2"} if with_ccel else {"rtmr1", "rtmr2"})

    tsmr("emulate", "init", "--profile", "tdx", *inputs)
    for reg, value in regs.items():
        assert tsmr("read", reg, "--backend", "emulated:tdx").strip() == f"sha384:{value}"
    bundle = tmp_path / "bundle.json"
    tsmr("attest", "--backend", "emulated:tdx", "--nonce", "a1b2c3", "-o", str(bundle))
    doc = json.loads(bundle.read_text())
    firmware = [lg for lg in doc["logs"] if lg.get("name") == "firmware"]
    assert len(firmware) == 1 and firmware[0]["format"] == "ccel"
    data = firmware[0]["data"]
    raw = base64.b64decode(data) if isinstance(data, str) else bytes(data)
    replayed = replay_tcg2_bytes(raw, arch="tdx")
    assert {r: b.hex() for r, banks in replayed.registers.items() for b in banks.values()} == regs

    qe = state_dir / "emulator/tdx/qe"
    verdict = json.loads(tsmr("verify", str(bundle), "--nonce", "a1b2c3", "--trust-root", str(qe / "root.pem"),
                              "--collateral", str(qe / "collateral.json"), "--json"))
    assert verdict["ok"] is True
    rows = {r["register"]: r for r in verdict["registers"]}
    assert rows["mrtd"]["signed"] == predicted["claims"]["mrtd"]
    for reg, value in regs.items():
        assert (rows[reg]["status"], rows[reg]["signed"], rows[reg]["replayed"]) == ("matched", value, value)

    tsmr("emulate", "reset", "--profile", "tdx")  # a reboot measures the same boot again
    for reg, value in regs.items():
        assert tsmr("read", reg, "--backend", "emulated:tdx").strip() == f"sha384:{value}"
    tsmr("emulate", "init", "--profile", "tdx")  # without --firmware: no boot, no firmware log
    assert tsmr("read", "rtmr1", "--backend", "emulated:tdx").strip() == "sha384:" + "00" * 48
    assert not (state_dir / "emulator/tdx/ccel").exists()
