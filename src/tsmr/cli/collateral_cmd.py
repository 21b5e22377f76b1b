"""``tsmr collateral fetch``: the collateral a piece of evidence needs, from Intel PCS/PCCS or AMD KDS, into a directory.

The directory has the layout ``--collateral DIR`` (TDX) and ``--certs DIR``
(SEV-SNP) read, so that ``tsmr quote verify`` can then verify offline.  Every
document is verified before it is written (:mod:`tsmr.system.collateral`); if
any cannot be had, nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import BackendError, InputError, ParseError
from ..evidence import bundle, snp
from ..system.collateral import CollateralUnavailable, Document, Fetcher, crl_der, keys_for
from ..system.trust import load_anchors, read_file
from . import render
from .common import ArkOpt, AtOpt, JsonOpt, TrustRootOpt, handle_errors, verification_time, write_output
from .quote_cmd import detect_kind

collateral_app = typer.Typer(help="Fetch verification collateral (TDX: Intel PCS or a PCCS; SEV-SNP: AMD KDS).",
                             no_args_is_help=True)

# Where each document goes: the names --collateral DIR and --certs DIR recognise.
FILES = {
    "tdx.tcb": ("tcb_info.json", "tcb_info_issuer_chain.pem"),
    "tdx.qe": ("qe_identity.json", "qe_identity_issuer_chain.pem"),
    "tdx.pckcrl": ("pck_crl.der", "pck_crl_issuer_chain.pem"),
    "tdx.rootcrl": ("root_ca_crl.der", None),
    "snp.vcek": ("vcek.der", None),
    "snp.chain": ("cert_chain.pem", None),
}


def _evidence(data: bytes, kind: str | None) -> tuple[str, bytes]:
    """(kind, evidence bytes) of a quote, a report, or a tsmr bundle (its evidence)."""
    if data.lstrip()[:1] == b"{":
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("format") == bundle.FORMAT:
            try:
                bundle.check_document(doc)
                ev = doc["evidence"]
                k, raw = ev.get("kind"), ev.get("data")
                if not isinstance(raw, str):
                    raise InputError("the bundle's evidence has no data")
                return str(k), base64.b64decode(raw, validate=True)
            except (ParseError, binascii.Error, ValueError) as exc:
                raise InputError(f"the bundle's evidence cannot be read: {exc}") from None
    return (kind or detect_kind(data)), data


def _files(doc: Document) -> dict[str, bytes]:
    name, chain_name = FILES[doc.key.kind]
    body = crl_der(doc.body) if doc.key.kind in ("tdx.pckcrl", "tdx.rootcrl") else doc.body
    out = {name: body}
    if chain_name is not None and doc.chain is not None:
        out[chain_name] = doc.chain
    return out


def _check_dir(out: Path, names: set[str]) -> None:
    """The output directory exists (made here) and holds no other collateral the readers would also pick up."""
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: not a directory")
    try:
        out.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise InputError(f"-o {out}: its parent directory does not exist") from None
    # What the --collateral and --certs readers look for in a file name (tsmr.system.trust).
    words = ("tcbinfo", "pckcrl", "qeidentity", "enclaveidentity", "rootcrl", "rootcacrl", "certchain", "askark")
    prefixes = ("vcek", "vlek", "ask", "ark")

    def collateral_like(name: str) -> bool:
        flat = name.lower().replace("-", "").replace("_", "")
        return any(w in flat for w in words) or name.lower().startswith(prefixes)

    clash = sorted(e.name for e in out.iterdir() if e.is_file() and e.name not in names and collateral_like(e.name))
    if clash:
        raise InputError(f"-o {out} already holds other collateral files ({', '.join(clash[:5])}): "
                         "choose an empty directory or remove them")


@collateral_app.command("fetch")
@handle_errors
def fetch_cmd(
    evidence: Annotated[str, typer.Argument(help="A TDX quote, an SEV-SNP report, or a tsmr bundle.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Directory to write the collateral to (made if missing).")],
    pccs: Annotated[Optional[str], typer.Option("--pccs", envvar="TSMR_PCCS_URL", show_envvar=True,
                                                help="TDX: Intel PCS (https://api.trustedservices.intel.com) or a "
                                                     "PCCS (https://host:8081).")] = None,
    kds: Annotated[Optional[str], typer.Option("--kds", envvar="TSMR_KDS_URL", show_envvar=True,
                                               help="SEV-SNP: AMD KDS (https://kdsintf.amd.com).")] = None,
    trust_root: TrustRootOpt = None,
    ark: ArkOpt = None,
    kds_product: Annotated[Optional[str], typer.Option(
        "--kds-product", help="SEV-SNP: the product (Milan, Genoa, Turin) when the report does not say it "
                              "(version 2 reports) and --ark does not either.")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="tdx or snp (default: detected).")] = None,
    at: AtOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for each answer.")] = 10.0,
    cacert: Annotated[Optional[str], typer.Option(
        "--cacert", help="CA certificates (PEM) for the PCCS/KDS HTTPS server, instead of the system's.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the collateral EVIDENCE needs, verify it, and write it to a directory.

    TDX (--pccs): tcb_info.json, qe_identity.json, pck_crl.der and root_ca_crl.der,
    each with its issuer chain, as 'tsmr quote verify --collateral DIR' reads them.
    SEV-SNP (--kds, --ark): vcek.der and cert_chain.pem, as '--certs DIR --ark ARK'
    reads them.  Every document is checked first (signatures to the Intel root or
    --trust-root, the pinned --ark; the FMSPC, CA, chip and TCB the evidence names;
    not expired at --at); if one cannot be had or is refused, nothing is written
    (exit 3).
    """
    data = read_file(evidence, "the evidence")
    k, raw = _evidence(data, kind)
    if k not in ("tdx", "snp"):
        raise InputError(f"{k} evidence needs no fetched collateral (tsmr collateral fetch is for tdx and snp)")
    anchors = load_anchors(trust_root=trust_root, ark=ark)
    now = verification_time(at)
    keys = keys_for(k, raw, trust=anchors, product=kds_product, now=now)
    if not keys:
        if k == "snp":
            raise InputError("cannot tell which SEV-SNP collateral this report needs: it is unreadable, "
                             "VLEK-signed, or its product is unknown (give --kds-product or --ark)")
        raise InputError("cannot tell which TDX collateral this quote needs: it cannot be read, or its PCK "
                         "certificate chain does not verify to the trust root at --at (see tsmr quote verify)")
    if k == "tdx" and not pccs:
        raise InputError("TDX collateral comes from Intel PCS or a PCCS: give --pccs URL (or set TSMR_PCCS_URL)")
    if k == "snp" and not kds:
        raise InputError("SEV-SNP collateral comes from AMD KDS: give --kds URL (or set TSMR_KDS_URL)")
    if k == "snp":
        if anchors.snp_ark is None:
            raise InputError("SEV-SNP collateral is verified against the ARK you trust: give --ark")
        try:
            snp.load_certificates(anchors.snp_ark)[0]
            if len(snp.load_certificates(anchors.snp_ark)) != 1:
                raise InputError(f"--ark {ark}: more than one certificate; give the ARK alone")
        except ParseError as exc:
            raise InputError(f"--ark {ark}: {exc}") from None
    fetcher = Fetcher(pccs_url=pccs, kds_url=kds, timeout=timeout, trust=anchors, cafile=cacert)
    docs: list[Document] = []
    failed: list[CollateralUnavailable] = []
    for key in keys:
        try:
            docs.append(fetcher.fetch(key, now=now))
        except CollateralUnavailable as exc:
            failed.append(exc)
    if failed:
        for problem in failed[:-1]:
            render.error(str(problem))
        raise BackendError(f"{str(failed[-1])} ({len(failed)} of {len(keys)} documents could not be had; "
                           "nothing written)", backend=failed[-1].key.source)
    files = {name: body for doc in docs for name, body in _files(doc).items()}
    out = Path(output)
    _check_dir(out, set(files))
    for name, body in files.items():
        write_output(str(out / name), body)
    report: list[dict[str, Any]] = [{"key": d.key.id, "url": d.url, "files": sorted(_files(d)),
                                     "not_after": d.not_after.isoformat(), "refresh_after": d.refresh_after.isoformat()}
                                    for d in docs]
    if as_json:
        render.print_json({"kind": k, "directory": os.path.abspath(out), "documents": report})
        return
    for entry in report:
        render.line(f"{entry['key']}: {', '.join(entry['files'])} (valid until {entry['not_after']})")
    use = f"--collateral {out}" if k == "tdx" else f"--certs {out} --ark {ark}"
    render.line(f"wrote {len(files)} files to {out}; verify with: tsmr quote verify {evidence} {use}")
