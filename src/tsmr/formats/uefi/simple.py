"""Separators, firmware blobs, handoff tables, EV_NO_ACTION records and EV_EVENT_TAG data (TCG PC Client PFP §10)."""

from __future__ import annotations

import json
import struct
from typing import Any

from ...algorithms import HashAlg
from .common import (
    AAEL_TAG,
    EVENT_TAG_NAMES,
    GUID_NAMES,
    MAX_LIST_ITEMS,
    _Reader,
    _U32,
    _ascii,
    _is_printable,
    _preview,
    raw_details,
    text_of,
)

# -- strings and simple events ------------------------------------------------------------------------


def parse_separator(data: bytes) -> dict[str, Any]:
    """EV_SEPARATOR event data, PFP §10.4.1 and "Error Conditions".

    0x00000000 is the normal separator; 0xFFFFFFFF the alternative value of
    TCG 1.2-era firmware (tcglog-parser's SeparatorEventAltNormalValue; both
    have digest H(data)).  An *error* separator is extended with H(LE32(1)) and
    its data is either 0x00000001 (EDK2 MeasureSeparatorEventWithError) or
    implementation-defined error information of any size.
    """
    if len(data) != 4:
        return {"kind": "error", "error_info": _preview(data), "size": len(data)}
    value = _U32.unpack(data)[0]
    kind = {0: "normal", 0xFFFFFFFF: "alternative", 1: "error"}.get(value, "error")
    return {"value": f"0x{value:08x}", "kind": kind}


def parse_blob(data: bytes) -> dict[str, Any]:
    """UEFI_PLATFORM_FIRMWARE_BLOB {BlobBase u64, BlobLength u64}, PFP ch. 10 (EV_EFI_PLATFORM_FIRMWARE_BLOB)."""
    r = _Reader(data, "UEFI_PLATFORM_FIRMWARE_BLOB")
    out = {"blob_base": f"0x{r.u64('BlobBase'):x}", "blob_length": r.u64("BlobLength")}
    if r.left:
        out["trailing_bytes"] = r.left
    return out


def parse_blob2(data: bytes) -> dict[str, Any]:
    """UEFI_PLATFORM_FIRMWARE_BLOB2, PFP ch. 10: {u8 BlobDescriptionSize, BlobDescription, u64 BlobBase, BlobLength}."""
    r = _Reader(data, "UEFI_PLATFORM_FIRMWARE_BLOB2")
    desc = r.take(r.u8("BlobDescriptionSize"), "BlobDescription")
    out = {"blob_description": _ascii(desc.split(b"\x00", 1)[0]),
           "blob_base": f"0x{r.u64('BlobBase'):x}", "blob_length": r.u64("BlobLength")}
    if r.left:
        out["trailing_bytes"] = r.left
    return out


def _tables(r: _Reader, n: int, uintn: int) -> list[dict[str, Any]]:
    if n > MAX_LIST_ITEMS:
        raise r.fail(f"NumberOfTables {n} exceeds MAX_LIST_ITEMS={MAX_LIST_ITEMS}", "NumberOfTables")
    r.length(n, 16 + uintn, "NumberOfTables")
    out = []
    for i in range(n):
        guid = r.guid(f"TableEntry[{i}].VendorGuid")
        entry = {"vendor_guid": guid, "vendor_table": f"0x{r.uintn(uintn, f'TableEntry[{i}].VendorTable'):x}"}
        if guid in GUID_NAMES:
            entry["name"] = GUID_NAMES[guid]
        out.append(entry)
    return out


def parse_handoff_tables(data: bytes, uintn: int = 8) -> dict[str, Any]:
    """UEFI_HANDOFF_TABLE_POINTERS {UINTN NumberOfTables, EFI_CONFIGURATION_TABLE[]}, PFP ch. 10."""
    r = _Reader(data, "UEFI_HANDOFF_TABLE_POINTERS")
    return {"tables": _tables(r, r.uintn(uintn, "NumberOfTables"), uintn)}


def parse_handoff_tables2(data: bytes, uintn: int = 8) -> dict[str, Any]:
    """UEFI_HANDOFF_TABLE_POINTERS2, PFP ch. 10: {u8 TableDescriptionSize, TableDescription, u64 NumberOfTables,
    EFI_CONFIGURATION_TABLE[]}."""
    r = _Reader(data, "UEFI_HANDOFF_TABLE_POINTERS2")
    desc = r.take(r.u8("TableDescriptionSize"), "TableDescription")
    return {"table_description": _ascii(desc.split(b"\x00", 1)[0]),
            "tables": _tables(r, r.u64("NumberOfTables"), uintn)}


