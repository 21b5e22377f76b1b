"""Dispatch on the event type: one summary line and decoded details per event, and the data rule."""

from __future__ import annotations

from typing import Any, Callable

from ...errors import ParseError
from .common import DATA, _U32, _ascii, _is_printable, _one_line, _preview, guid_str, raw_details, text_of
from .simple import (parse_blob, parse_blob2, parse_handoff_tables, parse_handoff_tables2, parse_no_action,
                     parse_separator, parse_tagged_event)
from .media import parse_gpt_data, parse_image_load_event
from .variables import _variable

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
