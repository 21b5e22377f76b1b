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

import hmac
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .algorithms import HashAlg
from .errors import InputError
from .events import DATA, DERIVABLE_SOURCES, Event
from .registers import pcr_index, pcr_to_register, register_order

Values = dict[str, dict[HashAlg, bytes]]


@dataclass(frozen=True)
class Gap:
    """A sync record that declares another value than the replay reached (an unlogged change)."""

    register: str
    alg: HashAlg
    seq: int  # the sync record's position in its own log
    source: str
    replayed: bytes
    declared: bytes
    position: int = -1  # the sync record's position among all the events replayed
    history_missing: bool = False  # the register's first record: what it held at launch was replaced


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
    if arch in ("tdx", "cca"):
        p = pcr_index(event.register)
        if p is not None:
            return pcr_to_register(p, arch)
    return event.register


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
    ``quirks`` are validated here; they change digest checks, not replay.
    """
    from . import quirks as quirk_mod

    quirk_mod.resolve(quirks)
    if arch not in (None, "tpm", "tdx", "cca"):
        raise InputError(f"unknown architecture {arch!r}: use tpm, tdx or cca")
    # state[reg][alg] = [value, number of events folded]; a bank is complete when that
    # number equals the register's event count.
    state: dict[str, dict[HashAlg, list]] = {}  # type: ignore[type-arg]
    counts: dict[str, int] = {}
    gaps: list[Gap] = []
    start: Values = {r: dict(v) for r, v in (initial or {}).items()}
    want = tuple(banks) if banks is not None else None
    want_set = frozenset(want) if want is not None else None
    hashers = {a: a.constructor for a in HashAlg}
    mapped: dict[str, str] = {}
    cc_arch = arch in ("tdx", "cca")

    def first_value(reg: str, alg: HashAlg) -> bytes:
        return start.get(reg, {}).get(alg) or default_initial(reg, alg)

    for position, ev in enumerate(events):
        reg = ev.register
        if cc_arch:
            m = mapped.get(reg)
            if m is None:
                m = mapped[reg] = map_register(ev, arch)
            reg = m
        if not ev.measured:
            # TCG PC Client PFP 10.4.5.3: an EV_NO_ACTION "StartupLocality\0" + locality byte on PCR 0.
            data = ev.data
            if reg == "pcr0" and len(data) == 17 and data.startswith(b"StartupLocality\0") and "pcr0" not in (initial or {}):
                for alg in ev.algs or tuple(HashAlg):
                    start.setdefault("pcr0", {})[alg] = bytes(alg.digest_size - 1) + data[16:17]
            continue
        regs = state.get(reg)
        if regs is None:
            regs = state[reg] = {}
        n = counts.get(reg, 0)
        counts[reg] = n + 1
        if ev.source == "tsmr" and ev.type == "sync" and ev.details:
            for name, hexv in ev.details.get("declares", {}).items():
                alg = HashAlg.from_name(name)
                if want_set is not None and alg not in want_set:
                    continue
                declared = bytes.fromhex(hexv)
                cur = regs.get(alg)
                if cur is not None and cur[1] == n and not hmac.compare_digest(cur[0], declared):
                    gaps.append(Gap(reg, alg, ev.seq, ev.source, cur[0], declared, position))
                elif cur is None and n == 0 and launch:
                    # The register's first record: its launch value is known, so the sync
                    # record must declare exactly that; anything else hides what came before.
                    at_launch = first_value(reg, alg)
                    if not hmac.compare_digest(at_launch, declared):
                        gaps.append(Gap(reg, alg, ev.seq, ev.source, at_launch, declared, position, True))
                regs[alg] = [declared, n]  # an anchor: the bank is known from here on
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
            # Banks the event does not record but its data determines (IMA, runtime logs).
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
    return ReplayResult(
        registers=registers,
        counts=counts,
        missing=missing,
        gaps=tuple(gaps),
        quirks=(),
        initial={r: dict(v) for r, v in start.items()},
    )


def replay_tcg2_bytes(data: bytes, *, arch: str = "tpm") -> ReplayResult:
    """:func:`replay` of a TCG2 or CCEL log straight from its bytes: the same result, several
    times faster on large logs, since no event objects are built (see tcg2.replay_bytes)."""
    from .formats import tcg2

    if arch not in ("tpm", "tdx", "cca"):
        raise InputError(f"unknown architecture {arch!r}: use tpm, tdx or cca")
    initial = {}
    if arch == "tpm":
        initial = {(i, a): b"\xff" * a.digest_size for i in range(17, 23) for a in HashAlg}
    values, missing = tcg2.replay_bytes(data, initial=initial)
    name = {i: tcg2.register_name(i, arch) for i in set(values) | set(missing)}
    return ReplayResult(
        registers={name[i]: v for i, v in values.items() if v},
        counts={},
        missing={name[i]: m for i, m in missing.items()},
    )


@dataclass(frozen=True)
class Mismatch:
    register: str
    alg: HashAlg
    replayed: bytes | None
    expected: bytes
    explanation: str


def compare(result: ReplayResult, expected: Mapping[str, Mapping[HashAlg, bytes]]) -> list[Mismatch]:
    """Registers and banks whose replayed value differs from the expected one (without explanations)."""
    out: list[Mismatch] = []
    for reg, banks in expected.items():
        for alg, value in banks.items():
            got = result.registers.get(reg, {}).get(alg)
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
    from . import quirks as quirk_mod

    # Replay exactly the banks asked about, so that formats whose banks derive from the data
    # (IMA lists record one bank) give every one of them.
    want_banks = sorted({alg for banks in expected.values() for alg in banks})
    result = replay(events, banks=want_banks, initial=initial, arch=arch, quirks=quirks, launch=launch)
    out: list[Mismatch] = []
    for m in compare(result, expected):
        name = f"{m.register} {m.alg.kernel_name}"
        on_reg = [e for e in events if e.measured and map_register(e, arch) == m.register]
        if not on_reg:
            out.append(Mismatch(m.register, m.alg, m.replayed, m.expected, f"{name}: the log has no events for this register"))
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


__all__ = ["replay", "replay_tcg2_bytes", "ReplayResult", "Gap", "Mismatch", "compare", "explain", "default_initial", "map_register"]
