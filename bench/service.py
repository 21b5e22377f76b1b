"""Attestations per second through ``tsmr serve --workers 2`` on PostgreSQL, beside appraise() in process.

    python bench/service.py [--seconds 30] [--kill-seconds 20] [--clients 4] [--workers 2]
                            [--events 100] [--sqlite] [--baseline-seconds 5] [--floor-seconds 0] [--json]

Every attestation is a full round: ``POST /challenge``, an emulated TDX quote over the
returned nonce (made by the client), then ``POST /attest`` with a bundle carrying the quote,
the firmware log (the go-tdx-guest CCEL fixture, replayed into the emulator's RTMR0-2 first
so that it matches) and a runtime log of ``--events`` records on RTMR3.  The verifier's
reference values are learned from one such bundle first (without them no result could affirm).
Every result is affirming when all goes well; anything else is counted as an error.

Phase 1 measures throughput and latency.  Phase 2 runs the same load and, halfway through,
SIGKILLs one uvicorn worker (uvicorn's supervisor starts a new one); afterwards every result
id a client was given with a 201 is fetched back: a missing one is a lost result.

The baseline is the same appraisal called in process (``tsmr.appraisal.appraise`` on the same
kind of bundle, one thread, no HTTP, no database, no signing), so the ratio shows what the
service around it costs (HTTP, JSON, pydantic, the nonce UPDATE, the result INSERT, the EAR
signature) and what the second worker gains back.

CPU per attestation is counted for each party on the machine: the verifier's worker processes and
PostgreSQL's (from /proc, over the phase) and the clients' own (``time.process_time``).  On a
machine whose CPUs the clients and the database share with the verifier, the sum bounds the
rate: 2 CPUs at 300 attestations/s leave 6.7 ms per attestation for all three together.

``--floor-seconds N`` also runs the same clients for N seconds against the HTTP floor: uvicorn with
the same protocol, loop and worker count serving a verifier that does nothing (``/challenge``
answers a random nonce, ``/attest`` reads the whole body and answers a canned result of the real
one's size), so its rate is the ceiling that the clients and the HTTP stack alone put on any
verifier on this machine.  Without PostgreSQL binaries
(``/usr/lib/postgresql/*/bin``) the service runs on SQLite and says so.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fixtures_dir import fixtures_root  # noqa: E402  (the test suite's resolver: TSMR_FIXTURES or its default)

CCEL = fixtures_root() / "go-tdx-guest" / "ccel" / "ccel_data.dat"

SERVE = """
import typer
from tsmr.cli import serve_cmd
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
serve_cmd.register(app)
app()
"""


# -- the guest --------------------------------------------------------------------------------------

def prepare_guest(state: Path, events: int) -> dict[str, Any]:
    """An emulated TDX guest whose RTMR0-2 match the CCEL fixture and RTMR3 a runtime log of ``events`` records."""
    from tsmr.algorithms import HashAlg
    from tsmr.backends.emulated import EmulatedRegisterSet
    from tsmr.eventlog import parse
    from tsmr.system.acquire import acquire
    from tsmr.runtime_log.store import RuntimeLog

    ccel = CCEL.read_bytes() if CCEL.exists() else None
    with EmulatedRegisterSet("tdx", str(state)) as rs:
        if ccel is not None:
            for e in parse(ccel, "ccel").events:
                if e.measured:
                    rs.extend(e.register, {HashAlg.SHA384: dict(e.digests)[HashAlg.SHA384]})
        with RuntimeLog(rs, "rtmr3", log_dir=state / "logs") as log:
            log.append_many([f"example.com/bench step-{i} image=sha256:{i:064x}" for i in range(events)])
            runtime = log.read()
    got = acquire(bytes(32), backend="emulated:tdx", state_dir=str(state))
    write_collateral(got.trust_anchor)
    return {"state": str(state), "ccel": ccel, "runtime": runtime, "trust_root": got.trust_anchor}


def write_collateral(trust_root: str) -> Path:
    """The emulator's collateral beside its test root, so that the verifier checks CRLs and TCB status too."""
    from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner, write_emulated_collateral

    return write_emulated_collateral(EmulatedTDXSigner(Path(trust_root).parent))


