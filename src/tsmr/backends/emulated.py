"""The built-in register emulator: TDX, Arm CCA, AMD SEV-SNP, TPM and the kernel sample.

Theory of operation
-------------------
The registers of one profile live in a *state directory*
(``$TSMR_STATE_DIR/emulator/<profile>/``, default
``$XDG_STATE_HOME/tsmr`` or ``~/.local/state/tsmr``) so that every process
of the user, and the FUSE server, sees one machine:

``config.json``  profile name and options (e.g. the CCA hash algorithm)
``initial``      the backing buffer at init, restored by ``reset``
``state``        header (magic, generation, sequence number, journal length)
                 followed by the backing buffer
``journal``      every extend ever applied, in order: (seq, attribute, digest)
``lock``         ``flock`` target serialising every access
``boot``         optional: the extends a measured boot of an image applies at every
                 start (``tsmr emulate init --firmware``), re-applied by ``reset``
``ccel``         optional: the firmware's event log (CCEL) of that boot

An extend takes the exclusive lock, appends its record(s) to the journal
with one ``write``, then rewrites the state (header and buffer) with one
``pwrite``.  The journal is a redo log: a process killed between the two
leaves records past the journal length recorded in the state; the next
access (read or write) applies them and moves on, so an acknowledged extend
is never lost and a half-written record (killed mid-``write``) is cut off.
Nothing is fsynced: like the registers it imitates, the emulator survives any
process crash but not a power cut.

The journal is also the emulator's audit trail: ``journal()`` yields every
extend in the order it was applied, which is what a concurrency test replays.

The state directory is created 0700 and its files 0600, and every file is
opened relative to the directory's descriptor without following links
(:mod:`tsmr.safefs`): a state directory others can write into is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .. import safefs
from ..algorithms import HashAlg
from ..errors import BackendError, InputError
from ..registers import Bank, BaseRegisterSet, Flag, Register, sort_banks
from .profiles import PROFILES, AttrSpec, Profile, build_profile

_MAGIC = b"TSMRST01"
_HEADER = struct.Struct("<8sQQQ")  # magic, generation, seq, journal length
_REC_HEAD = struct.Struct("<QHH")  # seq, attribute-name length, data length
_REC_CRC = struct.Struct("<I")


def default_state_dir() -> Path:
    env = os.environ.get("TSMR_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "tsmr"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    attribute: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Attribute:
    """A kernel-style binary attribute (what a FUSE mount or sysfs shows as a file)."""

    name: str
    size: int
    mode: int


class EmulatedRegisterSet(BaseRegisterSet):
    """Registers of one emulator profile, shared by every process through its state directory."""

    kind = "emulated"
    hardware_backed = False

    def __init__(self, profile: str = "tdx", state_dir: str | os.PathLike[str] | None = None, *, create: bool = True) -> None:
        super().__init__()
        if profile not in PROFILES:
            raise InputError(f"unknown emulator profile {profile!r} (profiles: {', '.join(PROFILES)})")
        self.profile_name = profile
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.dir = self.state_dir / "emulator" / profile
        self.provider = f"emulated-{profile}"
        self._fds: tuple[int, int, int] | None = None
        self._dir_fd: int | None = None
        self._generation = -1
        self._profile: Profile | None = None
        dfd = _open_state_dir(self.dir, create=create)
        try:
            initialised = dfd is not None and safefs.exists(dfd, "state")
        finally:
            if dfd is not None:
                os.close(dfd)
        if not initialised:
            if not create:
                raise BackendError(
                    f"emulator profile {profile} is not initialised in {self.state_dir} (run: tsmr emulate init --profile {profile})",
                    backend="emulated",
                )
            initialise(profile, state_dir=self.state_dir, exist_ok=True)
        self._open()

    # -- files -----------------------------------------------------------
    def _open(self) -> None:
        dfd = _open_state_dir(self.dir, create=False)
        if dfd is None:
            raise BackendError(f"emulator state directory {self.dir} is missing", backend="emulated")
        fds: list[int] = []
        try:
            for name, flags in (("lock", os.O_RDWR | os.O_CREAT), ("state", os.O_RDWR),
                                ("journal", os.O_RDWR | os.O_APPEND | os.O_CREAT)):
                fds.append(_open_file(dfd, self.dir, name, flags))
        except BaseException as exc:
            for fd in (*fds, dfd):
                os.close(fd)
            if isinstance(exc, OSError):
                raise BackendError.from_oserror(exc, backend="emulated", register=None, action=f"open state in {self.dir}") from exc
            raise
        self._fds = (fds[0], fds[1], fds[2])
        self._dir_fd = dfd

    def close(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _dir(self) -> int:
        if self._dir_fd is None:
            raise BackendError("emulated register set is closed", backend="emulated")
        return self._dir_fd

    def _fd(self) -> tuple[int, int, int]:
        if self._fds is None:
            raise BackendError("emulated register set is closed", backend="emulated")
        return self._fds

    # -- locked state access ------------------------------------------------
    def _load(self, exclusive: bool) -> tuple[int, int, int, bytearray]:
        """Read the state under the lock the caller holds; apply a journal tail left by a crash."""
        lock, state, journal = self._fd()
        raw = os.pread(state, 1 << 20, 0)
        if len(raw) < _HEADER.size or raw[:8] != _MAGIC:
            raise BackendError(f"emulator state {self.dir / 'state'} is corrupt (bad header)", backend="emulated")
        _, gen, seq, jlen = _HEADER.unpack_from(raw)
        if gen != self._generation:
            self._reload_profile(gen)
        assert self._profile is not None
        buf = bytearray(raw[_HEADER.size :])
        if len(buf) != self._profile.size:
            raise BackendError(f"emulator state {self.dir / 'state'} is corrupt (size)", backend="emulated")
        if os.fstat(journal).st_size != jlen:
            if not exclusive:
                raise _NeedsRecovery
            seq, jlen = self._recover(buf, seq, jlen)
        return gen, seq, jlen, buf

    def _reload_profile(self, gen: int) -> None:
        try:
            config = json.loads(_read_file(self._dir(), self.dir, "config.json"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"emulator config in {self.dir} is unreadable: {exc}", backend="emulated") from exc
        self._profile = build_profile(config["profile"], config.get("options", {}))
        self._by_attr = {a.attribute: a for a in self._profile.attrs}
        self._generation = gen
        self._registers = None

    def _recover(self, buf: bytearray, seq: int, jlen: int) -> tuple[int, int]:
        """Apply complete journal records past ``jlen``; cut off a torn one."""
        _, state, journal = self._fd()
        tail = os.pread(journal, 1 << 30, jlen)
        pos = 0
        while pos < len(tail):
            rec = _decode_record(tail, pos)
            if rec is None:
                break
            entry, end = rec
            spec = self._by_attr.get(entry.attribute)
            if spec is None or len(entry.data) != spec.size:
                break
            _apply(buf, spec, entry.data)
            seq = entry.seq
            pos = end
        jlen += pos
        os.ftruncate(journal, jlen)
        os.pwrite(state, _HEADER.pack(_MAGIC, self._generation, seq, jlen) + buf, 0)
        return seq, jlen

    def _locked(self, exclusive: bool):
        return _Flock(self._fd()[0], exclusive)

    def _snapshot(self) -> bytearray:
        try:
            with self._locked(False):
                return self._load(False)[3]
        except _NeedsRecovery:
            with self._locked(True):
                return self._load(True)[3]

    # -- RegisterSet ------------------------------------------------------
    @property
    def profile(self) -> Profile:
        if self._profile is None:
            self._snapshot()
        assert self._profile is not None
        return self._profile

    def _discover(self) -> Sequence[Register]:
        groups: dict[str, list[Bank]] = {}
        for spec in self.profile.attrs:
            groups.setdefault(spec.register, []).append(Bank(spec.alg, spec.size, spec.flags, spec.attribute))
        return [Register(name, sort_banks(banks)) for name, banks in groups.items()]

    def registers(self) -> tuple[Register, ...]:
        # Notice a re-init by another process: one small read of the state header.
        head = os.pread(self._fd()[1], _HEADER.size, 0)
        if len(head) != _HEADER.size or _HEADER.unpack(head)[1] != self._generation:
            self._snapshot()
        return super().registers()

    def _value(self, buf: bytes | bytearray, spec: AttrSpec) -> bytes:
        if spec.derive is not None:
            return spec.derive(bytes(buf))
        return bytes(buf[spec.offset : spec.offset + spec.size])

    def _read_banks(self, reg: Register, banks: Sequence[Bank]) -> dict[HashAlg | None, bytes]:
        buf = self._snapshot()
        return {b.alg: self._value(buf, self._by_attr[b.attribute]) for b in banks}

    def _extend_banks(self, reg: Register, digests: dict[Bank, bytes]) -> None:
        self._extend_attrs([(b.attribute, d) for b, d in digests.items()])

    def _extend_attrs(self, items: list[tuple[str, bytes]]) -> None:
        _, state, journal = self._fd()
        with self._locked(True):
            gen, seq, jlen, buf = self._load(True)
            records = bytearray()
            for name, data in items:
                spec = self._by_attr[name]
                seq += 1
                records += _encode_record(seq, name, data)
                _apply(buf, spec, data)
            # Redo record first, then the state that includes it: a crash in
            # between is repaired by _recover on the next access.
            _write_all(journal, bytes(records))
            os.pwrite(state, _HEADER.pack(_MAGIC, gen, seq, jlen + len(records)) + buf, 0)

    # -- kernel attribute view (used by the FUSE server) -------------------
    def attributes(self) -> list[Attribute]:
        return [Attribute(a.attribute, a.size, a.mode) for a in self.profile.attrs]

    def read_attribute(self, name: str) -> bytes:
        spec = self._spec(name)
        if Flag.READABLE not in spec.flags:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return self._value(self._snapshot(), spec)

    def write_attribute(self, name: str, data: bytes) -> None:
        """The driver's ``write()``: extend, given exactly ``size`` bytes."""
        spec = self._spec(name)
        if Flag.WRITABLE not in spec.flags:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        if len(data) != spec.size:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._extend_attrs([(name, bytes(data))])

    def _spec(self, name: str) -> AttrSpec:
        self.profile
        spec = self._by_attr.get(name)
        if spec is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return spec

    # -- emulator management --------------------------------------------
    def journal(self) -> Iterator[JournalEntry]:
        """Every extend applied since init/reset, in order."""
        with self._locked(True):
            _, seq, jlen, _ = self._load(True)
            data = os.pread(self._fd()[2], jlen, 0)
        pos = 0
        while pos < len(data):
            rec = _decode_record(data, pos)
            if rec is None:
                raise BackendError(f"emulator journal in {self.dir} is corrupt at byte {pos}", backend="emulated")
            entry, pos = rec
            yield entry

    def reset(self) -> None:
        """Restore the initial values and clear the journal, as a reboot would; a boot given at
        init (its ``boot`` extends) is measured again, as the firmware would measure it again."""
        initial = _read_file(self._dir(), self.dir, "initial")
        with self._locked(True):
            gen = self._load(True)[0]
            boot = _read_boot(self._dir(), self.dir)
            buf = bytearray(initial)
            records, seq = _boot_records(self.profile, boot, buf)
            os.ftruncate(self._fd()[2], 0)
            _write_all(self._fd()[2], records)
            os.pwrite(self._fd()[1], _HEADER.pack(_MAGIC, gen, seq, len(records)) + buf, 0)

    def boot_log(self) -> bytes | None:
        """The firmware event log (CCEL) of the boot given at init, None without one."""
        if not safefs.exists(self._dir(), "ccel"):
            return None
        return _read_file(self._dir(), self.dir, "ccel")


