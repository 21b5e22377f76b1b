"""``tsmr log``: append, show, verify, export and replay runtime event logs."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..algorithms import HashAlg
from ..errors import InputError
from ..registers import bank_label
from ..runtime_log.records import character_name, check_record, parse_values
from ..runtime_log.replay import ReplayReport, Replayer
from ..runtime_log.store import RuntimeLog
from . import render
from .common import BackendOpt, JsonOpt, LogDirOpt, StateDirOpt, handle_errors, open_backend_cli, refuse, write_output

log_app = typer.Typer(
    help="Keep a verifiable runtime event log for a register: one record per line, each extended into the register.",
    no_args_is_help=True,
)

GAPS_HELP = "Do not fail because of gaps (extends that were not logged), only on a mismatch."


def _open_log(reg: str, backend: str | None, state_dir: str | None, log_dir: str | None):
    rs = open_backend_cli(backend, state_dir)
    return rs, RuntimeLog(rs, reg, log_dir=log_dir)


def _read_stdin_records() -> list[str]:
    from ..system.inputs import read_input

    data = read_input("-", "the records on")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"standard input is not UTF-8 (byte {exc.start})") from None
    if text.endswith("\n"):
        text = text[:-1]
    records = []
    for i, rec in enumerate(text.split("\n") if text else [], 1):
        if not rec:
            continue  # a blank line is no record (the log format skips them too)
        try:
            check_record(rec)
        except InputError as exc:
            raise InputError(f"standard input line {i}: {exc}") from None
        records.append(rec)
    return records


@log_app.command("append")
@handle_errors
def append_cmd(
    register: Annotated[str, typer.Argument(help="Register, e.g. rtmr3 or pcr16.")],
    records: Annotated[list[str], typer.Argument(help="Records, one per argument; '-' reads one record per line from standard input (blank lines skipped).")],
    backend: BackendOpt = None,
    log_dir: LogDirOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Append records durably: each is hashed per bank and extended into the register, all under one commit.

    Records are written as given (never altered); the recommended form is
    '<domain> <operation> <content>', e.g. 'example.com/app deploy {"image":"alpine"}'.
    """
    items: list[str] = []
    for r in records:
        items.extend(_read_stdin_records() if r == "-" else [r])
    for r in items:
        check_record(r)  # everything is checked before anything is written
    rs, log = _open_log(register, backend, state_dir, log_dir)
    with rs, log:
        result = log.append_many(items)
    if as_json:
        render.print_json({
            "register": register,
            "log": str(log.path),
            "first_line": result.first_line,
            "lines": list(result.lines),
            "synced": result.synced,
            "gap": result.gap,
            "banks": {bank_label(a): v.hex() for a, v in result.values.items()},
        })
    else:
        if result.gap:
            render.warning(f"{register} had changed without being logged: a sync record was written first (line {result.first_line})")
        render.line(f"appended {len(items)} record(s) to {log.path} (lines {result.first_line}-{result.first_line + len(result.lines) - 1})")
        for alg, value in result.values.items():
            render.line(f"{register} {bank_label(alg)}:{value.hex()}")


