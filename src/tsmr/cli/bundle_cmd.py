"""``tsmr attest`` and ``tsmr verify``: evidence bundles (evidence + nonce + logs) end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import EvidenceError, InputError
from . import render
from .common import (AtOpt, BackendOpt, CacertOpt, JsonOpt, LogDirOpt, StateDirOpt, https_context, judge,
                     parse_nonce, read_bundle, refuse, url_error, verification_time, write_output)
from .common import AllowDebugOpt
from .common import read_input
from .quote_cmd import (ConfigfsOpt, GuidOpt, ManifestVerOpt, PrivlevelOpt, ServiceOpt, anchor_flag, caveats,
                        render_caveats)
from .option_groups import TrustOptions, limit_options, trust_options

VerifierOpt = Annotated[Optional[str], typer.Option(
    "--verifier", help="A tsmr verifier's URL (e.g. http://127.0.0.1:8080): get a challenge there and send it the bundle.")]


def _http_json(method: str, url: str, body: Any = None, timeout: float = 60,
               cacert: str | None = None) -> tuple[int, Any]:
    """One JSON request with the standard library; (status, decoded body). Network and TLS errors are BackendError.

    ``cacert``: for https://, the PEM CA certificates to trust instead of the system's.
    """
    import urllib.error
    import urllib.request

    from ..errors import BackendError

    context = https_context(cacert)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise BackendError(f"verifier {url_error(url, exc)}", backend="verifier") from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        raise BackendError(f"verifier {url}: answered {status} with a body that is not JSON",
                           backend="verifier") from None


def challenge_nonce(verifier: str, cacert: str | None = None) -> bytes:
    """A fresh single-use nonce from the verifier."""
    from ..errors import BackendError

    status, body = _http_json("POST", verifier.rstrip("/") + "/challenge", {}, cacert=cacert)
    if status not in (200, 201) or not isinstance(body, dict) or "nonce" not in body:
        raise BackendError(f"verifier {verifier}: /challenge answered {status}: {body}", backend="verifier")
    try:
        return bytes.fromhex(body["nonce"])
    except (TypeError, ValueError):
        raise BackendError(f"verifier {verifier}: the nonce is not hex", backend="verifier") from None


def challenge_cmd(
    verifier: Annotated[str, typer.Option("--verifier", help="The verifier's URL, e.g. http://127.0.0.1:8080 "
                                                            "or https://verifier.example:8443.")],
    cacert: CacertOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask a verifier for a single-use nonce (what 'tsmr attest --verifier' does first).

    Over https:// the verifier's certificate is checked against the system's CAs,
    or only against --cacert's; an untrusted one fails (exit 3).
    """
    from ..errors import BackendError

    status, body = _http_json("POST", verifier.rstrip("/") + "/challenge", {}, cacert=cacert)
    if status not in (200, 201) or not isinstance(body, dict):
        raise BackendError(f"verifier {verifier}: /challenge answered {status}: {body}", backend="verifier")
    if as_json:
        render.print_json(body)
    else:
        render.line(str(body.get("nonce")))


