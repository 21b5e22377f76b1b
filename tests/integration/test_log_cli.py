"""The runtime log from the command line, as a user meets it: `tsmr extend` with its default logging,
`tsmr log append -`, `tsmr emulate reset`, and a TCG2 export read back by `tsmr eventlog`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TSMR = [os.path.join(os.path.dirname(sys.executable), "tsmr")]
SAMPLE = ["--backend", "emulated:sample"]
RTMR1_AT_BOOT = b"rtmr1".ljust(48, b"\0")  # the kernel sample's initial rtmr1 (tsm_mr_sample.c)


def tsmr(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(TSMR + list(args), capture_output=True, text=True, input=input, timeout=60)


def ok(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    r = tsmr(*args, input=input)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def rtmr1() -> bytes:
    return bytes.fromhex(json.loads(ok("read", "rtmr1", "--json", *SAMPLE).stdout)["banks"]["sha384"])


@pytest.fixture
def sample(state_dir: Path) -> Path:
    """A fresh emulated `sample` profile (the kernel's tsm_mr_sample) and a fresh log directory."""
    ok("emulate", "init", "--profile", "sample")
    return Path(os.environ["TSMR_LOG_DIR"]) / "emulated-sample" / "rtmr1.log"


def test_extend_with_logging_changes_the_register_as_the_kernel_digest_write(sample: Path) -> None:
    """`tsmr extend REG --digest D` (logging on by default) gives H(old || D), as the kernel's write of D
    does, and logs only a '# .EXTEND' directive; the next event gets the sync record, and the log verifies."""
    old = rtmr1()
    assert old == RTMR1_AT_BOOT
    d = hashlib.sha384(b"tsmr extend").digest()
    out = json.loads(ok("extend", "rtmr1", "--digest", d.hex(), "--json", *SAMPLE).stdout)
    want = hashlib.sha384(old + d).digest()
    assert out["banks"] == {"sha384": want.hex()} and rtmr1() == want
    assert out["log"]["lines"] == [f"# .EXTEND sha384/{d.hex()}"] and out["log"]["synced"] is False
    assert sample.read_text() == f"# .EXTEND sha384/{d.hex()}\n"
    # directives alone anchor nothing: the log replays, but proves nothing yet
    r = tsmr("log", "verify", "rtmr1", "--json", *SAMPLE)
    assert r.returncode == 1 and json.loads(r.stdout)["banks"]["sha384"]["status"] == "unanchored"
    # a second extend in the text form prints the new value and warns of nothing
    d2 = hashlib.sha384(b"again").digest()
    r = ok("extend", "rtmr1", "--digest", d2.hex(), *SAMPLE)
    want = hashlib.sha384(want + d2).digest()
    assert r.stdout == f"rtmr1 sha384:{want.hex()}\n" and r.stderr == ""
    # the next event: a sync record of the register's value first, and the log verifies from there
    out = json.loads(ok("log", "append", "rtmr1", "example.com/app start", "--json", *SAMPLE).stdout)
    sync = f"SYNC sha384/{want.hex()}"
    assert out["lines"] == [sync, "example.com/app start"] and out["synced"] and not out["gap"]
    assert out["first_line"] == 3
    report = json.loads(ok("log", "verify", "rtmr1", "--json", *SAMPLE).stdout)
    assert report["ok"] and report["banks"]["sha384"]["anchor_line"] == 3 and report["gaps"] == []
    # a verifier that knows the launch value replays the directives too: no gap, the register matched
    after = json.loads(ok("read", "rtmr1", "--json", *SAMPLE).stdout)["banks"]["sha384"]
    r = ok("log", "replay", str(sample), "--initial", f"sha384/{RTMR1_AT_BOOT.hex()}", "--expect", f"sha384/{after}",
           "--json")
    assert json.loads(r.stdout)["ok"]


def test_append_from_stdin_skips_blank_lines(sample: Path) -> None:
    r = ok("log", "append", "rtmr1", "-", "--json", *SAMPLE, input="\na b\n\n\nc d\n\n")
    out = json.loads(r.stdout)
    assert out["lines"][1:] == ["a b", "c d"] and out["lines"][0].startswith("SYNC ")
    assert sample.read_text().splitlines()[1:] == ["a b", "c d"]
    ok("log", "verify", "rtmr1", *SAMPLE)
    # a bad line is still named by its line number on standard input
    r = tsmr("log", "append", "rtmr1", "-", *SAMPLE, input="\nok 1\n\n bad\n")
    assert r.returncode == 2 and "standard input line 4" in r.stderr
    # nothing but blank lines: nothing to append
    r = tsmr("log", "append", "rtmr1", "-", *SAMPLE, input="\n\n")
    assert r.returncode == 2 and "nothing to append" in r.stderr


def test_emulate_reset_resets_the_runtime_logs_too(sample: Path) -> None:
    """Like a reboot (registers back to their boot values, /run emptied): the same steps run twice
    give the same log and a log that verifies, instead of a gap."""

    def steps() -> tuple[str, str]:
        ok("extend", "rtmr1", "--digest", "11" * 48, *SAMPLE)
        ok("log", "append", "rtmr1", "example.com/app deploy", *SAMPLE)
        r = tsmr("log", "verify", "rtmr1", *SAMPLE)
        assert r.returncode == 0, r.stdout + r.stderr
        return sample.read_text(), rtmr1().hex()

    first = steps()
    r = ok("emulate", "reset", "--profile", "sample", "--json")
    assert json.loads(r.stdout) == {"profile": "sample", "reset": True, "logs_removed": [str(sample)]}
    assert rtmr1() == RTMR1_AT_BOOT
    assert not any(sample.parent.iterdir())  # the log, its intent file: all gone
    assert steps() == first
    r = ok("emulate", "reset", "--profile", "sample")
    assert f"its runtime logs removed: {sample}" in r.stdout
    r = ok("emulate", "reset", "--profile", "sample")  # no log left: nothing to say about logs
    assert r.stdout.strip() == "emulator profile sample reset"


def test_emulate_reset_leaves_other_profiles_logs_alone(state_dir: Path) -> None:
    ok("emulate", "init", "--profile", "sample")
    ok("emulate", "init", "--profile", "tdx")
    ok("log", "append", "rtmr3", "a b", "--backend", "emulated:tdx")
    ok("log", "append", "rtmr1", "a b", *SAMPLE)
    ok("emulate", "reset", "--profile", "sample")
    ok("log", "verify", "rtmr3", "--backend", "emulated:tdx")
    assert not (Path(os.environ["TSMR_LOG_DIR"]) / "emulated-sample" / "rtmr1.log").exists()


def test_emulate_reset_refuses_while_an_agent_owns_a_log(sample: Path) -> None:
    from tsmr.backends.emulated import EmulatedRegisterSet
    from tsmr.runtime_log.store import RuntimeLog

    ok("log", "append", "rtmr1", "a b", *SAMPLE)
    before = rtmr1()
    with EmulatedRegisterSet("sample") as rs, RuntimeLog(rs, "rtmr1") as log:
        log.claim("agent")
        r = tsmr("emulate", "reset", "--profile", "sample")
        assert r.returncode == 3 and "owned by agent pid" in r.stderr and "stop it first" in r.stderr
        assert rtmr1() == before and sample.exists()  # nothing changed
    ok("emulate", "reset", "--profile", "sample")
    assert not sample.exists()


def test_tcg2_export_reads_back_as_tcg2_with_its_directives(sample: Path, tmp_path: Path) -> None:
    """A TCG2 export of a one-bank SHA-384 log (which a CCEL also is) is read as TCG2, and its
    '.EXTEND' records are shown as directives, not as records whose digest does not match their data."""
    d = "ab" * 48
    ok("log", "append", "rtmr1", "example.com/app start", *SAMPLE)
    ok("extend", "rtmr1", "--digest", d, *SAMPLE)
    ok("log", "append", "rtmr1", "example.com/app next", *SAMPLE)
    out = tmp_path / "rtmr1.tcg2"
    ok("log", "export", "rtmr1", "--format", "tcg2", "-o", str(out), *SAMPLE)
    shown = json.loads(ok("eventlog", "show", str(out), "--json").stdout)
    assert shown["format"] == "tcg2"
    events = shown["events"]
    assert [e["register"] for e in events] == ["rtmr1"] * 4
    assert [e["digest_matches_data"] for e in events] == [True, True, None, True]
    directive = events[2]
    assert directive["details"]["directive"] == ".EXTEND" and directive["details"]["extends"] == {"sha384": d}
    assert directive["summary"].startswith(".EXTEND") and directive["digests"] == {"sha384": d}
    table = ok("eventlog", "show", str(out)).stdout
    assert ": tcg2, 4 events" in table and "BAD" not in table
    # and it replays to the register, from the value the sample's rtmr1 has at boot
    replayed = json.loads(ok("eventlog", "replay", str(out), "--json").stdout)
    assert replayed["registers"]["rtmr1"]["sha384"] != rtmr1().hex()  # a TCG2 replay starts from zero ...
    r = ok("log", "export", "rtmr1", "--format", "tcg2", "-o", str(out), *SAMPLE)
    assert "non-zero" in r.stderr  # ... as the export warned
