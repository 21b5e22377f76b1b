"""Inputs that never end: the real ``tsmr`` command on /dev/zero, endless standard input and FIFOs.

Every command reads its files through one bounded reader: over the input limit
(``TSMR_MAX_INPUT``, 64 MiB by default) it exits 2 and says how to raise the limit;
a FIFO nobody writes to is given up after ``TSMR_INPUT_TIMEOUT`` seconds.  The
commands run with an address-space limit, so that a reader without a bound fails
with MemoryError (exit 1) instead of eating the machine's memory, and each run has
a subprocess timeout.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

TSMR = [os.path.join(os.path.dirname(sys.executable), "tsmr")]
AS_LIMIT = 2 << 30  # far above what tsmr needs (~400 MiB of address space), far below /dev/zero's size


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def tsmr(*args: str, env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    full.update(env or {})
    return subprocess.run(TSMR + list(args), capture_output=True, text=True, env=full, stdin=stdin, timeout=timeout,
                          preexec_fn=_cap_memory)


SMALL = {"TSMR_MAX_INPUT": "1M"}  # most tests: 1 MiB, so that refusing takes no time

# Every command that reads a file named on its command line (the file is the last argument).
COMMANDS = [
    ["eventlog", "show"],
    ["eventlog", "replay"],
    ["eventlog", "replay", "--fast"],
    ["eventlog", "replay", "--expect"],  # followed by the log below
    ["verify"],
    ["appraise"],
    ["appraise", "--policy"],  # followed by the bundle below
    ["refvals", "learn", "-o", "-"],
    ["quote", "show"],
    ["quote", "verify"],
    ["ear", "verify", "--jwks"],  # followed by the token below
    ["policy", "import", "p"],
    ["refvals", "import", "r"],
]


def _args(cmd: list[str], path: str, tmp_path: Path) -> list[str]:
    """The command line with ``path`` as the input under test (other inputs are small real files)."""
    other = tmp_path / "other"  # read before the input under test: it must be valid as far as it is read
    other.write_text({"--expect": "SYNC sha384/" + "00" * 48 + "\n", "--policy": "{}"}.get(cmd[-1], "x\n"))
    if cmd[-1] in ("--expect", "--policy", "--jwks"):
        return cmd + [path, str(other)]
    if cmd[:2] in (["policy", "import"], ["refvals", "import"]):
        return cmd + [path, "--database", f"sqlite:///{tmp_path / 'v.db'}"]
    return cmd + [path]


@pytest.mark.parametrize("cmd", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_dev_zero_is_refused_with_exit_2(cmd: list[str], tmp_path: Path) -> None:
    r = tsmr(*_args(cmd, "/dev/zero", tmp_path), env=SMALL)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "/dev/zero is larger than the input limit of 1 MiB (1,048,576 bytes)" in r.stderr
    assert "TSMR_MAX_INPUT" in r.stderr


def test_the_default_limit_is_64_mib(tmp_path: Path) -> None:
    r = tsmr("eventlog", "show", "/dev/zero")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "larger than the input limit of 64 MiB (67,108,864 bytes)" in r.stderr


def test_endless_standard_input(tmp_path: Path) -> None:
    with open("/dev/zero", "rb") as zero:
        r = tsmr("eventlog", "show", "-", env=SMALL, stdin=zero)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "standard input is larger than the input limit of 1 MiB" in r.stderr
    with open("/dev/zero", "rb") as zero:
        r = tsmr("log", "append", "rtmr3", "-", "--backend", "emulated:tdx", "--state-dir", str(tmp_path / "s"),
                 "--log-dir", str(tmp_path / "logs"), env=SMALL, stdin=zero)
    assert r.returncode == 2 and "larger than the input limit" in r.stderr, r.stderr[-2000:]


def _writer(fifo: Path, data: bytes) -> threading.Thread:
    def write() -> None:
        try:
            with open(fifo, "wb") as fh:
                fh.write(data)
        except BrokenPipeError:  # the reader stopped at its limit: expected
            pass

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_a_fifo_with_a_writer_of_more_than_the_limit(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t = _writer(fifo, b"\0" * (3 << 20))
    r = tsmr("appraise", str(fifo), env=SMALL)
    t.join(timeout=30)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"the bundle {fifo} is larger than the input limit of 1 MiB" in r.stderr


def test_a_fifo_times_out_without_a_writer_and_is_read_with_one(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (["eventlog", "show", str(fifo)], ["log", "replay", str(fifo)], ["quote", "show", str(fifo)]):
        r = tsmr(*args, env={"TSMR_INPUT_TIMEOUT": "0.5"})
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert f"{fifo}: nothing was written to this FIFO for 0.5 s" in r.stderr
        assert "TSMR_INPUT_TIMEOUT" in r.stderr
    # With a writer, the same FIFO is read like a file.
    log = ("SYNC sha384/" + "00" * 48 + "\nexample.com/app deploy {\"image\":\"alpine\"}\n").encode()
    t = _writer(fifo, log)
    r = tsmr("eventlog", "show", "--json", str(fifo), env={"TSMR_INPUT_TIMEOUT": "30"})
    t.join(timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"example.com/app deploy' in r.stdout


def test_bad_limit_values_are_usage_errors(tmp_path: Path) -> None:
    r = tsmr("eventlog", "show", "/dev/null", env={"TSMR_MAX_INPUT": "lots"})
    assert r.returncode == 2 and "TSMR_MAX_INPUT='lots' is not a size" in r.stderr, r.stderr[-2000:]
