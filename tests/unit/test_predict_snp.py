"""``tsmr predict snp`` against sev-snp-measure (PyPI, run as its own command) on Debian's real OVMF.fd.

Every expected measurement comes from the oracle or from hashlib over the real files; none is
written down here.  The firmware is Debian's OVMF.fd as shipped, and, for direct kernel boots
(which its generic build does not measure), the same image with the AmdSev layout of the
SNP_KERNEL_HASHES section (tests/snp_oracle.py).  A shim binary stands in for a kernel and an
initrd: only their SHA-256 enters the launch.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import need_file
from snp_oracle import (OVMF, OVMF_NO_SEV, SHIM, SHIM_SIGNED, oracle, oracle_measurement,
                        with_kernel_hashes, write)
from tsmr.cli.main import app
from tsmr.errors import InputError
from tsmr.predict.snp import KernelHashes, ovmf_hash, predict_snp
from tsmr.predict.snp_firmware import SectionType, parse_ovmf
from tsmr.predict.snp_vmsa import VCPU_TYPES, BSP_RESET_ADDRESS, cpuid_signature, vcpu_signature, vmsa_page

ORACLE_TYPES = ["EPYC", "EPYC-v1", "EPYC-v2", "EPYC-IBPB", "EPYC-v3", "EPYC-v4", "EPYC-Rome", "EPYC-Rome-v1",
                "EPYC-Rome-v2", "EPYC-Rome-v3", "EPYC-Milan", "EPYC-Milan-v1", "EPYC-Milan-v2", "EPYC-Genoa",
                "EPYC-Genoa-v1", "EPYC-Turin"]
ORACLE_VMM = {"qemu": "QEMU", "ec2": "ec2", "gce": "gce"}


@pytest.fixture(scope="module")
def ovmf() -> bytes:
    return need_file(OVMF, "ovmf").read_bytes()


@pytest.fixture(scope="module")
def ovmf_path() -> Path:
    return need_file(OVMF, "ovmf")


@pytest.fixture(scope="module")
def amdsev(tmp_path_factory: pytest.TempPathFactory, ovmf: bytes) -> dict[int, Path]:
    """OVMF.fd with a SNP_KERNEL_HASHES page, the hash table at the start of the page and 0xc00 into it."""
    d = tmp_path_factory.mktemp("amdsev")
    return {off: write(d, f"OVMF-hashes-{off:x}.fd", with_kernel_hashes(ovmf, table_offset=off)) for off in (0, 0xC00)}


def _cli(*args: str) -> Any:
    r = CliRunner().invoke(app, ["predict", "snp", *args, "--json"], env={"COLUMNS": "200"})
    return r


def _cli_json(*args: str) -> dict[str, Any]:
    r = _cli(*args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# --- the launch digest against the oracle -------------------------------------------------------

@pytest.mark.parametrize("vcpu_type", ORACLE_TYPES)
def test_every_vcpu_type_matches_the_oracle(ovmf: bytes, ovmf_path: Path, vcpu_type: str) -> None:
    vcpus = 1 + ORACLE_TYPES.index(vcpu_type) % 5
    got = predict_snp(ovmf, vcpus=vcpus, vcpu_sig=vcpu_signature(vcpu_type), vmm="qemu")
    want = oracle_measurement("--vcpus", str(vcpus), "--vcpu-type", vcpu_type, "--ovmf", str(ovmf_path))
    assert got.claims["measurement"] == want


@pytest.mark.parametrize("vmm", ["qemu", "ec2", "gce"])
@pytest.mark.parametrize("vcpus,features", [(1, 0x1), (3, 0x21), (8, 0x5), (64, 0x3F)])
def test_vmms_vcpus_and_guest_features_match_the_oracle(ovmf: bytes, ovmf_path: Path, vmm: str, vcpus: int,
                                                         features: int) -> None:
    got = predict_snp(ovmf, vcpus=vcpus, vcpu_sig=vcpu_signature("EPYC-Genoa"), vmm=vmm, guest_features=features)
    want = oracle_measurement("--vcpus", str(vcpus), "--vcpu-type", "EPYC-Genoa", "--vmm-type", ORACLE_VMM[vmm],
                              "--guest-features", hex(features), "--ovmf", str(ovmf_path))
    assert got.claims["measurement"] == want


def test_signature_by_value_and_by_family_model_stepping(ovmf_path: Path) -> None:
    by_sig = _cli_json("--firmware", str(ovmf_path), "--vcpus", "2", "--vcpu-sig", "0xb40f81")
    assert by_sig["claims"]["measurement"] == oracle_measurement("--vcpus", "2", "--vcpu-sig", "0xb40f81",
                                                                 "--ovmf", str(ovmf_path))
    by_fms = _cli_json("--firmware", str(ovmf_path), "--vcpus", "3", "--vcpu-family", "26", "--vcpu-model", "17",
                       "--vcpu-stepping", "3")
    assert by_fms["claims"]["measurement"] == oracle_measurement(
        "--vcpus", "3", "--vcpu-family", "26", "--vcpu-model", "17", "--vcpu-stepping", "3", "--ovmf", str(ovmf_path))


def test_vcpu_signatures_follow_cpuid_encoding() -> None:
    # CPUID Fn0000_0001_EAX as real parts report it: Milan B1 0x00A00F11, Rome B0 0x00830F10,
    # Genoa B1 0x00A10F11, and (family below 0xF: no extended family) Intel Cascade Lake 0x00050657
    assert cpuid_signature(25, 1, 1) == 0x00A00F11
    assert cpuid_signature(23, 49, 0) == 0x00830F10
    assert cpuid_signature(25, 17, 1) == 0x00A10F11
    assert cpuid_signature(6, 85, 7) == 0x00050657
    assert set(ORACLE_TYPES) <= set(VCPU_TYPES)


@pytest.mark.parametrize("table_offset", [0, 0xC00])
@pytest.mark.parametrize("vmm,initrd,append", [
    ("qemu", False, None),
    ("qemu", True, None),
    ("qemu", False, "console=ttyS0 root=/dev/vda1"),
    ("qemu", True, "ro quiet café=ü"),
    ("ec2", True, "console=ttyS0"),
    ("gce", False, "x"),
])
def test_direct_kernel_boot_matches_the_oracle(amdsev: dict[int, Path], table_offset: int, vmm: str, initrd: bool,
                                               append: str | None) -> None:
    firmware = amdsev[table_offset]
    kernel = need_file(SHIM, "shim-signed")
    args = ["--vcpus", "2", "--vcpu-type", "EPYC-Milan", "--kernel", str(kernel)]
    if initrd:
        args += ["--initrd", str(need_file(SHIM_SIGNED, "shim-signed"))]
    if append is not None:
        args += ["--append", append]
    got = _cli_json("--firmware", str(firmware), "--vmm", vmm, *args)
    assert got["claims"]["measurement"] == oracle_measurement(*args, "--vmm-type", ORACLE_VMM[vmm],
                                                              "--ovmf", str(firmware))
    # the kernel, initrd and command line are components of their own, with the SHA-256 the table holds
    entries = {e["component"]: e["digests"]["sha256"] for e in got["events"] if e["type"] == "SEV_HASH_TABLE_ENTRY"}
    assert entries["kernel"] == hashlib.sha256(kernel.read_bytes()).hexdigest()
    want_initrd = SHIM_SIGNED.read_bytes() if initrd else b""
    assert entries["initrd"] == hashlib.sha256(want_initrd).hexdigest()
    assert entries["cmdline"] == hashlib.sha256((append or "").encode() + b"\0").hexdigest()


def test_an_empty_command_line_is_a_nul(amdsev: dict[int, Path]) -> None:
    kernel = need_file(SHIM, "shim-signed")
    args = ["--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", str(kernel)]
    got = _cli_json("--firmware", str(amdsev[0]), *args, "--append", "")
    assert got["claims"]["measurement"] == oracle_measurement(*args, "--ovmf", str(amdsev[0]))


# --- the firmware's own digest and precomputed launches ------------------------------------------

def test_ovmf_hash_matches_the_oracle(ovmf: bytes, ovmf_path: Path) -> None:
    r = oracle("--mode", "snp:ovmf-hash", "--ovmf", str(ovmf_path))
    assert r.returncode == 0, r.stderr
    want = r.stdout.strip()
    assert ovmf_hash(ovmf).hex() == want
    cli = CliRunner().invoke(app, ["predict", "snp", "--firmware", str(ovmf_path), "--ovmf-hash"])
    assert cli.exit_code == 0 and cli.stdout.strip() == want, cli.output
    assert _cli_json("--firmware", str(ovmf_path), "--ovmf-hash")["ovmf_hash"] == want
    # it is the launch digest after the firmware: the first event of a full prediction
    full = _cli_json("--firmware", str(ovmf_path), "--vcpus", "1", "--vcpu-type", "EPYC")
    assert full["events"][0]["component"] == "firmware" and full["events"][0]["digests"]["sha384"] == want


def test_ovmf_hash_needs_no_sev_metadata() -> None:
    path = need_file(OVMF_NO_SEV, "ovmf")
    r = oracle("--mode", "snp:ovmf-hash", "--ovmf", str(path))
    assert r.returncode == 0, r.stderr
    assert ovmf_hash(path.read_bytes()).hex() == r.stdout.strip()


def test_precomputed_firmware_digest(ovmf_path: Path) -> None:
    base = ["--vcpus", "4", "--vcpu-type", "EPYC-Rome", "--vmm", "gce"]
    first = _cli_json("--firmware", str(ovmf_path), *base)
    start = first["events"][0]["digests"]["sha384"]
    again = _cli_json("--firmware", str(ovmf_path), *base, "--snp-ovmf-hash", start)
    assert again["claims"] == first["claims"]
    other = hashlib.sha384(b"another firmware").hexdigest()
    got = _cli_json("--firmware", str(ovmf_path), *base, "--snp-ovmf-hash", other)
    assert got["claims"]["measurement"] == oracle_measurement(
        "--vcpus", "4", "--vcpu-type", "EPYC-Rome", "--vmm-type", "gce", "--snp-ovmf-hash", other,
        "--ovmf", str(ovmf_path))


# --- the VMSA pages themselves ---------------------------------------------------------------------

@pytest.mark.parametrize("vmm", ["qemu", "ec2", "gce"])
def test_vmsa_pages_are_the_oracles(ovmf: bytes, ovmf_path: Path, tmp_path: Path, vmm: str) -> None:
    oracle_measurement("--vcpus", "2", "--vcpu-type", "EPYC-Milan-v2", "--vmm-type", ORACLE_VMM[vmm],
                       "--guest-features", "0x21", "--ovmf", str(ovmf_path), "--dump-vmsa", cwd=tmp_path)
    ap_reset = parse_ovmf(ovmf).ap_reset_address
    assert ap_reset is not None
    sig = vcpu_signature("EPYC-Milan-v2")
    assert vmsa_page(vmm, reset_address=BSP_RESET_ADDRESS, vcpu_sig=sig, sev_features=0x21) == \
        (tmp_path / "vmsa0.bin").read_bytes()
    assert vmsa_page(vmm, reset_address=ap_reset, vcpu_sig=sig, sev_features=0x21) == \
        (tmp_path / "vmsa1.bin").read_bytes()


# --- the prediction's shape -------------------------------------------------------------------------

def test_events_name_every_component_and_end_at_the_measurement(ovmf: bytes) -> None:
    p = predict_snp(ovmf, vcpus=3, vcpu_sig=vcpu_signature("EPYC-v4"), vmm="ec2")
    components = [e.component for e in p.events]
    image = parse_ovmf(ovmf)
    assert components[0] == "firmware" and components[-3:] == ["vmsa0", "vmsa1", "vmsa2"]
    assert len(components) == 1 + len(image.sections) + 3
    assert components[-4] == "cpuid"  # EC2 adds the CPUID page last
    assert p.events[-1].digests[next(iter(p.events[-1].digests))].hex() == p.claims["measurement"]
    assert not p.registers and p.platform == "snp"
    doc = p.to_refvals("x")
    assert doc["claims"] == {"measurement": [p.claims["measurement"]]} and "registers" not in doc


def test_cli_inputs_and_refvals(ovmf_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "refvals.json"
    r = CliRunner().invoke(app, ["predict", "snp", "--firmware", str(ovmf_path), "--vcpus", "2", "--vcpu-type",
                                 "EPYC-Milan", "-o", str(out), "--id", "snp-test"])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    want = oracle_measurement("--vcpus", "2", "--vcpu-type", "EPYC-Milan", "--ovmf", str(ovmf_path))
    assert doc["id"] == "snp-test" and doc["claims"] == {"measurement": [want]}
    inputs = doc["predicted"]["inputs"]
    assert inputs["firmware"]["sha256"] == hashlib.sha256(ovmf_path.read_bytes()).hexdigest()
    assert inputs["vcpu"] == {"type": "EPYC-Milan", "signature": "0x00a00f11"} and inputs["vmm"] == {"value": "qemu"}
    r = CliRunner().invoke(app, ["predict", "snp", "--firmware", str(ovmf_path), "--vcpus", "2", "--vcpu-type",
                                 "EPYC-Milan"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and f"measurement: {want}" in r.stdout


# --- bad inputs: exit 2, one sentence, never a traceback -------------------------------------------

def test_kernel_without_kernel_hashes_section(ovmf: bytes, ovmf_path: Path) -> None:
    kernel = need_file(SHIM, "shim-signed")
    assert not parse_ovmf(ovmf).has_section(SectionType.SNP_KERNEL_HASHES)
    r = oracle("--mode", "snp", "--vcpus", "1", "--vcpu-type", "EPYC", "--ovmf", str(ovmf_path), "--kernel",
               str(kernel))
    assert r.returncode != 0 and "SNP_KERNEL_HASHES" in r.stderr  # the oracle refuses too
    with pytest.raises(InputError, match="SNP_KERNEL_HASHES"):
        predict_snp(ovmf, vcpus=1, vcpu_sig=0, kernel=KernelHashes.of(hashlib.sha256(b"k").digest()))
    res = _cli("--firmware", str(ovmf_path), "--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", str(kernel))
    assert res.exit_code == 2 and "SNP_KERNEL_HASHES" in res.output


def test_hash_table_area_outside_the_section_or_empty(ovmf: bytes, tmp_path: Path) -> None:
    # QEMU refuses a hash table area with base 0, and one outside the section is not measured (the oracle
    # assumes both away), so tsmr refuses them
    hashes = KernelHashes.of(hashlib.sha256(b"k").digest())
    outside = with_kernel_hashes(ovmf, table_offset=0x1000)
    with pytest.raises(InputError, match="not inside the SNP_KERNEL_HASHES section"):
        predict_snp(outside, vcpus=1, vcpu_sig=0, kernel=hashes)
    empty = bytearray(with_kernel_hashes(ovmf, table_offset=0))
    at = _entry_offset(bytes(empty), "7255371f-3a3b-4b04-927b-1da6efa8d454")
    empty[at:at + 8] = bytes(8)  # base 0, size 0, as Debian's generic build ships it
    with pytest.raises(InputError, match="hash table area is invalid"):
        predict_snp(bytes(empty), vcpus=1, vcpu_sig=0, kernel=hashes)


@pytest.mark.parametrize("case", ["no-sev-metadata", "truncated-end", "not-pages", "empty", "bad-signature",
                                  "bad-footer-length", "bad-metadata-offset", "unknown-section-type"])
def test_bad_firmware_is_an_input_error(ovmf: bytes, tmp_path: Path, case: str) -> None:
    buf = bytearray(ovmf)
    n = len(ovmf)
    entry = _entry_offset(ovmf, "dc886566-984a-4798-a75e-5585a7bf67cc")
    meta_off = int.from_bytes(ovmf[entry:entry + 4], "little")
    if case == "no-sev-metadata":
        data = need_file(OVMF_NO_SEV, "ovmf").read_bytes()
    elif case == "truncated-end":
        data = ovmf[:-4096]
    elif case == "not-pages":
        data = ovmf[:-100]
    elif case == "empty":
        data = b""
    elif case == "bad-signature":
        buf[n - meta_off:n - meta_off + 4] = b"VSEA"
        data = bytes(buf)
    elif case == "bad-footer-length":
        buf[n - 0x32:n - 0x30] = (17).to_bytes(2, "little")  # shorter than the footer entry itself
        data = bytes(buf)
    elif case == "bad-metadata-offset":
        buf[entry:entry + 4] = (n + 16).to_bytes(4, "little")
        data = bytes(buf)
    else:
        buf[n - meta_off + 16 + 8:n - meta_off + 16 + 12] = (7).to_bytes(4, "little")
        data = bytes(buf)
    with pytest.raises(InputError):
        predict_snp(data, vcpus=1, vcpu_sig=0)
    path = write(tmp_path, "fw.fd", data)
    r = _cli("--firmware", str(path), "--vcpus", "1", "--vcpu-type", "EPYC")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert json.loads(r.stdout)["type"] == "InputError"


def _entry_offset(data: bytes, guid: str) -> int:
    """Where the data of one GUIDed table entry starts, found by its GUID's bytes (not by tsmr's parser)."""
    at = data.rindex(uuid.UUID(guid).bytes_le)
    size = int.from_bytes(data[at - 2:at], "little")
    return at - 2 - (size - 18)


@pytest.mark.parametrize("args,message", [
    (["--vcpus", "1", "--vcpu-type", "EPYC-Zen9"], "unknown vCPU type"),
    (["--vcpus", "0", "--vcpu-type", "EPYC"], "1 to"),
    (["--vcpus", "-3", "--vcpu-type", "EPYC"], "1 to"),
    (["--vcpu-type", "EPYC"], "--vcpus is required"),
    (["--vcpus", "1"], "--vcpu-type"),
    (["--vcpus", "1", "--vcpu-type", "EPYC", "--vmm", "azure"], "--vmm"),
    (["--vcpus", "1", "--vcpu-type", "EPYC", "--guest-features", "xyz"], "hexadecimal"),
    (["--vcpus", "1", "--vcpu-type", "EPYC", "--vcpu-sig", "1"], "only one of"),
    (["--vcpus", "1", "--vcpu-family", "25"], "go together"),
    (["--vcpus", "1", "--vcpu-type", "EPYC", "--append", "x"], "go with --kernel"),
    (["--vcpus", "1", "--vcpu-type", "EPYC", "--snp-ovmf-hash", "abcd"], "48 bytes"),
    (["--vcpus", "1", "--vcpu-type", "EPYC", "--kernel", "/nonexistent/vmlinuz"], "cannot read"),
])
def test_bad_options_exit_2(ovmf_path: Path, args: list[str], message: str) -> None:
    r = _cli("--firmware", str(ovmf_path), *args)
    assert r.exit_code == 2, r.output
    assert message in json.loads(r.stdout)["error"]


def test_ec2_and_gce_need_no_vcpu_type(ovmf_path: Path) -> None:
    for vmm in ("ec2", "gce"):
        got = _cli_json("--firmware", str(ovmf_path), "--vcpus", "2", "--vmm", vmm)
        assert got["claims"]["measurement"] == oracle_measurement("--vcpus", "2", "--vmm-type", vmm,
                                                                  "--ovmf", str(ovmf_path))
