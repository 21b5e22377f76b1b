"""Tests for tsmr.evidence.tdx: parsing and verification of Intel TDX quotes v4/v5.

Fixtures come from $TSMR_FIXTURES (see tests/conftest.py), go-tdx-guest/* and
trustee/verifier-tdx/*; tests skip with the missing path named when they are absent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("cryptography")

from tsmr.errors import CollateralError, EvidenceError, ParseError, SignatureError
from tsmr.evidence import tdx

from conftest import FIXTURES  # noqa: E402

UTC = dt.UTC
V4_TIME = dt.datetime(2023, 7, 1, 1, 0, tzinfo=UTC)  # go-tdx-guest verify_test currentTime
V5_TIME = dt.datetime(2026, 2, 3, 1, 0, tzinfo=UTC)


def _read(rel: str) -> bytes:
    return FIXTURES.read(rel)


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(_read("go-tdx-guest/expected.json"))


@pytest.fixture(scope="module")
def v4() -> bytes:
    return _read("go-tdx-guest/tdx_prod_quote_SPR_E4.dat")


@pytest.fixture(scope="module")
def v5() -> bytes:
    return _read("go-tdx-guest/quote_v5_sample.dat")


@pytest.fixture(scope="module")
def collateral() -> tdx.Collateral:
    """The go-tdx-guest sample collateral for FMSPC 50806f000000 (the SPR E4 quote)."""
    return tdx.Collateral.from_pcs(
        tcb_info_response=_read("go-tdx-guest/sample_tcbInfo_response"),
        tcb_info_issuer_chain=_read("go-tdx-guest/tcbinfo_issuer_chain.pem"),
        pck_crl=_read("go-tdx-guest/pckcrl"),
        pck_crl_issuer_chain=_read("go-tdx-guest/pckcrl_issuer_chain.pem"),
        qe_identity_response=_read("go-tdx-guest/sample_qeIdentity_response"),
        qe_identity_issuer_chain=_read("go-tdx-guest/qeidentity_issuer_chain.pem"),
        root_ca_crl=_read("go-tdx-guest/rootcrl.der"),
    )


def _flip(data: bytes, i: int) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


# ------------------------------------------------------------------ parsing


def test_parse_v4_fields(v4, expected):
    exp = expected["go-tdx-guest/tdx_prod_quote_SPR_E4.dat"]
    q = tdx.parse_quote(v4)
    assert q.version == 4 and q.body_type == tdx.BODY_TYPE_TDX10
    assert q.header.att_key_type == 2 and q.header.tee_type == 0x81
    assert q.header.qe_vendor_id == tdx.INTEL_QE_VENDOR_ID
    assert q.body.mrtd.hex() == exp["mrtd"]
    assert [r.hex() for r in q.body.rtmrs] == exp["rtmr"]
    assert q.body.report_data.hex() == exp["report_data"]
    assert len(q.signed_data) == 48 + 584
    assert q.trailing == 39  # the SPR sample carries 39 bytes of padding (formats.md §5.2)
    assert q.pck_chain_pem.count(b"BEGIN CERTIFICATE") == 3


def test_parse_v5_body_type_3(v5, expected):
    exp = expected["go-tdx-guest/quote_v5_sample.dat"]
    q = tdx.parse_quote(v5)
    assert q.version == 5 and q.body_type == tdx.BODY_TYPE_TDX15
    assert len(q.signed_data) == 48 + 6 + 648
    assert q.body.tee_tcb_svn_2 is not None and len(q.body.mrservicetd) == 48
    assert q.body.mrtd.hex() == exp["mrtd"]
    assert [r.hex() for r in q.body.rtmrs] == exp["rtmr"]


def test_cos113_rtmrs(expected):
    exp = expected["go-tdx-guest/ccel/cos-113-tdx-quote.dat"]
    q = tdx.parse_quote(_read("go-tdx-guest/ccel/cos-113-tdx-quote.dat"))
    assert q.body.mrtd.hex() == exp["mrtd"]
    assert [r.hex() for r in q.body.rtmrs] == exp["rtmr"]
    assert q.body.report_data == bytes(64)
    assert q.trailing > 0  # 8000-byte outblob with zero padding


@pytest.mark.parametrize("n,version,body_type", [(4, 4, 2), (5, 5, 3), (6, 4, 2)])
def test_parse_trustee_quotes(n, version, body_type):
    q = tdx.parse_quote(_read(f"trustee/verifier-tdx/tdx_quote_{n}.dat"))
    assert (q.version, q.body_type) == (version, body_type)


def test_parse_tdreport():
    r = tdx.parse_tdreport(_read("go-tdx-guest/report.dat"))
    assert len(r.report_data) == 64 and len(r.mrtd) == 48 and len(r.rtmr3) == 48
    with pytest.raises(ParseError):
        tdx.parse_tdreport(bytes(1023))


def test_parse_rejects_bad_header(v4):
    for off, fld in ((0, "version"), (2, "att_key_type"), (4, "tee_type")):
        bad = bytearray(v4)
        bad[off] = 0x07  # not 5: flipping version 4 -> 5 would give a (malformed) v5 quote
        with pytest.raises(ParseError) as ei:
            tdx.parse_quote(bytes(bad))
        assert ei.value.field == fld and ei.value.offset == off


def test_parse_rejects_huge_sig_len(v4):
    bad = bytearray(v4)
    bad[632:636] = (0xFFFFFFF0).to_bytes(4, "little")
    with pytest.raises(ParseError) as ei:
        tdx.parse_quote(bytes(bad))
    assert ei.value.field == "sig_data_len"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_parse_total_random(data):
    try:
        tdx.parse_quote(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=6000),
    pos=st.integers(min_value=0, max_value=6000),
    val=st.integers(min_value=0, max_value=255),
)
def test_parse_total_truncated_and_mutated(v4, cut, pos, val):
    data = bytearray(v4[: cut % (len(v4) + 1)])
    if data:
        data[pos % len(data)] = val
    try:
        tdx.parse_quote(bytes(data))
    except ParseError:
        pass


# ------------------------------------------------------------------ verification


def test_v4_verifies_without_collateral(v4, expected):
    claims = tdx.verify_quote(v4, now=V4_TIME)
    exp = expected["go-tdx-guest/tdx_prod_quote_SPR_E4.dat"]
    assert claims.registers["mrtd"].hex() == exp["mrtd"]
    assert [claims.registers[f"rtmr{i}"].hex() for i in range(4)] == exp["rtmr"]
    assert claims.fmspc.hex() == "50806f000000"
    assert claims.tcb_status is None
    assert set(claims.checks) == {
        "tdx.quote.signature",
        "tdx.pck_chain",
        "tdx.qe_report.signature",
        "tdx.qe_report.binding",
    }


def test_v4_report_data(v4, expected):
    rd = bytes.fromhex(expected["go-tdx-guest/tdx_prod_quote_SPR_E4.dat"]["report_data"])
    assert "tdx.report_data" in tdx.verify_quote(v4, now=V4_TIME, report_data=rd).checks
    with pytest.raises(EvidenceError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, report_data=_flip(rd, 5))
    assert ei.value.check == "tdx.report_data"


def test_naive_now_is_utc(v4):
    tdx.verify_quote(v4, now=V4_TIME.replace(tzinfo=None))


def test_v5_verifies_signature_and_chain(v5, expected):
    claims = tdx.verify_quote(v5, now=V5_TIME)
    assert claims.version == 5 and claims.fmspc.hex() == "90c06f000000"
    assert claims.registers["mrtd"].hex() == expected["go-tdx-guest/quote_v5_sample.dat"]["mrtd"]


def test_v4_with_sample_collateral(v4, collateral):
    """The sample collateral matches the quote's FMSPC and dates: CRLs, TCB-info signature and
    expiry, FMSPC and QE identity all pass.  The sample TCB info's levels (CPUSVN components
    5,5,2,2,3,1,0,3 …) are all above this platform's PCK TCB (3,3,2,2,2,1,0,2 …), so no level
    matches and the verifier reports tdx.tcb_status (Intel QVL: TCB not supported)."""
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, collateral=collateral)
    assert ei.value.check == "tdx.tcb_status" and "no TCB level" in str(ei.value)


def test_collateral_from_json_equals_from_pcs(collateral):
    doc = {
        "pck_crl_issuer_chain": _read("go-tdx-guest/pckcrl_issuer_chain.pem").decode(),
        "root_ca_crl": _read("go-tdx-guest/rootcrl.der").hex(),
        "pck_crl": _read("go-tdx-guest/pckcrl").hex(),
        "tcb_info_issuer_chain": _read("go-tdx-guest/tcbinfo_issuer_chain.pem").decode(),
        "tcb_info": _read("go-tdx-guest/sample_tcbInfo_response").decode(),
        "qe_identity_issuer_chain": _read("go-tdx-guest/qeidentity_issuer_chain.pem").decode(),
        "qe_identity": _read("go-tdx-guest/sample_qeIdentity_response").decode(),
    }
    assert tdx.Collateral.from_json(doc) == collateral
    # The signed object text with a separate hex signature is the other PCCS spelling.
    doc2 = dict(
        doc, tcb_info=collateral.tcb_info.decode(), tcb_info_signature=collateral.tcb_info_signature.hex()
    )
    assert tdx.Collateral.from_json(doc2) == collateral
    with pytest.raises(ParseError):
        tdx.Collateral.from_json({"tcb_info": "{}"})


def test_tcb_info_signature_tamper(v4, collateral):
    bad = dataclasses.replace(
        collateral, tcb_info=collateral.tcb_info.replace(b'"tcbType":0', b'"tcbType":1')
    )
    assert bad.tcb_info != collateral.tcb_info
    with pytest.raises(SignatureError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, collateral=bad)
    assert ei.value.check == "tdx.tcb_info.signature"


def test_tcb_info_expired(v4, collateral):
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=dt.datetime(2023, 7, 20, tzinfo=UTC), collateral=collateral)
    assert ei.value.check == "tdx.tcb_info.expired"


def test_pck_crl_expired_and_bad(v4, collateral):
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=dt.datetime(2023, 7, 10, tzinfo=UTC), collateral=collateral)
    assert ei.value.check == "tdx.crl.expired"
    bad = dataclasses.replace(collateral, pck_crl=_flip(collateral.pck_crl, len(collateral.pck_crl) - 10))
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, collateral=bad)
    assert ei.value.check == "tdx.crl"


def test_qe_identity_signature_tamper(v4, collateral):
    bad = dataclasses.replace(
        collateral, qe_identity=collateral.qe_identity.replace(b'"isvprodid":2', b'"isvprodid":3')
    )
    with pytest.raises(SignatureError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, collateral=bad)
    assert ei.value.check == "tdx.qe_identity.signature"


def test_qe_identity_fields(v4, collateral):
    q = tdx.parse_quote(v4)
    ident = json.loads(collateral.qe_identity)
    assert tdx._check_qe_identity(ident, q.qe_report) == "UpToDate"
    for key, val, check in (
        ("mrsigner", "00" * 32, "tdx.qe_identity.mrsigner"),
        ("isvprodid", 9, "tdx.qe_identity.isvprodid"),
        ("attributes", "ff" * 16, "tdx.qe_identity.attributes"),
    ):
        with pytest.raises(CollateralError) as ei:
            tdx._check_qe_identity(dict(ident, **{key: val}), q.qe_report)
        assert ei.value.check == check


def test_tcb_level_matching(v4, collateral):
    """Level matching on the real TCB info with the platform's PCK TCB raised to each level."""
    q = tdx.parse_quote(v4)
    info = json.loads(collateral.tcb_info)
    base = tdx.PCKExtensions(
        fmspc=bytes.fromhex("50806f000000"),
        pceid=b"\0\0",
        pcesvn=11,
        cpusvn=bytes(16),
        sgx_tcb_components=(5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8,
    )
    body = dataclasses.replace(q.body, tee_tcb_svn=bytes([3, 0, 5]) + bytes(13))
    assert tdx._match_tcb_level(info, base, body) == ("UpToDate", (), None)
    status, adv, _ = tdx._match_tcb_level(info, dataclasses.replace(base, pcesvn=5), body)
    assert status == "OutOfDate" and "INTEL-SA-00106" in adv
    with pytest.raises(CollateralError) as ei:
        tdx._match_tcb_level(info, base, q.body)  # the quote's TDX SVN 4 < 5
    assert ei.value.check == "tdx.tcb_status"
    with pytest.raises(CollateralError) as ei:
        tdx._match_tcb_level({"tcbLevels": [{"tcb": 7}]}, base, body)
    assert ei.value.check == "tdx.tcb_info"


def test_v5_tcb_info_and_module_identity(v5):
    """v5 sample: TCB info (FMSPC 90c06f000000) matches the quote's platform, including the
    TDX_01 module identity.  Its signature verifies with the sample TCB Signing key, but that
    certificate expired 2025-05-21, before the v5 verify time, and there is no 2026 PCK CRL:
    full-collateral verification of the v5 quote is not possible offline (MANIFEST notes)."""
    from cryptography import x509

    q = tdx.parse_quote(v5)
    resp = _read("go-tdx-guest/sample_tcbinfo_response_v5")
    body, sig = tdx.Collateral._split(resp, "tcbInfo")
    ext = tdx.pck_extensions(x509.load_pem_x509_certificates(q.pck_chain_pem)[0])
    assert tdx._match_tcb_level(json.loads(body), ext, q.body) == ("UpToDate", (), "UpToDate")
    chain = _read("go-tdx-guest/tcbinfo_issuer_chain.pem")
    with pytest.raises(CollateralError) as ei:
        tdx._signed_json(body, sig, chain, tdx.intel_root(), V5_TIME, "tdx.tcb_info")
    assert ei.value.check == "tdx.tcb_info.signature.validity"
    # Within the signing certificate's validity the signature itself is good (so the check that
    # fails is the next one: this TCB info was issued in 2026, after that certificate expired).
    with pytest.raises(CollateralError) as ei:
        tdx._signed_json(body, sig, chain, tdx.intel_root(), dt.datetime(2025, 5, 1, tzinfo=UTC), "tdx.tcb_info")
    assert ei.value.check == "tdx.tcb_info.not-yet-valid"
    assert json.loads(body)["fmspc"] == "90c06f000000"


def test_signed_region_tamper_every_byte(v4):
    """Every byte of header+body (632) is covered by the attestation-key signature."""
    for i in range(48 + 584):
        bad = _flip(v4, i)
        try:
            tdx.verify_quote(bad, now=V4_TIME)
        except ParseError:
            assert i < 8, i  # version / key type / TEE type are validated by the parser first
            continue
        except SignatureError as exc:
            assert exc.check == "tdx.quote.signature", i
            continue
        pytest.fail(f"flipping byte {i} was not detected")


def test_qe_report_tamper_every_byte(v4):
    start = 632 + 4 + 64 + 64 + 6
    for i in range(start, start + 384):
        with pytest.raises(SignatureError) as ei:
            tdx.verify_quote(_flip(v4, i), now=V4_TIME)
        assert ei.value.check == "tdx.qe_report.signature", i


def test_quote_signature_and_key_tamper(v4):
    for i in (636, 636 + 63, 636 + 64, 636 + 127):  # signature r, s; attestation key x, y
        with pytest.raises(SignatureError) as ei:
            tdx.verify_quote(_flip(v4, i), now=V4_TIME)
        assert ei.value.check == "tdx.quote.signature"


def test_qe_auth_data_tamper_breaks_binding(v4):
    q = tdx.parse_quote(v4)
    assert len(q.qe_auth_data) > 0
    auth_off = 632 + 4 + 128 + 6 + 384 + 64 + 2
    with pytest.raises(SignatureError) as ei:
        tdx.verify_quote(_flip(v4, auth_off), now=V4_TIME)
    assert ei.value.check == "tdx.qe_report.binding"


def _self_signed_root():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX Root CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=UTC))
        .not_valid_after(dt.datetime(2100, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_wrong_trust_root(v4):
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, trust_root=_self_signed_root())
    assert ei.value.check == "tdx.pck_chain"


def test_shipped_root_is_the_intel_root():
    from cryptography.hazmat.primitives import hashes, serialization

    root = tdx.intel_root()
    assert root.fingerprint(hashes.SHA256()).hex().startswith("44a0196b2b99f889")
    shipped = _read("go-tdx-guest/trusted_root.pem")
    assert root.public_bytes(serialization.Encoding.PEM).strip() in shipped.replace(b"\r", b"")


@pytest.mark.parametrize("when", [dt.datetime(2053, 7, 1, tzinfo=UTC), dt.datetime(2010, 1, 1, tzinfo=UTC)])
def test_outside_certificate_validity(v4, when):
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=when)
    assert ei.value.check == "tdx.pck_chain.validity"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(min_value=0, max_value=6000), val=st.integers(min_value=0, max_value=255))
