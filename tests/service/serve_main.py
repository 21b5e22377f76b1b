"""Run ``tsmr serve`` / ``tsmr policy`` / ``tsmr refvals`` from tsmr.cli.serve_cmd alone.

The tests start the verifier through this script so that they exercise the
command's own option handling whether or not the main ``tsmr`` application
has the command wired in.
"""

from __future__ import annotations

import typer

from tsmr.cli import serve_cmd

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
serve_cmd.register(app)
refvals_app = typer.Typer(no_args_is_help=True)
serve_cmd.add_refvals_commands(refvals_app)
app.add_typer(refvals_app, name="refvals")

if __name__ == "__main__":
    app()
