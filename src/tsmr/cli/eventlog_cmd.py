"""``tsmr eventlog``: show, replay and convert measurement logs of any format."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Annotated, Optional, Sequence, cast

import typer
from rich.text import Text
from rich.progress import Progress
from rich.table import Table

from ..algorithms import HashAlg
from ..errors import InputError
from ..eventlog import FORMATS, EventLog, parse
from ..events import Event
from ..findings import ReplayStatus
from ..replay import explain, not_covered, replay
from . import render
from .common import JsonOpt, handle_errors, read_input, refuse, write_output

eventlog_app = typer.Typer(
    help="Read measurement logs of any format (TCG2, CCEL, CEL, IMA, systemd, tsmr/AAEL): show, replay, convert.",
    no_args_is_help=True,
)

FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help=f"Input format (default: detected): {', '.join(FORMATS)}.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="tpm, tdx or cca: how indices map to registers (default: from the log).")]
RegisterOpt = Annotated[str, typer.Option("--register", help="Register of a tsmr runtime log (its file does not say).")]
BankOpt = Annotated[Optional[list[str]], typer.Option(
    "--bank", help="Bank, e.g. sha256 (repeatable): IMA lists give the template digest of each (default sha1 and sha256).")]
PROGRESS_MIN = 50_000


def _load(path: str, fmt: str | None, arch: str | None, register: str, decode: bool = True) -> EventLog:
    return parse(read_input(path), fmt, arch=arch, decode=decode, register=register)


def _with_ima_banks(log: EventLog, banks: Sequence[HashAlg]) -> EventLog:
    """An IMA list's events with the template digest of every bank in ``banks`` (the kernel extends them all)."""
    if not log.format.startswith("ima") or not banks:
        return log
    from ..formats import ima

    return dataclasses.replace(log, events=tuple(ima.to_events(log.raw, banks=banks)))


def _banks(names: Optional[list[str]]) -> list[HashAlg]:
    return [HashAlg.from_name(n) for n in names or ()]


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
    bank: BankOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One row per event: index, register, type, digests, whether each digest is the hash of
    the event's data (ok / BAD / - when the data does not determine it), and a decoded summary."""
    from ..eventlog import show
    from ..formats.ima import DEFAULT_BANKS

    log = _with_ima_banks(_load(file, fmt, arch, register), _banks(bank) or DEFAULT_BANKS)
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
        matches = row.get("digest_matches_data") if isinstance(row, dict) else None
        cells: dict[object, str | Text] = {True: "ok", False: render.styled("BAD", "red"), None: "-"}
        ok = cells[matches]
        table.add_row(str(e.seq), str(e.index), e.register if e.measured else f"({e.register})", e.type, digests, ok, e.summary)
    render.out.print(table)


# The bank of a register given as a bare hex value (``quote verify --json``: one bank per register).
_BANK_BY_SIZE = {a.digest_size: a for a in (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)}


