"""Crash injection: a log writer SIGKILLed at every step of the write protocol.

spec/runtime-log.md section 4 and the docstring of ``tsmr.runtime_log.store``
promise that, whatever step a writer dies at, recovery leaves a log that
verifies against the register, holds every acknowledged record exactly once,
and holds no record whose extend did not happen.  These tests check that on
the emulator (``emulated:tdx`` rtmr3, ``emulated:tpm`` pcr16 with 3 banks)
and on swtpm (pcr16, 4 banks).

How
---
A worker process (``WORKER`` below, written to a file) opens the backend and a
``RuntimeLog`` with an explicit ``path=``, wraps the log's internal steps, and
SIGKILLs itself at the chosen one:

==============  ==========================================================
before-intent   ``_write_intent`` is called (after the batch's recovery)
after-intent    ``_write_intent`` returned: the intent is durable
mid-extends     after the k-th register extend of a group commit, 0<k<n
after-extend    after the last extend, before the log is appended
mid-append      ``os.write`` inside ``_append_durable`` wrote half the data
before-clear    the log is appended and synced, ``_store_tail`` (which writes
                the idle record over the intent) not called
mid-idle        ``os.pwrite`` inside ``_store_tail`` wrote half the idle record
                over the intent (the batch is complete in the log)
mid-intent      ``os.pwrite`` inside ``_write_intent`` wrote half the intent
                (a torn intent: recovery must see it as invalid and drop it)
mid-recovery    the *next* writer dies half-way through the append that
                recovery makes to redo a batch left by a mid-extends kill
==============  ==========================================================

Random kills: workers append batches in a loop and the test kills them
0-30 ms after they are ready; where each kill landed is classified from the
files and the register (intent present? log partial? how many extends?).

The worker prints ``BATCH <ids>`` before ``append_many`` and ``ACK <ids>``
after it returned (flushed), so the test knows exactly which records were
acknowledged.  After every kill the test

* copies the log and intent to a scratch path and runs ``verify()`` there
  (recovery only *reads* the register, so this leaves the real state alone):
  every bank matched, no gap; the log's record ids are exactly the batches in
  order, acknowledged batches whole, the killed batch a prefix of itself (of
  the length the kill step implies), nothing twice;
* then either recovers explicitly (``RuntimeLog.recover()``, checking the
  action it reports against the step) or leaves recovery to the next
  writer's first append.

Also: kills among three concurrent writers (recovery done by live writers
holding tail caches); a crash followed by an unlogged extend (recovery must
report a gap, never hide it); and a check that a writer killed while updating
the tail record leaves no stray files.

The kill counts (step -> count, per backend) are printed (``-s``), asserted,
and written to ``<pytest basetemp>/log_crash_kills.json``.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from swtpm import Swtpm  # noqa: E402

from tsmr.backends.emulated import EmulatedRegisterSet  # noqa: E402
from tsmr.runtime_log.store import RuntimeLog  # noqa: E402

TARGETED_STEPS = (
    "before-intent", "after-intent", "mid-extends", "mid-recovery",
    "after-extend", "mid-append", "before-clear", "mid-idle", "mid-intent",
)
ROUNDS = 5  # targeted kills per step and backend
RANDOM_KILLS = {"emulated-tdx": 60, "emulated-tpm": 30, "swtpm": 30}
BATCH = 4  # records in a targeted batch (group commit)

WORKER = r'''
import json, os, random, signal, sys
cfg = json.loads(sys.argv[1])
from tsmr.runtime_log.store import RuntimeLog

def out(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()

def die(step, info=""):
    out("KILL", step, info)
    os.kill(os.getpid(), signal.SIGKILL)

if cfg["backend"] == "tpm":
    from tsmr.backends.tpm import TpmRegisterSet
    regs = TpmRegisterSet(cfg["tcti"])
else:
    from tsmr.backends.emulated import EmulatedRegisterSet
    regs = EmulatedRegisterSet(cfg["profile"], cfg["state_dir"])
log = RuntimeLog(regs, cfg["register"], path=cfg["path"])
step, k = cfg.get("step"), cfg.get("k", 1)
st = {"armed": False, "in_batch": False, "nlines": 0, "extends": 0}

real_write_intent = RuntimeLog._write_intent
def write_intent(self, offset, old, lines):
    if st["armed"] and step == "before-intent":
        die(step)
    if st["armed"] and step == "mid-intent":
        real_pwrite = os.pwrite
        def half_pwrite(fd, buf, off):
            n = real_pwrite(fd, bytes(buf[: max(1, len(buf) // 2)]), off)
            die(step, n)
        os.pwrite = half_pwrite
    real_write_intent(self, offset, old, lines)
    st.update(in_batch=True, nlines=len(lines), extends=0)
    out("INTENT", len(lines), int(lines[0].startswith(b"SYNC ")))
    if st["armed"] and step == "after-intent":
        die(step)
RuntimeLog._write_intent = write_intent

real_extend = regs.extend
def extend(name, digests):
    real_extend(name, digests)
    if st["in_batch"]:
        st["extends"] += 1
        if st["armed"] and step == "mid-extends" and st["extends"] == min(k, st["nlines"] - 1):
            die(step, st["extends"])
        if st["armed"] and step == "after-extend" and st["extends"] == st["nlines"]:
            die(step, st["extends"])
regs.extend = extend  # the instance attribute shadows the method RuntimeLog calls

real_append = RuntimeLog._append_durable
def append_durable(self, data):
    if st["armed"] and ((step == "mid-append" and st["in_batch"]) or (step == "mid-recovery" and not st["in_batch"])):
        real_write = os.write
        def half_write(fd, buf):
            n = real_write(fd, bytes(buf[: max(1, len(buf) // 2)]))
            die(step, n)
        os.write = half_write  # only the log's write happens inside _append_durable
    real_append(self, data)
RuntimeLog._append_durable = append_durable

real_store_tail = RuntimeLog._store_tail
def store_tail(self, tail):
    if st["armed"] and step == "before-clear" and st["in_batch"]:
        die(step)
    if st["armed"] and step == "mid-idle" and st["in_batch"]:
        real_pwrite = os.pwrite
        def half_pwrite(fd, buf, off):
            n = real_pwrite(fd, bytes(buf[: max(1, len(buf) // 2)]), off)
            die(step, n)
        os.pwrite = half_pwrite
    real_store_tail(self, tail)
RuntimeLog._store_tail = store_tail

serial = 0
def batch(n):
    global serial
    ids = [f"{cfg['tag']}-{serial + i}" for i in range(n)]
    serial += n
    out("BATCH", *ids)
    log.append_many(['example.com/crashtest append {"rid":"%s","pad":"%s"}' % (i, "x" * (int(i.rsplit("-", 1)[1]) * 7 % 40)) for i in ids])
    st["in_batch"] = False
    out("ACK", *ids)

rng = random.Random(cfg.get("seed", 0))
if cfg["mode"] == "targeted":
    st["armed"] = step == "mid-recovery"  # recovery runs inside the first append
    for _ in range(cfg.get("pre", 0)):
        batch(rng.randint(1, 3))
    st["armed"] = True
    batch(cfg["batch"])
    out("SURVIVED")
else:
    out("READY")
    for _ in range(100000):
        if rng.random() < 0.15:  # now and then a digest-only extend (a '# .EXTEND' directive)
            algs = [a for a in log.algs if rng.random() < 0.6] or [log.algs[0]]
            log.extend_digest({a: os.urandom(a.digest_size) for a in algs})
            continue
        batch(rng.randint(1, 8))
'''

RID = re.compile(rb'"rid":"([^"]+)"')


@dataclass
class Batch:
    ids: list[str]
    acked: bool = False
    expect: int | None = None  # records of it the log must hold after recovery (None: any prefix)


@dataclass
class Backend:
    name: str
    register: str
    cfg: dict[str, object]
    regs: object
    history: list[Batch] = field(default_factory=list)
    kills: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)


KILL_SUMMARY: dict[str, dict[str, int]] = {}
RECOVERY_SUMMARY: dict[str, dict[str, int]] = {}


# -- fixtures ---------------------------------------------------------------
@pytest.fixture(scope="module")
def worker_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("crash-worker") / "worker.py"
    p.write_text(WORKER)
    return p


@pytest.fixture(scope="module")
def summary_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.getbasetemp() / "log_crash_kills.json"
    yield path
    print(f"\n[test_log_crash] kills per backend and step: {json.dumps(KILL_SUMMARY, indent=1, sort_keys=True)}")
    print(f"[test_log_crash] recovery actions seen: {json.dumps(RECOVERY_SUMMARY, sort_keys=True)}")
    print(f"[test_log_crash] summary written to {path}")


@pytest.fixture(scope="module")
def swtpm_tcti() -> Iterator[str]:
    pytest.importorskip("tpm2_pytss")
    if not Swtpm.available():
        pytest.skip("swtpm not installed (make test installs it)")
    with Swtpm() as tpm:
        yield tpm.tcti


def _make_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    path = str(tmp_path / "logs" / "reg.log")
    if kind == "swtpm":
        tcti = request.getfixturevalue("swtpm_tcti")
        from tsmr.backends.tpm import TpmRegisterSet

        regs = TpmRegisterSet(tcti)
        cfg = {"backend": "tpm", "tcti": tcti, "register": "pcr16", "path": path}
        be = Backend(kind, "pcr16", cfg, regs)
    else:
        profile = kind.split("-", 1)[1]
        state = tmp_path / "state"
        regs = EmulatedRegisterSet(profile, state)
        register = "rtmr3" if profile == "tdx" else "pcr16"
        cfg = {"backend": "emulated", "profile": profile, "state_dir": str(state), "register": register, "path": path}
        be = Backend(kind, register, cfg, regs)
    try:
        yield be
    finally:
        regs.close()  # type: ignore[attr-defined]


BACKENDS = ["emulated-tdx", "emulated-tpm", "swtpm"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend(request.param, tmp_path, request)


# -- running workers ----------------------------------------------------------
@dataclass
class WorkerOutput:
    batches: list[list[str]]
    acked: list[list[str]]
    killed: tuple[str, str] | None
    intent: tuple[int, int] | None  # (lines, starts with SYNC) of the last intent written
    returncode: int
    stderr: str


def _parse(text: str, returncode: int, stderr: str) -> WorkerOutput:
    batches: list[list[str]] = []
    acked: list[list[str]] = []
    killed = None
    intent = None
    lines = text.split("\n")
    for line in lines[:-1]:  # a last line without LF was cut by the kill
        words = line.split()
        if not words:
            continue
        if words[0] == "BATCH":
            batches.append(words[1:])
        elif words[0] == "ACK":
            acked.append(words[1:])
        elif words[0] == "KILL":
            killed = (words[1], words[2] if len(words) > 2 else "")
        elif words[0] == "INTENT":
            intent = (int(words[1]), int(words[2]))
    return WorkerOutput(batches, acked, killed, intent, returncode, stderr)


def _run_targeted(script: Path, be: Backend, step: str, tag: str, rng: random.Random) -> WorkerOutput:
    cfg = dict(be.cfg, mode="targeted", step=step, tag=tag, batch=BATCH, k=rng.randint(1, BATCH - 1),
               pre=0 if step == "mid-recovery" else rng.randint(0, 2), seed=rng.randrange(1 << 30))
    p = subprocess.run([sys.executable, str(script), json.dumps(cfg)], capture_output=True, text=True, timeout=60)
    return _parse(p.stdout, p.returncode, p.stderr)


def _run_random(script: Path, be: Backend, tag: str, rng: random.Random) -> WorkerOutput:
    cfg = dict(be.cfg, mode="loop", tag=tag, seed=rng.randrange(1 << 30))
    p = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    buf = b""
    deadline = time.monotonic() + 30
    while b"READY\n" not in buf:
        r, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(p.stdout.fileno(), 65536) if r else b""
        if not chunk:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"worker never became ready (rc {p.returncode}): {(buf + out).decode()} {err.decode()}")
        buf += chunk
    time.sleep(rng.uniform(0, 0.030))
    os.kill(p.pid, signal.SIGKILL)
    out, err = p.communicate(timeout=30)
    return _parse((buf + out).decode(), p.returncode, err.decode())


def _record(be: Backend, out: WorkerOutput) -> Batch | None:
    """Fold a worker's output into the history; return its killed batch, if any."""
    acked = {tuple(a) for a in out.acked}
    last = None
    for ids in out.batches:
        b = Batch(ids, acked=tuple(ids) in acked)
        if b.acked:
            b.expect = len(ids)
        be.history.append(b)
        last = b
    return last if last is not None and not last.acked else None


