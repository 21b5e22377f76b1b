"""A short fuzzing pass over every parser, inside ``make test``.

Runs ``tests/fuzz/run.py`` once (all targets, a few seconds each, two at a
time) in a subprocess, because atheris takes over its process; then reports
one test per target.  Set ``TSMR_FUZZ_SECONDS`` to fuzz longer (``make fuzz``
runs 60 s per target).  Skips when atheris is not installed (it is in the
``test`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402

SECONDS = float(os.environ.get("TSMR_FUZZ_SECONDS", "2"))

needs_atheris = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install -e '.[test]'); fuzz targets not run",
)


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory) -> dict[str, dict]:
    artifacts = tmp_path_factory.mktemp("fuzz-artifacts")
    cmd = [sys.executable, str(HERE / "run.py"), "--seconds", str(SECONDS), "--jobs", "2", "--json",
           "--seed", "1", "--artifacts", str(artifacts)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60 + 20 * SECONDS * len(targets.TARGETS))
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"run.py printed no JSON (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {r["target"]: r for r in doc["results"]}


@needs_atheris
@pytest.mark.parametrize("name", targets.names())
def test_fuzz_target(name: str, fuzz_results: dict[str, dict]) -> None:
    r = fuzz_results[name]
    if r["status"] == "skipped":
        pytest.skip(f"fuzz target {name}: {r['reason']}")
    assert r["status"] == "ok", (
        f"fuzz target {name} found a crasher {r.get('crashers')}:\n{r.get('report', '')}"
    )
    assert r.get("executions"), f"fuzz target {name} reported no executions"


def test_targets_accept_their_seeds() -> None:
    """Every seed runs through its target in-process (no atheris needed): a cheap smoke test."""
    for name, target in targets.TARGETS.items():
        if target.unavailable():
            continue
        for seed in target.seeds():
            target.run(seed)
