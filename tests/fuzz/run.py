"""Run every fuzz target (or some) for a while and report executions and crashers.

    python tests/fuzz/run.py --seconds 60            # all targets, 60 s each (make fuzz)
    python tests/fuzz/run.py --targets cel_tlv,aael --seconds 10
    python tests/fuzz/run.py --seconds 2 --json      # machine-readable (the pytest wrapper)

Each target runs in its own ``fuzz_target.py`` process (atheris owns its
process), with a fresh corpus directory seeded from the fixtures and
synthetic inputs (``targets.py``); the corpus is deleted afterwards unless
``--keep DIR`` is given.  Crash inputs are written to ``--artifacts DIR``
(default: a temporary directory that is kept when something crashed).  Exit
status: 0 when no target crashed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402

MAX_LEN = 65536
_EXECS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs in")


def _write_seeds(name: str, corpus: Path) -> int:
    corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for seed in targets.seeds_for(name):
        seed = seed[:MAX_LEN]
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        n += 1
    return n


def run_target(name: str, seconds: float, workdir: Path, artifacts: Path, seed: int | None) -> dict:
    target = targets.TARGETS[name]
    result: dict = {"target": name, "doc": target.doc}
    try:
        reason = target.unavailable()
    except Exception as e:  # a module that fails to import: report it, do not crash the run
        reason = f"import failed: {type(e).__name__}: {e}"
    if reason:
        result.update(status="skipped", reason=reason)
        return result
    corpus = workdir / "corpus" / name
    result["seeds"] = _write_seeds(name, corpus)
    artifacts.mkdir(parents=True, exist_ok=True)
    prefix = str(artifacts / f"{name}-")
    cmd = [sys.executable, str(HERE / "fuzz_target.py"), name, str(corpus),
           f"-max_total_time={max(1, int(seconds))}", f"-artifact_prefix={prefix}", f"-max_len={MAX_LEN}",
           "-print_final_stats=1", "-timeout=20", "-rss_limit_mb=2048"]
    if seed is not None:
        cmd.append(f"-seed={seed}")
    before = set(artifacts.glob(f"{name}-*"))
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=seconds + 120,
                              env=env, cwd=str(workdir))
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or "") + (e.stderr or "") if isinstance(e.stdout, str) else ""
        code = -1
    result["elapsed"] = round(time.monotonic() - t0, 1)
    if out.startswith("SKIP:") or "\nSKIP:" in out[:400]:
        result.update(status="skipped", reason=out.split("SKIP:", 1)[1].strip().splitlines()[0])
        return result
    m = _EXECS.search(out) or _DONE.search(out)
    result["executions"] = int(m.group(1)) if m else None
    crashers = sorted(str(p) for p in set(artifacts.glob(f"{name}-*")) - before)
    result["crashers"] = crashers
    if code != 0 or crashers:
        result["status"] = "crashed"
        result["exit_code"] = code
        # the Python traceback atheris prints, or the tail of the output
        i = out.find("=== Uncaught Python exception")
        result["report"] = out[i:i + 4000] if i >= 0 else out[-4000:]
    else:
        result["status"] = "ok"
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60, help="fuzzing time per target (default 60)")
    ap.add_argument("--targets", default="", help=f"comma-separated subset of: {', '.join(targets.names())}")
    ap.add_argument("--jobs", type=int, default=1, help="targets to run at once (default 1)")
    ap.add_argument("--artifacts", type=Path, default=None, help="where crash inputs go")
    ap.add_argument("--keep", type=Path, default=None, help="keep the corpora in this directory")
    ap.add_argument("--seed", type=int, default=None, help="libFuzzer -seed, for reproducible runs")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = ap.parse_args(argv)

    names = [n for n in args.targets.split(",") if n] or targets.names()
    unknown = [n for n in names if n not in targets.TARGETS]
    if unknown:
        ap.error(f"unknown targets: {', '.join(unknown)}")
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="tsmr-fuzz-"))
    artifacts = args.artifacts or workdir / "artifacts"
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda n: run_target(n, args.seconds, workdir, artifacts, args.seed), names))
        crashed = [r for r in results if r["status"] == "crashed"]
        if crashed and args.artifacts is None:  # keep crash inputs somewhere that survives
            keep = Path(tempfile.mkdtemp(prefix="tsmr-fuzz-crashers-"))
            for r in crashed:
                moved = []
                for c in r["crashers"]:
                    dest = keep / Path(c).name
                    shutil.copyfile(c, dest)
                    moved.append(str(dest))
                r["crashers"] = moved
        if args.json:
            print(json.dumps({"seconds": args.seconds, "results": results}, indent=1))
        else:
            for r in results:
                if r["status"] == "skipped":
                    print(f"{r['target']:<12} skipped   {r['reason']}")
                    continue
                execs = r.get("executions")
                line = f"{r['target']:<12} {r['status']:<9} {execs if execs is not None else '?':>9} execs  " \
                       f"{r['elapsed']:>5}s  {r['seeds']} seeds"
                print(line)
                if r["status"] == "crashed":
                    print("    crashers:", ", ".join(r["crashers"]) or "(none written)")
                    print("    " + r["report"].replace("\n", "\n    ")[:3000])
        return 1 if crashed else 0
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
