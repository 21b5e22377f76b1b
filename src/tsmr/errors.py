"""One exception tree for the whole library.

Every error tsmr raises is a :class:`TsmrError`.  The subclasses carry the
context a user needs to act on the error (which register, which errno, which
offset in which format) as attributes, and their ``str()`` is one sentence.

``InputError`` is the caller's fault (unknown register, wrong digest size,
read-only register); ``BackendError`` is the device's or the operating
system's (EIO from the TDX module, a TPM response code, a missing file).
"""

from __future__ import annotations

import errno as _errno
import os


class TsmrError(Exception):
    """Base class of every error raised by tsmr."""


class InputError(TsmrError, ValueError):
    """The caller asked for something that cannot be done as asked."""


class UnknownRegisterError(InputError, LookupError):
    """The named register (or bank of it) does not exist on this backend."""

    def __init__(self, name: str, *, available: list[str] | None = None, detail: str = "") -> None:
        self.name = name
        self.available = list(available or [])
        msg = detail or f"no register named {name!r}"
        if self.available:
            msg += f" (available: {', '.join(self.available)})"
        super().__init__(msg)


class BackendError(TsmrError):
    """A device, file or service behind a backend failed.

    ``errno`` is set when the failure came from the operating system; the
    message names the register (or attribute) concerned.
    """

    def __init__(
        self,
        message: str,
        *,
        backend: str = "",
        register: str | None = None,
        errno: int | None = None,
    ) -> None:
        self.backend = backend
        self.register = register
        self.errno = errno
        super().__init__(message)

    @classmethod
    def from_oserror(
        cls, exc: OSError, *, backend: str, register: str | None, action: str, hint: str = ""
    ) -> "BackendError":
        code = exc.errno
        name = _errno.errorcode.get(code, str(code)) if code is not None else "?"
        what = f"{action} {register}" if register else action
        text = os.strerror(code) if code is not None else str(exc)
        msg = f"{backend}: {what} failed: {name} ({text})"
        if hint:
            msg += f"; {hint}"
        return cls(msg, backend=backend, register=register, errno=code)


class DatabaseUnavailable(BackendError):
    """The verifier's database cannot serve this request: unreachable, read-only, gone, or refusing the statement."""

    def __init__(self, message: str) -> None:
        super().__init__(message, backend="database")


class ParseError(TsmrError, ValueError):
    """Bytes or text could not be decoded as the named format."""

    def __init__(self, message: str, *, format: str, offset: int | None = None, field: str | None = None) -> None:
        self.format = format
        self.offset = offset
        self.field = field
        where = []
        if field:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"offset {offset}")
        suffix = f" ({', '.join(where)})" if where else ""
        super().__init__(f"{format}: {message}{suffix}")


class ReplayError(TsmrError):
    """A log could not be replayed (as opposed to: it replayed to another value)."""


class EvidenceError(TsmrError):
    """Evidence (a quote, report or token) does not verify.

    ``check`` names the failed check with a stable dotted id (``tdx.quote.signature``,
    ``snp.report_data``, ``tpm.nonce``) so that callers and tests can tell checks apart.
    """

    def __init__(self, message: str, *, check: str = "") -> None:
        self.check = check
        super().__init__(f"{message} [{check}]" if check else message)


class SignatureError(EvidenceError):
    """A signature over evidence did not verify."""


class CollateralError(EvidenceError):
    """Certificates, CRLs or other collateral are missing, expired or wrong."""


class PolicyError(TsmrError):
    """A policy could not be loaded or evaluated."""


__all__ = [
    "TsmrError",
    "InputError",
    "UnknownRegisterError",
    "BackendError",
    "DatabaseUnavailable",
    "ParseError",
    "ReplayError",
    "EvidenceError",
    "SignatureError",
    "CollateralError",
    "PolicyError",
]
