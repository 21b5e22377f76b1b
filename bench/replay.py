"""Event-log parse + replay throughput, beside tpm2-tools' tpm2_eventlog and a bare hashlib chain.

    python bench/replay.py [--events 1000000] [--tpm2-events 100000] [--json]

Cases:
* real fixtures (TSMR_FIXTURES): parse + replay of every TPM/CCEL log, events/s;
* a synthetic crypto-agile log (sha256 + sha384 banks, small EV_ACTION events)
  of ``--events`` events: tsmr parse only, parse + replay (tsmr.eventlog +
  tsmr.replay), and the limit: a bare hashlib fold of the same digests;
* tpm2_eventlog (Debian tpm2-tools, a C program printing YAML) on a log of
  ``--tpm2-events`` events and on the fixtures, beside tsmr on the same files:
  the speed-up ratio.

IMA lists have their own benchmark: bench/replay_ima.py.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from tsmr import HashAlg  # noqa: E402
from tsmr.eventlog import parse  # noqa: E402
from tsmr.formats import tcg2  # noqa: E402
from tsmr.replay import replay, replay_tcg2_bytes  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from fixtures_dir import fixtures_root  # noqa: E402  (the test suite's resolver: TSMR_FIXTURES or its default)

FIXTURES = fixtures_root()
REAL = [
    "go-eventlog/eventlogs/tpm/rhel8-uefi.bin",
    "go-eventlog/eventlogs/tpm/ubuntu-2104-no-secure-boot.bin",
    "go-eventlog/eventlogs/tpm/cos-85-amd-sev.bin",
    "go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin",
    "trustee/eventlog/CCEL_data_grub_gke",
    "trustee/eventlog/CCEL_AAEL_alibabacloud",
]


def synthetic(n: int) -> bytes:
    algs = (HashAlg.SHA256, HashAlg.SHA384)
    events = []
    for i in range(n):
        data = b"event %d" % i
        events.append(tcg2.TCG2Event(8 + i % 8, tcg2.EV_ACTION, tuple((int(a), a.hash(data)) for a in algs), data))
    return tcg2.encode_log(events, algs)


def timed(fn, repeat: int = 1) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def tsmr_parse_replay(data: bytes) -> int:
    log = parse(data, decode=False)
    replay(log.events)
    return len(log.events)


def tpm2_eventlog(path: Path) -> float | None:
    if shutil.which("tpm2_eventlog") is None:
        return None
    t = time.perf_counter()
    proc = subprocess.run(["tpm2_eventlog", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    return dt if proc.returncode == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--tpm2-events", type=int, default=100_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows: list[dict[str, object]] = []

    with tempfile.TemporaryDirectory() as tmp:
        # Real logs: small, so repeat and take the best.
        for rel in REAL:
            path = FIXTURES / rel
            if not path.exists():
                continue
            data = path.read_bytes()
            n = len(parse(data, decode=False).events)
            t_tsmr = timed(lambda: tsmr_parse_replay(data), repeat=20)
            t_tool = tpm2_eventlog(path)
            rows.append({"case": rel, "events": n, "tsmr_events_per_s": n / t_tsmr,
                         "tpm2_eventlog_s": t_tool, "tsmr_s": t_tsmr,
                         "speedup_vs_tpm2_eventlog": (t_tool / t_tsmr) if t_tool else None})

        big = synthetic(args.events)
        t_parse = timed(lambda: parse(big, decode=False))
        t_all = timed(lambda: tsmr_parse_replay(big))
        t_dec = timed(lambda: parse(big, decode=True).events)
        t_fast = timed(lambda: replay_tcg2_bytes(big))
        log = tcg2.parse(big)
        pairs = [(ev.index, ev.digests) for ev in log.events]

        def bare() -> None:
            state: dict[tuple[int, int], bytes] = {}
            h = {int(HashAlg.SHA256): hashlib.sha256, int(HashAlg.SHA384): hashlib.sha384}
            for index, digests in pairs:
                for a, d in digests:
                    k = (index, a)
                    v = state.get(k)
                    if v is None:
                        v = bytes(len(d))
                    state[k] = h[a](v + d).digest()

        t_bare = timed(bare)
        n = args.events
        rows.append({"case": f"synthetic {n:,} events: bare hashlib fold (limit)", "events": n, "tsmr_events_per_s": n / t_bare})
        rows.append({"case": f"synthetic {n:,} events: tsmr parse", "events": n, "tsmr_events_per_s": n / t_parse})
        rows.append({"case": f"synthetic {n:,} events: tsmr parse + replay", "events": n, "tsmr_events_per_s": n / t_all,
                     "vs_limit": t_bare / t_all})
        rows.append({"case": f"synthetic {n:,} events: tsmr parse with decoding", "events": n, "tsmr_events_per_s": n / t_dec})
        rows.append({"case": f"synthetic {n:,} events: tsmr replay from bytes", "events": n, "tsmr_events_per_s": n / t_fast,
                     "vs_limit": t_bare / t_fast})

        small = synthetic(args.tpm2_events)
        p = Path(tmp) / "synthetic.bin"
        p.write_bytes(small)
        t_tool = tpm2_eventlog(p)
        t_tsmr = timed(lambda: tsmr_parse_replay(small), repeat=3)
        rows.append({"case": f"synthetic {args.tpm2_events:,} events: parse + replay vs tpm2_eventlog", "events": args.tpm2_events,
                     "tsmr_events_per_s": args.tpm2_events / t_tsmr, "tpm2_eventlog_s": t_tool, "tsmr_s": t_tsmr,
                     "speedup_vs_tpm2_eventlog": (t_tool / t_tsmr) if t_tool else None})
        t_tsmr = timed(lambda: replay_tcg2_bytes(small), repeat=3)
        rows.append({"case": f"synthetic {args.tpm2_events:,} events: replay from bytes vs tpm2_eventlog", "events": args.tpm2_events,
                     "tsmr_events_per_s": args.tpm2_events / t_tsmr, "tpm2_eventlog_s": t_tool, "tsmr_s": t_tsmr,
                     "speedup_vs_tpm2_eventlog": (t_tool / t_tsmr) if t_tool else None})

    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'case':64} {'events':>9} {'tsmr ev/s':>12} {'tpm2_eventlog s':>16} {'tsmr s':>9} {'speedup':>8}")
    for r in rows:
        tool = r.get("tpm2_eventlog_s")
        tool_s = f"{tool:.4f}" if isinstance(tool, float) else ("-" if "tpm2_eventlog_s" not in r else "failed")
        ts = r.get("tsmr_s")
        sp = r.get("speedup_vs_tpm2_eventlog") or r.get("vs_limit")
        print(f"{r['case']:64} {r['events']:>9,} {r['tsmr_events_per_s']:>12,.0f} {tool_s:>16} "
              f"{(f'{ts:.4f}' if isinstance(ts, float) else '-'):>9} {(f'{sp:.2f}' if sp else '-'):>8}")


if __name__ == "__main__":
    main()
