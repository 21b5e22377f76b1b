"""Arm CCA token and COSE_Sign1 verification (tsmr.evidence.cca, tsmr.evidence.cose).

Fixtures: ccatoken/* (veraison/ccatoken test vectors) and trustee/verifier-cca/*, with
expectations from ccatoken/expected_verification.json (see fixtures MANIFEST.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tsmr.errors import EvidenceError, ParseError, SignatureError
from tsmr.evidence import cca, cose

from conftest import FIXTURES  # noqa: E402


def _path(rel: str) -> Path:
    return FIXTURES.path(rel)


def _bytes(rel: str) -> bytes:
    return _path(rel).read_bytes()


def _json(rel: str):
    return json.loads(_path(rel).read_text())


def _expected() -> dict:
    return _json("ccatoken/expected_verification.json")


IAK = "ccatoken/keys/testIAK.pub.jwk.json"
ALT_IAK = "ccatoken/keys/testAltIAK.pub.jwk.json"
RMM_CPAK = "ccatoken/keys/testRMMCPAK.pub.jwk.json"
GOOD = "ccatoken/cca_token_good.cbor"
GOOD_LEGACY = "ccatoken/cca_token_good_legacy.cbor"
RMM_LEGACY = "ccatoken/cca_token_rmm_legacy.cbor"
TFRMM = "ccatoken/tf-rmm/cca_token.cbor"
TRUSTEE = "trustee/verifier-cca/cca-example-token.cbor"
BAD_UNWRAPPED = "ccatoken/cca_token_bad_unwrapped.cbor"


# --------------------------------------------------------------------------- fixtures: verify


@pytest.mark.parametrize("token", [GOOD, GOOD_LEGACY])
def test_good_tokens_verify_with_test_iak(token: str) -> None:
    claims = cca.verify_token(_bytes(token), cpak=_json(IAK), challenge=b"AB" * 32)
    assert claims.challenge == b"AB" * 32
    assert claims.rim == b"C" * 64
    assert claims.registers == {"rim": b"C" * 64, **{f"rem{i}": b"C" * 64 for i in range(4)}}
    assert claims.hash_algorithm == "sha-256"
    assert claims.personalization_value == b"AD" * 32
    assert claims.implementation_id == bytes(32)
    assert claims.instance_id == b"\x01" + b"\x02" * 32
    assert claims.platform_sw_components[0].measurement_value == b"\x03" * 32
    assert claims.platform_sw_components[0].signer_id == b"\x04" * 32
    assert claims.realm.profile == "tag:arm.com,2023:realm#1.0.0"
    assert claims.platform.profile == "tag:arm.com,2023:cca_platform#1.0.0"


@pytest.mark.parametrize("token", [GOOD, GOOD_LEGACY])
def test_good_tokens_fail_with_alt_iak(token: str) -> None:
    with pytest.raises(SignatureError) as ei:
        cca.verify_token(_bytes(token), cpak=_json(ALT_IAK), challenge=None)
    assert ei.value.check == "cca.platform.signature"


def test_good_token_facts_match_expected_json() -> None:
    exp = _expected()
    for rel in (GOOD, GOOD_LEGACY, RMM_LEGACY, TFRMM, TRUSTEE):
        assert cca.parse_token(_bytes(rel)).collection_tag == exp[rel]["outer_tag"]
    tok = cca.parse_token(_bytes(GOOD))
    assert tok.platform_claims.challenge.hex() == exp[GOOD]["platform_nonce"]
    assert tok.platform.alg == cose.ALG_ES256 and exp[GOOD]["platform_alg"] == "ES256"
    assert tok.realm.alg == cose.ALG_ES384 and exp[GOOD]["realm_alg"].startswith("ES384")
    # "platform nonce == sha-512(realm public key bytes)"
    assert tok.realm_claims.public_key_hash_algo_id == "sha-512"
    assert hashlib.sha512(tok.realm_claims.public_key).digest() == tok.platform_claims.challenge
    assert tok.content_formats == (263, 263)
    legacy = cca.parse_token(_bytes(GOOD_LEGACY))
    assert legacy.platform_claims == tok.platform_claims and legacy.realm_claims == tok.realm_claims
    assert legacy.content_formats is None


@pytest.mark.parametrize(
    ("token", "key"),
    [(RMM_LEGACY, RMM_CPAK), (TRUSTEE, "trustee/verifier-cca/cpak-pub.json"), (TFRMM, None)],
)
def test_rmm_and_trustee_tokens_verify_with_cpak(token: str, key: str | None) -> None:
    exp = _expected()[token]
    if key is None:  # tf-rmm ships the CPAK as PEM
        cpak = load_pem_public_key(_bytes("ccatoken/tf-rmm/cca_platform.pub"))
    else:
        cpak = _json(key)
    tok = cca.parse_token(_bytes(token))
    assert tok.platform.alg == cose.ALG_ES384
    if "platform_nonce" in exp:
        assert tok.platform_claims.challenge.hex() == exp["platform_nonce"]
    expected_challenge = bytes.fromhex(exp["realm_challenge"]) if "realm_challenge" in exp else None
    claims = cca.verify_token(_bytes(token), cpak=cpak, challenge=expected_challenge)
    if "realm_initial_measurement" in exp:
        assert claims.rim.hex() == exp["realm_initial_measurement"]
    if token == RMM_LEGACY:
        # rak_binding: sha-256 over the raw-point RAK of the legacy realm token
        assert claims.realm.public_key_hash_algo_id == exp["rak_binding"] == "sha-256"
        assert hashlib.sha256(claims.realm.public_key).hexdigest() == exp["platform_nonce"]
    # The RMM/trustee tokens must not verify with the unrelated IAK.
    with pytest.raises(SignatureError) as ei:
        cca.verify_token(_bytes(token), cpak=_json(IAK), challenge=None)
    assert ei.value.check == "cca.platform.signature"


def test_cpak_jwk_matches_pem() -> None:
    pem = load_pem_public_key(_bytes("ccatoken/tf-rmm/cca_platform.pub"))
    assert cose.jwk_public_key(_json(RMM_CPAK)).public_numbers() == pem.public_numbers()


def test_bad_unwrapped_fails_to_decode() -> None:
    with pytest.raises(ParseError) as ei:
        cca.parse_token(_bytes(BAD_UNWRAPPED))
    assert ei.value.format == "cca"
    with pytest.raises(ParseError):
        cca.verify_token(_bytes(BAD_UNWRAPPED), cpak=_json(IAK), challenge=None)


@pytest.mark.parametrize("token", [GOOD, TRUSTEE])
def test_wrong_challenge(token: str) -> None:
    key = _json(IAK) if token == GOOD else _json("trustee/verifier-cca/cpak-pub.json")
    with pytest.raises(EvidenceError) as ei:
        cca.verify_token(_bytes(token), cpak=key, challenge=b"\x00" * 64)
    assert ei.value.check == "cca.challenge"
    assert not isinstance(ei.value, SignatureError)


# --------------------------------------------------------------------------- tamper


@pytest.mark.parametrize("token", [GOOD, GOOD_LEGACY])
def test_tamper_every_realm_payload_byte(token: str) -> None:
    data = _bytes(token)
    payload = cca.parse_token(data).realm.payload
    start = data.find(payload)
    assert start > 0 and data.find(payload, start + 1) == -1
    key = cose.jwk_public_key(_json(IAK))
    outcomes = {"sig": 0, "parse": 0}
    for i in range(start, start + len(payload)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        try:
            cca.verify_token(bytes(bad), cpak=key, challenge=None)
        except SignatureError as exc:
            assert exc.check == "cca.realm.signature", (i - start, exc)
            outcomes["sig"] += 1
        except ParseError:
            outcomes["parse"] += 1
        else:  # pragma: no cover - would be a forgery
            pytest.fail(f"tampered realm payload byte {i - start} verified")
    # Flips in CBOR heads or in the RAK coordinates (off-curve point) are parse
    # errors; everything else (challenge, RIM, REMs, ...) must hit the signature.
    assert outcomes["sig"] > 0.7 * len(payload), outcomes


def _replace_entry(data: bytes, key: int, new_token: bytes) -> bytes:
    top = cbor2.loads(data)
    coll = dict(top.value)
    old = coll[key]
    coll[key] = [old[0], new_token] if isinstance(old, (list, tuple)) else new_token
    return cbor2.dumps(cbor2.CBORTag(top.tag, coll))


def test_binding_failure_with_resigned_platform_token() -> None:
    """A platform token signed by the right key but for another RAK fails cca.binding."""
    data = _bytes(GOOD_LEGACY)
    tok = cca.parse_token(data)
    priv = ec.generate_private_key(ec.SECP256R1())
    claims = dict(cbor2.loads(tok.platform.payload))
    claims[10] = b"\x55" * 64
    new_plat = _sign1(priv, cose.ALG_ES256, cbor2.dumps(claims))
    forged = _replace_entry(data, cca.KEY_PLATFORM, new_plat)
    with pytest.raises(EvidenceError) as ei:
        cca.verify_token(forged, cpak=priv.public_key(), challenge=None)
    assert ei.value.check == "cca.binding"
    # and the same forged token with the honest IAK fails on the platform signature
    with pytest.raises(SignatureError) as ei2:
        cca.verify_token(forged, cpak=_json(IAK), challenge=None)
    assert ei2.value.check == "cca.platform.signature"


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(ParseError):
        cca.parse_token(_bytes(GOOD) + b"\x00")


# --------------------------------------------------------------------------- COSE unit tests

_ALGS = {cose.ALG_ES256: (ec.SECP256R1, hashes.SHA256, 32), cose.ALG_ES384: (ec.SECP384R1, hashes.SHA384, 48),
         cose.ALG_ES512: (ec.SECP521R1, hashes.SHA512, 66)}


def _sign1(priv: ec.EllipticCurvePrivateKey, alg: int, payload: bytes, *, tag: bool = True) -> bytes:
    _, hash_cls, size = _ALGS[alg]
    protected = cbor2.dumps({1: alg})
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(priv.sign(tbs, ec.ECDSA(hash_cls())))
    msg = [protected, {}, payload, r.to_bytes(size, "big") + s.to_bytes(size, "big")]
    return cbor2.dumps(cbor2.CBORTag(18, msg) if tag else msg)


@pytest.mark.parametrize("alg", sorted(_ALGS))
@pytest.mark.parametrize("tag", [True, False])
def test_sign1_roundtrip(alg: int, tag: bool) -> None:
    priv = ec.generate_private_key(_ALGS[alg][0]())
    raw = _sign1(priv, alg, b"hello", tag=tag)
    msg = cose.parse_sign1(raw)
    assert msg.tagged is tag and msg.payload == b"hello" and msg.alg == alg
    cose.verify_sign1(msg, priv.public_key())
    cose.verify_sign1(cose.parse_sign1(cbor2.loads(raw)), priv.public_key())  # already decoded
    other = ec.generate_private_key(_ALGS[alg][0]()).public_key()
    with pytest.raises(SignatureError) as ei:
        cose.verify_sign1(msg, other, check="x.y")
    assert ei.value.check == "x.y"


def test_sign1_rejects_curve_mismatch_and_bad_alg() -> None:
    priv = ec.generate_private_key(ec.SECP384R1())
    msg = cose.parse_sign1(_sign1(priv, cose.ALG_ES384, b"p"))
    with pytest.raises(SignatureError):
        cose.verify_sign1(msg, ec.generate_private_key(ec.SECP256R1()).public_key())
    unprot = cose.COSESign1(cbor2.dumps({1: -37}), {1: -37}, {}, b"p", msg.signature, True)
    with pytest.raises(SignatureError):
        cose.verify_sign1(unprot, priv.public_key())
    short = cose.COSESign1(msg.protected, msg.protected_header, {}, b"p", msg.signature[:-1], True)
    with pytest.raises(SignatureError):
        cose.verify_sign1(short, priv.public_key())


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xd2\x80", cbor2.dumps(cbor2.CBORTag(17, [b"", {}, b"", b""])), cbor2.dumps([1, {}, b"", b""]),
     cbor2.dumps([b"\x01", {}, b"", b""]), cbor2.dumps([b"", {}, None, b""]),
     cbor2.dumps([cbor2.dumps({1: -7}), {1: -7}, b"", b""])],
)
def test_parse_sign1_rejects(raw: bytes) -> None:
    with pytest.raises(ParseError):
        cose.parse_sign1(raw)


def test_cose_key_and_point() -> None:
    for curve, crv, size in ((ec.SECP256R1, 1, 32), (ec.SECP384R1, 2, 48), (ec.SECP521R1, 3, 66)):
        pub = ec.generate_private_key(curve()).public_key()
        n = pub.public_numbers()
        x, y = n.x.to_bytes(size, "big"), n.y.to_bytes(size, "big")
        assert cose.cose_key_public_key(cbor2.dumps({1: 2, -1: crv, -2: x, -3: y})).public_numbers() == n
        assert cose.cose_key_public_key({1: 2, -1: crv, -2: x, -3: bool(n.y & 1)}).public_numbers() == n
        assert cose.ec_point_public_key(b"\x04" + x + y).public_numbers() == n
        jwk = {"kty": "EC", "crv": curve.name.replace("secp", "P-").replace("r1", ""),
               "x": base64.urlsafe_b64encode(x).rstrip(b"=").decode(),
               "y": base64.urlsafe_b64encode(y).rstrip(b"=").decode()}
        jwk["crv"] = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[curve.name]
        assert cose.jwk_public_key(jwk).public_numbers() == n
        with pytest.raises(ParseError):
            cose.cose_key_public_key({1: 2, -1: crv, -2: x, -3: bytes(size)})  # off curve
    with pytest.raises(ParseError):
        cose.jwk_public_key({"kty": "RSA"})
    with pytest.raises(ParseError):
        cose.jwk_public_key({"kty": "EC", "crv": "P-256", "x": "!!", "y": "AA"})
    with pytest.raises(ParseError):
        cose.cose_key_public_key(b"\xa1\x01\x01")
    with pytest.raises(ParseError):
        cose.ec_point_public_key(b"\x04" + bytes(64))


# --------------------------------------------------------------------------- totality


def _assert_total(data: bytes) -> None:
    try:
        cca.parse_token(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_parse_token_total_random(data: bytes) -> None:
    _assert_total(data)
    _assert_total(b"\xd9\x01\x8f" + data)  # tag 399 prefix
    _assert_total(b"\xd9\x03\x8b" + data)  # tag 907 prefix
    try:
        cose.parse_sign1(data)
    except ParseError:
        pass


def _seeds() -> list[bytes]:
    out = []
    for rel in (GOOD, GOOD_LEGACY, RMM_LEGACY, BAD_UNWRAPPED):
        p = FIXTURES.root / rel  # at collection time: the test's fixture_data mark checks them
        if p.is_file():
            out.append(p.read_bytes())
    return out


_SEEDS = _seeds()


@pytest.mark.fixture_data(GOOD, GOOD_LEGACY, RMM_LEGACY, BAD_UNWRAPPED)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(max(len(_SEEDS), 1))),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 1 << 20),
)
def test_parse_token_total_mutated(seed: int, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_SEEDS[seed])
    for pos, val in edits:
        data[pos % len(data)] = val
    _assert_total(bytes(data))
    _assert_total(bytes(data[: cut % (len(data) + 1)]))
