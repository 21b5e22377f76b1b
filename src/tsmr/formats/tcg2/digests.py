"""Which digests of a TCG2 log follow from their event data, and by which rule."""

from __future__ import annotations

import struct

from .. import uefi
from .records import (
    _KNOWN_ALGS,
    _U32,
    EV_COMPACT_HASH,
    EV_EFI_VARIABLE_BOOT,
    EV_EVENT_TAG,
    EV_IPL,
    EV_NO_ACTION,
    EV_SEPARATOR,
    EV_TABLE_OF_DEVICES,
    TCG2Event,
    TCG2Log,
)

# -- digest checks ----------------------------------------------------------------------------------
#
# How the digest of a record relates to its data.  Rule names (``"data"`` is tsmr.events.DATA):
#   data             digest = H(event data)
#   variable-data    H(UEFI_VARIABLE_DATA.VariableData): EDK2/OVMF/TDVF/GCE firmware for EV_EFI_VARIABLE_BOOT
#   text             H(text after a boot loader prefix, no NUL): upstream GRUB "grub_cmd: ",
#                    "kernel_cmdline: ", "module_cmdline: "; RHEL GRUB "grub_kernel_cmdline "
#   text-nul         H(text after the prefix, up to and including its NUL): RHEL/Fedora/Alibaba GRUB
#                    "grub_cmd " (the byte after the NUL is not hashed; often uninitialised memory)
#   utf8-nul         H(UTF-8 of the UTF-16 description + NUL): systemd-stub's first event of each UKI
#                    section pair (".linux", ".cmdline", ...); the second one hashes the section
#   separator-error  H(LE32(1)): an error separator, whatever its data
#
# Observed on shared/fixtures (tests/unit/test_tcg2_events.py recomputes these numbers with
# check_digests):
#   * H(data) on every event of EV_SEPARATOR, EV_EFI_ACTION, EV_EFI_VARIABLE_DRIVER_CONFIG,
#     EV_EFI_GPT_EVENT, EV_S_CRTM_VERSION (GCE), EV_NONHOST_INFO (GCE), EV_EVENT_TAG "AAEL" (Alibaba).
#   * EV_EFI_VARIABLE_AUTHORITY: H(data) everywhere except 2 of 3 events of go-eventlog cos-85-amd-sev
#     (an old shim: a bare DER vendor certificate + 6 trailing bytes; no slice of the data matches).
#   * EV_EFI_VARIABLE_BOOT: H(VariableData) on every fixture (GCE, OVMF, TDVF, Alibaba, Hygon CSV),
#     never H(data) as PFP says (other vendors' firmware does hash the whole structure, formats.md §1.8).
#   * EV_IPL: never H(data).  GRUB strings follow "text" / "text-nul"; shim's "MokList*" and GRUB's
#     file paths hash the variable or file; systemd-stub section names follow "utf8-nul".
#   * EV_EVENT_TAG with the Linux initrd / load-options tags hashes the initrd / the command line.
#   * Never H(data): EV_EFI_BOOT_SERVICES_APPLICATION (Authenticode), EV_EFI_PLATFORM_FIRMWARE_BLOB(2),
#     EV_EFI_HANDOFF_TABLES(2), EV_PLATFORM_CONFIG_FLAGS ("ACPI DATA", fw_cfg names, td-shim td_hob /
#     td_payload_info), EV_POST_CODE ("ACPI DATA" on Alibaba).

_GRUB_RULES = ((b"grub_cmd: ", "text"), (b"kernel_cmdline: ", "text"), (b"module_cmdline: ", "text"),
               (b"grub_kernel_cmdline ", "text"), (b"grub_cmd ", "text-nul"))
_SEPARATOR_VALUES = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x00\x00\x00")


