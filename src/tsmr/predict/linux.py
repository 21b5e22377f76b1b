"""What booting Linux measures: the EFI stub's events, and the kernel image as QEMU hands it to the firmware.

Theory of operation
-------------------
*The EFI stub* (Linux ``drivers/firmware/efi/libstub``, since 5.18 for the initrd and 6.1
for the command line) measures two things before it exits boot services, each as an
``EV_EVENT_TAG`` into PCR 9 (through ``EFI_TCG2_PROTOCOL``; on a confidential VM through
``EFI_CC_MEASUREMENT_PROTOCOL`` into the MR PCR 9 maps to, RTMR2 on TDX):

1. ``LOADED_IMAGE::LoadOptions`` exactly as the loader left them (the bytes and size of
   ``EFI_LOADED_IMAGE_PROTOCOL.LoadOptions``), when ``LoadOptionsSize`` is not zero;
2. the initrd it loaded through ``LoadFile2`` on the ``LINUX_INITRD_MEDIA`` device path, when
   there is one: the digest is of the initrd's bytes.

The event data of each is a ``TCG_PCClientTaggedEvent`` (PFP §10.4.2.1 / ch. 10): u32 tag
(0x8F3B22ED load options, 0x8F3B22EC initrd), u32 size, then the description *with* its NUL
("LOADED_IMAGE::LoadOptions", "Linux initrd").  The digest is never of the event data.

*The load options* depend on who starts the kernel.  OVMF's direct boot (QEMU ``-kernel``,
``QemuLoadImageLib``) takes the command line from fw_cfg, widens each byte to a CHAR16,
appends " initrd=initrd" when QEMU was given an initrd and terminates it with a CHAR16 NUL;
with neither a command line nor an initrd there are no load options and no event.  The real
OVMF + swtpm boot of the kernel tier recorded exactly these bytes.

*The kernel image.*  For ``-kernel``, QEMU (``hw/i386/x86.c`` ``x86_load_linux``) writes boot
parameters into a copy of the bzImage's setup header and hands the firmware the patched setup
sectors followed by the untouched rest (fw_cfg ``SETUP_DATA`` + ``KERNEL_DATA``); OVMF's
``QemuKernelLoaderFsDxe`` concatenates the two into the file it loads, so the Authenticode
digest in PCR 4 (RTMR1) is of the *patched* image.  QEMU 7.2 (and 8.x; Debian 12's
7.2+dfsg reverted the 7.1 ``setup_data`` RNG seed, which would have made the digest random)
writes, for boot protocol >= 2.02:

* ``cmd_line_ptr`` (0x228) = 0x20000, ``type_of_loader`` (0x210) = 0xB0,
  ``loadflags`` (0x211) |= CAN_USE_HEAP, ``heap_end_ptr`` (0x224) = 0xFE00;
* ``vid_mode`` (0x1FA) when the command line holds ``vga=``;
* with an initrd: ``ramdisk_size`` (0x21C) and ``ramdisk_image`` (0x218), the initrd placed
  at the top of the RAM below 4 GiB less the ACPI area, page aligned, so the digest depends
  on the initrd's *size* and the guest's *memory size* (and machine type above 2.75 GiB).

QEMU leaves the header alone for SEV guests (so that the kernel hashes it adds to the
firmware match the file), and a VMM that hands the file over as it is gives the file's own
digest: :data:`UNMODIFIED`.  Which one a VMM does is the caller's choice (``vmm``); the kernel
tier's test holds the QEMU 7.2 model to a real boot.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Sequence

from ..algorithms import HashAlg
from ..errors import InputError
from ..formats.tcg2 import EV_EVENT_TAG, event_type_name
from ..formats.uefi import LINUX_INITRD_TAG, LINUX_LOAD_OPTIONS_TAG
from .model import PredictedEvent
from .pe import PeImage

__all__ = [
    "QEMU",
    "UNMODIFIED",
    "VMMS",
    "KernelImage",
    "initrd_event",
    "kernel_as_loaded",
    "load_options",
    "load_options_event",
    "qemu_below_4g",
    "qemu_patch_setup_header",
    "stub_events",
    "tagged_event_data",
]

QEMU = "qemu"  # QEMU's x86 -kernel without SEV: setup header patched (7.2 and 8.x behave the same)
UNMODIFIED = "unmodified"  # the file as it is: QEMU with SEV, or a VMM/firmware that does not patch
VMMS = (QEMU, UNMODIFIED)

LOAD_OPTIONS_DESCRIPTION = b"LOADED_IMAGE::LoadOptions\0"
INITRD_DESCRIPTION = b"Linux initrd\0"
OVMF_INITRD_OPTION = " initrd=initrd"  # OVMF's QemuLoadImageLib appends it when QEMU has an initrd

_HDRS = b"HdrS"
_MIB = 1 << 20
# QEMU pc/q35 machine types since 2.x reserve this much below the top of low RAM for ACPI tables
# (pcmc->acpi_data_size); the initrd goes below it.
_QEMU_ACPI_DATA_SIZE = 0x20000 + 0x8000
MACHINES = ("pc", "q35")


def tagged_event_data(tag: int, description: bytes) -> bytes:
    """A TCG_PCClientTaggedEvent: u32 taggedEventID, u32 taggedEventDataSize, the data."""
    return struct.pack("<II", tag, len(description)) + description


def load_options(cmdline: str, *, qemu_initrd: bool = False) -> bytes:
    """``LoadOptions`` as OVMF's direct boot gives them to the kernel: each byte of the command line
    widened to a CHAR16, " initrd=initrd" appended when QEMU had an initrd, a CHAR16 NUL at the end.

    A loader that passes a UTF-16 command line itself (systemd-boot, a Boot#### entry) gives the
    UTF-16LE of the text plus the NUL: the same bytes for ASCII text.  Empty options (no command
    line, no initrd) are ``b""``: OVMF then sets none, and the stub measures nothing.
    """
    raw = cmdline.encode("utf-8")
    if b"\0" in raw:
        raise InputError("the kernel command line contains a NUL byte")
    text = raw.decode("latin-1") + (OVMF_INITRD_OPTION if qemu_initrd else "")
    if not text:
        return b""
    return (text + "\0").encode("utf-16-le")


def load_options_event(options: bytes, banks: Sequence[HashAlg], *, register: str = "pcr9",
                       description: str | None = None) -> PredictedEvent:
    """The stub's EV_EVENT_TAG for ``LoadOptions``: digest of the option bytes, data the tagged event."""
    if not options:
        raise InputError("empty load options are not measured")
    return PredictedEvent(
        register=register, event_type=event_type_name(EV_EVENT_TAG),
        digests={alg: alg.hash(options) for alg in banks}, component="cmdline",
        description=description or "the kernel command line as LOADED_IMAGE::LoadOptions (UTF-16LE, NUL-terminated)",
        data=tagged_event_data(LINUX_LOAD_OPTIONS_TAG, LOAD_OPTIONS_DESCRIPTION))


def initrd_event(initrd: bytes, banks: Sequence[HashAlg], *, register: str = "pcr9") -> PredictedEvent:
    """The stub's EV_EVENT_TAG for the initrd it loaded through LoadFile2: digest of the initrd bytes."""
    return PredictedEvent(
        register=register, event_type=event_type_name(EV_EVENT_TAG),
        digests={alg: alg.hash(initrd) for alg in banks}, component="initrd",
        description=f"the initrd ({len(initrd)} bytes) the EFI stub loaded through LoadFile2",
        data=tagged_event_data(LINUX_INITRD_TAG, INITRD_DESCRIPTION))


def stub_events(*, options: bytes, initrd: bytes | None, banks: Sequence[HashAlg],
                register: str = "pcr9") -> list[PredictedEvent]:
    """The EFI stub's events in the order it records them: load options (if any), then the initrd (if any)."""
    events = [load_options_event(options, banks, register=register)] if options else []
    if initrd is not None:
        events.append(initrd_event(initrd, banks, register=register))
    return events


def qemu_below_4g(memory_mib: int, machine: str = "pc") -> int:
    """RAM below 4 GiB of a QEMU pc (i440fx) or q35 guest with ``-m memory_mib`` (default properties).

    pc keeps up to 3.5 GiB low, and splits bigger guests at 3 GiB (gigabyte_align); q35 keeps
    up to 2.75 GiB low and splits bigger guests at 2 GiB.
    """
    if memory_mib <= 0:
        raise InputError(f"memory size must be positive, not {memory_mib} MiB")
    if machine not in MACHINES:
        raise InputError(f"unknown machine type {machine!r} (one of {', '.join(MACHINES)})")
    ram = memory_mib * _MIB
    if machine == "pc":
        return 0xC0000000 if ram >= 0xE0000000 else ram
    return 0x80000000 if ram >= 0xB0000000 else ram


def _vga_mode(cmdline: str) -> int | None:
    """QEMU's reading of the first ``vga=`` in the command line (normal, ext, ask or a C number)."""
    at = cmdline.find("vga=")
    if at < 0:
        return None
    value = cmdline[at + 4:]
    for name, mode in (("normal", 0xFFFF), ("ext", 0xFFFE), ("ask", 0xFFFD)):
        if value.startswith(name):
            return mode
    m = re.match(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(?= |$)", value)
    if not m:
        raise InputError(f"QEMU refuses this command line: invalid 'vga=' parameter {value.split(' ')[0]!r}")
    mode = int(m.group(1), 16) if m.group(1)[:2].lower() == "0x" else int(m.group(1), 8 if m.group(1).startswith("0") else 10)
    if mode > 0xFFFFFFFF:
        raise InputError(f"QEMU refuses this command line: 'vga=' value {m.group(1)} is out of range")
    return mode & 0xFFFF


def qemu_patch_setup_header(kernel: bytes, *, cmdline: str, initrd_size: int | None, memory_mib: int,
                            machine: str = "pc") -> tuple[bytes, dict[str, int]]:
    """The bzImage as QEMU's x86 ``-kernel`` hands it to the firmware (no SEV), and the fields it wrote.

    Follows ``x86_load_linux`` (QEMU 7.2/8.x): the boot protocol version decides where the
    command line and heap go, the initrd goes to the top of low RAM.  Only the first 8 KiB
    (QEMU's header buffer) can change.  Raises InputError for what QEMU itself refuses
    (not a bzImage, an initrd too big, a kernel too old for an initrd).
    """
    if len(kernel) < 0x250 or kernel[0x202:0x206] != _HDRS:
        raise InputError("not a Linux bzImage: no 'HdrS' setup header at offset 0x202")
    protocol = struct.unpack_from("<H", kernel, 0x206)[0]
    setup_sects = kernel[0x1F1] or 4
    if (setup_sects + 1) * 512 > len(kernel):
        raise InputError(f"invalid kernel header: {setup_sects} setup sectors but the file is {len(kernel)} bytes")
    head = bytearray(kernel[:min(len(kernel), 8192)])
    cmdline_size = (len(cmdline.encode("utf-8")) + 16) & ~15
    if protocol < 0x200 or not head[0x211] & 0x01:  # zImage / low kernel
        real_addr, cmdline_addr = 0x90000, 0x9A000 - cmdline_size
    elif protocol < 0x202:
        real_addr, cmdline_addr = 0x90000, 0x9A000 - cmdline_size
    else:
        real_addr, cmdline_addr = 0x10000, 0x20000
    if protocol >= 0x20C and struct.unpack_from("<H", head, 0x236)[0] & 0x2:  # XLF_CAN_BE_LOADED_ABOVE_4G
        initrd_max = 0xFFFFFFFF
    elif protocol >= 0x203:
        initrd_max = struct.unpack_from("<I", head, 0x22C)[0]
    else:
        initrd_max = 0x37FFFFFF
    low = qemu_below_4g(memory_mib, machine)
    if low <= _QEMU_ACPI_DATA_SIZE:
        raise InputError(f"{memory_mib} MiB of memory leaves no room below the ACPI tables")
    if initrd_max >= low - _QEMU_ACPI_DATA_SIZE:
        initrd_max = low - _QEMU_ACPI_DATA_SIZE - 1
    fields: dict[str, int] = {}

    def put(offset: int, fmt: str, value: int, name: str) -> None:
        struct.pack_into(fmt, head, offset, value)
        fields[name] = value

    if protocol >= 0x202:
        put(0x228, "<I", cmdline_addr, "cmd_line_ptr")
    else:
        put(0x20, "<H", 0xA33F, "cl_magic")
        put(0x22, "<H", cmdline_addr - real_addr, "cl_offset")
    vga = _vga_mode(cmdline)
    if vga is not None:
        put(0x1FA, "<H", vga, "vid_mode")
    if protocol >= 0x200:
        put(0x210, "<B", 0xB0, "type_of_loader")
    if protocol >= 0x201:
        put(0x211, "<B", head[0x211] | 0x80, "loadflags")
        put(0x224, "<H", cmdline_addr - real_addr - 0x200, "heap_end_ptr")
    if initrd_size is not None:
        if protocol < 0x200:
            raise InputError("QEMU refuses an initrd for this kernel (boot protocol older than 2.00)")
        if initrd_size >= initrd_max:
            raise InputError(f"QEMU refuses this initrd: {initrd_size} bytes, the most it places is {initrd_max}")
        put(0x218, "<I", (initrd_max - initrd_size) & ~4095, "ramdisk_image")
        put(0x21C, "<I", initrd_size, "ramdisk_size")
    return bytes(head) + kernel[len(head):], fields


@dataclass(frozen=True)
class KernelImage:
    """The kernel image a firmware loads, how it came from the file, and its Authenticode digests."""

    image: bytes
    vmm: str
    patched: dict[str, int]  # setup-header fields the VMM wrote (empty: the file as it is)
    digests: dict[HashAlg, bytes]

    @property
    def note(self) -> str:
        """One sentence for Prediction.notes: what the VMM did to the file."""
        if not self.patched:
            return "kernel: measured as the file is (a VMM that hands it over unmodified, or QEMU with SEV)"
        fields = ", ".join(f"{k}=0x{v:x}" for k, v in self.patched.items())
        return f"kernel: QEMU -kernel setup header as QEMU 7.2/8.x writes it ({fields})"


def kernel_as_loaded(kernel: bytes, banks: Sequence[HashAlg], *, vmm: str = QEMU, cmdline: str = "",
                     initrd_size: int | None = None, memory_mib: int = 128, machine: str = "pc") -> KernelImage:
    """The kernel file as ``vmm`` makes it before the firmware measures it, with its Authenticode digests.

    ``memory_mib`` and ``machine`` matter to QEMU only with an initrd (where it goes is written
    into the header); 128 MiB is QEMU's default ``-m``.
    """
    if vmm not in VMMS:
        raise InputError(f"unknown VMM behaviour {vmm!r} (one of {', '.join(VMMS)})")
    if vmm == QEMU:
        image, patched = qemu_patch_setup_header(kernel, cmdline=cmdline, initrd_size=initrd_size,
                                                 memory_mib=memory_mib, machine=machine)
    else:
        image, patched = kernel, {}
    pe = PeImage.parse(image)
    return KernelImage(image=image, vmm=vmm, patched=patched, digests=pe.digests(banks))
