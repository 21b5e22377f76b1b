"""``tsmr predict tpm`` against a real boot: QEMU -kernel/-initrd/-append with OVMF and swtpm.

tests/kernel/run.py booted the kernel tier's kernel with OVMF and a vTPM, and copied out
the firmware's TCG2 log, every PCR of every bank, and what it booted (inputs.json: the
kernel's path and SHA-256, the command line, the memory size; the initrd itself).  Here
``tsmr predict tpm --direct-boot`` is given those same files and must reproduce, in the
sha1, sha256, sha384 and sha512 banks:

* PCR 4, 7 and 9's events in the real log: type, digest, and event data where the
  prediction determines it (all but the application event, whose data holds load addresses);
* PCR 4, 7 and 9 as the TPM reported them.

The kernel's PCR 4 digest is of the image as QEMU 7.2 patches its setup header; the file's
own digest must *not* match (otherwise this test would not show the patching is modelled).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tsmr import HashAlg
from tsmr.formats import tcg2

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("TSMR_KERNEL_VTPM", ROOT / ".state" / "kernel-vtpm"))
REGISTERS = ("pcr4", "pcr7", "pcr9")
BANKS = (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)


def _boot() -> tuple[Path, dict[str, Any], dict[str, Any]]:
    d = OUT / "ovmf"
    if not (d / "inputs.json").exists():
        if os.environ.get("CI"):
            pytest.fail(f"no OVMF vTPM boot with its inputs in {d}: run tests/kernel/run.py first (make test-kernel does)")
        pytest.skip(f"no OVMF vTPM boot with its inputs in {d} (tests/kernel/run.py writes it)")
    report = json.loads((d / "report.json").read_text())
    assert "exception" not in report, report["exception"]
    inputs = json.loads((d / "inputs.json").read_text())
    kernel = Path(inputs["kernel"])
    assert kernel.exists(), f"{kernel} (the booted kernel) is gone"
    assert hashlib.sha256(kernel.read_bytes()).hexdigest() == inputs["kernel_sha256"], f"{kernel} changed since the boot"
    assert hashlib.sha256((d / inputs["initrd"]).read_bytes()).hexdigest() == inputs["initrd_sha256"]
    return d, inputs, report


def _predict(d: Path, inputs: dict[str, Any], *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tsmr", "predict", "tpm", "--direct-boot", "--kernel", inputs["kernel"],
           "--initrd", str(d / inputs["initrd"]), "--cmdline", inputs["cmdline"],
           "--memory", str(inputs["memory_mib"]), "--machine", inputs["machine"], "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def test_predicted_events_are_the_real_logs() -> None:
    d, inputs, _ = _boot()
    log = tcg2.parse((d / "binary_bios_measurements").read_bytes())
    assert set(BANKS) <= set(log.algorithms)
    doc = _predict(d, inputs)
    for reg in REGISTERS:
        real = [e for e in log.events if tcg2.register_name(e.index) == reg]
        predicted = [e for e in doc["events"] if e["register"] == reg]
        assert [e["type"] for e in predicted] == [e.type_name for e in real], reg
        for n, (p, r) in enumerate(zip(predicted, real)):
            for alg in BANKS:
                assert p["digests"][alg.name.lower()] == (r.digest(alg) or b"").hex(), (reg, n, p["component"], alg)
            if "data" in p:
                assert bytes.fromhex(p["data"]) == r.data, (reg, n, p["component"])
            else:
                assert p["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"


def test_predicted_registers_are_the_tpms() -> None:
    d, inputs, report = _boot()
    doc = _predict(d, inputs)
    assert set(doc["registers"]) == set(REGISTERS)
    for reg in REGISTERS:
        for alg in BANKS:
            name = alg.name.lower()
            assert doc["registers"][reg][name] == report["pcrs"][reg][name], (reg, name)


def test_the_unpatched_kernel_is_not_what_ovmf_measured() -> None:
    d, inputs, report = _boot()
    doc = _predict(d, inputs, "--vmm", "unmodified", "--bank", "sha256")
    assert doc["registers"]["pcr4"]["sha256"] != report["pcrs"]["pcr4"]["sha256"]
    assert doc["registers"]["pcr9"]["sha256"] == report["pcrs"]["pcr9"]["sha256"]  # the stub's events do not change
