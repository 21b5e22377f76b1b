"""Removing the runtime logs of a provider whose registers were reset (what a reboot does to ``/run``).

The emulator's ``reset`` puts its registers back to their values at boot; the logs written against the
old values would then replay to something the registers no longer hold, and every later append would
record a gap.  A real machine loses both at once (its logs live in ``/run``); :func:`remove_logs` does
the same for one provider's log directory, with the care the writer takes: the directory is opened
without following links, nothing is removed while a writer owns a log, and each log goes under its lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .. import safefs
from ..errors import BackendError, InputError
from .store import _owner_note, _safe_component, default_log_dir

_LOG_SUFFIXES = (".log", ".log.intent", ".log.owner")


def remove_logs(provider: str, log_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove every runtime log of ``provider`` (with its intent and owner files), as a reboot clears
    ``/run``: for registers that were reset, whose old logs no longer describe them.

    Returns the files removed.  Refuses, removing nothing, while a writer owns one of the logs (an agent:
    stop it first).  Each log is removed under its lock, so no writer is half-way through a batch; a writer
    that had it open refuses to write on (the log was removed under it), and the next one starts afresh.
    """
    if log_dir is None:
        try:
            log_dir = default_log_dir()
        except InputError:  # no directory a log could have been written in: none to remove
            return []
    base = Path(log_dir)
    d = base / _safe_component(provider)
    try:
        dfd = safefs.open_dir(d, what="log directory", strict=True)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BackendError.from_oserror(exc, backend="log", register=None, action=f"open the log directory {d}") from exc
    removed: list[Path] = []
    try:
        names = sorted(n for n in os.listdir(dfd) if n.endswith(_LOG_SUFFIXES))
        for name in (n for n in names if n.endswith(".log.owner")):
            who = _live_owner(dfd, name)
            if who is not None:
                raise BackendError(f"log: cannot remove the logs in {d}: {d / name.removesuffix('.owner')} is owned by "
                                   f"{who} (stop it first)", backend="log", errno=errno.EBUSY)
        for name in names:
            lock = None
            if name.endswith(".log"):
                try:
                    lock = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
                    fcntl.flock(lock, fcntl.LOCK_EX)
                except OSError:  # a link or something else planted there: removed like the rest, unread
                    if lock is not None:
                        os.close(lock)
                    lock = None
            try:
                os.unlink(name, dir_fd=dfd)
                removed.append(d / name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackendError.from_oserror(exc, backend="log", register=None, action=f"remove {d / name}") from exc
            finally:
                if lock is not None:
                    os.close(lock)
        if removed:
            os.fsync(dfd)
    finally:
        os.close(dfd)
    return removed


def _live_owner(dfd: int, name: str) -> str | None:
    """Who holds the owner file ``name`` (in the directory ``dfd``) locked, or None."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return _owner_note(fd)
        raise BackendError.from_oserror(exc, backend="log", register=None, action=f"lock the owner file {name}") from exc
    finally:
        os.close(fd)
    return None


__all__ = ["remove_logs"]
