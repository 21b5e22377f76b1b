"""Input from outside the process: files, standard input and the environment, bounded.

:func:`read_input` is the one reader of files and standard input for the
command line and the trust-anchor loader: it stops at a size limit (default
64 MiB, ``TSMR_MAX_INPUT``), and a FIFO that nobody writes to is given up
after an idle timeout (default 60 s, ``TSMR_INPUT_TIMEOUT``) instead of
blocking forever.  Standard input itself is read with the size limit only: it
is the caller's own stream, and a slow producer is not an error there.

:func:`limits_from_env` gives the appraisal limits
(:class:`tsmr.evidence.limits.Limits`) that the ``TSMR_MAX_*`` and
``TSMR_TIME_BUDGET`` variables set.
"""

from __future__ import annotations

import os
import select
import stat
import sys
from dataclasses import fields
from typing import Any, Iterator, Mapping

from ..errors import InputError
from ..evidence.limits import ENV, Limits

__all__ = ["read_input", "iter_input", "input_limit", "input_timeout", "limits_from_env", "DEFAULT_MAX_INPUT",
           "DEFAULT_INPUT_TIMEOUT"]

MiB = 1 << 20
DEFAULT_MAX_INPUT = 64 * MiB
DEFAULT_INPUT_TIMEOUT = 60.0


def limits_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Limits:
    """Defaults, then ``TSMR_MAX_*`` / ``TSMR_TIME_BUDGET`` variables, then ``overrides`` that are not None."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    kinds = {f.name: (float if f.name == "time_budget" else int) for f in fields(Limits)}
    for name, var in ENV.items():
        raw = env.get(var)
        if raw:
            try:
                values[name] = kinds[name](raw)
            except ValueError:
                raise InputError(f"{var}={raw!r} is not a number") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Limits(**values)


# -- one bounded reader of files and standard input -------------------------------------------------

def _size(raw: str, var: str) -> int:
    text = raw.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise InputError(f"{var}={raw!r} is not a size (bytes, or with K, M, G)") from None


def input_limit() -> int:
    """The size limit of :func:`read_input`: ``TSMR_MAX_INPUT`` (bytes, or 64M, 1G...) else 64 MiB; 0: none."""
    raw = os.environ.get("TSMR_MAX_INPUT")
    return _size(raw, "TSMR_MAX_INPUT") if raw else DEFAULT_MAX_INPUT


def input_timeout() -> float:
    raw = os.environ.get("TSMR_INPUT_TIMEOUT")
    if not raw:
        return DEFAULT_INPUT_TIMEOUT
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"TSMR_INPUT_TIMEOUT={raw!r} is not a number of seconds") from None


def _label(path: str, what: str) -> str:
    name = "standard input" if path == "-" else path
    return f"{what} {name}" if what else name


def iter_input(path: str, what: str = "", *, limit: int | None = None, chunk: int = 1 << 20,
               timeout: float | None = None) -> Iterator[bytes]:
    """The bytes of ``path`` (``-``: standard input) in chunks, refusing more than ``limit`` bytes.

    ``limit`` None means :func:`input_limit`, 0 no limit.  A FIFO is opened
    without blocking and read with an idle ``timeout`` (default
    :func:`input_timeout`): no writer, or no data, for that long is an
    InputError rather than a hang.  Errors name ``what`` and say how to raise
    the limit.
    """
    limit = input_limit() if limit is None else limit
    label = _label(path, what)
    fd = -1
    fifo = False
    try:
        if path == "-":
            fd = sys.stdin.fileno()
        else:
            fifo = stat.S_ISFIFO(os.stat(path).st_mode)
            fd = os.open(path, os.O_RDONLY | (os.O_NONBLOCK if fifo else 0) | getattr(os, "O_CLOEXEC", 0))
        wait = (input_timeout() if timeout is None else timeout) if fifo else None
        seen = 0
        while True:
            if wait is not None:
                ready = select.select([fd], [], [], wait)[0]
                if not ready:
                    raise InputError(f"{label}: nothing was written to this FIFO for {wait:g} s (a writer must open "
                                     f"it and write; set TSMR_INPUT_TIMEOUT=<seconds> to wait longer)")
            try:
                block = os.read(fd, chunk if not limit else min(chunk, limit + 1 - seen))
            except BlockingIOError:
                continue
            if not block:
                return
            seen += len(block)
            if limit and seen > limit:
                raise InputError(f"{label} is larger than the input limit of {_mib(limit)}; set "
                                 f"TSMR_MAX_INPUT=<bytes> (e.g. {_suggest(limit)}) to read larger inputs")
            yield block
    except OSError as exc:
        raise InputError(f"cannot read {label}: {exc.strerror or exc}") from None
    finally:
        if fd >= 0 and path != "-":
            os.close(fd)


def read_input(path: str, what: str = "", *, limit: int | None = None, timeout: float | None = None) -> bytes:
    """The whole of ``path`` (``-``: standard input), read by :func:`iter_input` with its limits."""
    return b"".join(iter_input(path, what, limit=limit, timeout=timeout))


def _mib(n: int) -> str:
    return f"{n / MiB:g} MiB ({n:,} bytes)" if n >= MiB else f"{n:,} bytes"


def _suggest(n: int) -> str:
    return f"{max(1, (4 * n) // MiB)}M"
