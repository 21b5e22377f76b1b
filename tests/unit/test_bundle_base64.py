"""The bundle's base64 reader decodes long runs of 0xFF fill by arithmetic: it must agree with the standard library."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from tsmr.evidence.bundle import b64decode_strict


def _stdlib(text: str) -> bytes | type:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        return type(exc)


def _ours(text: str) -> bytes | type:
    try:
        return b64decode_strict(text)
    except (binascii.Error, ValueError) as exc:
        return type(exc)


def test_agrees_with_the_standard_library_on_fill_and_damage() -> None:
    texts = []
    for head in (0, 2, 3000):
        for fill in (3071, 3072, 3074, 50000):
            for tail in (b"", b"\x00", b"\xff\x00", b"abc"):
                text = base64.b64encode(os.urandom(head) + b"\xff" * fill + tail).decode()
                texts += [text, text + "=", text + "====", text[:-1], "=" + text[1:], text.replace("=", "")]
                for pos in (0, len(text) // 2, len(text) - 1, len(text) - 2, len(text) - 5, len(text) - 9):
                    texts += [text[:pos] + ch + text[pos + 1:] for ch in ("=", "*", " ", "\n", "\u00e9", "/", "A")]
    assert sum(isinstance(_stdlib(t), bytes) for t in texts) > 100  # both kinds are exercised
    assert sum(not isinstance(_stdlib(t), bytes) for t in texts) > 100
    for text in texts:
        assert _ours(text) == _stdlib(text), (len(text), text[-12:])


def test_a_real_ccel(fixtures: Path) -> None:
    data = (fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes()
    assert b64decode_strict(base64.b64encode(data).decode()) == data
