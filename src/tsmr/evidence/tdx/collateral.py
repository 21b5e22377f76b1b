"""TDX collateral (*Intel PCS API v4*: TCB info v3, enclave identity v2, PCK and root CA CRLs) and its checks.

:class:`Collateral` holds the documents as Intel PCS or a PCCS serves them; the
functions here verify their signatures through their issuer chains and match a
quote's TCB against TCB info and its QE against the QE identity.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ...errors import CollateralError, ParseError
from .quote import EnclaveReportBody, TDReportBody
from .certs import PCKExtensions, _Chain, _DOCS, _as_bytes, _chain, _exact, _parse_time, _root_info, _verify_p256

# --- collateral ---


def _raw_json_member(text: bytes, key: str) -> bytes:
    """Return the exact bytes of the object value of ``key`` in a PCS response.

    Intel signs the bytes of the ``tcbInfo``/``enclaveIdentity`` object as served, so they are
    cut out of the text verbatim instead of being re-serialised from a parsed dict."""
    needle = f'"{key}"'.encode()
    i = text.find(needle)
    if i < 0:
        raise ParseError(f"missing {key!r}", format="pcs-json", field=key)
    j = text.find(b"{", i + len(needle))
    if j < 0:
        raise ParseError(f"{key!r} is not an object", format="pcs-json", field=key)
    depth = 0
    in_str = esc = False
    for k in range(j, len(text)):
        c = text[k]
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:
                esc = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return text[j : k + 1]
    raise ParseError(f"unterminated {key!r} object", format="pcs-json", field=key)


def _crl_bytes(v: Any) -> bytes:
    """CRLs arrive as DER, PEM, or (PCCS JSON) hex of DER."""
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("-----"):
            return s.encode()
        try:
            return bytes.fromhex(s)
        except ValueError:
            return s.encode()
    return bytes(v)


@dataclass(frozen=True)
class Collateral:
    """DCAP verification collateral (Intel PCS API v4; PCCS ``sgx_ql_qve_collateral_t`` fields).

    ``tcb_info`` / ``qe_identity`` hold the exact signed JSON bytes of the ``tcbInfo`` /
    ``enclaveIdentity`` objects; signatures are raw r||s (64 bytes)."""

    pck_crl: bytes
    pck_crl_issuer_chain: bytes
    tcb_info: bytes
    tcb_info_signature: bytes
    tcb_info_issuer_chain: bytes
    qe_identity: bytes | None = None
    qe_identity_signature: bytes | None = None
    qe_identity_issuer_chain: bytes | None = None
    root_ca_crl: bytes | None = None

    @staticmethod
    def _split(resp: bytes, key: str) -> tuple[bytes, bytes]:
        body = _raw_json_member(resp, key)
        try:
            sig = json.loads(resp)["signature"]
            return body, bytes.fromhex(sig)
        except (ValueError, KeyError, TypeError) as exc:
            raise ParseError(
                f"bad signature in {key} response", format="pcs-json", field="signature"
            ) from exc

    @classmethod
    def from_pcs(
        cls,
        *,
        tcb_info_response: bytes,
        tcb_info_issuer_chain: bytes,
        pck_crl: bytes,
        pck_crl_issuer_chain: bytes,
        qe_identity_response: bytes | None = None,
        qe_identity_issuer_chain: bytes | None = None,
        root_ca_crl: bytes | None = None,
    ) -> Collateral:
        """Build from raw Intel PCS responses (bodies plus URL-decoded issuer-chain headers)."""
        tcb, tsig = cls._split(bytes(tcb_info_response), "tcbInfo")
        qe = qsig = None
        if qe_identity_response is not None:
            qe, qsig = cls._split(bytes(qe_identity_response), "enclaveIdentity")
        return cls(
            pck_crl=_crl_bytes(pck_crl),
            pck_crl_issuer_chain=bytes(pck_crl_issuer_chain),
            tcb_info=tcb,
            tcb_info_signature=tsig,
            tcb_info_issuer_chain=bytes(tcb_info_issuer_chain),
            qe_identity=qe,
            qe_identity_signature=qsig,
            qe_identity_issuer_chain=None
            if qe_identity_issuer_chain is None
            else bytes(qe_identity_issuer_chain),
            root_ca_crl=None if root_ca_crl is None else _crl_bytes(root_ca_crl),
        )

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Collateral:
        """Build from one PCCS-style JSON document (keys as in ``sgx_ql_qve_collateral_t``).

        ``tcb_info``/``qe_identity`` may be either the signed object text or the whole PCS
        response (``{"tcbInfo": …, "signature": …}``); signatures are hex."""
        try:

            def body_sig(key: str, inner: str) -> tuple[bytes | None, bytes | None]:
                raw = doc.get(key)
                if raw is None:
                    return None, None
                raw_b = _as_bytes(raw)
                sig = doc.get(key + "_signature")
                if f'"{inner}"'.encode() in raw_b:
                    body, s2 = cls._split(raw_b, inner)
                    return body, bytes.fromhex(sig) if sig else s2
                return raw_b, bytes.fromhex(sig) if sig else None

            tcb, tsig = body_sig("tcb_info", "tcbInfo")
            qe, qsig = body_sig("qe_identity", "enclaveIdentity")
            if tcb is None or tsig is None:
                raise ParseError(
                    "tcb_info and its signature are required", format="pccs-json", field="tcb_info"
                )
            return cls(
                pck_crl=_crl_bytes(doc["pck_crl"]),
                pck_crl_issuer_chain=_as_bytes(doc["pck_crl_issuer_chain"]),
                tcb_info=tcb,
                tcb_info_signature=tsig,
                tcb_info_issuer_chain=_as_bytes(doc["tcb_info_issuer_chain"]),
                qe_identity=qe,
                qe_identity_signature=qsig,
                qe_identity_issuer_chain=_as_bytes(doc["qe_identity_issuer_chain"])
                if doc.get("qe_identity_issuer_chain")
                else None,
                root_ca_crl=_crl_bytes(doc["root_ca_crl"]) if doc.get("root_ca_crl") else None,
            )
        except KeyError as exc:
            raise ParseError(
                f"missing field {exc.args[0]!r}", format="pccs-json", field=str(exc.args[0])
            ) from exc
        except (TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, ParseError):
                raise
            raise ParseError(f"bad collateral document: {exc}", format="pccs-json") from exc




def _freeze(v: Any) -> Any:
    """A read-only copy of parsed JSON (objects become mappings, arrays tuples): it is shared."""
    if isinstance(v, dict):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


class _SignedDoc:
    """A collateral JSON object whose signature verified under its issuer chain."""

    __slots__ = ("chain", "issued", "issued_text", "next_update", "next_update_text", "obj")

    def __init__(self, chain: _Chain, obj: Any, next_update: datetime, next_update_text: Any,
                 issued: datetime | None = None, issued_text: Any = None) -> None:
        self.chain = chain
        self.obj = obj
        self.next_update = next_update
        self.next_update_text = next_update_text
        self.issued = issued
        self.issued_text = issued_text


def _signed_json(body: bytes, sig: bytes, chain_pem: bytes, root: Any, now: datetime, check: str) -> Mapping:
    """Verify a signed PCS object (TCB info, QE identity) at ``now`` and return it (read-only).

    Signature, chain signatures and parsing are remembered per exact bytes and anchor; the
    chain's validity and the object's nextUpdate are checked on every call."""
    anchor = _root_info(root)
    body, sig, chain_pem = _exact(body), _exact(sig), _exact(chain_pem)
    key = (check, body, sig, chain_pem, anchor.fp)
    doc = _DOCS.get(key)
    if doc is None:
        chain = _chain(chain_pem, anchor, now, check=check + ".signature")
        _verify_p256(chain.leaf_key(), sig, body, check=check + ".signature", what=check)
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise CollateralError(f"{check} is not JSON", check=check) from exc
        if not isinstance(obj, dict):
            raise CollateralError(f"{check} is not a JSON object", check=check)
        text = obj.get("nextUpdate", "")
        issued_text = obj.get("issueDate")
        issued = _parse_time(issued_text, check + ".not-yet-valid") if issued_text is not None else None
        doc = _SignedDoc(chain, _freeze(obj), _parse_time(text, check + ".expired"), text, issued, issued_text)
        _DOCS.put(key, doc)
    else:
        doc.chain.check_time(now, check + ".signature")
    if doc.issued is not None and now < doc.issued:
        raise CollateralError(f"{check} was issued at {doc.issued_text}, after the verification time",
                              check=check + ".not-yet-valid")
    if now > doc.next_update:
        raise CollateralError(f"{check} expired at {doc.next_update_text}", check=check + ".expired")
    return doc.obj


def _match_tdx_module(tcb_info: Mapping, body: TDReportBody) -> str | None:
    """TDX module identity status (TCB info v3 ``tdxModuleIdentities``), or None if not applicable.

    TEE_TCB_SVN[1] is the TDX module major version; when it is non-zero the module is identified
    as ``TDX_<major:02X>`` and its minor SVN (TEE_TCB_SVN[0]) is matched against that identity's
    levels, while the generic TDX component comparison skips indices 0 and 1."""
    major, minor = body.tee_tcb_svn[1], body.tee_tcb_svn[0]
    idents = tcb_info.get("tdxModuleIdentities")
    if major == 0 or not idents:
        return None
    want_id = f"TDX_{major:02X}"
    for ident in idents:
        if str(ident.get("id", "")).upper() != want_id:
            continue
        signer = bytes.fromhex(ident["mrsigner"])
        if not hmac.compare_digest(signer, body.mrsignerseam):
            raise CollateralError(f"MRSIGNERSEAM does not match {want_id}", check="tdx.tcb_status.module")
        mask = int(ident["attributesMask"], 16)
        got = int.from_bytes(body.seam_attributes, "big") & mask
        if got != int(ident["attributes"], 16) & mask:
            raise CollateralError(f"SEAM attributes do not match {want_id}", check="tdx.tcb_status.module")
        for level in ident.get("tcbLevels", []):
            if minor >= int(level["tcb"]["isvsvn"]):
                return str(level["tcbStatus"])
        raise CollateralError(
            f"TDX module SVN {minor} matches no {want_id} level", check="tdx.tcb_status.module"
        )
    raise CollateralError(f"TCB info has no identity {want_id}", check="tdx.tcb_status.module")


def _match_tcb_level(
    tcb_info: Mapping, ext: PCKExtensions, body: TDReportBody
) -> tuple[str, tuple[str, ...], str | None]:
    """First TCB level the platform meets (Intel PCS TDX TCB info v3, TCB level matching):
    SGX components and PCESVN from the PCK certificate, TDX components from TEE_TCB_SVN.

    Returns (status, advisory ids, TDX module identity status)."""
    try:
        module_status = _match_tdx_module(tcb_info, body)
        # With a module identity, TEE_TCB_SVN[0..1] are judged by it, not by tdxtcbcomponents.
        first = 2 if module_status is not None else 0
        for level in tcb_info.get("tcbLevels", []):
            tcb = level.get("tcb", {})
            sgx = [int(c.get("svn", 0)) for c in tcb.get("sgxtcbcomponents", [])]
            tdx = [int(c.get("svn", 0)) for c in tcb.get("tdxtcbcomponents", [])]
            if len(sgx) != 16 or len(tdx) != 16:
                continue
            if any(p < lv for p, lv in zip(ext.sgx_tcb_components, sgx)):
                continue
            if ext.pcesvn < int(tcb.get("pcesvn", 0)):
                continue
            if any(body.tee_tcb_svn[i] < tdx[i] for i in range(first, 16)):
                continue
            return str(level.get("tcbStatus")), tuple(map(str, level.get("advisoryIDs", []))), module_status
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CollateralError):
            raise
        raise CollateralError(f"malformed TCB info: {exc}", check="tdx.tcb_info") from exc
    raise CollateralError("platform TCB matches no TCB level (TCB not supported)", check="tdx.tcb_status")


def _check_qe_identity(ident: Mapping, qe: EnclaveReportBody) -> str:
    c = "tdx.qe_identity"
    try:
        mrsigner = bytes.fromhex(ident["mrsigner"])
        if not hmac.compare_digest(mrsigner, qe.mrsigner):
            raise CollateralError("QE MRSIGNER does not match QE identity", check=c + ".mrsigner")
        if qe.isvprodid != int(ident["isvprodid"]):
            raise CollateralError("QE ISVPRODID does not match QE identity", check=c + ".isvprodid")
        mask = int(ident["miscselectMask"], 16)
        if qe.miscselect & mask != int(ident["miscselect"], 16) & mask:
            raise CollateralError("QE MISCSELECT does not match QE identity", check=c + ".miscselect")
        amask = bytes.fromhex(ident["attributesMask"])
        want = bytes.fromhex(ident["attributes"])
        got = bytes(a & m for a, m in zip(qe.attributes, amask))
        exp = bytes(a & m for a, m in zip(want, amask))
        if not hmac.compare_digest(got, exp):
            raise CollateralError("QE attributes do not match QE identity", check=c + ".attributes")
        for level in ident.get("tcbLevels", []):
            if qe.isvsvn >= int(level["tcb"]["isvsvn"]):
                status = str(level["tcbStatus"])
                if status == "Revoked":
                    raise CollateralError("QE TCB level is revoked", check=c + ".tcb_status")
                return status
    except (KeyError, ValueError, TypeError) as exc:
        raise CollateralError(f"malformed QE identity: {exc}", check=c) from exc
    raise CollateralError("QE ISVSVN matches no QE identity TCB level", check=c + ".tcb_status")


