"""``tsmr quote``: get, show and verify evidence (TDX quotes, SEV-SNP reports, CCA tokens, TPM quotes)."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any, Optional

import typer

from ..errors import EvidenceError, InputError
from ..evidence import TpmQuoteParts, verify
from ..evidence.tpm import load_ak_anchor
from ..jsonvalue import plain
from ..system.trust import read_file as _read
from . import render
from .common import (
    AtOpt,
    BackendOpt,
    AllowDebugOpt,
    JsonOpt,
    StateDirOpt,
    handle_errors,
    refuse,
    verification_time,
    write_output,
)
from .option_groups import TrustOptions, trust_options

quote_app = typer.Typer(help="Get, show and verify evidence: TDX quotes, SEV-SNP reports, Arm CCA tokens, TPM quotes.",
                        no_args_is_help=True)

KINDS = ("tdx", "snp", "cca", "tpm")


def _plain(obj: Any) -> Any:
    """Claims and parsed structures as JSON values (bytes as hex)."""
    return plain(obj, ("raw", "report"))


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


def _hex(text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise InputError(f"{what} is not hexadecimal") from None


def _tpm_parts(data: bytes, signature: str | None, ak: str | None) -> tuple[bytes, bytes, bytes, dict | None]:
    if data.lstrip()[:1] == b"{":
        obj = json.loads(data)
        pcrs = {alg: {int(i): bytes.fromhex(v) for i, v in vals.items()} for alg, vals in obj.get("pcrs", {}).items()}
        return (bytes.fromhex(obj["attest"]), bytes.fromhex(obj["signature"]),
                _read(ak, "--ak") if ak else bytes.fromhex(obj["ak_public"]), pcrs or None)
    return data, _read(signature, "--signature"), _read(ak, "--ak"), None


ConfigfsOpt = Annotated[Optional[str], typer.Option(
    "--configfs", help="configfs-tsm root (default: $TSMR_CONFIGFS_TSM, else /sys/kernel/config/tsm when present).")]
PrivlevelOpt = Annotated[Optional[int], typer.Option("--privlevel", help="SEV-SNP: VMPL to request (0-3).")]
ServiceOpt = Annotated[Optional[str], typer.Option("--service-provider", help="SVSM: service provider, e.g. svsm.")]
GuidOpt = Annotated[Optional[str], typer.Option("--service-guid", help="SVSM: service GUID (e.g. the vTPM's).")]
ManifestVerOpt = Annotated[Optional[int], typer.Option("--manifest-version", help="SVSM: service manifest version.")]


def anchor_flag(kind: str) -> str:
    """The verify option that takes the emulator's test anchor for this kind of evidence."""
    return {"cca": "--cpak", "snp": "--ark"}.get(kind, "--trust-root")


def tpm_document(ev: dict[str, Any], nonce: bytes) -> dict[str, Any]:
    """The JSON file 'quote get' writes for a TPM quote."""
    return {"type": "tpm-quote", "nonce": nonce.hex(), **{k: ev[k] for k in ("attest", "signature", "ak_public", "pcrs")}}


