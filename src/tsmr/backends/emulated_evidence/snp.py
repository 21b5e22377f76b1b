"""AMD SEV-SNP attestation reports from the built-in emulator, under a test chain it generates.

An emulated SEV-SNP guest answers an attestation request the way the AMD
secure processor does (SEV-SNP Firmware ABI Specification §7.3, MSG_REPORT_REQ):
an ATTESTATION_REPORT (version 5, 0x4A0 bytes, little-endian) carrying the
caller's REPORT_DATA, the requested VMPL and the guest's launch MEASUREMENT and
HOST_DATA, signed with ECDSA P-384/SHA-384 over bytes 0x000-0x29F by a VCEK.
The certificates come in the shape of AMD's Key Distribution Service (VCEK
spec §2-3): a self-signed ARK and an ASK, both RSA-4096 and signed
RSASSA-PSS/SHA-384, and a P-384 VCEK signed by the ASK that carries AMD's VCEK
extensions (the TCB security patch levels it was issued for and the chip's
hwID, which the report repeats as REPORTED_TCB and CHIP_ID). The extended
request's certificate table (GHCB spec §4.1.8.1; configfs-tsm ``auxblob``)
holds the VCEK, ASK and ARK.

Every key is generated once per state directory and kept there (private keys
mode 0600 under ``private/``, directories 0700; RSA-4096 generation takes a
while, so it never happens per report). Nothing about them is rooted in
hardware: every name in the chain says it is the emulator's, NOT A REAL TEE.
A report verifies only for a verifier that is explicitly given the emulator's
``ark.pem`` as the trusted ARK, e.g. ``tsmr quote verify report.bin --ark
ark.pem --certs auxblob`` or ``tsmr.evidence.snp.verify_report(...,
trusted_arks=[ark])``; no verifier should trust it by default.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import secrets
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...algorithms import HashAlg
from ...errors import InputError
from ..emulated import EmulatedRegisterSet
from .tdx import _tlv

__all__ = ["EmulatedSNPSigner", "emulated_snp_report", "cert_table", "REPORT_VERSION", "EMULATED_TCB",
           "PRODUCT_NAME"]

_EMULATED = "tsmr emulator (NOT A REAL TEE)"
_CERTS = ("ark", "ask", "vcek")

#: The ATTESTATION_REPORT version made (ABI spec rev 1.57+: CPUID fields and mitigation vectors).
REPORT_VERSION = 5
SIG_ALGO_ECDSA_P384_SHA384 = 1
#: The emulated chip's security patch levels (TCB_VERSION, Milan/Genoa layout, ABI spec §2.2 Table 3).
EMULATED_TCB = {"blSPL": 4, "teeSPL": 0, "snpSPL": 22, "ucodeSPL": 213}
#: What the VCEK's productName extension says: the emulated chip is shaped like a Milan B0
#: (CPUID family 19h, model 01h, stepping 1), whose TCB_VERSION layout it uses.
PRODUCT_NAME = "Milan-B0"
_CPUID = (0x19, 0x01, 0x01)
_FIRMWARE = (1, 55, 21)  # major, minor, build of the emulated SNP firmware
#: Guest policy: ABI 0.0, SMT allowed (bit 16), the must-be-one bit 17; no debugging, no migration agent.
DEFAULT_POLICY = 0x30000
_PLATFORM_INFO = 0x1  # SMT_EN

# AMD VCEK certificate extensions (VCEK spec §3.1 Table 8), as snp.vcek_tcb reads them.
_OID_STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
_OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
_OID_SPL = {"blSPL": "1.3.6.1.4.1.3704.1.3.1", "teeSPL": "1.3.6.1.4.1.3704.1.3.2",
            "snpSPL": "1.3.6.1.4.1.3704.1.3.3", "ucodeSPL": "1.3.6.1.4.1.3704.1.3.8"}
_OID_SPL_RESERVED = ("1.3.6.1.4.1.3704.1.3.4", "1.3.6.1.4.1.3704.1.3.5", "1.3.6.1.4.1.3704.1.3.6",
                     "1.3.6.1.4.1.3704.1.3.7")
_OID_HWID = "1.3.6.1.4.1.3704.1.4"

# ATTESTATION_REPORT pieces (ABI spec §7.3 Table 23); offsets in comments, reserved bytes as padding.
_HEAD = struct.Struct("<IIQ16s16sIIQQI4x")  # 0x000: VERSION .. signer info, reserved to 0x050
_BODY = struct.Struct("<64s48s32s48s48s32s32sQ")  # 0x050: REPORT_DATA .. REPORTED_TCB (to 0x188)
_CPUID_INFO = struct.Struct("<BBB21x")  # 0x188: CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP, reserved to 0x1A0
_TAIL = struct.Struct("<64sQBBBxBBBxQQQ152x")  # 0x1A0: CHIP_ID .. CURRENT_MIT_VECTOR, reserved to 0x2A0
_SIGNED_SIZE = 0x2A0
_REPORT_SIZE = 0x4A0
_SIG_COMPONENT = 72  # R and S, little-endian, zero-extended; the rest of the 0x200-byte field is zero
assert _HEAD.size + _BODY.size + _CPUID_INFO.size + _TAIL.size == _SIGNED_SIZE

_CERT_ENTRY = struct.Struct("<16sII")  # GHCB spec §4.1.8.1: GUID, offset, length
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")


def _tcb_raw(tcb: dict[str, int]) -> int:
    """TCB_VERSION (Milan/Genoa layout): BOOT_LOADER, TEE, 4 reserved bytes, SNP, MICROCODE."""
    return int.from_bytes(bytes([tcb["blSPL"], tcb["teeSPL"], 0, 0, 0, 0, tcb["snpSPL"], tcb["ucodeSPL"]]), "little")


def _der_integer(value: int) -> bytes:
    """A non-negative DER INTEGER (AMD encodes each SPL this way inside the extension)."""
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def cert_table(entries: Sequence[tuple[uuid.UUID, bytes]]) -> bytes:
    """An SNP certificate table (GHCB spec §4.1.8.1): GUID/offset/length entries, an all-zero one, the data.

    Offsets count from the table's start; the certificates follow the
    terminator in the order given.
    """
    offset = _CERT_ENTRY.size * (len(entries) + 1)
    head, data = bytearray(), bytearray()
    for guid, blob in entries:
        head += _CERT_ENTRY.pack(guid.bytes, offset + len(data), len(blob))
        data += blob
    return bytes(head) + bytes(_CERT_ENTRY.size) + bytes(data)


class EmulatedSNPSigner:
    """The ARK, ASK and VCEK of an emulated AMD secure processor, kept in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._load_or_create()

    @property
    def ark_pem(self) -> Path:
        """The ARK certificate (PEM): the trust anchor to give a verifier (``--ark``)."""
        return self.dir / "ark.pem"

    def _key_path(self, name: str) -> Path:
        return self.dir / "private" / f"{name}.key"

    def _complete(self) -> bool:
        return all(self._key_path(n).exists() and (self.dir / f"{n}.pem").exists() for n in _CERTS)

    def _load_or_create(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        if not self._complete():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.dir / "private").mkdir(exist_ok=True, mode=0o700)
            lock = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one chain, however many processes start at once
                if not self._complete():
                    self._create()
            finally:
                os.close(lock)
        self.certs = {n: x509.load_pem_x509_certificate((self.dir / f"{n}.pem").read_bytes()) for n in _CERTS}
        self.vcek_key: Any = serialization.load_pem_private_key(self._key_path("vcek").read_bytes(), None)
        hwid, tcb = _vcek_extensions(self.certs["vcek"])
        if hwid is None or len(hwid) != 64 or set(tcb) != set(_OID_SPL):
            raise InputError(f"{self.dir / 'vcek.pem'} is not an emulator VCEK (no 64-byte hwID or TCB extensions)")
        self.chip_id: bytes = hwid
        self.tcb: dict[str, int] = tcb

    def _create(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        keys: dict[str, Any] = {
            "ark": rsa.generate_private_key(public_exponent=65537, key_size=4096),
            "ask": rsa.generate_private_key(public_exponent=65537, key_size=4096),
            "vcek": ec.generate_private_key(ec.SECP384R1()),
        }
        certs = _kds_chain(keys, chip_id=secrets.token_bytes(64), tcb=EMULATED_TCB)
        for n, k in keys.items():
            _write(self._key_path(n), k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()), 0o600)
        for n, c in certs.items():
            _write(self.dir / f"{n}.pem", c.public_bytes(serialization.Encoding.PEM), 0o644)

    def der(self, name: str) -> bytes:
        """The DER bytes of the ``ark``, ``ask`` or ``vcek`` certificate."""
        from cryptography.hazmat.primitives import serialization

        return self.certs[name].public_bytes(serialization.Encoding.DER)

    def cert_table(self) -> bytes:
        """The certificate table an extended report request returns: VCEK, ASK, ARK (DER)."""
        return cert_table([(GUID_VCEK, self.der("vcek")), (GUID_ASK, self.der("ask")), (GUID_ARK, self.der("ark"))])

    def report(self, *, report_data: bytes, measurement: bytes, host_data: bytes = bytes(32), vmpl: int = 0,
               guest_svn: int = 0, policy: int = DEFAULT_POLICY, family_id: bytes = bytes(16),
               image_id: bytes = bytes(16), id_key_digest: bytes = bytes(48), author_key_digest: bytes = bytes(48),
               report_id: bytes | None = None) -> bytes:
        """An ATTESTATION_REPORT (version 5) signed with the VCEK.

        *report_data* is exactly 64 bytes (MSG_REPORT_REQ REPORT_DATA),
        *measurement* the 48-byte launch digest, *host_data* 32 bytes, *vmpl*
        0 to 3. Every TCB field is the VCEK's TCB and CHIP_ID its hwID.
        *report_id* defaults to a value derived from the chip and the guest's
        launch (stable for one guest, as the firmware's is). No ID block is
        emulated unless *id_key_digest* / *author_key_digest* are given, and no
        migration agent (REPORT_ID_MA all ones).
        """
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        for name, value, size in (("report_data", report_data, 64), ("measurement", measurement, 48),
                                  ("host_data", host_data, 32), ("family_id", family_id, 16),
                                  ("image_id", image_id, 16), ("id_key_digest", id_key_digest, 48),
                                  ("author_key_digest", author_key_digest, 48)):
            if len(value) != size:
                raise InputError(f"{name} is {size} bytes in an SEV-SNP report, got {len(value)}")
        if not 0 <= vmpl <= 3:
            raise InputError(f"an SEV-SNP report's VMPL is 0 to 3, got {vmpl}")
        if report_id is None:
            report_id = hashlib.sha256(f"{_EMULATED} REPORT_ID".encode() + self.chip_id + bytes(measurement)
                                       + bytes(host_data)).digest()
        if len(report_id) != 32:
            raise InputError(f"report_id is 32 bytes, got {len(report_id)}")
        tcb = _tcb_raw(self.tcb)
        major, minor, build = _FIRMWARE
        signer_info = 0  # AUTHOR_KEY_EN 0, MASK_CHIP_KEY 0, SIGNING_KEY 0 (VCEK)
        signed = (
            _HEAD.pack(REPORT_VERSION, guest_svn, policy, bytes(family_id), bytes(image_id), vmpl,
                       SIG_ALGO_ECDSA_P384_SHA384, tcb, _PLATFORM_INFO, signer_info)
            + _BODY.pack(bytes(report_data), bytes(measurement), bytes(host_data), bytes(id_key_digest),
                         bytes(author_key_digest), bytes(report_id), b"\xff" * 32, tcb)
            + _CPUID_INFO.pack(*_CPUID)
            + _TAIL.pack(self.chip_id, tcb, build, minor, major, build, minor, major, tcb, 0, 0)
        )
        r, s = decode_dss_signature(self.vcek_key.sign(signed, ec.ECDSA(hashes.SHA384())))
        signature = (r.to_bytes(_SIG_COMPONENT, "little") + s.to_bytes(_SIG_COMPONENT, "little")).ljust(
            _REPORT_SIZE - _SIGNED_SIZE, b"\0")
        return signed + signature


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` (never wider), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _vcek_extensions(vcek: Any) -> tuple[bytes | None, dict[str, int]]:
    """The hwID and the SPLs of one of this emulator's VCEKs, as :func:`_kds_chain` wrote them."""
    from cryptography import x509

    def raw(oid: str) -> bytes | None:
        try:
            return bytes(vcek.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value.value)
        except (x509.ExtensionNotFound, AttributeError):
            return None

    tcb: dict[str, int] = {}
    for spl, oid in _OID_SPL.items():
        value = raw(oid)
        if value is not None and len(value) >= 3 and value[0] == 0x02 and value[1] == len(value) - 2:
            tcb[spl] = int.from_bytes(value[2:], "big", signed=True)  # a DER INTEGER
    return raw(_OID_HWID), tcb


def _kds_chain(keys: dict[str, Any], *, chip_id: bytes, tcb: dict[str, int]) -> dict[str, Any]:
    """ARK (self-signed) -> ASK -> VCEK, signed RSASSA-PSS/SHA-384 as AMD's KDS certificates are."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "SEV-SNP test chain"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, _EMULATED),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    names = {"ark": "ARK-Emulated (tsmr emulator test key)", "ask": "SEV-Emulated (tsmr emulator test key)",
             "vcek": "SEV-VCEK-Emulated (tsmr emulator test key)"}

    def builder(subject: str, issuer: str, years: int) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(names[subject])).issuer_name(name(names[issuer]))
                .public_key(keys[subject].public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + dt.timedelta(days=365 * years)))

    ca_usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                             encipher_only=False, decipher_only=False)
    ark = (builder("ark", "ark", 25)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .add_extension(ca_usage, critical=True)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(keys["ark"].public_key()), critical=False)
           .sign(keys["ark"], hashes.SHA384(), rsa_padding=pss))
    ask = (builder("ask", "ark", 25)
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .add_extension(ca_usage, critical=True)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(keys["ask"].public_key()), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(keys["ark"].public_key()),
                          critical=False)
           .sign(keys["ark"], hashes.SHA384(), rsa_padding=pss))

    def amd(oid: str, value: bytes) -> x509.UnrecognizedExtension:
        return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)

    vcek = builder("vcek", "ask", 7)
    vcek = vcek.add_extension(amd(_OID_STRUCT_VERSION, _der_integer(0)), critical=False)
    vcek = vcek.add_extension(amd(_OID_PRODUCT_NAME, _tlv(0x16, PRODUCT_NAME.encode())), critical=False)
    for spl, oid in _OID_SPL.items():
        vcek = vcek.add_extension(amd(oid, _der_integer(tcb[spl])), critical=False)
    for oid in _OID_SPL_RESERVED:
        vcek = vcek.add_extension(amd(oid, _der_integer(0)), critical=False)
    vcek = vcek.add_extension(amd(_OID_HWID, chip_id), critical=False)  # the 64 bytes themselves, as AMD's
    return {"ark": ark, "ask": ask, "vcek": vcek.sign(keys["ask"], hashes.SHA384(), rsa_padding=pss)}


def emulated_snp_report(regs: Any, report_data: bytes, *, vmpl: int = 0) -> tuple[bytes, bytes, Path]:
    """A report of an ``emulated:snp`` register set; its certificate table; and the ARK to trust.

    The report's MEASUREMENT and HOST_DATA are the register set's read-only
    ``measurement`` and ``host_data`` (fixed when the emulator was initialised).
    """
    if not isinstance(regs, EmulatedRegisterSet) or regs.profile_name != "snp":
        raise InputError("emulated SEV-SNP reports come from the emulated:snp backend")
    measurement = regs.read("measurement")[HashAlg.SHA384]
    host_data = regs.read("host_data")[None]
    signer = EmulatedSNPSigner(regs.dir / "sp")
    report = signer.report(report_data=report_data, measurement=measurement, host_data=host_data, vmpl=vmpl)
    return report, signer.cert_table(), signer.ark_pem
