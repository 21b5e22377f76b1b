"""Intel TDX quotes: pure parser and verifier.

Layouts follow the *Intel TDX DCAP Quoting Library API* (Quote v4 §A.3, Quote v5 §A.4:
header, TD quote body, ECDSA quote signature data, QE certification data) and the
TDREPORT_STRUCT of the *Intel TDX Module ABI spec* (§3.4.2 / shared reference formats.md §5).
Collateral follows the *Intel PCS API v4* (TCB info v3, enclave identity v2, PCK CRL) and the
*Intel SGX PCK Certificate and CRL Profile* (SGX extensions OID 1.2.840.113741.1.13.1).

Everything here is pure: bytes/dicts in, objects out.  The only I/O is loading the shipped
Intel SGX Root CA through :mod:`importlib.resources`; the verification time is a parameter.
Work that depends only on exact input bytes and the trust anchor (decoded PCK chains, issuer
and collateral signatures, parsed collateral, CRL contents) is remembered in small bounded
caches, so that verifying many quotes with the same collateral does it once; checks that depend
on the time or on the quote run on every call (:func:`clear_caches` empties the caches).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from itertools import pairwise
from types import MappingProxyType
from typing import Any

from tsmr.errors import CollateralError, EvidenceError, ParseError, SignatureError

_FMT = "tdx-quote"
_FMT_REPORT = "tdreport"

#: Intel's QE vendor id (DCAP Quoting Library API, quote header).
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
BODY_TYPE_TDX10 = 2
BODY_TYPE_TDX15 = 3
#: TD_ATTRIBUTES.DEBUG (TDX Module ABI spec, TD_ATTRIBUTES bit 0): the host can read and write the TD's
#: private memory and registers, so nothing the TD measures or holds is protected from it.
TD_ATTRIBUTES_DEBUG = 1 << 0

HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
QE_REPORT_SIZE = 384
#: Bound on the signature data so a hostile length cannot make us allocate or scan gigabytes.
MAX_SIG_DATA = 1 << 20

# Precompiled structs (all little-endian per the DCAP spec).
_HEADER = struct.Struct("<HHIHH16s20s")
_TD10_BODY = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")
_TD15_EXTRA = struct.Struct("<16s48s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_BODY_DESC = struct.Struct("<HI")
_CERT_HDR = struct.Struct("<HI")
_QE_REPORT = struct.Struct("<16sI28s16s32s32s32s96sHH60s64s")


def _need(data: bytes, off: int, n: int, fld: str, fmt: str = _FMT) -> None:
    if n < 0 or off + n > len(data):
        raise ParseError(
            f"truncated: need {n} bytes, have {max(0, len(data) - off)}", format=fmt, offset=off, field=fld
        )


@dataclass(frozen=True)
class QuoteHeader:
    """Quote header (DCAP Quoting Library API, Quote v4/v5 header, 48 bytes)."""

    version: int
    att_key_type: int
    tee_type: int
    pce_svn: int
    qe_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TDReportBody:
    """TD quote body (DCAP API: TD 1.0 report body, 584 bytes; TD 1.5 adds 64 bytes)."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn_2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


@dataclass(frozen=True)
class EnclaveReportBody:
    """SGX report body used for the QE report (SGX SDM REPORTBODY, 384 bytes)."""

    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes
    raw: bytes


@dataclass(frozen=True)
class TDXQuote:
    """A parsed TDX quote v4 or v5 (DCAP Quoting Library API, Appendix A)."""

    header: QuoteHeader
    body_type: int
    body: TDReportBody
    signed_data: bytes  # header || [descriptor] || body: what the attestation key signs
    signature: bytes  # r || s, big-endian
    attestation_key: bytes  # x || y
    qe_report: EnclaveReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    trailing: int = 0

    @property
    def version(self) -> int:
        return self.header.version


def _parse_body(data: bytes, off: int, body_type: int) -> TDReportBody:
    _need(data, off, TD10_BODY_SIZE, "body")
    f = _TD10_BODY.unpack_from(data, off)
    extra: tuple[bytes | None, bytes | None] = (None, None)
    if body_type == BODY_TYPE_TDX15:
        _need(data, off + TD10_BODY_SIZE, _TD15_EXTRA.size, "body")
        extra = _TD15_EXTRA.unpack_from(data, off + TD10_BODY_SIZE)
    return TDReportBody(*f, tee_tcb_svn_2=extra[0], mrservicetd=extra[1])


def _parse_qe_report(raw: bytes) -> EnclaveReportBody:
    cpusvn, misc, _r1, attrs, mrenclave, _r2, mrsigner, _r3, prodid, svn, _r4, rdata = _QE_REPORT.unpack(raw)
    return EnclaveReportBody(cpusvn, misc, attrs, mrenclave, mrsigner, prodid, svn, rdata, raw)