def learned_refvals(guest: dict[str, Any]) -> dict[str, Any]:
    """Reference values learned from one of the guest's bundles, as ``tsmr refvals learn`` makes them."""
    from tsmr.appraisal import learn
    from tsmr.system.trust import load_anchors

    trust = load_anchors(trust_root=guest["trust_root"], collateral=str(write_collateral(guest["trust_root"])))
    return learn(make_bundle_for(guest, bytes(32)), now=datetime.now(timezone.utc), trust=trust, id="bench").to_json()


def store_refvals(database: str, refvals: dict[str, Any]) -> None:
    from tsmr.service.db import Store

    store = Store.open(database)
    try:
        store.put("refvals", "default", refvals)
    finally:
        store.close()


def make_bundle_for(guest: dict[str, Any], nonce: bytes) -> dict[str, Any]:
    from tsmr.system.acquire import acquire
    from tsmr.evidence.bundle import make_bundle

    got = acquire(nonce, backend="emulated:tdx", state_dir=guest["state"])
    logs: list[dict[str, Any]] = []
    if guest["ccel"] is not None:
        logs.append({"format": "ccel", "data": guest["ccel"], "name": "CCEL"})
    logs.append({"format": "tsmr", "register": "rtmr3", "data": guest["runtime"], "name": "rtmr3"})
    return make_bundle(nonce=nonce, evidence=got.evidence, logs=logs)


class BodyMaker:
    """The client's side of a round, kept cheap: the bundle's JSON for a nonce, as ``make_bundle_for`` makes it.

    The clients share the service's 2 CPUs, so what a remote attester would spend is kept out of the
    measurement where it can be: the logs are base64-encoded and serialised once, the emulator's quoting
    keys loaded once, and each round only signs a quote over its nonce and joins the JSON text.
    ``check()`` proves the body equals ``json.dumps(make_bundle_for(...))`` for the same quote.
    """

    def __init__(self, guest: dict[str, Any]) -> None:
        from tsmr.backends.emulated import EmulatedRegisterSet
        from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner

        with EmulatedRegisterSet("tdx", guest["state"]) as rs:
            self.values = {reg.name: value for reg in rs.registers() for value in rs.read(reg.name).values()}
            self.signer = EmulatedTDXSigner(rs.dir / "qe")
        template = make_bundle_for(guest, bytes(32))
        self.provider = template["evidence"].get("provider")
        self.logs = json.dumps(template["logs"])
        self.head = json.dumps({"format": template["format"], "version": template["version"]})[:-1]

    def quote(self, nonce: bytes) -> bytes:
        return self.signer.quote(report_data=nonce, registers=self.values)

    def body(self, nonce: bytes, quote: bytes | None = None) -> str:
        import base64

        ev = {"kind": "tdx", "data": base64.b64encode(quote or self.quote(nonce)).decode(), "provider": self.provider}
        return f'{self.head}, "nonce": "{nonce.hex()}", "evidence": {json.dumps(ev)}, "logs": {self.logs}}}'

    def check(self, guest: dict[str, Any]) -> None:
        from tsmr.evidence.bundle import make_bundle

        nonce = os.urandom(32)
        quote = self.quote(nonce)
        reference = make_bundle_for(guest, nonce)
        reference = make_bundle(nonce=nonce, evidence={**reference["evidence"], "data": quote}, logs=reference["logs"])
        if json.loads(self.body(nonce, quote)) != reference:
            raise RuntimeError("the bench client's bundle differs from make_bundle_for's")


