"""eventlog.runtime_log_events reads a valid log in one pass and any other log line by line: for every
input both ways must give the same events, or the same error (the first fault in line order)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tsmr import HashAlg, eventlog
from tsmr.runtime_log.records import extend_line, sync_line

# Pieces of lines: plain text, the prefixes and bytes the reader treats specially, faults
# (C0 controls, CR, bytes that are not UTF-8), and characters a writer refuses but a reader keeps.
PIECES = [
    b"example.com/app start", b"a", b" ", b"#", b"# .EXTEND ", b"SYNC ", b"INIT ", b"SYNC", b"INIT", b"S", b"I",
    "\u00e9".encode(), "\u202e".encode(), "\u0085".encode(), b"\xff", b"\xc3", b"\x01", b"\r", b"\t", b"\x7f",
    sync_line({HashAlg.SHA384: bytes(48)}), sync_line({HashAlg.SHA256: bytes(32), HashAlg.SHA384: b"\x01" * 48}),
    extend_line({HashAlg.SHA384: b"\x02" * 48}), b"INIT sha384/" + b"00" * 48, b"SYNC sha384/zz",
    b"\n", b"\n", b"\n",
]


def _outcome(read: Any, data: bytes) -> tuple[Any, ...]:
    try:
        events = read(data, register="rtmr3")
    except Exception as exc:  # the same error, of the same type, with the same text
        return ("error", type(exc), str(exc))
    return ("events", [(e, e.details) for e in events])  # details take no part in Event equality


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14), st.booleans())
def test_one_pass_and_line_by_line_agree(pieces: list[bytes], terminate: bool) -> None:
    data = b"".join(pieces)
    if terminate and not data.endswith(b"\n"):
        data += b"\n"
    if data and not data.endswith(b"\n") and not data.startswith(b"INIT "):
        return  # refused as truncated before either way is taken
    assert _outcome(eventlog.runtime_log_events, data) == _outcome(eventlog._runtime_log_events_by_line, data)


def test_an_honest_log_takes_the_one_pass_way_and_reads_right() -> None:
    lines = [sync_line({HashAlg.SHA384: bytes(48)}), b"example.com/app start {\"v\":1}", b"# a comment", b"",
             extend_line({HashAlg.SHA384: b"\x02" * 48}), "caf\u00e9 opened".encode(), b"one-word"]
    events = eventlog.runtime_log_events(b"\n".join(lines) + b"\n")
    assert [(e.seq, e.type) for e in events] == [(1, "sync"), (2, "event"), (5, "extend"), (6, "event"), (7, "event")]
    assert events[1].digests == ((HashAlg.SHA384, HashAlg.SHA384.hash(lines[1])),)
    assert events[3].summary == "caf\u00e9 opened" and events[2].digests == ((HashAlg.SHA384, b"\x02" * 48),)
    assert events[0].details == {"declares": {"sha384": "00" * 48}}