def parse_quote(data: bytes) -> TDXQuote:
    """Parse a TDX quote v4 or v5 (DCAP Quoting Library API, Quote v4 §A.3 / v5 §A.4).

    Total: returns a :class:`TDXQuote` or raises :class:`ParseError`.  Trailing bytes after
    the signature data (zero padding from QGS/configfs outblobs) are tolerated.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("quote must be bytes", format=_FMT)
    data = bytes(data)
    _need(data, 0, HEADER_SIZE, "header")
    ver, akt, tee, pce_svn, qe_svn, vendor, user = _HEADER.unpack_from(data, 0)
    if ver not in (4, 5):
        raise ParseError(f"unsupported quote version {ver}", format=_FMT, offset=0, field="version")
    if akt != ATT_KEY_TYPE_ECDSA_P256:
        raise ParseError(
            f"unsupported attestation key type {akt}", format=_FMT, offset=2, field="att_key_type"
        )
    if tee != TEE_TYPE_TDX:
        raise ParseError(f"tee_type {tee:#x} is not TDX (0x81)", format=_FMT, offset=4, field="tee_type")
    header = QuoteHeader(ver, akt, tee, pce_svn, qe_svn, vendor, user)
    off = HEADER_SIZE
    if ver == 4:
        body_type = BODY_TYPE_TDX10
        body_size = TD10_BODY_SIZE
    else:
        _need(data, off, _BODY_DESC.size, "body_descriptor")
        body_type, body_size = _BODY_DESC.unpack_from(data, off)
        expected = {BODY_TYPE_TDX10: TD10_BODY_SIZE, BODY_TYPE_TDX15: TD15_BODY_SIZE}.get(body_type)
        if expected is None:
            raise ParseError(f"unsupported body type {body_type}", format=_FMT, offset=off, field="body_type")
        if body_size != expected:
            raise ParseError(
                f"body size {body_size} != {expected}", format=_FMT, offset=off + 2, field="body_size"
            )
        off += _BODY_DESC.size
    body = _parse_body(data, off, body_type)
    off += body_size
    signed_end = off
    _need(data, off, 4, "sig_data_len")
    (sig_len,) = _U32.unpack_from(data, off)
    off += 4
    if sig_len > MAX_SIG_DATA:
        raise ParseError(
            f"signature data length {sig_len} exceeds {MAX_SIG_DATA}",
            format=_FMT,
            offset=off - 4,
            field="sig_data_len",
        )
    _need(data, off, sig_len, "signature_data")
    sig_end = off + sig_len
    sd = data[:sig_end]  # every read below is bounded by the signature data, not the padding
    _need(sd, off, 128 + _CERT_HDR.size, "signature_data")
    signature = sd[off : off + 64]
    att_key = sd[off + 64 : off + 128]
    off += 128
    ctype, csize = _CERT_HDR.unpack_from(sd, off)
    if ctype != CERT_DATA_QE_REPORT:
        raise ParseError(
            f"certification data type {ctype} != 6 (QE report)",
            format=_FMT,
            offset=off,
            field="cert_data_type",
        )
    off += _CERT_HDR.size
    _need(sd, off, csize, "cert_data")
    cd_end = off + csize
    cd = sd[:cd_end]
    _need(cd, off, QE_REPORT_SIZE + 64 + 2, "qe_report")
    qe_raw = cd[off : off + QE_REPORT_SIZE]
    qe_sig = cd[off + QE_REPORT_SIZE : off + QE_REPORT_SIZE + 64]
    off += QE_REPORT_SIZE + 64
    (auth_len,) = _U16.unpack_from(cd, off)
    off += 2
    _need(cd, off, auth_len, "qe_auth_data")
    auth = cd[off : off + auth_len]
    off += auth_len
    _need(cd, off, _CERT_HDR.size, "pck_cert_data")
    ptype, psize = _CERT_HDR.unpack_from(cd, off)
    if ptype != CERT_DATA_PCK_CHAIN:
        raise ParseError(
            f"nested certification data type {ptype} != 5 (PCK chain)",
            format=_FMT,
            offset=off,
            field="pck_cert_data_type",
        )
    off += _CERT_HDR.size
    _need(cd, off, psize, "pck_cert_chain")
    pem = cd[off : off + psize].rstrip(b"\x00")
    return TDXQuote(
        header=header,
        body_type=body_type,
        body=body,
        signed_data=data[:signed_end],
        signature=signature,
        attestation_key=att_key,
        qe_report=_parse_qe_report(qe_raw),
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        pck_chain_pem=pem,
        trailing=len(data) - sig_end,
    )


@dataclass(frozen=True)
class TDReport:
    """TDREPORT_STRUCT (TDX Module ABI §3.4.2; formats.md §5.1), 1024 bytes, MAC'd not signed."""

    report_type: bytes
    cpusvn: bytes
    tee_tcb_info_hash: bytes
    tee_info_hash: bytes
    report_data: bytes
    mac: bytes
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    servtd_hash: bytes


_REPORTMAC = struct.Struct("<8s8s16s48s48s64s32s32s")
_TEE_TCB_INFO = struct.Struct("<8s16s48s48s8s")
_TDINFO = struct.Struct("<8s8s48s48s48s48s48s48s48s48s48s")


def parse_tdreport(data: bytes) -> TDReport:
    """Parse a 1024-byte TDREPORT_STRUCT (TDX Module ABI §3.4.2; formats.md §5.1 offsets)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("report must be bytes", format=_FMT_REPORT)
    data = bytes(data)
    if len(data) != 1024:
        raise ParseError(f"TDREPORT is 1024 bytes, got {len(data)}", format=_FMT_REPORT, offset=0)
    rtype, _r, cpusvn, tcbh, teeh, rdata, _r2, mac = _REPORTMAC.unpack_from(data, 0)
    _valid, svn, mrseam, mrsignerseam, seam_attr = _TEE_TCB_INFO.unpack_from(data, 0x100)
    attrs, xfam, mrtd, cfg, owner, ownercfg, r0, r1, r2, r3, servtd = _TDINFO.unpack_from(data, 0x200)
    return TDReport(
        rtype,
        cpusvn,
        tcbh,
        teeh,
        rdata,
        mac,
        svn,
        mrseam,
        mrsignerseam,
        seam_attr,
        attrs,
        xfam,
        mrtd,
        cfg,
        owner,
        ownercfg,
        r0,
        r1,
        r2,
        r3,
        servtd,
    )


# --------------------------------------------------------------------------- verification


@functools.cache
def _x509():
    # Imported lazily so parsing works without the optional crypto dependency (once per process).
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    return x509, InvalidSignature, hashes, serialization, ec, encode_dss_signature


INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


@functools.lru_cache(maxsize=1)
def _shipped_root() -> Any:
    x509 = _x509()[0]
    der = resources.files("tsmr.evidence").joinpath("intel_sgx_root_ca.der").read_bytes()
    if hashlib.sha256(der).hexdigest() != INTEL_ROOT_SHA256:
        raise CollateralError("the shipped Intel SGX Root CA does not have its known fingerprint", check="tdx.pck_chain")
    return x509.load_der_x509_certificate(der)


def intel_root():
    """The shipped Intel SGX Root CA certificate (DER), checked against its SHA-256 fingerprint."""
    return _shipped_root()


def _verify_p256(pub: Any, sig_rs: bytes, msg: bytes, *, check: str, what: str) -> None:
    _, InvalidSignature, hashes, _, ec, enc = _x509()
    if len(sig_rs) != 64:
        raise SignatureError(f"{what}: signature must be 64 bytes", check=check)
    der = enc(int.from_bytes(sig_rs[:32], "big"), int.from_bytes(sig_rs[32:], "big"))
    try:
        pub.verify(der, msg, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise SignatureError(f"{what} does not verify", check=check) from exc


@functools.lru_cache(maxsize=256)
def _p256_point(xy: bytes) -> Any:
    """Public key object of an uncompressed P-256 point x || y (keyed by the exact 64 bytes)."""
    ec = _x509()[4]
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)


def _raw_p256_key(xy: bytes, check: str) -> Any:
    try:
        return _p256_point(bytes(xy))
    except ValueError as exc:
        raise SignatureError("attestation key is not a P-256 point", check=check) from exc


def _load_certs(pem: bytes, check: str) -> list[Any]:
    x509 = _x509()[0]
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CollateralError(f"certificate chain does not decode: {exc}", check=check) from exc
    return list(certs)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        # A naive time is taken as UTC rather than local time: verification must not depend
        # on the machine's timezone.
        return now.replace(tzinfo=UTC)
    return now


def _cert_name(cert: Any) -> str:
    """A certificate's subject for messages; a malformed name (parsed lazily) must not raise."""
    try:
        return str(cert.subject.rfc4514_string())
    except ValueError:
        return "a certificate with a malformed subject"


