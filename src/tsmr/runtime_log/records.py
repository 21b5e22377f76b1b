"""Records of the tsmr runtime event log (spec/runtime-log.md sections 1-2), pure.

A log is UTF-8 text, one record per line, every line ending in LF.  A line is

* blank: nothing;
* a comment (``#`` first): kept, not hashed, except the directive
  ``# .EXTEND <alg>/<hex>...`` which replays as a raw extend of those banks;
* a sync record ``SYNC <alg>/<hex>...`` (or the CoCo AAEL v1 ``INIT
  <alg>/<hex>``): the register value before it, itself hashed and extended;
* an event record: anything else, hashed and extended as-is.

Writers refuse what a reader could hash differently: C0 controls and DEL,
leading or trailing spaces, over-long lines.  They also refuse what a reader
could not *see* as it was hashed (section 2.1): C1 controls, the Unicode line
and paragraph separators and the bidirectional controls, which a terminal
obeys (a new line, text drawn right to left) instead of showing.  Nothing is
ever altered.

Readers are stricter about bytes than about what is shown: a line with a C0
control is malformed (it may not even be one line to another reader), but a
line with an invisible character is still one well-delimited line whose
bytes are hashed as they are, so it is read and replayed; :func:`hidden_characters`
names what it holds, and whoever shows the line must show those escaped.
"""

from __future__ import annotations

import enum
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..algorithms import HashAlg
from ..errors import InputError, ParseError

FORMAT = "tsmr-log"
MAX_RECORD_BYTES = 65536  # MUST (section 2.1)
RECOMMENDED_RECORD_BYTES = 4096  # SHOULD

SYNC_PREFIX = b"SYNC "
INIT_PREFIX = b"INIT "
EXTEND_PREFIX = b"# .EXTEND "

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
# Characters that change how the rest of a line is drawn, or break it, without being
# drawn themselves: C1 controls (NEL among them), LINE / PARAGRAPH SEPARATOR, and the
# bidirectional marks, embeddings, overrides and isolates (section 2.1).
HIDDEN_CODEPOINTS = frozenset([*range(0x80, 0xA0), 0x2028, 0x2029, 0x200E, 0x200F, *range(0x202A, 0x202F),
                               *range(0x2066, 0x206A)])
_HIDDEN = re.compile("[" + "".join(sorted(map(chr, HIDDEN_CODEPOINTS))) + "]")
# Their UTF-8 forms, for scanning bytes without decoding: C2 80-9F; E2 80 8E/8F, A8/A9, AA-AE; E2 81 A6-A9.
HIDDEN_BYTES = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\x8e\x8f\xa8-\xae]|\xe2\x81[\xa6-\xa9]")
_FORBIDDEN_BYTES = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")  # LF is the separator
_TOKEN = re.compile(r"[^\s\x00-\x1f\x7f]+")


class Kind(enum.Enum):
    BLANK = "blank"
    COMMENT = "comment"
    EXTEND = "extend"  # the '# .EXTEND' directive
    SYNC = "sync"
    EVENT = "event"

    @property
    def hashed(self) -> bool:
        """Whether the line changes the register (sync, event, or .EXTEND)."""
        return self in (Kind.SYNC, Kind.EVENT, Kind.EXTEND)


class RecordError(InputError):
    """A record a writer must refuse; says which rule and where."""

    def __init__(self, message: str, *, rule: str, position: int | None = None) -> None:
        self.rule = rule
        self.position = position
        where = f" at character {position}" if position is not None else ""
        super().__init__(f"invalid record: {message}{where} (rule: {rule})")


@dataclass(frozen=True, slots=True)
class Line:
    """One classified line of a log: its kind, bytes (without LF) and bank values."""

    kind: Kind
    raw: bytes
    values: tuple[tuple[HashAlg, bytes], ...] = ()

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8")

    @property
    def hidden(self) -> tuple[tuple[int, int], ...]:
        """``(character position, code point)`` of each character a writer refuses but a reader keeps."""
        return hidden_characters(self.text) if HIDDEN_BYTES.search(self.raw) else ()