def test_verify_mutated_raises_only_tsmr_errors(v4, pos, val):
    """Any single-byte change anywhere (incl. cert data) either verifies or raises a TsmrError."""
    data = bytearray(v4)
    data[pos % len(data)] = val
    try:
        tdx.verify_quote(bytes(data), now=V4_TIME)
    except (ParseError, EvidenceError):
        pass


# ------------------------------------------------------------------ synthetic end-to-end
# A quote re-signed under a test CA so the collateral path can reach a TCB status (the
# go-tdx-guest sample TCB info matches no level of the real quote's platform).


from tsmr.backends.emulated_evidence.tdx import sgx_extension as _sgx_extension  # noqa: E402


@pytest.fixture(scope="module")
def synthetic(v4, collateral):
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, ikey, serial, ca, ext=None, until=dt.datetime(2030, 1, 1, tzinfo=UTC)):
        b = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=UTC))
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ext is not None:
            b = b.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.840.113741.1.13.1"), ext),
                critical=False,
            )
        return b.sign(ikey, hashes.SHA256())

    def rs(key, msg):
        r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    pem = lambda *cs: b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cs)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(5)]
    rk, ik, pk, tk, ak = keys
    root = cert("Test Root", rk, "Test Root", rk, 1, True)
    inter = cert("Test PCK CA", ik, "Test Root", rk, 2, True)
    fmspc = bytes.fromhex("50806f000000")
    def pck_cert(serial):
        return cert(
            "Test PCK",
            pk,
            "Test PCK CA",
            ik,
            serial,
            False,
            _sgx_extension(fmspc, 11, (5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8),
        )

    tcbsign = cert("Test TCB Signing", tk, "Test Root", rk, 3, False)
    # The same signing key in a certificate that expires before the collateral's nextUpdate.
    tcbsign_short = cert("Test TCB Signing", tk, "Test Root", rk, 4, False, until=dt.datetime(2023, 9, 1, tzinfo=UTC))
    inter_short = cert("Test PCK CA", ik, "Test Root", rk, 5, True, until=dt.datetime(2023, 9, 1, tzinfo=UTC))

    real = tdx.parse_quote(v4)
    body = bytearray(real.signed_data)
    body[48:64] = bytes([3, 0, 5]) + bytes(13)  # TEE_TCB_SVN meeting the UpToDate level
    att = ak.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]
    auth = bytes(range(32))
    qe = real.qe_report.raw[:320] + hashlib.sha256(att + auth).digest() + bytes(32)

    def build_quote(pck_serial=77):
        chain = pem(pck_cert(pck_serial), inter, root)
        inner = (
            qe
            + rs(pk, qe)
            + len(auth).to_bytes(2, "little")
            + auth
            + (5).to_bytes(2, "little")
            + len(chain).to_bytes(4, "little")
            + chain
        )
        sigdata = rs(ak, bytes(body)) + att + (6).to_bytes(2, "little") + len(inner).to_bytes(4, "little") + inner
        return bytes(body) + len(sigdata).to_bytes(4, "little") + sigdata

    quote = build_quote()

    def crl(revoked=()):
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(name("Test PCK CA"))
            .last_update(dt.datetime(2023, 1, 1, tzinfo=UTC))
            .next_update(dt.datetime(2024, 1, 1, tzinfo=UTC))
        )
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(dt.datetime(2023, 1, 2, tzinfo=UTC))
                .build()
            )
        return b.sign(ik, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    def make(status="UpToDate", revoked=(), info_id="TDX", short_signer=False, short_crl_issuer=False):
        info = json.loads(collateral.tcb_info)
        info["id"] = info_id
        info["nextUpdate"] = "2024-01-01T00:00:00Z"
        info["tcbLevels"][0]["tcbStatus"] = status
        tcb = json.dumps(info, separators=(",", ":")).encode()
        ident = json.loads(collateral.qe_identity)
        ident["nextUpdate"] = "2024-01-01T00:00:00Z"
        qid = json.dumps(ident, separators=(",", ":")).encode()
        signer = pem(tcbsign_short if short_signer else tcbsign, root)
        return tdx.Collateral(
            pck_crl=crl(revoked),
            pck_crl_issuer_chain=pem(inter_short if short_crl_issuer else inter, root),
            tcb_info=tcb,
            tcb_info_signature=rs(tk, tcb),
            tcb_info_issuer_chain=signer,
            qe_identity=qid,
            qe_identity_signature=rs(tk, qid),
            qe_identity_issuer_chain=signer,
        )

    make.quote = build_quote  # the same quote with a PCK certificate of another serial number
    return quote, root, make


def test_synthetic_full_collateral(synthetic):
    quote, root, make = synthetic
    claims = tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=make())
    assert claims.tcb_status == "UpToDate" and claims.advisory_ids == ()
    assert claims.qe_tcb_status == "UpToDate"
    for c in (
        "tdx.crl",
        "tdx.tcb_info.signature",
        "tdx.tcb_info.expired",
        "tdx.qe_identity",
        "tdx.tcb_status",
    ):
        assert c in claims.checks
    # The same quote does not verify to the real Intel root.
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(quote, now=V4_TIME)
    assert ei.value.check == "tdx.pck_chain"