# -- EV_NO_ACTION ---------------------------------------------------------------------------------------

_SPEC_ID_HEAD = struct.Struct("<16sIBBBB")


def parse_spec_id_event(data: bytes) -> dict[str, Any]:
    """TCG_EfiSpecIDEvent "Spec ID Event03" (PFP §10.4.5.1) and the older "Spec ID Event00/02" heads.

    Event02 (TCG EFI Platform 1.22) and Event00 (PC Client BIOS 1.21) have no
    algorithm table: byte 23 is uintnSize (Event02) or reserved (Event00), then
    u8 vendorInfoSize and vendorInfo.
    """
    r = _Reader(data, "TCG_EfiSpecIDEvent")
    sig, pclass, minor, major, errata, uintn = _SPEC_ID_HEAD.unpack(r.take(_SPEC_ID_HEAD.size, "signature"))
    out: dict[str, Any] = {"signature": _ascii(sig.rstrip(b"\x00")), "platform_class": pclass,
                           "spec_version": f"{major}.{minor}", "spec_errata": errata, "uintn_size": uintn}
    if sig == b"Spec ID Event03\x00":
        n = r.u32("numberOfAlgorithms")
        r.length(n, 4, "numberOfAlgorithms")
        algs = []
        for i in range(n):
            alg, size = r.u16(f"digestSizes[{i}].algorithmId"), r.u16(f"digestSizes[{i}].digestSize")
            try:
                name = HashAlg(alg).kernel_name
            except ValueError:
                name = f"0x{alg:04x}"
            algs.append({"algorithm_id": f"0x{alg:04x}", "name": name, "digest_size": size})
        out["algorithms"] = algs
    vendor = r.take(r.u8("vendorInfoSize"), "vendorInfo")
    if vendor:
        out["vendor_info"] = _ascii(vendor.rstrip(b"\x00")) if _is_printable(vendor.rstrip(b"\x00")) else vendor.hex()
    if r.left:
        out["trailing_bytes"] = r.left
    return out


def _u8_string(r: _Reader, field: str) -> str:
    return _ascii(r.take(r.u8(field + "Size"), field).split(b"\x00", 1)[0])


def parse_sp800_155(data: bytes) -> dict[str, Any]:
    """TCG_Sp800_155_PlatformId_Event / Event2 / Event3 (PFP ch. 10, EV_NO_ACTION events; Event3 from PFP 1.06).

    Event: u32 VendorId + GUID ReferenceManifestGuid.  Event2 and Event3: u32
    PlatformManufacturerId, GUID, u8-size-prefixed strings PlatformManufacturerStr,
    PlatformModel, PlatformVersion, FirmwareManufacturerStr, u32
    FirmwareManufacturerId, u8-size FirmwareVersion; Event3 adds two locators
    {u32 type, u32 size, bytes} for the RIM and the platform certificate.
    """
    r = _Reader(data, "TCG_Sp800_155_PlatformId_Event")
    sig = r.take(16, "Signature")
    out: dict[str, Any] = {"signature": _ascii(sig.rstrip(b"\x00"))}
    out["platform_manufacturer_id"] = r.u32("PlatformManufacturerId")
    out["reference_manifest_guid"] = r.guid("ReferenceManifestGuid")
    if sig in (b"SP800-155 Event2", b"SP800-155 Event3"):
        for key, field in (("platform_manufacturer", "PlatformManufacturerStr"), ("platform_model", "PlatformModel"),
                           ("platform_version", "PlatformVersion"),
                           ("firmware_manufacturer", "FirmwareManufacturerStr")):
            out[key] = _u8_string(r, field)
        out["firmware_manufacturer_id"] = r.u32("FirmwareManufacturerId")
        out["firmware_version"] = _u8_string(r, "FirmwareVersion")
        if sig == b"SP800-155 Event3":
            for key in ("rim_locator", "platform_cert_locator"):
                ltype = r.u32(key + ".type")
                loc = r.take(r.u32(key + ".size"), key)
                out[key] = {"type": ltype, "locator": _ascii(loc.rstrip(b"\x00")) if _is_printable(loc.rstrip(b"\x00"))
                            else _preview(loc)}
    if r.left:
        out["trailing_bytes"] = r.left
    return out


