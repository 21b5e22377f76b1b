"""Fixtures of the verifier tests: a PostgreSQL cluster, verifier processes on loopback, emulated TDX bundles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from .pg import PostgresCluster, available

SERVE = str(Path(__file__).with_name("serve_main.py"))
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
# Reference values under which every example.com/* event of the Emulator's RTMR3 log is judged (the allowlist
# allows them): they cover RTMR3, the one register its quotes give a value, so a clean bundle can affirm.
COVERING = {"format": "tsmr-refvals", "version": 1, "id": "example-apps",
            "appraisers": {"allowlist": {"rules": [{"domain": "example.com/*"}]}}}


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    reason = available()
    if reason:
        pytest.skip(reason)
    with PostgresCluster() as pg:
        yield pg


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty PostgreSQL database."""
    return pg_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind (PostgreSQL skipped when its binaries are missing)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'verifier.db'}"
    return str(request.getfixturevalue("pg_url"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """An emulated TDX guest with a runtime log on rtmr3: makes bundles over any nonce."""

    def __init__(self, state: Path) -> None:
        from tsmr.system.acquire import acquire

        self.state = state
        self.log_dir = state / "logs"
        got = acquire(bytes(32), backend="emulated:tdx", state_dir=str(state))  # creates the test root
        assert got.trust_anchor is not None
        self.trust_root = Path(got.trust_anchor)
        # Collateral (UpToDate) under the same test root, beside it: a verifier trusting the root is given
        # both (Server below), as a real one has Intel's root and the PCS collateral.
        from emulated_collateral import write_collateral
        from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner

        self.collateral = write_collateral(EmulatedTDXSigner(self.trust_root.parent),
                                           self.trust_root.with_name("collateral.json"))
        self.records = 0

    def append(self, *records: str) -> None:
        from tsmr.backends.emulated import EmulatedRegisterSet
        from tsmr.runtime_log.store import RuntimeLog

        with EmulatedRegisterSet("tdx", str(self.state)) as rs, RuntimeLog(rs, "rtmr3", log_dir=self.log_dir) as log:
            log.append_many(list(records))
        self.records += len(records)

    def bundle(self, nonce: str | bytes, *, extra_logs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        from tsmr.system.acquire import acquire
        from tsmr.evidence.bundle import make_bundle

        raw = bytes.fromhex(nonce) if isinstance(nonce, str) else nonce
        got = acquire(raw, backend="emulated:tdx", state_dir=str(self.state))
        logs: list[dict[str, Any]] = list(extra_logs or [])
        path = self.log_dir / str(got.provider) / "rtmr3.log"
        if path.exists():
            logs.append({"format": "tsmr", "register": "rtmr3", "data": path.read_bytes(), "name": "rtmr3"})
        return make_bundle(nonce=raw, evidence=got.evidence, logs=logs)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Emulator:
    emu = Emulator(tmp_path_factory.mktemp("emulator"))
    emu.append("example.com/app deploy image=sha256:1111", "example.com/app start")
    return emu


class Server:
    """One ``tsmr serve`` process (with its workers) on 127.0.0.1 and a free port."""

    def __init__(self, workdir: Path, *, database: str, trust_root: Path | None, key: Path | None = None,
                 admin_token: str | None = ADMIN_TOKEN, workers: int = 1, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, verify: Any = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # verify: an ssl.SSLContext for a server started with TLS options (in `extra`): https, checked with it
        self.verify: Any = True if verify is None else verify
        self.url = f"{'http' if verify is None else 'https'}://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{self.port}.log"
        args = [sys.executable, SERVE, "serve", "--port", str(self.port), "--database", database,
                "--state-dir", str(workdir / "state"), "--json-logs", "--workers", str(workers)]
        if key is not None:
            args += ["--key", str(key)]
        if trust_root is not None:
            args += ["--trust-root", str(trust_root)]
            if Path(trust_root).with_name("collateral.json").is_file():  # the Emulator's
                args += ["--collateral", str(Path(trust_root).with_name("collateral.json"))]
        if admin_token is not None:
            token_file = workdir / "admin-token"
            token_file.write_text(admin_token + "\n")
            token_file.chmod(0o600)
            args += ["--admin-token-file", str(token_file)]
        self.args = args + list(extra or [])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> "Server":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "Server":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        log.close()
        return self

    def wait_ready(self, timeout: float = 60.0) -> "Server":
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tsmr serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2, verify=self.verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tsmr serve did not become healthy within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started: serve and its workers
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **{"verify": self.verify, **kw})

    def cover(self, document: dict[str, Any] | None = None) -> None:
        """Store reference values (default :data:`COVERING`) as the verifier's "default", with the admin token."""
        with self.client() as c:
            r = c.put("/refvals/default", json={"document": document or COVERING}, headers=admin_headers())
            assert r.status_code == 201, r.text

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start verifier processes; every one is stopped at the end of the test."""
    started: list[Server] = []

    def make(*, name: str = "a", wait: bool = True, **kw: Any) -> Server:
        srv = Server(tmp_path / name, **kw)
        started.append(srv)
        return srv.start() if wait else srv.launch()

    yield make
    for srv in started:
        srv.stop()


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
