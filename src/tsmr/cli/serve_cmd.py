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
import sys
from dataclasses import replace
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import InputError
from . import render
from .common import (ArkOpt, AskOpt, CollateralOpt, CpakOpt, JsonOpt, TrustRootOpt, VcekOpt, handle_errors, read_input,
                     write_output)

__all__ = ["register", "add_refvals_commands", "serve_cmd", "policy_app"]

DatabaseOpt = Annotated[Optional[str], typer.Option(
    "--database", help="Database URL: sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                       "(default: $TSMR_DATABASE_URL, else sqlite:///<state dir>/verifier.db).", show_default=False)]
VerifierStateOpt = Annotated[Optional[str], typer.Option(
    "--state-dir", help="Where the default database and EAR key live (default: $TSMR_STATE_DIR or "
                        "~/.local/state/tsmr).", show_default=False)]
VersionOpt = Annotated[Optional[int], typer.Option("--version", min=1, help="A version (default: the latest).")]


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
    trust_root: TrustRootOpt = None,
    collateral: CollateralOpt = None,
    cpak: CpakOpt = None,
    ark: ArkOpt = None,
    ask: AskOpt = None,
    vcek: VcekOpt = None,
    challenge_ttl: Annotated[Optional[float], typer.Option("--challenge-ttl", min=1.0, help="Seconds a nonce stays usable (default 300).")] = None,
    state_dir: VerifierStateOpt = None,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log one JSON object per line.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the HTTP verifier: POST /challenge, POST /attest, GET /results/{id}, JWKS, health and metrics.

    Several processes (or hosts) on one PostgreSQL database and one key file
    behave as one verifier.  The database schema is migrated before serving.
    """
    import uvicorn

    from ..appraisal import ear
    from ..service.app import JsonFormatter, create_app
    from ..service.db import make_engine, redact_url, upgrade
    from ..service.settings import Settings, load_trust

    overrides: dict[str, Any] = {k: v for k, v in {
        "database_url": database, "key_path": key, "admin_token_file": admin_token_file, "trust_root": trust_root,
        "collateral": collateral, "cpak": cpak, "snp_ark": ark, "snp_ask": ask, "snp_vcek": vcek,
        "challenge_ttl": challenge_ttl, "state_dir": state_dir,
        "publish_keys": os.pathsep.join(os.path.abspath(k) for k in publish_key) if publish_key else None,
    }.items() if v is not None}
    if key_alg != "ES256" or "TSMR_EAR_ALG" not in os.environ:
        overrides["key_alg"] = key_alg
    overrides["json_logs"] = json_logs or os.environ.get("TSMR_JSON_LOGS", "").lower() in ("1", "true", "yes")
    overrides["log_level"] = log_level.upper()
    settings = Settings.from_env(**overrides).resolved()
    # Everything that can be wrong is found here, once, before any worker starts.
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    ear.load_or_create_key(settings.key_path or "", settings.key_alg)
    settings.published_keys()
    load_trust(settings)
    token = settings.read_admin_token()
    if host not in ("127.0.0.1", "::1", "localhost"):
        render.warning(f"listening on {host}: put TLS in front of the verifier (it speaks plain HTTP)")
    render.err.print(f"tsmr verifier on http://{host}:{port} ({workers} worker(s), database "
                     f"{redact_url(settings.database_url or '')}, admin endpoints {'on' if token else 'off'})")
    fmt: dict[str, Any] = ({"()": JsonFormatter} if settings.json_logs else
                           {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"})
    log_config = {"version": 1, "disable_existing_loggers": False,
                  "formatters": {"default": fmt},
                  "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                           "stream": "ext://sys.stderr"}},
                  "loggers": {"uvicorn": {"handlers": ["default"], "level": settings.log_level, "propagate": False},
                              "uvicorn.error": {"level": settings.log_level},
                              "uvicorn.access": {"handlers": [], "propagate": False}}}
    from ..service.server import PROTOCOL

    common = dict(host=host, port=port, log_config=log_config, access_log=False, server_header=False,
                  proxy_headers=False, timeout_graceful_shutdown=10, http=PROTOCOL)
    if workers == 1:
        uvicorn.run(create_app(replace(settings, migrate=False)), **common)  # type: ignore[arg-type]
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
        uvicorn.run("tsmr.service.app:app_from_env", factory=True, workers=workers, **common)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


# -- policies and reference values on the database ------------------------------------------------

policy_app = typer.Typer(help="Appraisal policies (Rego) stored in the verifier's database, versioned.",
                         no_args_is_help=True)


def _store(database: str | None, state_dir: str | None) -> Any:
    from ..service.db import Store

    return Store.open(database or os.environ.get("TSMR_DATABASE_URL") or None, state_dir=state_dir)


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
        text = content if kind == "policy" else json.dumps(content, indent=2, sort_keys=True)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
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


def register(app: typer.Typer) -> None:
    """Add ``tsmr serve`` and the ``tsmr policy`` group to the main application."""
    app.command("serve")(handle_errors(serve_cmd))
    app.add_typer(policy_app, name="policy")
