"""EAT Attestation Results (EAR, draft-ietf-rats-ear) as signed JWTs, made with ``cryptography`` alone.

Theory of operation
-------------------
An appraisal :class:`~tsmr.appraisal.model.Result` becomes one EAR claims-set
(draft-ietf-rats-ear §3, JSON serialisation) with a single submodule named
after the evidence kind (``tdx``, ``snp``, ``cca``, ``tpm``)::

    {"eat_profile": "tag:github.com,2023:veraison/ear", "iat": 1700000000,
     "ear.verifier-id": {"developer": ..., "build": ...},
     "eat_nonce": <base64url of the challenge nonce>,
     "submods": {"tdx": {"ear.status": "affirming",
                         "ear.trustworthiness-vector": {"executables": 2, ...},
                         "ear.appraisal-policy-id": "policy:default@1",
                         "tsmr.registers": [...], "tsmr.findings": ["replay.rtmr3.matched", ...],
                         "tsmr.explanations": [{"finding": "refvals.register-mismatch", "register": "rtmr1",
                                                "explanation": "rtmr1 event 17 ...", "component": "kernel", ...}],
                         "tsmr.uncovered": ["rtmr3"]}}}

``tsmr.registers``, ``tsmr.findings``, ``tsmr.explanations`` (a mismatch
explained by component, present when there is one) and ``tsmr.uncovered``
(the registers no reference value covers, present when there are some) are
unregistered extension claims (draft-ietf-rats-ear §3.3 allows them); a
relying party that does not know them can ignore them.

The claims-set is signed as a JWS compact serialisation (RFC 7515) with ES256
(P-256) or ES384 (P-384): the signature is the raw ``r || s`` pair of RFC 7518
§3.4, not DER.  ``kid`` is the RFC 7638 thumbprint of the public key, so a
relying party holding the verifier's JWKS (:func:`jwks`) picks the key by it.

:func:`verify` is strict: every segment must be canonical unpadded base64url
(re-encoding the decoded bytes must give the segment back, so no spare bits
can be flipped), the header's ``alg`` must match the key's curve and the
signature must verify; anything else raises :class:`~tsmr.errors.SignatureError`.

Keys live in PEM PKCS#8 files with mode 0600.  :func:`load_or_create_key`
writes a new key to a private temporary file and links it into place: the link
fails if another process got there first, and then that process's key is the
one every process uses, so several replicas starting at once share one key.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ..errors import InputError, SignatureError

__all__ = ["EAR_PROFILE", "ALGORITHMS", "DEFAULT_VERIFIER_ID", "claims_for", "sign", "verify", "jwks", "jwk",
           "thumbprint", "generate_key", "load_key", "load_or_create_key", "load_public_keys", "key_alg"]

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
DEFAULT_VERIFIER_ID = {"developer": "tsmr", "build": "tsmr"}

# JWS algorithm -> (curve, hash, coordinate size in bytes), RFC 7518 §3.4.
ALGORITHMS: dict[str, tuple[type[ec.EllipticCurve], type[hashes.HashAlgorithm], int]] = {
    "ES256": (ec.SECP256R1, hashes.SHA256, 32),
    "ES384": (ec.SECP384R1, hashes.SHA384, 48),
}
_CRV = {"secp256r1": "P-256", "secp384r1": "P-384"}
_CRV_CLASS = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}

# Bounds on what verify() accepts, checked before decoding anything.
MAX_TOKEN_CHARS = 1 << 22
ALLOWED_SKEW_SECONDS = 300


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str, what: str) -> bytes:
    """Decode canonical unpadded base64url; anything else is a changed token."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError(f"the EAR's {what} is not base64url", check="ear.encoding") from None
    if _b64e(raw) != text:
        raise SignatureError(f"the EAR's {what} is not canonical base64url", check="ear.encoding")
    return raw


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


# -- keys -----------------------------------------------------------------------------------------