# --------------------------------------------------------------------------- caches
#
# A verifier sees the same PCK chains and collateral over and over.  What follows from those
# bytes and the trust anchor alone (decoded certificates, issuer signatures, collateral
# signatures, parsed JSON, CRL contents) is remembered, keyed by the exact input bytes and the
# SHA-256 of the anchor's DER.  Only successes are stored: a failing input is checked again in
# full on every call.  Checks whose outcome depends on the verification time (certificate
# validity, nextUpdate) or on the quote (its signatures, the CRL look-ups of its certificates,
# TCB level and QE identity matching) run on every call, cached or not.


class _LRU:
    """A small thread-safe map that keeps its ``maxsize`` most recently used entries."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


_ROOTS = _LRU(16)  # ("pem" | "der", exact bytes) -> _Root
_CHAINS = _LRU(256)  # (chain PEM, anchor SHA-256) -> _Chain
_DOCS = _LRU(128)  # (check, signed body, signature, chain PEM, anchor SHA-256) -> _SignedDoc
_CRLS = _LRU(16)  # (check, CRL, issuer chain PEM, anchor SHA-256) -> _CRL


def clear_caches() -> None:
    """Forget every remembered trust anchor, chain, collateral item and attestation key."""
    for cache in (_ROOTS, _CHAINS, _DOCS, _CRLS):
        cache.clear()
    _p256_point.cache_clear()


def _exact(b: Any) -> bytes:
    """Input bytes as an immutable ``bytes`` key (a ``bytearray`` could change after being cached)."""
    return b if type(b) is bytes else bytes(b)


class _Root:
    """A trust anchor: its certificate, DER, the SHA-256 of that DER and its PEM."""

    __slots__ = ("cert", "der", "fp", "pem")

    def __init__(self, cert: Any) -> None:
        serialization = _x509()[3]
        self.cert = cert
        self.der = cert.public_bytes(serialization.Encoding.DER)
        self.fp = hashlib.sha256(self.der).digest()
        self.pem = cert.public_bytes(serialization.Encoding.PEM)


@functools.lru_cache(maxsize=1)
def _intel_root_info() -> _Root:
    return _Root(intel_root())


def _root_info(trust_root: Any) -> _Root:
    """The trust anchor for ``trust_root`` (None: the shipped Intel root; PEM; or a certificate)."""
    if isinstance(trust_root, _Root):
        return trust_root
    if trust_root is None:
        return _intel_root_info()
    if isinstance(trust_root, (bytes, bytearray, str)):
        pem = _as_bytes(trust_root)
        key: tuple[str, bytes] = ("pem", pem)
        hit = _ROOTS.get(key)
        if hit is None:
            certs = _load_certs(pem, "tdx.pck_chain")
            if len(certs) != 1:
                raise CollateralError("trust_root must be exactly one certificate", check="tdx.pck_chain")
            hit = _Root(certs[0])
            _ROOTS.put(key, hit)
        return hit
    der = trust_root.public_bytes(_x509()[3].Encoding.DER)
    key = ("der", der)
    hit = _ROOTS.get(key)
    if hit is None:
        hit = _Root(trust_root)
        _ROOTS.put(key, hit)
    return hit


def _name_der(name: Any) -> bytes | None:
    try:
        return bytes(name.public_bytes())
    except ValueError:
        return None


class _Chain:
    """A decoded certificate chain whose issuer signatures verify up to a trust anchor.

    Nothing in it depends on the time: :meth:`check_time` checks every certificate's validity
    window at each use."""

    __slots__ = ("_ext", "_issuer_der", "_key", "certs", "linked", "windows")

    def __init__(self, certs: list[Any], linked: list[Any]) -> None:
        self.certs = tuple(certs)  # as decoded, leaf first
        self.linked = tuple(linked)  # leaf .. last certificate below the anchor, then the anchor
        self.windows = tuple((c.not_valid_before_utc, c.not_valid_after_utc) for c in self.linked)
        self._key: Any = None
        self._ext: PCKExtensions | None = None
        self._issuer_der: dict[int, bytes | None] = {}

    def check_time(self, now: datetime, check: str) -> None:
        for c, (nb, na) in zip(self.linked, self.windows):
            if not (nb <= now <= na):
                raise CollateralError(
                    f"{_cert_name(c)} is not valid at {now.isoformat()} "
                    f"({nb.isoformat()} .. {na.isoformat()})",
                    check=check + ".validity",
                )

    def leaf_key(self) -> Any:
        if self._key is None:
            self._key = self.certs[0].public_key()
        return self._key

    def extensions(self) -> PCKExtensions:
        if self._ext is None:
            self._ext = pck_extensions(self.certs[0])
        return self._ext

    def issuer_der(self, i: int) -> bytes | None:
        if i not in self._issuer_der:
            self._issuer_der[i] = _name_der(self.certs[i].issuer)
        return self._issuer_der[i]


def _link_chain(chain: list[Any], root: _Root, *, check: str) -> list[Any]:
    """Check the issuer signatures leaf -> ... -> root and return the chain ending in the anchor.

    A root shipped in the chain is never trusted by itself; it must equal the trust anchor byte
    for byte.  Validity dates are not looked at here (see :meth:`_Chain.check_time`)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    _, InvalidSignature, _, serialization, _, _ = _x509()
    if not chain:
        raise CollateralError("empty certificate chain", check=check)
    certs = list(chain)
    last = certs[-1]
    try:
        self_signed = last.subject == last.issuer
    except ValueError as exc:  # cryptography parses names lazily: a malformed one fails here
        raise CollateralError(f"a certificate of the chain has a malformed name: {exc}", check=check) from exc
    if self_signed:
        if not hmac.compare_digest(last.public_bytes(serialization.Encoding.DER), root.der):
            raise CollateralError("chain's root is not the trusted root", check=check)
        certs = certs[:-1]
    certs.append(root.cert)
    for child, parent in pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as exc:
            raise CollateralError(
                f"{_cert_name(child)} is not signed by {_cert_name(parent)}",
                check=check,
            ) from exc
    return certs


