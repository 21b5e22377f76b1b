"""Choosing a backend: ``TSMR_BACKEND`` / ``--backend``, or detection.

Backend specifications:

``sysfs``               the first tsm-mr directory found (tdx_guest, arm_cca_guest, then others)
``sysfs:DIR``           a ``measurements/`` directory, e.g. a FUSE-mounted emulator
``sysfs:NAME``          ``/sys/class/misc/NAME/measurements``
``tpm``                 ``/dev/tpmrm0`` through the kernel resource manager
``tpm:TCTI``            any TCTI, e.g. ``tpm:swtpm:host=127.0.0.1,port=2321``
``emulated:PROFILE``    the built-in emulator: tdx, cca, snp, tpm or sample

Detection order: tsm-mr sysfs, the TPM resource manager, the emulator (with an
:class:`EmulatedBackendWarning`, since nothing it says is hardware-backed).
"""

from __future__ import annotations

import os
import warnings

from ..errors import InputError
from ..registers import BaseRegisterSet


class EmulatedBackendWarning(UserWarning):
    """No TEE or TPM was found; the registers are emulated and prove nothing."""


KINDS = ("sysfs", "tpm", "emulated")


def open_backend(spec: str | None = None, *, state_dir: str | None = None) -> BaseRegisterSet:
    """Open the register set named by ``spec``, ``$TSMR_BACKEND``, or the first one detected."""
    spec = spec or os.environ.get("TSMR_BACKEND") or None
    if spec:
        return _open_spec(spec.strip(), state_dir)
    from .sysfs import SysfsRegisterSet, find_measurement_dirs

    dirs = find_measurement_dirs()
    if dirs:
        return SysfsRegisterSet(dirs[0])
    if os.path.exists("/dev/tpmrm0") and _have_tpm2_pytss():
        from .tpm import TpmRegisterSet

        return TpmRegisterSet("device:/dev/tpmrm0")
    from .emulated import EmulatedRegisterSet

    warnings.warn(
        "no TEE or TPM found: using the built-in emulator (emulated:tdx); nothing it reports is hardware-backed",
        EmulatedBackendWarning,
        stacklevel=2,
    )
    return EmulatedRegisterSet("tdx", state_dir)


def _have_tpm2_pytss() -> bool:
    try:
        import tpm2_pytss  # noqa: F401
    except Exception:
        return False
    return True


def _open_spec(spec: str, state_dir: str | None) -> BaseRegisterSet:
    kind, _, arg = spec.partition(":")
    if kind == "sysfs":
        from .sysfs import SysfsRegisterSet

        return SysfsRegisterSet(arg or None)
    if kind == "tpm":
        from .tpm import TpmRegisterSet

        return TpmRegisterSet(arg or None)
    if kind in ("emulated", "emulator"):
        from .emulated import EmulatedRegisterSet

        return EmulatedRegisterSet(arg or "tdx", state_dir)
    raise InputError(
        f"unknown backend {spec!r}: use sysfs[:DIR], tpm[:TCTI] or emulated:PROFILE (tdx, cca, snp, tpm, sample)"
    )


__all__ = ["open_backend", "EmulatedBackendWarning", "KINDS"]
