"""``tsmr serve`` (the HTTP verifier under uvicorn), and ``tsmr policy`` / ``tsmr refvals`` on its database.

``register(app)`` adds ``serve`` and the ``policy`` group to the main Typer
application; ``add_refvals_commands(refvals_app)`` adds ``show``, ``import``
and ``export`` to the ``refvals`` group.  The policy and refvals commands work
on the database directly (``--database URL``, default the SQLite file in the
state directory), the same rows the service's admin endpoints edit.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import BackendError, InputError
from . import render
from .common import JsonOpt, handle_errors, read_input, write_output
from .option_groups import TrustOptions, limit_options, trust_options

__all__ = ["register", "add_refvals_commands", "serve_cmd", "policy_app"]

DatabaseOpt = Annotated[Optional[str], typer.Option(
    "--database", help="Database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                       "(default: $TSMR_DATABASE_URL, else sqlite:///<state dir>/verifier.db).", show_default=False)]
VerifierStateOpt = Annotated[Optional[str], typer.Option(
    "--state-dir", help="Where the default database and EAR key live (default: $TSMR_STATE_DIR or "
                        "~/.local/state/tsmr).", show_default=False)]
VersionOpt = Annotated[Optional[int], typer.Option("--version", min=1, help="A version (default: the latest).")]


@trust_options()
@limit_options(values=True)
def serve_cmd(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless you mean otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8080,
    database: DatabaseOpt = None,
    key: Annotated[Optional[str], typer.Option("--key", help="EAR signing key, PEM PKCS#8; created (mode 0600) if "
                                                             "missing (default: <state dir>/ear-key.pem).")] = None,
    key_alg: Annotated[str, typer.Option("--key-alg", help="Curve of a new key: ES256 or ES384.")] = "ES256",
    publish_key: Annotated[Optional[list[str]], typer.Option(
        "--publish-key", help="Also publish this key in the JWKS (PEM key or certificate, or JWK): a retired "
                              "signing key whose results are still in use, or the next one. Repeatable.",
        show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help="Worker processes.")] = 1,
    admin_token_file: Annotated[Optional[str], typer.Option(
        "--admin-token-file", help="File holding the admin bearer token (else $TSMR_ADMIN_TOKEN; with neither, "
                                   "there are no admin endpoints).")] = None,
    trust: TrustOptions = TrustOptions(),
    allow_debug: Annotated[bool, typer.Option(
        "--allow-debug", help="Accept debuggable guests (TDX DEBUG, SEV-SNP policy DEBUG, CCA not secured; "
                              "else $TSMR_ALLOW_DEBUG); every result still warns evidence.debug-allowed.")] = False,
    require_refvals: Annotated[bool, typer.Option(
        "--require-refvals", help="A signed register that holds a measurement and that the reference values do not "
                                  "cover makes the result contraindicated instead of a warning (else "
                                  "$TSMR_REQUIRE_REFVALS).")] = False,
    challenge_ttl: Annotated[Optional[float], typer.Option("--challenge-ttl", min=1.0, help="Seconds a nonce stays usable (default 300).")] = None,
    policy: Annotated[Optional[str], typer.Option(
        "--policy", help="The stored policy every attestation is appraised with (default: $TSMR_POLICY, else "
                         "'default'; with no policy 'default' stored, the built-in one). A request may name "
                         "another only with the admin token.", show_default=False)] = None,
    refvals: Annotated[Optional[str], typer.Option(
        "--refvals", help="The stored reference values every attestation is appraised with (default: "
                          "$TSMR_REFVALS, else 'default', if stored).", show_default=False)] = None,
    challenge_rate: Annotated[Optional[float], typer.Option(
        "--challenge-rate", min=0.0, help="Challenges per second per client address and worker, after the "
                                          "burst (default 5; 0: no limit).", show_default=False)] = None,
    challenge_burst: Annotated[Optional[int], typer.Option(
        "--challenge-burst", min=1, help="Challenges a client address may take at once (default 30).",
        show_default=False)] = None,
    pccs: Annotated[Optional[str], typer.Option(
        "--pccs", help="Fetch TDX collateral (TCB info, QE identity, CRLs) from this PCCS or Intel PCS base URL "
                       "and cache it in the database (default: $TSMR_PCCS_URL). --collateral files win over "
                       "it.", show_default=False)] = None,
    kds: Annotated[Optional[str], typer.Option(
        "--kds", help="Fetch SEV-SNP VCEKs and the ASK from AMD KDS or a mirror at this base URL and cache them "
                      "(default: $TSMR_KDS_URL); the ARK stays the pinned one (--ark). --vcek/--ask files win "
                      "over it.", show_default=False)] = None,
    kds_product: Annotated[Optional[str], typer.Option(
        "--kds-product", help="SEV-SNP product name for KDS when the report does not give it (e.g. Milan, Genoa; "
                              "default: $TSMR_KDS_PRODUCT, else from the ARK).", show_default=False)] = None,
    fetch_timeout: Annotated[Optional[float], typer.Option(
        "--fetch-timeout", min=0.1, max=600.0, help="Seconds to connect to PCCS/KDS and for each read; a whole "
                                                     "answer gets twice that (default 10; $TSMR_FETCH_TIMEOUT).",
        show_default=False)] = None,
    collateral_cacert: Annotated[Optional[str], typer.Option(
        "--collateral-cacert", help="CA certificates (PEM) an https PCCS/KDS is checked against instead of the "
                                    "system's (default: $TSMR_COLLATERAL_CACERT).", show_default=False)] = None,
    collateral_refresh: Annotated[Optional[float], typer.Option(
        "--collateral-refresh", min=0.1, max=86400.0,
        help="Seconds between each worker's look for cached collateral due for a refresh (default 300; "
             "$TSMR_COLLATERAL_REFRESH).", show_default=False)] = None,
    state_dir: VerifierStateOpt = None,
    tls_cert: Annotated[Optional[str], typer.Option(
        "--tls-cert", help="Serve HTTPS with this certificate (PEM; the chain after it, if any) (else "
                           "$TSMR_TLS_CERT).", show_default=False)] = None,
    tls_key: Annotated[Optional[str], typer.Option(
        "--tls-key", help="The certificate's private key (PEM, unencrypted) (else $TSMR_TLS_KEY).",
        show_default=False)] = None,
    tls_client_ca: Annotated[Optional[str], typer.Option(
        "--tls-client-ca", help="CA certificate(s) (PEM) for client certificates (else $TSMR_TLS_CLIENT_CA): "
                                "clients may present one it issued, the admin endpoints then require one "
                                "besides the admin token; others are refused in the handshake.",
        show_default=False)] = None,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log one JSON object per line.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    limits: Any = None,
) -> None:
    """Run the HTTP verifier: POST /challenge, POST /attest, GET /results/{id}, JWKS, health and metrics.

    Several processes (or hosts) on one PostgreSQL database and one key file
    behave as one verifier.  The database schema is migrated before serving.

    TLS: --tls-cert and --tls-key serve HTTPS (clients: --cacert / $TSMR_CACERT
    when the CA is not a system one).  With --tls-client-ca, clients may present a
    certificate that CA issued (one from any other CA is refused in the handshake);
    the admin endpoints (/policies, /refvals, /tpm-aks, and ?policy= / ?refvals= on
    /attest) then require one besides the admin token (403
    admin.client-certificate-required); the public routes need none.  A
    certificate, key or CA that does not load is refused at startup (exit 2).
    """
    import uvicorn

    from ..appraisal import ear
    from ..service.app import create_app
    from ..service.middleware import JsonFormatter
    from ..service.db import Store, database_errors, make_engine, redact_url, upgrade
    from ..service.settings import Settings

    overrides: dict[str, Any] = {k: v for k, v in {
        "database_url": database, "key_path": key, "admin_token_file": admin_token_file, **trust.settings(),
        "challenge_ttl": challenge_ttl, "state_dir": state_dir, "policy": policy, "refvals": refvals,
        "challenge_rate": challenge_rate, "challenge_burst": challenge_burst,
        "pccs_url": pccs, "kds_url": kds, "kds_product": kds_product, "fetch_timeout": fetch_timeout,
        "collateral_refresh": collateral_refresh,
        "collateral_cacert": os.path.abspath(collateral_cacert) if collateral_cacert else None,
        "publish_keys": os.pathsep.join(os.path.abspath(k) for k in publish_key) if publish_key else None,
        # Absolute: the workers read them again, and must find the same files.
        "tls_cert": os.path.abspath(tls_cert) if tls_cert else None,
        "tls_key": os.path.abspath(tls_key) if tls_key else None,
        "tls_client_ca": os.path.abspath(tls_client_ca) if tls_client_ca else None,
    }.items() if v is not None}
    if key_alg != "ES256" or "TSMR_EAR_ALG" not in os.environ:
        overrides["key_alg"] = key_alg
    if allow_debug:  # else $TSMR_ALLOW_DEBUG decides
        overrides["allow_debug"] = True
    if require_refvals:  # else $TSMR_REQUIRE_REFVALS decides
        overrides["require_refvals"] = True
    overrides["json_logs"] = json_logs or os.environ.get("TSMR_JSON_LOGS", "").lower() in ("1", "true", "yes")
    overrides["log_level"] = log_level.upper()
    # Bundle limits and the time budget (413 / 422 from POST /attest); unset ones come from TSMR_MAX_*.
    overrides.update(limits)
    settings = Settings.from_env(**overrides).resolved()
    from ..service.server import PROTOCOL, uvicorn_tls_options

    tls = uvicorn_tls_options(settings)  # the files load, or exit 2 before anything else is touched
    _check_name(settings.policy)
    _check_name(settings.refvals)
    # Everything that can be wrong is found here, once, before any worker starts: as one sentence
    # and exit 3 when the system is at fault (unwritable state directory, unreachable database).
    with database_errors(settings.database_url or ""):
        engine = make_engine(settings.database_url)
        try:
            upgrade(engine)
            store = Store(engine)
            missing = [f"{kind} {name!r}" for kind, name in (("policy", settings.policy),
                                                            ("refvals", settings.refvals))
                       if name != "default" and store.get(kind, name) is None]  # type: ignore[arg-type]
        finally:
            engine.dispose()
    if missing:
        render.warning(f"{' and '.join(missing)} not stored yet: attestations are refused (503) until "
                       "`tsmr policy import` / `tsmr refvals import` stores them")
    try:
        ear.load_or_create_key(settings.key_path or "", settings.key_alg)
    except OSError as exc:
        raise BackendError.from_oserror(exc, backend="verifier", register=None,
                                        action=f"creating the EAR key {settings.key_path}") from None
    settings.published_keys()
    settings.trust_anchors()
    settings.check_collateral()
    token = settings.read_admin_token()
    if host not in ("127.0.0.1", "::1", "localhost") and not tls:
        render.warning(f"listening on {host} over plain HTTP: give it --tls-cert and --tls-key, or put TLS in "
                       "front of the verifier")
    admin = ("off" if not token else "on, with a client certificate" if settings.tls_client_ca else "on")
    render.err.print(f"tsmr verifier on {'https' if tls else 'http'}://{host}:{port} ({workers} worker(s), "
                     f"database {redact_url(settings.database_url or '')}, admin endpoints {admin})")
    fmt: dict[str, Any] = ({"()": JsonFormatter} if settings.json_logs else
                           {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"})
    log_config = {"version": 1, "disable_existing_loggers": False,
                  "formatters": {"default": fmt},
                  "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                           "stream": "ext://sys.stderr"}},
                  "loggers": {"uvicorn": {"handlers": ["default"], "level": settings.log_level, "propagate": False},
                              "uvicorn.error": {"level": settings.log_level},
                              "uvicorn.access": {"handlers": [], "propagate": False}}}
    common = dict(host=host, port=port, log_config=log_config, access_log=False, server_header=False,
                  proxy_headers=False, timeout_graceful_shutdown=10, http=PROTOCOL, **tls)
    if workers == 1:
        with database_errors(settings.database_url or ""):
            app = create_app(replace(settings, migrate=False))
        uvicorn.run(app, **common)
        return
    # Workers are separate processes: they read their settings from the environment, and sum
    # their metrics through a directory of this run's own.
    import shutil
    import tempfile

    metrics_dir = tempfile.mkdtemp(prefix="tsmr-metrics-")
    os.environ.update(settings.to_env())
    os.environ["TSMR_MIGRATE"] = "0"
    os.environ["TSMR_METRICS_DIR"] = metrics_dir
    try:
        uvicorn.run("tsmr.service.app:app_from_env", factory=True, workers=workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


# -- policies and reference values on the database ------------------------------------------------

policy_app = typer.Typer(help="Appraisal policies (Rego) stored in the verifier's database, versioned.",
                         no_args_is_help=True)


def _store(database: str | None, state_dir: str | None) -> Any:
    from ..service.db import Store, database_errors

    url = database or os.environ.get("TSMR_DATABASE_URL") or None
    with database_errors(url or ""):  # an unreachable database is one sentence and exit 3
        return Store.open(url, state_dir=state_dir)


def _check_name(name: str) -> str:
    import re

    from ..service.app import NAME_PATTERN

    if not re.match(NAME_PATTERN, name):
        raise InputError(f"{name!r} is not a valid name (letters, digits, '.', '_', '-'; at most 128)")
    return name


def _show(kind: str, name: str | None, version: int | None, database: str | None, state_dir: str | None,
          as_json: bool) -> None:
    store = _store(database, state_dir)
    try:
        if name is None:
            rows = store.names(kind)
            if as_json:
                render.print_json([{"name": n, "version": v, "created_at": t.isoformat()} for n, v, t in rows])
                return
            table = Table(title=f"{'policies' if kind == 'policy' else 'reference values'}", title_justify="left")
            for col in ("name", "latest version", "created"):
                table.add_column(col)
            for n, v, t in rows:
                table.add_row(n, str(v), t.isoformat(timespec="seconds"))
            render.out.print(table)
            return
        row = store.get(kind, _check_name(name), version)
        if row is None:
            raise InputError(f"no {kind} named {name!r}" + (f" with version {version}" if version else ""))
        versions = [r.version for r in store.versions(kind, name)]
        content = row.rego if kind == "policy" else row.document
        if as_json:
            render.print_json({"name": row.name, "version": row.version, "created_at": row.created_at.isoformat(),
                               "versions": versions, ("rego" if kind == "policy" else "document"): content})
            return
        render.err.print(f"{kind} {row.name} version {row.version} of {versions[-1]} "
                         f"(created {row.created_at.isoformat(timespec='seconds')})")
        # For people (export writes the exact bytes): lines kept, any other control shown escaped.
        render.document(content if kind == "policy" else json.dumps(content, indent=2, sort_keys=True))
    finally:
        store.close()


def _import(kind: str, name: str, path: str, database: str | None, state_dir: str | None, as_json: bool) -> None:
    from ..service.app import check_policy, check_refvals

    _check_name(name)
    raw = read_input(path)
    if kind == "policy":
        try:
            content: Any = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text") from None
        problem = check_policy(content)
    else:
        try:
            content = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"{path} is not JSON: {exc}") from None
        if not isinstance(content, dict):
            raise InputError(f"{path}: reference values are a JSON object")
        problem = check_refvals(content)
    if problem:
        raise InputError(f"{path}: {problem}")
    store = _store(database, state_dir)
    try:
        row = store.put(kind, name, content)
    finally:
        store.close()
    if as_json:
        render.print_json({"name": row.name, "version": row.version, "created_at": row.created_at.isoformat()})
    else:
        render.line(f"stored {kind} {row.name} version {row.version}")


def _export(kind: str, name: str, output: str | None, version: int | None, database: str | None,
            state_dir: str | None) -> None:
    store = _store(database, state_dir)
    try:
        row = store.get(kind, _check_name(name), version)
    finally:
        store.close()
    if row is None:
        raise InputError(f"no {kind} named {name!r}" + (f" with version {version}" if version else ""))
    if kind == "policy":
        data = row.rego.encode() if row.rego.endswith("\n") else (row.rego + "\n").encode()
    else:
        data = (json.dumps(row.document, indent=2, sort_keys=True) + "\n").encode()
    write_output(None if output in (None, "-") else output, data)


NameArg = Annotated[str, typer.Argument(help="The name (letters, digits, '.', '_', '-').")]
OptionalNameArg = Annotated[Optional[str], typer.Argument(help="A name; without one, list every name.")]
OutputOpt = Annotated[Optional[str], typer.Option("--output", "-o", help="File to write (default: standard output).")]


@policy_app.command("show")
@handle_errors
def policy_show(name: OptionalNameArg = None, version: VersionOpt = None, database: DatabaseOpt = None,
                state_dir: VerifierStateOpt = None, as_json: JsonOpt = False) -> None:
    """List the policies, or print one (its latest version unless --version)."""
    _show("policy", name, version, database, state_dir, as_json)


@policy_app.command("import")
@handle_errors
def policy_import(name: NameArg,
                  path: Annotated[str, typer.Argument(help="A Rego file ('-' for standard input).")],
                  database: DatabaseOpt = None, state_dir: VerifierStateOpt = None, as_json: JsonOpt = False) -> None:
    """Store a Rego file as the next version of a policy (the name 'default' is used when a request names none)."""
    _import("policy", name, path, database, state_dir, as_json)


@policy_app.command("export")
@handle_errors
def policy_export(name: NameArg, output: OutputOpt = None, version: VersionOpt = None, database: DatabaseOpt = None,
                  state_dir: VerifierStateOpt = None) -> None:
    """Write a policy's Rego text (latest version unless --version)."""
    _export("policy", name, output, version, database, state_dir)