# -- checking -------------------------------------------------------------------
def _log_ids(data: bytes) -> list[str]:
    ids = []
    for raw in data.split(b"\n")[:-1]:
        if raw.startswith(b"SYNC ") or raw.startswith(b"# .EXTEND "):
            continue
        m = RID.search(raw)
        assert m is not None, f"a line in the log that no worker wrote: {raw!r}"
        ids.append(m.group(1).decode())
    return ids


def _check_ids(be: Backend, ids: list[str]) -> None:
    assert len(ids) == len(set(ids)), f"records twice in the log: {[i for i, c in Counter(ids).items() if c > 1]}"
    pos = 0
    for b in be.history:
        n = 0
        while n < len(b.ids) and pos + n < len(ids) and ids[pos + n] == b.ids[n]:
            n += 1
        if b.acked:
            assert n == len(b.ids), f"acknowledged batch {b.ids} not whole in the log (found {n} of it at record {pos})"
        elif b.expect is not None:
            assert n == b.expect, f"killed batch {b.ids}: the log holds its first {n} records, expected {b.expect}"
        pos += n
    assert pos == len(ids), f"records in the log that are in no batch, or out of order: {ids[pos:pos + 5]}"


def _scratch_copy(be: Backend, scratch: Path) -> RuntimeLog:
    real = Path(str(be.cfg["path"]))
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    dst = scratch / real.name
    for suffix in ("", ".intent"):
        src = Path(str(real) + suffix)
        if src.exists():
            shutil.copyfile(src, str(dst) + suffix)
    return RuntimeLog(be.regs, be.register, path=dst)  # type: ignore[arg-type]


