"""What the worst bundle the default limits let through costs, beside the benchmark bundle.

    python bench/limits.py [--rounds 3] [--bench-rounds 20] [--sqlite] [--skip-service] [--json]

Cases (every bundle carries an emulated TDX quote over its nonce):

* ``benchmark``: the bundle of ``bench/service.py``: the go-tdx-guest CCEL (replayed into
  RTMR0-2 so that it matches) and a 100-record runtime log on RTMR3.  The baseline.
* ``worst records``: as many records as ``max_records`` allows (100,000): a runtime log of
  ``max_log_records`` lines (10,000: one sync record and 9,999 events, all handed to the
  policy; ``max_runtime_events`` is 10,000) and a CCEL of 90,000 EV_IPL events (GRUB command
  lines) on RTMR2 that does not match it, so that the mismatch is explained.
* ``worst bytes``: a runtime log of records of ``max_record_bytes`` (64 KiB, JSON content),
  as many as fit in the 16 MiB request body; every one is handed to the policy.
* ``refused``: a runtime log of 40,000 lines (over ``max_log_records``), which the
  service refuses with 413 before the nonce is spent.

Each case is appraised in process (``tsmr.appraisal.appraise``, in a fresh process per case,
so the peak RSS is its own; after one warm-up appraisal of the benchmark bundle) and through
``tsmr serve`` (one worker, a fresh server per case; PostgreSQL via the test suite's harness
when its binaries are installed, else SQLite): the median ``POST /attest`` time seen by the
client and the worker's peak RSS (VmHWM) and resident size afterwards (VmRSS), beside those
after a warm-up attestation of the benchmark bundle.  Ratios are to the benchmark bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from service import CCEL, make_bundle_for, prepare_guest, start_service, stop_service  # noqa: E402

MiB = 1 << 20


# -- the guests --------------------------------------------------------------------------------------

def share_signer(src: dict[str, Any], state: Path) -> None:
    """Give a new guest the benchmark guest's emulated quoting enclave, so that one verifier trusts both."""
    qe = Path(src["trust_root"]).parent
    shutil.copytree(qe, state / qe.relative_to(src["state"]))

def worst_records_guest(state: Path) -> dict[str, Any]:
    """Runtime log at max_log_records; a mismatching CCEL of AAEL events up to max_records in all."""
    from tsmr.algorithms import HashAlg
    from tsmr.backends.emulated import EmulatedRegisterSet
    from tsmr.eventlog import parse
    from tsmr.system.acquire import acquire
    from tsmr.evidence.limits import DEFAULT_LIMITS as L
    from tsmr.formats import tcg2
    from tsmr.runtime_log.store import RuntimeLog

    with EmulatedRegisterSet("tdx", str(state)) as rs:
        with RuntimeLog(rs, "rtmr3", log_dir=state / "logs") as log:
            records = [f"example.com/bench step-{i} image=sha256:{i:064x}" for i in range(L.max_log_records - 1)]
            for i in range(0, len(records), 2000):
                log.append_many(records[i:i + 2000])
            runtime = log.read()
    lines = runtime.count(b"\n")
    assert lines == L.max_log_records, lines
    n = L.max_records - lines  # (the CCEL's Spec ID header is not an event)
    events = []
    for i in range(n):
        data = f"grub_cmd: linux /boot/vmlinuz-{i} root=/dev/vda1 ro".encode()
        events.append(tcg2.TCG2Event(3, 0xD, ((int(HashAlg.SHA384), HashAlg.SHA384.hash(data)),), data))  # EV_IPL
    ccel = tcg2.encode_log(events, [HashAlg.SHA384])
    assert len(parse(ccel, "ccel").events) + lines == L.max_records
    got = acquire(bytes(32), backend="emulated:tdx", state_dir=str(state))
    return {"state": str(state), "ccel": ccel, "runtime": runtime, "trust_root": got.trust_anchor}


