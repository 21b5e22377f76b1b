"""Device paths (UEFI 2.10 §10.3 nodes, §10.6 text form), UEFI_IMAGE_LOAD_EVENT and UEFI_GPT_DATA."""

from __future__ import annotations

import struct
from typing import Any

from ...errors import ParseError
from .common import (
    GUID_NAMES,
    MAX_DEVICE_PATH_NODES,
    MAX_LIST_ITEMS,
    _Reader,
    _U16,
    _U32,
    _ascii,
    guid_str,
    utf16,
)

# -- device paths (UEFI 2.10 §10.3 nodes, §10.6 text form) -----------------------------------------------

_ACPI_HID_NAMES = {0x0A0341D0: "PciRoot", 0x0A0841D0: "PcieRoot"}


def _eisa_id(hid: int) -> str:
    """A compressed EISA id (PNP0A03 is 0x0a0341d0) in text form."""
    v = hid & 0xFFFF
    letters = "".join(chr(((v >> s) & 0x1F) + 0x40) for s in (10, 5, 0))
    return f"{letters}{hid >> 16:04X}"


def _node_text(t: int, s: int, body: bytes) -> str:
    """One device path node in UEFI text form; unknown or short nodes as Path(type,subtype,hex)."""
    n = len(body)
    if t == 1:  # hardware
        if s == 1 and n >= 2:
            return f"Pci(0x{body[1]:x},0x{body[0]:x})"
        if s == 4 and n >= 16:
            return f"VenHw({guid_str(body[:16])}{',' + body[16:].hex() if n > 16 else ''})"
        if s == 5 and n >= 4:
            return f"Ctrl(0x{_U32.unpack_from(body)[0]:x})"
        if s == 3 and n >= 20:
            mt, start, end = struct.unpack_from("<IQQ", body)
            return f"MemoryMapped(0x{mt:x},0x{start:x},0x{end:x})"
    elif t == 2:  # ACPI
        if s == 1 and n >= 8:
            hid, uid = struct.unpack_from("<II", body)
            name = _ACPI_HID_NAMES.get(hid)
            return f"{name}(0x{uid:x})" if name else f"Acpi({_eisa_id(hid)},0x{uid:x})"
        if s == 2 and n >= 12:
            hid, uid, cid = struct.unpack_from("<III", body)
            return f"AcpiEx({_eisa_id(hid)},{_eisa_id(cid)},0x{uid:x})"
        if s == 3 and n >= 4:
            return "AcpiAdr(" + ",".join(f"0x{a:x}" for a in struct.unpack_from(f"<{n // 4}I", body)) + ")"
    elif t == 3:  # messaging
        if s == 2 and n >= 4:
            return "Scsi(0x{:x},0x{:x})".format(*struct.unpack_from("<HH", body))
        if s == 5 and n >= 2:
            return f"USB(0x{body[0]:x},0x{body[1]:x})"
        if s == 10 and n >= 16:
            return f"VenMsg({guid_str(body[:16])}{',' + body[16:].hex() if n > 16 else ''})"
        if s == 11 and n >= 33:
            size = 6 if body[32] in (0, 1) else 32
            return f"MAC({body[:size].hex()},0x{body[32]:x})"
        if s == 12 and n >= 8:
            return f"IPv4({'.'.join(map(str, body[4:8]))})"
        if s == 13 and n >= 32:
            return f"IPv6({':'.join(body[16:32][i:i + 2].hex() for i in range(0, 16, 2))})"
        if s == 18 and n >= 6:
            return "Sata(0x{:x},0x{:x},0x{:x})".format(*struct.unpack_from("<HHH", body))
        if s == 20 and n >= 2:
            return f"Vlan({_U16.unpack_from(body)[0]})"
        if s == 23 and n >= 12:
            # EDK2 prints the EUI-64 most significant byte first (the u64 is little-endian on the wire).
            return f"NVMe(0x{_U32.unpack_from(body)[0]:x},{'-'.join(f'{b:02x}' for b in reversed(body[4:12]))})"
        if s == 24:
            return f"Uri({_ascii(body)})"
        if s == 25 and n >= 2:
            return f"UFS(0x{body[0]:x},0x{body[1]:x})"
        if s in (26, 29) and n >= 1:
            return f"{'SD' if s == 26 else 'eMMC'}(0x{body[0]:x})"
    elif t == 4:  # media
        if s == 1 and n >= 38:
            part, start, size = struct.unpack_from("<IQQ", body)
            sig, fmt, sigtype = body[20:36], body[36], body[37]
            if sigtype == 2:
                ident = f"GPT,{guid_str(sig)}"
            elif sigtype == 1:
                ident = f"MBR,0x{_U32.unpack_from(sig)[0]:08x}"
            else:
                ident = f"{fmt},{sigtype}"
            return f"HD({part},{ident},0x{start:x},0x{size:x})"
        if s == 2 and n >= 20:
            return "CDROM(0x{:x},0x{:x},0x{:x})".format(*struct.unpack_from("<IQQ", body))
        if s == 3 and n >= 16:
            return f"VenMedia({guid_str(body[:16])}{',' + body[16:].hex() if n > 16 else ''})"
        if s == 4:
            return utf16(body)
        if s in (5, 6, 7) and n >= 16:
            return f"{('Media', 'FvFile', 'Fv')[s - 5]}({guid_str(body[:16])})"
        if s == 8 and n >= 20:
            start, end = struct.unpack_from("<QQ", body, 4)
            return f"Offset(0x{start:x},0x{end:x})"
    elif t == 5 and s == 1 and n >= 4:  # BIOS boot specification
        dev, status = struct.unpack_from("<HH", body)
        desc = _ascii(body[4:].split(b"\x00", 1)[0])
        return f"BBS(0x{dev:x},{desc},0x{status:x})"
    return f"Path({t},{s},{body.hex()})"


