"""Intel TDX: MRTD and RTMR0-2 of a TD that QEMU launches from a TDVF image, and the CCEL that goes with them.

Theory of operation
-------------------
*MRTD* comes from the firmware alone (:mod:`tsmr.predict.tdvf`).

*The RTMRs* hold what the firmware and the kernel's EFI stub measure during the boot,
into CC MR index 1..3 (RTMR0..2; UEFI 2.10 §38.4.1 maps PCR 1,7 -> RTMR0, 2-6 -> RTMR1,
8-15 -> RTMR2).  The sequence modelled here is QEMU direct boot (``-kernel``) of an
upstream edk2 OVMF/TDVF (``TdTcg2Dxe``, ``QemuKernelLoaderFsDxe``, ``AcpiPlatformDxe``),
as the real CCELs of such boots record it (``CCEL_unpadded.data.bin`` of go-eventlog and
trustee's ``CCEL_data_ovmf``), in this order:

=====  ======================================  ==========================================
RTMR0  EV_EFI_HANDOFF_TABLES2 "TdxTable"        the TD HOB the VMM built (VMM, RAM size)
RTMR0  EV_EFI_PLATFORM_FIRMWARE_BLOB2           the CFV section of the firmware image
RTMR0  EV_EFI_VARIABLE_DRIVER_CONFIG x5         SecureBoot, PK, KEK, db, dbx
RTMR0  EV_SEPARATOR                              (PCR 7's)
RTMR0  EV_PLATFORM_CONFIG_FLAGS "ACPI DATA"     etc/table-loader, then each blob it allocates
RTMR1  EV_EFI_BOOT_SERVICES_APPLICATION         the kernel's Authenticode SHA-384
RTMR0  EV_EFI_VARIABLE_BOOT                     BootOrder, Boot####
RTMR1  EV_EFI_ACTION                            "Calling EFI Application from Boot Option"
RTMR0  EV_SEPARATOR                              edk2 before 2023; newer edk2 puts it in RTMR1
RTMR2  EV_EVENT_TAG                              the stub's LoadOptions, then its initrd
RTMR1  EV_EFI_ACTION x2                         "Exit Boot Services Invocation" / "... Returned
                                                 with Success"
=====  ======================================  ==========================================

RTMR1 and RTMR2 follow from the kernel, initrd and command line (and the separator's
register, :data:`SEPARATOR_REGISTERS`).  QEMU does not patch the bzImage's setup header for
a confidential guest (``x86_load_linux`` leaves it alone when ``cgs`` is set), so the kernel
is measured as the file is.  RTMR0 depends on what the VMM and the variable store
contribute (the TD HOB, the ACPI tables, the Secure Boot and boot variables): it is
predicted only from a captured CCEL of the same platform (``ccel``), whose RTMR0 events are
taken as they are except the CFV (recomputed from this firmware) and, with ``acpi``, the
ACPI blobs (recomputed from those files).  Without a CCEL, RTMR0 is not predicted.
"""

from __future__ import annotations

import hashlib
import posixpath
import struct
from typing import Mapping, Sequence

from ..algorithms import HashAlg
from ..errors import InputError, ParseError
from ..formats import ccel as ccel_format
from ..formats import tcg2
from ..registers import register_to_ccmr
from . import linux, tdvf
from .model import PredictedEvent, Prediction, extend_all

__all__ = ["predict_tdx", "to_ccel", "acpi_events", "cfv_event", "ccel_rtmr0_events", "FIRMWARE_SEQUENCE",
           "SEPARATOR_REGISTERS"]

SHA384 = HashAlg.SHA384
BANKS = (SHA384,)

FIRMWARE_SEQUENCE = ("QEMU direct boot (-kernel) of an upstream edk2 OVMF/TDVF: kernel (EV_EFI_BOOT_SERVICES_APPLICATION), "
                     "'Calling EFI Application from Boot Option', the ReadyToBoot separator, the EFI stub's "
                     "LoadOptions and initrd (RTMR2), 'Exit Boot Services Invocation' and 'Exit Boot Services "
                     "Returned with Success' (RTMR1)")

