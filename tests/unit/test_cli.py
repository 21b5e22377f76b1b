"""The tsmr command line, run as a user runs it (the installed console script)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TSMR = [os.path.join(os.path.dirname(sys.executable), "tsmr")]


def tsmr(*args: str, env_extra: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(TSMR + list(args), capture_output=True, text=True, env=env, input=input, timeout=60)


@pytest.fixture
def emu(state_dir: Path) -> list[str]:
    r = tsmr("emulate", "init", "--profile", "tdx")
    assert r.returncode == 0, r.stderr
    return ["--backend", "emulated:tdx"]


def test_registers_json_shape(emu: list[str]) -> None:
    r = tsmr("registers", "--json", *emu)
    assert r.returncode == 0, r.stderr
    regs = json.loads(r.stdout)
    rtmr3 = next(x for x in regs if x["name"] == "rtmr3")
    assert rtmr3 == {"name": "rtmr3", "banks": {"sha384": "00" * 48}, "size": 48, "flags": ["readable", "writable", "live"]}
    assert next(x for x in regs if x["name"] == "mrconfigid")["banks"] == {"raw": "00" * 48}


def test_registers_table(emu: list[str]) -> None:
    r = tsmr("registers", *emu)
    assert r.returncode == 0
    assert "emulated:emulated-tdx (not hardware-backed)" in r.stdout
    assert "rtmr3" in r.stdout and "readable,writable,live" in r.stdout and "00" * 48 in r.stdout


def test_extend_then_read(emu: list[str]) -> None:
    d = hashlib.sha384(b"event").hexdigest()
    r = tsmr("extend", "rtmr3", "--digest", d, "--no-log", "--json", *emu)
    assert r.returncode == 0, r.stderr
    want = hashlib.sha384(bytes(48) + bytes.fromhex(d)).hexdigest()
    assert json.loads(r.stdout) == {"name": "rtmr3", "extended": {"sha384": d}, "banks": {"sha384": want}, "log": None}
    r = tsmr("read", "rtmr3", "--json", *emu)
    assert json.loads(r.stdout) == {"name": "rtmr3", "banks": {"sha384": want}}
    r = tsmr("read", "rtmr3", "--bank", "sha384", *emu)
    assert r.stdout == want + "\n"


def test_logged_extend_keeps_the_log_verifying(emu: list[str]) -> None:
    d = "ab" * 48
    r = tsmr("extend", "rtmr2", "--digest", d, "--json", *emu)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["log"]["lines"] == [f"# .EXTEND sha384/{d}"] and out["log"]["synced"] is False
    after = hashlib.sha384(bytes(48) + bytes.fromhex(d)).hexdigest()  # as the kernel's digest write: nothing else
    assert out["banks"]["sha384"] == after
    r = tsmr("log", "append", "rtmr2", "a b", *emu)  # the first event: a sync record of the register first
    assert r.returncode == 0, r.stderr
    r = tsmr("log", "verify", "rtmr2", *emu)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "matched" in r.stdout


def test_backend_from_environment(state_dir: Path) -> None:
    r = tsmr("read", "pcr17", "--bank", "sha1", env_extra={"TSMR_BACKEND": "emulated:tpm"})
    assert r.returncode == 0 and r.stdout == "ff" * 20 + "\n"


def test_multi_bank_extend_and_ambiguity(state_dir: Path) -> None:
    b = ["--backend", "emulated:tpm"]
    r = tsmr("extend", "pcr16", "-d", "sha1:" + "11" * 20, "-d", "sha256/" + "22" * 32, "--no-log", "--json", *b)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["banks"]["sha1"] == hashlib.sha1(bytes(20) + b"\x11" * 20).hexdigest()
    assert out["banks"]["sha256"] == hashlib.sha256(bytes(32) + b"\x22" * 32).hexdigest()
    r = tsmr("extend", "pcr16", "-d", "33" * 32, *b)  # the only bank of that size
    assert r.returncode == 0, r.stderr
    r = tsmr("extend", "pcr16", "-d", "33" * 40, *b)
    assert r.returncode == 2 and "fits none" in r.stderr


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["read", "rtmr9"], 2, "no register named 'rtmr9'"),
        (["read", "../x"], 2, "invalid register name"),
        (["read", "rtmr3", "--bank", "md5"], 2, "unknown hash algorithm 'md5'"),
        (["extend", "rtmr3", "--digest", "00"], 2, "rtmr3:sha384 takes a 48-byte digest, got 1 bytes"),
        (["extend", "rtmr3", "--digest", "zz"], 2, "not hexadecimal"),
        (["extend", "mrtd", "--digest", "00" * 48], 2, "read-only"),
        (["registers", "--backend", "nosuch"], 2, "unknown backend 'nosuch'"),
        (["registers", "--backend", "sysfs:/nonexistent"], 3, "/nonexistent is not a directory"),
        (["registers", "--backend", "emulated:nosuch"], 2, "unknown emulator profile 'nosuch'"),
    ],
)
def test_errors_are_one_sentence_with_exit_codes(emu: list[str], args: list[str], code: int, message: str) -> None:
    extra = [] if "--backend" in args else emu
    r = tsmr(*args, *extra)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_error_json(emu: list[str]) -> None:
    r = tsmr("read", "rtmr9", "--json", *emu)
    assert r.returncode == 2
    assert json.loads(r.stdout)["type"] == "UnknownRegisterError"


def test_usage_error_exit_2() -> None:
    r = tsmr("read")
    assert r.returncode == 2
    r = tsmr("nosuchcommand")
    assert r.returncode == 2


def test_detection_falls_back_to_emulator_with_warning(state_dir: Path) -> None:
    if os.path.exists("/dev/tpmrm0") or any(Path("/sys/class/misc").glob("*/measurements")):
        pytest.skip("this machine has a TPM or TEE, so detection does not fall back to the emulator")
    r = tsmr("read", "rtmr0", "--json")
    assert r.returncode == 0
    assert "nothing it reports is hardware-backed" in r.stderr
    assert json.loads(r.stdout)["name"] == "rtmr0"


def test_emulate_init_reset_and_journal(state_dir: Path) -> None:
    mrtd = hashlib.sha384(b"td").hexdigest()
    r = tsmr("emulate", "init", "--profile", "tdx", "--set", f"mrtd={mrtd}", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["registers"][0] == "mrtd"
    b = ["--backend", "emulated:tdx"]
    assert tsmr("read", "mrtd", "--bank", "sha384", *b).stdout.strip() == mrtd
    tsmr("extend", "rtmr1", "-d", "ab" * 48, "--no-log", *b)
    j = json.loads(tsmr("emulate", "journal", "--profile", "tdx", "--json").stdout)
    assert j == [{"seq": 1, "attribute": "rtmr1:sha384", "digest": "ab" * 48}]
    assert tsmr("emulate", "reset", "--profile", "tdx").returncode == 0
    assert tsmr("read", "rtmr1", "--bank", "sha384", *b).stdout.strip() == "00" * 48
    assert tsmr("read", "mrtd", "--bank", "sha384", *b).stdout.strip() == mrtd
    r = tsmr("emulate", "init", "--profile", "cca", "--hash", "sha512", "--json")
    assert json.loads(r.stdout)["options"] == {"hash": "sha512"}
    assert tsmr("emulate", "init", "--profile", "tdx", "--hash", "sha512").returncode == 2
    assert tsmr("emulate", "reset", "--profile", "sample").returncode == 3  # never initialised


def test_help_texts() -> None:
    for cmd in (["--help"], ["registers", "--help"], ["read", "--help"], ["extend", "--help"], ["emulate", "mount", "--help"]):
        r = tsmr(*cmd)
        assert r.returncode == 0 and "Usage" in r.stdout, cmd
        if cmd != ["--help"]:
            assert "--json" in r.stdout and "--backend" in r.stdout, cmd


def test_log_commands(emu: list[str], tmp_path: Path) -> None:
    r = tsmr("log", "append", "rtmr3", "example.com/app deploy", "example.com/app start", "--json", *emu)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["first_line"] == 1 and len(out["lines"]) == 3 and out["synced"] and not out["gap"]
    r = tsmr("log", "append", "rtmr3", "-", *emu, input="one a\ntwo b\n")
    assert r.returncode == 0 and "appended 2 record(s)" in r.stdout
    shown = json.loads(tsmr("log", "show", "rtmr3", "--json", *emu).stdout)
    assert [x["kind"] for x in shown] == ["sync", "event", "event", "event", "event"]
    assert shown[3] == {"line": 4, "kind": "event", "record": "one a"}
    r = tsmr("log", "verify", "rtmr3", "--json", *emu)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    # the log file on its own, against the live value
    value = json.loads(tsmr("read", "rtmr3", "--json", *emu).stdout)["banks"]["sha384"]
    path = json.loads(r.stdout)["log"]
    r = tsmr("log", "replay", path, "--expect", f"sha384/{value}")
    assert r.returncode == 0 and "matched" in r.stdout
    r = tsmr("log", "replay", path, "--expect", "sha384/" + "00" * 48)
    assert r.returncode == 1 and "no prefix of the log matches" in r.stdout
    # exports
    out_file = tmp_path / "rtmr3.tcg2"
    r = tsmr("log", "export", "rtmr3", "--format", "tcg2", "-o", str(out_file), *emu)
    assert r.returncode == 0 and out_file.read_bytes()[8:28] == bytes(20)
    r = tsmr("log", "export", "rtmr3", "--format", "cel-jsonseq", *emu)
    assert r.returncode == 0 and r.stdout.count("\x1e") == 5
    r = tsmr("log", "export", "rtmr3", "--format", "yaml", *emu)
    assert r.returncode == 2 and "unknown export format" in r.stderr


def test_log_append_refuses_bad_input_and_changes_nothing(emu: list[str]) -> None:
    assert tsmr("log", "append", "rtmr3", "first one", *emu).returncode == 0
    before = tsmr("read", "rtmr3", "--json", *emu).stdout
    for args, stdin, message in (
        (["ok", " bad"], None, "leading space"),
        (["-"], "fine\nbad\ttab\n", "standard input line 2"),
        (["-"], "\nfine\n\n bad\n", "standard input line 4"),  # blank lines are skipped, but counted
        (["# comment"], None, "comment"),
    ):
        r = tsmr("log", "append", "rtmr3", *args, *emu, input=stdin)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    assert tsmr("read", "rtmr3", "--json", *emu).stdout == before
    assert len(json.loads(tsmr("log", "show", "rtmr3", "--json", *emu).stdout)) == 2


def test_log_verify_exit_codes_on_gap_and_mismatch(emu: list[str]) -> None:
    tsmr("log", "append", "rtmr1", "a b", *emu)
    tsmr("extend", "rtmr1", "--no-log", "-d", "11" * 48, *emu)
    r = tsmr("log", "verify", "rtmr1", *emu)
    assert r.returncode == 1 and "mismatched" in r.stdout
    tsmr("log", "append", "rtmr1", "c d", *emu)
    r = tsmr("log", "verify", "rtmr1", *emu)
    assert r.returncode == 1 and "gap before line 3" in r.stdout
    assert tsmr("log", "verify", "rtmr1", "--allow-gaps", *emu).returncode == 0
    assert tsmr("log", "verify", "mrtd", *emu).returncode == 2
