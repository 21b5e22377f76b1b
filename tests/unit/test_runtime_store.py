"""The runtime log writer: appends, sync records, recovery from every crash window (in-process)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tsmr import HashAlg, InputError
from tsmr.backends.emulated import EmulatedRegisterSet
from tsmr.errors import ParseError, ReplayError
from tsmr.runtime_log.records import RecordError
from tsmr.runtime_log.store import RuntimeLog, default_log_dir

H = HashAlg.SHA384


@pytest.fixture
def log(rs: EmulatedRegisterSet, tmp_path: Path) -> RuntimeLog:
    lg = RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs")
    yield lg  # type: ignore[misc]
    lg.close()


def fold(value: bytes, lines: list[str]) -> bytes:
    for line in lines:
        value = hashlib.sha384(value + hashlib.sha384(line.encode()).digest()).digest()
    return value


def test_first_append_writes_sync_then_record(log: RuntimeLog, rs: EmulatedRegisterSet) -> None:
    res = log.append("app start")
    sync = "SYNC sha384/" + "00" * 48
    assert res.lines == (sync, "app start") and res.synced and not res.gap and res.first_line == 1
    assert log.path.read_text() == f"{sync}\napp start\n"
    assert rs.read("rtmr3")[H] == fold(bytes(48), [sync, "app start"]) == res.values[H]
    assert log.path == log.path.parent / "rtmr3.log" and log.path.parent.name == "emulated-tdx"
    res = log.append_many(["a 1", "a 2"])
    assert res.lines == ("a 1", "a 2") and not res.synced and res.first_line == 3
    assert log.verify().ok


def test_out_of_band_extend_is_detected_and_recorded(log: RuntimeLog, rs: EmulatedRegisterSet) -> None:
    log.append("a 1")
    rs.extend("rtmr3", {H: b"\x01" * 48})
    report = log.verify()
    assert not report.ok and report.banks[H].status == "mismatched"
    res = log.append("a 2")
    assert res.gap and res.lines[0].startswith("SYNC sha384/")
    report = log.verify()
    assert report.banks[H].status == "matched" and [g.line for g in report.gaps] == [3]


def test_extend_digest_logs_a_directive_and_extends_only_the_digest(log: RuntimeLog, rs: EmulatedRegisterSet) -> None:
    """A digest-only extend changes the register as the kernel's digest write does, H(value || digest),
    with no sync record before it; the log's state stays unknown until the next event's sync record."""
    d = hashlib.sha384(b"blob").digest()
    res = log.extend_digest({H: d})
    directive = f"# .EXTEND sha384/{d.hex()}"
    assert res.lines == (directive,) and not res.synced and not res.gap and res.first_line == 1
    assert rs.read("rtmr3")[H] == hashlib.sha384(bytes(48) + d).digest() == res.values[H]
    assert log.path.read_text() == directive + "\n"
    report = log.verify()
    assert report.banks[H].status == "unanchored" and not report.gaps  # a directive anchors nothing
    d2 = hashlib.sha384(b"blob 2").digest()
    assert log.extend_digest({H: d2}).lines == (f"# .EXTEND sha384/{d2.hex()}",)
    before = rs.read("rtmr3")[H]
    assert before == hashlib.sha384(hashlib.sha384(bytes(48) + d).digest() + d2).digest()
    res = log.append("app start")
    sync = f"SYNC sha384/{before.hex()}"
    assert res.lines == (sync, "app start") and res.synced and not res.gap and res.first_line == 3
    report = log.verify()
    assert report.ok and report.banks[H].anchor_line == 3
    # the next directive, on a known state, needs no sync record either
    assert log.extend_digest({H: d}).lines == (f"# .EXTEND sha384/{d.hex()}",)
    assert log.verify().ok


def test_directive_after_an_unlogged_extend_leaves_the_gap_to_the_next_event(
        log: RuntimeLog, rs: EmulatedRegisterSet) -> None:
    log.append("a 1")
    rs.extend("rtmr3", {H: b"\x01" * 48})  # not logged
    d = b"\x02" * 48
    before = rs.read("rtmr3")[H]
    res = log.extend_digest({H: d})
    assert res.lines == (f"# .EXTEND sha384/{d.hex()}",) and not res.synced
    assert rs.read("rtmr3")[H] == hashlib.sha384(before + d).digest()
    assert log.verify().banks[H].status == "mismatched"
    res = log.append("a 2")
    assert res.synced and res.gap and res.first_line == 4
    report = log.verify()
    assert report.banks[H].status == "matched" and [g.line for g in report.gaps] == [4]


def test_a_directive_only_log_is_a_new_log_for_the_idle_record(log: RuntimeLog, rs: EmulatedRegisterSet,
                                                               tmp_path: Path) -> None:
    """The tail a directive leaves unknown is not cached as the register's value (another writer, with
    its own object, must still write the sync record before its first event)."""
    log.extend_digest({H: b"\x03" * 48})
    log.close()
    with RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs") as other:
        value = rs.read("rtmr3")[H]
        res = other.append("x y")
        assert res.lines == (f"SYNC sha384/{value.hex()}", "x y") and res.synced and not res.gap
        assert other.verify().ok
    with pytest.raises(InputError, match="48-byte digest, got 3"):
        log.extend_digest({H: b"abc"})
    with pytest.raises(InputError, match="no extendable sha256 bank"):
        log.extend_digest({HashAlg.SHA256: bytes(32)})


def test_bad_records_change_nothing(log: RuntimeLog, rs: EmulatedRegisterSet) -> None:
    log.append("ok 1")
    before_log, before_reg = log.path.read_bytes(), rs.read("rtmr3")
    for bad in (["fine", "bad\x00"], [""], [" x"], ["x" * 70000], ["# c"], ["SYNC sha384/00"]):
        with pytest.raises(RecordError):
            log.append_many(bad)
    with pytest.raises(InputError, match="nothing to append"):
        log.append_many([])
    assert log.path.read_bytes() == before_log and rs.read("rtmr3") == before_reg


@pytest.mark.parametrize(
    "damage,message",
    [(b"garbage\x01\n", "control character"), (b"partial", "partial line"), (b"SYNC sha384/zz\n", "lowercase hex")],
)
def test_corrupt_log_refuses_appends_and_changes_nothing(log: RuntimeLog, rs: EmulatedRegisterSet, damage: bytes, message: str) -> None:
    log.append("ok 1")
    log.close()
    with open(log.path, "ab") as fh:
        fh.write(damage)
    before = rs.read("rtmr3")
    with pytest.raises(ParseError, match=message):
        log.append("ok 2")
    assert rs.read("rtmr3") == before


def test_intent_file_keeps_its_size(log: RuntimeLog) -> None:
    log.append("a 1")
    size = log.intent_path.stat().st_size
    assert size >= 65536
    log.append_many(["x" * 60000, "y" * 60000])  # a batch larger than the file grows it once
    grown = log.intent_path.stat().st_size
    assert grown > size and grown & (grown - 1) == 0
    log.append("a 2")
    assert log.intent_path.stat().st_size == grown and log.verify().ok


def test_stale_tail_cache_is_ignored(log: RuntimeLog) -> None:
    log.append("a 1")
    log.close()
    with open(log.path, "ab") as fh:  # another writer appended without updating the cache
        fh.write(b"# a comment\n")
    assert log.append("a 2").lines == ("a 2",)
    assert log.verify().ok


def test_registers_without_a_log_bank(rs: EmulatedRegisterSet, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot carry a runtime log"):
        RuntimeLog(rs, "mrtd", log_dir=tmp_path)
    with pytest.raises(InputError, match="invalid register name"):
        RuntimeLog(rs, "../x", log_dir=tmp_path)


def test_multi_bank_register(state_dir: Path, tmp_path: Path) -> None:
    with EmulatedRegisterSet("tpm") as tpm, RuntimeLog(tpm, "pcr16", log_dir=tmp_path) as lg:
        res = lg.append("x y")
        assert res.lines[0] == "SYNC sha1/" + "00" * 20 + " sha256/" + "00" * 32 + " sha384/" + "00" * 48
        assert lg.verify().ok and set(lg.verify().banks) == {HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384}


# -- recovery: each crash window, simulated in-process --------------------------

class Crash(Exception):
    pass


def crash_after_extends(rs: EmulatedRegisterSet, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    real = rs.extend
    calls = {"n": 0}

    def extend(name, digests):  # type: ignore[no-untyped-def]
        if calls["n"] >= k:
            raise Crash()
        calls["n"] += 1
        real(name, digests)

    monkeypatch.setattr(rs, "extend", extend)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_recovery_after_k_of_n_extends(rs: EmulatedRegisterSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    path = tmp_path / "l.log"
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        lg.append("before")
    with monkeypatch.context() as m:
        if k < 4:
            crash_after_extends(rs, k, m)
        else:  # every extend done, killed before the append
            m.setattr(RuntimeLog, "_append_durable", lambda self, data: (_ for _ in ()).throw(Crash()))
        with RuntimeLog(rs, "rtmr3", path=path) as lg, pytest.raises(Crash):
            lg.append_many(["r 1", "r 2", "r 3", "r 4"])
    assert path.with_name("l.log.intent").stat().st_size > 0
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        result = lg.recover()
        assert result is not None and result.lines_appended == k and result.lines_in_intent == 4
        assert result.action == ("redone" if k else "discarded")
        assert lg.recover() is None
        assert lg.verify().ok
        lines = path.read_text().splitlines()
        assert lines[2:] == [f"r {i}" for i in range(1, k + 1)]


@pytest.mark.parametrize("extended", [False, True])
@pytest.mark.parametrize("fresh", [True, False])
def test_recovery_of_an_intent_holding_a_directive(rs: EmulatedRegisterSet, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, extended: bool, fresh: bool) -> None:
    """A writer killed in a digest-only extend, before or after the register's extend: recovery keeps the
    directive exactly when the register has it, and the log (begun with it, if fresh) verifies after the
    next event's sync record."""
    path = tmp_path / "l.log"
    if not fresh:
        with RuntimeLog(rs, "rtmr3", path=path) as lg:
            lg.append("before")
    start = rs.read("rtmr3")[H]
    d = b"\x05" * 48
    with monkeypatch.context() as m:
        if extended:  # the register was extended, the log not appended
            m.setattr(RuntimeLog, "_append_durable", lambda self, data: (_ for _ in ()).throw(Crash()))
        else:
            crash_after_extends(rs, 0, m)
        with RuntimeLog(rs, "rtmr3", path=path) as lg, pytest.raises(Crash):
            lg.extend_digest({H: d})
    assert rs.read("rtmr3")[H] == (hashlib.sha384(start + d).digest() if extended else start)
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        result = lg.recover()
        assert result is not None and result.lines_in_intent == 1  # the directive alone, no sync record
        assert (result.action, result.lines_appended) == (("redone", 1) if extended else ("discarded", 0))
        lines = path.read_text().splitlines() if path.exists() else []
        assert lines[2 if not fresh else 0:] == ([f"# .EXTEND sha384/{d.hex()}"] if extended else [])
        value = rs.read("rtmr3")[H]
        res = lg.append("after")
        assert res.synced == fresh and not res.gap
        if fresh:
            assert res.lines == (f"SYNC sha384/{value.hex()}", "after")
        assert lg.verify().ok