#: Where edk2's ReadyToBoot separator goes: RTMR0 in edk2 up to 2023 (Debian's 2022.11 and the
#: direct-boot CCELs seen), RTMR1 in later edk2 (Google's and Alibaba's TDX guests).
SEPARATOR_REGISTERS = ("rtmr0", "rtmr1")

CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES_INVOCATION = b"Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_SUCCEEDED = b"Exit Boot Services Returned with Success"
ACPI_DATA = b"ACPI DATA"  # EV_POSTCODE_INFO_ACPI_DATA, the event data of every ACPI blob
TABLE_LOADER = "etc/table-loader"

# QEMU_LOADER_ENTRY (QEMU hw/acpi/bios-linker-loader.c; OvmfPkg QemuLoader.h): a UINT32 command,
# then a 124-byte union; ALLOCATE (1) starts with the 56-byte NUL-terminated fw_cfg file name.
_LOADER_ENTRY = 128
_LOADER_ALLOCATE = 1
_LOADER_FNAME = 56

# OVMF's QemuKernelLoaderFsDxe: the kernel is the file "kernel" on this vendor media device path.
_KERNEL_FS_GUID = bytes.fromhex("72f728144ab61e44b8c39ebdd7f893c7")  # 1428f772-b64a-441e-b8c3-9ebdd7f893c7
_CFV_DESCRIPTION = b"Fv(XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)"

_TYPE_BY_NAME = {name: value for value, name in tcg2.EVENT_TYPE_NAMES.items()}


def _sha384(data: bytes | memoryview) -> dict[HashAlg, bytes]:
    return {SHA384: hashlib.sha384(data).digest()}


def _event(register: str, event_type: int, digest_of: bytes | memoryview, component: str, description: str,
           data: bytes) -> PredictedEvent:
    return PredictedEvent(register=register, event_type=tcg2.event_type_name(event_type), digests=_sha384(digest_of),
                          component=component, description=description, data=data)


def action_event(register: str, text: bytes) -> PredictedEvent:
    """An EV_EFI_ACTION: the digest is of the ASCII string, which is also the event data."""
    return _event(register, tcg2.EV_EFI_ACTION, text, "firmware", text.decode(), text)


def separator_event(register: str) -> PredictedEvent:
    """edk2's EV_SEPARATOR: four zero bytes, hashed and logged."""
    return _event(register, tcg2.EV_SEPARATOR, bytes(4), "separator", "separator (ReadyToBoot)", bytes(4))


def cfv_event(image: bytes | memoryview, meta: tdvf.TdvfMetadata) -> PredictedEvent | None:
    """The TDVF's EV_EFI_PLATFORM_FIRMWARE_BLOB2 for its configuration firmware volume, None if it has none.

    TDVF hashes the CFV as the VMM copied it from the image (RawDataSize bytes) and logs a
    UEFI_PLATFORM_FIRMWARE_BLOB2 (description, base GPA, length).
    """
    cfvs = meta.of_type(tdvf.CFV)
    if not cfvs:
        return None
    s = cfvs[0]
    data = bytes([len(_CFV_DESCRIPTION)]) + _CFV_DESCRIPTION + struct.pack("<QQ", s.memory_address, s.raw_data_size)
    return _event("rtmr0", tcg2.EV_EFI_PLATFORM_FIRMWARE_BLOB2, tdvf.section_data(image, s), "cfv",
                  f"the configuration firmware volume (CFV, 0x{s.raw_data_size:x} bytes of the firmware image)", data)


def _lookup(files: Mapping[str, bytes], name: str) -> bytes | None:
    """A fw_cfg file by its name (``etc/acpi/tables``), or by its last component (``tables``)."""
    if name in files:
        return files[name]
    return files.get(posixpath.basename(name))


