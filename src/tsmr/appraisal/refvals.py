"""Reference values: what a known-good platform and workload look like.

A reference-values document (``"tsmr-refvals"``, version 1) is JSON::

    {"format": "tsmr-refvals", "version": 1, "id": "prod-2025-06",
     "description": "optional text",
     "registers": {"rtmr0": {"sha384": ["<hex>", ...]}, "pcr7": {"sha256": [...]}},
     "claims": {"mrtd": ["<hex>", ...], "td_attributes": [...], "policy": [196608]},
     "events": [{"domain": "example.com/app", "operation": "deploy", "content": "<regex>"}],
     "appraisers": {"allowlist": {...}, "coco": {...}},
     "quirks": ["efi-variable-boot-data-only"],
     "predicted": {"platform": "tdx", "events": [{"register": "rtmr1", "type": "EV_EFI_BOOT_SERVICES_APPLICATION",
                                                  "digests": {"sha384": "<hex>"}, "component": "kernel",
                                                  "description": "...", "data": "<hex, optional>"}, ...],
                   "inputs": {"kernel": {"file": "vmlinuz", "sha256": "<hex>"}}, "notes": ["..."]}}

Every member but ``format``, ``version`` and ``id`` is optional.  Semantics,
as :func:`tsmr.appraisal.appraise` applies them:

``registers``
    each listed register and bank must be signed by the evidence with one of
    the listed values (lowercase hex); otherwise ``refvals.register-mismatch``.
``claims``
    each listed claim of the evidence (names as in ``Result.claims``: ``mrtd``,
    ``mrconfigid``, ``measurement``, ``host_data``, ``rim`` ...) must equal one
    of the listed JSON values (hex compared without regard to case); otherwise
    ``refvals.claim-mismatch``.
``events``
    each entry must be matched by at least one runtime-log event: same domain
    and operation, and ``content`` (a regular expression, optional) matching
    the whole content; otherwise ``refvals.event-missing``.
``appraisers``
    the configuration handed to the per-domain appraiser of that name (the
    shipped ``allowlist`` and ``coco`` appraisers' are checked on reading).
``quirks``
    the named firmware-log quirks (:mod:`tsmr.quirks`) this platform needs;
    the ones applied are listed in the result.
``predicted``
    the events behind predicted reference values (``tsmr predict ... -o``,
    :meth:`tsmr.predict.Prediction.to_refvals`): the platform, every predicted
    event (register, TCG event type, digest per bank, the component it
    measures and what it is), the inputs the prediction used and its
    assumptions.  It judges nothing by itself: when a register or launch
    claim does not match, the appraisal names the first event of the log
    that differs from the predicted one (:mod:`tsmr.appraisal.mismatch`).

Reference values *cover* a signed register when they say what it may hold
(see :mod:`tsmr.appraisal.coverage`); an appraisal affirms only when every
register that holds a measurement is covered.

:data:`SCHEMA` is the JSON Schema of the document; :meth:`ReferenceValues.from_json`
checks the same rules (and compiles the regular expressions) and raises
:class:`~tsmr.errors.InputError` naming the member at fault.
:func:`learn` derives reference values from a known-good bundle.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Sequence

from ..algorithms import HashAlg
from ..errors import InputError
from ..evidence.anchors import TrustAnchors
from ..evidence.bundle import replay_logs, verify_evidence
from ..predict.model import PredictedEvent
from ..quirks import resolve as resolve_quirks
from ..registers import check_register_name, register_order
from .facts import IDENTITY_CLAIMS, claims_json, runtime_events
from ..lru import LRU

__all__ = ["FORMAT", "VERSION", "SCHEMA", "EventRef", "Predicted", "ReferenceValues", "combine", "learn", "missing_events"]

FORMAT = "tsmr-refvals"
VERSION = 1

_HEX = "^([0-9a-fA-F]{2})+$"

# Bounds of the ``predicted`` member: a prediction lists tens of events (a TDX direct boot about a
# dozen per RTMR, a TPM boot a few per PCR); these leave room and keep a hostile document small.
MAX_PREDICTED_EVENTS = 4096
MAX_EVENT_DATA = 1 << 16  # bytes of one event's data (an EFI variable, a command line)
MAX_PREDICTED_DATA = 1 << 20  # bytes of all events' data together
MAX_TEXT = 1000  # characters of a description, component, event type, input value or note
MAX_INPUTS = 64  # components in ``inputs``, and facts about each
MAX_NOTES = 64
_NAME = "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}$"
_TEXT: dict[str, Any] = {"type": "string", "maxLength": MAX_TEXT}

PREDICTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "the events behind predicted reference values, to explain a mismatch by component",
    "required": ["platform", "events"],
    "additionalProperties": False,
    "properties": {
        "platform": {"type": "string", "pattern": _NAME},
        "events": {
            "type": "array",
            "maxItems": MAX_PREDICTED_EVENTS,
            "items": {
                "type": "object",
                "required": ["register", "type", "digests", "component", "description"],
                "additionalProperties": False,
                "properties": {
                    "register": {"type": "string", "pattern": _NAME},
                    "type": dict(_TEXT, minLength=1),
                    "digests": {"type": "object", "minProperties": 1,
                                "description": "bank name (sha1, sha256, sha384, sha512, sm3) -> hex digest",
                                "additionalProperties": {"type": "string", "pattern": _HEX}},
                    "component": dict(_TEXT, minLength=1),
                    "description": _TEXT,
                    "data": {"type": "string", "pattern": "^([0-9a-fA-F]{2})*$", "maxLength": 2 * MAX_EVENT_DATA},
                },
            },
        },
        "inputs": {"type": "object", "maxProperties": MAX_INPUTS,
                   "additionalProperties": {"type": "object", "maxProperties": MAX_INPUTS,
                                            "additionalProperties": _TEXT}},
        "notes": {"type": "array", "maxItems": MAX_NOTES, "items": _TEXT},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tsmr reference values",
    "type": "object",
    "required": ["format", "version", "id"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "id": {"type": "string", "minLength": 1, "maxLength": 300},
        "description": {"type": "string"},
        "registers": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}$"},
            "additionalProperties": {
                "type": "object",
                "description": "bank name (sha1, sha256, sha384, sha512, sm3) -> allowed values",
                "additionalProperties": {"type": "array", "items": {"type": "string", "pattern": _HEX}},
            },
        },
        "claims": {"type": "object", "additionalProperties": {"type": "array"}},
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["domain", "operation"],
                "additionalProperties": False,
                "properties": {
                    "domain": {"type": "string"},
                    "operation": {"type": "string"},
                    "content": {"type": "string", "description": "regular expression matching the whole content"},
                },
            },
        },
        "appraisers": {"type": "object", "additionalProperties": {"type": "object"}},
        "quirks": {"type": "array", "items": {"type": "string"}},
        "predicted": PREDICTED_SCHEMA,
    },
}

_TOP = frozenset(SCHEMA["properties"])


@dataclass(frozen=True)
class EventRef:
    """A runtime-log event the reference values require: domain, operation, and a content pattern."""

    domain: str
    operation: str
    content: str | None = None  # a regular expression matching the whole content; None: any

    def matches(self, event: Mapping[str, Any]) -> bool:
        if event.get("domain") != self.domain or event.get("operation") != self.operation:
            return False
        return self.content is None or re.fullmatch(self.content, str(event.get("content", "")), re.DOTALL) is not None

    @property
    def literal(self) -> str | None:
        """The one content this reference matches when its pattern is an escaped literal (as :func:`learn`
        writes them), else None: such references are looked up in a set, not matched one by one."""
        return _literal(self.content) if self.content is not None else None

    def to_json(self) -> dict[str, str]:
        out = {"domain": self.domain, "operation": self.operation}
        if self.content is not None:
            out["content"] = self.content
        return out


@functools.lru_cache(maxsize=4096)
def _literal(content: str) -> str | None:
    """:attr:`EventRef.literal` of a pattern (a pure function of it, so kept for the next appraisal)."""
    text = re.sub(r"\\(.)", r"\1", content, flags=re.DOTALL)
    return text if re.escape(text) == content else None


def missing_events(refs: Sequence[EventRef], events: Sequence[Mapping[str, Any]]) -> list[EventRef]:
    """The references no event matches.

    One pass groups the events by domain and operation; then a literal reference is one
    set lookup and a pattern is matched against its group only, so reference values
    learned from a long log cost time in proportion to the log, not its square.
    """
    contents: dict[tuple[Any, Any], set[str]] = {}
    for e in events:
        key = (e.get("domain"), e.get("operation"))
        found = contents.get(key)
        if found is None:
            found = contents[key] = set()
        content = e.get("content", "")
        found.add(content if type(content) is str else str(content))
    groups: dict[tuple[Any, Any], list[Mapping[str, Any]]] | None = None  # made for the first pattern only
    missing: list[EventRef] = []
    for ref in refs:
        key = (ref.domain, ref.operation)
        if key not in contents:  # no event of that domain and operation
            missing.append(ref)
            continue
        pattern = ref.content
        if pattern is None:
            continue
        literal = _literal(pattern)
        if literal is not None:
            if literal not in contents[key]:
                missing.append(ref)
            continue
        if groups is None:
            groups = {}
            for e in events:
                groups.setdefault((e.get("domain"), e.get("operation")), []).append(e)
        if not any(ref.matches(e) for e in groups[key]):
            missing.append(ref)
    return missing


def _fail(where: str, message: str) -> InputError:
    return InputError(f"reference values: {where}: {message}")


@dataclass(frozen=True)
class Predicted:
    """The ``predicted`` member: the events a prediction expects, and what it was made from.

    ``events`` are in the order the platform records them (per register, log
    order); ``inputs`` name each component the prediction read (file name and
    digest, or the value given); ``notes`` are its assumptions (the VMM's page
    order, its setup-header patching ...).
    """

    platform: str
    events: tuple[PredictedEvent, ...] = ()
    inputs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def for_register(self, register: str) -> list[PredictedEvent]:
        """The predicted events of one register, in their order."""
        return [e for e in self.events if e.register == register]

    def to_json(self) -> dict[str, Any]:
        return {"platform": self.platform, "events": [e.to_json() for e in self.events],
                "inputs": {k: dict(v) for k, v in self.inputs.items()}, "notes": list(self.notes)}


@dataclass(frozen=True)
class ReferenceValues:
    """Reference values (see the module docstring); build with :meth:`from_json` or :func:`learn`."""

    id: str
    registers: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)  # reg -> bank -> hex values
    claims: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    events: tuple[EventRef, ...] = ()
    appraisers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    quirks: tuple[str, ...] = ()
    description: str | None = None
    predicted: Predicted | None = None

    # -- reading ---------------------------------------------------------------

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | str | bytes) -> "ReferenceValues":
        """Check and read a document (a mapping, or its JSON text); InputError says what is wrong."""
        if isinstance(doc, (str, bytes, bytearray)):
            try:
                doc = json.loads(doc)
            except ValueError as exc:
                raise InputError(f"reference values are not JSON: {exc}") from None
        if not isinstance(doc, Mapping):
            raise _fail("document", "must be a JSON object")
        extra = sorted(set(doc) - _TOP)
        if extra:
            raise _fail(extra[0], f"unknown member (known: {', '.join(sorted(_TOP))})")
        if doc.get("format") != FORMAT:
            raise _fail("format", f"must be {FORMAT!r}")
        if doc.get("version") != VERSION or isinstance(doc.get("version"), bool):
            raise _fail("version", f"must be {VERSION} (got {doc.get('version')!r})")
        ident = doc.get("id")
        if not isinstance(ident, str) or not ident or len(ident) > 300:
            raise _fail("id", "must be a non-empty string of at most 300 characters")
        description = doc.get("description")
        if description is not None and not isinstance(description, str):
            raise _fail("description", "must be a string")
        predicted = _predicted(doc["predicted"]) if doc.get("predicted") is not None else None
        return cls(id=ident, registers=_registers(doc.get("registers", {})), claims=_claims(doc.get("claims", {})),
                   events=_events(doc.get("events", [])), appraisers=_appraisers(doc.get("appraisers", {})),
                   quirks=_quirks(doc.get("quirks", [])), description=description, predicted=predicted)

    from_dict = from_json  # the name the verifier service looks for

    @classmethod
    def coerce(cls, value: "ReferenceValues | Mapping[str, Any] | str | bytes") -> "ReferenceValues":
        return value if isinstance(value, ReferenceValues) else cls.from_json(value)

    def policy_data(self) -> str:
        """The policy's base document ``{"reference_values": ...}`` as JSON text (see :mod:`.policy`)."""
        return json.dumps({"reference_values": self.to_json()}, ensure_ascii=False)

    # -- writing ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The document (a JSON-ready dict); :meth:`from_json` reads it back to an equal object."""
        out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "id": self.id}
        if self.description is not None:
            out["description"] = self.description
        out["registers"] = {reg: {bank: list(vals) for bank, vals in banks.items()} for reg, banks in self.registers.items()}
        out["claims"] = {name: list(vals) for name, vals in self.claims.items()}
        out["events"] = [e.to_json() for e in self.events]
        out["appraisers"] = {name: dict(cfg) for name, cfg in self.appraisers.items()}
        if self.quirks:
            out["quirks"] = list(self.quirks)
        if self.predicted is not None:
            out["predicted"] = self.predicted.to_json()
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    def allowed(self, register: str, bank: str) -> tuple[str, ...] | None:
        """The allowed values of a register bank, or None when the reference values say nothing of it."""
        return self.registers.get(register, {}).get(bank)