def parse_no_action(data: bytes) -> dict[str, Any]:
    """EV_NO_ACTION event data, identified by its 16-byte signature (PFP §10.4.5)."""
    sig = data[:16]
    if sig.startswith(b"Spec ID Event"):
        return parse_spec_id_event(data)
    if sig == b"StartupLocality\x00":
        r = _Reader(data, "TCG_EfiStartupLocalityEvent", 16)
        out: dict[str, Any] = {"signature": "StartupLocality", "startup_locality": r.u8("StartupLocality")}
        if r.left:
            out["trailing_bytes"] = r.left
        return out
    if sig.startswith(b"SP800-155 Event"):
        return parse_sp800_155(data)
    if sig.startswith(b"NvIndexInstance") or sig.startswith(b"NvIndexDynamic"):
        # NV_INDEX_INSTANCE_EVENT_LOG_DATA / NV_INDEX_DYNAMIC_EVENT_LOG_DATA (PFP 1.06 ch. 10; EDK2
        # TcgSpdm.h): Signature[16], u16 Version, Reserved[6], then a TCG_DEVICE_SECURITY_EVENT_DATA2
        # (Instance) or {u64 UID, u16 DescriptionSize, Description, u16 DataSize, Data} (Dynamic).
        r = _Reader(data, "NV_INDEX_EVENT_LOG_DATA", 16)
        out = {"signature": _ascii(sig.rstrip(b"\x00 ")), "version": r.u16("Version")}
        r.take(6, "Reserved")
        if sig.startswith(b"NvIndexDynamic"):
            out["uid"] = f"0x{r.u64('UID'):x}"
            desc = r.take(r.u16("DescriptionSize"), "Description")
            out["description"] = _ascii(desc.rstrip(b"\x00"))
            out["data"] = _preview(r.take(r.u16("DataSize"), "Data"))
        else:
            out["device_security_event_data"] = raw_details(r.rest())
        return out
    if sig == b"H-CRTM CompMeas\x00" or sig.startswith(b"H-CRTM CompMeas"):
        # TCG_HCRTMComponentEvent (PFP ch. 10): u8-size description, u8 measurement format
        # (0 = TPMT_HA digest, 0x80 = raw data), u16-size measurement.
        r = _Reader(data, "TCG_HCRTMComponentEvent", 16)
        return {"signature": "H-CRTM CompMeas", "description": _u8_string(r, "ComponentDescription"),
                "measurement_format": r.u8("MeasurementFormatType"),
                "measurement": _preview(r.take(r.u16("ComponentMeasurementSize"), "ComponentMeasurement"))}
    head = sig.split(b"\x00", 1)[0]
    out = {"signature": _ascii(head)} if _is_printable(head) else {}
    out.update(raw_details(data))
    return out


# -- EV_EVENT_TAG -----------------------------------------------------------------------------------------


def parse_tagged_event(data: bytes) -> dict[str, Any]:
    """TCG_PCClientTaggedEvent {u32 taggedEventID, u32 taggedEventDataSize, data}, PFP ch. 10 (EV_EVENT_TAG).

    Known tags: the CoCo AAEL ("AAEL", data "<domain> <operation> <content>",
    shared/reference/tsm-mr-abi.md §5.3), the Linux EFI stub's initrd and load
    options tags (data "Linux initrd" / "LOADED_IMAGE::LoadOptions"), systemd's
    (data: a UTF-16 description).
    """
    r = _Reader(data, "TCG_PCClientTaggedEvent")
    tag = r.u32("taggedEventID")
    body = r.take(r.u32("taggedEventDataSize"), "taggedEventData")
    out: dict[str, Any] = {"tagged_event_id": f"0x{tag:08x}"}
    if tag in EVENT_TAG_NAMES:
        out["tag"] = EVENT_TAG_NAMES[tag]
    if tag == AAEL_TAG:
        text = body.decode("utf-8", "backslashreplace")
        parts = text.split(" ", 2)
        if len(parts) != 3:
            raise r.fail("an AAEL entry is '<domain> <operation> <content>'", "taggedEventData", 8)
        out.update(domain=parts[0], operation=parts[1], content=parts[2])
        if parts[2][:1] in ("{", "["):
            try:
                out["content_json"] = json.loads(parts[2])
            except ValueError:
                pass
    else:
        t = text_of(body)
        if t is not None:
            out["text"] = t[0]
        else:
            out.update(raw_details(body))
    if r.left:
        out["trailing_bytes"] = r.left
    return out
