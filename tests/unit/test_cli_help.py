"""Every command's --help: flags are shown as flags, options that take a value with its type."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Iterator

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tsmr.cli.main import app

TSMR = os.path.join(os.path.dirname(sys.executable), "tsmr")


def _paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _paths(sub, (*path, name))


PATHS = list(_paths(get_command(app)))


def test_the_tree_is_walked() -> None:
    assert {("verify",), ("ear", "verify"), ("log", "verify"), ("emulate", "init"), ("serve",)} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=[" ".join(p) or "tsmr" for p in PATHS])
def test_help_shows_no_bool_value(path: tuple[str, ...]) -> None:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output, r.output
    assert "--help" in r.output


def test_values_keep_their_type_and_flags_have_none() -> None:
    r = CliRunner().invoke(app, ["ear", "verify", "--help"], env={"COLUMNS": "200"})
    rows = {line.split()[1]: line for line in r.output.splitlines() if line.startswith("│ --")}
    assert "<str>" in rows["--nonce"]  # an option that takes a value still says what
    assert rows["--json"].split()[2] == "Print"  # a flag: its help follows its name


def test_console_script_help() -> None:
    r = subprocess.run([TSMR, "--help"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, COLUMNS="120"))
    assert r.returncode == 0 and "--version" in r.stdout and "<bool>" not in r.stdout
