"""COSE_Sign1 parsing and ECDSA verification, plus EC public keys from JWK and COSE_Key.

Specifications:

* RFC 9052 (CBOR Object Signing and Encryption: Structures and Process):
  §4.2 COSE_Sign1 = [protected: bstr .cbor header_map / bstr .size 0,
  unprotected: header_map, payload: bstr / nil, signature: bstr], CBOR tag 18;
  §4.4 Sig_structure ["Signature1", body_protected, external_aad, payload];
  §7.1 COSE_Key (kty 1, crv -1, x -2, y -3).
* RFC 9053 §2.1: ES256/ES384/ES512 (alg -7/-35/-36); the signature is the raw
  fixed-width big-endian ``r || s``, not DER.
* RFC 7518 §6.2: EC JSON Web Keys (``kty`` "EC", ``crv``, base64url ``x``/``y``).

Everything here is pure: bytes (or already-decoded CBOR) in, typed values or
exceptions out. Parsers raise :class:`tsmr.errors.ParseError`; verification raises
:class:`tsmr.errors.SignatureError` with a caller-chosen ``check`` id.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tsmr.errors import ParseError, SignatureError

__all__ = [
    "ALG_ES256",
    "ALG_ES384",
    "ALG_ES512",
    "COSE_SIGN1_TAG",
    "COSESign1",
    "cbor_loads",
    "cose_key_public_key",
    "ec_point_public_key",
    "jwk_public_key",
    "parse_sign1",
    "sig_structure",
    "verify_sign1",
]

COSE_SIGN1_TAG = 18
ALG_ES256 = -7
ALG_ES384 = -35
ALG_ES512 = -36

# RFC 9053 §2.1 ties each ECDSA alg to a hash and (SHOULD) a curve of matching
# size; we require the match so a P-256 key cannot be paired with ES512 to
# weaken an ES512 claim. The last value is the byte width of r and of s.
_ECDSA_ALGS: dict[int, tuple[str, type[hashes.HashAlgorithm], type[ec.EllipticCurve], int]] = {
    ALG_ES256: ("ES256", hashes.SHA256, ec.SECP256R1, 32),
    ALG_ES384: ("ES384", hashes.SHA384, ec.SECP384R1, 48),
    ALG_ES512: ("ES512", hashes.SHA512, ec.SECP521R1, 66),
}

# COSE_Key crv values (RFC 9053 §7.1, IANA "COSE Elliptic Curves") and JWK crv
# names (RFC 7518 §6.2.1.1) for the NIST curves; the int is the coordinate size.
_COSE_CURVES: dict[int, tuple[type[ec.EllipticCurve], int]] = {
    1: (ec.SECP256R1, 32),
    2: (ec.SECP384R1, 48),
    3: (ec.SECP521R1, 66),
}
_JWK_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
# An uncompressed SEC1 point (0x04 || X || Y) has 1 + 2*size bytes, so the
# length alone identifies the curve.
_POINT_LENGTHS: dict[int, type[ec.EllipticCurve]] = {65: ec.SECP256R1, 97: ec.SECP384R1, 133: ec.SECP521R1}


def cbor_loads(data: bytes, *, format: str, field: str | None = None) -> Any:
    """Decode exactly one CBOR data item (RFC 8949) from *data*.

    Every cbor2 failure is turned into ``ParseError`` so callers see one error
    type, and trailing bytes are rejected: ``cbor2.loads`` silently ignores them,
    which would let unsigned junk ride along with signed evidence.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError(f"expected bytes, got {type(data).__name__}", format=format, field=field)
    raw = bytes(data)
    if not raw:
        raise ParseError("empty input", format=format, offset=0, field=field)
    fp = io.BytesIO(raw)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    # cbor2 raises CBORDecodeError for most malformations, but semantic tag
    # decoders (dates, bignums, regexes, MIME, ...) can leak ValueError,
    # TypeError, OverflowError and friends; the parser must stay total.
    except Exception as exc:
        raise ParseError(f"invalid CBOR: {exc}", format=format, field=field) from exc
    end = fp.tell()
    if end != len(raw):
        raise ParseError(f"{len(raw) - end} trailing bytes after CBOR item", format=format, offset=end, field=field)
    return value


def _is_array(value: Any) -> bool:
    # cbor2 >= 6 decodes arrays nested in immutable contexts as tuples.
    return isinstance(value, (list, tuple))


