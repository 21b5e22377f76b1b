"""Linux IMA runtime measurement lists: binary and ASCII readers, writers, verified replay in every bank.

Sources: Linux ``security/integrity/ima/`` (``ima_fs.c`` ima_measurements_show and
ima_ascii_measurements_show, ``ima_template_lib.c`` field init/show functions,
``ima_template.c`` builtin templates, ``ima_crypto.c`` ima_calc_field_array_hash_tfm,
``ima_queue.c``) and ``Documentation/security/IMA-templates.rst``.

Theory of operation
-------------------
An entry is (pcr, template hash, template name, template data); the data is the
template's fields, each ``u32 length || bytes``, and the hash is ``H(data)``.
Every bank of the PCR was extended with ``H_bank(data)`` (Linux >= 5.8; older
kernels padded the SHA-1 hash, ``replay(padded=True)``): a list whose template
hashes are SHA-1 replays into the SHA-256 bank a TPM quote covers, and
:func:`template_digest` gives the digest of one entry in any bank.
``IMAEntry.template_data`` always holds the bytes the hash covers.

Binary lists (``binary_runtime_measurements``, and per bank ``..._<alg>`` since
Linux 6.10, whose hashes have that bank's size): ``u32 pcr, hash, u32 name
length, name, u32 data length, data``, host-endian (LE on x86/arm64; LE
everywhere with ``ima_canonical_fmt``; ``big_endian=True`` for s390x/ppc64).
The legacy ``ima`` template (``d|n``) has no data length; ``d`` is 20 bytes
without length and ``n`` is ``u32 strlen || name`` (IMA_SHOW_BINARY_OLD_STRING_FMT;
Linux 3.13-3.14 wrote the 256-byte padded field), while its hash covers ``d``
and the name NUL-padded to IMA_EVENT_NAME_LEN_MAX+1 = 256 bytes, no lengths.

ASCII lists: ``"%2d <hash hex> <name>"`` plus ``" " + field`` per field:
``<algo>:<hex>`` (d-ng, d-modsig), ``<type>:<algo>:<hex>`` (d-ngv2), strings
as raw text, uid/gid/mode in decimal, the rest hex; empty fields leave empty
tokens.  Spaces in names were replaced by ``_`` before hashing
(ima_write_template_field_data), so the data of every builtin and ``|``-format
template is rebuilt exactly from the text.  Not rebuildable: names with a
newline (unescaped: the line breaks and parsing fails), evm-sig's
``xattrnames`` (a raw buffer printed with %s) and unknown templates: those keep
``template_data=None`` and ``text_fields``.  The text does not say the host
byte order of the lengths (``big_endian=``).

Violations (ToMToU, open-writers) log an all-zero hash and file digest, but
every bank was extended with 0xFF bytes (ima_add_template_entry; the kernel's
kexec restore also reads a zero hash so): ``IMAEntry.violation``, ``Event.fill``.

Replay (:mod:`.fold`): :func:`replay` / :class:`IMAReplayer` fold one PCR of a
list into the banks asked for (:data:`DEFAULT_BANKS` where a caller has no
better choice: SHA-1 and SHA-256), checking every template hash on the way.

The parts: :mod:`.templates` (templates, fields, limits), :mod:`.entry` (the
:class:`IMAEntry` value, building entries, per-bank template digests),
:mod:`.binary` and :mod:`.ascii` (the two list formats), :mod:`.decoder`
(detection, incremental decoding), :mod:`.unified` (unified events) and
:mod:`.fold` (replay).
"""

from __future__ import annotations

from .ascii import encode_ascii, parse_ascii
from .binary import encode_binary, guess_binary_layout, parse_binary
from .decoder import IMADecoder, detect
from .entry import IMAEntry, TemplateHashError, TemplateHashMismatch, build_entry, template_digest
from .fold import DEFAULT_BANKS, IMAReplayer, replay
from .templates import (
    FORMAT_ASCII, FORMAT_BINARY, IMA_EVENT_NAME_LEN_MAX, MAX_FIELDS, MAX_PCR, MAX_REPORTED_MISMATCHES,
    MAX_TEMPLATE_DATA_LEN, MAX_TEMPLATE_NAME_LEN, TEMPLATES, digest_field, name_field, split_fields, template_fields,
)
from .unified import to_events

__all__ = [
    "DEFAULT_BANKS", "FORMAT_ASCII", "FORMAT_BINARY", "IMA_EVENT_NAME_LEN_MAX", "MAX_FIELDS", "MAX_PCR",
    "MAX_REPORTED_MISMATCHES", "MAX_TEMPLATE_DATA_LEN", "MAX_TEMPLATE_NAME_LEN", "TEMPLATES", "IMADecoder",
    "IMAEntry", "IMAReplayer", "TemplateHashError", "TemplateHashMismatch", "build_entry", "detect", "digest_field",
    "encode_ascii", "encode_binary", "guess_binary_layout", "name_field", "parse_ascii", "parse_binary", "replay",
    "split_fields", "template_digest", "template_fields", "to_events",
]