def worst_bytes_guest(state: Path, body_limit: int = 16 * MiB) -> dict[str, Any]:
    """Runtime-log records of max_record_bytes, as many as fit in the request body."""
    from tsmr.backends.emulated import EmulatedRegisterSet
    from tsmr.system.acquire import acquire
    from tsmr.evidence.limits import DEFAULT_LIMITS as L
    from tsmr.runtime_log.store import RuntimeLog

    head = 'example.com/bench blob {"d":"'
    fill = L.max_record_bytes - len(head) - len('"}')
    quote_and_json = 64 << 10  # the quote in base64 and the JSON around it, with room to spare
    count = int((body_limit - quote_and_json) * 3 / 4) // (L.max_record_bytes + 1) - 1
    with EmulatedRegisterSet("tdx", str(state)) as rs:
        with RuntimeLog(rs, "rtmr3", log_dir=state / "logs") as log:
            log.append_many([head + f"{i:08d}" + "x" * (fill - 8) + '"}' for i in range(count)])
            runtime = log.read()
    got = acquire(bytes(32), backend="emulated:tdx", state_dir=str(state))
    return {"state": str(state), "ccel": None, "runtime": runtime, "trust_root": got.trust_anchor}


def refused_guest(state: Path, lines: int = 40_000) -> dict[str, Any]:
    from tsmr.backends.emulated import EmulatedRegisterSet
    from tsmr.system.acquire import acquire
    from tsmr.runtime_log.store import RuntimeLog

    with EmulatedRegisterSet("tdx", str(state)) as rs:
        with RuntimeLog(rs, "rtmr3", log_dir=state / "logs") as log:
            records = [f"example.com/bench step-{i} image=sha256:{i:064x}" for i in range(lines)]
            for i in range(0, lines, 5000):
                log.append_many(records[i:i + 5000])
            runtime = log.read()
    got = acquire(bytes(32), backend="emulated:tdx", state_dir=str(state))
    return {"state": str(state), "ccel": None, "runtime": runtime, "trust_root": got.trust_anchor}


# -- in process (one child process per case) ------------------------------------------------------

CHILD = r"""
import json, statistics, sys, time
from datetime import datetime, timezone
from pathlib import Path
from cryptography import x509
from tsmr.evidence import TrustAnchors
from tsmr.appraisal import appraise
from tsmr.evidence.limits import LimitExceeded

args = json.loads(sys.argv[1])
warm = json.loads(Path(args["warm"]).read_text())
bundle = json.loads(Path(args["bundle"]).read_text())
trust_warm = TrustAnchors(tdx_root=x509.load_pem_x509_certificate(Path(args["warm_root"]).read_bytes()))
trust = TrustAnchors(tdx_root=x509.load_pem_x509_certificate(Path(args["root"]).read_bytes()))
now = lambda: datetime.now(timezone.utc)
def vm(key):  # this process's own counters (ru_maxrss would carry the parent's peak over exec)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
appraise(warm, nonce=bytes.fromhex(warm["nonce"]), now=now(), trust=trust_warm)
before = vm("VmHWM")
times, outcome = [], None
for _ in range(args["rounds"]):
    t0 = time.perf_counter()
    try:
        r = appraise(bundle, nonce=bytes.fromhex(bundle["nonce"]), now=now(), trust=trust)
        json.dumps(r.to_dict())
        outcome = r.status
    except LimitExceeded as exc:
        outcome = f"{exc.code}: {exc.limit}"
    times.append(time.perf_counter() - t0)
peak = vm("VmHWM")
print(json.dumps({"seconds": statistics.median(times), "peak_rss": peak, "warm_rss": before, "outcome": outcome}))
"""


def in_process(work: Path, name: str, bundle: dict[str, Any], root: str, warm: tuple[Path, str], rounds: int) -> dict[str, Any]:
    path = work / f"{name.replace(' ', '-')}.json"
    path.write_text(json.dumps(bundle))
    arg = json.dumps({"bundle": str(path), "root": root, "warm": str(warm[0]), "warm_root": warm[1], "rounds": rounds})
    out = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- through the service ----------------------------------------------------------------------------

