"""The rule for shared fixture data (tests/conftest.py): missing data skips a test, or fails it under CI=true.

Each case runs pytest in a subprocess on a small test file, with tests/conftest.py loaded as a
plugin and ``TSMR_FIXTURES`` pointing at a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
REL = "go-tdx-guest/ccel/ccel_data.dat"

TINY = textwrap.dedent('''
    import pytest
    from conftest import FIXTURES

    def test_by_division(fixtures):
        assert (fixtures / "{rel}").read_bytes() == b"data"

    def test_by_read(fixtures):
        assert fixtures.read("{rel}") == b"data"

    @pytest.mark.fixture_data("{rel}")
    def test_by_mark():
        assert (FIXTURES.root / "{rel}").read_bytes() == b"data"

    def test_optional():
        path = FIXTURES.optional("{rel}")
        assert path is None or path.read_bytes() == b"data"
''').format(rel=REL)


def run(tmp_path: Path, fixtures: Path, *, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_tiny.py").write_text(TINY)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["TSMR_FIXTURES"] = str(fixtures)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA",
                           "test_tiny.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    d = tmp_path / "fixtures"
    d.mkdir()
    return d


def test_missing_data_fails_the_run_under_ci(tmp_path: Path, empty: Path) -> None:
    r = run(tmp_path, empty, ci=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 failed, 1 error" in r.stdout, r.stdout  # the mark's check fails the setup
    assert "During handling" not in r.stdout  # one message per test, no chained exception
    assert f"fixture data not found: {empty / REL} (TSMR_FIXTURES={empty};" in r.stdout
    assert "CI=true: missing fixture data fails the run" in r.stdout


def test_missing_data_skips_with_the_reason_outside_ci(tmp_path: Path, empty: Path) -> None:
    r = run(tmp_path, empty, ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 skipped" in r.stdout and "1 passed" in r.stdout, r.stdout  # optional data: None, the test passes
    assert "SKIPPED [3] " in r.stdout, r.stdout
    assert f": fixture data not found: {empty / REL} (TSMR_FIXTURES={empty};" in r.stdout, r.stdout


def test_missing_directory_is_named(tmp_path: Path) -> None:
    gone = tmp_path / "no-such-dir"
    r = run(tmp_path, gone, ci=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"fixture data not found: {gone} (TSMR_FIXTURES={gone};" in r.stdout  # the fixture's own check
    r = run(tmp_path, gone, ci=False)
    assert r.returncode == 0 and "3 skipped" in r.stdout, r.stdout


def test_present_data_is_read(tmp_path: Path) -> None:
    d = tmp_path / "fixtures"
    (d / REL).parent.mkdir(parents=True)
    (d / REL).write_bytes(b"data")
    r = run(tmp_path, d, ci=True)
    assert r.returncode == 0 and "4 passed" in r.stdout, r.stdout + r.stderr
