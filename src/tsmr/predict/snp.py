"""The SEV-SNP launch digest (the report's MEASUREMENT) predicted from firmware, vCPUs and kernel.

Theory of operation.  An SEV-SNP guest is built by the VMM handing pages to the
AMD Secure Processor with SNP_LAUNCH_UPDATE, and the firmware folds every page
into the launch digest (SEV Secure Nested Paging Firmware ABI Specification, §8.17
SNP_LAUNCH_UPDATE, table "PAGE_INFO structure"): for each page it hashes, with
SHA-384, the 0x70-byte PAGE_INFO

    DIGEST_CUR (48) || CONTENTS (48) || LENGTH=0x70 (u16) || PAGE_TYPE (u8) || IMI_PAGE (u8)
    || VMPL3_PERMS, VMPL2_PERMS, VMPL1_PERMS, reserved (u8 each) || GPA (u64)

and the hash becomes the new DIGEST_CUR (48 zero bytes at the start).  CONTENTS is
the SHA-384 of the page for NORMAL and VMSA pages and zero for the other types
(ZERO, UNMEASURED, SECRETS, CPUID), whose contents the firmware defines itself.
After the last page the digest is the guest's MEASUREMENT.

The pages a VMM adds for an OVMF guest, in order:

1. the firmware image, every page NORMAL, at the addresses that end at 4 GiB;
   the digest after these is what ``--ovmf-hash`` prints, and a launch may start
   from such a precomputed value instead of the image's bytes;
2. the SEV metadata sections of the image, in the image's order
   (:mod:`tsmr.predict.snp_firmware`): SNP_SEC_MEM as ZERO pages (UNMEASURED on GCE),
   SNP_SECRETS as the SECRETS page, CPUID as the CPUID page (on EC2 after every
   other section), SVSM_CAA as ZERO pages, SNP_KERNEL_HASHES as NORMAL pages holding
   the SEV hash table when a kernel is given and as ZERO pages otherwise;
3. one VMSA per vCPU (:mod:`tsmr.predict.snp_vmsa`), recorded at the GPA that KVM
   gives VMSAs (all ones, page aligned, bits above 51 clear).

The SEV hash table is QEMU's ``SevHashTable`` (``target/i386/sev.c``): a header
GUID and length, then entries ``{GUID, u16 length, SHA-256}`` for the command line
(its bytes and the terminating NUL), the initrd (the empty string when none) and
the kernel (the file as given: QEMU leaves the setup header unpatched for
encrypted guests so that the hash matches the file), padded to 16 bytes and written
at the base the firmware's SEV hash table area names.

Each :class:`~tsmr.predict.model.PredictedEvent` names one component.  SEV-SNP has no
register to extend, so page events carry, under SHA-384, the launch digest *after*
that component (the first is the firmware's digest, the last the MEASUREMENT): two
predictions, or a prediction and another tool's trace, first differ at the
component that differs.  The kernel, initrd and command line entries carry the
SHA-256 that the hash table holds.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from typing import Mapping

from ..algorithms import HashAlg
from ..errors import InputError
from .model import PredictedEvent, Prediction
from .snp_firmware import PAGE_SIZE, MetadataSection, OvmfImage, SectionType, parse_ovmf
from .snp_vmsa import BSP_RESET_ADDRESS, VMMS, vmsa_page

__all__ = ["KernelHashes", "LaunchDigest", "PageType", "ovmf_hash", "predict_snp", "MAX_VCPUS", "REGISTER"]

#: The name SEV-SNP's launch digest goes by in tsmr (the report field, the emulator's register).
REGISTER = "measurement"
#: KVM's upper bound on vCPUs of one guest (KVM_MAX_VCPUS on x86); more is certainly a mistake.
MAX_VCPUS = 4096
#: The GPA that SNP_LAUNCH_UPDATE records for VMSA pages under KVM: -1, page aligned, bits 63:52 clear.
VMSA_GPA = 0x0000_FFFF_FFFF_F000

_DIGEST = HashAlg.SHA384
_ZERO48 = bytes(48)
_PAGE_INFO_TAIL = struct.Struct("<HBBBBBBQ")  # LENGTH, PAGE_TYPE, IMI_PAGE, VMPL3/2/1_PERMS, reserved, GPA
_PAGE_INFO_LENGTH = 96 + _PAGE_INFO_TAIL.size  # 0x70


class PageType:
    """SNP_LAUNCH_UPDATE page types (Firmware ABI, table "Page Types"); names as the spec writes them."""

    NORMAL = 0x1
    VMSA = 0x2
    ZERO = 0x3
    UNMEASURED = 0x4
    SECRETS = 0x5
    CPUID = 0x6

    NAMES = {1: "PAGE_TYPE_NORMAL", 2: "PAGE_TYPE_VMSA", 3: "PAGE_TYPE_ZERO", 4: "PAGE_TYPE_UNMEASURED",
             5: "PAGE_TYPE_SECRETS", 6: "PAGE_TYPE_CPUID"}


class LaunchDigest:
    """The running launch digest of SNP_LAUNCH_UPDATE: one PAGE_INFO hashed per page."""

    def __init__(self, start: bytes = _ZERO48) -> None:
        if len(start) != 48:
            raise InputError(f"a launch digest is 48 bytes (SHA-384), got {len(start)}")
        self.value = start

    def page(self, page_type: int, gpa: int, contents: bytes = _ZERO48) -> None:
        """Fold one page: ``contents`` is the page's SHA-384 for NORMAL and VMSA pages, zero otherwise."""
        tail = _PAGE_INFO_TAIL.pack(_PAGE_INFO_LENGTH, page_type, 0, 0, 0, 0, 0, gpa)
        self.value = hashlib.sha384(self.value + contents + tail).digest()

    def normal_pages(self, gpa: int, data: bytes) -> None:
        """Fold ``data`` (whole pages) as NORMAL pages from ``gpa`` on."""
        sha384 = hashlib.sha384
        for off in range(0, len(data), PAGE_SIZE):
            self.page(PageType.NORMAL, gpa + off, sha384(data[off:off + PAGE_SIZE]).digest())

    def empty_pages(self, page_type: int, gpa: int, size: int) -> None:
        """Fold ``size`` bytes of pages whose CONTENTS the firmware does not measure (ZERO, UNMEASURED ...)."""
        for off in range(0, size, PAGE_SIZE):
            self.page(page_type, gpa + off)


