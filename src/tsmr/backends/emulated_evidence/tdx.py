"""Evidence from the built-in emulator, in the real formats, under a test chain it generates.

The emulated TD signs TDX Quote v4 (DCAP Quote Library API, ECDSA-P256 attestation
key type 2) the way a real one does: the attestation key signs header || TD report
body; a QE report carries SHA-256(attestation key || QE auth data) in its report data
and is signed by a PCK key; the PCK certificate chains through a PCK CA to a root.
Here all of those keys are generated once per state directory, and the root is a
*test* root: ``tsmr quote verify`` accepts such a quote only with ``--trust-root``
pointing at it (the emulator's ``root.pem``), never by default.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import struct
from pathlib import Path
from typing import Mapping

from ...errors import InputError
from ..emulated import EmulatedRegisterSet

_HEADER = struct.Struct("<HHIHH16s20s")  # version, att key type, TEE type, QE SVN, PCE SVN, QE vendor, user data
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
_NAMES = ("root", "pck_ca", "pck", "attestation")
EMULATED_FMSPC = bytes.fromhex("00ffffffffff")  # no real platform has it


class EmulatedTDXSigner:
    """The keys and certificates of an emulated TD's quoting enclave, kept in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._load_or_create()

    @property
    def root_pem(self) -> Path:
        return self.dir / "root.pem"

    def _load_or_create(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        if not all((self.dir / f"{n}.key").exists() for n in _NAMES) or not self.root_pem.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in _NAMES}
            certs = _chain(keys)
            for n, k in keys.items():
                path = self.dir / f"{n}.key"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
            for n, c in certs.items():
                (self.dir / f"{n}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        for n in _NAMES:
            key = serialization.load_pem_private_key((self.dir / f"{n}.key").read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise InputError(f"{self.dir / (n + '.key')}: not the emulator's P-256 key")
            self.keys[n] = key
        self.certs = {n: x509.load_pem_x509_certificate((self.dir / f"{n}.pem").read_bytes()) for n in ("root", "pck_ca", "pck")}

    def quote(self, *, report_data: bytes, registers: Mapping[str, bytes], td_attributes: bytes = bytes(8),
              xfam: bytes = bytes(8)) -> bytes:
        """A TDX Quote v4 over the given register values (mrtd, mrconfigid, mrowner, mrownerconfig, rtmr0-3)."""
        from cryptography.hazmat.primitives import serialization

        if len(report_data) > 64:
            raise InputError(f"TDX report data is at most 64 bytes, got {len(report_data)}")

        def reg(name: str) -> bytes:
            value = registers.get(name, bytes(48))
            if len(value) != 48:
                raise InputError(f"{name} must be 48 bytes")
            return value

        header = _HEADER.pack(4, 2, 0x81, 0, 0, INTEL_QE_VENDOR_ID, bytes(20))
        body = (bytes(16) + bytes(48) + bytes(48) + bytes(8) + td_attributes + xfam
                + reg("mrtd") + reg("mrconfigid") + reg("mrowner") + reg("mrownerconfig")
                + b"".join(reg(f"rtmr{i}") for i in range(4)) + report_data.ljust(64, b"\0"))
        assert len(body) == 584
        att = self.keys["attestation"].public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
        auth = hashlib.sha256(b"tsmr emulated QE").digest()
        # SGX report body of the QE (384 bytes); report data binds the attestation key.
        qe_report = bytes(320) + hashlib.sha256(att + auth).digest() + bytes(32)
        chain = b"".join(self.certs[n].public_bytes(serialization.Encoding.PEM) for n in ("pck", "pck_ca", "root"))
        inner = (qe_report + _rs(self.keys["pck"], qe_report) + struct.pack("<H", len(auth)) + auth
                 + struct.pack("<HI", 5, len(chain)) + chain)
        sig_data = _rs(self.keys["attestation"], header + body) + att + struct.pack("<HI", 6, len(inner)) + inner
        return header + body + struct.pack("<I", len(sig_data)) + sig_data


def _tlv(tag: int, val: bytes) -> bytes:
    n = len(val)
    ln = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + ln + val


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def sgx_extension(fmspc: bytes, pcesvn: int, comps: tuple[int, ...]) -> bytes:
    """The SGX extension of a PCK certificate (PCK Certificate and CRL Profile 1.3.5), DER."""
    base = "1.2.840.113741.1.13.1"
    pair = lambda oid, v: _tlv(0x30, _oid(oid) + v)
    tcb = b"".join(pair(f"{base}.2.{i + 1}", _tlv(0x02, bytes([c]))) for i, c in enumerate(comps))
    tcb += pair(f"{base}.2.17", _tlv(0x02, pcesvn.to_bytes(2, "big")))
    tcb += pair(f"{base}.2.18", _tlv(0x04, bytes(comps)))
    return _tlv(
        0x30,
        pair(f"{base}.1", _tlv(0x04, bytes(16)))
        + pair(f"{base}.2", _tlv(0x30, tcb))
        + pair(f"{base}.3", _tlv(0x04, b"\0\0"))
        + pair(f"{base}.4", _tlv(0x04, fmspc)),
    )


def _rs(key, msg: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _chain(keys):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tsmr emulator (NOT A REAL TEE)"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)

    def cert(subject: str, key, issuer: str, ikey, ca: bool, sgx: bytes | None = None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sgx is not None:
            b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.840.113741.1.13.1"), sgx),
                                critical=False)
        return b.sign(ikey, hashes.SHA256())

    return {
        "root": cert("tsmr emulator test root", keys["root"], "tsmr emulator test root", keys["root"], True),
        "pck_ca": cert("tsmr emulator PCK CA", keys["pck_ca"], "tsmr emulator test root", keys["root"], True),
        "pck": cert("tsmr emulator PCK", keys["pck"], "tsmr emulator PCK CA", keys["pck_ca"], False,
                    sgx_extension(EMULATED_FMSPC, 0, (0,) * 16)),
    }


def _crl(issuer, key, revoked, now: dt.datetime) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
         .last_update(now - dt.timedelta(hours=1)).next_update(now + dt.timedelta(days=30)))
    for serial in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(now - dt.timedelta(hours=1)).build())
    return bytes(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def emulated_collateral(signer: EmulatedTDXSigner, *, status: str = "UpToDate", advisories: tuple[str, ...] = (),
                        qe_status: str = "UpToDate", module_status: str | None = None, qe_identity: bool = True,
                        root_crl: bool = True, revoked_pck: bool = False,
                        now: dt.datetime | None = None) -> dict[str, object]:
    """Collateral for the emulated platform, as Intel's PCS serves it for a real one (PCCS-style JSON).

    Under the emulator's test root: a TCB signing certificate, a signed TDX TCB info v3 for
    the emulated FMSPC whose one TCB level has ``status`` (with ``advisories``), a signed
    TD_QE identity v2 whose level has ``qe_status``, a PCK CRL (listing the emulated PCK when
    ``revoked_pck``) and a root CA CRL.  With ``module_status`` the TCB info names the TDX
    module TDX_01 at that status.  Valid for 30 days from ``now``, so a verifier checks every
    part of an emulated quote, TCB status included, exactly as it would a real one.
    """
    import json

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = now or dt.datetime.now(dt.timezone.utc)
    root, root_key = signer.certs["root"], signer.keys["root"]
    tcb_key = ec.generate_private_key(ec.SECP256R1())
    tcb_cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tsmr emulator (NOT A REAL TEE)"),
                                         x509.NameAttribute(NameOID.COMMON_NAME, "tsmr emulator TCB signing")]))
                .issuer_name(root.subject).public_key(tcb_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(root_key, hashes.SHA256()))

    def pem(*certs: x509.Certificate) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)

    issue = (now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    nxt = (now + dt.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    level = {"tcb": {"sgxtcbcomponents": [{"svn": 0}] * 16, "pcesvn": 0, "tdxtcbcomponents": [{"svn": 0}] * 16},
             "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": status, "advisoryIDs": list(advisories)}
    info: dict[str, object] = {"id": "TDX", "version": 3, "issueDate": issue, "nextUpdate": nxt,
                               "fmspc": EMULATED_FMSPC.hex(), "pceId": "0000", "tcbType": 0,
                               "tcbEvaluationDataNumber": 17, "tcbLevels": [level]}
    if module_status is not None:
        info["tdxModuleIdentities"] = [{
            "id": "TDX_01", "mrsigner": "00" * 48, "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
            "tcbLevels": [{"tcb": {"isvsvn": 0}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": module_status}]}]
    tcb_text = json.dumps(info, separators=(",", ":"))
    doc: dict[str, object] = {
        "tcb_info": tcb_text,
        "tcb_info_signature": _rs(tcb_key, tcb_text.encode()).hex(),
        "tcb_info_issuer_chain": pem(tcb_cert, root),
        "pck_crl": _crl(signer.certs["pck_ca"], signer.keys["pck_ca"],
                        [signer.certs["pck"].serial_number] if revoked_pck else [], now).hex(),
        "pck_crl_issuer_chain": pem(signer.certs["pck_ca"], root),
    }
    if qe_identity:
        # The emulated QE report is all zeros but for its report data: MRSIGNER, ISVPRODID, ISVSVN 0.
        ident = {"id": "TD_QE", "version": 2, "issueDate": issue, "nextUpdate": nxt, "tcbEvaluationDataNumber": 17,
                 "miscselect": "00000000", "miscselectMask": "FFFFFFFF", "attributes": "00" * 16,
                 "attributesMask": "FF" * 16, "mrsigner": "00" * 32, "isvprodid": 0,
                 "tcbLevels": [{"tcb": {"isvsvn": 0}, "tcbDate": "2025-01-01T00:00:00Z", "tcbStatus": qe_status}]}
        qe_text = json.dumps(ident, separators=(",", ":"))
        doc.update(qe_identity=qe_text, qe_identity_signature=_rs(tcb_key, qe_text.encode()).hex(),
                   qe_identity_issuer_chain=pem(tcb_cert, root))
    if root_crl:
        doc["root_ca_crl"] = _crl(root, root_key, [], now).hex()
    return doc


def write_emulated_collateral(signer: EmulatedTDXSigner, path: str | os.PathLike[str] | None = None,
                              **kw: object) -> Path:
    """:func:`emulated_collateral` written as JSON (default: ``collateral.json`` beside the test root)."""
    import json

    out = Path(path) if path is not None else signer.dir / "collateral.json"
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(emulated_collateral(signer, **kw)))  # type: ignore[arg-type]
    os.replace(tmp, out)
    return out


def emulated_tdx_quote(regs, report_data: bytes) -> tuple[bytes, Path]:
    """A quote of an ``emulated:tdx`` register set over its current values; and the test root to trust."""
    if not isinstance(regs, EmulatedRegisterSet) or regs.profile_name != "tdx":
        raise InputError("emulated TDX quotes come from the emulated:tdx backend")
    values = {}
    for reg in regs.registers():
        for alg, value in regs.read(reg.name).items():
            values[reg.name] = value
    signer = EmulatedTDXSigner(regs.dir / "qe")
    return signer.quote(report_data=report_data, registers=values), signer.root_pem


__all__ = ["emulated_tdx_quote", "EmulatedTDXSigner", "sgx_extension", "EMULATED_FMSPC", "emulated_collateral",
           "write_emulated_collateral"]
