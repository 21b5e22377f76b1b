"""Format detection and the incremental decoder of IMA measurement lists (binary or ASCII)."""

from __future__ import annotations

from ...algorithms import HashAlg
from ...errors import InputError
from .ascii import _ASCII_HEAD_RE, _parse_ascii
from .binary import _Layout, _parse_binary, guess_binary_layout
from .entry import IMAEntry
from .templates import FORMAT_ASCII, FORMAT_BINARY


def detect(data: bytes | bytearray | memoryview) -> str | None:
    """``"ima-ascii"``, ``"ima-binary"`` or None, from the first entry of ``data``."""
    try:
        head = bytes(data[:8192])
    except TypeError:
        return None
    if _ASCII_HEAD_RE.match(head):
        return FORMAT_ASCII
    return FORMAT_BINARY if guess_binary_layout(data) is not None else None


class _Stream:
    """Chunk buffering for the incremental decoder and replayer: holds at most one incomplete entry."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]
        self._need = 0  # bytes the incomplete entry at the start of self._buf needs

    @property
    def offset(self) -> int:
        """Stream offset just past the last complete entry."""
        return self._base

    def _push(self, chunk: bytes | bytearray | memoryview, final: bool) -> None:
        self._buf += chunk
        if final or len(self._buf) >= self._need:
            stop = self._consume(bytes(self._buf), final)
            del self._buf[:stop]
            self._base += stop

    def _consume(self, buf: bytes, final: bool) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class IMADecoder(_Stream):
    """Incremental decoder: :meth:`feed` chunks of a binary (or ASCII) list, get the complete entries.

    :meth:`close` returns the last entries and raises ParseError if the input
    ended inside an entry.  ``offset`` and ``count`` tell the progress.
    """

    def __init__(self, *, format: str = FORMAT_BINARY, alg: HashAlg | None = None, big_endian: bool = False,
                 check_fields: bool = True) -> None:
        if format not in (FORMAT_BINARY, FORMAT_ASCII):
            raise InputError(f"ima: format must be {FORMAT_BINARY!r} or {FORMAT_ASCII!r}, not {format!r}")
        super().__init__()
        self.format = format
        self._alg = HashAlg(alg) if alg is not None else None
        self._lay = _Layout(self._alg or HashAlg.SHA1, big_endian)
        self._check = check_fields
        self._out: list[IMAEntry] = []
        self.count = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[IMAEntry]:
        self._push(chunk, False)
        out, self._out = self._out, []
        return out

    def close(self) -> list[IMAEntry]:
        self._push(b"", True)
        out, self._out = self._out, []
        return out

    def _consume(self, buf: bytes, final: bool) -> int:
        out = self._out
        if self.format == FORMAT_BINARY:
            stop, self._need = _parse_binary(buf, self._lay, self._base, final, out, self._check)
        else:
            stop = _parse_ascii(buf, self._base, final, self._alg, self._lay.big, out)
            if out and self._alg is None:
                self._alg = out[0].alg  # the first line fixes the hash size for the rest
        self.count += len(out)
        return stop
