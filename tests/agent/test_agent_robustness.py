"""The agent under stress: SIGKILL mid-append, concurrent clients, socket and ownership lifecycle."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

from cryptography import x509

from .agent_harness import AgentFactory
from tsmr.evidence import TrustAnchors
from tsmr.agent.client import AgentError
from tsmr.evidence.bundle import verify_bundle


def _events(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(("SYNC ", "#"))]


def test_sigkill_while_appending_then_restart_is_consistent(agents: AgentFactory) -> None:
    rng = random.Random(20240611)
    acked: list[str] = []
    pending: list[list[str]] = []  # per round: the batch in flight when the agent died
    counter = 0
    recovered = []
    for rnd in range(4):
        agent = agents.start()
        if rnd:
            # The restarted agent recovered whatever the killed one left: the log replays to the register.
            report = agents.verify()
            assert report.ok, report.explain("rtmr3")
            recovered += [e["action"] for e in agent.log_lines() if e["event"] == "recovered"]
        state: dict[str, list[str] | None] = {"batch": None}
        start_acks = len(acked)
        seeds = [rng.choice((1, 2, 40, 120)) for _ in range(5000)]

        def loop() -> None:
            nonlocal counter
            c = agent.client(timeout=5)
            for size in seeds:  # bounded; ends at the kill
                batch = [f"example.com/crash r{rnd} n{counter + i}" for i in range(size)]
                counter += size
                state["batch"] = batch
                try:
                    c.append("rtmr3", batch)
                except AgentError:
                    return
                acked.extend(batch)
                state["batch"] = None

        t = threading.Thread(target=loop)
        t.start()
        deadline = time.monotonic() + 10
        while len(acked) < start_acks + 5 + rnd * 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.01))
        agent.proc.kill()
        agent.proc.wait(timeout=10)
        t.join(timeout=20)
        assert not t.is_alive()
        pending.append(state["batch"] or [])

    agent = agents.start()  # the socket file left by the SIGKILL is stale: removed, not an obstacle
    report = agents.verify()
    assert report.ok, report.explain("rtmr3")
    logged = _events(agents.log_text())
    assert len(logged) == len(set(logged)), "a record was logged twice"
    assert set(acked) <= set(logged), "an acknowledged record is missing"
    unacked = [r for r in logged if r not in set(acked)]
    for batch in pending:  # an unacknowledged batch may be in the log: as a prefix of itself, in place
        got = [r for r in unacked if r in batch]
        assert got == batch[: len(got)]
    assert set(unacked) <= {r for b in pending for r in b}
    order = [int(r.rsplit("n", 1)[1]) for r in logged]
    assert order == sorted(order)
    # and the agent keeps working on the recovered log
    agent.client().append("rtmr3", ["example.com/crash after"])
    assert agents.verify().ok
    print(f"\nacked {len(acked)}, unacked-but-logged {len(unacked)}, recoveries {recovered}")


def test_sigkill_inside_a_group_commit_is_settled_on_restart(agents: AgentFactory) -> None:
    """Deterministic: the agent is frozen inside a batch (the emulator's lock held here), then killed."""
    agent = agents.start()
    agent.client().append("rtmr3", ["example.com/app before"])
    batch = [f"example.com/app step {i}" for i in range(1000)]  # long enough to be caught half-way
    intent = agents.log_dir / "emulated-tdx" / "rtmr3.log.intent"
    lock_fd = os.open(agents.state_dir / "emulator" / "tdx" / "lock", os.O_RDWR)
    journal = agents.state_dir / "emulator" / "tdx" / "journal"
    extended = journal.stat().st_size
    outcome: list[object] = []
    t = threading.Thread(target=lambda: outcome.append(_try_append(agent, batch)))
    try:
        t.start()
        deadline = time.monotonic() + 10
        while not intent.read_bytes()[:11] == b"TSMR-INTENT":  # the batch's write-ahead intent is durable
            assert time.monotonic() < deadline, "the agent never started the batch"
        while journal.stat().st_size == extended:  # ... and has extended the register at least once
            assert time.monotonic() < deadline, "the agent never extended"
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the agent now blocks at its next extend
        agent.proc.kill()
        agent.proc.wait(timeout=10)
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
    t.join(timeout=10)
    assert isinstance(outcome[0], AgentError)  # never acknowledged

    agent = agents.start()
    actions = [e for e in agent.log_lines() if e["event"] == "recovered"]
    assert len(actions) == 1 and actions[0]["action"] == "redone", actions
    done = actions[0]["lines_appended"]
    assert 0 < done <= len(batch)
    report = agents.verify()
    assert report.ok, report.explain("rtmr3")
    assert _events(agents.log_text()) == ["example.com/app before", *batch[:done]]
    assert agent.client().append("rtmr3", ["example.com/app after"])["seq"][0] == len(agents.log_text().splitlines())
    assert agents.verify().ok
    print(f"\nkilled after {done} of {len(batch)} extends")


def _try_append(agent, batch):  # type: ignore[no-untyped-def]
    try:
        return agent.client().append("rtmr3", batch)
    except AgentError as exc:
        return exc


def test_concurrent_clients_each_record_once_and_evidence_stays_consistent(agents: AgentFactory) -> None:
    agent = agents.start()
    workers, requests = 6, 15
    errors: list[BaseException] = []
    bundles: list[dict] = []  # type: ignore[type-arg]
    go = threading.Event()

    def writer(k: int) -> None:
        try:
            c = agent.client()
            go.wait()
            for i in range(requests):
                reg = "rtmr3" if (k + i) % 3 else "rtmr2"
                r = c.append(reg, [f"example.com/w{k} op {i}a", f"example.com/w{k} op {i}b"])
                assert r["seq"][1] == r["seq"][0] + 1  # one group: adjacent
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def quoter() -> None:
        try:
            c = agent.client()
            go.wait()
            for i in range(4):
                bundles.append(c.evidence(bytes([i]) * 32))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(workers)] + [threading.Thread(target=quoter)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    logged = _events(agents.log_text("rtmr2")) + _events(agents.log_text("rtmr3"))
    expected = [f"example.com/w{k} op {i}{x}" for k in range(workers) for i in range(requests) for x in "ab"]
    assert sorted(logged) == sorted(expected) and len(set(logged)) == len(logged)
    for reg in ("rtmr2", "rtmr3"):
        events = _events(agents.log_text(reg))
        for k in range(workers):
            mine = [e for e in events if e.startswith(f"example.com/w{k} ")]
            assert mine == sorted(mine, key=lambda e: (int(e.split()[2][:-1]), e[-1]))  # each client's order kept
        report = agents.verify(reg)
        assert report.ok, report.explain(reg)
    # every bundle taken while others appended still verifies: its logs are what its quote covers
    root = x509.load_pem_x509_certificate((agents.state_dir / "emulator" / "tdx" / "qe" / "root.pem").read_bytes())
    assert len(bundles) == 4
    for doc in bundles:
        result = verify_bundle(doc, now=datetime.now(timezone.utc), trust=TrustAnchors(tdx_root=root))
        assert result.ok, result.rows


def test_socket_mode_stale_socket_single_owner_and_clean_shutdown(agents: AgentFactory) -> None:
    path = agents.socket
    # a stale socket file (its listener is gone) is replaced
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    agent = agents.start(agents.config(socket_group=4242))
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 4242
    assert any(e["event"] == "stale-socket-removed" for e in agent.log_lines())

    # a second agent on the same socket: refuses, leaves the live socket alone
    second = agents.start(agents.config(registers=["rtmr1"]), wait=False)
    assert second.proc.wait(timeout=15) == 3
    assert "listening" in second.stderr.read_text()
    # a second agent for the same registers on another socket: refuses (the first owns their logs)
    other = str(agents.sock_dir / "other.sock")
    third = agents.start(agents.config(socket=other), wait=False)
    assert third.proc.wait(timeout=15) == 3
    assert "already owns" in third.stderr.read_text() and not os.path.exists(other)
    assert agent.client().health()["status"] == "ok"

    # any other writer of an owned register is refused while the agent runs (root included);
    # readers are not
    agent.client().append("rtmr3", ["example.com/w op 1"])
    before = (agents.log_text("rtmr3"), agents.register_value("rtmr3"))
    env = {**os.environ, "TSMR_STATE_DIR": str(agents.state_dir), "TSMR_LOG_DIR": str(agents.log_dir)}
    tsmr = [sys.executable, "-m", "tsmr", "log"]
    refused = subprocess.run([*tsmr, "append", "-b", "emulated:tdx", "rtmr3", "example.com/w intruder"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 3, refused.stderr
    assert f"owned by agent pid {agent.proc.pid}" in refused.stderr and "tsmr record" in refused.stderr
    assert (agents.log_text("rtmr3"), agents.register_value("rtmr3")) == before
    shown = subprocess.run([*tsmr, "verify", "-b", "emulated:tdx", "rtmr3"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr

    # SIGTERM: exit 0, socket removed
    assert agent.stop(signal.SIGTERM) == 0 and not os.path.exists(path)
    events = [e["event"] for e in agent.log_lines()]
    # (the health request's own log line may land before or after "stopping": it is written after its reply)
    assert events[-1] == "stopped" and "stopping" in events[-3:-1]
    agent = agents.start(agents.config(socket_mode="0600"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert agent.stop(signal.SIGINT) == 0 and not os.path.exists(path)

    # something that is not a socket is never removed
    with open(path, "w") as fh:
        fh.write("keep me")
    bad = agents.start(wait=False)
    assert bad.proc.wait(timeout=15) == 2
    assert open(path).read() == "keep me"
    os.unlink(path)

    # configuration mistakes are usage errors
    for cfg in (agents.config(colour="blue"),
                agents.config(rules=[{"uid": 0, "domains": ["example.com/*"], "registers": ["rtmr0"]}]),
                agents.config(rules=[{"uid": 0, "user": "root"}]),
                agents.config(registers=[])):
        bad = agents.start(cfg, wait=False)
        assert bad.proc.wait(timeout=15) == 2, bad.stderr.read_text()


def test_agent_cli_overrides_and_ready_line(agents: AgentFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = str(agents.sock_dir / "cli.sock")
    env = dict(os.environ, TSMR_AGENT_SOCKET=sock)
    proc = subprocess.Popen([sys.executable, "-m", "tsmr", "agent", "--backend", "emulated:tdx", "--register", "rtmr3",
                             "--log-dir", str(agents.log_dir), "--state-dir", str(agents.state_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert f"on {sock}" in line and "rtmr3" in line
        from tsmr.agent.client import AgentClient, AgentRequestError

        try:
            AgentClient(sock).registers()
            raise AssertionError("no rules, yet allowed")
        except AgentRequestError as exc:
            assert exc.status == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "no access rules" in err and not os.path.exists(sock)


def test_connection_limit_answers_503_and_recovers(agents: AgentFactory) -> None:
    agent = agents.start(agents.config(max_connections=2))
    idle = []
    for _ in range(2):  # two connections that say nothing hold both slots
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(agent.socket)
        idle.append(s)
    time.sleep(0.2)
    try:
        agent.client().health()
        raise AssertionError("a third connection was served")
    except AgentError as exc:
        assert exc.status == 503 and exc.code == "too_many_connections"
    for s in idle:
        s.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            assert agent.client().health()["status"] == "ok"
            break
        except AgentError:
            assert time.monotonic() < deadline
            time.sleep(0.02)
