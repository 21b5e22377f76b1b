"""The emulator boots an SEV-SNP image: ``emulate init --profile snp --firmware ...`` and the signed report.

Each case runs the command line as separate processes: the emulator is initialised from real
firmware (Debian's OVMF.fd, or the same image with an SNP_KERNEL_HASHES page for a direct
kernel boot), a report is taken over a nonce (``attest`` and ``quote get``) and verified
under the emulator's ARK, and the MEASUREMENT the signed report carries must be what
sev-snp-measure computes for the same launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tsmr.cli.main import app

from conftest import need_file
from snp_oracle import OVMF, SHIM, SHIM_SIGNED, oracle_measurement, with_kernel_hashes, write

TSMR = [sys.executable, "-m", "tsmr.cli.main"]
NONCE = "5eed" * 8


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TSMR_BACKEND", "TSMR_CONFIGFS_TSM")}
    env.update(TSMR_STATE_DIR=str(state), TSMR_LOG_DIR=str(state / "logs"))
    return env


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One emulator state for the module: each case re-initialises it, its test keys are made once."""
    return tmp_path_factory.mktemp("snp-state")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TSMR, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("vmm,vcpus,vcpu_type,features,kernel", [
    ("qemu", 4, "EPYC-Genoa", "0x1", False),
    ("gce", 2, "EPYC-Milan", "0x21", False),
    ("ec2", 3, "EPYC-Rome", "0x1", True),
])
def test_the_emulated_report_carries_the_predicted_measurement(state: Path, tmp_path: Path, vmm: str, vcpus: int,
                                                               vcpu_type: str, features: str, kernel: bool) -> None:
    firmware = need_file(OVMF, "ovmf")
    launch = ["--vcpus", str(vcpus), "--vcpu-type", vcpu_type, "--guest-features", features]
    if kernel:
        firmware = write(tmp_path, "OVMF-amdsev.fd", with_kernel_hashes(firmware.read_bytes(), table_offset=0x200))
        launch += ["--kernel", str(need_file(SHIM, "shim-signed")), "--initrd", str(need_file(SHIM_SIGNED, "shim-signed")),
                   "--append", "console=ttyS0 root=/dev/vda1"]
    want = oracle_measurement(*launch, "--vmm-type", {"qemu": "QEMU"}.get(vmm, vmm), "--ovmf", str(firmware))

    env = _env(state)
    r = _run(env, "emulate", "init", "--profile", "snp", "--firmware", str(firmware), "--vmm", vmm, *launch, "--json")
    assert r.returncode == 0, r.stderr
    init = json.loads(r.stdout)
    assert init["predicted"]["claims"]["measurement"] == want
    ark = init["trust_anchor"]

    bundle = tmp_path / "bundle.json"
    r = _run(env, "attest", "-b", "emulated:snp", "--nonce", NONCE, "-o", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    r = _run(env, "verify", str(bundle), "--ark", ark, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {(x["register"], x["bank"]): x["signed"] for x in json.loads(r.stdout)["registers"]}
    assert rows[("measurement", "sha384")] == want

    if not kernel:
        return  # the configfs-tsm path once is enough: its report is the same signer's
    report, aux = tmp_path / "report.bin", tmp_path / "certs.bin"
    r = _run(env, "quote", "get", "-b", "emulated:snp", "--nonce", NONCE, "-o", str(report), "--aux", str(aux))
    assert r.returncode == 0, r.stderr
    r = _run(env, "quote", "verify", str(report), "--ark", ark, "--certs", str(aux), "--nonce", NONCE, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["claims"]["measurement"] == want


def test_emulate_init_refuses_what_it_cannot_launch(tmp_path: Path) -> None:
    firmware = str(need_file(OVMF, "ovmf"))
    cases = [
        (["--profile", "cca", "--firmware", firmware, "--vcpus", "1", "--vcpu-type", "EPYC"], "use --profile snp"),
        (["--profile", "cca", "--firmware", firmware], "use --profile tdx"),
        (["--profile", "snp", "--vcpus", "2"], "give it"),
        (["--profile", "snp", "--firmware", firmware, "--vcpus", "1", "--vcpu-type", "EPYC", "--set",
          "measurement=" + "00" * 48], "not both"),
        (["--profile", "snp", "--firmware", firmware, "--vcpus", "1", "--vcpu-type", "Pentium"], "unknown vCPU type"),
        (["--profile", "snp", "--firmware", firmware, "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel",
          str(need_file(SHIM, "shim-signed"))], "SNP_KERNEL_HASHES"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(app, ["emulate", "init", *args, "--state-dir", str(tmp_path), "--json"])
        assert r.exit_code == 2, (args, r.output)
        assert message in json.loads(r.stdout)["error"], (args, r.output)
    assert not (tmp_path / "emulator").exists()  # nothing was initialised
