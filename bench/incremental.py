"""Incremental replay of a runtime log: the cost follows the new records, not the log's length.

    python bench/incremental.py [--records 1000000] [--tail 100] [--repeat 50] [--json] [--dir DIR]

A log of ``--records`` records (a ``SYNC sha384/<zeros>`` line, then event lines
of 60-100 bytes) is generated once into a temporary file; while its lines are
written they are folded with hashlib (``v = sha384(v || sha384(line))``), which
gives the register value a quote would sign, and the value after record
``records - tail``, independently of tsmr.  Then, side by side:

* ``full replay, with checkpoint``: what a verifier does without a stored
  state: :func:`continue_replay` from :meth:`Checkpoint.start` over the whole
  file read in 1 MiB chunks, ``events=False`` (no Event objects, so memory is
  one chunk whatever the log's size), giving the checkpoint to store;
* ``full replay, Replayer only``: :func:`tsmr.runtime_log.replay.replay` of the
  same chunks (no running digest, no checkpoint), for reference;
* ``incremental``: with the checkpoint after record ``records - tail`` stored as
  JSON (made beforehand, untimed), the verifier's work for one attestation:
  read the stored checkpoint (``Checkpoint.from_json``), check the sender's
  claim, :func:`continue_replay` of the last ``tail`` records with their events
  and the signed value, and write the new checkpoint (``to_json``).  Median of
  ``--repeat`` runs.

Every case must reach the value the generator folded; the ratio printed is
full (with checkpoint) / incremental.  Peak RSS of the process is printed too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tsmr import HashAlg  # noqa: E402
from tsmr.runtime_log.checkpoint import Checkpoint, TailClaim, continue_replay  # noqa: E402
from tsmr.runtime_log.replay import replay  # noqa: E402

CHUNK = 1 << 20
H = HashAlg.SHA384
OPS = ("load", "exec", "open", "config", "policy", "attest")


def generate(path: Path, records: int, tail: int, seed: int = 1) -> tuple[bytes, bytes, int]:
    """Write the log; return the final folded value, the value after record ``records - tail``, and the
    byte offset where that record ends."""
    rng = random.Random(seed)
    sha = hashlib.sha384
    sync = b"SYNC sha384/" + b"0" * 96
    value = sha(bytes(48) + sha(sync).digest()).digest()
    cut = records - tail
    at_cut, cut_offset, size = (value, len(sync) + 1, len(sync) + 1) if cut == 1 else (b"", 0, len(sync) + 1)
    with open(path, "wb", buffering=1 << 20) as fh:
        fh.write(sync + b"\n")
        batch: list[bytes] = []
        for n in range(2, records + 1):  # record 1 is the sync line
            pad = "x" * rng.randint(0, 24)
            line = f'example.com/app step {{"n":{n},"op":"{OPS[n % 6]}","path":"/usr/lib/m{n % 997}.so","p":"{pad}"}}'.encode()
            value = sha(value + sha(line).digest()).digest()
            size += len(line) + 1
            if n == cut:
                at_cut, cut_offset = value, size
            batch.append(line)
            if len(batch) == 4096:
                fh.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            fh.write(b"\n".join(batch) + b"\n")
    return value, at_cut, cut_offset


def chunks(path: Path, limit: int | None = None) -> Iterator[bytes]:
    """The file (or its first ``limit`` bytes) in 1 MiB reads."""
    left = limit if limit is not None else os.path.getsize(path)
    with open(path, "rb", buffering=0) as fh:
        while left > 0:
            data = fh.read(min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000, help="records in the log, the sync record included")
    ap.add_argument("--tail", type=int, default=100, help="records after the checkpoint")
    ap.add_argument("--repeat", type=int, default=50, help="incremental runs (the median is printed)")
    ap.add_argument("--dir", help="where to write the log (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.tail < args.records:
        ap.error("--tail must be at least 1 and less than --records")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "rtmr3.log"
        t0 = time.perf_counter()
        final, at_cut, cut_offset = generate(path, args.records, args.tail)
        gen_s = time.perf_counter() - t0
        size = path.stat().st_size
        signed = {H: final}

        # (a) full replay, giving a checkpoint
        t0 = time.perf_counter()
        full = continue_replay(Checkpoint.start("rtmr3", initial={H: bytes(48)}), chunks(path), expected=signed, events=False)
        full_s = time.perf_counter() - t0
        assert full.checkpoint.banks[H] == final and full.report.banks[H].status == "matched"
        assert full.checkpoint.records == args.records and full.checkpoint.offset == size

        # (a') the Replayer alone
        t0 = time.perf_counter()
        rep = replay(chunks(path), initial={H: bytes(48)}, expected=signed)
        plain_s = time.perf_counter() - t0
        assert rep.values()[H] == final and rep.records == args.records

        # the stored checkpoint after record records - tail (untimed setup)
        prefix = continue_replay(Checkpoint.start("rtmr3", initial={H: bytes(48)}), chunks(path, cut_offset), events=False)
        stored = json.dumps(prefix.checkpoint.to_json())
        assert prefix.checkpoint.banks[H] == at_cut and prefix.checkpoint.records == args.records - args.tail
        with open(path, "rb") as fh:
            fh.seek(cut_offset)
            tail = fh.read()
        claim = prefix.checkpoint.claim()  # the sender computes the same from its own log

        # (b) incremental: the verifier's work for one attestation
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            cp = Checkpoint.from_json(json.loads(stored))
            c = continue_replay(cp, tail, claim=claim, expected=signed)
            new = json.dumps(c.checkpoint.to_json())
            times.append(time.perf_counter() - t0)
            assert c.checkpoint.banks[H] == final and len(c.events or ()) == args.tail and new
        inc_s = statistics.median(times)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "records": args.records,
        "tail": args.tail,
        "log_bytes": size,
        "generate_s": round(gen_s, 3),
        "full_replay_with_checkpoint_s": round(full_s, 4),
        "full_replay_replayer_only_s": round(plain_s, 4),
        "incremental_s": round(inc_s, 6),
        "ratio_full_over_incremental": round(full_s / inc_s, 1),
        "peak_rss_mib": round(rss_mib, 1),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"log: {args.records:,} records, {size / 1e6:.1f} MB, generated and folded in {gen_s:.2f} s")
    print(f"{'case':<48} {'seconds':>12} {'records/s':>12}")
    print(f"{'full replay, with checkpoint (continue_replay)':<48} {full_s:>12.3f} {args.records / full_s:>12,.0f}")
    print(f"{'full replay, Replayer only':<48} {plain_s:>12.3f} {args.records / plain_s:>12,.0f}")
    print(f"{f'incremental: last {args.tail} records (median of {args.repeat})':<48} {inc_s:>12.6f} {args.tail / inc_s:>12,.0f}")
    print(f"ratio full / incremental: {full_s / inc_s:,.0f}x;  peak RSS {rss_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
