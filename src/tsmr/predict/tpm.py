"""PCR 4, 7 and 9 of a UEFI boot (EDK2/OVMF firmware, Linux EFI stub), predicted from the files booted.

Theory of operation
-------------------
EDK2's ``Tcg2Dxe`` and image-load measurement (``DxeTpm2MeasureBootLib``), which OVMF and most
UEFI firmware build on, record (TCG PC Client PFP 1.05, ch. 10 and §3.3.4):

* **PCR 7** at start-up: the Secure Boot policy, one ``EV_EFI_VARIABLE_DRIVER_CONFIG`` per
  variable, in the order ``SecureBoot PK KEK db dbx`` (then ``dbt`` when it exists), each
  a ``UEFI_VARIABLE_DATA`` {VariableName GUID, u64 UnicodeNameLength in CHAR16s, u64
  VariableDataLength, the name in UTF-16LE without NUL, the variable's data}, digest = hash
  of that structure; an absent variable is recorded with no data.  Then an
  ``EV_SEPARATOR`` (four zero bytes).  With Secure Boot on, every image verified adds an
  ``EV_EFI_VARIABLE_AUTHORITY`` naming the ``db`` entry that allowed it; shim adds its own
  (SbatLevel, MokList...) whatever the mode.  Those depend on the signatures, so PCR 7 is
  only *predicted* (put in ``registers``) with Secure Boot off and no shim among the apps;
  otherwise its policy events are listed and the notes say why the value is not.
* **PCR 4** at the first ReadyToBoot: ``EV_EFI_ACTION`` "Calling EFI Application from Boot
  Option" and an ``EV_SEPARATOR``; and one ``EV_EFI_BOOT_SERVICES_APPLICATION`` per image
  started (Authenticode digest; the event data holds load addresses, so it is not
  predicted).  Booting a boot option records the action and separator *first*, then the
  loader, and what it starts.  OVMF's direct boot (QEMU ``-kernel``) loads the kernel
  *before* it signals ReadyToBoot, so the kernel's event comes first, the action and
  separator after (seen in the kernel tier's real OVMF + swtpm log).
* **PCR 9**: the Linux EFI stub's tagged events (:mod:`.linux`): load options, then initrd.

Only registers the inputs determine go in :attr:`Prediction.registers`: PCR 4 (the apps
given are all the firmware starts), PCR 7 (above) and PCR 9 on a direct boot (a boot
loader such as GRUB measures into PCR 9 itself, and what LoadOptions a boot option passes
is its own).
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..algorithms import HashAlg
from ..errors import InputError, ParseError
from ..formats.tcg2 import (EV_EFI_ACTION, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_VARIABLE_DRIVER_CONFIG,
                            EV_SEPARATOR, event_type_name)
from ..formats.uefi import EFI_GLOBAL_VARIABLE, EFI_IMAGE_SECURITY_DATABASE, parse_signature_lists
from . import linux
from .model import PredictedEvent, Prediction, extend_all
from .pe import PeImage

__all__ = [
    "DEFAULT_BANKS",
    "SECURE_BOOT_VARIABLES",
    "Artifact",
    "SecureBootVariable",
    "predict_tpm",
    "secure_boot_file_names",
    "secure_boot_variables",
    "variable_data",
]

DEFAULT_BANKS = (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
SEPARATOR = b"\x00\x00\x00\x00"
# (name, vendor GUID, recorded when absent): EDK2 Tcg2Dxe's list, dbt only when it exists.
SECURE_BOOT_VARIABLES: tuple[tuple[str, str, bool], ...] = (
    ("SecureBoot", EFI_GLOBAL_VARIABLE, True),
    ("PK", EFI_GLOBAL_VARIABLE, True),
    ("KEK", EFI_GLOBAL_VARIABLE, True),
    ("db", EFI_IMAGE_SECURITY_DATABASE, True),
    ("dbx", EFI_IMAGE_SECURITY_DATABASE, True),
    ("dbt", EFI_IMAGE_SECURITY_DATABASE, False),
)
_MAX_VARIABLE = 1 << 20  # far above any real signature database (Microsoft's dbx is ~ 25 KiB)


@dataclass(frozen=True)
class Artifact:
    """A file given to the prediction: where it came from (for ``inputs`` and notes) and its bytes."""

    name: str
    data: bytes

    def describe(self) -> dict[str, str]:
        return {"file": self.name, "size": str(len(self.data)), "sha256": hashlib.sha256(self.data).hexdigest()}


@dataclass(frozen=True)
class SecureBootVariable:
    """One Secure Boot variable as the firmware measures it (``data`` None: absent, measured empty)."""

    name: str
    guid: str
    data: bytes | None


def variable_data(guid: str, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA (PFP ch. 10): GUID, u64 name length in CHAR16s, u64 data length, UTF-16LE name, data."""
    encoded = name.encode("utf-16-le")
    return uuid.UUID(guid).bytes_le + struct.pack("<QQ", len(encoded) // 2, len(data)) + encoded + data


def secure_boot_file_names() -> list[str]:
    """The file names :func:`secure_boot_variables` reads in a directory: ``PK`` and efivarfs's ``PK-<guid>``."""
    return [f for n, g, _ in SECURE_BOOT_VARIABLES for f in (n, f"{n}-{g}")]


def secure_boot_variables(files: Mapping[str, bytes] | None) -> list[SecureBootVariable]:
    """The Secure Boot variables from a directory's files, ``None`` for OVMF's default (Secure Boot off, no keys).

    A variable is the file with its name (``PK``: the variable's data, an EFI_SIGNATURE_LIST
    array; ``SecureBoot``: one byte), or an efivarfs copy ``PK-8be4df61-...`` (whose first 4
    bytes are the attributes, dropped).  An absent variable is measured with no data, as
    EDK2 does, except ``SecureBoot``, which OVMF always has: absent means one byte 0 (the
    value the kernel tier's real OVMF log records).  Signature databases must parse as
    EFI_SIGNATURE_LIST arrays.
    """
    files = files or {}
    known = {n for n, _, _ in SECURE_BOOT_VARIABLES}
    efivarfs = {f"{n}-{g}": n for n, g, _ in SECURE_BOOT_VARIABLES}
    found: dict[str, bytes] = {}
    for fname, raw in files.items():
        if fname in known:
            name, value = fname, raw
        elif fname in efivarfs:
            if len(raw) < 4:
                raise InputError(f"{fname}: an efivarfs file starts with 4 bytes of attributes; it has {len(raw)}")
            name, value = efivarfs[fname], raw[4:]
        else:
            continue
        if name in found:
            raise InputError(f"Secure Boot variable {name} given twice (plain and efivarfs files)")
        if len(value) > _MAX_VARIABLE:
            raise InputError(f"{fname}: {len(value)} bytes is over the limit of {_MAX_VARIABLE} for a variable")
        found[name] = value
    out: list[SecureBootVariable] = []
    for name, guid, always in SECURE_BOOT_VARIABLES:
        data = found.get(name)
        if name == "SecureBoot":
            if data is None:
                data = b"\x00"
            elif len(data) != 1 or data[0] > 1:
                raise InputError(f"SecureBoot must be one byte, 0 or 1, not {data.hex() or 'empty'}")
        elif data:
            try:
                parse_signature_lists(data)
            except ParseError as e:
                raise InputError(f"Secure Boot variable {name} is not an EFI_SIGNATURE_LIST array: {e}") from None
        if data is None and not always:
            continue
        out.append(SecureBootVariable(name, guid, data))
    return out


def _fixed(register: str, event_type: int, data: bytes, banks: Sequence[HashAlg], component: str,
           description: str) -> PredictedEvent:
    """An event whose digest is the hash of its data."""
    return PredictedEvent(register=register, event_type=event_type_name(event_type),
                          digests={alg: alg.hash(data) for alg in banks}, component=component,
                          description=description, data=data)


def _app_event(digests: Mapping[HashAlg, bytes], component: str, description: str) -> PredictedEvent:
    return PredictedEvent(register="pcr4", event_type=event_type_name(EV_EFI_BOOT_SERVICES_APPLICATION),
                          digests=dict(digests), component=component, description=description)


def _is_shim(image: PeImage) -> bool:
    """Whether an EFI application is shim (or one of its tools): its SBAT names the component ``shim``."""
    sbat = image.section(".sbat")
    if sbat is None:
        return False
    return any(line.split(b",", 1)[0] == b"shim" for line in sbat.contents.split(b"\n"))


def predict_tpm(*, efi_apps: Sequence[Artifact] = (), kernel: Artifact | None = None,
                initrd: Artifact | None = None, cmdline: str | None = None, direct_boot: bool = False,
                secure_boot: Sequence[SecureBootVariable] | None = None, banks: Sequence[HashAlg] = DEFAULT_BANKS,
                vmm: str = linux.QEMU, memory_mib: int = 128, machine: str = "pc") -> Prediction:
    """PCR 4, 7 and 9 of a UEFI boot of these files (see the module's theory of operation).

    ``direct_boot``: QEMU ``-kernel kernel -initrd initrd -append cmdline`` with OVMF (the
    kernel as ``vmm`` hands it over; ``memory_mib``/``machine`` place the initrd). Otherwise
    a boot option starts ``efi_apps`` in order, then ``kernel`` if given (measured as the
    file), and ``cmdline``/``initrd`` are what the last loader hands the EFI stub.
    ``secure_boot``: the variables (:func:`secure_boot_variables`), None for OVMF's default.
    """
    banks = tuple(dict.fromkeys(banks))
    if not banks:
        raise InputError("predict tpm: no bank to predict")
    if direct_boot and kernel is None:
        raise InputError("predict tpm: --direct-boot needs --kernel (what QEMU's -kernel loads)")
    if direct_boot and efi_apps:
        raise InputError("predict tpm: --efi-app does not go with --direct-boot (the firmware starts the kernel itself)")
    if not direct_boot and not efi_apps and kernel is None:
        raise InputError("predict tpm: give --efi-app (repeatable) or --kernel, or --direct-boot --kernel")
    if vmm != linux.QEMU and not direct_boot:
        raise InputError("predict tpm: --vmm is about QEMU's -kernel: it needs --direct-boot")
    events: list[PredictedEvent] = []
    inputs: dict[str, dict[str, str]] = {}
    notes: list[str] = []
    registers: dict[str, dict[HashAlg, bytes]] = {}

    # PCR 7: the Secure Boot policy, then the separator.
    variables = list(secure_boot) if secure_boot is not None else secure_boot_variables(None)
    secure_boot_on = False
    for var in variables:
        value = var.data or b""
        if var.name == "SecureBoot":
            secure_boot_on = value == b"\x01"
            shown = f"{value[0]}" if value else "absent"
        else:
            shown = f"{len(value)} bytes" if value else "empty"
        inputs[f"secure-boot:{var.name}"] = {"size": str(len(value)), "sha256": hashlib.sha256(value).hexdigest()}
        events.append(_fixed("pcr7", EV_EFI_VARIABLE_DRIVER_CONFIG, variable_data(var.guid, var.name, value), banks,
                             f"secure-boot:{var.name}", f"Secure Boot variable {var.name} ({shown})"))
    events.append(_fixed("pcr7", EV_SEPARATOR, SEPARATOR, banks, "separator", "end of the Secure Boot policy"))
    if secure_boot is None:
        notes.append("pcr7: OVMF's default policy: SecureBoot=0, PK KEK db dbx empty")

    # PCR 4: the applications, with the ReadyToBoot action and separator where the firmware records them.
    apps: list[tuple[PeImage, PredictedEvent]] = []
    for app in efi_apps:
        image = PeImage.parse(app.data)
        label = app.name.replace("\\", "/").rsplit("/", 1)[-1]
        inputs[f"efi-app:{label}"] = app.describe()
        apps.append((image, _app_event(image.digests(banks), f"efi-app:{label}",
                                       f"Authenticode digest of {label} (EFI application started by the firmware)")))
    initrd_data = initrd.data if initrd is not None else None
    if kernel is not None:
        inputs["kernel"] = kernel.describe()
        if direct_boot:
            loaded = linux.kernel_as_loaded(kernel.data, banks, vmm=vmm, cmdline=cmdline or "",
                                            initrd_size=len(initrd_data) if initrd_data is not None else None,
                                            memory_mib=memory_mib, machine=machine)
            notes.append(loaded.note)
            if vmm == linux.QEMU and initrd_data is not None:
                notes.append(f"kernel: the initrd's place in the header assumes -m {memory_mib} on a QEMU "
                             f"{machine} machine")
            what = "patched by QEMU's -kernel" if loaded.patched else "as the file is"
            kernel_event = _app_event(loaded.digests, "kernel", f"Authenticode digest of the kernel ({what})")
            apps.append((PeImage.parse(loaded.image), kernel_event))
        else:
            image = PeImage.parse(kernel.data)
            apps.append((image, _app_event(image.digests(banks), "kernel",
                                           "Authenticode digest of the kernel (EFI stub, started as an application)")))
    ready_to_boot = [
        _fixed("pcr4", EV_EFI_ACTION, CALLING_EFI_APPLICATION, banks, "firmware",
               "ReadyToBoot: the firmware is about to start a boot option"),
        _fixed("pcr4", EV_SEPARATOR, SEPARATOR, banks, "separator", "end of the pre-OS measurements of PCR 4"),
    ]
    app_events = [e for _, e in apps]
    if direct_boot:
        events += app_events + ready_to_boot
        notes.append("pcr4: OVMF direct boot: the kernel is loaded (and measured) before ReadyToBoot")
    else:
        events += ready_to_boot + app_events
        notes.append("pcr4: a boot option: assumes the firmware starts exactly these applications, in this order")

    # PCR 9: the EFI stub's events.
    if cmdline is not None:
        inputs["cmdline"] = {"value": cmdline}
    if initrd is not None:
        inputs["initrd"] = initrd.describe()
    options = linux.load_options(cmdline or "", qemu_initrd=direct_boot and initrd is not None) \
        if (cmdline is not None or direct_boot) else b""
    events += linux.stub_events(options=options, initrd=initrd_data, banks=banks)

    values = extend_all(events, banks)
    registers["pcr4"] = values["pcr4"]
    shim = [e.component for image, e in apps if _is_shim(image)]
    if secure_boot_on:
        notes.append("pcr7 not predicted: Secure Boot is on, and each image verified adds an "
                     "EV_EFI_VARIABLE_AUTHORITY event naming the db entry that allowed it")
    elif shim:
        notes.append(f"pcr7 not predicted: {', '.join(shim)} is shim, which records its own "
                     "EV_EFI_VARIABLE_AUTHORITY events (SbatLevel, MokList ...) in PCR 7")
    else:
        registers["pcr7"] = values["pcr7"]
    if direct_boot:
        registers["pcr9"] = values.get("pcr9", {alg: alg.zero() for alg in banks})
        if not options and initrd is None:
            notes.append("pcr9: no command line and no initrd: the EFI stub measures nothing")
    elif cmdline is not None or initrd is not None:
        notes.append("pcr9 not predicted: what a boot loader measures into PCR 9 and hands the EFI stub is its own; "
                     "the stub's events are listed for a loader passing this command line (UTF-16LE + NUL)")
    return Prediction(platform="tpm", registers=registers, events=tuple(events), inputs=inputs, notes=tuple(notes))