def test_synthetic_status_claims_and_revocation(synthetic):
    quote, root, make = synthetic
    claims = tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=make("SWHardeningNeeded"))
    assert claims.tcb_status == "SWHardeningNeeded"  # a claim for the caller's policy, not a failure
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=make("Revoked"))
    assert ei.value.check == "tdx.tcb_status"
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=make(revoked=(77,)))
    assert ei.value.check == "tdx.crl" and "revoked" in str(ei.value)


def test_synthetic_rejects_sgx_tcb_info_and_accepts_pem_root(synthetic):
    from cryptography.hazmat.primitives import serialization

    quote, root, make = synthetic
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=make(info_id="SGX"))
    assert ei.value.check == "tdx.tcb_info.id"
    pem = root.public_bytes(serialization.Encoding.PEM)
    claims = tdx.verify_quote(quote, now=V4_TIME, trust_root=pem)
    with pytest.raises(TypeError):
        claims.registers["mrtd"] = bytes(48)  # claims are immutable
    with pytest.raises(dataclasses.FrozenInstanceError):
        claims.fmspc = b""


def test_v5_claims_include_mrservicetd(v5):
    claims = tdx.verify_quote(v5, now=V5_TIME)
    assert claims.mrservicetd is not None and len(claims.mrservicetd) == 48


