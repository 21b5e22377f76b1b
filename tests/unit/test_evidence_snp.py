"""AMD SEV-SNP report parsing and verification (tsmr.evidence.snp).

Real data: go-sev-guest's Milan attestation.bin with its VCEK and the AMD KDS
Milan ASK/ARK (shared/fixtures/go-sev-guest, MANIFEST.md and expected.json).
A synthetic chain made here (own ARK/ASK/VCEK keys) covers what the fixture
cannot: TCB and CHIP_ID mismatches, validity periods, VLEK and newer versions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tsmr.errors import (
    CollateralError,
    EvidenceError,
    InputError,
    ParseError,
    SignatureError,
)
from tsmr.evidence import snp

# AMD's real VCEKs have serial number 0, which cryptography warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number:UserWarning",
                                        "ignore::cryptography.utils.CryptographyDeprecationWarning")

from conftest import FIXTURES  # noqa: E402

SDIR = FIXTURES.root / "go-sev-guest"  # read once needs_fixture has checked it

needs_fixture = pytest.mark.fixture_data("go-sev-guest/attestation.bin")


@pytest.fixture(scope="module")
def sev():
    exp = json.loads((SDIR / "expected.json").read_text())["go-sev-guest/attestation.bin"]
    ask, ark = snp.split_chain((SDIR / "milan.testcer").read_bytes())
    return {
        "report": (SDIR / "attestation.bin").read_bytes(),
        "vcek": (SDIR / "vcek.testcer").read_bytes(),
        "ask": ask,
        "ark": ark,
        "exp": exp,
        "report_data": bytes.fromhex(exp["report_data"]),
    }


def _verify(sev, report=None, **kw):
    # The go-sev-guest report's guest policy (0xB0000) allows debugging: accepted here on purpose.
    args = {"vcek": sev["vcek"], "ask": sev["ask"], "ark": sev["ark"], "report_data": sev["report_data"],
            "trusted_arks": [sev["ark"]], "allow_debug": True}
    args.update(kw)
    return snp.verify_report(sev["report"] if report is None else report, **args)


# ----------------------------------------------------------------------------- go-sev-guest fixture


@needs_fixture
def test_parse_report_matches_expected(sev):
    r = snp.parse_report(sev["report"])
    exp = sev["exp"]
    assert r.version == 2
    for field in ("report_data", "host_data", "family_id", "image_id", "report_id", "report_id_ma",
                  "measurement", "chip_id"):
        assert getattr(r, field).hex() == exp[field], field
    assert r.reported_tcb.raw == exp["reported_tcb"]
    k = exp["vcek_kds_tcb"]
    assert (r.reported_tcb.bootloader, r.reported_tcb.tee, r.reported_tcb.snp, r.reported_tcb.microcode) == (
        k["blSPL"], k["teeSPL"], k["snpSPL"], k["ucodeSPL"])
    assert r.policy == 0xB0000
    assert f"{r.current_major}.{r.current_minor}" == exp["min_version"]
    assert r.signature_algo == 1 and r.signing_key == "vcek"
    assert r.cpuid_fam_id is None and r.launch_mit_vector is None  # not in version 2


@needs_fixture
def test_fixture_verifies(sev):
    claims = _verify(sev)
    assert claims.report_data == sev["report_data"]
    assert claims.measurement.hex() == sev["exp"]["measurement"]
    assert claims.signing_key == "vcek"
    assert claims.tcb_checked
    assert claims.ark_sha256 == hashlib.sha256(sev["ark"].public_bytes(serialization.Encoding.DER)).digest()
    # PEM/DER bytes, no trusted list, no report_data check, and a time inside all validity periods
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
    snp.verify_report(sev["report"], vcek=sev["vcek"], ask=pem(sev["ask"]), ark=pem(sev["ark"]),
                      report_data=None, now=dt.datetime(2025, 1, 1, tzinfo=dt.UTC), allow_debug=True)


@needs_fixture
def test_vcek_tcb_extensions(sev):
    assert snp.vcek_tcb(sev["vcek"]) == sev["exp"]["vcek_kds_tcb"]


@needs_fixture
def test_every_signed_byte_flip_fails_signature(sev):
    rep = sev["report"]
    for i in range(snp.SIGNED_SIZE):
        bad = bytearray(rep)
        bad[i] ^= 0x01
        with pytest.raises(SignatureError) as ei:
            _verify(sev, report=bytes(bad))
        assert ei.value.check == "snp.signature", i


@needs_fixture
def test_every_signature_byte_flip_fails(sev):
    rep = sev["report"]
    for i in range(snp.SIGNED_SIZE, snp.REPORT_SIZE):
        bad = bytearray(rep)
        bad[i] ^= 0x80
        with pytest.raises(SignatureError) as ei:
            _verify(sev, report=bytes(bad))
        assert ei.value.check == "snp.signature", i


@needs_fixture
def test_wrong_report_data(sev):
    with pytest.raises(EvidenceError) as ei:
        _verify(sev, report_data=bytes(64))
    assert ei.value.check == "snp.report_data"
    with pytest.raises(InputError):
        _verify(sev, report_data=b"\x01\x02\x03\x04\x05")


@needs_fixture
def test_wrong_ark_and_chain(sev):
    g_ask, g_ark = snp.split_chain((SDIR / "trust" / "ask_ark_genoa.pem").read_bytes())
    with pytest.raises(CollateralError) as ei:
        _verify(sev, trusted_arks=[g_ark])
    assert ei.value.check == "snp.chain.ark"
    with pytest.raises(CollateralError) as ei:
        _verify(sev, ask=g_ask, ark=g_ark, trusted_arks=[g_ark])
    assert ei.value.check == "snp.chain.vcek"
    with pytest.raises(CollateralError) as ei:
        _verify(sev, ark=g_ark, trusted_arks=[g_ark])
    assert ei.value.check == "snp.chain.ask"
    with pytest.raises(CollateralError) as ei:
        _verify(sev, ark=sev["ask"])  # not self-signed: ASK is not issued by itself
    assert ei.value.check.startswith("snp.chain.")


@needs_fixture
def test_validity_period(sev):
    with pytest.raises(CollateralError) as ei:
        _verify(sev, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert ei.value.check == "snp.chain.vcek"
    with pytest.raises(InputError):
        _verify(sev, now=dt.datetime(2025, 1, 1))


@needs_fixture
def test_other_key_signs(sev):
    # the ASK's certificate as "VCEK" is RSA, not P-384
    with pytest.raises(SignatureError) as ei:
        _verify(sev, vcek=sev["ask"])
    assert ei.value.check == "snp.signature"


# ----------------------------------------------------------------------------- parsers


@pytest.mark.parametrize("n", [0, 1, 0x2A0, 0x49F, 0x4A1])
def test_parse_report_wrong_size(n):
    with pytest.raises(ParseError):
        snp.parse_report(bytes(n))


def test_parse_report_version_1_rejected():
    with pytest.raises(ParseError) as ei:
        snp.parse_report(struct.pack("<I", 1) + bytes(0x49C))
    assert ei.value.field == "VERSION"


def test_parse_report_v5_fields():
    raw = bytearray(0x4A0)
    struct.pack_into("<I", raw, 0, 5)
    raw[0x188:0x18B] = bytes([0x1A, 0x11, 0x00])  # Turin
    struct.pack_into("<Q", raw, 0x180, int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little"))
    struct.pack_into("<QQ", raw, 0x1F8, 7, 8)
    r = snp.parse_report(bytes(raw))
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x1A, 0x11, 0)
    assert (r.launch_mit_vector, r.current_mit_vector) == (7, 8)
    assert (r.reported_tcb.fmc, r.reported_tcb.bootloader, r.reported_tcb.tee, r.reported_tcb.snp,
            r.reported_tcb.microcode) == (1, 2, 3, 4, 9)


def _table(entries):
    head = len(entries) * 24 + 24
    table, blobs = b"", b""
    for guid, data in entries:
        table += guid.bytes + struct.pack("<II", head + len(blobs), len(data))
        blobs += data
    return table + bytes(24) + blobs


def test_parse_cert_table():
    blob = _table([(snp.GUID_VCEK, b"vcek-der"), (snp.GUID_ASK, b"ask"), (snp.GUID_ARK, b"ark!"),
                   (uuid.UUID(int=5), b"x")])
    entries = snp.parse_cert_table(blob)
    assert [(e.name, e.data) for e in entries] == [("vcek", b"vcek-der"), ("ask", b"ask"), ("ark", b"ark!"),
                                                   (str(uuid.UUID(int=5)), b"x")]
    assert snp.parse_cert_table(bytes(24) + b"pad") == ()
    with pytest.raises(ParseError):
        snp.parse_cert_table(blob[:24])  # no terminator
    with pytest.raises(ParseError):
        snp.parse_cert_table(snp.GUID_VLEK.bytes + struct.pack("<II", 0, 10**6) + bytes(24))
    for n in range(len(blob)):
        try:
            snp.parse_cert_table(blob[:n])
        except ParseError:
            pass


def test_svsm_report_data():
    assert snp.svsm_report_data(b"nonce", b"manifest") == hashlib.sha512(b"noncemanifest").digest()
    assert len(snp.svsm_report_data(b"", b"")) == 64


# ----------------------------------------------------------------------------- synthetic chain


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, issuer, pub, key, *, exts=(), days=(0, 365)):
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(pub)
         .serial_number(1).not_valid_before(now + dt.timedelta(days=days[0]))
         .not_valid_after(now + dt.timedelta(days=days[1])))
    for oid, value in exts:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    return b.sign(key, hashes.SHA384(), rsa_padding=pss)


@pytest.fixture(scope="module")
def synth():
    ark_k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_k = ec.generate_private_key(ec.SECP384R1())
    chip = bytes(range(64))
    spl = lambda n: bytes([0x02, 0x01, n])
    exts = [("1.3.6.1.4.1.3704.1.3.1", spl(3)), ("1.3.6.1.4.1.3704.1.3.2", spl(0)),
            ("1.3.6.1.4.1.3704.1.3.3", spl(8)), ("1.3.6.1.4.1.3704.1.3.8", spl(115)),
            ("1.3.6.1.4.1.3704.1.4", chip)]
    ark = _cert("ARK-Test", "ARK-Test", ark_k.public_key(), ark_k)
    ask = _cert("SEV-Test", "ARK-Test", ask_k.public_key(), ark_k)
    vcek = _cert("SEV-VCEK", "SEV-Test", vcek_k.public_key(), ask_k, exts=exts, days=(10, 100))
    return {"ark": ark, "ask": ask, "vcek": vcek, "key": vcek_k, "chip": chip}


def _report(key, *, version=3, tcb=(3, 0, 8, 115), chip=bytes(range(64)), signer_info=0, rd=b"\x11" * 64):
    raw = bytearray(0x4A0)
    struct.pack_into("<I", raw, 0, version)
    struct.pack_into("<I", raw, 0x34, 1)
    struct.pack_into("<I", raw, 0x48, signer_info)
    raw[0x50:0x90] = rd
    raw[0x188:0x18B] = bytes([0x19, 0x01, 0x01])  # Milan/Genoa family: classic TCB layout
    bl, tee, snp_, uc = tcb
    raw[0x180:0x188] = bytes([bl, tee, 0, 0, 0, 0, snp_, uc])
    raw[0x1A0:0x1E0] = chip
    r, s = decode_dss_signature(key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
    raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(raw)


def _sv(synth, rep, **kw):
    args = {"vcek": synth["vcek"], "ask": synth["ask"], "ark": synth["ark"], "report_data": b"\x11" * 64,
            "trusted_arks": [synth["ark"]]}
    args.update(kw)
    return snp.verify_report(rep, **args)


def test_synthetic_chain_verifies(synth):
    claims = _sv(synth, _report(synth["key"]), now=dt.datetime(2025, 2, 1, tzinfo=dt.UTC))
    assert claims.tcb_checked and claims.version == 3
    assert claims.report.cpuid_fam_id == 0x19


def test_synthetic_tcb_mismatch(synth):
    with pytest.raises(EvidenceError) as ei:
        _sv(synth, _report(synth["key"], tcb=(3, 0, 7, 115)))
    assert ei.value.check == "snp.tcb"
    claims = _sv(synth, _report(synth["key"], tcb=(3, 0, 7, 115)), check_tcb=False)
    assert not claims.tcb_checked


def test_synthetic_chip_id_mismatch(synth):
    with pytest.raises(EvidenceError) as ei:
        _sv(synth, _report(synth["key"], chip=bytes(64)))
    assert ei.value.check == "snp.chip_id"
    # MASK_CHIP_ID (signer_info bit 1) zeroes CHIP_ID on purpose
    _sv(synth, _report(synth["key"], chip=bytes(64), signer_info=2))


def test_synthetic_vlek_skips_tcb(synth):
    claims = _sv(synth, _report(synth["key"], tcb=(0, 0, 0, 0), signer_info=1 << 2))
    assert claims.signing_key == "vlek" and not claims.tcb_checked


def test_synthetic_vcek_not_yet_valid(synth):
    with pytest.raises(CollateralError) as ei:
        _sv(synth, _report(synth["key"]), now=dt.datetime(2025, 1, 2, tzinfo=dt.UTC))
    assert ei.value.check == "snp.chain.vcek"


def test_synthetic_wrong_signature_algo(synth):
    raw = bytearray(_report(synth["key"]))
    struct.pack_into("<I", raw, 0x34, 2)
    with pytest.raises(SignatureError) as ei:
        _sv(synth, bytes(raw))
    assert ei.value.check == "snp.signature"