def _registers(obj: Any) -> dict[str, dict[str, tuple[str, ...]]]:
    if not isinstance(obj, Mapping):
        raise _fail("registers", "must be an object")
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for reg, banks in obj.items():
        try:
            check_register_name(reg)
        except InputError as exc:
            raise _fail(f"registers.{reg}", str(exc)) from None
        if not isinstance(banks, Mapping):
            raise _fail(f"registers.{reg}", "must be an object of bank -> values")
        out[reg] = {}
        for bank, values in banks.items():
            where = f"registers.{reg}.{bank}"
            try:
                alg = HashAlg.from_name(str(bank))
            except InputError:
                raise _fail(where, "unknown hash algorithm") from None
            if not isinstance(values, list):
                raise _fail(where, "must be an array of hex values")
            clean = []
            for v in values:
                if not isinstance(v, str) or not re.fullmatch(_HEX, v) or len(v) != 2 * alg.digest_size:
                    raise _fail(where, f"{str(v)[:40]!r} is not {alg.digest_size} bytes of hex")
                clean.append(v.lower())
            out[reg][alg.kernel_name] = tuple(clean)
    return out


def _claims(obj: Any) -> dict[str, tuple[Any, ...]]:
    if not isinstance(obj, Mapping):
        raise _fail("claims", "must be an object")
    out = {}
    for name, values in obj.items():
        if not isinstance(values, list):
            raise _fail(f"claims.{name}", "must be an array of allowed values")
        out[str(name)] = tuple(values)
    return out