def vm(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def attest_once(c: Any, guest: dict[str, Any]) -> tuple[float, int, Any]:
    r = c.post("/challenge")
    assert r.status_code == 201, r.text
    body = json.dumps(make_bundle_for(guest, bytes.fromhex(r.json()["nonce"])))  # the body is the bundle
    t0 = time.perf_counter()
    r = c.post("/attest", content=body, headers={"content-type": "application/json"})
    seconds = time.perf_counter() - t0
    try:
        doc = r.json()
    except ValueError:
        doc = {"error": f"not JSON: {r.text[:80]!r}"}
    return seconds, r.status_code, doc


def through_service(work: Path, database: str, name: str, guest: dict[str, Any], warm_guest: dict[str, Any],
                    rounds: int) -> dict[str, Any]:
    import httpx

    sub = work / f"serve-{name.replace(' ', '-')}"
    sub.mkdir()
    proc, url = start_service(sub, database, guest["trust_root"], 1)
    try:
        with httpx.Client(base_url=url, timeout=600) as c:
            seconds, status, _ = attest_once(c, warm_guest)
            assert status == 201
            warm = vm(proc.pid)
            times, codes, outcome = [], [], None
            for _ in range(rounds):
                seconds, status, doc = attest_once(c, guest)
                times.append(seconds)
                codes.append(status)
                outcome = doc.get("status") if status == 201 else f"{status} {doc.get('error')}"
            after = vm(proc.pid)
    finally:
        stop_service(proc)
    return {"seconds": statistics.median(times), "peak_rss": after["VmHWM"], "rss_after": after["VmRSS"],
            "warm_rss": warm["VmRSS"], "warm_peak": warm["VmHWM"], "outcome": outcome, "codes": codes}


def sigterm_during(work: Path, database: str, guest: dict[str, Any], delay: float) -> dict[str, Any]:
    """SIGTERM the worker ``delay`` seconds into an attestation of ``guest``: how long until it exits, and the answer."""
    import signal
    import threading

    import httpx

    sub = work / "serve-sigterm"
    sub.mkdir()
    proc, url = start_service(sub, database, guest["trust_root"], 1)
    answer: dict[str, Any] = {}

    def send() -> None:
        try:
            with httpx.Client(base_url=url, timeout=600) as c:
                _, status, doc = attest_once(c, guest)
                answer.update(status=status, error=doc.get("error"))
        except httpx.HTTPError as exc:
            answer.update(status=None, error=type(exc).__name__)

    t = threading.Thread(target=send)
    t.start()
    time.sleep(delay)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=300)
        exited = time.monotonic() - t0
    except subprocess.TimeoutExpired:
        exited = None
        stop_service(proc)
    t.join(timeout=60)
    return {"delay": delay, "exit_after_sigterm": exited, **answer}


