"""Writing a runtime log safely next to its register (spec/runtime-log.md section 4).

Theory of operation
-------------------
Files, per register: ``<dir>/<provider>/<register>.log`` (the log) and
``.log.intent``, which holds either the write-ahead intent of the batch in
progress or, when idle, the log's size, line count and replayed tail values
(so that an append need not replay the whole log).  The intent file keeps a
fixed, preallocated size and every record in it is one ``pwrite`` at offset 0
with its own length and checksum, so making an intent durable is a data-only
``fdatasync``.  Every writer of a register takes ``flock(LOCK_EX)`` on the log
file, then:

1. *recovers* if an intent is present (below);
2. reads the register; if the batch holds event records and the log's
   replayed tail is unknown (a new log, or one holding only ``# .EXTEND``
   directives) or differs from the register, ``SYNC <values>`` goes before
   its first event record (recording the gap, if the tail was known).  A
   directive gets no sync record: a digest-only extend changes the register
   exactly as the kernel's digest write does, and leaves an unknown tail
   unknown;
3. writes the intent (log offset, register values before, the lines) and
   ``fdatasync``s it: from here on the batch can be completed or undone;
4. extends the register once per hashed line (``H(line)`` per bank, or the
   raw bytes of a ``# .EXTEND`` directive);
5. appends the lines with one ``write`` and ``fdatasync``s the log; replaces
   the intent with the idle record of the new tail (no sync needed: a stale
   intent whose lines are already in the log at its offset is recognised as
   completed).

Recovery decides from the register value what step 4 did.  The intent holds
the values before the batch, so the values after each of its lines can be
recomputed: if the register equals the value after line *k*, the first *k*
lines were extended and are appended (*k* = 0: nothing happened, the intent
is dropped); any other value is a gap, which the next sync record records.
A partial append (killed mid-``write``) is cut back to the intent's offset
first.  So every acknowledged record is in the log, and no record is in the
log without its extend.

Group commit: ``append_many`` puts any number of records under one intent
and one pair of ``fdatasync`` calls.

Ownership: a long-running writer (the guest agent) calls :meth:`RuntimeLog.claim`,
which takes a lifetime ``flock`` on ``<log>.owner`` while holding the log's own
lock.  Every other writer checks that file under the log's lock and is refused
(``EBUSY``) while the owner lives, so nothing can slip a record between the
owner's quote and its read of the log.  The file is never removed: an unlocked
file means no owner, and the lock goes with the owner's process.  Readers and
recovery are not refused (recovery is deterministic and serialised by the
log's lock).

Files are opened relative to the log's directory, without following links
(:mod:`tsmr.safefs`): a directory others can write into is refused, since
whoever can plant a link there could make root append to any file.  The log,
intent and owner files are created 0600 (others read a log through the
agent, whose rules say who may).

A log changed under its writer: before every write, under the lock, the file
at the log's path must still be the one this object opened (same device and
inode, not unlinked), and for the owner, which is the only writer, as long
as it left it.  A log truncated or replaced while it was not open shows up
as a log shorter than the size in the idle record.  Either way the object
refuses every later write (:attr:`RuntimeLog.broken` says why): an append to
a log whose front was cut would anchor what is left of it with a fresh sync
record, and the cut would pass for an ordinary gap.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .. import safefs
from ..algorithms import HashAlg
from ..errors import BackendError, InputError, ParseError, ReplayError
from ..registers import BaseRegisterSet, Flag, RegisterSet, check_register_name
from .records import EXTEND_PREFIX, Line, check_record, classify, extend_line, format_values, parse_values, sync_line
from .replay import ReplayReport, Replayer

_INTENT = b"TSMR-INTENT"
_IDLE = b"TSMR-IDLE"
_INTENT_PREALLOC = 1 << 16
_CHUNK = 1 << 20


def default_log_dir() -> Path:
    """``$TSMR_LOG_DIR``, else ``/run/tsmr`` (registers reset at boot, and so does /run), else ``$XDG_RUNTIME_DIR/tsmr``."""
    env = os.environ.get("TSMR_LOG_DIR")
    if env:
        return Path(env)
    run = Path("/run/tsmr")
    if run.is_dir() or os.access("/run", os.W_OK):
        return run
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "tsmr"
    raise InputError("no log directory: /run/tsmr is not writable and XDG_RUNTIME_DIR is unset; set TSMR_LOG_DIR or --log-dir")


@dataclass(frozen=True)
class AppendResult:
    """What an append did: the lines written (a sync record first when the register had moved)."""

    first_line: int
    lines: tuple[str, ...]
    synced: bool  # the batch starts with a sync record
    gap: bool  # ... because the register had moved without the log (not merely a new log)
    values: dict[HashAlg, bytes]  # the register after the batch


@dataclass(frozen=True)
class RecoveryResult:
    action: str  # "completed", "redone", "discarded", "gap", "invalid-intent"
    lines_appended: int
    lines_in_intent: int


@dataclass(frozen=True)
class _Intent:
    offset: int
    old: dict[HashAlg, bytes]
    lines: list[bytes]
    blob: bytes


class RuntimeLog:
    """The runtime log of one register on one backend."""

    def __init__(
        self,
        regs: RegisterSet | BaseRegisterSet,
        register: str,
        *,
        log_dir: str | os.PathLike[str] | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        check_register_name(register)
        reg = regs.register(register)
        banks = [b for b in reg.banks if b.alg is not None and Flag.WRITABLE in b.flags and Flag.READABLE in b.flags]
        if not banks:
            raise InputError(f"register {register} cannot carry a runtime log: it has no readable, extendable hash bank")
        self.regs = regs
        self.register = register
        self.algs: tuple[HashAlg, ...] = tuple(b.alg for b in banks if b.alg is not None)
        if path is None:
            base = Path(log_dir) if log_dir is not None else default_log_dir()
            path = base / _safe_component(regs.provider) / f"{register}.log"
        self.path = Path(path)
        self.intent_path = self.path.with_name(self.path.name + ".intent")
        self._dir_fd: int | None = None
        self._dir_strict = False  # _dir_fd passed the checks for writing
        self._log_fd: int | None = None
        self._intent_fd: int | None = None
        self._created = False  # this object created the log file (an older idle record is not about it)
        self._expect: int | None = None  # the owner: the log's size as it last left it
        self._broken: str | None = None  # why this object refuses to write the log any more
        self._tail: tuple[int, int, dict[HashAlg, bytes] | None] | None = None  # (size, lines, values)
        self.owner_path = self.path.with_name(self.path.name + ".owner")
        self._owner_fd: int | None = None
        self._readonly = False
        # flock excludes other open files, not threads sharing ours.
        self._thread_lock = threading.Lock()

    # -- files -----------------------------------------------------------
    def _open_dir(self, *, strict: bool) -> int:
        """The log's directory, opened without following links others could plant (see tsmr.safefs)."""
        if self._dir_fd is not None and (self._dir_strict or not strict):
            return self._dir_fd
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        try:
            fd = safefs.open_dir(self.path.parent, what=f"log directory of {self.register}",
                                 create_mode=0o755 if strict else None, strict=strict)
        except FileNotFoundError:
            raise InputError(f"no runtime log for {self.register} at {self.path}") from None
        except OSError as exc:
            raise BackendError.from_oserror(exc, backend="log", register=self.register,
                                            action=f"open the directory of {self.path} for") from exc
        self._dir_fd, self._dir_strict = fd, strict
        return fd

    def _open(self) -> int:
        if self._log_fd is not None:
            return self._log_fd
        dfd = self._open_dir(strict=True)
        log_fd: int | None = None
        intent_fd: int | None = None
        try:
            # 0600: the agent's read rules are the way to let others read a log.
            log_fd, created = safefs.open_file(dfd, self.path.name, os.O_RDWR | os.O_APPEND | os.O_CREAT,
                                               path=self.path, what="runtime log")
            intent_fd, _ = safefs.open_file(dfd, self.intent_path.name, os.O_RDWR | os.O_CREAT,
                                            path=self.intent_path, what="intent file")
            for fd in (log_fd, intent_fd):
                _restrict_mode(fd)
            if os.fstat(intent_fd).st_size < _INTENT_PREALLOC:
                _preallocate(intent_fd, _INTENT_PREALLOC)
            if created:  # the directory entries must be durable before we rely on them
                os.fsync(dfd)
        except BaseException as exc:
            for opened in (log_fd, intent_fd):
                if opened is not None:
                    os.close(opened)
            if isinstance(exc, OSError):
                raise BackendError.from_oserror(exc, backend="log", register=self.register, action=f"open log {self.path} for") from exc
            raise
        self._log_fd, self._intent_fd, self._created = log_fd, intent_fd, created
        return log_fd

    def _open_for_reading(self) -> int:
        """Open an existing log; read-only access is enough to read and verify it."""
        if self._log_fd is not None:
            return self._log_fd
        dfd = self._open_dir(strict=False)
        if not safefs.exists(dfd, self.path.name):
            raise InputError(f"no runtime log for {self.register} at {self.path}")
        try:
            return self._open()
        except InputError:
            pass  # a directory we may read but must not write in (another user's): read only
        except BackendError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
        dfd = self._open_dir(strict=False)
        try:
            self._log_fd, _ = safefs.open_file(dfd, self.path.name, os.O_RDONLY, path=self.path, what="runtime log")
            try:
                self._intent_fd, _ = safefs.open_file(dfd, self.intent_path.name, os.O_RDONLY, path=self.intent_path,
                                                      what="intent file")
            except FileNotFoundError:
                self._intent_fd = None
        except OSError as exc:
            raise BackendError.from_oserror(exc, backend="log", register=self.register, action=f"open log {self.path} for") from exc
        self._readonly = True
        return self._log_fd

    def close(self) -> None:
        for fd in (self._log_fd, self._intent_fd, self._owner_fd, self._dir_fd):
            if fd is not None:
                os.close(fd)
        self._log_fd = self._intent_fd = self._owner_fd = self._dir_fd = None
        self._tail = None
        self._readonly = False
        self._dir_strict = False
        self._expect = None

    def __enter__(self) -> "RuntimeLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self, *, reading: bool = False) -> "_Lock":
        fd = self._open_for_reading() if reading else self._open()
        if self._readonly and not reading:
            raise BackendError(f"log {self.path} is open read-only: cannot write it", backend="log", register=self.register)
        return _Lock(fd, self._thread_lock)

    # -- ownership ----------------------------------------------------------
    @property
    def claimed(self) -> bool:
        """True while this object is the log's only writer (see :meth:`claim`)."""
        return self._owner_fd is not None

    def claim(self, owner: str = "writer") -> None:
        """Become the log's only writer until :meth:`close` (or this process ends).

        Other writers of the register's log, in this process or another, are then
        refused with ``EBUSY``.  Raises :class:`BackendError` if another writer
        owns the log already.
        """
        if self._owner_fd is not None:
            return
        with self._lock():
            self._check_file()
            assert self._dir_fd is not None
            try:
                fd, _ = safefs.open_file(self._dir_fd, self.owner_path.name, os.O_RDWR | os.O_CREAT,
                                         path=self.owner_path, what="owner file")
                _restrict_mode(fd)
            except OSError as exc:
                raise BackendError.from_oserror(exc, backend="log", register=self.register,
                                                action=f"create {self.owner_path} for") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                who = _owner_note(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
                os.close(fd)
                if who is not None:
                    raise self._owned_error("claim", who) from None
                raise BackendError.from_oserror(exc, backend="log", register=self.register,
                                                action=f"lock {self.owner_path} for") from exc
            note = f"{owner} pid {os.getpid()}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
            self._owner_fd = fd
            self._remember_size()

    def owner(self) -> str | None:
        """Who owns the log (``"<owner> pid <n>"``), or None if no process does."""
        if self._owner_fd is not None:
            return _owner_note(self._owner_fd)
        try:
            dfd = self._open_dir(strict=False)
            fd, _ = safefs.open_file(dfd, self.owner_path.name, os.O_RDONLY, path=self.owner_path, what="owner file")
        except (FileNotFoundError, InputError):
            return None  # no file, or no directory: no owner (an unsafe directory is refused by the writer)
        except OSError as exc:
            raise BackendError.from_oserror(exc, backend="log", register=self.register,
                                            action=f"open {self.owner_path} for") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return _owner_note(fd)
                raise BackendError.from_oserror(exc, backend="log", register=self.register,
                                                action=f"lock {self.owner_path} for") from exc
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _owned_error(self, verb: str, who: str) -> BackendError:
        hint = " (send records through it: tsmr record)" if who.startswith("agent") else ""
        return BackendError(
            f"log: cannot {verb} the log of {self.register}: it is owned by {who}, its only writer{hint}",
            backend="log", register=self.register, errno=errno.EBUSY)

    def _check_writer(self) -> None:
        """Under the log's lock: refuse to write if another writer owns the log."""
        if self._owner_fd is None:
            who = self.owner()
            if who is not None:
                raise self._owned_error("write", who)

    # -- the file under us ---------------------------------------------------------
    @property
    def broken(self) -> str | None:
        """Why this object refuses to write the log (it changed under it), or None."""
        return self._broken

    def _refuse(self, change: str) -> BackendError:
        """Stop writing for good: what this writer would add to a changed log proves nothing."""
        if self._broken is None:
            self._broken = (
                f"log {self.path} {change}: refusing to write to it, because records cut from it or written around "
                f"its writer would be missing from the history it proves (keep it for investigation; to start a new "
                f"log, move it aside and restart the writer: verifiers will report the history before it as missing)")
        return BackendError(self._broken, backend="log", register=self.register, errno=errno.ESTALE)

    def _check_file(self) -> None:
        """Under the log's lock, before writing: the log is still the file this object opened, and
        (for the owner, the only writer) still as long as it left it."""
        if self._broken is not None:
            raise self._refuse("")
        assert self._log_fd is not None and self._dir_fd is not None
        st = os.fstat(self._log_fd)
        try:
            now = os.stat(self.path.name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            kind = "a symbolic link" if stat.S_ISLNK(now.st_mode) else "another file"
            raise self._refuse(f"was replaced by {kind} while this writer had it open")
        if now is None or st.st_nlink == 0:
            raise self._refuse("was removed while this writer had it open")
        if self._owner_fd is None or self._expect is None or st.st_size == self._expect:
            return
        if st.st_size < self._expect:
            raise self._refuse(f"was truncated from {self._expect} to {st.st_size} bytes by another process while this "
                               "writer owned it")
        if self._read_record()[0] != _INTENT:  # (a pending batch of ours may have been partly appended)
            raise self._refuse(f"grew from {self._expect} to {st.st_size} bytes written by another process while this "
                               "writer owned it")

    def _remember_size(self) -> None:
        if self._log_fd is not None and not self._readonly:
            self._expect = os.fstat(self._log_fd).st_size

    # -- register helpers ------------------------------------------------
    def _read_register(self) -> dict[HashAlg, bytes]:
        vals = self.regs.read(self.register, self.algs)
        return {a: v for a, v in vals.items() if a is not None}

    def _digests(self, raw: bytes) -> dict[HashAlg | None, bytes]:
        if raw.startswith(EXTEND_PREFIX):
            return {HashAlg(a): v for a, v in parse_values(raw[len(EXTEND_PREFIX):], what=".EXTEND")}
        return {HashAlg(a): a.hash(raw) for a in self.algs}

    def _fold(self, values: dict[HashAlg, bytes], raw: bytes) -> dict[HashAlg, bytes]:
        out = dict(values)
        for alg, d in self._digests(raw).items():
            if alg in out:
                out[alg] = alg.extend(out[alg], d)
        return out

    # -- tail ----------------------------------------------------------------
    def _tail_state(self) -> tuple[int, int, dict[HashAlg, bytes] | None]:
        """(size, line count, replayed values) of the log, from the idle record if it is current."""
        fd = self._open()
        size = os.fstat(fd).st_size
        if self._tail is not None and self._tail[0] == size:
            return self._tail
        cached = self._idle_tail()
        if cached is not None and cached[0] == size:
            self._tail = cached
            return cached
        if cached is not None and size < cached[0] and not self._created:
            # Only a writer that keeps the log open can tell a truncation for sure; the
            # idle record still shows one done between two writers.
            raise self._refuse(f"is shorter ({size} bytes) than when it was last written ({cached[0]} bytes): it "
                               "was truncated, or replaced by a shorter file, by another process")
        report = self._replay(expected=None)
        values = report.values()
        tail = (size, report.lines, values if all(a in values for a in self.algs) else None)
        self._store_tail(tail)
        return tail

    def _idle_tail(self) -> tuple[int, int, dict[HashAlg, bytes]] | None:
        """The tail recorded in the idle record, if the intent file holds a valid one."""
        kind, body = self._read_record()
        return _parse_idle(body, self.algs) if kind == _IDLE else None

    def _store_tail(self, tail: tuple[int, int, dict[HashAlg, bytes] | None]) -> None:
        """Remember the tail, and write it as the idle record (which also clears an intent)."""
        self._tail = tail
        self._created = False
        values = format_values(tail[2]).encode() if tail[2] is not None else b"-"
        self._write_record(_IDLE, b"size %d\nlines %d\nvalues %s\n" % (tail[0], tail[1], values), sync=False)

    # -- the intent file: one checksummed record at offset 0 -------------------------
    def _write_record(self, kind: bytes, body: bytes, *, sync: bool) -> None:
        assert self._intent_fd is not None
        data = b"%s 1 %d %s\n" % (kind, len(body), hashlib.sha256(body).hexdigest().encode()) + body
        if len(data) > os.fstat(self._intent_fd).st_size:
            _preallocate(self._intent_fd, 1 << (len(data) - 1).bit_length())
        os.pwrite(self._intent_fd, data, 0)
        if sync:
            os.fdatasync(self._intent_fd)

    def _read_record(self) -> tuple[bytes | None, bytes]:
        """(kind, body) of the intent file's record; kind None if empty, b"?" if torn."""
        if self._intent_fd is None:
            return None, b""
        head = os.pread(self._intent_fd, 256, 0)
        if not head.strip(b"\0"):
            return None, b""
        line, nl, _ = head.partition(b"\n")
        try:
            kind, version, length_s, digest = line.split(b" ")
            length = int(length_s)
            if not nl or version != b"1" or kind not in (_INTENT, _IDLE) or not 0 <= length < (1 << 31):
                return b"?", b""
        except ValueError:
            return b"?", b""
        body = os.pread(self._intent_fd, length, len(line) + 1)
        if len(body) != length or hashlib.sha256(body).hexdigest().encode() != digest:
            return b"?", b""
        return kind, body

    def _replay(self, expected: Mapping[HashAlg, bytes] | None) -> ReplayReport:
        fd = self._open()
        r = Replayer(self.algs, expected=expected)
        pos = 0
        while True:
            chunk = os.pread(fd, _CHUNK, pos)
            if not chunk:
                break
            r.feed(chunk)
            pos += len(chunk)
        return r.finish()

    def _write_intent(self, offset: int, old: dict[HashAlg, bytes], lines: list[bytes]) -> None:
        blob = b"".join(line + b"\n" for line in lines)
        head = b"offset %d\nlines %d\nold %s\n" % (offset, len(lines), format_values(old).encode())
        self._write_record(_INTENT, head + blob, sync=True)

    def _read_intent(self) -> _Intent | None | str:
        kind, body = self._read_record()
        if kind is None or kind == _IDLE:
            return None
        if kind != _INTENT:
            return "invalid"
        try:
            parts = body.split(b"\n", 3)
            offset = int(parts[0].removeprefix(b"offset "))
            count = int(parts[1].removeprefix(b"lines "))
            old = dict(parse_values(parts[2].removeprefix(b"old ")))
            blob = parts[3]
            if blob.count(b"\n") != count:
                return "invalid"
            return _Intent(offset, old, blob.split(b"\n")[:-1], blob)
        except (ValueError, IndexError, ParseError):
            return "invalid"

    def _clear_intent(self) -> None:
        """Replace the intent with an idle record whose tail is unknown (recovery's exit)."""
        self._tail = None
        self._write_record(_IDLE, b"size -1\nlines 0\nvalues -\n", sync=False)

    def _recover_locked(self) -> RecoveryResult | None:
        fd = self._open() if not self._readonly else self._log_fd
        assert fd is not None
        intent = self._read_intent()
        if intent is None:
            return None
        if self._readonly:
            raise BackendError(
                f"a batch of a crashed writer is pending in {self.intent_path}; it can only be recovered by a user who may write the log",
                backend="log", register=self.register,
            )
        if isinstance(intent, str):
            # Torn before its fdatasync returned, hence before any extend.
            self._clear_intent()
            return RecoveryResult("invalid-intent", 0, 0)
        size = os.fstat(fd).st_size
        n = len(intent.lines)
        if size >= intent.offset + len(intent.blob) and os.pread(fd, len(intent.blob), intent.offset) == intent.blob:
            self._clear_intent()
            return RecoveryResult("completed", 0, n)
        if size < intent.offset:
            raise ReplayError(
                f"log {self.path} is shorter ({size} bytes) than when it was last written ({intent.offset}): it was truncated by someone"
            )
        if size > intent.offset:
            os.ftruncate(fd, intent.offset)  # a partial append
        self._tail = None
        cur = self._read_register()
        states = [intent.old]
        for raw in intent.lines:
            states.append(self._fold(states[-1], raw))
        done = next((k for k in range(n, -1, -1) if states[k] == cur), None)
        if done is None:
            self._clear_intent()
            return RecoveryResult("gap", 0, n)
        if done:
            self._append_durable(b"".join(line + b"\n" for line in intent.lines[:done]))
        self._clear_intent()
        return RecoveryResult("redone" if done else "discarded", done, n)

    def _append_durable(self, data: bytes) -> None:
        fd = self._open()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fdatasync(fd)

    # -- public operations ---------------------------------------------------------
    def recover(self) -> RecoveryResult | None:
        """Finish or undo a batch left by a crashed writer; None if there was none."""
        with self._lock():
            self._check_file()
            try:
                return self._recover_locked()
            finally:
                self._remember_size()

    def append(self, record: str) -> AppendResult:
        return self.append_many([record])

    def append_many(self, records: Sequence[str]) -> AppendResult:
        """Append event records durably, extending the register with each (group commit)."""
        raws = [check_record(r) for r in records]
        if not raws:
            raise InputError("nothing to append: no records given")
        return self._commit(raws)

    def extend_digest(self, digests: Mapping[HashAlg, bytes]) -> AppendResult:
        """A digest-only extend, logged as a ``# .EXTEND`` directive (spec section 2.4).

        The register changes exactly as by the kernel's digest write, ``H(value || digest)`` in
        each bank given: no sync record is written before a directive (the next event record
        gets one if the log's state is unknown or differs from the register)."""
        for alg, d in digests.items():
            if alg not in self.algs:
                raise InputError(f"register {self.register} has no extendable {alg} bank (banks: {', '.join(map(str, self.algs))})")
            if len(d) != alg.digest_size:
                raise InputError(f"{self.register}:{alg} takes a {alg.digest_size}-byte digest, got {len(d)} bytes")
        return self._commit([extend_line(digests)])

    def sync(self) -> AppendResult:
        """Record the register's value with a sync record if it moved since the log's last record."""
        return self._commit([])

    def _commit(self, raws: list[bytes]) -> AppendResult:
        """Write ``raws`` (event records or ``# .EXTEND`` directives) as one batch.

        A sync record goes before the batch's first event record when the log has no known state
        (a new log, or one holding only directives) or its replayed state differs from the
        register; never before a directive, which must change the register exactly as the
        kernel's digest write does (spec section 2.3).  ``raws`` empty: a sync record alone, if
        the register moved (or the log has none yet).
        """
        with self._lock():
            self._check_writer()
            self._check_file()
            self._recover_locked()
            self._remember_size()
            size, nlines, tail = self._tail_state()
            cur = self._read_register()
            lines, synced_at, gap, values, replayed = self._plan(raws, tail if size else None, cur)
            if not lines:
                return AppendResult(nlines + 1, (), False, False, cur)
            self._write_intent(size, cur, lines)
            try:
                for raw in lines:
                    self.regs.extend(self.register, self._digests(raw))
            except BaseException:
                # Leave the intent: recovery (now, or by the next writer) decides what happened.
                self._tail = None
                raise
            self._append_durable(b"".join(line + b"\n" for line in lines))
            self._remember_size()
            new_size = size + sum(len(line) + 1 for line in lines)
            self._store_tail((new_size, nlines + len(lines), replayed))
            synced = synced_at is not None
            return AppendResult(nlines + 1, tuple(line.decode() for line in lines), synced, gap, values)

    def _plan(
        self, raws: list[bytes], tail: dict[HashAlg, bytes] | None, cur: dict[HashAlg, bytes]
    ) -> tuple[list[bytes], int | None, bool, dict[HashAlg, bytes], dict[HashAlg, bytes] | None]:
        """The lines of a batch, where its sync record is (or None), whether that records a gap, the
        register after the batch, and the log's replayed state after it (None: still unknown)."""
        lines: list[bytes] = []
        synced_at: int | None = None
        gap = False
        reg: dict[HashAlg, bytes] = dict(cur)
        state = None if tail is None else dict(tail)
        for raw in raws if raws else [None]:
            directive = raw is not None and raw.startswith(EXTEND_PREFIX)
            if synced_at is None and not directive and state != reg:
                synced_at = len(lines)
                gap = state is not None
                lines.append(sync_line(reg))
                reg = self._fold(reg, lines[-1])
                state = dict(reg)
            if raw is None:
                break
            lines.append(raw)
            reg = self._fold(reg, raw)
            if state is not None:
                state = self._fold(state, raw)
        return lines, synced_at, gap, reg, state

    def _settle_for_reading(self) -> None:
        if self._recover_locked() is not None:
            # The batch was ours (an owner's is nobody else's): its size is the one to expect. A
            # read without a batch to settle remembers nothing, so it cannot bless a cut log.
            self._remember_size()

    def verify(self) -> ReplayReport:
        """Replay the log against the live register (after recovering a crashed batch)."""
        with self._lock(reading=True):
            self._settle_for_reading()
            cur = self._read_register()
            return self._replay(expected=cur)

    def read(self) -> bytes:
        """The whole log, after recovering a batch left by a crashed writer."""
        with self._lock(reading=True):
            self._settle_for_reading()
            fd = self._open_for_reading()
            size = os.fstat(fd).st_size
            return os.pread(fd, size, 0) if size else b""

    def lines(self) -> Iterator[tuple[int, Line]]:
        """Every line of the log, classified, with its 1-based number."""
        data = self.read()
        if data and not data.endswith(b"\n"):
            raise ParseError("the log ends in a partial line: it is truncated", format="tsmr-log", offset=len(data))
        for i, raw in enumerate(data.split(b"\n")[:-1], 1):
            yield i, classify(raw, lineno=i)


def _owner_note(fd: int) -> str:
    """What the owner wrote in ``<log>.owner`` (``"agent pid 123"``), read through ``fd``."""
    return os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"


def _restrict_mode(fd: int) -> None:
    """Take every right of other users, and its group's right to write, from a file of ours (older
    versions made logs 0644); whether its group may read it is left to the administrator."""
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and st.st_mode & 0o037:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o740)


def _preallocate(fd: int, size: int) -> None:
    """Give the intent file real blocks, so its overwrites are data-only for fdatasync."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:  # file systems without fallocate: a plain size is fine
        os.ftruncate(fd, max(size, os.fstat(fd).st_size))


def _parse_idle(body: bytes, algs: Sequence[HashAlg]) -> tuple[int, int, dict[HashAlg, bytes]] | None:
    try:
        size_l, lines_l, values_l, _ = body.split(b"\n", 3)
        size = int(size_l.removeprefix(b"size "))
        lines = int(lines_l.removeprefix(b"lines "))
        raw = values_l.removeprefix(b"values ")
        if size < 0 or raw == b"-":
            return None
        values = dict(parse_values(raw))
    except (ValueError, ParseError):
        return None
    if set(values) != set(algs):
        return None
    return size, lines, values


class _Lock:
    """The log's flock (other processes, other open files) and a thread lock (this object)."""

    __slots__ = ("fd", "thread_lock")

    def __init__(self, fd: int, thread_lock: threading.Lock) -> None:
        self.fd = fd
        self.thread_lock = thread_lock

    def __enter__(self) -> None:
        self.thread_lock.acquire()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self.thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()


def _safe_component(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return cleaned or "registers"


__all__ = ["RuntimeLog", "AppendResult", "RecoveryResult", "default_log_dir"]
