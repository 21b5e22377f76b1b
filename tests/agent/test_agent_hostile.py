"""Attacks on a running agent, end to end: a log cut or replaced under it, links planted where it
writes, and an unprivileged user trying to take every connection.  Real agent processes, real
sockets, the attacker a real other uid (fork and setuid); every load is bounded in count and time."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import socket
import stat
from pathlib import Path
from typing import Any, Iterator

import pytest

from .agent_harness import NOBODY, AgentFactory, run_as
from tsmr.agent.client import AgentClient, AgentError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
VICTIM = b"root:$6$precious:19000:0:99999:7:::\n"


def _events(agent: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in agent.log_lines() if e["event"] == name]


# -- the log changed under the agent (issue item 3) ------------------------------------------------


def _cut_front(path: Path, lines: int) -> bytes:
    data = path.read_bytes()
    rest = b"".join(data.splitlines(keepends=True)[lines:])
    with open(path, "r+b") as fh:  # in place: the inode stays, only the history goes
        fh.write(rest)
        fh.truncate()
    return rest


def _replace(path: Path, lines: int) -> bytes:
    rest = b"".join(path.read_bytes().splitlines(keepends=True)[lines:])
    tmp = path.with_name("rtmr3.log.new")
    tmp.write_bytes(rest)
    os.replace(tmp, path)  # as sed -i or "tail > x && mv x" do
    return rest


@pytest.mark.parametrize("tamper,change", [(_cut_front, "was truncated from"), (_replace, "was replaced by another file")],
                         ids=["truncated", "replaced"])
def test_agent_refuses_to_record_on_a_log_cut_under_it(agents: AgentFactory, tamper: Any, change: str) -> None:
    agent = agents.start()
    c = agent.client()
    c.append("rtmr3", ["example.com/app deploy evil-image", "example.com/app start"])
    c.append("rtmr2", ["example.com/boot stage one"])
    path = agents.log_dir / "emulated-tdx" / "rtmr3.log"
    left = tamper(path, 2)  # the SYNC record and the evidence of the evil image are gone
    register = agents.register_value("rtmr3")

    with pytest.raises(AgentError) as err:
        c.append("rtmr3", ["example.com/app harmless"])
    assert err.value.status == 503 and err.value.code == "log_tampered"
    assert f"log {path} {change}" in str(err.value) and "refusing to write" in str(err.value)
    tampered = _events(agent, "log-tampered")
    assert len(tampered) == 1 and tampered[0]["register"] == "rtmr3" and change in tampered[0]["detail"]
    # it stays refusing for that register: nothing reaches the log or the register
    with pytest.raises(AgentError) as again:
        c.append("rtmr3", ["example.com/app harmless again"])
    assert again.value.code == "log_tampered"
    assert path.read_bytes() == left and agents.register_value("rtmr3") == register
    # the other register's log was not touched: it goes on
    assert c.append("rtmr2", ["example.com/boot stage two"])["seq"] == [3]
    assert agents.verify("rtmr2").ok


def test_agent_started_on_a_cut_log_refuses_to_record_on_it(agents: AgentFactory) -> None:
    agent = agents.start()
    agent.client().append("rtmr3", ["example.com/app deploy evil-image", "example.com/app start"])
    assert agent.stop() == 0
    path = agents.log_dir / "emulated-tdx" / "rtmr3.log"
    left = _cut_front(path, 2)  # while no agent runs
    agent = agents.start()
    with pytest.raises(AgentError) as err:
        agent.client().append("rtmr3", ["example.com/app harmless"])
    assert err.value.code == "log_tampered" and f"log {path} is shorter" in str(err.value)
    assert path.read_bytes() == left


# -- links and shared directories (issue item 8) -----------------------------------------------


@pytest.mark.parametrize("name", ["rtmr3.log", "rtmr3.log.intent", "rtmr3.log.owner"])
def test_agent_does_not_follow_a_link_planted_at_its_files(agents: AgentFactory, tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    d = agents.log_dir / "emulated-tdx"
    d.mkdir(parents=True)
    os.symlink(victim, d / name)
    agent = agents.start(wait=False)
    assert agent.proc.wait(timeout=30) == 3
    assert f"{d / name} is a symbolic link: not following it" in agent.stderr.read_text()
    assert victim.read_bytes() == VICTIM


@needs_root
def test_agent_refuses_a_log_directory_another_user_can_write(agents: AgentFactory, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    shared = agents.sock_dir / "logs"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)

    def plant() -> None:  # nobody makes the provider directory first, with a link at the log
        (shared / "emulated-tdx").mkdir()
        os.symlink(victim, shared / "emulated-tdx" / "rtmr3.log")

    assert run_as(NOBODY, NOBODY, plant) == {"ok": None}
    agent = agents.start(agents.config(log_dir=str(shared)), wait=False)
    assert agent.proc.wait(timeout=30) == 2
    assert f"{shared}/emulated-tdx belongs to uid {NOBODY} in the shared directory" in agent.stderr.read_text()
    assert victim.read_bytes() == VICTIM
    os.chmod(shared, 0o777)  # and without the sticky bit, the directory itself is refused
    agent = agents.start(agents.config(log_dir=str(shared)), wait=False)
    assert agent.proc.wait(timeout=30) == 2
    assert f"directory {shared} (mode 0777) can be written by its group and others" in agent.stderr.read_text()


@needs_root
def test_logs_the_agent_writes_are_not_readable_by_others(agents: AgentFactory) -> None:
    # The read rules are the only way to a log: a user without one cannot open the file either.
    logs = agents.sock_dir / "logs"  # a directory others can traverse (tmp_path is 0700)
    agent = agents.start(agents.config(log_dir=str(logs), socket_mode="0666",
                                       rules=[{"uid": 0, "domains": ["example.com/*"], "read": True},
                                              {"uid": NOBODY, "domains": ["example.com/*"]}]))
    agent.client().append("rtmr3", ["example.com/secret deploy {\"token-id\":\"abc\"}"])
    d = logs / "emulated-tdx"
    for name in ("rtmr3.log", "rtmr3.log.intent", "rtmr3.log.owner"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name

    def read_directly() -> str:
        try:
            return (d / "rtmr3.log").read_text()
        except PermissionError:
            return "denied"

    assert run_as(NOBODY, NOBODY, read_directly) == {"ok": "denied"}
    through_agent = run_as(NOBODY, NOBODY, lambda: AgentClient(agent.socket).read_log("rtmr3"))
    assert through_agent["error"]["status"] == 403


# -- connections (issue item 10) ------------------------------------------------------------------


@contextlib.contextmanager
def held_connections(path: str, uid: int, count: int) -> Iterator[list[int]]:
    """``count`` connections from ``uid``, each kept open after one answered request (keep-alive).

    Yields the status each got (200: accepted and now holding a slot; 503: refused).  The child
    holding them waits for the parent, and closes them when the block ends.
    """
    if os.geteuid() != 0:
        pytest.skip("changing uid needs root")
    r_status, w_status = os.pipe()
    r_done, w_done = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r_status)
        os.close(w_done)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            held = []
            statuses = []
            for _ in range(count):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(20)
                s.connect(path)
                with contextlib.suppress(BrokenPipeError):  # a refused one may be closed already
                    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: agent\r\n\r\n")
                resp = http.client.HTTPResponse(s)
                resp.begin()
                resp.read()
                statuses.append(resp.status)
                held.append(s)
            os.write(w_status, json.dumps(statuses).encode() + b"\n")
            os.read(r_done, 1)  # until the parent is done
        except BaseException as exc:  # noqa: BLE001
            os.write(w_status, json.dumps({"crash": repr(exc)}).encode() + b"\n")
        finally:
            os._exit(0)
    os.close(w_status)
    os.close(r_done)
    try:
        with os.fdopen(r_status, "rb") as fh:
            out = json.loads(fh.readline())
        assert isinstance(out, list), out
        yield out
    finally:
        os.close(w_done)
        os.waitpid(pid, 0)


def test_one_user_holding_connections_does_not_lock_out_root(agents: AgentFactory) -> None:
    # Before connections were counted per uid, nobody's four idle connections took all four slots.
    agent = agents.start(agents.config(socket_mode="0666", max_connections=4, request_timeout=120))
    with held_connections(agent.socket, NOBODY, 5) as statuses:
        assert statuses == [200, 200, 200, 200, 503]
        assert agent.client().health()["status"] == "ok"
        assert agent.client().append("rtmr3", ["example.com/app start"])["seq"] == [2]
    refused = _events(agent, "connection-refused")
    assert [e["uid"] for e in refused] == [NOBODY]
    assert f"uid {NOBODY} already has 4 connections open, the limit per user" in refused[0]["reason"]


def test_connections_are_limited_per_uid(agents: AgentFactory) -> None:
    agent = agents.start(agents.config(socket_mode="0666", max_connections=16, max_connections_per_uid=3,
                                       request_timeout=120))
    with held_connections(agent.socket, NOBODY, 4) as statuses:
        assert statuses == [200, 200, 200, 503]
        # another unprivileged user still gets in
        assert run_as(1234, 1234, lambda: AgentClient(agent.socket).health()) == {"ok": {"status": "ok"}}
    refused = _events(agent, "connection-refused")
    assert [e["uid"] for e in refused] == [NOBODY]
    assert f"uid {NOBODY} already has 3 connections open, the limit per user" in refused[0]["reason"]


def _trickle(path: str, head: bytes, slow: bytes, limit: int) -> dict[str, Any]:
    """Send ``head`` at once, then ``slow`` a byte every 0.1 s, at most ``limit`` bytes of it; stop
    when the agent answers or closes.  How many slow bytes went out, and what came back."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    sent = 0
    got = b""
    try:
        s.sendall(head)
        for b in slow[:limit]:
            ready, _, _ = select.select([s], [], [], 0.1)
            if ready:
                break
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
            sent += 1
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                got += chunk
    finally:
        s.close()
    return {"sent": sent, "reply": got.decode(errors="replace")}


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_slow_request_is_cut_off_at_its_deadline(agents: AgentFactory, part: str) -> None:
    # request_timeout 1 s; the client sends a byte every 0.1 s, each well within a timeout per
    # read: only a deadline for the whole request ends it, long before 200 bytes are sent.
    agent = agents.start(agents.config(socket_mode="0666", request_timeout=1))
    limit = 200
    if part == "headers":
        head, slow = b"GET /v1/health HTTP/1.1\r\nHost: agent\r\n", b"X-Slow: " + b"a" * 400 + b"\r\n\r\n"
    else:
        slow = json.dumps({"records": ["example.com/app " + "x" * 300]}).encode()
        head = (f"POST /v1/logs/rtmr3/records HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(slow)}\r\n\r\n").encode()
    result = run_as(NOBODY, NOBODY, lambda: _trickle(agent.socket, head, slow, limit))["ok"]
    assert result["sent"] < limit, result
    assert result["reply"].startswith("HTTP/1.1 408 ") and '"code":"timeout"' in result["reply"], result
    assert any(e.get("uid") == NOBODY and (e["event"] == "request-timeout" or e.get("status") == 408)
               for e in agent.log_lines())
    assert agent.client().health()["status"] == "ok"


def test_connection_limits_are_configurable_and_checked() -> None:
    from tsmr.agent.config import config_from_dict
    from tsmr.errors import InputError

    assert config_from_dict({"registers": ["rtmr3"]}).max_connections_per_uid == 4
    assert config_from_dict({"registers": ["rtmr3"], "max_connections_per_uid": 2}).max_connections_per_uid == 2
    for bad in (0, -1, True, "4", 5000):
        with pytest.raises(InputError, match="max_connections_per_uid must be an integer from 1 to 4096"):
            config_from_dict({"registers": ["rtmr3"], "max_connections_per_uid": bad})