def ovmf_hash(firmware: bytes) -> bytes:
    """The launch digest after the firmware's pages alone: the starting point of precomputed launches.

    Only needs the image to be whole pages (its SEV metadata is not read).
    """
    if not firmware or len(firmware) % PAGE_SIZE:
        raise InputError(f"the firmware is {len(firmware)} bytes, not a whole, non-zero number of 4 KiB pages")
    ld = LaunchDigest()
    ld.normal_pages((1 << 32) - len(firmware), firmware)
    return ld.value


# --- the SEV hash table ---------------------------------------------------------------------

_HASH_TABLE_GUID = uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21")
_KERNEL_GUID = uuid.UUID("4de79437-abd2-427f-b835-d5b172d2045b")
_INITRD_GUID = uuid.UUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
_CMDLINE_GUID = uuid.UUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
_ENTRY = struct.Struct("<16sH32s")  # GUID, length, SHA-256
_HEADER = struct.Struct("<16sH")  # GUID, length of the whole table
_TABLE_SIZE = _HEADER.size + 3 * _ENTRY.size  # 168
_PADDED_TABLE_SIZE = (_TABLE_SIZE + 15) & ~15  # 176


@dataclass(frozen=True)
class KernelHashes:
    """The SHA-256 digests a direct kernel boot puts in the SEV hash table."""

    kernel: bytes
    initrd: bytes
    cmdline: bytes

    @staticmethod
    def cmdline_bytes(append: str | None) -> bytes:
        """What QEMU hashes for a command line: its bytes (UTF-8) and the terminating NUL."""
        return (append or "").encode("utf-8", "surrogateescape") + b"\0"

    @classmethod
    def of(cls, kernel_sha256: bytes, initrd_sha256: bytes | None = None, append: str | None = None) -> KernelHashes:
        """From the files' SHA-256 (no initrd: the hash of nothing) and the command line as given."""
        for what, d in (("kernel", kernel_sha256), ("initrd", initrd_sha256)):
            if d is not None and len(d) != 32:
                raise InputError(f"the {what} digest must be 32 bytes (SHA-256), got {len(d)}")
        return cls(kernel=kernel_sha256,
                   initrd=initrd_sha256 if initrd_sha256 is not None else hashlib.sha256(b"").digest(),
                   cmdline=hashlib.sha256(cls.cmdline_bytes(append)).digest())

    def table(self) -> bytes:
        """The padded SEV hash table as QEMU writes it: header, then command line, initrd, kernel."""
        out = _HEADER.pack(_HASH_TABLE_GUID.bytes_le, _TABLE_SIZE)
        for guid, digest in ((_CMDLINE_GUID, self.cmdline), (_INITRD_GUID, self.initrd), (_KERNEL_GUID, self.kernel)):
            out += _ENTRY.pack(guid.bytes_le, _ENTRY.size, digest)
        return out + bytes(_PADDED_TABLE_SIZE - len(out))


