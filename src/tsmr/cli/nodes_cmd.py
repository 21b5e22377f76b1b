"""``tsmr nodes``: the verifier's node registry, through its admin API.

Unlike ``tsmr policy`` and ``tsmr tpm-ak``, which edit the verifier's database
directly, these commands talk to a running verifier (``--verifier URL``) with its
admin bearer token (``--admin-token-file``, else ``$TSMR_ADMIN_TOKEN``): the
registry is the service's, and any replica answers for all of them.  Over https
``--cacert`` names the CAs to trust, and ``--client-cert`` / ``--client-key`` the
certificate a verifier with a TLS client CA asks admin requests for.

Exit codes (:func:`tsmr.cli.common.exit_code`): a refusal by the verifier (wrong
token, no such node, an id enrolled already, settings it rejects) is bad input,
2; a verifier that cannot be reached or fails (5xx) is 3.
"""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import BackendError, InputError
from . import render
from .common import CacertOpt, JsonOpt, handle_errors, read_input, url_error

nodes_app = typer.Typer(help="Nodes the verifier attests continuously: enrol, list, show, update, retire "
                             "(through its admin API).", no_args_is_help=True)

# A node id as the verifier takes it (tsmr.service.schemas.NAME_PATTERN): checked here too, since it goes into a URL path.
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# The one identity field of each kind of node (as the verifier's admin API takes it).
IDENTITY_FIELDS = {"tpm": "ak_fingerprint", "tdx": "mrtd", "snp": "measurement", "cca": "rim"}

VerifierOpt = Annotated[str, typer.Option(
    "--verifier", envvar="TSMR_VERIFIER", show_envvar=False,
    help="The verifier's URL, e.g. https://verifier:8443 (else $TSMR_VERIFIER).")]
TokenFileOpt = Annotated[Optional[str], typer.Option(
    "--admin-token-file", help="File holding the admin bearer token (else $TSMR_ADMIN_TOKEN).", show_default=False)]
ClientCertOpt = Annotated[Optional[str], typer.Option(
    "--client-cert", help="TLS client certificate (PEM) for a verifier that requires one for admin requests.",
    show_default=False)]
ClientKeyOpt = Annotated[Optional[str], typer.Option(
    "--client-key", help="The client certificate's private key (PEM), if not in --client-cert's file.",
    show_default=False)]
IdArg = Annotated[str, typer.Argument(help="The node's id (letters, digits, '.', '_', '-'; at most 128).")]
IdentityOpt = Annotated[Optional[str], typer.Option(
    "--identity", help="What binds the node's evidence to it: FIELD=HEX or HEX (tdx mrtd, snp measurement, "
                       "cca rim, tpm ak_fingerprint: SHA-256 of the AK's SubjectPublicKeyInfo).", show_default=False)]
AkOpt = Annotated[Optional[str], typer.Option(
    "--ak", help="TPM nodes: the attestation key (PEM, AK certificate or TPM2B_PUBLIC file) whose fingerprint "
                 "is the identity, instead of --identity.", show_default=False)]
PolicyOpt = Annotated[Optional[str], typer.Option(
    "--policy", help="A stored policy to appraise the node with ('' : the verifier's own).", show_default=False)]
RefvalsOpt = Annotated[Optional[str], typer.Option(
    "--refvals", help="Stored reference values for the node ('' : the verifier's own).", show_default=False)]
IntervalOpt = Annotated[Optional[int], typer.Option(
    "--interval", min=1, help="Seconds between the node's attestations (default 60).", show_default=False)]