def test_v5_signed_region_tamper_every_byte(v5):
    """Quote v5: header (48) + body descriptor (6) + TDX 1.5 body: every byte is under the signature."""
    q = tdx.parse_quote(v5)
    signed = len(q.signed_data)
    assert signed == 48 + 6 + 648  # TDX 1.5 body (type 3)
    for i in range(signed):
        bad = _flip(v5, i)
        try:
            tdx.verify_quote(bad, now=V5_TIME)
        except ParseError:
            continue  # header fields and the body descriptor are validated by the parser first
        except SignatureError as exc:
            assert exc.check == "tdx.quote.signature", i
            continue
        pytest.fail(f"flipping byte {i} of the v5 quote was not detected")


# ------------------------------------------------------------------ cached verification
# Repeated verifications reuse what depends only on exact input bytes and the trust anchor
# (decoded chains, issuer and collateral signatures, parsed collateral, CRL contents).  These
# tests check that a remembered success never stands in for a check that depends on the time,
# on different bytes or on another anchor, and that failures are never remembered.


def _outcome(fn) -> str:
    try:
        fn()
    except EvidenceError as exc:
        return exc.check
    return "verified"


@pytest.mark.parametrize(
    "when,check",
    [
        (dt.datetime(2010, 1, 1, tzinfo=UTC), "tdx.pck_chain.validity"),
        (V4_TIME, "tdx.tcb_status"),
        # QE identity nextUpdate 2023-07-08T07:24:59Z, PCK CRL nextUpdate 07:27:52 the same day.
        (dt.datetime(2023, 7, 8, 7, 26, tzinfo=UTC), "tdx.qe_identity.expired"),
        (dt.datetime(2023, 7, 8, 7, 28, tzinfo=UTC), "tdx.crl.expired"),
        (dt.datetime(2023, 7, 20, tzinfo=UTC), "tdx.tcb_info.expired"),
        (dt.datetime(2053, 7, 1, tzinfo=UTC), "tdx.pck_chain.validity"),
    ],
)
def test_cached_outcome_equals_cold_outcome(v4, collateral, when, check):
    """The same quote and collateral at various times: after a success at a valid time is
    cached, every time-dependent check still decides, with the name a cold run gives."""

    def verify():
        return tdx.verify_quote(v4, now=when, collateral=collateral)

    tdx.clear_caches()
    assert _outcome(verify) == check  # nothing remembered
    assert _outcome(lambda: tdx.verify_quote(v4, now=V4_TIME, collateral=collateral)) == "tdx.tcb_status"
    assert _outcome(verify) == check  # everything remembered from the run at V4_TIME
    assert _outcome(verify) == check