def _hashes_section_contents(image: OvmfImage, section: MetadataSection, hashes: KernelHashes) -> bytes:
    """The bytes of the SNP_KERNEL_HASHES section once QEMU has written the hash table into it."""
    area = image.hash_table_area
    if area is None:
        raise InputError("a kernel was given but the firmware has no SEV hash table area "
                         "(GUID 7255371f-3a3b-4b04-927b-1da6efa8d454): QEMU refuses such a launch")
    base, size = area
    if base == 0 or size < _PADDED_TABLE_SIZE:
        raise InputError(f"a kernel was given but the firmware's SEV hash table area is invalid "
                         f"(base {base:#x}, size {size:#x}): QEMU refuses such a launch")
    offset = base - section.gpa
    if offset < 0 or offset + _PADDED_TABLE_SIZE > section.size:
        raise InputError(f"the SEV hash table area at {base:#x} is not inside the SNP_KERNEL_HASHES section "
                         f"({section.gpa:#x}, {section.size:#x} bytes): the measured pages would not hold the hashes")
    table = hashes.table()
    return bytes(offset) + table + bytes(section.size - offset - len(table))


# --- the prediction ---------------------------------------------------------------------------

_COMPONENT = {SectionType.SNP_SEC_MEM: "sec-mem", SectionType.SNP_SECRETS: "secrets", SectionType.CPUID: "cpuid",
              SectionType.SVSM_CAA: "svsm-caa", SectionType.SNP_KERNEL_HASHES: "kernel-hashes"}


def _event(page_type: int, digest: bytes, component: str, description: str) -> PredictedEvent:
    return PredictedEvent(register=REGISTER, event_type=PageType.NAMES[page_type], digests={_DIGEST: digest},
                          component=component, description=description)