def table_loader_blobs(loader: bytes) -> list[str]:
    """The fw_cfg files QEMU's linker/loader script allocates, in its order (the order OVMF measures them)."""
    if len(loader) % _LOADER_ENTRY:
        raise InputError(f"acpi: {TABLE_LOADER} is {len(loader)} bytes, not a whole number of "
                         f"{_LOADER_ENTRY}-byte loader entries")
    names: list[str] = []
    for off in range(0, len(loader), _LOADER_ENTRY):
        (command,) = struct.unpack_from("<I", loader, off)
        if command != _LOADER_ALLOCATE:
            continue
        raw = loader[off + 4:off + 4 + _LOADER_FNAME]
        if raw[-1] != 0:
            raise InputError(f"acpi: loader entry {off // _LOADER_ENTRY} names a file without its NUL terminator")
        name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        if name in names:
            raise InputError(f"acpi: loader allocates {name!r} twice (OVMF refuses such a script)")
        names.append(name)
    return names


def acpi_events(files: Mapping[str, bytes]) -> list[PredictedEvent]:
    """OVMF's RTMR0 events for QEMU's ACPI tables, from the fw_cfg files as QEMU serves them.

    ``files`` maps fw_cfg names (``etc/table-loader``, ``etc/acpi/rsdp``, ``etc/acpi/tables``;
    the last name component alone is accepted too) to their bytes.  OVMF measures the
    linker/loader script first, then each blob in the order the script allocates it, each
    before it patches anything, as EV_PLATFORM_CONFIG_FLAGS with the data "ACPI DATA".
    """
    loader = _lookup(files, TABLE_LOADER)
    if loader is None:
        raise InputError(f"acpi: no {TABLE_LOADER} among the files ({', '.join(sorted(files)) or 'none'})")
    events = [_event("rtmr0", tcg2.EV_PLATFORM_CONFIG_FLAGS, loader, "acpi",
                     f"ACPI: {TABLE_LOADER} ({len(loader)} bytes)", ACPI_DATA)]
    for name in table_loader_blobs(loader):
        blob = _lookup(files, name)
        if blob is None:
            raise InputError(f"acpi: {TABLE_LOADER} allocates {name!r}, which is not among the files")
        events.append(_event("rtmr0", tcg2.EV_PLATFORM_CONFIG_FLAGS, blob, "acpi",
                             f"ACPI: {name} ({len(blob)} bytes)", ACPI_DATA))
    return events


_RTMR0_COMPONENTS = {
    tcg2.EV_EFI_HANDOFF_TABLES2: "td-hob", tcg2.EV_EFI_PLATFORM_FIRMWARE_BLOB2: "cfv",
    tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG: "secure-boot-variables", tcg2.EV_SEPARATOR: "separator",
    tcg2.EV_EFI_VARIABLE_BOOT: "boot-variables", tcg2.EV_EFI_VARIABLE_AUTHORITY: "secure-boot-authority",
}


def _is_acpi(ev: tcg2.TCG2Event) -> bool:
    return ev.event_type in (tcg2.EV_PLATFORM_CONFIG_FLAGS, tcg2.EV_POST_CODE) and (
        ev.data == ACPI_DATA or ev.data.startswith(b"etc/"))


def ccel_rtmr0_events(data: bytes) -> tuple[list[PredictedEvent], str | None]:
    """RTMR0's events of a captured CCEL, as predicted events, and where its ReadyToBoot separator went.

    The second value is ``"rtmr1"`` when the log has a separator in RTMR1 (newer edk2),
    ``"rtmr0"`` when RTMR0 has two (older edk2), None when it cannot tell.
    """
    try:
        log = ccel_format.parse_log(data)
    except ParseError as e:
        raise InputError(f"ccel: {e}") from None
    events: list[PredictedEvent] = []
    rtmr0_separators = rtmr1_separators = 0
    for i, ev in enumerate(log.events):
        if ev.event_type == tcg2.EV_NO_ACTION:
            continue
        if ev.event_type == tcg2.EV_SEPARATOR:
            rtmr0_separators += ev.index == 1
            rtmr1_separators += ev.index == 2
        if ev.index != 1:
            continue
        digest = ev.digest(SHA384)
        if digest is None or len(digest) != SHA384.digest_size:
            raise InputError(f"ccel: RTMR0 event {i} has no SHA-384 digest")
        component = "acpi" if _is_acpi(ev) else _RTMR0_COMPONENTS.get(ev.event_type, "firmware")
        events.append(PredictedEvent(register="rtmr0", event_type=ev.type_name, digests={SHA384: digest},
                                     component=component, description=f"from the captured CCEL (event {i})",
                                     data=ev.data))
    if not events:
        raise InputError("ccel: the log has no RTMR0 (CC MR index 1) events")
    variant = "rtmr1" if rtmr1_separators else "rtmr0" if rtmr0_separators >= 2 else None
    return events, variant


