"""Arm CCA attestation token: parse and verify.

Specifications:

* Arm Realm Management Monitor specification (DEN0137), A7.2 "Attestation token":
  the CCA attestation token is a collection of a CCA platform token and a Realm
  token, each a COSE_Sign1 (RFC 9052 §4.2). Legacy collection: CBOR tag 399,
  map {44234: platform token bstr, 44241: realm token bstr}.
* IETF draft-ffm-rats-cca-token: claim keys of the platform token (profile 265,
  challenge 10, implementation id 2396, instance id 256, config 2401, lifecycle
  2395, software components 2399, verification service 2400, hash algo 2402) and
  of the realm token (challenge 10, personalization value 44235, RIM 44238, REMs
  44239, hash algo 44236, RAK 44237, RAK hash algo 44240, profile 265); the newer
  CMW collection is tag 907 whose values are ``[content-format, bstr]`` (veraison/ccatoken).
* Binding (RMM A7.2): the platform challenge is the hash, by the realm's
  public-key hash algorithm, of the RAK exactly as encoded in the realm token.
* Security lifecycle (draft-ffm-rats-cca-token, PSA security lifecycle): the
  high byte is the state, the low byte implementation-defined.  Only
  ``secured`` (0x3000-0x30ff) keeps debug access closed; every other state
  (unknown, assembly and test, provisioning, non-platform-RoT debug,
  recoverable platform-RoT debug, decommissioned) is treated as a debug
  platform and refused unless the caller allows it (``cca.debug``).

Pure: bytes in, typed claims or exceptions out; no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from tsmr.errors import EvidenceError, ParseError
from tsmr.evidence.cose import (
    COSESign1,
    cbor_loads,
    cose_key_public_key,
    ec_point_public_key,
    jwk_public_key,
    parse_sign1,
    verify_sign1,
)

__all__ = [
    "LIFECYCLE_STATES",
    "TAG_CCA_CMW",
    "TAG_CCA_LEGACY",
    "CCAClaims",
    "CCAToken",
    "PlatformClaims",
    "RealmClaims",
    "SwComponent",
    "lifecycle_state",
    "parse_token",
    "verify_token",
]

FORMAT = "cca"
TAG_CCA_LEGACY = 399
TAG_CCA_CMW = 907
KEY_PLATFORM = 44234
KEY_REALM = 44241

# Common claim key
CLAIM_PROFILE = 265
CLAIM_CHALLENGE = 10
# Realm claims (RMM A7.2)
REALM_PERSONALIZATION = 44235
REALM_HASH_ALGO = 44236
REALM_PUBKEY = 44237
REALM_RIM = 44238
REALM_REM = 44239
REALM_PUBKEY_HASH_ALGO = 44240
# Platform claims (draft-ffm-rats-cca-token)
PLAT_INSTANCE_ID = 256
PLAT_LIFECYCLE = 2395
PLAT_IMPLEMENTATION_ID = 2396
PLAT_SW_COMPONENTS = 2399
PLAT_VERIFICATION_SERVICE = 2400
PLAT_CONFIG = 2401
PLAT_HASH_ALGO = 2402

# PSA / CCA security lifecycle states (draft-ffm-rats-cca-token), by the high byte of the claim.
LIFECYCLE_STATES = {
    0x00: "unknown",
    0x10: "assembly-and-test",
    0x20: "cca-platform-rot-provisioning",
    0x30: "secured",
    0x40: "non-cca-platform-rot-debug",
    0x50: "recoverable-cca-platform-rot-debug",
    0x60: "decommissioned",
}
_SECURED = 0x30


def lifecycle_state(lifecycle: int) -> str:
    """The name of a security lifecycle value's state (``invalid`` outside the defined ranges)."""
    if not 0 <= lifecycle <= 0xFFFF:
        return "invalid"
    return LIFECYCLE_STATES.get(lifecycle >> 8, "invalid")


