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

from ..errors import InputError

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
        self.keys = {n: serialization.load_pem_private_key((self.dir / f"{n}.key").read_bytes(), None) for n in _NAMES}
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


def _rs(key, msg: bytes) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _chain(keys):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tsmr emulator (NOT A REAL TEE)"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)

    def cert(subject: str, key, issuer: str, ikey, ca: bool, sgx: bytes | None = None):  # type: ignore[no-untyped-def]
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


def emulated_tdx_quote(regs, report_data: bytes) -> tuple[bytes, Path]:  # type: ignore[no-untyped-def]
    """A quote of an ``emulated:tdx`` register set over its current values; and the test root to trust."""
    from ..backends.emulated import EmulatedRegisterSet

    if not isinstance(regs, EmulatedRegisterSet) or regs.profile_name != "tdx":
        raise InputError("emulated TDX quotes come from the emulated:tdx backend")
    values = {}
    for reg in regs.registers():
        for alg, value in regs.read(reg.name).items():
            values[reg.name] = value
    signer = EmulatedTDXSigner(regs.dir / "qe")
    return signer.quote(report_data=report_data, registers=values), signer.root_pem


__all__ = ["emulated_tdx_quote", "EmulatedTDXSigner", "sgx_extension", "EMULATED_FMSPC"]
