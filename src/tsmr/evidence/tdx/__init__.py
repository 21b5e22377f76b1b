"""Intel TDX quotes: pure parser and verifier.

Layouts follow the *Intel TDX DCAP Quoting Library API* (Quote v4 §A.3, Quote v5 §A.4:
header, TD quote body, ECDSA quote signature data, QE certification data) and the
TDREPORT_STRUCT of the *Intel TDX Module ABI spec* (§3.4.2 / shared reference formats.md §5).
Collateral follows the *Intel PCS API v4* (TCB info v3, enclave identity v2, PCK CRL) and the
*Intel SGX PCK Certificate and CRL Profile* (SGX extensions OID 1.2.840.113741.1.13.1).

Everything here is pure: bytes/dicts in, objects out.  The only I/O is loading the shipped
Intel SGX Root CA through :mod:`importlib.resources`; the verification time is a parameter.
Work that depends only on exact input bytes and the trust anchor (decoded PCK chains, issuer
and collateral signatures, parsed collateral, CRL contents) is remembered in small bounded
caches, so that verifying many quotes with the same collateral does it once; checks that depend
on the time or on the quote run on every call (:func:`clear_caches` empties the caches).

The parts, along the verification flow:

* :mod:`.quote`: parsing quotes and TD reports;
* :mod:`.certs`: the Intel root, PCK chains and their SGX extension, CRLs, the caches;
* :mod:`.collateral`: :class:`Collateral` and the checks of TCB info and QE identity;
* :mod:`.verification`: :func:`verify_quote` and :class:`TDXClaims`.
"""

from .certs import (
    _CHAINS,
    _CRLS,
    _DOCS,
    _ROOTS,
    PCKExtensions,
    _chain,
    _check_crl,
    _root_info,
    clear_caches,
    intel_root,
    pck_extensions,
)
from .collateral import Collateral, _check_qe_identity, _match_tcb_level, _signed_json
from .quote import (
    BODY_TYPE_TDX10,
    BODY_TYPE_TDX15,
    INTEL_QE_VENDOR_ID,
    TD_ATTRIBUTES_DEBUG,
    EnclaveReportBody,
    QuoteHeader,
    TDReport,
    TDReportBody,
    TDXQuote,
    parse_quote,
    parse_tdreport,
)
from .verification import TDXClaims, verify_quote

__all__ = [
    "INTEL_QE_VENDOR_ID",
    "Collateral",
    "EnclaveReportBody",
    "PCKExtensions",
    "QuoteHeader",
    "TDReport",
    "TDReportBody",
    "TDXClaims",
    "TDXQuote",
    "TD_ATTRIBUTES_DEBUG",
    "clear_caches",
    "intel_root",
    "parse_quote",
    "parse_tdreport",
    "pck_extensions",
    "verify_quote",
]
