"""Hostile file systems: links planted by another user, shared directories, logs cut or replaced under
their writer.  Every attack is carried out for real (other uids by fork and setuid, real links, real
truncation) and each test checks that nothing was written where it should not have been."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from tsmr import HashAlg
from tsmr.backends.emulated import EmulatedRegisterSet, initialise
from tsmr.errors import BackendError, InputError
from tsmr.runtime_log.store import RuntimeLog

H = HashAlg.SHA384
NOBODY = 65534
VICTIM = b"root:$6$precious:19000:0:99999:7:::\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting files as another user needs root")


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file only root may change; every attack below tries to make tsmr write to it."""
    p = tmp_path / "victim"
    p.write_bytes(VICTIM)
    p.chmod(0o600)
    return p


def as_user(uid: int, fn: Callable[[], object]) -> object:
    """Run ``fn`` in a child with uid and gid ``uid`` (the attacker); its JSON-able result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out: object = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - the parent reports it
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result["ok"]


@pytest.fixture
def public() -> Path:
    """A directory other users can reach (pytest's tmp_path is under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="tsmr-hostile-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d  # type: ignore[misc]
    shutil.rmtree(d, ignore_errors=True)


def shared_dir(base: Path, name: str, mode: int) -> Path:
    d = base / name
    d.mkdir()
    os.chmod(d, mode)
    return d


def register(rs: EmulatedRegisterSet) -> bytes:
    return rs.read("rtmr3")[H]


# -- links and shared directories (issue item 8) ---------------------------------------------------


@needs_root
def test_world_writable_log_directory_is_refused(rs: EmulatedRegisterSet, public: Path) -> None:
    logs = shared_dir(public, "logs", 0o777)
    before = register(rs)
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log, pytest.raises(InputError) as err:
        log.append("example.com/app start")
    assert f"directory {logs} (mode 0777) can be written by its group and others" in str(err.value)
    assert os.listdir(logs) == [] and register(rs) == before
    os.chmod(logs, 0o775)  # group-writable is just as bad
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log, pytest.raises(InputError, match=r"\(mode 0775\) can be written by its group"):
        log.append("example.com/app start")


@needs_root
def test_links_planted_by_another_user_in_a_sticky_directory_are_not_followed(
        rs: EmulatedRegisterSet, public: Path, victim: Path) -> None:
    # /tmp-like: sticky and world-writable.  nobody gets there first and makes the provider directory
    # with links at the log, intent and owner paths, all to a file of root's.
    logs = shared_dir(public, "logs", 0o1777)

    def plant() -> list[str]:
        d = logs / "emulated-tdx"
        d.mkdir()
        for name in ("rtmr3.log", "rtmr3.log.intent", "rtmr3.log.owner"):
            os.symlink(victim, d / name)
        return sorted(os.listdir(d))

    assert as_user(NOBODY, plant) == ["rtmr3.log", "rtmr3.log.intent", "rtmr3.log.owner"]
    before = register(rs)
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log:
        with pytest.raises(InputError, match=f"{logs}/emulated-tdx belongs to uid {NOBODY} in the shared directory"):
            log.append("example.com/app start")
        with pytest.raises(InputError, match="belongs to uid"):
            log.claim("agent")
    assert victim.read_bytes() == VICTIM and register(rs) == before

    # The same with a link instead of a directory: nobody points emulated-tdx at a directory of root's.
    target = public / "roots"
    target.mkdir()
    as_user(NOBODY, lambda: [os.rename(logs / "emulated-tdx", logs / "moved"), os.symlink(target, logs / "emulated-tdx")] and None)
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log, \
            pytest.raises(InputError, match=f"emulated-tdx is a symbolic link of uid {NOBODY} in the shared directory"):
        log.append("example.com/app start")
    assert os.listdir(target) == [] and register(rs) == before


@pytest.mark.parametrize("name", ["rtmr3.log", "rtmr3.log.intent", "rtmr3.log.owner"])
def test_a_link_at_a_log_file_is_refused_and_its_target_untouched(
        rs: EmulatedRegisterSet, tmp_path: Path, victim: Path, name: str) -> None:
    d = tmp_path / "logs" / "emulated-tdx"
    d.mkdir(parents=True)
    os.symlink(victim, d / name)
    before = register(rs)
    with RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs") as log, \
            pytest.raises(BackendError, match=f"{d / name} is a symbolic link: not following it"):
        log.claim("agent")
        log.append("example.com/app start")
    assert victim.read_bytes() == VICTIM and register(rs) == before
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_hard_link_at_the_log_is_refused(rs: EmulatedRegisterSet, tmp_path: Path, victim: Path) -> None:
    d = tmp_path / "logs" / "emulated-tdx"
    d.mkdir(parents=True)
    os.link(victim, d / "rtmr3.log")
    with RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs") as log, pytest.raises(BackendError, match="has 2 hard links"):
        log.append("example.com/app start")
    assert victim.read_bytes() == VICTIM


@needs_root
def test_a_directory_of_another_user_on_the_way_is_refused(rs: EmulatedRegisterSet, public: Path, victim: Path) -> None:
    # Not writable by others, but its owner (nobody) can swap what is in it at any time.
    home = shared_dir(public, "home", 0o755)
    os.chown(home, NOBODY, NOBODY)
    before = register(rs)
    with RuntimeLog(rs, "rtmr3", log_dir=home / "logs") as log, \
            pytest.raises(InputError, match=f"directory {home} \\(mode 0755\\) is owned by uid {NOBODY}"):
        log.append("example.com/app start")
    assert os.listdir(home) == [] and register(rs) == before


@needs_root
def test_log_files_are_private_to_their_writer(rs: EmulatedRegisterSet, public: Path) -> None:
    logs = shared_dir(public, "logs", 0o755)
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log:
        log.claim("agent")
        log.append("example.com/secret deploy {\"token-id\":\"abc\"}")
        paths = [log.path, log.intent_path, log.owner_path]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths} == {p.name: 0o600 for p in paths}
    os.chmod(logs / "emulated-tdx", 0o755)

    def read() -> list[str]:
        out = []
        for p in paths:
            try:
                p.read_bytes()
                out.append("read")
            except PermissionError:
                out.append("denied")
        return out

    assert as_user(NOBODY, read) == ["denied"] * 3
    # A log left world-readable (by an older version) loses others' rights when next written.
    os.chmod(paths[0], 0o666)
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log:
        log.append("example.com/app next")
    assert stat.S_IMODE(paths[0].stat().st_mode) == 0o640