def _merge_rtmr0(captured: list[PredictedEvent], cfv: PredictedEvent | None,
                 acpi: list[PredictedEvent] | None, notes: list[str]) -> list[PredictedEvent]:
    """The captured RTMR0 events with the CFV and (given) ACPI events of this firmware and VMM put in."""
    out: list[PredictedEvent] = []
    acpi_done = False
    for ev in captured:
        if ev.component == "cfv" and cfv is not None:
            if ev.digests[SHA384] != cfv.digests[SHA384]:
                notes.append("rtmr0: the CCEL's CFV digest differs from this firmware's; the firmware's is used")
            out.append(cfv)
        elif ev.component == "acpi" and acpi is not None:
            if not acpi_done:
                out.extend(acpi)
                acpi_done = True
        else:
            out.append(ev)
    if acpi is not None and not acpi_done:
        raise InputError("ccel: the log has no ACPI events in RTMR0 for --acpi to replace")
    return out


def _kernel_event(kernel: linux.KernelImage) -> PredictedEvent:
    """OVMF's EV_EFI_BOOT_SERVICES_APPLICATION for the kernel QEMU handed over: its Authenticode SHA-384.

    The event data is a UEFI_IMAGE_LOAD_EVENT for the "kernel" file of QemuKernelLoaderFsDxe;
    where the firmware put the image in memory is not predictable and is written as 0.
    """
    path = (b"\x04\x03\x14\x00" + _KERNEL_FS_GUID
            + b"\x04\x04" + struct.pack("<H", 4 + 14) + "kernel\0".encode("utf-16-le")
            + b"\x7f\xff\x04\x00")
    data = struct.pack("<QQQQ", 0, len(kernel.image), 0, len(path)) + path
    return PredictedEvent(register="rtmr1", event_type=tcg2.event_type_name(tcg2.EV_EFI_BOOT_SERVICES_APPLICATION),
                          digests={SHA384: kernel.digests[SHA384]}, component="kernel",
                          description="Authenticode SHA-384 of the kernel as QEMU hands it to OVMF (the file, "
                                      "unpatched for a confidential guest)", data=data)


def _file_input(name: str | None, data: bytes | memoryview) -> dict[str, str]:
    out = {"sha384": hashlib.sha384(data).hexdigest(), "size": str(len(data))}
    if name:
        out["file"] = name
    return out


