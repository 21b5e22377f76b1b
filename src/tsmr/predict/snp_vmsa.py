"""The VMSA pages an SEV-SNP launch measures: each vCPU's initial register state.

The VMM hands the SEV firmware one VMSA (the encrypted save area of AMD APM Vol. 2,
appendix B, table B-4 "VMSA Layout, State Save Area for SEV-ES") per vCPU, and the
firmware measures each page as a whole.  So the launch digest depends on every byte
of the initial state, and that state is not architectural: it is what the VMM and
KVM write.  The values here are those of the x86 reset state (APM Vol. 2 §14.1.3,
"Processor Initialization State") as three VMMs write them:

* ``qemu`` (QEMU/KVM): the reset state with KVM's EFER.SVME and CR4.MCE, RDX the
  vCPU's CPUID signature (family, model, stepping of the vCPU model), x87/SSE
  control words at their FNINIT/reset values (FCW 0x37F, MXCSR 0x1F80);
* ``ec2`` (AWS): the BSP's CS not marked accessed (0x9A), SS 0x92, TR a 16-bit busy
  TSS (0x83), RDX 0x600 whatever the vCPU, FCW and MXCSR zero;
* ``gce`` (Google): as QEMU for segments, PAT 0x00070106, RDX 0x600, FCW and MXCSR zero.

The bootstrap processor starts at the reset vector 0xFFFFFFF0; application processors
start at the address in the firmware's SEV-ES reset block, as a real-mode CS base
(its upper 16 bits) and IP (its lower 16 bits).  SEV_FEATURES holds the guest
features the VMM enabled (bit 0, SNPActive, must be set for an SNP guest).
"""

from __future__ import annotations

import re
import struct
from typing import Mapping

from ..errors import InputError

__all__ = ["VMMS", "VCPU_TYPES", "BSP_RESET_ADDRESS", "cpuid_signature", "vcpu_signature", "vmsa_page"]

VMMS = ("qemu", "ec2", "gce")
BSP_RESET_ADDRESS = 0xFFFFFFF0
VMSA_SIZE = 4096

# Offsets in the save area (APM Vol. 2, table B-4).
_SEGMENTS = {"es": 0x000, "cs": 0x010, "ss": 0x020, "ds": 0x030, "fs": 0x040, "gs": 0x050,
             "gdtr": 0x060, "ldtr": 0x070, "idtr": 0x080, "tr": 0x090}
_SEGMENT = struct.Struct("<HHIQ")  # selector, attributes, limit, base
_EFER = 0x0D0
_CR4 = 0x148
_CR0 = 0x158
_DR7 = 0x160
_DR6 = 0x168
_RFLAGS = 0x170
_RIP = 0x178
_G_PAT = 0x268
_RDX = 0x310
_SEV_FEATURES = 0x3B0
_XCR0 = 0x3E8
_MXCSR = 0x408  # u32
_X87_FCW = 0x410  # u16

_PAT_DEFAULT = 0x0007040600070406  # the PAT MSR's reset value (APM Vol. 2 §7.8.2)
_PAT_GCE = 0x0000000000070106

# Family, model and stepping of QEMU's AMD EPYC vCPU models (target/i386/cpu.c, builtin_x86_defs);
# a versioned name (-v1, -v2 ...) keeps its model's identification, only the features differ.
_EPYC_FMS: Mapping[str, tuple[int, int, int]] = {
    "EPYC": (23, 1, 2),
    "EPYC-Rome": (23, 49, 0),
    "EPYC-Milan": (25, 1, 1),
    "EPYC-Genoa": (25, 17, 0),
    "EPYC-Turin": (26, 0, 0),
}
#: The vCPU type names accepted: each model and the versions QEMU defines of it.
VCPU_TYPES: Mapping[str, tuple[int, int, int]] = {
    **{name: fms for name, fms in _EPYC_FMS.items()},
    **{f"EPYC-v{v}": _EPYC_FMS["EPYC"] for v in range(1, 5)},
    "EPYC-IBPB": _EPYC_FMS["EPYC"],  # an alias of EPYC-v2
    **{f"EPYC-Rome-v{v}": _EPYC_FMS["EPYC-Rome"] for v in range(1, 4)},
    **{f"EPYC-Milan-v{v}": _EPYC_FMS["EPYC-Milan"] for v in range(1, 3)},
    "EPYC-Genoa-v1": _EPYC_FMS["EPYC-Genoa"],
    "EPYC-Turin-v1": _EPYC_FMS["EPYC-Turin"],
}


