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
    from .runtime_log.checkpoint import NotExtended
    from .runtime_log.records import RecordError

# Loaded on first use, so that `import tsmr` (to read or extend a register) does not load every
# codec, the verifier's evidence code and the agent's HTTP client.
_LAZY_MODULES = ("eventlog", "replay")
_LAZY_NAMES = {name: module for module, names in (
    ("tsmr.replay", ("explain",)),
    ("tsmr.formats.ima", ("TemplateHashError",)),
    ("tsmr.runtime_log.records", ("RecordError",)),
    ("tsmr.runtime_log.checkpoint", ("NotExtended",)),
    ("tsmr.evidence.anchors", ("TrustAnchorMissing",)),
    ("tsmr.evidence.limits", ("AppraisalCancelled", "LimitExceeded", "TimeBudgetExceeded")),
    ("tsmr.agent.client", ("AgentError", "AgentRequestError", "AgentUnavailableError")),
) for name in names}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY_MODULES:
        value = importlib.import_module(f"tsmr.{name}")
    elif name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'tsmr' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_NAMES))

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
    "NotExtended",
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
