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
from . import eventlog, replay
from .replay import explain
from .formats.ima import TemplateHashError
from .runtime_log.records import RecordError
from .evidence.anchors import TrustAnchorMissing
from .evidence.limits import AppraisalCancelled, LimitExceeded, TimeBudgetExceeded
from .agent.client import AgentError, AgentRequestError, AgentUnavailableError

from .version import __version__

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