def _chain(pem: bytes, root: _Root, now: datetime, *, check: str) -> _Chain:
    """Decode ``pem``, verify it up to ``root`` (issuer signatures, then validity at ``now``).

    The signature part is remembered per (exact PEM bytes, anchor); validity is checked on
    every call, so the order and names of failures are those of a full verification."""
    pem = _exact(pem)
    key = (pem, root.fp)
    hit = _CHAINS.get(key)
    if hit is None:
        certs = _load_certs(pem, check)
        hit = _Chain(certs, _link_chain(certs, root, check=check))
        _CHAINS.put(key, hit)
    hit.check_time(now, check)
    return hit


# --- minimal DER reader for the SGX extension (PCK Certificate and CRL Profile §1.3.5) ---

_SGX_EXT_OID = "1.2.840.113741.1.13.1"


def _der_items(buf: bytes) -> list[tuple[int, bytes]]:
    out = []
    i = 0
    while i < len(buf):
        if i + 2 > len(buf):
            raise ValueError("truncated DER")
        tag = buf[i]
        ln = buf[i + 1]
        i += 2
        if ln & 0x80:
            n = ln & 0x7F
            if n == 0 or n > 4 or i + n > len(buf):
                raise ValueError("bad DER length")
            ln = int.from_bytes(buf[i : i + n], "big")
            i += n
        if i + ln > len(buf):
            raise ValueError("truncated DER value")
        out.append((tag, buf[i : i + ln]))
        i += ln
    return out


def _oid_str(b: bytes) -> str:
    parts = [b[0] // 40, b[0] % 40]
    v = 0
    for c in b[1:]:
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            parts.append(v)
            v = 0
    return ".".join(map(str, parts))


def _sgx_ext_map(der: bytes, prefix: str = "") -> dict[str, bytes]:
    """Flatten SEQUENCE OF SEQUENCE {OID, value} into {oid: raw value}, recursing into sequences."""
    out: dict[str, bytes] = {}
    for tag, seq in _der_items(der):
        if tag != 0x30:
            continue
        items = _der_items(seq)
        if len(items) != 2 or items[0][0] != 0x06:
            # The extension value itself is a bare SEQUENCE OF such pairs: descend into it.
            out.update(_sgx_ext_map(seq))
            continue
        oid = _oid_str(items[0][1])
        vtag, val = items[1]
        out[oid] = val
        if vtag == 0x30:
            out.update(_sgx_ext_map(val))
    return out


@dataclass(frozen=True)
class PCKExtensions:
    """SGX extensions of a PCK certificate (PCK Certificate and CRL Profile §1.3.5)."""

    fmspc: bytes
    pceid: bytes
    pcesvn: int
    cpusvn: bytes
    sgx_tcb_components: tuple[int, ...]


def pck_extensions(cert: Any) -> PCKExtensions:
    """Read FMSPC, PCEID, PCESVN, CPUSVN and the 16 SGX TCB component SVNs from a PCK cert."""
    x509 = _x509()[0]
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(_SGX_EXT_OID))
        m = _sgx_ext_map(ext.value.value)
        tcb = _SGX_EXT_OID + ".2."
        comps = tuple(int.from_bytes(m[f"{tcb}{i}"], "big") for i in range(1, 17))
        return PCKExtensions(
            fmspc=m[_SGX_EXT_OID + ".4"],
            pceid=m[_SGX_EXT_OID + ".3"],
            pcesvn=int.from_bytes(m[tcb + "17"], "big"),
            cpusvn=m[tcb + "18"],
            sgx_tcb_components=comps,
        )
    except (x509.ExtensionNotFound, KeyError, ValueError, IndexError) as exc:
        raise CollateralError(
            f"PCK certificate lacks usable SGX extensions: {exc}", check="tdx.pck_chain.extensions"
        ) from exc


# --- collateral ---


def _raw_json_member(text: bytes, key: str) -> bytes:
    """Return the exact bytes of the object value of ``key`` in a PCS response.

    Intel signs the bytes of the ``tcbInfo``/``enclaveIdentity`` object as served, so they are
    cut out of the text verbatim instead of being re-serialised from a parsed dict."""
    needle = f'"{key}"'.encode()
    i = text.find(needle)
    if i < 0:
        raise ParseError(f"missing {key!r}", format="pcs-json", field=key)
    j = text.find(b"{", i + len(needle))
    if j < 0:
        raise ParseError(f"{key!r} is not an object", format="pcs-json", field=key)
    depth = 0
    in_str = esc = False
    for k in range(j, len(text)):
        c = text[k]
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:
                esc = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return text[j : k + 1]
    raise ParseError(f"unterminated {key!r} object", format="pcs-json", field=key)


