"""The exit-code contract, command by command, on the same inputs.

0 success; 1 the evidence, a signature, collateral, a replay or a policy said
no; 2 bad input or usage; 3 the backend or the system failed.  Every command
that takes evidence or logs runs on a good input, a truncated one, a tampered
one that still parses, a missing file and (where it has one) an unreachable
backend or verifier.  The inputs are real: the emulator's TDX quotes,
bundles and runtime log (one truncated quote for ``quote verify``,
``verify``, ``appraise`` and ``refvals learn`` alike), a verifier started
with ``tsmr serve`` on loopback (SQLite), and the shared fixtures' CCEL log.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from service.conftest import Server, free_port

TSMR = os.path.join(os.path.dirname(sys.executable), "tsmr")
NONCE = "5a" * 32


@dataclass
class World:
    """Every input of the table, by name (formatted into the rows' arguments)."""

    paths: dict[str, str]
    env: dict[str, str]

    def run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TSMR, *(a.format(**self.paths) for a in args)], capture_output=True, text=True,
                              env=self.env, timeout=120)


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 1
    return bytes(b)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("exit-codes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    env.update(TSMR_STATE_DIR=str(d / "state"), TSMR_LOG_DIR=str(d / "logs"))
    world = World({}, env)
    p = world.paths

    def must(*args: str) -> subprocess.CompletedProcess[str]:
        r = world.run(list(args))
        assert r.returncode == 0, f"tsmr {' '.join(args)}: {r.stdout}{r.stderr}"
        return r

    init = json.loads(must("emulate", "init", "--profile", "tdx", "--json").stdout)
    p.update(root=init["trust_anchor"], coll=init["collateral"], nonce=NONCE, missing=str(d / "no-such-file"),
             closed=f"http://127.0.0.1:{free_port()}", tmp=str(d))
    trust = ["--trust-root", "{root}", "--collateral", "{coll}"]
    p["trust"] = " ".join(trust)

    # A bundle with a runtime log, its quote, and each spoiled: cut short, or one signed byte changed.
    must("log", "append", "rtmr3", "example.com/app start", "-b", "emulated:tdx")
    must("attest", "--nonce", NONCE, "-o", str(d / "bundle.json"), "-b", "emulated:tdx")
    doc = json.loads((d / "bundle.json").read_text())
    # Reference values learned from it: without them no appraisal of a register that holds something affirms.
    must("refvals", "learn", str(d / "bundle.json"), "-o", str(d / "refvals.json"), *trust)
    p["refvals"] = str(d / "refvals.json")
    quote = base64.b64decode(doc["evidence"]["data"])
    for name, q in (("", quote), ("-trunc", quote[:200]), ("-tamper", _flip(quote, 48 + 200))):
        (d / f"quote{name}.dat").write_bytes(q)
        spoiled = dict(doc, evidence=dict(doc["evidence"], data=base64.b64encode(q).decode()))
        (d / f"bundle{name}.json").write_text(json.dumps(spoiled))
        p[f"quote{name.replace('-', '_')}"] = str(d / f"quote{name}.dat")
        p[f"bundle{name.replace('-', '_')}"] = str(d / f"bundle{name}.json")

    # The runtime log: as written, malformed, and one record changed; each in a log directory of its own.
    log = (d / "logs" / "emulated-tdx" / "rtmr3.log").read_text()
    value = json.loads(must("read", "rtmr3", "-b", "emulated:tdx", "--json").stdout)["banks"]["sha384"]
    p["rtmr3"] = f"sha384/{value}"
    lines = log.splitlines(keepends=True)
    for name, text in (("good", log), ("bad", "SYNC sha384/zz\n" + "".join(lines[1:])),
                       ("tamper", log.replace("start", "stop"))):
        (d / f"{name}.log").write_text(text)
        p[f"log_{name}"] = str(d / f"{name}.log")
        (d / f"logs-{name}" / "emulated-tdx").mkdir(parents=True)
        shutil.copy(d / f"{name}.log", d / f"logs-{name}" / "emulated-tdx" / "rtmr3.log")
        p[f"logs_{name}"] = str(d / f"logs-{name}")
    (d / "logs-empty").mkdir()
    p["logs_empty"] = str(d / "logs-empty")

    # A verifier on loopback (SQLite) trusting the emulator's test root and collateral, and an EAR from it.
    server = Server(d / "verifier", database=f"sqlite:///{d / 'verifier.db'}", trust_root=Path(init["trust_anchor"]))
    with server:
        p["url"] = server.url
        server.cover(json.loads((d / "refvals.json").read_text()))
        attested = json.loads(must("attest", "--verifier", server.url, "-b", "emulated:tdx", "--ear",
                                   str(d / "result.jwt"), "--json").stdout)
        p["used_nonce"] = attested["nonce"]
        ear = (d / "result.jwt").read_text().strip()
        header, claims, sig = ear.split(".")
        mid = len(sig) // 2
        forged_sig = sig[:mid] + ("A" if sig[mid] != "A" else "B") + sig[mid + 1:]
        for name, text in (("", ear), ("-trunc", ear[: len(header) + 1 + len(claims) // 2]),
                           ("-tamper", f"{header}.{claims}.{forged_sig}")):
            (d / f"ear{name}.jwt").write_text(text + "\n")
            p[f"ear{name.replace('-', '_')}"] = str(d / f"ear{name}.jwt")
        yield world


T = ["--trust-root", "{root}", "--collateral", "{coll}"]
GOOD, NO, BAD, SYSTEM = 0, 1, 2, 3

# (command, input, arguments, exit code)
TABLE = [
    ("quote verify", "good", ["quote", "verify", "{quote}", "--nonce", "{nonce}", *T], GOOD),
    ("quote verify", "truncated", ["quote", "verify", "{quote_trunc}", "--nonce", "{nonce}", *T], BAD),
    ("quote verify", "tampered", ["quote", "verify", "{quote_tamper}", "--nonce", "{nonce}", *T], NO),
    ("quote verify", "other nonce", ["quote", "verify", "{quote}", "--nonce", "00" * 32, *T], NO),
    ("quote verify", "missing", ["quote", "verify", "{missing}", *T], BAD),
    ("verify", "good", ["verify", "{bundle}", "--nonce", "{nonce}", *T], GOOD),
    ("verify", "truncated", ["verify", "{bundle_trunc}", "--nonce", "{nonce}", *T], BAD),
    ("verify", "tampered", ["verify", "{bundle_tamper}", "--nonce", "{nonce}", *T], NO),
    ("verify", "other nonce", ["verify", "{bundle}", "--nonce", "00" * 32, *T], NO),
    ("verify", "missing", ["verify", "{missing}", *T], BAD),
    ("appraise", "good", ["appraise", "{bundle}", "--nonce", "{nonce}", "--refvals", "{refvals}", *T], GOOD),
    ("appraise", "no refvals", ["appraise", "{bundle}", "--nonce", "{nonce}", *T], NO),  # a warning: RTMR3 uncovered
    ("appraise", "truncated", ["appraise", "{bundle_trunc}", "--nonce", "{nonce}", *T], BAD),
    ("appraise", "tampered", ["appraise", "{bundle_tamper}", "--nonce", "{nonce}", *T], NO),
    ("appraise", "missing", ["appraise", "{missing}", *T], BAD),
    ("refvals learn", "good", ["refvals", "learn", "{bundle}", "-o", "{tmp}/rv.json", *T], GOOD),
    ("refvals learn", "truncated", ["refvals", "learn", "{bundle_trunc}", "-o", "{tmp}/rv.json", *T], BAD),
    ("refvals learn", "tampered", ["refvals", "learn", "{bundle_tamper}", "-o", "{tmp}/rv.json", *T], NO),
    ("refvals learn", "missing", ["refvals", "learn", "{missing}", "-o", "{tmp}/rv.json", *T], BAD),
    ("log replay", "good", ["log", "replay", "{log_good}", "--expect", "{rtmr3}"], GOOD),
    ("log replay", "malformed", ["log", "replay", "{log_bad}", "--expect", "{rtmr3}"], BAD),
    ("log replay", "tampered", ["log", "replay", "{log_tamper}", "--expect", "{rtmr3}"], NO),
    ("log replay", "missing", ["log", "replay", "{missing}"], BAD),
    ("log verify", "good", ["log", "verify", "rtmr3", "-b", "emulated:tdx", "--log-dir", "{logs_good}"], GOOD),
    ("log verify", "malformed", ["log", "verify", "rtmr3", "-b", "emulated:tdx", "--log-dir", "{logs_bad}"], BAD),
    ("log verify", "tampered", ["log", "verify", "rtmr3", "-b", "emulated:tdx", "--log-dir", "{logs_tamper}"], NO),
    ("log verify", "missing", ["log", "verify", "rtmr3", "-b", "emulated:tdx", "--log-dir", "{logs_empty}"], BAD),
    ("log verify", "no backend", ["log", "verify", "rtmr3", "-b", "sysfs:{missing}", "--log-dir", "{logs_good}"],
     SYSTEM),
    ("ear verify", "good", ["ear", "verify", "{ear}", "--jwks", "{url}/.well-known/jwks.json", "--nonce",
                            "{used_nonce}"], GOOD),
    ("ear verify", "truncated", ["ear", "verify", "{ear_trunc}", "--jwks", "{url}/.well-known/jwks.json"], BAD),
    ("ear verify", "tampered", ["ear", "verify", "{ear_tamper}", "--jwks", "{url}/.well-known/jwks.json"], NO),
    ("ear verify", "other nonce", ["ear", "verify", "{ear}", "--jwks", "{url}/.well-known/jwks.json", "--nonce",
                                   "00" * 32], NO),
    ("ear verify", "missing", ["ear", "verify", "{missing}", "--jwks", "{url}/.well-known/jwks.json"], BAD),
    ("ear verify", "no verifier", ["ear", "verify", "{ear}", "--jwks", "{closed}/.well-known/jwks.json"], SYSTEM),
    ("attest", "good", ["attest", "--verifier", "{url}", "-b", "emulated:tdx"], GOOD),
    ("attest", "used nonce", ["attest", "--nonce", "{used_nonce}", "--verifier", "{url}", "-b", "emulated:tdx"], NO),
    ("attest", "bad nonce", ["attest", "--nonce", "not a nonce", "-o", "{tmp}/b.json", "-b", "emulated:tdx"], BAD),
    ("attest", "no verifier", ["attest", "--verifier", "{closed}", "-b", "emulated:tdx"], SYSTEM),
    ("attest", "unwritable", ["attest", "--nonce", "{nonce}", "-o", "{missing}/b.json", "-b", "emulated:tdx"], BAD),
    ("challenge", "no verifier", ["challenge", "--verifier", "{closed}"], SYSTEM),
    ("registers", "no backend", ["registers", "-b", "sysfs:{missing}"], SYSTEM),
    ("agent-client", "no agent", ["agent-client", "health", "--agent", "{missing}.sock"], SYSTEM),
    ("usage", "unknown option", ["verify", "{bundle}", "--no-such-option"], BAD),
]


@pytest.mark.parametrize(("command", "case", "args", "code"), TABLE,
                         ids=[f"{c}-{k}".replace(" ", "_") for c, k, _, _ in TABLE])
def test_exit_code(world: World, command: str, case: str, args: list[str], code: int) -> None:
    r = world.run(args)
    assert r.returncode == code, f"tsmr {command} ({case}): exit {r.returncode}, want {code}\n{r.stdout}{r.stderr}"
    assert "Traceback" not in r.stderr
    if code in (BAD, SYSTEM) and command != "usage":
        assert "tsmr: error:" in r.stderr  # one sentence saying why


# The shared fixtures' CCEL log and the RTMRs of its quote: as it is, cut mid-event, one digest changed.
EVENTLOG = [
    ("good", "ccel.bin", GOOD),
    ("truncated", "ccel-trunc.bin", BAD),
    ("tampered", "ccel-tamper.bin", NO),
    ("missing", "no-such-file", BAD),
]


@pytest.mark.parametrize(("case", "name", "code"), EVENTLOG, ids=[c for c, _, _ in EVENTLOG])
def test_exit_code_eventlog_replay(fixtures: Path, tmp_path: Path, case: str, name: str, code: int) -> None:
    from tsmr.eventlog import parse

    ccel = (fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes()
    rtmrs = json.loads((fixtures / "go-eventlog/expected_rtmrs.json").read_text())[
        "go-eventlog/eventlogs/ccel/cos-113-intel-tdx.bin"]
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"registers": {reg.lower(): {"sha384": value} for reg, value in rtmrs.items()}}))
    last = parse(ccel).events[-1]
    (tmp_path / "ccel.bin").write_bytes(ccel)
    (tmp_path / "ccel-trunc.bin").write_bytes(ccel[:3000])
    (tmp_path / "ccel-tamper.bin").write_bytes(_flip(ccel, last.offset + 12 + 2))  # a byte of its SHA-384 digest
    r = subprocess.run([TSMR, "eventlog", "replay", str(tmp_path / name), "--expect", str(expect)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code, f"tsmr eventlog replay ({case}): exit {r.returncode}, want {code}\n{r.stdout}{r.stderr}"
    assert "Traceback" not in r.stderr


def test_the_same_truncated_quote_is_bad_input_everywhere(world: World) -> None:
    """The bytes that exit 2 from 'quote verify' exit 2 from 'verify' and 'appraise', which still shows its result."""
    codes = {cmd: world.run([*cmd.split(), arg, "--nonce", "{nonce}", *T]).returncode
             for cmd, arg in (("quote verify", "{quote_trunc}"), ("verify", "{bundle_trunc}"),
                              ("appraise", "{bundle_trunc}"))}
    assert set(codes.values()) == {BAD}, codes
    r = world.run(["appraise", "{bundle_trunc}", "--nonce", "{nonce}", "--json", *T])
    result = json.loads(r.stdout)
    assert r.returncode == BAD and result["status"] == "contraindicated"
    assert "evidence.malformed" in [f["id"] for f in result["findings"]]


def test_json_errors_carry_the_exit_code(world: World) -> None:
    r = world.run(["verify", "{bundle_trunc}", "--json", *T])
    assert r.returncode == BAD and json.loads(r.stdout)["exit_code"] == BAD
    r = world.run(["challenge", "--verifier", "{closed}", "--json"])
    assert r.returncode == SYSTEM and json.loads(r.stdout)["exit_code"] == SYSTEM


def test_contract_table_in_one_place() -> None:
    """Every exception class the library raises maps to the code the contract gives it."""
    from tsmr.agent.client import AgentRequestError, AgentUnavailableError
    from tsmr.cli.common import Refused, Unreadable, exit_code
    from tsmr.errors import (BackendError, CollateralError, EvidenceError, InputError, ParseError, PolicyError,
                             ReplayError, SignatureError)
    from tsmr.evidence.limits import LimitExceeded
    from tsmr.formats.ima import TemplateHashError
    from tsmr.service.db import DatabaseUnavailable

    # Instances made without their constructors: only the class decides the code.
    assert {cls.__name__: exit_code(cls.__new__(cls)) for cls in [
        Refused, EvidenceError, SignatureError, CollateralError, TemplateHashError,
        Unreadable, InputError, ParseError, ReplayError, PolicyError, LimitExceeded, AgentRequestError,
        BackendError, DatabaseUnavailable, AgentUnavailableError, OSError,
    ]} == {
        "Refused": NO, "EvidenceError": NO, "SignatureError": NO, "CollateralError": NO, "TemplateHashError": NO,
        "Unreadable": BAD, "InputError": BAD, "ParseError": BAD, "ReplayError": BAD, "PolicyError": BAD,
        "LimitExceeded": BAD, "AgentRequestError": BAD,
        "BackendError": SYSTEM, "DatabaseUnavailable": SYSTEM, "AgentUnavailableError": SYSTEM, "OSError": SYSTEM,
    }
