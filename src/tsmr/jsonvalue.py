"""Parsed structures and claims as JSON values: bytes as hex, enums and dates as text."""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import Any, Collection, Mapping

__all__ = ["plain"]

_MAX_DEPTH = 16


_SCALARS = frozenset({str, int, float, bool, type(None)})
# Field names per dataclass, read once: dataclasses.fields() builds its tuple anew on every call.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def plain(obj: Any, skip: Collection[str] = (), _depth: int = 0) -> Any:
    """``obj`` as JSON values; dataclass fields named in ``skip`` are left out (raw bytes, nested reports)."""
    if _depth > _MAX_DEPTH:
        return None
    if type(obj) in _SCALARS:  # exactly these types: an enum that is also a str or an int is shown below
        return obj
    d = _depth + 1
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: plain(getattr(obj, name), skip, d) for name in _field_names(type(obj)) if name not in skip}
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if isinstance(obj, enum.Enum):
        return str(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Mapping) or hasattr(obj, "items"):
        return {str(plain(k, skip, d)): plain(v, skip, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, skip, d) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
