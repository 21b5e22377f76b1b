"""What every CLI command shares: options, error handling, exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from datetime import datetime, timezone
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
TpmAkOpt = Annotated[Optional[list[str]], typer.Option(
    "--tpm-ak", help="TPM: an enrolled attestation key (public key PEM, TPM2B_PUBLIC or AK certificate); repeatable. "
    "A quote signed by any other key is refused.", show_default=False)]
TpmCaOpt = Annotated[Optional[list[str]], typer.Option(
    "--tpm-ca", help="TPM: a CA certificate (PEM) that AK certificates in evidence must chain to; repeatable.",
    show_default=False)]
AtOpt = Annotated[Optional[str], typer.Option("--at", help="Verification time, ISO 8601 (default: now).")]
SnpCrlOpt = Annotated[Optional[str], typer.Option(
    "--crl", help="SNP: AMD's CRL for the product (DER or PEM, signed by the ARK); a revoked VCEK or ASK fails "
    "snp.crl.revoked. Without it revocation is not checked.", show_default=False)]
AllowDebugOpt = Annotated[bool, typer.Option(
    "--allow-debug", help="Accept debuggable guests (TDX TD_ATTRIBUTES.DEBUG, SEV-SNP policy DEBUG, a CCA platform "
    "not secured); they are refused otherwise.")]


def read_input(path: str, what: str = "") -> bytes:
    """The bytes of a file, or of standard input for ``-``; an InputError naming ``what`` if it cannot be read.

    Every file and standard input the commands read goes through here (or through
    :func:`tsmr.system.inputs.read_input`, which this is): reading stops at
    the input limit (64 MiB, ``TSMR_MAX_INPUT``), so ``/dev/zero`` or an endless
    pipe is refused with exit 2 instead of filling memory, and a FIFO nobody
    writes to is given up after ``TSMR_INPUT_TIMEOUT`` seconds (60).  Read to
    the end of file rather than to the size ``stat`` gives, which is 0 for
    sysfs logs.
    """
    from ..system.inputs import read_input as bounded

    return bounded(path, what)


def read_text(path: str, what: str = "") -> str:
    """:func:`read_input`, as UTF-8 text."""
    try:
        return read_input(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what + ' ' if what else ''}{path} is not UTF-8 text") from None


def read_bundle(path: str) -> Any:
    """A bundle file's JSON, read with the input limit (:func:`read_input`)."""
    raw = read_input(path, "the bundle")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InputError(f"{path} is not JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{path} is nested too deeply to be a bundle") from None


# Appraisal limits (tsmr.evidence.limits.Limits; cli.option_groups.limit_options): the same for 'tsmr appraise', 'tsmr verify' and
# 'tsmr serve'; an option wins over its TSMR_* variable, which wins over the default.
MaxLogsOpt = Annotated[Optional[int], typer.Option(
    "--max-logs", min=0, help="Most logs in a bundle (default 64, $TSMR_MAX_LOGS; 0: no limit).", show_default=False)]
MaxRecordsOpt = Annotated[Optional[int], typer.Option(
    "--max-records", min=0, help="Most records in all logs of a bundle (default 100000, $TSMR_MAX_RECORDS; 0: no limit).",
    show_default=False)]
MaxLogRecordsOpt = Annotated[Optional[int], typer.Option(
    "--max-log-records", min=0, help="Most records in one runtime log (default 10000, $TSMR_MAX_LOG_RECORDS; 0: no limit).",
    show_default=False)]
MaxRecordBytesOpt = Annotated[Optional[int], typer.Option(
    "--max-record-bytes", min=0, help="Most bytes in one record (default 65536, $TSMR_MAX_RECORD_BYTES; 0: no limit).",
    show_default=False)]
MaxRuntimeEventsOpt = Annotated[Optional[int], typer.Option(
    "--max-runtime-events", min=0, help="Most runtime-log events in a bundle, the ones policies judge and the "
    "unproven ones (default 10000, "
    "$TSMR_MAX_RUNTIME_EVENTS; 0: no limit).", show_default=False)]
TimeBudgetOpt = Annotated[Optional[float], typer.Option(
    "--time-budget", min=0, help="Seconds an appraisal may take (default 30, $TSMR_TIME_BUDGET; 0: no limit).",
    show_default=False)]

