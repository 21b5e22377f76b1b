"""``tsmr appraise`` and ``tsmr refvals learn``, registered onto a Typer app and run in process."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from tsmr.cli import appraise_cmd
from tsmr.eventlog import parse

from .conftest import tdx_bundle


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, as the real tsmr app is
        """tsmr"""

    appraise_cmd.register(app)
    return app


def test_appraise_and_learn(fixtures: Path, tmp_path: Path) -> None:
    doc, nonce = tdx_bundle(fixtures)
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(doc))
    app, runner = _app(), CliRunner()
    at = ["--at", "2025-06-01T00:00:00"]

    # the quote has no collateral valid in 2025: unchecked CRLs and TCB status make it a warning, exit 1;
    # and without reference values nothing covers MRTD and RTMR0-2
    r = runner.invoke(app, ["appraise", str(bundle), "--nonce", nonce.hex(), *at, "--json"])
    assert r.exit_code == 1, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "warning" and out["kind"] == "tdx"
    assert [f["id"] for f in out["findings"]] == ["evidence.collateral-missing", "refvals.uncovered"]

    refvals = tmp_path / "refvals.json"
    r = runner.invoke(app, ["refvals", "learn", str(bundle), "-o", str(refvals), *at, "--id", "golden"])
    assert r.exit_code == 0, r.output
    assert json.loads(refvals.read_text())["id"] == "golden"
    assert "learn" in [c.name for c in appraise_cmd.refvals_app.registered_commands]

    r = runner.invoke(app, ["appraise", str(bundle), "--nonce", nonce.hex(), *at, "--refvals", str(refvals)])
    assert r.exit_code == 1, r.output
    assert "WARNING" in r.stdout and "rtmr2" in r.stdout and "evidence.collateral-missing" in r.stdout

    # without the nonce: a warning, exit 1, and the finding's id on the report
    r = runner.invoke(app, ["appraise", str(bundle), *at])
    assert r.exit_code == 1 and "WARNING" in r.stdout and "freshness.not-checked" in r.stdout

    policy = tmp_path / "deny.rego"
    policy.write_text('package tsmr\nimport rego.v1\ndeny contains "[red]not today[/]" if input.kind == "tdx"\n')
    r = runner.invoke(app, ["appraise", str(bundle), "--nonce", nonce.hex(), *at, "--policy", str(policy), "--json"])
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    assert out["status"] == "contraindicated" and out["policy_id"] == "deny.rego"
    assert [(f["id"], f["message"]) for f in out["findings"]][0] == ("policy.deny", "[red]not today[/]")
    r = runner.invoke(app, ["appraise", str(bundle), "--nonce", nonce.hex(), *at, "--policy", str(policy)])
    assert r.exit_code == 1 and "[red]not today[/]" in r.stdout  # content is shown, not interpreted as markup


def test_input_errors_exit_2(fixtures: Path, tmp_path: Path) -> None:
    doc, _ = tdx_bundle(fixtures)
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps(doc))
    broken = tmp_path / "broken.rego"
    broken.write_text("package tsmr\nallow if {\n")
    app, runner = _app(), CliRunner()
    r = runner.invoke(app, ["appraise", str(bundle), "--policy", str(broken)])
    assert r.exit_code == 2 and "does not compile" in r.output
    bad_refvals = tmp_path / "r.json"
    bad_refvals.write_text('{"format": "tsmr-refvals", "version": 1}')
    r = runner.invoke(app, ["appraise", str(bundle), "--refvals", str(bad_refvals), "--json"])
    assert r.exit_code == 2 and "id" in json.loads(r.stdout)["error"]
    r = runner.invoke(app, ["appraise", str(tmp_path / "missing.json")])
    assert r.exit_code == 2
    r = runner.invoke(app, ["appraise", str(bundle), "--nonce", "xyz"])
    assert r.exit_code == 2
    # a bundle whose logs do not replay is not learned from
    last = parse((fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes()).events[-1]
    ccel = bytearray((fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes())
    ccel[last.offset + 14] ^= 1  # a byte of the last event's SHA-384 digest
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(tdx_bundle(fixtures, ccel=bytes(ccel))[0]))
    r = runner.invoke(app, ["refvals", "learn", str(tampered), "-o", str(tmp_path / "x.json"), "--at", "2025-06-01"])
    assert r.exit_code == 2 and "mismatched" in r.output and not (tmp_path / "x.json").exists()
