"""Which signed registers the reference values cover: what an ``affirming`` verdict rests on.

A verified quote proves what its registers hold, not that it is what the
owner meant to run.  An appraisal affirms only when reference values say, for
every register that holds a measurement, what it may hold; the others are
*uncovered* (``refvals.uncovered``, a warning, or an error when reference
values are required), and the AR4SI ``executables`` and ``configuration``
claims are then 0, "no claim", instead of 2.

Which registers count
---------------------
Every register and bank the evidence signs: TDX ``mrtd`` and ``rtmr0``-``rtmr3``,
the SEV-SNP launch ``measurement``, CCA ``rim`` and ``rem0``-``rem3``, each PCR
a TPM quote covers, and the same for the emulator's quotes (which are quotes of
those kinds).  One that still holds its initial value (all zero; all 0xFF for
TPM PCRs 17-22) measured nothing and needs no reference value.

When a register bank is covered
-------------------------------
1. ``registers`` lists the register and bank: the reference-values step
   compares the signed value with the allowed ones.
2. ``claims`` has an entry named as the register, and the evidence has that
   claim (the launch values ``mrtd``, ``measurement``, ``rim``; TDX also lifts
   ``rtmr0``-``rtmr3`` to claims): the claim comparison pins the same value.
3. Its log accounts for it, event by event.  All of these hold:

   * the register's log replays, from its launch value, to the signed value
     in this bank (its replay row is ``matched``), and the register has no
     ``gap``, ``history-missing``, ``data-mismatch`` or ``mismatched`` row:
     every event in it is proven and none is unknown;
   * every measured event of the register is either a sync record (``SYNC`` /
     ``INIT``: an anchor that a gap would have shown, carrying no content) or a
     runtime-log event in the ``<domain> <operation> <content>`` grammar
     (a tsmr runtime log, CoCo AAEL, a tsmr record in CEL) with a domain;
   * every such event is judged: a reference ``events`` entry matches it
     (same domain and operation, the content pattern matching the whole
     content), or an appraiser the reference values configure
     (``appraisers``) judges it.  An appraiser judges the events its
     ``judges(event, config)`` method accepts; without that method, every
     event of a domain its ``domains`` patterns cover.

   A firmware event (CCEL, TCG2: ``EV_EFI_*``, ``EV_IPL`` ...), an IMA record, a
   raw ``# .EXTEND`` and a one-word record are judged by nothing but a value
   for the register, so a register holding one is covered by 1 or 2 only.

Coverage says nothing about whether the covered values *match*: a mismatch is
its own error (``refvals.register-mismatch``, ``refvals.claim-mismatch``,
``replay.mismatch``, an appraiser's denial).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..algorithms import HashAlg
from ..events import Event
from ..evidence.bundle import LogReplay
from ..findings import ReplayStatus
from ..registers import register_order
from ..replay import default_initial, map_register
from .appraisers import covers
from .facts import runtime_events
from .refvals import EventRef, ReferenceValues

__all__ = ["Uncovered", "uncovered"]

_BROKEN = frozenset({ReplayStatus.GAP, ReplayStatus.HISTORY_MISSING, ReplayStatus.DATA_MISMATCH,
                     ReplayStatus.MISMATCHED, ReplayStatus.NOT_SIGNED})


@dataclass(frozen=True)
class Uncovered:
    """A signed register bank nothing in the reference values covers, and why."""

    register: str
    bank: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"register": self.register, "bank": self.bank, "reason": self.reason}


def _anchor(event: Event) -> bool:
    """A sync record: the register value before it, extended as a record but carrying no content."""
    if event.source == "tsmr":
        return event.type == "sync"
    return event.source == "cel" and event.type == "tsmr" and event.data.startswith((b"SYNC ", b"INIT "))


class _EventJudges:
    """Whether a runtime event is judged by a reference event or a configured appraiser.

    Reference events are grouped by domain and operation, and literal contents
    (what :func:`~tsmr.appraisal.refvals.learn` writes) are looked up in a set,
    so a learned document of many events costs one lookup per event.
    """

    def __init__(self, refvals: ReferenceValues | None, apps: Sequence[Any]) -> None:
        self.any: set[tuple[str, str]] = set()
        self.literals: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.patterns: dict[tuple[str, str], list[EventRef]] = defaultdict(list)
        configured = dict(refvals.appraisers) if refvals is not None else {}
        for ref in (refvals.events if refvals is not None else ()):
            key = (ref.domain, ref.operation)
            if ref.content is None:
                self.any.add(key)
                continue
            text = ref.literal
            if text is not None:
                self.literals[key].add(text)
            else:
                self.patterns[key].append(ref)
        self.apps = [(app, configured[app.name]) for app in apps if app.name in configured]

    def judged(self, event: Mapping[str, Any]) -> bool:
        key = (str(event["domain"]), str(event["operation"]))
        if key in self.any or str(event["content"]) in self.literals.get(key, ()):
            return True
        if any(ref.matches(event) for ref in self.patterns.get(key, ())):
            return True
        for app, config in self.apps:
            judges = getattr(app, "judges", None)
            if callable(judges):
                if judges(dict(event), dict(config)):
                    return True
            elif covers(app, key[0]):
                return True
        return False


def _rows_reason(register: str, alg: HashAlg, rows: Sequence[Any], logged: bool) -> str | None:
    """None when the register's log replays to this bank's signed value, with nothing unknown; else why not."""
    if not logged:
        return "no reference value names it, and no log shows what it holds"
    if any(r.status in _BROKEN for r in rows):
        return "no reference value names it, and its log does not account for it (see the replay findings)"
    if not any(r.bank == alg.kernel_name and r.status == ReplayStatus.MATCHED for r in rows):
        return f"no reference value names it, and its log cannot be replayed in {alg.kernel_name}"
    return None


def _events_reason(events: Sequence[Event], arch: str, judges: _EventJudges) -> str | None:
    """None when every measured event of a register is an anchor or a judged runtime event; else the first that is not."""
    for ev in events:
        if _anchor(ev):
            continue
        found = runtime_events([ev], arch=arch)
        if not found:
            return (f"no reference value names it, and its log holds record {ev.seq} ({ev.type}), which only "
                    "a reference value for the register can judge")
        item = found[0]
        if not item["domain"]:
            return (f"no reference value names it, and record {ev.seq} of its log is not a "
                    "'<domain> <operation> <content>' event")
        if not judges.judged(item):
            return (f"record {ev.seq} of its log ({item['domain']} {item['operation']}) is matched by no reference "
                    "event and judged by no configured appraiser")
    return None


def _events_by_register(replayed: LogReplay) -> dict[str, list[Event]]:
    """The measured events of the replay by the register they land in."""
    out: dict[str, list[Event]] = defaultdict(list)
    where: dict[str, str] = {}
    for ev in replayed.events:
        if ev.measured:
            reg = where.get(ev.register)
            if reg is None:
                reg = where[ev.register] = map_register(ev, replayed.arch)
            out[reg].append(ev)
    return out


def uncovered(signed: Mapping[str, Mapping[HashAlg, bytes]], claims: Mapping[str, Any], replayed: LogReplay,
              refvals: ReferenceValues | None, apps: Sequence[Any]) -> list[Uncovered]:
    """The signed register banks that hold a measurement and that the reference values do not cover.

    ``signed`` and ``claims`` are the verified evidence's registers and claims
    (:func:`~tsmr.appraisal.facts.claims_json`), ``replayed`` the replay of the
    bundle's logs, ``apps`` the appraisers in use.  In register order.
    """
    # What a register's events say is needed only for a register no reference value pins (few, or
    # none): the events are grouped, and the reference events indexed, on the first such register.
    judges: _EventJudges | None = None
    events_of: dict[str, list[Event]] | None = None
    rows_of: dict[str, list[Any]] = defaultdict(list)
    for row in replayed.rows:
        rows_of[row.register].append(row)
    content_reason: dict[str, str | None] = {}
    out: list[Uncovered] = []
    for reg in sorted(signed, key=register_order):
        for alg, value in sorted(signed[reg].items()):
            if value == default_initial(reg, alg):
                continue  # nothing was measured into it
            if refvals is not None and refvals.allowed(reg, alg.kernel_name) is not None:
                continue
            if refvals is not None and reg in refvals.claims and reg in claims:
                continue
            if events_of is None:
                events_of = _events_by_register(replayed)
            reason = _rows_reason(reg, alg, rows_of.get(reg, []), bool(events_of.get(reg)))
            if reason is None:
                if reg not in content_reason:
                    if judges is None:
                        judges = _EventJudges(refvals, apps)
                    content_reason[reg] = _events_reason(events_of.get(reg, []), replayed.arch, judges)
                reason = content_reason[reg]
            if reason is None:
                continue
            if refvals is None:
                reason = "no reference values were given"
            out.append(Uncovered(reg, alg.kernel_name, reason))
    return out
