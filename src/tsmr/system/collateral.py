"""Collateral fetched from Intel PCS / a PCCS (TDX) and AMD's KDS (SEV-SNP), verified before use, cached.

A verifier needs documents besides the evidence: for a TDX quote the TCB info
of its platform's FMSPC, the TD QE identity, the PCK CRL of its PCK CA and the
Intel SGX Root CA CRL; for an SEV-SNP report the VCEK of its chip at its
reported TCB and the product's ASK.  This module names those documents
(:class:`Key`, :func:`keys_for`), fetches them (:class:`Fetcher`: one HTTP GET,
bounded in size and time), verifies them exactly as a verification would
(:func:`verify_document`: signatures through their issuer chains to the TDX
root or the pinned ARK, the document is the one the key names, not expired),
keeps them (:class:`Cache`, :class:`MemoryCache`) and turns them into trust
anchors (:func:`assemble`, :func:`resolve`).

Nothing fetched is a trust anchor: TCB info, QE identity and CRLs must chain
to ``trust.tdx_root`` (or the shipped Intel root), and a fetched ARK must equal
the pinned ``trust.snp_ark``.  A document that fails any check is never
returned by :meth:`Fetcher.fetch` and never put in a cache; a cached one is
checked again on every use (a cache is trusted no more than the network).

Routes (Intel PCS API v4 shapes, which a PCCS serves too)::

    tdx.tcb     GET {pccs}/tdx/certification/v4/tcb?fmspc=HEX        header TCB-Info-Issuer-Chain
    tdx.qe      GET {pccs}/tdx/certification/v4/qe/identity          header SGX-Enclave-Identity-Issuer-Chain
    tdx.pckcrl  GET {pccs}/sgx/certification/v4/pckcrl?ca=platform  header SGX-PCK-CRL-Issuer-Chain
    tdx.rootcrl GET {pccs}/sgx/certification/v4/rootcacrl           (PCCS; body: hex of the DER CRL)
    snp.vcek    GET {kds}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..[&fmcSPL=..]
    snp.chain   GET {kds}/vcek/v1/{product}/cert_chain                (PEM: ASK, then ARK)

Intel's PCS itself has no ``rootcacrl`` route: it publishes the root CA CRL at
the CRL distribution point of the root certificate.  When the PCCS URL is
Intel's PCS host (``api.trustedservices.intel.com``), ``tdx.rootcrl`` is
fetched from the trusted root's CRL distribution point instead.

Expiry and refresh: a document's ``not_after`` is the earliest of its
nextUpdate (TCB info, QE identity, CRLs) or notAfter (certificates) and the
notAfter of the certificates it was verified with.  ``refresh_after`` is the
earlier of three quarters of the way from ``fetched_at`` to ``not_after`` and
one day before ``not_after``; when less than a day is left at fetch time, the
three-quarter point alone, so a short-lived document is not refreshed in a loop.

Precedence (:func:`resolve`): collateral the operator gave in files wins and
nothing is fetched; then a cached document that verifies now; then a fetch.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import BackendError, CollateralError, EvidenceError, InputError, ParseError, SignatureError
from ..evidence import snp, tdx
from ..evidence.anchors import TrustAnchors
from ..evidence.tdx.certs import _chain, _load_crl, _root_info
from ..evidence.tdx.collateral import _signed_json
from ..findings import Finding, Severity

__all__ = [
    "SourceKind", "Key", "Document", "CollateralUnavailable", "keys_for", "Fetcher", "verify_document",
    "assemble", "Cache", "MemoryCache", "resolve", "refresh_due", "KINDS", "MAX_BODY", "pck_ca_type",
    "snp_product", "crl_der", "refresh_time",
]

SourceKind = Literal["pccs", "kds"]

#: The documents a key can name, and the parameters each takes (all of them, except fmcSPL: Turin only).
KINDS: dict[str, tuple[str, ...]] = {
    "tdx.tcb": ("fmspc",),
    "tdx.qe": (),
    "tdx.pckcrl": ("ca",),
    "tdx.rootcrl": (),
    "snp.vcek": ("blSPL", "hwid", "product", "snpSPL", "teeSPL", "ucodeSPL"),
    "snp.chain": ("product",),
}
_OPTIONAL = {"snp.vcek": ("fmcSPL",)}
MAX_BODY = 1 << 20  # a PCS/KDS response is a few KiB; a larger one is refused, not read
MAX_KEY_ID = 512
_PRODUCTS = ("Milan", "Genoa", "Turin")  # KDS product lines
_INTEL_PCS_HOST = "api.trustedservices.intel.com"

_HEADERS = {  # the issuer-chain header each TDX route sends (PCS API v4; v3's TCB name accepted too)
    "tdx.tcb": ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
    "tdx.qe": ("SGX-Enclave-Identity-Issuer-Chain",),
    "tdx.pckcrl": ("SGX-PCK-CRL-Issuer-Chain",),
}


def _utc(t: datetime, what: str) -> datetime:
    if not isinstance(t, datetime) or t.tzinfo is None:
        raise InputError(f"{what} must be a timezone-aware datetime")
    return t.astimezone(UTC)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Key:
    """One collateral document: its kind and parameters (sorted (name, value) pairs of text).

    ``id`` is the stable text a cache stores it under (``tdx.tcb?fmspc=50806f000000``)."""

    kind: str
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown collateral kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        try:
            pairs = tuple(sorted((str(k), str(v)) for k, v in self.params))
        except (TypeError, ValueError):
            raise InputError("collateral key parameters must be (name, value) pairs") from None
        names = [k for k, _ in pairs]
        allowed = set(KINDS[self.kind]) | set(_OPTIONAL.get(self.kind, ()))
        if len(set(names)) != len(names) or not set(KINDS[self.kind]) <= set(names) or not set(names) <= allowed:
            raise InputError(f"collateral key {self.kind}: parameters must be {', '.join(KINDS[self.kind]) or 'none'}"
                             f", got {', '.join(names) or 'none'}")
        for k, v in pairs:
            _check_param(self.kind, k, v)
        object.__setattr__(self, "params", pairs)
        if len(self.id) > MAX_KEY_ID:
            raise InputError(f"collateral key id is longer than {MAX_KEY_ID} characters")

    @property
    def id(self) -> str:
        """The cache's primary key: the kind, then ``?`` and the url-encoded parameters in order."""
        if not self.params:
            return self.kind
        return self.kind + "?" + urllib.parse.urlencode(self.params)

    @property
    def source(self) -> SourceKind:
        """Where documents of this kind come from: ``pccs`` (Intel PCS or a PCCS) or ``kds`` (AMD)."""
        return "pccs" if self.kind.startswith("tdx.") else "kds"

    def param(self, name: str) -> str | None:
        return dict(self.params).get(name)

    @classmethod
    def from_id(cls, key_id: str) -> Key:
        """The key whose :attr:`id` is ``key_id`` (InputError for anything that is not one)."""
        if not isinstance(key_id, str) or len(key_id) > MAX_KEY_ID:
            raise InputError("a collateral key id is text of at most 512 characters")
        kind, _, query = key_id.partition("?")
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError as exc:
            raise InputError(f"collateral key id {key_id!r}: {exc}") from None
        key = cls(kind, tuple(pairs))
        if key.id != key_id:
            raise InputError(f"collateral key id {key_id!r} is not in its canonical form ({key.id!r})")
        return key