def _classify(log: RuntimeLog) -> str:
    """Where a kill landed, judged from the files and the register alone (before recovery)."""
    fd = log._open()
    intent = log._read_intent()
    if intent is None:
        return "between-batches"
    if isinstance(intent, str):
        return "torn-intent"
    size = os.fstat(fd).st_size
    if size >= intent.offset + len(intent.blob) and os.pread(fd, len(intent.blob), intent.offset) == intent.blob:
        return "before-clear"
    if size > intent.offset:
        return "mid-append"
    cur = log._read_register()
    state = intent.old
    states = [state]
    for raw in intent.lines:
        state = log._fold(state, raw)
        states.append(state)
    k = next((i for i in range(len(states) - 1, -1, -1) if states[i] == cur), None)
    if k is None:
        return "unexplained-register"
    return "after-intent" if k == 0 else "after-extend" if k == len(intent.lines) else "mid-extends"


def _check_after_kill(be: Backend, scratch: Path, classify: bool) -> str | None:
    """Verify a recovered copy of the log; return where the kill landed if asked."""
    with _scratch_copy(be, scratch) as copy:
        where = _classify(copy) if classify else None
        report = copy.verify()
        if report.lines == 0:  # nothing was ever committed (killed in the first batch): nothing to anchor
            assert not any(b.acked for b in be.history) and os.stat(copy.path).st_size == 0
        elif _directives_only(copy.read()):  # digest-only extends so far: no sync record before them
            _check_unanchored(be, report)
        else:
            assert report.ok, f"after a kill ({where}): {report.explain(be.register)}"
            assert set(report.banks) == set(copy.algs)
        assert copy._read_intent() is None, "verify() left an intent behind"
        _check_ids(be, _log_ids(copy.read()))
    return where


