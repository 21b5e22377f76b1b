"""``allowlist``: a generic appraiser of runtime-log events by rules.

Configuration (``reference_values.appraisers["allowlist"]``)::

    {"rules": [{"domain": "example.com/*", "operation": "deploy", "content": "sha256:[0-9a-f]{64}"},
               {"domain": "example.com/app", "operation": "debug", "action": "deny"}],
     "domains": ["example.com/*"],
     "default": "deny"}

* ``rules``: ``domain`` and ``operation`` are shell-style patterns
  (``operation`` defaults to ``*``), ``content`` a regular expression that
  must match the whole content (absent: any content), ``action`` ``allow``
  (default) or ``deny``.
* The domains judged are those the rules name, plus ``domains``; events of
  other domains are left to other appraisers.
* An event of a judged domain takes the action of the first rule it matches,
  or ``default`` (``deny`` unless said otherwise) when it matches none.

Every denied event gives ``appraiser.allowlist.deny`` (error, claim
``executables``) naming the event.  Without configuration nothing is judged.
Every event of a judged domain counts as judged for reference-value coverage
(:meth:`AllowlistAppraiser.judges`).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Mapping

from ...errors import InputError
from ..model import Finding, Severity

__all__ = ["AllowlistAppraiser"]


@dataclass(frozen=True)
class _Rule:
    domain: str
    operation: str
    content: re.Pattern[str] | None
    action: str

    def matches(self, event: Mapping[str, Any]) -> bool:
        return (fnmatch.fnmatchcase(str(event["domain"]), self.domain)
                and fnmatch.fnmatchcase(str(event["operation"]), self.operation)
                and (self.content is None or self.content.fullmatch(str(event["content"])) is not None))


def _bad(where: str, message: str) -> InputError:
    return InputError(f"appraiser allowlist: {where}: {message}")


def _rules(config: Mapping[str, Any]) -> tuple[list[_Rule], list[str], str]:
    extra = sorted(set(config) - {"rules", "domains", "default"})
    if extra:
        raise _bad(extra[0], "unknown setting (known: rules, domains, default)")
    rules_doc = config.get("rules", [])
    if not isinstance(rules_doc, list):
        raise _bad("rules", "must be an array")
    rules = []
    for n, r in enumerate(rules_doc):
        where = f"rules[{n}]"
        if not isinstance(r, Mapping):
            raise _bad(where, "must be an object")
        unknown = sorted(set(r) - {"domain", "operation", "content", "action"})
        if unknown:
            raise _bad(f"{where}.{unknown[0]}", "unknown member")
        domain, operation = r.get("domain"), r.get("operation", "*")
        if not isinstance(domain, str) or not domain:
            raise _bad(f"{where}.domain", "must be a non-empty pattern")
        if not isinstance(operation, str) or not operation:
            raise _bad(f"{where}.operation", "must be a non-empty pattern")
        action = r.get("action", "allow")
        if action not in ("allow", "deny"):
            raise _bad(f"{where}.action", "must be 'allow' or 'deny'")
        content = r.get("content")
        pattern = None
        if content is not None:
            if not isinstance(content, str):
                raise _bad(f"{where}.content", "must be a regular expression")
            try:
                pattern = re.compile(content, re.DOTALL)
            except re.error as exc:
                raise _bad(f"{where}.content", f"not a regular expression: {exc}") from None
        rules.append(_Rule(domain, operation, pattern, action))
    domains = config.get("domains", [])
    if not isinstance(domains, list) or not all(isinstance(d, str) and d for d in domains):
        raise _bad("domains", "must be an array of domain patterns")
    default = config.get("default", "deny")
    if default not in ("allow", "deny"):
        raise _bad("default", "must be 'allow' or 'deny'")
    return rules, [r.domain for r in rules] + list(domains), default


class AllowlistAppraiser:
    """Judges events of the configured domains against allow/deny rules (see the module docstring)."""

    name = "allowlist"
    domains = ("*",)

    def check_config(self, config: Mapping[str, Any]) -> None:
        _rules(config)

    def judges(self, event: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
        """Whether the event's domain is one the configuration judges (every such event is allowed or denied)."""
        _, scope, _ = _rules(config)
        return any(fnmatch.fnmatchcase(str(event["domain"]), d) for d in scope)

    def appraise(self, events: list[dict[str, Any]], config: Mapping[str, Any]) -> list[Finding]:
        rules, scope, default = _rules(config)
        out = []
        for ev in events:
            domain = str(ev["domain"])
            if not any(fnmatch.fnmatchcase(domain, d) for d in scope):
                continue
            rule = next(((n, r) for n, r in enumerate(rules) if r.matches(ev)), None)
            action = rule[1].action if rule else default
            if action != "deny":
                continue
            why = f"rule {rule[0]} denies it" if rule else "no rule allows it"
            out.append(Finding("appraiser.allowlist.deny", Severity.ERROR,
                f"{ev['register']} record {ev['seq']} ({domain} {ev['operation']}): {why}", "executables",
                {"register": ev["register"], "seq": ev["seq"], "domain": domain, "operation": ev["operation"],
                 "content": ev["content"], "rule": rule[0] if rule else None}))
        return out