def test_cache_rechecks_time_after_success(synthetic):
    quote, root, make = synthetic
    col = make()
    assert tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=col).tcb_status == "UpToDate"
    for when, check in (
        (dt.datetime(2024, 2, 1, tzinfo=UTC), "tdx.tcb_info.expired"),  # collateral nextUpdate 2024-01-01
        (dt.datetime(2031, 1, 1, tzinfo=UTC), "tdx.pck_chain.validity"),  # certificates end 2030
        (dt.datetime(2019, 6, 1, tzinfo=UTC), "tdx.pck_chain.validity"),  # and start 2020
    ):
        with pytest.raises(CollateralError) as ei:
            tdx.verify_quote(quote, now=when, trust_root=root, collateral=col)
        assert ei.value.check == check, when
    # A collateral signing certificate that expires (2023-09-01) while the collateral is current.
    short = make(short_signer=True)
    tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=short)
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(quote, now=dt.datetime(2023, 10, 1, tzinfo=UTC), trust_root=root, collateral=short)
    assert ei.value.check == "tdx.tcb_info.signature.validity"
    # And the cached success is still a success at a valid time.
    tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=short)
    # The same for the CRL's issuer chain (its CA certificate re-issued with a shorter validity).
    short = make(short_crl_issuer=True)
    tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=short)
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(quote, now=dt.datetime(2023, 10, 1, tzinfo=UTC), trust_root=root, collateral=short)
    assert ei.value.check == "tdx.crl.validity"


