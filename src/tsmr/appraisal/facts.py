"""What appraisal reads out of verified evidence and replayed logs, as JSON values.

Three views, shared by :func:`~tsmr.appraisal.appraise`, reference-value
learning and the Rego input:

* :func:`claims_json`: a verifier's claims (``TDXClaims``, ``SNPClaims``,
  ``CCAClaims``, ``QuoteClaims``) as one flat-topped JSON object, bytes as
  lowercase hex.  TDX register values are lifted to the top (``mrtd``,
  ``rtmr0`` ...), so that every identity value has a plain claim name.
* :func:`signed_json`: the signed register values, ``{register: {bank: hex}}``.
* :func:`runtime_events`: the runtime-log events among the replayed events,
  each split by the ``<domain> <operation>[ <content>]`` grammar (spec
  section 2.2): tsmr runtime logs and CoCo AAEL v1 (text), AAEL v2 entries of a
  CCEL or TPM log (``EV_EVENT_TAG``), and tsmr records carried in CEL-JSON.
  Sync records and ``.EXTEND`` directives are anchors, not events, and are left out.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from ..algorithms import HashAlg
from ..errors import ParseError
from ..events import Event
from ..jsonvalue import plain

__all__ = ["claims_json", "signed_json", "runtime_events", "group_by_domain", "content_json", "IDENTITY_CLAIMS"]

# Claims that name what was launched or how it was configured, per evidence kind: what
# reference values learn from a known-good bundle besides the register values.
IDENTITY_CLAIMS: dict[str, tuple[str, ...]] = {
    "tdx": ("mrtd", "mrseam", "mrconfigid", "mrowner", "mrownerconfig", "td_attributes", "xfam"),
    "snp": ("measurement", "host_data", "policy"),
    "cca": ("rim", "personalization_value"),
    "tpm": (),
}

_SKIP_FIELDS = frozenset({"raw", "signature", "signed_data"})


def _plain(obj: Any) -> Any:
    return plain(obj, _SKIP_FIELDS)


def claims_json(claims: Any) -> dict[str, Any]:
    """A verifier's claims as a JSON object (see the module docstring)."""
    plain = _plain(claims)
    if not isinstance(plain, dict):
        return {"value": plain}
    regs = plain.pop("registers", None)
    if isinstance(regs, dict):
        for name, value in regs.items():
            plain.setdefault(name, value)
    return plain


def signed_json(signed: Mapping[str, Mapping[HashAlg, bytes]]) -> dict[str, dict[str, str]]:
    return {reg: {alg.kernel_name: v.hex() for alg, v in sorted(banks.items())} for reg, banks in sorted(signed.items())}


def content_json(content: str) -> Any:
    """The content decoded when it is a JSON object or array (as CoCo and tsmr recommend), else None."""
    if not content or content[0] not in "{[":
        return None
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None


def _line(event: Event) -> str | None:
    """The text of a runtime-log event record, or None when the event is not one."""
    if event.source == "tsmr" and event.type == "event":
        raw = event.data
    elif event.source == "cel" and event.type == "tsmr":
        raw = event.data
        if raw[:1] == b"#" or raw.startswith((b"SYNC ", b"INIT ")):
            return None
    elif event.type in ("EV_EVENT_TAG", "aael"):
        from ..formats import aael

        if not aael.is_tagged_aael(event.data):
            return None
        try:
            return aael.decode_tagged(event.data).text
        except ParseError:
            return None  # a malformed entry has no domain; replay still accounts for its digest
    else:
        return None
    return raw.decode("utf-8", "replace")


def runtime_events(events: Iterable[Event], *, arch: str | None = None) -> list[dict[str, Any]]:
    """Runtime-log events as ``{"register", "seq", "domain", "operation", "content", "line"}``.

    ``register`` is where the event landed on ``arch`` (a TPM PCR maps onto an
    RTMR or REM on ``tdx`` / ``cca``).  A record outside the grammar (one word)
    has domain and operation ``""`` and the whole line as content.
    """
    from ..replay import map_register
    from ..runtime_log.records import split_event

    out = []
    where: dict[str, str] = {}  # register -> where it lands on arch (few registers, many events)
    for e in events:
        if not e.measured:
            continue
        # Most events are a runtime log's records: _line() of one, without the call.
        line = e.data.decode("utf-8", "replace") if e.source == "tsmr" and e.type == "event" else _line(e)
        if line is None:
            continue
        parts = split_event(line)
        domain, operation, content = parts if parts is not None else ("", "", line)
        reg = where.get(e.register)
        if reg is None:
            reg = where[e.register] = map_register(e, arch)
        out.append({"register": reg, "seq": e.seq, "domain": domain, "operation": operation,
                    "content": content or "", "line": line})
    return out


def group_by_domain(events: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        out.setdefault(str(e["domain"]), []).append(dict(e))
    return out
