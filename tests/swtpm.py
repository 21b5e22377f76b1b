"""A throw-away swtpm (TPM 2.0 emulator) on a free loopback port pair.

    with Swtpm() as tpm:
        TpmRegisterSet(tpm.tcti)

swtpm's TCTI in tpm2-tss always talks to the control channel on the server
port + 1, so the pair (P, P+1) must both be free.  We find P by binding port 0
and checking P+1 (see ``_free_port_pair`` for the fallback), and start swtpm
again on a new pair if it still loses a race for either port.  The state
directory is fresh per instance, so every Swtpm starts from a cleared TPM
(``--flags not-need-init,startup-clear``: already powered on and started).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class SwtpmError(RuntimeError):
    pass


def _pair_is_free(host: str, port: int) -> bool:
    with socket.socket() as a, socket.socket() as b:
        try:
            a.bind((host, port))
            b.bind((host, port + 1))
        except OSError:
            return False
        return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _free_port_pair(host: str) -> int:
    """A port P such that P and P+1 are both free on host right now.

    First as asked of the kernel (bind to port 0).  But the swtpm TCTI opens
    one TCP connection per TPM command, so after a busy test the ephemeral
    range holds thousands of TIME_WAIT client ports, which block bind(); Linux
    hands bind(0) odd ports and connect() even ones, so P+1 is exactly the
    kind of port that is taken.  Then fall back to random pairs just below the
    ephemeral range, where no client connection ever lands.
    """
    for _ in range(10):
        with socket.socket() as a:
            a.bind((host, 0))
            port = a.getsockname()[1]
        if port < 65535 and _pair_is_free(host, port):
            return port
    low, _high = _ephemeral_range()
    for _ in range(100):
        port = random.randrange(max(1024, low - 16384), low - 2)
        if _pair_is_free(host, port):
            return port
    raise SwtpmError("no free loopback port pair for swtpm")


class Swtpm:
    """Run ``swtpm socket --tpm2`` for the life of a ``with`` block."""

    HOST = "127.0.0.1"

    def __init__(self, *, binary: str = "swtpm", start_timeout: float = 5.0, attempts: int = 3) -> None:
        self.binary = binary
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.port: int = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.state_dir: Path | None = None
        self._log: Path | None = None

    @staticmethod
    def available(binary: str = "swtpm") -> bool:
        return shutil.which(binary) is not None

    @property
    def tcti(self) -> str:
        return f"swtpm:host={self.HOST},port={self.port}"

    @property
    def ctrl_port(self) -> int:
        return self.port + 1

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "Swtpm":
        exe = shutil.which(self.binary)
        if exe is None:
            raise SwtpmError(f"{self.binary} is not installed")
        self.state_dir = Path(tempfile.mkdtemp(prefix="tsmr-swtpm-"))
        self._log = self.state_dir / "swtpm.log"
        last = ""
        try:
            for _ in range(self.attempts):
                self.port = _free_port_pair(self.HOST)
                self.proc = subprocess.Popen(
                    [
                        exe, "socket", "--tpm2",
                        "--server", f"type=tcp,port={self.port},bindaddr={self.HOST}",
                        "--ctrl", f"type=tcp,port={self.ctrl_port},bindaddr={self.HOST}",
                        "--tpmstate", f"dir={self.state_dir}",
                        "--flags", "not-need-init,startup-clear",
                        "--log", f"file={self._log}",
                    ],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                )
                if self._wait_ready():
                    return self
                last = self._log.read_text(errors="replace") if self._log.exists() else ""
                self._stop_proc()  # most likely lost a port race: try another pair
            raise SwtpmError(f"swtpm did not start listening within {self.start_timeout}s: {last.strip()}")
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                # The swtpm TCTI needs both channels.  A connect-and-close is
                # harmless: swtpm serves one client, sees EOF, accepts again.
                socket.create_connection((self.HOST, self.ctrl_port), timeout=0.5).close()
                socket.create_connection((self.HOST, self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def _stop_proc(self, timeout: float = 3.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()  # always reap

    def stop(self) -> None:
        self._stop_proc()
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None

    def __enter__(self) -> "Swtpm":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Swtpm {self.tcti} pid={self.proc.pid if self.proc else None}>"


__all__ = ["Swtpm", "SwtpmError"]