@dataclass(frozen=True)
class COSESign1:
    """A decoded COSE_Sign1 message (RFC 9052 §4.2).

    ``protected`` keeps the serialized protected header exactly as received,
    because the signature covers those bytes, not a re-encoding of the map.
    """

    protected: bytes
    protected_header: Mapping[Any, Any]
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes
    tagged: bool

    @property
    def alg(self) -> int | None:
        """The protected ``alg`` (label 1) header, or None when absent."""
        alg = self.protected_header.get(1)
        return alg if isinstance(alg, int) and not isinstance(alg, bool) else None


def parse_sign1(data: Any, *, format: str = "cose_sign1") -> COSESign1:
    """Parse a COSE_Sign1 (RFC 9052 §4.2) from bytes or an already-decoded CBOR item.

    Tag 18 is optional (the enclosing protocol may imply the type, RFC 9052 §4.2).
    A detached payload (nil) is rejected: every token tsmr verifies carries it.
    """
    tagged = False
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = cbor_loads(bytes(data), format=format)
    if isinstance(data, cbor2.CBORTag):
        if data.tag != COSE_SIGN1_TAG:
            raise ParseError(f"unexpected CBOR tag {data.tag} (COSE_Sign1 is tag 18)", format=format)
        tagged = True
        data = data.value
    if not _is_array(data) or len(data) != 4:
        raise ParseError("COSE_Sign1 must be an array of 4 elements", format=format)
    protected, unprotected, payload, signature = data
    if not isinstance(protected, bytes):
        raise ParseError("protected header must be a byte string", format=format, field="protected")
    if protected:
        header = cbor_loads(protected, format=format, field="protected")
        if not isinstance(header, Mapping):
            raise ParseError("protected header must encode a map", format=format, field="protected")
    else:
        # RFC 9052 §3: a zero-length bstr stands for an empty protected map.
        header = {}
    if not isinstance(unprotected, Mapping):
        raise ParseError("unprotected header must be a map", format=format, field="unprotected")
    if not isinstance(payload, bytes):
        raise ParseError("payload must be a byte string (detached payloads unsupported)", format=format, field="payload")
    if not isinstance(signature, bytes):
        raise ParseError("signature must be a byte string", format=format, field="signature")
    # RFC 9052 §3: a label must not appear in both buckets; otherwise an
    # unprotected value could shadow the signed one in a careless consumer.
    try:
        overlap = set(header) & set(unprotected)
    except TypeError as exc:  # unhashable labels cannot be valid COSE labels
        raise ParseError("invalid header label", format=format, field="unprotected") from exc
    if overlap:
        raise ParseError("header label in both protected and unprotected maps", format=format, field="unprotected")
    return COSESign1(
        protected=protected,
        protected_header=dict(header),
        unprotected=dict(unprotected),
        payload=payload,
        signature=signature,
        tagged=tagged,
    )


def sig_structure(msg: COSESign1, external_aad: bytes = b"") -> bytes:
    """The ToBeSigned bytes: Sig_structure for COSE_Sign1 (RFC 9052 §4.4)."""
    return cbor2.dumps(["Signature1", msg.protected, external_aad, msg.payload])


def verify_sign1(
    msg: COSESign1,
    key: ec.EllipticCurvePublicKey,
    *,
    check: str = "cose.signature",
    external_aad: bytes = b"",
) -> None:
    """Verify an ES256/ES384/ES512 COSE_Sign1 signature (RFC 9052 §4.4, RFC 9053 §2.1).

    Raises :class:`SignatureError` with *check* for any failure: unsupported or
    unprotected alg, key/alg curve mismatch, wrong signature length, bad signature.
    Returns None on success (never a bool, so a forgotten check cannot pass).
    """
    alg = msg.alg
    if alg not in _ECDSA_ALGS:
        raise SignatureError(f"unsupported or missing protected alg {msg.protected_header.get(1)!r}", check=check)
    name, hash_cls, curve_cls, size = _ECDSA_ALGS[alg]
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"{name} needs an EC public key, got {type(key).__name__}", check=check)
    if not isinstance(key.curve, curve_cls):
        raise SignatureError(f"{name} needs curve {curve_cls.name}, key is {key.curve.name}", check=check)
    if len(msg.signature) != 2 * size:
        raise SignatureError(f"{name} signature must be {2 * size} bytes, got {len(msg.signature)}", check=check)
    # COSE carries r || s as fixed-width integers; cryptography wants DER.
    r = int.from_bytes(msg.signature[:size], "big")
    s = int.from_bytes(msg.signature[size:], "big")
    try:
        key.verify(encode_dss_signature(r, s), sig_structure(msg, external_aad), ec.ECDSA(hash_cls()))
    except InvalidSignature as exc:
        raise SignatureError(f"{name} signature does not verify", check=check) from exc