# -- the service ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(work: Path, database: str, trust_root: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    collateral = Path(trust_root).with_name("collateral.json")
    return start_server(work, [sys.executable, "-c", SERVE, "serve", "--port", str(port), "--database", database,
                               "--state-dir", str(work / "verifier"), "--trust-root", trust_root,
                               *(["--collateral", str(collateral)] if collateral.exists() else []),
                               "--workers", str(workers), "--json-logs", "--log-level", "warning",
                               # every client here shares one address: the per-address limit is not what is measured
                               "--challenge-rate", "0"], port, workers)


FLOOR = """
import os, sys, uvicorn
from tsmr.service.server import PROTOCOL
uvicorn.run("floor_app:app", app_dir=sys.argv[1], port=int(sys.argv[2]), workers=int(sys.argv[3]), http=PROTOCOL,
            access_log=False, server_header=False, log_level="warning")
"""

FLOOR_APP = """
import os
from pathlib import Path

RESULT = Path(os.environ["FLOOR_RESULT"]).read_bytes()  # a real POST /attest answer, sent as it is


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    b"".join(chunks)
    if scope["path"] == "/challenge":
        status, body = 201, b'{"nonce":"%s","expires_at":"2030-01-01T00:00:00Z"}' % os.urandom(32).hex().encode()
    elif scope["path"] == "/attest":
        status, body = 201, RESULT
    else:
        status, body = 200, b'{"status":"ok"}'
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
"""