class _NeedsRecovery(Exception):
    pass


class _Flock:
    __slots__ = ("fd", "op")

    def __init__(self, fd: int, exclusive: bool) -> None:
        self.fd = fd
        self.op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH

    def __enter__(self) -> None:
        fcntl.flock(self.fd, self.op)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def _boot_records(prof: Profile, boot: Sequence[tuple[str, bytes]], buf: bytearray) -> tuple[bytes, int]:
    """Apply a boot's extends to ``buf``; the journal records that say so, and the last sequence number."""
    by_attr = {a.attribute: a for a in prof.attrs}
    records = bytearray()
    seq = 0
    for name, data in boot:
        spec = by_attr.get(name)
        if spec is None or spec.alg is None or Flag.WRITABLE not in spec.flags:
            raise InputError(f"boot extend of {name!r}: no extendable attribute of that name in profile {prof.name}")
        if len(data) != spec.size:
            raise InputError(f"boot extend of {name}: {len(data)} bytes, the attribute takes {spec.size}")
        seq += 1
        records += _encode_record(seq, name, data)
        _apply(buf, spec, data)
    return bytes(records), seq


def _read_boot(dfd: int, d: Path) -> list[tuple[str, bytes]]:
    """The ``boot`` extends of a state directory (empty without the file)."""
    if not safefs.exists(dfd, "boot"):
        return []
    try:
        doc = json.loads(_read_file(dfd, d, "boot"))
        return [(str(name), bytes.fromhex(str(digest))) for name, digest in doc["extends"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"emulator boot record in {d} is unreadable: {exc}", backend="emulated") from exc


def _apply(buf: bytearray, spec: AttrSpec, data: bytes) -> None:
    assert spec.alg is not None
    end = spec.offset + spec.size
    buf[spec.offset : end] = spec.alg.extend(bytes(buf[spec.offset : end]), data)


def _encode_record(seq: int, name: str, data: bytes) -> bytes:
    raw = name.encode()
    body = _REC_HEAD.pack(seq, len(raw), len(data)) + raw + data
    return body + _REC_CRC.pack(zlib.crc32(body))


def _decode_record(buf: bytes, pos: int) -> tuple[JournalEntry, int] | None:
    if pos + _REC_HEAD.size > len(buf):
        return None
    seq, nlen, dlen = _REC_HEAD.unpack_from(buf, pos)
    end = pos + _REC_HEAD.size + nlen + dlen
    if end + 4 > len(buf):
        return None
    (crc,) = _REC_CRC.unpack_from(buf, end)
    if crc != zlib.crc32(buf[pos:end]):
        return None
    name_start = pos + _REC_HEAD.size
    name = buf[name_start : name_start + nlen].decode(errors="replace")
    return JournalEntry(seq, name, bytes(buf[name_start + nlen : end])), end + 4


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def initialise(
    profile: str,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    options: dict[str, str] | None = None,
    values: dict[str, bytes] | None = None,
    exist_ok: bool = True,
    boot: Sequence[tuple[str, bytes]] | None = None,
    boot_log: bytes | None = None,
) -> Path:
    """Create (or re-create, resetting every register) the state of one profile.

    ``boot`` is a measured boot to apply at once and at every ``reset``: (attribute,
    digest) extends in order, such as the firmware and EFI stub events of a predicted
    TDX direct boot; ``boot_log`` the firmware event log (CCEL) that records them, which
    the emulator's evidence carries.  Without them a previous boot and log are removed.
    """
    prof = build_profile(profile, options, values)
    boot_buf = bytearray(prof.initial)
    boot_records, boot_seq = _boot_records(prof, boot or (), boot_buf)
    base = Path(state_dir) if state_dir is not None else default_state_dir()
    d = base / "emulator" / profile
    dfd = _open_state_dir(d, create=True)
    assert dfd is not None
    try:
        lock = _open_file(dfd, d, "lock", os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        os.close(dfd)
        raise BackendError.from_oserror(exc, backend="emulated", register=None, action=f"create state directory {d}") from exc
    try:
        with _Flock(lock, True):
            gen = 0
            exists = safefs.exists(dfd, "state")
            if exists:
                if not exist_ok:
                    raise InputError(f"emulator profile {profile} already exists in {base}")
                head = _read_file(dfd, d, "state")[: _HEADER.size]
                if len(head) == _HEADER.size and head[:8] == _MAGIC:
                    gen = _HEADER.unpack(head)[1]
            config = {"format": 1, "profile": profile, "options": prof.options}
            _atomic_write(dfd, d, "config.json", json.dumps(config, indent=2).encode() + b"\n")
            _atomic_write(dfd, d, "initial", prof.initial)
            if boot:
                doc = {"format": 1, "extends": [[name, digest.hex()] for name, digest in boot]}
                _atomic_write(dfd, d, "boot", json.dumps(doc).encode() + b"\n")
            else:
                _unlink(dfd, "boot")
            if boot_log is not None:
                _atomic_write(dfd, d, "ccel", boot_log)
            else:
                _unlink(dfd, "ccel")
            jfd = _open_file(dfd, d, "journal", os.O_RDWR | os.O_CREAT)
            try:
                os.ftruncate(jfd, 0)
                _write_all(jfd, boot_records)
            finally:
                os.close(jfd)
            payload = _HEADER.pack(_MAGIC, gen + 1, boot_seq, len(boot_records)) + boot_buf
            if exists:
                # Rewrite in place so processes holding it open see the new generation.
                sfd = _open_file(dfd, d, "state", os.O_RDWR)
                try:
                    os.ftruncate(sfd, len(payload))
                    os.pwrite(sfd, payload, 0)
                finally:
                    os.close(sfd)
            else:
                _atomic_write(dfd, d, "state", payload)
    except OSError as exc:
        raise BackendError.from_oserror(exc, backend="emulated", register=None, action=f"initialise the emulator state in {d}") from exc
    finally:
        os.close(lock)
        os.close(dfd)
    return d


def _unlink(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass


def _open_state_dir(d: Path, *, create: bool) -> int | None:
    """The state directory (0700 when created), refused if others could plant links in it; None if missing."""
    try:
        return safefs.open_dir(d, what="emulator state directory", create_mode=0o700 if create else None)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendError.from_oserror(exc, backend="emulated", register=None, action=f"open state directory {d}") from exc


def _open_file(dfd: int, d: Path, name: str, flags: int) -> int:
    return safefs.open_file(dfd, name, flags, path=d / name, what="emulator state file")[0]


def _read_file(dfd: int, d: Path, name: str) -> bytes:
    fd = _open_file(dfd, d, name, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _atomic_write(dfd: int, d: Path, name: str, data: bytes) -> None:
    tmp = name + ".tmp"
    try:
        os.unlink(tmp, dir_fd=dfd)  # left by a crash: made afresh, never written through
    except FileNotFoundError:
        pass
    fd = _open_file(dfd, d, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)


__all__ = ["EmulatedRegisterSet", "Attribute", "JournalEntry", "initialise", "default_state_dir"]