class Client:
    """The verifier's admin API, one JSON request at a time (the standard library's HTTP client)."""

    def __init__(self, verifier: str, token_file: str | None, cacert: str | None, client_cert: str | None,
                 client_key: str | None, timeout: float = 30) -> None:
        self.base = verifier.rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            raise InputError(f"--verifier {verifier!r}: give an http:// or https:// URL")
        self.token = _token(token_file)
        self.context = _context(cacert, client_cert, client_key)
        self.timeout = timeout

    @staticmethod
    def node_path(node_id: str, query: str = "") -> str:
        """``/nodes/ID`` for a valid node id (anything else is refused before a request is made)."""
        if not _NODE_ID.fullmatch(node_id) or node_id in (".", ".."):
            raise InputError(f"{node_id!r} is not a node id (letters, digits, '.', '_', '-'; at most 128; "
                             "starting with a letter or digit)")
        return f"/nodes/{node_id}" + (f"?{query}" if query else "")

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, decoded body) of a 2xx answer; a refusal raises InputError, a failure BackendError."""
        import urllib.error
        import urllib.request

        url = self.base + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Content-Type": "application/json", "Accept": "application/json",
            "Authorization": f"Bearer {self.token}", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:
                status, raw = resp.status, resp.read(16 << 20)
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read(1 << 20)
        except (urllib.error.URLError, OSError) as exc:
            raise BackendError(f"verifier {url_error(url, exc)}", backend="verifier") from None
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            raise BackendError(f"verifier {url}: answered {status} with a body that is not JSON",
                               backend="verifier") from None
        if 200 <= status < 300:
            return status, doc
        code = doc.get("error") if isinstance(doc, dict) else None
        detail = doc.get("detail") if isinstance(doc, dict) else None
        if isinstance(detail, list):  # validation errors: where, and what
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:])) or 'body'}: {d.get('msg', '')}"
                               for d in detail if isinstance(d, dict))
        text = f"verifier {method} {path}: {detail or 'refused'} ({code or status})"
        if status == 401:
            text += "; check the admin token (--admin-token-file or $TSMR_ADMIN_TOKEN)"
        if status >= 500 or status == 429:
            raise BackendError(text, backend="verifier")
        raise InputError(text)


def _token(token_file: str | None) -> str:
    if token_file:
        try:
            token = read_input(token_file, "the admin token file").decode("utf-8").strip()
        except UnicodeDecodeError:
            raise InputError(f"the admin token file {token_file} is not UTF-8 text") from None
    else:
        token = os.environ.get("TSMR_ADMIN_TOKEN", "").strip()
    if not token:
        raise InputError("the verifier's admin token is needed: --admin-token-file FILE or $TSMR_ADMIN_TOKEN")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise InputError("the admin token must be printable ASCII without spaces")
    return token


def _context(cacert: str | None, client_cert: str | None, client_key: str | None) -> Any:
    """The TLS context: --cacert's CAs (else the system's) and, when given, the client certificate."""
    import ssl

    from .common import https_context

    context = https_context(cacert)
    if client_cert is None:
        if client_key is not None:
            raise InputError("--client-key needs --client-cert")
        return context
    if context is None:
        context = ssl.create_default_context()
    try:
        context.load_cert_chain(client_cert, client_key)
    except ssl.SSLError as exc:
        raise InputError(f"--client-cert {client_cert}: not a PEM certificate and matching key "
                         f"({exc.reason or exc})") from None
    except OSError as exc:
        raise InputError(f"--client-cert {client_cert}: {exc.strerror or exc}") from None
    return context


def _identity(kind: str, identity: str | None, ak: str | None) -> dict[str, str]:
    """The identity document for ``kind`` from --identity (FIELD=HEX or HEX) or, for TPM nodes, --ak's key."""
    field = IDENTITY_FIELDS[kind]
    if ak is not None:
        if kind != "tpm" or identity is not None:
            raise InputError("--ak is for tpm nodes, instead of --identity")
        from ..evidence import tpm

        return {field: tpm.ak_fingerprint(tpm.load_ak_anchor(read_input(ak, "the attestation key"), f"--ak {ak}"))}
    if identity is None:
        raise InputError(f"a {kind} node needs --identity {field}=HEX" + (" or --ak FILE" if kind == "tpm" else ""))
    name, sep, value = identity.partition("=")
    if not sep:
        name, value = field, identity
    if name != field:
        raise InputError(f"a {kind} node's identity is its {field}, not {name}")
    value = value.strip().lower().removeprefix("0x")
    if not value or any(c not in "0123456789abcdef" for c in value) or len(value) % 2:
        raise InputError(f"--identity {identity!r}: {field} must be hexadecimal")
    return {field: value}


def _name_or_none(value: str) -> str | None:
    return value or None  # '' means the verifier's own


def _show(node: dict[str, Any], as_json: bool) -> None:
    if as_json:
        render.print_json(node)
        return
    table = Table(title=f"node {node.get('id')}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key in ("kind", "identity", "state", "state_since", "last_attested_at", "last_result_id", "interval_s",
                "policy", "refvals", "created_at", "retired_at"):
        value = node.get(key)
        if key == "identity" and isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif key in ("policy", "refvals") and value is None:
            value = "(the verifier's)"
        table.add_row(key, "" if value is None else str(value))
    render.out.print(table)
    history = node.get("history") or []
    if history:
        hist = Table(title="state changes, newest first", title_justify="left")
        for col in ("#", "state", "at", "result", "reason"):
            hist.add_column(col)
        for h in history:
            hist.add_row(str(h.get("seq")), str(h.get("state")), str(h.get("at")), str(h.get("result_id") or ""),
                         str(h.get("reason") or ""))
        render.out.print(hist)


