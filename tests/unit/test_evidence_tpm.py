"""TPM 2.0 quote parsing and verification (tsmr.evidence.tpm).

Real data: keylime's tpm2-tools quote (shared/fixtures/keylime/tpm2-quote, see
MANIFEST.md and expected.json).  Synthetic ECDSA quotes, signed here with a fresh
key, cover the paths the fixture cannot (ECC AKs, wrong magic/type, signer).
"""

from __future__ import annotations

import json
import struct

import pytest
from forge import ecc_public as _ecc_public
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tsmr.algorithms import HashAlg
from tsmr.errors import EvidenceError, InputError, ParseError, SignatureError
from tsmr.evidence import tpm

from conftest import FIXTURES  # noqa: E402

QDIR = FIXTURES.root / "keylime" / "tpm2-quote"  # read once needs_fixture has checked it

needs_fixture = pytest.mark.fixture_data("keylime/tpm2-quote/quote.out")


@pytest.fixture(scope="module")
def kl():
    exp = json.loads((QDIR / "expected.json").read_text())
    return {
        "quote": (QDIR / "quote.out").read_bytes(),
        "sig": (QDIR / "quotesig.out").read_bytes(),
        "pem": (QDIR / "akpub.pem").read_bytes(),
        "tpm2b": (QDIR / "ak.pub").read_bytes(),
        "name": (QDIR / "ak.name").read_bytes(),
        "pcrs": tpm.parse_tpm2_tools_pcrs((QDIR / "quotepcr.out").read_bytes()),
        "nonce": bytes.fromhex(exp["extraData_nonce_hex"]),
        "exp": exp,
    }


# ----------------------------------------------------------------------------- keylime fixture


@needs_fixture
def test_parse_attest_matches_expected(kl):
    q = tpm.parse_attest(kl["quote"])
    exp = kl["exp"]
    assert q.magic == tpm.TPM_GENERATED_VALUE and q.type == tpm.TPM_ST_ATTEST_QUOTE
    assert q.extra_data.hex() == exp["extraData_nonce_hex"]
    assert q.qualified_signer.hex() == exp["qualifiedSigner_hex"]
    assert q.clock_info == tpm.ClockInfo(exp["clock"], exp["resetCount"], exp["restartCount"], exp["safe"])
    assert q.firmware_version == int(exp["firmwareVersion"], 16)
    assert [(s.bank, s.pcrs) for s in q.pcr_selection] == [(HashAlg.SHA256, (15, 16, 22))]
    assert q.pcr_digest.hex() == exp["pcrDigest"]


@needs_fixture
def test_parse_signature_and_public(kl):
    sig = tpm.parse_signature(kl["sig"])
    assert (sig.sig_alg, sig.hash_alg, len(sig.signature)) == (tpm.TPM_ALG_RSASSA, HashAlg.SHA256, 256)
    pub = tpm.parse_public(kl["tpm2b"])
    assert pub.name == kl["name"]
    assert pub.name.hex() == kl["exp"]["ak_name_hex"]
    pem_key = serialization.load_pem_public_key(kl["pem"])
    assert pub.public_key.public_numbers() == pem_key.public_numbers()
    # bare TPMT_PUBLIC too
    assert tpm.parse_public(kl["tpm2b"][2:]).name == pub.name


@needs_fixture
def test_tpm2_tools_pcrs(kl):
    pcrs = kl["pcrs"]
    exp = kl["exp"]["pcrs"]["sha256"]
    assert {i: v.hex() for i, v in pcrs[HashAlg.SHA256].items()} == {int(k): v for k, v in exp.items()}


@needs_fixture
@pytest.mark.parametrize("ak_kind", ["pem", "tpm2b"])
def test_keylime_quote_verifies(kl, ak_kind):
    claims = tpm.verify_quote(kl["quote"], kl["sig"], kl[ak_kind], nonce=kl["nonce"], pcrs=kl["pcrs"])
    assert claims.nonce == kl["nonce"]
    assert claims.pcr_digest.hex() == kl["exp"]["pcrDigest"]
    assert claims.pcr_digest_checked
    assert claims.signature_hash is HashAlg.SHA256
    assert claims.clock_info.clock == 5994
    assert claims.ak_name == (kl["name"] if ak_kind == "tpm2b" else None)


