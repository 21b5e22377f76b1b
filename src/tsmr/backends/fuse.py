"""Serve binary attributes (the emulator's registers) as a FUSE file system.

Theory of operation
-------------------
Programs written for the Linux 6.16 tsm-mr ABI open
``/sys/class/misc/<dev>/measurements/<attr>`` and use plain ``read``/``write``
(or ``pread``/``pwrite``) on it.  To let them run unchanged against the
emulator we mount a directory whose files behave exactly like sysfs binary
attributes, and answer the kernel's requests ourselves.

We speak the FUSE kernel protocol (``include/uapi/linux/fuse.h``) directly on
``/dev/fuse`` with :mod:`struct` rather than through libfuse or a binding:
the file system is a flat directory of fixed-size files, the handful of
opcodes it needs fit in a few hundred lines, and tsmr gains no native
dependency.  Protocol 7.31 is negotiated; every structure below has its 7.31
(full) size.

Semantics copied from the kernel:

* ``OPEN`` replies ``FOPEN_DIRECT_IO``, so the page cache is bypassed and each
  ``read``/``write`` reaches us with the caller's real offset and length.
  That is what makes registers *live* (every read asks the provider afresh)
  and lets writes be judged the way ``sysfs_kf_bin_write`` judges them.
* Reads (``sysfs_kf_bin_read``): at or past the size return 0 bytes, else the
  count is clamped to ``size - pos``.
* Writes (``sysfs_kf_bin_write`` then ``tsm_mr_write``): ``pos >= size`` is
  EFBIG, the count is clamped to ``size - pos``, a zero count writes nothing,
  and anything but one whole-attribute write at offset 0 is EINVAL.  So a
  64-byte write to a 48-byte register extends with the first 48 bytes and
  returns 48.
* ``kernfs_fop_open`` refuses (EACCES) to open for writing a file without a
  write bit, or for reading one without a read bit, even for root.  The mount
  has no ``default_permissions``, so ``OPEN`` and ``ACCESS`` also apply
  ``generic_permission`` (root passes; files belong to the mounting user).
* A truncate (``echo > file`` opens with ``O_TRUNC``) or ``touch`` is accepted
  silently; chmod/chown are refused (EPERM), as the provider fixes the modes.
  Creating (EACCES) and unlinking, renaming, linking or making directories
  (EPERM) fail with the errors the VFS gives for a kernfs directory.

One thread serves requests in order, so concurrent writers are serialised
and every extend reaches the provider exactly once.  An ``OSError`` from the
provider becomes the caller's errno; any other exception is logged and
becomes EIO, and the server carries on.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, TypeVar

from ..errors import BackendError, InputError

__all__ = ["Attribute", "AttributeProvider", "FuseConnection", "FuseServer", "mount", "open_mount", "serve", "start", "unmount"]

log = logging.getLogger("tsmr.fuse")


@dataclass(frozen=True)
class Attribute:
    """One binary attribute: a file of ``size`` bytes with permission bits ``mode``."""

    name: str
    size: int
    mode: int


class AttributeProvider(Protocol):
    """What the FUSE server serves; the attribute list is fixed for a mount's lifetime."""

    def attributes(self) -> Sequence[Attribute]: ...

    def read_attribute(self, name: str) -> bytes:
        """Return exactly ``size`` bytes, the current value; may raise ``OSError``."""
        ...

    def write_attribute(self, name: str, data: bytes) -> None:
        """Accept exactly ``size`` bytes (an extend); may raise ``OSError(errno)``."""
        ...


# --- protocol constants (include/uapi/linux/fuse.h) ------------------------

_MAJOR, _MINOR = 7, 31
_MAX_WRITE = 128 * 1024
# The kernel refuses to deliver a request into a buffer smaller than the
# whole request (header + fuse_write_in + max_write payload).
_BUFSIZE = _MAX_WRITE + 8192
_TTL = 3600  # the attribute set and sizes never change during a mount

(LOOKUP, FORGET, GETATTR, SETATTR, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE,
 STATFS, RELEASE, FSYNC, GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, ACCESS,
 CREATE, INTERRUPT, DESTROY, BATCH_FORGET, RENAME2) = (
    1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 22, 23, 25, 26, 27, 28, 29, 30, 34,
    35, 36, 38, 42, 45)