def parse_device_path(data: bytes) -> dict[str, Any]:
    """EFI_DEVICE_PATH_PROTOCOL nodes {u8 Type, u8 SubType, u16 Length, data} up to the end node (UEFI 2.10 §10.3).

    Returns {"text": ..., "nodes": n}; bytes after the end-of-entire-path node
    are reported as ``trailing_bytes``.
    """
    r = _Reader(data, "EFI_DEVICE_PATH_PROTOCOL")
    parts: list[str] = []
    instances: list[str] = []
    nodes = 0
    while r.left:
        if nodes >= MAX_DEVICE_PATH_NODES:
            raise r.fail(f"more than MAX_DEVICE_PATH_NODES={MAX_DEVICE_PATH_NODES} nodes", "Length")
        at = r.pos
        t, s, length = r.u8("Type"), r.u8("SubType"), r.u16("Length")
        if length < 4:
            raise r.fail(f"node Length {length} is shorter than the 4-byte node header", "Length", at + 2)
        body = r.take(length - 4, f"node[{nodes}]")
        nodes += 1
        if t == 0x7F:
            instances.append("/".join(parts))
            parts = []
            if s == 0xFF:
                break
            continue
        parts.append(_node_text(t, s, body))
    if parts or not instances:
        instances.append("/".join(parts))  # no end node: a truncated but readable path
    out: dict[str, Any] = {"text": ",".join(instances), "nodes": nodes}
    if r.left:
        out["trailing_bytes"] = r.left
    return out


def device_path_text(data: bytes) -> str:
    """The text form of a device path; never raises (a malformed path reads ``<malformed: reason>``)."""
    try:
        return parse_device_path(data)["text"]
    except ParseError as e:
        return f"<malformed: {e}>"


# -- UEFI_IMAGE_LOAD_EVENT, UEFI_GPT_DATA ----------------------------------------------------------------