@log_app.command("show")
@handle_errors
def show_cmd(
    register: Annotated[str, typer.Argument(help="Register, e.g. rtmr3.")],
    backend: BackendOpt = None,
    log_dir: LogDirOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the log of a register, one row per line with its kind."""
    rs, log = _open_log(register, backend, state_dir, log_dir)
    with rs, log:
        rows = list(log.lines())
    if as_json:
        render.print_json([
            {"line": n, "kind": line.kind.value, "record": line.text,
             **({"values": {bank_label(a): v.hex() for a, v in line.values}} if line.values else {}),
             **({"hidden": [{"position": i, "character": character_name(c)} for i, c in line.hidden]}
                if line.hidden else {})}
            for n, line in rows
        ])
        return
    table = Table(title=f"{log.path}", title_justify="left")
    table.add_column("line", justify="right")
    table.add_column("kind")
    table.add_column("record", overflow="fold")
    flagged = []
    for n, line in rows:
        hidden = line.hidden
        if hidden:
            flagged.append((n, hidden))
        # The console shows hidden characters escaped; the kind says the record is not as a writer leaves it.
        table.add_row(str(n), render.styled(f"{line.kind.value}, hidden characters", "red") if hidden else line.kind.value,
                      line.text)
    render.out.print(table)
    for n, hidden in flagged[:20]:
        names = ", ".join(f"{character_name(c)} at character {i}" for i, c in hidden[:5]) + (", ..." if len(hidden) > 5 else "")
        render.warning(f"line {n} holds {names}: a writer must refuse these; the record was hashed with them, "
                       "and they are shown escaped")
    if len(flagged) > 20:
        render.warning(f"{len(flagged) - 20} more line(s) hold such characters (--json lists them)")


def _report_out(report: ReplayReport, register: str, as_json: bool, allow_gaps: bool, extra: dict[str, object] | None = None) -> None:
    failed = any(b.status in ("mismatched", "unanchored") for b in report.banks.values()) or (report.gaps and not allow_gaps)
    if as_json:
        obj = report.to_json(register)
        obj.update(extra or {})
        obj["ok"] = not failed
        render.print_json(obj)
    else:
        for alg, b in report.banks.items():
            value = b.value.hex() if b.value is not None else "-"
            render.line(f"{register} {bank_label(alg)}: {b.status} {value}")
        for sentence in report.explain(register):
            render.line(sentence)
        render.line(f"{report.records} record(s) in {report.lines} line(s): {'FAILED' if failed else 'OK'}")
    if failed:
        refuse()


@log_app.command("verify")
@handle_errors
def verify_cmd(
    register: Annotated[str, typer.Argument(help="Register, e.g. rtmr3.")],
    backend: BackendOpt = None,
    log_dir: LogDirOpt = None,
    state_dir: StateDirOpt = None,
    allow_gaps: Annotated[bool, typer.Option("--allow-gaps", help=GAPS_HELP)] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replay the log and compare it with the live register; exit 1 on a mismatch or a gap."""
    rs, log = _open_log(register, backend, state_dir, log_dir)
    with rs, log:
        report = log.verify()
    _report_out(report, register, as_json, allow_gaps, {"log": str(log.path)})


def _parse_bank_values(items: list[str] | None, what: str) -> dict[HashAlg, bytes]:
    out: dict[HashAlg, bytes] = {}
    for item in items or []:
        try:
            for alg, value in parse_values(item.strip().lower().replace(":", "/").encode(), what=what):
                if alg in out:
                    raise InputError(f"{what}: two values for {alg}")
                out[alg] = value
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{what} {item!r}: {exc}") from None
    return out


@log_app.command("replay")
@handle_errors
def replay_cmd(
    file: Annotated[str, typer.Argument(help="A runtime log file (tsmr or CoCo AAEL v1 text), or - for standard input.")],
    initial: Annotated[Optional[list[str]], typer.Option("--initial", help="Initial value ALG/HEX of a bank (repeatable).")] = None,
    expect: Annotated[Optional[list[str]], typer.Option("--expect", help="Expected final value ALG/HEX, e.g. from a quote (repeatable).")] = None,
    allow_gaps: Annotated[bool, typer.Option("--allow-gaps", help=GAPS_HELP)] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replay a log file on its own; with --expect, exit 1 on a mismatch and name the line where it diverged."""
    init = _parse_bank_values(initial, "--initial")
    want = _parse_bank_values(expect, "--expect")
    r = Replayer(initial=init, expected=want)
    from ..system.inputs import iter_input

    # Streamed, so no size limit (memory stays at one chunk and one line); a FIFO without a writer
    # times out like every other input.
    for chunk in iter_input(file, limit=0):
        r.feed(chunk)
    # CoCo AAEL v1 logs (INIT first) leave their last line without LF.
    report = r.finish(accept_unterminated=r.first_line_is_init)
    _report_out(report, os.path.basename(file) if file != "-" else "log", as_json, allow_gaps, {"file": file})


@log_app.command("export")
@handle_errors
def export_cmd(
    register: Annotated[str, typer.Argument(help="Register, e.g. rtmr3 or pcr16.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="tcg2, cel-json or cel-jsonseq.")] = "cel-json",
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output file (default: standard output).")] = None,
    index: Annotated[Optional[int], typer.Option("--index", help="TCG2 pcrIndex / CEL index when the register name has none.")] = None,
    backend: BackendOpt = None,
    log_dir: LogDirOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Convert a register's log to a TCG2 (EV_ACTION records) or CEL-JSON log for other verifiers.

    Warns when the converted log cannot replay to the register on its own
    (a non-zero starting value, gaps).
    """
    from ..runtime_log.export import register_index, to_cel_json, to_tcg2

    if fmt not in ("tcg2", "cel-json", "cel-jsonseq"):
        raise InputError(f"unknown export format {fmt!r}: use tcg2, cel-json or cel-jsonseq")
    rs, log = _open_log(register, backend, state_dir, log_dir)
    with rs, log:
        data = log.read()
        algs = log.algs
    if index is not None:
        itype, cel_index, tcg_index = ("pcr" if register.startswith("pcr") else "rtmr"), index, index
    else:
        itype, cel_index, tcg_index = register_index(register)
    if fmt == "tcg2":
        result = to_tcg2(data, algs=algs, index=tcg_index)
        if output is None and sys.stdout.isatty():
            raise InputError("a TCG2 log is binary: give -o FILE or redirect standard output")
    else:
        result = to_cel_json(data, algs=algs, index_type=itype, index=cel_index, seq=fmt == "cel-jsonseq")
    for w in result.warnings:
        render.warning(w)
    write_output(output, result.data)
    if output is None:
        return
    if as_json:
        render.print_json({"register": register, "format": fmt, "output": output, "records": result.records, "warnings": list(result.warnings)})
    else:
        render.line(f"wrote {result.records} record(s) of {register} to {output} ({fmt})")