_FUSE_BIG_WRITES = 1 << 5
_FOPEN_DIRECT_IO = 1 << 0
_FOPEN_NOFLUSH = 1 << 5  # sysfs has no flush; spare close() a round trip
_FATTR_MODE, _FATTR_UID, _FATTR_GID = 1 << 0, 1 << 1, 1 << 2
_ROOT = 1

_IN_HDR = struct.Struct("<IIQQIIIHH")  # fuse_in_header, 40 bytes
_IN = _IN_HDR.size
_OUT_HDR = struct.Struct("<IiQ")  # fuse_out_header
_ATTR = "QQQQQQIIIIIIIIII"  # fuse_attr, 88 bytes
_ENTRY_OUT = struct.Struct("<QQQQII" + _ATTR)
_ATTR_OUT = struct.Struct("<QII" + _ATTR)
_INIT_IN = struct.Struct("<IIII")
_INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")  # 64 bytes, the >= 7.23 layout
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")  # open_in, access_in, getxattr_in/out, write_out
_OPEN_OUT = struct.Struct("<QII")
_RW_IN = struct.Struct("<QQI")  # leading fh, offset, size of fuse_read_in / fuse_write_in
_RW_IN_SIZE = 40
_WRITE_REPLY = struct.Struct("<IiQII")  # out header + fuse_write_out, packed in one go
_STATFS_OUT = struct.Struct("<QQQQQIIII24x")
_DIRENT = struct.Struct("<QQII")

_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2
_DEVICE = "/dev/fuse"


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _refuse(code: int) -> Callable[..., bytes]:
    def handler(*_: int) -> bytes:
        raise _oserror(code)
    return handler


def _permitted(uid: int, gid: int, owner: tuple[int, int], mode: int, mask: int, is_dir: bool) -> bool:
    """generic_permission(); ``mask`` is R_OK|W_OK|X_OK bits."""
    if uid == 0:
        # CAP_DAC_OVERRIDE: everything but executing a file with no x bit at all.
        return not (mask & os.X_OK) or is_dir or bool(mode & 0o111)
    bits = mode >> 6 if uid == owner[0] else mode >> 3 if gid == owner[1] else mode
    return mask & ~bits & 7 == 0


class _Node:
    __slots__ = ("attr", "is_dir", "mode", "entry", "attr_out")

    def __init__(self, nodeid: int, attr: Attribute | None, when: int, owner: tuple[int, int]) -> None:
        self.attr = attr
        self.is_dir = attr is None
        self.mode = (stat.S_IFDIR | 0o755) if attr is None else (stat.S_IFREG | attr.mode)
        fields = (nodeid, 0 if attr is None else attr.size, 0, when, when, when, 0, 0, 0,
                  self.mode, 2 if attr is None else 1, *owner, 0, 4096, 0)
        self.entry = _ENTRY_OUT.pack(nodeid, 0, _TTL, _TTL, 0, 0, *fields)
        self.attr_out = _ATTR_OUT.pack(_TTL, 0, 0, *fields)


