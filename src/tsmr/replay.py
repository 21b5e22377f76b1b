"""Replay of unified events into register values, and the explanation of a mismatch.

Theory of operation
-------------------
:func:`replay` folds :class:`~tsmr.events.Event` objects into registers,
per bank: ``value = H(value || digest)``.  Registers start from the values the
platform gives them (zero; all 0xFF for TPM PCR 17-22, which TPM2_Startup sets
so; PCR 0 per the log's StartupLocality event) unless the caller supplies
``initial`` values.  Events that are never extended (EV_NO_ACTION) are
skipped.  Several logs can be merged onto one register set: the events are
taken in the order given (firmware log first, then the OS's IMA list, then
runtime logs), and with ``arch="tdx"`` (or ``"cca"``) TPM PCR numbers are
mapped onto the confidential VM's registers through the UEFI index table.

A tsmr runtime log's sync record is an anchor, not just an event: it declares
the register's value at that point.  A declared value that differs from the
replayed one is a *gap*; replay takes the declared value and goes on.  By
default a register's state is unknown until its first event, so a first sync
record anchors it silently (a log read on its own).  A verifier that knows
what each register held at launch passes ``launch=True``: every register then
starts known (zero, or what the firmware log's events replayed before), and a
first sync record that declares anything else is a gap too, with
``history_missing`` set: records were cut from the front of the log, or the
register was extended before the log began (spec section 3).

:func:`explain` compares a result with expected values (from a quote) and, on a
mismatch, says in one sentence per bank what is wrong: the first event whose
digest does not match its own data, or the event after which the register
last equalled the expected value (the log is ahead of the quote), or that no
prefix matches; and which named quirk, if any, would explain it.
"""

from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from . import quirks as quirk_mod
from .algorithms import HashAlg
from .errors import InputError
from .events import DATA, DERIVABLE_SOURCES, Event
from .findings import Gap
from .formats import tcg2
from .formats.tcg2 import reader as tcg2_reader
from .formats.tcg2 import records as tcg2_records
from .registers import pcr_index, register_on, register_order
from .runtime_log.replay import Replayer

Values = dict[str, dict[HashAlg, bytes]]

# The banks a confidential VM's registers have: a TPM PCR event that lands on a TDX MR
# (``arch="tdx"``) extends it in SHA-384 only, as the firmware and the kernel do.
_ARCH_BANKS: dict[str, tuple[HashAlg, ...]] = {"tdx": (HashAlg.SHA384,)}
_ARCHES = (None, "tpm", "tdx", "cca")


@dataclass(frozen=True)
class ReplayResult:
    registers: Values
    counts: dict[str, int]  # measured events per register
    missing: dict[str, tuple[HashAlg, ...]]  # banks some event of the register has no digest for
    gaps: tuple[Gap, ...] = ()
    quirks: tuple[str, ...] = ()  # quirks applied, by name
    initial: Values = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "registers": {
                reg: {a.kernel_name: v.hex() for a, v in sorted(banks.items())}
                for reg, banks in sorted(self.registers.items(), key=lambda kv: register_order(kv[0]))
            }
        }
        if self.missing:
            out["incomplete"] = {reg: [a.kernel_name for a in algs] for reg, algs in self.missing.items()}
        if self.gaps:
            out["gaps"] = [
                {"register": g.register, "bank": g.alg.kernel_name, "event": g.seq, "source": g.source,
                 "replayed": g.replayed.hex(), "declared": g.declared.hex()}
                for g in self.gaps
            ]
        if self.quirks:
            out["quirks"] = list(self.quirks)
        return out


def default_initial(register: str, alg: HashAlg) -> bytes:
    """The value a register holds before any event: all 0xFF for TPM PCR 17-22, else zero."""
    p = pcr_index(register)
    if p is not None and 17 <= p <= 22:
        return b"\xff" * alg.digest_size
    return alg.zero()


def map_register(event: Event, arch: str | None) -> str:
    """The register an event lands in on a machine of ``arch`` (TPM PCRs map onto RTMRs/REMs)."""
    return _register_on(event.register, arch)


# A pure function of two short strings, asked once per event: kept (bounded) rather than recomputed.
_register_on = functools.lru_cache(maxsize=1024)(register_on)


# A register's state while folding: per bank [value, number of the register's events folded into it].
_State = dict[str, dict[HashAlg, list]]


