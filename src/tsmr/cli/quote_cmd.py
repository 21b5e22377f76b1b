"""``tsmr quote``: get, show and verify evidence (TDX quotes, SEV-SNP reports, CCA tokens, TPM quotes)."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import EvidenceError, InputError
from . import render
from .common import EXIT_VERIFY, BackendOpt, JsonOpt, StateDirOpt, handle_errors, open_backend_cli, verification_time

quote_app = typer.Typer(help="Get, show and verify evidence: TDX quotes, SEV-SNP reports, Arm CCA tokens, TPM quotes.",
                        no_args_is_help=True)

KINDS = ("tdx", "snp", "cca", "tpm")


def _plain(obj: Any) -> Any:
    """Claims and parsed structures as JSON values (bytes as hex)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in ("raw", "report")}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if isinstance(obj, enum.Enum):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, dict) or hasattr(obj, "items"):
        return {str(_plain(k)): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def detect_kind(data: bytes) -> str:
    """The kind of evidence, from its bytes."""
    stripped = data.lstrip()
    if stripped[:1] == b"{":
        try:
            if json.loads(data).get("type") == "tpm-quote":
                return "tpm"
        except (ValueError, AttributeError):
            pass
    if data[:2] in (b"\xd9\x01", b"\xd9\x03") and data[2:3] in (b"\x8f", b"\x8b"):  # CBOR tags 399, 907
        return "cca"
    if data[:4] == b"\xff\x54\x43\x47" or data[2:6] == b"\xff\x54\x43\x47":
        return "tpm"
    if len(data) >= 48 and data[:2] in (b"\x04\x00", b"\x05\x00") and data[4:8] == b"\x81\x00\x00\x00":
        return "tdx"
    if len(data) == 1184 and 2 <= int.from_bytes(data[:4], "little") <= 5:
        return "snp"
    raise InputError("unknown evidence format (not a TDX quote, SEV-SNP report, CCA token or TPM quote); give --kind")


def _read(path: str | None, what: str) -> bytes:
    if path is None:
        raise InputError(f"{what} is needed for this evidence")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None


def _hex(text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise InputError(f"{what} is not hexadecimal") from None


def load_trust(*, trust_root: str | None = None, collateral: str | None = None, vcek: str | None = None,
               ask: str | None = None, ark: str | None = None, cpak: str | None = None) -> dict[str, Any]:
    """Trust anchors and collateral from the command line, keyed as the verifiers take them."""
    trust: dict[str, Any] = {}
    if trust_root:
        from cryptography import x509

        try:
            trust["trust_root"] = x509.load_pem_x509_certificate(_read(trust_root, "--trust-root"))
        except ValueError as exc:
            raise InputError(f"--trust-root {trust_root}: not a PEM certificate ({exc})") from None
    if collateral:
        from ..evidence import tdx

        try:
            trust["collateral"] = tdx.Collateral.from_json(json.loads(_read(collateral, "--collateral")))
        except ValueError as exc:
            raise InputError(f"--collateral {collateral}: {exc}") from None
    if vcek:
        trust["vcek"] = _read(vcek, "--vcek")
    if ask:
        if ark:
            trust["ask"], trust["ark"] = _read(ask, "--ask"), _read(ark, "--ark")
        else:  # the KDS cert_chain: ASK then ARK
            from ..evidence import snp

            trust["ask"], trust["ark"] = snp.split_chain(_read(ask, "--ask"))
    if cpak:
        raw = _read(cpak, "--cpak")
        if raw.lstrip()[:1] == b"{":
            trust["cpak"] = json.loads(raw)
        else:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                trust["cpak"] = load_pem_public_key(raw)
            except ValueError as exc:
                raise InputError(f"--cpak {cpak}: not a PEM public key or JWK ({exc})") from None
    return trust


def _tpm_parts(data: bytes, signature: str | None, ak: str | None) -> tuple[bytes, bytes, bytes, dict | None]:  # type: ignore[type-arg]
    if data.lstrip()[:1] == b"{":
        obj = json.loads(data)
        pcrs = {alg: {int(i): bytes.fromhex(v) for i, v in vals.items()} for alg, vals in obj.get("pcrs", {}).items()}
        return (bytes.fromhex(obj["attest"]), bytes.fromhex(obj["signature"]),
                _read(ak, "--ak") if ak else bytes.fromhex(obj["ak_public"]), pcrs or None)
    return data, _read(signature, "--signature"), _read(ak, "--ak"), None


@quote_app.command("get")
@handle_errors
def get_cmd(
    nonce: Annotated[str, typer.Option("--nonce", help="Caller nonce in hex (TPM: at most 64 bytes).")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write the evidence here (default: standard output).")] = None,
    pcrs: Annotated[Optional[str], typer.Option("--pcrs", help="PCRs to quote, e.g. 0,7,16 (default: all).")] = None,
    backend: BackendOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Get evidence from the current backend: a TPM quote, or an emulated TD's TDX quote
    (signed under the emulator's test root: verify it with --trust-root; configfs-tsm reports to come)."""
    from ..backends.emulated import EmulatedRegisterSet
    from ..backends.tpm import TpmRegisterSet

    value = _hex(nonce, "--nonce") or b""
    with open_backend_cli(backend, state_dir) as rs:
        if isinstance(rs, EmulatedRegisterSet) and rs.profile_name == "tdx":
            from ..evidence.emulated import emulated_tdx_quote

            quote, root = emulated_tdx_quote(rs, value)
            if output:
                Path(output).write_bytes(quote)
            elif os.isatty(1):
                raise InputError("a TDX quote is binary: give -o FILE or redirect standard output")
            else:
                os.write(1, quote)
            render.warning(f"an emulated quote, signed under a test root: verify it with --trust-root {root}")
            if as_json and output:
                render.print_json({"kind": "tdx", "output": output, "trust_root": str(root), "emulated": True})
            return
        if not isinstance(rs, TpmRegisterSet):
            raise InputError(f"quote get supports the tpm backend; {rs.kind}:{rs.provider} evidence is not available yet")
        sel = [int(p) for p in pcrs.split(",")] if pcrs else None
        q = rs.quote(value, sel)
    doc = {
        "type": "tpm-quote",
        "nonce": value.hex(),
        "attest": q.attest.hex(),
        "signature": q.signature.hex(),
        "ak_public": q.ak_public.hex(),
        "pcrs": {a.kernel_name: {reg[3:]: v.hex() for reg, banks in q.pcrs.items() for b, v in banks.items() if b == a}
                 for a in sorted({a for banks in q.pcrs.values() for a in banks})},
    }
    text = json.dumps(doc, indent=2) + "\n"
    if output:
        Path(output).write_text(text)
        if not as_json:
            render.line(f"wrote a TPM quote over {len(q.pcrs)} PCR(s) to {output}")
    else:
        render.line(text.rstrip("\n"))


@quote_app.command("show")
@handle_errors
def show_cmd(
    file: Annotated[str, typer.Argument(help="Evidence file.")],
    kind: Annotated[Optional[str], typer.Option("--kind", help=f"One of {', '.join(KINDS)} (default: detected).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Decode evidence without verifying it."""
    data = _read(file, "the evidence")
    k = kind or detect_kind(data)
    if k == "tdx":
        from ..evidence import tdx

        obj = tdx.parse_quote(data)
    elif k == "snp":
        from ..evidence import snp

        obj = snp.parse_report(data)
    elif k == "cca":
        from ..evidence import cca

        obj = cca.parse_token(data)
    elif k == "tpm":
        from ..evidence import tpm

        obj = tpm.parse_attest(_tpm_parts(data, None, None)[0] if data.lstrip()[:1] == b"{" else data)
    else:
        raise InputError(f"unknown kind {k!r} (kinds: {', '.join(KINDS)})")
    render.print_json({"kind": k, "evidence": _plain(obj)})


@quote_app.command("verify")
@handle_errors
def verify_cmd(
    file: Annotated[str, typer.Argument(help="Evidence file (a TPM quote: TPMS_ATTEST, or the JSON of 'quote get').")],
    nonce: Annotated[Optional[str], typer.Option("--nonce", help="Expected nonce / report data / challenge, hex.")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help=f"One of {', '.join(KINDS)} (default: detected).")] = None,
    collateral: Annotated[Optional[str], typer.Option("--collateral", help="TDX: a PCCS-style JSON document of collateral.")] = None,
    trust_root: Annotated[Optional[str], typer.Option("--trust-root", help="TDX: trust this root CA (PEM) instead of the shipped Intel root.")] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="Verification time, ISO 8601 (default: now).")] = None,
    ak: Annotated[Optional[str], typer.Option("--ak", help="TPM: attestation key, PEM or TPM2B_PUBLIC.")] = None,
    signature: Annotated[Optional[str], typer.Option("--signature", help="TPM: TPMT_SIGNATURE file.")] = None,
    vcek: Annotated[Optional[str], typer.Option("--vcek", help="SNP: VCEK or VLEK certificate.")] = None,
    ask: Annotated[Optional[str], typer.Option("--ask", help="SNP: ASK certificate (or the KDS cert_chain with ASK and ARK).")] = None,
    ark: Annotated[Optional[str], typer.Option("--ark", help="SNP: the trusted ARK certificate.")] = None,
    cpak: Annotated[Optional[str], typer.Option("--cpak", help="CCA: platform attestation key, PEM or JWK JSON.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify evidence offline; exit 1 naming the failed check."""
    data = _read(file, "the evidence")
    k = kind or detect_kind(data)
    expected = _hex(nonce, "--nonce")
    when = verification_time(at)
    trust = load_trust(trust_root=trust_root, collateral=collateral, vcek=vcek, ask=ask, ark=ark, cpak=cpak)
    try:
        if k == "tdx":
            from ..evidence import tdx

            claims: Any = tdx.verify_quote(data, now=when, report_data=expected,
                                           **{n: trust[n] for n in ("trust_root", "collateral") if n in trust})
        elif k == "snp":
            from ..evidence import snp

            if "ask" not in trust:
                raise InputError("--ask (the ASK, or the KDS chain with ASK and ARK) is needed for a SEV-SNP report")
            claims = snp.verify_report(data, vcek=_read(vcek, "--vcek"), ask=trust["ask"], ark=trust["ark"],
                                       report_data=expected, now=when)
        elif k == "cca":
            from ..evidence import cca

            if "cpak" not in trust:
                raise InputError("--cpak (the platform attestation key) is needed for a CCA token")
            claims = cca.verify_token(data, cpak=trust["cpak"], challenge=expected)
        elif k == "tpm":
            from ..evidence import tpm

            attest, sig, ak_bytes, pcrs = _tpm_parts(data, signature, ak)
            claims = tpm.verify_quote(attest, sig, ak_bytes, nonce=expected, pcrs=pcrs)
        else:
            raise InputError(f"unknown kind {k!r} (kinds: {', '.join(KINDS)})")
    except EvidenceError as exc:
        if as_json:
            render.print_json({"kind": k, "verified": False, "check": exc.check, "error": str(exc)})
        else:
            render.line(f"FAILED {exc.check or k}: {exc}")
        raise typer.Exit(EXIT_VERIFY)
    if as_json:
        render.print_json({"kind": k, "verified": True, "claims": _plain(claims)})
    else:
        render.line(f"verified: {k} evidence" + ("" if expected is not None else " (no nonce given: freshness not checked)"))
        plain = _plain(claims)
        for name, value in sorted(plain.get("registers", {}).items()):
            render.line(f"  {name}: {value}")
        for name, value in sorted(plain.items()):
            if isinstance(value, (str, int)) and name not in ("raw",):
                render.line(f"  {name}: {value}")
