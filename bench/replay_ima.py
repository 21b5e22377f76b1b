"""IMA measurement list: parse and verified replay, entries per second, beside a bare hashlib loop.

    python bench/replay_ima.py [--entries 1000000] [--repeat 3] [--json] [--dir DIR]

A binary ``ima-ng`` list is generated into a temporary file: a boot_aggregate
entry, then ``--entries`` file entries with SHA-256 file digests, names of
40-60 bytes (``/usr/lib/x86_64-linux-gnu/...``) and SHA-1 template hashes, all
on PCR 10, as ``/sys/kernel/security/ima/binary_runtime_measurements`` holds
them.  The file is read back and each case runs on the bytes in memory:

* ``hashlib limit``: the template data already sliced into a list; per entry
  ``h = sha1(data).digest()``, compare with the logged hash, ``v = sha1(v + h)``
  -- the two hashes a verified replay cannot avoid, without any parsing;
* ``tsmr parse_binary``: every entry as an ``IMAEntry`` (fields checked);
* ``tsmr replay, verified``: ``replay(data)``: framing checked, every template
  hash recomputed and compared, PCR 10 SHA-1 bank extended;
* ``tsmr replay, verified, sha256 bank``: the same, but extending the SHA-256
  bank (what a TPM 2.0 quote usually covers): three hashes per entry;
* ``tsmr replay, verified, default banks``: SHA-1 and SHA-256 together
  (``ima.DEFAULT_BANKS``, what ``tsmr eventlog replay`` reports);
* ``tsmr replay, unverified``: logged hashes folded, data not hashed;
* ``IMAReplayer, 1 MiB chunks``: the streaming replayer fed from the file.

Each case is timed ``--repeat`` times and the best run is reported, with its
ratio to the limit measured in the same process.  All verified cases must
reach the same PCR value as the limit.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tsmr.algorithms import HashAlg  # noqa: E402
from tsmr.formats import ima  # noqa: E402

CHUNK = 1 << 20
DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/bin", "/usr/lib/python3/dist-packages/pkg", "/etc/systemd/system",
        "/usr/share/locale/de/LC_MESSAGES", "/usr/lib/modules/6.8.0/kernel/drivers", "/var/lib/dpkg/info")
EXTS = (".so.1", ".py", ".service", ".mo", ".ko.zst", "", ".conf", ".list")


def generate(path: Path, entries: int, seed: int = 1) -> int:
    """Write the list; returns its size in bytes."""
    rng = random.Random(seed)
    head = struct.Struct("<I20sI6sI")
    sha1, sha256 = hashlib.sha1, hashlib.sha256

    def entry(name: bytes, digest: bytes) -> bytes:
        dng = b"sha256:\0" + digest
        nng = name + b"\0"
        data = struct.pack("<I", len(dng)) + dng + struct.pack("<I", len(nng)) + nng
        return head.pack(10, sha1(data).digest(), 6, b"ima-ng", len(data)) + data

    with open(path, "wb", buffering=1 << 20) as fh:
        fh.write(entry(b"boot_aggregate", sha256(b"pcr0-7").digest()))
        for i in range(entries):
            stem = f"{rng.choice(DIRS)}/lib{rng.choice('abcdefghijklmnop')}{i:07d}-{rng.randrange(16**6):06x}"
            name = (stem[:rng.randrange(34, 54)] + rng.choice(EXTS)).encode()
            fh.write(entry(name, sha256(name).digest()))
    return path.stat().st_size


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def run(path: Path, repeat: int) -> list[dict[str, Any]]:
    data = path.read_bytes()
    entries = ima.parse_binary(data)
    n = len(entries)
    pairs = [(e.template_data, e.template_hash) for e in entries]  # pre-sliced, outside the timing
    del entries
    gc.collect()

    def limit() -> bytes:
        h1, v = hashlib.sha1, bytes(20)
        for d, th in pairs:
            h = h1(d).digest()
            if h != th:
                raise AssertionError("template hash")
            v = h1(v + h).digest()
        return v

    def streamed() -> bytes:
        rep = ima.IMAReplayer()
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(CHUNK):
                rep.feed(chunk)
        return rep.finish()[HashAlg.SHA1]

    cases: list[tuple[str, Callable[[], Any], bool]] = [
        ("hashlib limit (2 hashes, pre-sliced)", limit, True),
        ("tsmr parse_binary (IMAEntry objects)", lambda: len(ima.parse_binary(data)), False),
        ("tsmr replay, verified (sha1 bank)", lambda: ima.replay(data)[HashAlg.SHA1], True),
        ("IMAReplayer, 1 MiB chunks from file", streamed, True),
        ("tsmr replay, verified, sha256 bank", lambda: ima.replay(data, banks=(HashAlg.SHA256,)), False),
        ("tsmr replay, verified, default banks", lambda: ima.replay(data, banks=ima.DEFAULT_BANKS)[HashAlg.SHA1], True),
        ("tsmr replay, unverified (sha1 bank)", lambda: ima.replay(data, verify=False)[HashAlg.SHA1], True),
    ]
    rows: list[dict[str, Any]] = []
    want = None
    for name, fn, same_value in cases:
        seconds, result = best(fn, repeat)
        if same_value:
            if want is None:
                want = result
            elif result != want:
                raise SystemExit(f"{name}: PCR value {result.hex()} != limit's {want.hex()}")
        rows.append({"case": name, "entries": n, "seconds": round(seconds, 4), "entries_per_s": round(n / seconds)})
    base = rows[0]["entries_per_s"]
    for r in rows:
        r["vs_limit"] = round(r["entries_per_s"] / base, 3)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default=None, help="where to write the temporary list")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="tsmr-ima-bench-") as tmp:
        path = Path(tmp) / "binary_runtime_measurements"
        t0 = time.perf_counter()
        size = generate(path, args.entries)
        gen = time.perf_counter() - t0
        rows = run(path, args.repeat)
    meta = {"entries": args.entries + 1, "bytes": size, "generate_s": round(gen, 2), "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "repeat": args.repeat}
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(f"{meta['entries']:,} ima-ng entries, {size / 2**20:.1f} MiB ({size / meta['entries']:.0f} B/entry), "
          f"Python {meta['python']}, best of {args.repeat}")
    print(f"| {'case':<40} | {'entries/s':>12} | {'vs limit':>8} |")
    print(f"|{'-' * 42}|{'-' * 13}:|{'-' * 9}:|")
    for r in rows:
        print(f"| {r['case']:<40} | {r['entries_per_s']:>12,} | {r['vs_limit']:>8.2f} |")


if __name__ == "__main__":
    main()
