"""``tsmr predict tpm`` against real binaries and real firmware logs (no kernel needed).

* Each application's PCR 4 digest is the one its own Authenticode signature embeds
  (Debian's signed shim, MokManager and fallback: Microsoft and Debian computed those),
  and pesign's where pesign is installed.
* PCR 7's Secure Boot policy events are rebuilt from the variables of real firmware logs
  (GCE Shielded VMs, a SEV-SNP VM; Secure Boot on and off) and must equal those logs'
  events, byte for byte and digest for digest; so must the ReadyToBoot events of PCR 4.
* Register values are checked against folds written here with hashlib.
* Bad input exits 2 with one sentence, never a traceback.

The real QEMU + OVMF direct boot of a Linux kernel is tests/kernel/test_predict_tpm.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import FIXTURES, need_file, need_tool
from tsmr.algorithms import HashAlg
from tsmr.cli.main import app
from tsmr.formats import tcg2
from tsmr.formats.uefi import parse_tagged_event, parse_variable_data
from tsmr.predict import linux
from tsmr.predict.pe import PeImage

SHIM_DIR = Path("/usr/lib/shim")
SHIM = SHIM_DIR / "shimx64.efi.signed"
MM = SHIM_DIR / "mmx64.efi.signed"
FB = SHIM_DIR / "fbx64.efi.signed"
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
LOGS = ["go-eventlog/eventlogs/tpm/rhel8-uefi.bin", "go-eventlog/eventlogs/tpm/ubuntu-2104-no-secure-boot.bin",
        "go-eventlog/eventlogs/tpm/cos-85-amd-sev.bin", "go-eventlog/eventlogs/tpm/debian-10.bin",
        "go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin"]
ACTION = b"Calling EFI Application from Boot Option"


def _need(*paths: Path) -> None:
    for p in paths:
        need_file(p, "shim-signed or systemd-boot-efi")


def _run(*args: str) -> Any:
    r = CliRunner().invoke(app, ["predict", "tpm", *args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _digests(event: dict[str, Any], alg: str) -> bytes:
    return bytes.fromhex(event["digests"][alg])


def _fold(alg: HashAlg, digests: list[bytes]) -> bytes:
    value = bytes(alg.digest_size)
    for d in digests:
        value = alg.hash(value + d)
    return value


def test_app_digests_are_the_ones_their_signatures_embed() -> None:
    _need(SHIM, MM, FB)
    doc = _run("--efi-app", str(SHIM), "--efi-app", str(MM), "--efi-app", str(FB))
    pcr4 = [e for e in doc["events"] if e["register"] == "pcr4"]
    assert [e["type"] for e in pcr4] == ["EV_EFI_ACTION", "EV_SEPARATOR"] + ["EV_EFI_BOOT_SERVICES_APPLICATION"] * 3
    assert [e["component"] for e in pcr4[2:]] == ["efi-app:shimx64.efi.signed", "efi-app:mmx64.efi.signed",
                                                  "efi-app:fbx64.efi.signed"]
    signed = []
    for path, event in zip((SHIM, MM, FB), pcr4[2:]):
        embedded = {alg: d for alg, d in PeImage.parse(path.read_bytes()).signed_digests()}
        assert HashAlg.SHA256 in embedded, path
        assert _digests(event, "sha256") == embedded[HashAlg.SHA256], path
        signed.append(embedded[HashAlg.SHA256])
    # PCR 4 = action, separator, the three signed digests, folded here with hashlib
    want = _fold(HashAlg.SHA256, [hashlib.sha256(ACTION).digest(), hashlib.sha256(bytes(4)).digest(), *signed])
    assert bytes.fromhex(doc["registers"]["pcr4"]["sha256"]) == want
    assert set(doc["registers"]["pcr4"]) == {"sha1", "sha256", "sha384", "sha512"}
    # shim records its own PCR 7 events: PCR 7 is listed, not predicted, and the notes say why
    assert "pcr7" not in doc["registers"] and "pcr9" not in doc["registers"]
    assert any("shim" in n and "pcr7 not predicted" in n for n in doc["notes"])


def test_app_digest_agrees_with_pesign() -> None:
    _need(SHIM, STUB)
    need_tool("pesign", "pesign")
    doc = _run("--efi-app", str(STUB), "--efi-app", str(SHIM), "--bank", "sha256")
    apps = [e for e in doc["events"] if e["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    for path, event in zip((STUB, SHIM), apps):
        out = subprocess.run(["pesign", "-h", "-i", str(path), "-d", "sha256"], capture_output=True, text=True,
                             check=True).stdout
        assert out.split()[-1] == event["digests"]["sha256"], path


def test_no_shim_and_secure_boot_off_predicts_pcr7_as_ovmf_records_it() -> None:
    _need(STUB)
    doc = _run("--efi-app", str(STUB))
    pcr7 = [e for e in doc["events"] if e["register"] == "pcr7"]
    names = []
    for e in pcr7[:-1]:
        var = parse_variable_data(bytes.fromhex(e["data"]))  # our decoder reads what we wrote
        names.append(var["unicode_name"])
        assert e["digests"]["sha384"] == hashlib.sha384(bytes.fromhex(e["data"])).hexdigest()
        assert var["variable_data_length"] == (1 if var["unicode_name"] == "SecureBoot" else 0)
        if var["unicode_name"] == "SecureBoot":
            assert var["value"] == {"value": 0}
    assert names == ["SecureBoot", "PK", "KEK", "db", "dbx"]
    assert pcr7[-1]["type"] == "EV_SEPARATOR" and pcr7[-1]["data"] == "00000000"
    for alg in HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512:
        want = _fold(alg, [alg.hash(bytes.fromhex(e["data"])) for e in pcr7])
        assert bytes.fromhex(doc["registers"]["pcr7"][alg.name.lower()]) == want


def _policy_from_log(log: tcg2.TCG2Log, directory: Path, efivarfs: bool) -> tuple[list[tcg2.TCG2Event], int]:
    """Write the log's Secure Boot variables as files; the PCR 7 events up to the separator, and SecureBoot."""
    events: list[tcg2.TCG2Event] = []
    secure_boot = -1
    for e in log.events:
        if e.index != 7:
            continue
        events.append(e)
        if e.event_type == tcg2.EV_SEPARATOR:
            break
        assert e.event_type == tcg2.EV_EFI_VARIABLE_DRIVER_CONFIG
        var = parse_variable_data(e.data)
        value = e.data[32 + 2 * var["unicode_name_length"]:]
        assert len(value) == var["variable_data_length"]
        if var["unicode_name"] == "SecureBoot":
            secure_boot = value[0]
        if efivarfs:
            (directory / f"{var['unicode_name']}-{var['variable_name']}").write_bytes(struct.pack("<I", 0x27) + value)
        else:
            (directory / var["unicode_name"]).write_bytes(value)
    return events, secure_boot