def _report(state: _State, counts: Mapping[str, int], want: Sequence[HashAlg] | None) -> tuple[
        Values, dict[str, tuple[HashAlg, ...]]]:
    """The one rule for which banks a replay reports.

    A bank of a register is reported only if every measured event of that
    register was folded into it (its digest recorded, or derived from the data
    where the format allows, or the bank anchored by a sync record after the
    events it lacks).  Banks some event lacks, and banks asked for (``want``)
    that are not complete, are *missing*.
    """
    registers: Values = {}
    missing: dict[str, tuple[HashAlg, ...]] = {}
    for reg, regs in state.items():
        total = counts.get(reg, 0)
        done = {a: v for a, (v, k) in regs.items() if k == total}
        lacking = sorted(set(regs) - set(done) | (set(want) - set(done) if want is not None else set()))
        if done:
            registers[reg] = done
        if lacking:
            missing[reg] = tuple(lacking)
    return registers, missing


def _check_arch(arch: str | None) -> None:
    if arch not in _ARCHES:
        raise InputError(f"unknown architecture {arch!r}: use tpm, tdx or cca")


def replay(
    events: Iterable[Event],
    *,
    banks: Sequence[HashAlg] | None = None,
    initial: Mapping[str, Mapping[HashAlg, bytes]] | None = None,
    arch: str | None = None,
    quirks: Sequence[str] = (),
    launch: bool = False,
) -> ReplayResult:
    """Fold events into registers per bank.

    ``banks`` limits the banks replayed (default: every bank any event records).
    ``initial`` overrides starting values per register and bank; otherwise
    :func:`default_initial`, and a TPM log's StartupLocality event sets PCR 0.
    ``launch=True`` treats those starting values as known, so that a first
    sync record declaring another value is a gap with ``history_missing``.
    A bank is reported only if every measured event of its register gives a
    digest for it (recorded, or derived from the data where the format allows).
    With ``arch="tdx"``, a TPM PCR event mapped onto a TDX register extends it
    in SHA-384 only (the bank a TDX MR has), recorded or derived from the data.
    A runtime log's records (sync records, events, ``.EXTEND`` directives) are
    replayed by :class:`tsmr.runtime_log.replay.Replayer`, the one place their
    rules live.  ``quirks`` are validated here; they change digest checks, not replay.
    """
    quirk_mod.resolve(quirks)
    _check_arch(arch)
    state: _State = {}
    counts: dict[str, int] = {}
    gaps: list[Gap] = []
    start: Values = {r: dict(v) for r, v in (initial or {}).items()}
    for r, vals in start.items():
        for alg, value in vals.items():
            if len(value) != alg.digest_size:
                raise InputError(f"initial value of {r} {alg.kernel_name} is {len(value)} bytes, must be {alg.digest_size}")
    want = tuple(banks) if banks is not None else None
    want_set = frozenset(want) if want is not None else None
    hashers = {a: a.constructor for a in HashAlg}
    mapped: dict[str, str] = {}
    cc_arch = arch in ("tdx", "cca")
    arch_banks = _ARCH_BANKS.get(arch or "")
    # A runtime log's records, per register, collected until another source's event lands there.
    runs: dict[str, list[tuple[int, Event]]] = {}

    def first_value(reg: str, alg: HashAlg) -> bytes:
        return start.get(reg, {}).get(alg) or default_initial(reg, alg)

    def flush(reg: str) -> None:
        run = runs.pop(reg, None)
        if run:
            _replay_runtime(reg, run, state.setdefault(reg, {}), counts, gaps, want_set, launch, first_value)

    for position, ev in enumerate(events):
        reg = ev.register
        only = None  # the banks a PCR event mapped onto a CC register extends
        if cc_arch:
            m = mapped.get(reg)
            if m is None:
                m = mapped[reg] = map_register(ev, arch)
            if m != reg:
                only = arch_banks
            reg = m
        if not ev.measured:
            # TCG PC Client PFP 10.4.5.3: an EV_NO_ACTION "StartupLocality\0" + locality byte on PCR 0.
            data = ev.data
            if reg == "pcr0" and len(data) == 17 and data.startswith(b"StartupLocality\0") and "pcr0" not in (initial or {}):
                for alg in ev.algs or tuple(HashAlg):
                    start.setdefault("pcr0", {})[alg] = bytes(alg.digest_size - 1) + data[16:17]
            continue
        if ev.source == "tsmr":
            runs.setdefault(reg, []).append((position, ev))
            counts[reg] = counts.get(reg, 0) + 1
            continue
        if reg in runs:
            flush(reg)
        regs = state.get(reg)
        if regs is None:
            regs = state[reg] = {}
        n = counts.get(reg, 0)
        counts[reg] = n + 1
        if only is not None:
            for alg in only:
                if want_set is not None and alg not in want_set:
                    continue
                d = ev.digest(alg)
                cur = regs.get(alg)
                if d is None:  # the event does not say what this bank got: the bank is incomplete
                    if cur is None:
                        regs[alg] = [first_value(reg, alg), n]
                    continue
                if cur is None:
                    regs[alg] = [hashers[alg](first_value(reg, alg) + d).digest(), n + 1]
                elif cur[1] == n:
                    cur[0] = hashers[alg](cur[0] + d).digest()
                    cur[1] += 1
            continue
        if ev.fill is not None:
            for alg in want or (set(regs) | set(ev.algs)):
                cur = regs.get(alg)
                v, k = cur if cur is not None else (first_value(reg, alg), n)
                regs[alg] = [hashers[alg](v + bytes([ev.fill]) * alg.digest_size).digest(), k + 1]
            continue
        for alg, d in ev.digests:
            if want_set is not None and alg not in want_set:
                continue
            cur = regs.get(alg)
            if cur is None:
                regs[alg] = [hashers[alg](first_value(reg, alg) + d).digest(), 1]
            else:
                cur[0] = hashers[alg](cur[0] + d).digest()
                cur[1] += 1
        if ev.data_rule == DATA and ev.source in DERIVABLE_SOURCES:
            # Banks the event does not record but its data determines (IMA, CEL, systemd).
            for alg in want or tuple(regs):
                cur = regs.get(alg)
                if cur is not None and cur[1] == n + 1:
                    continue
                d = hashers[alg](ev.data).digest()
                if cur is None:
                    regs[alg] = [hashers[alg](first_value(reg, alg) + d).digest(), n + 1]
                elif cur[1] == n:
                    cur[0] = hashers[alg](cur[0] + d).digest()
                    cur[1] += 1
    for reg in list(runs):
        flush(reg)
    gaps.sort(key=lambda g: g.position)
    registers, missing = _report(state, counts, want)
    return ReplayResult(
        registers=registers,
        counts=counts,
        missing=missing,
        gaps=tuple(gaps),
        quirks=(),
        initial={r: dict(v) for r, v in start.items()},
    )


