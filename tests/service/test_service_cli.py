"""``tsmr policy`` and ``tsmr refvals`` show/import/export on the verifier's database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


POLICY = "package tsmr\n\nimport rego.v1\n\ndefault allow := true\n"


class _Done:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run(*args: str, env: dict[str, str] | None = None) -> _Done:
    """The commands in process (Typer's runner), with only the given TSMR_* variables set."""
    import os

    from typer.testing import CliRunner

    from .serve_main import app

    clean = {k: None for k in os.environ if k.startswith("TSMR_")}
    result = CliRunner().invoke(app, list(args), env={**clean, **(env or {})})
    return _Done(result.exit_code, result.stdout, result.stderr)


def test_policy_import_show_export(db_url: str, tmp_path: Path) -> None:
    src = tmp_path / "p.rego"
    src.write_text(POLICY)
    db = ["--database", db_url]
    r = _run("policy", "import", "default", str(src), *db, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == 1
    src.write_text(POLICY.replace("true", "false"))
    assert json.loads(_run("policy", "import", "default", str(src), *db, "--json").stdout)["version"] == 2
    listing = json.loads(_run("policy", "show", *db, "--json").stdout)
    assert [(x["name"], x["version"]) for x in listing] == [("default", 2)]
    shown = json.loads(_run("policy", "show", "default", "--version", "1", *db, "--json").stdout)
    assert shown["rego"] == POLICY and shown["versions"] == [1, 2]
    out = tmp_path / "out.rego"
    assert _run("policy", "export", "default", "-o", str(out), *db).returncode == 0
    assert out.read_text() == POLICY.replace("true", "false")
    assert _run("policy", "export", "default", "--version", "1", *db).stdout == POLICY
    # refused: a module that is not a tsmr policy, a bad name, a missing policy
    src.write_text("package other\n")
    bad = _run("policy", "import", "default", str(src), *db)
    assert bad.returncode == 2 and "package tsmr" in bad.stderr
    assert _run("policy", "import", "no/slash", str(src), *db).returncode == 2
    assert _run("policy", "show", "missing", *db).returncode == 2


def test_refvals_import_show_export(tmp_path: Path) -> None:
    env = {"TSMR_STATE_DIR": str(tmp_path / "state")}  # the default database: <state dir>/verifier.db
    doc = {"format": "tsmr-refvals", "version": 1, "id": "prod",
           "registers": {"rtmr3": {"sha384": ["00" * 48]}}}
    src = tmp_path / "rv.json"
    src.write_text(json.dumps(doc))
    r = _run("refvals", "import", "prod", str(src), env=env)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stderr
    assert (tmp_path / "state" / "verifier.db").exists()
    assert json.loads(_run("refvals", "export", "prod", env=env).stdout) == doc
    table = _run("refvals", "show", env=env)
    assert table.returncode == 0 and "prod" in table.stdout
    src.write_text('{"format": "tsmr-refvals", "version": 1}')
    bad = _run("refvals", "import", "prod", str(src), env=env)
    assert bad.returncode == 2 and "id" in bad.stderr
    src.write_text("not json")
    assert _run("refvals", "import", "prod", str(src), env=env).returncode == 2


@pytest.mark.parametrize("args", [["serve", "--help"], ["policy", "--help"], ["refvals", "--help"]])
def test_help(args: list[str]) -> None:
    r = _run(*args)
    assert r.returncode == 0 and "Usage" in r.stdout
