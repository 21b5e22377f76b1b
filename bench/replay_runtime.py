"""Replay of a large runtime log: records per second and peak memory, beside a bare hashlib chain.

    python bench/replay_runtime.py [--records 1000000] [--json] [--dir DIR]

The log (a ``SYNC sha384/<zeros>`` line, then ``--records`` event lines of
60-100 bytes such as ``example.com/app step {"n":123,"op":"load",...}``) is
generated once per run into a temporary file.  Cases, each in its own child
process so that its peak memory can be measured alone:

* ``hashlib chain (limit)``: the lines already split in memory, then for each
  ``d = sha384(line).digest(); s = sha384(s + d).digest()`` -- the work replay
  cannot avoid, with no I/O, parsing or validation;
* ``hashlib chain, streamed``: the same, reading the file in 1 MiB chunks;
* ``replay, 1 MiB reads``: ``tsmr.runtime_log.replay.replay`` of the file read in 1 MiB chunks;
* ``Replayer, 1 MiB chunks``: ``Replayer.feed`` with ``os.read`` chunks;
* ``replay(whole file)``: ``replay()`` of the whole file read at once (not
  streaming: for the memory comparison);
* ``naive``: a straightforward verifier, line by line: iterate the file,
  decode, check each line with a regex, ``hashlib.new`` per hash.

Each prints records/s, the ratio to the limit, and the peak RSS the case
added (``ru_maxrss`` in the child after the case, minus before it): streaming
replay stays at a few MiB whatever the log size.  Every case must reach the
same final value.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20
ZERO = bytes(48)

CASES = (
    "hashlib chain (limit)",
    "hashlib chain, streamed",
    "replay, 1 MiB reads",
    "Replayer, 1 MiB chunks",
    "replay(whole file)",
    "naive line-by-line",
)


def generate(path: Path, records: int, seed: int = 1) -> int:
    """SYNC line, then ``records`` event lines of ~60-100 bytes; returns the file size."""
    rng = random.Random(seed)
    ops = ("load", "exec", "open", "config", "policy", "attest")
    with open(path, "wb", buffering=1 << 20) as fh:
        fh.write(b"SYNC sha384/" + b"0" * 96 + b"\n")
        batch: list[str] = []
        for n in range(records):
            op = ops[n % len(ops)]
            pad = "x" * rng.randint(0, 24)
            batch.append(f'example.com/app step {{"n":{n},"op":"{op}","path":"/usr/lib/m{n % 997}.so","p":"{pad}"}}\n')
            if len(batch) == 4096:
                fh.write("".join(batch).encode())
                batch.clear()
        fh.write("".join(batch).encode())
    return path.stat().st_size


# -- the cases (run in a child process) ----------------------------------------------
def _sync_value(line: bytes) -> bytes:
    return bytes.fromhex(line.split(b"/", 1)[1].decode())


def case_limit(path: str) -> tuple[bytes, int]:
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")[:-1]
    t0 = time.perf_counter()  # the hashing alone
    s = _sync_value(lines[0])
    sha = hashlib.sha384
    for line in lines:
        s = sha(s + sha(line).digest()).digest()
    return s, len(lines), time.perf_counter() - t0  # type: ignore[return-value]


def case_streamed(path: str) -> tuple[bytes, int]:
    sha = hashlib.sha384
    s = b""
    n = 0
    rest = b""
    with open(path, "rb", buffering=0) as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            for line in data[:cut].split(b"\n")[:-1]:
                if n == 0:
                    s = _sync_value(line)
                s = sha(s + sha(line).digest()).digest()
                n += 1
    return s, n


def case_replay_chunks(path: str) -> tuple[bytes, int]:
    from tsmr import HashAlg
    from tsmr.runtime_log.replay import replay

    with open(path, "rb") as fh:
        rep = replay(iter(lambda: fh.read(CHUNK), b""), algs=[HashAlg.SHA384])
    return rep.values()[HashAlg.SHA384], rep.records


def case_replayer(path: str) -> tuple[bytes, int]:
    from tsmr import HashAlg
    from tsmr.runtime_log.replay import Replayer

    r = Replayer([HashAlg.SHA384])
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            r.feed(chunk)
    finally:
        os.close(fd)
    rep = r.finish()
    return rep.values()[HashAlg.SHA384], rep.records


def case_whole(path: str) -> tuple[bytes, int]:
    from tsmr import HashAlg
    from tsmr.runtime_log.replay import replay

    with open(path, "rb") as fh:
        data = fh.read()
    rep = replay(data, algs=[HashAlg.SHA384])
    return rep.values()[HashAlg.SHA384], rep.records


_BAD = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def case_naive(path: str) -> tuple[bytes, int]:
    s = b""
    n = 0
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\n")
            text = line.decode("utf-8")
            if _BAD.search(text) or text != text.strip(" "):
                raise ValueError(f"bad line {n + 1}")
            if text.startswith("SYNC "):
                s = _sync_value(line)
            s = hashlib.new("sha384", s + hashlib.new("sha384", line).digest()).digest()
            n += 1
    return s, n


RUN = {
    "hashlib chain (limit)": case_limit,
    "hashlib chain, streamed": case_streamed,
    "replay, 1 MiB reads": case_replay_chunks,
    "Replayer, 1 MiB chunks": case_replayer,
    "replay(whole file)": case_whole,
    "naive line-by-line": case_naive,
}


def child(case: str, path: str) -> None:
    """Run one case and print one JSON line: value, records, seconds, peak RSS added."""
    import tsmr.runtime_log.replay  # noqa: F401  (imports before the baseline RSS)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = RUN[case](path)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if len(out) == 3:  # the limit times the hashing alone
        elapsed = out[2]  # type: ignore[misc]
    print(json.dumps({"value": out[0].hex(), "records": out[1], "seconds": elapsed,
                      "peak_rss_added_kib": after - before, "peak_rss_kib": after}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000, help="event records in the log (default 1,000,000)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the log (default: the system temp dir)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tsmr-replay-", dir=args.dir) as tmp:
        path = Path(tmp) / "runtime.log"
        t0 = time.perf_counter()
        size = generate(path, args.records)
        gen_s = time.perf_counter() - t0
        results = []
        for case in CASES:
            p = subprocess.run([sys.executable, __file__, "--child", case, str(path)], capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                raise SystemExit(f"{case} failed: {p.stderr}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["case"] = case
            r["records_per_second"] = r["records"] / r["seconds"]
            results.append(r)
    values = {r["value"] for r in results}
    if len(values) != 1 or len({r["records"] for r in results}) != 1:
        raise SystemExit(f"the cases disagree: {[(r['case'], r['value'][:16], r['records']) for r in results]}")
    limit = results[0]["records_per_second"]
    for r in results:
        r["ratio_to_limit"] = r["records_per_second"] / limit
    meta = {"records": args.records + 1, "file_bytes": size, "mean_line_bytes": size / (args.records + 1),
            "generate_seconds": gen_s, "final_sha384": results[0]["value"]}
    if args.json:
        print(json.dumps({"log": meta, "results": results}, indent=2))
        return
    print(f"log: {args.records + 1:,} records (1 SYNC + {args.records:,} events), {size / 2**20:.1f} MiB, "
          f"{meta['mean_line_bytes']:.1f} bytes/line with LF; generated in {gen_s:.1f} s")
    print(f"final sha384 (all cases agree): {results[0]['value'][:32]}...")
    print()
    print(f"{'case':26} {'records/s':>12} {'seconds':>8} {'vs limit':>9} {'peak RSS added':>15}")
    for r in results:
        print(f"{r['case']:26} {r['records_per_second']:>12,.0f} {r['seconds']:>8.2f} {r['ratio_to_limit']:>9.3f} "
              f"{r['peak_rss_added_kib'] / 1024:>11.1f} MiB")
    print("\n(the limit hashes lines already in memory; its RSS includes holding the whole file and its lines)")


if __name__ == "__main__":
    main()
