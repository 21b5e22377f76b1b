"""The kernel tier's runner decides from the guest console whether a boot counts (no qemu needed here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "kernel" / "run.py"

# The head of the panic that a CI boot once hit under TCG, before the initrd's init ran.
EARLY_PANIC = """\
[    1.400143] RSP: 0018:ffffffffb1a03e40 EFLAGS: 00000082
[    1.400190] Tainted: [D]=DIE
[    1.400204] RIP: 0010:sched_clock_cpu+0x9/0x230
[    1.400282] Kernel panic - not syncing: Fatal exception in interrupt
[    2.826765] Kernel Offset: 0x2e800000 from 0xffffffff81000000
"""


def _runner():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("tsmr_kernel_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only; main() runs under __main__
    return module


def test_boot_verdicts() -> None:
    run = _runner()
    assert run.INIT_MARK in run.INIT  # the initrd's init prints the mark first
    ok = f"SeaBIOS\n{run.INIT_MARK}\nTSMR: module loaded\nTSMR: guest done rc=0\n[    9.25] reboot: Power down\n"
    assert run.verdict(ok) == "ok"
    assert run.verdict(EARLY_PANIC) == "retry"  # the code under test never ran: one more boot
    late = f"{run.INIT_MARK}\n[    3.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n"
    assert run.verdict(late) == "fail"  # a panic once init ran is a result, never retried
    assert run.verdict("SeaBIOS\nBooting from ROM...\n") == "fail"  # init never ran, no panic: a failure too
    oops = run._oops("x" * 9000 + "\n" + EARLY_PANIC)
    assert oops.startswith("[    1.400143] RSP") and "Fatal exception in interrupt" in oops
