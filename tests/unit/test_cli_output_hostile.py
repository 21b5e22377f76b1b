"""What the CLI shows must be what was hashed: data is never read as markup, and never steers the terminal.

Records are written with the CLI into a real log on the emulator, then every command that shows
them is run the way a user runs it; the printed text must hold each record byte for byte.  File
and register names in error messages, and event data of binary logs, get the same treatment.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tsmr import HashAlg
from tsmr.formats import ima, tcg2

TSMR = [os.path.join(os.path.dirname(sys.executable), "tsmr")]
EMU = ["--backend", "emulated:tdx"]
WIDE = {"COLUMNS": "400"}

# Each is a valid record: what a workload may log, and so what a verifier must see as it is.
HOSTILE = [
    "example.com/app deploy [bold]alpine[/bold]",
    "example.com/app deploy [conceal]evil[/conceal]",
    "example.com/app x evil[/] op",
    "example.com/app link [link=https://example.com/]click[/link]",
    "example.com/app emoji :thumbs_up: :smile:",
    r"example.com/app slash \[bold]x\[/bold] \\[red]y[/red]",
    'example.com/app deploy {"image":"[red]alpine[/]"}',
]


def tsmr(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **WIDE)
    return subprocess.run(TSMR + list(args), capture_output=True, text=True, env=env, input=input, timeout=60)


@pytest.fixture
def logged(state_dir: Path) -> Path:
    """The emulator with every hostile record in the rtmr3 log; the log's path."""
    r = tsmr("emulate", "init", "--profile", "tdx")
    assert r.returncode == 0, r.stderr
    r = tsmr("log", "append", "rtmr3", *HOSTILE, *EMU, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return Path(json.loads(r.stdout)["log"])


def _no_terminal_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0
           or c in "\u2028\u2029\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]
    assert not bad, f"raw control characters reached the terminal: {bad!r}"


def test_log_show_prints_every_record_as_hashed(logged: Path) -> None:
    r = tsmr("log", "show", "rtmr3", *EMU)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for rec in HOSTILE:
        assert rec in r.stdout, rec
    r = tsmr("log", "show", "rtmr3", *EMU, "--json")
    assert [x["record"] for x in json.loads(r.stdout) if x["kind"] == "event"] == HOSTILE
    assert logged.read_text().splitlines()[1:] == HOSTILE  # what was hashed


def test_verifying_commands_show_records_and_do_not_crash(logged: Path, state_dir: Path, tmp_path: Path) -> None:
    r = tsmr("log", "verify", "rtmr3", *EMU)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    r = tsmr("log", "replay", str(logged))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr

    # The log as another format reads it: the summary column is the record.
    r = tsmr("eventlog", "show", str(logged), "--format", "tsmr", "--register", "rtmr3")
    assert r.returncode == 0, r.stdout + r.stderr
    for rec in HOSTILE:
        assert rec in r.stdout, rec

    bundle = tmp_path / "bundle.json"
    r = tsmr("attest", "--nonce", "ab" * 32, "-o", str(bundle), *EMU)
    assert r.returncode == 0, r.stderr
    root = state_dir / "emulator" / "tdx" / "qe" / "root.pem"
    r = tsmr("verify", str(bundle), "--trust-root", str(root))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "matched" in r.stdout

    # The appraisal splits records into domain, operation and content: the content is shown as logged.
    r = tsmr("appraise", str(bundle), "--trust-root", str(root))
    assert "Traceback" not in r.stderr and r.returncode in (0, 1), r.stdout + r.stderr
    for rec in HOSTILE:
        content = rec.split(" ", 2)[2]
        assert content in r.stdout, content


def test_names_with_brackets_in_error_messages(state_dir: Path, tmp_path: Path) -> None:
    assert tsmr("emulate", "init", "--profile", "tdx").returncode == 0
    r = tsmr("read", "rtmr[x]", *EMU)
    assert r.returncode == 2 and "'rtmr[x]'" in r.stderr, r.stderr
    missing = str(tmp_path / "no[such]" / "log[x].bin")
    r = tsmr("eventlog", "show", missing)
    assert r.returncode == 2 and f"cannot read {missing}:" in r.stderr, r.stderr
    r = tsmr("log", "verify", "rtmr3", "--log-dir", str(tmp_path / "[bold]logs"), *EMU)
    assert "[bold]logs" in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr


def test_the_tpm_extra_hint_keeps_its_brackets(state_dir: Path) -> None:
    # Without tpm2-pytss (an optional extra): blocking the import is how Python says a module is absent.
    code = ("import sys; sys.modules['tpm2_pytss'] = None; sys.argv = ['tsmr', 'read', 'pcr16', '--backend', 'tpm'];"
            "from tsmr.cli.main import main; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, **WIDE))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "pip install 'tsmr[tpm]'" in r.stderr, r.stderr


def test_control_characters_in_event_data_and_file_names_are_shown_escaped(tmp_path: Path) -> None:
    # An IMA entry names a file; file names may hold any byte but '/' and NUL.
    name = b"/usr/bin/evil\x1b]0;pwned\x07\x1b[2J[bold]x[/]\xe2\x80\xae\xc2\x9b"
    entry = ima.build_entry("ima-ng", [ima.digest_field("sha256", hashlib.sha256(b"x").digest()), ima.name_field(name)])
    path = tmp_path / "ima\x1b[31m.bin"
    path.write_bytes(ima.encode_binary([entry]))
    r = tsmr("eventlog", "show", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    _no_terminal_controls(r.stdout)
    assert "ima\\x1b[31m.bin" in r.stdout  # the title
    assert "/usr/bin/evil\\x1b]0;pwned\\x07\\x1b[2J[bold]x[/]<U+202E>\\x9b" in r.stdout

    # Event data that decodes as text, with markup in it, in a TCG2 log.
    data = b"[bold]alpine[/bold] evil[/] :smile:"
    event = tcg2.TCG2Event(16, tcg2.EV_ACTION, ((int(HashAlg.SHA256), hashlib.sha256(data).digest()),), data)
    log = tmp_path / "tcg2[x].bin"
    log.write_bytes(tcg2.encode_log([event], [HashAlg.SHA256]))
    r = tsmr("eventlog", "show", str(log))
    assert r.returncode == 0, r.stdout + r.stderr
    assert data.decode() in r.stdout and str(log) in r.stdout

    # Errors name such files visibly too.
    r = tsmr("eventlog", "show", str(tmp_path / "gone\x1b[2J\u202e.bin"))
    assert r.returncode == 2
    _no_terminal_controls(r.stderr)
    assert "gone\\x1b[2J<U+202E>.bin" in r.stderr


HIDDEN = {
    "\u0085": "U+0085 NEXT LINE (NEL)",
    "\u009b": "U+009B CONTROL SEQUENCE INTRODUCER (CSI)",
    "\u2028": "U+2028 LINE SEPARATOR",
    "\u2029": "U+2029 PARAGRAPH SEPARATOR",
    "\u202e": "U+202E RIGHT-TO-LEFT OVERRIDE",
    "\u2067": "U+2067 RIGHT-TO-LEFT ISOLATE",
}


def test_log_append_refuses_hidden_characters(state_dir: Path) -> None:
    assert tsmr("emulate", "init", "--profile", "tdx").returncode == 0
    for ch, name in HIDDEN.items():
        r = tsmr("log", "append", "rtmr3", "example.com/app ok", f"example.com/app deploy x{ch}y", *EMU)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"{name} at character 24" in r.stderr, r.stderr
        _no_terminal_controls(r.stderr)
    r = tsmr("read", "rtmr3", "--bank", "sha384", *EMU)
    assert r.stdout.strip() == "00" * 48  # nothing was extended, not even the good record before it


def test_a_log_with_hidden_characters_replays_and_is_flagged(logged: Path) -> None:
    # A writer that broke the rules: its record is in the log and in the register, as it was hashed.
    hostile = "example.com/app deploy \u202egpj.exe"
    with logged.open("ab") as fh:
        fh.write(hostile.encode() + b"\n")
    digest = hashlib.sha384(hostile.encode()).hexdigest()
    assert tsmr("extend", "rtmr3", "--digest", digest, "--no-log", *EMU).returncode == 0

    r = tsmr("log", "show", "rtmr3", *EMU)
    assert r.returncode == 0, r.stdout + r.stderr
    _no_terminal_controls(r.stdout + r.stderr)
    assert "example.com/app deploy <U+202E>gpj.exe" in r.stdout
    assert "event, hidden characters" in r.stdout
    assert f"line {len(HOSTILE) + 2} holds U+202E RIGHT-TO-LEFT OVERRIDE at character 23" in r.stderr
    r = tsmr("log", "show", "rtmr3", *EMU, "--json")
    last = json.loads(r.stdout)[-1]
    assert last["record"] == hostile and last["hidden"] == [{"position": 23, "character": "U+202E RIGHT-TO-LEFT OVERRIDE"}]

    r = tsmr("log", "verify", "rtmr3", *EMU, "--json")
    assert r.returncode == 0, r.stdout + r.stderr  # hashed as it is: the register matches
    report = json.loads(r.stdout)
    assert report["banks"]["sha384"]["status"] == "matched" and report["hidden_lines"] == [len(HOSTILE) + 2]
    r = tsmr("log", "verify", "rtmr3", *EMU)
    assert f"rtmr3: line {len(HOSTILE) + 2} holds characters a writer must refuse" in r.stdout


def test_the_agent_refuses_hidden_characters(state_dir: Path, tmp_path: Path) -> None:
    from agent.agent_harness import AgentFactory

    agents = AgentFactory(state_dir, tmp_path / "logs")
    try:
        agent = agents.start()
        for ch, name in HIDDEN.items():
            r = tsmr("record", "rtmr3", f"example.com/app deploy x{ch}y", "--agent", agent.socket)
            assert r.returncode == 2, r.stdout + r.stderr
            assert f"{name} at character 24" in r.stderr, r.stderr
        # Records the agent builds from parts are checked as whole records.
        r = tsmr("record", "rtmr3", "--domain", "example.com/app", "--operation", "deploy",
                 "--content-text", "x\u202ey", "--agent", agent.socket)
        assert r.returncode == 2 and "U+202E RIGHT-TO-LEFT OVERRIDE" in r.stderr, r.stdout + r.stderr
        assert agents.log_text() == "" and agents.register_value() == bytes(48)
    finally:
        agents.close()


def test_policy_show_escapes_what_export_keeps(state_dir: Path, tmp_path: Path) -> None:
    rego = "package tsmr\n\n# by \x1b]0;pwned\x07 \u202e [bold]x[/]\ndefault allow := true\n"
    path = tmp_path / "p.rego"
    path.write_text(rego)
    db = ["--database", f"sqlite:///{tmp_path / 'verifier.db'}"]
    assert tsmr("policy", "import", "evil", str(path), *db).returncode == 0
    r = tsmr("policy", "show", "evil", *db)
    assert r.returncode == 0, r.stderr
    _no_terminal_controls(r.stdout)
    assert r.stdout == rego.replace("\x1b", "\\x1b").replace("\x07", "\\x07").replace("\u202e", "<U+202E>")
    assert tsmr("policy", "export", "evil", *db).stdout == rego  # the exact bytes, for files and pipes
