"""Appraisal policies in Rego, evaluated with ``regopy`` (rego-cpp).

A policy is one Rego module declaring ``package tsmr``.  It is evaluated after
every other appraisal step, over this input document::

    {
      "kind":     "tdx" | "snp" | "cca" | "tpm" | null,
      "nonce":    "<hex>",                          # the bundle's
      "claims":   {"mrtd": "<hex>", "td_attributes": "<hex>", ...},   # Result.claims
      "registers": {"rtmr0": {"sha384": "<hex>"}, "pcr7": {...}},     # signed values
      "events":   {"<domain>": [{"register", "seq", "domain", "operation",
                                  "content", "line", "json"}, ...]},  # runtime-log events
      "findings": ["evidence.tdx.quote.signature", "replay.mismatch", ...],
      "errors":   [...ids of error findings...],
      "warnings": [...ids of warning findings...]
    }

``json`` is the event's content decoded when it is a JSON object or array
(null otherwise): compare structured content through it rather than as text
(rego-cpp compares strings that contain escaped characters inconsistently).
The reference values, when given, are the base document
``data.reference_values`` (their JSON form).

The policy may define

``allow``
    a boolean; ``false`` gives a ``policy.deny`` finding.  Undefined: no decision.
``deny``
    a set or array of strings (messages) or objects ``{"id": ..., "msg": ...}``
    (optional ``"severity"``: ``"error"`` (default) or ``"warning"``, and
    ``"claim"``: an AR4SI claim, default ``configuration``); each entry gives a
    ``policy.deny`` finding with its message (the entry's id is in the
    finding's context as ``rule``).

A policy that does not compile, or whose evaluation fails (a conflict between
rule values, a built-in error), raises :class:`~tsmr.errors.PolicyError`:
the appraisal could not be evaluated.  An undefined result is no decision.

:data:`DEFAULT_POLICY` allows when no finding so far is an error.  It is evaluated natively,
with or without regopy installed (the same decision as its Rego text, without the interpreter's
round trip); any other policy needs regopy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import PolicyError
from ..lru import LRU
from .model import TRUST_CLAIMS, Finding, Severity

__all__ = ["DEFAULT_POLICY", "Decision", "PreparedPolicy", "check_policy", "compile_policy", "evaluate", "input_fields",
           "prepare_policy"]

DEFAULT_POLICY = """\
# tsmr's default appraisal policy: allow when nothing so far is an error.
package tsmr

import rego.v1

default allow := false

