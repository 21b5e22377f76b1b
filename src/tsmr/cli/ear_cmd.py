"""``tsmr ear``: check an EAR (a verifier's signed result) offline, and manage EAR signing keys.

``verify`` is what a relying party runs: it checks the JWT's signature against
the verifier's JWKS (a file, a URL, or key files), the time, and optionally
the nonce it asked with, the worst status it accepts and the policy (and
reference values) the result must have been appraised with: a status means
little without knowing which policy gave it.  ``key`` creates or
shows a signing key; ``jwks`` turns key files into the JWK Set to publish.

Rotating the signing key of a running verifier:

1. ``tsmr ear key new.pem``, then restart every replica with
   ``--publish-key new.pem`` (relying parties fetch a JWKS that holds it);
2. restart them with ``--key new.pem --publish-key old.pem`` (new results are
   signed with the new key, older ones still verify);
3. once no result signed with the old key is in use, drop ``--publish-key``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import InputError, SignatureError
from . import render
from .common import (AtOpt, CacertOpt, JsonOpt, handle_errors, https_context, judge, parse_nonce, read_input,
                     url_error, verification_time)

__all__ = ["ear_app"]

ear_app = typer.Typer(help="EAR results: verify one offline (relying parties); create and publish signing keys.",
                      no_args_is_help=True)

# ear.status values from best to worst (draft-ietf-rats-ear §3.2)
STATUS_ORDER = ("affirming", "warning", "contraindicated")
MAX_JWKS_BYTES = 1 << 20


def _fetch_jwks(url: str, cacert: str | None = None) -> bytes:
    import urllib.error
    import urllib.request

    from ..errors import BackendError

    context = https_context(cacert)
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            data = resp.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise BackendError(f"{url}: HTTP {exc.code}", backend="verifier") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BackendError(url_error(url, exc), backend="verifier") from None
    if len(data) > MAX_JWKS_BYTES:
        raise BackendError(f"{url}: the JWKS is larger than {MAX_JWKS_BYTES} bytes", backend="verifier")
    return data


def _trusted_keys(jwks: str | None, keys: list[str], cacert: str | None = None) -> list[Any]:
    from ..appraisal import ear

    out: list[Any] = []
    if jwks:
        if jwks.startswith(("http://", "https://")):
            out.extend(ear.load_public_keys(_fetch_jwks(jwks, cacert), what=jwks))
        else:
            out.extend(ear.load_public_keys(read_input(jwks, "the JWKS"), what=jwks))
    for path in keys:
        out.extend(ear.load_public_keys(read_input(path, "the key"), what=path))
    if not out:
        raise InputError("no key to verify with: give --jwks FILE|URL (e.g. http://VERIFIER/.well-known/jwks.json) "
                         "or --key PEM")
    return out


def _same_document(got: Any, want: str) -> bool:
    """Whether an EAR's ``name@version`` is the one wanted: the same, or any version of a bare name."""
    if not isinstance(got, str):
        return False
    return got == want or ("@" not in want and got.rpartition("@")[0] == want)


def _time(epoch: Any) -> str | None:
    if not isinstance(epoch, int):
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


