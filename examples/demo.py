"""The tsmr demo: a workload in an (emulated) TDX guest records what it does through the guest
agent; a relying party challenges it, the agent produces evidence, the verifier appraises it and
answers with a signed result; then one log record is tampered with and the verifier says so.
The verifier affirms only what reference values cover, so the operator first learns them from a
bundle of the known-good guest.

Run by `make demo` with TSMR_STATE_DIR and TSMR_LOG_DIR pointing at fresh directories, on the
built-in emulator of an Intel TDX guest.  Each step prints the command a user would type, then
runs it.  Everything it starts is stopped before it returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TSMR = [os.path.join(os.path.dirname(sys.executable), "tsmr")]


def run(*args: str, expect: int = 0, say: str = "") -> str:
    if say:
        print(f"\n# {say}")
    print(f"$ tsmr {shlex.join(args)}", flush=True)
    proc = subprocess.run(TSMR + list(args), text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if "Traceback (most recent call last)" in proc.stderr:
        raise SystemExit("demo step failed: the command crashed")
    if proc.returncode != expect:
        raise SystemExit(f"demo step failed: exit code {proc.returncode}, expected {expect}")
    if expect:
        print(f"(exit code {proc.returncode}, as expected)")
    return proc.stdout


def start(say: str, *args: str, ready) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    print(f"\n# {say}")
    print(f"$ tsmr {shlex.join(args)} &", flush=True)
    proc = subprocess.Popen(TSMR + list(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not ready():
        if proc.poll() is not None:
            raise SystemExit(f"tsmr {args[0]} exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"tsmr {args[0]} did not become ready within 30 s")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def main() -> None:
    state = Path(os.environ["TSMR_STATE_DIR"])
    logs = Path(os.environ["TSMR_LOG_DIR"])
    work = state.parent
    print("tsmr demo on an emulated Intel TDX guest (nothing here is hardware-backed)")
    run("emulate", "init", "--profile", "tdx", say="a fresh emulated TD: every RTMR starts at zero")

    root = state / "emulator" / "tdx" / "qe" / "root.pem"
    sock = work / "agent.sock"
    config = work / "agent.json"
    config.write_text(json.dumps({
        "backend": "emulated:tdx", "registers": ["rtmr2", "rtmr3"],
        "rules": [{"uid": os.getuid(), "domains": ["example.com/*"], "read": True, "evidence": True}],
    }, indent=1))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agent = verifier = None
    try:
        agent = start("the guest agent: the only writer of RTMR2/RTMR3 and their logs; programs talk to it "
                      f"over a Unix socket (rules in {config.name}: this uid may record example.com/* events)",
                      "agent", "--socket", str(sock), "--config", str(config), ready=sock.exists)
        # The emulator's quotes chain to a test root made in the state directory: the verifier trusts
        # it because it is told to, never by default; the collateral the emulator issued under that
        # root lets it check CRLs and the TCB status as it would for a real TD.
        verifier = start("the verifier (SQLite), trusting the emulator's test root and collateral explicitly",
                         "serve", "--port", str(port), "--database", f"sqlite:///{work / 'verifier.db'}",
                         "--key", str(work / "ear-key.pem"), "--trust-root", str(root),
                         "--collateral", str(root.with_name("collateral.json")),
                         ready=lambda: healthy(url))

        events = ['example.com/app deploy {"digest":"sha256:4f1c","image":"alpine"}',
                  'example.com/app config {"replicas":3}']
        run("record", "--agent", str(sock), "rtmr3", *events,
            say="the workload records two events: each line is hashed, extended into RTMR3 and logged")
        run("record", "--agent", str(sock), "rtmr3", "github.com/confidential-containers PullImage x",
            expect=2, say="a domain this uid was not granted is refused, and nothing is extended")
        value = bytes.fromhex(run("read", "rtmr3", "--bank", "sha384", "--backend", "emulated:tdx").strip())
        expected = bytes(48)
        for line in ["SYNC sha384/" + "00" * 48, *events]:
            expected = hashlib.sha384(expected + hashlib.sha384(line.encode()).digest()).digest()
        assert expected == value, "RTMR3 does not equal the hashlib replay of the log"
        print("# checked: RTMR3 equals a hashlib replay of the three logged lines")

        run("attest", "--agent", str(sock), "--verifier", url, expect=1,
            say="an attestation now verifies and replays, but the verifier has no reference values: nothing says "
                "what RTMR3 may hold, so the answer is a warning (refvals.uncovered), never affirming")
        database = f"sqlite:///{work / 'verifier.db'}"
        good = work / "known-good.json"
        refvals = work / "refvals.json"
        run("attest", "--agent", str(sock), "--nonce", "01" * 32, "-o", str(good),
            say="the operator captures a bundle from this guest, known to be good")
        run("refvals", "learn", str(good), "-o", str(refvals), "--trust-root", str(root), "--id", "demo-known-good",
            say="... learns reference values from it: the signed registers, and the events that explain them")
        run("refvals", "import", "default", str(refvals), "--database", database,
            say="... and stores them as the verifier's reference values")

        run("challenge", "--verifier", url, say="the relying party asks the verifier for a single-use nonce")
        ear = work / "result.jwt"
        run("attest", "--agent", str(sock), "--verifier", url, "--ear", str(ear),
            say="... the agent quotes the registers over a fresh nonce with its logs; the verifier checks the "
                "quote, replays every log against it, applies its policy and signs the result (EAR)")
        with urllib.request.urlopen(url + "/.well-known/jwks.json", timeout=5) as resp:
            jwks = json.load(resp)
        from tsmr.appraisal import ear as ear_mod

        claims = ear_mod.verify(ear.read_text().strip(), jwks)
        status = {k: v.get("ear.status") for k, v in claims["submods"].items()}
        print(f"# checked offline: the EAR verifies with the published JWKS; status {status}")
        run("ear", "verify", str(ear), "--jwks", url + "/.well-known/jwks.json", "--require", "affirming",
            "--policy-id", "tsmr-default",
            say="the relying party checks the result itself: signature, status, and that the verifier's own "
                "default policy judged it")

        log = logs / "emulated-tdx" / "rtmr3.log"
        text = log.read_bytes()
        tampered = text.replace(b'"replicas":3', b'"replicas":9', 1)
        assert tampered != text
        log.write_bytes(tampered)
        print(f"\n# someone edits one record of {log.name} on disk: replicas 3 -> 9")
        run("attest", "--agent", str(sock), "--verifier", url, expect=1,
            say="the next attestation: the log no longer replays to the signed RTMR3, and the verifier says why")
    finally:
        for proc in (verifier, agent):
            if proc is not None:
                stop(proc)
    print("\n# done: the agent and the verifier are stopped")


if __name__ == "__main__":
    main()
