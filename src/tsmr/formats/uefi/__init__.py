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

Layout: :mod:`.common` (limits, GUIDs, the byte reader, text helpers), :mod:`.simple`
(separators, blobs, handoff tables, EV_NO_ACTION, EV_EVENT_TAG), :mod:`.media` (device paths,
image load events, GPT), :mod:`.variables` (UEFI_VARIABLE_DATA) and :mod:`.describe` (the
dispatch and the data rule).
"""

from __future__ import annotations

from .common import (
    AAEL_TAG,
    DATA,
    EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE,
    EVENT_TAG_NAMES,
    FORMAT,
    GUID_NAMES,
    LINUX_INITRD_TAG,
    LINUX_LOAD_OPTIONS_TAG,
    MAX_DEVICE_PATH_NODES,
    MAX_LIST_ITEMS,
    PREVIEW_BYTES,
    SHIM_LOCK_GUID,
    SIGNATURE_TYPES,
    SUMMARY_CHARS,
    guid_str,
    looks_utf16,
    raw_details,
    text_of,
    utf16,
)
from .describe import GRUB_PREFIXES, data_rule, describe
from .media import device_path_text, parse_device_path, parse_gpt_data, parse_image_load_event
from .simple import (parse_blob, parse_blob2, parse_handoff_tables, parse_handoff_tables2, parse_no_action,
                     parse_separator, parse_sp800_155, parse_spec_id_event, parse_tagged_event)
from .variables import parse_load_option, parse_signature_lists, parse_variable_data

__all__ = [
    "AAEL_TAG",
    "DATA",
    "EFI_GLOBAL_VARIABLE",
    "EFI_IMAGE_SECURITY_DATABASE",
    "EVENT_TAG_NAMES",
    "GUID_NAMES",
    "LINUX_INITRD_TAG",
    "LINUX_LOAD_OPTIONS_TAG",
    "MAX_DEVICE_PATH_NODES",
    "MAX_LIST_ITEMS",
    "SHIM_LOCK_GUID",
    "SIGNATURE_TYPES",
    "GRUB_PREFIXES",
    "data_rule",
    "describe",
    "device_path_text",
    "guid_str",
    "looks_utf16",
    "parse_blob",
    "parse_blob2",
    "parse_device_path",
    "parse_gpt_data",
    "parse_handoff_tables",
    "parse_handoff_tables2",
    "parse_image_load_event",
    "parse_load_option",
    "parse_no_action",
    "parse_separator",
    "parse_signature_lists",
    "parse_sp800_155",
    "parse_spec_id_event",
    "parse_tagged_event",
    "parse_variable_data",
    "raw_details",
    "text_of",
    "utf16",
]