def predict_snp(
    firmware: bytes,
    *,
    vcpus: int,
    vcpu_sig: int,
    vmm: str = "qemu",
    guest_features: int = 0x1,
    kernel: KernelHashes | None = None,
    firmware_digest: bytes | None = None,
    inputs: Mapping[str, Mapping[str, str]] | None = None,
) -> Prediction:
    """Predict the MEASUREMENT of an SEV-SNP guest launched from ``firmware`` (an OVMF image).

    ``vcpu_sig`` is the vCPUs' CPUID signature (:func:`tsmr.predict.snp_vmsa.vcpu_signature`;
    only QEMU puts it in the VMSA), ``guest_features`` the VMSA's SEV_FEATURES, ``kernel``
    the hashes of a direct kernel boot.  ``firmware_digest`` starts from a precomputed
    digest of the firmware pages (:func:`ovmf_hash`) instead of hashing ``firmware``, whose
    metadata is still read.  ``inputs`` is recorded in the prediction as it is.
    """
    if vmm not in VMMS:
        raise InputError(f"unknown VMM {vmm!r}: one of {', '.join(VMMS)}")
    if not 1 <= vcpus <= MAX_VCPUS:
        raise InputError(f"{vcpus} vCPUs: a guest has 1 to {MAX_VCPUS}")
    image = parse_ovmf(firmware)
    if kernel is not None and not image.has_section(SectionType.SNP_KERNEL_HASHES):
        raise InputError("a kernel was given but the firmware's SEV metadata has no SNP_KERNEL_HASHES section: "
                         "this OVMF does not measure a directly booted kernel (build OvmfPkg/AmdSev for that)")
    if vcpus > 1 and image.ap_reset_address is None:
        raise InputError("the firmware has no SEV-ES reset block (GUID 00f771de-...): "
                         "application processors of an SEV-SNP guest cannot start")
    notes = ["no ID block, no IMI pages, VMPL permissions zero: what a VMM launching OVMF without them measures"]
    events: list[PredictedEvent] = []

    ld = LaunchDigest()
    pages = len(image.data) // PAGE_SIZE
    if firmware_digest is not None:
        ld = LaunchDigest(firmware_digest)
        what = f"the launch digest given for the firmware's {pages} pages (not computed from the image)"
        notes.append("the firmware's digest was given (--snp-ovmf-hash), not computed from the image's bytes")
    else:
        ld.normal_pages(image.gpa, image.data)
        what = f"launch digest after the firmware's {pages} pages, NORMAL from {image.gpa:#x} to 4 GiB"
    events.append(_event(PageType.NORMAL, ld.value, "firmware", what))

    deferred: list[MetadataSection] = []
    for section in image.sections:
        kind = section.type
        if kind == SectionType.SNP_SEC_MEM:
            page_type = PageType.UNMEASURED if vmm == "gce" else PageType.ZERO
            ld.empty_pages(page_type, section.gpa, section.size)
        elif kind == SectionType.SNP_SECRETS:
            page_type = PageType.SECRETS
            ld.empty_pages(page_type, section.gpa, section.size)
        elif kind == SectionType.CPUID:
            page_type = PageType.CPUID
            if vmm == "ec2":  # EC2 adds the CPUID page after every other section
                deferred.append(section)
                continue
            ld.empty_pages(page_type, section.gpa, section.size)
        elif kind == SectionType.SVSM_CAA:
            page_type = PageType.ZERO
            ld.empty_pages(page_type, section.gpa, section.size)
        else:  # SNP_KERNEL_HASHES
            if kernel is not None:
                page_type = PageType.NORMAL
                contents = _hashes_section_contents(image, section, kernel)
                for component, digest, desc in (
                    ("cmdline", kernel.cmdline, "SHA-256 of the kernel command line and its terminating NUL"),
                    ("initrd", kernel.initrd, "SHA-256 of the initrd (of nothing when none is given)"),
                    ("kernel", kernel.kernel, "SHA-256 of the kernel file as given (QEMU does not patch its "
                                              "setup header for encrypted guests)"),
                ):
                    events.append(PredictedEvent(register=REGISTER, event_type="SEV_HASH_TABLE_ENTRY",
                                                 digests={HashAlg.SHA256: digest}, component=component,
                                                 description=desc))
                ld.normal_pages(section.gpa, contents)
            else:
                page_type = PageType.ZERO
                ld.empty_pages(page_type, section.gpa, section.size)
        events.append(_event(page_type, ld.value, _COMPONENT[kind],
                             f"launch digest after SEV metadata section {section.label}"))
    for section in deferred:
        ld.empty_pages(PageType.CPUID, section.gpa, section.size)
        events.append(_event(PageType.CPUID, ld.value, _COMPONENT[section.type],
                             f"launch digest after SEV metadata section {section.label}, added last as EC2 does"))
    if vmm == "ec2" and deferred:
        notes.append("EC2 adds the CPUID page after the other SEV metadata sections")
    if vmm == "gce":
        notes.append("GCE adds SNP_SEC_MEM as UNMEASURED pages")

    bsp = vmsa_page(vmm, reset_address=BSP_RESET_ADDRESS, vcpu_sig=vcpu_sig, sev_features=guest_features)
    ap = (vmsa_page(vmm, reset_address=image.ap_reset_address, vcpu_sig=vcpu_sig, sev_features=guest_features)
          if vcpus > 1 and image.ap_reset_address is not None else None)
    bsp_sha, ap_sha = hashlib.sha384(bsp).digest(), hashlib.sha384(ap).digest() if ap else None
    for i in range(vcpus):
        if i == 0:
            contents, role = bsp_sha, f"BSP, reset vector {BSP_RESET_ADDRESS:#x}"
        else:
            assert ap_sha is not None and image.ap_reset_address is not None
            contents, role = ap_sha, f"AP, SEV-ES reset block {image.ap_reset_address:#x}"
        ld.page(PageType.VMSA, VMSA_GPA, contents)
        events.append(_event(PageType.VMSA, ld.value, f"vmsa{i}",
                             f"launch digest after the VMSA of vCPU {i} ({role}; page sha384 {contents.hex()})"))
    if vmm != "qemu":
        notes.append(f"{vmm} puts 0x600 in RDX whatever the vCPU type, so the vCPU type does not change the measurement")
    if not guest_features & 1:
        notes.append("guest features lack SNPActive (bit 0): an SEV-SNP launch with these VMSAs fails")

    return Prediction(platform="snp", claims={REGISTER: ld.value.hex()}, events=tuple(events),
                      inputs=dict(inputs or {}), notes=tuple(notes))
