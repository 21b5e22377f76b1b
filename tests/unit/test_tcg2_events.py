"""tsmr.formats.uefi decoders, tcg2.to_events and digest rules on every real log.

Golden outputs of every log are in tests/integration/test_show_golden.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixture_logs import CCEL_LOGS, TPM_LOGS
from tsmr import HashAlg, InputError, ParseError
from tsmr.events import DATA
from tsmr.formats import ccel, tcg2, uefi
from tsmr.formats.tcg2 import TCG2Event


# -- byte builders (layouts from TCG PC Client PFP §10 and UEFI 2.10) ------------------------------


def guid(s: str) -> bytes:
    return uuid.UUID(s).bytes_le


def node(t: int, s: int, body: bytes = b"") -> bytes:
    return struct.pack("<BBH", t, s, 4 + len(body)) + body


END = b"\x7f\xff\x04\x00"
DISK = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
PCI_ROOT = node(2, 1, struct.pack("<II", 0x0A0341D0, 0))
PCI_1_1 = node(1, 1, bytes([1, 1]))  # Function 1, Device 1
HD = node(4, 1, struct.pack("<IQQ", 1, 0x800, 0x100000) + guid(DISK) + bytes([2, 2]))
FILE = node(4, 4, "\\EFI\\BOOT\\BOOTX64.EFI".encode("utf-16-le") + b"\x00\x00")
BOOT_PATH = PCI_ROOT + PCI_1_1 + HD + FILE + END
BOOT_TEXT = f"PciRoot(0x0)/Pci(0x1,0x1)/HD(1,GPT,{DISK},0x800,0x100000)/\\EFI\\BOOT\\BOOTX64.EFI"


def variable(var_guid: str, name: str, value: bytes) -> bytes:
    """UEFI_VARIABLE_DATA (PFP §10.2.1)."""
    return guid(var_guid) + struct.pack("<QQ", len(name), len(value)) + name.encode("utf-16-le") + value


def load_option(desc: str, path: bytes, attrs: int = 1, optional: bytes = b"") -> bytes:
    """EFI_LOAD_OPTION (UEFI 2.10 §3.1.3)."""
    return struct.pack("<IH", attrs, len(path)) + desc.encode("utf-16-le") + b"\x00\x00" + path + optional


def signature_list(sig_type: str, owner: str, payloads: list[bytes]) -> bytes:
    """EFI_SIGNATURE_LIST with SignatureHeaderSize 0 (UEFI 2.10 §32.4.1)."""
    size = 16 + len(payloads[0])
    body = b"".join(guid(owner) + p for p in payloads)
    return guid(sig_type) + struct.pack("<III", 28 + len(body), 0, size) + body


def tagged(tag: int, data: bytes) -> bytes:
    return struct.pack("<II", tag, len(data)) + data


GLOBAL = uefi.EFI_GLOBAL_VARIABLE
X509 = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
SHA256_SIG = "c1c41626-504c-4092-aca9-41f936934328"
MS_OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"
FAKE_CERT = b"\x30\x82\x01\x00" + bytes(256)


def describe(event_type: int, data: bytes, uintn_size: int = 2) -> tuple[str, dict[str, Any]]:
    summary, details = uefi.describe(event_type, data, uintn_size=uintn_size)
    json.dumps(details)  # every decoder returns JSON-able details
    assert "\n" not in summary and len(summary) <= uefi.SUMMARY_CHARS
    return summary, details


# -- decoders: known answers ---------------------------------------------------------------------------


def test_guid_is_printed_in_registry_form() -> None:
    assert uefi.guid_str(bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")) == GLOBAL


@pytest.mark.parametrize(
    "data,summary,kind",
    [
        (bytes(4), "separator 0x00000000", "normal"),
        (b"\xff" * 4, "separator 0xffffffff (alternative)", "alternative"),
        (b"\x01\x00\x00\x00", "separator 0x00000001 (error)", "error"),
        (b"oops!", "separator (error, 5 bytes of error information)", "error"),
    ],
)
def test_separator(data: bytes, summary: str, kind: str) -> None:
    s, d = describe(tcg2.EV_SEPARATOR, data)
    assert (s, d["kind"]) == (summary, kind)


@pytest.mark.parametrize(
    "etype,data,summary",
    [
        (tcg2.EV_EFI_ACTION, b"Exit Boot Services Invocation", "Exit Boot Services Invocation"),
        (tcg2.EV_S_CRTM_VERSION, "GCE Virtual Firmware v1\x00".encode("utf-16-le"), "GCE Virtual Firmware v1"),
        (tcg2.EV_POST_CODE, b"ACPI DATA", "ACPI DATA"),
        (tcg2.EV_OMIT_BOOT_DEVICE_EVENTS, b"BOOT ATTEMPTS OMITTED", "BOOT ATTEMPTS OMITTED"),
        (tcg2.EV_EFI_HCRTM_EVENT, b"HCRTM", "HCRTM"),
        (tcg2.EV_COMPACT_HASH, bytes(range(5)), "5 bytes: 0001020304"),
        (0x7777, b"", "(empty)"),
    ],
)
def test_string_events(etype: int, data: bytes, summary: str) -> None:
    assert describe(etype, data)[0] == summary


def test_post_code_blob_and_crtm_guid() -> None:
    blob = struct.pack("<QQ", 0xFFC00000, 0x40000)
    _s, d = describe(tcg2.EV_POST_CODE, blob)
    assert d["blob"] == {"blob_base": "0xffc00000", "blob_length": 0x40000}
    assert describe(tcg2.EV_S_CRTM_VERSION, guid(DISK))[1]["guid"] == DISK


def test_ipl_strings() -> None:
    s, d = describe(tcg2.EV_IPL, b"grub_cmd: set default=0\x00")
    assert (s, d["bootloader"], d["kind"], d["text"]) == ("grub_cmd: set default=0", "grub", "grub_cmd",
                                                          "grub_cmd: set default=0")
    _s, d = describe(tcg2.EV_IPL, b"grub_cmd set pager=1\x00\x60")  # RHEL GRUB, stray byte after the NUL
    assert d["kind"] == "grub_cmd" and d["trailing_bytes"] == 1
    assert describe(tcg2.EV_IPL, b"MokListX\x00")[1]["bootloader"] == "shim"
    s, d = describe(tcg2.EV_IPL, ".linux\x00".encode("utf-16-le"))
    assert (s, d["pe_section"], d["encoding"]) == (".linux", ".linux", "utf-16le")
    s, d = describe(tcg2.EV_IPL, "root=/dev/vda1 ro\x00".encode("utf-16-le"))
    assert s == "root=/dev/vda1 ro" and "pe_section" not in d


def test_no_action_payloads() -> None:
    spec = tcg2.encode_spec_id(tcg2.SpecIdEvent.for_algorithms([HashAlg.SHA256, HashAlg.SHA384]))
    s, d = describe(tcg2.EV_NO_ACTION, spec)
    assert s == "Spec ID Event03: sha256, sha384"
    assert d["algorithms"][1] == {"algorithm_id": "0x000c", "name": "sha384", "digest_size": 48}
    assert (d["spec_version"], d["uintn_size"]) == ("2.0", 2)
    assert describe(tcg2.EV_NO_ACTION, b"StartupLocality\x00\x03") == ("StartupLocality 3", {
        "signature": "StartupLocality", "startup_locality": 3})
    legacy = b"Spec ID Event02\x00" + struct.pack("<IBBBBB", 0, 2, 1, 0, 2, 0)
    assert describe(tcg2.EV_NO_ACTION, legacy)[1]["spec_version"] == "1.2"
    s, d = describe(tcg2.EV_NO_ACTION, b"SomethingElse\x00\x00\x00" + b"\x01\x02")
    assert (s, d["signature"], d["size"]) == ("SomethingElse", "SomethingElse", 18)


def test_sp800_155_event3() -> None:
    def s8(text: bytes) -> bytes:
        return bytes([len(text) + 1]) + text + b"\x00"

    data = (b"SP800-155 Event3" + struct.pack("<I", 11129) + guid(DISK) + s8(b"Google, Inc.")
            + s8(b"Google Compute Engine") + s8(b"") + s8(b"Google, Inc.") + struct.pack("<I", 11129) + s8(b"2.7")
            + struct.pack("<II", 3, 4) + b"abcd" + struct.pack("<II", 1, 5) + b"http:")
    s, d = describe(tcg2.EV_NO_ACTION, data)
    assert s == "SP800-155 Event3: Google, Inc. Google Compute Engine 2.7"
    assert d["reference_manifest_guid"] == DISK and d["platform_manufacturer_id"] == 11129
    assert d["rim_locator"] == {"type": 3, "locator": "abcd"} and d["platform_cert_locator"]["locator"] == "http:"


def test_nv_index_dynamic() -> None:
    data = (b"NvIndexDynamic \x00" + struct.pack("<H", 1) + bytes(6) + struct.pack("<Q", 7)
            + struct.pack("<H", 4) + b"desc" + struct.pack("<H", 2) + b"\xab\xcd")
    d = uefi.parse_no_action(data)
    assert d == {"signature": "NvIndexDynamic", "version": 1, "uid": "0x7", "description": "desc", "data": "abcd"}


def test_secure_boot_boot_order_and_boot_entry() -> None:
    assert describe(tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(GLOBAL, "SecureBoot", b"\x01"))[0] == "SecureBoot = 1"
    s, d = describe(tcg2.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "BootOrder", struct.pack("<3H", 2, 1, 0x1A)))
    assert s == "BootOrder = Boot0002,Boot0001,Boot001A" and d["value"] == {"order": ["0002", "0001", "001A"]}
    assert d["variable_name"] == GLOBAL and d["variable_guid_name"] == "EFI_GLOBAL_VARIABLE"
    assert (d["unicode_name_length"], d["variable_data_length"]) == (9, 6)
    s, d = describe(tcg2.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "Boot0001", load_option("ubuntu", BOOT_PATH,
                                                                                        optional=b"xyz")))
    assert s == f"Boot0001: 'ubuntu' {BOOT_TEXT}"
    assert d["value"] == {"attributes": "0x00000001", "active": True, "description": "ubuntu",
                          "device_path": BOOT_TEXT, "optional_data": "78797a", "optional_data_size": 3}


def test_signature_databases() -> None:
    pk = signature_list(X509, MS_OWNER, [FAKE_CERT])
    s, d = describe(tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(GLOBAL, "PK", pk))
    assert s == "PK = x509 x1"
    assert d["value"]["signature_lists"] == [{"signature_type": "x509", "count": 1, "signature_size": 16 + 260,
                                              "owners": [MS_OWNER]}]
    dbx = signature_list(SHA256_SIG, MS_OWNER, [bytes([i]) * 32 for i in range(3)]) + pk
    s, _d = describe(tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(uefi.EFI_IMAGE_SECURITY_DATABASE, "dbx", dbx))
    assert s == "dbx = sha256 x3, x509 x1"
    assert describe(tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG, variable(GLOBAL, "KEK", b""))[0] == "KEK = (empty)"


def test_variable_authority() -> None:
    s, d = describe(tcg2.EV_EFI_VARIABLE_AUTHORITY,
                    variable(uefi.EFI_IMAGE_SECURITY_DATABASE, "db", guid(MS_OWNER) + FAKE_CERT))
    assert s == "db = certificate (260 bytes)"
    assert d["value"] == {"signature_owner": MS_OWNER, "certificate_size": 260}
    s, d = describe(tcg2.EV_EFI_VARIABLE_AUTHORITY, variable(uefi.SHIM_LOCK_GUID, "SbatLevel", b"sbat,1,2021030218\n"))
    assert s == "SbatLevel = sbat,1,2021030218\\n" and d["value"] == {"text": "sbat,1,2021030218\n"}
    # old shim: a bare certificate and 6 bytes after VariableData
    _s, d = describe(tcg2.EV_EFI_VARIABLE_AUTHORITY, variable(uefi.SHIM_LOCK_GUID, "Shim", FAKE_CERT) + bytes(6))
    assert d["value"] == {"certificate_size": 260} and d["trailing_bytes"] == 6


def test_malformed_variable_is_reported_not_raised() -> None:
    data = variable(GLOBAL, "SecureBoot", b"\x01")[:-1]
    s, d = describe(tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG, data)
    assert s.startswith("malformed: uefi: UEFI_VARIABLE_DATA:") and "VariableData" in d["malformed"]
    assert d["size"] == len(data) and d["data"] == data.hex()
    with pytest.raises(ParseError) as ei:
        uefi.parse_variable_data(data)
    assert ei.value.format == "uefi" and ei.value.field == "UEFI_VARIABLE_DATA.VariableDataLength"
    # A bad BootOrder value keeps the variable readable: only "value" says malformed.
    s, d = describe(tcg2.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "BootOrder", b"\x01\x00\x02"))
    assert s.startswith("BootOrder = malformed") and d["unicode_name"] == "BootOrder" and "malformed" in d["value"]


@pytest.mark.parametrize("uintn_size,fmt", [(2, "<QQQQ"), (1, "<QIII")])
def test_image_load_event(uintn_size: int, fmt: str) -> None:
    data = struct.pack(fmt, 0xBCB78018, 966664, 0, len(BOOT_PATH)) + BOOT_PATH
    s, d = describe(tcg2.EV_EFI_BOOT_SERVICES_APPLICATION, data, uintn_size)
    assert s == BOOT_TEXT
    assert d == {"image_location_in_memory": "0xbcb78018", "image_length_in_memory": 966664,
                 "image_link_time_address": "0x0", "length_of_device_path": len(BOOT_PATH), "device_path": BOOT_TEXT}


@pytest.mark.parametrize(
    "path,text",
    [
        (node(2, 1, struct.pack("<II", 0x060441D0, 1)) + END, "Acpi(PNP0604,0x1)"),
        (node(2, 1, struct.pack("<II", 0x0A0841D0, 2)) + END, "PcieRoot(0x2)"),
        (node(3, 23, struct.pack("<I", 1) + bytes(range(1, 9))) + END, "NVMe(0x1,08-07-06-05-04-03-02-01)"),
        (node(3, 11, bytes.fromhex("525400123456") + bytes(26) + b"\x01") + END, "MAC(525400123456,0x1)"),
        (node(3, 12, bytes(4) + bytes([10, 0, 0, 1]) + bytes(19)) + END, "IPv4(10.0.0.1)"),
        (node(3, 18, struct.pack("<HHH", 0, 0xFFFF, 0)) + END, "Sata(0x0,0xffff,0x0)"),
        (node(3, 5, bytes([3, 0])) + node(3, 2, struct.pack("<HH", 1, 0)) + END, "USB(0x3,0x0)/Scsi(0x1,0x0)"),
        (node(1, 4, guid(DISK) + b"\x01") + END, f"VenHw({DISK},01)"),
        (node(4, 7, guid(DISK)) + node(4, 6, guid(X509)) + END, f"Fv({DISK})/FvFile({X509})"),
        (node(4, 8, bytes(4) + struct.pack("<QQ", 0x10, 0x20)) + END, "Offset(0x10,0x20)"),
        (node(4, 1, struct.pack("<IQQ", 2, 63, 100) + struct.pack("<I", 0xDEADBEEF) + bytes(12) + bytes([1, 1])) + END,
         "HD(2,MBR,0xdeadbeef,0x3f,0x64)"),
        (node(3, 24, b"http://x/boot.efi") + END, "Uri(http://x/boot.efi)"),
        (node(9, 9, b"\xaa") + END, "Path(9,9,aa)"),
        (PCI_ROOT + b"\x7f\x01\x04\x00" + PCI_1_1 + END, "PciRoot(0x0),Pci(0x1,0x1)"),
        (PCI_ROOT, "PciRoot(0x0)"),  # no end node: truncated but readable
    ],
)
def test_device_path_nodes(path: bytes, text: str) -> None:
    assert uefi.device_path_text(path) == text


def test_device_path_errors() -> None:
    assert uefi.device_path_text(b"\x01\x01\x02\x00").startswith("<malformed: ")
    with pytest.raises(ParseError, match="shorter than the 4-byte node header"):
        uefi.parse_device_path(b"\x01\x01\x02\x00")
    with pytest.raises(ParseError, match="needs 8 bytes"):
        uefi.parse_device_path(b"\x01\x01\x0c\x00\x00")
    assert uefi.parse_device_path(END + b"junk")["trailing_bytes"] == 4


def test_gpt_data() -> None:
    header = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, 1, 0x1FFFFF, 34, 0x1FFFDE,
                         guid(DISK), 2, 128, 128, 0)
    esp = guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b") + guid(X509) + struct.pack("<QQQ", 2048, 4095, 0) \
        + "EFI System Partition".encode("utf-16-le").ljust(72, b"\x00")
    root = guid("0fc63daf-8483-4772-8e79-3d69d8477de4") + guid(MS_OWNER) + struct.pack("<QQQ", 4096, 9999, 1 << 63) \
        + "root".encode("utf-16-le").ljust(72, b"\x00")
    s, d = describe(tcg2.EV_EFI_GPT_EVENT, header + struct.pack("<Q", 2) + esp + root)
    assert s == f"GPT disk {DISK}: 2 partitions"
    assert d["partitions"][0] == {"partition_type_guid": "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
                                  "unique_partition_guid": X509, "starting_lba": 2048, "ending_lba": 4095,
                                  "attributes": "0x0", "partition_name": "EFI System Partition",
                                  "partition_type": "EFI System"}
    assert d["partitions"][1]["attributes"] == "0x8000000000000000"
    assert describe(tcg2.EV_EFI_GPT_EVENT, header + struct.pack("<Q", 3) + esp)[0].startswith("malformed")
    assert describe(tcg2.EV_EFI_GPT_EVENT, b"NOT PART" + header[8:] + bytes(8))[0].startswith("malformed")


def test_blobs_and_handoff_tables() -> None:
    assert describe(tcg2.EV_EFI_PLATFORM_FIRMWARE_BLOB, struct.pack("<QQ", 0x820000, 0xE0000))[0] == \
        "blob 0x820000+0xe0000"
    desc = b"Fv(48DB5E17-707C-472D-91CD-1613E7EF51B0)"
    s, d = describe(tcg2.EV_EFI_PLATFORM_FIRMWARE_BLOB2, bytes([len(desc)]) + desc + struct.pack("<QQ", 0xFFE00000,
                                                                                                  0x20000))
    assert s == "Fv(48DB5E17-707C-472D-91CD-1613E7EF51B0) 0xffe00000+0x20000"
    assert d == {"blob_description": desc.decode(), "blob_base": "0xffe00000", "blob_length": 0x20000}
    tables = struct.pack("<Q", 2) + guid("8868e871-e4f1-11d3-bc22-0080c73c8881") + struct.pack("<Q", 0x7FB7E014) \
        + guid("f2fd1544-9794-4a2c-992e-e5bbcf20e394") + struct.pack("<Q", 0x7F9AF000)
    s, d = describe(tcg2.EV_EFI_HANDOFF_TABLES, tables)
    assert s == "ACPI 2.0, SMBIOS3" and d["tables"][1]["vendor_table"] == "0x7f9af000"
    s, d = describe(tcg2.EV_EFI_HANDOFF_TABLES2, b"\x09TdxTable\x00" + tables)
    assert s == "TdxTable: ACPI 2.0, SMBIOS3" and d["table_description"] == "TdxTable"
    assert describe(tcg2.EV_EFI_HANDOFF_TABLES, struct.pack("<Q", 1 << 40))[0].startswith("malformed")


def test_tagged_events() -> None:
    s, d = describe(tcg2.EV_EVENT_TAG, tagged(uefi.AAEL_TAG, b"coco.com CreateContainer {\"image\": \"busybox\"}"))
    assert s == 'AAEL coco.com CreateContainer {"image": "busybox"}'
    assert (d["tagged_event_id"], d["tag"], d["domain"], d["operation"]) == ("0x4141454c", "AAEL", "coco.com",
                                                                             "CreateContainer")
    assert d["content_json"] == {"image": "busybox"}
    assert tagged(uefi.AAEL_TAG, b"x")[:4] == b"LEAA"  # the wire bytes of the tag (shared/reference §5.3)
    assert describe(tcg2.EV_EVENT_TAG, tagged(uefi.AAEL_TAG, b"no-spaces"))[0].startswith("malformed")
    assert describe(tcg2.EV_EVENT_TAG, bytes.fromhex("ec223b8f0d0000004c696e757820696e6974726400"))[0] == \
        "Linux initrd: Linux initrd"
    assert describe(tcg2.EV_EVENT_TAG, tagged(uefi.LINUX_LOAD_OPTIONS_TAG, b"LOADED_IMAGE::LoadOptions\x00"))[0] == \
        "Linux load options: LOADED_IMAGE::LoadOptions"
    assert describe(tcg2.EV_EVENT_TAG, tagged(0xF5BC582A, "loader.conf\x00".encode("utf-16-le")))[0] == \
        "systemd-boot loader.conf: loader.conf"
    assert describe(tcg2.EV_EVENT_TAG, tagged(0x1234, b"\x00\x01\x02"))[0] == "0x00001234 (3 bytes)"
    # Linux 5.19-6.x stubs: the bare description without the TCG_PCClientTaggedEvent header
    assert describe(tcg2.EV_EVENT_TAG, b"LOADED_IMAGE::LoadOptions\x00") == (
        "LOADED_IMAGE::LoadOptions", {"text": "LOADED_IMAGE::LoadOptions", "untagged": True})


def test_platform_config_flags() -> None:
    td_payload = b"td_payload_info".ljust(16, b"\x00") + struct.pack("<I", 24) + b"root=/dev/vda1".ljust(24, b"\x00")
    assert describe(tcg2.EV_PLATFORM_CONFIG_FLAGS, td_payload) == (
        "td_payload_info: root=/dev/vda1", {"descriptor": "td_payload_info", "info_length": 24,
                                            "info_text": "root=/dev/vda1"})
    assert describe(tcg2.EV_PLATFORM_CONFIG_FLAGS, b"etc/acpi/rsdp" + bytes(43)) == ("etc/acpi/rsdp",
                                                                                      {"text": "etc/acpi/rsdp"})
    assert describe(tcg2.EV_NONHOST_INFO, b"GCE NonHostInfo\x00\x04" + bytes(15))[1] == {
        "text": "GCE NonHostInfo", "rest": "04" + "00" * 15}


# -- decoders: totality -------------------------------------------------------------------------------

EVENT_TYPES = sorted(tcg2.EVENT_TYPE_NAMES) + [0x7FFFFFFF, 0x800000FF]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(EVENT_TYPES), st.binary(max_size=300), st.sampled_from([1, 2]))
def test_describe_never_raises(event_type: int, data: bytes, uintn_size: int) -> None:
    summary, details = describe(event_type, data, uintn_size)
    # Undecodable data says "malformed" (a ParseError inside); "undecodable" would be a decoder bug.
    assert not summary.startswith("undecodable"), summary


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([
    tcg2.EV_EFI_VARIABLE_BOOT, tcg2.EV_EFI_VARIABLE_AUTHORITY, tcg2.EV_EFI_BOOT_SERVICES_APPLICATION,
    tcg2.EV_EFI_GPT_EVENT, tcg2.EV_NO_ACTION, tcg2.EV_EVENT_TAG, tcg2.EV_EFI_HANDOFF_TABLES2,
]), st.data())
def test_describe_mutated_valid_payloads(event_type: int, draw: st.DataObject) -> None:
    seeds = {
        tcg2.EV_EFI_VARIABLE_BOOT: variable(GLOBAL, "Boot0001", load_option("ubuntu", BOOT_PATH)),
        tcg2.EV_EFI_VARIABLE_AUTHORITY: variable(uefi.EFI_IMAGE_SECURITY_DATABASE, "db", guid(MS_OWNER) + FAKE_CERT),
        tcg2.EV_EFI_BOOT_SERVICES_APPLICATION: struct.pack("<QQQQ", 1, 2, 3, len(BOOT_PATH)) + BOOT_PATH,
        tcg2.EV_EFI_GPT_EVENT: b"EFI PART" + bytes(84) + struct.pack("<Q", 0),
        tcg2.EV_NO_ACTION: tcg2.encode_spec_id(tcg2.SpecIdEvent.for_algorithms([HashAlg.SHA384])),
        tcg2.EV_EVENT_TAG: tagged(uefi.AAEL_TAG, b"d o c"),
        tcg2.EV_EFI_HANDOFF_TABLES2: b"\x01T" + struct.pack("<Q", 1) + bytes(24),
    }
    blob = bytearray(seeds[event_type])
    for _ in range(draw.draw(st.integers(1, 3))):
        pos = draw.draw(st.integers(0, len(blob) - 1))
        blob[pos:pos + draw.draw(st.integers(0, 4))] = draw.draw(st.binary(max_size=4))
        if not blob:
            break
    assert not describe(event_type, bytes(blob))[0].startswith("undecodable")


PARSERS = [uefi.parse_blob, uefi.parse_blob2, uefi.parse_handoff_tables, uefi.parse_handoff_tables2,
           uefi.parse_spec_id_event, uefi.parse_sp800_155, uefi.parse_no_action, uefi.parse_tagged_event,
           uefi.parse_device_path, uefi.parse_image_load_event, uefi.parse_gpt_data, uefi.parse_signature_lists,
           uefi.parse_load_option, uefi.parse_variable_data, uefi.parse_separator]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PARSERS), st.binary(max_size=200))
def test_parsers_are_total(parse: Any, data: bytes) -> None:
    try:
        json.dumps(parse(data))
    except ParseError as e:
        assert e.format == "uefi" and e.offset is not None and e.field


_TYPES = st.sampled_from(EVENT_TYPES)


@st.composite
def legacy_events(draw: st.DrawFn) -> list[TCG2Event]:
    return [TCG2Event(draw(st.integers(0, 0xFFFFFFFF)), draw(_TYPES), ((0x0004, draw(st.binary(min_size=20,
                      max_size=20))),), draw(st.binary(max_size=80))) for _ in range(draw(st.integers(1, 6)))]


def test_legacy_log_with_a_spec_id_event02() -> None:
    """A TCG EFI 1.22 log: a leading "Spec ID Event02" (uintnSize 1: 32-bit UINTN) sets the synthesized Spec ID."""
    spec02 = b"Spec ID Event02\x00" + struct.pack("<IBBBBB", 0, 2, 1, 0, 1, 3) + b"abc"
    image = struct.pack("<QIII", 0x1000, 0x2000, 0, len(BOOT_PATH)) + BOOT_PATH
    data = (struct.pack("<II20sI", 0, tcg2.EV_NO_ACTION, bytes(20), len(spec02)) + spec02
            + struct.pack("<II20sI", 4, tcg2.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(20), len(image)) + image)
    log = tcg2.parse(data)
    assert log.legacy and log.spec_id == tcg2.SpecIdEvent(0, 2, 1, 0, 1, ((0x0004, 20),), b"abc")
    out = tcg2.to_events(log)
    assert [e.summary for e in out] == ["Spec ID Event02", BOOT_TEXT]  # UINTN fields read as 32-bit
    assert out[0].details["spec_version"] == "1.2" and not out[0].measured


@settings(max_examples=150, deadline=None)
@given(legacy_events())
def test_legacy_round_trip(events: list[TCG2Event]) -> None:
    try:
        data = tcg2.encode_legacy(events)
    except InputError:
        return  # a last all-zero record, or a first one that reads as a Spec ID Event03
    log = tcg2.parse(data)
    assert log.legacy and log.events == tuple(events) and tcg2.encode(log) == data


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), _TYPES, st.binary(max_size=120)), max_size=8),
       st.sampled_from(["tpm", "tdx", "cca"]))
def test_to_events_on_any_log(records: list[tuple[int, int, bytes]], arch: str) -> None:
    events = [TCG2Event(i, t, ((0x000C, HashAlg.SHA384.hash(d)),), d) for i, t, d in records]
    log = tcg2.parse(tcg2.encode_log(events + [TCG2Event(1, 5, (), b"end")], [HashAlg.SHA384]))
    out = tcg2.to_events(log, arch=arch)
    json.dumps([e.to_json() for e in out])
    assert [e.measured for e in out] == [ev.event_type != tcg2.EV_NO_ACTION for ev in log.events]
    for e in out:  # every digest here is H(data), so whatever says "data" must check
        assert e.data_rule != DATA or e.check(HashAlg.SHA384) in (True, None)


# -- digest rules ---------------------------------------------------------------------------------------


def ev(etype: int, data: bytes, digest_of: bytes, pcr: int = 8) -> TCG2Event:
    return TCG2Event(pcr, etype, ((0x000B, hashlib.sha256(digest_of).digest()),
                                  (0x000C, hashlib.sha384(digest_of).digest())), data)


@pytest.mark.parametrize(
    "event,rule",
    [
        (ev(tcg2.EV_IPL, b"grub_cmd: set default=0\x00", b"set default=0"), "text"),
        (ev(tcg2.EV_IPL, b"kernel_cmdline: /vmlinuz ro\x00", b"/vmlinuz ro"), "text"),
        (ev(tcg2.EV_IPL, b"grub_cmd set pager=1\x00\x7f", b"set pager=1\x00"), "text-nul"),
        (ev(tcg2.EV_IPL, b"grub_kernel_cmdline /vmlinuz ro\x00", b"/vmlinuz ro"), "text"),
        (ev(tcg2.EV_IPL, ".linux\x00".encode("utf-16-le"), b".linux\x00"), "utf8-nul"),
        (ev(tcg2.EV_IPL, "ro quiet\x00".encode("utf-16-le"), "ro quiet\x00".encode("utf-16-le")), DATA),
        (ev(tcg2.EV_IPL, b"MokList\x00", b"the MokList variable"), None),
        (ev(tcg2.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "BootOrder", b"\x01\x00"), b"\x01\x00"), "variable-data"),
        (ev(tcg2.EV_EFI_VARIABLE_BOOT, variable(GLOBAL, "BootOrder", b"\x01\x00"),
            variable(GLOBAL, "BootOrder", b"\x01\x00")), DATA),
        (ev(tcg2.EV_SEPARATOR, b"\xff" * 4, b"\xff" * 4), DATA),
        (ev(tcg2.EV_SEPARATOR, b"error info", b"\x01\x00\x00\x00"), "separator-error"),
        (ev(tcg2.EV_EFI_ACTION, b"Exit Boot Services Invocation", b"Exit Boot Services Invocation"), DATA),
        (ev(tcg2.EV_EFI_ACTION, b"Exit Boot Services Invocation", b"something else"), None),
        (ev(tcg2.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(32), bytes(32)), None),  # never derivable
    ],
)
def test_match_rule(event: TCG2Event, rule: str | None) -> None:
    assert tcg2.match_rule(event) == rule


def test_data_rule_table() -> None:
    assert uefi.data_rule(tcg2.EV_EFI_ACTION, b"x") == DATA
    assert uefi.data_rule(tcg2.EV_SEPARATOR, bytes(4)) == DATA
    assert uefi.data_rule(tcg2.EV_SEPARATOR, b"error") is None
    assert uefi.data_rule(tcg2.EV_EVENT_TAG, tagged(uefi.AAEL_TAG, b"a b c")) == DATA
    assert uefi.data_rule(tcg2.EV_EVENT_TAG, tagged(uefi.LINUX_INITRD_TAG, b"Linux initrd\x00")) is None
    for etype in (tcg2.EV_EFI_VARIABLE_BOOT, tcg2.EV_IPL, tcg2.EV_NO_ACTION, tcg2.EV_POST_CODE,
                  tcg2.EV_EFI_BOOT_SERVICES_APPLICATION, tcg2.EV_PLATFORM_CONFIG_FLAGS):
        assert uefi.data_rule(etype, b"") is None
    assert tcg2.measured_bytes("variable-data", b"short") is None
    assert tcg2.measured_bytes("text", b"no prefix") is None


# -- to_events ------------------------------------------------------------------------------------------

SPEC3 = tcg2.SpecIdEvent(algorithms=((0x000B, 32), (0x000C, 48), (0x00FE, 4)))


def test_to_events_tpm() -> None:
    a = b"Exit Boot Services Invocation"
    events = (
        TCG2Event(0, tcg2.EV_NO_ACTION, ((0x000B, bytes(32)),), b"StartupLocality\x00\x03"),
        TCG2Event(5, tcg2.EV_EFI_ACTION, ((0x000B, hashlib.sha256(a).digest()), (0x00FE, b"abcd")), a, offset=99),
        TCG2Event(9, 0x1234, (), b"\x00\x01"),
    )
    out = tcg2.to_events(tcg2.TCG2Log(SPEC3, events))
    assert [(e.source, e.seq, e.index, e.register, e.type, e.measured) for e in out] == [
        ("tcg2", 0, 0, "pcr0", "EV_NO_ACTION", False), ("tcg2", 1, 5, "pcr5", "EV_EFI_ACTION", True),
        ("tcg2", 2, 9, "pcr9", "0x00001234", True)]
    e = out[1]
    assert e.digests == ((HashAlg.SHA256, hashlib.sha256(a).digest()),)  # 0x00FE is not a hash tsmr knows
    assert (e.data, e.data_rule, e.summary, e.offset) == (a, DATA, a.decode(), 99)
    # A firmware log's missing bank is not derived, even where the data rule says H(data):
    # the log does not say what the firmware extended into that bank.
    assert e.digest(HashAlg.SHA384) is None
    assert e.check(HashAlg.SHA256) is True
    assert out[0].summary == "StartupLocality 3" and out[0].data_rule is None
    assert e.to_json() == {"seq": 1, "index": 5, "register": "pcr5", "type": "EV_EFI_ACTION",
                           "digests": {"sha256": hashlib.sha256(a).hexdigest()}, "summary": a.decode(),
                           "details": {"text": a.decode()}}
    bare = tcg2.to_events(tcg2.TCG2Log(SPEC3, events), decode=False)
    assert [(x.summary, x.details) for x in bare] == [("", None)] * 3
    assert [(x.register, x.digests, x.data_rule, x.measured) for x in bare] == \
        [(x.register, x.digests, x.data_rule, x.measured) for x in out]


def test_to_events_ccel_names() -> None:
    events = tuple(TCG2Event(i, tcg2.EV_SEPARATOR, ((0x000C, bytes(48)),), bytes(4)) for i in (0, 1, 4, 7))
    log = tcg2.TCG2Log(tcg2.SpecIdEvent(algorithms=((0x000C, 48),)), events)
    assert [(e.source, e.register) for e in ccel.to_events(log)] == [
        ("ccel", "mrtd"), ("ccel", "rtmr0"), ("ccel", "rtmr3"), ("ccel", "ccmr7")]
    assert [e.register for e in tcg2.to_events(log, arch="cca")] == ["rim", "rem0", "rem3", "ccmr7"]
    with pytest.raises(InputError, match="unknown architecture"):
        tcg2.to_events(log, arch="sev")


# -- real logs ------------------------------------------------------------------------------------------

ALL_LOGS = [(rel, "tpm") for rel in TPM_LOGS] + [(rel, "tdx") for rel in CCEL_LOGS]

# Events whose type has data rule "data" (PFP) but whose digest is not H(data): old shims measured
# their vendor certificate as a bare DER blob with 6 trailing bytes, hashing something else.
DATA_RULE_EXCEPTIONS = {
    ("go-eventlog/eventlogs/tpm/cos-85-amd-sev.bin", 23),
    ("go-eventlog/eventlogs/tpm/cos-85-amd-sev.bin", 41),
    ("go-eventlog/eventlogs/tpm/debian-10.bin", 23),
}


def _events(fixtures: Path, rel: str, arch: str, decode: bool = True) -> list[Any]:
    data = (fixtures / rel).read_bytes()
    log = ccel.parse_log(data) if arch == "tdx" else tcg2.parse(data)
    return ccel.to_events(log) if arch == "tdx" else tcg2.to_events(log, decode=decode)


@pytest.mark.parametrize("rel,arch", ALL_LOGS)
def test_real_logs_decode_without_malformed_events(fixtures: Path, rel: str, arch: str) -> None:
    for e in _events(fixtures, rel, arch):
        assert "malformed" not in (e.details or {}), (rel, e.seq, e.summary)
        assert e.summary and "\n" not in e.summary


@pytest.mark.parametrize("rel,arch", ALL_LOGS)
def test_real_logs_data_rule_holds(fixtures: Path, rel: str, arch: str) -> None:
    """Every event tagged data_rule="data" has digest == H(data) in every bank, but the known quirks."""
    for e in _events(fixtures, rel, arch, decode=False):
        if e.data_rule == DATA:
            ok = all(e.check(a) for a in e.algs)
            assert ok == ((rel, e.seq) not in DATA_RULE_EXCEPTIONS), (rel, e.seq, e.type)


# What check_digests finds for two firmware families, in full; the other fixtures are covered by the
# invariants below and their own lines in the report.
CHECK_COS85 = {
    "EV_EFI_ACTION": {"events": 3, "data": 3},
    "EV_EFI_BOOT_SERVICES_APPLICATION": {"events": 3, "not-derivable": 3},
    "EV_EFI_GPT_EVENT": {"events": 1, "data": 1},
    "EV_EFI_VARIABLE_AUTHORITY": {"events": 3, "data": 1, "unmatched": 2},
    "EV_EFI_VARIABLE_BOOT": {"events": 3, "variable-data": 3},
    "EV_EFI_VARIABLE_DRIVER_CONFIG": {"events": 5, "data": 5},
    "EV_IPL": {"events": 17, "text": 15, "not-derivable": 2},
    "EV_NONHOST_INFO": {"events": 1, "data": 1},
    "EV_SEPARATOR": {"events": 8, "data": 8},
    "EV_S_CRTM_VERSION": {"events": 1, "data": 1},
}
CHECK_ALIBABA = {
    "EV_EFI_ACTION": {"events": 3, "data": 3},
    "EV_EFI_BOOT_SERVICES_APPLICATION": {"events": 2, "not-derivable": 2},
    "EV_EFI_GPT_EVENT": {"events": 1, "data": 1},
    "EV_EFI_HANDOFF_TABLES2": {"events": 1, "not-derivable": 1},
    "EV_EFI_PLATFORM_FIRMWARE_BLOB2": {"events": 1, "not-derivable": 1},
    "EV_EFI_VARIABLE_AUTHORITY": {"events": 1, "data": 1},
    "EV_EFI_VARIABLE_BOOT": {"events": 7, "variable-data": 7},
    "EV_EFI_VARIABLE_DRIVER_CONFIG": {"events": 5, "data": 5},
    "EV_EVENT_TAG": {"events": 2, "data": 2},
    "EV_IPL": {"events": 58, "text-nul": 52, "text": 1, "not-derivable": 5},
    "EV_PLATFORM_CONFIG_FLAGS": {"events": 3, "not-derivable": 3},
    "EV_POST_CODE": {"events": 1, "not-derivable": 1},
    "EV_SEPARATOR": {"events": 2, "data": 2},
}


@pytest.mark.parametrize("rel,expected", [("go-eventlog/eventlogs/tpm/cos-85-amd-sev.bin", CHECK_COS85),
                                          ("trustee/eventlog/CCEL_AAEL_alibabacloud", CHECK_ALIBABA)])
def test_check_digests_known_answers(fixtures: Path, rel: str, expected: dict[str, dict[str, int]]) -> None:
    assert tcg2.check_digests(tcg2.parse((fixtures / rel).read_bytes())) == expected


@pytest.mark.parametrize("rel,arch", ALL_LOGS)
def test_check_digests_invariants(fixtures: Path, rel: str, arch: str) -> None:
    stats = tcg2.check_digests(tcg2.parse((fixtures / rel).read_bytes()))
    # EDK2-derived firmware (GCE, OVMF, TDVF, Alibaba, Hygon): EV_EFI_VARIABLE_BOOT = H(VariableData).
    if "EV_EFI_VARIABLE_BOOT" in stats:
        assert stats["EV_EFI_VARIABLE_BOOT"].get("variable-data") == stats["EV_EFI_VARIABLE_BOOT"]["events"]
    for name in ("EV_SEPARATOR", "EV_EFI_ACTION", "EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_EFI_GPT_EVENT"):
        if name in stats:
            assert stats[name].get("data") == stats[name]["events"], (name, stats[name])
    # No GRUB string is left unexplained: every "grub_cmd"/"kernel_cmdline" digest follows a rule.
    assert "unmatched" not in stats.get("EV_IPL", {}) or rel.endswith("CCEL_data_grub_gke")


def test_cross_check_with_trustee_decoding(fixtures: Path) -> None:
    """trustee's own decoding (trustee/eventlog/*_out.json) agrees on every event, digest and string."""
    checked = 0
    for out in sorted((fixtures / "trustee/eventlog").glob("*_out.json")):
        theirs = json.loads(out.read_text())["uefi_event_logs"]
        log = tcg2.parse((out.parent / out.name.removesuffix("_out.json")).read_bytes())
        ours = ccel.to_events(log)
        assert len(theirs) == len(ours), out.name
        for t, e in zip(theirs, ours):
            assert (t["index"], t["type_name"]) == (e.index, e.type)
            assert base64.b64decode(t["event"]) == e.data
            assert [bytes.fromhex(d["digest"]) for d in t["digests"]] == [d for _a, d in e.digests]
            assert t["digest_matches_event"] == all(a.hash(e.data) == d for a, d in e.digests)
            details = t.get("details") or {}
            if details.get("string") and e.type not in ("EV_EFI_HANDOFF_TABLES2", "EV_EFI_PLATFORM_FIRMWARE_BLOB2"):
                d = e.details
                text = f"{d['domain']} {d['operation']} {d['content']}" if d.get("tag") == "AAEL" else \
                    d.get("text") or d.get("descriptor")
                # trustee drops the leading "." of systemd-stub's UTF-16 section names, and prints
                # td-shim's "descriptor info" in one string
                assert details["string"] in (text, text.lstrip(".")) or \
                    "descriptor" in d and details["string"].split(" ")[0] == text, e.summary
            if "unicode_name" in details and "VARIABLE" in e.type:
                assert details["unicode_name"] == e.details["unicode_name"]
                # trustee prints the GUID's bytes in wire order; we print the registry form
                assert uuid.UUID(details["variable_name"]).bytes == uuid.UUID(e.details["variable_name"]).bytes_le
            for part in details.get("device_paths", []):
                if part.startswith("HD("):
                    assert part.split(",")[2].lower() in e.details["device_path"]
            checked += 1
    assert checked, "no trustee/eventlog/*_out.json in the fixtures"