def add_refvals_commands(refvals_app: typer.Typer) -> None:
    """Add ``show``, ``import`` and ``export`` (on the verifier's database) to the ``refvals`` group."""

    @refvals_app.command("show")
    @handle_errors
    def refvals_show(name: OptionalNameArg = None, version: VersionOpt = None, database: DatabaseOpt = None,
                     state_dir: VerifierStateOpt = None, as_json: JsonOpt = False) -> None:
        """List the stored reference values, or print one document (latest version unless --version)."""
        _show("refvals", name, version, database, state_dir, as_json)

    @refvals_app.command("import")
    @handle_errors
    def refvals_import(name: NameArg,
                       path: Annotated[str, typer.Argument(help="A JSON document ('-' for standard input).")],
                       database: DatabaseOpt = None, state_dir: VerifierStateOpt = None,
                       as_json: JsonOpt = False) -> None:
        """Store a reference values document as the next version of NAME ('default' is used when a request names none)."""
        _import("refvals", name, path, database, state_dir, as_json)

    @refvals_app.command("export")
    @handle_errors
    def refvals_export(name: NameArg, output: OutputOpt = None, version: VersionOpt = None,
                       database: DatabaseOpt = None, state_dir: VerifierStateOpt = None) -> None:
        """Write a stored reference values document (latest version unless --version)."""
        _export("refvals", name, output, version, database, state_dir)


