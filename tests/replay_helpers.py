"""Register values of codec-level logs through the reference fold (:func:`tsmr.replay.replay`), keyed as the log keys them."""

from __future__ import annotations

from typing import Mapping

from tsmr import HashAlg
from tsmr.formats import tcg2
from tsmr.registers import register_to_ccmr
from tsmr.replay import replay


def tcg2_values(log: tcg2.TCG2Log, initial: Mapping[tuple[int, HashAlg], bytes] | None = None, *,
                arch: str = "tpm") -> dict[int, dict[HashAlg, bytes]]:
    """``{index: {bank: value}}`` of a TCG2 log (PCR index, or CC MR index with ``arch="tdx"``)."""
    name = (lambda i: f"pcr{i}") if arch == "tpm" else (lambda i: tcg2.register_name(i, arch))
    start: dict[str, dict[HashAlg, bytes]] = {}
    for (index, alg), value in (initial or {}).items():
        start.setdefault(name(index), {})[HashAlg(alg)] = value
    result = replay(tcg2.to_events(log, arch=arch, decode=False), initial=start, arch=arch)
    out: dict[int, dict[HashAlg, bytes]] = {}
    for reg, banks in result.registers.items():
        index = int(reg[3:]) if reg.startswith("pcr") else register_to_ccmr(reg)
        if index is None:
            index = int(reg[4:])  # ccmrN
        out[index] = banks
    return out
