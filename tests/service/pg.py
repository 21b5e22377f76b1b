"""A throwaway PostgreSQL cluster for tests, from Debian's ``postgresql`` package.

``PostgresCluster`` runs ``initdb`` into a temporary directory and starts
``postgres`` on 127.0.0.1 and a free port, with Unix sockets off, fsync off
and trust authentication (nothing but this machine's loopback can reach it,
and it lives only as long as the test session).  PostgreSQL refuses to run as
root, so when we are root the binaries run as the ``postgres`` user (created
by the Debian package) through ``subprocess``'s ``user=``/``group=``, which
switch ids in the child before exec.

``available()`` says why the cluster cannot be made (no binaries, no
``postgres`` user), for ``pytest.skip``.  ``make test`` installs the package.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["PostgresCluster", "available", "bin_dir"]


def bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding initdb and postgres (or $TSMR_PG_BIN)."""
    env = os.environ.get("TSMR_PG_BIN")
    candidates = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                          key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                                          reverse=True)
    for c in candidates:
        if c and all(os.access(os.path.join(c, b), os.X_OK) for b in ("initdb", "postgres")):
            return Path(c)
    return None


def available() -> str | None:
    """None if a cluster can be started here, else the reason it cannot."""
    if bin_dir() is None:
        return "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (Debian package postgresql; make test installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """``with PostgresCluster() as pg: pg.create_database()`` -> a SQLAlchemy URL of a fresh, empty database."""

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.bin = bin_dir()
        self.startup_timeout = startup_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="tsmr-pg-"))
        self.data = self.tmp / "data"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.user_args: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self.user_args = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        os.chmod(self.tmp, 0o700)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "PostgresCluster":
        try:
            return self._start()
        except BaseException:
            self.stop()  # nothing left behind: no server, no directory
            raise

    def _start(self) -> "PostgresCluster":
        assert self.bin is not None
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.tmp)}
        r = subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                            "-E", "UTF8", "--no-sync", "--no-instructions"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=self.tmp, **self.user_args)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip() or r.stdout.strip()}")
        for _ in range(5):
            self.port = _free_port()
            log = open(self.tmp / "postgres.log", "ab")
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp, start_new_session=True,
                **self.user_args)
            log.close()
            if self._wait_ready():
                return self
            self._kill()
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        import psycopg

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False  # e.g. the port was taken in between: try another
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.tmp / "postgres.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- databases ------------------------------------------------------------------------------
    def dsn(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def url(self, db: str) -> str:
        """SQLAlchemy URL (psycopg 3) of database ``db``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