@pytest.mark.parametrize("efivarfs", [False, True], ids=["plain", "efivarfs"])
@pytest.mark.parametrize("rel", LOGS)
def test_secure_boot_policy_and_ready_to_boot_events_equal_real_logs(rel: str, efivarfs: bool, tmp_path: Path) -> None:
    _need(SHIM)
    log = tcg2.parse(FIXTURES.path(rel).read_bytes())
    policy, secure_boot = _policy_from_log(log, tmp_path, efivarfs)
    assert len(policy) == 6 and secure_boot in (0, 1)
    doc = _run("--efi-app", str(SHIM), "--secure-boot-db", str(tmp_path))
    pcr7 = [e for e in doc["events"] if e["register"] == "pcr7"]
    assert len(pcr7) == len(policy)
    banks = [a.name.lower() for a in log.algorithms]
    for want, got in zip(policy, pcr7):
        assert got["type"] == want.type_name
        assert bytes.fromhex(got["data"]) == want.data
        for alg in log.algorithms:
            assert _digests(got, alg.name.lower()) == want.digest(alg), (got["component"], alg)
    real_pcr4 = [e for e in log.events if e.index == 4][:2]
    got_pcr4 = [e for e in doc["events"] if e["register"] == "pcr4"][:2]
    for want, got in zip(real_pcr4, got_pcr4):
        assert got["type"] == want.type_name
        assert all(_digests(got, b) == want.digest(HashAlg.from_name(b)) for b in banks)
    assert "pcr7" not in doc["registers"]  # Secure Boot on, or shim: authority events follow
    expected = "Secure Boot is on" if secure_boot else "is shim"
    assert any(expected in n for n in doc["notes"]), doc["notes"]