@needs_fixture
def test_keylime_quote_with_hex_pcrs_and_qualified_signer(kl):
    pcrs = {"sha256": {int(k): v for k, v in kl["exp"]["pcrs"]["sha256"].items()}}
    tpm.verify_quote(kl["quote"], kl["sig"], kl["pem"], nonce=kl["nonce"], pcrs=pcrs,
                     qualified_signer=bytes.fromhex(kl["exp"]["qualifiedSigner_hex"]))
    with pytest.raises(EvidenceError) as ei:
        tpm.verify_quote(kl["quote"], kl["sig"], kl["pem"], nonce=kl["nonce"], qualified_signer=kl["name"])
    assert ei.value.check == "tpm.signer"


@needs_fixture
def test_every_quote_byte_flip_fails(kl):
    quote = kl["quote"]
    for i in range(len(quote)):
        bad = bytearray(quote)
        bad[i] ^= 0x01
        try:
            tpm.verify_quote(bytes(bad), kl["sig"], kl["pem"], nonce=kl["nonce"], pcrs=kl["pcrs"])
        except ParseError:
            continue  # a length field now lies; also a rejection
        except EvidenceError as exc:
            expected = {"tpm.attest.magic"} if i < 4 else {"tpm.signature"}
            assert exc.check in expected, (i, exc.check)
        except InputError:
            # the selection now names PCRs we have no values for: cannot be evaluated
            assert 0x5A <= i < 0x62, i
        else:
            pytest.fail(f"flipping byte {i} still verifies")


@needs_fixture
def test_every_signature_byte_flip_fails(kl):
    sig = kl["sig"]
    for i in range(6, len(sig)):  # the RSA signature itself
        bad = bytearray(sig)
        bad[i] ^= 0x80
        with pytest.raises(SignatureError) as ei:
            tpm.verify_quote(kl["quote"], bytes(bad), kl["pem"], nonce=kl["nonce"])
        assert ei.value.check == "tpm.signature"


@needs_fixture
def test_signature_header_tamper(kl):
    # another hash in the header: parsed, but the signature no longer verifies
    bad = kl["sig"][:2] + struct.pack(">H", HashAlg.SHA384) + kl["sig"][4:]
    with pytest.raises(SignatureError):
        tpm.verify_quote(kl["quote"], bad, kl["pem"], nonce=None)
    with pytest.raises(ParseError):
        tpm.verify_quote(kl["quote"], b"\x00\x10" + kl["sig"][2:], kl["pem"], nonce=None)
    with pytest.raises(ParseError):
        tpm.verify_quote(kl["quote"], kl["sig"][:-1], kl["pem"], nonce=None)


@needs_fixture
def test_wrong_nonce(kl):
    with pytest.raises(EvidenceError) as ei:
        tpm.verify_quote(kl["quote"], kl["sig"], kl["pem"], nonce=kl["nonce"][:-1] + b"\x00")
    assert ei.value.check == "tpm.nonce"
    with pytest.raises(EvidenceError) as ei:
        tpm.verify_quote(kl["quote"], kl["sig"], kl["pem"], nonce=b"")
    assert ei.value.check == "tpm.nonce"


@needs_fixture
def test_altered_pcr_values(kl):
    good = kl["pcrs"][HashAlg.SHA256]
    for idx in good:
        bad = dict(good)
        bad[idx] = bytes(31) + b"\x01"
        with pytest.raises(EvidenceError) as ei:
            tpm.verify_quote(kl["quote"], kl["sig"], kl["pem"], nonce=kl["nonce"], pcrs={HashAlg.SHA256: bad})
        assert ei.value.check == "tpm.pcr_digest"
    with pytest.raises(InputError):
        tpm.verify_quote(kl["quote"], kl["sig"], kl["pem"], nonce=kl["nonce"], pcrs={HashAlg.SHA256: {15: bytes(32)}})


@needs_fixture
def test_different_key(kl):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(SignatureError) as ei:
        tpm.verify_quote(kl["quote"], kl["sig"], other, nonce=kl["nonce"])
    assert ei.value.check == "tpm.signature"
    ecc = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(SignatureError) as ei:
        tpm.verify_quote(kl["quote"], kl["sig"], ecc, nonce=kl["nonce"])
    assert ei.value.check == "tpm.signature"