def _directives_only(data: bytes) -> bool:
    return all(raw.startswith(b"# .EXTEND ") for raw in data.split(b"\n")[:-1])


def _check_unanchored(be: Backend, report: object) -> None:
    """A log of ``# .EXTEND`` directives alone: the writer put no sync record before them (they change the
    register as the kernel's digest write does), so its state is unknown until the next event's sync record."""
    assert not any(b.acked for b in be.history)
    assert all(b.status == "unanchored" for b in report.banks.values()) and not report.gaps  # type: ignore[attr-defined]


def _check_real(be: Backend) -> None:
    with RuntimeLog(be.regs, be.register, path=be.cfg["path"]) as log:  # type: ignore[arg-type]
        report = log.verify()
        if report.lines == 0:
            assert not any(b.acked for b in be.history)
            return
        if _directives_only(log.read()):
            _check_unanchored(be, report)
            return
        assert report.ok, report.explain(be.register)
        assert all(b.status == "matched" for b in report.banks.values())
        _check_ids(be, _log_ids(log.read()))
        # the tail cache, when it claims to describe the log as it is, must be right
        tail = log._idle_tail()
        if tail is not None and tail[0] == os.stat(log.path).st_size:
            assert tail[1] == report.lines and tail[2] == report.values(), "the tail cache is stale but claims to be current"


