"""Regression tests for inputs the fuzz targets found (tests/fuzz/targets.py), inline as bytes.
"""

from __future__ import annotations


from tsmr.errors import ParseError
from tsmr.formats import tcg2

# A Spec ID header (one bank: sha256), then one TCG_PCR_EVENT2 of sixteen zero bytes (pcrIndex 0,
# EV_PREBOOT_CERT, no digests, no data), then eight 0xFF bytes.  Minimised from the crasher
# tcg2-crash-db870d9467ef4873d721722dbc53ccf88d4fd165 (964 bytes).
ZERO_EVENT_THEN_FF = bytes.fromhex(
    "0000000003000000000000000000000000000000000000000000000021000000"
    "53706563204944204576656e743033000000000000020002010000000b002000"
    "00"
    + "00" * 16
    + "ff" * 8
)


def test_tcg2_zero_event_before_ff_tail_round_trips() -> None:
    try:
        log = tcg2.parse(ZERO_EVENT_THEN_FF)
    except ParseError:
        return  # rejecting the input is a fix too
    assert tcg2.encode(log) == ZERO_EVENT_THEN_FF[:log.end]


# The same in a SHA-1-only (legacy) log: a TCG_PCR_EVENT EV_SEPARATOR on PCR 0, then a TCG_PCR_EVENT of
# 32 zero bytes, then eight 0xFF bytes.  Minimised from tcg2-crash-b67431144b2d6ae51667c08217289384a08c3d89.
LEGACY_ZERO_EVENT_THEN_FF = bytes.fromhex(
    "00000000040000009069ca78e7450a285173431b3e52c5c25299e4730400000000000000"
    + "00" * 32
    + "ff" * 8
)


def test_tcg2_legacy_zero_event_before_ff_tail_round_trips() -> None:
    try:
        log = tcg2.parse(LEGACY_ZERO_EVENT_THEN_FF)
    except ParseError:
        return
    assert tcg2.encode(log) == LEGACY_ZERO_EVENT_THEN_FF[:log.end]
