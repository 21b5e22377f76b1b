"""``tsmr predict``: register values and reference values from the artifacts an owner built.

Offline and pure: files in, values out.  Every subcommand prints the shape of
``tsmr eventlog replay --json`` (``{"registers": {...}}``) plus the predicted events,
and ``-o FILE`` writes reference values that ``tsmr appraise --refvals`` and the
service's reference-value store take as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import typer

from ..algorithms import HashAlg
from ..errors import InputError
from ..predict.model import Prediction
from ..predict.pe import PeImage
from ..predict.uki import DEFAULT_BANKS as UKI_DEFAULT_BANKS
from ..predict.uki import DEFAULT_PHASES as UKI_DEFAULT_PHASES
from ..predict.uki import predict_uki, uki_sections
from ..predict.uki import Section as UkiSection
from . import render
from .common import CommandGroup, JsonOpt, handle_errors, read_input, write_output

predict_app = typer.Typer(
    cls=CommandGroup, no_args_is_help=True,
    help="Predict register values from firmware, kernel, initrd and command line (offline).")

OutOpt = Annotated[Optional[str], typer.Option(
    "-o", "--output", help="Write reference values (tsmr-refvals JSON) to this file, - for standard output.")]
RefvalsIdOpt = Annotated[Optional[str], typer.Option(
    "--id", help="The id of the reference values written with -o (default: predicted-<platform>).")]


def emit(prediction: Prediction, *, as_json: bool, output: str | None, refvals_id: str | None) -> None:
    """Print a prediction (table or JSON) and write its reference values with -o."""
    if output is not None:
        doc = prediction.to_refvals(refvals_id or f"predicted-{prediction.platform}")
        write_output(None if output == "-" else output, (json.dumps(doc, indent=1) + "\n").encode())
        if output == "-":
            return
    if as_json:
        render.print_json(prediction.to_json())
        return
    render.prediction(prediction)


# --- tdx ---

_TDX_ACPI_FILES = 64  # at most this many files are read from an --acpi directory


def read_acpi_dir(directory: str) -> dict[str, bytes]:
    """The fw_cfg ACPI blobs in ``directory``, by path relative to it.

    The layouts accepted: the fw_cfg names as paths (``etc/table-loader``,
    ``etc/acpi/tables``), the same with a ``raw`` file under each (a copy of a guest's
    ``/sys/firmware/qemu_fw_cfg/by_name``), or the last name component alone
    (``table-loader``, ``rsdp``, ``tables``).
    """
    import os

    if not os.path.isdir(directory):
        raise InputError(f"--acpi {directory}: not a directory")
    files: dict[str, bytes] = {}
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            if not os.path.isfile(path):
                continue
            if len(files) >= _TDX_ACPI_FILES:
                raise InputError(f"--acpi {directory}: more than {_TDX_ACPI_FILES} files")
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            if rel.endswith("/raw"):
                rel = rel[: -len("/raw")]
            files[rel] = read_input(path, "an ACPI table file")
    return files


def tdx_prediction(firmware: str, *, kernel: str | None = None, initrd: str | None = None,
                   cmdline: str | None = None, two_pass_add: bool = False, acpi: str | None = None,
                   ccel: str | None = None, separator: str | None = None) -> Prediction:
    """Read the files ``tsmr predict tdx`` (and ``tsmr emulate init --profile tdx``) name and predict."""
    from ..predict.tdx import predict_tdx

    names = {"firmware": firmware}
    data = {"firmware": read_input(firmware, "the firmware")}
    for key, path in (("kernel", kernel), ("initrd", initrd), ("ccel", ccel)):
        if path is not None:
            names[key] = path
            data[key] = read_input(path, f"the {key}")
    return predict_tdx(data["firmware"], kernel=data.get("kernel"), initrd=data.get("initrd"), cmdline=cmdline,
                       two_pass_add=two_pass_add, acpi=read_acpi_dir(acpi) if acpi is not None else None,
                       ccel=data.get("ccel"), separator=separator, names=names)


@dataclass(frozen=True)
class EmulatedTdxBoot:
    """What ``tsmr emulate init --profile tdx --firmware`` hands the emulator: the extends and the CCEL."""

    prediction: Prediction
    extends: list[tuple[str, bytes]]  # (attribute, digest), in boot order
    ccel: bytes

    def to_json(self) -> dict[str, Any]:
        return {"mrtd": self.prediction.claims["mrtd"], "events": len(self.extends),
                "predicted": sorted(self.prediction.registers), "notes": list(self.prediction.notes)}


def emulated_tdx_boot(profile: str, values: dict[str, bytes], *, firmware: str | None, kernel: str | None,
                      initrd: str | None, cmdline: str | None, two_pass_add: bool, acpi: str | None,
                      ccel: str | None, separator: str | None) -> EmulatedTdxBoot | None:
    """The boot an emulated TD makes of ``firmware`` (None without one): sets ``values["mrtd"]``.

    The prediction is computed here, in the CLI, and handed to the backend as values and
    bytes: backends do not import :mod:`tsmr.predict`.
    """
    from ..predict.tdx import to_ccel

    if firmware is None:
        if any(x is not None for x in (kernel, initrd, cmdline, acpi, ccel, separator)) or two_pass_add:
            raise InputError("--kernel, --initrd, --cmdline, --two-pass-add, --acpi, --ccel and --separator go "
                             "with --firmware")
        return None
    if profile != "tdx":
        raise InputError(f"--firmware boots a TDX image: use --profile tdx (not {profile})")
    if "mrtd" in values:
        raise InputError("--set mrtd and --firmware both give MRTD: give one")
    prediction = tdx_prediction(firmware, kernel=kernel, initrd=initrd, cmdline=cmdline, two_pass_add=two_pass_add,
                                acpi=acpi, ccel=ccel, separator=separator)
    values["mrtd"] = bytes.fromhex(prediction.claims["mrtd"])
    extends = [(f"{e.register}:{alg.kernel_name}", digest) for e in prediction.events
               for alg, digest in e.digests.items()]
    return EmulatedTdxBoot(prediction=prediction, extends=extends, ccel=to_ccel(prediction.events))


TdxFirmwareOpt = Annotated[str, typer.Option(
    "--firmware", help="The TDVF/OVMF image QEMU launches the TD with (its TDX metadata gives MRTD).",
    show_default=False)]
TdxKernelOpt = Annotated[Optional[str], typer.Option(
    "--kernel", help="The kernel of a direct boot (QEMU -kernel): predicts RTMR1 and RTMR2.", show_default=False)]
TdxInitrdOpt = Annotated[Optional[str], typer.Option(
    "--initrd", help="The initrd of the direct boot (the EFI stub's 'Linux initrd' event; OVMF appends "
    "' initrd=initrd' to the command line).", show_default=False)]
TdxCmdlineOpt = Annotated[Optional[str], typer.Option(
    "--cmdline", help="The kernel command line (QEMU -append), measured as UTF-16LE LoadOptions with its NUL.",
    show_default=False)]
TdxTwoPassOpt = Annotated[bool, typer.Option(
    "--two-pass-add", help="MRTD page order of some downstream qemu-tdx builds: all TDH.MEM.PAGE.ADD of a section, "
    "then its TDH.MR.EXTENDs (default: upstream QEMU/KVM, add then extend page by page).")]
TdxAcpiOpt = Annotated[Optional[str], typer.Option(
    "--acpi", help="Directory of the VMM's fw_cfg ACPI files (etc/table-loader and the blobs it allocates, e.g. a "
    "copy of a guest's /sys/firmware/qemu_fw_cfg/by_name): OVMF measures each into RTMR0. RTMR0 also holds the "
    "TD HOB and the Secure Boot and boot variables, so it is predicted only with --ccel.", show_default=False)]
TdxCcelOpt = Annotated[Optional[str], typer.Option(
    "--ccel", help="A CCEL captured from a boot of the same VMM and platform: its RTMR0 events stand for the TD "
    "HOB, variables and (without --acpi) ACPI tables; the CFV event is recomputed from --firmware.",
    show_default=False)]
TdxSeparatorOpt = Annotated[Optional[str], typer.Option(
    "--separator", help="Where the firmware puts its ReadyToBoot separator: rtmr0 (edk2 up to 2023, e.g. Debian's "
    "2022.11) or rtmr1 (later edk2). Default: what --ccel shows, else rtmr0.", show_default=False)]


@predict_app.command("tdx")
@handle_errors
def predict_tdx_cmd(
    firmware: TdxFirmwareOpt,
    kernel: TdxKernelOpt = None,
    initrd: TdxInitrdOpt = None,
    cmdline: TdxCmdlineOpt = None,
    two_pass_add: TdxTwoPassOpt = False,
    acpi: TdxAcpiOpt = None,
    ccel: TdxCcelOpt = None,
    separator: TdxSeparatorOpt = None,
    write_ccel: Annotated[Optional[str], typer.Option(
        "--write-ccel", help="Also write the CCEL log area these events make (TCG2, SHA-384, MR indices).",
        show_default=False)] = None,
    as_json: JsonOpt = False,
    output: OutOpt = None,
    refvals_id: RefvalsIdOpt = None,
) -> None:
    """Intel TDX: MRTD from the TDVF metadata, and RTMR0-2 of a QEMU direct
    boot of an edk2 OVMF/TDVF.

    MRTD: every TDVF section page by page (TDH.MEM.PAGE.ADD), with
    TDH.MR.EXTEND of each 256-byte chunk of the sections that ask for it.
    RTMR1/RTMR2 (with --kernel): the kernel's Authenticode SHA-384 (QEMU
    does not patch the setup header of a confidential guest's kernel),
    'Calling EFI Application from Boot Option', the EFI stub's LoadOptions
    and initrd events, and the two ExitBootServices events, in upstream
    edk2 TdTcg2Dxe's order. RTMR0 holds what the VMM and the variable
    store contribute (TD HOB, ACPI tables, Secure Boot and boot
    variables): it is predicted only from a captured CCEL (--ccel, with
    --acpi for other ACPI tables); otherwise it is left out and the notes
    say so.
    """
    from ..predict.tdx import to_ccel

    prediction = tdx_prediction(firmware, kernel=kernel, initrd=initrd, cmdline=cmdline, two_pass_add=two_pass_add,
                                acpi=acpi, ccel=ccel, separator=separator)
    if write_ccel is not None:
        write_output(write_ccel, to_ccel(prediction.events))
    emit(prediction, as_json=as_json, output=output, refvals_id=refvals_id)



# --- snp ---

SnpVcpusOpt = Annotated[Optional[int], typer.Option(
    "--vcpus", help="Number of vCPUs: one VMSA each (the BSP's, then the APs').", show_default=False)]
SnpVcpuTypeOpt = Annotated[Optional[str], typer.Option(
    "--vcpu-type", help="QEMU vCPU model: EPYC, EPYC-v1..v4, EPYC-IBPB, EPYC-Rome[-v1..v3], EPYC-Milan[-v1..v2], "
    "EPYC-Genoa[-v1], EPYC-Turin[-v1]. Needed for --vmm qemu (EC2 and GCE do not put it in the VMSA).",
    show_default=False)]
SnpVcpuSigOpt = Annotated[Optional[str], typer.Option(
    "--vcpu-sig", help="The vCPU's CPUID signature (Fn0000_0001_EAX) instead of --vcpu-type, e.g. 0xa00f11.",
    show_default=False)]
SnpFamilyOpt = Annotated[Optional[int], typer.Option(
    "--vcpu-family", help="vCPU family, with --vcpu-model and --vcpu-stepping, instead of --vcpu-type.",
    show_default=False)]
SnpModelOpt = Annotated[Optional[int], typer.Option("--vcpu-model", help="vCPU model (with --vcpu-family).",
                                                    show_default=False)]
SnpSteppingOpt = Annotated[Optional[int], typer.Option("--vcpu-stepping", help="vCPU stepping (with --vcpu-family).",
                                                       show_default=False)]
SnpVmmOpt = Annotated[str, typer.Option(
    "--vmm", help="The VMM that launches the guest: qemu (QEMU/KVM), ec2 (AWS) or gce (Google); each writes "
    "its own initial vCPU state and page order.")]
SnpFeaturesOpt = Annotated[str, typer.Option(
    "--guest-features", help="SEV_FEATURES of the VMSAs, hexadecimal (bit 0 SNPActive; e.g. 0x21 adds DebugSwap).")]
SnpKernelOpt = Annotated[Optional[str], typer.Option(
    "--kernel", help="Kernel booted directly by the VMM: its SHA-256 goes in the SEV hash table (needs an OVMF with "
    "an SNP_KERNEL_HASHES section, e.g. OvmfPkg/AmdSev).", show_default=False)]
SnpInitrdOpt = Annotated[Optional[str], typer.Option("--initrd", help="Initrd booted with --kernel.",
                                                     show_default=False)]
SnpAppendOpt = Annotated[Optional[str], typer.Option(
    "--append", help="Kernel command line given with --kernel (hashed with its terminating NUL).", show_default=False)]
SnpOvmfDigestOpt = Annotated[Optional[str], typer.Option(
    "--snp-ovmf-hash", help="Start from this precomputed launch digest of the firmware's pages (hex, from "
    "--ovmf-hash) instead of hashing the image; its SEV metadata is still read.", show_default=False)]


def _snp_int(text: str, what: str, base: int) -> int:
    try:
        return int(text.strip(), base)
    except ValueError:
        raise InputError(f"{what} is not a{' hexadecimal' if base == 16 else 'n'} integer: {text!r}") from None


def _sha256_file(path: str, what: str) -> tuple[bytes, int]:
    """SHA-256 and size of a file read in chunks (a kernel or initrd may exceed the input limit; only its hash counts)."""
    from ..system.inputs import iter_input

    h = hashlib.sha256()
    size = 0
    for block in iter_input(path, what, limit=0):
        h.update(block)
        size += len(block)
    return h.digest(), size


def snp_prediction(
    firmware: str, *, vcpus: int | None, vcpu_type: str | None = None, vcpu_sig: str | None = None,
    vcpu_family: int | None = None, vcpu_model: int | None = None, vcpu_stepping: int | None = None,
    vmm: str = "qemu", guest_features: str = "0x1", kernel: str | None = None, initrd: str | None = None,
    append: str | None = None, snp_ovmf_hash: str | None = None,
) -> Prediction:
    """The SEV-SNP launch prediction from the command line's files and values (``predict snp``, ``emulate init``)."""
    from ..predict.snp import KernelHashes, predict_snp
    from ..predict.snp_vmsa import VMMS, cpuid_signature, vcpu_signature

    vmm = vmm.strip().lower()
    if vmm not in VMMS:
        raise InputError(f"--vmm {vmm!r}: one of {', '.join(VMMS)}")
    if vcpus is None:
        raise InputError("--vcpus is required: the launch measures one VMSA per vCPU")
    fms = (vcpu_family, vcpu_model, vcpu_stepping)
    given = [name for name, v in (("--vcpu-type", vcpu_type), ("--vcpu-sig", vcpu_sig),
                                  ("--vcpu-family", vcpu_family if any(x is not None for x in fms) else None))
             if v is not None]
    if len(given) > 1:
        raise InputError(f"give only one of {' and '.join(given)}: each names the vCPU signature")
    vcpu: dict[str, str] = {}
    if any(x is not None for x in fms):
        if any(x is None for x in fms):
            raise InputError("--vcpu-family, --vcpu-model and --vcpu-stepping go together")
        sig = cpuid_signature(*(int(x) for x in fms if x is not None))
        vcpu = {"family": str(vcpu_family), "model": str(vcpu_model), "stepping": str(vcpu_stepping)}
    elif vcpu_sig is not None:
        sig = _snp_int(vcpu_sig, "--vcpu-sig", 0)
    elif vcpu_type is not None:
        sig = vcpu_signature(vcpu_type)
        vcpu = {"type": vcpu_type}
    elif vmm == "qemu":
        raise InputError("--vcpu-type (or --vcpu-sig, or --vcpu-family/--vcpu-model/--vcpu-stepping) is required "
                         "with --vmm qemu: QEMU puts the vCPU's signature in every VMSA")
    else:
        sig = None  # EC2 and GCE write 0x600 whatever the vCPU
    inputs: dict[str, dict[str, str]] = {}
    if sig is not None:
        inputs["vcpu"] = {**vcpu, "signature": f"{sig:#010x}"}
    features = _snp_int(guest_features, "--guest-features", 16)
    if not 0 <= features < 1 << 64:
        raise InputError(f"--guest-features {guest_features}: SEV_FEATURES is 64 bits")
    if (initrd is not None or append is not None) and kernel is None:
        raise InputError("--initrd and --append go with --kernel: without a kernel nothing measures them")

    data = read_input(firmware, "the firmware")
    inputs["firmware"] = {"file": firmware, "sha256": hashlib.sha256(data).hexdigest(), "size": str(len(data))}
    inputs["vmm"] = {"value": vmm}
    inputs["vcpus"] = {"value": str(vcpus)}
    inputs["guest_features"] = {"value": f"{features:#x}"}
    hashes = None
    if kernel is not None:
        kernel_sha, kernel_size = _sha256_file(kernel, "the kernel")
        inputs["kernel"] = {"file": kernel, "sha256": kernel_sha.hex(), "size": str(kernel_size)}
        initrd_sha = None
        if initrd is not None:
            initrd_sha, initrd_size = _sha256_file(initrd, "the initrd")
            inputs["initrd"] = {"file": initrd, "sha256": initrd_sha.hex(), "size": str(initrd_size)}
        inputs["cmdline"] = {"value": append or ""}
        hashes = KernelHashes.of(kernel_sha, initrd_sha, append)
    start = None
    if snp_ovmf_hash is not None:
        start = _hex_digest(snp_ovmf_hash, "--snp-ovmf-hash", 48)
        inputs["firmware"]["launch_digest"] = start.hex()
    return predict_snp(data, vcpus=vcpus, vcpu_sig=sig or 0, vmm=vmm, guest_features=features, kernel=hashes,
                       firmware_digest=start, inputs=inputs)


