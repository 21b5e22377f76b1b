"""tsmr predict tdx: TDVF metadata and MRTD of Debian's OVMF.fd, the direct-boot RTMRs, the CCEL writer.

The oracles here do not call the code under test:

* the TDVF sections are found with a straightforward walk written in this file and
  checked against facts of the image itself (the firmware is mapped to end at 4 GiB, the
  BFV is the tail of the file, every section lies in it);
* MRTD is recomputed from the TDX module ABI's description of the MRTD updates
  (a 128-byte TDH.MEM.PAGE.ADD block per 4 KiB page; a 128-byte TDH.MR.EXTEND block plus
  the 256 data bytes per chunk) by building every buffer and hashing their concatenation;
* the firmware's own events are compared with real CCELs of QEMU direct boots
  (trustee's CCEL_data_ovmf, go-eventlog's CCEL_unpadded): event types, data and the
  digests of everything that does not depend on the kernel, command line or initrd;
* register values are folded here with hashlib from the documented inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import need_file
from tsmr.algorithms import HashAlg
from tsmr.cli.main import app
from tsmr.formats import ccel as ccel_format
from tsmr.formats import tcg2
from tsmr.predict import pe, tdx, tdvf
from tsmr.replay import replay_tcg2_bytes

TSMR = [sys.executable, "-m", "tsmr"]
OVMF = "/usr/share/ovmf/OVMF.fd"  # Debian package ovmf (2022.11): TDX and SEV metadata, 2 MiB
OVMF_CODE_4M = "/usr/share/OVMF/OVMF_CODE_4M.fd"  # same package: no TDX metadata
STUB = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"  # systemd-boot-efi: a real x86_64 EFI PE image

PAGE = 4096
SHA384 = HashAlg.SHA384


@pytest.fixture(scope="module")
def ovmf() -> bytes:
    return need_file(OVMF, "ovmf").read_bytes()


@pytest.fixture(scope="module")
def kernel_pe() -> bytes:
    return need_file(STUB, "systemd-boot-efi").read_bytes()


def sections_by_hand(image: bytes) -> list[tuple[int, int, int, int, int, int]]:
    """The TDVF sections, found by the descriptor's signature rather than the GUIDed table."""
    at = image.rfind(b"TDVF")
    assert at > 0
    _, length, version, count = struct.unpack_from("<4sIII", image, at)
    assert version == 1 and length == 16 + 32 * count
    return [struct.unpack_from("<IIQQII", image, at + 16 + 32 * i) for i in range(count)]


def mrtd_by_hand(image: bytes, two_pass: bool, honour_page_aug: bool = True) -> bytes:
    """MRTD from the ABI text: every TDH.MEM.PAGE.ADD and TDH.MR.EXTEND buffer, built and hashed naively."""
    def page_add(gpa: int) -> bytes:
        return b"MEM.PAGE.ADD" + bytes(4) + gpa.to_bytes(8, "little") + bytes(104)

    def mr_extend(gpa: int, chunk: bytes) -> bytes:
        return b"MR.EXTEND" + bytes(7) + gpa.to_bytes(8, "little") + bytes(104) + chunk

    blocks: list[bytes] = []
    for data_offset, _raw, gpa, size, _type, attributes in sections_by_hand(image):
        if attributes & 2 and honour_page_aug:
            continue  # PAGE.AUG: the VMM adds these pages after launch, unmeasured
        adds = [[page_add(gpa + p)] for p in range(0, size, PAGE)]
        extends = [[mr_extend(gpa + p + c, image[data_offset + p + c:data_offset + p + c + 256])
                    for c in range(0, PAGE, 256)] if attributes & 1 else [] for p in range(0, size, PAGE)]
        if two_pass:
            blocks += [b for page in adds for b in page] + [b for page in extends for b in page]
        else:
            for a, e in zip(adds, extends):
                blocks += a + e
    for b in blocks:
        assert len(b) in (128, 384)
    return hashlib.sha384(b"".join(blocks)).digest()


