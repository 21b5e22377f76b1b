"""TDX quotes and TD reports: the pure parser (DCAP Quoting Library API Quote v4 §A.3, v5 §A.4; TDX Module ABI §3.4.2).

Bytes in, frozen objects out; every length is bounded before it is used and every
malformed input is a :class:`~tsmr.errors.ParseError` naming the field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ...errors import ParseError

_FMT = "tdx-quote"
_FMT_REPORT = "tdreport"

#: Intel's QE vendor id (DCAP Quoting Library API, quote header).
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
BODY_TYPE_TDX10 = 2
BODY_TYPE_TDX15 = 3
#: TD_ATTRIBUTES.DEBUG (TDX Module ABI spec, TD_ATTRIBUTES bit 0): the host can read and write the TD's
#: private memory and registers, so nothing the TD measures or holds is protected from it.
TD_ATTRIBUTES_DEBUG = 1 << 0

HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
QE_REPORT_SIZE = 384
#: Bound on the signature data so a hostile length cannot make us allocate or scan gigabytes.
MAX_SIG_DATA = 1 << 20

# Precompiled structs (all little-endian per the DCAP spec).
_HEADER = struct.Struct("<HHIHH16s20s")
_TD10_BODY = struct.Struct("<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s")
_TD15_EXTRA = struct.Struct("<16s48s")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_BODY_DESC = struct.Struct("<HI")
_CERT_HDR = struct.Struct("<HI")
_QE_REPORT = struct.Struct("<16sI28s16s32s32s32s96sHH60s64s")


def _need(data: bytes, off: int, n: int, fld: str, fmt: str = _FMT) -> None:
    if n < 0 or off + n > len(data):
        raise ParseError(
            f"truncated: need {n} bytes, have {max(0, len(data) - off)}", format=fmt, offset=off, field=fld
        )


@dataclass(frozen=True)
class QuoteHeader:
    """Quote header (DCAP Quoting Library API, Quote v4/v5 header, 48 bytes)."""

    version: int
    att_key_type: int
    tee_type: int
    pce_svn: int
    qe_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TDReportBody:
    """TD quote body (DCAP API: TD 1.0 report body, 584 bytes; TD 1.5 adds 64 bytes)."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn_2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


@dataclass(frozen=True)
class EnclaveReportBody:
    """SGX report body used for the QE report (SGX SDM REPORTBODY, 384 bytes)."""

    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes
    raw: bytes


@dataclass(frozen=True)
class TDXQuote:
    """A parsed TDX quote v4 or v5 (DCAP Quoting Library API, Appendix A)."""

    header: QuoteHeader
    body_type: int
    body: TDReportBody
    signed_data: bytes  # header || [descriptor] || body: what the attestation key signs
    signature: bytes  # r || s, big-endian
    attestation_key: bytes  # x || y
    qe_report: EnclaveReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    trailing: int = 0

    @property
    def version(self) -> int:
        return self.header.version


def _parse_body(data: bytes, off: int, body_type: int) -> TDReportBody:
    _need(data, off, TD10_BODY_SIZE, "body")
    f = _TD10_BODY.unpack_from(data, off)
    extra: tuple[bytes | None, bytes | None] = (None, None)
    if body_type == BODY_TYPE_TDX15:
        _need(data, off + TD10_BODY_SIZE, _TD15_EXTRA.size, "body")
        extra = _TD15_EXTRA.unpack_from(data, off + TD10_BODY_SIZE)
    fields: tuple[Any, ...] = (*f, *extra)  # the TDX 1.0 body, then tee_tcb_svn_2 and mrservicetd (1.5)
    return TDReportBody(*fields)


def _parse_qe_report(raw: bytes) -> EnclaveReportBody:
    cpusvn, misc, _r1, attrs, mrenclave, _r2, mrsigner, _r3, prodid, svn, _r4, rdata = _QE_REPORT.unpack(raw)
    return EnclaveReportBody(cpusvn, misc, attrs, mrenclave, mrsigner, prodid, svn, rdata, raw)


