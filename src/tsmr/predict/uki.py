"""PCR 11 of a unified kernel image (UKI), as systemd-stub measures it and systemd-measure predicts it.

systemd-stub, started from a UKI, measures the UKI's payload sections into PCR 11
before it starts the kernel (systemd docs/TPM2_PCR_MEASUREMENTS.md, "PCR 11, EV_IPL";
the UAPI UKI specification's canonical order).  For each section it knows, in
systemd's own order (``unified_sections[]`` of src/fundamental/tpm-pcr.c, later
uki.c), and only when the section is present and not empty, two ``EV_IPL`` events:

1. the digest of the section's *name* in ASCII **with** its terminating NUL;
2. the digest of the section's *contents* (its in-memory extent, ``VirtualSize``
   bytes).

``.pcrsig`` is never measured (it holds the signatures of the values predicted here).
Later, systemd-pcrphase extends each boot-phase word (``enter-initrd``,
``leave-initrd``, ``sysinit``, ``ready`` ...) as UTF-8 without a NUL; a *phase* is a
colon-separated path of such words, and PCR 11 "at" a phase is the value after its
words.  systemd-measure's default phases are the four prefixes of
``enter-initrd:leave-initrd:sysinit:ready``.

Which sections a stub measures depends on its version (systemd NEWS, and the
pull requests that added them):

* 252: ``.linux .osrel .cmdline .initrd .splash .dtb .pcrpkey``
* 254: ``.uname`` and ``.sbat`` too (after ``.dtb``, before ``.pcrpkey``)
* 256: ``.ucode`` too (after ``.initrd``)

Newer stubs also know ``.profile`` (multi-profile UKIs), ``.dtbauto``, ``.hwids`` and
``.efifw``, whose measurement depends on the profile or device the stub selects at boot;
a UKI carrying them is refused rather than predicted wrongly.

Some systemd 257 releases (ukify and systemd-measure, reverted in systemd PR 36259)
set the ``.linux`` section's ``VirtualSize`` to the kernel's ``SizeOfImage`` and so
measured the kernel padded with zeros to that size: ``pad_linux`` reproduces this
for a kernel given as a file.  A kernel taken from a built UKI (:func:`uki_sections`)
needs no such choice: its ``VirtualSize`` says what the stub measures.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

from ..algorithms import HashAlg
from ..errors import InputError
from .model import PredictedEvent, Prediction, extend_all
from .pe import PeImage

__all__ = ["SECTIONS", "DEFAULT_PHASES", "DEFAULT_BANKS", "LATEST_SYSTEMD", "Section", "measured_sections",
           "normalize_phase", "stub_version", "uki_sections", "predict_uki"]

SECTIONS: tuple[str, ...] = (".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb",
                             ".uname", ".sbat", ".pcrpkey")
"""Every section this module predicts, in systemd's measuring order (``.pcrsig``, never measured, left out)."""

_SINCE = {".uname": 254, ".sbat": 254, ".ucode": 256}
"""The systemd version whose stub first measured a section (the rest: 252, the first with PCR 11)."""

_SELECTED_AT_BOOT = (".profile", ".dtbauto", ".hwids", ".efifw")
"""Sections (systemd 257 and later) whose measurement depends on what the stub selects at boot."""

FIRST_SYSTEMD = 252
LATEST_SYSTEMD = 256
"""The newest stub whose section set this module knows completely."""

DEFAULT_PHASES: tuple[str, ...] = ("enter-initrd", "enter-initrd:leave-initrd", "enter-initrd:leave-initrd:sysinit",
                                   "enter-initrd:leave-initrd:sysinit:ready")
"""systemd-measure's phases when none is given: from entering the initrd to the system being up."""

DEFAULT_BANKS: tuple[HashAlg, ...] = (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)
"""systemd-measure's banks when none is given."""


@dataclass(frozen=True)
class Section:
    """One measured section: its name and the bytes the stub measures."""

    name: str
    contents: bytes
    source: str = ""  # for people: the file it came from


def measured_sections(systemd_version: int = LATEST_SYSTEMD) -> tuple[str, ...]:
    """The sections the stub of ``systemd_version`` measures, in its order."""
    if systemd_version < FIRST_SYSTEMD:
        raise InputError(f"systemd {systemd_version} does not measure UKI sections into PCR 11 "
                         f"(systemd-stub does since {FIRST_SYSTEMD})")
    return tuple(s for s in SECTIONS if _SINCE.get(s, FIRST_SYSTEMD) <= systemd_version)