class FuseConnection:
    """A mounted FUSE connection: the request loop and its lifecycle; subclasses fill ``_handlers``.

    A handler is called as ``handler(nodeid, uid, gid, length, unique)`` with the
    request in ``self._buf``; it returns the reply payload, ``None`` for no reply,
    or raises ``OSError`` for an error reply.
    """

    def __init__(self, mountpoint: str, fd: int, *, privileged: bool) -> None:
        self.mountpoint = mountpoint
        self._fd = fd
        self._privileged = privileged  # unmount with umount2() rather than fusermount3
        self._buf = bytearray(_BUFSIZE)
        self._mv = memoryview(self._buf)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._deadline = 0.0
        self._mounted = True
        self._closed = False
        self._unmounter: subprocess.Popen[bytes] | None = None
        self._serving: int | None = None  # ident of the thread in serve_forever
        self._done = threading.Event()
        self._handlers: dict[int, Callable[[int, int, int, int, int], bytes | None]] = {}

    def _describe(self, nodeid: int) -> str:
        """A node's name for log messages."""
        return str(nodeid)

    # -- lifecycle ----------------------------------------------------------
    def fileno(self) -> int:
        return self._fd

    def _handshake(self) -> None:
        """Answer FUSE_INIT, after which the mount is usable."""
        while True:
            try:
                n = os.readv(self._fd, [self._buf])
                break
            except InterruptedError:
                continue
        opcode, unique = _IN_HDR.unpack_from(self._buf)[1:3]
        if opcode != INIT or n < _IN + _INIT_IN.size:
            raise BackendError(f"fuse: expected FUSE_INIT from the kernel, got opcode {opcode}", backend="fuse")
        major, minor, max_readahead, flags = _INIT_IN.unpack_from(self._buf, _IN)
        if major != _MAJOR or minor < _MINOR:
            self._send(_OUT_HDR.pack(16, -errno.EPROTO, unique))
            raise BackendError(f"fuse: the kernel speaks FUSE {major}.{minor}, tsmr needs {_MAJOR}.{_MINOR} or later",
                               backend="fuse")
        out = _INIT_OUT.pack(_MAJOR, _MINOR, max_readahead, flags & _FUSE_BIG_WRITES, 16, 12,
                             _MAX_WRITE, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        self._send(_OUT_HDR.pack(16 + len(out), 0, unique) + out)

    def serve_forever(self) -> None:
        """Answer requests until unmounted, DESTROY or :meth:`stop`; then unmount and close."""
        fd, buf, handlers = self._fd, [self._buf], self._handlers
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        self._serving = threading.get_ident()
        try:
            while not self._closed:
                if self._stopping:
                    # Keep answering until fusermount3 -u is done, in case it looks at the mount point.
                    p = self._unmounter
                    if p is None or p.poll() is not None or time.monotonic() > self._deadline:
                        break
                try:
                    os.readv(fd, buf)
                except BlockingIOError:
                    # Idle: wait for a request or for stop(); poll only when there is no work.
                    poller.poll(50 if self._stopping else None)
                    try:
                        os.read(self._wake_r, 64)
                    except BlockingIOError:
                        pass
                    continue
                except InterruptedError:
                    continue
                except OSError as e:
                    if e.errno == errno.ENOENT:  # the request was interrupted before we read it
                        continue
                    if e.errno == errno.ENODEV:  # unmounted, or the connection was aborted
                        break
                    raise
                length, opcode, unique, nodeid, uid, gid = _IN_HDR.unpack_from(self._buf)[:6]
                handler = handlers.get(opcode)
                if handler is None:
                    if opcode == DESTROY:
                        self._send(_OUT_HDR.pack(16, 0, unique))
                        break
                    self._send(_OUT_HDR.pack(16, -errno.ENOSYS, unique))
                    continue
                try:
                    out = handler(nodeid, uid, gid, length, unique)
                except OSError as e:
                    code = e.errno if isinstance(e.errno, int) and 0 < e.errno < 512 else errno.EIO
                    self._send(_OUT_HDR.pack(16, -code, unique))
                    continue
                except Exception:
                    log.exception("fuse: opcode %d on %s failed; answering EIO", opcode, self._describe(nodeid))
                    self._send(_OUT_HDR.pack(16, -errno.EIO, unique))
                    continue
                if out is not None:
                    self._send(out if opcode == WRITE else _OUT_HDR.pack(16 + len(out), 0, unique) + out)
        finally:
            self._serving = None
            self.close()
            self._done.set()

    @property
    def wakeup_fd(self) -> int:
        """The write end of the pipe that wakes :meth:`serve_forever` (non-blocking; for ``signal.set_wakeup_fd``)."""
        return self._wake_w

    def stop(self) -> None:
        """Unmount and make :meth:`serve_forever` return; safe from signal handlers and other threads."""
        if self._stopping:
            return
        self._stopping = True
        self._deadline = time.monotonic() + 5
        if self._mounted:
            try:
                # Not waited for: were fusermount3 to look at the mount, only this loop could answer.
                self._unmounter = _detach(self.mountpoint, self._privileged, wait=False)
                self._mounted = False
            except (OSError, BackendError) as e:  # close() tries again, after releasing the device
                log.warning("fuse: could not unmount %s: %s", self.mountpoint, e)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    unmount = stop

    def close(self) -> None:
        """Stop serving, release the device (pending requests get ENOTCONN) and unmount."""
        if self._closed:
            return
        if self._serving is not None and self._serving != threading.get_ident():
            self.stop()  # the serving thread owns the descriptors; let it close them
            self._done.wait(10)
            return
        self._closed = True
        # The device first: an aborted connection answers ENOTCONN, so unmounting cannot block on us.
        for fd in (self._fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._mounted:
            self._mounted = False
            try:
                _detach(self.mountpoint, self._privileged, wait=True)
            except (OSError, subprocess.SubprocessError, BackendError) as e:
                log.warning("fuse: could not unmount %s: %s", self.mountpoint, e)
        if self._unmounter is not None:
            try:
                self._unmounter.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "FuseConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    def _send(self, data: bytes) -> None:
        try:
            os.write(self._fd, data)
        except OSError as e:
            if e.errno == errno.ENODEV:
                self._stopping = True
            elif e.errno != errno.ENOENT:  # ENOENT: the caller was interrupted and the request is gone
                # A reply the kernel rejects would leave the caller hanging: answer EIO instead.
                log.error("fuse: the kernel refused a %d-byte reply: %s", len(data), e)
                if len(data) > _OUT_HDR.size:
                    self._send(_OUT_HDR.pack(16, -errno.EIO, _OUT_HDR.unpack_from(data)[2]))

class FuseServer(FuseConnection):
    """A mounted FUSE connection serving one provider's flat attribute directory; made by :func:`mount`."""

    def __init__(self, provider: AttributeProvider, attrs: Sequence[Attribute], mountpoint: str, fd: int,
                 *, privileged: bool) -> None:
        super().__init__(mountpoint, fd, privileged=privileged)
        self.provider = provider
        now = int(time.time())
        # Files belong to whoever mounted: root for mount(2); a fusermount3 mount
        # without allow_other is reachable by that user only anyway.
        self._owner = owner = (os.getuid(), os.getgid())
        self._nodes: dict[int, _Node] = {_ROOT: _Node(_ROOT, None, now, owner)}
        self._by_name: dict[bytes, int] = {}
        for i, a in enumerate(attrs):
            nodeid = i + 2
            self._nodes[nodeid] = _Node(nodeid, a, now, owner)
            self._by_name[a.name.encode()] = nodeid
        # Directory records precomputed; a READDIR offset is the index of the next record.
        names = [(b".", _ROOT, 4), (b"..", _ROOT, 4)] + [(a.name.encode(), i + 2, 8) for i, a in enumerate(attrs)]
        self._dirents = []
        for i, (name, ino, dtype) in enumerate(names):
            rec = _DIRENT.pack(ino, i + 1, len(name), dtype) + name
            self._dirents.append(rec + b"\0" * (-len(rec) % 8))
        self._handlers = {
            LOOKUP: self._lookup, GETATTR: self._getattr, SETATTR: self._setattr, OPEN: self._open,
            READ: self._read, WRITE: self._write, STATFS: self._statfs, OPENDIR: self._opendir,
            READDIR: self._readdir, ACCESS: self._access, GETXATTR: _refuse(errno.ENODATA),
            LISTXATTR: self._listxattr,
        }
        for ops, handler in (((FLUSH, RELEASE, RELEASEDIR, FSYNC, FSYNCDIR), lambda *_: b""),
                             # No reply: nodes are static, and one thread has nothing in flight to interrupt.
                             ((FORGET, BATCH_FORGET, INTERRUPT), lambda *_: None),
                             ((MKNOD, MKDIR, SYMLINK, LINK, UNLINK, RMDIR, RENAME, RENAME2), _refuse(errno.EPERM)),
                             ((CREATE,), _refuse(errno.EACCES))):
            self._handlers.update(dict.fromkeys(ops, handler))

    def _describe(self, nodeid: int) -> str:
        node = self._nodes.get(nodeid)
        return repr(node.attr.name) if node and node.attr else "/"

    # -- request handlers: (nodeid, uid, gid, length, unique) -> payload ----
    def _node(self, nodeid: int) -> _Node:
        node = self._nodes.get(nodeid)
        if node is None:
            raise _oserror(errno.ENOENT)
        return node

    def _file(self, nodeid: int) -> Attribute:
        attr = self._node(nodeid).attr
        if attr is None:
            raise _oserror(errno.EISDIR)
        return attr

    def _lookup(self, nodeid: int, uid: int, gid: int, length: int, unique: int) -> bytes:
        name = bytes(self._mv[_IN:length]).rstrip(b"\0")
        child = self._by_name.get(name) if nodeid == _ROOT else None
        if child is None:
            raise _oserror(errno.ENOENT if nodeid == _ROOT else errno.ENOTDIR)
        return self._nodes[child].entry

    def _getattr(self, nodeid: int, *_: int) -> bytes:
        return self._node(nodeid).attr_out

    def _setattr(self, nodeid: int, *_: int) -> bytes:
        node = self._node(nodeid)
        (valid,) = _U32.unpack_from(self._buf, _IN)
        if valid & (_FATTR_MODE | _FATTR_UID | _FATTR_GID):
            raise _oserror(errno.EPERM)
        # A size (truncate) or time change is accepted and ignored, as kernfs does.
        return node.attr_out

    def _open(self, nodeid: int, uid: int, gid: int, *_: int) -> bytes:
        node = self._node(nodeid)
        if node.attr is None:
            raise _oserror(errno.EISDIR)
        flags = _U32X2.unpack_from(self._buf, _IN)[0]
        acc = flags & os.O_ACCMODE
        want_r, want_w = acc in (os.O_RDONLY, os.O_RDWR), acc in (os.O_WRONLY, os.O_RDWR)
        mask = (os.R_OK if want_r else 0) | (os.W_OK if want_w else 0)
        if not _permitted(uid, gid, self._owner, node.mode, mask, False):
            raise _oserror(errno.EACCES)
        # kernfs_fop_open: refused without the matching bit, whoever asks.
        if (want_w and not node.mode & 0o222) or (want_r and not node.mode & 0o444):
            raise _oserror(errno.EACCES)
        return _OPEN_OUT.pack(nodeid, _FOPEN_DIRECT_IO | _FOPEN_NOFLUSH, 0)

    def _read(self, nodeid: int, *_: int) -> bytes:
        attr = self._file(nodeid)
        _, pos, count = _RW_IN.unpack_from(self._buf, _IN)
        size = attr.size
        if pos >= size:
            return b""
        value = self.provider.read_attribute(attr.name)
        if len(value) != size:
            raise RuntimeError(f"provider returned {len(value)} bytes for {attr.name!r}, not {size}")
        return bytes(value[pos:pos + min(count, size - pos)])

    def _write(self, nodeid: int, uid: int, gid: int, length: int, unique: int) -> bytes:
        attr = self._file(nodeid)
        _, pos, count = _RW_IN.unpack_from(self._buf, _IN)
        size = attr.size
        if pos >= size:
            raise _oserror(errno.EFBIG)
        count = min(count, size - pos)
        if count:
            if pos != 0 or count != size:  # tsm_mr_write: partial writes are not supported
                raise _oserror(errno.EINVAL)
            start = _IN + _RW_IN_SIZE
            self.provider.write_attribute(attr.name, bytes(self._mv[start:start + size]))
        return _WRITE_REPLY.pack(_WRITE_REPLY.size, 0, unique, count, 0)

    def _statfs(self, *_: int) -> bytes:
        return _STATFS_OUT.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0)

    def _opendir(self, nodeid: int, *_: int) -> bytes:
        if not self._node(nodeid).is_dir:
            raise _oserror(errno.ENOTDIR)
        return _OPEN_OUT.pack(0, 0, 0)

    def _readdir(self, nodeid: int, *_: int) -> bytes:
        if not self._node(nodeid).is_dir:
            raise _oserror(errno.ENOTDIR)
        _, pos, count = _RW_IN.unpack_from(self._buf, _IN)
        out, used = [], 0
        for rec in self._dirents[pos:]:
            if used + len(rec) > count:
                break
            out.append(rec)
            used += len(rec)
        return b"".join(out)

    def _access(self, nodeid: int, uid: int, gid: int, *_: int) -> bytes:
        node = self._node(nodeid)
        mask = _U32X2.unpack_from(self._buf, _IN)[0] & 7
        if not _permitted(uid, gid, self._owner, node.mode, mask, node.is_dir):
            raise _oserror(errno.EACCES)
        return b""

    def _listxattr(self, *_: int) -> bytes:
        size = _U32X2.unpack_from(self._buf, _IN)[0]
        return _U32X2.pack(0, 0) if size == 0 else b""  # the size of, or, an empty list


# --- mounting ----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _umount2(path: str) -> bool:
    """Lazily detach ``path``; False if nothing was mounted there."""
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):
        return False
    raise BackendError.from_oserror(_oserror(code), backend="fuse", register=None, action=f"unmounting {path}")