def test_direct_boot_order_and_pcr9_without_patching() -> None:
    """--vmm unmodified: the file as it is, first in PCR 4; PCR 9 = load options (with ' initrd=initrd'), initrd."""
    _need(STUB)
    initrd = STUB.read_bytes()[:4096]  # any bytes: the stub measures what it loads
    cmdline = "console=ttyS0 root=/dev/vda1"
    tmp_initrd = Path(os.environ.get("TMPDIR", "/tmp")) / f"tsmr-test-initrd-{os.getpid()}"
    tmp_initrd.write_bytes(initrd)
    try:
        doc = _run("--direct-boot", "--vmm", "unmodified", "--kernel", str(STUB), "--initrd", str(tmp_initrd),
                   "--cmdline", cmdline)
    finally:
        tmp_initrd.unlink()
    pcr4 = [e for e in doc["events"] if e["register"] == "pcr4"]
    assert [e["type"] for e in pcr4] == ["EV_EFI_BOOT_SERVICES_APPLICATION", "EV_EFI_ACTION", "EV_SEPARATOR"]
    assert pcr4[0]["component"] == "kernel"
    options = (cmdline + " initrd=initrd\0").encode("utf-16-le")
    for alg in HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512:
        name = alg.name.lower()
        assert bytes.fromhex(doc["registers"]["pcr9"][name]) == _fold(alg, [alg.hash(options), alg.hash(initrd)])
    pcr9 = [e for e in doc["events"] if e["register"] == "pcr9"]
    assert [parse_tagged_event(bytes.fromhex(e["data"]))["text"] for e in pcr9] == \
        ["LOADED_IMAGE::LoadOptions", "Linux initrd"]
    assert [e["component"] for e in pcr9] == ["cmdline", "initrd"]
    assert set(doc["registers"]) == {"pcr4", "pcr7", "pcr9"}


def test_load_options_as_ovmf_builds_them() -> None:
    assert linux.load_options("a b") == "a b\0".encode("utf-16-le")
    assert linux.load_options("a b", qemu_initrd=True) == "a b initrd=initrd\0".encode("utf-16-le")
    assert linux.load_options("") == b""  # no options: OVMF sets none, the stub measures nothing
    assert linux.load_options("", qemu_initrd=True) == " initrd=initrd\0".encode("utf-16-le")
    # OVMF widens each byte of QEMU's (UTF-8) command line to a CHAR16: no UTF-8 decoding
    assert linux.load_options("é") == bytes([0xC3, 0, 0xA9, 0, 0, 0])
    with pytest.raises(Exception, match="NUL"):
        linux.load_options("a\0b")