def stub_version(image: PeImage) -> int | None:
    """The systemd version of the stub a UKI was built from, read from its ``.sdmagic`` section.

    systemd-stub carries ``#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####`` there;
    None when the section is missing or says something else.
    """
    magic = image.section(".sdmagic")
    if magic is None:
        return None
    m = re.search(rb"systemd-stub (\d+)", magic.contents[:256])
    return int(m.group(1)) if m else None


def _version(image: PeImage, systemd_version: int | None) -> tuple[int, str]:
    """The version to predict for, and how it was chosen (for the notes)."""
    if systemd_version is not None:
        return systemd_version, "as given"
    found = stub_version(image)
    if found is None:
        return LATEST_SYSTEMD, "the newest known: the UKI's .sdmagic names no systemd-stub version"
    return found, "named by the stub's .sdmagic section"


def normalize_phase(phase: str) -> str:
    """A phase path with empty words dropped (``:enter-initrd::ready:`` -> ``enter-initrd:ready``), as systemd does."""
    return ":".join(w for w in phase.split(":") if w)


def uki_sections(data: bytes | bytearray | memoryview, systemd_version: int | None = None,
                 source: str = "") -> list[Section]:
    """The sections of a built UKI that its stub measures, each as the stub sees it (``VirtualSize`` bytes).

    ``systemd_version`` None means the version the stub's ``.sdmagic`` names.

    A UKI with sections whose measurement the stub decides at boot (``.profile``,
    ``.dtbauto``, ``.hwids``, ``.efifw``) raises :class:`InputError`; so does one that
    holds a measured section twice (the UKI specification makes them singletons).
    """
    image = PeImage.parse(data)
    names = [s.name for s in image.sections]
    selected = sorted({n for n in names if n in _SELECTED_AT_BOOT})
    if selected:
        raise InputError(f"{source or 'the UKI'} has {', '.join(selected)} sections: the stub measures those "
                         "according to the profile or device it selects at boot, which tsmr does not predict")
    wanted = measured_sections(_version(image, systemd_version)[0])
    out = []
    for name in wanted:
        found = [s for s in image.sections if s.name == name]
        if len(found) > 1:
            raise InputError(f"{source or 'the UKI'} has {len(found)} {name} sections; a UKI holds each once")
        if found:
            where = f"{source}:{name}" if source else name
            out.append(Section(name, found[0].contents, where))
    if not out or out[0].name != ".linux":
        raise InputError(f"{source or 'the file'} is not a UKI: it has no .linux section")
    return out


def _pad_linux(kernel: bytes) -> bytes:
    """The kernel padded with zeros to its PE ``SizeOfImage`` (systemd 257.0's ukify and measure)."""
    try:
        image = PeImage.parse(kernel)
    except InputError:
        return kernel  # systemd-measure ignores a .linux that is not PE
    opt = image.pe_offset + 24
    size_of_image = int.from_bytes(bytes(image.data[opt + 56:opt + 60]), "little")
    return kernel + bytes(max(0, size_of_image - len(kernel)))