def _as_bytes(v: Any) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


def _crl_bytes(v: Any) -> bytes:
    """CRLs arrive as DER, PEM, or (PCCS JSON) hex of DER."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("-----"):
            return s.encode()
        try:
            return bytes.fromhex(s)
        except ValueError:
            return s.encode()
    return bytes(v)


@dataclass(frozen=True)
class Collateral:
    """DCAP verification collateral (Intel PCS API v4; PCCS ``sgx_ql_qve_collateral_t`` fields).

    ``tcb_info`` / ``qe_identity`` hold the exact signed JSON bytes of the ``tcbInfo`` /
    ``enclaveIdentity`` objects; signatures are raw r||s (64 bytes)."""

    pck_crl: bytes
    pck_crl_issuer_chain: bytes
    tcb_info: bytes
    tcb_info_signature: bytes
    tcb_info_issuer_chain: bytes
    qe_identity: bytes | None = None
    qe_identity_signature: bytes | None = None
    qe_identity_issuer_chain: bytes | None = None
    root_ca_crl: bytes | None = None

    @staticmethod
    def _split(resp: bytes, key: str) -> tuple[bytes, bytes]:
        body = _raw_json_member(resp, key)
        try:
            sig = json.loads(resp)["signature"]
            return body, bytes.fromhex(sig)
        except (ValueError, KeyError, TypeError) as exc:
            raise ParseError(
                f"bad signature in {key} response", format="pcs-json", field="signature"
            ) from exc

    @classmethod
    def from_pcs(
        cls,
        *,
        tcb_info_response: bytes,
        tcb_info_issuer_chain: bytes,
        pck_crl: bytes,
        pck_crl_issuer_chain: bytes,
        qe_identity_response: bytes | None = None,
        qe_identity_issuer_chain: bytes | None = None,
        root_ca_crl: bytes | None = None,
    ) -> Collateral:
        """Build from raw Intel PCS responses (bodies plus URL-decoded issuer-chain headers)."""
        tcb, tsig = cls._split(bytes(tcb_info_response), "tcbInfo")
        qe = qsig = None
        if qe_identity_response is not None:
            qe, qsig = cls._split(bytes(qe_identity_response), "enclaveIdentity")
        return cls(
            pck_crl=_crl_bytes(pck_crl),
            pck_crl_issuer_chain=bytes(pck_crl_issuer_chain),
            tcb_info=tcb,
            tcb_info_signature=tsig,
            tcb_info_issuer_chain=bytes(tcb_info_issuer_chain),
            qe_identity=qe,
            qe_identity_signature=qsig,
            qe_identity_issuer_chain=None
            if qe_identity_issuer_chain is None
            else bytes(qe_identity_issuer_chain),
            root_ca_crl=None if root_ca_crl is None else _crl_bytes(root_ca_crl),
        )

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Collateral:
        """Build from one PCCS-style JSON document (keys as in ``sgx_ql_qve_collateral_t``).

        ``tcb_info``/``qe_identity`` may be either the signed object text or the whole PCS
        response (``{"tcbInfo": …, "signature": …}``); signatures are hex."""
        try:

            def body_sig(key: str, inner: str) -> tuple[bytes | None, bytes | None]:
                raw = doc.get(key)
                if raw is None:
                    return None, None
                raw_b = _as_bytes(raw)
                sig = doc.get(key + "_signature")
                if f'"{inner}"'.encode() in raw_b:
                    body, s2 = cls._split(raw_b, inner)
                    return body, bytes.fromhex(sig) if sig else s2
                return raw_b, bytes.fromhex(sig) if sig else None

            tcb, tsig = body_sig("tcb_info", "tcbInfo")
            qe, qsig = body_sig("qe_identity", "enclaveIdentity")
            if tcb is None or tsig is None:
                raise ParseError(
                    "tcb_info and its signature are required", format="pccs-json", field="tcb_info"
                )
            return cls(
                pck_crl=_crl_bytes(doc["pck_crl"]),
                pck_crl_issuer_chain=_as_bytes(doc["pck_crl_issuer_chain"]),
                tcb_info=tcb,
                tcb_info_signature=tsig,
                tcb_info_issuer_chain=_as_bytes(doc["tcb_info_issuer_chain"]),
                qe_identity=qe,
                qe_identity_signature=qsig,
                qe_identity_issuer_chain=_as_bytes(doc["qe_identity_issuer_chain"])
                if doc.get("qe_identity_issuer_chain")
                else None,
                root_ca_crl=_crl_bytes(doc["root_ca_crl"]) if doc.get("root_ca_crl") else None,
            )
        except KeyError as exc:
            raise ParseError(
                f"missing field {exc.args[0]!r}", format="pccs-json", field=str(exc.args[0])
            ) from exc
        except (TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, ParseError):
                raise
            raise ParseError(f"bad collateral document: {exc}", format="pccs-json") from exc


@dataclass(frozen=True)
class TDXClaims:
    """What a verified TDX quote says (values from the TD quote body and the PCK certificate)."""

    version: int
    registers: Mapping[str, bytes]  # mrtd, rtmr0..rtmr3
    report_data: bytes
    td_attributes: bytes
    xfam: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    mrseam: bytes
    tee_tcb_svn: bytes
    fmspc: bytes
    mrservicetd: bytes | None = None  # TDX 1.5 body (quote v5, body type 3) only
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    qe_tcb_status: str | None = None
    tdx_module_tcb_status: str | None = None
    checks: tuple[str, ...] = field(default=())
    debug: bool = False  # TD_ATTRIBUTES.DEBUG: only ever true when the caller allowed debug TDs

    @property
    def mrtd(self) -> bytes:
        return self.registers["mrtd"]


def _parse_time(s: str, check: str) -> datetime:
    try:
        t = datetime.fromisoformat(s)  # 3.11+ accepts the "Z" suffix
    except (ValueError, TypeError) as exc:
        raise CollateralError(f"bad timestamp {s!r}", check=check) from exc
    # PCS timestamps are UTC; a zone-less one must not make the comparison with `now` raise.
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _load_crl(b: bytes, check: str) -> Any:
    x509 = _x509()[0]
    try:
        return x509.load_pem_x509_crl(b) if b.lstrip().startswith(b"-----") else x509.load_der_x509_crl(b)
    except ValueError as exc:
        raise CollateralError(f"CRL does not decode: {exc}", check=check) from exc


class _CRL:
    """A CRL whose signature verified under its issuer chain: what the per-call checks need."""

    __slots__ = ("chain", "issuer", "issuer_der", "last_update", "next_update", "revoked")

    def __init__(self, chain: _Chain, crl: Any, check: str) -> None:
        self.chain = chain
        self.issuer = crl.issuer
        self.issuer_der = _name_der(self.issuer)
        self.last_update = crl.last_update_utc
        self.next_update = crl.next_update_utc
        try:
            self.revoked = frozenset(r.serial_number for r in crl)
        except ValueError as exc:
            raise CollateralError(f"CRL entries do not decode: {exc}", check=check) from exc


def _check_crl(
    crl_b: bytes, chain_pem: bytes, subject: _Chain, index: int, root: _Root, now: datetime, check: str
) -> None:
    """Check certificate ``index`` of ``subject`` against a CRL signed under ``chain_pem``.

    The CRL's decoding and signature (and its issuer chain's signatures) are remembered per exact
    bytes and anchor; the issuer chain's validity, the CRL's nextUpdate, the issuer match and the
    revocation look-up of the certificate run on every call."""
    crl_b, chain_pem = _exact(crl_b), _exact(chain_pem)
    key = (check, crl_b, chain_pem, root.fp)
    entry = _CRLS.get(key)
    if entry is None:
        crl = _load_crl(crl_b, check)
        issuer_chain = _chain(chain_pem, root, now, check=check)
        try:
            ok = crl.is_signature_valid(issuer_chain.leaf_key())
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CollateralError("CRL is not signed by its issuer", check=check)
        entry = _CRL(issuer_chain, crl, check)
        _CRLS.put(key, entry)
    else:
        entry.chain.check_time(now, check)
    cert = subject.certs[index]
    # Equal DER encodings are equal names; otherwise compare as names (as cryptography defines it).
    cert_issuer = subject.issuer_der(index)
    if (cert_issuer is None or cert_issuer != entry.issuer_der) and entry.issuer != cert.issuer:
        raise CollateralError("CRL issuer is not the certificate's issuer", check=check)
    if now < entry.last_update:  # a CRL from after the verification time says nothing about then
        raise CollateralError(f"CRL was issued at {entry.last_update.isoformat()}, after the verification time",
                              check=check + ".not-yet-valid")
    nxt = entry.next_update
    if nxt is not None and now > nxt:
        raise CollateralError(f"CRL expired at {nxt.isoformat()}", check=check + ".expired")
    if cert.serial_number in entry.revoked:
        raise CollateralError(f"certificate {cert.serial_number:x} is revoked", check=check)


def _freeze(v: Any) -> Any:
    """A read-only copy of parsed JSON (objects become mappings, arrays tuples): it is shared."""
    if isinstance(v, dict):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


class _SignedDoc:
    """A collateral JSON object whose signature verified under its issuer chain."""

    __slots__ = ("chain", "issued", "issued_text", "next_update", "next_update_text", "obj")

    def __init__(self, chain: _Chain, obj: Any, next_update: datetime, next_update_text: Any,
                 issued: datetime | None = None, issued_text: Any = None) -> None:
        self.chain = chain
        self.obj = obj
        self.next_update = next_update
        self.next_update_text = next_update_text
        self.issued = issued
        self.issued_text = issued_text


def _signed_json(body: bytes, sig: bytes, chain_pem: bytes, root: Any, now: datetime, check: str) -> Mapping:
    """Verify a signed PCS object (TCB info, QE identity) at ``now`` and return it (read-only).

    Signature, chain signatures and parsing are remembered per exact bytes and anchor; the
    chain's validity and the object's nextUpdate are checked on every call."""
    anchor = _root_info(root)
    body, sig, chain_pem = _exact(body), _exact(sig), _exact(chain_pem)
    key = (check, body, sig, chain_pem, anchor.fp)
    doc = _DOCS.get(key)
    if doc is None:
        chain = _chain(chain_pem, anchor, now, check=check + ".signature")
        _verify_p256(chain.leaf_key(), sig, body, check=check + ".signature", what=check)
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise CollateralError(f"{check} is not JSON", check=check) from exc
        if not isinstance(obj, dict):
            raise CollateralError(f"{check} is not a JSON object", check=check)
        text = obj.get("nextUpdate", "")
        issued_text = obj.get("issueDate")
        issued = _parse_time(issued_text, check + ".not-yet-valid") if issued_text is not None else None
        doc = _SignedDoc(chain, _freeze(obj), _parse_time(text, check + ".expired"), text, issued, issued_text)
        _DOCS.put(key, doc)
    else:
        doc.chain.check_time(now, check + ".signature")
    if doc.issued is not None and now < doc.issued:
        raise CollateralError(f"{check} was issued at {doc.issued_text}, after the verification time",
                              check=check + ".not-yet-valid")
    if now > doc.next_update:
        raise CollateralError(f"{check} expired at {doc.next_update_text}", check=check + ".expired")
    return doc.obj


def _match_tdx_module(tcb_info: Mapping, body: TDReportBody) -> str | None:
    """TDX module identity status (TCB info v3 ``tdxModuleIdentities``), or None if not applicable.

    TEE_TCB_SVN[1] is the TDX module major version; when it is non-zero the module is identified
    as ``TDX_<major:02X>`` and its minor SVN (TEE_TCB_SVN[0]) is matched against that identity's
    levels, while the generic TDX component comparison skips indices 0 and 1."""
    major, minor = body.tee_tcb_svn[1], body.tee_tcb_svn[0]
    idents = tcb_info.get("tdxModuleIdentities")
    if major == 0 or not idents:
        return None
    want_id = f"TDX_{major:02X}"
    for ident in idents:
        if str(ident.get("id", "")).upper() != want_id:
            continue
        signer = bytes.fromhex(ident["mrsigner"])
        if not hmac.compare_digest(signer, body.mrsignerseam):
            raise CollateralError(f"MRSIGNERSEAM does not match {want_id}", check="tdx.tcb_status.module")
        mask = int(ident["attributesMask"], 16)
        got = int.from_bytes(body.seam_attributes, "big") & mask
        if got != int(ident["attributes"], 16) & mask:
            raise CollateralError(f"SEAM attributes do not match {want_id}", check="tdx.tcb_status.module")
        for level in ident.get("tcbLevels", []):
            if minor >= int(level["tcb"]["isvsvn"]):
                return str(level["tcbStatus"])
        raise CollateralError(
            f"TDX module SVN {minor} matches no {want_id} level", check="tdx.tcb_status.module"
        )
    raise CollateralError(f"TCB info has no identity {want_id}", check="tdx.tcb_status.module")


def _match_tcb_level(
    tcb_info: Mapping, ext: PCKExtensions, body: TDReportBody
) -> tuple[str, tuple[str, ...], str | None]:
    """First TCB level the platform meets (Intel PCS TDX TCB info v3, TCB level matching):
    SGX components and PCESVN from the PCK certificate, TDX components from TEE_TCB_SVN.

    Returns (status, advisory ids, TDX module identity status)."""
    try:
        module_status = _match_tdx_module(tcb_info, body)
        # With a module identity, TEE_TCB_SVN[0..1] are judged by it, not by tdxtcbcomponents.
        first = 2 if module_status is not None else 0
        for level in tcb_info.get("tcbLevels", []):
            tcb = level.get("tcb", {})
            sgx = [int(c.get("svn", 0)) for c in tcb.get("sgxtcbcomponents", [])]
            tdx = [int(c.get("svn", 0)) for c in tcb.get("tdxtcbcomponents", [])]
            if len(sgx) != 16 or len(tdx) != 16:
                continue
            if any(p < lv for p, lv in zip(ext.sgx_tcb_components, sgx)):
                continue
            if ext.pcesvn < int(tcb.get("pcesvn", 0)):
                continue
            if any(body.tee_tcb_svn[i] < tdx[i] for i in range(first, 16)):
                continue
            return str(level.get("tcbStatus")), tuple(map(str, level.get("advisoryIDs", []))), module_status
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CollateralError):
            raise
        raise CollateralError(f"malformed TCB info: {exc}", check="tdx.tcb_info") from exc
    raise CollateralError("platform TCB matches no TCB level (TCB not supported)", check="tdx.tcb_status")


def _check_qe_identity(ident: Mapping, qe: EnclaveReportBody) -> str:
    c = "tdx.qe_identity"
    try:
        mrsigner = bytes.fromhex(ident["mrsigner"])
        if not hmac.compare_digest(mrsigner, qe.mrsigner):
            raise CollateralError("QE MRSIGNER does not match QE identity", check=c + ".mrsigner")
        if qe.isvprodid != int(ident["isvprodid"]):
            raise CollateralError("QE ISVPRODID does not match QE identity", check=c + ".isvprodid")
        mask = int(ident["miscselectMask"], 16)
        if qe.miscselect & mask != int(ident["miscselect"], 16) & mask:
            raise CollateralError("QE MISCSELECT does not match QE identity", check=c + ".miscselect")
        amask = bytes.fromhex(ident["attributesMask"])
        want = bytes.fromhex(ident["attributes"])
        got = bytes(a & m for a, m in zip(qe.attributes, amask))
        exp = bytes(a & m for a, m in zip(want, amask))
        if not hmac.compare_digest(got, exp):
            raise CollateralError("QE attributes do not match QE identity", check=c + ".attributes")
        for level in ident.get("tcbLevels", []):
            if qe.isvsvn >= int(level["tcb"]["isvsvn"]):
                status = str(level["tcbStatus"])
                if status == "Revoked":
                    raise CollateralError("QE TCB level is revoked", check=c + ".tcb_status")
                return status
    except (KeyError, ValueError, TypeError) as exc:
        raise CollateralError(f"malformed QE identity: {exc}", check=c) from exc
    raise CollateralError("QE ISVSVN matches no QE identity TCB level", check=c + ".tcb_status")


def verify_quote(
    quote: bytes,
    *,
    now: datetime,
    trust_root: Any = None,
    report_data: bytes | None = None,
    collateral: Collateral | None = None,
    allow_debug: bool = False,
) -> TDXClaims:
    """Verify a TDX quote v4/v5 (DCAP Quoting Library API; Intel DCAP QVL verification flow).

    Raises a :class:`SignatureError`/:class:`CollateralError` (``EvidenceError``) whose
    ``check`` names the failed check; returns :class:`TDXClaims` otherwise.  ``trust_root``
    is a ``cryptography`` certificate or its PEM (default: the shipped Intel SGX Root CA);
    ``now`` is the verification time (naive means UTC); ``report_data`` (up to 64 bytes,
    zero-padded) must equal REPORTDATA when given; ``collateral`` enables the CRL, TCB info,
    TCB status and QE identity checks.  A TCB status other than ``Revoked`` does not fail: it is
    in the claims (``tcb_status``, ``advisory_ids``, ``qe_tcb_status``, ``tdx_module_tcb_status``)
    for the caller to judge.  A debuggable TD (TD_ATTRIBUTES.DEBUG) fails ``tdx.debug`` unless
    ``allow_debug``; the claims then say ``debug=True``.

    Reusing the same ``collateral`` (or one built from the same bytes) and PCK chain is cheap:
    their signatures are verified once per trust anchor, while validity dates, nextUpdate, the
    quote's own signatures and the quote-specific CRL, TCB and QE identity checks run every time.
    """
    q = parse_quote(quote)
    now = _aware(now)
    root = _root_info(trust_root)
    done: list[str] = []

    # 1. The attestation key signs header || body.
    _verify_p256(
        _raw_p256_key(q.attestation_key, "tdx.quote.signature"),
        q.signature,
        q.signed_data,
        check="tdx.quote.signature",
        what="quote",
    )
    done.append("tdx.quote.signature")

    # 2. PCK chain to the trusted root; the quote's root is only accepted if it equals ours.
    chain = _chain(q.pck_chain_pem, root, now, check="tdx.pck_chain")
    done.append("tdx.pck_chain")

    # 3. The PCK key signs the QE report ...
    _verify_p256(
        chain.leaf_key(),
        q.qe_report_signature,
        q.qe_report.raw,
        check="tdx.qe_report.signature",
        what="QE report",
    )
    done.append("tdx.qe_report.signature")

    # 4. ... and the QE report binds the attestation key (report_data = SHA-256(key||auth) || 0*32).
    want = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(want, q.qe_report.report_data):
        raise SignatureError("QE report does not bind the attestation key", check="tdx.qe_report.binding")
    done.append("tdx.qe_report.binding")

    if report_data is not None:
        rd = bytes(report_data)
        if len(rd) > 64:
            raise EvidenceError("expected report_data is longer than 64 bytes", check="tdx.report_data")
        if not hmac.compare_digest(rd.ljust(64, b"\x00"), q.body.report_data):
            raise EvidenceError("REPORTDATA does not match the expected value", check="tdx.report_data")
        done.append("tdx.report_data")

    ext = chain.extensions()
    status = qe_status = module_status = None
    advisories: tuple[str, ...] = ()
    if collateral is not None:
        info = _signed_json(
            collateral.tcb_info,
            collateral.tcb_info_signature,
            collateral.tcb_info_issuer_chain,
            root,
            now,
            "tdx.tcb_info",
        )
        done += ["tdx.tcb_info.signature", "tdx.tcb_info.expired"]
        # An SGX TCB info (id "SGX") is signed by the same key: accept only TDX TCB info v3+.
        if info.get("id") != "TDX" or not isinstance(info.get("version"), int) or info["version"] < 3:
            raise CollateralError("collateral is not a TDX TCB info v3", check="tdx.tcb_info.id")
        try:
            info_fmspc = bytes.fromhex(str(info.get("fmspc", "")))
        except ValueError as exc:
            raise CollateralError("TCB info has a malformed FMSPC", check="tdx.tcb_info.fmspc") from exc
        if not hmac.compare_digest(info_fmspc, ext.fmspc):
            raise CollateralError("TCB info is for another FMSPC", check="tdx.tcb_info.fmspc")
        _check_crl(collateral.pck_crl, collateral.pck_crl_issuer_chain, chain, 0, root, now, "tdx.crl")
        if collateral.root_ca_crl is not None and len(chain.certs) >= 2:
            _check_crl(collateral.root_ca_crl, root.pem, chain, 1, root, now, "tdx.crl.root")
            done.append("tdx.crl.root")
        done.append("tdx.crl")
        if collateral.qe_identity is not None:
            if collateral.qe_identity_signature is None or collateral.qe_identity_issuer_chain is None:
                raise CollateralError(
                    "QE identity lacks signature or chain", check="tdx.qe_identity.signature"
                )
            ident = _signed_json(
                collateral.qe_identity,
                collateral.qe_identity_signature,
                collateral.qe_identity_issuer_chain,
                root,
                now,
                "tdx.qe_identity",
            )
            if ident.get("id") != "TD_QE":  # the SGX QE identity ("QE") is signed by the same key
                raise CollateralError("QE identity is not for the TD QE", check="tdx.qe_identity.id")
            qe_status = _check_qe_identity(ident, q.qe_report)
            done.append("tdx.qe_identity")
        # Platform TCB last, so that a platform without a matching level still gets its CRL and
        # QE identity evaluated (and a failure there is the one reported).
        status, advisories, module_status = _match_tcb_level(info, ext, q.body)
        if status == "Revoked" or module_status == "Revoked":
            raise CollateralError("platform TCB is revoked", check="tdx.tcb_status")
        done.append("tdx.tcb_status")

    # Last, so that a forged or revoked quote is reported as such rather than as a debug TD.
    debug = bool(int.from_bytes(q.body.td_attributes, "little") & TD_ATTRIBUTES_DEBUG)
    if debug and not allow_debug:
        raise EvidenceError("the TD is debuggable (TD_ATTRIBUTES.DEBUG is set): the host can read and change "
                            "its memory", check="tdx.debug")

    b = q.body
    return TDXClaims(
        version=q.version,
        registers=MappingProxyType(
            {"mrtd": b.mrtd, "rtmr0": b.rtmr0, "rtmr1": b.rtmr1, "rtmr2": b.rtmr2, "rtmr3": b.rtmr3}
        ),
        report_data=b.report_data,
        td_attributes=b.td_attributes,
        xfam=b.xfam,
        mrconfigid=b.mrconfigid,
        mrowner=b.mrowner,
        mrownerconfig=b.mrownerconfig,
        mrseam=b.mrseam,
        tee_tcb_svn=b.tee_tcb_svn,
        mrservicetd=b.mrservicetd,
        fmspc=ext.fmspc,
        tcb_status=status,
        advisory_ids=advisories,
        qe_tcb_status=qe_status,
        tdx_module_tcb_status=module_status,
        checks=tuple(done),
        debug=debug,
    )


__all__ = [
    "INTEL_QE_VENDOR_ID",
    "Collateral",
    "EnclaveReportBody",
    "PCKExtensions",
    "QuoteHeader",
    "TDReport",
    "TDReportBody",
    "TDXClaims",
    "TDXQuote",
    "TD_ATTRIBUTES_DEBUG",
    "clear_caches",
    "intel_root",
    "parse_quote",
    "parse_tdreport",
    "pck_extensions",
    "verify_quote",
]
