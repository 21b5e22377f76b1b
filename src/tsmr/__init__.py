"""tsmr: measurement registers, runtime event logs and attestation for confidential VMs.

Registers, on the first backend found (tsm-mr sysfs, TPM, or the emulator)::

    with tsmr.open() as regs:
        regs.extend("rtmr3", {tsmr.HashAlg.SHA384: digest})

Logs of any format, replayed into register values (an example that runs)::

    >>> import tsmr
    >>> log = tsmr.eventlog.parse(b"SYNC sha384/" + b"0" * 96 + b"\\nexample.com/app start\\n")
    >>> log.format, [e.type for e in log.events]
    ('tsmr', ['sync', 'event'])
    >>> tsmr.replay.replay(log.events).registers["rtmr3"][tsmr.HashAlg.SHA384].hex()[:16]
    '36c56e79ea2d2412'

``tsmr.open`` is reached through the package and left out of ``__all__``, so
``from tsmr import *`` keeps Python's own :func:`open`.  ``tsmr.eventlog`` and
``tsmr.replay`` are modules: replay with ``tsmr.replay.replay(events)``.  Every
exception tsmr raises is importable from here; all but the
:class:`EmulatedBackendWarning` derive from :class:`TsmrError`.
"""

from .algorithms import HashAlg, extend
from .errors import (
    BackendError,
    CollateralError,
    DatabaseUnavailable,
    EvidenceError,
    InputError,
    ParseError,
    PolicyError,
    ReplayError,
    SignatureError,
    TsmrError,
    UnknownRegisterError,
)
from .registers import Bank, Flag, Register, RegisterSet
from .backends.detect import EmulatedBackendWarning, open_backend as open
from .version import __version__

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import eventlog, replay
    from .agent.client import AgentError, AgentRequestError, AgentUnavailableError
    from .evidence.anchors import TrustAnchorMissing
    from .evidence.limits import AppraisalCancelled, LimitExceeded, TimeBudgetExceeded
    from .formats.ima import TemplateHashError
    from .replay import explain
    from .runtime_log.records import RecordError

# Loaded on first use, so that `import tsmr` (to read or extend a register) does not load every
# codec, the verifier's evidence code and the agent's HTTP client: name -> (module, attribute).
_LAZY: dict[str, tuple[str, str | None]] = {
    "eventlog": ("tsmr.eventlog", None),
    "replay": ("tsmr.replay", None),
    "explain": ("tsmr.replay", "explain"),
    "TemplateHashError": ("tsmr.formats.ima", "TemplateHashError"),
    "RecordError": ("tsmr.runtime_log.records", "RecordError"),
    "TrustAnchorMissing": ("tsmr.evidence.anchors", "TrustAnchorMissing"),
    "AppraisalCancelled": ("tsmr.evidence.limits", "AppraisalCancelled"),
    "LimitExceeded": ("tsmr.evidence.limits", "LimitExceeded"),
    "TimeBudgetExceeded": ("tsmr.evidence.limits", "TimeBudgetExceeded"),
    "AgentError": ("tsmr.agent.client", "AgentError"),
    "AgentRequestError": ("tsmr.agent.client", "AgentRequestError"),
    "AgentUnavailableError": ("tsmr.agent.client", "AgentUnavailableError"),
}


def __getattr__(name: str) -> Any:
    import importlib

    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tsmr' has no attribute {name!r}") from None
    loaded = importlib.import_module(module)
    value = loaded if attribute is None else getattr(loaded, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "HashAlg",
    "extend",
    "Flag",
    "Bank",
    "Register",
    "RegisterSet",
    "eventlog",
    "replay",
    "explain",
    # the exception tree: TsmrError and everything under it
    "TsmrError",
    "InputError",
    "UnknownRegisterError",
    "RecordError",
    "LimitExceeded",
    "TimeBudgetExceeded",
    "TrustAnchorMissing",
    "AgentRequestError",
    "BackendError",
    "DatabaseUnavailable",
    "AgentUnavailableError",
    "ParseError",
    "ReplayError",
    "TemplateHashError",
    "EvidenceError",
    "SignatureError",
    "CollateralError",
    "PolicyError",
    "AgentError",
    "AppraisalCancelled",
    "EmulatedBackendWarning",
    "__version__",
]
