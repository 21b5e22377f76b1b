"""The tsmr demo: a workload in an (emulated) TDX guest records what it does through the guest
agent; a relying party challenges it, the agent produces evidence, the verifier appraises it and
answers with a signed result; then one log record is tampered with and the verifier says so.
The verifier affirms only what reference values cover: the owner predicts them from the image they
built (firmware, kernel, initrd, command line) and the workload's events; when the same image is
launched with another command line, the verifier names the component that differs.

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


FIRMWARE = "/usr/share/ovmf/OVMF.fd"  # Debian's ovmf: an edk2 OVMF that carries TDX metadata
CMDLINE = "console=hvc0 root=/dev/vda1 ro"


def main() -> None:
    state = Path(os.environ["TSMR_STATE_DIR"])
    logs = Path(os.environ["TSMR_LOG_DIR"])
    work = state.parent
    kernel = os.environ.get("TSMR_KERNEL_IMAGE", "")
    for path, how in ((FIRMWARE, "Debian package ovmf"), (kernel, "tools/fetch-kernel, or set TSMR_KERNEL_IMAGE")):
        if not path or not os.path.isfile(path):
            raise SystemExit(f"the demo boots a real image: {path or 'TSMR_KERNEL_IMAGE'} is missing ({how})")
    print("tsmr demo on an emulated Intel TDX guest (nothing here is hardware-backed)")
    work.mkdir(parents=True, exist_ok=True)
    initrd = work / "initrd.img"
    initrd.write_bytes(b"a stand-in initrd: the EFI stub measures whatever bytes it loads\n" * 64)
    image = ["--firmware", FIRMWARE, "--kernel", kernel, "--initrd", str(initrd)]
    boot = work / "boot.json"
    run("predict", "tdx", *image, "--cmdline", CMDLINE, "--id", "my-image-v1", "-o", str(boot),
        say="the owner predicts what their image measures, from what they built: Debian's OVMF, a Debian "
            "kernel, an initrd and a command line (MRTD from the firmware; RTMR1/RTMR2 from the kernel's "
            "Authenticode digest, the command line and the initrd)")
    run("predict", "tdx", *image, "--cmdline", CMDLINE)
    run("emulate", "init", "--profile", "tdx", *image, "--cmdline", CMDLINE,
        say="the emulated TD launches that image: MRTD and RTMR1/RTMR2 are measured as a real launch would, "
            "and the firmware's event log (CCEL) records each event")

    root = state / "emulator" / "tdx" / "qe" / "root.pem"
    sock = work / "agent.sock"
    config = work / "agent.json"
    config.write_text(json.dumps({
        "backend": "emulated:tdx", "registers": ["rtmr3"],
        "rules": [{"uid": os.getuid(), "domains": ["example.com/*"], "read": True, "evidence": True}],
    }, indent=1))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database = f"sqlite:///{work / 'verifier.db'}"
    agent = verifier = None
    try:
        agent = start("the guest agent: the only writer of RTMR3 and its log; programs talk to it "
                      f"over a Unix socket (rules in {config.name}: this uid may record example.com/* events)",
                      "agent", "--socket", str(sock), "--config", str(config), ready=sock.exists)
        # The emulator's quotes chain to a test root made in the state directory: the verifier trusts
        # it because it is told to, never by default; the collateral the emulator issued under that
        # root lets it check CRLs and the TCB status as it would for a real TD.
        verifier = start("the verifier (SQLite), trusting the emulator's test root and collateral explicitly",
                         "serve", "--port", str(port), "--database", database,
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
                "what MRTD and the RTMRs may hold, so the answer is a warning (refvals.uncovered), never affirming")
        workload = work / "workload.json"
        workload.write_text(json.dumps({
            "format": "tsmr-refvals", "version": 1, "id": "workload-v1",
            "events": [{"domain": "example.com/app", "operation": "deploy", "content": '.*"image":"alpine".*'},
                       {"domain": "example.com/app", "operation": "config"}]}, indent=1) + "\n")
        print(f"\n# the workload's owner says which runtime events it records ({workload.name}):")
        print(workload.read_text(), end="")
        refvals = work / "refvals.json"
        run("refvals", "combine", str(boot), str(workload), "--id", "my-image-v1+workload-v1", "-o", str(refvals),
            say="the predicted boot and the workload's events become one set of reference values ...")
        run("refvals", "import", "default", str(refvals), "--database", database,
            say="... stored as the verifier's reference values")

        run("challenge", "--verifier", url, say="the relying party asks the verifier for a single-use nonce")
        ear = work / "result.jwt"
        run("attest", "--agent", str(sock), "--verifier", url, "--ear", str(ear),
            say="... the agent quotes the registers over a fresh nonce with its logs; the verifier checks the "
                "quote, replays every log against it, compares MRTD and the RTMRs with the predicted values, "
                "applies its policy and signs the result (EAR)")
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

        stop(agent)
        agent = None
        run("emulate", "reset", "--profile", "tdx", say="the TD is shut down (its runtime log goes with it) ...")
        other = CMDLINE + " init=/bin/sh"
        run("emulate", "init", "--profile", "tdx", *image, "--cmdline", other,
            say="... and launched again from the same firmware, kernel and initrd, but someone added "
                "'init=/bin/sh' to the command line")
        agent = start("the agent starts again, and the workload records the same events",
                      "agent", "--socket", str(sock), "--config", str(config), ready=sock.exists)
        run("record", "--agent", str(sock), "rtmr3", *events)
        out = run("attest", "--agent", str(sock), "--verifier", url, expect=1,
                  say="its attestation: MRTD, RTMR1 and RTMR3 match, RTMR2 does not, and the verifier names the "
                      "component that differs: the command line")
        assert "(cmdline)" in out, "the verifier did not name the command line"
    finally:
        for proc in (verifier, agent):
            if proc is not None:
                stop(proc)
    print("\n# done: the agent and the verifier are stopped")


if __name__ == "__main__":
    main()
