"""A TCG2 log's records as unified :class:`tsmr.events.Event` objects."""

from __future__ import annotations

from ...errors import InputError
from ...events import Event
from ...registers import ccmr_to_register
from .. import uefi
from .reader import _gc_paused
from .records import _KNOWN_ALGS, EV_NO_ACTION, EVENT_TYPE_NAMES, TCG2Log, event_type_name

_ARCH_SOURCES = {"tpm": "tcg2", "tdx": "ccel", "cca": "ccel"}


def register_name(index: int, arch: str = "tpm") -> str:
    """The unified register name of a log index: ``pcrN`` for a TPM log, ``rtmrN``/``remN`` for a CCEL."""
    if arch == "tpm":
        return f"pcr{index}"
    if 0 <= index <= 4:
        return ccmr_to_register(index, arch)
    return f"ccmr{index}"  # not a CC MR index: keep the event, name what it says


def to_events(log: TCG2Log, *, arch: str = "tpm", decode: bool = True) -> list[Event]:
    """The log's records as unified :class:`tsmr.events.Event` objects (the Spec ID header is not one).

    ``arch="tpm"``: source ``"tcg2"``, register ``pcrN``.  ``arch="tdx"`` (or
    ``"cca"``): the index is a CC MR index (a CCEL), source ``"ccel"``, register
    ``mrtd``/``rtmr0..3`` (``rim``/``rem0..3``); an index above 4 is named
    ``ccmrN``.  Digests keep the algorithms tsmr knows (others are dropped: the
    bank could not be replayed anyway), ``measured`` is False for EV_NO_ACTION,
    ``data_rule`` comes from :func:`tsmr.formats.uefi.data_rule`, ``summary``
    and ``details`` from :func:`tsmr.formats.uefi.describe`.  ``decode=False``
    skips the last two (a million-event log then costs about one Event
    construction per record).
    """
    source = _ARCH_SOURCES.get(arch)
    if source is None:
        raise InputError(f"tcg2: unknown architecture {arch!r} (known: {', '.join(_ARCH_SOURCES)})")
    out: list[Event] = []
    with _gc_paused():
        _fill_events(log, source, arch, decode, out)
    return out


def _fill_events(log: TCG2Log, source: str, arch: str, decode: bool, out: list[Event]) -> None:
    # Locals instead of globals and attribute lookups: this loop runs once per record.
    names: dict[int, str] = {}
    known = _KNOWN_ALGS
    type_names = EVENT_TYPE_NAMES
    rule_of = uefi.data_rule
    describe = uefi.describe
    uintn = log.spec_id.uintn_size
    append = out.append
    for seq, ev in enumerate(log.events):
        index = ev.index
        register = names.get(index)
        if register is None:
            register = names[index] = register_name(index, arch)
        etype = ev.event_type
        data = ev.data
        digests = tuple([(known[a], d) for a, d in ev.digests if a in known])
        if decode:
            summary, details = describe(etype, data, uintn_size=uintn)
        else:
            summary, details = "", None
        append(Event(source, seq, index, register, type_names.get(etype) or event_type_name(etype), digests, data,
                     etype != EV_NO_ACTION, rule_of(etype, data), summary, details, ev.offset))


__all__ = ["register_name", "to_events"]
