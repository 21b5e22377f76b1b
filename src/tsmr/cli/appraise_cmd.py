"""``tsmr appraise`` (a bundle against a policy and reference values) and ``tsmr refvals learn``.

:func:`register` adds both to the ``tsmr`` application; :data:`refvals_app`
is the ``refvals`` sub-application, to which other reference-value commands
can be added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from . import render
from .common import (AtOpt, JsonOpt, handle_errors, judge, parse_nonce, read_bundle, refuse, verification_time,
                     write_output)
from .common import AllowDebugOpt, read_input, read_text
from .option_groups import TrustOptions, limit_options, trust_options

__all__ = ["register", "refvals_app", "appraise_cmd", "learn_cmd"]

refvals_app = typer.Typer(help="Reference values: what a known-good platform and workload measure.",
                          no_args_is_help=True)

_STYLE = {"affirming": "green", "warning": "yellow", "contraindicated": "red", "none": "dim"}
_SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "dim"}


def register(app: typer.Typer) -> None:
    """Add ``appraise`` and the ``refvals`` group (with ``learn``) to the ``tsmr`` application."""
    app.command("appraise")(handle_errors(appraise_cmd))
    app.add_typer(refvals_app, name="refvals")


def _read_text(path: str, what: str) -> str:
    return read_text(path, what)  # bounded, like every input of the command line


@trust_options()
@limit_options()
def appraise_cmd(
    bundle: Annotated[str, typer.Argument(help="A bundle written by 'tsmr attest' (or any tsmr-bundle document).")],
    policy: Annotated[Optional[str], typer.Option("--policy", help="Rego policy file (package tsmr); default: allow when no finding is an error.")] = None,
    refvals: Annotated[Optional[str], typer.Option("--refvals", help="Reference values (JSON, e.g. from 'tsmr refvals learn').")] = None,
    nonce: Annotated[Optional[str], typer.Option("--nonce", help="The nonce you issued, hex (without it freshness is not checked).")] = None,
    at: AtOpt = None,
    trust: TrustOptions = TrustOptions(),
    limits: Any = None,
    allow_debug: AllowDebugOpt = False,
    require_refvals: Annotated[bool, typer.Option(
        "--require-refvals", help="A signed register that holds a measurement and that no reference value covers is "
                                  "an error (contraindicated) instead of a warning.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Appraise a bundle: evidence, freshness, log replay, reference values, appraisers and a Rego policy.

    Prints the registers, the runtime events by domain and every finding with
    its id; exit 0 when the result is affirming, 1 when it is not, 2 for
    unusable input (a bundle, evidence or log that does not parse, a policy
    that does not compile: the result is still shown).  Without reference
    values covering every register that holds a measurement the result is at
    best a warning (refvals.uncovered); with predicted reference values
    ('tsmr predict ... -o'), a register that differs is explained by the
    component whose event differs.
    """
    from ..appraisal import appraise

    doc = read_bundle(bundle)
    source = _read_text(policy, "--policy") if policy else None
    rv = None
    if refvals:
        from ..appraisal import ReferenceValues

        rv = ReferenceValues.from_json(_read_text(refvals, "--refvals"))
    expected = parse_nonce(nonce)[0] if nonce is not None else None
    anchors = trust.anchors()
    result = appraise(doc, policy=source, reference_values=rv, nonce=expected, now=verification_time(at), trust=anchors,
                      policy_id=Path(policy).name if policy else None, limits=limits, allow_debug=allow_debug,
                      require_refvals=require_refvals)
    if as_json:
        render.print_json(result.to_dict())
    else:
        _report(bundle, result)
    judge(result.finding_ids(), passed=result.status == "affirming")


