"""Helpers of the agent tests: the agent as a real process on the emulator, clients as other users."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tsmr.agent.client import AgentClient, AgentError
from tsmr.backends.emulated import EmulatedRegisterSet
from tsmr.runtime_log.replay import ReplayReport
from tsmr.runtime_log.store import RuntimeLog

NOBODY = 65534


@dataclass
class Agent:
    """An agent process, its socket and configuration."""

    proc: subprocess.Popen[bytes]
    socket: str
    config: dict[str, Any]
    stderr: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def client(self, timeout: float = 10.0) -> AgentClient:
        return AgentClient(self.socket, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr.read_text().splitlines() if line.startswith("{")]


class AgentFactory:
    def __init__(self, state_dir: Path, log_dir: Path) -> None:
        self.state_dir = state_dir
        self.log_dir = log_dir
        # Short (AF_UNIX paths are limited) and traversable by other users (pytest's tmp_path is 0700).
        self.sock_dir = Path(tempfile.mkdtemp(prefix="tsmr-agent-", dir="/tmp"))
        os.chmod(self.sock_dir, 0o755)
        self.socket = str(self.sock_dir / "agent.sock")
        self.running: list[Agent] = []
        self._n = 0

    def config(self, **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "backend": "emulated:tdx",
            "state_dir": str(self.state_dir),
            "log_dir": str(self.log_dir),
            "socket": self.socket,
            "registers": ["rtmr2", "rtmr3"],
            "rules": [{"uid": 0, "domains": ["example.com/*"], "read": True, "evidence": True}],
        }
        cfg.update(overrides)
        return cfg

    def start(self, config: dict[str, Any] | None = None, *, wait: bool = True, args: tuple[str, ...] = ()) -> Agent:
        cfg = config if config is not None else self.config()
        self._n += 1
        path = self.sock_dir / f"config{self._n}.json"
        path.write_text(json.dumps(cfg))
        err = self.sock_dir / f"agent{self._n}.stderr"
        env = dict(os.environ)
        proc = subprocess.Popen([sys.executable, "-m", "tsmr", "agent", "--config", str(path), *args],
                                stdout=subprocess.DEVNULL, stderr=err.open("wb"), env=env)
        agent = Agent(proc, cfg.get("socket", self.socket), cfg, err, env)
        self.running.append(agent)
        if wait:
            wait_ready(agent)
        return agent

    def close(self) -> None:
        for a in self.running:
            if a.proc.poll() is None:
                a.proc.kill()
                a.proc.wait(timeout=10)
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    # -- checking the result on disk, independently of the agent -----------------
    def verify(self, register: str = "rtmr3") -> ReplayReport:
        with EmulatedRegisterSet("tdx", self.state_dir) as rs, RuntimeLog(rs, register, log_dir=self.log_dir) as log:
            return log.verify()

    def log_text(self, register: str = "rtmr3") -> str:
        path = self.log_dir / "emulated-tdx" / f"{register}.log"
        return path.read_text() if path.exists() else ""

    def register_value(self, register: str = "rtmr3") -> bytes:
        from tsmr.algorithms import HashAlg

        with EmulatedRegisterSet("tdx", self.state_dir) as rs:
            return rs.read(register)[HashAlg.SHA384]


def wait_ready(agent: Agent, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if agent.proc.poll() is not None:
            raise AssertionError(f"the agent exited with {agent.proc.returncode}: {agent.stderr.read_text()}")
        try:
            if agent.client(timeout=2).health()["status"] == "ok":
                return
        except AgentError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the agent did not answer within {timeout} s: {agent.stderr.read_text()}")
        time.sleep(0.02)


@pytest.fixture
def agents(state_dir: Path, tmp_path: Path) -> Iterator[AgentFactory]:
    factory = AgentFactory(state_dir, tmp_path / "logs")
    try:
        yield factory
    finally:
        factory.close()


def run_as(uid: int, gid: int, fn: Callable[[], Any], groups: tuple[int, ...] = ()) -> Any:
    """Run ``fn`` in a forked child with other credentials; its JSON-able result (or the error it raised)."""
    if os.geteuid() != 0:
        pytest.skip("changing uid needs root")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges for good, then act
        os.close(r)
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                out = {"ok": fn()}
            except AgentError as exc:
                out = {"error": {"status": exc.status, "code": exc.code, "message": str(exc)}}
            os.write(w, json.dumps(out).encode())
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            os.write(w, json.dumps({"crash": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks))
    assert "crash" not in out, out["crash"]
    return out


def raw_request(path: str, data: bytes, *, timeout: float = 10.0) -> tuple[int, Any]:
    """Send bytes as they are; the status and decoded JSON body of the answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(data)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        body = resp.read()
        return resp.status, json.loads(body) if body else None
    finally:
        s.close()


def post(path: str, target: str, body: bytes, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    head = {"Host": "localhost", "Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"}
    head.update(headers or {})
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items() if v is not None)
    return raw_request(path, f"POST {target} HTTP/1.1\r\n{lines}\r\n".encode() + body)
