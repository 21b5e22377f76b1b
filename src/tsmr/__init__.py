"""tsmr: measurement registers, runtime event logs and attestation for confidential VMs.

Registers, on the first backend found (tsm-mr sysfs, TPM, or the emulator)::

    with tsmr.open() as regs:
        regs.extend("rtmr3", {tsmr.HashAlg.SHA384: digest})

Logs of any format, replayed into register values (an example that runs)::

    >>> import tsmr
    >>> log = tsmr.eventlog.parse(b"SYNC sha384/" + b"0" * 96 + b"\\nexample.com/app start\\n")
    >>> log.format, [e.type for e in log.events]
    ('tsmr', ['sync', 'event'])
    >>> tsmr.replay(log.events).registers["rtmr3"][tsmr.HashAlg.SHA384].hex()[:16]
    '36c56e79ea2d2412'
"""

from .algorithms import HashAlg, extend
from .errors import (
    BackendError,
    InputError,
    ParseError,
    TsmrError,
    UnknownRegisterError,
)
from .registers import Bank, Flag, Register, RegisterSet
from .backends.detect import EmulatedBackendWarning, open_backend as open
from . import eventlog, replay  # tsmr.replay(events) calls tsmr.replay.replay
from .replay import explain

from .version import __version__

__all__ = [
    "HashAlg",
    "extend",
    "Flag",
    "Bank",
    "Register",
    "RegisterSet",
    "TsmrError",
    "InputError",
    "UnknownRegisterError",
    "BackendError",
    "ParseError",
    "open",
    "eventlog",
    "replay",
    "explain",
    "EmulatedBackendWarning",
    "__version__",
]
