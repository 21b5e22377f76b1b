"""``tsmr predict``: register values and reference values from the artifacts an owner built.

Offline and pure: files in, values out.  Every subcommand prints the shape of
``tsmr eventlog replay --json`` (``{"registers": {...}}``) plus the predicted events,
and ``-o FILE`` writes reference values that ``tsmr appraise --refvals`` and the
service's reference-value store take as they are.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ..predict.model import Prediction
from . import render
from .common import CommandGroup, JsonOpt, write_output

predict_app = typer.Typer(
    cls=CommandGroup, no_args_is_help=True,
    help="Predict register values from firmware, kernel, initrd and command line (offline).")

OutOpt = Annotated[Optional[str], typer.Option(
    "-o", "--output", help="Write reference values (tsmr-refvals JSON) to this file, - for standard output.")]
RefvalsIdOpt = Annotated[Optional[str], typer.Option(
    "--id", help="The id of the reference values written with -o (default: predicted-<platform>).")]


def emit(prediction: Prediction, *, as_json: bool, output: str | None, refvals_id: str | None) -> None:
    """Print a prediction (table or JSON) and write its reference values with -o."""
    if output is not None:
        doc = prediction.to_refvals(refvals_id or f"predicted-{prediction.platform}")
        write_output(None if output == "-" else output, (json.dumps(doc, indent=1) + "\n").encode())
        if output == "-":
            return
    if as_json:
        render.print_json(prediction.to_json())
        return
    render.prediction(prediction)


# --- tdx ---


# --- snp ---


# --- uki ---


# --- tpm ---
