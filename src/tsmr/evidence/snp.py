"""AMD SEV-SNP attestation reports: parse, verify, certificate table, SVSM binding.

Theory of operation.  The AMD secure processor signs an ATTESTATION_REPORT
(SEV-SNP Firmware ABI Specification, rev. 1.55+, §7.3 Table 23; 0x4A0 bytes,
little-endian) with ECDSA P-384/SHA-384 over bytes 0x000-0x29F, using the chip-
and TCB-specific VCEK, or a cloud provider's VLEK.  The VCEK certificate is
issued by the ASK (ASVK for VLEKs), which is issued by the self-signed ARK; AMD's
KDS certificates are signed with RSASSA-PSS/SHA-384.  A verifier checks, in
this order (check ids in brackets):

1. the signature algorithm field says ECDSA P-384 and the report's signature
   verifies with the VCEK/VLEK (``snp.signature``); the unsigned bytes after R
   and S must be zero, so that nothing in the report is malleable;
2. VCEK <- ASK (``snp.chain.vcek``), ASK <- ARK (``snp.chain.ask``), ARK
   self-signed and equal to a trusted ARK (``snp.chain.ark``); with ``now``,
   each certificate's validity period too;
3. REPORT_DATA equals the caller's expectation (``snp.report_data``);
4. the TCB the VCEK was issued for (its AMD extensions, SEV-SNP VCEK spec
   "Versioned Chip Endorsement Key" §3.1) equals REPORTED_TCB and its hwID
   equals CHIP_ID (``snp.tcb``, ``snp.chip_id``; VCEK only, VLEKs have neither);
5. with AMD's CRL for the product (KDS ``/vcek/v1/{product}/crl``, signed by
   the ARK), neither the VCEK nor the ASK is revoked (``snp.crl.signature``,
   ``snp.crl.issuer``, ``snp.crl.expired``, ``snp.crl.revoked``);
6. the guest policy does not allow debugging (POLICY bit 19, ABI spec §4.3
   Table 9), unless the caller allows debug guests (``snp.policy.debug``).

Parsers are total: they return or raise :class:`~tsmr.errors.ParseError`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import (
    CollateralError,
    EvidenceError,
    InputError,
    ParseError,
    SignatureError,
)

FORMAT = "SEV-SNP ATTESTATION_REPORT"
FORMAT_CERT_TABLE = "SEV-SNP certificate table"

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes [0, 0x2A0) (ABI spec §7.3 Table 23)
_SIG_COMPONENT = 72  # R and S are each 72 bytes, little-endian, zero-extended

SIG_ALGO_ECDSA_P384_SHA384 = 1
#: Guest policy DEBUG (ABI spec §4.3 Table 9, bit 19): the hypervisor may use the firmware's debug
#: commands to decrypt and change the guest's memory.
POLICY_DEBUG = 1 << 19

# Precompiled layouts (ABI spec §7.3 Table 23).  Offsets in comments.
_HEAD = struct.Struct("<IIQ16s16sIIQQI4x")  # 0x00..0x50: version .. signer info, reserved
_BODY = struct.Struct("<64s48s32s48s48s32s32sQ")  # 0x50..0x188: report_data .. reported_tcb
_CPUID = struct.Struct("<BBB")  # 0x188: cpuid fam/model/step (version 3+)
_CHIP = struct.Struct("<64sQBBBxBBBxQ")  # 0x1A0..0x1F8: chip_id .. launch_tcb
_MIT = struct.Struct("<QQ")  # 0x1F8: launch/current mitigation vector (version 5+)
_SIG = struct.Struct("<72s72s")  # 0x2A0: R, S

_CERT_ENTRY = struct.Struct("<16sII")  # GHCB spec §4.1.8.1 (SNP extended guest request): GUID, offset, length

# Known certificate-table GUIDs (GHCB spec §4.1.8.1 Table 8, Linux sev-guest docs).
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
_GUID_NAMES = {GUID_VCEK: "vcek", GUID_ASK: "ask", GUID_ARK: "ark", GUID_VLEK: "vlek"}

# AMD VCEK certificate extensions (VCEK spec §3.1 Table 8).
_OID_BL = "1.3.6.1.4.1.3704.1.3.1"
_OID_TEE = "1.3.6.1.4.1.3704.1.3.2"
_OID_SNP = "1.3.6.1.4.1.3704.1.3.3"
_OID_UCODE = "1.3.6.1.4.1.3704.1.3.8"
_OID_FMC = "1.3.6.1.4.1.3704.1.3.9"  # Turin and later
_OID_HWID = "1.3.6.1.4.1.3704.1.4"

_MAX_CERT_ENTRIES = 64


@dataclass(frozen=True)
class TCBVersion:
    """TCB_VERSION (ABI spec §2.2 Table 3; Turin layout in rev 1.57): security patch levels."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin (family 0x1A) only

    @classmethod
    def decode(cls, raw: int, *, turin: bool = False) -> TCBVersion:
        b = raw.to_bytes(8, "little")
        if turin:  # FMC, BOOT_LOADER, TEE, SNP, reserved x3, MICROCODE
            return cls(raw, b[1], b[2], b[3], b[7], b[0])
        return cls(raw, b[0], b[1], b[6], b[7])  # BOOT_LOADER, TEE, reserved x4, SNP, MICROCODE


