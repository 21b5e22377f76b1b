"""Certificates and CRLs of TDX quote verification: the Intel SGX Root CA, PCK chains, the SGX extension, CRLs.

The shipped Intel SGX Root CA is loaded through :mod:`importlib.resources` and
checked against its fingerprint.  Work that depends only on exact input bytes and
the trust anchor (decoded chains, CRL contents, signed collateral) is remembered in
small bounded caches (:func:`clear_caches` empties them); checks that depend on
the time run on every call.  Certificate and CRL rules follow the *Intel SGX PCK
Certificate and CRL Profile* (SGX extensions OID 1.2.840.113741.1.13.1).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from itertools import pairwise
from typing import Any

from ...errors import CollateralError, SignatureError
from ...lru import LRU

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


_ROOTS: LRU[_Root] = LRU(16)  # ("pem" | "der", exact bytes) -> _Root
_CHAINS: LRU[_Chain] = LRU(256)  # (chain PEM, anchor SHA-256) -> _Chain
_DOCS: LRU[Any] = LRU(128)  # (check, signed body, signature, chain PEM, anchor SHA-256) -> _SignedDoc
_CRLS: LRU[_CRL] = LRU(16)  # (check, CRL, issuer chain PEM, anchor SHA-256) -> _CRL


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



def _as_bytes(v: Any) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)



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