def _hex_digest(text: str, what: str, size: int) -> bytes:
    t = text.strip().lower()
    t = t[2:] if t.startswith("0x") else t
    try:
        value = bytes.fromhex(t)
    except ValueError:
        raise InputError(f"{what} is not hexadecimal: {text!r}") from None
    if len(value) != size:
        raise InputError(f"{what} must be {size} bytes ({2 * size} hex digits), got {len(value)}")
    return value


def emulated_snp_launch(profile: str, values: dict[str, bytes], *, firmware: str | None, vcpus: int | None,
                        vcpu_type: str | None, vmm: str, guest_features: str, kernel: str | None, initrd: str | None,
                        append: str | None) -> Prediction:
    """For ``emulate init --profile snp --firmware F ...``: predict the launch and put it in ``values``."""
    if profile != "snp":
        raise InputError("--firmware, --vcpus, --vcpu-type, --kernel, --initrd and --append set the launch "
                         "measurement of the snp profile only")
    if firmware is None:
        raise InputError("--vcpus, --vcpu-type, --kernel, --initrd and --append describe a launch of --firmware: give it")
    if "measurement" in values:
        raise InputError("give either --set measurement=... or --firmware, not both")
    prediction = snp_prediction(firmware, vcpus=vcpus, vcpu_type=vcpu_type, vmm=vmm, guest_features=guest_features,
                                kernel=kernel, initrd=initrd, append=append)
    values["measurement"] = bytes.fromhex(prediction.claims["measurement"])
    return prediction


