"""What every CLI command shares: options, error handling, exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from ..backends.detect import EmulatedBackendWarning, open_backend
from ..errors import BackendError, InputError, TsmrError
from ..registers import BaseRegisterSet
from . import render

EXIT_OK, EXIT_VERIFY, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3

BackendOpt = Annotated[
    Optional[str],
    typer.Option(
        "--backend",
        "-b",
        help="sysfs[:DIR|:NAME], tpm[:TCTI] or emulated:PROFILE (default: $TSMR_BACKEND, else detected)",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LogDirOpt = Annotated[
    Optional[str],
    typer.Option("--log-dir", help="Directory of runtime logs (default: $TSMR_LOG_DIR, else /run/tsmr).", show_default=False),
]
StateDirOpt = Annotated[
    Optional[str],
    typer.Option("--state-dir", help="Emulator state directory (default: $TSMR_STATE_DIR or ~/.local/state/tsmr).", show_default=False),
]

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn library errors into one sentence and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", EmulatedBackendWarning)
                try:
                    return fn(*args, **kwargs)
                finally:
                    for w in caught:
                        if issubclass(w.category, EmulatedBackendWarning):
                            render.warning(str(w.message))
        except InputError as exc:
            _fail(exc, EXIT_USAGE, as_json)
        except BackendError as exc:
            _fail(exc, EXIT_BACKEND, as_json)
        except TsmrError as exc:
            _fail(exc, EXIT_USAGE, as_json)
        except KeyboardInterrupt:
            raise typer.Exit(130)

    return wrapper  # type: ignore[return-value]


def _fail(exc: Exception, code: int, as_json: bool) -> None:
    render.error(str(exc))
    if as_json:
        render.print_json({"error": str(exc), "type": type(exc).__name__, "exit_code": code})
    raise typer.Exit(code)


def write_output(output: str | None, data: bytes) -> None:
    """Write ``data`` to ``output`` atomically (temporary file, then rename), or to standard output."""
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    tmp = f"{output}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, output)


def verification_time(at: str | None) -> datetime:
    """``--at`` as an aware datetime (a naive one is UTC), or now."""
    if not at:
        return datetime.now(timezone.utc)
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise InputError(f"--at {at!r} is not an ISO 8601 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def open_backend_cli(backend: str | None, state_dir: str | None = None) -> BaseRegisterSet:
    return open_backend(backend, state_dir=state_dir)


# Trust anchors and collateral, the same options wherever evidence is verified.
TrustRootOpt = Annotated[Optional[str], typer.Option("--trust-root", help="TDX: root CA (PEM) instead of the shipped Intel root.")]
CollateralOpt = Annotated[Optional[str], typer.Option("--collateral", help="TDX: PCCS-style collateral JSON, or a directory of PCS responses.")]
VcekOpt = Annotated[Optional[str], typer.Option("--vcek", help="SNP: VCEK or VLEK certificate.")]
AskOpt = Annotated[Optional[str], typer.Option("--ask", help="SNP: ASK (or the KDS ASK+ARK chain) certificate.")]
ArkOpt = Annotated[Optional[str], typer.Option("--ark", help="SNP: the trusted ARK certificate.")]
CpakOpt = Annotated[Optional[str], typer.Option("--cpak", help="CCA: platform attestation key, PEM or JWK JSON.")]
AtOpt = Annotated[Optional[str], typer.Option("--at", help="Verification time, ISO 8601 (default: now).")]


def read_input(path: str, what: str = "") -> bytes:
    """The bytes of a file, or of standard input for ``-``; an InputError naming ``what`` if it cannot be read.

    Read to the end of file rather than to the size ``stat`` gives, which is 0 for sysfs logs.
    """
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise InputError(f"cannot read {what + ' ' if what else ''}{path}: {exc.strerror}") from None


def read_bundle(path: str) -> Any:
    """A bundle file's JSON, refusing files over the bundle size limit."""
    from ..evidence.bundle import MAX_BUNDLE_BYTES

    p = Path(path)
    try:
        if p.stat().st_size > MAX_BUNDLE_BYTES:
            raise InputError(f"{path} is over {MAX_BUNDLE_BYTES} bytes")
        return json.loads(p.read_bytes())
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"{path} is not JSON: {exc}") from None
