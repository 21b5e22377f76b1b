"""Output helpers shared by the CLI commands: JSON, tables, errors."""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping

from rich.console import Console
from rich.table import Table

from ..algorithms import HashAlg
from ..registers import Register, bank_label

# Piped output keeps whole hex values on one line; a terminal folds them.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def banks_json(values: Mapping[HashAlg | None, bytes]) -> dict[str, str]:
    return {bank_label(alg): value.hex() for alg, value in values.items()}


def register_json(reg: Register, values: Mapping[HashAlg | None, bytes] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "name": reg.name,
        "banks": banks_json(values) if values is not None else {b.label: None for b in reg.banks},
        "size": reg.size,
        "flags": reg.flags.names(),
    }
    if reg.size is None:
        obj["sizes"] = reg.sizes
    return obj


def registers_table(title: str, rows: list[tuple[Register, Mapping[HashAlg | None, bytes] | None]]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("register", style="bold")
    table.add_column("bank")
    table.add_column("size", justify="right")
    table.add_column("flags", no_wrap=True)
    table.add_column("value", overflow="fold", min_width=16)
    for reg, values in rows:
        first = True
        for bank in reg.banks:
            value = "-" if values is None or bank.alg not in values else values[bank.alg].hex()
            table.add_row(
                reg.name if first else "",
                bank.label,
                str(bank.size),
                ",".join(bank.flags.names()),
                value,
            )
            first = False
    return table


def line(text: str) -> None:
    """A plain output line (values a script may cut out): never wrapped or styled."""
    sys.stdout.write(text + "\n")


def error(message: str) -> None:
    err.print(f"[bold red]tsmr: error:[/] {message}", markup=True, soft_wrap=True)


def warning(message: str) -> None:
    err.print(f"[yellow]tsmr: warning:[/] {message}", markup=True, soft_wrap=True)
