"""Attestation reports through Linux configfs-tsm (``/sys/kernel/config/tsm/report``).

Since Linux 6.7 every confidential-guest driver that can produce evidence
(``tdx_guest``, ``sev_guest``, ``arm_cca_guest``) registers with the TSM core,
which exposes one configfs interface for all of them
(``Documentation/ABI/testing/configfs-tsm-report``):

1. ``mkdir report/<name>`` creates a report object owned by nobody in
   particular: any process that can write there can also write *our* object.
2. Writing ``inblob`` (up to 64 bytes, the report data / challenge),
   ``privlevel`` (SEV-SNP VMPL), ``service_provider``, ``service_guid`` and
   ``service_manifest_version`` (SVSM services) each bump ``generation``.
3. Reading ``outblob`` makes the provider produce the report (TDX quote,
   SEV-SNP report, CCA token); ``auxblob`` (SEV-SNP certificate table) and
   ``manifestblob`` (SVSM manifest) come from the same request.
4. ``rmdir report/<name>`` frees it.

A concurrent writer between our writes and our read would make the blobs
answer *its* input, so the generation is read before and after: it must have
advanced by exactly the number of writes we made.  Configfs commits a binary
attribute such as ``inblob`` only when the file is closed and cannot report
errors then, so the generation check is also what catches an ``inblob`` the
kernel refused.

The root is ``/sys/kernel/config/tsm`` unless ``TSMR_CONFIGFS_TSM`` or the
``root`` argument says otherwise (the emulator serves the same tree through
FUSE: ``tsmr emulate configfs``).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError, InputError

__all__ = ["ConfigfsTsm", "Report", "DEFAULT_ROOT", "EVIDENCE_KINDS", "INBLOB_MAX", "report_data"]

log = logging.getLogger("tsmr.configfs")

DEFAULT_ROOT = "/sys/kernel/config/tsm"
INBLOB_MAX = 64
OUTBLOB_MAX = 32 << 20  # the kernel's TSM_OUTBLOB_MAX is 32 KiB per blob; leave room for future providers
PRIVLEVEL_MAX = 3
# Which evidence format a provider's outblob carries.
EVIDENCE_KINDS = {"tdx_guest": "tdx", "sev_guest": "snp", "arm_cca_guest": "cca"}
_TRIES = 3


@dataclass(frozen=True)
class Report:
    """One configfs-tsm report: the provider's blobs for one input."""

    provider: str
    inblob: bytes
    outblob: bytes
    auxblob: bytes | None = None
    manifestblob: bytes | None = None
    generation: int = 0
    privlevel: int | None = None
    service_provider: str | None = None
    service_guid: str | None = None

    @property
    def kind(self) -> str | None:
        """The evidence format of ``outblob`` (tdx, snp, cca), if the provider is known."""
        return EVIDENCE_KINDS.get(self.provider)


def report_data(nonce: bytes) -> bytes:
    """The 64-byte report data for a nonce: the nonce, zero-padded (what every provider signs)."""
    if len(nonce) > INBLOB_MAX:
        raise InputError(f"the nonce is {len(nonce)} bytes; report data holds at most {INBLOB_MAX}")
    return nonce.ljust(INBLOB_MAX, b"\0")