def parse_quote(data: bytes) -> TDXQuote:
    """Parse a TDX quote v4 or v5 (DCAP Quoting Library API, Quote v4 §A.3 / v5 §A.4).

    Total: returns a :class:`TDXQuote` or raises :class:`ParseError`.  Trailing bytes after
    the signature data (zero padding from QGS/configfs outblobs) are tolerated.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("quote must be bytes", format=_FMT)
    data = bytes(data)
    _need(data, 0, HEADER_SIZE, "header")
    ver, akt, tee, pce_svn, qe_svn, vendor, user = _HEADER.unpack_from(data, 0)
    if ver not in (4, 5):
        raise ParseError(f"unsupported quote version {ver}", format=_FMT, offset=0, field="version")
    if akt != ATT_KEY_TYPE_ECDSA_P256:
        raise ParseError(
            f"unsupported attestation key type {akt}", format=_FMT, offset=2, field="att_key_type"
        )
    if tee != TEE_TYPE_TDX:
        raise ParseError(f"tee_type {tee:#x} is not TDX (0x81)", format=_FMT, offset=4, field="tee_type")
    header = QuoteHeader(ver, akt, tee, pce_svn, qe_svn, vendor, user)
    off = HEADER_SIZE
    if ver == 4:
        body_type = BODY_TYPE_TDX10
        body_size = TD10_BODY_SIZE
    else:
        _need(data, off, _BODY_DESC.size, "body_descriptor")
        body_type, body_size = _BODY_DESC.unpack_from(data, off)
        expected = {BODY_TYPE_TDX10: TD10_BODY_SIZE, BODY_TYPE_TDX15: TD15_BODY_SIZE}.get(body_type)
        if expected is None:
            raise ParseError(f"unsupported body type {body_type}", format=_FMT, offset=off, field="body_type")
        if body_size != expected:
            raise ParseError(
                f"body size {body_size} != {expected}", format=_FMT, offset=off + 2, field="body_size"
            )
        off += _BODY_DESC.size
    body = _parse_body(data, off, body_type)
    off += body_size
    signed_end = off
    _need(data, off, 4, "sig_data_len")
    (sig_len,) = _U32.unpack_from(data, off)
    off += 4
    if sig_len > MAX_SIG_DATA:
        raise ParseError(
            f"signature data length {sig_len} exceeds {MAX_SIG_DATA}",
            format=_FMT,
            offset=off - 4,
            field="sig_data_len",
        )
    _need(data, off, sig_len, "signature_data")
    sig_end = off + sig_len
    sd = data[:sig_end]  # every read below is bounded by the signature data, not the padding
    _need(sd, off, 128 + _CERT_HDR.size, "signature_data")
    signature = sd[off : off + 64]
    att_key = sd[off + 64 : off + 128]
    off += 128
    ctype, csize = _CERT_HDR.unpack_from(sd, off)
    if ctype != CERT_DATA_QE_REPORT:
        raise ParseError(
            f"certification data type {ctype} != 6 (QE report)",
            format=_FMT,
            offset=off,
            field="cert_data_type",
        )
    off += _CERT_HDR.size
    _need(sd, off, csize, "cert_data")
    cd_end = off + csize
    cd = sd[:cd_end]
    _need(cd, off, QE_REPORT_SIZE + 64 + 2, "qe_report")
    qe_raw = cd[off : off + QE_REPORT_SIZE]
    qe_sig = cd[off + QE_REPORT_SIZE : off + QE_REPORT_SIZE + 64]
    off += QE_REPORT_SIZE + 64
    (auth_len,) = _U16.unpack_from(cd, off)
    off += 2
    _need(cd, off, auth_len, "qe_auth_data")
    auth = cd[off : off + auth_len]
    off += auth_len
    _need(cd, off, _CERT_HDR.size, "pck_cert_data")
    ptype, psize = _CERT_HDR.unpack_from(cd, off)
    if ptype != CERT_DATA_PCK_CHAIN:
        raise ParseError(
            f"nested certification data type {ptype} != 5 (PCK chain)",
            format=_FMT,
            offset=off,
            field="pck_cert_data_type",
        )
    off += _CERT_HDR.size
    _need(cd, off, psize, "pck_cert_chain")
    pem = cd[off : off + psize].rstrip(b"\x00")
    return TDXQuote(
        header=header,
        body_type=body_type,
        body=body,
        signed_data=data[:signed_end],
        signature=signature,
        attestation_key=att_key,
        qe_report=_parse_qe_report(qe_raw),
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        pck_chain_pem=pem,
        trailing=len(data) - sig_end,
    )


@dataclass(frozen=True)
class TDReport:
    """TDREPORT_STRUCT (TDX Module ABI §3.4.2; formats.md §5.1), 1024 bytes, MAC'd not signed."""

    report_type: bytes
    cpusvn: bytes
    tee_tcb_info_hash: bytes
    tee_info_hash: bytes
    report_data: bytes
    mac: bytes
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    servtd_hash: bytes


_REPORTMAC = struct.Struct("<8s8s16s48s48s64s32s32s")
_TEE_TCB_INFO = struct.Struct("<8s16s48s48s8s")
_TDINFO = struct.Struct("<8s8s48s48s48s48s48s48s48s48s48s")


def parse_tdreport(data: bytes) -> TDReport:
    """Parse a 1024-byte TDREPORT_STRUCT (TDX Module ABI §3.4.2; formats.md §5.1 offsets)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("report must be bytes", format=_FMT_REPORT)
    data = bytes(data)
    if len(data) != 1024:
        raise ParseError(f"TDREPORT is 1024 bytes, got {len(data)}", format=_FMT_REPORT, offset=0)
    rtype, _r, cpusvn, tcbh, teeh, rdata, _r2, mac = _REPORTMAC.unpack_from(data, 0)
    _valid, svn, mrseam, mrsignerseam, seam_attr = _TEE_TCB_INFO.unpack_from(data, 0x100)
    attrs, xfam, mrtd, cfg, owner, ownercfg, r0, r1, r2, r3, servtd = _TDINFO.unpack_from(data, 0x200)
    return TDReport(
        rtype,
        cpusvn,
        tcbh,
        teeh,
        rdata,
        mac,
        svn,
        mrseam,
        mrsignerseam,
        seam_attr,
        attrs,
        xfam,
        mrtd,
        cfg,
        owner,
        ownercfg,
        r0,
        r1,
        r2,
        r3,
        servtd,
    )