# -- TPM attestation keys the verifier trusts ------------------------------------------------------

tpm_ak_app = typer.Typer(help="TPM attestation keys enrolled in the verifier's database: the quotes it trusts.",
                         no_args_is_help=True)


@tpm_ak_app.command("enrol")
@handle_errors
def ak_enrol(name: NameArg,
             file: Annotated[str, typer.Argument(help="PEM public key, AK certificate, TPM2B_PUBLIC, or a TPM quote "
                                                      "JSON/bundle whose ak_public to enrol ('-' for standard input).")],
             database: DatabaseOpt = None, state_dir: VerifierStateOpt = None, as_json: JsonOpt = False) -> None:
    """Enrol (or replace) the attestation key called NAME (e.g. the node's name); its quotes are trusted from now on."""
    from ..evidence import tpm

    _check_name(name)
    raw = read_input(file)
    try:
        doc = json.loads(raw)
        raw = bytes.fromhex((doc.get("evidence") or doc)["ak_public"]) if isinstance(doc, dict) else raw
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # not a quote document: a key file
    key = tpm.load_ak_anchor(raw, f"TPM AK {file}")
    pem, fingerprint = tpm.ak_pem(key), tpm.ak_fingerprint(key)
    store = _store(database, state_dir)
    try:
        row = store.enrol_ak(name, pem, fingerprint)
    finally:
        store.close()
    if as_json:
        render.print_json({"name": row.name, "fingerprint": row.fingerprint})
    else:
        render.err.print(f"enrolled TPM AK {row.name} (SHA-256 {row.fingerprint})")