def key_alg(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """The JWS algorithm that goes with an EC key (ES256 for P-256, ES384 for P-384)."""
    name = key.curve.name
    for alg, (curve, _, _) in ALGORITHMS.items():
        if curve.name == name:
            return alg
    raise InputError(f"EAR keys must be P-256 or P-384, not {name}")


def jwk(public_key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public JWK (RFC 7517) of an EC key, with ``kid``, ``alg`` and ``use``."""
    pub = public_key.public_key() if isinstance(public_key, ec.EllipticCurvePrivateKey) else public_key
    alg = key_alg(pub)
    size = ALGORITHMS[alg][2]
    nums = pub.public_numbers()
    out = {"kty": "EC", "crv": _CRV[pub.curve.name], "x": _b64e(nums.x.to_bytes(size, "big")),
           "y": _b64e(nums.y.to_bytes(size, "big"))}
    return {**out, "kid": thumbprint(pub), "alg": alg, "use": "sig"}


def thumbprint(public_key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order, base64url."""
    pub = public_key.public_key() if isinstance(public_key, ec.EllipticCurvePrivateKey) else public_key
    size = ALGORITHMS[key_alg(pub)][2]
    nums = pub.public_numbers()
    members = {"crv": _CRV[pub.curve.name], "kty": "EC", "x": _b64e(nums.x.to_bytes(size, "big")),
               "y": _b64e(nums.y.to_bytes(size, "big"))}
    return _b64e(hashlib.sha256(_json(members)).digest())


def jwks(public_keys: Iterable[ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey]) -> dict[str, Any]:
    """A JWK Set (RFC 7517 §5) publishing the given keys (private keys contribute their public half).

    A key given twice is published once, where it first appears.
    """
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for k in public_keys:
        entry = jwk(k)
        if entry["kid"] not in seen:
            seen.add(entry["kid"])
            out.append(entry)
    return {"keys": out}


def load_public_keys(data: bytes, what: str = "key file") -> list[ec.EllipticCurvePublicKey]:
    """The EC public keys in a file: PEM (public key, private key or X.509 certificate), a JWK or a JWKS.

    Used to publish retired or upcoming signing keys, and by relying parties to
    hold a verifier's keys.  Every key must be P-256 or P-384.
    """
    from cryptography import x509

    text = data.lstrip()
    keys: list[Any] = []
    if text.startswith(b"{"):
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise InputError(f"{what}: not JSON") from None
        entries = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InputError(f"{what}: not a JWK or a JWK Set")
        keys = [_public_from_jwk(e) for e in entries]
    elif b"-----BEGIN CERTIFICATE-----" in data:
        try:
            keys = [c.public_key() for c in x509.load_pem_x509_certificates(data)]
        except ValueError as exc:
            raise InputError(f"{what}: not a PEM certificate: {exc}") from None
    elif b"PRIVATE KEY-----" in data:
        keys = [load_key(data).public_key()]
    else:
        try:
            keys = [serialization.load_pem_public_key(data)]
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise InputError(f"{what}: not a PEM public key, private key or certificate, nor a JWK") from None
    if not keys:
        raise InputError(f"{what}: holds no key")
    for k in keys:
        if not isinstance(k, ec.EllipticCurvePublicKey):
            raise InputError(f"{what}: EAR keys are EC keys (P-256 or P-384)")
        key_alg(k)
    return keys


def _public_from_jwk(entry: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    try:
        if entry.get("kty") != "EC":
            raise ValueError("not an EC key")
        curve = _CRV_CLASS[str(entry["crv"])]()
        x = int.from_bytes(_b64d(str(entry["x"]), "JWK x"), "big")
        y = int.from_bytes(_b64d(str(entry["y"]), "JWK y"), "big")
        return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    except (KeyError, ValueError, SignatureError) as exc:
        raise InputError(f"not a usable EC JWK: {exc}") from None


def generate_key(alg: str = "ES256") -> ec.EllipticCurvePrivateKey:
    if alg not in ALGORITHMS:
        raise InputError(f"unknown EAR signing algorithm {alg!r} (known: {', '.join(ALGORITHMS)})")
    return ec.generate_private_key(ALGORITHMS[alg][0]())


def load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """A PEM private key (PKCS#8 or SEC1), which must be P-256 or P-384."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError("the EAR signing key must be an EC key (P-256 or P-384)")
    key_alg(key)
    return key


def load_or_create_key(path: str | os.PathLike[str], alg: str = "ES256") -> ec.EllipticCurvePrivateKey:
    """Load the signing key at ``path``, creating it (mode 0600) if there is none.

    An existing key wins whatever ``alg`` says: ``alg`` only chooses the curve of
    a new key.  Creation is race-free across processes: the key is written to a
    temporary file of its own and hard-linked to ``path``, which fails if the
    path exists; the loser drops its key and loads the winner's.
    """
    target = Path(path)
    for _ in range(50):
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InputError(f"cannot read the EAR key {target}: {exc.strerror}") from None
        else:
            if data:
                return load_key(data)
            time.sleep(0.05)  # created with O_EXCL by a process without hard links: still being written
            continue
        key = generate_key(alg)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _publish(target, pem)
        except FileExistsError:
            continue  # somebody else's key is in place: load it
        except OSError as exc:
            raise InputError(f"cannot create the EAR key {target}: {exc.strerror}") from None
        return key
    raise InputError(f"the EAR key {target} stays empty")


def _publish(target: Path, pem: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)  # atomic, and fails with EEXIST when the path is taken
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise FileExistsError(str(target)) from None
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # No hard links here: O_EXCL on the path itself; readers wait for the content.
            fd2 = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd2, pem)
                os.fsync(fd2)
            finally:
                os.close(fd2)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    try:
        dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# -- signing --------------------------------------------------------------------------------------

def _epoch(now: datetime) -> int:
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return int(now.timestamp())


_EXPLANATION_KEYS = ("explanation", "event_index", "seq", "event_type", "component", "expected", "actual",
                     "extra_events", "missing_events", "components")


def claims_for(result: Any, *, now: datetime, verifier_id: Mapping[str, str] | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The EAR claims-set for an appraisal result (see the module docstring)."""
    submod: dict[str, Any] = {
        "ear.status": str(result.status),
        "ear.trustworthiness-vector": {str(k): int(v) for k, v in dict(result.trustworthiness).items()},
    }
    policy_id = getattr(result, "policy_id", None)
    if policy_id:
        submod["ear.appraisal-policy-id"] = str(policy_id)
    submod["tsmr.registers"] = [dict(r) for r in getattr(result, "registers", []) or []]
    submod["tsmr.findings"] = list(result.finding_ids())
    # Why a register differs, by component (predicted reference values), and what no reference value covers.
    explained = [{"finding": f.id, "register": f.context.get("register", f.context.get("claim_name")),
                  **{k: f.context[k] for k in _EXPLANATION_KEYS if k in f.context}}
                 for f in getattr(result, "findings", ()) if f.id.startswith("refvals.") and f.context.get("explanation")]
    if explained:
        submod["tsmr.explanations"] = explained
    uncovered = [r for f in getattr(result, "findings", ()) if f.id == "refvals.uncovered"
                 for r in f.context.get("registers", ())]
    if uncovered:
        submod["tsmr.uncovered"] = list(dict.fromkeys(uncovered))
    refvals_id = getattr(result, "refvals_id", None)
    if refvals_id:
        submod["tsmr.refvals-id"] = str(refvals_id)
    claims: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": _epoch(now),
        "ear.verifier-id": dict(verifier_id or DEFAULT_VERIFIER_ID),
    }
    nonce = getattr(result, "nonce", None)
    if nonce:
        try:
            claims["eat_nonce"] = _b64e(bytes.fromhex(str(nonce)))
        except ValueError:
            raise InputError("the result's nonce is not hexadecimal") from None
    claims["submods"] = {str(result.kind or "unknown"): submod}
    if extra:
        claims.update(extra)
    return claims


def sign(result: Any, key: ec.EllipticCurvePrivateKey, *, kid: str | None = None, now: datetime,
         verifier_id: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> str:
    """Sign an appraisal result as an EAR JWT; ``kid`` defaults to the key's RFC 7638 thumbprint.

    ``extra`` adds top-level claims (the service puts the result id in ``jti``).
    """
    return sign_claims(claims_for(result, now=now, verifier_id=verifier_id, extra=extra), key, kid=kid)


def sign_claims(claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey, *, kid: str | None = None) -> str:
    alg = key_alg(key)
    _, hash_cls, size = ALGORITHMS[alg]
    header = {"alg": alg, "typ": "JWT", "kid": kid or thumbprint(key)}
    signing_input = f"{_b64e(_json(header))}.{_b64e(_json(claims))}".encode("ascii")
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hash_cls())))
    return f"{signing_input.decode('ascii')}.{_b64e(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