def _b64url(value: Any, *, field: str) -> bytes:
    if not isinstance(value, str):
        raise ParseError("expected a base64url string", format="jwk", field=field)
    try:
        # JWK omits padding (RFC 7515 §2); add it back for the stdlib decoder.
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ParseError(f"invalid base64url: {exc}", format="jwk", field=field) from exc


def _ec_key(curve_cls: type[ec.EllipticCurve], x: int, y: int, *, format: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicNumbers(x, y, curve_cls()).public_key()
    except ValueError as exc:  # point not on the curve
        raise ParseError(f"invalid EC point: {exc}", format=format) from exc


def jwk_public_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    """EC public key from a JSON Web Key (RFC 7518 §6.2.1: kty "EC", crv P-256/384/521, x, y)."""
    if not isinstance(jwk, Mapping):
        raise ParseError("JWK must be a JSON object", format="jwk")
    if jwk.get("kty") != "EC":
        raise ParseError(f"unsupported kty {jwk.get('kty')!r} (only EC)", format="jwk", field="kty")
    crv = jwk.get("crv")
    if crv not in _JWK_CURVES:
        raise ParseError(f"unsupported crv {crv!r}", format="jwk", field="crv")
    curve_cls, size = _JWK_CURVES[crv]
    x = _b64url(jwk.get("x"), field="x")
    y = _b64url(jwk.get("y"), field="y")
    # RFC 7518 §6.2.1.2: coordinates are full-width, so a short value is malformed.
    if len(x) != size or len(y) != size:
        raise ParseError(f"{crv} coordinates must be {size} bytes", format="jwk", field="x")
    return _ec_key(curve_cls, int.from_bytes(x, "big"), int.from_bytes(y, "big"), format="jwk")


def cose_key_public_key(data: bytes | Mapping[Any, Any]) -> ec.EllipticCurvePublicKey:
    """EC2 public key from a COSE_Key (RFC 9052 §7, RFC 9053 §7.1.1: kty 2, crv -1, x -2, y -3).

    ``y`` may be a bool (point compression, RFC 9053 §7.1.1), then x alone defines the point.
    """
    fmt = "cose_key"
    key = cbor_loads(data, format=fmt) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if not isinstance(key, Mapping):
        raise ParseError("COSE_Key must be a map", format=fmt)
    if key.get(1) != 2 or isinstance(key.get(1), bool):
        raise ParseError(f"unsupported kty {key.get(1)!r} (only EC2 = 2)", format=fmt, field="kty")
    crv = key.get(-1)
    if isinstance(crv, bool) or crv not in _COSE_CURVES:
        raise ParseError(f"unsupported crv {crv!r}", format=fmt, field="crv")
    curve_cls, size = _COSE_CURVES[crv]
    x, y = key.get(-2), key.get(-3)
    if not isinstance(x, bytes) or len(x) != size:
        raise ParseError(f"x must be a {size}-byte string", format=fmt, field="x")
    if isinstance(y, bool):
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), bytes([0x03 if y else 0x02]) + x)
        except ValueError as exc:
            raise ParseError(f"invalid compressed EC point: {exc}", format=fmt) from exc
    if not isinstance(y, bytes) or len(y) != size:
        raise ParseError(f"y must be a {size}-byte string or a bool", format=fmt, field="y")
    return _ec_key(curve_cls, int.from_bytes(x, "big"), int.from_bytes(y, "big"), format=fmt)


def ec_point_public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    """EC public key from an uncompressed SEC1 point (SEC 1 v2 §2.3.3: 0x04 || X || Y).

    The curve (P-256/384/521) is inferred from the length.
    """
    if not isinstance(point, bytes) or len(point) not in _POINT_LENGTHS or point[0] != 0x04:
        raise ParseError("expected an uncompressed P-256/384/521 point", format="ec_point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_POINT_LENGTHS[len(point)](), point)
    except ValueError as exc:
        raise ParseError(f"invalid EC point: {exc}", format="ec_point") from exc
