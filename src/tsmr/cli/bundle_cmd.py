"""``tsmr attest`` and ``tsmr verify``: evidence bundles (evidence + nonce + logs) end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import EvidenceError, InputError
from . import render
from .common import EXIT_VERIFY, BackendOpt, JsonOpt, LogDirOpt, StateDirOpt, open_backend_cli, verification_time, write_output
from .quote_cmd import load_trust

TPM_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
IMA_LOG = "/sys/kernel/security/ima/binary_runtime_measurements"


def attest_cmd(
    nonce: Annotated[str, typer.Option("--nonce", help="The relying party's nonce, hex.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the bundle (JSON).")],
    backend: BackendOpt = None,
    log_dir: LogDirOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Collect evidence and its logs on the current backend into one bundle (TPM, emulated TDX)."""
    from ..backends.tpm import TpmRegisterSet
    from ..evidence.bundle import make_bundle
    from ..runtime_log.store import default_log_dir

    try:
        value = bytes.fromhex(nonce)
    except ValueError:
        raise InputError("--nonce is not hexadecimal") from None
    from ..backends.emulated import EmulatedRegisterSet

    logs: list[dict[str, Any]] = []
    evidence: dict[str, Any]
    with open_backend_cli(backend, state_dir) as rs:
        provider = rs.provider
        if isinstance(rs, EmulatedRegisterSet) and rs.profile_name == "tdx":
            from ..evidence.emulated import emulated_tdx_quote

            quote, root = emulated_tdx_quote(rs, value)
            evidence = {"kind": "tdx", "data": quote}
            render.warning(f"an emulated quote, signed under a test root: verify with --trust-root {root}")
        elif isinstance(rs, TpmRegisterSet):
            q = rs.quote(value)
            evidence = {
                "kind": "tpm", "attest": q.attest.hex(), "signature": q.signature.hex(), "ak_public": q.ak_public.hex(),
                "pcrs": {a.kernel_name: {reg[3:]: banks[a].hex() for reg, banks in q.pcrs.items() if a in banks}
                         for a in sorted({a for banks in q.pcrs.values() for a in banks})},
            }
        else:
            raise InputError(f"attest supports the tpm and emulated:tdx backends; {rs.kind}:{rs.provider} is not available yet")
    for path, fmt, name in ((TPM_LOG, "tcg2", "firmware"), (IMA_LOG, "ima-binary", "ima")):
        try:
            logs.append({"format": None, "data": Path(path).read_bytes(), "name": name})
        except OSError:
            pass  # not on this machine (or not readable): the bundle says what it has
    base = Path(log_dir) if log_dir else default_log_dir()
    for path in sorted((base / provider).glob("*.log")) if (base / provider).is_dir() else []:
        logs.append({"format": "tsmr", "data": path.read_bytes(), "register": path.stem, "name": str(path)})
    doc = make_bundle(nonce=value, evidence=evidence, logs=logs)
    write_output(output, (json.dumps(doc, indent=1) + "\n").encode())
    if as_json:
        render.print_json({"output": output, "logs": [lg.get("name") for lg in logs]})
    else:
        render.line(f"wrote {output}: {evidence['kind']} evidence and {len(logs)} log(s)")


def verify_cmd(
    bundle: Annotated[str, typer.Argument(help="A bundle written by 'tsmr attest' (or any tsmr-bundle document).")],
    at: Annotated[Optional[str], typer.Option("--at", help="Verification time, ISO 8601 (default: now).")] = None,
    trust_root: Annotated[Optional[str], typer.Option("--trust-root", help="TDX: root CA (PEM) instead of the shipped Intel root.")] = None,
    collateral: Annotated[Optional[str], typer.Option("--collateral", help="TDX: PCCS-style collateral JSON.")] = None,
    vcek: Annotated[Optional[str], typer.Option("--vcek", help="SNP: VCEK certificate.")] = None,
    ask: Annotated[Optional[str], typer.Option("--ask", help="SNP: ASK (or ASK+ARK chain) certificate.")] = None,
    ark: Annotated[Optional[str], typer.Option("--ark", help="SNP: trusted ARK certificate.")] = None,
    cpak: Annotated[Optional[str], typer.Option("--cpak", help="CCA: platform key, PEM or JWK JSON.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a bundle's evidence and replay its logs against the signed registers; exit 1 on any failure."""
    from ..evidence.bundle import MAX_BUNDLE_BYTES, verify_bundle

    path = Path(bundle)
    try:
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            raise InputError(f"{bundle} is over {MAX_BUNDLE_BYTES} bytes")
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read {bundle}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"{bundle} is not JSON: {exc}") from None
    trust = load_trust(trust_root=trust_root, collateral=collateral, vcek=vcek, ask=ask, ark=ark, cpak=cpak)
    when = verification_time(at)
    try:
        result = verify_bundle(doc, now=when, trust=trust)
    except EvidenceError as exc:
        if as_json:
            render.print_json({"verified": False, "check": exc.check, "error": str(exc)})
        else:
            render.line(f"FAILED {exc.check}: {exc}")
        raise typer.Exit(EXIT_VERIFY)
    rows = [r.__dict__ for r in result.rows]
    if as_json:
        render.print_json({"verified": True, "kind": result.kind, "ok": result.ok, "registers": rows})
    else:
        table = Table(title=f"{bundle}: {result.kind} evidence verified", title_justify="left")
        for col in ("register", "bank", "status", "signed value", "explanation"):
            table.add_column(col, overflow="fold")
        for r in result.rows:
            status = r.status if r.status == "matched" else f"[red]{r.status}[/]"
            table.add_row(r.register, r.bank, status, r.signed or "-", r.explanation)
        render.out.print(table)
    if not result.ok:
        raise typer.Exit(EXIT_VERIFY)