# -- verification ---------------------------------------------------------------------------------

KeysArg = Any  # a JWKS dict, a {kid: key} mapping, one key, or an iterable of keys / JWKs


def _candidates(keys: KeysArg) -> list[tuple[str, ec.EllipticCurvePublicKey]]:
    """(kid, public key) pairs from whatever the caller holds."""
    if isinstance(keys, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        keys = [keys]
    elif isinstance(keys, Mapping):
        if "keys" in keys:
            keys = keys["keys"]
        elif keys.get("kty"):
            keys = [keys]
        else:  # {kid: key or JWK}
            out = []
            for kid, k in keys.items():
                pub = _public_from_jwk(k) if isinstance(k, Mapping) else k
                if isinstance(pub, ec.EllipticCurvePrivateKey):
                    pub = pub.public_key()
                out.append((str(kid), pub))
            return out
    out = []
    for k in keys:
        if isinstance(k, Mapping):
            pub = _public_from_jwk(k)
            out.append((str(k.get("kid") or thumbprint(pub)), pub))
        else:
            pub = k.public_key() if isinstance(k, ec.EllipticCurvePrivateKey) else k
            out.append((thumbprint(pub), pub))
    return out


def verify(token: str, jwks_or_keys: KeysArg, *, now: datetime | None = None) -> dict[str, Any]:
    """Verify an EAR JWT and return its claims-set.

    Raises :class:`SignatureError` when the token is not a well-formed ES256/ES384
    JWS, names no known key, or its signature does not verify.  With ``now``,
    also refuses an ``iat`` in the future (beyond five minutes of skew) and an
    ``exp`` in the past (``check`` = ``ear.iat`` / ``ear.exp``).
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise SignatureError("the EAR is not a string of a sane length", check="ear.format")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise SignatureError("the EAR is not a JWS compact serialisation", check="ear.format")
    raw_header, raw_claims, raw_sig = (_b64d(p, w) for p, w in zip(parts, ("header", "claims", "signature")))
    try:
        header = json.loads(raw_header)
        claims = json.loads(raw_claims)
    except (ValueError, UnicodeDecodeError):
        raise SignatureError("the EAR's header or claims are not JSON", check="ear.format") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise SignatureError("the EAR's header and claims must be JSON objects", check="ear.format")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise SignatureError(f"unsupported EAR algorithm {alg!r}", check="ear.alg")
    if "crit" in header:
        raise SignatureError("the EAR header has critical extensions this verifier does not know", check="ear.crit")
    curve, hash_cls, size = ALGORITHMS[alg]
    if len(raw_sig) != 2 * size:
        raise SignatureError(f"an {alg} signature is {2 * size} bytes, got {len(raw_sig)}", check="ear.signature")
    try:
        candidates = _candidates(jwks_or_keys)
    except InputError as exc:
        raise SignatureError(str(exc), check="ear.key") from None
    kid = header.get("kid")
    keys = [pub for k, pub in candidates if kid is None or k == kid]
    keys = [pub for pub in keys if pub.curve.name == curve.name]
    if not keys:
        raise SignatureError(f"no {alg} key with kid {kid!r} is trusted", check="ear.key")
    signature = encode_dss_signature(int.from_bytes(raw_sig[:size], "big"), int.from_bytes(raw_sig[size:], "big"))
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    for pub in keys:
        try:
            pub.verify(signature, signing_input, ec.ECDSA(hash_cls()))
            break
        except InvalidSignature:
            continue
    else:
        raise SignatureError("the EAR's signature does not verify", check="ear.signature")
    if claims.get("eat_profile") != EAR_PROFILE:
        raise SignatureError(f"the EAR's eat_profile is not {EAR_PROFILE}", check="ear.profile")
    if now is not None:
        t = _epoch(now)
        iat = claims.get("iat")
        if not isinstance(iat, int) or iat > t + ALLOWED_SKEW_SECONDS:
            raise SignatureError("the EAR was issued in the future", check="ear.iat")
        exp = claims.get("exp")
        if exp is not None and (not isinstance(exp, int) or exp <= t):
            raise SignatureError("the EAR has expired", check="ear.exp")
    return claims