def fold(digests: list[bytes]) -> bytes:
    value = bytes(48)
    for d in digests:
        value = hashlib.sha384(value + d).digest()
    return value


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (fast); :func:`test_exit_code_of_a_real_process` checks a real one."""
    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, r.stderr)


def test_exit_code_of_a_real_process() -> None:
    need_file(OVMF_CODE_4M, "ovmf")
    r = subprocess.run([*TSMR, "predict", "tdx", "--firmware", OVMF_CODE_4M], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "no TDX metadata" in r.stderr and "Traceback" not in r.stderr


# -- TDVF metadata and MRTD -------------------------------------------------------------------


def test_tdvf_metadata_of_debian_ovmf(ovmf: bytes) -> None:
    meta = tdvf.parse_metadata(ovmf)
    by_hand = sections_by_hand(ovmf)
    assert meta.offset == ovmf.rfind(b"TDVF")
    assert [(s.data_offset, s.raw_data_size, s.memory_address, s.memory_data_size, s.type, s.attributes)
            for s in meta.sections] == by_hand
    names = [s.type_name for s in meta.sections]
    assert names.count("BFV") == 1 and names.count("CFV") == 1 and names.count("TD_HOB") == 1
    assert set(names) <= {"BFV", "CFV", "TD_HOB", "TempMem"}  # what upstream QEMU accepts
    for s in meta.sections:
        assert s.data_offset + s.raw_data_size <= len(ovmf)  # every section lies in the file
        assert s.memory_address % PAGE == 0 and s.memory_data_size % PAGE == 0
    bfv, = meta.of_type(tdvf.BFV)
    cfv, = meta.of_type(tdvf.CFV)
    # The image is mapped to end at 4 GiB: CFV then BFV cover the whole file, the BFV is its tail.
    assert bfv.memory_address + bfv.memory_data_size == 1 << 32
    assert bytes(tdvf.section_data(ovmf, bfv)) == ovmf[-bfv.raw_data_size:]
    assert cfv.data_offset == 0 and cfv.raw_data_size + bfv.raw_data_size == len(ovmf)
    assert bfv.mr_extend and not cfv.mr_extend  # only the code is measured byte by byte
    assert all(not s.mr_extend for s in meta.sections if s.type in (tdvf.TD_HOB, tdvf.TEMP_MEM))


def test_mrtd_both_page_orders_equal_the_spec_recomputation(ovmf: bytes) -> None:
    one_pass = tdvf.mrtd(ovmf)
    two_pass = tdvf.mrtd(ovmf, two_pass=True)
    assert one_pass != two_pass
    assert one_pass == mrtd_by_hand(ovmf, two_pass=False)
    assert two_pass == mrtd_by_hand(ovmf, two_pass=True)


def test_page_aug_sections_are_not_in_mrtd(ovmf: bytes) -> None:
    """A section the VMM adds with TDH.MEM.PAGE.AUG after launch (the guide's PermMem) leaves MRTD alone."""
    at = ovmf.rfind(b"TDVF")
    temp = _index_of(ovmf, 3)
    augmented = _with(ovmf, at + 16 + 32 * temp + 28, struct.pack("<I", 2))
    assert tdvf.mrtd(augmented) == mrtd_by_hand(augmented, two_pass=False)
    assert tdvf.mrtd(augmented) != mrtd_by_hand(augmented, two_pass=False, honour_page_aug=False)


def test_cli_mrtd_json_and_two_pass(ovmf: bytes) -> None:
    one = json.loads(run("predict", "tdx", "--firmware", OVMF, "--json").stdout)
    two = json.loads(run("predict", "tdx", "--firmware", OVMF, "--two-pass-add", "--json").stdout)
    assert one["claims"]["mrtd"] == mrtd_by_hand(ovmf, False).hex()
    assert two["claims"]["mrtd"] == mrtd_by_hand(ovmf, True).hex()
    assert one["registers"] == {}  # no kernel, no CCEL: no RTMR is determined
    assert any("rtmr0 not predicted" in n for n in one["notes"])
    assert one["inputs"]["firmware"]["sha384"] == hashlib.sha384(ovmf).hexdigest()


def _with(image: bytes, offset: int, new: bytes) -> bytes:
    return image[:offset] + new + image[offset + len(new):]


def bad_images(ovmf: bytes) -> dict[str, bytes]:
    n = len(ovmf)
    at = ovmf.rfind(b"TDVF")
    bfv_entry = at + 16  # the first section is the BFV
    return {
        "no TDX metadata": need_file(OVMF_CODE_4M, "ovmf").read_bytes(),
        "not OVMF": b"\x90" * 8192,
        "metadata cut off": ovmf[at + 30:],  # the tail with the table, but not the whole descriptor
        "too many sections": _with(ovmf, at + 12, struct.pack("<I", 7)),
        "section beyond the file": _with(ovmf, bfv_entry, struct.pack("<I", n)),
        "table length": _with(ovmf, n - 0x32, struct.pack("<H", 0xFFFF)),
        "bad signature": _with(ovmf, at, b"XDVF"),
        "extended TD HOB": _with(ovmf, at + 16 + 32 * _index_of(ovmf, 2) + 28, struct.pack("<I", 1)),
    }


def _index_of(image: bytes, section_type: int) -> int:
    return [s[4] for s in sections_by_hand(image)].index(section_type)


@pytest.mark.parametrize("case", ["no TDX metadata", "not OVMF", "metadata cut off", "too many sections",
                                  "section beyond the file", "table length", "bad signature", "extended TD HOB"])
def test_bad_firmware_is_exit_2(ovmf: bytes, case: str, tmp_path: Path) -> None:
    path = tmp_path / "fw.fd"
    path.write_bytes(bad_images(ovmf)[case])
    r = run("predict", "tdx", "--firmware", str(path))
    assert r.returncode == 2, (case, r.stdout, r.stderr)
    assert "tsmr: error: firmware:" in r.stderr and "Traceback" not in r.stderr


# -- the direct boot: RTMR1, RTMR2, and the CCEL -----------------------------------------------


def _log_events(fixtures: Path, rel: str) -> list[tcg2.TCG2Event]:
    return [e for e in ccel_format.parse_log((fixtures / rel).read_bytes()).events if e.event_type != tcg2.EV_NO_ACTION]


@pytest.mark.parametrize("rel,initrd", [("trustee/eventlog/CCEL_data_ovmf", True),
                                        ("go-eventlog/eventlogs/ccel/CCEL_unpadded.data.bin", False)])
def test_firmware_events_are_those_of_real_direct_boots(fixtures: Path, ovmf: bytes, kernel_pe: bytes,
                                                        rel: str, initrd: bool) -> None:
    real = _log_events(fixtures, rel)
    p = tdx.predict_tdx(ovmf, kernel=kernel_pe, cmdline="console=hvc0", initrd=b"initrd" if initrd else None)
    for index, register in ((2, "rtmr1"), (3, "rtmr2")):
        logged = [e for e in real if e.index == index]
        predicted = [e for e in p.events if e.register == register]
        assert [e.type_name for e in logged] == [e.event_type for e in predicted]
        for lg, pr in zip(logged, predicted):
            if pr.component == "kernel":
                assert pr.data is not None and lg.data[32:] == pr.data[32:]  # the same device path: VenMedia/kernel
            elif pr.component in ("cmdline", "initrd"):
                # The stub's tagged events: same data; the digests are of an unknown command line / initrd.
                # (CCEL_unpadded's kernel logged the bare description, an older stub's format.)
                assert lg.data == pr.data or lg.data == pr.data[8:]  # type: ignore[index]
            else:
                assert (lg.data, lg.digest(SHA384)) == (pr.data, pr.digests[SHA384])
    separators = [e for e in real if e.event_type == tcg2.EV_SEPARATOR]
    assert [e.index for e in separators] == [1, 1]  # these firmwares put the ReadyToBoot separator in RTMR0


def test_rtmr1_and_rtmr2_fold_from_the_documented_inputs(ovmf: bytes, kernel_pe: bytes) -> None:
    cmdline, initrd = "console=ttyS0 root=/dev/vda1", b"\x1f\x8b" + bytes(1000)
    p = tdx.predict_tdx(ovmf, kernel=kernel_pe, cmdline=cmdline, initrd=initrd)
    kernel_digest = pe.authenticode(kernel_pe, SHA384)  # the file as it is: QEMU does not patch a TD's kernel
    actions = [hashlib.sha384(s).digest() for s in (b"Calling EFI Application from Boot Option",
                                                     b"Exit Boot Services Invocation",
                                                     b"Exit Boot Services Returned with Success")]
    assert p.registers["rtmr1"][SHA384] == fold([kernel_digest, *actions])
    options = (cmdline + " initrd=initrd\0").encode("utf-16-le")
    assert p.registers["rtmr2"][SHA384] == fold([hashlib.sha384(options).digest(), hashlib.sha384(initrd).digest()])
    assert "rtmr0" not in p.registers
    newer = tdx.predict_tdx(ovmf, kernel=kernel_pe, cmdline=cmdline, initrd=initrd, separator="rtmr1")
    assert newer.registers["rtmr1"][SHA384] == fold([kernel_digest, actions[0], hashlib.sha384(bytes(4)).digest(),
                                                     *actions[1:]])
    bare = tdx.predict_tdx(ovmf, kernel=kernel_pe)
    assert bare.registers["rtmr2"][SHA384] == bytes(48)  # no command line, no initrd: no LoadOptions, no event


def test_written_ccel_replays_to_the_predicted_registers(fixtures: Path, ovmf: bytes, kernel_pe: bytes,
                                                         tmp_path: Path) -> None:
    captured = (fixtures / "trustee/eventlog/CCEL_data_ovmf").read_bytes()
    p = tdx.predict_tdx(ovmf, kernel=kernel_pe, cmdline="quiet", initrd=b"x" * 5000, ccel=captured)
    assert set(p.registers) == {"rtmr0", "rtmr1", "rtmr2"}
    data = tdx.to_ccel(p.events)
    log = ccel_format.parse_log(data)
    assert log.spec_id.algorithms == ((int(SHA384), 48),) and log.header_event is not None
    assert log.header_event.index == 1  # as TDVF writes its header
    result = replay_tcg2_bytes(data, arch="tdx")
    assert {r: dict(b) for r, b in result.registers.items()} == {r: dict(b) for r, b in p.registers.items()}
    (tmp_path / "ccel.bin").write_bytes(data)
    out = json.loads(run("eventlog", "replay", str(tmp_path / "ccel.bin"), "--json").stdout)
    assert {r: v["sha384"] for r, v in out["registers"].items()} == {r: b[SHA384].hex() for r, b in p.registers.items()}


def test_rtmr0_from_a_captured_ccel_with_this_firmwares_cfv(fixtures: Path, ovmf: bytes) -> None:
    captured = (fixtures / "trustee/eventlog/CCEL_data_ovmf").read_bytes()
    rtmr0 = [e for e in _log_events(fixtures, "trustee/eventlog/CCEL_data_ovmf") if e.index == 1]
    cfv = next(s for s in sections_by_hand(ovmf) if s[4] == 1)
    cfv_digest = hashlib.sha384(ovmf[cfv[0]:cfv[0] + cfv[1]]).digest()
    expected = fold([cfv_digest if e.event_type == tcg2.EV_EFI_PLATFORM_FIRMWARE_BLOB2 else e.digest(SHA384)
                     for e in rtmr0])  # type: ignore[misc]
    p = tdx.predict_tdx(ovmf, ccel=captured)
    assert p.registers == {"rtmr0": {SHA384: expected}}
    blob = next(e for e in p.events if e.component == "cfv")
    assert blob.data is not None and struct.unpack_from("<QQ", blob.data, 1 + blob.data[0]) == (cfv[2], cfv[1])
    assert any("CFV digest differs" in n for n in p.notes)


def test_separator_register_is_read_from_the_ccel(fixtures: Path) -> None:
    assert tdx.ccel_rtmr0_events((fixtures / "trustee/eventlog/CCEL_data_gcp").read_bytes())[1] == "rtmr1"
    assert tdx.ccel_rtmr0_events((fixtures / "trustee/eventlog/CCEL_data_ovmf").read_bytes())[1] == "rtmr0"


def _loader(*names: str) -> bytes:
    """A QEMU linker/loader script: ALLOCATE each name, then an ADD_POINTER (ignored by the measurement)."""
    out = b""
    for name in names:
        out += struct.pack("<I56sIB", 1, name.encode(), 64, 1).ljust(128, b"\0")
    out += struct.pack("<I56s56sIB", 2, names[0].encode(), names[-1].encode(), 16, 4).ljust(128, b"\0")
    return out


def test_acpi_files_replace_the_captured_acpi_events(fixtures: Path, ovmf: bytes, tmp_path: Path) -> None:
    loader = _loader("etc/acpi/rsdp", "etc/acpi/tables")
    rsdp, tables = b"RSD PTR " + bytes(28), b"FACP" + os.urandom(3000)
    tree = tmp_path / "by_name"  # the layout of a guest's /sys/firmware/qemu_fw_cfg/by_name
    for name, data in (("etc/table-loader", loader), ("etc/acpi/rsdp", rsdp), ("etc/acpi/tables", tables)):
        (tree / name).mkdir(parents=True)
        (tree / name / "raw").write_bytes(data)
    ccel = fixtures / "go-eventlog/eventlogs/ccel/CCEL_unpadded.data.bin"
    out = json.loads(run("predict", "tdx", "--firmware", OVMF, "--ccel", str(ccel), "--acpi", str(tree),
                         "--json").stdout)
    acpi = [e for e in out["events"] if e["component"] == "acpi"]
    assert [e["digests"]["sha384"] for e in acpi] == [hashlib.sha384(b).hexdigest() for b in (loader, rsdp, tables)]
    assert {e["data"] for e in acpi} == {b"ACPI DATA".hex()}
    rtmr0 = [e["digests"]["sha384"] for e in out["events"] if e["register"] == "rtmr0"]
    assert out["registers"]["rtmr0"]["sha384"] == fold([bytes.fromhex(d) for d in rtmr0]).hex()
    (tree / "etc/acpi/tables/raw").unlink()
    r = run("predict", "tdx", "--firmware", OVMF, "--ccel", str(ccel), "--acpi", str(tree))
    assert r.returncode == 2 and "etc/acpi/tables" in r.stderr


def test_acpi_alone_lists_events_but_predicts_no_rtmr0(ovmf: bytes) -> None:
    files = {"table-loader": _loader("etc/acpi/tables"), "tables": b"DSDT" + bytes(60)}
    p = tdx.predict_tdx(ovmf, acpi=files)
    assert "rtmr0" not in p.registers
    assert [e.component for e in p.events] == ["cfv", "acpi", "acpi"]
    assert any("rtmr0 not predicted" in n for n in p.notes)


def test_inputs_that_do_not_fit_are_exit_2(tmp_path: Path, ovmf: bytes) -> None:
    (tmp_path / "junk").write_bytes(b"not a log")
    for args in (["--initrd", OVMF], ["--cmdline", "quiet"], ["--ccel", str(tmp_path / "junk")],
                 ["--separator", "rtmr2"], ["--acpi", str(tmp_path / "junk")]):
        r = run("predict", "tdx", "--firmware", OVMF, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)


def test_refvals_carry_mrtd_and_the_predicted_registers(ovmf: bytes, kernel_pe: bytes, tmp_path: Path) -> None:
    (tmp_path / "k.efi").write_bytes(kernel_pe)
    r = run("predict", "tdx", "--firmware", OVMF, "--kernel", str(tmp_path / "k.efi"), "--cmdline", "x",
            "-o", str(tmp_path / "ref.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "ref.json").read_text())
    assert doc["claims"] == {"mrtd": [mrtd_by_hand(ovmf, False).hex()]}
    assert set(doc["registers"]) == {"rtmr1", "rtmr2"}
    assert {e["register"] for e in doc["predicted"]["events"]} == {"rtmr1", "rtmr2"}