def _check_param(kind: str, name: str, value: str) -> None:
    ok = True
    if name == "fmspc":
        ok = len(value) == 12 and all(c in "0123456789abcdef" for c in value)
    elif name == "ca":
        ok = value in ("platform", "processor")
    elif name == "hwid":
        ok = len(value) in (16, 128) and all(c in "0123456789abcdef" for c in value)
    elif name == "product":
        ok = value in _PRODUCTS
    elif name.endswith("SPL"):
        ok = value.isdigit() and len(value) <= 3 and int(value) <= 255 and str(int(value)) == value
    if not ok:
        raise InputError(f"collateral key {kind}: bad {name} {value!r}")


def pck_ca_type(name: x509.Name) -> str:
    """``processor`` or ``platform``: which Intel PCK CA a certificate or CRL issuer name is.

    Intel has two PCK CAs, "Intel SGX PCK Platform CA" and "Intel SGX PCK Processor CA"
    (PCK Certificate and CRL Profile); a name that says neither (a test chain's) counts as
    ``platform``, the one PCS serves for multi-package platforms and the common case."""
    try:
        cns = [str(a.value) for a in name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    except ValueError:
        cns = []
    return "processor" if any("processor" in cn.lower() for cn in cns) else "platform"


def snp_product(report: snp.SNPReport, *, product: str | None = None, ark: Any = None) -> str | None:
    """The KDS product line (Milan, Genoa, Turin) of a report's chip.

    From the report's CPUID fields (version 3+: family 19h models 00h-0Fh Milan, 10h-1Fh and
    A0h-AFh Genoa; family 1Ah Turin), else ``product`` (a name such as ``Milan`` or
    ``Milan-B0``), else the pinned ARK's subject (``ARK-Milan``).  None when none says."""
    fam, mod = report.cpuid_fam_id, report.cpuid_mod_id
    if fam is not None and mod is not None and fam != 0:
        if fam == 0x19 and mod <= 0x0F:
            return "Milan"
        if fam == 0x19 and (0x10 <= mod <= 0x1F or 0xA0 <= mod <= 0xAF):
            return "Genoa"
        if fam == 0x1A:
            return "Turin"
    if product:
        base = product.split("-", 1)[0].strip().capitalize()
        if base in _PRODUCTS:
            return base
        raise InputError(f"unknown SEV-SNP product {product!r} (products: {', '.join(_PRODUCTS)})")
    if ark is not None:
        try:
            cert = ark if isinstance(ark, x509.Certificate) else snp.load_certificates(bytes(ark))[0]
            cn = " ".join(str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
        except (ParseError, ValueError, TypeError, IndexError):
            return None
        for p in _PRODUCTS:
            if p.lower() in cn.lower():
                return p
    return None


def keys_for(kind: str, evidence: bytes, *, trust: TrustAnchors, product: str | None = None,
             now: datetime | None = None) -> list[Key]:
    """The documents this evidence needs (see COLLATERAL-API.md); [] for other kinds or unreadable evidence.

    TDX: ``tdx.tcb`` of the PCK certificate's FMSPC, ``tdx.qe``, ``tdx.pckcrl`` of its PCK CA
    (:func:`pck_ca_type` of the certificate's issuer) and ``tdx.rootcrl``.  SEV-SNP (VCEK-signed,
    chip id not masked): ``snp.chain`` and ``snp.vcek`` of the chip id (its first 8 bytes on
    Turin) at the reported TCB; a masked chip id gives ``snp.chain`` only, a VLEK-signed
    report nothing (VLEKs are not served by the public KDS routes).

    A TDX quote's PCK chain is verified up to the TDX root (at ``now``, default the current time)
    before its FMSPC is believed: a quote with a made-up PCK certificate names no documents, so it
    cannot make the verifier fetch for any FMSPC it likes (the appraisal reports the bad chain)."""
    if kind not in ("tdx", "snp"):
        return []
    try:
        if kind == "tdx":
            q = tdx.parse_quote(evidence)
            certs = _chain(q.pck_chain_pem, _root_info(trust.tdx_root), now or datetime.now(UTC),
                           check="tdx.pck_chain").certs
            ext = tdx.pck_extensions(certs[0])
            return [Key("tdx.tcb", (("fmspc", ext.fmspc.hex()),)), Key("tdx.qe"),
                    Key("tdx.pckcrl", (("ca", pck_ca_type(certs[0].issuer)),)), Key("tdx.rootcrl")]
        rep = snp.parse_report(evidence)
    except (EvidenceError, ParseError, ValueError, IndexError):
        return []
    if rep.signing_key != "vcek":
        return []
    name = snp_product(rep, product=product, ark=trust.snp_ark)  # an unknown product given: InputError
    if name is None:
        return []
    keys = [Key("snp.chain", (("product", name),))]
    if not rep.mask_chip_id and any(rep.chip_id):
        tcb = rep.reported_tcb
        params = [("product", name), ("blSPL", str(tcb.bootloader)), ("teeSPL", str(tcb.tee)),
                  ("snpSPL", str(tcb.snp)), ("ucodeSPL", str(tcb.microcode))]
        if name == "Turin":
            params += [("hwid", rep.chip_id[:8].hex()), ("fmcSPL", str(tcb.fmc or 0))]
        else:
            params.append(("hwid", rep.chip_id.hex()))
        keys.append(Key("snp.vcek", tuple(params)))
    return keys


# --------------------------------------------------------------------------- documents


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class Document:
    """A collateral document as served: the body as received and the URL-decoded issuer chain.

    For ``snp.vcek`` (KDS sends no issuer header) ``chain`` holds the product's cert_chain
    (ASK, ARK) the VCEK was verified with."""

    key: Key
    body: bytes
    chain: bytes | None
    not_after: datetime
    refresh_after: datetime
    fetched_at: datetime
    url: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form (body and chain base64, times ISO 8601 UTC), for a database row."""
        return {"key": self.key.id, "body": base64.b64encode(self.body).decode(),
                "chain": None if self.chain is None else base64.b64encode(self.chain).decode(),
                "not_after": _iso(self.not_after), "refresh_after": _iso(self.refresh_after),
                "fetched_at": _iso(self.fetched_at), "url": self.url}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Document:
        """The document :meth:`to_json` wrote; InputError for anything else (unknown or missing fields,
        bad base64, naive or malformed times, refresh_after after not_after, a body over 1 MiB)."""
        if not isinstance(d, Mapping):
            raise InputError("a collateral document must be a JSON object")
        want = {"key", "body", "chain", "not_after", "refresh_after", "fetched_at", "url"}
        if set(d) != want:
            extra, missing = sorted(set(d) - want), sorted(want - set(d))
            raise InputError(f"collateral document: unknown fields {extra}, missing fields {missing}")

        def b64(name: str, value: Any) -> bytes:
            if not isinstance(value, str) or len(value) > 2 * MAX_BODY:
                raise InputError(f"collateral document: {name} must be base64 text")
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"collateral document: {name} is not base64") from None

        def when(name: str) -> datetime:
            v = d[name]
            if not isinstance(v, str):
                raise InputError(f"collateral document: {name} must be an ISO 8601 time")
            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                raise InputError(f"collateral document: {name} {v!r} is not an ISO 8601 time") from None
            if t.tzinfo is None:
                raise InputError(f"collateral document: {name} has no time zone")
            return t.astimezone(UTC)

        if not isinstance(d["key"], str):
            raise InputError("collateral document: key must be text")
        if not isinstance(d["url"], str):
            raise InputError("collateral document: url must be text")
        key = Key.from_id(d["key"])
        body = b64("body", d["body"])
        chain = None if d["chain"] is None else b64("chain", d["chain"])
        not_after, refresh_after, fetched_at = when("not_after"), when("refresh_after"), when("fetched_at")
        if refresh_after > not_after:
            raise InputError("collateral document: refresh_after is after not_after")
        return cls(key, body, chain, not_after, refresh_after, fetched_at, d["url"])


class CollateralUnavailable(BackendError):
    """A document could not be fetched or was refused (source down, timeout, HTTP error, malformed,
    bad signature, wrong FMSPC/CA/chip/TCB, already expired).  Never cached.

    ``reason``: ``unreachable``, ``timeout``, ``http-status``, ``malformed``, ``bad-signature``,
    ``wrong-document`` or ``expired``."""

    REASONS = ("unreachable", "timeout", "http-status", "malformed", "bad-signature", "wrong-document", "expired")

    def __init__(self, key: Key, reason: str, detail: str, *, url: str = "") -> None:
        self.key = key
        self.reason = reason if reason in self.REASONS else "malformed"
        self.detail = detail
        self.url = url
        where = f" from {url}" if url else ""
        super().__init__(f"collateral {key.id}{where}: {self.reason}: {detail}", backend=key.source)


def refresh_time(fetched_at: datetime, not_after: datetime) -> datetime:
    """When a document fetched at ``fetched_at`` and valid until ``not_after`` should be fetched again.

    The earlier of 3/4 of the way from ``fetched_at`` to ``not_after`` and one day before it; the 3/4 point
    alone when less than a day was left when it was fetched (see the module docstring)."""
    life = max(not_after - fetched_at, timedelta(0))
    three_quarters = fetched_at + life * 3 / 4
    day_before = not_after - timedelta(days=1)
    if day_before <= fetched_at:
        return min(three_quarters, not_after)
    return min(three_quarters, day_before)


# --------------------------------------------------------------------------- verification


def _reason(exc: Exception) -> str:
    """The CollateralUnavailable reason for a verification error of the evidence layer."""
    check = getattr(exc, "check", "") or ""
    if check.endswith(".expired") or check.endswith(".validity"):
        return "expired"
    if check.endswith(".not-yet-valid"):
        return "wrong-document"
    if isinstance(exc, SignatureError) or "signature" in check or "chain" in check:
        return "bad-signature"
    if isinstance(exc, ParseError):
        return "malformed"
    return "bad-signature" if isinstance(exc, CollateralError) else "malformed"


def _crl_body(body: bytes) -> bytes:
    """A CRL body as served: DER, PEM, or (PCCS rootcacrl) the hex text of the DER."""
    s = body.strip()
    if s and len(s) % 2 == 0 and all(c in b"0123456789abcdefABCDEF" for c in s):
        return bytes.fromhex(s.decode())
    return body


def crl_der(body: bytes) -> bytes:
    """The DER of a CRL served as DER, PEM or hex text (PCCS); ParseError when it is no CRL."""
    raw = _crl_body(body)
    try:
        if raw.lstrip().startswith(b"-----"):
            return bytes(x509.load_pem_x509_crl(raw).public_bytes(serialization.Encoding.DER))
        x509.load_der_x509_crl(raw)
    except ValueError as exc:
        raise ParseError(f"not a CRL: {exc}", format="X.509 CRL") from None
    return raw


def _json_object(body: bytes, member: str, key: Key) -> Mapping[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise CollateralUnavailable(key, "malformed", "the response is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(member), dict) or not isinstance(doc.get("signature"), str):
        raise CollateralUnavailable(key, "malformed", f"the response is not {{{member!r}: ..., 'signature': ...}}")
    return doc[member]


def _certs_not_after(pem: bytes) -> datetime:
    return min(c.not_valid_after_utc for c in x509.load_pem_x509_certificates(pem))


def _check_tdx(key: Key, body: bytes, chain: bytes | None, trust: TrustAnchors, now: datetime) -> datetime:
    """Verify a TDX document for ``key`` at ``now``; return its not_after."""
    root = _root_info(trust.tdx_root)
    if key.kind in ("tdx.tcb", "tdx.qe"):
        member, check, want_id = (("tcbInfo", "tdx.tcb_info", "TDX") if key.kind == "tdx.tcb"
                                  else ("enclaveIdentity", "tdx.qe_identity", "TD_QE"))

        def identify(obj: Mapping[str, Any]) -> None:
            if obj.get("id") != want_id:
                raise CollateralUnavailable(key, "wrong-document", f"{member} id is {obj.get('id')!r}, not {want_id!r}")
            if key.kind == "tdx.tcb":
                if not isinstance(obj.get("version"), int) or obj["version"] < 3:
                    raise CollateralUnavailable(key, "wrong-document", "not a TDX TCB info v3 or later")
                if str(obj.get("fmspc", "")).lower() != key.param("fmspc"):
                    raise CollateralUnavailable(key, "wrong-document", f"TCB info is for FMSPC "
                                                                       f"{obj.get('fmspc')!r}, not {key.param('fmspc')}")

        # What the document is comes first: a valid document for another platform is the wrong one,
        # whatever its dates.  Checked again on the signed bytes (the object a verifier will use).
        identify(_json_object(body, member, key))
        if chain is None:
            raise CollateralUnavailable(key, "malformed", "the response has no issuer-chain header")
        try:
            signed, sig = tdx.Collateral._split(body, member)
            verified = _signed_json(signed, sig, chain, root, now, check)
        except (EvidenceError, ParseError) as exc:
            raise CollateralUnavailable(key, _reason(exc), str(exc)) from None
        identify(verified)
        next_update = datetime.fromisoformat(str(verified["nextUpdate"]))
        if next_update.tzinfo is None:
            next_update = next_update.replace(tzinfo=UTC)
        return min(next_update.astimezone(UTC), _certs_not_after(chain))
    # CRLs
    crl_b = _crl_body(body)
    try:
        crl = _load_crl(crl_b, "tdx.crl")
    except CollateralError as exc:
        raise CollateralUnavailable(key, "malformed", str(exc)) from None
    if key.kind == "tdx.pckcrl":
        if pck_ca_type(crl.issuer) != key.param("ca"):
            raise CollateralUnavailable(key, "wrong-document",
                                        f"the CRL is {crl.issuer.rfc4514_string()}'s, not the {key.param('ca')} CA's")
        if chain is None:
            raise CollateralUnavailable(key, "malformed", "the response has no issuer-chain header")
        try:
            issuer = _chain(chain, root, now, check="tdx.crl")
        except EvidenceError as exc:
            raise CollateralUnavailable(key, _reason(exc), str(exc)) from None
        signer, signer_name, chain_end = issuer.leaf_key(), issuer.certs[0].subject, _certs_not_after(chain)
    else:
        signer, signer_name, chain_end = root.cert.public_key(), root.cert.subject, root.cert.not_valid_after_utc
    if crl.issuer != signer_name:
        raise CollateralUnavailable(key, "wrong-document",
                                    f"the CRL is issued by {crl.issuer.rfc4514_string()}, not by "
                                    f"{signer_name.rfc4514_string()}")
    try:
        ok = crl.is_signature_valid(signer)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CollateralUnavailable(key, "bad-signature", "the CRL is not signed by its issuer")
    if now < crl.last_update_utc:
        raise CollateralUnavailable(key, "wrong-document", f"the CRL was issued at {crl.last_update_utc.isoformat()}, "
                                                           "after the verification time")
    if crl.next_update_utc is None:
        raise CollateralUnavailable(key, "malformed", "the CRL has no nextUpdate")
    if now > crl.next_update_utc:
        raise CollateralUnavailable(key, "expired", f"the CRL expired at {crl.next_update_utc.isoformat()}")
    return min(crl.next_update_utc, chain_end)


def _pinned_ark(key: Key, trust: TrustAnchors) -> x509.Certificate:
    if trust.snp_ark is None:
        raise CollateralUnavailable(key, "wrong-document", "no ARK is pinned (--ark, trust.snp_ark): a fetched "
                                                           "chain is never a trust anchor")
    try:
        return snp._cert(trust.snp_ark, "the pinned ARK")
    except (InputError, ParseError) as exc:
        raise CollateralUnavailable(key, "malformed", str(exc)) from None


def _snp_chain(key: Key, pem: bytes, trust: TrustAnchors, now: datetime) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) of a KDS cert_chain, the ARK equal to the pinned one, the ASK signed by it."""
    ark_pin = _pinned_ark(key, trust)
    try:
        ask, ark = snp.split_chain(pem)
    except (ParseError, ValueError) as exc:
        raise CollateralUnavailable(key, "malformed", f"cert_chain: {exc}") from None
    if not hmac.compare_digest(ark.public_bytes(serialization.Encoding.DER),
                               ark_pin.public_bytes(serialization.Encoding.DER)):
        raise CollateralUnavailable(key, "wrong-document", f"the chain's ARK ({ark.subject.rfc4514_string()}) is not "
                                                           "the pinned ARK")
    try:
        snp._check_issued(ask, ark, "snp.chain.ask", now)
        snp._check_validity(ark, "snp.chain.ark.validity", now)
    except CollateralError as exc:
        reason = "expired" if "not valid at" in str(exc) else "bad-signature"
        raise CollateralUnavailable(key, reason, str(exc)) from None
    return ask, ark


def _check_snp(key: Key, body: bytes, chain: bytes | None, trust: TrustAnchors, now: datetime) -> datetime:
    if key.kind == "snp.chain":
        ask, ark = _snp_chain(key, body, trust, now)
        return min(ask.not_valid_after_utc, ark.not_valid_after_utc)
    # snp.vcek: DER (PEM accepted), verified with the cert_chain beside it or the operator's ASK.
    try:
        certs = snp.load_certificates(body)
        if len(certs) != 1:
            raise ParseError(f"{len(certs)} certificates", format="X.509")
        vcek = certs[0]
    except ParseError as exc:
        raise CollateralUnavailable(key, "malformed", f"VCEK: {exc}") from None
    if chain is not None:
        ask, ark = _snp_chain(key, chain, trust, now)
        ends = [ask.not_valid_after_utc, ark.not_valid_after_utc]
    elif trust.snp_ask is not None:
        ark = _pinned_ark(key, trust)
        ask = snp._cert(trust.snp_ask, "the ASK")
        ends = []
    else:
        raise CollateralUnavailable(key, "malformed", "no ASK to verify the VCEK with (no cert_chain, no --ask)")
    hwid = snp._vcek_hwid(vcek)
    if hwid is not None and len(hwid) == 10 and hwid[:2] == b"\x04\x08":  # a Turin hwID in an OCTET STRING
        hwid = hwid[2:]
    if hwid is None or hwid.hex() != key.param("hwid"):
        raise CollateralUnavailable(key, "wrong-document", f"the VCEK is for hwID {hwid.hex() if hwid else None}, "
                                                           f"not {key.param('hwid')}")
    tcb = snp.vcek_tcb(vcek)
    want = {k: int(v) for k, v in key.params if k.endswith("SPL")}
    got = {k: tcb.get(k) for k in want}
    if got != want:
        raise CollateralUnavailable(key, "wrong-document", f"the VCEK is for TCB {got}, not {want}")
    try:
        snp._check_issued(vcek, ask, "snp.chain.vcek", now)
    except CollateralError as exc:
        reason = "expired" if "not valid at" in str(exc) else "bad-signature"
        raise CollateralUnavailable(key, reason, str(exc)) from None
    return min([vcek.not_valid_after_utc, *ends])


def _check(key: Key, body: bytes, chain: bytes | None, trust: TrustAnchors, now: datetime) -> datetime:
    """Verify ``body`` (and ``chain``) as the document ``key`` names, at ``now``; its not_after."""
    now = _utc(now, "now")
    try:
        if key.source == "pccs":
            return _check_tdx(key, body, chain, trust, now)
        return _check_snp(key, body, chain, trust, now)
    except CollateralUnavailable:
        raise
    except (EvidenceError, ParseError, InputError, ValueError, TypeError, KeyError) as exc:
        raise CollateralUnavailable(key, _reason(exc), f"{type(exc).__name__}: {exc}") from None


def verify_document(doc: Document, *, trust: TrustAnchors, now: datetime) -> None:
    """The checks :meth:`Fetcher.fetch` makes, for a document read back from a cache.

    Signature through its issuer chain to the TDX root (``trust.tdx_root`` or the shipped
    Intel root); the document is the one its key names (FMSPC, CA, id ``TDX``/``TD_QE``,
    VCEK hwID and TCB); not past its expiry at ``now``; a VCEK signed by the ASK signed by
    the pinned ARK (``trust.snp_ark``; a fetched ARK must equal it, and without one nothing
    SEV-SNP verifies).  Also: ``not_after`` must be what the content says (a row whose
    expiry was edited is refused).  Raises :class:`CollateralUnavailable`."""
    not_after = _check(doc.key, doc.body, doc.chain, trust, now)
    if doc.not_after != not_after:
        raise CollateralUnavailable(doc.key, "malformed", f"not_after {_iso(doc.not_after)} is not the document's "
                                                          f"{_iso(not_after)}", url=doc.url)
    if doc.refresh_after > doc.not_after:
        raise CollateralUnavailable(doc.key, "malformed", "refresh_after is after not_after", url=doc.url)


def assemble(docs: Sequence[Document]) -> dict[str, Any]:
    """TrustAnchors fields from verified documents.

    TDX: ``{"tdx_collateral": tdx.Collateral}`` when the TCB info and the PCK CRL are there
    (QE identity and root CA CRL when they are).  SEV-SNP: ``{"snp_vcek": DER}`` and
    ``{"snp_ask": certificate}`` from the cert_chain.  The ARK is never taken from a document."""
    by = {d.key.kind: d for d in docs}
    out: dict[str, Any] = {}
    if "tdx.tcb" in by and "tdx.pckcrl" in by:
        tcb, crl = by["tdx.tcb"], by["tdx.pckcrl"]
        qe, root_crl = by.get("tdx.qe"), by.get("tdx.rootcrl")
        out["tdx_collateral"] = tdx.Collateral.from_pcs(
            tcb_info_response=tcb.body, tcb_info_issuer_chain=tcb.chain or b"",
            pck_crl=_crl_body(crl.body), pck_crl_issuer_chain=crl.chain or b"",
            qe_identity_response=qe.body if qe else None, qe_identity_issuer_chain=qe.chain if qe else None,
            root_ca_crl=_crl_body(root_crl.body) if root_crl else None)
    if "snp.vcek" in by:
        out["snp_vcek"] = by["snp.vcek"].body
    if "snp.chain" in by:
        out["snp_ask"] = snp.split_chain(by["snp.chain"].body)[0]
    elif "snp.vcek" in by and by["snp.vcek"].chain is not None:
        out["snp_ask"] = snp.split_chain(by["snp.vcek"].chain or b"")[0]
    return out


# --------------------------------------------------------------------------- fetching


class _NoForeignRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the same scheme, host and port (at most 3)."""

    max_redirections = 3

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (old.scheme, old.netloc) != (new.scheme, new.netloc):
            raise urllib.error.HTTPError(req.full_url, code, f"redirect to another host ({new.netloc}) refused",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _base(url: str | None, what: str) -> str | None:
    if url is None or url == "":
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InputError(f"{what} {url!r} is not an http(s) URL of a host (e.g. https://host:8081)")
    return url.rstrip("/")


class Fetcher:
    """Fetches collateral documents and verifies them before returning them.

    ``pccs_url``: Intel PCS (``https://api.trustedservices.intel.com``) or a PCCS
    (``https://host:8081``); ``kds_url``: AMD KDS (``https://kdsintf.amd.com``).  Each
    request is one HTTP GET with ``timeout`` seconds for connecting and for each read,
    a body of at most :data:`MAX_BODY` bytes, redirects only within the same host.
    HTTPS is verified with the system's CA store, or with ``cafile`` (PEM) when given.
    ``trust`` anchors the checks (:func:`verify_document`)."""

    def __init__(self, *, pccs_url: str | None = None, kds_url: str | None = None, timeout: float = 10.0,
                 trust: TrustAnchors, cafile: str | None = None, max_body: int = MAX_BODY) -> None:
        if not timeout > 0:
            raise InputError("the collateral fetch timeout must be positive")
        self.pccs_url = _base(pccs_url, "--pccs")
        self.kds_url = _base(kds_url, "--kds")
        self.timeout = float(timeout)
        self.trust = trust
        self.max_body = max_body
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(f"CA file {cafile}: {exc}") from None
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                                   _NoForeignRedirects())
        self._chains: dict[str, Document] = {}  # product -> a verified snp.chain (to verify VCEKs with)
        self._lock = threading.Lock()

    def url(self, key: Key) -> str:
        """The URL ``key``'s document is fetched from; CollateralUnavailable (unreachable) without a source."""
        base = self.pccs_url if key.source == "pccs" else self.kds_url
        if base is None:
            option = "--pccs (TSMR_PCCS_URL)" if key.source == "pccs" else "--kds (TSMR_KDS_URL)"
            raise CollateralUnavailable(key, "unreachable", f"no {key.source.upper()} URL was given ({option})")
        p = dict(key.params)
        q = urllib.parse.quote
        if key.kind == "tdx.tcb":
            return f"{base}/tdx/certification/v4/tcb?fmspc={q(p['fmspc'])}"
        if key.kind == "tdx.qe":
            return f"{base}/tdx/certification/v4/qe/identity"
        if key.kind == "tdx.pckcrl":
            return f"{base}/sgx/certification/v4/pckcrl?ca={q(p['ca'])}"
        if key.kind == "tdx.rootcrl":
            if urllib.parse.urlsplit(base).hostname == _INTEL_PCS_HOST:
                return self._root_crl_point(key)
            return f"{base}/sgx/certification/v4/rootcacrl"
        if key.kind == "snp.chain":
            return f"{base}/vcek/v1/{q(p['product'])}/cert_chain"
        spl = [(n, p[n]) for n in ("fmcSPL", "blSPL", "teeSPL", "snpSPL", "ucodeSPL") if n in p]
        return f"{base}/vcek/v1/{q(p['product'])}/{q(p['hwid'])}?{urllib.parse.urlencode(spl)}"

    def _root_crl_point(self, key: Key) -> str:
        """The root certificate's CRL distribution point (where Intel's PCS publishes the root CA CRL)."""
        root = _root_info(self.trust.tdx_root).cert
        try:
            points = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            for point in points:
                for name in point.full_name or ():
                    if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("https://"):
                        return str(name.value)
        except x509.ExtensionNotFound:
            pass
        raise CollateralUnavailable(key, "unreachable", "the TDX root certificate names no https CRL distribution point")

    def _get(self, key: Key, url: str) -> tuple[bytes, Mapping[str, str]]:
        req = urllib.request.Request(url, headers={"Accept": "*/*", "User-Agent": "tsmr-collateral"})
        # ``timeout`` bounds connecting and each read; the whole answer must come within twice that, so a
        # server that trickles a byte at a time cannot hold a verifier for long.
        deadline = time.monotonic() + 2 * self.timeout
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                chunks: list[bytes] = []
                size = 0
                while size <= self.max_body:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the answer did not arrive in time")
                    chunk = resp.read1(min(65536, self.max_body + 1 - size))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                body = b"".join(chunks)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise CollateralUnavailable(key, "http-status", f"HTTP {exc.code} {exc.reason}", url=url) from None
        except urllib.error.URLError as exc:
            why = exc.reason
            if isinstance(why, (TimeoutError, socket.timeout)):
                raise CollateralUnavailable(key, "timeout", f"no answer within {self.timeout:g} s", url=url) from None
            raise CollateralUnavailable(key, "unreachable", str(why), url=url) from None
        except (TimeoutError, socket.timeout):
            raise CollateralUnavailable(key, "timeout", f"no (complete) answer within {self.timeout:g} s per read "
                                        f"and {2 * self.timeout:g} s in all", url=url) from None
        except (OSError, ValueError) as exc:  # connection reset, bad status line, ...
            raise CollateralUnavailable(key, "unreachable", f"{type(exc).__name__}: {exc}", url=url) from None
        if len(body) > self.max_body:
            raise CollateralUnavailable(key, "malformed", f"the response is larger than {self.max_body} bytes", url=url)
        return body, headers

    def note(self, doc: Document) -> None:
        """Remember a verified ``snp.chain`` document, so VCEKs of its product are verified with it."""
        if doc.key.kind == "snp.chain":
            with self._lock:
                self._chains[doc.key.param("product") or ""] = doc

    def _chain_for(self, product: str, now: datetime) -> bytes:
        with self._lock:
            known = self._chains.get(product)
        if known is not None:
            try:
                verify_document(known, trust=self.trust, now=now)
                return known.body
            except CollateralUnavailable:
                pass
        return self.fetch(Key("snp.chain", (("product", product),)), now=now).body

    def fetch(self, key: Key, *, now: datetime) -> Document:
        """Fetch ``key``'s document and verify it at ``now`` (:func:`verify_document`).

        One HTTP GET (a VCEK also needs its product's cert_chain, fetched once and remembered
        by this fetcher).  Raises :class:`CollateralUnavailable`; with no source configured for
        the key, reason ``unreachable`` naming the option to give."""
        now = _utc(now, "now")
        url = self.url(key)
        body, headers = self._get(key, url)
        chain: bytes | None = None
        for name in _HEADERS.get(key.kind, ()):
            if name.lower() in headers:
                chain = urllib.parse.unquote(headers[name.lower()]).encode()
                break
        if key.kind == "snp.vcek":
            try:
                chain = self._chain_for(key.param("product") or "", now)
            except CollateralUnavailable as exc:
                raise CollateralUnavailable(key, exc.reason, f"its cert_chain: {exc.detail}", url=exc.url) from None
        try:
            not_after = _check(key, body, chain, self.trust, now)
        except CollateralUnavailable as exc:
            if exc.url:
                raise
            raise CollateralUnavailable(key, exc.reason, exc.detail, url=url) from None
        doc = Document(key, body, chain, not_after, refresh_time(now, not_after), now, url)
        self.note(doc)
        return doc


# --------------------------------------------------------------------------- caches


class Cache(Protocol):
    """Where verified documents are kept (the service keeps them in its database)."""

    def get(self, key_id: str) -> Document | None: ...

    def put(self, doc: Document) -> None: ...

    def claim(self, key_id: str, *, owner: str, ttl: float) -> bool: ...

    def release(self, key_id: str, *, owner: str) -> None: ...

    def due(self, now: datetime, limit: int = 100) -> list[Document]: ...


class MemoryCache:
    """A :class:`Cache` in one process (the CLI, tests): a dict and leases, under one lock."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_id: str) -> Document | None:
        with self._lock:
            return self._docs.get(key_id)

    def put(self, doc: Document) -> None:
        with self._lock:
            self._docs[doc.key.id] = doc

    def claim(self, key_id: str, *, owner: str, ttl: float) -> bool:
        """Take the fetch lease of ``key_id`` for ``ttl`` seconds: True when it was free, expired or ours."""
        now = time.monotonic()
        with self._lock:
            held = self._leases.get(key_id)
            if held is not None and held[0] != owner and held[1] > now:
                return False
            self._leases[key_id] = (owner, now + ttl)
            return True

    def release(self, key_id: str, *, owner: str) -> None:
        with self._lock:
            held = self._leases.get(key_id)
            if held is not None and held[0] == owner:
                del self._leases[key_id]

    def due(self, now: datetime, limit: int = 100) -> list[Document]:
        with self._lock:
            docs = sorted((d for d in self._docs.values() if d.refresh_after <= now), key=lambda d: d.refresh_after)
        return docs[:limit]

    def __len__(self) -> int:
        with self._lock:
            return len(self._docs)


# --------------------------------------------------------------------------- resolving


def _lease_ttl(fetcher: Fetcher) -> float:
    """How long a fetch lease lasts: two requests (a VCEK and its cert_chain), each at most twice the
    timeout (:meth:`Fetcher._get`), and some slack."""
    return 4 * fetcher.timeout + 5


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"


def _given(key: Key, trust: TrustAnchors) -> bool:
    """Whether the operator's own files already provide what ``key`` names."""
    if key.source == "pccs":
        return trust.tdx_collateral is not None
    if key.kind == "snp.vcek":
        return trust.snp_vcek is not None
    return trust.snp_ask is not None


def _valid(doc: Document | None, trust: TrustAnchors, now: datetime) -> tuple[bool, CollateralUnavailable | None]:
    if doc is None:
        return False, None
    try:
        verify_document(doc, trust=trust, now=now)
        return True, None
    except CollateralUnavailable as exc:
        return False, exc


def _unavailable(key: Key, exc: CollateralUnavailable, stale: Document | None, now: datetime) -> Finding:
    """The ERROR finding for a key without a valid document: expired (a cached copy ran out) or unavailable."""
    ctx: dict[str, Any] = {"key": key.id, "url": exc.url, "reason": exc.reason}
    where = f" ({exc.url})" if exc.url else ""
    if stale is not None and stale.not_after < now:
        return Finding("collateral.expired", Severity.ERROR,
                       f"the cached {key.id} expired at {_iso(stale.not_after)} and no fresh one could be had: "
                       f"{exc.reason}: {exc.detail}{where}",
                       claim="hardware", context={**ctx, "not_after": _iso(stale.not_after)})
    return Finding("collateral.unavailable", Severity.ERROR,
                   f"no valid {key.id} collateral: {exc.reason}: {exc.detail}{where}", claim="hardware", context=ctx)


def _obtain(key: Key, *, trust: TrustAnchors, fetcher: Fetcher | None, cache: Cache | None, now: datetime,
            wait: float, owner: str) -> tuple[Document | None, list[Finding]]:
    """One key: the cached document when it verifies, else a fetch under the key's lease."""
    cached = cache.get(key.id) if cache is not None else None
    ok, _ = _valid(cached, trust, now)
    if ok and cached is not None:
        if fetcher is None or cache is None:
            return cached, []
        fetcher.note(cached)
        if cached.refresh_after > now or not cache.claim(key.id, owner=owner, ttl=_lease_ttl(fetcher)):
            return cached, []
        # Due for refresh and ours to refresh: a failure keeps the copy and holds the lease to its
        # end, so that the next callers do not each wait for a source that is down.
        try:
            fresh = fetcher.fetch(key, now=now)
        except CollateralUnavailable as exc:
            return cached, [Finding("collateral.refresh-failed", Severity.INFO,
                                    f"using the cached {key.id} (valid until {_iso(cached.not_after)}): refreshing "
                                    f"it failed: {exc.reason}: {exc.detail}",
                                    claim="hardware", context={"key": key.id, "url": exc.url, "reason": exc.reason})]
        cache.put(fresh)
        cache.release(key.id, owner=owner)
        return fresh, []
    stale = cached
    if fetcher is None:
        flag = "--pccs" if key.source == "pccs" else "--kds"
        return None, [_unavailable(key, CollateralUnavailable(
            key, "unreachable", f"nothing valid is cached and no source was given ({flag})"), stale, now)]
    if cache is None:
        try:
            return fetcher.fetch(key, now=now), []
        except CollateralUnavailable as exc:
            return None, [_unavailable(key, exc, None, now)]
    deadline = time.monotonic() + wait
    ttl = _lease_ttl(fetcher)
    while True:
        if cache.claim(key.id, owner=owner, ttl=ttl):
            # Another caller may have stored the document and released its lease between our last
            # read and this claim: read again before fetching, so that each key is fetched once.
            stored = cache.get(key.id)
            if stored is not None and stored != stale and _valid(stored, trust, now)[0]:
                cache.release(key.id, owner=owner)
                return stored, []
            try:
                doc = fetcher.fetch(key, now=now)
            except CollateralUnavailable as exc:
                cache.release(key.id, owner=owner)
                return None, [_unavailable(key, exc, stale, now)]
            except BaseException:
                cache.release(key.id, owner=owner)
                raise
            cache.put(doc)
            cache.release(key.id, owner=owner)
            return doc, []
        # Another caller holds the lease and is fetching it: wait for what it stores.
        if time.monotonic() >= deadline:
            late = CollateralUnavailable(key, "timeout", f"another verifier held the fetch lease for over {wait:g} s")
            return None, [_unavailable(key, late, stale, now)]
        time.sleep(0.05)
        polled = cache.get(key.id)
        if polled is not None and polled != stale:
            ok, _ = _valid(polled, trust, now)
            if ok:
                return polled, []


def resolve(kind: str, evidence: bytes, *, trust: TrustAnchors, fetcher: Fetcher | None, cache: Cache | None,
            now: datetime, wait: float = 15.0, owner: str | None = None,
            product: str | None = None) -> tuple[TrustAnchors, list[Finding]]:
    """The anchors to verify this evidence with, and findings about its collateral.

    Precedence: collateral in ``trust`` (files the operator gave) wins and nothing is fetched
    for it; then a cached document that verifies at ``now``; then a fetch under the key's
    lease (:meth:`Cache.claim`); a caller without the lease polls the cache every 50 ms until
    the holder stored the document, the lease expired (it then fetches itself) or ``wait``
    ran out.  A cached document due for refresh is refreshed in passing; if that fails the
    copy is used (an info finding ``collateral.refresh-failed``).  No valid document: the
    anchors stay without it and an ERROR finding ``collateral.unavailable`` (nothing cached)
    or ``collateral.expired`` (a cached copy expired) names the key, URL and reason.
    Nothing invalid is put in the cache."""
    now = _utc(now, "now")
    keys = [k for k in keys_for(kind, evidence, trust=trust, product=product, now=now) if not _given(k, trust)]
    if not keys:
        return trust, []
    owner = owner or _default_owner()
    docs: list[Document] = []
    findings: list[Finding] = []
    for key in keys:  # snp.chain before snp.vcek: the VCEK is verified with the chain
        doc, found = _obtain(key, trust=trust, fetcher=fetcher, cache=cache, now=now, wait=wait, owner=owner)
        findings += found
        if doc is not None:
            docs.append(doc)
    fields = assemble(docs)
    return (replace(trust, **fields) if fields else trust), findings


def refresh_due(*, trust: TrustAnchors, fetcher: Fetcher, cache: Cache, now: datetime, owner: str) -> int:
    """Refresh the cached documents whose refresh_after has come, each under its lease; the number refreshed.

    A failed refresh keeps the old copy (the caller logs it); documents whose lease another
    refresher holds are left to it."""
    now = _utc(now, "now")
    done = 0
    for old in cache.due(now):
        if not cache.claim(old.key.id, owner=owner, ttl=_lease_ttl(fetcher)):
            continue
        stored = cache.get(old.key.id)
        if stored is not None and stored != old:  # another refresher did it since due() listed it
            cache.release(old.key.id, owner=owner)
            continue
        try:
            fresh = fetcher.fetch(old.key, now=now)
        except CollateralUnavailable:
            continue  # the lease runs out by itself: no other refresher retries before it does
        cache.put(fresh)
        cache.release(old.key.id, owner=owner)
        done += 1
    return done