def test_recovery_after_a_partial_append(rs: EmulatedRegisterSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.log"
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        lg.append("before")

        def half_append(self: RuntimeLog, data: bytes) -> None:
            os.write(self._log_fd, data[:-2])  # type: ignore[arg-type]
            raise Crash()

        monkeypatch.setattr(RuntimeLog, "_append_durable", half_append)
        with pytest.raises(Crash):
            lg.append_many(["r 1", "r 2"])
        monkeypatch.undo()
    assert not path.read_bytes().endswith(b"\n")
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        assert lg.append("after").lines == ("after",)  # recovery runs first, by the next writer
        assert path.read_text().splitlines()[-3:] == ["r 1", "r 2", "after"]
        assert lg.verify().ok


def test_completed_batch_with_stale_intent(rs: EmulatedRegisterSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.log"
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        lg.append("r 0")
        # killed after the durable append, before the idle record replaces the intent
        monkeypatch.setattr(RuntimeLog, "_store_tail", lambda self, tail: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            lg.append("r 1")
        monkeypatch.undo()
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        assert lg.recover().action == "completed"  # type: ignore[union-attr]
        assert path.read_text().count("r 1") == 1 and lg.verify().ok


def test_torn_intent_is_dropped(rs: EmulatedRegisterSet, tmp_path: Path) -> None:
    path = tmp_path / "l.log"
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        lg.append("r 1")
    path.with_name("l.log.intent").write_bytes(b"TSMR-INTENT 1 200 0123\noffset 5\nlin")
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        assert lg.recover().action == "invalid-intent"  # type: ignore[union-attr]
        assert lg.verify().ok


def test_crash_then_out_of_band_extend_is_a_gap(rs: EmulatedRegisterSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.log"
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        lg.append("r 0")
    with monkeypatch.context() as m:
        crash_after_extends(rs, 1, m)
        with RuntimeLog(rs, "rtmr3", path=path) as lg, pytest.raises(Crash):
            lg.append_many(["r 1", "r 2"])
    rs.extend("rtmr3", {H: b"\x02" * 48})
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        assert lg.recover().action == "gap"  # type: ignore[union-attr]
        res = lg.sync()
        assert res.gap and len(res.lines) == 1
        report = lg.verify()
        assert report.banks[H].status == "matched" and len(report.gaps) == 1


def test_truncated_log_with_intent_is_an_error(rs: EmulatedRegisterSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.log"
    with RuntimeLog(rs, "rtmr3", path=path) as lg:
        lg.append("r 0")
    with monkeypatch.context() as m:
        crash_after_extends(rs, 0, m)
        with RuntimeLog(rs, "rtmr3", path=path) as lg, pytest.raises(Crash):
            lg.append("r 1")
    os.truncate(path, 3)
    with RuntimeLog(rs, "rtmr3", path=path) as lg, pytest.raises(ReplayError, match="was truncated"):
        lg.recover()


def test_default_log_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TSMR_LOG_DIR", str(tmp_path))
    assert default_log_dir() == tmp_path
    monkeypatch.delenv("TSMR_LOG_DIR")
    assert default_log_dir() in (Path("/run/tsmr"),) or str(default_log_dir()).endswith("/tsmr")


def test_verify_without_a_log_is_an_error_and_creates_nothing(rs: EmulatedRegisterSet, tmp_path: Path) -> None:
    with RuntimeLog(rs, "rtmr2", log_dir=tmp_path / "none") as lg:
        with pytest.raises(InputError, match="no runtime log for rtmr2"):
            lg.verify()
        with pytest.raises(InputError, match="no runtime log"):
            list(lg.lines())
    assert not (tmp_path / "none").exists()


def test_threads_sharing_one_log_object(log: RuntimeLog) -> None:
    import threading

    def work(t: int) -> None:
        for i in range(50):
            log.append(f"thread{t} {i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = log.verify()
    assert report.ok and report.records == 1 + 200
    lines = log.read().decode().splitlines()
    assert sorted(lines[1:]) == sorted(f"thread{t} {i}" for t in range(4) for i in range(50))


# -- ownership: one long-running writer, every other writer refused ---------------------------

def test_claimed_log_refuses_other_writers_but_not_readers(log: RuntimeLog, rs: EmulatedRegisterSet, tmp_path: Path) -> None:
    import errno

    from tsmr.errors import BackendError

    log.append("before claim")
    log.claim("agent")
    assert log.claimed and log.owner() == f"agent pid {os.getpid()}"
    log.append("by the owner")
    other = RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs")
    try:
        before = (log.path.read_bytes(), rs.read("rtmr3")[H])
        for write in (lambda: other.append("intruder"), other.sync, lambda: other.extend_digest({H: b"\x02" * 48})):
            with pytest.raises(BackendError, match=r"owned by agent pid \d+.*tsmr record") as exc:
                write()
            assert exc.value.errno == errno.EBUSY
        assert (log.path.read_bytes(), rs.read("rtmr3")[H]) == before  # nothing written, nothing extended
        with pytest.raises(BackendError, match="owned by agent") as exc:
            other.claim("agent")
        assert exc.value.errno == errno.EBUSY
        assert other.verify().ok and b"by the owner" in other.read()  # readers are not refused
        assert other.owner() == f"agent pid {os.getpid()}"
    finally:
        other.close()
    log.close()  # closing ends the claim
    with RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs") as again:
        assert again.owner() is None
        assert again.append("after the owner left").first_line == 4
        assert again.verify().ok


def test_claim_held_by_another_process_ends_with_it(rs: EmulatedRegisterSet, tmp_path: Path, state_dir: Path) -> None:
    """The claim is a lock of the owner's process: refused while it lives, free once it is killed."""
    import signal
    import subprocess
    import sys

    from tsmr.errors import BackendError

    logs = tmp_path / "logs"
    code = (
        "import sys, time\n"
        "from tsmr.backends.emulated import EmulatedRegisterSet\n"
        "from tsmr.runtime_log.store import RuntimeLog\n"
        f"log = RuntimeLog(EmulatedRegisterSet('tdx', {str(state_dir)!r}), 'rtmr3', log_dir={str(logs)!r})\n"
        "log.claim('test-owner'); log.append('owner record')\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with RuntimeLog(rs, "rtmr3", log_dir=logs) as log:
            assert log.owner() == f"test-owner pid {proc.pid}"
            with pytest.raises(BackendError, match=rf"owned by test-owner pid {proc.pid}"):
                log.append("intruder")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            assert log.owner() is None
            assert log.append("after the owner died").lines == ("after the owner died",)
            assert log.verify().ok and b"intruder" not in log.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