def test_emulator_state_is_private_and_links_are_not_followed(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    EmulatedRegisterSet("tdx", state).close()
    d = state / "emulator" / "tdx"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir() if p.is_file()}
    assert {"config.json", "initial", "state", "journal", "lock"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes
    # re-initialising truncates the journal: a link planted there must not take the victim with it
    (d / "journal").unlink()
    os.symlink(victim, d / "journal")
    with pytest.raises(BackendError, match="journal is a symbolic link: not following it"):
        initialise("tdx", state_dir=state)
    assert victim.read_bytes() == VICTIM


@needs_root
def test_emulator_state_directory_others_can_write_is_refused(public: Path) -> None:
    state = shared_dir(public, "state", 0o777)
    with pytest.raises(InputError, match=f"emulator state directory {state}/emulator/tdx: directory {state} \\(mode 0777\\)"):
        EmulatedRegisterSet("tdx", state)
    assert os.listdir(state) == []


def test_verifier_database_is_private_and_a_link_is_refused(tmp_path: Path, victim: Path) -> None:
    from tsmr.service.db import make_engine

    state = tmp_path / "verifier"
    engine = make_engine(state_dir=state)
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    engine.dispose()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "verifier.db").stat().st_mode) == 0o600
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.symlink(victim, other / "verifier.db")
    with pytest.raises(BackendError, match="verifier.db is a symbolic link: not following it"):
        make_engine(f"sqlite:///{other / 'verifier.db'}")
    assert victim.read_bytes() == VICTIM


# -- logs cut or replaced under their writer (issue item 3) --------------------------------------


