"""Output helpers shared by the CLI commands: JSON, tables, errors.

What is shown must be what was hashed.  Records, file and register names,
event summaries and messages are data, and data reaches the terminal only as
text: the consoles below never read markup (``[bold]``, ``[/]``) or emoji
codes (``:smile:``) in a ``str``, and every character a terminal would act on
instead of drawing (C0 and C1 controls, DEL, line and paragraph separators,
bidirectional controls) is shown escaped, ``\\x1b`` or ``<U+202E>``.  Style
comes only from :func:`styled` and :func:`assemble`, which escape the same
way, so no command needs to remember to escape anything.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Union

from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..algorithms import HashAlg
from ..registers import Register, bank_label
from ..runtime_log.records import HIDDEN_CODEPOINTS


def _escapes() -> dict[int, str]:
    # Controls below U+00A0 as \xNN, like Python and most tools; the Unicode ones by code point.
    table = {c: f"<U+{c:04X}>" for c in HIDDEN_CODEPOINTS}
    table.update({c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]})
    return table


_ESCAPES = _escapes()
_DOCUMENT_ESCAPES = {c: v for c, v in _ESCAPES.items() if c not in (0x09, 0x0A)}


def visible(text: str) -> str:
    """``text`` with every character a terminal would obey rather than draw written out visibly."""
    return text.translate(_ESCAPES)


class _DataConsole(Console):
    """A console on which a ``str`` is always data: drawn as it is, never read as markup or emoji."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # Every str a console renders passes here: print() arguments, table cells, titles, headers.
        kwargs.update(markup=False, emoji=False)
        return super().render_str(visible(text), **kwargs)


# Piped output keeps whole hex values on one line; a terminal folds them.
out = _DataConsole(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 240)
err = _DataConsole(stderr=True, highlight=False, markup=False, emoji=False)

Part = Union[str, tuple[str, Union[str, Style]]]


def styled(text: str, style: str | Style = "") -> Text:
    """Data in a style (a table cell in red, say), with the same escaping as any other data."""
    return Text(visible(text), style=style)


def assemble(*parts: Part) -> Text:
    """One line from pieces, each plain data or a ``(data, style)`` pair."""
    return Text.assemble(*((visible(p), "") if isinstance(p, str) else (visible(p[0]), p[1]) for p in parts))


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
    """A plain output line (values a script may cut out): never wrapped or styled, escaped like all data."""
    sys.stdout.write(visible(text) + "\n")


def document(text: str) -> None:
    """A multi-line text (a policy, a log) for people to read: its lines and tabs kept, other controls escaped."""
    text = text.translate(_DOCUMENT_ESCAPES)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    err.print(assemble(("tsmr: error:", "bold red"), " ", message), soft_wrap=True)


def warning(message: str) -> None:
    err.print(assemble(("tsmr: warning:", "yellow"), " ", message), soft_wrap=True)


def prediction(p: Any) -> None:
    """A :class:`tsmr.predict.model.Prediction` for people: claims, registers, then the events behind them."""
    for name, value in p.claims.items():
        line(f"{name}: {value}")
    for reg, banks in p.registers.items():
        for alg, value in banks.items():
            line(f"{reg}:{alg.name.lower()}: {value.hex()}")
    if p.events:
        table = Table(title="predicted events", title_justify="left")
        table.add_column("register", style="bold")
        table.add_column("type")
        table.add_column("component")
        table.add_column("digest", overflow="fold", min_width=16)
        table.add_column("what", overflow="fold")
        for e in p.events:
            first = next(iter(e.digests.items()), None)
            digest = f"{first[0].name.lower()}:{first[1].hex()[:16]}…" if first else "-"
            table.add_row(visible(e.register), visible(e.event_type), visible(e.component), digest, visible(e.description))
        out.print(table)
    for note in p.notes:
        line(f"note: {note}")
