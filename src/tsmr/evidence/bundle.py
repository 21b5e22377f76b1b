"""Evidence bundles: the evidence, the nonce and the logs that explain it, in one JSON document.

A bundle (``"tsmr-bundle"``, version 1) carries

* ``nonce``: hex, what the relying party asked the evidence to be bound to;
* ``evidence``: ``{"kind": "tdx" | "snp" | "cca" | "tpm", ...}`` with the raw
  evidence in base64 (``data``; for a TPM quote ``attest``, ``signature``,
  ``ak_public`` and the quoted ``pcrs``);
* ``logs``: a list of ``{"format": <tsmr.eventlog format or null>, "data":
  <base64>, "register": <for a runtime log>, "name": <where it came from>}``,
  replayed in order onto one register set (firmware first).

:func:`verify_bundle` verifies the evidence (raising the verifier's
:class:`~tsmr.errors.EvidenceError` on failure), then replays every log and
compares each register the logs touch with the signed value: one row per
register and bank, ``matched`` or ``mismatched`` with the explanation.
The two steps are also available on their own, for callers (appraisal) that
record each failure instead of stopping at the first: :func:`check_document`,
:func:`verify_evidence`, :func:`log_events` and :func:`replay_logs`.
The JSON Schema of the document is :data:`SCHEMA`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from ..algorithms import HashAlg
from ..errors import EvidenceError, InputError, ParseError
from ..eventlog import parse as parse_log
from ..events import RECORDED_DIGEST_SOURCES, Event
from ..findings import ReplayStatus
from ..replay import compare, default_initial, explain, map_register, replay
from ..registers import register_order
from .anchors import TrustAnchorMissing, TrustAnchors
from .limits import Budget
from .verification import KINDS, TpmQuoteParts, VerifiedEvidence, verify

FORMAT = "tsmr-bundle"
VERSION = 1

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tsmr evidence bundle",
    "type": "object",
    "required": ["format", "version", "nonce", "evidence"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "nonce": {"type": "string", "pattern": "^([0-9a-f]{2})*$"},
        "evidence": {
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"enum": ["tdx", "snp", "cca", "tpm"]},
                "data": {"type": "string", "contentEncoding": "base64"},
                "attest": {"type": "string", "pattern": "^([0-9a-f]{2})*$"},
                "signature": {"type": "string", "pattern": "^([0-9a-f]{2})*$"},
                "ak_public": {"type": "string", "pattern": "^([0-9a-f]{2})*$"},
                "ak_cert": {"type": "string", "contentEncoding": "base64"},
                "ak_chain": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}, "maxItems": 8},
                "pcrs": {"type": "object", "additionalProperties": {"type": "object",
                         "additionalProperties": {"type": "string", "pattern": "^([0-9a-f]{2})*$"}}},
                "auxblob": {"type": "string", "contentEncoding": "base64"},
                "manifestblob": {"type": "string", "contentEncoding": "base64"},
                "provider": {"type": "string"},
                "service_provider": {"type": "string"},
                "service_guid": {"type": "string"},
                "privlevel": {"type": "integer", "minimum": 0, "maximum": 3},
            },
        },
        "logs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "format": {"type": ["string", "null"]},
                    "data": {"type": "string", "contentEncoding": "base64"},
                    "register": {"type": "string"},
                    "name": {"type": "string"},
                },
            },
        },
    },
}

MAX_BUNDLE_BYTES = 64 << 20


@dataclass(frozen=True)
class Row:
    register: str
    bank: str
    signed: str | None
    replayed: str | None
    status: ReplayStatus  # matched / mismatched / not-signed / gap / history-missing / unlogged / signed-only / data-mismatch
    explanation: str = ""


@dataclass(frozen=True)
class BundleResult:
    kind: str
    claims: Any
    rows: tuple[Row, ...]

    @property
    def ok(self) -> bool:
        """Every log replayed to its signed register from launch, and no extended register lacks a log."""
        return all(r.status in (ReplayStatus.MATCHED, ReplayStatus.SIGNED_ONLY) for r in self.rows)


def make_bundle(*, nonce: bytes, evidence: Mapping[str, Any], logs: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A bundle document; log ``data`` given as bytes is encoded here."""
    out_logs = []
    for log in logs:
        entry = dict(log)
        if isinstance(entry.get("data"), (bytes, bytearray)):
            entry["data"] = base64.b64encode(bytes(entry["data"])).decode()
        out_logs.append(entry)
    ev = dict(evidence)
    for key in ("data", "auxblob", "manifestblob"):
        if isinstance(ev.get(key), (bytes, bytearray)):
            ev[key] = base64.b64encode(bytes(ev[key])).decode()
    return {"format": FORMAT, "version": VERSION, "nonce": nonce.hex(), "evidence": ev, "logs": out_logs}


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ParseError("expected a base64 string", format=FORMAT, field=where)
    try:
        return b64decode_strict(value)
    except (binascii.Error, ValueError):
        raise ParseError("not base64", format=FORMAT, field=where) from None