def attest_cmd(
    nonce: Annotated[Optional[str], typer.Option("--nonce", help="The relying party's nonce, hex (with --verifier: fetched from it).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Where to write the bundle (JSON).")] = None,
    verifier: VerifierOpt = None,
    ear: Annotated[Optional[str], typer.Option("--ear", help="With --verifier: write the signed result (EAR JWT) here.")] = None,
    cacert: CacertOpt = None,
    agent: Annotated[Optional[str], typer.Option("--agent", help="Have the tsmr agent at this socket produce the bundle (it owns the runtime logs).")] = None,
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

    With --verifier the nonce it issued is printed (and is "nonce" under
    --json): give it to 'tsmr ear verify --nonce' to check the result answers
    this attestation.  The exit code is the verifier's verdict: 0 affirming,
    1 any other status or a refused nonce, 2 a bundle it could not read.
    """
    from ..system.acquire import acquire, platform_logs
    from ..evidence.bundle import make_bundle
    from ..runtime_log.store import default_log_dir

    if output is None and verifier is None:
        raise InputError("give -o FILE for the bundle, --verifier URL to have it appraised, or both")
    if nonce is None and verifier is None:
        raise InputError("--nonce is needed (or --verifier, which issues one)")
    if nonce is not None:
        value = parse_nonce(nonce)[0]
    else:
        assert verifier is not None
        value = challenge_nonce(verifier, cacert)
    if agent is not None:
        from ..agent.client import AgentClient

        if backend or configfs or privlevel is not None or service_provider or service_guid:
            raise InputError("with --agent the agent's configuration chooses the backend and options")
        doc = AgentClient(agent).evidence(value)
        _finish(doc, output, verifier, ear, as_json, cacert=cacert, summary={"output": output, "nonce": value.hex(), "source": "agent",
                                                               "kind": doc.get("evidence", {}).get("kind")})
        return
    got = acquire(value, backend=backend, state_dir=state_dir, configfs=configfs, privlevel=privlevel,
                  service_provider=service_provider, service_guid=service_guid,
                  service_manifest_version=manifest_version)
    if got.trust_anchor:
        render.warning(f"emulated evidence, signed with a test key: verify with {anchor_flag(got.kind)} "
                       f"{got.trust_anchor}")
    logs = platform_logs(got)
    base = Path(log_dir) if log_dir else default_log_dir()
    provider = got.provider
    if provider and (base / provider).is_dir():
        for path in sorted((base / provider).glob("*.log")):
            logs.append({"format": "tsmr", "data": read_input(str(path), "the runtime log"), "register": path.stem,
                         "name": str(path)})
    doc = make_bundle(nonce=value, evidence=got.evidence, logs=logs)
    _finish(doc, output, verifier, ear, as_json, cacert=cacert,
            summary={"output": output, "nonce": value.hex(), "kind": got.kind, "source": got.source,
                     "logs": [lg.get("name") for lg in logs], "trust_anchor": got.trust_anchor})


def _finish(doc: dict[str, Any], output: str | None, verifier: str | None, ear: str | None, as_json: bool,
            *, summary: dict[str, Any], cacert: str | None = None) -> None:
    """Write the bundle and/or have the verifier appraise it."""
    if output:
        write_output(output, (json.dumps(doc, indent=1) + "\n").encode())
    if verifier is None:
        if as_json:
            render.print_json(summary)
        else:
            render.line(f"wrote {output}: {summary.get('kind')} evidence ({summary.get('source')}) "
                        f"and {len(doc.get('logs') or [])} log(s)")
        return
    from ..errors import BackendError

    nonce = str(doc.get("nonce"))
    status, body = _http_json("POST", verifier.rstrip("/") + "/attest", doc, cacert=cacert)  # the bundle is the body
    if status >= 500 or not isinstance(body, dict):
        raise BackendError(f"verifier {verifier}: /attest answered {status}: {body}", backend="verifier")
    if status >= 400:
        code = str(body.get("error", ""))
        message = f"verifier {verifier} refused the bundle over nonce {nonce} ({status} {code}): {body.get('detail', body)}"
        if code.startswith("freshness."):  # a nonce never issued, used already or expired: a "no", not bad input
            if as_json:
                render.print_json({"nonce": nonce, "status": status, **body})
            render.error(message)
            refuse()
        raise InputError(message)
    if ear and body.get("ear"):
        write_output(ear, (body["ear"] + "\n").encode())
    if as_json:
        render.print_json({"nonce": nonce, **body})
    else:
        render.line(f"nonce: {nonce}")
        render_appraisal(body, title=f"{verifier}: result {body.get('id', '?')}")
    findings = [f for f in body.get("findings") or [] if isinstance(f, str)]
    judge(findings, passed=body.get("status") == "affirming")


def render_appraisal(body: dict[str, Any], *, title: str) -> None:
    """A verifier's answer for people: registers, events by domain, findings, status."""
    result = body.get("result") or {}
    regs = result.get("registers") or []
    if regs:
        table = Table(title=title, title_justify="left")
        for col in ("register", "bank", "status", "explanation"):
            table.add_column(col, overflow="fold")
        for r in regs:
            st = r.get("status", "?")
            table.add_row(str(r.get("register")), str(r.get("bank")), st if st == "matched" else render.styled(str(st), "red"),
                          str(r.get("explanation") or ""))
        render.out.print(table)
    for domain, events in sorted((result.get("events") or {}).items()):
        render.line(f"events of {domain}: {len(events)}")
        for ev in events[:20]:
            render.line(f"  {ev.get('register', '')} #{ev.get('seq', '?')} {ev.get('operation', '')} {ev.get('content') or ''}".rstrip())
    unproven = [e for e in (result.get("unproven") or []) if isinstance(e, dict)]
    if unproven:
        render.line(f"unproven events (not judged): {len(unproven)}")
        for ev in unproven[:20]:
            render.line(f"  {ev.get('register', '')} #{ev.get('seq', '?')} {ev.get('domain', '')} {ev.get('operation', '')}: "
                        f"{ev.get('reason', '')}")
    findings = [f for f in (result.get("findings") or body.get("findings") or []) if isinstance(f, dict)]
    for f in findings:
        if f.get("severity") != "info":
            render.line(f"finding {f.get('id')}: {f.get('message')}")
    status = body.get("status", "?")
    colour = {"affirming": "green", "warning": "yellow"}.get(status, "red")
    render.out.print(render.assemble("status: ", (str(status), colour),
                                     f"  (EAR: {len(body['ear'])} bytes, signed)" if body.get("ear") else ""))


@trust_options()
@limit_options(runtime_events=False)
def verify_cmd(
    bundle: Annotated[str, typer.Argument(help="A bundle written by 'tsmr attest' (or any tsmr-bundle document).")],
    nonce: Annotated[Optional[str], typer.Option(
        "--nonce", help="The nonce you issued, hex: the bundle must be over it (without it freshness "
                        "is not checked).")] = None,
    at: AtOpt = None,
    trust: TrustOptions = TrustOptions(),
    allow_debug: AllowDebugOpt = False,
    limits: Any = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a bundle's evidence and replay its logs against the signed registers; exit 1 on any failure.

    Says what could not be checked (freshness without --nonce, CRLs and TCB
    status without --collateral, SEV-SNP revocation without --crl) and a TCB
    status short of UpToDate; debuggable guests fail unless --allow-debug.
    A bundle over another nonce than --nonce fails freshness.nonce-mismatch.
    """
    import hmac

    from ..evidence.bundle import check_document, verify_bundle

    expected = parse_nonce(nonce)[0] if nonce is not None else None
    doc = read_bundle(bundle)
    anchors = trust.anchors()
    when = verification_time(at)
    try:
        result = verify_bundle(doc, now=when, trust=anchors, allow_debug=allow_debug, limits=limits)
        if expected is not None and not hmac.compare_digest(expected, check_document(doc)):
            raise EvidenceError(f"the bundle is over nonce {doc.get('nonce')}, not over --nonce {expected.hex()}",
                                check="freshness.nonce-mismatch")
    except EvidenceError as exc:
        if as_json:
            render.print_json({"verified": False, "check": exc.check, "error": str(exc)})
        else:
            render.line(f"FAILED {exc.check}: {exc}")
        refuse()
    rows = [r.__dict__ for r in result.rows]
    not_checked, warnings = caveats(result.kind, result.claims, nonce_given=expected is not None)
    if as_json:
        render.print_json({"verified": True, "kind": result.kind, "ok": result.ok, "registers": rows,
                           "not_checked": [c for c, _ in not_checked], "warnings": [f.to_dict() for f in warnings]})
    else:
        render_caveats(f"{bundle}: {result.kind} evidence verified", not_checked, warnings)
        table = Table(title=f"{bundle}: {result.kind} evidence verified", title_justify="left")
        for col in ("register", "bank", "status", "signed value", "explanation"):
            table.add_column(col, overflow="fold")
        for r in result.rows:
            status = r.status if r.status == "matched" else render.styled(r.status, "red")
            table.add_row(r.register, r.bank, status, r.signed or "-", r.explanation)
        render.out.print(table)
    if not result.ok:
        refuse()
