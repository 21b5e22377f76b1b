"""What every CLI command shares: options, error handling, exit codes.

The exit-code contract of every ``tsmr`` command is decided here, in
:func:`exit_code`, and nowhere else:

- 0: success;
- 1: the evidence, a signature, collateral, a replay or a policy said no
  (:class:`Refused`, :class:`~tsmr.errors.EvidenceError`, an IMA template
  hash that is not the hash of its data);
- 2: bad input or usage: an unreadable, truncated or malformed file, a missing
  file, a wrong option (:class:`~tsmr.errors.InputError`,
  :class:`~tsmr.errors.ParseError`, :class:`Unreadable`; Typer's own usage
  errors are 2 too);
- 3: the backend or the system failed: a device, the TPM, a verifier or a
  database that cannot be reached, a file that cannot be written
  (:class:`~tsmr.errors.BackendError`, :class:`OSError`).

Commands report their result first (a table, a ``FAILED`` line, JSON) and
then raise :class:`Refused` or :class:`Unreadable`, or call :func:`judge`
with a result's failed checks (an appraisal's finding ids); library
errors they do not handle reach :func:`handle_errors`, which prints one
sentence (and a JSON object under ``--json``) and exits with the code.
"""

from __future__ import annotations

import base64
import binascii
import errno as _errno
import functools
import json
import os
import re
import sys
import warnings
from datetime import datetime, timezone
from typing import Annotated, Any, Callable, Iterable, NoReturn, Optional, TypeVar

import typer
from typer.core import TyperGroup

from ..backends.detect import EmulatedBackendWarning, open_backend
from ..errors import BackendError, EvidenceError, InputError, TsmrError
from ..formats.ima import TemplateHashError
from ..registers import BaseRegisterSet
from . import render

EXIT_OK, EXIT_VERIFY, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3


class Refused(Exception):
    """A check said no: the evidence, a signature, collateral, a replay or a policy (exit 1).

    Raised by a command after it has reported what failed; a message, if any, is printed as
    the error line.
    """


class Unreadable(Exception):
    """The input could not be read as what it should be (exit 2), and the command has reported what it could.

    An appraisal whose bundle, evidence or log does not parse is one: its result (and the
    EAR a verifier signed for it) is still shown and written, but the exit code says
    "bad input", as ``tsmr verify`` and ``tsmr quote verify`` say for the same bytes.
    """


# The contract, most specific class first: the first entry an exception is an instance of decides.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (Refused, EXIT_VERIFY),
    (Unreadable, EXIT_USAGE),
    (EvidenceError, EXIT_VERIFY),  # signatures, certificates, collateral, bindings
    (TemplateHashError, EXIT_VERIFY),  # an IMA log that parses but does not hash to itself
    (BackendError, EXIT_BACKEND),
    (InputError, EXIT_USAGE),
    (TsmrError, EXIT_USAGE),  # ParseError, ReplayError, PolicyError: the input cannot be used
    (OSError, EXIT_BACKEND),  # the system: a file that cannot be written, a full disk
)

# Check and finding ids that mean the input itself could not be read: bad input (2), not a "no" (1).
UNREADABLE_CHECKS = frozenset({
    "bundle.malformed", "evidence.malformed", "log.malformed",  # appraisal findings
    "ear.format", "ear.encoding",  # an EAR that is not a JWS of JSON
})


