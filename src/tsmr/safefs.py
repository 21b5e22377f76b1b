"""Opening state and log files without following links planted by other users.

Theory of operation
-------------------
tsmr often runs as root and writes files in directories named by the user
(``$TSMR_LOG_DIR``, ``$TSMR_STATE_DIR``, a database path).  If another user
can write into such a directory, or into any directory on the way to it, that
user can put a symbolic link (or a hard link) where tsmr expects its file,
and root would then append to or overwrite whatever the link points to.

So a directory is opened component by component from ``/``, each step with
``O_NOFOLLOW`` relative to the directory opened before it, and every
directory on the way is checked before a name is looked up in it:

* it must not be writable by its group or by others, unless it is sticky
  (``/tmp``): in a sticky directory others cannot remove or rename our
  entries, but they can create their own, so an entry found there must be
  owned by root or by us;
* when writing (``strict``), it must also be owned by root or by us: the
  owner of a directory can always change it.

A symbolic link on the way is followed only if it lies in such a trusted
directory (only its owner or root could have put it there), and the walk
goes on along its target with the same checks.  Files are then opened
relative to the directory's descriptor with ``O_NOFOLLOW``; a file opened for
writing must be a regular file with one link (a hard link to another file is
refused).  Files are created ``0600``: who else may read a log or a state
file is for the administrator to grant.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import BackendError, InputError

_MAX_LINKS = 40  # as the kernel's own limit on symbolic links in one lookup
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _trusted_owner(uid: int) -> bool:
    return uid == 0 or uid == os.geteuid()


def _check_dir(fd: int, where: str, label: str, strict: bool) -> bool:
    """Refuse a directory other users could change; True if it is a shared sticky one."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    shared = bool(mode & 0o022)
    if shared and not mode & stat.S_ISVTX:
        who = "its group and others" if mode & 0o022 == 0o022 else ("its group" if mode & 0o020 else "other users")
        raise InputError(f"{label}: directory {where} (mode {mode:04o}) can be written by {who}, "
                         f"who could plant links to files tsmr must not touch; use a directory only its owner can write "
                         f"(chmod go-w {where})")
    if strict and not _trusted_owner(st.st_uid):
        raise InputError(f"{label}: directory {where} (mode {mode:04o}) is owned by uid {st.st_uid}, not by this user "
                         f"(uid {os.geteuid()}) or root; its owner could plant links to files tsmr must not touch")
    return shared


def open_dir(path: str | os.PathLike[str], *, what: str, create_mode: int | None = None, strict: bool = True) -> int:
    """A descriptor of directory ``path``, opened without trusting what other users can change.

    Missing directories are created with ``create_mode`` (None: they must exist,
    FileNotFoundError otherwise).  ``what`` names the directory in errors
    ("log directory").  Raises :class:`InputError` for an unsafe directory.
    """
    target = os.path.abspath(os.fspath(path))
    todo = [c for c in target.split("/") if c][::-1]  # a stack: the next component last
    fd = os.open("/", _DIR_FLAGS)
    where = "/"
    links = 0
    try:
        while True:
            shared = _check_dir(fd, where, f"{what} {target}", strict)
            if not todo:
                return fd
            name = todo.pop()
            if name == ".":
                continue
            try:
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                try:
                    os.mkdir(name, create_mode, dir_fd=fd)
                except FileExistsError:
                    pass  # made by a concurrent process: opened and checked below like any entry
                nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise InputError(f"{what} {target}: {os.path.join(where, name)} is not a directory") from None
                if shared and not _trusted_owner(st.st_uid):
                    raise InputError(f"{what} {target}: {os.path.join(where, name)} is a symbolic link of uid {st.st_uid} "
                                     f"in the shared directory {where}: not following it") from None
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), target) from None
                dest = os.readlink(name, dir_fd=fd)
                todo.extend([c for c in dest.split("/") if c][::-1])
                if dest.startswith("/"):
                    os.close(fd)
                    fd = -1
                    fd = os.open("/", _DIR_FLAGS)
                    where = "/"
                continue
            owner = os.fstat(nfd).st_uid
            if shared and not _trusted_owner(owner):
                os.close(nfd)
                raise InputError(f"{what} {target}: {os.path.join(where, name)} belongs to uid {owner} "
                                 f"in the shared directory {where}: not using it")
            os.close(fd)
            fd = nfd
            where = os.path.normpath(os.path.join(where, name))
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def open_file(dir_fd: int, name: str, flags: int, *, path: str | os.PathLike[str], what: str,
              mode: int = 0o600) -> tuple[int, bool]:
    """Open ``name`` in the directory ``dir_fd`` (from :func:`open_dir`) without following a link.

    Returns the descriptor and whether this call created the file.  ``path``
    is the file's full name, for messages.  OSError other than the refusals
    below (a missing file, EACCES) is raised as it is, for the caller to put
    in its own words.
    """
    writing = flags & (os.O_WRONLY | os.O_RDWR)
    base = (flags & ~os.O_CREAT & ~os.O_EXCL) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    created = False
    try:
        if flags & os.O_CREAT:
            try:
                fd = os.open(name, base | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
                created = True
            except FileExistsError:
                fd = os.open(name, base, dir_fd=dir_fd)
        else:
            fd = os.open(name, base, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BackendError(f"{what} {path} is a symbolic link: not following it (it may have been planted "
                               f"to redirect tsmr's writes; remove it)", backend="files", errno=errno.ELOOP) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BackendError(f"{what} {path} is not a regular file: not using it", backend="files", errno=errno.EINVAL)
        if writing and st.st_nlink > 1:
            raise BackendError(f"{what} {path} has {st.st_nlink} hard links: not writing it (another name for the same "
                               "file may have been planted to redirect tsmr's writes)", backend="files", errno=errno.EMLINK)
        dst = os.fstat(dir_fd)
        if dst.st_mode & 0o022 and not _trusted_owner(st.st_uid):
            raise BackendError(f"{what} {path} belongs to uid {st.st_uid} in a directory others can write: not using it",
                               backend="files", errno=errno.EPERM)
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def exists(dir_fd: int, name: str) -> bool:
    """Whether ``name`` is an entry of the directory (a link counts, and is not followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


__all__ = ["open_dir", "open_file", "exists"]