class ConfigfsTsm:
    """The configfs-tsm report interface at ``root`` (default ``/sys/kernel/config/tsm``)."""

    kind = "configfs"

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root if root is not None else os.environ.get("TSMR_CONFIGFS_TSM") or DEFAULT_ROOT)
        self.reports = self.root / "report"

    def available(self) -> bool:
        """Whether a report directory exists here (says nothing about a registered provider)."""
        return self.reports.is_dir()

    # -- one request ----------------------------------------------------------------
    def report(self, inblob: bytes, *, privlevel: int | None = None, service_provider: str | None = None,
               service_guid: str | None = None, service_manifest_version: int | None = None) -> Report:
        """Request a report for ``inblob``; retried when another writer interferes."""
        if not isinstance(inblob, (bytes, bytearray)) or not 0 < len(inblob) <= INBLOB_MAX:
            raise InputError(f"inblob must be 1 to {INBLOB_MAX} bytes, got {len(inblob)}")
        if privlevel is not None and not 0 <= privlevel <= PRIVLEVEL_MAX:
            raise InputError(f"privlevel must be 0 to {PRIVLEVEL_MAX}, got {privlevel}")
        if service_guid is not None:
            try:
                service_guid = str(uuid.UUID(service_guid))
            except ValueError:
                raise InputError(f"service_guid {service_guid!r} is not a GUID") from None
        if service_provider is not None and (not service_provider or "\n" in service_provider):
            raise InputError(f"unusable service_provider {service_provider!r}")
        if service_manifest_version is not None and service_manifest_version < 0:
            raise InputError("service_manifest_version must not be negative")
        last: BackendError | None = None
        for _ in range(_TRIES):
            try:
                return self._once(bytes(inblob), privlevel, service_provider, service_guid, service_manifest_version)
            except _Raced as exc:
                last = exc.error
                log.warning("configfs-tsm: %s; retrying", exc.error)
        assert last is not None
        raise last

    def _once(self, inblob: bytes, privlevel: int | None, service_provider: str | None, service_guid: str | None,
              manifest_version: int | None) -> Report:
        name = f"tsmr-{os.getpid()}-{secrets.token_hex(6)}"
        path = self.reports / name
        self._mkdir(path)
        try:
            before = self._generation(path)
            writes: list[tuple[str, bytes]] = []
            if privlevel is not None:
                writes.append(("privlevel", str(privlevel).encode()))
            if service_provider is not None:
                writes.append(("service_provider", service_provider.encode()))
            if service_guid is not None:
                writes.append(("service_guid", service_guid.encode()))
            if manifest_version is not None:
                writes.append(("service_manifest_version", str(manifest_version).encode()))
            writes.append(("inblob", inblob))
            for attr, data in writes:
                self._write(path, attr, data)
            outblob = self._read(path, "outblob")
            auxblob = self._read(path, "auxblob", optional=True)
            manifest = self._read(path, "manifestblob", optional=True)
            provider = (self._read(path, "provider") or b"").decode(errors="replace").strip()
            after = self._generation(path)
        finally:
            self._rmdir(path)
        expected = before + len(writes)
        if after != expected:
            raise _Raced(BackendError(
                f"configfs-tsm: report {name} was changed by another writer while in use (generation {before} -> "
                f"{after}, {len(writes)} write(s) of ours); its blobs cannot be trusted to answer our input",
                backend="configfs", errno=errno.EBUSY))
        if not outblob:
            raise BackendError(f"configfs-tsm: provider {provider or '?'} returned an empty outblob", backend="configfs",
                               errno=errno.EIO)
        return Report(provider=provider, inblob=inblob, outblob=outblob, auxblob=auxblob or None,
                      manifestblob=manifest or None, generation=after, privlevel=privlevel,
                      service_provider=service_provider, service_guid=service_guid)

    # -- file operations with errors that say what to do -------------------------------
    def _fail(self, exc: OSError, action: str, attr: str | None = None) -> BackendError:
        code = exc.errno
        hint = ""
        if code == errno.ENOENT and attr is None:
            hint = (f"{self.reports} does not exist: mount configfs (mount -t configfs none /sys/kernel/config) "
                    "and use a kernel with CONFIG_TSM_REPORTS and a guest driver (tdx_guest, sev_guest, arm_cca_guest)")
        elif code == errno.ENOENT:
            hint = f"this provider has no {attr} attribute"
        elif code == errno.ENXIO:
            hint = "no attestation provider is registered (is the guest driver loaded? is this a confidential VM?)"
        elif code in (errno.EACCES, errno.EPERM):
            hint = "configfs-tsm reports need root (or write access to the report directory)"
        elif code == errno.EINVAL and attr in ("outblob", "auxblob", "manifestblob"):
            hint = "the provider refused the request (inblob length or options it does not support)"
        elif code == errno.EBUSY:
            hint = "the report is busy (too many writes without a read); retry"
        elif code == errno.EFBIG:
            hint = f"{attr} is larger than the kernel accepts"
        return BackendError.from_oserror(exc, backend="configfs", register=None, action=action, hint=hint)

    def _mkdir(self, path: Path) -> None:
        try:
            os.mkdir(path, 0o700)
        except OSError as exc:
            raise self._fail(exc, f"creating report {path}") from exc

    def _rmdir(self, path: Path) -> None:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            log.warning("configfs-tsm: report %s vanished before it was removed", path)
        except OSError as exc:
            log.warning("configfs-tsm: could not remove report %s: %s", path, exc)

    def _write(self, path: Path, attr: str, data: bytes) -> None:
        target = path / attr
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._fail(exc, f"opening {target} for writing", attr) from exc
        try:
            n = os.write(fd, data)
            if n != len(data):
                raise OSError(errno.EIO, f"short write ({n} of {len(data)} bytes)")
        except OSError as exc:
            os.close(fd)
            raise self._fail(exc, f"writing {target}", attr) from exc
        try:
            os.close(fd)  # a binary attribute is committed here
        except OSError as exc:
            raise self._fail(exc, f"committing {target}", attr) from exc

    def _read(self, path: Path, attr: str, *, optional: bool = False) -> bytes | None:
        target = path / attr
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if optional:
                return None
            raise self._fail(FileNotFoundError(errno.ENOENT, "No such file or directory"), f"opening {target}", attr)
        except OSError as exc:
            raise self._fail(exc, f"opening {target}", attr) from exc
        chunks, total = [], 0
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > OUTBLOB_MAX:
                    raise OSError(errno.EFBIG, "File too large")
        except OSError as exc:
            raise self._fail(exc, f"reading {target}", attr) from exc
        finally:
            os.close(fd)
        return b"".join(chunks)

    def _generation(self, path: Path) -> int:
        raw = self._read(path, "generation") or b""
        try:
            return int(raw.strip())
        except ValueError:
            raise BackendError(f"configfs-tsm: {path / 'generation'} holds {raw[:32]!r}, not a number",
                               backend="configfs") from None


class _Raced(Exception):
    def __init__(self, error: BackendError) -> None:
        super().__init__(str(error))
        self.error = error
