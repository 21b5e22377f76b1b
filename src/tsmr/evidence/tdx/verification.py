"""TDX quote verification (the Intel DCAP QVL verification flow): :func:`verify_quote` and its claims."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ...errors import CollateralError, EvidenceError, SignatureError
from .quote import TD_ATTRIBUTES_DEBUG, parse_quote
from .certs import _aware, _chain, _check_crl, _raw_p256_key, _root_info, _verify_p256
from .collateral import Collateral, _check_qe_identity, _match_tcb_level, _signed_json

@dataclass(frozen=True)
class TDXClaims:
    """What a verified TDX quote says (values from the TD quote body and the PCK certificate)."""

    version: int
    registers: Mapping[str, bytes]  # mrtd, rtmr0..rtmr3
    report_data: bytes
    td_attributes: bytes
    xfam: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    mrseam: bytes
    tee_tcb_svn: bytes
    fmspc: bytes
    mrservicetd: bytes | None = None  # TDX 1.5 body (quote v5, body type 3) only
    tcb_status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    qe_tcb_status: str | None = None
    tdx_module_tcb_status: str | None = None
    checks: tuple[str, ...] = field(default=())
    debug: bool = False  # TD_ATTRIBUTES.DEBUG: only ever true when the caller allowed debug TDs

    @property
    def mrtd(self) -> bytes:
        return self.registers["mrtd"]




def verify_quote(
    quote: bytes,
    *,
    now: datetime,
    trust_root: Any = None,
    report_data: bytes | None = None,
    collateral: Collateral | None = None,
    allow_debug: bool = False,
) -> TDXClaims:
    """Verify a TDX quote v4/v5 (DCAP Quoting Library API; Intel DCAP QVL verification flow).

    Raises a :class:`SignatureError`/:class:`CollateralError` (``EvidenceError``) whose
    ``check`` names the failed check; returns :class:`TDXClaims` otherwise.  ``trust_root``
    is a ``cryptography`` certificate or its PEM (default: the shipped Intel SGX Root CA);
    ``now`` is the verification time (naive means UTC); ``report_data`` (up to 64 bytes,
    zero-padded) must equal REPORTDATA when given; ``collateral`` enables the CRL, TCB info,
    TCB status and QE identity checks.  A TCB status other than ``Revoked`` does not fail: it is
    in the claims (``tcb_status``, ``advisory_ids``, ``qe_tcb_status``, ``tdx_module_tcb_status``)
    for the caller to judge.  A debuggable TD (TD_ATTRIBUTES.DEBUG) fails ``tdx.debug`` unless
    ``allow_debug``; the claims then say ``debug=True``.

    Reusing the same ``collateral`` (or one built from the same bytes) and PCK chain is cheap:
    their signatures are verified once per trust anchor, while validity dates, nextUpdate, the
    quote's own signatures and the quote-specific CRL, TCB and QE identity checks run every time.
    """
    q = parse_quote(quote)
    now = _aware(now)
    root = _root_info(trust_root)
    done: list[str] = []

    # 1. The attestation key signs header || body.
    _verify_p256(
        _raw_p256_key(q.attestation_key, "tdx.quote.signature"),
        q.signature,
        q.signed_data,
        check="tdx.quote.signature",
        what="quote",
    )
    done.append("tdx.quote.signature")

    # 2. PCK chain to the trusted root; the quote's root is only accepted if it equals ours.
    chain = _chain(q.pck_chain_pem, root, now, check="tdx.pck_chain")
    done.append("tdx.pck_chain")

    # 3. The PCK key signs the QE report ...
    _verify_p256(
        chain.leaf_key(),
        q.qe_report_signature,
        q.qe_report.raw,
        check="tdx.qe_report.signature",
        what="QE report",
    )
    done.append("tdx.qe_report.signature")

    # 4. ... and the QE report binds the attestation key (report_data = SHA-256(key||auth) || 0*32).
    want = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(want, q.qe_report.report_data):
        raise SignatureError("QE report does not bind the attestation key", check="tdx.qe_report.binding")
    done.append("tdx.qe_report.binding")

    if report_data is not None:
        rd = bytes(report_data)
        if len(rd) > 64:
            raise EvidenceError("expected report_data is longer than 64 bytes", check="tdx.report_data")
        if not hmac.compare_digest(rd.ljust(64, b"\x00"), q.body.report_data):
            raise EvidenceError("REPORTDATA does not match the expected value", check="tdx.report_data")
        done.append("tdx.report_data")

    ext = chain.extensions()
    status = qe_status = module_status = None
    advisories: tuple[str, ...] = ()
    if collateral is not None:
        info = _signed_json(
            collateral.tcb_info,
            collateral.tcb_info_signature,
            collateral.tcb_info_issuer_chain,
            root,
            now,
            "tdx.tcb_info",
        )
        done += ["tdx.tcb_info.signature", "tdx.tcb_info.expired"]
        # An SGX TCB info (id "SGX") is signed by the same key: accept only TDX TCB info v3+.
        if info.get("id") != "TDX" or not isinstance(info.get("version"), int) or info["version"] < 3:
            raise CollateralError("collateral is not a TDX TCB info v3", check="tdx.tcb_info.id")
        try:
            info_fmspc = bytes.fromhex(str(info.get("fmspc", "")))
        except ValueError as exc:
            raise CollateralError("TCB info has a malformed FMSPC", check="tdx.tcb_info.fmspc") from exc
        if not hmac.compare_digest(info_fmspc, ext.fmspc):
            raise CollateralError("TCB info is for another FMSPC", check="tdx.tcb_info.fmspc")
        _check_crl(collateral.pck_crl, collateral.pck_crl_issuer_chain, chain, 0, root, now, "tdx.crl")
        if collateral.root_ca_crl is not None and len(chain.certs) >= 2:
            _check_crl(collateral.root_ca_crl, root.pem, chain, 1, root, now, "tdx.crl.root")
            done.append("tdx.crl.root")
        done.append("tdx.crl")
        if collateral.qe_identity is not None:
            if collateral.qe_identity_signature is None or collateral.qe_identity_issuer_chain is None:
                raise CollateralError(
                    "QE identity lacks signature or chain", check="tdx.qe_identity.signature"
                )
            ident = _signed_json(
                collateral.qe_identity,
                collateral.qe_identity_signature,
                collateral.qe_identity_issuer_chain,
                root,
                now,
                "tdx.qe_identity",
            )
            if ident.get("id") != "TD_QE":  # the SGX QE identity ("QE") is signed by the same key
                raise CollateralError("QE identity is not for the TD QE", check="tdx.qe_identity.id")
            qe_status = _check_qe_identity(ident, q.qe_report)
            done.append("tdx.qe_identity")
        # Platform TCB last, so that a platform without a matching level still gets its CRL and
        # QE identity evaluated (and a failure there is the one reported).
        status, advisories, module_status = _match_tcb_level(info, ext, q.body)
        if status == "Revoked" or module_status == "Revoked":
            raise CollateralError("platform TCB is revoked", check="tdx.tcb_status")
        done.append("tdx.tcb_status")

    # Last, so that a forged or revoked quote is reported as such rather than as a debug TD.
    debug = bool(int.from_bytes(q.body.td_attributes, "little") & TD_ATTRIBUTES_DEBUG)
    if debug and not allow_debug:
        raise EvidenceError("the TD is debuggable (TD_ATTRIBUTES.DEBUG is set): the host can read and change "
                            "its memory", check="tdx.debug")

    b = q.body
    return TDXClaims(
        version=q.version,
        registers=MappingProxyType(
            {"mrtd": b.mrtd, "rtmr0": b.rtmr0, "rtmr1": b.rtmr1, "rtmr2": b.rtmr2, "rtmr3": b.rtmr3}
        ),
        report_data=b.report_data,
        td_attributes=b.td_attributes,
        xfam=b.xfam,
        mrconfigid=b.mrconfigid,
        mrowner=b.mrowner,
        mrownerconfig=b.mrownerconfig,
        mrseam=b.mrseam,
        tee_tcb_svn=b.tee_tcb_svn,
        mrservicetd=b.mrservicetd,
        fmspc=ext.fmspc,
        tcb_status=status,
        advisory_ids=advisories,
        qe_tcb_status=qe_status,
        tdx_module_tcb_status=module_status,
        checks=tuple(done),
        debug=debug,
    )