# -- main -------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="appraisals per worst case (median reported)")
    ap.add_argument("--bench-rounds", type=int, default=20, help="appraisals of the benchmark bundle")
    ap.add_argument("--sqlite", action="store_true", help="use SQLite even when PostgreSQL is available")
    ap.add_argument("--skip-service", action="store_true")
    ap.add_argument("--sigterm", type=float, default=0.0, metavar="SECONDS",
                    help="also SIGTERM a worker this long into a worst-records attestation and time its exit")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT.parent / "tests" / "service"))
    from pg import PostgresCluster, available

    work = Path(tempfile.mkdtemp(prefix="tsmr-bench-limits-"))
    cluster = None
    report: dict[str, Any] = {"cases": {}, "notes": []}
    try:
        t0 = time.perf_counter()
        guests = {"benchmark": prepare_guest(work / "g-bench", 100)}
        for name, make in (("worst records", worst_records_guest), ("worst bytes", worst_bytes_guest),
                           ("refused", refused_guest)):
            state = work / f"g-{name.replace(' ', '-')}"
            share_signer(guests["benchmark"], state)
            guests[name] = make(state)
            assert guests[name]["trust_root"] == guests["benchmark"]["trust_root"] or \
                Path(guests[name]["trust_root"]).read_bytes() == Path(guests["benchmark"]["trust_root"]).read_bytes()
        if guests["benchmark"]["ccel"] is None:
            report["notes"].append(f"no CCEL fixture at {CCEL}: the benchmark bundle carries the runtime log only")
        report["setup_seconds"] = time.perf_counter() - t0
        warm_bundle = make_bundle_for(guests["benchmark"], os.urandom(32))
        warm_path = work / "warm.json"
        warm_path.write_text(json.dumps(warm_bundle))
        warm = (warm_path, guests["benchmark"]["trust_root"])
        database = None
        if not args.skip_service:
            reason = "--sqlite given" if args.sqlite else available()
            if reason is None:
                cluster = PostgresCluster().start()
                report["database"] = "postgresql"
            else:
                report["database"] = "sqlite"
                report["notes"].append(f"SQLite instead of PostgreSQL: {reason}")
        for name, guest in guests.items():
            bundle = make_bundle_for(guest, os.urandom(32))
            size = len(json.dumps(bundle))
            records = sum(b.count(b"\n") for b in [guest["runtime"]])
            rounds = args.bench_rounds if name == "benchmark" else args.rounds
            case: dict[str, Any] = {"body_bytes": size, "runtime_lines": records}
            case["in_process"] = in_process(work, name, bundle, guest["trust_root"], warm, rounds)
            if not args.skip_service:
                if cluster is not None:
                    database = cluster.create_database()
                else:
                    database = f"sqlite:///{work / (name.replace(' ', '-') + '.db')}"
                case["service"] = through_service(work, database, name, guest, guests["benchmark"], rounds)
            report["cases"][name] = case
            print(f"  {name}: done", file=sys.stderr)
        if args.sigterm and not args.skip_service:
            database = cluster.create_database() if cluster is not None else f"sqlite:///{work / 'sigterm.db'}"
            report["sigterm"] = sigterm_during(work, database, guests["worst records"], args.sigterm)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = report["cases"]["benchmark"]
    for name, case in report["cases"].items():
        ip, bp = case["in_process"], base["in_process"]
        # Memory is compared as peak RSS: after the warm-up the benchmark bundle adds nothing measurable.
        case["ratio_in_process"] = {"time": ip["seconds"] / bp["seconds"], "peak": ip["peak_rss"] / bp["peak_rss"]}
        if "service" in case:
            sv, bs = case["service"], base["service"]
            case["ratio_service"] = {"time": sv["seconds"] / bs["seconds"], "peak": sv["peak_rss"] / bs["peak_rss"],
                                     "rss_after": sv["rss_after"] / bs["rss_after"]}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    mib = lambda n: f"{n / MiB:.0f} MiB"  # noqa: E731
    print(f"cpus {os.cpu_count()}; database {report.get('database', '-')}; setup {report['setup_seconds']:.0f} s")
    for n in report["notes"]:
        print(f"note: {n}")
    print(f"{'case':<14} {'body':>9} {'appraise()':>11} {'peak RSS (added)':>20} {'x time':>7} {'x peak':>6} | "
          f"{'POST /attest':>12} {'worker peak':>11} {'RSS after':>9} {'x time':>7} {'x peak':>6}  outcome")
    if "sigterm" in report:
        st = report["sigterm"]
        print(f"SIGTERM {st['delay']:g} s into a worst-records attestation: the worker exited after "
              f"{st['exit_after_sigterm']} s; the client got {st.get('status')} {st.get('error')}")
    for name, case in report["cases"].items():
        ip, ri = case["in_process"], case["ratio_in_process"]
        line = (f"{name:<14} {case['body_bytes'] / 1024:>7.0f}Ki {ip['seconds'] * 1000:>9.1f}ms "
                f"{mib(ip['peak_rss']):>9} ({mib(ip['peak_rss'] - ip['warm_rss']):>7}) {ri['time']:>7.1f} {ri['peak']:>6.1f} | ")
        if "service" in case:
            sv, rs = case["service"], case["ratio_service"]
            line += (f"{sv['seconds'] * 1000:>10.1f}ms {mib(sv['peak_rss']):>11} {mib(sv['rss_after']):>9} "
                     f"{rs['time']:>7.1f} {rs['peak']:>6.2f}  {ip['outcome']} / {sv['outcome']}")
        else:
            line += f"{'-':>12}  {ip['outcome']}"
        print(line)


if __name__ == "__main__":
    main()
