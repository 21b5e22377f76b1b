"""Random record sequences give the same register value four ways: live appends,
replay of the log, export to TCG2 then a TCG2 replay, export to CEL-JSON then a CEL replay."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsmr import HashAlg
from tsmr.backends.emulated import EmulatedRegisterSet
from tsmr import eventlog
from tsmr.formats import tcg2
from tsmr.replay import replay as unified_replay
from tsmr.runtime_log.export import register_index, to_cel_json, to_tcg2
from tsmr.runtime_log.records import HIDDEN_CODEPOINTS
from tsmr.runtime_log.replay import replay
from tsmr.runtime_log.store import RuntimeLog

from replay_helpers import tcg2_values

record_text = st.text(
    # Section 2.1: no DEL, C1 controls, line or paragraph separators, or bidirectional controls.
    alphabet=st.characters(blacklist_categories=("Cs",), min_codepoint=0x20,
                           blacklist_characters="\x7f" + "".join(map(chr, HIDDEN_CODEPOINTS))),
    min_size=1,
    max_size=40,
).filter(lambda s: s[0] != " " and s[-1] != " " and s[0] != "#" and not s.startswith(("SYNC ", "INIT ")) and s not in ("SYNC", "INIT"))

action = st.one_of(
    st.tuples(st.just("append"), st.lists(record_text, min_size=1, max_size=5)),
    st.tuples(st.just("digest"), st.binary(min_size=64, max_size=64)),
)


@pytest.mark.parametrize("profile,register", [("tdx", "rtmr3"), ("tpm", "pcr16")])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(action, min_size=1, max_size=8))
def test_four_ways_agree(profile: str, register: str, actions: list) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        with EmulatedRegisterSet(profile, Path(tmp) / "s") as rs, RuntimeLog(rs, register, log_dir=Path(tmp) / "l") as log:
            for kind, arg in actions:
                if kind == "append":
                    log.append_many(arg)
                else:
                    log.extend_digest({a: arg[: a.digest_size] for a in log.algs})
            live = {a: v for a, v in rs.read(register, log.algs).items() if a is not None}
            data = log.read()
            algs = log.algs
    # (b) replay of the log: from the launch value (zero), and on its own from its first sync record.
    # Digest-only extends write no sync record, so a log of them alone stays unanchored on its own.
    zero = {a: bytes(a.digest_size) for a in algs}
    report = replay(data, initial=zero, expected=live)
    assert report.ok, report.explain(register)
    appended = any(kind == "append" for kind, _ in actions)
    report = replay(data, expected=live)
    if appended:
        assert report.ok, report.explain(register)
    else:
        assert {b.status for b in report.banks.values()} == {"unanchored"} and not report.gaps
    # (c) TCG2
    itype, index, tcg_index = register_index(register)
    exported = to_tcg2(data, algs=algs, index=tcg_index)
    assert exported.warnings == () if appended else len(exported.warnings) == 1 and "no sync record" in exported.warnings[0]
    assert tcg2_values(tcg2.parse(exported.data), arch="tpm" if itype == "pcr" else "tdx")[tcg_index] == live
    # (d) CEL-JSON, both encodings
    for seq in (False, True):
        c = to_cel_json(data, algs=algs, index_type=itype, index=index, seq=seq)
        assert unified_replay(eventlog.parse(c.data, "cel-json").events).registers[f"{itype}{index}"] == live


def test_tpm2_tools_agrees_with_the_tcg2_export(tmp_path: Path) -> None:
    """Differential: tpm2-tools' tpm2_eventlog replays our TCG2 export to the live register."""
    if shutil.which("tpm2_eventlog") is None:
        pytest.skip("tpm2_eventlog not installed (Debian tpm2-tools; make test installs it)")
    with EmulatedRegisterSet("tpm", tmp_path / "s") as rs, RuntimeLog(rs, "pcr16", log_dir=tmp_path / "l") as log:
        log.append_many(['example.com/app deploy {"image":"alpine"}', "example.com/app start"])
        log.extend_digest({a: bytes([7]) * a.digest_size for a in log.algs})
        live = rs.read("pcr16", log.algs)
        data = log.read()
    out = tmp_path / "pcr16.tcg2"
    out.write_bytes(to_tcg2(data, algs=log.algs, index=16).data)
    proc = subprocess.run(["tpm2_eventlog", str(out)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    pcrs = proc.stdout.split("\npcrs:\n", 1)[1]
    found = {}
    bank = None
    for line in pcrs.splitlines():
        m = re.match(r"\s+(sha\d+):$", line)
        if m:
            bank = HashAlg.from_name(m.group(1))
            continue
        m = re.match(r"\s+(\d+)\s*:\s*0x([0-9A-Fa-f]+)$", line)
        if m and bank is not None and int(m.group(1)) == 16:
            found[bank] = bytes.fromhex(m.group(2))
    assert found == live