def _replay_runtime(reg: str, run: list[tuple[int, Event]], regs: dict[HashAlg, list], counts: Mapping[str, int],
                    gaps: list[Gap], want: frozenset[HashAlg] | None, launch: bool,
                    first_value: Callable[[str, HashAlg], bytes]) -> None:
    """Fold a run of a runtime log's records on ``reg`` through the runtime log's own replayer.

    The register's state before the run is what the replayer starts from: the
    banks every earlier event on it was folded into are known; with ``launch``
    the others are known too (their launch values); a bank that is still
    unknown is anchored by the first sync record that declares it (spec
    section 3).  Afterwards every bank the replayer knows is complete.
    """
    before = counts[reg] - len(run)  # the register's events before the run
    known = {a: bytes(v) for a, (v, k) in regs.items() if k == before}
    first = run[0][1]
    first_declares = {HashAlg.from_name(n) for n in (first.details or {}).get("declares", {})} if first.type == "sync" else set()
    from_launch = launch and before == 0  # the register's first record: its launch value is known
    for alg in want or ():
        # A bank asked for starts from its launch value, unless the first record anchors it.
        if alg not in first_declares or from_launch:
            known.setdefault(alg, first_value(reg, alg))
    if from_launch:
        for alg in first_declares:
            known.setdefault(alg, first_value(reg, alg))
    r = Replayer(initial=known)
    r.feed(b"\n".join([e.data for _, e in run]) + b"\n")  # every record with its LF (a run is never empty)
    report = r.finish()
    for g in report.gaps:
        if want is not None and g.alg not in want:
            continue
        position, ev = run[g.line - 1]
        gaps.append(Gap(g.alg, g.replayed, g.declared, ev.seq, reg, ev.source, position,
                        history_missing=from_launch and g.line == 1))
    total = counts[reg]
    for alg, b in report.banks.items():
        if b.value is not None and (want is None or alg in want):
            regs[alg] = [b.value, total]