_FILL_RUN = 1024  # quartets of "////" (3 KiB of 0xFF) worth decoding by arithmetic


def _run_start(text: str, end: int) -> int:
    """Where the run of ``/`` that ends at ``end`` starts (galloping, then bisecting, by slice compares:
    ``str.rstrip`` takes milliseconds over a few hundred kilobytes)."""
    lo, i, step = end, end, 256
    while lo > 0:
        i = max(0, lo - step)
        if text[i:lo] != "/" * (lo - i):
            break
        lo, step = i, step * 2
    else:
        return 0
    while lo - i > 1:  # text[lo:end] is all "/", text[i:lo] is not
        mid = (i + lo) // 2
        if text[mid:lo] == "/" * (lo - mid):
            lo = mid
        else:
            i = mid
    return lo


def b64decode_strict(text: str) -> bytes:
    """``base64.b64decode(text, validate=True)``: the same bytes, and an error where it raises one.

    A firmware log's area is erased to 0xFF (a CCEL is mostly fill: 244 KiB of the go-tdx-guest
    fixture's 256 KiB), and 0xFF bytes encode to runs of ``////``, which the decoder would spend
    more time on than the parser spends on the whole log.  Base64 quartets decode independently,
    so a long run of ``////`` quartets (but its last, decoded with the text after it) is replaced
    by its bytes, and the text before and after it is decoded (and checked) as usual;
    with ``=`` anywhere before the run, or a length that is not a multiple of 4, the whole text is
    decoded in one piece so that every error is the decoder's own.
    """
    n = len(text)
    if n % 4 or n < 8 * _FILL_RUN:
        return base64.b64decode(text, validate=True)
    # The last quartet may hold padding; it is decoded with the run's last quartet before it, so
    # that the decoder sees it where it is in the whole text (not at its start).
    end = (n - 4 if text.endswith("=") else n) - 4
    cut = -(-_run_start(text, end) // 4) * 4  # the run's first whole quartet
    quartets = (end - cut) // 4
    if quartets < _FILL_RUN:
        return base64.b64decode(text, validate=True)
    head, tail = text[:cut], text[end:]
    if "=" in head:
        return base64.b64decode(text, validate=True)
    return base64.b64decode(head, validate=True) + b"\xff" * (3 * quartets) + base64.b64decode(tail, validate=True)


def _hex(value: Any, where: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ParseError("not hex", format=FORMAT, field=where) from None


@dataclass(frozen=True)
class LogReplay:
    """What :func:`replay_logs` found: one row per register and bank (and per gap), and the events replayed.

    ``proven`` are the events the signed registers prove: those of a register
    whose every signed bank the logs replay to, from its launch value, after
    the register's last gap.  ``unproven`` pairs every other measured event
    with the reason it proves nothing.  Only proven events may be judged.
    """

    rows: tuple[Row, ...]
    events: tuple[Event, ...]
    arch: str
    proven: tuple[Event, ...] = ()
    unproven: tuple[tuple[Event, str], ...] = ()


def check_document(doc: Mapping[str, Any]) -> bytes:
    """The bundle's nonce, after checking the outer structure (format, version, nonce, evidence object).

    Raises :class:`~tsmr.errors.ParseError` naming the field at fault.
    """
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ParseError(f"not a {FORMAT} version {VERSION} document", format=FORMAT, field="format")
    nonce = _hex(doc.get("nonce", ""), "nonce")
    if not isinstance(doc.get("evidence"), Mapping):
        raise ParseError("evidence must be an object", format=FORMAT, field="evidence")
    return nonce


def verify_evidence(
    doc: Mapping[str, Any],
    *,
    now: datetime,
    trust: TrustAnchors | None = None,
    allow_debug: bool = False,
) -> VerifiedEvidence:
    """Verify the evidence of a bundle, bound to the bundle's nonce; the logs are not looked at.

    The bundle's evidence object is decoded and handed to :func:`tsmr.evidence.verify`
    with the verifier's anchors ``trust`` (none given: no anchors), which says what
    anchors each kind and raises what it raises; a TPM quote must come with the PCR
    values it covers (``bundle.pcrs``).  Raises :class:`~tsmr.errors.ParseError`
    naming the field when the bundle cannot be read.
    """
    anchors = TrustAnchors() if trust is None else trust
    if not isinstance(anchors, TrustAnchors):
        raise TypeError("trust must be a tsmr.evidence.TrustAnchors")
    nonce = check_document(doc)
    ev = doc["evidence"]
    kind = ev.get("kind")
    if kind not in KINDS:
        raise ParseError(f"unknown evidence kind {kind!r}", format=FORMAT, field="evidence.kind")

    def blob(key: str) -> bytes | None:
        return _b64(ev[key], f"evidence.{key}") if ev.get(key) is not None else None

    parts = None
    if kind == "tpm":
        data = _hex(ev.get("attest"), "evidence.attest")
        chain = ev.get("ak_chain") or []
        if not isinstance(chain, list):
            raise ParseError("ak_chain must be an array", format=FORMAT, field="evidence.ak_chain")
        parts = TpmQuoteParts(signature=_hex(ev.get("signature"), "evidence.signature"),
                              ak_public=_hex(ev.get("ak_public"), "evidence.ak_public"),
                              pcrs=_tpm_pcrs(ev.get("pcrs") or {}), ak_cert=blob("ak_cert"),
                              ak_chain=tuple(_b64(c, f"evidence.ak_chain[{i}]") for i, c in enumerate(chain[:8])))
    else:
        data = _b64(ev.get("data"), "evidence.data")
    verified = verify(str(kind), data, nonce=nonce, now=now, anchors=anchors, allow_debug=allow_debug,
                      auxblob=blob("auxblob") if kind == "snp" else None,
                      manifest=blob("manifestblob") if kind == "snp" else None, tpm=parts)
    if kind == "tpm" and not verified.claims.pcr_digest_checked:
        raise EvidenceError("the bundle carries no PCR values for the quote", check="bundle.pcrs")
    return verified


def _tpm_pcrs(pcrs_doc: Any) -> dict[HashAlg, dict[int, bytes]]:
    if not isinstance(pcrs_doc, Mapping):
        raise ParseError("pcrs must be an object", format=FORMAT, field="evidence.pcrs")
    out: dict[HashAlg, dict[int, bytes]] = {}
    for a, vals in pcrs_doc.items():
        try:
            alg = HashAlg.from_name(str(a))
        except InputError:
            raise ParseError(f"unknown bank {a!r}", format=FORMAT, field=f"evidence.pcrs.{a}") from None
        if not isinstance(vals, Mapping):
            raise ParseError("a bank's PCR values must be an object", format=FORMAT, field=f"evidence.pcrs.{a}")
        bank: dict[int, bytes] = {}
        for i, v in vals.items():
            if not (isinstance(i, str) and i.isdigit() and int(i) < 32):
                raise ParseError(f"{i!r} is not a PCR number", format=FORMAT, field=f"evidence.pcrs.{a}")
            bank[int(i)] = _hex(v, f"evidence.pcrs.{a}.{i}")
        out[alg] = bank
    return out


def arch_of(kind: str) -> str:
    """The register architecture logs of this evidence kind replay onto (TPM PCRs map onto RTMRs/REMs)."""
    return "tdx" if kind == "tdx" else "cca" if kind == "cca" else "tpm"


def log_events(log: Any, n: int = 0) -> list[Event]:
    """The unified events of the bundle's log number ``n`` (ParseError or InputError if it cannot be read)."""
    if not isinstance(log, Mapping):
        raise ParseError("a log must be an object", format=FORMAT, field=f"logs[{n}]")
    parsed = parse_log(_b64(log.get("data"), f"logs[{n}].data"), log.get("format"),
                       register=str(log.get("register") or "rtmr3"))
    return list(parsed.events)


# Registers that logs explain, per evidence kind: the ones the platform extends after launch.
# Launch measurements (TDX MRTD, the SEV-SNP launch digest, the CCA RIM) have no log.
_LOGGED = {"tdx": ("rtmr",), "cca": ("rem",), "tpm": ("pcr",), "snp": ()}


def logged_register(kind: str, register: str) -> bool:
    """Whether ``register`` of evidence ``kind`` is extended at run time, so that a log must explain its value."""
    return register.startswith(_LOGGED.get(kind, ())) and register[-1:].isdigit()


def replay_logs(
    doc: Mapping[str, Any],
    kind: str,
    signed: Mapping[str, Mapping[HashAlg, bytes]],
    *,
    events: Sequence[Event] | None = None,
    quirks: Sequence[str] = (),
) -> LogReplay:
    """Replay every log of a bundle (or the ``events`` given) and compare each register with its signed value.

    Every register starts from its launch value (zero, all 0xFF for TPM PCR
    17-22, or what the firmware log's events replay to before), so a first
    sync record that declares something else is a gap with its history
    missing (spec section 3, "Initial values close the front of the log").

    One row per register and bank the logs touch: ``matched``, ``mismatched``
    (with the explanation) or ``not-signed``; one ``gap`` row per unlogged
    measurement a sync record reveals, ``history-missing`` when it is the
    register's first record; and for every signed register and bank that no
    log covers, ``unlogged`` when the register is one that logs explain and
    its value is not its launch value, else ``signed-only``.  Rows are in
    register order.  ``quirks`` are the named quirks the explanation may assume.
    """
    if events is None:
        events = []
        for n, log in enumerate(doc.get("logs") or []):
            events.extend(log_events(log, n))
    events = list(events)
    arch = arch_of(kind)
    # Every bank a log records, and every bank the evidence signs: a runtime log's banks derive
    # from its data, so a log without sync records still replays in the signed banks.
    banks = sorted({a for e in events for a, _ in e.digests} | {a for b in signed.values() for a in b})
    result = replay(events, banks=banks, arch=arch, quirks=quirks, launch=True)
    logged = [reg for reg, n in result.counts.items() if n]  # registers some log measures into
    expected = {reg: signed[reg] for reg in logged if reg in signed}
    if not expected or (sorted({a for b in expected.values() for a in b}) == banks and not compare(result, expected)):
        # explain() would replay the same events in the same banks again (its replay is this one)
        # and explain the mismatches it finds: there are none.
        explanations: dict[tuple[str, HashAlg], str] = {}
    else:
        explanations = {(m.register, m.alg): m.explanation
                        for m in explain(events, expected, arch=arch, quirks=quirks, launch=True)}
    rows = []
    proven_regs: set[str] = set()
    unproven_reason: dict[str, str] = {}
    for reg in logged:
        replayed = result.registers.get(reg, {})
        if reg not in signed:
            unproven_reason[reg] = f"the evidence does not sign {reg}"
            for alg, value in sorted(replayed.items()):
                rows.append(Row(reg, alg.kernel_name, None, value.hex(), ReplayStatus.NOT_SIGNED,
                                "the evidence does not carry this register"))
            continue
        ok, checked = True, False
        unreplayable: list[tuple[HashAlg, bytes]] = []
        for alg, want in sorted(signed[reg].items()):
            got = replayed.get(alg)
            if got is None:  # some event records no digest for this bank (a firmware log's choice)
                unreplayable.append((alg, want))
                continue
            text = explanations.get((reg, alg), "")
            status = ReplayStatus.MISMATCHED if text else ReplayStatus.MATCHED
            rows.append(Row(reg, alg.kernel_name, want.hex(), got.hex(), status, text))
            checked, ok = True, ok and not text
        for alg, want in unreplayable:
            # Another signed bank proves the events; with none, nothing does.
            text = explanations.get((reg, alg)) or f"{reg} {alg.kernel_name}: the log cannot be replayed in this bank"
            status = ReplayStatus.SIGNED_ONLY if checked else ReplayStatus.MISMATCHED
            rows.append(Row(reg, alg.kernel_name, want.hex(), None, status, text))
        ok = ok and checked
        if ok:
            proven_regs.add(reg)
        else:
            unproven_reason[reg] = f"{reg} does not replay to its signed value"
    for reg, signed_banks in signed.items():
        for alg, value in signed_banks.items():
            if reg in expected:
                continue
            launch = result.initial.get(reg, {}).get(alg) or default_initial(reg, alg)
            if logged_register(kind, reg) and not hmac.compare_digest(value, launch):
                rows.append(Row(reg, alg.kernel_name, value.hex(), None, ReplayStatus.UNLOGGED,
                                f"no log covers this register, and it changed since launch ({launch.hex()[:16]}...)"))
            else:
                rows.append(Row(reg, alg.kernel_name, value.hex(), None, ReplayStatus.SIGNED_ONLY,
                                "no log covers this register"))
    last_gap: dict[str, int] = {}
    for g in result.gaps:  # unlogged measurements: the register matches, but not everything in it is known
        last_gap[g.register] = max(last_gap.get(g.register, -1), g.position)
        if g.history_missing:
            text = (f"its first record, {g.seq} of its {g.source} log, declares another value than the register "
                    f"held at launch ({g.replayed.hex()[:16]}...): earlier records were removed, or it was "
                    "extended before the log began")
            rows.append(Row(g.register, g.alg.kernel_name, None, g.declared.hex(), ReplayStatus.HISTORY_MISSING, text))
            # The log does not replay from the launch value: what it shows may be the harmless half.
            proven_regs.discard(g.register)
            unproven_reason[g.register] = f"the front of the log of {g.register} is missing"
        else:
            rows.append(Row(g.register, g.alg.kernel_name, None, g.declared.hex(), ReplayStatus.GAP,
                            f"changed without being logged before record {g.seq} of its {g.source} log"))

    proven: list[Event] = []
    unproven: list[tuple[Event, str]] = []
    where: dict[str, str] = {}  # an event's register -> where it lands on arch (few registers, many events)
    for position, ev in enumerate(events):
        if not ev.measured:
            continue
        landed = where.get(ev.register)
        reg = landed if landed is not None else where.setdefault(ev.register, map_register(ev, arch))
        reason: str | None = None
        if reg in proven_regs:
            if position < last_gap.get(reg, -1):
                reason = f"a later sync record of {reg} replaces the value this event led to"
        else:
            reason = unproven_reason.get(reg)
            if reason is None:
                reason = f"nothing signed covers {reg}"
        if ev.source in RECORDED_DIGEST_SOURCES and reg in signed:
            # A format that records the hash of the data next to the data (CEL, IMA, systemd, AAEL): a
            # record that keeps its digest and changes its data still replays; the data must hash to
            # it.  (Runtime logs record no digests, so theirs cannot disagree; firmware logs are not
            # held to this: real firmware hashes some events' data in its own ways, the named
            # quirks, and their data is described, never judged as content.)
            for alg, _ in ev.digests:
                if ev.check(alg) is False:
                    text = (f"record {ev.seq} of its {ev.source} log: the recorded {alg.kernel_name} digest "
                            "is not the hash of its data")
                    rows.append(Row(reg, alg.kernel_name, None, None, ReplayStatus.DATA_MISMATCH, text))
                    reason = (f"its recorded {alg.kernel_name} digest is not the hash of its data: "
                              "the data is not what was measured")
                    break
        if reason is None:
            proven.append(ev)
        else:
            unproven.append((ev, reason))
    after = (ReplayStatus.GAP, ReplayStatus.HISTORY_MISSING, ReplayStatus.DATA_MISMATCH)
    rows.sort(key=lambda r: (register_order(r.register), r.bank, r.status in after))
    return LogReplay(tuple(rows), tuple(events), arch, tuple(proven), tuple(unproven))


def verify_bundle(
    doc: Mapping[str, Any],
    *,
    now: datetime,
    trust: TrustAnchors | None = None,
    allow_debug: bool = False,
    limits: Any = None,
) -> BundleResult:
    """Verify the evidence of a bundle, then replay its logs against the signed registers.

    ``trust`` is the verifier's :class:`~tsmr.evidence.TrustAnchors` (as
    :func:`tsmr.evidence.verify` takes them).
    Evidence failures raise; register mismatches are rows of the result.
    (:func:`verify_evidence` and :func:`replay_logs` are the two steps.)
    ``limits`` (:class:`~tsmr.evidence.limits.Limits`, default the defaults)
    bound the logs: over one, :class:`~tsmr.evidence.limits.LimitExceeded`.
    """
    budget = Budget(limits)
    budget.check_document(doc)  # before the evidence is verified or any log parsed
    verified = verify_evidence(doc, now=now, trust=trust, allow_debug=allow_debug)
    events = [e for n, log in enumerate(doc.get("logs") or []) for e in budget.counted(log_events(log, n), n)]
    budget.check_time("replay")
    return BundleResult(verified.kind, verified.claims,
                        replay_logs(doc, verified.kind, verified.signed, events=events).rows)


__all__ = ["SCHEMA", "FORMAT", "VERSION", "make_bundle", "verify_bundle", "BundleResult", "Row", "check_document",
           "verify_evidence", "VerifiedEvidence", "TrustAnchorMissing", "log_events", "replay_logs", "LogReplay", "arch_of",
           "logged_register"]