@predict_app.command("snp")
@handle_errors
def snp_cmd(
    firmware: Annotated[str, typer.Option("--firmware", help="The OVMF image (OVMF.fd) with SEV metadata.")],
    vcpus: SnpVcpusOpt = None,
    vcpu_type: SnpVcpuTypeOpt = None,
    vcpu_sig: SnpVcpuSigOpt = None,
    vcpu_family: SnpFamilyOpt = None,
    vcpu_model: SnpModelOpt = None,
    vcpu_stepping: SnpSteppingOpt = None,
    vmm: SnpVmmOpt = "qemu",
    guest_features: SnpFeaturesOpt = "0x1",
    kernel: SnpKernelOpt = None,
    initrd: SnpInitrdOpt = None,
    append: SnpAppendOpt = None,
    ovmf_hash: Annotated[bool, typer.Option(
        "--ovmf-hash", help="Print only the launch digest of the firmware's pages (for --snp-ovmf-hash and "
        "precomputed launches).")] = False,
    snp_ovmf_hash: SnpOvmfDigestOpt = None,
    as_json: JsonOpt = False,
    output: OutOpt = None,
    refvals_id: RefvalsIdOpt = None,
) -> None:
    """Predict the SEV-SNP launch measurement (the report's MEASUREMENT) of an
    OVMF guest.

    Follows the SEV-SNP firmware ABI's SNP_LAUNCH_UPDATE digest over the
    firmware's pages, its SEV metadata sections (with the SEV hash table
    of --kernel, --initrd and --append), and one VMSA per vCPU as the VMM
    initialises it. No ID block is assumed.
    """
    if ovmf_hash:
        from ..predict.snp import ovmf_hash as firmware_launch_digest

        if output is not None:
            raise InputError("--ovmf-hash prints the firmware's digest only; it writes no reference values (-o)")
        data = read_input(firmware, "the firmware")
        digest = firmware_launch_digest(data).hex()
        if as_json:
            render.print_json({"platform": "snp", "ovmf_hash": digest,
                               "inputs": {"firmware": {"file": firmware, "sha256": hashlib.sha256(data).hexdigest(),
                                                       "size": str(len(data))}}})
        else:
            render.line(digest)
        return
    prediction = snp_prediction(
        firmware, vcpus=vcpus, vcpu_type=vcpu_type, vcpu_sig=vcpu_sig, vcpu_family=vcpu_family,
        vcpu_model=vcpu_model, vcpu_stepping=vcpu_stepping, vmm=vmm, guest_features=guest_features,
        kernel=kernel, initrd=initrd, append=append, snp_ovmf_hash=snp_ovmf_hash)
    emit(prediction, as_json=as_json, output=output, refvals_id=refvals_id)