def predict_tdx(firmware: bytes | memoryview, *, kernel: bytes | None = None, initrd: bytes | None = None,
                cmdline: str | None = None, two_pass_add: bool = False, acpi: Mapping[str, bytes] | None = None,
                ccel: bytes | None = None, separator: str | None = None,
                names: Mapping[str, str] | None = None) -> Prediction:
    """Predict MRTD and, as far as the inputs determine them, RTMR0-2 of a QEMU direct boot (module docstring).

    ``acpi`` maps fw_cfg names to the ACPI blobs QEMU serves (:func:`acpi_events`); ``ccel``
    is a captured CCEL whose RTMR0 events stand for the VMM's and NVRAM's contributions;
    ``separator`` (``rtmr0``/``rtmr1``) where the firmware puts its ReadyToBoot separator
    (default: what the CCEL shows, else ``rtmr0``); ``names`` the file name of each input,
    for the record.  Raises :class:`InputError` for a firmware without usable TDX metadata
    and for inputs that do not fit together.
    """
    names = names or {}
    meta = tdvf.parse_metadata(firmware)
    value = tdvf.mrtd(firmware, meta, two_pass=two_pass_add)
    notes = [f"mrtd: TDVF sections {', '.join(tdvf.describe(meta))}; page order "
             + ("two-pass (all TDH.MEM.PAGE.ADD of a section, then its TDH.MR.EXTENDs: some downstream qemu-tdx)"
                if two_pass_add else "upstream QEMU/KVM (each page: TDH.MEM.PAGE.ADD, then its TDH.MR.EXTENDs)")]
    inputs: dict[str, dict[str, str]] = {"firmware": _file_input(names.get("firmware"), firmware)}
    if separator is not None and separator not in SEPARATOR_REGISTERS:
        raise InputError(f"separator register {separator!r}: one of {', '.join(SEPARATOR_REGISTERS)}")
    if (initrd is not None or cmdline is not None) and kernel is None:
        raise InputError("--initrd and --cmdline describe a direct boot: give --kernel too")

    cfv = cfv_event(firmware, meta)
    acpi_evs = acpi_events(acpi) if acpi is not None else None
    if acpi is not None:
        inputs["acpi"] = {name: hashlib.sha384(blob).hexdigest() for name, blob in sorted(acpi.items())}
    rtmr0: list[PredictedEvent] = []
    rtmr0_complete = False
    if ccel is not None:
        captured, seen = ccel_rtmr0_events(ccel)
        inputs["ccel"] = _file_input(names.get("ccel"), ccel)
        if separator is None:
            separator = seen
        elif seen is not None and seen != separator:
            notes.append(f"the CCEL has its ReadyToBoot separator in {seen}, not {separator} as asked")
        rtmr0 = _merge_rtmr0(captured, cfv, acpi_evs, notes)
        rtmr0_complete = True
        notes.append("rtmr0: the TD HOB, Secure Boot and boot variable events are those of the captured CCEL"
                     + ("; the ACPI events are from --acpi" if acpi_evs is not None else "")
                     + "; the CFV event is this firmware's")
    elif acpi_evs is not None:
        rtmr0 = ([cfv] if cfv is not None else []) + acpi_evs
        notes.append("rtmr0 not predicted: besides the CFV and the ACPI tables it holds the TD HOB and the Secure "
                     "Boot and boot variables, which only a captured CCEL (--ccel) gives; the events listed are "
                     "the ones these inputs determine")
    else:
        notes.append("rtmr0 not predicted: it depends on the VMM's TD HOB and ACPI tables and the variable store "
                     "(give --ccel, and --acpi for other ACPI tables)")
    separator = separator or "rtmr0"

    boot: list[PredictedEvent] = []  # RTMR1 and RTMR2, in firmware order, around the RTMR0 parts
    early0, boot_vars, late0 = _split_rtmr0(rtmr0)
    events: list[PredictedEvent] = list(early0)
    if kernel is not None:
        image = linux.kernel_as_loaded(kernel, BANKS, vmm=linux.UNMODIFIED)
        inputs["kernel"] = _file_input(names.get("kernel"), kernel)
        options = linux.load_options(cmdline or "", qemu_initrd=initrd is not None)
        inputs["cmdline"] = {"value": cmdline or "", "load_options_sha384": hashlib.sha384(options).hexdigest()}
        if initrd is not None:
            inputs["initrd"] = _file_input(names.get("initrd"), initrd)
        events.append(_kernel_event(image))
        events.extend(boot_vars)
        events.append(action_event("rtmr1", CALLING_EFI_APPLICATION))
        if separator == "rtmr1":
            events.append(separator_event("rtmr1"))
        events.extend(late0)
        stub = linux.stub_events(options=options, initrd=initrd, banks=BANKS, register="rtmr2")
        events.extend(stub)
        events.append(action_event("rtmr1", EXIT_BOOT_SERVICES_INVOCATION))
        events.append(action_event("rtmr1", EXIT_BOOT_SERVICES_SUCCEEDED))
        boot = [e for e in events if e.register in ("rtmr1", "rtmr2")]
        notes.append(f"rtmr1/rtmr2: {FIRMWARE_SEQUENCE}; the ReadyToBoot separator in {separator}")
        notes.append("kernel: measured as the file is: QEMU's x86_load_linux leaves the setup header unpatched "
                     "for a confidential guest (TDX as SEV)")
        if not options:
            notes.append("rtmr2: no command line and no initrd, so OVMF sets no LoadOptions and the stub measures none")
        if not stub:
            notes.append("rtmr2: the EFI stub measures nothing, so RTMR2 stays zero")
    else:
        events.extend(boot_vars)
        events.extend(late0)
        notes.append("rtmr1/rtmr2 not predicted: they follow from a direct boot's kernel, initrd and command line "
                     "(--kernel, --initrd, --cmdline)")

    registers: dict[str, dict[HashAlg, bytes]] = {}
    if rtmr0_complete:
        registers.update(extend_all(rtmr0, BANKS))
    if kernel is not None:
        values = extend_all(boot, BANKS)
        registers["rtmr1"] = values["rtmr1"]
        registers["rtmr2"] = values.get("rtmr2", {SHA384: bytes(SHA384.digest_size)})
    return Prediction(platform="tdx", registers=registers, claims={"mrtd": value.hex()}, events=tuple(events),
                      inputs=inputs, notes=tuple(notes))


