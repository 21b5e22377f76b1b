"""Reference values: what a known-good platform and workload look like.

A reference-values document (``"tsmr-refvals"``, version 1) is JSON::

    {"format": "tsmr-refvals", "version": 1, "id": "prod-2025-06",
     "description": "optional text",
     "registers": {"rtmr0": {"sha384": ["<hex>", ...]}, "pcr7": {"sha256": [...]}},
     "claims": {"mrtd": ["<hex>", ...], "td_attributes": [...], "policy": [196608]},
     "events": [{"domain": "example.com/app", "operation": "deploy", "content": "<regex>"}],
     "appraisers": {"allowlist": {...}, "coco": {...}},
     "quirks": ["efi-variable-boot-data-only"]}

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

:data:`SCHEMA` is the JSON Schema of the document; :meth:`ReferenceValues.from_json`
checks the same rules (and compiles the regular expressions) and raises
:class:`~tsmr.errors.InputError` naming the member at fault.
:func:`learn` derives reference values from a known-good bundle.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from ..algorithms import HashAlg
from ..errors import InputError
from ..evidence.anchors import TrustAnchors
from ..evidence.bundle import replay_logs, verify_evidence
from ..quirks import resolve as resolve_quirks
from ..registers import check_register_name, register_order
from .facts import IDENTITY_CLAIMS, claims_json, runtime_events

__all__ = ["FORMAT", "VERSION", "SCHEMA", "EventRef", "ReferenceValues", "learn"]

FORMAT = "tsmr-refvals"
VERSION = 1

_HEX = "^([0-9a-fA-F]{2})+$"

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

    def to_json(self) -> dict[str, str]:
        out = {"domain": self.domain, "operation": self.operation}
        if self.content is not None:
            out["content"] = self.content
        return out


def _fail(where: str, message: str) -> InputError:
    return InputError(f"reference values: {where}: {message}")


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
        return cls(id=ident, registers=_registers(doc.get("registers", {})), claims=_claims(doc.get("claims", {})),
                   events=_events(doc.get("events", [])), appraisers=_appraisers(doc.get("appraisers", {})),
                   quirks=_quirks(doc.get("quirks", [])), description=description)

    from_dict = from_json  # the name the verifier service looks for

    @classmethod
    def coerce(cls, value: "ReferenceValues | Mapping[str, Any] | str | bytes") -> "ReferenceValues":
        return value if isinstance(value, ReferenceValues) else cls.from_json(value)

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
