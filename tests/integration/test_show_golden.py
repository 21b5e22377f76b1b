"""Golden outputs: ``tsmr eventlog show --json`` of every real log in the fixtures.

The files in tests/golden/show/ are tsmr's own output (tsmr.eventlog.show, which the
CLI prints); a change in decoding or digest checks shows up as a diff here.  After a
deliberate change, regenerate with ``TSMR_REGEN_GOLDEN=1 pytest tests/integration/test_show_golden.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixture_logs import CCEL_LOGS, OTHER_LOGS, TPM_LOGS
from tsmr.eventlog import parse, show

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "show"
LOGS = TPM_LOGS + CCEL_LOGS + OTHER_LOGS


def golden_path(rel: str) -> Path:
    return GOLDEN / (rel.replace("/", "__") + ".json")


@pytest.mark.parametrize("rel", LOGS)
def test_show_matches_golden(fixtures: Path, rel: str, capsys: pytest.CaptureFixture[str]) -> None:
    got = json.loads(json.dumps(show(parse((fixtures / rel).read_bytes()))))
    path = golden_path(rel)
    if os.environ.get("TSMR_REGEN_GOLDEN") == "1":
        old = json.loads(path.read_text()) if path.is_file() else None
        if old != got:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
            with capsys.disabled():
                print(f"\ngolden {'updated' if old is not None else 'created'}: {path}")
        return
    assert path.is_file(), f"no golden file {path}; run with TSMR_REGEN_GOLDEN=1 to create it"
    want = json.loads(path.read_text())
    assert (got["format"], got["arch"]) == (want["format"], want["arch"])
    assert len(got["events"]) == len(want["events"]), rel
    for g, w in zip(got["events"], want["events"]):
        assert g == w, f"{rel} event {w.get('seq')} differs from {path.name}"


def test_cli_prints_the_same(fixtures: Path) -> None:
    rel = "trustee/eventlog/CCEL_data_grub"
    tsmr = os.path.join(os.path.dirname(sys.executable), "tsmr")
    r = subprocess.run([tsmr, "eventlog", "show", str(fixtures / rel), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(golden_path(rel).read_text())
