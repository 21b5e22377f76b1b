"""The emulator's AMD SEV-SNP guest: test chain, ATTESTATION_REPORT, certificate table, configfs-tsm and CLI.

Everything runs on real components: the reports are verified by
``tsmr.evidence.snp``, the tree is served through FUSE by ``tsmr emulate
configfs`` and read by the configfs-tsm client, and the command line runs as
a separate process. The RSA-4096 ARK and ASK are generated once for the module.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from tsmr.algorithms import HashAlg
from tsmr.backends.configfs import ConfigfsTsm, report_data
from tsmr.backends.configfs_emulated import EmulatedSnpGuest, EmulatedTsm, source_for, trust_anchor
from tsmr.backends.emulated import EmulatedRegisterSet, initialise
from tsmr.backends.profiles import SNP_EMULATED_MEASUREMENT
from tsmr.errors import BackendError, CollateralError, EvidenceError, InputError, SignatureError
from tsmr.evidence import snp
from tsmr.backends.emulated_evidence.snp import EMULATED_TCB, EmulatedSNPSigner, cert_table, emulated_snp_report

from conftest import FIXTURES, emulator_mount
from emulated_collateral import snp_crl

NONCE = bytes.fromhex("5eed") * 16
NOW = dt.datetime.now(dt.timezone.utc)
TSMR = [sys.executable, "-m", "tsmr.cli.main"]


# --- module-wide state: one emulated SNP guest, one test chain -----------------------------

@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("snp-state")
    initialise("snp", state_dir=d)
    return d


@pytest.fixture(scope="module")
def signer(state: Path) -> EmulatedSNPSigner:
    return EmulatedSNPSigner(state / "emulator" / "snp" / "sp")


@pytest.fixture(scope="module")
def ark_pem(signer: EmulatedSNPSigner) -> Path:
    return signer.ark_pem


@pytest.fixture(scope="module")
def report(signer: EmulatedSNPSigner) -> bytes:
    return signer.report(report_data=report_data(NONCE), measurement=SNP_EMULATED_MEASUREMENT, vmpl=0)


def _self_signed(cn: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
            .sign(key, hashes.SHA384()))


@pytest.fixture(scope="module")
def other_arks() -> list[x509.Certificate]:
    """ARKs that are not the emulator's: one made here, and AMD's Milan ARK when the fixtures are present."""
    arks = [_self_signed("another ARK")]
    milan = FIXTURES.optional("go-sev-guest/milan.testcer")
    if milan is not None:
        arks.append(snp.split_chain(milan.read_bytes())[1])
    return arks


def _verify(signer: EmulatedSNPSigner, raw: bytes, *, trusted: list[Any] | None = None,
            nonce: bytes | None = NONCE) -> snp.SNPClaims:
    c = signer.certs
    return snp.verify_report(raw, vcek=c["vcek"], ask=c["ask"], ark=c["ark"],
                             report_data=None if nonce is None else report_data(nonce),
                             trusted_arks=[c["ark"]] if trusted is None else trusted, now=NOW)


# --- the test chain ---------------------------------------------------------------------------

def test_chain_has_the_shape_of_amds_and_says_it_is_a_test_chain(signer: EmulatedSNPSigner) -> None:
    ark, ask, vcek = (signer.certs[n] for n in ("ark", "ask", "vcek"))
    for cert in (ark, ask):
        assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 4096
    assert isinstance(vcek.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(vcek.public_key().curve, ec.SECP384R1)
    for child, issuer in ((ark, ark), (ask, ark), (vcek, ask)):
        assert child.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
        assert isinstance(child.signature_hash_algorithm, hashes.SHA384)
        params = child.signature_algorithm_parameters
        assert isinstance(params, padding.PSS)
        assert child.issuer == issuer.subject
        # Independently of tsmr: the issuer's key verifies the certificate, PSS with SHA-384.
        issuer.public_key().verify(child.signature, child.tbs_certificate_bytes,  # type: ignore[union-attr,call-arg]
                                   padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
                                   hashes.SHA384())
        text = child.subject.rfc4514_string()
        assert "tsmr emulator" in text and "NOT A REAL TEE" in text
    assert ark.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert snp.vcek_tcb(vcek) == EMULATED_TCB
    assert snp._vcek_hwid(vcek) == signer.chip_id and len(signer.chip_id) == 64 and any(signer.chip_id)


def test_keys_are_private_and_made_once(signer: EmulatedSNPSigner) -> None:
    private = signer.dir / "private"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700 and stat.S_IMODE(signer.dir.stat().st_mode) == 0o700
    for name in ("ark", "ask", "vcek"):
        assert stat.S_IMODE((private / f"{name}.key").stat().st_mode) == 0o600
    mtimes = {p.name: p.stat().st_mtime_ns for p in [*signer.dir.glob("*.pem"), *private.iterdir()]}
    again = EmulatedSNPSigner(signer.dir)
    assert {n: again.der(n) for n in ("ark", "ask", "vcek")} == {n: signer.der(n) for n in ("ark", "ask", "vcek")}
    assert again.chip_id == signer.chip_id
    assert {p.name: p.stat().st_mtime_ns for p in [*signer.dir.glob("*.pem"), *private.iterdir()]} == mtimes


# --- the report -----------------------------------------------------------------------------

def test_report_layout(signer: EmulatedSNPSigner, report: bytes) -> None:
    assert len(report) == 0x4A0
    rep = snp.parse_report(report)
    assert rep.version == 5 and rep.signature_algo == 1 and rep.vmpl == 0 and rep.signing_key == "vcek"
    assert rep.report_data == report_data(NONCE) and rep.measurement == SNP_EMULATED_MEASUREMENT
    assert rep.host_data == bytes(32) and rep.chip_id == signer.chip_id
    assert rep.policy & (1 << 17) and not rep.policy & (1 << 19)  # must-be-one bit; debugging not allowed
    assert rep.report_id_ma == b"\xff" * 32 and len(set(rep.report_id)) > 1
    tcb = {"blSPL": rep.reported_tcb.bootloader, "teeSPL": rep.reported_tcb.tee, "snpSPL": rep.reported_tcb.snp,
           "ucodeSPL": rep.reported_tcb.microcode}
    assert tcb == EMULATED_TCB
    assert rep.current_tcb == rep.reported_tcb == rep.committed_tcb == rep.launch_tcb
    assert (rep.cpuid_fam_id, rep.cpuid_mod_id, rep.cpuid_step) == (0x19, 0x01, 0x01)
    assert rep.current_major == 1 and rep.launch_mit_vector == 0 and rep.current_mit_vector == 0
    for start, end in ((0x4C, 0x50), (0x18B, 0x1A0), (0x1EB, 0x1EC), (0x1EF, 0x1F0), (0x208, 0x2A0),
                       (0x2A0 + 144, 0x4A0)):
        assert report[start:end] == bytes(end - start), hex(start)
    # R and S are little-endian in 72-byte fields: check the signature without tsmr.
    r = int.from_bytes(report[0x2A0:0x2E8], "little")
    s = int.from_bytes(report[0x2E8:0x330], "little")
    signer.certs["vcek"].public_key().verify(encode_dss_signature(r, s), report[:0x2A0],  # type: ignore[union-attr,call-arg]
                                             ec.ECDSA(hashes.SHA384()))


def test_verifies_only_under_the_emulator_ark(signer: EmulatedSNPSigner, report: bytes,
                                              other_arks: list[x509.Certificate]) -> None:
    claims = _verify(signer, report)
    assert claims.tcb_checked is True and claims.chip_id == signer.chip_id and claims.signing_key == "vcek"
    assert claims.measurement == SNP_EMULATED_MEASUREMENT
    for other in other_arks:
        with pytest.raises(CollateralError) as info:
            _verify(signer, report, trusted=[other])
        assert info.value.check == "snp.chain.ark"
        with pytest.raises(CollateralError) as info:  # the other ARK in the chain: it did not issue the ASK
            snp.verify_report(report, vcek=signer.certs["vcek"], ask=signer.certs["ask"], ark=other,
                              report_data=None, trusted_arks=[other], now=NOW)
        assert info.value.check == "snp.chain.ask"


def test_every_signed_byte_is_covered_by_the_signature(signer: EmulatedSNPSigner, report: bytes) -> None:
    failed = []
    for i in range(0x2A0):
        raw = bytearray(report)
        raw[i] ^= 0x01
        try:
            _verify(signer, bytes(raw), nonce=None)
        except SignatureError as exc:
            if exc.check != "snp.signature":
                failed.append((i, exc.check))
        else:
            failed.append((i, "verified"))
    assert failed == []
    for i in (0x2A0, 0x2E8 + 71, 0x330, 0x49F):  # R, S, and the reserved rest of the signature field
        raw = bytearray(report)
        raw[i] ^= 0x80
        with pytest.raises(SignatureError) as info:
            _verify(signer, bytes(raw), nonce=None)
        assert info.value.check == "snp.signature"


def test_a_wrong_nonce_fails_the_binding(signer: EmulatedSNPSigner, report: bytes) -> None:
    with pytest.raises(EvidenceError) as info:
        _verify(signer, report, nonce=NONCE[:-1] + b"\0")
    assert info.value.check == "snp.report_data"
    with pytest.raises(InputError):
        signer.report(report_data=NONCE[:32], measurement=SNP_EMULATED_MEASUREMENT)
    with pytest.raises(InputError):
        signer.report(report_data=report_data(NONCE), measurement=SNP_EMULATED_MEASUREMENT, vmpl=4)


def test_certificate_table_round_trips(signer: EmulatedSNPSigner) -> None:
    table = signer.cert_table()
    entries = snp.parse_cert_table(table)
    assert [(e.guid, e.name) for e in entries] == [(snp.GUID_VCEK, "vcek"), (snp.GUID_ASK, "ask"),
                                                   (snp.GUID_ARK, "ark")]
    assert [e.data for e in entries] == [signer.der("vcek"), signer.der("ask"), signer.der("ark")]
    assert table[3 * 24:4 * 24] == bytes(24)  # the all-zero terminator, then the certificates
    assert snp.parse_cert_table(cert_table([])) == ()


# --- the emulated guest: profile and provider, in process ----------------------------------------

def test_profile_values_set_at_init_are_what_the_report_says(state: Path, tmp_path: Path) -> None:
    measurement, host = bytes(range(48)), b"\x07" * 32
    initialise("snp", state_dir=tmp_path, values={"measurement": measurement, "host_data": host})
    # Reuse the module's chain instead of generating another one.
    shutil.copytree(state / "emulator" / "snp" / "sp", tmp_path / "emulator" / "snp" / "sp")
    with EmulatedRegisterSet("snp", tmp_path, create=False) as regs:
        assert [(r.name, [b.alg for b in r.banks]) for r in regs.registers()] == [
            ("measurement", [HashAlg.SHA384]), ("host_data", [None])]
        with pytest.raises(InputError, match="read-only"):
            regs.extend("measurement", {HashAlg.SHA384: bytes(48)})
        raw, table, ark = emulated_snp_report(regs, report_data(NONCE), vmpl=1)
    rep = snp.parse_report(raw)
    assert (rep.measurement, rep.host_data, rep.vmpl) == (measurement, host, 1)
    assert ark == tmp_path / "emulator" / "snp" / "sp" / "ark.pem"
    assert [e.name for e in snp.parse_cert_table(table)] == ["vcek", "ask", "ark"]


def test_in_process_provider(state: Path, signer: EmulatedSNPSigner) -> None:
    with EmulatedRegisterSet("snp", state, create=False) as regs:
        source = source_for(regs)
        assert isinstance(source, EmulatedSnpGuest) and source.name == "sev_guest" and source.privlevel_floor == 0
        assert trust_anchor(regs) == str(signer.ark_pem)
        rep = EmulatedTsm(source).report(report_data(NONCE), privlevel=3)
        assert rep.provider == "sev_guest" and rep.kind == "snp" and rep.manifestblob is None
        assert rep.auxblob == signer.cert_table()
        claims = _verify(signer, rep.outblob)
        assert claims.vmpl == 3 and claims.measurement == regs.read("measurement")[HashAlg.SHA384]
        with pytest.raises(BackendError) as info:  # sev_guest takes exactly 64 bytes
            EmulatedTsm(source).report(NONCE[:32])
        assert info.value.errno == errno.EINVAL
        with pytest.raises(BackendError) as info:  # no SVSM: its attributes are not there
            EmulatedTsm(source).report(report_data(NONCE), service_provider="svsm")
        assert info.value.errno == errno.ENOENT


# --- configfs-tsm through FUSE, and the command line ------------------------------------------

@pytest.fixture(scope="module")
def configfs(state: Path, signer: EmulatedSNPSigner) -> Iterator[Path]:
    with emulator_mount("snp", state, command="configfs") as mnt:
        yield mnt


def test_configfs_tree_and_client(configfs: Path, signer: EmulatedSNPSigner) -> None:
    item = configfs / "report" / "look"
    os.mkdir(item)
    try:
        assert sorted(os.listdir(item)) == ["auxblob", "generation", "inblob", "outblob", "privlevel",
                                            "privlevel_floor", "provider"]
        assert (item / "provider").read_text() == "sev_guest\n" and (item / "privlevel_floor").read_text() == "0\n"
    finally:
        os.rmdir(item)
    rep = ConfigfsTsm(configfs).report(report_data(NONCE), privlevel=2)
    assert rep.provider == "sev_guest" and rep.kind == "snp" and rep.generation == 2
    assert snp.parse_cert_table(rep.auxblob or b"")[0].data == signer.der("vcek")
    claims = _verify(signer, rep.outblob)
    assert claims.vmpl == 2 and claims.tcb_checked and claims.report_data == report_data(NONCE)
    with pytest.raises(BackendError) as info:
        ConfigfsTsm(configfs).report(NONCE[:32])
    assert info.value.errno == errno.EINVAL
    with pytest.raises(BackendError) as info:
        ConfigfsTsm(configfs).report(report_data(NONCE), service_provider="svsm")
    assert info.value.errno == errno.ENOENT and "no service_provider attribute" in str(info.value)
    assert os.listdir(configfs / "report") == []


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TSMR, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def other_ark_pem(tmp_path_factory: pytest.TempPathFactory, other_arks: list[x509.Certificate]) -> Path:
    path = tmp_path_factory.mktemp("other-ark") / "ark.pem"
    path.write_bytes(other_arks[0].public_bytes(serialization.Encoding.PEM))
    return path


def test_cli_quote_get_verify_attest_verify_appraise(configfs: Path, state: Path, ark_pem: Path, other_ark_pem: Path,
                                                     tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TSMR_BACKEND", "TSMR_CONFIGFS_TSM")}
    env.update(TSMR_STATE_DIR=str(state), TSMR_LOG_DIR=str(tmp_path / "logs"))
    out, aux = tmp_path / "report.bin", tmp_path / "auxblob"
    nonce = NONCE.hex()
    r = _run(env, "quote", "get", "--configfs", str(configfs), "--nonce", nonce, "-o", str(out), "--aux", str(aux),
             "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "snp" and json.loads(r.stdout)["provider"] == "sev_guest"

    r = _run(env, "quote", "verify", str(out), "--ark", str(ark_pem), "--certs", str(aux), "--nonce", nonce, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    verified = json.loads(r.stdout)
    assert verified["verified"] is True and verified["claims"]["tcb_checked"] is True
    assert verified["claims"]["measurement"] == SNP_EMULATED_MEASUREMENT.hex()
    r = _run(env, "quote", "verify", str(out), "--ark", str(other_ark_pem), "--certs", str(aux), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "snp.chain.ark"
    r = _run(env, "quote", "verify", str(out), "--ark", str(ark_pem), "--certs", str(aux), "--nonce", "00", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "snp.report_data"
    r = _run(env, "quote", "verify", str(out), "--certs", str(aux))
    assert r.returncode == 2 and "give --ark" in r.stderr  # the table's own ARK is never the anchor

    bundle = tmp_path / "bundle.json"
    r = _run(env, "attest", "--configfs", str(configfs), "--nonce", nonce, "-o", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(bundle.read_text())
    assert doc["evidence"]["kind"] == "snp" and doc["evidence"]["provider"] == "sev_guest" and doc["evidence"]["auxblob"]
    r = _run(env, "verify", str(bundle), "--ark", str(ark_pem), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["verified"] is True and json.loads(r.stdout)["kind"] == "snp"
    r = _run(env, "verify", str(bundle), "--ark", str(other_ark_pem), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "snp.chain.ark"
    # reference values learned from this bundle: the launch measurement, which nothing else vouches for
    refvals = tmp_path / "refvals.json"
    r = _run(env, "refvals", "learn", str(bundle), "--ark", str(ark_pem), "-o", str(refvals))
    assert r.returncode == 0, r.stdout + r.stderr
    assert SNP_EMULATED_MEASUREMENT.hex() in refvals.read_text()
    # AMD's CRL (here the emulator ARK's): without one, revocation is unchecked and the result a warning
    crl = tmp_path / "amd.crl"
    crl.write_bytes(snp_crl(state / "emulator" / "snp" / "sp"))
    with_rv = ["--refvals", str(refvals)]
    r = _run(env, "appraise", str(bundle), "--ark", str(ark_pem), "--nonce", nonce, *with_rv, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "warning"
    assert [f["id"] for f in json.loads(r.stdout)["findings"]] == ["evidence.collateral-missing"]
    r = _run(env, "appraise", str(bundle), "--ark", str(ark_pem), "--crl", str(crl), "--nonce", nonce, *with_rv, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    appraisal = json.loads(r.stdout)
    assert appraisal["status"] == "affirming" and appraisal["kind"] == "snp" and appraisal["findings"] == []
    r = _run(env, "appraise", str(bundle), "--ark", str(ark_pem), "--nonce", "00", *with_rv, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] != "affirming"
    # without reference values nothing says what the launch measurement may hold: a warning naming it
    r = _run(env, "appraise", str(bundle), "--ark", str(ark_pem), "--crl", str(crl), "--nonce", nonce, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "warning"
    [uncovered] = json.loads(r.stdout)["findings"]
    assert uncovered["id"] == "refvals.uncovered" and uncovered["context"]["registers"] == ["measurement"]

    # the launch measurement is a signed register: in the table, and in learned reference values
    rows = {(x["register"], x["bank"]): x for x in appraisal["registers"]}
    assert rows[("measurement", "sha384")]["status"] == "signed-only", appraisal["registers"]
    assert rows[("measurement", "sha384")]["reference"] == "matched"
    refvals.write_text(refvals.read_text().replace(SNP_EMULATED_MEASUREMENT.hex(), "ee" * 48))
    r = _run(env, "appraise", str(bundle), "--ark", str(ark_pem), "--nonce", nonce, "--refvals", str(refvals), "--json")
    assert r.returncode == 1
    assert "refvals.register-mismatch" in {f["id"] for f in json.loads(r.stdout)["findings"]}, r.stdout


def test_cli_in_process_emulator_names_its_anchor(state: Path, ark_pem: Path, tmp_path: Path) -> None:
    """Without a mounted tree, 'attest -b emulated:snp' reports in process and says which ARK to trust."""
    env = {k: v for k, v in os.environ.items() if k not in ("TSMR_BACKEND", "TSMR_CONFIGFS_TSM")}
    env.update(TSMR_STATE_DIR=str(state), TSMR_LOG_DIR=str(tmp_path / "logs"))
    bundle = tmp_path / "bundle.json"
    r = _run(env, "attest", "-b", "emulated:snp", "--nonce", "ab" * 8, "-o", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trust_anchor"] == str(ark_pem) and f"--ark {ark_pem}" in r.stderr
    r = _run(env, "verify", str(bundle), "--ark", str(ark_pem), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
