"""Named, opt-in workarounds for firmware that does not follow the specifications.

A quirk changes what digest verification assumes about a class of events
(replay always extends the digests as recorded: that is what the register got).  None is ever applied unless the caller names it, and every quirk
applied is listed in the result.  :func:`suggest` tries them (and a few
common mistakes) on a mismatch, to say which one would explain it.

Quirks
------
``efi-variable-boot-data-only``
    Some firmware measures EV_EFI_VARIABLE_BOOT events as H(VariableData)
    instead of H(UEFI_VARIABLE_DATA) (TCG PC Client PFP 10.4.4 says the whole
    structure).  Only digest verification depends on it; replay uses the
    digests as recorded.
``string-without-nul``
    Boot loaders (GRUB among them) log a NUL-terminated string as the event
    data of EV_IPL / EV_ACTION events but hash the string without its NUL.
``duplicate-separators``
    Accept more than one EV_SEPARATOR in a TPM PCR 0-7 (normally a finding:
    events after a second separator may have been measured after firmware
    handed over, which is how some log-forgery attacks look).
``no-exit-boot-services``
    Accept a log that loaded boot applications but has no "Exit Boot Services"
    EV_EFI_ACTION (normally a finding: the log may be cut short).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .algorithms import HashAlg
from .errors import InputError
from .events import Event
from .findings import Finding, Severity
from .registers import register_on


@dataclass(frozen=True)
class Quirk:
    name: str
    description: str
    # Verification: alternative data whose hash the digest may be, or None.
    check_data: Callable[[Event], bytes | None]


def _variable_data(ev: Event) -> bytes | None:
    if ev.type != "EV_EFI_VARIABLE_BOOT" or len(ev.data) < 32:
        return None
    # UEFI_VARIABLE_DATA: GUID(16) || UINT64 name length || UINT64 data length || name (UTF-16) || data
    name_len = int.from_bytes(ev.data[16:24], "little")
    data_len = int.from_bytes(ev.data[24:32], "little")
    start = 32 + 2 * name_len
    if name_len > len(ev.data) or start + data_len != len(ev.data):
        return None
    return ev.data[start:]


def _without_nul(ev: Event) -> bytes | None:
    if ev.type in ("EV_IPL", "EV_ACTION", "EV_EFI_ACTION") and ev.data.endswith(b"\0"):
        return ev.data[:-1]
    return None


def _never(ev: Event) -> bytes | None:
    return None


QUIRKS: dict[str, Quirk] = {
    q.name: q
    for q in (
        Quirk("duplicate-separators", "more than one EV_SEPARATOR in a PCR 0-7 is accepted", _never),
        Quirk("no-exit-boot-services", "a log without Exit Boot Services events is accepted", _never),
        Quirk("efi-variable-boot-data-only", "EV_EFI_VARIABLE_BOOT digest is H(VariableData)", _variable_data),
        Quirk("string-without-nul", "string events hashed without their trailing NUL", _without_nul),
    )
}


def resolve(names: Sequence[str]) -> list[Quirk]:
    out = []
    for n in names:
        q = QUIRKS.get(n)
        if q is None:
            raise InputError(f"unknown quirk {n!r} (known: {', '.join(sorted(QUIRKS))})")
        out.append(q)
    return out


def check(event: Event, alg: HashAlg, quirks: Sequence[str]) -> tuple[bool | None, str | None]:
    """Verify an event's digest against its data, trying the named quirks; (result, quirk used)."""
    base = event.check(alg)
    if base is True:
        return True, None
    d = event.digest(alg)
    for q in resolve(quirks):
        alt = q.check_data(event)
        if alt is not None and d == alg.hash(alt):
            return True, q.name
    return base, None


def _anomaly(id: str, message: str) -> Finding:
    return Finding(id, Severity.WARNING, message, "executables")


def findings(events: Sequence[Event], quirks: Sequence[str] = ()) -> tuple[list[Finding], list[str]]:
    """Structural anomalies of a firmware log; a named quirk accepts (and is reported as applied)."""
    accepted = {q.name for q in resolve(quirks)}
    out: list[Finding] = []
    applied: set[str] = set()
    separators: dict[str, int] = {}
    apps = ebs = 0
    for e in events:
        if e.source != "tcg2":
            continue
        if e.type == "EV_SEPARATOR":
            separators[e.register] = separators.get(e.register, 0) + 1
        elif e.type == "EV_EFI_BOOT_SERVICES_APPLICATION":
            apps += 1
        elif e.type == "EV_EFI_ACTION" and e.data.startswith(b"Exit Boot Services"):
            ebs += 1
    for reg, n in sorted(separators.items()):
        if n > 1 and reg in {f"pcr{i}" for i in range(8)}:
            if "duplicate-separators" in accepted:
                applied.add("duplicate-separators")
            else:
                out.append(_anomaly(f"log.{reg}.duplicate-separator", f"{reg} has {n} EV_SEPARATOR events; a TPM log has one per PCR 0-7"))
    if apps and not ebs:
        if "no-exit-boot-services" in accepted:
            applied.add("no-exit-boot-services")
        else:
            out.append(_anomaly("log.exit-boot-services-missing",
                               f"{apps} boot application(s) were loaded but the log has no Exit Boot Services event"))
    return out, sorted(applied)


def suggest(
    events: Sequence[Event],
    register: str,
    alg: HashAlg,
    expected: bytes,
    *,
    arch: str | None = None,
    initial: Mapping[str, Mapping[HashAlg, bytes]] | None = None,
) -> str | None:
    """A sentence naming what would make the log replay to ``expected``, if something simple does."""
    on_reg = [e for e in events if e.measured and register_on(e.register, arch) == register]
    digests = [e.digest(alg) for e in on_reg]
    if any(d is None for d in digests):
        return None
    if register == "pcr0":
        for loc in (0, 3, 4):
            v = bytes(alg.digest_size - 1) + bytes([loc])
            for d in digests:
                v = alg.extend(v, d)  # type: ignore[arg-type]
            if v == expected:
                return f"starting PCR 0 at locality {loc} (a StartupLocality event the log lacks or misstates) would explain it"
    # Events measured twice or dropped: try removing one event.
    if len(digests) <= 512:
        for skip in range(len(digests)):
            v = (initial or {}).get(register, {}).get(alg) or alg.zero()
            for i, d in enumerate(digests):
                if i != skip:
                    v = alg.extend(v, d)  # type: ignore[arg-type]
            if v == expected:
                e = on_reg[skip]
                return f"the register matches if event {e.seq} ({e.type}) is left out: it was logged but not extended"
    return None


__all__ = ["Quirk", "QUIRKS", "Finding", "resolve", "check", "findings", "suggest"]