def _split_rtmr0(events: Sequence[PredictedEvent]) -> tuple[list[PredictedEvent], list[PredictedEvent],
                                                             list[PredictedEvent]]:
    """RTMR0 in three parts, to place the boot's events where the firmware records them:
    before the boot variables, the boot variables, and what follows (the ReadyToBoot separator)."""
    first = next((i for i, e in enumerate(events) if e.component == "boot-variables"), None)
    if first is None:
        return list(events), [], []
    end = first
    while end < len(events) and events[end].component == "boot-variables":
        end += 1
    return list(events[:first]), list(events[first:end]), list(events[end:])


def to_ccel(events: Sequence[PredictedEvent]) -> bytes:
    """The bytes of a CCEL log area recording ``events``: what TDVF would have written for them.

    A crypto-agile TCG2 log with TDVF's header (Spec ID Event03, SHA-384 only, 64-bit UINTN,
    the header record at MR index 1 as TDVF writes it), then one TCG_PCR_EVENT2 per event at
    its CC MR index (RTMR0..3 -> 1..4).  Replaying it gives the registers of
    :func:`~tsmr.predict.model.extend_all` over the same events.
    """
    spec = tcg2.SpecIdEvent.for_algorithms(BANKS)
    header = tcg2.TCG2Event(index=1, event_type=tcg2.EV_NO_ACTION, digests=((int(HashAlg.SHA1), bytes(20)),),
                            data=tcg2.encode_spec_id(spec))
    records = []
    for e in events:
        index = register_to_ccmr(e.register)
        if index is None or not 1 <= index <= 4:
            raise InputError(f"ccel: {e.register} is not an RTMR (a CCEL records RTMR0..3)")
        etype = _TYPE_BY_NAME.get(e.event_type)
        if etype is None:
            try:
                etype = int(e.event_type, 16)
            except ValueError:
                raise InputError(f"ccel: unknown event type {e.event_type!r}") from None
        if SHA384 not in e.digests:
            raise InputError(f"ccel: {e.register} {e.event_type} has no SHA-384 digest")
        records.append(tcg2.TCG2Event(index=index, event_type=etype, digests=((int(SHA384), e.digests[SHA384]),),
                                      data=e.data or b""))
    return tcg2.encode(tcg2.TCG2Log(spec_id=spec, events=tuple(records), header_event=header))