@quote_app.command("get")
@handle_errors
def get_cmd(
    nonce: Annotated[str, typer.Option("--nonce", help="Caller nonce in hex (at most 64 bytes; zero-padded to the report data).")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write the evidence here (default: standard output).")] = None,
    aux: Annotated[Optional[str], typer.Option("--aux", help="Also write the auxblob (SEV-SNP certificate table) here.")] = None,
    manifest: Annotated[Optional[str], typer.Option("--manifest", help="Also write the manifestblob (SVSM manifest) here.")] = None,
    pcrs: Annotated[Optional[str], typer.Option("--pcrs", help="TPM: PCRs to quote, e.g. 0,7,16 (default: all).")] = None,
    configfs: ConfigfsOpt = None,
    privlevel: PrivlevelOpt = None,
    service_provider: ServiceOpt = None,
    service_guid: GuidOpt = None,
    manifest_version: ManifestVerOpt = None,
    backend: BackendOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Get evidence over a nonce: a configfs-tsm report (TDX quote, SEV-SNP report, CCA token) or a TPM quote.

    The emulator (tdx, cca and snp profiles) answers like a configfs-tsm
    provider, signing under test keys: verify its evidence with --trust-root
    (TDX), --cpak (CCA) or --ark (SEV-SNP, with --certs and the certificate
    table written by --aux) pointing at the key it names.
    """
    from ..system.acquire import acquire

    value = _hex(nonce, "--nonce") or b""
    try:
        sel = [int(p) for p in pcrs.split(",")] if pcrs else None
    except ValueError:
        raise InputError(f"--pcrs {pcrs!r} is not a comma-separated list of PCR numbers") from None
    got = acquire(value, backend=backend, state_dir=state_dir, configfs=configfs, pcrs=sel, privlevel=privlevel,
                  service_provider=service_provider, service_guid=service_guid,
                  service_manifest_version=manifest_version)
    ev = got.evidence
    if got.kind == "tpm":
        text = json.dumps(tpm_document(ev, value), indent=2) + "\n"
        # A document for scripts (json.dumps escapes every control), written as it is.
        write_output(output, text.encode())
        summary: dict[str, Any] = {"kind": "tpm", "output": output, "pcrs": sum(len(v) for v in ev["pcrs"].values())}
    else:
        if output:
            write_output(output, ev["data"])
        elif os.isatty(1):
            raise InputError(f"{got.kind} evidence is binary: give -o FILE or redirect standard output")
        else:
            os.write(1, ev["data"])
        for path, key in ((aux, "auxblob"), (manifest, "manifestblob")):
            if path:
                if key not in ev:
                    raise InputError(f"the provider returned no {key}")
                write_output(path, ev[key])
        summary = {"kind": got.kind, "output": output, "provider": ev.get("provider"), "bytes": len(ev["data"]),
                   "auxblob": len(ev.get("auxblob", b"")), "manifestblob": len(ev.get("manifestblob", b""))}
    summary.update(source=got.source, emulated=got.trust_anchor is not None)
    if got.trust_anchor:
        how = f"{anchor_flag(got.kind)} {got.trust_anchor}"
        if got.kind == "snp":  # the VCEK and ASK are in the certificate table
            how += f" --certs {aux or '<the certificate table: quote get --aux FILE>'}"
        summary["trust_anchor"] = got.trust_anchor
        render.warning(f"emulated evidence, signed with a test key: verify it with {how}")
    if as_json and output:
        render.print_json(summary)
    elif output:
        render.err.print(f"wrote {got.kind} evidence ({got.source}) to {output}")


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

        obj: Any = tdx.parse_quote(data)
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


@quote_app.command("ak")
@handle_errors
def ak_cmd(
    file: Annotated[str, typer.Argument(help="A TPM quote ('quote get --backend tpm' JSON) or a TPM bundle.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write the PEM here (default: standard output).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the attestation key a TPM quote was signed with, as PEM, to enrol with --tpm-ak.

    Enrol a key only from a quote you took on a machine you trust (its
    endorsement hierarchy makes the same AK on every boot): a quote's own key
    proves nothing about the TPM until you vouch for it.
    """
    from cryptography.hazmat.primitives import serialization

    from ..evidence import tpm

    raw = _read(file, "the TPM quote")
    try:
        doc = json.loads(raw)
        hex_ak = (doc.get("evidence") or doc)["ak_public"]
        pub = tpm.parse_public(bytes.fromhex(hex_ak))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{file} is not a TPM quote or bundle with an ak_public field") from None
    pem = pub.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if as_json:
        render.print_json({"ak_public": hex_ak, "name": pub.name.hex(), "pem": pem.decode()})
    if output is not None or not as_json:
        write_output(output, pem)


@quote_app.command("verify")
@handle_errors
@trust_options(certs=True)
def verify_cmd(
    file: Annotated[str, typer.Argument(help="Evidence file (a TPM quote: TPMS_ATTEST, or the JSON of 'quote get').")],
    nonce: Annotated[Optional[str], typer.Option("--nonce", help="Expected nonce / report data / challenge, hex.")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help=f"One of {', '.join(KINDS)} (default: detected).")] = None,
    at: AtOpt = None,
    trust: TrustOptions = TrustOptions(),
    ak: Annotated[Optional[str], typer.Option("--ak", help="TPM: the attestation key you trust, PEM or TPM2B_PUBLIC (a quote's own key is trusted only when enrolled with --tpm-ak).")] = None,
    signature: Annotated[Optional[str], typer.Option("--signature", help="TPM: TPMT_SIGNATURE file.")] = None,
    manifest: Annotated[Optional[str], typer.Option("--manifest", help="SNP via SVSM: the manifestblob; REPORT_DATA must be SHA-512(nonce || manifest).")] = None,
    allow_debug: AllowDebugOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify evidence offline; exit 1 naming the failed check.

    What could not be checked (freshness without --nonce, CRLs and TCB status
    without --collateral, SEV-SNP revocation without --crl) is said next to
    "verified", and a TCB status short of UpToDate is shown with its advisories.
    Debuggable guests fail unless --allow-debug.

    TDX collateral (--collateral) is a PCCS-style JSON document or a directory
    of Intel PCS responses named tcb_info, tcb_info_issuer_chain.pem, pck_crl,
    pck_crl_issuer_chain.pem, qe_identity, qe_identity_issuer_chain.pem and
    root_ca_crl (Intel's and PCCS's spellings such as tcbInfo.json and pckcrl
    are recognised too).
    """
    data = _read(file, "the evidence")
    k = kind or detect_kind(data)
    expected = _hex(nonce, "--nonce")
    when = verification_time(at)
    # --certs FILE is the report's certificate table (the guest's auxblob); a directory holds the chain.
    table = None
    certs = trust.get("certs")
    if certs and not os.path.isdir(certs):
        table = _read(certs, "the SEV-SNP certificates")
        trust = trust.without("certs")
    anchors = trust.anchors(certs_complete=True)
    parts = None
    if k == "tpm":
        data, sig, ak_bytes, pcrs = _tpm_parts(data, signature, ak)
        if ak:  # the key given is the key trusted
            anchors = anchors.with_tpm_aks(load_ak_anchor(ak_bytes, f"--ak {ak}"))
        parts = TpmQuoteParts(signature=sig, ak_public=ak_bytes, pcrs=pcrs)
    elif k not in KINDS:
        raise InputError(f"unknown kind {k!r} (kinds: {', '.join(KINDS)})")
    try:
        claims = verify(k, data, nonce=expected, now=when, anchors=anchors, allow_debug=allow_debug,
                        auxblob=table if k == "snp" else None,
                        manifest=_read(manifest, "--manifest") if manifest and k == "snp" else None, tpm=parts).claims
    except EvidenceError as exc:
        if as_json:
            render.print_json({"kind": k, "verified": False, "check": exc.check, "error": str(exc)})
        else:
            render.line(f"FAILED {exc.check or k}: {exc}")
        refuse()
    not_checked, warnings = caveats(k, claims, nonce_given=expected is not None)
    if as_json:
        render.print_json({"kind": k, "verified": True, "not_checked": [c for c, _ in not_checked],
                           "warnings": [f.to_dict() for f in warnings], "claims": _plain(claims)})
    else:
        render_caveats(f"verified: {k} evidence", not_checked, warnings)
        plain = _plain(claims)
        for name, value in sorted(plain.get("registers", {}).items()):
            render.line(f"  {name}: {value}")
        for name, value in sorted(plain.items()):
            if isinstance(value, (str, int)) and name not in ("raw",):
                render.line(f"  {name}: {value}")


# What each unchecked check is, for people, and the option that would have made it happen.
_UNCHECKED = {
    "freshness": "freshness (no --nonce)",
    "tdx.crl": "CRLs (no --collateral)",
    "tdx.tcb_status": "TCB status (no --collateral)",
    "tdx.qe_identity": "QE identity",
    "tdx.crl.root": "root CA CRL",
    "snp.crl": "VCEK/ASK revocation (no --crl)",
}


def caveats(kind: str, claims: Any, *, nonce_given: bool) -> tuple[list[tuple[str, str]], list[Any]]:
    """What verification did not check, as (check id, text), and the platform's warnings (findings).

    The same findings an appraisal makes (:func:`tsmr.appraisal.platform.platform_findings`):
    unchecked collateral, a TCB status short of UpToDate, a debuggable guest that was allowed.
    """
    from ..appraisal.platform import platform_findings

    found = platform_findings(kind, claims)
    not_checked = [] if nonce_given else [("freshness", _UNCHECKED["freshness"])]
    if kind == "tdx" and getattr(claims, "tcb_status", None) is None:
        not_checked.append(("tdx.crl", "CRLs and TCB status (no --collateral)"))
    else:
        for f in found:
            for check in f.context.get("not_checked", ()) if f.id == "evidence.collateral-missing" else ():
                not_checked.append((check, _UNCHECKED.get(check, check)))
    return not_checked, [f for f in found if f.id != "evidence.collateral-missing"]


def render_caveats(headline: str, not_checked: list[tuple[str, str]], warnings: list[Any]) -> None:
    """``headline``, then what was not checked on the same line, then one line per warning."""
    if not_checked:
        headline += ", but not checked: " + "; ".join(text for _, text in not_checked)
    render.line(headline)
    for f in warnings:
        render.line(f"  warning {f.id}: {f.message}")