def _report(name: str, result: Any) -> None:
    out = render.out
    style = _STYLE.get(result.status, "bold")
    out.print(render.assemble(f"{name}: {result.kind or 'unreadable'} evidence, status ",
                              (str(result.status).upper(), f"bold {style}")), soft_wrap=True)
    if result.registers:
        table = Table(title="registers", title_justify="left")
        for col in ("register", "bank", "replay", "reference", "signed value", "explanation"):
            table.add_column(col, overflow="fold")
        for r in result.registers:
            status = r["status"]
            shown = render.styled(str(status), {"mismatched": "red", "gap": "yellow", "history-missing": "red",
                                                   "unlogged": "red", "not-signed": "red"}.get(status, ""))
            ref = r.get("reference")
            ref_shown = "-" if ref is None else render.styled(str(ref), "red" if ref == "mismatched" else "")
            table.add_row(r["register"], r["bank"], shown, ref_shown, r["signed"] or "-", r["explanation"])
        out.print(table)
    if result.events:
        table = Table(title="runtime events by domain", title_justify="left")
        for col in ("domain", "register", "record", "operation", "content"):
            table.add_column(col, overflow="fold")
        for domain in sorted(result.events):
            for n, e in enumerate(result.events[domain]):
                table.add_row(domain if n == 0 else "", e["register"], str(e["seq"]), e["operation"], e["content"])
        out.print(table)
    if result.unproven:
        # Shown so a reader sees what the log claims, and that nothing signed backs it.
        table = Table(title="unproven events (not judged)", title_justify="left")
        for col in ("register", "record", "domain", "operation", "why unproven"):
            table.add_column(col, overflow="fold")
        for e in result.unproven:
            table.add_row(e["register"], str(e["seq"]), e["domain"], e["operation"], render.styled(e["reason"], "red"))
        out.print(table)
    if result.findings:
        table = Table(title="findings", title_justify="left")
        for col in ("severity", "id", "claim", "explanation"):
            table.add_column(col, overflow="fold")
        for f in result.findings:
            sev = _SEVERITY_STYLE.get(f.severity, "")
            text = f.message.splitlines()[0] if f.message else ""
            table.add_row(render.styled(str(f.severity), sev), f.id, f.claim, text)
        out.print(table)
        explained = [f for f in result.findings if f.id.startswith("refvals.") and f.context.get("explanation")]
        if explained:
            out.print("explained by component:")
            for f in explained:
                out.print(f"  {f.id}: {f.context['explanation']}", soft_wrap=True)
        gaps = [g for f in result.findings if f.id == "refvals.uncovered" for g in f.context.get("uncovered", ())]
        if gaps:
            out.print("not covered by reference values:")
            for gap in gaps:
                out.print(f"  {gap['register']} {gap['bank']}: {gap['reason']}", soft_wrap=True)
    else:
        out.print("no findings")
    vector = ", ".join(f"{k}={v}" for k, v in result.trustworthiness.items())
    out.print(f"trustworthiness: {vector}", soft_wrap=True)
    if result.quirks:
        out.print(f"quirks applied: {', '.join(result.quirks)}", soft_wrap=True)
    ids = " ".join(x for x in (f"policy {result.policy_id}" if result.policy_id else "",
                                f"reference values {result.refvals_id}" if result.refvals_id else "") if x)
    if ids:
        out.print(ids, soft_wrap=True)


@refvals_app.command("combine")
@handle_errors
def combine_cmd(
    files: Annotated[list[str], typer.Argument(help="Reference values documents (JSON), '-' for standard input.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the result (JSON); '-' for standard output.")],
    id: Annotated[Optional[str], typer.Option("--id", help="The result's id (default: the parts' ids joined by '+').")] = None,
    description: Annotated[Optional[str], typer.Option("--description", help="The result's description.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Combine reference values made in pieces: a predicted boot, a workload's events, an appraiser.

    The result accepts what each part accepts: allowed values of a register or
    claim named in several parts are united, required events and quirks too.
    Parts that configure one appraiser differently, or predict the events of one
    register twice, are refused (exit 2).
    """
    from ..appraisal.refvals import ReferenceValues, combine

    parts = [ReferenceValues.from_json(read_input(f, "reference values")) for f in files]
    rv = combine(parts, id=id, description=description)
    write_output(None if output == "-" else output, rv.dumps().encode())
    if output == "-":
        return
    summary = {"output": output, "id": rv.id, "parts": [p.id for p in parts],
               "registers": sum(len(b) for b in rv.registers.values()), "claims": len(rv.claims),
               "events": len(rv.events), "predicted_events": len(rv.predicted.events) if rv.predicted else 0}
    if as_json:
        render.print_json(summary)
    else:
        render.err.print(f"wrote {output}: reference values {rv.id} from {len(parts)} part(s) "
                         f"({summary['registers']} register bank(s), {summary['claims']} claim(s), "
                         f"{summary['events']} event(s), {summary['predicted_events']} predicted event(s))")


@refvals_app.command("learn")
@handle_errors
@trust_options()
def learn_cmd(
    bundle: Annotated[str, typer.Argument(help="A bundle from a known-good machine.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the reference values (JSON); '-' for standard output.")],
    id: Annotated[Optional[str], typer.Option("--id", help="The reference values' id (default: derived from their content).")] = None,
    at: AtOpt = None,
    trust: TrustOptions = TrustOptions(),
    as_json: JsonOpt = False,
) -> None:
    """Learn reference values from a known-good bundle: signed registers, identity claims and runtime events.

    The bundle's evidence must verify (exit 1 otherwise) and its logs must
    replay to the signed registers (exit 2 otherwise).
    """
    from ..appraisal import learn
    from ..errors import EvidenceError

    doc = read_bundle(bundle)
    anchors = trust.anchors()
    try:
        rv = learn(doc, now=verification_time(at), trust=anchors, id=id)
    except EvidenceError as exc:
        if as_json:
            render.print_json({"learned": False, "check": exc.check, "error": str(exc)})
        else:
            render.error(f"the bundle's evidence does not verify: {exc}")
        refuse()
    text = rv.dumps()
    if output == "-":
        write_output(None, text.encode())
        return
    write_output(output, text.encode())
    summary = {"output": output, "id": rv.id, "registers": sum(len(b) for b in rv.registers.values()),
               "claims": len(rv.claims), "events": len(rv.events)}
    if as_json:
        render.print_json(summary)
    else:
        render.err.print(f"wrote {output}: reference values {rv.id} ({summary['registers']} register bank(s), "
                         f"{summary['claims']} claim(s), {summary['events']} event(s))")
