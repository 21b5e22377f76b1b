"""EAR JWTs: claims, signature, strict verification, JWKS, and the shared signing key file."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
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


# -- keys from files, and `tsmr ear` for relying parties ------------------------------------------

def test_public_keys_from_every_file_form(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from tsmr.errors import InputError

    key = ear.generate_key("ES384")
    pub = key.public_key()
    want = ear.thumbprint(pub)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "verifier")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pub).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1)).sign(key, hashes.SHA384()))
    forms = {
        "private PEM": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()),
        "public PEM": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "certificate": cert.public_bytes(serialization.Encoding.PEM),
        "JWK": json.dumps(ear.jwk(pub)).encode(),
        "JWKS": json.dumps(ear.jwks([pub, key])).encode(),
    }
    for form, data in forms.items():
        got = ear.load_public_keys(data, what=form)
        assert [ear.thumbprint(k) for k in got] == [want], form
    assert len(ear.jwks([pub, key, pub])["keys"]) == 1  # one key published once
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for bad, message in ((rsa_pem, "EC keys"), (p521, "P-256 or P-384"), (b"hello", "not a PEM"),
                         (b"{", "not JSON"), (b'{"keys": 3}', "not a JWK"), (b'{"keys": []}', "no key")):
        with pytest.raises(InputError, match=message):
            ear.load_public_keys(bad)


def _cli(*args: str, stdin: str | None = None) -> "subprocess.CompletedProcess[str]":

    return subprocess.run([sys.executable, "-m", "tsmr", "ear", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_ear_verify_command_names_the_failed_check(tmp_path: Path) -> None:
    key_path = tmp_path / "key.pem"
    assert _cli("key", str(key_path)).returncode == 0
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    key = ear.load_key(key_path.read_bytes())
    jwks_doc = _cli("jwks", str(key_path), str(key_path))
    assert jwks_doc.returncode == 0 and json.loads(jwks_doc.stdout) == ear.jwks([key])
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(jwks_doc.stdout)
    at = "2025-06-01T12:00:00+00:00"

    warning = ear.sign(_result(status="warning"), key, now=NOW)
    token = tmp_path / "ear.jwt"
    token.write_text(warning + "\n")
    ok = _cli("verify", str(token), "--jwks", str(jwks_file), "--at", at, "--nonce", "ab" * 32, "--require", "warning")
    assert ok.returncode == 0, ok.stderr
    assert "the EAR verifies" in ok.stdout and "warning" in ok.stdout
    piped = _cli("verify", "-", "--key", str(key_path), "--at", at, "--json", stdin=warning)
    assert piped.returncode == 0 and json.loads(piped.stdout)["submods"][0]["findings"] == ["replay.rtmr3.matched"]

    checks = {
        "ear.status": ("verify", str(token), "--jwks", str(jwks_file), "--at", at, "--require", "affirming"),
        "ear.nonce": ("verify", str(token), "--jwks", str(jwks_file), "--at", at, "--nonce", "cd" * 32),
        "ear.iat": ("verify", str(token), "--jwks", str(jwks_file), "--at", "2025-06-01T11:00:00+00:00"),
    }
    other_path = tmp_path / "other.pem"
    assert _cli("key", str(other_path)).returncode == 0
    checks["ear.key"] = ("verify", str(token), "--key", str(other_path), "--at", at)
    h, p, s = warning.split(".")
    forged = tmp_path / "forged.jwt"
    forged.write_text(f"{h}.{p}.{s[:-2]}{'A' if s[-2] != 'A' else 'Q'}{s[-1]}")
    checks["ear.signature"] = ("verify", str(forged), "--jwks", str(jwks_file), "--at", at)
    for check, args in checks.items():
        r = _cli(*args)
        assert r.returncode == 1 and f"{check}:" in r.stderr, (check, r.stdout, r.stderr)
    assert _cli("verify", str(token)).returncode == 2  # no key given: a usage error
    assert _cli("verify", str(token), "--jwks", str(jwks_file), "--require", "bogus").returncode == 2
