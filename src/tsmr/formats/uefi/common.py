"""Shared pieces of the UEFI event-data decoders: limits, well-known GUIDs and tags, the byte reader, text helpers."""

from __future__ import annotations

import struct
from typing import Any

from ...errors import ParseError


FORMAT = "uefi"
DATA = "data"  # == tsmr.events.DATA; not imported so that codecs stay below the unified model


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