@tpm_ak_app.command("list")
@handle_errors
def ak_list(database: DatabaseOpt = None, state_dir: VerifierStateOpt = None, as_json: JsonOpt = False) -> None:
    """The enrolled attestation keys."""
    store = _store(database, state_dir)
    try:
        rows = store.list_aks()
    finally:
        store.close()
    if as_json:
        render.print_json([{"name": r.name, "fingerprint": r.fingerprint, "created_at": r.created_at.isoformat()}
                           for r in rows])
        return
    table = Table(title="TPM attestation keys", title_justify="left")
    for col in ("name", "SHA-256 of the key", "enrolled"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.name, r.fingerprint, r.created_at.isoformat(timespec="seconds"))
    render.out.print(table)


@tpm_ak_app.command("remove")
@handle_errors
def ak_remove(name: NameArg, database: DatabaseOpt = None, state_dir: VerifierStateOpt = None) -> None:
    """Stop trusting the attestation key called NAME."""
    store = _store(database, state_dir)
    try:
        if not store.delete_ak(_check_name(name)):
            raise InputError(f"no TPM attestation key named {name!r}")
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    """Add ``tsmr serve`` and the ``tsmr policy`` and ``tsmr tpm-ak`` groups to the main application."""
    app.command("serve")(handle_errors(serve_cmd))
    app.add_typer(policy_app, name="policy")
    app.add_typer(tpm_ak_app, name="tpm-ak")
