"""``tsmr eventlog``: show, replay and convert measurement logs of any format."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.progress import Progress
from rich.table import Table

from ..algorithms import HashAlg
from ..errors import InputError
from ..eventlog import FORMATS, EventLog, parse
from ..events import Event
from ..replay import explain, replay
from . import render
from .common import JsonOpt, handle_errors, read_input, refuse, write_output

eventlog_app = typer.Typer(
    help="Read measurement logs of any format (TCG2, CCEL, CEL, IMA, systemd, tsmr/AAEL): show, replay, convert.",
    no_args_is_help=True,
)

FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help=f"Input format (default: detected): {', '.join(FORMATS)}.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="tpm, tdx or cca: how indices map to registers (default: from the log).")]
RegisterOpt = Annotated[str, typer.Option("--register", help="Register of a tsmr runtime log (its file does not say).")]
PROGRESS_MIN = 50_000


def _load(path: str, fmt: str | None, arch: str | None, register: str, decode: bool = True) -> EventLog:
    return parse(read_input(path), fmt, arch=arch, decode=decode, register=register)


def _short(d: bytes) -> str:
    return d.hex()[:16] + "…" if len(d) > 8 else d.hex()


@eventlog_app.command("show")
@handle_errors
def show_cmd(
    file: Annotated[str, typer.Argument(help="Log file, or - for standard input.")],
    fmt: FormatOpt = None,
    arch: ArchOpt = None,
    register: RegisterOpt = "rtmr3",
    quirk: Annotated[Optional[list[str]], typer.Option("--quirk", help="Named quirk for digest checks (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One row per event: index, register, type, digests, whether each digest is the hash of
    the event's data (ok / BAD / - when the data does not determine it), and a decoded summary."""
    from ..eventlog import show

    log = _load(file, fmt, arch, register)
    with Progress(transient=True, disable=len(log.events) < PROGRESS_MIN or as_json, console=render.err) as prog:
        prog.add_task("decoding", total=None)
        shown = show(log, quirks=quirk or ())
    rows = shown["events"]
    if as_json:
        render.print_json(shown)
        return
    table = Table(title=f"{file}: {log.format}, {len(rows)} events", title_justify="left")
    for col in ("#", "index", "register", "type", "digests", "data", "summary"):
        table.add_column(col, overflow="fold")
    for e, row in zip(log.events, rows):
        digests = " ".join(f"{a.kernel_name}:{_short(d)}" for a, d in e.digests)
        ok = {True: "ok", False: render.styled("BAD", "red"), None: "-"}[row["digest_matches_data"]]
        table.add_row(str(e.seq), str(e.index), e.register if e.measured else f"({e.register})", e.type, digests, ok, e.summary)
    render.out.print(table)


def _load_expected(path: str) -> dict[str, dict[HashAlg, bytes]]:
    try:
        obj = json.loads(read_input(path, "--expect"))
    except ValueError as exc:
        raise InputError(f"--expect {path}: {exc}") from None
    if isinstance(obj, dict) and "registers" in obj:
        obj = obj["registers"]
    if not isinstance(obj, dict):
        raise InputError('--expect takes {"registers": {"pcr0": {"sha256": "<hex>"}}}')
    out: dict[str, dict[HashAlg, bytes]] = {}
    for reg, banks in obj.items():
        if not isinstance(banks, dict):
            raise InputError(f"--expect: {reg} must map banks to hex values")
        for alg, hexv in banks.items():
            a = HashAlg.from_name(alg)
            try:
                value = bytes.fromhex(hexv)
            except (TypeError, ValueError):
                raise InputError(f"--expect: {reg} {alg} is not hex") from None
            if len(value) != a.digest_size:
                raise InputError(f"--expect: {reg} {alg} must be {a.digest_size} bytes")
            out.setdefault(reg, {})[a] = value
    return out


