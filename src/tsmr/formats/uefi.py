"""Event data of TCG PC Client logs: UEFI structures, boot loader strings, tagged events.

A TCG2 record (:mod:`tsmr.formats.tcg2`) carries opaque event data whose layout
depends on the event type: TCG PC Client Platform Firmware Profile (PFP) 1.05
chapter 10 "Event Logging" defines the structures named below (section numbers
are given where they were checked), UEFI 2.10 the device paths, load options
and signature lists.

Theory of operation
-------------------
* ``parse_*`` functions decode one wire structure each and are total in the
  usual tsmr sense: bytes in, a plain JSON-able ``dict`` out, or
  :class:`~tsmr.errors.ParseError` (``format="uefi"``, offset into the event
  data, field named as in the spec).  Every length is checked against the
  bytes left before anything is sliced.  Their ``uintn`` is the UINTN size in
  bytes (8, or 4 for 32-bit firmware).
* :func:`describe` dispatches on the event type and **never raises**: real logs
  are full of oddities (shim's trailing bytes, GRUB strings with a stray byte
  after the NUL, untagged EV_EVENT_TAG data), and one undecodable event must not
  make a whole log unreadable.  Data its decoder rejects gives the summary
  ``"malformed: <ParseError>"`` and details ``{"malformed", "size", "data"}``.
* :func:`data_rule` is the conservative answer to "is the digest H(event
  data)?" that goes into :attr:`tsmr.events.Event.data_rule`; boot loader
  conventions and firmware quirks beyond it are :func:`tsmr.formats.tcg2.digest_rules`.

GUIDs are printed in registry form (``8be4df61-93ca-11d2-aa0d-00e098032b8c``; the
first three fields are little-endian on the wire), device paths in the UEFI text
form (UEFI 2.10 §10.6): ``PciRoot(0x0)/Pci(0x4,0x0)/HD(15,GPT,<guid>,0x2800,0x35000)/\\EFI\\BOOT\\BOOTX64.EFI``.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any, Callable

from ..algorithms import HashAlg
from ..errors import ParseError

FORMAT = "uefi"
DATA = "data"  # == tsmr.events.DATA; not imported so that codecs stay below the unified model

# Event types this module dispatches on (same values as tsmr.formats.tcg2.EV_*; not imported from
# there because tcg2 imports this module).
_EV_NO_ACTION, _EV_SEPARATOR, _EV_ACTION, _EV_EVENT_TAG, _EV_S_CRTM_VERSION = 0x3, 0x4, 0x5, 0x6, 0x8
_EV_PLATFORM_CONFIG_FLAGS, _EV_TABLE_OF_DEVICES, _EV_IPL = 0xA, 0xB, 0xD
_EV_NONHOST_CODE, _EV_NONHOST_CONFIG, _EV_NONHOST_INFO, _EV_OMIT_BOOT_DEVICE_EVENTS = 0xF, 0x10, 0x11, 0x12
_EV_EFI_VARIABLE_DRIVER_CONFIG, _EV_EFI_VARIABLE_BOOT = 0x80000001, 0x80000002
_EV_EFI_BOOT_SERVICES_APPLICATION, _EV_EFI_BOOT_SERVICES_DRIVER = 0x80000003, 0x80000004
_EV_EFI_RUNTIME_SERVICES_DRIVER, _EV_EFI_GPT_EVENT, _EV_EFI_ACTION = 0x80000005, 0x80000006, 0x80000007
_EV_EFI_PLATFORM_FIRMWARE_BLOB, _EV_EFI_HANDOFF_TABLES = 0x80000008, 0x80000009
_EV_EFI_PLATFORM_FIRMWARE_BLOB2, _EV_EFI_HANDOFF_TABLES2 = 0x8000000A, 0x8000000B
_EV_EFI_VARIABLE_BOOT2, _EV_EFI_GPT_EVENT2, _EV_EFI_VARIABLE_AUTHORITY = 0x8000000C, 0x8000000D, 0x800000E0

# -- limits ---------------------------------------------------------------------------------------

MAX_DEVICE_PATH_NODES = 256
"""Most nodes decoded from one device path (real ones have fewer than 16)."""
MAX_LIST_ITEMS = 4096
"""Most entries decoded from one counted list (GPT partitions, handoff tables, signature lists)."""
PREVIEW_BYTES = 64
"""Raw bytes shown (hex) for data that is not decoded further."""
SUMMARY_CHARS = 160
"""Longest one-line summary; longer text is cut with an ellipsis (details keep all of it)."""

# -- well-known GUIDs (UEFI 2.10; shim; EDK2 MdePkg headers) --------------------------------------

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"

GUID_NAMES: dict[str, str] = {
    EFI_GLOBAL_VARIABLE: "EFI_GLOBAL_VARIABLE", EFI_IMAGE_SECURITY_DATABASE: "EFI_IMAGE_SECURITY_DATABASE",
    SHIM_LOCK_GUID: "SHIM_LOCK",
    # EFI_CONFIGURATION_TABLE vendor GUIDs (UEFI 2.10 §4.6)
    "8868e871-e4f1-11d3-bc22-0080c73c8881": "ACPI 2.0", "eb9d2d30-2d88-11d3-9a16-0090273fc14d": "ACPI 1.0",
    "eb9d2d31-2d88-11d3-9a16-0090273fc14d": "SMBIOS", "f2fd1544-9794-4a2c-992e-e5bbcf20e394": "SMBIOS3",
    "b1b621d5-f19c-41a5-830b-d9152c69aae0": "Device Tree",
    "dcfa911d-26eb-469f-a220-38b7dc461220": "Memory Attributes",
    # Linux initrd media device path (LoadFile2), drivers/firmware/efi/libstub
    "5568e427-68fc-4f3d-ac74-ca555231cc68": "LINUX_INITRD_MEDIA",
    # GPT partition types (UEFI 2.10 §5.3.3 and the Discoverable Partitions Specification)
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System", "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap", "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
}

# EFI_SIGNATURE_LIST.SignatureType (UEFI 2.10 §32.4.1)
SIGNATURE_TYPES: dict[str, str] = {
    "c1c41626-504c-4092-aca9-41f936934328": "sha256", "3c5766e8-269c-4e34-aa14-ed776e85b3b6": "rsa2048",
    "e2b36190-879b-4a3d-ad8d-f2e7bba32784": "rsa2048-sha256", "826ca512-cf10-4ac9-b187-be01496631bd": "sha1",
    "67f8444f-8743-48f1-a328-1eaab8736080": "rsa2048-sha1", "a5c059a1-94e4-4aa7-87b5-ab155c2bf072": "x509",
    "0b6e5233-a65c-44c9-9407-d9ab83bfc8bd": "sha224", "ff3e5307-9fd0-48c9-85f1-8ad56c701e01": "sha384",
    "093e0fae-a6c4-4f50-9f1b-d41e2b89c19a": "sha512", "3bd2a492-96c0-4079-b420-fcf98ef103ed": "x509-sha256",
    "7076876e-80c2-4ee6-aad2-28b349a6865b": "x509-sha384", "446dbf63-2502-4cda-bcfa-2465d2b0fe9d": "x509-sha512",
    "4aafd29d-68df-49ee-8aa9-347d375665a7": "pkcs7",
}

# TCG_PCClientTaggedEvent.taggedEventID values with a known meaning.
AAEL_TAG = 0x4141454C  # CoCo attestation-agent event log ("AAEL"), shared/reference/tsm-mr-abi.md §5.3
LINUX_INITRD_TAG = 0x8F3B22EC  # Linux drivers/firmware/efi/libstub/efistub.h INITRD_EVENT_TAG_ID
LINUX_LOAD_OPTIONS_TAG = 0x8F3B22ED  # ... LOAD_OPTIONS_EVENT_TAG_ID
EVENT_TAG_NAMES: dict[int, str] = {
    AAEL_TAG: "AAEL", LINUX_INITRD_TAG: "Linux initrd",
    LINUX_LOAD_OPTIONS_TAG: "Linux load options",
    # systemd src/fundamental/tpm2-pcr.h
    0xF5BC582A: "systemd-boot loader.conf", 0x6C46F751: "systemd-stub devicetree addon",
    0x49DFFE0F: "systemd-stub initrd addon", 0xDAC08E1A: "systemd-stub ucode addon",
    0x13AED6DB: "systemd-stub UKI profile",
}

# -- byte reader ------------------------------------------------------------------------------------

_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_GUID = struct.Struct("<IHH8s")


def guid_str(raw: bytes) -> str:
    """EFI_GUID (16 bytes, u32/u16/u16 little-endian + 8 bytes) in registry form."""
    a, b, c, d = _GUID.unpack(raw)
    return f"{a:08x}-{b:04x}-{c:04x}-{d[:2].hex()}-{d[2:].hex()}"


class _Reader:
    """A cursor over event data that raises ParseError naming the structure and field."""

    __slots__ = ("data", "pos", "end", "what")

    def __init__(self, data: bytes, what: str, pos: int = 0) -> None:
        self.data, self.pos, self.end, self.what = data, pos, len(data), what

    def fail(self, message: str, field: str, at: int | None = None) -> ParseError:
        return ParseError(f"{self.what}: {message}", format=FORMAT,
                          offset=self.pos if at is None else at, field=f"{self.what}.{field}")

    @property
    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise self.fail(f"{field} needs {n} bytes, {self.end - self.pos} left", field)
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return _U16.unpack(self.take(2, field))[0]

    def u32(self, field: str) -> int:
        return _U32.unpack(self.take(4, field))[0]

    def u64(self, field: str) -> int:
        return _U64.unpack(self.take(8, field))[0]

    def uintn(self, size: int, field: str) -> int:
        return self.u32(field) if size == 4 else self.u64(field)

    def guid(self, field: str) -> str:
        return guid_str(self.take(16, field))

    def length(self, n: int, unit: int, field: str) -> int:
        """Check that ``n`` items of ``unit`` bytes fit in what is left; return the byte count."""
        if n * unit > self.end - self.pos:
            raise self.fail(f"{field} {n} (x{unit} bytes) exceeds the {self.end - self.pos} bytes left", field)
        return n * unit

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = self.end
        return out


# -- text helpers -----------------------------------------------------------------------------------

# bytes.translate(None, X) deletes the bytes in X: what is left is the non-printable part (C speed).
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\n\r"
_PRINTABLE_OR_NUL = _PRINTABLE + b"\x00"


def _is_printable(b: bytes) -> bool:
    return bool(b) and not b.translate(None, _PRINTABLE)


def _ascii(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def utf16(b: bytes) -> str:
    """UCS-2/UTF-16LE text up to the first NUL; undecodable units become U+FFFD."""
    text = b[: len(b) & ~1].decode("utf-16-le", "replace")
    return text.split("\x00", 1)[0]


def looks_utf16(b: bytes) -> bool:
    """Even length, every high byte zero, some low byte non-zero: ASCII-range UCS-2 text."""
    if len(b) < 2 or len(b) & 1 or any(b[1::2]):
        return False
    low = b[0::2]
    return any(low) and not low.translate(None, _PRINTABLE_OR_NUL)


def text_of(data: bytes) -> tuple[str, str, int] | None:
    """(text, encoding, trailing byte count) if ``data`` is a string, else None.

    Accepts ASCII/UTF-8 (NUL-terminated or not; bytes after the first NUL are
    counted as trailing, as in RHEL GRUB's ``"grub_cmd ...\\0<junk>"``) and
    ASCII-range UTF-16LE (systemd, EDK2 CRTM version).
    """
    if data.isascii() and not data.translate(None, _PRINTABLE):  # the common case: plain ASCII, no NUL
        return data.decode("ascii"), "ascii", 0
    if looks_utf16(data):
        text = utf16(data)
        used = 2 * len(text) + 2
        return text, "utf-16le", max(0, len(data) - used) if any(data[used:]) else 0
    head, _nul, tail = data.partition(b"\x00")
    if not head:
        return None
    trailing = len(tail) if tail.strip(b"\x00") else 0
    if head.isascii():
        return (head.decode("ascii"), "ascii", trailing) if not head.translate(None, _PRINTABLE) else None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not all(c.isprintable() or c in "\t\n\r" for c in text):
        return None
    return text, "utf-8", trailing


def _one_line(text: str) -> str:
    if not text.isprintable():
        text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", " ")
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _preview(b: bytes) -> str:
    return b[:PREVIEW_BYTES].hex() + ("…" if len(b) > PREVIEW_BYTES else "")


def raw_details(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "data": _preview(data)}


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


# -- UEFI_VARIABLE_DATA and the variables it carries -----------------------------------------------------


def parse_signature_lists(data: bytes) -> list[dict[str, Any]]:
    """EFI_SIGNATURE_LIST[] (UEFI 2.10 §32.4.1): type, count and owners of each list (PK, KEK, db, dbx, MokList)."""
    r = _Reader(data, "EFI_SIGNATURE_LIST")
    out = []
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


# -- dispatch -------------------------------------------------------------------------------------------

_Decoder = Callable[[bytes, int], tuple[str, dict[str, Any]]]


def _string_event(data: bytes, _u: int) -> tuple[str, dict[str, Any]]:
    if not data:
        return "(empty)", {"size": 0}
    t = text_of(data)
    if t is not None:
        d: dict[str, Any] = {"text": t[0]}
        if t[1] != "ascii":
            d["encoding"] = t[1]
        if t[2]:
            d["trailing_bytes"] = t[2]
        return t[0], d
    if len(data) == 16:  # EV_POST_CODE / EV_S_CRTM_CONTENTS may be a UEFI_PLATFORM_FIRMWARE_BLOB,
        return f"16 bytes: {data.hex()}", {"blob": parse_blob(data), "guid": guid_str(data)}  # EV_S_CRTM_VERSION a GUID
    return f"{len(data)} bytes: {_preview(data)}", raw_details(data)


GRUB_PREFIXES = (b"grub_cmd: ", b"kernel_cmdline: ", b"module_cmdline: ", b"grub_cmd ", b"grub_kernel_cmdline ",
                  b"grub_linuxefi ")
_SHIM_IPL = frozenset(("MokList", "MokListX", "MokListTrusted", "MokListRT", "MokListXRT", "SbatLevel"))


def _ipl_event(data: bytes, u: int) -> tuple[str, dict[str, Any]]:
    summary, d = _string_event(data, u)
    text = d.get("text")
    if text is None:
        return summary, d
    for p in GRUB_PREFIXES:
        if data.startswith(p):
            d.update(bootloader="grub", kind=p.decode().rstrip(": "))
            return summary, d
    if text in _SHIM_IPL:
        d["bootloader"] = "shim"
    elif d.get("encoding") == "utf-16le" and text.startswith(".") and " " not in text:
        d["pe_section"] = text  # systemd-stub measures each UKI section: its name, then its contents
    return summary, d


def _separator(data: bytes) -> str:
    d = parse_separator(data)
    if "value" in d:
        return f"separator {d['value']}" + ("" if d["kind"] == "normal" else f" ({d['kind']})")
    return f"separator (error, {len(data)} bytes of error information)"


def _no_action(d: dict[str, Any]) -> str:
    sig = d.get("signature", "")
    if "algorithms" in d:
        return f"{sig}: " + ", ".join(a["name"] for a in d["algorithms"])
    if "startup_locality" in d:
        return f"StartupLocality {d['startup_locality']}"
    if "reference_manifest_guid" in d:
        extra = " ".join(d[k] for k in ("platform_manufacturer", "platform_model", "firmware_version") if d.get(k))
        return f"{sig}: {extra}" if extra else f"{sig} {d['reference_manifest_guid']}"
    return sig or f"{d['size']} bytes: {d['data']}"


def _tag(data: bytes, u: int) -> tuple[str, dict[str, Any]]:
    try:
        d = parse_tagged_event(data)
    except ParseError:
        t = text_of(data)
        if t is None or t[2]:
            raise
        # Linux 5.19-6.x EFI stubs logged the bare description ("LOADED_IMAGE::LoadOptions\0") as
        # EV_EVENT_TAG data, without the TCG_PCClientTaggedEvent header.
        return t[0], {"text": t[0], "untagged": True}
    if d.get("tag") == "AAEL":
        return f"AAEL {d['domain']} {d['operation']} {d['content']}", d
    label = d.get("tag", d["tagged_event_id"])
    return (f"{label}: {d['text']}" if "text" in d else f"{label} ({d['size']} bytes)"), d


def _tables_summary(d: dict[str, Any]) -> str:
    names = ", ".join(t.get("name", t["vendor_guid"]) for t in d["tables"]) or "no tables"
    return f"{d['table_description']}: {names}" if "table_description" in d else names


def _config_blob(data: bytes, u: int) -> tuple[str, dict[str, Any]]:
    """EV_PLATFORM_CONFIG_FLAGS / EV_TABLE_OF_DEVICES / EV_NONHOST_*: a leading name, maybe binary after it.

    td-shim writes TD_SHIM_PLATFORM_CONFIG_INFO {char Descriptor[16], u32
    InfoLength, Info} (e.g. "td_hob", "td_payload_info"); QEMU/OVMF write fw_cfg
    file names ("etc/table-loader"); GCE "GCE NonHostInfo\\0" + a technology byte.
    """
    head = data.split(b"\x00", 1)[0]
    if len(data) >= 20 and len(head) < 16 and _is_printable(head) and _U32.unpack_from(data, 16)[0] == len(data) - 20:
        d: dict[str, Any] = {"descriptor": _ascii(head), "info_length": len(data) - 20}
        info = data[20:].split(b"\x00", 1)[0]
        if _is_printable(info):
            d["info_text"] = _ascii(info)
        return d["descriptor"] + (f": {d['info_text']}" if "info_text" in d else ""), d
    if _is_printable(head) and head != data:
        d = {"text": _ascii(head)}
        if data[len(head):].strip(b"\x00"):
            d["rest"] = _preview(data[len(head) + 1:])
        return d["text"], d
    return _string_event(data, u)


def _with(parse: Callable[..., dict[str, Any]], summary: Callable[[dict[str, Any]], str],
          uintn: bool = False) -> _Decoder:
    if uintn:
        return lambda b, u: (lambda d: (summary(d), d))(parse(b, u))
    return lambda b, u: (lambda d: (summary(d), d))(parse(b))


def _image_summary(d: dict[str, Any]) -> str:
    return d["device_path"] or f"image at {d['image_location_in_memory']} (no device path)"


_DECODERS: dict[int, _Decoder] = {
    _EV_NO_ACTION: _with(parse_no_action, _no_action),
    _EV_SEPARATOR: lambda b, u: (_separator(b), parse_separator(b)),
    _EV_EVENT_TAG: _tag,
    _EV_IPL: _ipl_event,
    _EV_EFI_VARIABLE_DRIVER_CONFIG: lambda b, u: _variable(b, False),
    _EV_EFI_VARIABLE_BOOT: lambda b, u: _variable(b, False),
    _EV_EFI_VARIABLE_BOOT2: lambda b, u: _variable(b, False),
    _EV_EFI_VARIABLE_AUTHORITY: lambda b, u: _variable(b, True),
    _EV_EFI_BOOT_SERVICES_APPLICATION: _with(parse_image_load_event, _image_summary, True),
    _EV_EFI_BOOT_SERVICES_DRIVER: _with(parse_image_load_event, _image_summary, True),
    _EV_EFI_RUNTIME_SERVICES_DRIVER: _with(parse_image_load_event, _image_summary, True),
    _EV_EFI_GPT_EVENT: _with(parse_gpt_data, lambda d: f"GPT disk {d['disk_guid']}: {len(d['partitions'])} "
                             "partitions", True),
    _EV_EFI_PLATFORM_FIRMWARE_BLOB: _with(parse_blob, lambda d: f"blob {d['blob_base']}+0x{d['blob_length']:x}"),
    _EV_EFI_PLATFORM_FIRMWARE_BLOB2: _with(parse_blob2, lambda d: f"{d['blob_description']} {d['blob_base']}"
                                           f"+0x{d['blob_length']:x}"),
    _EV_EFI_HANDOFF_TABLES: _with(parse_handoff_tables, _tables_summary, True),
    _EV_EFI_HANDOFF_TABLES2: _with(parse_handoff_tables2, _tables_summary, True),
    _EV_PLATFORM_CONFIG_FLAGS: _config_blob,
    _EV_TABLE_OF_DEVICES: _config_blob,
    _EV_NONHOST_CODE: _config_blob,
    _EV_NONHOST_CONFIG: _config_blob,
    _EV_NONHOST_INFO: _config_blob,
}
_DECODERS[_EV_EFI_GPT_EVENT2] = _DECODERS[_EV_EFI_GPT_EVENT]
# Everything else is tried as a string, then shown raw (16 bytes also as blob and GUID): EV_ACTION,
# EV_EFI_ACTION, EV_S_CRTM_VERSION (UCS-2 or a GUID), EV_POST_CODE(2), EV_S_CRTM_CONTENTS,
# EV_CPU_MICROCODE, EV_COMPACT_HASH, EV_OMIT_BOOT_DEVICE_EVENTS ("BOOT ATTEMPTS OMITTED"),
# EV_EFI_HCRTM_EVENT ("HCRTM"), EV_IPL_PARTITION_DATA, the SPDM events and unknown types.


def describe(event_type: int, data: bytes, *, uintn_size: int = 2) -> tuple[str, dict[str, Any]]:
    """A one-line summary and JSON-able details of one event's data.  Never raises.

    ``uintn_size`` is the Spec ID event's uintnSize (1: UINTN is 32 bits, 2: 64
    bits), as in :attr:`tsmr.formats.tcg2.SpecIdEvent.uintn_size`.  Undecodable data gives ``("malformed: <reason>", {"malformed":
    reason, "size": n, "data": hex preview})``.
    """
    try:
        if type(data) is not bytes:
            data = bytes(data)
        summary, details = _DECODERS.get(event_type, _string_event)(data, 4 if uintn_size == 1 else 8)
        return _one_line(summary), details
    except ParseError as e:
        return _one_line(f"malformed: {e}"), {"malformed": str(e), **raw_details(data)}
    except Exception as e:  # noqa: BLE001 - a decoder bug must not make a log unreadable; say so instead
        return _one_line(f"undecodable ({type(e).__name__}: {e})"), {"malformed": f"{type(e).__name__}: {e}",
                                                                     **raw_details(bytes(data))}


# -- the data rule ---------------------------------------------------------------------------------
#
# Which event types have digest == H(event data), checked against every fixture in shared/fixtures
# (tcg2.check_digests recomputes it; the facts per firmware are listed in tsmr.formats.tcg2 above
# digest_rules).  Types whose digest covers something else (a PE image, a file, firmware memory, the
# contents of a variable) get None.

_DATA_TYPES = frozenset({
    _EV_ACTION, _EV_EFI_ACTION, _EV_EFI_VARIABLE_DRIVER_CONFIG, _EV_EFI_VARIABLE_AUTHORITY,
    _EV_EFI_VARIABLE_BOOT2,  # PFP 1.05: BOOT2 exists to mean "the whole UEFI_VARIABLE_DATA"
    _EV_EFI_GPT_EVENT, _EV_EFI_GPT_EVENT2, _EV_S_CRTM_VERSION, _EV_NONHOST_INFO, _EV_OMIT_BOOT_DEVICE_EVENTS,
})
_SEPARATOR_VALUES = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x00\x00\x00")


def data_rule(event_type: int, data: bytes) -> str | None:
    """``"data"`` when the digest of this event is H(event data) in every bank, else None.

    Conservative: only what the spec says *and* every fixture agrees with (see
    the table above); :attr:`tsmr.events.Event.digest` derives missing banks from
    it, so a wrong "data" would be worse than a None.
    """
    if event_type in _DATA_TYPES:
        return DATA
    if event_type == _EV_SEPARATOR:
        return DATA if data in _SEPARATOR_VALUES else None
    if event_type == _EV_EVENT_TAG:
        return DATA if data[:4] == b"LEAA" else None  # AAEL (taggedEventID 0x4141454C, little-endian)
    return None


__all__ = [
    "AAEL_TAG", "DATA", "EFI_GLOBAL_VARIABLE", "EFI_IMAGE_SECURITY_DATABASE", "EVENT_TAG_NAMES", "GUID_NAMES",
    "LINUX_INITRD_TAG", "LINUX_LOAD_OPTIONS_TAG", "MAX_DEVICE_PATH_NODES", "MAX_LIST_ITEMS", "SHIM_LOCK_GUID",
    "SIGNATURE_TYPES", "GRUB_PREFIXES", "data_rule", "describe", "device_path_text",
    "guid_str", "looks_utf16", "parse_blob", "parse_blob2", "parse_device_path",
    "parse_gpt_data", "parse_handoff_tables", "parse_handoff_tables2", "parse_image_load_event",
    "parse_load_option", "parse_no_action", "parse_separator", "parse_signature_lists", "parse_sp800_155",
    "parse_spec_id_event", "parse_tagged_event", "parse_variable_data", "raw_details",
    "text_of", "utf16",
]