EXPECTED_ACTION = {
    "before-intent": (None, None),
    "after-intent": ("discarded", 0),
    "after-extend": ("redone", "all"),
    "mid-append": ("redone", "all"),
    "before-clear": ("completed", 0),
    "mid-idle": ("invalid-intent", 0),
    "mid-intent": ("invalid-intent", 0),
}


def _save_summary(path: Path) -> None:
    path.write_text(json.dumps({"kills": KILL_SUMMARY, "recovery_actions": RECOVERY_SUMMARY}, indent=2, sort_keys=True) + "\n")


# -- the tests --------------------------------------------------------------------
def test_targeted_kills(backend: Backend, worker_script: Path, summary_file: Path, tmp_path: Path) -> None:
    """Kill a writer at each protocol step, ROUNDS times; recover; verify after every kill."""
    rng = random.Random(f"targeted-{backend.name}")
    scratch = tmp_path / "scratch"
    n = 0
    pending_k: int | None = None  # extends of the batch a mid-extends kill left for recovery
    for rnd in range(ROUNDS):
        for step in TARGETED_STEPS:
            n += 1
            out = _run_targeted(worker_script, backend, step, f"t{n}", rng)
            assert out.returncode == -signal.SIGKILL and out.killed is not None and out.killed[0] == step, (
                f"worker for {step} was not killed there: rc {out.returncode}, killed {out.killed}, stderr {out.stderr[-2000:]}"
            )
            backend.kills[step] += 1
            killed = _record(backend, out)
            sync = out.intent[1] if out.intent else 0
            expect_lines: int | None = None  # lines of the killed intent that recovery must append
            if step == "mid-recovery":
                # its own batch was announced, but it died in the recovery that precedes it
                assert killed is not None and out.intent is None
                killed.expect = 0
                expect_lines = pending_k
            else:
                assert killed is not None and len(killed.ids) == BATCH
                if step in ("before-intent", "after-intent", "mid-intent"):
                    killed.expect = 0
                elif step == "mid-extends":
                    k = int(out.killed[1])
                    killed.expect = k - sync
                    expect_lines = pending_k = k
                else:
                    killed.expect = BATCH
                    expect_lines = BATCH + sync
            _check_after_kill(backend, scratch, classify=False)
            # Explicit recovery on every other kill (never after mid-extends: the
            # next worker, mid-recovery, must find that intent and die redoing it).
            if step != "mid-extends" and (rnd + TARGETED_STEPS.index(step)) % 2 == 0:
                with RuntimeLog(backend.regs, backend.register, path=backend.cfg["path"]) as log:  # type: ignore[arg-type]
                    res = log.recover()
                action = res.action if res else None
                backend.actions[action or "none"] += 1
                if step == "mid-recovery":
                    assert res is not None and res.action == "redone" and res.lines_appended == expect_lines, res
                else:
                    want, lines = EXPECTED_ACTION[step]
                    assert action == want, f"{step}: recovery did {res}, expected {want}"
                    if lines == "all":
                        assert res is not None and res.lines_appended == expect_lines == res.lines_in_intent, res
                _check_real(backend)
    _check_real(backend)
    KILL_SUMMARY[backend.name] = dict(sorted(backend.kills.items()))
    RECOVERY_SUMMARY[f"{backend.name} targeted"] = dict(backend.actions)
    _save_summary(summary_file)
    print(f"\n[{backend.name}] targeted kills: {dict(backend.kills)}; records in log: {sum(b.expect or 0 for b in backend.history)}")
    assert all(backend.kills[s] == ROUNDS for s in TARGETED_STEPS)