def parse_image_load_event(data: bytes, uintn: int = 8) -> dict[str, Any]:
    """UEFI_IMAGE_LOAD_EVENT, PFP ch. 10 (EV_EFI_BOOT_SERVICES_APPLICATION/_DRIVER, RUNTIME_SERVICES_DRIVER).

    {EFI_PHYSICAL_ADDRESS ImageLocationInMemory, UINTN ImageLengthInMemory,
    UINTN ImageLinkTimeAddress, UINTN LengthOfDevicePath, DevicePath}.
    """
    r = _Reader(data, "UEFI_IMAGE_LOAD_EVENT")
    out: dict[str, Any] = {
        "image_location_in_memory": f"0x{r.u64('ImageLocationInMemory'):x}",
        "image_length_in_memory": r.uintn(uintn, "ImageLengthInMemory"),
        "image_link_time_address": f"0x{r.uintn(uintn, 'ImageLinkTimeAddress'):x}",
    }
    n = r.uintn(uintn, "LengthOfDevicePath")
    out["length_of_device_path"] = n
    out["device_path"] = device_path_text(r.take(n, "DevicePath")) if n else ""
    if r.left:
        out["trailing_bytes"] = r.left  # e.g. GRUB/shim events with LengthOfDevicePath 0 and 9 more bytes
    return out


_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")


def parse_gpt_data(data: bytes, uintn: int = 8) -> dict[str, Any]:
    """UEFI_GPT_DATA {UEFI_PARTITION_TABLE_HEADER, UINTN NumberOfPartitions, EFI_PARTITION_ENTRY[]}, PFP ch. 10.

    Header and entries as in UEFI 2.10 §5.3.2 and §5.3.3; only non-empty
    entries are logged, each SizeOfPartitionEntry bytes.
    """
    r = _Reader(data, "UEFI_GPT_DATA")
    (sig, rev, hsize, _crc, _res, my_lba, alt_lba, first, last, disk, entry_lba, n_entries, entry_size,
     _acrc) = _GPT_HEADER.unpack(r.take(_GPT_HEADER.size, "UEFIPartitionHeader"))
    if sig != b"EFI PART":
        raise r.fail(f"header Signature is {sig!r}, not 'EFI PART'", "UEFIPartitionHeader.Signature", 0)
    out: dict[str, Any] = {"disk_guid": guid_str(disk), "revision": f"0x{rev:08x}", "header_size": hsize,
                           "my_lba": my_lba, "alternate_lba": alt_lba, "first_usable_lba": first,
                           "last_usable_lba": last, "partition_entry_lba": entry_lba,
                           "number_of_partition_entries": n_entries, "size_of_partition_entry": entry_size}
    count = r.uintn(uintn, "NumberOfPartitions")
    if count and entry_size < _GPT_ENTRY.size:
        raise r.fail(f"SizeOfPartitionEntry {entry_size} is below {_GPT_ENTRY.size}", "SizeOfPartitionEntry")
    if count > MAX_LIST_ITEMS:
        raise r.fail(f"NumberOfPartitions {count} exceeds MAX_LIST_ITEMS={MAX_LIST_ITEMS}", "NumberOfPartitions")
    r.length(count, entry_size, "NumberOfPartitions")
    parts = []
    for i in range(count):
        ptype, uniq, start, end, attrs, name = _GPT_ENTRY.unpack_from(r.take(entry_size, f"Partitions[{i}]"))
        tguid = guid_str(ptype)
        entry = {"partition_type_guid": tguid, "unique_partition_guid": guid_str(uniq), "starting_lba": start,
                 "ending_lba": end, "attributes": f"0x{attrs:x}", "partition_name": utf16(name)}
        if tguid in GUID_NAMES:
            entry["partition_type"] = GUID_NAMES[tguid]
        parts.append(entry)
    out["partitions"] = parts
    if r.left:
        out["trailing_bytes"] = r.left
    return out