def predict_uki(sections: Sequence[Section], *, phases: Sequence[str] = DEFAULT_PHASES,
                banks: Sequence[HashAlg] = DEFAULT_BANKS, systemd_version: int | None = None,
                pad_linux: bool = False, uki: tuple[str, bytes] | None = None) -> Prediction:
    """PCR 11 after the ``sections`` and each phase in ``phases``, in each of ``banks``.

    ``sections`` may come in any order; they are measured in systemd's.  The register
    value of the prediction is the one after the last phase given (by default
    ``...:ready``); the values after the other phases are its ``other_values``, so
    reference values written from it accept PCR 11 at any of the phases.  An empty
    phase ("") is the value after the sections alone.  ``uki`` (name, bytes) adds the
    UKI's own Authenticode digest to the inputs (what PCR 4 records when the
    firmware starts it).  ``systemd_version`` None means the one the UKI's stub names
    (``.sdmagic``), else the newest this module knows.
    """
    if not banks:
        raise InputError("predict uki: no bank given")
    if not phases:
        raise InputError("predict uki: no phase given")
    uki_image = PeImage.parse(uki[1]) if uki is not None else None
    if uki_image is not None:
        systemd_version, chosen = _version(uki_image, systemd_version)
    elif systemd_version is None:
        systemd_version, chosen = LATEST_SYSTEMD, "the newest known (no UKI given)"
    else:
        chosen = "as given"
    known = measured_sections(systemd_version)
    by_name: dict[str, Section] = {}
    for s in sections:
        if s.name not in SECTIONS:
            raise InputError(f"systemd-stub does not measure a {s.name} section into PCR 11")
        if s.name not in known:
            raise InputError(f"the stub of systemd {systemd_version} does not measure {s.name} "
                             f"(since systemd {_SINCE[s.name]}); pass --systemd {_SINCE[s.name]} or later")
        if s.name in by_name:
            raise InputError(f"{s.name} given twice")
        by_name[s.name] = s
    if ".linux" not in by_name:
        raise InputError("predict uki: the kernel (.linux) is required, as systemd-measure requires it")
    banks = tuple(dict.fromkeys(banks))
    events: list[PredictedEvent] = []
    inputs: dict[str, dict[str, str]] = {}
    notes: list[str] = [f"sections measured as the stub of systemd {systemd_version} ({chosen}) does: "
                        + " ".join(known) + " (those present and not empty, in this order)"]
    for name in known:
        given = by_name.get(name)
        if given is None:
            continue
        contents = _pad_linux(given.contents) if (name == ".linux" and pad_linux) else given.contents
        inputs[name] = {"file": given.source, "size": str(len(contents)),
                        "sha256": hashlib.sha256(contents).hexdigest()}
        if not contents:
            notes.append(f"{name} is empty: the stub skips it, as systemd-measure does")
            continue
        label = (name + "\0").encode("utf-16-le")  # the event's description: the name in UTF-16
        events.append(PredictedEvent(
            register="pcr11", event_type="EV_IPL", component=name, data=label,
            digests={alg: alg.hash(name.encode("ascii") + b"\0") for alg in banks},
            description=f"the section name {name} (ASCII with its NUL)"))
        events.append(PredictedEvent(
            register="pcr11", event_type="EV_IPL", component=name, data=label,
            digests={alg: alg.hash(contents) for alg in banks},
            description=f"the contents of {name} ({len(contents)} bytes)"))
    if pad_linux:
        notes.append(".linux padded with zeros to the kernel's SizeOfImage, as the ukify and systemd-measure of "
                     "some systemd 257 releases do")
    sections_value = extend_all(events, banks).get("pcr11") or {alg: alg.zero() for alg in banks}
    paths = list(dict.fromkeys(normalize_phase(p) for p in phases))
    values: list[dict[HashAlg, bytes]] = []
    for path in paths:
        value = dict(sections_value)
        for word in path.split(":") if path else ():
            for alg in banks:
                value[alg] = alg.extend(value[alg], alg.hash(word.encode("utf-8")))
        values.append(value)
        shown = " ".join(f"{alg.name.lower()}={v.hex()}" for alg, v in value.items())
        notes.append(f"pcr11 at phase {path!r}: {shown}" if path else f"pcr11 after the sections alone: {shown}")
    last = paths[-1]
    for word in last.split(":") if last else ():
        events.append(PredictedEvent(
            register="pcr11", event_type="systemd:phase", component="phase", data=word.encode("utf-8"),
            digests={alg: alg.hash(word.encode("utf-8")) for alg in banks},
            description=f"boot phase {word!r} (systemd-pcrphase, UTF-8 without a NUL)"))
    if uki is not None and uki_image is not None:
        inputs["uki"] = {"file": uki[0], "authenticode_sha256": uki_image.authenticode(HashAlg.SHA256).hex(),
                         "size": str(len(uki[1]))}
    notes.append("phase events are in systemd's userspace log (tpm2-measure.log), the section events in the "
                 "firmware's TCG log")
    return Prediction(platform="uki", registers={"pcr11": values[-1]}, events=tuple(events), inputs=inputs,
                      notes=tuple(notes), other_values={"pcr11": tuple(values[:-1])} if len(values) > 1 else {})