# --- uki ---


def _section_opt(flag: str, section: str, since: str = "") -> Any:
    return typer.Option(flag, help=f"File for the {section} section{since}.", show_default=False)


@predict_app.command("uki")
@handle_errors
def predict_uki_cmd(
    linux: Annotated[Optional[str], _section_opt("--linux", ".linux", " (the kernel; required unless --uki)")] = None,
    osrel: Annotated[Optional[str], _section_opt("--osrel", ".osrel")] = None,
    cmdline: Annotated[Optional[str], _section_opt("--cmdline", ".cmdline", " (a file, as for systemd-measure)")] = None,
    initrd: Annotated[Optional[str], _section_opt("--initrd", ".initrd")] = None,
    ucode: Annotated[Optional[str], _section_opt("--ucode", ".ucode", " (systemd 256 and later)")] = None,
    splash: Annotated[Optional[str], _section_opt("--splash", ".splash")] = None,
    dtb: Annotated[Optional[str], _section_opt("--dtb", ".dtb")] = None,
    uname: Annotated[Optional[str], _section_opt("--uname", ".uname", " (systemd 254 and later)")] = None,
    sbat: Annotated[Optional[str], _section_opt("--sbat", ".sbat", " (systemd 254 and later)")] = None,
    pcrpkey: Annotated[Optional[str], _section_opt("--pcrpkey", ".pcrpkey")] = None,
    uki: Annotated[Optional[str], typer.Option(
        "--uki", help="Take the sections from this built UKI (as its stub measures them); section options "
        "given too replace the UKI's sections.", show_default=False)] = None,
    phase: Annotated[Optional[list[str]], typer.Option(
        "--phase", help="A boot phase: colon-separated systemd-pcrphase words (enter-initrd:leave-initrd); "
        "repeatable; \"\" for the sections alone. Default, as systemd-measure: the four prefixes of "
        "enter-initrd:leave-initrd:sysinit:ready. PCR 11 is the value after the last; the others are "
        "accepted too by the reference values -o writes.", show_default=False)] = None,
    bank: Annotated[Optional[list[str]], typer.Option(
        "--bank", help="Hash bank, repeatable (default: sha1 sha256 sha384 sha512, as systemd-measure).",
        show_default=False)] = None,
    systemd: Annotated[Optional[int], typer.Option(
        "--systemd", help="The systemd version of the UKI's stub, which decides the sections measured: 252 "
        ".linux .osrel .cmdline .initrd .splash .dtb .pcrpkey; 254 adds .uname .sbat; 256 adds .ucode. "
        "Default: the version the --uki's stub names in .sdmagic, else 256. UKIs with .profile, .dtbauto, "
        ".hwids or .efifw sections (257 and later) are refused.", show_default=False)] = None,
    pad_linux: Annotated[bool, typer.Option(
        "--pad-linux", help="Measure --linux padded with zeros to the kernel's SizeOfImage, as the ukify and "
        "systemd-measure of some systemd 257 releases did.")] = False,
    as_json: JsonOpt = False,
    output: OutOpt = None,
    refvals_id: RefvalsIdOpt = None,
) -> None:
    """PCR 11 of a unified kernel image, as systemd-stub measures it and
    systemd-measure predicts it.

    Each section present (name with its NUL, then contents, in systemd's
    order), then the boot-phase words. Give the section files (like
    systemd-measure) or a built UKI with --uki.
    """
    files = {".linux": linux, ".osrel": osrel, ".cmdline": cmdline, ".initrd": initrd, ".ucode": ucode,
             ".splash": splash, ".dtb": dtb, ".uname": uname, ".sbat": sbat, ".pcrpkey": pcrpkey}
    given = {name: path for name, path in files.items() if path is not None}
    sections: dict[str, UkiSection] = {}
    uki_input: tuple[str, bytes] | None = None
    if uki is not None:
        data = read_input(uki, "the UKI")
        uki_input = (uki, data)
        for s in uki_sections(data, systemd, source=uki):
            sections[s.name] = s
    elif linux is None:
        raise InputError("predict uki: give --linux (and the other section files) or --uki")
    for name, path in given.items():
        sections[name] = UkiSection(name, read_input(path, f"the {name} section"), path)
    banks = [HashAlg.from_name(b) for b in bank] if bank else list(UKI_DEFAULT_BANKS)
    prediction = predict_uki(list(sections.values()), phases=phase if phase else UKI_DEFAULT_PHASES,
                             banks=banks, systemd_version=systemd, pad_linux=pad_linux, uki=uki_input)
    emit(prediction, as_json=as_json, output=output, refvals_id=refvals_id)