def replay_tcg2_bytes(data: bytes | bytearray | memoryview, *, arch: str = "tpm") -> ReplayResult:
    """:func:`replay` of a TCG2 or CCEL log straight from its bytes: the same result, several
    times faster on large logs, since no event objects are built.

    ``arch`` says what the log's indices are: ``"tpm"`` (PCRs) or ``"tdx"``/``"cca"``
    (CC MR indices, a CCEL).  Logs this path does not cover (SHA-1-only logs,
    records whose digests are not in the Spec ID's order, malformed records) go
    through :func:`tsmr.formats.tcg2.parse` and :func:`replay`.  Banks are
    reported by the same rule as :func:`replay`.
    """
    if arch not in ("tpm", "tdx", "cca"):
        raise InputError(f"unknown architecture {arch!r}: use tpm, tdx or cca")
    buf = tcg2_reader._as_bytes(data)
    spec, header, pos = tcg2_reader._parse_header(buf)
    if header is None:
        return _replay_parsed(buf, arch)
    rec = tcg2_records
    algs = spec.hash_algs
    n = len(spec.algorithms)
    ids = tuple(a for a, _ in spec.algorithms)
    known_ids = {int(a) for a in algs}
    known = [(k, ids[k], HashAlg(ids[k])) for k in range(n) if ids[k] in known_ids]
    hashers = {int(a): a.constructor for a in algs}
    layout = tcg2_reader._digest_layout(spec)
    lsize = layout.size
    unpack_layout = layout.unpack_from
    unpack_head = rec._PCR_EVENT2_HEAD.unpack_from
    hsize = rec._PCR_EVENT2_HEAD.size
    is_padding = tcg2_reader._is_padding
    u32_max = rec._U32_MAX
    max_size = rec.MAX_EVENT_SIZE
    no_action = rec.EV_NO_ACTION
    end = len(buf)
    n2 = 2 * n
    # Per index: {alg_id: [value, events folded]}; measured[index]: measured events on it.
    state: dict[int, dict[int, list]] = {}
    measured: dict[int, int] = {}
    start: dict[tuple[int, int], bytes] = {}
    tpm = arch == "tpm"  # index 0 is PCR 0, not MRTD: a StartupLocality event sets its start
    if tpm:  # TPM2_Startup sets PCR 17-22 to all 0xFF
        start = {(i, int(a)): b"\xff" * a.digest_size for i in range(17, 23) for a in algs}
    while pos < end:
        if end - pos < hsize:
            if is_padding(buf, pos, end):
                break
            return _replay_parsed(buf, arch)
        index, etype, count = unpack_head(buf, pos)
        if (index == etype == 0 or index == etype == u32_max) and is_padding(buf, pos, end):
            break
        if count != n or end - pos - hsize < lsize:
            return _replay_parsed(buf, arch)
        v = unpack_layout(buf, pos + hsize)
        if v[0:n2:2] != ids:
            return _replay_parsed(buf, arch)
        size = v[n2]
        body = pos + hsize + lsize
        if size > end - body or size > max_size:
            return _replay_parsed(buf, arch)  # the full parser names the error
        pos = body + size
        if etype == no_action:
            if index == 0 and tpm and size == 17 and buf[body:body + 16] == b"StartupLocality\0":
                for hashed in algs:
                    start.setdefault((0, int(hashed)), bytes(hashed.digest_size - 1) + buf[body + 16:body + 17])
            continue
        regs = state.get(index)
        if regs is None:
            regs = state[index] = {}
            measured[index] = 0
        measured[index] += 1
        for k, a, _bank in known:
            d = v[2 * k + 1]
            cur = regs.get(a)
            if cur is None:
                regs[a] = [hashers[a]((start.get((index, a)) or bytes(len(d))) + d).digest(), 1]
            else:
                cur[0] = hashers[a](cur[0] + d).digest()
                cur[1] += 1
    name = {i: tcg2.register_name(i, arch) for i in state}
    by_alg = {a: alg for _, a, alg in known}
    named: _State = {name[i]: {by_alg[a]: cur for a, cur in regs.items()} for i, regs in state.items()}
    counts = {name[i]: c for i, c in measured.items()}
    registers, missing = _report(named, counts, None)
    return ReplayResult(registers=registers, counts=counts, missing=missing)


def _replay_parsed(buf: bytes, arch: str) -> ReplayResult:
    return replay(tcg2.to_events(tcg2.parse(buf), arch=arch, decode=False), arch=arch)


# Registers the platform sets at launch and no log extends: TDX MRTD, the CCA RIM, the SEV-SNP
# launch measurement.  A log with no events for one of them says nothing about its value.
LAUNCH_REGISTERS = frozenset({"mrtd", "rim", "measurement"})


