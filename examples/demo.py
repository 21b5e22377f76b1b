"""The tsmr demo: measurement registers of an emulated TDX guest.

Run by `make demo` with TSMR_STATE_DIR pointing at a fresh directory.  Each
step prints the command a user would type, then runs it.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys

TSMR = [os.path.join(os.path.dirname(sys.executable), "tsmr")]
BACKEND = ["--backend", "emulated:tdx"]


def run(*args: str) -> str:
    cmd = TSMR + list(args)
    print(f"\n$ tsmr {shlex.join(args)}", flush=True)
    proc = subprocess.run(cmd, text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"demo step failed with exit code {proc.returncode}")
    return proc.stdout


def main() -> None:
    print("tsmr demo: the registers of an emulated Intel TDX guest (nothing here is hardware-backed)")
    run("emulate", "init", "--profile", "tdx")
    run("registers", *BACKEND)

    event = b"example.com/app deploy {\"image\":\"alpine\"}"
    digest = hashlib.sha384(event).hexdigest()
    print(f"\nExtending RTMR3 with SHA-384 of {event.decode()!r}")
    before = bytes.fromhex(run("read", "rtmr3", "--bank", "sha384", *BACKEND).strip())
    after = bytes.fromhex(run("extend", "rtmr3", "--digest", digest, *BACKEND).split(":")[-1].strip())
    expected = hashlib.sha384(before + bytes.fromhex(digest)).digest()
    assert after == expected, "RTMR3 does not equal SHA384(old || digest)"
    print("\nRTMR3 = SHA384(RTMR3_old || digest): checked with hashlib")
    run("read", "rtmr3", "--json", *BACKEND)


if __name__ == "__main__":
    main()