# --- tpm ---

_TPM_BANKS = ("sha1", "sha256", "sha384", "sha512")


@predict_app.command("tpm")
@handle_errors
def predict_tpm_cmd(
    efi_app: Annotated[Optional[list[str]], typer.Option(
        "--efi-app", help="An EFI application the firmware starts from a boot option (shim, GRUB, systemd-boot, "
        "a UKI), in the order started; repeatable.", show_default=False)] = None,
    kernel: Annotated[Optional[str], typer.Option(
        "--kernel", help="The Linux kernel (bzImage with EFI stub): with --direct-boot what QEMU's -kernel loads, "
        "otherwise the last application started.", show_default=False)] = None,
    initrd: Annotated[Optional[str], typer.Option(
        "--initrd", help="The initrd the EFI stub loads (PCR 9).", show_default=False)] = None,
    cmdline: Annotated[Optional[str], typer.Option(
        "--cmdline", help="The kernel command line (text, as qemu -append takes it) (PCR 9).",
        show_default=False)] = None,
    direct_boot: Annotated[bool, typer.Option(
        "--direct-boot", help="QEMU -kernel/-initrd/-append with OVMF: the kernel is measured first, before the "
        "ReadyToBoot events; OVMF appends ' initrd=initrd' to the load options when there is an initrd.")] = False,
    secure_boot_db: Annotated[Optional[str], typer.Option(
        "--secure-boot-db", help="Directory of Secure Boot variables for PCR 7: files SecureBoot (one byte), PK, "
        "KEK, db, dbx, dbt (EFI signature lists) or efivarfs copies (PK-8be4df61-...); absent = empty. "
        "Default: OVMF's Secure Boot off with no keys.", show_default=False)] = None,
    vmm: Annotated[str, typer.Option(
        "--vmm", help="How the VMM hands a --direct-boot kernel to the firmware: qemu (x86 QEMU 7.2/8.x "
        "without SEV: setup header patched) or unmodified (the file as it is: QEMU with SEV, or a VMM "
        "that does not patch).")] = "qemu",
    memory: Annotated[int, typer.Option(
        "--memory", help="Guest memory in MiB (qemu -m): where QEMU puts the initrd, written into the kernel's "
        "setup header.")] = 128,
    machine: Annotated[str, typer.Option(
        "--machine", help="QEMU machine type, pc or q35 (RAM below 4 GiB, with --memory).")] = "pc",
    bank: Annotated[Optional[list[str]], typer.Option(
        "--bank", help="Hash bank, repeatable (default: sha1 sha256 sha384 sha512).", show_default=False)] = None,
    as_json: JsonOpt = False,
    output: OutOpt = None,
    refvals_id: RefvalsIdOpt = None,
) -> None:
    """PCR 4, 7 and 9 of a UEFI boot (EDK2/OVMF firmware, Linux EFI stub) of
    these files.

    PCR 4: the ReadyToBoot action and separator, and each application's
    Authenticode digest, in a boot option's order (or OVMF's direct-boot
    order with --direct-boot).

    PCR 7: the Secure Boot variables and separator; predicted only with
    Secure Boot off and no shim among the applications.

    PCR 9: the EFI stub's load options and initrd events; predicted only
    with --direct-boot.

    Registers the inputs do not determine are left out, and the notes say
    why.
    """
    from ..predict import tpm

    def artifact(path: str | None, what: str) -> tpm.Artifact | None:
        return None if path is None else tpm.Artifact(path, read_input(path, what))

    banks = []
    for name in bank or _TPM_BANKS:
        alg = HashAlg.from_name(name)
        if alg not in tpm.DEFAULT_BANKS:
            raise InputError(f"--bank {name}: predict tpm knows sha1, sha256, sha384 and sha512")
        banks.append(alg)
    variables = None
    if secure_boot_db is not None:
        if not os.path.isdir(secure_boot_db):
            raise InputError(f"--secure-boot-db {secure_boot_db}: not a directory")
        files = {name: read_input(os.path.join(secure_boot_db, name), f"Secure Boot variable {name}")
                 for name in tpm.secure_boot_file_names() if os.path.isfile(os.path.join(secure_boot_db, name))}
        variables = tpm.secure_boot_variables(files)
    apps = [tpm.Artifact(p, read_input(p, "the EFI application")) for p in efi_app or ()]
    prediction = tpm.predict_tpm(
        efi_apps=apps, kernel=artifact(kernel, "the kernel"), initrd=artifact(initrd, "the initrd"),
        cmdline=cmdline, direct_boot=direct_boot, secure_boot=variables, banks=banks, vmm=vmm,
        memory_mib=memory, machine=machine)
    emit(prediction, as_json=as_json, output=output, refvals_id=refvals_id)


