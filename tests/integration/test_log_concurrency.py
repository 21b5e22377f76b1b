"""Several processes appending to one register's runtime log at once.

Four writer processes (each its own backend connection and ``RuntimeLog``)
wait at a start line, then append their records as fast as they can: one
record per ``append`` call, or ``append_many`` batches.  Afterwards the log
verifies against the register (every bank matched, no gap), holds every
record exactly once and each writer's records in the order it wrote them,
starts with the one sync record of the new log and has no other, and the
writers really interleaved.  On the emulator the test also checks that the
register was extended with exactly the log's hashed lines in the log's order
(the emulator's journal is the register's audit trail).

Variants: ``emulated:tdx`` rtmr3 through the library; the same state with
two of the four writers going through the sysfs backend on a FUSE-mounted
emulator (all writers pass the same explicit ``path=``: ``RuntimeLog``
would otherwise derive the directory from ``regs.provider``, which is
``emulated-tdx`` for one backend and the mount directory's name for the
other); and swtpm pcr16 (4 banks).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import emulator_mount  # noqa: E402
from swtpm import Swtpm  # noqa: E402

from tsmr import HashAlg  # noqa: E402
from tsmr.backends.emulated import EmulatedRegisterSet  # noqa: E402
from tsmr.runtime_log.store import RuntimeLog  # noqa: E402

WORKER = r'''
import json, random, sys, time
cfg = json.loads(sys.argv[1])
from tsmr.runtime_log.store import RuntimeLog
kind = cfg["backend"]
if kind == "emulated":
    from tsmr.backends.emulated import EmulatedRegisterSet
    regs = EmulatedRegisterSet("tdx", cfg["state_dir"])
elif kind == "sysfs":
    from tsmr.backends.sysfs import SysfsRegisterSet
    regs = SysfsRegisterSet(cfg["mount"])
else:
    from tsmr.backends.tpm import TpmRegisterSet
    regs = TpmRegisterSet(cfg["tcti"])
log = RuntimeLog(regs, cfg["register"], path=cfg["path"])
tag, count, batch = cfg["tag"], cfg["count"], cfg["batch"]
rng = random.Random(tag)
recs = ['example.com/concurrency append {"n":%d,"w":"%s","pad":"%s"}' % (i, tag, "y" * (i % 37)) for i in range(count)]
print("READY", flush=True)
sys.stdin.readline()  # the start line
t0 = time.perf_counter()
i = 0
while i < count:
    if batch == 1:
        log.append(recs[i])
        i += 1
    else:
        n = rng.randint(1, batch)
        log.append_many(recs[i : i + n])
        i += n
print("DONE %.3f" % (time.perf_counter() - t0), flush=True)
'''

REC = re.compile(rb'^example\.com/concurrency append \{"n":(\d+),"w":"([^"]+)"')


def _run(workers: list[dict[str, object]], timeout: float = 120) -> list[float]:
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(w)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for w in workers
    ]
    try:
        for p in procs:  # everyone opened its backend and log
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "READY", f"worker failed to start: {line!r} {p.stderr.read() if p.stderr else ''}"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        times = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            times.append(float(out.split()[-1]))
        return times
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _check_log(path: Path, regs, register: str, tags: list[str], count: int) -> list[bytes]:  # type: ignore[no-untyped-def]
    with RuntimeLog(regs, register, path=path) as log:
        report = log.verify()
        assert report.ok, report.explain(register)
        assert set(report.banks) == set(log.algs)
        assert log._read_intent() is None  # no batch left pending
        data = log.read()
    lines = data.split(b"\n")[:-1]
    assert lines[0].startswith(b"SYNC "), "a new log starts with its sync record"
    syncs = [i for i, raw in enumerate(lines) if raw.startswith(b"SYNC ")]
    assert syncs == [0], f"sync records at lines {syncs}: the register moved outside the log?"
    seen: dict[str, list[int]] = {t: [] for t in tags}
    order: list[str] = []
    for raw in lines[1:]:
        m = REC.match(raw)
        assert m is not None, f"a line no writer wrote: {raw!r}"
        seen[m.group(2).decode()].append(int(m.group(1)))
        order.append(m.group(2).decode())
    for t in tags:  # every record exactly once, in the writer's own order
        assert seen[t] == list(range(count)), f"writer {t}: {len(seen[t])} records, dupes {[n for n, c in Counter(seen[t]).items() if c > 1][:5]}"
    switches = sum(1 for a, b in zip(order, order[1:]) if a != b)
    assert switches >= len(tags) - 1
    assert switches > len(tags), f"the writers hardly interleaved ({switches} switches): this test proves little"
    print(f"\n  {len(lines)} lines, {switches} writer switches in the log")
    return lines


def _check_journal(state: Path, lines: list[bytes]) -> None:
    """The register was extended with exactly the log's lines, in the log's order."""
    with EmulatedRegisterSet("tdx", state) as rs:
        extends = [e.data for e in rs.journal() if e.attribute == "rtmr3:sha384"]
    assert extends == [hashlib.sha384(raw).digest() for raw in lines]


def _emulated_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    EmulatedRegisterSet("tdx", state).close()
    return state


COUNT = 500


@pytest.mark.parametrize("batch", [1, 16], ids=["append", "append_many"])
def test_four_library_writers(tmp_path: Path, batch: int) -> None:
    state = _emulated_state(tmp_path)
    path = tmp_path / "logs" / "rtmr3.log"
    tags = [f"w{i}" for i in range(4)]
    workers = [dict(backend="emulated", state_dir=str(state), register="rtmr3", path=str(path), tag=t, count=COUNT, batch=batch)
               for t in tags]
    t0 = time.monotonic()
    times = _run(workers)
    print(f"\n  4 x {COUNT} records (batch<= {batch}) on emulated:tdx in {time.monotonic() - t0:.2f} s (writers {times})")
    with EmulatedRegisterSet("tdx", state) as rs:
        lines = _check_log(path, rs, "rtmr3", tags, COUNT)
    _check_journal(state, lines)


@pytest.mark.fuse
@pytest.mark.parametrize("batch", [1, 16], ids=["append", "append_many"])
def test_library_and_fuse_writers(tmp_path: Path, batch: int) -> None:
    state = _emulated_state(tmp_path)
    path = tmp_path / "logs" / "rtmr3.log"
    tags = [f"w{i}" for i in range(4)]
    with emulator_mount("tdx", state) as mnt:
        workers = []
        for i, t in enumerate(tags):
            w: dict[str, object] = dict(register="rtmr3", path=str(path), tag=t, count=COUNT, batch=batch)
            w.update(backend="sysfs", mount=str(mnt)) if i % 2 else w.update(backend="emulated", state_dir=str(state))
            workers.append(w)
        t0 = time.monotonic()
        times = _run(workers)
        print(f"\n  4 x {COUNT} records (batch<= {batch}), 2 writers through FUSE, in {time.monotonic() - t0:.2f} s (writers {times})")
        with EmulatedRegisterSet("tdx", state) as rs:
            lines = _check_log(path, rs, "rtmr3", tags, COUNT)
        # and the mounted view agrees with the library's
        from tsmr.backends.sysfs import SysfsRegisterSet

        with SysfsRegisterSet(mnt) as fs, EmulatedRegisterSet("tdx", state) as rs:
            assert fs.read("rtmr3") == rs.read("rtmr3")
    _check_journal(state, lines)


@pytest.mark.swtpm
def test_four_writers_on_swtpm(tmp_path: Path) -> None:
    pytest.importorskip("tpm2_pytss")
    if not Swtpm.available():
        pytest.skip("swtpm not installed (make test installs it)")
    from tsmr.backends.tpm import TpmRegisterSet

    count = 150
    path = tmp_path / "logs" / "pcr16.log"
    tags = [f"w{i}" for i in range(4)]
    with Swtpm() as tpm:
        workers = [dict(backend="tpm", tcti=tpm.tcti, register="pcr16", path=str(path), tag=t, count=count, batch=1 if i < 2 else 8)
                   for i, t in enumerate(tags)]
        t0 = time.monotonic()
        times = _run(workers)
        print(f"\n  4 x {count} records on swtpm pcr16 in {time.monotonic() - t0:.2f} s (writers {times})")
        with TpmRegisterSet(tpm.tcti) as ts:
            lines = _check_log(path, ts, "pcr16", tags, count)
            assert set(ts.register("pcr16").algs) == {HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512}
            # the register is exactly the log replayed from zero: nothing else touched pcr16
            values = {a: a.zero() for a in (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)}
            for raw in lines:
                values = {a: a.extend(v, a.hash(raw)) for a, v in values.items()}
            assert ts.read("pcr16") == values
