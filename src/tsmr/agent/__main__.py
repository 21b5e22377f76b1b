"""``python -m tsmr.agent``: the same daemon as ``tsmr agent``.

A program, not a library module: nothing imports it, so it may use the command
line's definition of the daemon's options (the one place they are written).
"""

from __future__ import annotations

import typer

from ..cli.agent_cmd import agent_cmd
from ..cli.common import handle_errors


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(handle_errors(agent_cmd))
    app()


if __name__ == "__main__":
    main()