@ear_app.command("verify")
@handle_errors
def verify_cmd(
    token: Annotated[str, typer.Argument(help="The EAR: a file holding the JWT, or '-' for standard input.")],
    jwks: Annotated[Optional[str], typer.Option(
        "--jwks", help="The verifier's keys: a JWKS file or URL (http(s)://VERIFIER/.well-known/jwks.json; "
                       "over https:// the CAs of --cacert, else the system's, are trusted).")] = None,
    cacert: CacertOpt = None,
    key: Annotated[Optional[list[str]], typer.Option(
        "--key", help="A trusted key: PEM public key, private key or certificate, or a JWK. Repeatable.",
        show_default=False)] = None,
    nonce: Annotated[Optional[str], typer.Option(
        "--nonce", help="The nonce the result must answer: hex (as 'tsmr challenge' and 'tsmr attest' print it) "
                        "or base64url (as the EAR's eat_nonce carries it).")] = None,
    require: Annotated[Optional[str], typer.Option(
        "--require", help="Worst ear.status accepted in every submodule: affirming or warning.")] = None,
    policy_id: Annotated[Optional[str], typer.Option(
        "--policy-id", help="The policy every submodule must have been appraised with (ear.appraisal-policy-id): "
                            "NAME (any version) or NAME@VERSION, e.g. default or default@3.")] = None,
    refvals_id: Annotated[Optional[str], typer.Option(
        "--refvals-id", help="The reference values every submodule must have been appraised with "
                             "(tsmr.refvals-id): NAME or NAME@VERSION.")] = None,
    at: AtOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify an EAR offline: signature (by kid, from the JWKS), issue time, nonce, status and policy.

    Exit 0 when it verifies (and meets --nonce, --require, --policy-id and --refvals-id), 1 when it
    does not, naming the check; 2 when the EAR is not a JWS of JSON (ear.format, ear.encoding).
    """
    import base64

    from ..appraisal import ear

    if require is not None and require not in STATUS_ORDER[:2]:
        raise InputError(f"--require takes affirming or warning, not {require!r}")
    want_nonce: bytes | None = None
    encoding = ""
    if nonce is not None:
        want_nonce, encoding = parse_nonce(nonce, base64url=True)
    text = read_input(token, "the EAR").decode("ascii", errors="replace").strip()
    trusted = _trusted_keys(jwks, key or [], cacert)
    now = verification_time(at)
    problems: list[tuple[str, str]] = []
    claims: dict[str, Any] = {}
    try:
        claims = ear.verify(text, trusted, now=now)
    except SignatureError as exc:
        problems.append((exc.check or "ear", str(exc)))
    raw_submods = claims.get("submods")
    submods: dict[Any, Any] = raw_submods if isinstance(raw_submods, dict) else {}
    if claims and want_nonce is not None:
        got = claims.get("eat_nonce")
        try:
            got_bytes = base64.urlsafe_b64decode(str(got) + "=" * (-len(str(got)) % 4)) if got else None
        except ValueError:
            got_bytes = None
        if got_bytes != want_nonce:
            given = f"--nonce (read as {encoding}, {len(want_nonce)} bytes)"
            problems.append(("ear.nonce", f"the EAR answers another nonce than {given}" if got
                             else f"the EAR carries no nonce, and {given} was asked for"))
    if claims and require is not None:
        limit = STATUS_ORDER.index(require)
        for name, sub in submods.items():
            status = sub.get("ear.status") if isinstance(sub, dict) else None
            if status not in STATUS_ORDER or STATUS_ORDER.index(status) > limit:
                problems.append(("ear.status", f"submodule {name} is {status}, worse than {require}"))
        if not submods:
            problems.append(("ear.status", "the EAR has no submodule to judge"))
    for check, claim, want, what in (("ear.policy", "ear.appraisal-policy-id", policy_id, "policy"),
                                     ("ear.refvals", "tsmr.refvals-id", refvals_id, "reference values")):
        if not claims or want is None:
            continue
        for name, sub in submods.items():
            got = sub.get(claim) if isinstance(sub, dict) else None
            if not _same_document(got, want):
                # repr: the claim is the token's text, control characters and all
                shown = repr(got[:200]) if isinstance(got, str) else "none"
                problems.append((check, f"submodule {str(name)[:64]!r} was appraised with {what} {shown}, "
                                        f"not {want!r}"))
        if not submods:
            problems.append((check, "the EAR has no submodule to judge"))
    ok = not problems
    rows = [{"submod": name, "status": sub.get("ear.status"), "policy": sub.get("ear.appraisal-policy-id"),
             "findings": sub.get("tsmr.findings", [])} for name, sub in submods.items() if isinstance(sub, dict)]
    if as_json:
        render.print_json({"ok": ok, "problems": [{"check": c, "message": m} for c, m in problems],
                           **({"nonce": {"hex": want_nonce.hex(), "read_as": encoding}} if want_nonce is not None else {}),
                           "issued_at": _time(claims.get("iat")), "verifier": claims.get("ear.verifier-id"),
                           "submods": rows, "claims": claims or None})
    else:
        if claims:
            vid = claims.get("ear.verifier-id") or {}
            render.out.print(f"issued {_time(claims.get('iat'))} by {vid.get('developer', '?')} ({vid.get('build', '?')})")
            table = Table("submodule", "status", "policy", "findings")
            for row in rows:
                colour = {"affirming": "green", "warning": "yellow"}.get(str(row["status"]), "red")
                table.add_row(str(row["submod"]), render.styled(str(row["status"]), colour), str(row["policy"] or ""),
                              str(len(row["findings"])))
            render.out.print(table)
        for check, message in problems:
            render.error(f"{check}: {message}")
        if ok:
            render.out.print(render.styled("the EAR verifies", "green"))
    judge([check for check, _ in problems], passed=ok)


@ear_app.command("key")
@handle_errors
def key_cmd(
    path: Annotated[str, typer.Argument(help="The key file (PEM PKCS#8): created, mode 0600, if missing.")],
    alg: Annotated[str, typer.Option("--alg", help="Curve of a new key: ES256 or ES384.")] = "ES256",
    as_json: JsonOpt = False,
) -> None:
    """Create an EAR signing key if there is none at PATH, and print its public JWK (kid = RFC 7638 thumbprint)."""
    from ..appraisal import ear

    existed = Path(path).exists()
    k = ear.load_or_create_key(path, alg)
    entry = ear.jwk(k)
    if as_json:
        render.print_json({"path": path, "created": not existed, "jwk": entry})
        return
    render.out.print(f"{'existing' if existed else 'new'} {entry['alg']} key {path}: kid {entry['kid']}")


@ear_app.command("jwks")
@handle_errors
def jwks_cmd(
    keys: Annotated[list[str], typer.Argument(help="Key files: PEM public or private keys, certificates, JWKs or JWKS.")],
) -> None:
    """Print the JWK Set publishing these keys' public halves (each once), for relying parties."""
    from ..appraisal import ear

    found: list[Any] = []
    for path in keys:
        found.extend(ear.load_public_keys(read_input(path, "the key"), what=path))
    render.print_json(ear.jwks(found))
