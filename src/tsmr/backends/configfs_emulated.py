"""An emulated configfs-tsm: the kernel's report state machine, in process or as a FUSE tree.

Programs (and :class:`tsmr.backends.configfs.ConfigfsTsm`) written for
``/sys/kernel/config/tsm`` run unchanged against the emulator when this tree
is mounted (``tsmr emulate configfs DIR``) and ``TSMR_CONFIGFS_TSM=DIR``.

The semantics follow ``drivers/virt/coco/tsm-report.c`` and configfs itself:

* ``report/`` accepts ``mkdir``/``rmdir`` of report objects; each has the
  attributes ``generation``, ``provider``, ``privlevel``, ``privlevel_floor``,
  ``service_provider``, ``service_guid``, ``service_manifest_version``
  (text) and ``inblob``, ``outblob``, ``auxblob``, ``manifestblob`` (binary),
  with the kernel's modes (0444 read-only, 0200 write-only).
* Every accepted write advances ``generation``; once the writes have caught up
  with the last read modulo 2**64 the object answers EBUSY until read.
* Text attributes are stored on each ``write``.  Binary ``inblob`` is
  buffered per open file (at most 64 bytes, else EFBIG) and committed when the
  file is closed, as configfs commits binary attributes on release.  (The
  kernel cannot report a failed commit; here ``close`` returns the error.)
* Reading a blob with no ``inblob`` is EINVAL; otherwise the report is made
  afresh when the generation moved since the last one, and the whole blob is
  captured when a file is first read (later reads of that file see the same
  bytes, like configfs' per-open buffer).

* A provider may hide attributes, as a kernel driver's ``report_attr_visible``
  does: they are not in the tree, and writing or reading them is ENOENT.

The providers are the emulator's: ``tdx_guest`` (TDX Quote v4 over the
emulated registers, :mod:`tsmr.backends.emulated_evidence.tdx`), ``arm_cca_guest`` (a
CCA token, :mod:`tsmr.backends.emulated_evidence.cca`) and ``sev_guest`` (an SEV-SNP
ATTESTATION_REPORT with its certificate table,
:mod:`tsmr.backends.emulated_evidence.snp`), all under test keys that a verifier
accepts only when told to trust them.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..errors import BackendError, InputError
from . import fuse
from .configfs import INBLOB_MAX, PRIVLEVEL_MAX, Report
from .emulated_evidence.cca import EmulatedCCASigner, emulated_cca_token
from .emulated_evidence.snp import EmulatedSNPSigner, emulated_snp_report
from .emulated_evidence.tdx import EmulatedTDXSigner, emulated_tdx_quote

__all__ = ["ReportDesc", "ReportSource", "TsmReportItem", "EmulatedTsm", "ConfigfsServer", "source_for",
           "trust_anchor", "visible", "EmulatedTdxGuest", "EmulatedCcaGuest", "EmulatedSnpGuest", "mount", "serve"]

_ULONG = 1 << 64


@dataclass
class ReportDesc:
    """What a report request carries to the provider (``struct tsm_desc``)."""

    inblob: bytes = b""
    privlevel: int = 0
    service_provider: str | None = None
    service_guid: str = "00000000-0000-0000-0000-000000000000"
    service_manifest_version: int = 0


class ReportSource(Protocol):
    """An attestation provider (``struct tsm_report_ops``).

    A provider may also have ``hidden_attributes``, the report attributes it
    does not show (see :func:`visible`); every attribute is shown otherwise.
    """

    name: str
    privlevel_floor: int

    def report_new(self, desc: ReportDesc) -> tuple[bytes, bytes | None, bytes | None]:
        """(outblob, auxblob, manifestblob) for ``desc``; raises ``OSError(errno)`` to refuse."""
        ...


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def visible(source: ReportSource, attribute: str) -> bool:
    """Whether ``source`` shows ``attribute`` (a provider lists what it hides in ``hidden_attributes``)."""
    return attribute not in getattr(source, "hidden_attributes", ())


class TsmReportItem:
    """One report object (``struct tsm_report_state``) and its attribute semantics."""

    TEXT = {"generation": 0o444, "provider": 0o444, "privlevel": 0o200, "privlevel_floor": 0o444,
            "service_provider": 0o200, "service_guid": 0o200, "service_manifest_version": 0o200}
    BINARY = {"inblob": 0o200, "outblob": 0o444, "auxblob": 0o444, "manifestblob": 0o444}

    def __init__(self, source: ReportSource) -> None:
        self.source = source
        self.desc = ReportDesc()
        self.write_generation = 0
        self.read_generation = 0
        self.blobs: tuple[bytes, bytes | None, bytes | None] | None = None

    def _advance(self) -> None:
        if self.write_generation == (self.read_generation - 1) % _ULONG:
            raise _oserror(errno.EBUSY)
        self.write_generation = (self.write_generation + 1) % _ULONG

    # -- text attributes ------------------------------------------------------------
    def show(self, name: str) -> bytes:
        if name == "generation":
            return b"%d\n" % self.write_generation
        if name == "provider":
            return self.source.name.encode() + b"\n"
        if name == "privlevel_floor":
            return b"%d\n" % self.source.privlevel_floor
        raise _oserror(errno.EIO)

    def store(self, name: str, data: bytes) -> int:
        if not visible(self.source, name):
            raise _oserror(errno.ENOENT)
        text = data.decode("ascii", errors="replace")
        if name in ("privlevel", "service_manifest_version"):
            try:
                value = int(text.strip(), 0)  # kstrtouint with base 0, one trailing newline allowed
            except ValueError:
                raise _oserror(errno.EINVAL) from None
            if value < 0 or value >= 1 << 32 or text.rstrip("\n") != text.strip():
                raise _oserror(errno.EINVAL)
            if name == "privlevel":
                if self.source.privlevel_floor > value or value > PRIVLEVEL_MAX:
                    raise _oserror(errno.EINVAL)
                self._advance()
                self.desc.privlevel = value
            else:
                self._advance()
                self.desc.service_manifest_version = value
        elif name == "service_provider":
            self._advance()
            self.desc.service_provider = text[:-1] if text.endswith("\n") else text
        elif name == "service_guid":
            self._advance()
            self.desc.service_guid = "00000000-0000-0000-0000-000000000000"
            try:
                if len(text.strip()) != 36:
                    raise ValueError
                self.desc.service_guid = str(uuid.UUID(text.strip()))
            except ValueError:
                raise _oserror(errno.EINVAL) from None
        else:
            raise _oserror(errno.EIO)
        return len(data)

    # -- binary attributes ----------------------------------------------------------
    def write_inblob(self, data: bytes) -> None:
        self._advance()
        self.desc.inblob = bytes(data)

    def read_blob(self, name: str) -> bytes:
        if not visible(self.source, name):
            raise _oserror(errno.ENOENT)
        if not self.desc.inblob:
            raise _oserror(errno.EINVAL)
        if self.blobs is None or self.read_generation != self.write_generation:
            self.blobs = None
            blobs = self.source.report_new(ReportDesc(**vars(self.desc)))
            self.blobs = blobs
            self.read_generation = self.write_generation
        out, aux, manifest = self.blobs
        return out if name == "outblob" else (aux or b"") if name == "auxblob" else (manifest or b"")


# --- the emulator's providers ------------------------------------------------------

class EmulatedTdxGuest:
    """``tdx_guest``: a TDX Quote v4 over the emulated registers, report data = inblob (64 bytes)."""

    name = "tdx_guest"
    privlevel_floor = 0

    def __init__(self, regs: Any) -> None:
        self.regs = regs

    def report_new(self, desc: ReportDesc) -> tuple[bytes, bytes | None, bytes | None]:
        if len(desc.inblob) != 64:  # the driver takes exactly TDX_REPORTDATA_LEN bytes
            raise _oserror(errno.EINVAL)
        quote, _ = emulated_tdx_quote(self.regs, desc.inblob)
        return quote, None, None


class EmulatedCcaGuest:
    """``arm_cca_guest``: a CCA token whose realm challenge is inblob (32 to 64 bytes, zero-padded)."""

    name = "arm_cca_guest"
    privlevel_floor = 0

    def __init__(self, regs: Any) -> None:
        self.regs = regs

    def report_new(self, desc: ReportDesc) -> tuple[bytes, bytes | None, bytes | None]:
        if not 32 <= len(desc.inblob) <= 64:
            raise _oserror(errno.EINVAL)
        token, _ = emulated_cca_token(self.regs, desc.inblob)
        return token, None, None


class EmulatedSnpGuest:
    """``sev_guest``: an SEV-SNP report whose REPORT_DATA is inblob (exactly 64 bytes) and VMPL the privlevel.

    As Linux's sev-guest driver in a guest that runs at VMPL0 without an SVSM:
    the privlevel floor is 0 (the VMPCK the guest uses), the SVSM attributes
    (``service_provider``, ``service_guid``, ``service_manifest_version``,
    ``manifestblob``) are not shown, and ``auxblob`` is the certificate table
    of the extended report request (VCEK, ASK, ARK).
    """

    name = "sev_guest"
    privlevel_floor = 0
    hidden_attributes = frozenset({"service_provider", "service_guid", "service_manifest_version", "manifestblob"})

    def __init__(self, regs: Any) -> None:
        self.regs = regs

    def report_new(self, desc: ReportDesc) -> tuple[bytes, bytes | None, bytes | None]:
        if len(desc.inblob) != 64:  # the driver takes exactly SNP_REPORT_USER_DATA_SIZE bytes
            raise _oserror(errno.EINVAL)
        if desc.service_provider is not None:  # no SVSM: the kernel's SVSM attestation call is EINVAL
            raise _oserror(errno.EINVAL)
        report, table, _ = emulated_snp_report(self.regs, desc.inblob, vmpl=desc.privlevel)
        return report, table, None


def source_for(regs: Any) -> ReportSource:
    """The emulated attestation provider of an emulated register set."""
    profile = getattr(regs, "profile_name", None)
    if profile == "tdx":
        return EmulatedTdxGuest(regs)
    if profile == "cca":
        return EmulatedCcaGuest(regs)
    if profile == "snp":
        return EmulatedSnpGuest(regs)
    raise InputError(f"the emulator's {profile or '?'} profile has no attestation provider "
                     "(configfs-tsm is emulated for the tdx, cca and snp profiles)")


def trust_anchor(regs: Any) -> str:
    """Where the test key that signs this profile's evidence is (to pass to a verifier).

    tdx: the test root CA (``--trust-root``); cca: the CPAK (``--cpak``); snp:
    the test ARK (``--ark``), under which the report's certificate table chains.
    """
    profile = getattr(regs, "profile_name", None)
    if profile == "cca":
        return str(EmulatedCCASigner(regs.dir / "rmm").cpak_pem)
    if profile == "snp":
        return str(EmulatedSNPSigner(regs.dir / "sp").ark_pem)
    return str(EmulatedTDXSigner(regs.dir / "qe").root_pem)


class EmulatedTsm:
    """The same request as :class:`~tsmr.backends.configfs.ConfigfsTsm`, served in process."""

    kind = "emulated-configfs"

    def __init__(self, source: ReportSource) -> None:
        self.source = source

    def report(self, inblob: bytes, *, privlevel: int | None = None, service_provider: str | None = None,
               service_guid: str | None = None, service_manifest_version: int | None = None) -> Report:
        if not 0 < len(inblob) <= INBLOB_MAX:
            raise InputError(f"inblob must be 1 to {INBLOB_MAX} bytes, got {len(inblob)}")
        item = TsmReportItem(self.source)
        try:
            if privlevel is not None:
                item.store("privlevel", str(privlevel).encode())
            if service_provider is not None:
                item.store("service_provider", service_provider.encode())
            if service_guid is not None:
                item.store("service_guid", service_guid.encode())
            if service_manifest_version is not None:
                item.store("service_manifest_version", str(service_manifest_version).encode())
            item.write_inblob(bytes(inblob))
            out, aux = item.read_blob("outblob"), item.read_blob("auxblob")
            manifest = item.read_blob("manifestblob") if visible(self.source, "manifestblob") else b""
        except OSError as exc:
            raise BackendError.from_oserror(exc, backend="emulated", register=None,
                                            action=f"{self.source.name} report") from exc
        return Report(provider=self.source.name, inblob=bytes(inblob), outblob=out, auxblob=aux or None,
                      manifestblob=manifest or None, generation=item.write_generation, privlevel=privlevel,
                      service_provider=service_provider, service_guid=service_guid)


# --- the FUSE tree -----------------------------------------------------------------

_TTL = 1
_DIR_MODE = stat.S_IFDIR | 0o755
_MKDIR_IN = struct.Struct("<II")
_FH = struct.Struct("<Q")
_ENTRY_OUT = struct.Struct("<QQQQII" + fuse._ATTR)
_ATTR_OUT = struct.Struct("<QII" + fuse._ATTR)
_MAX_NAME = 255


class _TNode:
    __slots__ = ("nodeid", "name", "parent", "mode", "item", "attr", "children", "fields")

    def __init__(self, nodeid: int, name: bytes, parent: "_TNode | None", mode: int, when: int,
                 owner: tuple[int, int], item: TsmReportItem | None = None, attr: str | None = None) -> None:
        self.nodeid, self.name, self.parent, self.mode = nodeid, name, parent, mode
        self.item, self.attr = item, attr
        self.children: dict[bytes, _TNode] | None = {} if stat.S_ISDIR(mode) else None
        size = 0 if self.children is not None else 4096
        self.fields = (nodeid, size, 0, when, when, when, 0, 0, 0, mode, 2 if self.children is not None else 1,
                       *owner, 0, 4096, 0)

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def entry(self) -> bytes:
        return _ENTRY_OUT.pack(self.nodeid, 0, _TTL, _TTL, 0, 0, *self.fields)

    def attr_out(self) -> bytes:
        return _ATTR_OUT.pack(_TTL, 0, 0, *self.fields)


class _Handle:
    __slots__ = ("node", "data", "wbuf")

    def __init__(self, node: _TNode) -> None:
        self.node = node
        self.data: bytes | None = None  # what a read sees, captured on the first read
        self.wbuf: bytearray | None = None  # inblob bytes waiting for close


class ConfigfsServer(fuse.FuseConnection):
    """``<mount>/report/<name>/...`` served for one :class:`ReportSource`."""

    def __init__(self, source: ReportSource, mountpoint: str, fd: int, *, privileged: bool) -> None:
        super().__init__(mountpoint, fd, privileged=privileged)
        self.source = source
        self._owner = (os.getuid(), os.getgid())
        self._next_id = 3
        self._next_fh = 1
        self._handles: dict[int, _Handle] = {}
        now = int(time.time())
        root = _TNode(fuse._ROOT, b"", None, _DIR_MODE, now, self._owner)
        self._report = _TNode(2, b"report", root, _DIR_MODE, now, self._owner)
        assert root.children is not None
        root.children[b"report"] = self._report
        self._nodes: dict[int, _TNode] = {fuse._ROOT: root, 2: self._report}
        none: Callable[..., None] = lambda *_: None
        empty: Callable[..., bytes] = lambda *_: b""
        self._handlers = {
            fuse.LOOKUP: self._lookup, fuse.GETATTR: self._getattr, fuse.SETATTR: self._setattr,
            fuse.OPEN: self._open, fuse.READ: self._read, fuse.WRITE: self._write, fuse.FLUSH: self._flush,
            fuse.RELEASE: self._release, fuse.OPENDIR: self._opendir, fuse.READDIR: self._readdir,
            fuse.RELEASEDIR: empty, fuse.FSYNC: empty, fuse.FSYNCDIR: empty, fuse.STATFS: self._statfs,
            fuse.ACCESS: self._access, fuse.MKDIR: self._mkdir, fuse.RMDIR: self._rmdir,
            fuse.GETXATTR: fuse._refuse(errno.ENODATA), fuse.LISTXATTR: self._listxattr,
            fuse.FORGET: none, fuse.BATCH_FORGET: none, fuse.INTERRUPT: none,
            fuse.CREATE: fuse._refuse(errno.EACCES),
        }
        for op in (fuse.MKNOD, fuse.SYMLINK, fuse.LINK, fuse.UNLINK, fuse.RENAME, fuse.RENAME2):
            self._handlers[op] = fuse._refuse(errno.EPERM)

    def _describe(self, nodeid: int) -> str:
        node = self._nodes.get(nodeid)
        parts = []
        while node is not None and node.parent is not None:
            parts.append(node.name.decode(errors="replace"))
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def _node(self, nodeid: int) -> _TNode:
        node = self._nodes.get(nodeid)
        if node is None:
            raise _oserror(errno.ENOENT)
        return node

    def _name(self, start: int, length: int) -> bytes:
        name = bytes(self._mv[start:length]).split(b"\0", 1)[0]
        if len(name) > _MAX_NAME:
            raise _oserror(errno.ENAMETOOLONG)
        return name

    # -- names ------------------------------------------------------------------------
    def _lookup(self, nodeid: int, uid: int, gid: int, length: int, unique: int) -> bytes:
        node = self._node(nodeid)
        if node.children is None:
            raise _oserror(errno.ENOTDIR)
        child = node.children.get(self._name(fuse._IN, length))
        if child is None:
            raise _oserror(errno.ENOENT)
        return child.entry()

    def _getattr(self, nodeid: int, *_: int) -> bytes:
        return self._node(nodeid).attr_out()

    def _setattr(self, nodeid: int, *_: int) -> bytes:
        node = self._node(nodeid)
        (valid,) = fuse._U32.unpack_from(self._buf, fuse._IN)
        if valid & (fuse._FATTR_MODE | fuse._FATTR_UID | fuse._FATTR_GID):
            raise _oserror(errno.EPERM)
        return node.attr_out()

    def _mkdir(self, nodeid: int, uid: int, gid: int, length: int, unique: int) -> bytes:
        parent = self._node(nodeid)
        if parent is not self._report:
            raise _oserror(errno.EPERM)  # only report/ makes items
        if not fuse._permitted(uid, gid, self._owner, parent.mode, os.W_OK | os.X_OK, True):
            raise _oserror(errno.EACCES)
        name = self._name(fuse._IN + _MKDIR_IN.size, length)
        if not name or name in (b".", b".."):
            raise _oserror(errno.EINVAL)
        assert parent.children is not None
        if name in parent.children:
            raise _oserror(errno.EEXIST)
        now = int(time.time())
        item = TsmReportItem(self.source)
        node = self._add(name, parent, _DIR_MODE, now, item, None)
        for attr, mode in (*TsmReportItem.TEXT.items(), *TsmReportItem.BINARY.items()):
            if visible(self.source, attr):
                self._add(attr.encode(), node, stat.S_IFREG | mode, now, item, attr)
        return node.entry()

    def _add(self, name: bytes, parent: _TNode, mode: int, when: int, item: TsmReportItem | None,
             attr: str | None) -> _TNode:
        node = _TNode(self._next_id, name, parent, mode, when, self._owner, item, attr)
        self._next_id += 1
        self._nodes[node.nodeid] = node
        assert parent.children is not None
        parent.children[name] = node
        return node

    def _rmdir(self, nodeid: int, uid: int, gid: int, length: int, unique: int) -> bytes:
        parent = self._node(nodeid)
        if parent.children is None:
            raise _oserror(errno.ENOTDIR)
        name = self._name(fuse._IN, length)
        node = parent.children.get(name)
        if node is None:
            raise _oserror(errno.ENOENT)
        if parent is not self._report or node.children is None:
            raise _oserror(errno.EPERM if node.children is not None else errno.ENOTDIR)
        if not fuse._permitted(uid, gid, self._owner, parent.mode, os.W_OK | os.X_OK, True):
            raise _oserror(errno.EACCES)
        del parent.children[name]
        for child in node.children.values():
            self._nodes.pop(child.nodeid, None)
        self._nodes.pop(node.nodeid, None)
        return b""

    # -- files ------------------------------------------------------------------------
    def _open(self, nodeid: int, uid: int, gid: int, *_: int) -> bytes:
        node = self._node(nodeid)
        if node.is_dir:
            raise _oserror(errno.EISDIR)
        flags = fuse._U32X2.unpack_from(self._buf, fuse._IN)[0]
        acc = flags & os.O_ACCMODE
        want_r, want_w = acc in (os.O_RDONLY, os.O_RDWR), acc in (os.O_WRONLY, os.O_RDWR)
        mask = (os.R_OK if want_r else 0) | (os.W_OK if want_w else 0)
        if not fuse._permitted(uid, gid, self._owner, node.mode, mask, False):
            raise _oserror(errno.EACCES)
        # configfs_open_file: no write without a store/write method, no read without show/read.
        if (want_w and not node.mode & 0o222) or (want_r and not node.mode & 0o444):
            raise _oserror(errno.EACCES)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(node)
        # Binary inblob needs FLUSH (its commit); read-only files do not.
        noflush = 0 if want_w and node.attr == "inblob" else fuse._FOPEN_NOFLUSH
        return fuse._OPEN_OUT.pack(fh, fuse._FOPEN_DIRECT_IO | noflush, 0)

    def _handle(self) -> _Handle:
        (fh,) = _FH.unpack_from(self._buf, fuse._IN)
        handle = self._handles.get(fh)
        if handle is None:
            raise _oserror(errno.EBADF)
        if handle.node.nodeid not in self._nodes:  # its report was removed
            raise _oserror(errno.ENODEV)
        return handle

    def _read(self, nodeid: int, *_: int) -> bytes:
        handle = self._handle()
        _, pos, count = fuse._RW_IN.unpack_from(self._buf, fuse._IN)
        if handle.data is None:
            item, attr = handle.node.item, handle.node.attr
            assert item is not None and attr is not None
            handle.data = item.read_blob(attr) if attr in TsmReportItem.BINARY else item.show(attr)
        return handle.data[pos:pos + count]

    def _write(self, nodeid: int, uid: int, gid: int, length: int, unique: int) -> bytes:
        handle = self._handle()
        _, pos, count = fuse._RW_IN.unpack_from(self._buf, fuse._IN)
        start = fuse._IN + fuse._RW_IN_SIZE
        data = bytes(self._mv[start:start + count])
        item, attr = handle.node.item, handle.node.attr
        assert item is not None and attr is not None
        if attr == "inblob":
            if pos + count > INBLOB_MAX:
                raise _oserror(errno.EFBIG)
            if handle.wbuf is None:
                handle.wbuf = bytearray()
            if len(handle.wbuf) < pos + count:
                handle.wbuf.extend(bytes(pos + count - len(handle.wbuf)))
            handle.wbuf[pos:pos + count] = data
            written = count
        else:
            written = item.store(attr, data) if count else 0
        return fuse._WRITE_REPLY.pack(fuse._WRITE_REPLY.size, 0, unique, written, 0)

    def _commit(self, handle: _Handle) -> None:
        if handle.wbuf is not None:
            data, handle.wbuf = bytes(handle.wbuf), None
            if data and handle.node.item is not None and handle.node.nodeid in self._nodes:
                handle.node.item.write_inblob(data)

    def _flush(self, nodeid: int, *_: int) -> bytes:
        (fh,) = _FH.unpack_from(self._buf, fuse._IN)
        handle = self._handles.get(fh)
        if handle is not None:
            self._commit(handle)
        return b""

    def _release(self, nodeid: int, *_: int) -> bytes:
        (fh,) = _FH.unpack_from(self._buf, fuse._IN)
        handle = self._handles.pop(fh, None)
        if handle is not None:
            try:
                self._commit(handle)
            except OSError:
                pass  # nobody is left to tell
        return b""

    # -- directories --------------------------------------------------------------------
    def _opendir(self, nodeid: int, *_: int) -> bytes:
        if not self._node(nodeid).is_dir:
            raise _oserror(errno.ENOTDIR)
        return fuse._OPEN_OUT.pack(0, 0, 0)

    def _readdir(self, nodeid: int, *_: int) -> bytes:
        node = self._node(nodeid)
        if node.children is None:
            raise _oserror(errno.ENOTDIR)
        _, pos, count = fuse._RW_IN.unpack_from(self._buf, fuse._IN)
        parent = node.parent or node
        entries = [(b".", node.nodeid, 4), (b"..", parent.nodeid, 4)]
        entries += [(c.name, c.nodeid, 4 if c.is_dir else 8) for c in node.children.values()]
        out, used = [], 0
        for i in range(pos, len(entries)):
            name, ino, dtype = entries[i]
            rec = fuse._DIRENT.pack(ino, i + 1, len(name), dtype) + name
            rec += b"\0" * (-len(rec) % 8)
            if used + len(rec) > count:
                break
            out.append(rec)
            used += len(rec)
        return b"".join(out)

    def _statfs(self, *_: int) -> bytes:
        return fuse._STATFS_OUT.pack(0, 0, 0, 0, 0, 4096, 255, 4096, 0)

    def _access(self, nodeid: int, uid: int, gid: int, *_: int) -> bytes:
        node = self._node(nodeid)
        mask = fuse._U32X2.unpack_from(self._buf, fuse._IN)[0] & 7
        if not fuse._permitted(uid, gid, self._owner, node.mode, mask, node.is_dir):
            raise _oserror(errno.EACCES)
        return b""

    def _listxattr(self, *_: int) -> bytes:
        size = fuse._U32X2.unpack_from(self._buf, fuse._IN)[0]
        return fuse._U32X2.pack(0, 0) if size == 0 else b""


def mount(source: ReportSource, mountpoint: str | os.PathLike[str], *, fsname: str = "tsmr-configfs") -> ConfigfsServer:
    """Mount an emulated configfs-tsm tree for ``source``; serve it with ``serve_forever``."""
    return fuse.start(lambda path, fd, privileged: ConfigfsServer(source, path, fd, privileged=privileged),
                      mountpoint, fsname)


def serve(source: ReportSource, mountpoint: str | os.PathLike[str], *, fsname: str = "tsmr-configfs",
          ready: Callable[[], None] | None = None) -> None:
    """Mount and serve until unmounted, SIGTERM or SIGINT (see :func:`tsmr.backends.fuse.serve`)."""
    fuse.serve(None, mountpoint, fsname=fsname, ready=ready,
               mounter=lambda mp, name: mount(source, mp, fsname=name))