def test_random_kills(backend: Backend, worker_script: Path, summary_file: Path, tmp_path: Path) -> None:
    """Workers append batches in a loop and are killed at random moments."""
    rng = random.Random(f"random-{backend.name}")
    scratch = tmp_path / "scratch"
    kills = RANDOM_KILLS[backend.name]
    where_counts: Counter[str] = Counter()
    acked_total = 0
    for n in range(kills):
        out = _run_random(worker_script, backend, f"r{n}", rng)
        assert out.returncode == -signal.SIGKILL, f"rc {out.returncode}: {out.stderr[-2000:]}"
        _record(backend, out)
        acked_total += sum(len(a) for a in out.acked)
        where = _check_after_kill(backend, scratch, classify=True)
        assert where is not None and where not in ("unexplained-register",)
        where_counts[where] += 1
        if n % 2 == 0:
            with RuntimeLog(backend.regs, backend.register, path=backend.cfg["path"]) as log:  # type: ignore[arg-type]
                res = log.recover()
            backend.actions[res.action if res else "none"] += 1
            _check_real(backend)
    _check_real(backend)
    summary = KILL_SUMMARY.setdefault(backend.name, {})
    summary["random"] = kills
    for w, c in where_counts.items():
        summary[f"random:{w}"] = c
    RECOVERY_SUMMARY[f"{backend.name} random"] = dict(backend.actions)
    _save_summary(summary_file)
    print(f"\n[{backend.name}] random kills: {kills}, landed at {dict(where_counts)}; records acked {acked_total}")
    assert sum(where_counts.values()) == kills > 0
    assert acked_total > 0


def test_unlogged_extend_after_crash_is_a_gap(backend: Backend, worker_script: Path, tmp_path: Path) -> None:
    """Killed mid-group-commit, then someone extends the register without the log: recovery
    cannot tell which of the batch's lines are in the register, so it drops them all and the
    next record starts with a sync record that the verifier reports as a gap (never hidden)."""
    rng = random.Random(f"gap-{backend.name}")
    out = _run_targeted(worker_script, backend, "mid-extends", "g0", rng)
    assert out.returncode == -signal.SIGKILL and out.killed and out.killed[0] == "mid-extends"
    killed = _record(backend, out)
    assert killed is not None
    killed.expect = 0
    algs = RuntimeLog(backend.regs, backend.register, path=backend.cfg["path"]).algs  # type: ignore[arg-type]
    backend.regs.extend(backend.register, {a: a.hash(b"unlogged") for a in algs})  # type: ignore[attr-defined]
    with RuntimeLog(backend.regs, backend.register, path=backend.cfg["path"]) as log:  # type: ignore[arg-type]
        res = log.recover()
        assert res is not None and res.action == "gap" and res.lines_appended == 0, res
        r = log.append("example.com/crashtest append {\"rid\":\"after-gap\"}")
        assert r.synced and r.gap
        report = log.verify()
        assert report.matched and not report.ok
        assert {g.alg for g in report.gaps} == set(algs) and {g.line for g in report.gaps} == {r.first_line}
        backend.history.append(Batch(["after-gap"], acked=True, expect=1))
        _check_ids(backend, _log_ids(log.read()))