@dataclass(frozen=True)
class SNPReport:
    """ATTESTATION_REPORT (AMD SEV-SNP Firmware ABI spec §7.3, Table 23), versions 2, 3, 5.

    Fields added by later versions are None when the version does not define them.
    """

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TCBVersion
    platform_info: int
    signer_info: int  # AUTHOR_KEY_EN bit 0, MASK_CHIP_KEY bit 1, SIGNING_KEY bits 4:2 (0 VCEK, 1 VLEK)
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TCBVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TCBVersion
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: TCBVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    raw: bytes

    @property
    def signing_key(self) -> str:
        """``vcek`` or ``vlek`` (SIGNING_KEY field), ``none`` or ``reserved`` otherwise."""
        return {0: "vcek", 1: "vlek", 7: "none"}.get(self.signer_info >> 2 & 7, "reserved")

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.signer_info & 2)

    @property
    def author_key_en(self) -> bool:
        return bool(self.signer_info & 1)


def parse_report(data: bytes) -> SNPReport:
    """Parse an SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP Firmware ABI spec §7.3, Table 23).

    Exactly 0x4A0 bytes.  Version 2 is the first public layout; version 3 adds
    the CPUID family/model/stepping at 0x188; version 5 adds the mitigation
    vectors at 0x1F8.  Reserved bytes are not checked here.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError(f"expected bytes, got {type(data).__name__}", format=FORMAT)
    buf = bytes(data)
    if len(buf) != REPORT_SIZE:
        raise ParseError(f"{len(buf)} bytes; a report is {REPORT_SIZE}", format=FORMAT, offset=0, field="length")
    version, svn, policy, family, image, vmpl, sig_algo, cur_tcb, pinfo, signer = _HEAD.unpack_from(buf, 0)
    if version < 2:
        raise ParseError(f"version {version} is not 2 or later", format=FORMAT, offset=0, field="VERSION")
    rd, meas, host, idk, authk, rid, rid_ma, rep_tcb = _BODY.unpack_from(buf, 0x50)
    fam = mod = step = None
    if version >= 3:
        fam, mod, step = _CPUID.unpack_from(buf, 0x188)
    chip, com_tcb, cb, cmi, cma, bb, bmi, bma, launch = _CHIP.unpack_from(buf, 0x1A0)
    lmit = cmit = None
    if version >= 5:
        lmit, cmit = _MIT.unpack_from(buf, 0x1F8)
    r, s = _SIG.unpack_from(buf, SIGNED_SIZE)
    # Turin (family 0x1A) changed the TCB_VERSION layout; only v3+ reports say which family.
    turin = fam is not None and fam >= 0x1A
    tcb = lambda v: TCBVersion.decode(v, turin=turin)
    return SNPReport(
        version=version, guest_svn=svn, policy=policy, family_id=family, image_id=image, vmpl=vmpl,
        signature_algo=sig_algo, current_tcb=tcb(cur_tcb), platform_info=pinfo, signer_info=signer,
        report_data=rd, measurement=meas, host_data=host, id_key_digest=idk, author_key_digest=authk,
        report_id=rid, report_id_ma=rid_ma, reported_tcb=tcb(rep_tcb), cpuid_fam_id=fam, cpuid_mod_id=mod,
        cpuid_step=step, chip_id=chip, committed_tcb=tcb(com_tcb), current_build=cb, current_minor=cmi,
        current_major=cma, committed_build=bb, committed_minor=bmi, committed_major=bma,
        launch_tcb=tcb(launch), launch_mit_vector=lmit, current_mit_vector=cmit,
        signature_r=int.from_bytes(r, "little"), signature_s=int.from_bytes(s, "little"), raw=buf,
    )


# --------------------------------------------------------------------------- certificate table


@dataclass(frozen=True)
class CertTableEntry:
    """One entry of the SNP certificate table (GHCB spec §4.1.8.1): GUID, and the certificate bytes."""

    guid: uuid.UUID
    name: str  # vcek, ask, ark, vlek, or the GUID string when unknown
    data: bytes


def parse_cert_table(data: bytes) -> tuple[CertTableEntry, ...]:
    """Parse the certificate table of an SNP extended report (configfs-tsm ``auxblob``).

    GHCB spec §4.1.8.1: entries of GUID (16 bytes, RFC 4122 byte order as
    go-sev-guest and the kernel write them), u32 offset and u32 length (offsets
    from the table's start), terminated by an all-zero entry.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError(f"expected bytes, got {type(data).__name__}", format=FORMAT_CERT_TABLE)
    buf = bytes(data)
    out: list[Any] = []
    pos = 0
    while True:
        if pos + _CERT_ENTRY.size > len(buf):
            raise ParseError("table ends without its all-zero terminator", format=FORMAT_CERT_TABLE, offset=pos)
        raw_guid, off, length = _CERT_ENTRY.unpack_from(buf, pos)
        if raw_guid == bytes(16) and off == 0 and length == 0:
            break
        if len(out) >= _MAX_CERT_ENTRIES:
            raise ParseError(f"more than {_MAX_CERT_ENTRIES} entries", format=FORMAT_CERT_TABLE, offset=pos)
        if off + length > len(buf):
            raise ParseError(f"certificate at {off}+{length} runs past the {len(buf)}-byte blob",
                             format=FORMAT_CERT_TABLE, offset=pos + 16, field="offset")
        guid = uuid.UUID(bytes=raw_guid)
        out.append(CertTableEntry(guid, _GUID_NAMES.get(guid, str(guid)), buf[off : off + length]))
        pos += _CERT_ENTRY.size
    return tuple(out)


def svsm_report_data(nonce: bytes, manifest: bytes) -> bytes:
    """REPORT_DATA of an SVSM attestation: ``SHA-512(nonce || manifest)``.

    SVSM spec (AMD 58019) §7 "Attestation protocol", as coconut-svsm implements
    it; for the vTPM service the manifest is the EK's TPMT_PUBLIC.
    """
    return hashlib.sha512(bytes(nonce) + bytes(manifest)).digest()


# --------------------------------------------------------------------------- certificates


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in ``data`` (one DER certificate, or any number of PEM ones)."""
    raw = bytes(data)
    try:
        if b"-----BEGIN" in raw:
            return x509.load_pem_x509_certificates(raw)
        return [x509.load_der_x509_certificate(raw)]
    except ValueError as exc:
        raise ParseError(f"not a certificate: {exc}", format="X.509") from None


def _cert(c: Any, what: str) -> x509.Certificate:
    if isinstance(c, x509.Certificate):
        return c
    if not isinstance(c, (bytes, bytearray, memoryview)):
        raise InputError(f"{what} must be certificate bytes or an x509.Certificate, not {type(c).__name__}")
    certs = load_certificates(bytes(c))
    if len(certs) != 1:
        raise InputError(f"{what}: expected one certificate, got {len(certs)}")
    return certs[0]


def _signed_by(key: Any, signed: Any, tbs: bytes) -> str | None:
    """Why ``signed`` (a certificate or CRL) is not signed by ``key`` over ``tbs``, or None when it is.

    RSA issuers sign as the object says (AMD's KDS uses RSASSA-PSS); EC issuers with ECDSA.
    """
    try:
        halg = signed.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey):
            params = signed.signature_algorithm_parameters
            pad = params if isinstance(params, (padding.PSS, padding.PKCS1v15)) else padding.PKCS1v15()
            key.verify(signed.signature, tbs, pad, halg)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signed.signature, tbs, ec.ECDSA(halg))
        else:
            return f"unsupported issuer key {type(key).__name__}"
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as exc:
        return type(exc).__name__
    return None


def _check_issued(child: x509.Certificate, issuer: x509.Certificate, check: str, now: datetime | None) -> None:
    """Signature of ``child`` by ``issuer``'s key (RSA-PSS in AMD KDS certs), names, validity."""
    if child.issuer != issuer.subject:
        raise CollateralError(f"issuer {child.issuer.rfc4514_string()} is not "
                              f"{issuer.subject.rfc4514_string()}", check=check)
    why = _signed_by(issuer.public_key(), child, child.tbs_certificate_bytes)
    if why:
        raise CollateralError(f"certificate {child.subject.rfc4514_string()} is not signed by "
                              f"{issuer.subject.rfc4514_string()} ({why})", check=check)
    if now is not None:
        _check_validity(child, check, now)


def _check_validity(cert: x509.Certificate, check: str, now: datetime) -> None:
    if now.tzinfo is None:
        raise InputError("now must be timezone-aware")
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CollateralError(f"certificate {cert.subject.rfc4514_string()} is not valid at {now.isoformat()} "
                              f"({cert.not_valid_before_utc.isoformat()}..{cert.not_valid_after_utc.isoformat()})",
                              check=check)


def _der_integer(value: bytes) -> int | None:
    # AMD encodes the SPLs as DER INTEGER inside the extension's OCTET STRING.
    if len(value) >= 3 and value[0] == 0x02 and value[1] == len(value) - 2:
        return int.from_bytes(value[2:], "big", signed=True)
    return None


def vcek_tcb(vcek: Any) -> dict[str, int]:
    """The SPLs a VCEK was issued for (VCEK spec §3.1): blSPL, teeSPL, snpSPL, ucodeSPL (fmcSPL)."""
    cert = _cert(vcek, "vcek")
    out: dict[str, int] = {}
    for name, oid in (("blSPL", _OID_BL), ("teeSPL", _OID_TEE), ("snpSPL", _OID_SNP),
                      ("ucodeSPL", _OID_UCODE), ("fmcSPL", _OID_FMC)):
        try:
            ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
        except x509.ExtensionNotFound:
            continue
        v = _der_integer(getattr(ext.value, "value", b""))
        if v is not None:
            out[name] = v
    return out


def _vcek_hwid(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(_OID_HWID))
    except x509.ExtensionNotFound:
        return None
    v = getattr(ext.value, "value", b"")
    if len(v) == 66 and v[:2] == b"\x04\x40":  # wrapped in an OCTET STRING by some issuers
        return v[2:]
    return v


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class SNPClaims:
    """What a verified SEV-SNP report says (ABI spec §7.3), plus what was checked."""

    report: SNPReport
    version: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    chip_id: bytes
    policy: int
    vmpl: int
    guest_svn: int
    reported_tcb: TCBVersion
    signing_key: str  # vcek / vlek
    ark_sha256: bytes  # SHA-256 of the ARK's DER: pin this when trusted_arks is not given
    tcb_checked: bool
    crl_checked: bool = False  # the VCEK and ASK were looked up in an ARK-signed CRL
    debug: bool = False  # POLICY.DEBUG: only ever true when the caller allowed debug guests


def _verify_report_signature(rep: SNPReport, key: Any) -> None:
    if rep.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise SignatureError(f"SIGNATURE_ALGO {rep.signature_algo} is not ECDSA P-384/SHA-384 (1)",
                             check="snp.signature")
    if any(rep.raw[SIGNED_SIZE + 2 * _SIG_COMPONENT :]):
        raise SignatureError("reserved bytes after the signature's R and S are not zero", check="snp.signature")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise SignatureError("the VCEK/VLEK is not a P-384 key", check="snp.signature")
    try:
        key.verify(encode_dss_signature(rep.signature_r, rep.signature_s), rep.raw[:SIGNED_SIZE],
                   ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError("the report signature does not verify with the VCEK/VLEK",
                             check="snp.signature") from None


def verify_report(
    report: bytes,
    *,
    vcek: Any,
    ask: Any,
    ark: Any,
    report_data: bytes | None,
    trusted_arks: Sequence[Any] | None = None,
    now: datetime | None = None,
    check_tcb: bool = True,
    crl: Any = None,
    allow_debug: bool = False,
) -> SNPClaims:
    """Verify an SEV-SNP ATTESTATION_REPORT (ABI spec §7.3) and its VCEK chain (VCEK spec §2-3).

    ``vcek`` (or a VLEK), ``ask`` (or ASVK) and ``ark`` are certificates as DER
    or PEM bytes or ``x509.Certificate``.  ``trusted_arks`` are the trust
    anchors; the ARK must be one of them.  When it is None the given ``ark`` is
    the anchor: the caller must then have pinned it (see ``SNPClaims.ark_sha256``).
    ``report_data=None`` skips the binding check.  ``now`` (aware datetime), when
    given, checks certificate validity.  ``check_tcb`` compares the VCEK's TCB
    extensions and hwID with REPORTED_TCB and CHIP_ID (skipped for VLEKs and
    for reports with MASK_CHIP_ID set, which zero CHIP_ID).  ``crl`` (DER or PEM
    bytes, or an ``x509.CertificateRevocationList``) is AMD's CRL: it must be
    signed by the (trusted) ARK, and neither the VCEK nor the ASK may be on it.
    A guest policy allowing debugging fails ``snp.policy.debug`` unless
    ``allow_debug``.
    """
    rep = parse_report(report)
    vcek_c, ask_c, ark_c = _cert(vcek, "vcek"), _cert(ask, "ask"), _cert(ark, "ark")

    _verify_report_signature(rep, vcek_c.public_key())
    if now is not None:
        _check_validity(vcek_c, "snp.chain.vcek", now)
    _check_issued(vcek_c, ask_c, "snp.chain.vcek", now)
    _check_issued(ask_c, ark_c, "snp.chain.ask", now)
    _check_issued(ark_c, ark_c, "snp.chain.ark", now)
    ark_der = ark_c.public_bytes(serialization.Encoding.DER)
    if trusted_arks is not None:
        trusted = [_cert(t, "trusted ark").public_bytes(serialization.Encoding.DER) for t in trusted_arks]
        if not any(hmac.compare_digest(ark_der, t) for t in trusted):
            raise CollateralError(f"ARK {ark_c.subject.rfc4514_string()} is not a trusted ARK", check="snp.chain.ark")
    if crl is not None:
        check_crl(crl, ark=ark_c, certs=(("VCEK", vcek_c), ("ASK", ask_c)), now=now)

    if report_data is not None:
        expected = bytes(report_data)
        if len(expected) != 64:
            raise InputError(f"report_data must be 64 bytes, got {len(expected)}")
        if not hmac.compare_digest(rep.report_data, expected):
            raise EvidenceError("REPORT_DATA is not the expected value", check="snp.report_data")

    tcb_checked = False
    if check_tcb and rep.signing_key == "vcek":
        tcb = vcek_tcb(vcek_c)
        rt = rep.reported_tcb
        got = {"blSPL": rt.bootloader, "teeSPL": rt.tee, "snpSPL": rt.snp, "ucodeSPL": rt.microcode}
        if rt.fmc is not None:
            got["fmcSPL"] = rt.fmc
        if tcb:
            diff = {k: (tcb.get(k), v) for k, v in got.items() if k in tcb and tcb[k] != v}
            if diff:
                raise EvidenceError(f"REPORTED_TCB differs from the VCEK's TCB (vcek, report): {diff}",
                                    check="snp.tcb")
            tcb_checked = True
        hwid = _vcek_hwid(vcek_c)
        if hwid is not None and not rep.mask_chip_id and not hmac.compare_digest(hwid, rep.chip_id):
            raise EvidenceError("CHIP_ID is not the VCEK's hwID", check="snp.chip_id")

    # Last, so that a forged report or a revoked key is reported as such rather than as a debug guest.
    debug = bool(rep.policy & POLICY_DEBUG)
    if debug and not allow_debug:
        raise EvidenceError("the guest policy allows debugging (POLICY bit 19): the host can decrypt and change "
                            "the guest's memory", check="snp.policy.debug")

    return SNPClaims(
        report=rep, version=rep.version, report_data=rep.report_data, measurement=rep.measurement,
        host_data=rep.host_data, chip_id=rep.chip_id, policy=rep.policy, vmpl=rep.vmpl, guest_svn=rep.guest_svn,
        reported_tcb=rep.reported_tcb, signing_key=rep.signing_key,
        ark_sha256=hashlib.sha256(ark_der).digest(), tcb_checked=tcb_checked, crl_checked=crl is not None,
        debug=debug,
    )


def load_crl(data: Any) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes (AMD's KDS serves DER), or the CRL object itself."""
    if isinstance(data, x509.CertificateRevocationList):
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"a CRL must be bytes or an x509.CertificateRevocationList, not {type(data).__name__}")
    raw = bytes(data)
    try:
        return x509.load_pem_x509_crl(raw) if raw.lstrip().startswith(b"-----") else x509.load_der_x509_crl(raw)
    except ValueError as exc:
        raise CollateralError(f"the CRL does not decode: {exc}", check="snp.crl") from None


def check_crl(crl: Any, *, ark: Any, certs: Sequence[tuple[str, Any]], now: datetime | None) -> None:
    """Check ``certs`` (name, certificate) against AMD's CRL, which the ``ark`` must have signed.

    Raises :class:`CollateralError`: ``snp.crl.signature`` when the ARK did not
    sign it (a CRL anyone could have made revokes nothing and clears nothing),
    ``snp.crl.issuer`` when it is another CA's, ``snp.crl.expired`` /
    ``snp.crl.not-yet-valid`` when ``now`` is outside its lastUpdate..nextUpdate,
    ``snp.crl.revoked`` naming the revoked certificate.
    """
    c = load_crl(crl)
    ark_c = _cert(ark, "ark")
    if c.issuer != ark_c.subject:
        raise CollateralError(f"the CRL is issued by {c.issuer.rfc4514_string()}, not by the ARK "
                              f"{ark_c.subject.rfc4514_string()}", check="snp.crl.issuer")
    why = _signed_by(ark_c.public_key(), c, c.tbs_certlist_bytes)
    if why:
        raise CollateralError(f"the CRL is not signed by the ARK ({why})", check="snp.crl.signature")
    if now is not None:
        if now.tzinfo is None:
            raise InputError("now must be timezone-aware")
        if now < c.last_update_utc:
            raise CollateralError(f"the CRL was issued at {c.last_update_utc.isoformat()}, after the verification "
                                  "time", check="snp.crl.not-yet-valid")
        if c.next_update_utc is not None and now > c.next_update_utc:
            raise CollateralError(f"the CRL expired at {c.next_update_utc.isoformat()}", check="snp.crl.expired")
    # The ARK's CRL lists certificates by serial number; both keys below the ARK are looked up, since
    # a revoked ASK takes every VCEK it issued with it.
    for name, cert in certs:
        cert_c = _cert(cert, name.lower())
        entry = c.get_revoked_certificate_by_serial_number(cert_c.serial_number)
        if entry is not None:
            raise CollateralError(f"the {name} ({cert_c.subject.rfc4514_string()}, serial "
                                  f"{cert_c.serial_number:x}) is revoked since {entry.revocation_date_utc.isoformat()}",
                                  check="snp.crl.revoked")


def split_chain(data: bytes) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK, ARK) from AMD KDS ``cert_chain`` PEM (ASK first, then ARK)."""
    certs = load_certificates(data)
    if len(certs) != 2:
        raise ParseError(f"{len(certs)} certificates; a KDS cert_chain has ASK and ARK", format="X.509")
    return certs[0], certs[1]


__all__ = [
    "GUID_ARK",
    "GUID_ASK",
    "GUID_VCEK",
    "GUID_VLEK",
    "CertTableEntry",
    "SNPClaims",
    "SNPReport",
    "POLICY_DEBUG",
    "TCBVersion",
    "check_crl",
    "load_crl",
    "load_certificates",
    "parse_cert_table",
    "parse_report",
    "split_chain",
    "svsm_report_data",
    "vcek_tcb",
    "verify_report",
]