def _detach(path: str, privileged: bool, *, wait: bool) -> subprocess.Popen[bytes] | None:
    if privileged:
        _umount2(path)
        return None
    proc = subprocess.Popen(["fusermount3", "-u", "-z", "--", path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if wait:
        proc.wait(10)
        return None
    return proc


def _check_attributes(attrs: Sequence[Attribute]) -> list[Attribute]:
    seen: set[str] = set()
    for a in attrs:
        raw = a.name.encode()
        if not raw or a.name in (".", "..") or b"/" in raw or b"\0" in raw or len(raw) > 255 or a.name in seen:
            raise InputError(f"fuse: cannot serve an attribute named {a.name!r}")
        if a.size < 1 or a.mode & ~0o777:
            raise InputError(f"fuse: attribute {a.name!r} has size {a.size} and mode {a.mode:#o}")
        seen.add(a.name)
    return list(attrs)


def _mount_syscall(fd: int, mountpoint: str, fsname: str) -> int:
    opts = f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},allow_other"
    if _libc.mount(os.fsencode(fsname), os.fsencode(mountpoint), b"fuse.tsmr",
                   _MS_NOSUID | _MS_NODEV, opts.encode()) == 0:
        return 0
    return ctypes.get_errno()


def _mount_fusermount(mountpoint: str, fsname: str) -> int:
    """Have the setuid fusermount3 mount, and receive the /dev/fuse fd it opened."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        try:
            proc = subprocess.run(["fusermount3", "-o", f"fsname={fsname},subtype=tsmr", "--", mountpoint],
                                  env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            raise BackendError(f"fuse: cannot run fusermount3 to mount {mountpoint}: {e}", backend="fuse") from e
        theirs.close()  # so that recv sees EOF if fusermount3 sent nothing
        _, fds, _, _ = socket.recv_fds(ours, 1, 1, socket.MSG_CMSG_CLOEXEC)
        if not fds:
            why = proc.stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            raise BackendError(f"fuse: fusermount3 could not mount {mountpoint}: {why}",
                               backend="fuse", errno=errno.EPERM)
        return fds[0]
    finally:
        ours.close()
        theirs.close()


def open_mount(mountpoint: str | os.PathLike[str], fsname: str) -> tuple[str, int, bool]:
    """Mount an empty FUSE file system on ``mountpoint``: (resolved path, /dev/fuse fd, privileged).

    The caller must answer FUSE_INIT on the fd (see :meth:`FuseConnection._handshake`).
    """
    if not fsname or any(c in fsname for c in ", \t\n"):
        raise InputError(f"fuse: unusable file system name {fsname!r}")
    path = os.path.realpath(os.fspath(mountpoint))
    if not os.path.exists(_DEVICE):
        raise BackendError(f"fuse: {_DEVICE} is missing (load the fuse module or give the container the device)",
                           backend="fuse", errno=errno.ENODEV)
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise BackendError(f"fuse: mount point {path} is not a directory", backend="fuse", errno=errno.ENOTDIR)
    except OSError as e:
        hint = "a dead FUSE mount is there; unmount it first" if e.errno == errno.ENOTCONN else ""
        raise BackendError.from_oserror(e, backend="fuse", register=None, action=f"using mount point {path}",
                                        hint=hint) from e
    fd, privileged, code = -1, False, errno.EPERM
    if os.geteuid() == 0:
        try:
            fd = os.open(_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise BackendError.from_oserror(e, backend="fuse", register=None, action=f"opening {_DEVICE}") from e
        code = _mount_syscall(fd, path, fsname)
        if code == 0:
            privileged = True
        else:
            os.close(fd)
            fd = -1
            if code != errno.EPERM:  # only a missing capability is worth trying fusermount3 for
                raise BackendError.from_oserror(_oserror(code), backend="fuse", register=None, action=f"mounting {path}")
    if fd < 0:
        try:
            fd = _mount_fusermount(path, fsname)
        except BackendError as e:
            raise BackendError(f"fuse: not permitted to mount {path} (mount(2) needs CAP_SYS_ADMIN and "
                               f"fusermount3 failed: {e})", backend="fuse", errno=errno.EPERM) from e
    return path, fd, privileged


C = TypeVar("C", bound=FuseConnection)


def start(factory: Callable[[str, int, bool], C], mountpoint: str | os.PathLike[str], fsname: str) -> C:
    """Mount, build the connection with ``factory(path, fd, privileged)`` and complete FUSE_INIT."""
    path, fd, privileged = open_mount(mountpoint, fsname)
    try:
        server = factory(path, fd, privileged)
    except BaseException:
        os.close(fd)
        _detach(path, privileged, wait=True)
        raise
    try:
        server._handshake()
        # From now on an empty queue is EAGAIN, so that the loop can also wait for stop().
        os.set_blocking(fd, False)
    except BaseException:
        server.close()
        raise
    return server


def mount(provider: AttributeProvider, mountpoint: str | os.PathLike[str], *, fsname: str = "tsmr") -> FuseServer:
    """Mount ``provider`` on ``mountpoint`` and complete FUSE_INIT.

    The mount is usable when this returns, but only answered once
    :meth:`FuseServer.serve_forever` runs: do not touch it from the serving
    thread before that.
    """
    attrs = _check_attributes(provider.attributes())
    return start(lambda path, fd, privileged: FuseServer(provider, attrs, path, fd, privileged=privileged),
                 mountpoint, fsname)


def serve(provider: AttributeProvider | None, mountpoint: str | os.PathLike[str], *, fsname: str = "tsmr",
          ready: Callable[[], None] | None = None,
          mounter: Callable[[str | os.PathLike[str], str], FuseConnection] | None = None) -> None:
    """Mount, call ``ready()`` once usable, and serve until unmounted, SIGTERM or SIGINT.

    ``ready`` runs in the serving thread before requests are answered, so it
    must not access the mount itself.  The mount is always removed on return.
    ``mounter(mountpoint, fsname)`` serves something other than a flat attribute
    directory (``provider`` is then unused).
    """
    holder: list[FuseConnection] = []
    requested: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        requested.append(signum)
        if holder:
            holder[0].stop()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        if mounter is not None:
            server: FuseConnection = mounter(mountpoint, fsname)
        elif provider is not None:
            server = mount(provider, mountpoint, fsname=fsname)
        else:
            raise InputError("fuse: nothing to serve")
        holder.append(server)
        # The self-pipe trick: a signal that lands after the serving loop's last check but before
        # poll() blocks would otherwise leave poll() asleep, and the Python handler never run (seen
        # under load). With the wake pipe as the wakeup fd, the C-level handler writes to it too.
        previous_wakeup = signal.set_wakeup_fd(server.wakeup_fd, warn_on_full_buffer=False) if previous else None
        try:
            if requested:
                server.stop()
            elif ready is not None:
                ready()
            server.serve_forever()
        finally:
            if previous_wakeup is not None:
                signal.set_wakeup_fd(previous_wakeup)  # before the pipe is closed
            server.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fuse_mount_type(path: str) -> str | None:
    """The file system type mounted at ``path`` per mountinfo (without touching the mount)."""
    found = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            sep = fields.index(b"-")
            target = os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4]))
            if target == path:
                found = fields[sep + 1].decode()  # the last (topmost) mount wins
    return found


def unmount(mountpoint: str | os.PathLike[str], *, missing_ok: bool = False) -> bool:
    """Lazily unmount the FUSE file system at ``mountpoint``; the server then exits.

    Returns False if nothing was mounted there and ``missing_ok``; raises
    :class:`BackendError` if nothing was, or something other than FUSE is.
    """
    raw = os.path.abspath(os.fspath(mountpoint))
    # Resolve symlinks above the mount point only: stat'ing it could hang on a stuck server.
    path = os.path.join(os.path.realpath(os.path.dirname(raw)), os.path.basename(raw))
    fstype = _fuse_mount_type(path)
    if fstype is None:
        if missing_ok:
            return False
        raise BackendError(f"fuse: nothing is mounted at {path}", backend="fuse", errno=errno.EINVAL)
    if not fstype.startswith("fuse"):
        raise BackendError(f"fuse: {path} is a {fstype} mount, not a FUSE one", backend="fuse", errno=errno.EINVAL)
    if os.geteuid() == 0:
        try:
            if _umount2(path):
                return True
            raise BackendError(f"fuse: nothing is mounted at {path}", backend="fuse", errno=errno.EINVAL)
        except BackendError as e:
            if e.errno != errno.EPERM:
                raise
    proc = subprocess.run(["fusermount3", "-u", "-z", "--", path], stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise BackendError(f"fuse: fusermount3 could not unmount {path}: {why}", backend="fuse")
    return True
