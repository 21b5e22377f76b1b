"""How long ``tsmr predict tdx`` takes: MRTD of a 2 MiB and a 4 MiB TDVF image, beside baselines.

    python bench/predict.py [--firmware /usr/share/ovmf/OVMF.fd] [--repeat 5] [--json]

Cases (best of ``--repeat`` runs each):

* ``limit``: one SHA-384 over as many bytes as the MRTD updates hash (what no
  implementation can beat);
* ``naive``: the MRTD updates as the ABI describes them, each 128-byte buffer built by
  bytes concatenation and each 256-byte chunk sliced (copied) out of the image;
* ``tsmr.predict.tdvf.mrtd``: prebuilt headers patched in place, memoryview chunks;
* ``predict_tdx`` with a kernel (Authenticode of the kernel, the RTMR events) and the
  ``tsmr predict tdx`` command line as a process (interpreter start included).

The 4 MiB image is synthetic: random bytes with a TDVF descriptor and an OVMF GUIDed
table (a 3.875 MiB BFV measured byte by byte, a 128 KiB CFV, a TD HOB and temporary
memory), since Debian ships its TDX-capable OVMF only in 2 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tsmr.predict.ovmf import FOOTER_GUID  # noqa: E402
from tsmr.predict import tdvf  # noqa: E402
from tsmr.predict.tdx import predict_tdx  # noqa: E402

KERNELS = ("/var/cache/tsmr-kernel/sid/boot/vmlinuz-7.2.13+deb14-amd64", "/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


def synthetic_tdvf(size: int = 4 << 20) -> bytes:
    """A TDVF image of ``size`` bytes: CFV (128 KiB) then BFV (the rest, MR.EXTEND), metadata and GUIDed table."""
    cfv = 0x20000
    image = bytearray(os.urandom(size))
    base = (1 << 32) - size
    sections = [(cfv, size - cfv, base + cfv, size - cfv, tdvf.BFV, tdvf.ATTR_MR_EXTEND),
                (0, cfv, base, cfv, tdvf.CFV, 0),
                (0, 0, 0x809000, 0x2000, tdvf.TD_HOB, 0),
                (0, 0, 0x800000, 0x6000, tdvf.TEMP_MEM, 0)]
    meta = struct.pack("<4sIII", b"TDVF", 16 + 32 * len(sections), 1, len(sections))
    meta += b"".join(struct.pack("<IIQQII", *s) for s in sections)
    meta_at = size - 0x1000  # inside the BFV, as real TDVFs put it
    image[meta_at:meta_at + len(meta)] = meta
    entry = struct.pack("<I", size - meta_at) + struct.pack("<H", 22) + tdvf.TDX_METADATA_OFFSET_GUID.bytes_le
    footer = struct.pack("<H", len(entry) + 18) + FOOTER_GUID.bytes_le
    table = entry + footer
    image[size - 0x20 - len(table):size - 0x20] = table
    return bytes(image)


def naive_mrtd(image: bytes, meta: tdvf.TdvfMetadata) -> bytes:
    h = hashlib.sha384()
    for s in meta.sections:
        for page in range(s.pages):
            gpa = s.memory_address + page * 4096
            h.update(b"MEM.PAGE.ADD" + b"\0" * 4 + gpa.to_bytes(8, "little") + b"\0" * 104)
            if s.mr_extend:
                for c in range(0, 4096, 256):
                    h.update(b"MR.EXTEND" + b"\0" * 7 + (gpa + c).to_bytes(8, "little") + b"\0" * 104)
                    off = s.data_offset + page * 4096 + c
                    h.update(image[off:off + 256])
    return h.digest()


def measured_bytes(meta: tdvf.TdvfMetadata) -> int:
    return sum(s.pages * 128 + (s.pages * 16 * 384 if s.mr_extend else 0) for s in meta.sections)


def best(op: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        op()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--firmware", default="/usr/share/ovmf/OVMF.fd")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    images: list[tuple[str, bytes]] = []
    if os.path.exists(args.firmware):
        images.append((f"{os.path.basename(args.firmware)} ({os.path.getsize(args.firmware) >> 20} MiB)",
                       Path(args.firmware).read_bytes()))
    images.append(("synthetic 4 MiB TDVF", synthetic_tdvf()))
    rows: list[dict[str, object]] = []
    for name, image in images:
        meta = tdvf.parse_metadata(image)
        assert naive_mrtd(image, meta) == tdvf.mrtd(image, meta)
        blob = os.urandom(measured_bytes(meta))
        limit = best(lambda: hashlib.sha384(blob).digest(), args.repeat)
        naive = best(lambda: naive_mrtd(image, meta), args.repeat)
        ours = best(lambda: tdvf.mrtd(image), args.repeat)  # metadata parsed each time, as the command does
        for case, t in (("limit: one sha384 over the same bytes", limit), ("naive: bytes concatenation", naive),
                        ("tsmr.predict.tdvf.mrtd (parse + MRTD)", ours)):
            rows.append({"image": name, "case": case, "ms": round(t * 1000, 2), "vs naive": round(naive / t, 2)})
    kernel = next((k for k in KERNELS if os.path.exists(k)), None)
    if kernel and images:
        firmware, kbytes = images[0][1], Path(kernel).read_bytes()
        t = best(lambda: predict_tdx(firmware, kernel=kbytes, cmdline="console=ttyS0", initrd=b"x" * (1 << 20)),
                 args.repeat)
        rows.append({"image": images[0][0], "case": f"predict_tdx with kernel {os.path.basename(kernel)} "
                     f"({len(kbytes) >> 20} MiB) and a 1 MiB initrd", "ms": round(t * 1000, 2), "vs naive": None})
    if os.path.exists(args.firmware):
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        t = best(lambda: subprocess.run([sys.executable, "-m", "tsmr", "predict", "tdx", "--firmware", args.firmware],
                                        check=True, capture_output=True, env=env), max(1, args.repeat // 2))
        rows.append({"image": images[0][0], "case": "tsmr predict tdx --firmware (a whole process)",
                     "ms": round(t * 1000, 1), "vs naive": None})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'image':<26} {'case':<70} {'ms':>9} {'vs naive':>9}")
    for r in rows:
        ratio = "" if r["vs naive"] is None else f"{r['vs naive']:.2f}x"
        print(f"{r['image']!s:<26} {r['case']!s:<70} {r['ms']:>9} {ratio:>9}")


if __name__ == "__main__":
    main()