def not_covered(result: ReplayResult, register: str) -> bool:
    """Whether ``register`` is a launch measurement the replayed logs do not cover (no event measures it)."""
    return register in LAUNCH_REGISTERS and not result.counts.get(register)


def _start_value(result: ReplayResult, register: str, alg: HashAlg) -> bytes:
    return result.initial.get(register, {}).get(alg) or default_initial(register, alg)


@dataclass(frozen=True)
class Mismatch:
    register: str
    alg: HashAlg
    replayed: bytes | None
    expected: bytes
    explanation: str


def compare(result: ReplayResult, expected: Mapping[str, Mapping[HashAlg, bytes]]) -> list[Mismatch]:
    """Registers and banks whose replayed value differs from the expected one (without explanations).

    A register no event measures holds its starting value (zero, all 0xFF for
    TPM PCR 17-22, or the caller's initial value), and is compared as such.
    """
    out: list[Mismatch] = []
    for reg, banks in expected.items():
        for alg, value in banks.items():
            got = result.registers.get(reg, {}).get(alg)
            if got is None and not result.counts.get(reg):
                got = _start_value(result, reg, alg)
            if got is None or not hmac.compare_digest(got, value):
                out.append(Mismatch(reg, alg, got, bytes(value), ""))
    return out


def explain(
    events: Sequence[Event],
    expected: Mapping[str, Mapping[HashAlg, bytes]],
    *,
    arch: str | None = None,
    initial: Mapping[str, Mapping[HashAlg, bytes]] | None = None,
    quirks: Sequence[str] = (),
    launch: bool = False,
) -> list[Mismatch]:
    """Replay, compare with ``expected``, and explain each mismatch in one sentence (``launch`` as for :func:`replay`)."""
    # Replay exactly the banks asked about, so that formats whose banks derive from the data
    # (IMA lists record one bank) give every one of them.
    want_banks = sorted({alg for banks in expected.values() for alg in banks})
    result = replay(events, banks=want_banks, initial=initial, arch=arch, quirks=quirks, launch=launch)
    out: list[Mismatch] = []
    for m in compare(result, expected):
        name = f"{m.register} {m.alg.kernel_name}"
        on_reg = [e for e in events if e.measured and map_register(e, arch) == m.register]
        if not on_reg:
            out.append(Mismatch(m.register, m.alg, m.replayed, m.expected, f"{name}: the log has no events for this register, and the value is not its starting value"))
            continue
        n = sum(1 for e in on_reg if e.digest(m.alg) is None)
        if n:
            out.append(Mismatch(m.register, m.alg, None, m.expected,
                                f"{name}: {n} event(s) of the log carry no {m.alg.kernel_name} digest, so this bank cannot be replayed"))
            continue
        bad = next((e for e in on_reg if e.check(m.alg) is False), None)
        if bad is not None:
            text = (f"{name}: event {bad.seq} ({bad.type}{': ' + bad.summary if bad.summary else ''}) "
                    f"records a digest that is not the hash of its own data")
            out.append(Mismatch(m.register, m.alg, m.replayed, m.expected, text))
            continue
        # Prefix: did the register equal the expected value after some event?
        start = (initial or {}).get(m.register, {}).get(m.alg) or result.initial.get(m.register, {}).get(m.alg) or default_initial(m.register, m.alg)
        v = start
        last = None
        if v == m.expected:
            last = -1
        for e in on_reg:
            d = e.digest(m.alg)
            if d is None:
                break
            v = m.alg.extend(v, d)
            if v == m.expected:
                last = e.seq
        if last is not None:
            after = [e for e in on_reg if e.seq > last]
            where = "before its first event" if last == -1 else f"after event {last}"
            text = (f"{name}: the register equals the log {where}; the {len(after)} later event(s) "
                    "are not in it (the log is ahead of the quote, or they were never extended)")
        else:
            hint = quirk_mod.suggest(events, m.register, m.alg, m.expected, arch=arch, initial=initial)
            text = f"{name}: no prefix of the log replays to the expected value"
            text += f"; {hint}" if hint else (
                "; an event of the log was altered or removed, or the register was extended with "
                "something the log does not record (the hashes cannot tell which)")
        out.append(Mismatch(m.register, m.alg, m.replayed, m.expected, text))
    return out


__all__ = ["replay", "replay_tcg2_bytes", "ReplayResult", "Gap", "Mismatch", "compare", "explain", "default_initial",
           "map_register", "not_covered", "LAUNCH_REGISTERS"]
