"""UEFI_VARIABLE_DATA and the variables it carries: signature lists, load options, Secure Boot databases."""

from __future__ import annotations

import re
import struct
from typing import Any

from ...errors import ParseError
from .common import (
    EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE,
    FORMAT,
    GUID_NAMES,
    MAX_LIST_ITEMS,
    SHIM_LOCK_GUID,
    SIGNATURE_TYPES,
    _Reader,
    _U16,
    _ascii,
    _is_printable,
    _one_line,
    _preview,
    guid_str,
    raw_details,
    utf16,
)
from .media import device_path_text

# -- UEFI_VARIABLE_DATA and the variables it carries -----------------------------------------------------


def parse_signature_lists(data: bytes) -> list[dict[str, Any]]:
    """EFI_SIGNATURE_LIST[] (UEFI 2.10 §32.4.1): type, count and owners of each list (PK, KEK, db, dbx, MokList)."""
    r = _Reader(data, "EFI_SIGNATURE_LIST")
    out: list[dict[str, Any]] = []
    while r.left:
        if len(out) >= MAX_LIST_ITEMS:
            raise r.fail(f"more than MAX_LIST_ITEMS={MAX_LIST_ITEMS} lists", "SignatureType")
        at = r.pos
        stype = r.guid("SignatureType")
        lsize, hsize, ssize = r.u32("SignatureListSize"), r.u32("SignatureHeaderSize"), r.u32("SignatureSize")
        if lsize < 28 + hsize or lsize - 28 > r.left:
            raise r.fail(f"SignatureListSize {lsize} does not fit (header {hsize}, {r.left} bytes left)",
                         "SignatureListSize", at + 16)
        body = lsize - 28 - hsize
        if ssize < 16 or body % ssize:
            raise r.fail(f"SignatureSize {ssize} does not divide the {body} bytes of signatures",
                         "SignatureSize", at + 24)
        r.take(hsize, "SignatureHeader")
        owners: list[str] = []
        for i in range(body // ssize):
            sig = r.take(ssize, f"Signatures[{i}]")
            owner = guid_str(sig[:16])
            if owner not in owners:
                owners.append(owner)
        out.append({"signature_type": SIGNATURE_TYPES.get(stype, stype), "count": body // ssize,
                    "signature_size": ssize, "owners": owners})
    return out


def parse_load_option(data: bytes) -> dict[str, Any]:
    """EFI_LOAD_OPTION, UEFI 2.10 §3.1.3: {u32 Attributes, u16 FilePathListLength, CHAR16 Description[],
    FilePathList, OptionalData}."""
    r = _Reader(data, "EFI_LOAD_OPTION")
    attrs, fplen = r.u32("Attributes"), r.u16("FilePathListLength")
    start = r.pos
    while True:  # Description: NUL-terminated CHAR16 string
        if r.u16("Description") == 0:
            break
    out: dict[str, Any] = {"attributes": f"0x{attrs:08x}", "active": bool(attrs & 1),
                           "description": utf16(data[start:r.pos])}
    out["device_path"] = device_path_text(r.take(fplen, "FilePathList"))
    if r.left:
        opt = r.rest()
        out["optional_data"] = _preview(opt)
        out["optional_data_size"] = len(opt)
    return out


def _efi_signature_data(value: bytes) -> dict[str, Any]:
    """An EV_EFI_VARIABLE_AUTHORITY VariableData: EFI_SIGNATURE_DATA, a bare certificate or text."""
    if value[:2] == b"\x30\x82":
        return {"certificate_size": len(value)}  # shim's vendor certificate: a bare DER X.509
    if len(value) > 18 and value[16:18] == b"\x30\x82":
        return {"signature_owner": guid_str(value[:16]), "certificate_size": len(value) - 16}
    if len(value) in (16 + 32, 16 + 48, 16 + 64):
        return {"signature_owner": guid_str(value[:16]), "hash": value[16:].hex()}
    return raw_details(value)


_LOAD_OPTION_NAME = re.compile(r"(Boot|Driver|SysPrep|PlatformRecovery)[0-9A-Fa-f]{4}")
_SIGNATURE_DATABASES = {EFI_GLOBAL_VARIABLE: ("PK", "KEK"), EFI_IMAGE_SECURITY_DATABASE: ("db", "dbx", "dbt", "dbr"),
                        SHIM_LOCK_GUID: ("MokList", "MokListRT", "MokListX", "MokListXRT", "MokListTrusted")}


def _variable_value(guid: str, name: str, value: bytes, authority: bool) -> tuple[dict[str, Any], str]:
    """Decoded VariableData of a well-known variable, and its one-line rendering."""
    text = value.rstrip(b"\x00")
    if authority and not (name == "SbatLevel" or _is_printable(text)):
        d = _efi_signature_data(value)
        return d, f"certificate ({d['certificate_size']} bytes)" if "certificate_size" in d else f"{len(value)} bytes"
    if guid == EFI_GLOBAL_VARIABLE and not authority:
        if name in ("BootOrder", "DriverOrder"):
            if len(value) % 2:
                raise ParseError(f"{name} has odd length {len(value)}", format=FORMAT, offset=0, field=name)
            order = [f"{v:04X}" for v in struct.unpack(f"<{len(value) // 2}H", value)]
            return {"order": order}, ",".join(f"{name[:-5]}{v}" for v in order) or "(empty)"
        if _LOAD_OPTION_NAME.fullmatch(name):
            opt = parse_load_option(value)
            return opt, f"{opt['description']!r} {opt['device_path']}"
        if name in ("SecureBoot", "SetupMode", "AuditMode", "DeployedMode") and len(value) == 1:
            return {"value": value[0]}, str(value[0])
        if name in ("BootCurrent", "BootNext", "Timeout") and len(value) == 2:
            return {"value": _U16.unpack(value)[0]}, str(_U16.unpack(value)[0])
    if name in _SIGNATURE_DATABASES.get(guid, ()) and not authority:
        lists = parse_signature_lists(value)
        counts: dict[str, int] = {}
        for x in lists:
            counts[x["signature_type"]] = counts.get(x["signature_type"], 0) + x["count"]
        return {"signature_lists": lists}, ", ".join(f"{t} x{n}" for t, n in counts.items()) or "(empty)"
    if _is_printable(text):
        return {"text": _ascii(text)}, _ascii(text)
    return raw_details(value), f"0x{value.hex()}" if 0 < len(value) <= 8 else f"{len(value)} bytes"


def _variable(data: bytes, authority: bool) -> tuple[str, dict[str, Any]]:
    r = _Reader(data, "UEFI_VARIABLE_DATA")
    guid = r.guid("VariableName")
    nlen, dlen = r.u64("UnicodeNameLength"), r.u64("VariableDataLength")
    name = utf16(r.take(r.length(nlen, 2, "UnicodeNameLength"), "UnicodeName"))
    value = r.take(r.length(dlen, 1, "VariableDataLength"), "VariableData")
    out: dict[str, Any] = {"variable_name": guid, "unicode_name_length": nlen, "variable_data_length": dlen,
                           "unicode_name": name}
    if guid in GUID_NAMES:
        out["variable_guid_name"] = GUID_NAMES[guid]
    try:
        out["value"], text = _variable_value(guid, name, value, authority)
    except ParseError as e:
        out["value"], text = {"malformed": str(e), **raw_details(value)}, f"malformed ({e})"
    if r.left:
        out["trailing_bytes"] = r.left
    return _one_line(f"{name}: {text}" if _LOAD_OPTION_NAME.fullmatch(name) else f"{name} = {text}"), out


def parse_variable_data(data: bytes, *, authority: bool = False) -> dict[str, Any]:
    """UEFI_VARIABLE_DATA, PFP ch. 10 (EV_EFI_VARIABLE_DRIVER_CONFIG, _BOOT, _BOOT2, _AUTHORITY).

    {EFI_GUID VariableName, u64 UnicodeNameLength (CHAR16s), u64
    VariableDataLength, CHAR16 UnicodeName[], u8 VariableData[]}.  Well-known
    variables are decoded under ``value`` (BootOrder, Boot####, SecureBoot, PK,
    KEK, db, dbx, MokList, SbatLevel); ``authority`` selects the
    EV_EFI_VARIABLE_AUTHORITY reading of VariableData (an EFI_SIGNATURE_DATA).
    Bytes after VariableData (old shim's authority events carry 6) are reported
    as ``trailing_bytes``.
    """
    return _variable(data, authority)[1]
