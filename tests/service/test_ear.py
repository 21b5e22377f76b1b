"""EAR JWTs: claims, signature, strict verification, JWKS, and the shared signing key file."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tsmr.appraisal import ear
from tsmr.appraisal.model import Finding, Result
from tsmr.errors import SignatureError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def _result(**kw: object) -> Result:
    base = dict(status="affirming", kind="tdx", nonce="ab" * 32,
                findings=[Finding("replay.rtmr3.matched", "info", "rtmr3 matches its log", "executables")],
                trustworthiness={"instance-identity": 2, "executables": 2, "hardware": 2},
                registers=[{"register": "rtmr3", "bank": "sha384", "status": "matched"}], policy_id="default@3")
    base.update(kw)
    return Result(**base)  # type: ignore[arg-type]


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
def test_sign_and_verify(alg: str) -> None:
    key = ear.generate_key(alg)
    token = ear.sign(_result(), key, now=NOW, verifier_id={"developer": "example", "build": "1"})
    header = json.loads(_b64d(token.split(".")[0]))
    assert header == {"alg": alg, "typ": "JWT", "kid": ear.thumbprint(key)}
    claims = ear.verify(token, ear.jwks([key.public_key()]), now=NOW)
    assert claims["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert claims["iat"] == int(NOW.timestamp())
    assert claims["ear.verifier-id"] == {"developer": "example", "build": "1"}
    assert _b64d(claims["eat_nonce"]) == bytes.fromhex("ab" * 32)
    sub = claims["submods"]["tdx"]
    assert sub["ear.status"] == "affirming"
    assert sub["ear.trustworthiness-vector"] == {"instance-identity": 2, "executables": 2, "hardware": 2}
    assert sub["ear.appraisal-policy-id"] == "default@3"
    assert sub["tsmr.findings"] == ["replay.rtmr3.matched"]
    assert sub["tsmr.registers"][0]["register"] == "rtmr3"
    # the same key, given every other way a caller may hold it
    for keys in (key.public_key(), key, [key.public_key()], {ear.thumbprint(key): key.public_key()},
                 ear.jwk(key), [ear.jwk(key)]):
        assert ear.verify(token, keys) == claims


def test_signature_is_raw_r_s_over_the_signing_input() -> None:
    """An independent check of RFC 7518 §3.4: the JWS signature is r || s, 32 bytes each for ES256."""
    key = ear.generate_key("ES256")
    token = ear.sign(_result(), key, now=NOW)
    h, c, s = token.split(".")
    raw = _b64d(s)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.public_key().verify(der, f"{h}.{c}".encode(), ec.ECDSA(hashes.SHA256()))


def test_any_change_is_refused() -> None:
    key = ear.generate_key("ES256")
    keys = ear.jwks([key])
    token = ear.sign(_result(), key, now=NOW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, ch in enumerate(token):
        if ch == ".":
            continue
        for repl in (alphabet[(alphabet.index(ch) + 1) % 64], alphabet[alphabet.index(ch) ^ 1]):
            changed = token[:i] + repl + token[i + 1:]
            with pytest.raises(SignatureError):
                ear.verify(changed, keys)
    for changed in (token + "A", token[:-1], token.replace(".", "..", 1), token + ".", "", "a.b",
                    token.rsplit(".", 1)[0] + ".", token + "="):
        with pytest.raises(SignatureError):
            ear.verify(changed, keys)


def test_claims_re_signed_by_another_key_or_alg_none() -> None:
    key, other = ear.generate_key("ES256"), ear.generate_key("ES256")
    token = ear.sign(_result(), key, now=NOW)
    forged = ear.sign(_result(status="affirming"), other, kid=ear.thumbprint(key), now=NOW)
    with pytest.raises(SignatureError) as info:
        ear.verify(forged, ear.jwks([key]))
    assert info.value.check == "ear.signature"
    h, c, _ = token.split(".")
    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).rstrip(b"=").decode()
    for bad in (f"{none_header}.{c}.", f"{none_header}.{c}.AAAA"):
        with pytest.raises(SignatureError):
            ear.verify(bad, ear.jwks([key]))
    with pytest.raises(SignatureError) as info:  # a P-384 key cannot check an ES256 token
        ear.verify(token, ear.jwks([ear.generate_key("ES384")]))
    assert info.value.check == "ear.key"


def test_time_checks() -> None:
    key = ear.generate_key("ES256")
    token = ear.sign(_result(), key, now=NOW)
    ear.verify(token, key, now=NOW + timedelta(days=30))
    with pytest.raises(SignatureError) as info:
        ear.verify(token, key, now=NOW - timedelta(hours=1))
    assert info.value.check == "ear.iat"
    expiring = ear.sign(_result(), key, now=NOW, extra={"exp": int(NOW.timestamp()) + 60})
    ear.verify(expiring, key, now=NOW)
    with pytest.raises(SignatureError) as info:
        ear.verify(expiring, key, now=NOW + timedelta(minutes=2))
    assert info.value.check == "ear.exp"


def test_thumbprint_follows_rfc7638() -> None:
    key = ear.generate_key("ES384")
    j = ear.jwk(key)
    assert j["crv"] == "P-384" and len(_b64d(j["x"])) == 48 and j["alg"] == "ES384" and j["use"] == "sig"
    canonical = '{"crv":"%s","kty":"EC","x":"%s","y":"%s"}' % (j["crv"], j["x"], j["y"])
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    assert j["kid"] == ear.thumbprint(key.public_key()) == expected


def test_a_result_without_kind_or_nonce() -> None:
    key = ear.generate_key("ES256")
    claims = ear.verify(ear.sign(_result(kind=None, nonce="", status="contraindicated"), key, now=NOW), key)
    assert "eat_nonce" not in claims and claims["submods"]["unknown"]["ear.status"] == "contraindicated"


def _load_in_child(args: tuple[str, str]) -> str:
    path, alg = args
    return ear.jwk(ear.load_or_create_key(path, alg))["kid"]


def test_key_file_created_once_by_racing_processes(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ear.pem"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        kids = pool.map(_load_in_child, [(str(path), "ES256")] * 16, chunksize=1)
    assert len(set(kids)) == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert [p.name for p in path.parent.iterdir()] == ["ear.pem"]  # no temporary files left behind
    # an existing key wins over the algorithm asked for
    assert ear.jwk(ear.load_or_create_key(path, "ES384"))["kid"] == kids[0]


def test_unusable_key_files(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from tsmr.errors import InputError

    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a key")
    with pytest.raises(InputError):
        ear.load_or_create_key(bad)
    ed = tmp_path / "ed.pem"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(InputError):
        ear.load_or_create_key(ed)
    with pytest.raises(InputError):
        ear.generate_key("RS256")
