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
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from ..algorithms import HashAlg
from ..errors import EvidenceError, InputError, ParseError
from ..eventlog import parse as parse_log
from ..events import Event
from ..replay import explain, replay
from ..registers import register_order

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


class TrustAnchorMissing(InputError):
    """The verifier was not given the trust anchors this kind of evidence needs (its configuration, not the evidence)."""


@dataclass(frozen=True)
class Row:
    register: str
    bank: str
    signed: str | None
    replayed: str | None
    status: str  # matched / mismatched / not-signed / gap / signed-only
    explanation: str = ""


@dataclass(frozen=True)
class BundleResult:
    kind: str
    claims: Any
    rows: tuple[Row, ...]

    @property
    def ok(self) -> bool:
        """Every log replayed to its register (registers no log covers do not count against it)."""
        return all(r.status in ("matched", "signed-only") for r in self.rows)


def make_bundle(*, nonce: bytes, evidence: Mapping[str, Any], logs: list[Mapping[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
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
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("not base64", format=FORMAT, field=where) from None


def _hex(value: Any, where: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ParseError("not hex", format=FORMAT, field=where) from None


@dataclass(frozen=True)
class VerifiedEvidence:
    """What :func:`verify_evidence` established: the kind, the verifier's claims, the signed registers."""

    kind: str
    claims: Any
    signed: dict[str, dict[HashAlg, bytes]]  # register -> bank -> value, as the evidence signs them
    nonce: bytes  # the bundle's nonce, which the evidence was checked to be bound to


@dataclass(frozen=True)
class LogReplay:
    """What :func:`replay_logs` found: one row per register and bank (and per gap), and the events replayed."""

    rows: tuple[Row, ...]
    events: tuple[Event, ...]
    arch: str


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
    trust: Mapping[str, Any] | None = None,
) -> VerifiedEvidence:
    """Verify the evidence of a bundle, bound to the bundle's nonce; the logs are not looked at.

    ``trust`` passes the verifier's anchors and collateral: ``tdx``: ``trust_root``,
    ``collateral``; ``snp``: ``vcek``, ``ask``, ``ark``; ``cca``: ``cpak``.
    Raises the verifier's :class:`~tsmr.errors.EvidenceError` when the evidence
    does not verify, :class:`~tsmr.errors.ParseError` when the bundle or the
    evidence cannot be read, and :class:`TrustAnchorMissing` (an
    :class:`~tsmr.errors.InputError`) when ``trust`` lacks what this kind of
    evidence needs.
    """
    trust = dict(trust or {})
    nonce = check_document(doc)
    ev = doc["evidence"]
    kind = ev.get("kind")
    signed: dict[str, dict[HashAlg, bytes]] = {}
    if kind == "tdx":
        from . import tdx

        report_data = nonce.ljust(64, b"\0") if nonce else None
        claims: Any = tdx.verify_quote(_b64(ev.get("data"), "evidence.data"), now=now, report_data=report_data,
                                       **{k: v for k, v in trust.items() if k in ("trust_root", "collateral")})
        signed = {name: {HashAlg.SHA384: value} for name, value in claims.registers.items()}
    elif kind == "snp":
        from . import snp

        anchors = {k: v for k, v in trust.items() if k in ("vcek", "ask", "ark", "trusted_arks")}
        if ev.get("auxblob") is not None:
            # The guest's certificate table supplies what the caller did not; its ARK
            # came from the guest too, so only a caller-given ARK is trusted.
            table = {e.name: e.data for e in snp.parse_cert_table(_b64(ev["auxblob"], "evidence.auxblob"))}
            for name in ("vcek", "ask"):
                if name not in anchors and name in table:
                    anchors[name] = table[name]
            if "vcek" not in anchors and "vlek" in table:
                anchors["vcek"] = table["vlek"]
            if "ark" in anchors and "trusted_arks" not in anchors:
                anchors["trusted_arks"] = [anchors["ark"]]
                if "ark" in table:
                    anchors["ark"] = table["ark"]
        missing = [n for n in ("vcek", "ask", "ark") if n not in anchors]
        if missing:
            raise TrustAnchorMissing(f"an SEV-SNP bundle needs the {', '.join(missing)} certificate(s) (the trusted ARK is "
                             "never taken from the guest's certificate table)")
        if ev.get("manifestblob") is not None:  # an SVSM service: REPORT_DATA = SHA-512(nonce || manifest)
            binding = snp.svsm_report_data(nonce, _b64(ev["manifestblob"], "evidence.manifestblob"))
        else:
            binding = nonce.ljust(64, b"\0") if nonce else None
        claims = snp.verify_report(_b64(ev.get("data"), "evidence.data"), report_data=binding, now=now, **anchors)
        signed = {"measurement": {HashAlg.SHA384: claims.measurement}}  # the launch digest; SNP has no RTMRs
    elif kind == "cca":
        from . import cca

        if "cpak" not in trust:
            raise TrustAnchorMissing("a CCA bundle needs the platform key (trust['cpak'])")
        # The realm challenge is 64 bytes; configfs-tsm zero-pads a shorter inblob.
        claims = cca.verify_token(_b64(ev.get("data"), "evidence.data"), cpak=trust["cpak"],
                                  challenge=nonce.ljust(64, b"\0") if nonce else None)
        alg = {"sha-256": HashAlg.SHA256, "sha-512": HashAlg.SHA512, "sha-384": HashAlg.SHA384}.get(str(claims.hash_algorithm))
        if alg is not None:
            signed = {name: {alg: value} for name, value in claims.registers.items() if len(value) == alg.digest_size}
    elif kind == "tpm":
        from . import tpm

        pcrs = _tpm_pcrs(ev.get("pcrs") or {})
        claims = tpm.verify_quote(_hex(ev.get("attest"), "evidence.attest"), _hex(ev.get("signature"), "evidence.signature"),
                                  _hex(ev.get("ak_public"), "evidence.ak_public"), nonce=nonce, pcrs=pcrs or None)
        if not claims.pcr_digest_checked:
            raise EvidenceError("the bundle carries no PCR values for the quote", check="bundle.pcrs")
        for alg, vals in pcrs.items():
            for i, v in vals.items():
                signed.setdefault(f"pcr{i}", {})[alg] = v
    else:
        raise ParseError(f"unknown evidence kind {kind!r}", format=FORMAT, field="evidence.kind")
    return VerifiedEvidence(str(kind), claims, signed, nonce)


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


def replay_logs(
    doc: Mapping[str, Any],
    kind: str,
    signed: Mapping[str, Mapping[HashAlg, bytes]],
    *,
    events: Sequence[Event] | None = None,
    quirks: Sequence[str] = (),
) -> LogReplay:
    """Replay every log of a bundle (or the ``events`` given) and compare each register with its signed value.

    One row per register and bank the logs touch: ``matched``, ``mismatched``
    (with the explanation) or ``not-signed``; one ``gap`` row per unlogged
    measurement a sync record reveals; and one ``signed-only`` row per signed
    register and bank that no log covers, so that the rows show every register.
    Rows are in register order.  ``quirks`` are the named quirks the
    explanation may assume.
    """
    if events is None:
        events = []
        for n, log in enumerate(doc.get("logs") or []):
            events.extend(log_events(log, n))
    events = list(events)
    arch = arch_of(kind)
    result = replay(events, arch=arch, quirks=quirks)
    expected = {reg: banks for reg, banks in signed.items() if reg in result.registers}
    explanations = ({(m.register, m.alg): m.explanation for m in explain(events, expected, arch=arch, quirks=quirks)}
                    if expected else {})
    rows = []
    for reg in result.registers:
        for alg, value in sorted(result.registers[reg].items()):
            want = signed.get(reg, {}).get(alg)
            if want is None:
                rows.append(Row(reg, alg.kernel_name, None, value.hex(), "not-signed",
                                "the evidence does not carry this register"))
                continue
            text = explanations.get((reg, alg), "")
            rows.append(Row(reg, alg.kernel_name, want.hex(), value.hex(), "mismatched" if text else "matched", text))
    for reg, banks in signed.items():
        for alg, value in banks.items():
            if alg not in result.registers.get(reg, {}):
                rows.append(Row(reg, alg.kernel_name, value.hex(), None, "signed-only", "no log covers this register"))
    for g in result.gaps:  # unlogged measurements: the register matches, but not everything in it is known
        rows.append(Row(g.register, g.alg.kernel_name, None, g.declared.hex(), "gap",
                        f"changed without being logged before record {g.seq} of its {g.source} log"))
    rows.sort(key=lambda r: (register_order(r.register), r.bank, r.status == "gap"))
    return LogReplay(tuple(rows), tuple(events), arch)


def verify_bundle(
    doc: Mapping[str, Any],
    *,
    now: datetime,
    trust: Mapping[str, Any] | None = None,
) -> BundleResult:
    """Verify the evidence of a bundle, then replay its logs against the signed registers.

    ``trust`` passes the verifier's anchors and collateral: ``tdx``: ``trust_root``,
    ``collateral``; ``snp``: ``vcek``, ``ask``, ``ark``; ``cca``: ``cpak``.
    Evidence failures raise; register mismatches are rows of the result.
    (:func:`verify_evidence` and :func:`replay_logs` are the two steps.)
    """
    verified = verify_evidence(doc, now=now, trust=trust)
    return BundleResult(verified.kind, verified.claims, replay_logs(doc, verified.kind, verified.signed).rows)


__all__ = ["SCHEMA", "FORMAT", "VERSION", "make_bundle", "verify_bundle", "BundleResult", "Row", "check_document",
           "verify_evidence", "VerifiedEvidence", "TrustAnchorMissing", "log_events", "replay_logs", "LogReplay", "arch_of"]
