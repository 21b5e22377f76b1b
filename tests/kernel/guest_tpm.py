"""Runs inside the qemu guest booted with a vTPM (swtpm) and IMA (ima_policy=tcb).

Copies the firmware event log, the IMA measurement lists and every PCR of every
bank out to the host, then keeps a tsmr runtime log on PCR 16 through the ``tpm``
backend on /dev/tpmrm0 and verifies it.  Writes OUT/report.json.

    python3 guest_tpm.py OUT_DIR
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))

SEC = "/sys/kernel/security"


def main() -> None:
    out = sys.argv[1]
    report: dict[str, object] = {"uname": os.uname().release}
    try:
        if not os.path.ismount(SEC):
            os.system(f"mount -t securityfs securityfs {SEC}")
        # PCRs first: the IMA list read afterwards holds at least what they cover.
        pcrs: dict[str, dict[str, str]] = {}
        for bank_dir in sorted(glob.glob("/sys/class/tpm/tpm0/pcr-*")):
            bank = bank_dir.rsplit("pcr-", 1)[1]
            for n in range(24):
                with open(f"{bank_dir}/{n}") as fh:
                    pcrs.setdefault(f"pcr{n}", {})[bank] = fh.read().strip().lower()
        report["pcrs"] = pcrs
        files = {"binary_bios_measurements": f"{SEC}/tpm0/binary_bios_measurements"}
        for path in sorted(glob.glob(f"{SEC}/ima/*runtime_measurements*")):
            files[os.path.basename(path)] = path
        for name, path in files.items():
            with open(path, "rb") as src, open(os.path.join(out, name), "wb") as dst:
                shutil.copyfileobj(src, dst)
        report["files"] = sorted(files)
        # The runtime log on PCR 16 through the tpm backend (kernel resource manager).
        from tsmr.backends.tpm import TpmRegisterSet
        from tsmr.runtime_log.store import RuntimeLog

        with tempfile.TemporaryDirectory() as tmp, TpmRegisterSet("device:/dev/tpmrm0") as tpm, \
                RuntimeLog(tpm, "pcr16", log_dir=tmp) as log:
            log.append_many(['example.com/vtpm-test start {"n":1}', "example.com/vtpm-test next"])
            verdict = log.verify()
            report["runtime_log"] = {"ok": verdict.ok, "banks": [a.kernel_name for a in verdict.banks],
                                     "findings": verdict.explain("pcr16"), "lines": log.read().decode().splitlines()}
    except Exception:
        report["exception"] = traceback.format_exc()
    with open(os.path.join(out, "report.json"), "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