def test_killed_tail_update_leaves_no_stray_files(tmp_path: Path, worker_script: Path, request: pytest.FixtureRequest) -> None:
    """A writer killed while it writes the tail (idle) record leaves no files behind that
    no one ever removes: a log is two files, whatever happened."""
    gen = _make_backend("emulated-tdx", tmp_path, request)
    be = next(gen)
    request.addfinalizer(gen.close)
    rng = random.Random("tail")
    for n in range(3):
        out = _run_targeted(worker_script, be, "mid-idle", f"s{n}", rng)
        assert out.returncode == -signal.SIGKILL and out.killed and out.killed[0] == "mid-idle", out
        killed = _record(be, out)
        assert killed is not None
        killed.expect = len(killed.ids)  # the batch was complete before the tail update
    with RuntimeLog(be.regs, be.register, path=be.cfg["path"]) as log:  # type: ignore[arg-type]
        log.append("example.com/crashtest append {\"rid\":\"final\"}")
        be.history.append(Batch(["final"], acked=True, expect=1))
    _check_real(be)  # the log is right ...
    files = sorted(p.name for p in Path(str(be.cfg["path"])).parent.iterdir())
    assert files == ["reg.log", "reg.log.intent"], f"stray files left by killed writers: {files}"


def test_random_kills_among_concurrent_writers(tmp_path: Path, worker_script: Path, summary_file: Path,
                                               request: pytest.FixtureRequest) -> None:
    """Three writers append at once; one at a time is killed at random and replaced, so recovery
    runs in writers that are alive and hold caches of the log's tail."""
    gen = _make_backend("emulated-tdx", tmp_path, request)
    be = next(gen)
    request.addfinalizer(gen.close)
    rng = random.Random("concurrent")
    procs: dict[int, subprocess.Popen[bytes]] = {}
    outputs: list[WorkerOutput] = []

    def spawn(n: int) -> None:
        cfg = dict(be.cfg, mode="loop", tag=f"c{n}", seed=n)
        p = subprocess.Popen([sys.executable, str(worker_script), json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs[p.pid] = p

    kills = 40
    for n in range(3):
        spawn(n)
    time.sleep(0.2)
    for n in range(kills):
        time.sleep(rng.uniform(0.01, 0.05))
        pid = rng.choice(sorted(procs))
        p = procs.pop(pid)
        os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        outputs.append(_parse(out.decode(), p.returncode, err.decode()))
        spawn(3 + n)
    for p in procs.values():
        p.kill()
        out, err = p.communicate(timeout=30)
        outputs.append(_parse(out.decode(), p.returncode, err.decode()))

    with RuntimeLog(be.regs, be.register, path=be.cfg["path"]) as log:  # type: ignore[arg-type]
        report = log.verify()
        assert report.ok, report.explain(be.register)
        ids = _log_ids(log.read())
    assert len(ids) == len(set(ids)), "a record twice in the log"
    pos = {rid: i for i, rid in enumerate(ids)}
    announced = {rid for o in outputs for b in o.batches for rid in b}
    assert set(ids) <= announced
    acked = 0
    for o in outputs:
        ack = {tuple(a) for a in o.acked}
        last = -1
        for b in o.batches:
            present = [rid for rid in b if rid in pos]
            if tuple(b) in ack:
                acked += len(b)
                assert present == b, f"acknowledged batch {b} not whole in the log"
            assert present == b[: len(present)], f"batch {b}: the log holds {present}, not a prefix of it"
            if present:  # a group commit is contiguous in the log, and each writer's batches are in its order
                first = pos[present[0]]
                assert [pos[r] for r in present] == list(range(first, first + len(present)))
                assert first > last
                last = pos[present[-1]]
    assert acked > 0 and sum(o.returncode == -signal.SIGKILL for o in outputs) >= kills
    KILL_SUMMARY.setdefault("emulated-tdx (3 concurrent writers)", {})["random"] = kills
    _save_summary(summary_file)
    print(f"\n[emulated-tdx, 3 concurrent writers] random kills: {kills}; records acked {acked}, in the log {len(ids)}")