def _events(obj: Any) -> tuple[EventRef, ...]:
    if not isinstance(obj, list):
        raise _fail("events", "must be an array")
    out = []
    for n, item in enumerate(obj):
        where = f"events[{n}]"
        if not isinstance(item, Mapping):
            raise _fail(where, "must be an object")
        extra = sorted(set(item) - {"domain", "operation", "content"})
        if extra:
            raise _fail(f"{where}.{extra[0]}", "unknown member")
        for key in ("domain", "operation"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise _fail(f"{where}.{key}", "must be a non-empty string")
        content = item.get("content")
        if content is not None:
            if not isinstance(content, str):
                raise _fail(f"{where}.content", "must be a string (a regular expression)")
            try:
                re.compile(content)
            except re.error as exc:
                raise _fail(f"{where}.content", f"not a regular expression: {exc}") from None
        out.append(EventRef(item["domain"], item["operation"], content))
    return tuple(out)


def _appraisers(obj: Any) -> dict[str, dict[str, Any]]:
    from .appraisers import builtin_appraisers

    if not isinstance(obj, Mapping):
        raise _fail("appraisers", "must be an object of appraiser name -> configuration")
    # The shipped appraisers' configurations are checked here already, so that stored reference
    # values are refused early; a plugin's is checked when an appraisal loads the plugin.
    builtin = {a.name: a for a in builtin_appraisers()}
    out = {}
    for name, cfg in obj.items():
        if not isinstance(cfg, Mapping):
            raise _fail(f"appraisers.{name}", "must be an object")
        if name in builtin:
            try:
                builtin[name].check_config(cfg)
            except InputError as exc:
                raise _fail(f"appraisers.{name}", str(exc)) from None
        out[str(name)] = dict(cfg)
    return out


def _quirks(obj: Any) -> tuple[str, ...]:
    if not isinstance(obj, list) or not all(isinstance(q, str) for q in obj):
        raise _fail("quirks", "must be an array of quirk names")
    try:
        resolve_quirks(obj)
    except InputError as exc:
        raise _fail("quirks", str(exc)) from None
    return tuple(obj)


def _text(value: Any, where: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or (not empty and not value):
        raise _fail(where, f"must be a {'' if empty else 'non-empty '}string of at most {MAX_TEXT} characters")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(_NAME, value):
        raise _fail(where, "must be 1-64 letters, digits, '_', '.' or '-'")
    return value


def _predicted(obj: Any) -> Predicted:
    """The ``predicted`` member, checked member by member (sizes, hex, known banks) before anything is kept."""
    if not isinstance(obj, Mapping):
        raise _fail("predicted", "must be an object")
    extra = sorted(set(obj) - {"platform", "events", "inputs", "notes"})
    if extra:
        raise _fail(f"predicted.{extra[0]}", "unknown member (known: events, inputs, notes, platform)")
    platform = _name(obj.get("platform"), "predicted.platform")
    raw_events = obj.get("events")
    if not isinstance(raw_events, list):
        raise _fail("predicted.events", "must be an array")
    if len(raw_events) > MAX_PREDICTED_EVENTS:
        raise _fail("predicted.events", f"holds {len(raw_events)} events; at most {MAX_PREDICTED_EVENTS}")
    events = []
    total = 0
    for n, item in enumerate(raw_events):
        where = f"predicted.events[{n}]"
        if not isinstance(item, Mapping):
            raise _fail(where, "must be an object")
        unknown = sorted(set(item) - {"register", "type", "digests", "component", "description", "data"})
        if unknown:
            raise _fail(f"{where}.{unknown[0]}", "unknown member")
        register = _name(item.get("register"), f"{where}.register")
        etype = _text(item.get("type"), f"{where}.type", empty=False)
        component = _text(item.get("component"), f"{where}.component", empty=False)
        description = _text(item.get("description"), f"{where}.description")
        raw_digests = item.get("digests")
        if not isinstance(raw_digests, Mapping) or not raw_digests:
            raise _fail(f"{where}.digests", "must be an object of bank -> hex digest, with at least one bank")
        digests: dict[HashAlg, bytes] = {}
        for bank, value in raw_digests.items():
            dwhere = f"{where}.digests.{str(bank)[:20]}"
            try:
                alg = HashAlg.from_name(str(bank))
            except InputError:
                raise _fail(dwhere, "unknown hash algorithm") from None
            if not isinstance(value, str) or len(value) != 2 * alg.digest_size or not re.fullmatch(_HEX, value):
                raise _fail(dwhere, f"{str(value)[:40]!r} is not {alg.digest_size} bytes of hex")
            if alg in digests:
                raise _fail(dwhere, "names a bank twice")
            digests[alg] = bytes.fromhex(value)
        data = None
        if item.get("data") is not None:
            raw = item["data"]
            if not isinstance(raw, str) or len(raw) > 2 * MAX_EVENT_DATA or not re.fullmatch("(?:[0-9a-fA-F]{2})*", raw):
                raise _fail(f"{where}.data", f"must be hex of at most {MAX_EVENT_DATA} bytes")
            data = bytes.fromhex(raw)
            total += len(data)
            if total > MAX_PREDICTED_DATA:
                raise _fail(f"{where}.data", f"the events' data exceed {MAX_PREDICTED_DATA} bytes together")
        events.append(PredictedEvent(register=register, event_type=etype, digests=digests, component=component,
                                     description=description, data=data))
    raw_inputs = obj.get("inputs", {})
    if not isinstance(raw_inputs, Mapping) or len(raw_inputs) > MAX_INPUTS:
        raise _fail("predicted.inputs", f"must be an object of at most {MAX_INPUTS} components")
    inputs: dict[str, dict[str, str]] = {}
    for comp, facts in raw_inputs.items():
        where = f"predicted.inputs.{str(comp)[:40]}"
        _text(comp, where, empty=False)
        if not isinstance(facts, Mapping) or len(facts) > MAX_INPUTS:
            raise _fail(where, f"must be an object of at most {MAX_INPUTS} string values")
        inputs[comp] = {_text(k, f"{where}", empty=False): _text(v, f"{where}.{str(k)[:40]}") for k, v in facts.items()}
    raw_notes = obj.get("notes", [])
    if not isinstance(raw_notes, list) or len(raw_notes) > MAX_NOTES:
        raise _fail("predicted.notes", f"must be an array of at most {MAX_NOTES} strings")
    notes = tuple(_text(v, f"predicted.notes[{n}]") for n, v in enumerate(raw_notes))
    return Predicted(platform=platform, events=tuple(events), inputs=inputs, notes=notes)


def learn(
    bundle: Mapping[str, Any],
    *,
    now: datetime,
    trust: TrustAnchors | None = None,
    id: str | None = None,
    quirks: tuple[str, ...] = (),
) -> ReferenceValues:
    """Reference values from a known-good bundle: its signed registers, identity claims and runtime events.

    The evidence must verify (its :class:`~tsmr.errors.EvidenceError` is
    raised otherwise) and every log must replay to the signed registers
    (:class:`~tsmr.errors.InputError` otherwise): reference values are only
    learned from a bundle that explains itself.  ``id`` defaults to one derived
    from the learned values.
    """

    verified = verify_evidence(bundle, now=now, trust=trust)
    replayed = replay_logs(bundle, verified.kind, verified.signed, quirks=quirks)
    # A log that does not prove its events (mismatched, cut, about an unsigned register) is no
    # known-good state; learning from it would make its unproven events required ones.
    bad = [r for r in replayed.rows if r.status in ("mismatched", "history-missing", "not-signed")]
    if bad:
        r = bad[0]
        raise InputError(f"the bundle does not explain itself, so nothing is learned from it: {r.register} {r.bank} "
                         f"{r.status} ({r.explanation})")
    registers = {reg: {alg.kernel_name: (value.hex(),) for alg, value in sorted(banks.items())}
                 for reg, banks in sorted(verified.signed.items(), key=lambda kv: register_order(kv[0]))}
    claims = claims_json(verified.claims)
    learned_claims = {name: (claims[name],) for name in IDENTITY_CLAIMS.get(verified.kind, ()) if name in claims}
    events: list[EventRef] = []
    seen = set()
    for ev in runtime_events(replayed.proven, arch=replayed.arch):
        key = (ev["domain"], ev["operation"], ev["content"])
        if not ev["domain"] or key in seen:
            continue
        seen.add(key)
        events.append(EventRef(ev["domain"], ev["operation"], re.escape(ev["content"])))
    out = ReferenceValues(id="", registers=registers, claims=learned_claims, events=tuple(events), quirks=tuple(quirks))
    if id is None:
        digest = hashlib.sha256(json.dumps(out.to_json(), sort_keys=True).encode()).hexdigest()[:16]
        id = f"learned-{verified.kind}-{digest}"
    return ReferenceValues(id=id, registers=registers, claims=learned_claims, events=tuple(events),
                           quirks=tuple(quirks), description=f"learned from a {verified.kind} bundle at {now.isoformat()}")


def combine(parts: Sequence[ReferenceValues], *, id: str | None = None,
            description: str | None = None) -> ReferenceValues:
    """One set of reference values accepting what each of ``parts`` accepts.

    For the common case of reference values made in pieces: a boot predicted from the
    build (``tsmr predict``), the runtime events a workload may record, an appraiser's
    configuration.  Allowed register values and claims are united (a register or claim
    named in two parts accepts the values of both), required events and quirks are
    united, appraiser configurations must not disagree, and the predicted events of
    different parts must be of different registers (the explanation of a mismatch
    follows one prediction per register).  The result is checked as any document is.
    """
    if not parts:
        raise InputError("combine: no reference values given")
    registers: dict[str, dict[str, list[str]]] = {}
    claims: dict[str, list[Any]] = {}
    events: list[EventRef] = []
    appraisers: dict[str, Mapping[str, Any]] = {}
    quirks: list[str] = []
    predicted: list[Predicted] = []
    for rv in parts:
        for reg, banks in rv.registers.items():
            for bank, values in banks.items():
                have = registers.setdefault(reg, {}).setdefault(bank, [])
                have.extend(v for v in values if v.lower() not in {h.lower() for h in have})
        for name, vals in rv.claims.items():
            have_claims = claims.setdefault(name, [])
            have_claims.extend(v for v in vals if v not in have_claims)
        events.extend(e for e in rv.events if e not in events)
        for name, cfg in rv.appraisers.items():
            if name in appraisers and dict(appraisers[name]) != dict(cfg):
                raise InputError(f"combine: reference values {rv.id!r} configure appraiser {name!r} differently "
                                 "from an earlier part")
            appraisers[name] = cfg
        quirks.extend(q for q in rv.quirks if q not in quirks)
        if rv.predicted is not None:
            predicted.append(rv.predicted)
    merged: Predicted | None = None
    if predicted:
        seen: dict[str, str] = {}
        inputs: dict[str, Mapping[str, str]] = {}
        for p in predicted:
            for reg in dict.fromkeys(e.register for e in p.events):
                if reg in seen:
                    raise InputError(f"combine: two predictions ({seen[reg]} and {p.platform}) both predict the "
                                     f"events of {reg}")
                seen[reg] = p.platform
            for key, facts in p.inputs.items():
                if key in inputs and dict(inputs[key]) != dict(facts):
                    key = f"{p.platform}:{key}"
                inputs[key] = facts
        merged = Predicted(platform="+".join(dict.fromkeys(p.platform for p in predicted)),
                           events=tuple(e for p in predicted for e in p.events), inputs=inputs,
                           notes=tuple(n for p in predicted for n in p.notes))
    doc = ReferenceValues(
        id=id or "+".join(rv.id for rv in parts),
        registers={r: {b: tuple(v) for b, v in banks.items()} for r, banks in registers.items()},
        claims={k: tuple(v) for k, v in claims.items()}, events=tuple(events), appraisers=appraisers,
        quirks=tuple(quirks), description=description or "combined from " + ", ".join(rv.id for rv in parts),
        predicted=merged)
    return ReferenceValues.from_json(doc.to_json())  # the same limits as any document


# -- reading stored versions once ------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """Reference values read once: the document they were read from, the object, the policy's data text."""

    document: Any
    values: ReferenceValues
    policy_data: str


REFVALS_CACHE_SIZE = 32
_PREPARED: "LRU[Prepared]" = LRU(REFVALS_CACHE_SIZE)


def prepare(value: "ReferenceValues | Mapping[str, Any]") -> tuple[ReferenceValues, str]:
    """:meth:`ReferenceValues.coerce` and :meth:`ReferenceValues.policy_data`, kept per document content.

    A verifier passes the same stored document (a version of its reference values) to every
    appraisal; reading and checking it, and encoding it for the policy, is done once per content.
    The key is the digest of the document's JSON text (in its own key order); an entry is used only when its
    document equals the one given (so a tuple where JSON has an array, or a digest collision, is
    read afresh), and it is read from its own copy, so that a caller changing its dict later
    changes nothing cached.  A document that fails its checks raises and is not kept.
    """
    if isinstance(value, ReferenceValues):
        return value, value.policy_data()
    if not isinstance(value, Mapping):
        values = ReferenceValues.coerce(value)
        return values, values.policy_data()
    try:
        # Key order kept: it is the order registers, claims and events are checked (and findings listed) in.
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        values = ReferenceValues.coerce(value)  # not plain JSON: read as given, never kept
        return values, values.policy_data()
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    found = _PREPARED.get(key)
    if found is not None and found.document == value:
        return found.values, found.policy_data
    copy = json.loads(text)
    if copy != value:  # a tuple or another type JSON does not keep: read as given, never kept
        values = ReferenceValues.coerce(value)
        return values, values.policy_data()
    values = ReferenceValues.from_json(copy)
    entry = Prepared(json.loads(text), values, values.policy_data())
    _PREPARED.put(key, entry)
    return entry.values, entry.policy_data


def clear_cache() -> None:
    """Forget the reference values read so far (tests)."""
    _PREPARED.clear()
