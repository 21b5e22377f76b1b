"""Emulated Arm CCA attestation tokens (tsmr.backends.emulated_evidence.cca) against the CCA verifier."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

import tsmr
from tsmr import HashAlg, InputError
from tsmr.backends.emulated import EmulatedRegisterSet, initialise
from tsmr.errors import EvidenceError, ParseError, SignatureError
from tsmr.evidence import cca
from tsmr.backends.emulated_evidence.cca import (
    EmulatedCCASigner,
    _sign1_es384,
    emulated_cca_token,
)

from conftest import FIXTURES  # noqa: E402

RMM_LEGACY = "ccatoken/cca_token_rmm_legacy.cbor"

CHALLENGE = bytes(range(64))
_ALG_TEXT = {HashAlg.SHA256: "sha-256", HashAlg.SHA512: "sha-512"}


def _cpak(path: Path) -> ec.EllipticCurvePublicKey:
    key = load_pem_public_key(path.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _extended_cca(alg: HashAlg) -> EmulatedRegisterSet:
    """An emulated:cca register set in *alg*, every REM extended to a distinct non-zero value."""
    initialise("cca", options={"hash": alg.kernel_name})
    regs = tsmr.open("emulated:cca")
    assert isinstance(regs, EmulatedRegisterSet)
    for i in range(4):
        regs.extend(f"rem{i}", {alg: hashlib.new(alg.kernel_name, f"event {i}".encode()).digest()})
    return regs


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> EmulatedCCASigner:
    return EmulatedCCASigner(tmp_path_factory.mktemp("cca") / "rmm")


def _token(signer: EmulatedCCASigner, **kw: object) -> bytes:
    args: dict[str, object] = {"challenge": CHALLENGE, "rim": b"\x11" * 32, "rems": [bytes([i + 1]) * 32 for i in range(4)]}
    args.update(kw)
    return signer.token(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- registers round trip


@pytest.mark.parametrize("alg", [HashAlg.SHA256, HashAlg.SHA512])
def test_emulated_registers_verify_with_trusted_cpak(state_dir: Path, alg: HashAlg) -> None:
    with _extended_cca(alg) as regs:
        want = {r.name: regs.read(r.name)[alg] for r in regs.registers()}
        token, cpak_pem = emulated_cca_token(regs, CHALLENGE)
        assert cpak_pem == regs.dir / "rmm" / "cpak.pem"
    assert all(len(v) == alg.digest_size for v in want.values())
    assert all(want[f"rem{i}"] != bytes(alg.digest_size) for i in range(4))
    claims = cca.verify_token(token, cpak=_cpak(cpak_pem), challenge=CHALLENGE)
    assert claims.registers == want
    assert claims.hash_algorithm == _ALG_TEXT[alg]
    assert claims.realm.public_key_hash_algo_id == _ALG_TEXT[alg]
    assert len(claims.platform.challenge) == alg.digest_size
    assert claims.platform.profile == "http://arm.com/CCA-SSD/1.0.0"
    assert claims.realm.profile is None
    assert claims.personalization_value == bytes(64)
    assert claims.instance_id[:1] == b"\x01" and len(claims.instance_id) == 33
    assert len(claims.implementation_id) == 32
    assert claims.platform_sw_components and all("emulated" in (c.measurement_type or "")
                                                 for c in claims.platform_sw_components)
    tok = cca.parse_token(token)
    assert tok.collection_tag == cca.TAG_CCA_LEGACY
    assert tok.platform.alg == tok.realm.alg == -35 and tok.platform.tagged and tok.realm.tagged


def test_only_emulated_cca_register_sets(state_dir: Path) -> None:
    with EmulatedRegisterSet("tdx") as regs, pytest.raises(InputError, match="emulated:cca"):
        emulated_cca_token(regs, CHALLENGE)
    with pytest.raises(InputError):
        emulated_cca_token(object(), CHALLENGE)


# --------------------------------------------------------------------------- failures


def test_other_cpak_fails_platform_signature(signer: EmulatedCCASigner) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(SignatureError) as ei:
        cca.verify_token(_token(signer), cpak=other, challenge=CHALLENGE)
    assert ei.value.check == "cca.platform.signature"


def test_wrong_challenge(signer: EmulatedCCASigner) -> None:
    with pytest.raises(EvidenceError) as ei:
        cca.verify_token(_token(signer), cpak=_cpak(signer.cpak_pem), challenge=bytes(64))
    assert ei.value.check == "cca.challenge"
    assert not isinstance(ei.value, SignatureError)


def _flip_each(data: bytes, region: bytes, cpak: ec.EllipticCurvePublicKey) -> dict[str, int]:
    start = data.find(region)
    assert start > 0 and data.find(region, start + 1) == -1
    outcomes: dict[str, int] = {}
    for i in range(start, start + len(region)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        try:
            cca.verify_token(bytes(bad), cpak=cpak, challenge=CHALLENGE)
        except ParseError:
            outcomes["parse"] = outcomes.get("parse", 0) + 1
        except EvidenceError as exc:
            outcomes[exc.check] = outcomes.get(exc.check, 0) + 1
        else:  # pragma: no cover - would be a forgery
            pytest.fail(f"token with byte {i - start} of the region flipped verified")
    return outcomes


@pytest.mark.parametrize("which", ["platform", "realm"])
def test_tamper_every_payload_byte(signer: EmulatedCCASigner, which: str) -> None:
    data = _token(signer)
    payload = getattr(cca.parse_token(data), which).payload
    outcomes = _flip_each(data, payload, _cpak(signer.cpak_pem))
    # The realm token is checked first, so a flip in either payload shows up as
    # that token's signature failure, or as a parse error (CBOR heads, RAK point).
    assert set(outcomes) <= {"parse", f"cca.{which}.signature"}, outcomes
    # Every flip in the 96 RAK coordinate bytes leaves the curve (a parse error);
    # of the rest, only CBOR heads and claim keys may fail to parse.
    off_curve = 96 if which == "realm" else 0
    assert outcomes.get(f"cca.{which}.signature", 0) > 0.8 * (len(payload) - off_curve), outcomes


@pytest.mark.parametrize("which", ["platform", "realm"])
def test_tamper_signature_names_the_check(signer: EmulatedCCASigner, which: str) -> None:
    data = _token(signer)
    sig = getattr(cca.parse_token(data), which).signature
    assert len(sig) == 96
    assert _flip_each(data, sig, _cpak(signer.cpak_pem)) == {f"cca.{which}.signature": 96}


# --------------------------------------------------------------------------- structure


def test_claim_keys_match_rmm_fixture(signer: EmulatedCCASigner) -> None:
    ref = cca.parse_token(FIXTURES.read(RMM_LEGACY))
    ours = cca.parse_token(_token(signer))
    for which in ("realm", "platform"):
        ref_keys = set(cbor2.loads(getattr(ref, which).payload))
        our_keys = set(cbor2.loads(getattr(ours, which).payload))
        assert our_keys == ref_keys, which
    assert ours.realm.protected == ref.realm.protected == ours.platform.protected
    assert len(ours.realm_claims.public_key) == len(ref.realm_claims.public_key) == 97
    assert ours.platform_claims.profile == ref.platform_claims.profile


def test_keys_persist_and_private_keys_are_private(tmp_path: Path) -> None:
    d = tmp_path / "rmm"
    first = EmulatedCCASigner(d)
    pem = first.cpak_pem.read_bytes()
    tok1 = _token(first)
    second = EmulatedCCASigner(d)
    tok2 = _token(second, challenge=b"\x42" * 64)
    assert second.cpak_pem.read_bytes() == pem
    cpak = _cpak(second.cpak_pem)
    cca.verify_token(tok1, cpak=cpak, challenge=CHALLENGE)
    cca.verify_token(tok2, cpak=cpak, challenge=b"\x42" * 64)
    assert cca.parse_token(tok1).realm_claims.public_key == cca.parse_token(tok2).realm_claims.public_key
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("cpak.key", "rak.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    assert b"PRIVATE" not in pem and pem.startswith(b"-----BEGIN PUBLIC KEY-----")


def test_challenge_length_rules(signer: EmulatedCCASigner) -> None:
    for bad in (31, 65, 0):
        with pytest.raises(InputError, match="challenge"):
            _token(signer, challenge=b"\x07" * bad)
    short = b"\x07" * 32
    token = _token(signer, challenge=short)
    padded = short + bytes(32)
    assert cca.verify_token(token, cpak=_cpak(signer.cpak_pem), challenge=padded).challenge == padded


def test_measurement_sizes_and_algorithm_are_checked(signer: EmulatedCCASigner) -> None:
    with pytest.raises(InputError, match="rim"):
        _token(signer, rim=bytes(64))
    with pytest.raises(InputError, match="rem2"):
        _token(signer, rems=[bytes(32), bytes(32), bytes(31), bytes(32)])
    with pytest.raises(InputError, match="4 REMs"):
        _token(signer, rems=[bytes(32)] * 3)
    with pytest.raises(InputError, match="sha-512"):
        _token(signer, hash_algorithm="sha-384", rim=bytes(48), rems=[bytes(48)] * 4)
    with pytest.raises(InputError, match="personalization"):
        _token(signer, personalization_value=bytes(32))
    token = _token(signer, hash_algorithm="sha-512", rim=b"\x01" * 64, rems=[b"\x02" * 64] * 4,
                   personalization_value=b"\x03" * 64)
    claims = cca.verify_token(token, cpak=_cpak(signer.cpak_pem), challenge=CHALLENGE)
    assert claims.rim == b"\x01" * 64 and claims.personalization_value == b"\x03" * 64


@pytest.mark.parametrize("crv", [[1], {2: 3}])
def test_unhashable_cose_key_curve_is_a_parse_error(signer: EmulatedCCASigner, crv: object) -> None:
    """A realm token whose RAK is a COSE_Key with an array/map curve is malformed, not a crash."""
    data = _token(signer)
    tok = cca.parse_token(data)
    claims = dict(cbor2.loads(tok.realm.payload))
    claims[44237] = cbor2.dumps({1: 2, -1: crv, -2: bytes(48), -3: bytes(48)})
    realm = _sign1_es384(ec.generate_private_key(ec.SECP384R1()), cbor2.dumps(claims))
    forged = cbor2.dumps(cbor2.CBORTag(399, {44234: tok.platform_token, 44241: realm}))
    with pytest.raises(ParseError) as ei:
        cca.parse_token(forged)
    assert ei.value.field == "realm.public_key"