# --- authenticode ---

_AUTHENTICODE_ALGS = ("sha256", "sha1", "sha384", "sha512")


@handle_errors
def authenticode_cmd(
    file: Annotated[str, typer.Argument(help="A PE/COFF image: EFI application, kernel with EFI stub, UKI.")],
    alg: Annotated[str, typer.Option(
        "--alg", help="Hash algorithm: sha256, sha1, sha384 or sha512.")] = "sha256",
    as_json: JsonOpt = False,
) -> None:
    """The Authenticode digest of a PE/COFF image, as UEFI firmware measures
    it into PCR 4 (or RTMR1).

    The whole file except the CheckSum field, the certificate table's
    directory entry and the certificate table; no padding is added (EDK2's
    rule). With --json also the digests the image's Authenticode
    signatures embed.
    """
    if alg.lower() not in _AUTHENTICODE_ALGS:
        raise InputError(f"--alg {alg!r}: choose one of {', '.join(_AUTHENTICODE_ALGS)}")
    hash_alg = HashAlg.from_name(alg)
    image = PeImage.parse(read_input(file, "the PE image"))
    digest = image.authenticode(hash_alg)
    if as_json:
        render.print_json({"file": file, "alg": hash_alg.name.lower(), "digest": digest.hex(),
                           "signed_digests": [{"alg": a.name.lower(), "digest": d.hex(),
                                               "matches": d == image.authenticode(a)}
                                              for a, d in image.signed_digests()]})
        return
    render.line(digest.hex())
