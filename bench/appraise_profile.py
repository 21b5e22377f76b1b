"""appraise() in process on bench/service.py's benchmark bundle: rate, a cProfile summary, and the results.

    python bench/appraise_profile.py [--seconds 5] [--events 100] [--profile N] [--top 30]
                                     [--dump FILE] [--compare FILE] [--json]

The bundle is made exactly as bench/service.py makes it (an emulated TDX quote, the go-tdx-guest CCEL
replayed into RTMR0-2, a runtime log of ``--events`` records on RTMR3, reference values learned from one
such bundle, the default policy).  It prints:

* the rate: appraisals per second over ``--seconds`` (one thread, 20 bundles over fresh nonces, in turn);
* with ``--profile N``: a cProfile of N appraisals, the top ``--top`` entries by cumulative time, with the
  milliseconds per appraisal each costs;
* with ``--dump FILE``: ``Result.to_dict()`` of one appraisal of a fixed-nonce bundle (the emulator makes a new
  key and certificates each run, none of which the result shows), so that a run before a change and one after can be
  compared with ``--compare FILE`` (exit status 1 when they differ).

``--baseline-rate R`` (appraisals/s measured before a change, e.g. on the same machine with the old tree)
makes it print the ratio of the measured rate to R.

``--against REV`` measures the ratio itself: it extracts ``src/`` of git revision REV (``git archive``)
into a temporary directory and runs this script's rate measurement in child processes, alternately
with REV's tree and with this one (``--rounds`` pairs of ``--seconds`` each), on the same kind of bundle.
The machine is shared, so besides wall-clock rates it reports CPU-time rates (``time.thread_time``
per appraisal), which other processes disturb much less, and the ratio of the medians of each.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from service import learned_refvals, make_bundle_for, pct, prepare_guest, write_collateral  # noqa: E402

FIXED_NOW = datetime.now(timezone.utc)  # the emulator's certificates are made when the guest is


def setup(work: Path, events: int) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The guest, its learned reference values and the verifier's trust anchors."""
    from tsmr.system.trust import load_anchors

    guest = prepare_guest(work / "guest", events)
    refvals = learned_refvals(guest)
    trust = load_anchors(trust_root=guest["trust_root"], collateral=str(write_collateral(guest["trust_root"])))
    return guest, refvals, trust


def rate(bundles: list[dict[str, Any]], refvals: dict[str, Any], trust: Any, seconds: float) -> dict[str, Any]:
    from tsmr.appraisal import appraise

    times: list[float] = []
    cpu: list[float] = []
    statuses: set[str] = set()
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        b = bundles[i % len(bundles)]
        t0, c0 = time.perf_counter(), time.thread_time()
        r = appraise(b, nonce=bytes.fromhex(b["nonce"]), now=datetime.now(timezone.utc), trust=trust,
                     reference_values=refvals)
        cpu.append(time.thread_time() - c0)
        times.append(time.perf_counter() - t0)
        statuses.add(str(r.status))
        i += 1
    return {"appraisals": len(times), "per_second": len(times) / sum(times), "p50_ms": pct(times, 0.5) * 1000,
            "p99_ms": pct(times, 0.99) * 1000, "cpu_per_second": len(cpu) / sum(cpu),
            "cpu_p50_ms": pct(cpu, 0.5) * 1000, "statuses": sorted(statuses)}