def cpuid_signature(family: int, model: int, stepping: int) -> int:
    """CPUID Fn0000_0001_EAX for a family, model and stepping (AMD CPUID Specification #25481).

    A family above 0xF is written as base family 0xF plus an extended family; the
    model's high nibble goes to the extended model field, as QEMU sets them.
    """
    if not (0 <= family <= 0xF + 0xFF and 0 <= model <= 0xFF and 0 <= stepping <= 0xF):
        raise InputError(f"vCPU family {family}, model {model}, stepping {stepping}: out of the CPUID fields' range "
                         "(family 0..270, model 0..255, stepping 0..15)")
    base_family, ext_family = (0xF, family - 0xF) if family > 0xF else (family, 0)
    return (ext_family << 20) | ((model >> 4) << 16) | (base_family << 8) | ((model & 0xF) << 4) | stepping


def vcpu_signature(vcpu_type: str) -> int:
    """The CPUID signature of a QEMU vCPU model name (``EPYC-Milan``, ``EPYC-v4`` ...); InputError if unknown."""
    fms = VCPU_TYPES.get(vcpu_type)
    if fms is None:
        hint = ""
        if re.fullmatch(r"(?i)epyc.*", vcpu_type):
            hint = " (give --vcpu-family/--vcpu-model/--vcpu-stepping or --vcpu-sig for another model)"
        raise InputError(f"unknown vCPU type {vcpu_type!r}: known are {', '.join(VCPU_TYPES)}{hint}")
    return cpuid_signature(*fms)


def vmsa_page(vmm: str, *, reset_address: int, vcpu_sig: int, sev_features: int) -> bytes:
    """The 4 KiB VMSA a ``vmm`` gives a vCPU that starts at ``reset_address``."""
    if vmm not in VMMS:
        raise InputError(f"unknown VMM {vmm!r}: one of {', '.join(VMMS)}")
    if not 0 <= sev_features < 1 << 64:
        raise InputError(f"guest features {sev_features:#x} do not fit SEV_FEATURES (64 bits)")
    if not 0 <= vcpu_sig < 1 << 32:
        raise InputError(f"vCPU signature {vcpu_sig:#x} does not fit CPUID Fn0000_0001_EAX (32 bits)")
    if not 0 <= reset_address < 1 << 32:
        raise InputError(f"reset address {reset_address:#x} is not a 32-bit address")
    cs_attr, ss_attr, tr_attr = 0x9B, 0x93, 0x8B
    pat, rdx, mxcsr, fcw = _PAT_DEFAULT, vcpu_sig, 0x1F80, 0x037F
    if vmm == "ec2":
        cs_attr = 0x9A if reset_address == BSP_RESET_ADDRESS else 0x9B
        ss_attr, tr_attr = 0x92, 0x83
        rdx, mxcsr, fcw = 0x600, 0, 0
    elif vmm == "gce":
        pat, rdx, mxcsr, fcw = _PAT_GCE, 0x600, 0, 0

    page = bytearray(VMSA_SIZE)
    segments = {
        "es": (0, 0x93, 0xFFFF, 0),
        "cs": (0xF000, cs_attr, 0xFFFF, reset_address & 0xFFFF0000),
        "ss": (0, ss_attr, 0xFFFF, 0),
        "ds": (0, 0x93, 0xFFFF, 0),
        "fs": (0, 0x93, 0xFFFF, 0),
        "gs": (0, 0x93, 0xFFFF, 0),
        "gdtr": (0, 0, 0xFFFF, 0),
        "ldtr": (0, 0x82, 0xFFFF, 0),
        "idtr": (0, 0, 0xFFFF, 0),
        "tr": (0, tr_attr, 0xFFFF, 0),
    }
    for name, fields in segments.items():
        _SEGMENT.pack_into(page, _SEGMENTS[name], *fields)
    for offset, value in (
        (_EFER, 0x1000),  # EFER.SVME, which KVM sets for SEV-ES guests
        (_CR4, 0x40),  # CR4.MCE, set by KVM
        (_CR0, 0x10),  # CR0.ET, the reset value
        (_DR7, 0x400),
        (_DR6, 0xFFFF0FF0),
        (_RFLAGS, 0x2),
        (_RIP, reset_address & 0xFFFF),
        (_G_PAT, pat),
        (_RDX, rdx),
        (_SEV_FEATURES, sev_features),
        (_XCR0, 0x1),
    ):
        struct.pack_into("<Q", page, offset, value)
    struct.pack_into("<I", page, _MXCSR, mxcsr)
    struct.pack_into("<H", page, _X87_FCW, fcw)
    return bytes(page)