def character_name(code: int) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``: a code point as a person can read it."""
    name = unicodedata.name(chr(code), "") or _C1_NAMES.get(code, "")
    return f"U+{code:04X}" + (f" {name}" if name else "")


# unicodedata has no names for control characters; these are the ones people meet.
_C1_NAMES = {0x85: "NEXT LINE (NEL)", 0x9B: "CONTROL SEQUENCE INTRODUCER (CSI)", 0x9D: "OPERATING SYSTEM COMMAND (OSC)"}


def hidden_characters(text: str) -> tuple[tuple[int, int], ...]:
    """``(position, code point)`` of every C1 control, line or paragraph separator and bidirectional
    control in ``text``: characters a record must not hold (section 2.1) because a terminal acts on
    them rather than showing them."""
    return tuple((m.start(), ord(m.group())) for m in _HIDDEN.finditer(text))


# -- writing -----------------------------------------------------------------

def check_record(text: str) -> bytes:
    """Validate an event record for writing and return its UTF-8 bytes.

    Refuses (never alters) empty records, control characters (C0, DEL, C1),
    line and paragraph separators, bidirectional controls, leading or
    trailing spaces, records over 65536 bytes, and lines that would not be
    event records (comments, sync lines: those tsmr writes itself).
    """
    if not isinstance(text, str):
        raise RecordError(f"a record is text, not {type(text).__name__}", rule="type")
    if not text:
        raise RecordError("empty record", rule="empty")
    m = _FORBIDDEN.search(text)
    if m:
        ch = m.group()
        raise RecordError(f"control character U+{ord(ch):04X}", rule="no C0 controls or DEL", position=m.start())
    m = _HIDDEN.search(text)
    if m:
        code = ord(m.group())
        what = ("C1 control character" if code < 0xA0 else "line or paragraph separator" if code in (0x2028, 0x2029)
                else "bidirectional control character")
        # Refused rather than escaped: what a reader is shown must be what was hashed.
        raise RecordError(f"{what} {character_name(code)}", rule="no C1, line separator or bidirectional controls",
                          position=m.start())
    if text[0] == " ":
        raise RecordError("leading space", rule="no leading or trailing space", position=0)
    if text[-1] == " ":
        raise RecordError("trailing space", rule="no leading or trailing space", position=len(text) - 1)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError("not encodable as UTF-8 (lone surrogate)", rule="UTF-8", position=exc.start) from None
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(f"{len(raw)} bytes, over the limit of {MAX_RECORD_BYTES}", rule="length")
    if raw[:1] == b"#":
        raise RecordError("starts with '#': it would be a comment, never hashed", rule="event, not comment", position=0)
    if raw.startswith(SYNC_PREFIX) or raw.startswith(INIT_PREFIX) or raw in (b"SYNC", b"INIT"):
        raise RecordError("SYNC and INIT records are written by the log itself", rule="reserved prefix", position=0)
    return raw


def format_values(values: Mapping[HashAlg, bytes] | Iterable[tuple[HashAlg, bytes]]) -> str:
    """``alg/hex`` items, lowercase hex, ascending TPM_ALG_ID (section 2.3)."""
    items = sorted(dict(values).items())
    for alg, value in items:
        if len(value) != alg.digest_size:
            raise InputError(f"{alg} value must be {alg.digest_size} bytes, got {len(value)}")
    return " ".join(f"{alg.kernel_name}/{value.hex()}" for alg, value in items)


def sync_line(values: Mapping[HashAlg, bytes]) -> bytes:
    if not values:
        raise InputError("a sync record needs at least one bank")
    return b"SYNC " + format_values(values).encode()


def extend_line(values: Mapping[HashAlg, bytes]) -> bytes:
    if not values:
        raise InputError("an .EXTEND directive needs at least one bank")
    return b"# .EXTEND " + format_values(values).encode()


def event(domain: str, operation: str, content: Any = None) -> str:
    """``<domain> <operation>[ <content>]`` (the CoCo AAEL convention).

    ``content`` given as a string is used as-is; anything else is written as
    RFC 8785 canonical JSON.
    """
    for name, tok in (("domain", domain), ("operation", operation)):
        if not isinstance(tok, str) or not _TOKEN.fullmatch(tok):
            raise RecordError(f"{name} {tok!r} must be a non-empty token without whitespace", rule="event grammar")
    line = f"{domain} {operation}"
    if content is not None:
        line += " " + (content if isinstance(content, str) else canonical_json(content))
    check_record(line)
    return line


# -- RFC 8785 JSON Canonicalization Scheme -------------------------------------

_MAX_SAFE = 2**53 - 1


def canonical_json(value: Any) -> str:
    """RFC 8785 (JCS): sorted keys (UTF-16 order), no whitespace, ECMAScript numbers."""
    out: list[str] = []
    _jcs(value, out)
    return "".join(out)


def _jcs(v: Any, out: list[str]) -> None:
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, str):
        out.append(_jcs_string(v))
    elif isinstance(v, int):
        if abs(v) <= _MAX_SAFE:
            out.append(str(v))
        else:
            # RFC 8785 numbers are doubles: a larger integer is fine only if a double holds it exactly.
            f = float(v) if abs(v) < 2**1024 else math.inf
            if not math.isfinite(f) or int(f) != v:
                raise InputError(f"integer {v} is not exactly representable as an IEEE-754 double (RFC 8785 numbers are doubles)")
            out.append(_es_number(f))
    elif isinstance(v, float):
        out.append(_es_number(v))
    elif isinstance(v, Mapping):
        keys = list(v.keys())
        if not all(isinstance(k, str) for k in keys):
            raise InputError("JSON object keys must be strings")
        out.append("{")
        for i, k in enumerate(sorted(keys, key=lambda k: k.encode("utf-16-be", "surrogatepass"))):
            if i:
                out.append(",")
            out.append(_jcs_string(k))
            out.append(":")
            _jcs(v[k], out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _jcs(item, out)
        out.append("]")
    else:
        raise InputError(f"cannot write {type(v).__name__} as JSON")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _jcs_string(s: str) -> str:
    parts = ['"']
    for ch in s:
        if ch in _ESCAPES:
            parts.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def _es_number(x: float) -> str:
    """ECMAScript Number::toString for a finite double (RFC 8785 section 3.2.2.3)."""
    if not math.isfinite(x):
        raise InputError("NaN and Infinity are not JSON numbers")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    r = repr(abs(x))  # shortest round-trip digits, as ECMAScript requires
    mant, _, exp = r.partition("e")
    e = int(exp) if exp else 0
    int_part, _, frac = mant.partition(".")
    digits = (int_part + frac).lstrip("0")
    n = len(int_part) + e - (len(int_part + frac) - len((int_part + frac).lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        s = digits + "0" * (n - k)
    elif 0 < n <= 21:
        s = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        s = "0." + "0" * (-n) + digits
    else:
        ee = n - 1
        es = f"e{'+' if ee >= 0 else '-'}{abs(ee)}"
        s = digits + es if k == 1 else digits[0] + "." + digits[1:] + es
    return sign + s


# -- reading -------------------------------------------------------------------

def _error(msg: str, lineno: int | None, offset: int | None) -> ParseError:
    return ParseError(msg, format=FORMAT, offset=offset, field=f"line {lineno}" if lineno else None)


def parse_values(raw: bytes, *, lineno: int | None = None, offset: int | None = None, what: str = "sync") -> tuple[tuple[HashAlg, bytes], ...]:
    """Parse ``alg/hex alg/hex ...``: lowercase hex of the bank's size, ascending algorithm ids."""
    items = raw.split(b" ")
    out: list[tuple[HashAlg, bytes]] = []
    for item in items:
        name, sep, hexv = item.partition(b"/")
        if not sep:
            raise _error(f"{what} value {item[:40]!r} is not ALG/HEX", lineno, offset)
        try:
            alg = HashAlg.from_name(name.decode("ascii"))
        except (InputError, UnicodeDecodeError):
            raise _error(f"{what} names an unknown hash algorithm {name[:20]!r}", lineno, offset) from None
        if len(hexv) != 2 * alg.digest_size or hexv != hexv.lower():
            raise _error(f"{what} value for {alg} must be {2 * alg.digest_size} lowercase hex digits", lineno, offset)
        try:
            value = bytes.fromhex(hexv.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise _error(f"{what} value for {alg} is not hexadecimal", lineno, offset) from None
        if out and int(alg) <= int(out[-1][0]):
            raise _error(f"{what} banks must be listed once each in ascending algorithm id order", lineno, offset)
        out.append((alg, value))
    return tuple(out)


def classify(raw: bytes, *, lineno: int | None = None, offset: int | None = None) -> Line:
    """Classify one line (without its LF) of a log being read; raises ParseError if malformed.

    A C1 control, line separator or bidirectional control does not make a line malformed: its
    bytes are still what was hashed, so it is read as it is and :attr:`Line.hidden` names them.
    """
    if not raw:
        return Line(Kind.BLANK, raw)
    m = _FORBIDDEN_BYTES.search(raw)
    if m:
        raise _error(f"control character 0x{raw[m.start()]:02x} in line", lineno, (offset or 0) + m.start())
    first = raw[0]
    if first == 0x23:  # '#'
        if raw.startswith(EXTEND_PREFIX):
            return Line(Kind.EXTEND, raw, parse_values(raw[len(EXTEND_PREFIX):], lineno=lineno, offset=offset, what=".EXTEND"))
        return Line(Kind.COMMENT, raw)
    if first == 0x20 or raw[-1] == 0x20:
        raise _error("record begins or ends with a space", lineno, offset)
    if raw.startswith(SYNC_PREFIX):
        return Line(Kind.SYNC, raw, parse_values(raw[5:], lineno=lineno, offset=offset))
    if raw.startswith(INIT_PREFIX):
        values = parse_values(raw[5:], lineno=lineno, offset=offset, what="INIT")
        if len(values) != 1:
            raise _error("an INIT record declares exactly one bank", lineno, offset)
        return Line(Kind.SYNC, raw, values)
    if raw in (b"SYNC", b"INIT"):
        raise _error("sync record without values", lineno, offset)
    return Line(Kind.EVENT, raw)


def split_event(text: str) -> tuple[str, str, str | None] | None:
    """``(domain, operation, content)`` of an event in the recommended grammar, else None."""
    parts = text.split(" ", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


__all__ = [
    "Kind",
    "Line",
    "RecordError",
    "check_record",
    "sync_line",
    "extend_line",
    "format_values",
    "event",
    "canonical_json",
    "classify",
    "parse_values",
    "hidden_characters",
    "character_name",
    "HIDDEN_CODEPOINTS",
    "split_event",
    "MAX_RECORD_BYTES",
]