# Hash names from the IANA "Named Information Hash Algorithm Registry", which is
# what the CCA tokens carry as text ("sha-256", ...).
_HASHES = {"sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}


@dataclass(frozen=True)
class SwComponent:
    """One entry of the platform software components claim (draft-ffm-rats-cca-token)."""

    measurement_value: bytes
    signer_id: bytes | None = None
    measurement_type: str | None = None
    version: str | None = None
    measurement_description: str | None = None


@dataclass(frozen=True)
class PlatformClaims:
    """CCA platform token claims (draft-ffm-rats-cca-token)."""

    profile: str
    challenge: bytes
    implementation_id: bytes
    instance_id: bytes
    config: bytes
    lifecycle: int
    sw_components: tuple[SwComponent, ...]
    verification_service: str | None
    hash_algo_id: str


@dataclass(frozen=True)
class RealmClaims:
    """Realm token claims (Arm RMM specification A7.2)."""

    profile: str | None
    challenge: bytes
    personalization_value: bytes
    rim: bytes
    rem: tuple[bytes, bytes, bytes, bytes]
    hash_algo_id: str
    public_key: bytes
    public_key_hash_algo_id: str


@dataclass(frozen=True)
class CCAToken:
    """A parsed (not yet verified) CCA attestation token (RMM A7.2)."""

    collection_tag: int
    platform_token: bytes
    realm_token: bytes
    platform: COSESign1
    realm: COSESign1
    platform_claims: PlatformClaims
    realm_claims: RealmClaims
    rak: ec.EllipticCurvePublicKey
    #: CoAP content-formats of the CMW entries (tag 907 only), platform then realm.
    content_formats: tuple[int, int] | None = None


@dataclass(frozen=True)
class CCAClaims:
    """Claims of a verified CCA token: realm measurements plus the platform facts."""

    rim: bytes
    rem0: bytes
    rem1: bytes
    rem2: bytes
    rem3: bytes
    hash_algorithm: str
    challenge: bytes
    personalization_value: bytes
    platform_sw_components: tuple[SwComponent, ...]
    implementation_id: bytes
    instance_id: bytes
    realm: RealmClaims
    platform: PlatformClaims
    debug: bool = False  # the platform is not "secured": only ever true when the caller allowed it

    @property
    def registers(self) -> dict[str, bytes]:
        """Register values by name: ``rim`` and ``rem0``..``rem3``."""
        return {"rim": self.rim, "rem0": self.rem0, "rem1": self.rem1, "rem2": self.rem2, "rem3": self.rem3}


# --------------------------------------------------------------------------- helpers


def _get(claims: Mapping[Any, Any], key: int, kind: type | tuple[type, ...], field: str, *, optional: bool = False) -> Any:
    if key not in claims:
        if optional:
            return None
        raise ParseError("missing mandatory claim", format=FORMAT, field=field)
    value = claims[key]
    # bool is an int subclass, but a CBOR true/false is never a valid claim value here.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ParseError(f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}", format=FORMAT, field=field)
    return value


def _bstr(claims: Mapping[Any, Any], key: int, field: str, *, sizes: tuple[int, ...] | None = None) -> bytes:
    value = _get(claims, key, bytes, field)
    if sizes is not None and len(value) not in sizes:
        raise ParseError(f"length {len(value)} not in {sizes}", format=FORMAT, field=field)
    return value


def _claims_map(msg: COSESign1, which: str) -> Mapping[Any, Any]:
    claims = cbor_loads(msg.payload, format=FORMAT, field=f"{which}.payload")
    if not isinstance(claims, Mapping):
        raise ParseError("claims set must be a map", format=FORMAT, field=f"{which}.payload")
    return claims


# Measurement sizes allowed by RMM A7.2 (SHA-256/384/512 digests, zero-padded
# to 64 bytes in some implementations).
_MEAS_SIZES = (32, 48, 64)


def _realm_claims(claims: Mapping[Any, Any]) -> RealmClaims:
    rem = _get(claims, REALM_REM, (list, tuple), "realm.rem")
    # RMM A7.2: exactly four Realm Extensible Measurements.
    if len(rem) != 4 or not all(isinstance(r, bytes) and len(r) in _MEAS_SIZES for r in rem):
        raise ParseError("expected 4 REM byte strings of 32/48/64 bytes", format=FORMAT, field="realm.rem")
    return RealmClaims(
        profile=_get(claims, CLAIM_PROFILE, str, "realm.profile", optional=True),
        # RMM A7.2: the realm challenge is always 64 bytes.
        challenge=_bstr(claims, CLAIM_CHALLENGE, "realm.challenge", sizes=(64,)),
        personalization_value=_bstr(claims, REALM_PERSONALIZATION, "realm.personalization_value", sizes=(64,)),
        rim=_bstr(claims, REALM_RIM, "realm.rim", sizes=_MEAS_SIZES),
        rem=tuple(rem),
        hash_algo_id=_get(claims, REALM_HASH_ALGO, str, "realm.hash_algo_id"),
        public_key=_bstr(claims, REALM_PUBKEY, "realm.public_key"),
        public_key_hash_algo_id=_get(claims, REALM_PUBKEY_HASH_ALGO, str, "realm.public_key_hash_algo_id"),
    )


def _sw_component(entry: Any, index: int) -> SwComponent:
    field = f"platform.sw_components[{index}]"
    if not isinstance(entry, Mapping):
        raise ParseError("software component must be a map", format=FORMAT, field=field)
    signer = _get(entry, 5, bytes, f"{field}.signer_id", optional=True)
    return SwComponent(
        measurement_value=_get(entry, 2, bytes, f"{field}.measurement_value"),
        signer_id=signer,
        measurement_type=_get(entry, 1, str, f"{field}.measurement_type", optional=True),
        version=_get(entry, 4, str, f"{field}.version", optional=True),
        measurement_description=_get(entry, 6, str, f"{field}.measurement_description", optional=True),
    )


def _platform_claims(claims: Mapping[Any, Any]) -> PlatformClaims:
    comps = _get(claims, PLAT_SW_COMPONENTS, (list, tuple), "platform.sw_components")
    return PlatformClaims(
        profile=_get(claims, CLAIM_PROFILE, str, "platform.profile"),
        # draft-ffm-rats-cca-token: the challenge is a 32/48/64-byte hash of the RAK.
        challenge=_bstr(claims, CLAIM_CHALLENGE, "platform.challenge", sizes=(32, 48, 64)),
        implementation_id=_bstr(claims, PLAT_IMPLEMENTATION_ID, "platform.implementation_id"),
        instance_id=_bstr(claims, PLAT_INSTANCE_ID, "platform.instance_id"),
        config=_bstr(claims, PLAT_CONFIG, "platform.config"),
        lifecycle=_get(claims, PLAT_LIFECYCLE, int, "platform.lifecycle"),
        sw_components=tuple(_sw_component(c, i) for i, c in enumerate(comps)),
        verification_service=_get(claims, PLAT_VERIFICATION_SERVICE, str, "platform.verification_service", optional=True),
        hash_algo_id=_get(claims, PLAT_HASH_ALGO, str, "platform.hash_algo_id"),
    )


def _rak(encoded: bytes) -> ec.EllipticCurvePublicKey:
    """The Realm Attestation Key from claim 44237.

    Older RMMs (profile-less realm tokens) put a raw SEC1 point there; the
    "tag:arm.com,2023:realm#1.0.0" profile puts a serialized COSE_Key.
    """
    try:
        if encoded[:1] == b"\x04" and len(encoded) in (65, 97, 133):
            return ec_point_public_key(encoded)
        return cose_key_public_key(encoded)
    # TypeError: a COSE_Key whose crv is an array or a map is unhashable where
    # cose_key_public_key looks it up; parse_token must still raise ParseError.
    except (ParseError, TypeError) as exc:
        raise ParseError(f"bad realm public key: {exc}", format=FORMAT, field="realm.public_key") from exc


def _unwrap_entry(value: Any, tag: int, field: str) -> tuple[bytes, int | None]:
    if tag == TAG_CCA_LEGACY:
        if not isinstance(value, bytes):
            raise ParseError("token must be a byte string", format=FORMAT, field=field)
        return value, None
    # Tag 907: a CMW record [content-format, bstr]; a bare COSE_Sign1 in the
    # second slot is the "unwrapped" encoding veraison rejects, and so do we.
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ParseError("CMW entry must be [content-format, bstr]", format=FORMAT, field=field)
    cf, body = value
    if not isinstance(cf, int) or isinstance(cf, bool) or cf < 0:
        raise ParseError("CMW content-format must be an unsigned integer", format=FORMAT, field=field)
    if not isinstance(body, bytes):
        raise ParseError("CMW entry value must be a byte string", format=FORMAT, field=field)
    return body, cf


# --------------------------------------------------------------------------- API


def parse_token(data: bytes) -> CCAToken:
    """Parse a CCA attestation token collection (RMM A7.2; tag 399 or tag-907 CMW).

    Total: any input returns a :class:`CCAToken` or raises :class:`ParseError`.
    Signatures are *not* checked here; use :func:`verify_token`.
    """
    top = cbor_loads(data, format=FORMAT)
    if not isinstance(top, cbor2.CBORTag) or top.tag not in (TAG_CCA_LEGACY, TAG_CCA_CMW):
        raise ParseError("expected a CBOR tag 399 or 907 collection", format=FORMAT, offset=0)
    coll = top.value
    if not isinstance(coll, Mapping):
        raise ParseError("collection must be a map", format=FORMAT)
    if KEY_PLATFORM not in coll or KEY_REALM not in coll:
        raise ParseError("collection needs both 44234 (platform) and 44241 (realm)", format=FORMAT)
    plat_raw, plat_cf = _unwrap_entry(coll[KEY_PLATFORM], top.tag, "platform")
    realm_raw, realm_cf = _unwrap_entry(coll[KEY_REALM], top.tag, "realm")
    platform = parse_sign1(plat_raw, format=f"{FORMAT}.platform")
    realm = parse_sign1(realm_raw, format=f"{FORMAT}.realm")
    realm_claims = _realm_claims(_claims_map(realm, "realm"))
    return CCAToken(
        collection_tag=top.tag,
        platform_token=plat_raw,
        realm_token=realm_raw,
        platform=platform,
        realm=realm,
        platform_claims=_platform_claims(_claims_map(platform, "platform")),
        realm_claims=realm_claims,
        rak=_rak(realm_claims.public_key),
        content_formats=(plat_cf, realm_cf) if plat_cf is not None and realm_cf is not None else None,
    )


def verify_token(
    data: bytes,
    *,
    cpak: ec.EllipticCurvePublicKey | Mapping[str, Any],
    challenge: bytes | None,
    allow_debug: bool = False,
) -> CCAClaims:
    """Verify a CCA attestation token (RMM A7.2; draft-ffm-rats-cca-token) and return its claims.

    *cpak* is the CCA platform attestation key (IAK) as a public key or an EC JWK;
    *challenge* is the verifier's 64-byte realm challenge (None skips that check,
    for callers that bind freshness elsewhere).

    Checks, in order (each raises an ``EvidenceError`` subclass with ``check``):
    ``cca.realm.signature`` (realm COSE_Sign1 by the RAK from its own claims),
    ``cca.platform.signature`` (platform COSE_Sign1 by *cpak*),
    ``cca.binding`` (platform challenge == H(RAK as encoded), H = RAK hash algo),
    ``cca.challenge`` (realm challenge == *challenge*),
    ``cca.debug`` (the platform's security lifecycle is ``secured``; skipped with *allow_debug*).
    """
    key = jwk_public_key(cpak) if isinstance(cpak, Mapping) else cpak
    token = parse_token(data)
    realm, plat = token.realm_claims, token.platform_claims

    # The realm token is self-signed by the RAK; that alone proves nothing until
    # the platform token (signed by the hardware-rooted key) vouches for the RAK.
    verify_sign1(token.realm, token.rak, check="cca.realm.signature")
    verify_sign1(token.platform, key, check="cca.platform.signature")

    hash_name = _HASHES.get(realm.public_key_hash_algo_id)
    if hash_name is None:
        raise EvidenceError(f"unsupported RAK hash algorithm {realm.public_key_hash_algo_id!r}", check="cca.binding")
    # Hash the claim bytes as they appear in the signed realm token, not a
    # re-encoding of the key: that is what the platform measured.
    expected = hashlib.new(hash_name, realm.public_key).digest()
    if not hmac.compare_digest(expected, plat.challenge):
        raise EvidenceError("platform challenge is not the hash of the realm attestation key", check="cca.binding")

    if challenge is not None and not hmac.compare_digest(bytes(challenge), realm.challenge):
        raise EvidenceError("realm challenge does not match the expected challenge", check="cca.challenge")

    # A platform outside "secured" may have debug access open to its RoT or to the rest of the
    # system, so its measurements and keys cannot be relied on; checked last, after authenticity.
    debug = plat.lifecycle >> 8 != _SECURED or not 0 <= plat.lifecycle <= 0xFFFF
    if debug and not allow_debug:
        raise EvidenceError(f"the CCA platform's security lifecycle is {plat.lifecycle:#06x} "
                            f"({lifecycle_state(plat.lifecycle)}), not secured: it may be debuggable",
                            check="cca.debug")

    return CCAClaims(
        rim=realm.rim,
        rem0=realm.rem[0],
        rem1=realm.rem[1],
        rem2=realm.rem[2],
        rem3=realm.rem[3],
        hash_algorithm=realm.hash_algo_id,
        challenge=realm.challenge,
        personalization_value=realm.personalization_value,
        platform_sw_components=plat.sw_components,
        implementation_id=plat.implementation_id,
        instance_id=plat.instance_id,
        realm=realm,
        platform=plat,
        debug=debug,
    )