def test_cache_tampered_collateral_after_success(v4, synthetic, collateral):
    with pytest.raises(CollateralError) as ei:  # the Intel collateral is remembered under the Intel root
        tdx.verify_quote(v4, now=V4_TIME, collateral=collateral)
    assert ei.value.check == "tdx.tcb_status"
    quote, root, make = synthetic
    col = make()
    tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=col)
    rep = dataclasses.replace
    cases = [
        (rep(col, tcb_info=col.tcb_info.replace(b'"tcbType":0', b'"tcbType":1')), "tdx.tcb_info.signature"),
        (rep(col, tcb_info_signature=_flip(col.tcb_info_signature, 40)), "tdx.tcb_info.signature"),
        # An issuer chain that does not end in the trust anchor.
        (rep(col, tcb_info_issuer_chain=collateral.tcb_info_issuer_chain), "tdx.tcb_info.signature"),
        (rep(col, qe_identity=col.qe_identity.replace(b'"isvprodid":2', b'"isvprodid":3')), "tdx.qe_identity.signature"),
        (rep(col, qe_identity_signature=_flip(col.qe_identity_signature, 3)), "tdx.qe_identity.signature"),
        (rep(col, qe_identity_issuer_chain=collateral.qe_identity_issuer_chain), "tdx.qe_identity.signature"),
        (rep(col, pck_crl=_flip(col.pck_crl, len(col.pck_crl) - 10)), "tdx.crl"),
        (rep(col, pck_crl_issuer_chain=collateral.pck_crl_issuer_chain), "tdx.crl"),
        (make(revoked=(77,)), "tdx.crl"),
        # Intel's root CRL, remembered as good under the Intel root, is not signed by this root.
        (rep(col, root_ca_crl=collateral.root_ca_crl), "tdx.crl.root"),
    ]
    for bad, check in cases:
        assert bad != col
        for _ in range(2):  # and a failure is not remembered as a success
            with pytest.raises(EvidenceError) as ei:
                tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=bad)
            assert ei.value.check == check, check
    assert tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=col).tcb_status == "UpToDate"


