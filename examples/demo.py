"""The tsmr demo: an application keeps a verifiable log of what it measured into RTMR3,
and a relying party verifies a quote over the registers together with that log.

Run by `make demo` with TSMR_STATE_DIR and TSMR_LOG_DIR pointing at fresh
directories, on the built-in emulator of an Intel TDX guest.  Each step prints
the command a user would type, then runs it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys

TSMR = [os.path.join(os.path.dirname(sys.executable), "tsmr")]
B = ["--backend", "emulated:tdx"]


def run(*args: str, expect: int = 0, say: str = "") -> str:
    if say:
        print(f"\n# {say}")
    print(f"$ tsmr {shlex.join(args)}", flush=True)
    proc = subprocess.run(TSMR + list(args), text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if proc.returncode != expect:
        raise SystemExit(f"demo step failed: exit code {proc.returncode}, expected {expect}")
    if expect:
        print(f"(exit code {proc.returncode}, as expected)")
    return proc.stdout


def main() -> None:
    print("tsmr demo on an emulated Intel TDX guest (nothing here is hardware-backed)")
    run("emulate", "init", "--profile", "tdx", say="a fresh emulated TD: every RTMR starts at zero")
    run("registers", *B)

    events = ['example.com/app deploy {"image":"alpine","digest":"sha256:4f1c"}', 'example.com/app config {"replicas":3}']
    run("log", "append", "rtmr3", *events, *B,
        say="the application records two events: each line is hashed and extended into RTMR3, durably logged")
    value = bytes.fromhex(run("read", "rtmr3", "--bank", "sha384", *B).strip())

    # Independent check with hashlib: SYNC record, then each event, per spec/runtime-log.md section 3.
    state = bytes(48)
    for line in ["SYNC sha384/" + "00" * 48, *events]:
        state = hashlib.sha384(state + hashlib.sha384(line.encode()).digest()).digest()
    assert state == value, "RTMR3 does not equal the hashlib replay of the log"
    print("# checked: RTMR3 equals a hashlib replay of the three logged lines")

    run("log", "show", "rtmr3", *B)
    run("log", "verify", "rtmr3", *B, say="a verifier replays the log and compares it with the register")

    rogue = hashlib.sha384(b"something nobody logged").hexdigest()
    run("extend", "rtmr3", "--no-log", "--digest", rogue, *B, say="someone extends RTMR3 behind the log's back")
    run("log", "verify", "rtmr3", *B, expect=1, say="the log no longer explains the register")
    run("log", "append", "rtmr3", "example.com/app restart", *B,
        say="the next append notices and records the gap with a sync record before its event")
    run("log", "verify", "rtmr3", *B, expect=1, say="the log verifies again, but the gap is reported")
    run("log", "verify", "rtmr3", "--allow-gaps", "--json", *B, say="a relying party that accepts gaps sees the details")

    # End to end: the TD produces a quote over its registers, bundled with its log; a verifier checks both.
    state = os.environ.get("TSMR_STATE_DIR", "")
    bundle = os.path.join(os.path.dirname(state) or ".", "bundle.json")
    nonce = hashlib.sha256(b"relying party challenge").hexdigest() * 2
    run("attest", "--nonce", nonce, "-o", bundle, *B,
        say="attestation: a TDX quote over the registers (report data = the nonce) and the runtime log, in one bundle")
    run("verify", bundle, expect=1, say="a verifier does not trust the emulator's test root by default")
    root = os.path.join(state, "emulator", "tdx", "qe", "root.pem")
    run("verify", bundle, "--trust-root", root, expect=1,
        say="trusting it explicitly: the quote verifies, RTMR3 matches its log, and the gap still fails the check")


if __name__ == "__main__":
    main()