def against(rev: str, rounds: int, seconds: float, events: int, extra: list[str]) -> dict[str, Any]:
    """Alternate child runs of REV's tree and this one; the ratio of this tree's median rates to REV's."""
    import statistics
    import subprocess

    trees = Path(tempfile.mkdtemp(prefix="tsmr-bench-against-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(trees)], input=archive, check=True)
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for _ in range(rounds):
            for name, src in (("before", trees / "src"), ("after", ROOT / "src")):
                env = dict(os.environ, PYTHONPATH=str(src))
                out = subprocess.run([sys.executable, __file__, "--seconds", str(seconds), "--events", str(events),
                                      *extra, "--json"], env=env, check=True, capture_output=True, text=True).stdout
                runs[name].append(json.loads(out)["rate"])
    finally:
        shutil.rmtree(trees, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    return {"rev": rev, "rounds": rounds, "runs": runs,
            "before": {k: med("before", k) for k in ("per_second", "cpu_per_second", "p50_ms", "cpu_p50_ms")},
            "after": {k: med("after", k) for k in ("per_second", "cpu_per_second", "p50_ms", "cpu_p50_ms")},
            "ratio_wall": med("after", "per_second") / med("before", "per_second"),
            "ratio_cpu": med("after", "cpu_per_second") / med("before", "cpu_per_second"),
            "same_statuses": all(r["statuses"] == runs["before"][0]["statuses"] for rs in runs.values() for r in rs)}


def profile(bundles: list[dict[str, Any]], refvals: dict[str, Any], trust: Any, n: int, top: int) -> str:
    from tsmr.appraisal import appraise

    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        b = bundles[i % len(bundles)]
        appraise(b, nonce=bytes.fromhex(b["nonce"]), now=datetime.now(timezone.utc), trust=trust,
                 reference_values=refvals)
    prof.disable()
    stats = pstats.Stats(prof)
    out = io.StringIO()
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda kv: -kv[1][3])[:top]
    out.write(f"{'ms/appraisal cum':>16} {'ms tot':>7} {'calls/appr':>10}  function\n")
    for (file, line, name), (cc, nc, tt, ct, _callers) in rows:
        where = f"{Path(file).name}:{line}({name})" if line else name
        if "site-packages" in file or "/lib/python" in file:
            where = f"{file.split('site-packages/')[-1].split('/lib/python3')[-1]}:{line}({name})"
        out.write(f"{ct / n * 1000:16.3f} {tt / n * 1000:7.3f} {nc / n:10.1f}  {where}\n")
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="how long the rate is measured (0: not measured)")
    ap.add_argument("--events", type=int, default=100, help="runtime-log records per bundle")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile N appraisals")
    ap.add_argument("--top", type=int, default=30, help="profile entries shown")
    ap.add_argument("--dump", type=Path, help="write one appraisal's Result.to_dict() (fixed nonce) here")
    ap.add_argument("--compare", type=Path, help="compare that appraisal with a --dump written before")
    ap.add_argument("--baseline-rate", type=float, help="appraisals/s before a change: print the ratio")
    ap.add_argument("--against", metavar="REV", help="git revision to compare with (alternating child runs)")
    ap.add_argument("--rounds", type=int, default=3, help="with --against: pairs of runs")
    ap.add_argument("--no-log-cache", action="store_true",
                    help="parse the logs and replay them in every appraisal (tsmr.appraisal.core keeps parsed "
                         "firmware logs and replay outcomes by content)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.no_log_cache:
        import tsmr.appraisal.core as core

        core.FIRMWARE_LOG_CACHE_MAX_CHARS = -1  # type: ignore[attr-defined]  # no log is small enough to keep
        core.REPLAY_CACHE_MAX_CHARS = -1  # type: ignore[attr-defined]  # (an older tree has none: harmless)

    if args.against:
        got = against(args.against, args.rounds, args.seconds or 5.0, args.events,
                      ["--no-log-cache"] if args.no_log_cache else [])
        if args.json:
            print(json.dumps(got, indent=1))
            return
        for name in ("before", "after"):
            for r in got["runs"][name]:
                print(f"{name:6} {got['rev'] if name == 'before' else 'this tree':>12}: {r['per_second']:7.1f}/s wall "
                      f"(p50 {r['p50_ms']:6.2f} ms), {r['cpu_per_second']:7.1f}/s CPU (p50 {r['cpu_p50_ms']:6.2f} ms)"
                      f" {', '.join(r['statuses'])}")
        b, a = got["before"], got["after"]
        print(f"medians: before {b['per_second']:.1f}/s wall, {b['cpu_per_second']:.1f}/s CPU; "
              f"after {a['per_second']:.1f}/s wall, {a['cpu_per_second']:.1f}/s CPU")
        print(f"ratio after/before: {got['ratio_wall']:.2f}x wall-clock, {got['ratio_cpu']:.2f}x CPU time"
              + ("" if got["same_statuses"] else "; STATUSES DIFFER"))
        return

    from tsmr.appraisal import appraise

    work = Path(tempfile.mkdtemp(prefix="tsmr-bench-appraise-"))
    report: dict[str, Any] = {"events": args.events, "cpus": os.cpu_count()}
    differs = False
    try:
        guest, refvals, trust = setup(work, args.events)
        bundles = [make_bundle_for(guest, os.urandom(32)) for _ in range(20)]
        appraise(bundles[0], nonce=bytes.fromhex(bundles[0]["nonce"]), now=datetime.now(timezone.utc), trust=trust,
                 reference_values=refvals)  # warm: imports, first-use work
        if args.seconds > 0:
            report["rate"] = rate(bundles, refvals, trust, args.seconds)
            if args.baseline_rate:
                report["ratio"] = report["rate"]["per_second"] / args.baseline_rate
        if args.profile:
            report["profile"] = profile(bundles, refvals, trust, args.profile, args.top)
        if args.dump or args.compare:
            # The quote is made over a fixed nonce; the emulator signs anew each time, so the result is
            # compared without the fields that carry the quote's own signature bytes (none are in
            # to_dict(): it carries claims, registers, findings and events).
            b = make_bundle_for(guest, bytes(range(32)))
            doc = appraise(b, nonce=bytes(range(32)), now=FIXED_NOW, trust=trust,
                           reference_values=refvals).to_dict()
            if args.dump:
                args.dump.write_text(json.dumps(doc, indent=1, sort_keys=True))
            if args.compare:
                before = json.loads(args.compare.read_text())
                differs = before != json.loads(json.dumps(doc))
                report["same_result"] = not differs
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(report, indent=1))
    else:
        if "rate" in report:
            r = report["rate"]
            print(f"appraise() in process, 1 thread, {args.events}-record runtime log: {r['per_second']:.1f}/s, "
                  f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms; CPU time {r['cpu_per_second']:.1f}/s, "
                  f"p50 {r['cpu_p50_ms']:.2f} ms ({', '.join(r['statuses'])})")
        if "ratio" in report:
            print(f"ratio to the baseline rate {args.baseline_rate:g}/s: {report['ratio']:.2f}x")
        if "profile" in report:
            print(f"cProfile of {args.profile} appraisals (per appraisal):")
            print(report["profile"])
        if "same_result" in report:
            print("result: " + ("the same as " if not differs else "DIFFERENT from ") + str(args.compare))
    sys.exit(1 if differs else 0)


if __name__ == "__main__":
    main()
