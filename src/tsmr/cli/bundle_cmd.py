"""``tsmr attest`` and ``tsmr verify``: evidence bundles (evidence + nonce + logs) end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import EvidenceError, InputError
from . import render
from .common import EXIT_VERIFY, BackendOpt, JsonOpt, LogDirOpt, StateDirOpt, verification_time, write_output
from .quote_cmd import ConfigfsOpt, GuidOpt, ManifestVerOpt, PrivlevelOpt, ServiceOpt, load_trust

TPM_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
IMA_LOG = "/sys/kernel/security/ima/binary_runtime_measurements"


CCEL_LOG = "/sys/firmware/acpi/tables/data/CCEL"


def attest_cmd(
    nonce: Annotated[str, typer.Option("--nonce", help="The relying party's nonce, hex.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the bundle (JSON).")],
    configfs: ConfigfsOpt = None,
    privlevel: PrivlevelOpt = None,
    service_provider: ServiceOpt = None,
    service_guid: GuidOpt = None,
    manifest_version: ManifestVerOpt = None,
    backend: BackendOpt = None,
    log_dir: LogDirOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Collect evidence over a nonce and the logs that explain it into one bundle.

    Evidence comes from configfs-tsm (TDX, SEV-SNP, CCA), the TPM, or the
    emulator; the logs are the firmware log (TPM or CCEL), IMA's, and this
    provider's runtime logs, whichever exist and are readable.
    """
    from ..evidence.acquire import acquire
    from ..evidence.bundle import make_bundle
    from ..runtime_log.store import default_log_dir

    try:
        value = bytes.fromhex(nonce)
    except ValueError:
        raise InputError("--nonce is not hexadecimal") from None
    got = acquire(value, backend=backend, state_dir=state_dir, configfs=configfs, privlevel=privlevel,
                  service_provider=service_provider, service_guid=service_guid,
                  service_manifest_version=manifest_version)
    if got.trust_anchor:
        flag = "--cpak" if got.kind == "cca" else "--trust-root"
        render.warning(f"emulated evidence, signed with a test key: verify with {flag} {got.trust_anchor}")
    logs: list[dict[str, Any]] = []
    if got.source != "emulated":  # the emulator has no firmware: the host's logs would not belong to it
        firmware = TPM_LOG if got.kind == "tpm" else CCEL_LOG if got.kind == "tdx" else None
        for path, name in ((firmware, "firmware"), (IMA_LOG, "ima")):
            if path is None:
                continue
            try:
                logs.append({"format": None, "data": Path(path).read_bytes(), "name": name})
            except OSError:
                pass  # not on this machine (or not readable): the bundle says what it has
    base = Path(log_dir) if log_dir else default_log_dir()
    provider = got.provider
    if provider and (base / provider).is_dir():
        for path in sorted((base / provider).glob("*.log")):
            logs.append({"format": "tsmr", "data": path.read_bytes(), "register": path.stem, "name": str(path)})
    doc = make_bundle(nonce=value, evidence=got.evidence, logs=logs)
    write_output(output, (json.dumps(doc, indent=1) + "\n").encode())
    if as_json:
        render.print_json({"output": output, "kind": got.kind, "source": got.source,
                           "logs": [lg.get("name") for lg in logs], "trust_anchor": got.trust_anchor})
    else:
        render.line(f"wrote {output}: {got.kind} evidence ({got.source}) and {len(logs)} log(s)")


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