def exit_code(exc: BaseException) -> int:
    """The exit code the contract gives ``exc`` (2 for anything it does not name)."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_USAGE


def judge(checks: Iterable[str], *, passed: bool) -> None:
    """Exit as a result says, after the command has shown it (and written what was asked).

    ``checks`` are the ids of the failed checks or the findings, ``passed`` whether the
    result is a yes (an affirming appraisal, an EAR that meets every requirement).  A
    check that means the input could not be read (:data:`UNREADABLE_CHECKS`) is bad
    input (exit 2) whatever else was found; otherwise a result that did not pass is a
    "no" (exit 1), and one that did returns (exit 0).
    """
    unreadable = [c for c in checks if c in UNREADABLE_CHECKS]
    if unreadable:
        raise Unreadable(f"the input could not be read ({', '.join(dict.fromkeys(unreadable))}): the result above "
                         "says nothing about the platform")
    if not passed:
        raise Refused()


def refuse() -> NoReturn:
    """Exit 1: the command has reported which check said no."""
    raise Refused()


class CommandGroup(TyperGroup):
    """The ``tsmr`` application's group: its help shows flags as flags.

    Typer's help shows a type after every option, and for a flag (``--json``,
    ``--help``) that type is ``<bool>``, as if the flag took a value.  Each
    flag here gets an empty metavar, which the help shows instead, on this group
    and on every command and group reached through it.
    """

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        _flags_without_type(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        stack = [command] if command is not None else []
        while stack:
            cmd = stack.pop()
            _flags_without_type(cmd.get_params(ctx))
            stack.extend(getattr(cmd, "commands", {}).values())
        return command


def _flags_without_type(params: Iterable[Any]) -> None:
    for p in params:
        if getattr(p, "is_flag", False) and getattr(p, "metavar", "") is None:
            p.metavar = ""


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
    """Turn every outcome into its exit code (:func:`exit_code`); errors as one sentence, never a traceback."""

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
        except (Refused, Unreadable) as exc:
            if str(exc):  # the command reported the result; this says why the code is what it is
                render.error(str(exc))
            raise typer.Exit(exit_code(exc)) from None
        except TsmrError as exc:
            _fail(str(exc), type(exc).__name__, exit_code(exc), as_json)
        except OSError as exc:
            _fail(_os_message(exc), type(exc).__name__, exit_code(exc), as_json)
        except KeyboardInterrupt:
            raise typer.Exit(130)

    return wrapper  # type: ignore[return-value]


def _os_message(exc: OSError) -> str:
    name = _errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}" + (f" ({name})" if name else "")


def _fail(message: str, kind: str, code: int, as_json: bool) -> NoReturn:
    render.error(message)
    if as_json:
        render.print_json({"error": message, "type": kind, "exit_code": code})
    raise typer.Exit(code)


def write_output(output: str | None, data: bytes) -> None:
    """Write ``data`` to ``output`` atomically (temporary file, then rename), or to standard output.

    A path that cannot name a file (its directory is missing, or it is a directory) is bad
    usage (exit 2); any other failure to write is the system's (exit 3).
    """
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    tmp = f"{output}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, output)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if exc.errno in (_errno.ENOENT, _errno.ENOTDIR, _errno.EISDIR):
            raise InputError(f"cannot write {output}: {exc.strerror}") from None
        raise BackendError.from_oserror(exc, backend="file system", register=None, action=f"writing {output}") from None


_HEX = re.compile(r"(?:0x)?(?:[0-9a-fA-F]{2})+")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def parse_nonce(text: str, option: str = "--nonce", *, base64url: bool = False) -> tuple[bytes, str]:
    """A nonce as hex (what ``tsmr challenge`` prints and bundles carry), or base64url where allowed.

    Returns the bytes and the encoding read: ``hex`` when the text is an even number of
    hex digits (``0x`` allowed), else, with ``base64url`` (an EAR's ``eat_nonce``),
    ``base64url`` (padding optional).
    """
    t = text.strip()
    if _HEX.fullmatch(t):
        return bytes.fromhex(t.removeprefix("0x")), "hex"
    if base64url and _BASE64URL.fullmatch(t) and len(t.rstrip("=")) % 4 != 1:
        try:
            value = base64.urlsafe_b64decode(t.rstrip("=") + "=" * (-len(t.rstrip("=")) % 4))
        except (binascii.Error, ValueError):
            pass
        else:
            if value:
                return value, "base64url"
    raise InputError(f"{option} {text[:80]!r} is neither hex nor base64url" if base64url
                     else f"{option} {text[:80]!r} is not hex")


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



# -- HTTPS clients (tsmr challenge, tsmr attest --verifier, tsmr ear verify --jwks) -----------------

CacertOpt = Annotated[Optional[str], typer.Option(
    "--cacert", envvar="TSMR_CACERT", show_envvar=False, show_default=False,
    help="For an https:// verifier: trust the CA certificate(s) in this PEM file instead of the system's "
         "(else $TSMR_CACERT).")]


def https_context(cacert: str | None) -> Any:
    """The ``ssl.SSLContext`` for HTTPS requests: only ``cacert``'s CAs when given, else the system's (None).

    Host names (and IP addresses) are checked against the certificate either way.
    A file that is not PEM CA certificates is bad input (exit 2), said here rather
    than as a handshake failure later.
    """
    import ssl

    if not cacert:
        return None
    try:  # with a cafile, the system's CAs are not loaded
        context = ssl.create_default_context(cafile=cacert)
    except ssl.SSLError as exc:
        raise InputError(f"--cacert {cacert}: not PEM CA certificates ({exc.reason or exc})") from None
    except OSError as exc:
        raise InputError(f"--cacert {cacert}: {exc.strerror or exc}") from None
    return context


def url_error(url: str, exc: BaseException) -> str:
    """One sentence for a failed HTTP(S) request, saying what to do about an untrusted certificate."""
    import ssl

    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (f"{url}: the server's TLS certificate is not trusted ({reason.verify_message or reason}): "
                "give the CA that issued it with --cacert or $TSMR_CACERT")
    if isinstance(reason, ssl.SSLError):
        return f"{url}: TLS failed ({reason.reason or reason})"
    return f"{url}: {reason}"
