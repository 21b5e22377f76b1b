"""What a prediction is: the events a launch or boot of given artifacts records, and the register values they give.

A :class:`Prediction` is pure data.  Each :class:`PredictedEvent` names the component it
measures (``kernel``, ``cmdline``, ``initrd``, ``firmware``, ``acpi`` ...), so that a
verifier holding the prediction can say *which* component differs when a register does
not match (:mod:`tsmr.appraisal` reads the ``predicted`` member of reference values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..algorithms import HashAlg
from ..errors import InputError

__all__ = ["PredictedEvent", "Prediction", "extend_all"]


@dataclass(frozen=True)
class PredictedEvent:
    """One event a measured launch or boot records, as predicted from its inputs."""

    register: str  # rtmr1, pcr4, ...
    event_type: str  # TCG name: EV_EFI_BOOT_SERVICES_APPLICATION, EV_EVENT_TAG, ...
    digests: Mapping[HashAlg, bytes]  # what is extended, per bank
    component: str  # the input it measures: kernel, cmdline, initrd, firmware, separator, acpi, ...
    description: str  # for people: "Authenticode digest of the kernel (bzImage as QEMU loads it)"
    data: bytes | None = None  # the event data a log records, when the prediction determines it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "register": self.register,
            "type": self.event_type,
            "digests": {alg.name.lower(): d.hex() for alg, d in self.digests.items()},
            "component": self.component,
            "description": self.description,
        }
        if self.data is not None:
            out["data"] = self.data.hex()
        return out


@dataclass(frozen=True)
class Prediction:
    """Register values and claims predicted for one platform from named inputs.

    ``registers`` holds only registers the inputs determine completely; ``claims`` the
    launch values (``mrtd`` for TDX, ``measurement`` for SEV-SNP), as lowercase hex;
    ``inputs`` what each component was (file name and digest, or the value given);
    ``notes`` the assumptions made (the VMM's page order, its setup-header patching ...);
    ``other_values`` further values a register in ``registers`` legitimately holds at
    other points of the boot the prediction covers (PCR 11 after each systemd boot
    phase): reference values accept each of them as well.
    """

    platform: str  # tdx, snp, uki, tpm
    registers: Mapping[str, Mapping[HashAlg, bytes]] = field(default_factory=dict)
    claims: Mapping[str, str] = field(default_factory=dict)
    events: Sequence[PredictedEvent] = ()
    inputs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    notes: Sequence[str] = ()
    other_values: Mapping[str, Sequence[Mapping[HashAlg, bytes]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The shape ``tsmr eventlog replay --json`` prints (``registers``), plus the rest."""
        out: dict[str, Any] = {
            "platform": self.platform,
            "registers": {r: {a.name.lower(): v.hex() for a, v in banks.items()} for r, banks in self.registers.items()},
            "claims": dict(self.claims),
            "events": [e.to_json() for e in self.events],
            "inputs": {k: dict(v) for k, v in self.inputs.items()},
            "notes": list(self.notes),
        }
        if self.other_values:
            out["other_values"] = {r: [{a.name.lower(): v.hex() for a, v in banks.items()} for banks in values]
                                   for r, values in self.other_values.items()}
        return out

    def to_refvals(self, refvals_id: str, description: str | None = None) -> dict[str, Any]:
        """A ``tsmr-refvals`` document: the registers and claims, and the events behind them."""
        doc: dict[str, Any] = {"format": "tsmr-refvals", "version": 1, "id": refvals_id}
        doc["description"] = description or f"predicted by tsmr predict {self.platform}"
        if self.registers:
            doc["registers"] = {r: {a.name.lower(): self._accepted(r, a, v) for a, v in banks.items()}
                                for r, banks in self.registers.items()}
        if self.claims:
            doc["claims"] = {k: [v] for k, v in self.claims.items()}
        predicted_regs = set(self.registers)
        events = [e.to_json() for e in self.events if e.register in predicted_regs]
        doc["predicted"] = {"platform": self.platform, "events": events,
                            "inputs": {k: dict(v) for k, v in self.inputs.items()}, "notes": list(self.notes)}
        return doc

    def _accepted(self, register: str, alg: HashAlg, value: bytes) -> list[str]:
        """``value`` then the register's other values in ``alg``, each once, as hex."""
        out = [value.hex()]
        for banks in self.other_values.get(register, ()):
            other = banks.get(alg)
            if other is not None and other.hex() not in out:
                out.append(other.hex())
        return out


def extend_all(events: Sequence[PredictedEvent], banks: Sequence[HashAlg],
               initial: Mapping[str, Mapping[HashAlg, bytes]] | None = None) -> dict[str, dict[HashAlg, bytes]]:
    """Fold ``events`` into their registers (zero start unless ``initial`` says), in each bank of ``banks``."""
    out: dict[str, dict[HashAlg, bytes]] = {}
    for e in events:
        regs = out.setdefault(e.register, {})
        for alg in banks:
            if alg not in e.digests:
                raise InputError(f"{e.register} {e.event_type} ({e.component}): no {alg.name.lower()} digest predicted")
            start = regs.get(alg)
            if start is None:
                start = (initial or {}).get(e.register, {}).get(alg, bytes(alg.digest_size))
            regs[alg] = alg.extend(start, e.digests[alg])
    return out