# ----------------------------------------------------------------------------- synthetic ECDSA quotes


def _tpm2b(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def _attest(*, magic=tpm.TPM_GENERATED_VALUE, typ=tpm.TPM_ST_ATTEST_QUOTE, nonce=b"n" * 32,
            signer=b"\x00\x0b" + bytes(32), digest=bytes(32)) -> bytes:
    return (struct.pack(">IH", magic, typ) + _tpm2b(signer) + _tpm2b(nonce)
            + struct.pack(">QIIB", 7, 1, 2, 1) + struct.pack(">Q", 0x1234)
            + struct.pack(">I", 1) + struct.pack(">HB", HashAlg.SHA256, 3) + bytes([0x01, 0x00, 0x00])
            + _tpm2b(digest))


def _ecdsa_sig(key: ec.EllipticCurvePrivateKey, msg: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return struct.pack(">HH", tpm.TPM_ALG_ECDSA, HashAlg.SHA256) + _tpm2b(r.to_bytes(size, "big")) + _tpm2b(
        s.to_bytes(size, "big"))


@pytest.fixture(scope="module")
def eckey():
    return ec.generate_private_key(ec.SECP256R1())


def test_ecdsa_quote_with_tpm2b_public(eckey):
    pcr0 = bytes(range(32))
    digest = HashAlg.SHA256.hash(pcr0)
    pub = _ecc_public(eckey.public_key())
    parsed = tpm.parse_public(pub)
    assert parsed.name[:2] == b"\x00\x0b" and parsed.name[2:] == HashAlg.SHA256.hash(pub[2:])
    attest = _attest(digest=digest)
    claims = tpm.verify_quote(attest, _ecdsa_sig(eckey, attest), pub, nonce=b"n" * 32, pcrs={"sha256": {0: pcr0}})
    assert claims.ak_name == parsed.name
    assert claims.firmware_version == 0x1234
    assert claims.clock_info == tpm.ClockInfo(7, 1, 2, True)
    # TPM2B_ATTEST (size-prefixed) is accepted as well
    tpm.verify_quote(_tpm2b(attest), _ecdsa_sig(eckey, attest), pub, nonce=b"n" * 32)
    # PEM form of the same key
    pem = eckey.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    tpm.verify_quote(attest, _ecdsa_sig(eckey, attest), pem, nonce=b"n" * 32)


def test_bad_magic_is_rejected_even_if_signed(eckey):
    attest = _attest(magic=0xFF544348)
    with pytest.raises(EvidenceError) as ei:
        tpm.verify_quote(attest, _ecdsa_sig(eckey, attest), eckey.public_key(), nonce=None)
    assert ei.value.check == "tpm.attest.magic"


def test_other_attest_type_is_rejected(eckey):
    attest = _attest(typ=0x8017)  # TPM_ST_ATTEST_CERTIFY
    with pytest.raises(ParseError) as ei:
        tpm.verify_quote(attest, _ecdsa_sig(eckey, attest), eckey.public_key(), nonce=None)
    assert ei.value.field == "type"


def test_ecdsa_wrong_signature(eckey):
    attest = _attest()
    sig = _ecdsa_sig(eckey, attest + b"x")
    with pytest.raises(SignatureError) as ei:
        tpm.verify_quote(attest, sig, eckey.public_key(), nonce=None)
    assert ei.value.check == "tpm.signature"


@pytest.mark.parametrize("data", [b"", b"\xff", b"\xffTCG\x80\x18", bytes(200), b"\xff" * 133])
def test_parsers_are_total_on_junk(data):
    for fn in (tpm.parse_attest, tpm.parse_signature, tpm.parse_public, tpm.parse_tpm2_tools_pcrs):
        try:
            fn(data)
        except ParseError:
            pass


def test_parsers_total_on_truncations(eckey):
    attest = _attest()
    pub = _ecc_public(eckey.public_key())
    sig = _ecdsa_sig(eckey, attest)
    for blob, fn in ((attest, tpm.parse_attest), (pub, tpm.parse_public), (sig, tpm.parse_signature)):
        for n in range(len(blob)):
            try:
                fn(blob[:n])
            except ParseError:
                pass
        with pytest.raises(ParseError):
            fn(blob + b"\x00")