def _cut_front(path: Path, lines: int) -> bytes:
    """What an attacker does in place: keep the inode, drop the first lines (sed -i would replace it)."""
    data = path.read_bytes()
    rest = b"".join(data.splitlines(keepends=True)[lines:])
    with open(path, "r+b") as fh:
        fh.write(rest)
        fh.truncate()
    return rest


def _run_elsewhere(code: str) -> None:
    """The tampering comes from another process, as it would."""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_owner_refuses_a_log_whose_front_was_cut(rs: EmulatedRegisterSet, tmp_path: Path) -> None:
    with RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs") as log:
        log.claim("agent")
        log.append_many(["example.com/app deploy evil-image", "example.com/app start"])
        full = log.path.stat().st_size
        _run_elsewhere(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                       f"from test_store_hostile import _cut_front; from pathlib import Path; "
                       f"_cut_front(Path({str(log.path)!r}), 2)")
        cut = log.path.read_bytes()
        before = register(rs)
        with pytest.raises(BackendError) as err:
            log.append("example.com/app harmless")
        msg = str(err.value)
        assert f"log {log.path} was truncated from {full} to {len(cut)} bytes" in msg and "refusing to write" in msg
        assert log.broken is not None
        # it stays refusing, and nothing reached the log or the register
        with pytest.raises(BackendError, match="was truncated"):
            log.append("example.com/app harmless again")
        with pytest.raises(BackendError, match="was truncated"):
            log.recover()
        assert log.path.read_bytes() == cut and register(rs) == before


def test_owner_refuses_a_replaced_log(rs: EmulatedRegisterSet, tmp_path: Path) -> None:
    with RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs") as log:
        log.claim("agent")
        log.append_many(["example.com/app deploy evil-image", "example.com/app start"])
        # tail -n +3 rtmr3.log > x && mv x rtmr3.log
        p = log.path
        _run_elsewhere(f"import os; d = open({str(p)!r}, 'rb').read().splitlines(True)[2:]; "
                       f"open({str(p) + '.new'!r}, 'wb').write(b''.join(d)); os.replace({str(p) + '.new'!r}, {str(p)!r})")
        replaced = p.read_bytes()
        before = register(rs)
        with pytest.raises(BackendError, match=f"log {p} was replaced by another file while this writer had it open"):
            log.append("example.com/app harmless")
        assert p.read_bytes() == replaced and register(rs) == before


def test_owner_refuses_a_log_someone_else_appended_to(rs: EmulatedRegisterSet, tmp_path: Path) -> None:
    with RuntimeLog(rs, "rtmr3", log_dir=tmp_path / "logs") as log:
        log.claim("agent")
        log.append("example.com/app start")
        size = log.path.stat().st_size
        _run_elsewhere(f"open({str(log.path)!r}, 'ab').write(b'example.com/app forged\\n')")
        with pytest.raises(BackendError, match=f"grew from {size} to {size + 23} bytes written by another process"):
            log.append("example.com/app next")


def test_plain_writer_refuses_a_log_cut_between_two_writers(rs: EmulatedRegisterSet, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log:
        log.append_many(["example.com/app deploy evil-image", "example.com/app start"])
        path = log.path
    cut = _cut_front(path, 2)
    before = register(rs)
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log, pytest.raises(BackendError) as err:
        log.append("example.com/app harmless")
    assert f"log {path} is shorter ({len(cut)} bytes) than when it was last written" in str(err.value)
    # the command line says the same, as a system failure (exit 3)
    env = {**os.environ, "TSMR_LOG_DIR": str(logs)}
    cli = subprocess.run([sys.executable, "-m", "tsmr", "log", "append", "-b", "emulated:tdx", "rtmr3", "example.com/app harmless"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 3 and f"log {path} is shorter" in cli.stderr, cli.stderr
    assert path.read_bytes() == cut and register(rs) == before
    # The way out is explicit: move the log aside; a new log starts with a sync record of the register.
    path.rename(path.with_name("rtmr3.log.tampered"))
    with RuntimeLog(rs, "rtmr3", log_dir=logs) as log:
        res = log.append("example.com/app harmless")
        assert res.lines[0] == f"SYNC sha384/{before.hex()}" and log.verify().ok