allow if count(input.errors) == 0
"""

_PACKAGE = re.compile(r"^\s*package\s+tsmr\s*(#.*)?$", re.MULTILINE)
_ERRORMSG = re.compile(r"\(errormsg \d+:([^\n]*)\)")


@dataclass(frozen=True)
class Decision:
    """What a policy said: ``allow`` (None when undefined) and its deny entries as findings."""

    allow: bool | None
    findings: tuple[Finding, ...]


def _interpreter() -> Any:
    try:
        from regopy import Interpreter, LogLevel
    except ImportError:
        raise PolicyError("Rego policies need the regopy package (pip install 'tsmr[verifier]')") from None
    rego = Interpreter()
    rego.log_level = LogLevel.NONE  # rego-cpp would otherwise print compile errors on standard output
    return rego


def _messages(text: str) -> str:
    found = _ERRORMSG.findall(text)
    return "; ".join(dict.fromkeys(m.strip() for m in found)) if found else text.strip()[:500]


@functools.lru_cache(maxsize=1)
def _have_regopy() -> bool:
    try:
        import regopy  # noqa: F401
    except ImportError:
        return False
    return True


def _default_decision(input: Mapping[str, Any]) -> Decision:
    """:data:`DEFAULT_POLICY`'s decision without Rego: ``allow`` exactly when ``input.errors`` is
    there and empty (``count(input.errors) == 0``; with no such field the rule is undefined and
    ``allow`` its default, false)."""
    errors = input.get("errors")
    if errors is None or len(errors) != 0:
        return _decision({"allow": False})
    return Decision(True, ())


def compile_policy(source: str) -> Any:
    """A regopy interpreter holding the policy (None for the default policy without regopy); PolicyError if it
    does not compile."""
    if not _have_regopy():
        if source == DEFAULT_POLICY:
            return None  # evaluated natively (see evaluate)
        raise PolicyError("Rego policies need the regopy package (pip install 'tsmr[verifier]')")
    from regopy import RegoError

    if not isinstance(source, str) or not source.strip():
        raise PolicyError("the policy is empty")
    if not _PACKAGE.search(source):
        raise PolicyError("a tsmr policy is a Rego module declaring 'package tsmr'")
    rego = _interpreter()
    try:
        rego.add_module("policy.rego", source)
    except RegoError as exc:
        raise PolicyError(f"the policy does not compile: {_messages(str(exc))}") from None
    return rego


def _query(rego: Any, bundle: Any) -> Any:
    """``data.tsmr`` (the bundle's entry point ``tsmr``) over the interpreter's input, as a Python value,
    or None when undefined.

    The regopy ``Output`` class decodes the result itself and fails on some
    strings, so the raw result is read through regopy's C bindings here.
    """
    from regopy import RegoError
    from regopy import rego_shared as rs

    try:
        impl = rs.rego_bundle_query_entrypoint(rego._impl, bundle._impl, "tsmr")
    except RegoError as exc:
        raise PolicyError(f"the policy could not be evaluated: {_messages(str(exc))}") from None
    try:
        if not rs.rego_output_ok(impl):
            node = rs.rego_output_node(impl)
            msgs: list[str] = []
            _collect_errors(rs, node, msgs)
            raise PolicyError(f"the policy could not be evaluated: {'; '.join(dict.fromkeys(msgs)) or 'error'}")
        text = rs.rego_output_string(impl)
    finally:
        rs.rego_free_output(impl)
    if text.strip() == "undefined":
        return None
    if text.lstrip().startswith("(error"):
        raise PolicyError(f"the policy could not be evaluated: {_messages(text)}")
    try:
        doc = json.loads(text, strict=False)
    except ValueError:
        raise PolicyError(f"the policy's result could not be read: {text[:200]}") from None
    exprs = doc.get("expressions") if isinstance(doc, dict) else None
    if not exprs:
        return None
    return exprs[0]


def _collect_errors(rs: Any, node: Any, out: list[str], depth: int = 0) -> None:
    from regopy import NodeKind

    if depth > 8:
        return
    if rs.rego_node_type(node) == NodeKind.ErrorMessage:
        out.append(rs.rego_node_value(node))
        return
    for i in range(rs.rego_node_size(node)):
        _collect_errors(rs, rs.rego_node_get(node, i), out, depth + 1)


def check_policy(source: str) -> None:
    """Raise :class:`PolicyError` unless ``source`` compiles and evaluates as a tsmr policy."""
    prepared = prepare_policy(source)
    if not prepared.native:
        _decision(_ENGINE.query(prepared, None, json.dumps(_EMPTY_INPUT)))


_EMPTY_INPUT: dict[str, Any] = {"kind": None, "nonce": "", "claims": {}, "registers": {}, "events": {},
                                "findings": [], "errors": [], "warnings": []}


def evaluate(source: str, input: Mapping[str, Any], data: Mapping[str, Any] | None = None, *,
             data_json: str | None = None) -> Decision:
    """Evaluate a policy over ``input`` (see the module docstring) and return its decision.

    ``data`` is the base document (``{"reference_values": ...}``); ``data_json`` may give it as JSON
    text instead, so that a caller holding the text of a stored version need not encode it again.
    The compiled policy (with its base document) is reused from :class:`_Engine`'s caches; only
    the input fields the policy can see (:func:`input_fields`) are handed to the engine.
    """
    prepared = prepare_policy(source)
    if prepared.native:
        return _default_decision(input)
    if data_json is None and data:
        # JSON text, like the input: rego-cpp then keeps strings with escapes consistent
        # with the policy's own string literals.
        data_json = json.dumps(data, ensure_ascii=False)
    fields = prepared.fields
    shown = input if fields is None else {k: v for k, v in input.items() if k in fields}
    return _decision(_ENGINE.query(prepared, data_json or None, json.dumps(shown, ensure_ascii=False)))


@dataclass(frozen=True)
class PreparedPolicy:
    """A policy that compiled: its text, digest, and the input fields it can see (None: every one)."""

    source: str
    digest: str
    fields: frozenset[str] | None
    native: bool = False  # DEFAULT_POLICY: evaluated by :func:`_default_decision`


# ``input.name`` or ``input["name"]``: the only ways a policy can name an input field.  Any other use
# of the word ``input`` (``input[x]``, ``import input``, ``with input as``, ``walk(input)``, a comment)
# makes the whole input visible, so the analysis can only over-include.
_INPUT_REF = re.compile(r'\binput\b(?:\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)|\s*\[\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\])?')


def input_fields(source: str) -> frozenset[str] | None:
    """The top-level input fields ``source`` names, or None when it may see the whole input.

    A Rego policy reaches the input document only through the keyword ``input``; when every
    occurrence of that word is followed by a plain field name, the policy cannot observe any
    other field, and leaving those out of the input changes no decision (the benchmark bundle's
    input is 33 kB, its events most of it, which rego-cpp parses at a few MB/s).
    """
    names: set[str] = set()
    for m in _INPUT_REF.finditer(source):
        name = m.group(1) or m.group(2)
        if name is None:
            return None
        names.add(name)
    return frozenset(names)


POLICY_CACHE_SIZE = 64
_PREPARED: LRU[PreparedPolicy] = LRU(POLICY_CACHE_SIZE)  # policy digest -> PreparedPolicy (only policies that compiled)


def prepare_policy(source: str) -> PreparedPolicy:
    """The policy checked once per text: PolicyError unless it compiles (cached by the text's digest)."""
    if not isinstance(source, str):
        raise PolicyError("the policy is empty")
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
    found: PreparedPolicy | None = _PREPARED.get(digest)
    if found is not None and found.source == source:
        return found
    # The default policy's decision is one comparison (:func:`_default_decision`, which a test holds to
    # the Rego text's own decision): it is made natively, without the input's JSON encoding and the
    # interpreter's round trip, which cost more than the rest of the policy step.  Every other
    # policy is compiled here (PolicyError if it does not) and evaluated by rego-cpp.
    native = source == DEFAULT_POLICY or compile_policy(source) is None
    prepared = PreparedPolicy(source, digest, input_fields(source), native)
    _PREPARED.put(digest, prepared)
    return prepared


class _Engine(threading.local):
    """Per thread: one regopy interpreter to run queries, and compiled bundles by policy and data.

    A bundle (rego-cpp's compiled policy and base document) is built once per policy text and
    reference-values text and then queried with each appraisal's input.  Each thread keeps its own
    interpreter and bundles, as nothing says rego-cpp's are safe to share between threads; creating
    an interpreter costs about a millisecond, which is why it is kept.  The interpreter's input is
    replaced before every query, so nothing of one appraisal is seen by the next.
    """

    BUNDLES = 4  # per thread (a verifier uses one or two policy and reference-values pairs at a time)

    def __init__(self) -> None:
        self.runner: Any = None
        self.bundles: OrderedDict[tuple[str, str | None], tuple[Any, Any]] = OrderedDict()

    def bundle(self, prepared: PreparedPolicy, data_json: str | None) -> Any:
        key = (prepared.digest, hashlib.sha256(data_json.encode("utf-8", "surrogatepass")).hexdigest()
               if data_json is not None else None)
        found = self.bundles.get(key)
        if found is not None:
            self.bundles.move_to_end(key)
            return found[1]
        from regopy import RegoError

        builder = _interpreter()
        try:
            builder.add_module("policy.rego", prepared.source)
        except RegoError as exc:
            raise PolicyError(f"the policy does not compile: {_messages(str(exc))}") from None
        try:
            if data_json is not None:
                builder.add_data_json(data_json)
        except RegoError as exc:
            raise PolicyError(f"the policy input was refused: {_messages(str(exc))}") from None
        try:
            bundle = builder.build(None, ["tsmr"])
        except RegoError as exc:
            raise PolicyError(f"the policy could not be evaluated: {_messages(str(exc))}") from None
        if not bundle.ok():
            raise PolicyError("the policy could not be evaluated: it does not build")
        self.bundles[key] = (builder, bundle)  # the builder is kept alive with its bundle
        while len(self.bundles) > self.BUNDLES:
            self.bundles.popitem(last=False)
        return bundle

    def query(self, prepared: PreparedPolicy, data_json: str | None, input_json: str) -> Any:
        from regopy import RegoError

        bundle = self.bundle(prepared, data_json)
        if self.runner is None:
            self.runner = _interpreter()
        try:
            self.runner.set_input_term(input_json)
        except RegoError as exc:
            self.runner = None  # its state after a refused input is not relied upon
            raise PolicyError(f"the policy input was refused: {_messages(str(exc))}") from None
        return _query(self.runner, bundle)


_ENGINE = _Engine()


def clear_caches() -> None:
    """Forget the prepared policies (this thread's compiled bundles too); for tests and reloads."""
    _PREPARED.clear()
    _ENGINE.bundles.clear()


def _decision(value: Any) -> Decision:
    if value is None or not isinstance(value, dict):
        return Decision(None, ())
    allow = value.get("allow")
    if allow is not None and not isinstance(allow, bool):
        raise PolicyError(f"the policy's allow must be a boolean, not {type(allow).__name__}")
    findings: list[Finding] = []
    if allow is False:
        findings.append(Finding("policy.deny", Severity.ERROR, "the policy does not allow this evidence", "configuration",
                                {"rule": "allow"}))
    deny = value.get("deny")
    if deny is not None:
        if not isinstance(deny, list):
            raise PolicyError("the policy's deny must be a set or an array")
        for entry in deny:
            findings.append(_deny_finding(entry))
    return Decision(allow, tuple(findings))


def _deny_finding(entry: Any) -> Finding:
    if isinstance(entry, str):
        return Finding("policy.deny", Severity.ERROR, entry or "denied by the policy", "configuration", {"rule": "deny"})
    if isinstance(entry, dict):
        msg = entry.get("msg", entry.get("message"))
        rule = entry.get("id")
        severity = entry.get("severity", "error")
        if severity not in ("error", "warning"):
            raise PolicyError(f"a deny entry's severity must be 'error' or 'warning', not {severity!r}")
        claim = entry.get("claim", "configuration")
        if claim not in TRUST_CLAIMS:
            raise PolicyError(f"a deny entry's claim must be one of {', '.join(TRUST_CLAIMS)}, not {claim!r}")
        text = str(msg) if msg is not None else f"denied by the policy ({rule})" if rule else "denied by the policy"
        context = {"rule": str(rule) if rule is not None else "deny"}
        context.update({k: v for k, v in entry.items() if k not in ("id", "msg", "message", "severity", "claim")})
        return Finding("policy.deny", severity, text, claim, context)
    raise PolicyError(f"a deny entry must be a string or an object with id/msg, not {json.dumps(entry)[:100]}")
