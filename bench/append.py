"""Durable runtime-log appends per second, beside a bare write+fdatasync loop (the baseline).

    python bench/append.py [--seconds 2] [--dir DIR] [--json]

A durable append (``RuntimeLog.append``) takes the log's lock, writes and
fdatasyncs the intent, extends the register, appends and fdatasyncs the log,
and overwrites the intent with the idle record of the new tail.  Group commit
(``append_many`` of 64 records) shares one intent and one pair of fdatasyncs
among its records (the register is still extended once per record).

Baselines, on the same file system: append one ~80-byte line to a file and
fdatasync it (1 sync per record, the floor of any durable log), the same with
two files (2 syncs per record, what the intent protocol costs at the least),
and 64 lines per fdatasync (the floor of group commit).  The ratio column is
a case's records/s divided by the baseline of the same batch size.

fdatasync cost depends entirely on the file system: on tmpfs it is nearly
free, on a disk it dominates.  The log directory is ``--dir`` (default
``<repo>/.state/bench``, on the repository's disk); the file system type of
that directory is printed.  Each case runs for ``--seconds`` (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tsmr.backends.emulated import EmulatedRegisterSet  # noqa: E402
from tsmr.runtime_log.store import RuntimeLog  # noqa: E402

BATCH = 64


def record(i: int) -> str:
    return f'example.com/app step {{"n":{i},"op":"load","path":"/usr/lib/mod{i % 97}.so","ok":true}}'


def fs_of(path: Path) -> dict[str, str]:
    """Mount point, device and file system type of ``path`` (longest /proc/mounts prefix), and ``stat -f``."""
    real = os.path.realpath(path)
    best = ("", "?", "?", "")
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                dev, mnt, fstype, opts = line.split()[:4]
                mnt = mnt.replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, dev, fstype, opts)
    except OSError:
        pass
    try:
        statf = subprocess.run(["stat", "-f", "-c", "%T", real], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        statf = "?"
    return {"dir": real, "mount": best[0], "device": best[1], "fstype": best[2], "options": best[3], "stat_f": statf}


def rate(op: Callable[[int], int], seconds: float) -> tuple[float, int, float]:
    """Run ``op(i)`` (returning how many records it made durable) for ``seconds``: records/s, records, elapsed."""
    n = i = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        n += op(i)
        i += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start), n, now - start


def bare_sync(d: Path, per_sync: int, files: int) -> tuple[Callable[[int], int], Callable[[], None]]:
    fds = [os.open(d / f"bare{k}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) for k in range(files)]

    def op(i: int) -> int:
        data = "".join(record(i * per_sync + j) + "\n" for j in range(per_sync)).encode()
        for fd in fds:
            os.write(fd, data)
            os.fdatasync(fd)
        return per_sync

    def close() -> None:
        for fd in fds:
            os.close(fd)

    return op, close


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per case (default 2)")
    ap.add_argument("--dir", type=Path, default=ROOT / ".state" / "bench",
                    help="where the logs are written (default <repo>/.state/bench, on the repository's disk)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--no-swtpm", action="store_true", help="skip the swtpm cases")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    fs = fs_of(args.dir)
    results: list[dict[str, object]] = []

    def add(case: str, batch: int, res: tuple[float, int, float] | None, baseline: str, note: str = "") -> None:
        r = res[0] if res else None
        floor = {1: "bare 2 files, write+fdatasync each", BATCH: f"bare 2 files, {BATCH} lines+fdatasync each"}[batch] if baseline else ""
        results.append({"case": case, "batch": batch, "records_per_second": r, "records": res[1] if res else 0,
                        "seconds": round(res[2], 3) if res else 0, "commits_per_second": (r / batch) if r else None,
                        "baseline": baseline, "floor": floor, "note": note})

    work = Path(tempfile.mkdtemp(prefix="append-", dir=args.dir))
    try:
        # -- baselines ---------------------------------------------------------
        for name, per, files in (("bare write+fdatasync", 1, 1), ("bare 2 files, write+fdatasync each", 1, 2),
                                 (f"bare write {BATCH} lines+fdatasync", BATCH, 1),
                                 (f"bare 2 files, {BATCH} lines+fdatasync each", BATCH, 2)):
            d = Path(tempfile.mkdtemp(dir=work))
            op, close = bare_sync(d, per, files)
            try:
                add(name, per, rate(op, args.seconds), "")
            finally:
                close()

        # -- the emulator --------------------------------------------------------
        state = work / "emulator"
        with EmulatedRegisterSet("tdx", state) as rs:
            for batch in (1, BATCH):
                with RuntimeLog(rs, "rtmr3", path=work / f"emu-{batch}" / "rtmr3.log") as log:
                    if batch == 1:
                        res = rate(lambda i: (log.append(record(i)), 1)[1], args.seconds)
                    else:
                        res = rate(lambda i: (log.append_many([record(i * batch + j) for j in range(batch)]), batch)[1], args.seconds)
                    assert log.verify().ok
                add(f"emulated:tdx rtmr3 append{'_many' if batch > 1 else ''}", batch, res, "bare write+fdatasync" if batch == 1 else f"bare write {BATCH} lines+fdatasync")

        # -- swtpm -----------------------------------------------------------------
        swtpm_note = ""
        if args.no_swtpm:
            swtpm_note = "skipped (--no-swtpm)"
        else:
            try:
                from swtpm import Swtpm
                from tsmr.backends.tpm import TpmRegisterSet

                if not Swtpm.available():
                    raise RuntimeError("swtpm not installed")
                with Swtpm() as tpm, TpmRegisterSet(tpm.tcti) as ts:
                    for batch in (1, BATCH):
                        with RuntimeLog(ts, "pcr16", path=work / f"tpm-{batch}" / "pcr16.log") as log:
                            if batch == 1:
                                res = rate(lambda i: (log.append(record(i)), 1)[1], args.seconds)
                            else:
                                res = rate(lambda i: (log.append_many([record(i * batch + j) for j in range(batch)]), batch)[1], args.seconds)
                            assert log.verify().ok
                        add(f"swtpm pcr16 ({len(log.algs)} banks) append{'_many' if batch > 1 else ''}", batch, res,
                            "bare write+fdatasync" if batch == 1 else f"bare write {BATCH} lines+fdatasync")
            except Exception as exc:  # an optional component is missing: report, don't fail
                swtpm_note = str(exc)
        if swtpm_note:
            for batch in (1, BATCH):
                add(f"swtpm pcr16 append{'_many' if batch > 1 else ''}", batch, None, "", swtpm_note)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = {str(r["case"]): r["records_per_second"] for r in results}
    for r in results:
        b = base.get(str(r["baseline"])) if r["baseline"] else None
        f = base.get(str(r["floor"])) if r["floor"] else None
        r["ratio_to_baseline"] = (r["records_per_second"] / b) if r["records_per_second"] and b else None  # type: ignore[operator]
        r["ratio_to_2sync_floor"] = (r["records_per_second"] / f) if r["records_per_second"] and f else None  # type: ignore[operator]
    if args.json:
        print(json.dumps({"filesystem": fs, "seconds_per_case": args.seconds, "results": results}, indent=2))
        return
    print(f"log directory: {fs['dir']}")
    print(f"file system:   {fs['fstype']} ({fs['device']} on {fs['mount']}; stat -f: {fs['stat_f']})"
          + ("  -- tmpfs: fdatasync is nearly free here, use --dir on a disk" if fs["fstype"] == "tmpfs" else ""))
    print()
    print("vs baseline: records/s over the bare 1-file write+fdatasync loop of the same batch size;")
    print("vs 2 syncs:   over the 2-file loop (intent + log: the protocol's least fsync cost)")
    print()
    print(f"{'case':44} {'batch':>5} {'records/s':>11} {'commits/s':>10} {'vs baseline':>11} {'vs 2 syncs':>10}  note")
    for r in results:
        rps = f"{r['records_per_second']:,.0f}" if r["records_per_second"] else "skipped"
        cps = f"{r['commits_per_second']:,.0f}" if r["commits_per_second"] else "-"
        ratio = f"{r['ratio_to_baseline']:.3f}" if r["ratio_to_baseline"] else "-"
        floor = f"{r['ratio_to_2sync_floor']:.3f}" if r["ratio_to_2sync_floor"] else "-"
        print(f"{r['case']:44} {r['batch']:>5} {rps:>11} {cps:>10} {ratio:>11} {floor:>10}  {r['note'] or ('baseline' if not r['baseline'] else '')}")


if __name__ == "__main__":
    main()