def test_cache_every_byte_of_signed_collateral(v4, collateral):
    """After the collateral is remembered, flipping any byte of the signed TCB info or QE identity
    (or of their signatures) fails its signature check, and no failure is remembered."""
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, collateral=collateral)
    assert ei.value.check == "tdx.tcb_status"
    remembered = len(tdx._DOCS)
    for fld, check in (
        ("tcb_info", "tdx.tcb_info.signature"),
        ("tcb_info_signature", "tdx.tcb_info.signature"),
        ("qe_identity", "tdx.qe_identity.signature"),
        ("qe_identity_signature", "tdx.qe_identity.signature"),
    ):
        data = getattr(collateral, fld)
        for i in range(len(data)):
            with pytest.raises(SignatureError) as ei:
                tdx.verify_quote(v4, now=V4_TIME, collateral=dataclasses.replace(collateral, **{fld: _flip(data, i)}))
            assert ei.value.check == check, (fld, i)
    assert len(tdx._DOCS) == remembered


def test_cache_other_trust_root_after_success(v4, collateral, synthetic):
    from cryptography.hazmat.primitives import serialization

    tdx.verify_quote(v4, now=V4_TIME)  # the PCK chain is remembered under the Intel root
    other = _self_signed_root()
    for anchor in (other, other.public_bytes(serialization.Encoding.PEM)):
        with pytest.raises(CollateralError) as ei:
            tdx.verify_quote(v4, now=V4_TIME, trust_root=anchor)
        assert ei.value.check == "tdx.pck_chain"
    # Collateral remembered under the Intel root does not verify under another one.
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, collateral=collateral)
    assert ei.value.check == "tdx.tcb_status"
    with pytest.raises(CollateralError) as ei:
        tdx._signed_json(
            collateral.tcb_info, collateral.tcb_info_signature, collateral.tcb_info_issuer_chain,
            other, V4_TIME, "tdx.tcb_info",
        )
    assert ei.value.check == "tdx.tcb_info.signature"
    pck_chain = tdx._chain(tdx.parse_quote(v4).pck_chain_pem, tdx._root_info(None), V4_TIME, check="tdx.pck_chain")
    with pytest.raises(CollateralError) as ei:
        tdx._check_crl(
            collateral.pck_crl, collateral.pck_crl_issuer_chain, pck_chain, 0, tdx._root_info(other), V4_TIME, "tdx.crl"
        )
    assert ei.value.check == "tdx.crl"
    # And the other way round: a quote and collateral remembered under a test root.
    quote, root, make = synthetic
    col = make()
    tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=col)
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(quote, now=V4_TIME, collateral=col)
    assert ei.value.check == "tdx.pck_chain"
    with pytest.raises(CollateralError) as ei:
        tdx._signed_json(col.tcb_info, col.tcb_info_signature, col.tcb_info_issuer_chain, None, V4_TIME, "tdx.tcb_info")
    assert ei.value.check == "tdx.tcb_info.signature"


