"""``tsmr serve --database postgresql+psycopg://...`` when the driver is missing or the server refuses.

One line naming the fix, exit 3 (the system failed), no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import free_port

# The driver made unimportable the way Python's import system does it (sys.modules[name] = None):
# 'import psycopg' then raises ModuleNotFoundError, as on a machine without it.
WITHOUT_PSYCOPG = ("import sys; sys.modules['psycopg'] = None; from tsmr.cli.main import main; "
                   "sys.argv[0] = 'tsmr'; main()")


def _tsmr(*args: str, code: str = "from tsmr.cli.main import main; main()", state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    env["TSMR_STATE_DIR"] = str(state)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_missing_driver_names_the_extra_to_install(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://tsmr@127.0.0.1:{free_port()}/tsmr"
    r = _tsmr("serve", "--database", url, "--port", str(free_port()), code=WITHOUT_PSYCOPG, state=tmp_path)
    assert r.returncode == 3, r.stderr
    line = _one_line(r.stderr)
    assert line.startswith("tsmr: error: database postgresql+psycopg://tsmr@127.0.0.1:")
    assert "psycopg is not installed" in line and "pip install 'tsmr[postgresql]'" in line
    # the commands on the database say the same
    r = _tsmr("policy", "show", "--database", url.replace("postgresql+psycopg", "postgres"), code=WITHOUT_PSYCOPG,
              state=tmp_path)
    assert r.returncode == 3 and "pip install 'tsmr[postgresql]'" in _one_line(r.stderr)


def test_refused_connection_names_the_address(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://tsmr:secret@127.0.0.1:{port}/tsmr"
    r = _tsmr("serve", "--database", url, "--port", str(free_port()), state=tmp_path)
    assert r.returncode == 3, r.stderr
    line = _one_line(r.stderr)
    assert "secret" not in line and "Connection refused" in line
    assert f"start PostgreSQL or let it accept connections at 127.0.0.1:{port}" in line
    r = _tsmr("tpm-ak", "list", "--database", url, state=tmp_path)
    assert r.returncode == 3 and f"127.0.0.1:{port}" in _one_line(r.stderr)
