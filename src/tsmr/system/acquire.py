"""Getting evidence for a nonce on the current machine: configfs-tsm, the TPM, or the emulator.

Which source answers:

1. A backend named explicitly (``--backend`` / ``TSMR_BACKEND``): ``tpm:...``
   quotes with the TPM; ``emulated:tdx`` / ``emulated:cca`` / ``emulated:snp``
   report through the emulator's configfs-tsm provider (in process, or
   through a mounted emulated tree when a configfs root is given);
   ``sysfs:...`` reports through configfs-tsm.
2. Otherwise configfs-tsm when a root is given (``TSMR_CONFIGFS_TSM``) or
   ``/sys/kernel/config/tsm/report`` exists: a TDX, SEV-SNP or CCA guest.
3. Otherwise the detected backend: the TPM, or the emulator (with a warning).

The evidence comes back in the bundle's form (``{"kind": ..., ...}`` with
bytes), with the register provider whose runtime logs belong to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..backends.configfs import DEFAULT_ROOT, ConfigfsTsm, Report, report_data
from ..backends.configfs_emulated import EmulatedTsm, source_for, trust_anchor
from ..backends.detect import open_backend
from ..backends.emulated import EmulatedRegisterSet
from ..backends.sysfs import find_measurement_dirs
from ..backends.tpm import TpmRegisterSet
from ..errors import InputError

__all__ = ["Acquired", "acquire", "platform_logs", "TPM_LOG", "IMA_LOG", "CCEL_LOG"]

TPM_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"
IMA_LOG = "/sys/kernel/security/ima/binary_runtime_measurements"
CCEL_LOG = "/sys/firmware/acpi/tables/data/CCEL"


def platform_logs(got: "Acquired") -> list[dict[str, Any]]:
    """The firmware log (TPM or CCEL) and IMA's that go with this evidence, those readable here.

    The emulator has no firmware of its own: the host's logs would not belong to its evidence.
    An emulated TD that booted an image (``tsmr emulate init --firmware``) has that boot's CCEL."""
    if got.source == "emulated" or got.firmware_log is not None:
        if got.firmware_log is None:
            return []
        return [{"format": "ccel", "data": got.firmware_log, "name": "firmware"}]
    firmware = TPM_LOG if got.kind == "tpm" else CCEL_LOG if got.kind == "tdx" else None
    logs: list[dict[str, Any]] = []
    for path, name in ((firmware, "firmware"), (IMA_LOG, "ima")):
        if path is None:
            continue
        try:
            with open(path, "rb") as fh:
                logs.append({"format": None, "data": fh.read(), "name": name})
        except OSError:
            pass  # not on this machine, or not readable: the bundle says what it has
    return logs


@dataclass
class Acquired:
    """Evidence and where it came from."""

    evidence: dict[str, Any]
    source: str  # "configfs", "emulated", "tpm"
    provider: str | None = None  # register provider (runtime-log directory name), when known
    trust_anchor: str | None = None  # the emulator's test anchor, to be trusted explicitly
    report: Report | None = None
    notes: list[str] = field(default_factory=list)
    firmware_log: bytes | None = None  # the emulator's CCEL of a booted image, when it has one

    @property
    def kind(self) -> str:
        return str(self.evidence["kind"])


def _configfs_evidence(report: Report) -> dict[str, Any]:
    kind = report.kind
    if kind is None:
        raise InputError(f"configfs-tsm provider {report.provider!r} makes evidence tsmr does not know "
                         "(known: tdx_guest, sev_guest, arm_cca_guest)")
    ev: dict[str, Any] = {"kind": kind, "data": report.outblob, "provider": report.provider}
    if report.auxblob:
        ev["auxblob"] = report.auxblob
    if report.manifestblob:
        ev["manifestblob"] = report.manifestblob
    if report.service_provider:
        ev["service_provider"] = report.service_provider
        if report.service_guid:
            ev["service_guid"] = report.service_guid
    if report.privlevel is not None:
        ev["privlevel"] = report.privlevel
    return ev


def _request(tsm: Any, nonce: bytes, privlevel: int | None, service_provider: str | None,
             service_guid: str | None, manifest_version: int | None) -> Report:
    # An SVSM signs SHA-512(nonce || manifest): the nonce goes in as it is.  Every
    # other provider signs the 64-byte inblob itself: the nonce, zero-padded.
    inblob = nonce if service_provider else report_data(nonce)
    if not inblob:
        raise InputError("the nonce must not be empty")
    return tsm.report(inblob, privlevel=privlevel, service_provider=service_provider, service_guid=service_guid,
                      service_manifest_version=manifest_version)


def acquire(
    nonce: bytes,
    *,
    backend: str | None = None,
    state_dir: str | None = None,
    configfs: str | None = None,
    pcrs: Sequence[int] | None = None,
    privlevel: int | None = None,
    service_provider: str | None = None,
    service_guid: str | None = None,
    service_manifest_version: int | None = None,
) -> Acquired:
    """Evidence over ``nonce`` from the source chosen as the module says."""
    spec = backend or os.environ.get("TSMR_BACKEND") or None
    root = configfs or os.environ.get("TSMR_CONFIGFS_TSM") or None
    opts = (privlevel, service_provider, service_guid, service_manifest_version)
    if spec is None and (root is not None or os.path.isdir(os.path.join(DEFAULT_ROOT, "report"))):
        provider = None
        dirs = find_measurement_dirs()
        if dirs:
            with open_backend(f"sysfs:{dirs[0]}", state_dir=state_dir) as rs:
                provider = rs.provider
        report = _request(ConfigfsTsm(root), nonce, *opts)
        return Acquired(_configfs_evidence(report), "configfs", provider, report=report)

    with open_backend(spec, state_dir=state_dir) as rs:
        if isinstance(rs, TpmRegisterSet):
            if any(o is not None for o in opts):
                raise InputError("privlevel and service options are for configfs-tsm reports, not TPM quotes")
            if len(nonce) > 64:
                raise InputError(f"a TPM quote's qualifying data is at most 64 bytes, got {len(nonce)}")
            q = rs.quote(nonce, list(pcrs) if pcrs else None)
            banks = sorted({a for b in q.pcrs.values() for a in b})
            ev = {"kind": "tpm", "attest": q.attest.hex(), "signature": q.signature.hex(),
                  "ak_public": q.ak_public.hex(),
                  "pcrs": {a.kernel_name: {reg[3:]: b[a].hex() for reg, b in q.pcrs.items() if a in b} for a in banks}}
            return Acquired(ev, "tpm", rs.provider)
        if pcrs:
            raise InputError("--pcrs selects TPM PCRs; this backend is not a TPM")
        if isinstance(rs, EmulatedRegisterSet) and root is None:
            report = _request(EmulatedTsm(source_for(rs)), nonce, *opts)
            return Acquired(_configfs_evidence(report), "emulated", rs.provider, trust_anchor(rs), report=report,
                            firmware_log=rs.boot_log())
        anchor = None
        boot_log = None
        if isinstance(rs, EmulatedRegisterSet):
            anchor = trust_anchor(rs)
            boot_log = rs.boot_log()
        report = _request(ConfigfsTsm(root), nonce, *opts)
        return Acquired(_configfs_evidence(report), "configfs", rs.provider, anchor, report=report,
                        firmware_log=boot_log)