@eventlog_app.command("replay")
@handle_errors
def replay_cmd(
    files: Annotated[list[str], typer.Argument(help="Log files, merged in this order onto one register set (firmware first).")],
    expect: Annotated[Optional[str], typer.Option("--expect", help='JSON {"registers": {"pcr0": {"sha256": "<hex>"}}} to compare with.')] = None,
    fmt: FormatOpt = None,
    arch: ArchOpt = None,
    register: RegisterOpt = "rtmr3",
    quirk: Annotated[Optional[list[str]], typer.Option("--quirk", help="Apply a named quirk (repeatable); see tsmr.quirks.")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="One large TCG2/CCEL log: replay from the bytes, skipping findings.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replay logs into register values; with --expect, exit 1 and explain any mismatch.

    Structural findings (a second separator in a PCR, no Exit Boot Services
    event) are reported; a named --quirk accepts one.
    """
    from ..eventlog import detect, tcg2_arch
    from ..replay import replay_tcg2_bytes

    raw = read_input(files[0]) if fast else b""
    if fast:
        if len(files) != 1 or expect or (fmt or detect(raw)) not in ("tcg2", "tcg2-sha1", "ccel"):
            raise InputError("--fast replays one TCG2 or CCEL log, without --expect")
        # Straight from the bytes: no event objects, hence no findings or explanations.
        the_arch = arch or ("tdx" if fmt == "ccel" else tcg2_arch(raw))
        result = replay_tcg2_bytes(raw, arch=the_arch)
        logs: list[EventLog] = []
        events: list[Event] = []
    else:
        logs = [_load(f, fmt, arch, register, decode=False) for f in files]
        the_arch = arch or next((lg.arch for lg in logs if lg.arch != "tpm"), "tpm")
        events = [e for lg in logs for e in lg.events]
        result = replay(events, arch=the_arch, quirks=quirk or ())
    out = result.to_json()
    failed = False
    from ..quirks import findings

    found, applied = findings(events, quirk or ())
    if found:
        out["findings"] = [{"id": f.id, "message": f.message} for f in found]
    if applied:
        out["quirks"] = applied
    # IMA: every template hash must be the hash of its template data.
    bad_ima: list[str] = []
    for lg in logs:
        if lg.format.startswith("ima"):
            from ..formats import ima

            try:
                ima.replay(lg.raw, banks=(HashAlg.SHA1,), verify=True)
            except ima.TemplateHashError as exc:
                bad_ima.extend(str(m) for m in exc.mismatches)
                bad_ima.append(f"{exc.count} IMA entr{'y' if exc.count == 1 else 'ies'} with a wrong template hash")
    if bad_ima:
        out["ima_template_hash_mismatches"] = bad_ima
        failed = True
    if expect:
        want = _load_expected(expect)
        mismatches = explain(events, want, arch=the_arch, quirks=quirk or ())
        out["expected"] = {"matched": not mismatches, "mismatches": [
            {"register": m.register, "bank": m.alg.kernel_name, "replayed": m.replayed.hex() if m.replayed else None,
             "expected": m.expected.hex(), "explanation": m.explanation} for m in mismatches]}
        failed = bool(mismatches)
    if as_json:
        render.print_json(out)
    else:
        for reg, banks in out["registers"].items():  # type: ignore[union-attr]
            for alg, value in banks.items():
                render.line(f"{reg} {alg}:{value}")
        for reg, algs in result.missing.items():
            render.warning(f"{reg}: some events carry no {', '.join(a.kernel_name for a in algs)} digest; that bank is not replayed")
        for g in result.gaps:
            render.line(f"gap: {g.register} {g.alg.kernel_name} at event {g.seq}: changed without being logged")
        for f in found:
            render.warning(f"{f.message} ({f.id})")
        for line in bad_ima:
            render.line(line)
        if expect:
            for m in out["expected"]["mismatches"]:  # type: ignore[index]
                render.line(m["explanation"])
            render.line("all expected values matched" if not failed else "MISMATCH")
    if failed:
        refuse()


@eventlog_app.command("convert")
@handle_errors
def convert_cmd(
    file: Annotated[str, typer.Argument(help="Log file, or - for standard input.")],
    to: Annotated[str, typer.Option("--to", help="cel-json, cel-jsonseq or tcg2.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output file (default: standard output).")] = None,
    fmt: FormatOpt = None,
    arch: ArchOpt = None,
    register: RegisterOpt = "rtmr3",
    as_json: JsonOpt = False,
) -> None:
    """Convert a log to CEL-JSON (array or RFC 7464 sequence) or a crypto-agile TCG2 log."""
    from ..convert import to_cel_json, to_tcg2

    log = _load(file, fmt, arch, register)
    if to in ("cel-json", "cel-jsonseq"):
        data = to_cel_json(log, seq=to == "cel-jsonseq")
    elif to == "tcg2":
        data = to_tcg2(log)
        if output is None and sys.stdout.isatty():
            raise InputError("a TCG2 log is binary: give -o FILE or redirect standard output")
    else:
        raise InputError(f"unknown output format {to!r}: use cel-json, cel-jsonseq or tcg2")
    write_output(output, data)
    if output is None:
        return
    if as_json:
        render.print_json({"input": file, "format": log.format, "output": output, "to": to, "events": len(log.events)})
    else:
        render.line(f"wrote {len(log.events)} events ({log.format} -> {to}) to {output}")
