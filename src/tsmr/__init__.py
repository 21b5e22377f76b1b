"""tsmr: measurement registers, runtime event logs and attestation for confidential VMs."""

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

__version__ = "0.1.0"

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
    "EmulatedBackendWarning",
    "__version__",
]
