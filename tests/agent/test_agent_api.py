"""The agent's API end to end: a real agent process on emulated TDX, real sockets, clients as other users."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import typer
from cryptography import x509
from typer.testing import CliRunner

from .agent_harness import NOBODY, AgentFactory, post, raw_request, run_as
from tsmr.evidence import TrustAnchors
from tsmr.agent.client import AgentClient, AgentRequestError, _UnixHTTPConnection
from tsmr.algorithms import HashAlg
from tsmr.cli import agent_cmd
from tsmr.evidence.bundle import verify_bundle
from tsmr.runtime_log.records import canonical_json
from tsmr.runtime_log.replay import replay

import pytest


def _replayed(text: str) -> bytes:
    return replay(text.encode(), algs=[HashAlg.SHA384]).values()[HashAlg.SHA384]


def test_append_verifies_and_register_equals_replay(agents: AgentFactory) -> None:
    agent = agents.start()
    c = agent.client()
    r1 = c.append("rtmr3", ['example.com/app start {"v":1}', "example.com/app ready"])
    assert r1["seq"] == [2, 3] and r1["synced"] and not r1["gap"]  # line 1 is the log's first sync record
    r2 = c.append("rtmr3", domain="example.com/app", operation="config", content={"b": [1.0, "x"], "a": None})
    assert r2["records"] == ['example.com/app config ' + canonical_json({"a": None, "b": [1, "x"]})]
    assert r2["records"] == ['example.com/app config {"a":null,"b":[1,"x"]}'] and r2["seq"] == [4]
    r3 = c.append("rtmr2", [{"domain": "example.com/boot", "operation": "stage", "content": "two"}])
    assert r3["records"] == ["example.com/boot stage two"]

    for reg in ("rtmr2", "rtmr3"):
        report = agents.verify(reg)
        assert report.ok, report.explain(reg)
        text = agents.log_text(reg)
        assert c.read_log(reg) == text
        assert _replayed(text) == agents.register_value(reg)
    lines = agents.log_text("rtmr3").splitlines()
    for seq, rec in zip(r1["seq"] + r2["seq"], r1["records"] + r2["records"]):
        assert lines[seq - 1] == rec
    listed = {r["name"]: r["banks"]["sha384"] for r in c.registers()["registers"]}
    assert listed == {"rtmr2": agents.register_value("rtmr2").hex(), "rtmr3": agents.register_value("rtmr3").hex()}
    assert r2["banks"]["sha384"] == agents.register_value("rtmr3").hex()
    assert agent.stop() == 0
    assert any(e["event"] == "request" and e["status"] == 200 and e["uid"] == 0 for e in agent.log_lines())


def test_other_uid_is_held_to_its_domains(agents: AgentFactory) -> None:
    cfg = agents.config(
        socket_mode="0666",
        rules=[
            {"uid": NOBODY, "domains": ["example.com/allowed/*"], "registers": ["rtmr3"]},
            {"gid": 4242, "domains": ["example.com/group/*"], "registers": ["rtmr3"]},
            {"uid": 0, "domains": [], "read": True},  # root: reads, appends nothing (no bypass)
        ],
    )
    agent = agents.start(cfg)
    sock = agent.socket

    ok = run_as(NOBODY, NOBODY, lambda: AgentClient(sock).append("rtmr3", ["example.com/allowed/app start"]))
    assert ok["ok"]["seq"] == [2]
    before_log, before_reg = agents.log_text(), agents.register_value()

    def attempt(*records: str):  # type: ignore[no-untyped-def]
        return lambda: AgentClient(sock).append("rtmr3", list(records))

    for fn in (attempt("example.com/other start"),
               attempt("example.com/allowed/app ok", "example.com/allowedx/app no"),  # one bad record: nothing
               attempt("example.com/allowed start"),  # the glob needs something after the slash
               lambda: AgentClient(sock).append("rtmr2", ["example.com/allowed/app start"]),  # not its register
               lambda: AgentClient(sock).read_log("rtmr3"),
               lambda: AgentClient(sock).evidence(b"\1" * 8)):
        out = run_as(NOBODY, NOBODY, fn)
        assert out["error"]["status"] == 403 and out["error"]["code"] == "forbidden", out
    # A supplementary group counts (SO_PEERGROUPS), the uid's rule still applies too.
    out = run_as(NOBODY, NOBODY, attempt("example.com/group/x y"), groups=(4242,))
    assert out["ok"]["seq"] == [3]
    out = run_as(NOBODY, NOBODY, attempt("example.com/group/x y"))
    assert out["error"]["status"] == 403
    # Another uid with no rule at all may not even list the registers.
    out = run_as(1234, 1234, lambda: AgentClient(sock).registers())
    assert out["error"]["status"] == 403
    assert run_as(1234, 1234, lambda: AgentClient(sock).health()) == {"ok": {"status": "ok"}}

    # root has only the rights its rule gives: it may read, not append
    with pytest.raises(AgentRequestError) as info:
        agent.client().append("rtmr3", ["example.com/allowed/app start"])
    assert info.value.status == 403
    text = agent.client().read_log("rtmr3")
    assert text.splitlines()[1:] == ["example.com/allowed/app start", "example.com/group/x y"]
    assert before_log.splitlines() == text.splitlines()[:2]
    assert before_reg != agents.register_value()  # only the group's record moved it
    assert agents.verify().ok
    denied = [e for e in agent.log_lines() if e["event"] == "request" and e["status"] == 403]
    assert {e["uid"] for e in denied} == {NOBODY, 1234, 0}


def test_bad_requests_get_4xx_and_change_nothing(agents: AgentFactory) -> None:
    agent = agents.start(agents.config(max_body=1 << 20))
    c = agent.client()
    c.append("rtmr3", ["example.com/app start"])
    before_log, before_reg = agents.log_text(), agents.register_value()
    sock = agent.socket
    target = "/v1/logs/rtmr3/records"

    def body(*records: object) -> bytes:
        return json.dumps({"records": list(records)}).encode()

    zeros = "0" * 96
    cases: list[tuple[bytes, dict[str, str] | None, int, str]] = [
        (body(f"SYNC sha384/{zeros}"), None, 422, "invalid_record"),
        (body(f"INIT sha384/{zeros}"), None, 422, "invalid_record"),
        (body("# .EXTEND sha384/" + zeros), None, 422, "invalid_record"),
        (body("# a comment"), None, 422, "invalid_record"),
        (body("example.com/app x\nSYNC sha384/" + zeros), None, 422, "invalid_record"),
        (body("example.com/app x\u0000"), None, 422, "invalid_record"),
        (body("example.com/app x\u007f"), None, 422, "invalid_record"),
        (body("example.com/app x\r"), None, 422, "invalid_record"),
        (body(" example.com/app x"), None, 422, "invalid_record"),
        (body("example.com/app x "), None, 422, "invalid_record"),
        (body("oneword"), None, 422, "invalid_record"),
        (body("example.com/app " + "x" * 70000), None, 422, "invalid_record"),
        (body("example.com/app ok", "SYNC sha384/" + zeros), None, 422, "invalid_record"),  # nothing of the batch
        (json.dumps({"domain": "example.com/app", "operation": "has space"}).encode(), None, 422, "invalid_record"),
        (json.dumps({"domain": "example.com/app", "operation": "x", "content": 2**60 + 1}).encode(), None, 422, "invalid_record"),
        (json.dumps({"domain": "example.com/app"}).encode(), None, 400, "invalid_request"),
        (b'{"domain": "example.com/app", "operation": "x", "content": ' + b"[" * 980 + b"]" * 980 + b"}", None, 422, "invalid_record"),
        (json.dumps({"records": [], }).encode(), None, 400, "invalid_request"),
        (json.dumps({"records": "example.com/app x"}).encode(), None, 400, "invalid_request"),
        (json.dumps({"records": [1]}).encode(), None, 400, "invalid_request"),
        (json.dumps({"records": ["example.com/a b"], "uid": 0}).encode(), None, 400, "invalid_request"),
        (body(*["example.com/app x"] * 1025), None, 413, "too_many_records"),
        (b'{"records": ["example.com/app x"', None, 400, "invalid_json"),
        (b'["example.com/app x"]', None, 400, "invalid_request"),
        (b'{"domain": "example.com/app", "operation": "x", "content": NaN}', None, 400, "invalid_json"),
        (b"[" * 100000 + b"]" * 100000, None, 400, "invalid_json"),
        (b'{"records": ["example.com/app \xff"]}', None, 400, "invalid_json"),
        (body("example.com/app x"), {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b"", None, 400, "invalid_json"),
    ]
    for data, headers, status, code in cases:
        got = post(sock, target, data, headers=headers)
        assert got[0] == status and got[1]["error"]["code"] == code, (data[:80], got)
        assert "Traceback" not in json.dumps(got[1])

    # over the body limit: refused from the header, before the body is read
    got = raw_request(sock, f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {2 << 20}\r\n\r\n".encode() + b"{")
    assert got[0] == 413 and got[1]["error"]["code"] == "body_too_large"
    got = raw_request(sock, f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n".encode())
    assert got[0] == 411
    got = raw_request(sock, f"POST {target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode())
    assert got[0] == 411
    got = raw_request(sock, f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".encode())
    assert got[0] == 400 and got[1]["error"]["code"] == "bad_content_length"
    got = raw_request(sock, b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got[0] == 404
    got = raw_request(sock, b"GET /v1/logs/rtmr3/records HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got[0] == 405
    got = raw_request(sock, b"GET /v1/logs/rtmr0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got[0] == 404 and got[1]["error"]["code"] == "unknown_register"
    got = raw_request(sock, b"garbage\r\n\r\n")
    assert 400 <= got[0] < 500
    got = post(sock, "/v1/evidence", b'{"nonce": "xyz"}')
    assert got[0] == 400 and got[1]["error"]["code"] == "invalid_nonce"
    got = post(sock, "/v1/evidence", json.dumps({"nonce": "00" * 65}).encode())
    assert got[0] == 400 and got[1]["error"]["code"] == "invalid_nonce"

    assert agents.log_text() == before_log and agents.register_value() == before_reg
    # one connection, several requests (keep-alive), an error among them; the agent is still fine
    conn = _UnixHTTPConnection(sock, 10)
    try:
        for target_, status in (("/v1/health", 200), ("/v1/nothing", 404), ("/v1/registers", 200)):
            conn.request("GET", target_)
            resp = conn.getresponse()
            assert resp.status == status and json.loads(resp.read())
    finally:
        conn.close()
    assert c.append("rtmr3", ["example.com/app still-works"])["seq"] == [3]
    assert agents.verify().ok


def test_evidence_bundle_verifies_with_every_logged_register_matched(agents: AgentFactory) -> None:
    agent = agents.start()
    c = agent.client()
    c.append("rtmr2", ["example.com/boot kernel-cmdline quiet"])
    c.append("rtmr3", ["example.com/app deploy alpine", "example.com/app start"])
    nonce = bytes(range(32))
    doc = c.evidence(nonce)
    assert doc["format"] == "tsmr-bundle" and doc["nonce"] == nonce.hex() and doc["evidence"]["kind"] == "tdx"
    assert sorted(lg["register"] for lg in doc["logs"]) == ["rtmr2", "rtmr3"]
    root = x509.load_pem_x509_certificate((agents.state_dir / "emulator" / "tdx" / "qe" / "root.pem").read_bytes())
    result = verify_bundle(doc, now=datetime.now(timezone.utc), trust=TrustAnchors(tdx_root=root))
    assert result.ok and {(r.register, r.status) for r in result.rows if r.status != "signed-only"} == {
        ("rtmr2", "matched"), ("rtmr3", "matched")}
    doc["nonce"] = "ff" * 32  # bound to the nonce
    with pytest.raises(Exception):
        verify_bundle(doc, now=datetime.now(timezone.utc), trust=TrustAnchors(tdx_root=root))


def test_record_command(agents: AgentFactory) -> None:
    agent = agents.start()
    app = typer.Typer()
    agent_cmd.register(app)
    runner = CliRunner()
    r = runner.invoke(app, ["record", "rtmr3", 'example.com/app start {"v":1}', "--agent", agent.socket, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["seq"] == [2]
    r = runner.invoke(app, ["record", "rtmr3", "--domain", "example.com/app", "--operation", "cfg",
                            "--content", '{"z": 1, "a": 2}', "--agent", agent.socket])
    assert r.exit_code == 0 and "line 3" in r.stdout, r.output
    r = runner.invoke(app, ["record", "rtmr3", "other.org/app start", "--agent", agent.socket, "--json"])
    assert r.exit_code == 2 and "forbidden" in r.output
    r = runner.invoke(app, ["agent-client", "log", "rtmr3", "--agent", agent.socket])
    assert r.exit_code == 0 and r.stdout.splitlines()[1:] == ['example.com/app start {"v":1}', 'example.com/app cfg {"a":2,"z":1}']
    r = runner.invoke(app, ["agent-client", "registers", "--agent", agent.socket, "--json"])
    assert r.exit_code == 0 and [x["name"] for x in json.loads(r.stdout)["registers"]] == ["rtmr2", "rtmr3"]
    out = agents.sock_dir / "bundle.json"
    r = runner.invoke(app, ["agent-client", "evidence", "--nonce", "ab" * 16, "-o", str(out), "--agent", agent.socket])
    assert r.exit_code == 0 and json.loads(out.read_text())["nonce"] == "ab" * 16
    agent.stop()
    r = runner.invoke(app, ["record", "rtmr3", "example.com/app x", "--agent", agent.socket])
    assert r.exit_code == 3  # no agent