def test_cache_keys_are_the_current_bytes(synthetic):
    """Collateral held in a bytearray that changes after a cached success is checked again."""
    quote, root, make = synthetic
    col = make()
    tcb = bytearray(col.tcb_info)
    mutable = dataclasses.replace(col, tcb_info=tcb)
    tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=mutable)
    i = tcb.index(b'"tcbType":0') + len(b'"tcbType":')
    tcb[i : i + 1] = b"1"
    with pytest.raises(SignatureError) as ei:
        tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=mutable)
    assert ei.value.check == "tdx.tcb_info.signature"


def test_cached_collateral_is_read_only(collateral):
    info = tdx._signed_json(
        collateral.tcb_info, collateral.tcb_info_signature, collateral.tcb_info_issuer_chain,
        None, V4_TIME, "tdx.tcb_info",
    )
    assert info["fmspc"] == "50806f000000"
    with pytest.raises(TypeError):
        info["fmspc"] = "90c06f000000"
    with pytest.raises(TypeError):
        info["tcbLevels"][0]["tcbStatus"] = "UpToDate"


def test_cache_is_bounded():
    from tsmr.lru import LRU

    cache = LRU(2)
    for k in range(3):
        cache.put(k, str(k))
    assert len(cache) == 2 and cache.get(0) is None and cache.get(2) == "2"
    cache.get(1)
    cache.put(3, "3")  # evicts the least recently used (2), not the just-read 1
    assert cache.get(1) == "1" and cache.get(2) is None
    for c in (tdx._ROOTS, tdx._CHAINS, tdx._DOCS, tdx._CRLS):
        assert 0 < c.size <= 256


def test_cache_keeps_per_quote_crl_checks(v4, collateral, synthetic):
    """A remembered CRL is still looked up for each quote's own certificates and issuer."""
    quote, root, make = synthetic
    col = make(revoked=(78,))
    tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=col)  # serial 77: not revoked
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(make.quote(78), now=V4_TIME, trust_root=root, collateral=col)
    assert ei.value.check == "tdx.crl" and "4e is revoked" in str(ei.value)  # 78 = 0x4e
    tdx.verify_quote(quote, now=V4_TIME, trust_root=root, collateral=col)
    # The Intel PCK CRL, remembered for the Intel PCK certificate, is not the test PCK's issuer's.
    with pytest.raises(CollateralError) as ei:
        tdx.verify_quote(v4, now=V4_TIME, collateral=collateral)
    assert ei.value.check == "tdx.tcb_status"
    test_pck = tdx._chain(tdx.parse_quote(quote).pck_chain_pem, tdx._root_info(root), V4_TIME, check="tdx.pck_chain")
    with pytest.raises(CollateralError) as ei:
        tdx._check_crl(
            collateral.pck_crl, collateral.pck_crl_issuer_chain, test_pck, 0, tdx._root_info(None), V4_TIME, "tdx.crl"
        )
    assert ei.value.check == "tdx.crl" and "issuer" in str(ei.value)


def test_collateral_issued_after_the_verification_time_is_refused(v4, collateral):
    """Collateral says nothing about a time before it was issued (TCB info issueDate 2023-06-18)."""
    when = dt.datetime(2023, 6, 10, tzinfo=dt.timezone.utc)
    with pytest.raises(EvidenceError) as ei:
        tdx.verify_quote(v4, now=when, collateral=collateral)
    assert ei.value.check == "tdx.tcb_info.not-yet-valid" and "2023-06-18" in str(ei.value)
    # The same quote and collateral later on reach the TCB level check (cache or not).
    with pytest.raises(EvidenceError) as ei:
        tdx.verify_quote(v4, now=dt.datetime(2023, 7, 1, tzinfo=dt.timezone.utc), collateral=collateral)
    assert ei.value.check == "tdx.tcb_status"