def start_floor(work: Path, result: bytes, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn as tsmr serve runs it, serving a verifier that does nothing (see the module docstring)."""
    (work / "floor_app.py").write_text(FLOOR_APP)
    (work / "floor-result.json").write_bytes(result)
    port = free_port()
    return start_server(work, [sys.executable, "-c", FLOOR, str(work), str(port), str(workers)], port, workers,
                        env={"FLOOR_RESULT": str(work / "floor-result.json")})


def start_server(work: Path, argv: list[str], port: int, workers: int,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    environ = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    environ.update(env or {})
    log = open(work / "serve.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environ, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {(work / 'serve.log').read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200 and (
                    workers == 1 or len(worker_pids(proc.pid)) >= workers):
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_service(proc)
    raise RuntimeError("the server did not become healthy")


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this script started for the service
            proc.wait(timeout=10)


def worker_pids(parent: int) -> list[int]:
    """uvicorn's worker processes: the children of the serve process started by multiprocessing."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"spawn_main" in Path(f"/proc/{entry}/cmdline").read_bytes():
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (processes gone are counted as 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine (the bench's throwaway cluster is the only one)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0", 1)[0].split(b"/")[-1].startswith(
                        b"postgres"):
                    out.append(int(entry))
            except OSError:
                continue
    return out


class CpuMeter:
    """CPU seconds the verifier's workers and PostgreSQL spend over a phase (the clients count their own)."""

    def __init__(self, serve_pid: int) -> None:
        self.serve_pid = serve_pid

    def sample(self) -> dict[int, tuple[str, float]]:
        pids = {p: "verifier" for p in worker_pids(self.serve_pid) or [self.serve_pid]}
        pids.update({p: "database" for p in postgres_pids()})
        return {p: (what, cpu_seconds([p])) for p, what in pids.items()}

    @staticmethod
    def spent(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
        """Per party, the CPU spent between two samples by the processes alive at both (new ones from 0)."""
        out = {"verifier": 0.0, "database": 0.0}
        for pid, (what, cpu) in after.items():
            out[what] += cpu - before.get(pid, (what, 0.0))[1]
        return out


# -- the clients ------------------------------------------------------------------------------------

def client(url: str, guest: dict[str, Any], seconds: float, index: int, out: Any) -> None:
    """One attester in a loop, on one kept-alive connection of the standard library's ``http.client``.

    The clients share the service's CPUs, so they are kept lean: ``http.client`` costs a
    fraction of what a full-featured client does per request (a reconnect after a dropped
    connection, as when a worker is killed, is counted as an error of that round).
    """
    import http.client
    from urllib.parse import urlsplit

    stats: dict[str, Any] = {"attest": [], "challenge": [], "cycle": [], "ok": [], "errors": {}}

    def error(kind: str) -> None:
        stats["errors"][kind] = stats["errors"].get(kind, 0) + 1

    parts = urlsplit(url)
    maker = BodyMaker(guest)
    cpu0 = time.process_time()
    deadline = time.monotonic() + seconds
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    json_headers = {"Content-Type": "application/json"}

    def post(path: str, body: bytes) -> tuple[int, bytes]:
        conn.request("POST", path, body=body, headers=json_headers)
        r = conn.getresponse()
        return r.status, r.read()

    try:
        while time.monotonic() < deadline:
            try:
                t0 = time.perf_counter()
                status, data = post("/challenge", b"")
                t1 = time.perf_counter()
                if status != 201:
                    error(f"challenge {status}")
                    continue
                body = maker.body(bytes.fromhex(json.loads(data)["nonce"])).encode()  # the body is the bundle
                t2 = time.perf_counter()
                status, data = post("/attest", body)
                t3 = time.perf_counter()
            except (OSError, http.client.HTTPException) as exc:
                error(type(exc).__name__)
                conn.close()
                time.sleep(0.05)
                continue
            if status != 201:
                error(f"attest {status}")
                continue
            doc = json.loads(data)
            if doc["status"] != "affirming":
                error(f"status {doc['status']}")
            stats["ok"].append((doc["id"], doc["status"]))
            stats["challenge"].append(t1 - t0)
            stats["attest"].append(t3 - t2)
            stats["cycle"].append((t1 - t0) + (t3 - t2))  # the client's quote making left out
    finally:
        conn.close()
    stats["cpu"] = time.process_time() - cpu0
    out.put((index, stats))


def run_load(url: str, guest: dict[str, Any], seconds: float, clients: int,
             during: Any = None, meter: CpuMeter | None = None) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=client, args=(url, guest, seconds, i, q)) for i in range(clients)]
    before = meter.sample() if meter is not None else {}
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    extra = during() if during is not None else None
    results = [q.get(timeout=seconds + 120) for _ in procs]
    spent = CpuMeter.spent(before, meter.sample()) if meter is not None else {}
    for p in procs:
        p.join(timeout=30)
    elapsed = time.perf_counter() - t0
    spent["clients"] = sum(s["cpu"] for _, s in results)
    merged: dict[str, Any] = {"attest": [], "challenge": [], "cycle": [], "ok": [], "errors": {}, "cpu": spent}
    for _, s in results:
        for k in ("attest", "challenge", "cycle", "ok"):
            merged[k] += s[k]
        for k, v in s["errors"].items():
            merged["errors"][k] = merged["errors"].get(k, 0) + v
    return {"elapsed": elapsed, "stats": merged, "during": extra}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(run: dict[str, Any], seconds: float) -> dict[str, Any]:
    s = run["stats"]
    n = max(1, len(s["ok"]))
    return {"attestations": len(s["ok"]), "per_second": len(s["ok"]) / seconds,
            "cpu_ms_per_attestation": {k: round(v / n * 1000, 2) for k, v in s["cpu"].items()},
            "attest_p50_ms": pct(s["attest"], 0.5) * 1000, "attest_p99_ms": pct(s["attest"], 0.99) * 1000,
            "challenge_p50_ms": pct(s["challenge"], 0.5) * 1000, "cycle_p50_ms": pct(s["cycle"], 0.5) * 1000,
            "cycle_p99_ms": pct(s["cycle"], 0.99) * 1000, "errors": dict(s["errors"])}


# -- the baseline -----------------------------------------------------------------------------------

def baseline(guest: dict[str, Any], seconds: float, refvals: dict[str, Any]) -> dict[str, Any]:
    from tsmr.appraisal import appraise
    from tsmr.system.trust import load_anchors

    trust = load_anchors(trust_root=guest["trust_root"], collateral=str(write_collateral(guest["trust_root"])))
    bundles = [make_bundle_for(guest, os.urandom(32)) for _ in range(20)]
    times: list[float] = []
    statuses = set()
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        b = bundles[i % len(bundles)]
        t0 = time.perf_counter()
        r = appraise(b, nonce=bytes.fromhex(b["nonce"]), now=datetime.now(timezone.utc), trust=trust,
                     reference_values=refvals)
        times.append(time.perf_counter() - t0)
        statuses.add(r.status)
        i += 1
    return {"appraisals": len(times), "per_second": len(times) / sum(times), "p50_ms": pct(times, 0.5) * 1000,
            "p99_ms": pct(times, 0.99) * 1000, "statuses": sorted(statuses)}


# -- main -------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="phase 1 (throughput) duration")
    ap.add_argument("--kill-seconds", type=float, default=20.0, help="phase 2 (worker killed halfway) duration; 0 skips it")
    ap.add_argument("--clients", type=int, default=4, help="client processes")
    ap.add_argument("--workers", type=int, default=2, help="tsmr serve --workers")
    ap.add_argument("--events", type=int, default=100, help="runtime-log records per bundle")
    ap.add_argument("--baseline-seconds", type=float, default=5.0)
    ap.add_argument("--floor-seconds", type=float, default=0.0,
                    help="also run the clients this long against the HTTP floor (a verifier doing nothing); 0 skips it")
    ap.add_argument("--sqlite", action="store_true", help="use SQLite even when PostgreSQL is available")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "tests" / "service"))
    from pg import PostgresCluster, available  # the test suite's throwaway-cluster harness

    work = Path(tempfile.mkdtemp(prefix="tsmr-bench-service-"))
    notes: list[str] = []
    cluster = None
    try:
        guest = prepare_guest(work / "guest", args.events)
        if guest["ccel"] is None:
            notes.append(f"no CCEL fixture at {CCEL}: bundles carry the runtime log only")
        reason = "--sqlite given" if args.sqlite else available()
        if reason is None:
            cluster = PostgresCluster().start()
            database = cluster.create_database("bench")
            backend = "postgresql"
        else:
            database = f"sqlite:///{work / 'verifier.db'}"
            backend = "sqlite"
            notes.append(f"SQLite instead of PostgreSQL: {reason}")
        size = len(json.dumps(make_bundle_for(guest, bytes(32))))
        BodyMaker(guest).check(guest)
        refvals = learned_refvals(guest)
        base = baseline(guest, args.baseline_seconds, refvals)
        store_refvals(database, refvals)

        proc, url = start_service(work, database, guest["trust_root"], args.workers)
        try:
            phase1 = summary(run_load(url, guest, args.seconds, args.clients, meter=CpuMeter(proc.pid)), args.seconds)
            import httpx

            with httpx.Client(base_url=url, timeout=60) as c:  # one real answer, for the floor to send
                nonce = bytes.fromhex(c.post("/challenge").json()["nonce"])
                real_answer = c.post("/attest", content=BodyMaker(guest).body(nonce),
                                     headers={"content-type": "application/json"}).content
            phase2: dict[str, Any] | None = None
            if args.kill_seconds > 0:
                def kill_one() -> dict[str, Any]:
                    time.sleep(args.kill_seconds / 2)
                    before = worker_pids(proc.pid)
                    victim = before[0]
                    os.kill(victim, signal.SIGKILL)  # a worker of the service this script started
                    t_kill = time.monotonic()
                    back = None
                    while time.monotonic() - t_kill < 30:
                        now = worker_pids(proc.pid)
                        if len(now) >= args.workers and victim not in now:
                            back = time.monotonic() - t_kill
                            break
                        time.sleep(0.1)
                    return {"killed": victim, "restarted_after_s": back, "workers_after": worker_pids(proc.pid)}

                run2 = run_load(url, guest, args.kill_seconds, args.clients, during=kill_one)
                phase2 = summary(run2, args.kill_seconds)
                phase2.update(run2["during"] or {})
                import httpx

                lost, mismatched = [], 0
                with httpx.Client(base_url=url, timeout=60) as c:
                    for rid, status in run2["stats"]["ok"]:
                        r = c.get(f"/results/{rid}")
                        if r.status_code != 200:
                            lost.append(rid)
                        elif r.json()["status"] != status:
                            mismatched += 1
                phase2.update({"told_stored": len(run2["stats"]["ok"]), "lost": len(lost), "status_changed": mismatched})
        finally:
            stop_service(proc)
        floor: dict[str, Any] | None = None
        if args.floor_seconds > 0:
            proc, url = start_floor(work, real_answer, args.workers)
            try:
                floor = summary(run_load(url, guest, args.floor_seconds, args.clients, meter=CpuMeter(proc.pid)),
                                args.floor_seconds)
            finally:
                stop_service(proc)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    report = {"database": backend, "workers": args.workers, "clients": args.clients, "events": args.events,
              "bundle_bytes": size, "cpus": os.cpu_count(), "phase1": phase1, "phase2": phase2, "baseline": base, "floor": floor,
              "ratio_throughput": phase1["per_second"] / base["per_second"],
              "ratio_latency_p50": phase1["attest_p50_ms"] / base["p50_ms"], "notes": notes}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"tsmr serve --workers {args.workers} on {backend}, {args.clients} client processes, {os.cpu_count()} CPUs; "
          f"bundle {size / 1024:.0f} KiB (TDX quote, CCEL, {args.events}-record runtime log)")
    for n in notes:
        print(f"note: {n}")
    p = phase1
    print(f"phase 1 ({args.seconds:g} s): {p['attestations']} attestations, {p['per_second']:.1f}/s; "
          f"POST /attest p50 {p['attest_p50_ms']:.1f} ms p99 {p['attest_p99_ms']:.1f} ms; "
          f"POST /challenge p50 {p['challenge_p50_ms']:.1f} ms; errors {p['errors'] or 0}")
    print(f"  CPU per attestation: {_cpu(p)}")
    if phase2 is not None:
        q = phase2
        print(f"phase 2 ({args.kill_seconds:g} s, worker {q['killed']} killed halfway, replaced after "
              f"{q['restarted_after_s'] if q['restarted_after_s'] is None else round(q['restarted_after_s'], 1)} s): "
              f"{q['attestations']} attestations, {q['per_second']:.1f}/s, errors {q['errors'] or 0}; "
              f"{q['told_stored']} told stored, {q['lost']} lost, {q['status_changed']} changed")
    print(f"baseline: appraise() in process, 1 thread: {base['per_second']:.1f}/s, p50 {base['p50_ms']:.1f} ms, "
          f"p99 {base['p99_ms']:.1f} ms ({', '.join(base['statuses'])})")
    print(f"ratio service/in-process: throughput {report['ratio_throughput']:.2f}, "
          f"latency p50 {report['ratio_latency_p50']:.2f}")
    if floor is not None:
        print(f"HTTP floor ({args.floor_seconds:g} s, a verifier doing nothing): {floor['per_second']:.1f}/s; "
              f"POST /attest p50 {floor['attest_p50_ms']:.1f} ms p99 {floor['attest_p99_ms']:.1f} ms; "
              f"errors {floor['errors'] or 0}; CPU per attestation: {_cpu(floor)}")


def _cpu(phase: dict[str, Any]) -> str:
    cpu = phase["cpu_ms_per_attestation"]
    return ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items()) + f" (sum {sum(cpu.values()):.2f} ms)"


if __name__ == "__main__":
    main()