def _load_expected(path: str) -> dict[str, dict[HashAlg, bytes]]:
    """Register values to compare with: ``{"registers": {"pcr0": {"sha256": "<hex>"}}}`` (what ``replay
    --json`` prints), or what ``tsmr quote verify --json`` prints (``claims.registers``, one value per
    register, its bank given by its size; an SEV-SNP launch ``measurement``)."""
    try:
        obj = json.loads(read_input(path, "--expect"))
    except ValueError as exc:
        raise InputError(f"--expect {path}: {exc}") from None
    if isinstance(obj, dict) and isinstance(obj.get("claims"), dict):  # tsmr quote verify --json
        claims = obj["claims"]
        regs = claims.get("registers")
        obj = dict(regs) if isinstance(regs, dict) else {}
        if isinstance(claims.get("measurement"), str):
            obj.setdefault("measurement", claims["measurement"])
        if not obj:
            raise InputError(f"--expect {path}: the evidence's claims carry no register values (a TPM quote signs "
                             'only a digest of its PCRs): give {"registers": {"pcr0": {"sha256": "<hex>"}}}')
    elif isinstance(obj, dict) and "registers" in obj:
        obj = obj["registers"]
    if not isinstance(obj, dict):
        raise InputError('--expect takes {"registers": {"pcr0": {"sha256": "<hex>"}}} or the output of '
                         "tsmr quote verify --json")
    out: dict[str, dict[HashAlg, bytes]] = {}
    for reg, banks in obj.items():
        if isinstance(banks, str):  # one value: the bank from its size
            alg = _BANK_BY_SIZE.get(len(banks) // 2)
            if alg is None or len(banks) % 2:
                raise InputError(f"--expect: {reg} is not a hex digest of 20, 32, 48 or 64 bytes")
            banks = {alg.kernel_name: banks}
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
    expect: Annotated[Optional[str], typer.Option("--expect", help='JSON {"registers": {"pcr0": {"sha256": "<hex>"}}}, or the output of tsmr quote verify --json, to compare with.')] = None,
    fmt: FormatOpt = None,
    arch: ArchOpt = None,
    register: RegisterOpt = "rtmr3",
    quirk: Annotated[Optional[list[str]], typer.Option("--quirk", help="Apply a named quirk (repeatable); see tsmr.quirks.")] = None,
    fast: Annotated[bool, typer.Option("--fast", help="One large TCG2/CCEL log: replay from the bytes, skipping findings.")] = False,
    bank: Annotated[Optional[list[str]], typer.Option(
        "--bank", help="Replay only this bank, e.g. sha256 (repeatable). Default: the banks the logs record, "
        "and sha1 and sha256 for IMA lists on a TPM (the kernel extends every bank).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay logs into register values; with --expect, exit 1 and explain any mismatch.

    A register the logs have no events for holds its starting value (zero);
    a launch measurement no log covers (TDX MRTD, the SEV-SNP measurement, the
    CCA RIM) is reported as not covered, not as a mismatch.  With --arch tdx
    (or cca), a TPM log's PCRs map onto the registers through the UEFI index
    table (PCR 0 -> MRTD, 1 and 7 -> RTMR0, 2-6 -> RTMR1, 8-15 -> RTMR2, others
    -> RTMR3), in SHA-384 only on TDX.

    Structural findings (a second separator in a PCR, no Exit Boot Services
    event) are reported; a named --quirk accepts one.
    """
    from ..eventlog import detect, tcg2_arch
    from ..replay import replay_tcg2_bytes

    raw = read_input(files[0]) if fast else b""
    want = _load_expected(expect) if expect else {}
    if fast:
        if len(files) != 1 or expect or (fmt or detect(raw)) not in ("tcg2", "tcg2-sha1", "ccel"):
            raise InputError("--fast replays one TCG2 or CCEL log, without --expect")
        # Straight from the bytes: no event objects, hence no findings or explanations.
        own = "tdx" if fmt == "ccel" else tcg2_arch(raw)
        the_arch = arch or own
        if own == "tpm" and the_arch != "tpm":  # PCRs mapped onto CC registers: the unified fold maps them
            result = replay(parse(raw, fmt, arch=the_arch, decode=False).events, arch=the_arch)
        else:
            result = replay_tcg2_bytes(raw, arch=the_arch)
        logs: list[EventLog] = []
        events: list[Event] = []
    else:
        logs = [_load(f, fmt, arch, register, decode=False) for f in files]
        the_arch = arch or next((lg.arch for lg in logs if lg.arch != "tpm"), None) or _arch_of(want)
        from ..formats.ima import DEFAULT_BANKS

        wanted = _banks(bank)
        logs = [_with_ima_banks(lg, wanted or (DEFAULT_BANKS if the_arch == "tpm" else ())) for lg in logs]
        events = [e for lg in logs for e in lg.events]
        result = replay(events, banks=wanted or None, arch=the_arch, quirks=quirk or ())
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
                ima.replay(lg.raw, banks=_banks(bank) or ima.DEFAULT_BANKS, verify=True)
            except ima.TemplateHashError as exc:
                bad_ima.extend(str(m) for m in exc.mismatches)
                bad_ima.append(f"{exc.count} IMA entr{'y' if exc.count == 1 else 'ies'} with a wrong template hash")
    if bad_ima:
        out["ima_template_hash_mismatches"] = bad_ima
        failed = True
    uncovered: list[dict[str, str]] = []
    if expect:
        covered = {}
        for reg, banks in want.items():
            if not_covered(result, reg):
                uncovered.extend({"register": reg, "bank": a.kernel_name, "expected": v.hex(),
                                  "status": ReplayStatus.NOT_COVERED} for a, v in banks.items())
            else:
                covered[reg] = banks
        mismatches = explain(events, covered, arch=the_arch, quirks=quirk or ()) if covered else []
        out["expected"] = {"matched": not mismatches, "mismatches": [
            {"register": m.register, "bank": m.alg.kernel_name, "replayed": m.replayed.hex() if m.replayed else None,
             "expected": m.expected.hex(), "explanation": m.explanation} for m in mismatches]}
        if uncovered:
            out["expected"]["not_covered"] = uncovered  # type: ignore[index]
        failed = failed or bool(mismatches)
    if as_json:
        render.print_json(out)
    else:
        shown_regs = cast("dict[str, dict[str, str]]", out["registers"])
        for reg, shown_banks in shown_regs.items():
            for alg_name, value in shown_banks.items():
                render.line(f"{reg} {alg_name}:{value}")
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
            for u in uncovered:
                render.line(f"{u['register']} {u['bank']}: not covered: a launch measurement, which no log extends")
            render.line("all expected values matched" if not failed else "MISMATCH")
    if failed:
        refuse()


def _arch_of(expected: dict[str, dict[HashAlg, bytes]]) -> str:
    """The architecture expected values name registers of: tdx for MRTD/RTMRs, cca for RIM/REMs, else tpm."""
    if any(r == "mrtd" or r.startswith("rtmr") for r in expected):
        return "tdx"
    if any(r == "rim" or r.startswith("rem") for r in expected):
        return "cca"
    return "tpm"


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