@nodes_app.command("enrol")
@handle_errors
def enrol_cmd(node_id: IdArg, verifier: VerifierOpt,
              kind: Annotated[str, typer.Option("--kind", help="tdx, snp, cca or tpm.")],
              identity: IdentityOpt = None, ak: AkOpt = None, policy: PolicyOpt = None, refvals: RefvalsOpt = None,
              interval: IntervalOpt = None, token_file: TokenFileOpt = None, cacert: CacertOpt = None,
              client_cert: ClientCertOpt = None, client_key: ClientKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Enrol a node (refused when a live node has this id: use update)."""
    if kind not in IDENTITY_FIELDS:
        raise InputError(f"--kind {kind!r}: one of {', '.join(IDENTITY_FIELDS)}")
    body: dict[str, Any] = {"kind": kind, "identity": _identity(kind, identity, ak)}
    if policy:
        body["policy"] = policy
    if refvals:
        body["refvals"] = refvals
    if interval is not None:
        body["interval_s"] = interval
    client = Client(verifier, token_file, cacert, client_cert, client_key)
    _, node = client.call("PUT", client.node_path(node_id), body, {"If-None-Match": "*"})
    if as_json:
        render.print_json(node)
    else:
        render.err.print(f"enrolled {node['kind']} node {node['id']} (state {node['state']})")


@nodes_app.command("list")
@handle_errors
def list_cmd(verifier: VerifierOpt,
             retired: Annotated[bool, typer.Option("--all", help="Retired nodes too.")] = False,
             token_file: TokenFileOpt = None, cacert: CacertOpt = None, client_cert: ClientCertOpt = None,
             client_key: ClientKeyOpt = None, as_json: JsonOpt = False) -> None:
    """The enrolled nodes and their states."""
    client = Client(verifier, token_file, cacert, client_cert, client_key)
    _, doc = client.call("GET", "/nodes?all=true" if retired else "/nodes")
    items = list(doc.get("items", [])) if isinstance(doc, dict) else []
    if as_json:
        render.print_json(items)
        return
    table = Table(title="nodes", title_justify="left")
    for col in ("node", "kind", "state", "since", "last attestation", "interval", "retired"):
        table.add_column(col)
    for n in items:
        table.add_row(str(n.get("id")), str(n.get("kind")), str(n.get("state")), str(n.get("state_since")),
                      str(n.get("last_attested_at") or "never"), f"{n.get('interval_s')} s",
                      str(n.get("retired_at") or ""))
    render.out.print(table)


@nodes_app.command("show")
@handle_errors
def show_cmd(node_id: IdArg, verifier: VerifierOpt,
             history: Annotated[int, typer.Option("--history", min=0, max=1000,
                                                  help="How many state changes to show.")] = 20,
             token_file: TokenFileOpt = None, cacert: CacertOpt = None, client_cert: ClientCertOpt = None,
             client_key: ClientKeyOpt = None, as_json: JsonOpt = False) -> None:
    """A node (retired ones too) with its latest state changes."""
    client = Client(verifier, token_file, cacert, client_cert, client_key)
    _, node = client.call("GET", client.node_path(node_id, f"history={history}"))
    _show(node, as_json)


@nodes_app.command("update")
@handle_errors
def update_cmd(node_id: IdArg, verifier: VerifierOpt, identity: IdentityOpt = None, ak: AkOpt = None,
               policy: PolicyOpt = None, refvals: RefvalsOpt = None, interval: IntervalOpt = None,
               token_file: TokenFileOpt = None, cacert: CacertOpt = None, client_cert: ClientCertOpt = None,
               client_key: ClientKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Change a live node's identity, policy, reference values or interval (what is not given stays).

    A new identity makes the node's state unknown until it attests again.
    """
    client = Client(verifier, token_file, cacert, client_cert, client_key)
    _, current = client.call("GET", client.node_path(node_id, "history=0"))
    if current.get("retired_at"):
        raise InputError(f"node {node_id!r} is retired: enrol it again instead")
    kind = str(current["kind"])
    body: dict[str, Any] = {
        "kind": kind,
        "identity": _identity(kind, identity, ak) if (identity is not None or ak is not None) else current["identity"],
        "policy": current.get("policy") if policy is None else _name_or_none(policy),
        "refvals": current.get("refvals") if refvals is None else _name_or_none(refvals),
        "interval_s": current["interval_s"] if interval is None else interval,
    }
    _, node = client.call("PUT", client.node_path(node_id), body)
    if as_json:
        render.print_json(node)
    else:
        render.err.print(f"updated node {node['id']} (state {node['state']})")


@nodes_app.command("retire")
@handle_errors
def retire_cmd(node_id: IdArg, verifier: VerifierOpt, token_file: TokenFileOpt = None, cacert: CacertOpt = None,
               client_cert: ClientCertOpt = None, client_key: ClientKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Retire a node: attestations as it are refused from now on; its history and results stay."""
    client = Client(verifier, token_file, cacert, client_cert, client_key)
    client.call("DELETE", client.node_path(node_id))
    if as_json:
        render.print_json({"id": node_id, "retired": True})
    else:
        render.err.print(f"retired node {node_id}")
