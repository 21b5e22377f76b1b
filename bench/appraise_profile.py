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
    statuses: set[str] = set()
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        b = bundles[i % len(bundles)]
        t0 = time.perf_counter()
        r = appraise(b, nonce=bytes.fromhex(b["nonce"]), now=datetime.now(timezone.utc), trust=trust,
                     reference_values=refvals)
        times.append(time.perf_counter() - t0)
        statuses.add(str(r.status))
        i += 1
    return {"appraisals": len(times), "per_second": len(times) / sum(times), "p50_ms": pct(times, 0.5) * 1000,
            "p99_ms": pct(times, 0.99) * 1000, "statuses": sorted(statuses)}


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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

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
                  f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms ({', '.join(r['statuses'])})")
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