def digest_rules(event_type: int, data: bytes) -> tuple[str, ...]:
    """Every rule by which this event's digest may follow from its data, most likely first; () if none."""
    if event_type == EV_NO_ACTION:
        return ()
    if event_type == EV_EFI_VARIABLE_BOOT:
        return ("variable-data", uefi.DATA)
    if event_type == EV_SEPARATOR:
        return (uefi.DATA, "separator-error") if data in _SEPARATOR_VALUES else ("separator-error",)
    if event_type == EV_IPL:
        for prefix, rule in _GRUB_RULES:
            if data.startswith(prefix):
                return (rule,)
        # systemd-stub section names; sd-boot's UTF-16 command line on PCR 12 is H(data)
        return ("utf8-nul", uefi.DATA) if uefi.looks_utf16(data) else ()
    if uefi.data_rule(event_type, data) == uefi.DATA:
        return (uefi.DATA,)
    if event_type == EV_EVENT_TAG and len(data) >= 8 and _U32.unpack_from(data, 4)[0] == len(data) - 8 \
            and _U32.unpack_from(data)[0] not in uefi.EVENT_TAG_NAMES:
        return (uefi.DATA,)  # unknown tags: plausible per PFP; Linux's and systemd's hash files instead
    if event_type in (EV_TABLE_OF_DEVICES, EV_COMPACT_HASH):
        return (uefi.DATA,)  # plausible per PFP, not seen on real logs
    return ()


def measured_bytes(rule: str, data: bytes) -> bytes | None:
    """The bytes whose hash is the digest under ``rule``, or None if the rule does not apply to ``data``."""
    if rule == uefi.DATA:
        return data
    if rule == "separator-error":
        return b"\x01\x00\x00\x00"
    if rule == "variable-data":
        if len(data) < 32:
            return None
        nlen, dlen = struct.unpack_from("<QQ", data, 16)
        start = 32 + 2 * nlen
        return data[start:start + dlen] if start + dlen <= len(data) else None
    if rule in ("text", "text-nul"):
        for prefix, _rule in _GRUB_RULES:
            if data.startswith(prefix):
                text = data[len(prefix):].split(b"\x00", 1)[0]
                return text + b"\x00" if rule == "text-nul" else text
        return None
    if rule == "utf8-nul":
        return uefi.utf16(data).encode("utf-8") + b"\x00"
    return None


def match_rule(event: TCG2Event) -> str | None:
    """The first of :func:`digest_rules` that reproduces every digest of ``event`` tsmr can compute, else None."""
    checkable = []
    for alg_id, digest in event.digests:
        alg = _KNOWN_ALGS.get(alg_id)
        if alg is not None:
            try:
                alg.hash(b"")
            except ValueError:  # e.g. sm3 where OpenSSL lacks it
                continue
            checkable.append((alg, digest))
    if not checkable:
        return None
    for rule in digest_rules(event.event_type, event.data):
        b = measured_bytes(rule, event.data)
        if b is not None and all(alg.hash(b) == d for alg, d in checkable):
            return rule
    return None


def check_digests(log: TCG2Log) -> dict[str, dict[str, int]]:
    """Per event type name: how many measured events, and how many each rule (or none) reproduces.

    ``{"EV_EFI_VARIABLE_BOOT": {"events": 3, "variable-data": 3}, "EV_IPL": {"events": 4, "text": 2,
    "unmatched": 2}}``: "unmatched" counts events with a candidate rule that none reproduces,
    "not-derivable" events without any candidate rule (PE images, firmware blobs).
    EV_NO_ACTION events are not measured and not counted.
    """
    out: dict[str, dict[str, int]] = {}
    for ev in log.events:
        if ev.event_type == EV_NO_ACTION:
            continue
        counts = out.setdefault(ev.type_name, {"events": 0})
        counts["events"] += 1
        rule = match_rule(ev)
        key = rule or ("unmatched" if digest_rules(ev.event_type, ev.data) else "not-derivable")
        counts[key] = counts.get(key, 0) + 1
    return out


__all__ = ["check_digests", "digest_rules", "match_rule", "measured_bytes"]