def test_qemu_header_fields_on_a_minimal_setup_header() -> None:
    """QEMU's x86_load_linux rules, on a header built here: boot protocol 2.15, relocatable, 64-bit initrd ok."""
    kernel = bytearray(8 * 512 + 4096)
    kernel[0x1F1] = 7  # setup sectors
    kernel[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", kernel, 0x206, 0x20F)
    kernel[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<I", kernel, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<H", kernel, 0x236, 0x02)  # XLF_CAN_BE_LOADED_ABOVE_4G
    for memory, machine, low in ((2048, "pc", 2048 << 20), (4096, "pc", 0xC0000000), (2048, "q35", 2048 << 20),
                                 (3072, "q35", 0x80000000)):
        image, fields = linux.qemu_patch_setup_header(bytes(kernel), cmdline="quiet vga=0x317", initrd_size=10_000,
                                                      memory_mib=memory, machine=machine)
        top = low - (0x20000 + 0x8000) - 1  # below QEMU's ACPI area
        assert struct.unpack_from("<I", image, 0x218)[0] == (top - 10_000) & ~0xFFF
        assert struct.unpack_from("<I", image, 0x21C)[0] == 10_000
        assert struct.unpack_from("<I", image, 0x228)[0] == 0x20000
        assert struct.unpack_from("<H", image, 0x224)[0] == 0x20000 - 0x10000 - 0x200
        assert struct.unpack_from("<H", image, 0x1FA)[0] == 0x317
        assert image[0x210] == 0xB0 and image[0x211] == 0x81
        written = {*range(0x1FA, 0x1FC), 0x210, 0x211, *range(0x218, 0x220), 0x224, 0x225, *range(0x228, 0x22C)}
        assert len(image) == len(kernel)
        assert {i for i in range(len(image)) if image[i] != kernel[i]} <= written
        assert set(fields) == {"cmd_line_ptr", "vid_mode", "type_of_loader", "loadflags", "heap_end_ptr",
                               "ramdisk_image", "ramdisk_size"}
    image, fields = linux.qemu_patch_setup_header(bytes(kernel), cmdline="", initrd_size=None, memory_mib=128)
    assert "ramdisk_image" not in fields and image[0x218:0x220] == bytes(8)


def _exit2(*args: str) -> str:
    r = CliRunner().invoke(app, ["predict", "tpm", *args])
    assert r.exit_code == 2, (args, r.output)
    assert "Traceback" not in r.output
    return r.output


def test_bad_input_exits_2(tmp_path: Path) -> None:
    _need(SHIM)
    truncated = tmp_path / "cut.efi"
    truncated.write_bytes(SHIM.read_bytes()[:1000])
    _exit2("--efi-app", str(truncated))
    _exit2("--efi-app", str(tmp_path / "missing.efi"))
    _exit2()  # nothing to predict
    _exit2("--efi-app", str(SHIM), "--bank", "md5")
    _exit2("--efi-app", str(SHIM), "--bank", "sm3_256")
    _exit2("--direct-boot")  # no kernel
    _exit2("--direct-boot", "--kernel", str(SHIM))  # not a bzImage for QEMU's -kernel
    _exit2("--direct-boot", "--kernel", str(SHIM), "--vmm", "bogus")
    _exit2("--direct-boot", "--kernel", str(SHIM), "--efi-app", str(SHIM))
    _exit2("--efi-app", str(SHIM), "--vmm", "unmodified")  # --vmm without --direct-boot
    _exit2("--efi-app", str(SHIM), "--secure-boot-db", str(SHIM))  # not a directory
    db = tmp_path / "db"
    db.mkdir()
    (db / "SecureBoot").write_bytes(b"\x01\x00")
    assert "SecureBoot" in _exit2("--efi-app", str(SHIM), "--secure-boot-db", str(db))
    (db / "SecureBoot").write_bytes(b"\x01")
    (db / "PK").write_bytes(os.urandom(40))
    assert "EFI_SIGNATURE_LIST" in _exit2("--efi-app", str(SHIM), "--secure-boot-db", str(db))
    (db / "PK").unlink()
    (db / "KEK-8be4df61-93ca-11d2-aa0d-00e098032b8c").write_bytes(b"\x07")  # shorter than the attributes
    _exit2("--efi-app", str(SHIM), "--secure-boot-db", str(db))


def test_exit_code_and_message_through_the_installed_entry_point(tmp_path: Path) -> None:
    bad = tmp_path / "bad.efi"
    bad.write_bytes(b"MZ" + bytes(100))
    r = subprocess.run([sys.executable, "-m", "tsmr", "predict", "tpm", "--efi-app", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip()
