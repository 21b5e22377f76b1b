"""Extends per second on each backend, beside a bare hashlib chain (the limit).

    python bench/extend.py [--seconds 2] [--json]

Each case runs for a fixed time on one core; the ratio column is the case's
rate divided by the bare hashlib SHA-384 (or SHA-256 for the TPM) chain, i.e.
the share of the theoretical limit a backend reaches.  Cases needing FUSE or
swtpm are reported as skipped when those are unavailable.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tsmr import HashAlg  # noqa: E402
from tsmr.backends.emulated import EmulatedRegisterSet  # noqa: E402
from tsmr.backends.sysfs import SysfsRegisterSet  # noqa: E402


def rate(op: Callable[[int], None], seconds: float) -> tuple[float, int]:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(64):
            op(n)
            n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start), n


def bare_chain(alg: HashAlg) -> Callable[[int], None]:
    h = getattr(hashlib, alg.kernel_name)
    state = {"v": alg.zero()}
    d = h(b"bench").digest()

    def op(_: int) -> None:
        state["v"] = h(state["v"] + d).digest()

    return op


@contextlib.contextmanager
def fuse_mount(state: Path) -> Iterator[Path | None]:
    mnt = Path(tempfile.mkdtemp(prefix="tsmr-bench-"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tsmr.cli.main", "emulate", "mount", str(mnt), "--profile", "tdx", "--state-dir", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mnt) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        yield mnt if os.path.ismount(mnt) else None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per case (default 2)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    results: list[dict[str, object]] = []

    def record(case: str, alg: HashAlg, r: float | None, n: int, note: str = "") -> None:
        results.append({"case": case, "alg": alg.kernel_name, "per_second": r, "count": n, "note": note})

    s384 = HashAlg.SHA384
    d384 = hashlib.sha384(b"bench").digest()
    r, n = rate(bare_chain(s384), args.seconds)
    record("hashlib chain (limit)", s384, r, n)

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        with EmulatedRegisterSet("tdx", state) as rs:
            r, n = rate(lambda i: rs.extend("rtmr3", {s384: d384}), args.seconds)
            record("emulated:tdx (library)", s384, r, n)
            rs.reset()
        with fuse_mount(state) as mnt:
            if mnt is None:
                record("sysfs on FUSE-mounted emulator", s384, None, 0, "FUSE mount unavailable")
            else:
                with SysfsRegisterSet(mnt) as fs:
                    r, n = rate(lambda i: fs.extend("rtmr3", {s384: d384}), args.seconds)
                    record("sysfs on FUSE-mounted emulator", s384, r, n)

    s256 = HashAlg.SHA256
    d256 = hashlib.sha256(b"bench").digest()
    r, n = rate(bare_chain(s256), args.seconds)
    record("hashlib chain (limit)", s256, r, n)
    try:
        from swtpm import Swtpm
        from tsmr.backends.tpm import TpmRegisterSet

        if not Swtpm.available():
            raise RuntimeError("swtpm not installed")
        with Swtpm() as tpm, TpmRegisterSet(tpm.tcti) as ts:
            r, n = rate(lambda i: ts.extend("pcr16", {s256: d256}), args.seconds)
            record("tpm on swtpm", s256, r, n)
    except Exception as exc:  # a missing optional component: report, don't fail
        record("tpm on swtpm", s256, None, 0, str(exc))

    limits = {res["alg"]: res["per_second"] for res in results if "limit" in str(res["case"])}
    for res in results:
        lim = limits[res["alg"]]
        res["ratio_to_limit"] = (res["per_second"] / lim) if res["per_second"] and lim else None  # type: ignore[operator]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'case':34} {'alg':7} {'extends/s':>12} {'vs hashlib':>11}")
    for res in results:
        ps = f"{res['per_second']:,.0f}" if res["per_second"] else "skipped"
        ratio = f"{res['ratio_to_limit']:.5f}" if res["ratio_to_limit"] else "-"
        print(f"{res['case']:34} {res['alg']:7} {ps:>12} {ratio:>11}  {res['note']}")


if __name__ == "__main__":
    main()
