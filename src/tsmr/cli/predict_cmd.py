"""``tsmr predict``: register values and reference values from the artifacts an owner built.

Offline and pure: files in, values out.  Every subcommand prints the shape of
``tsmr eventlog replay --json`` (``{"registers": {...}}``) plus the predicted events,
and ``-o FILE`` writes reference values that ``tsmr appraise --refvals`` and the
service's reference-value store take as they are.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..predict.model import Prediction
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
    """Predict the SEV-SNP launch measurement (the report's MEASUREMENT) of an OVMF guest.

    Follows the SEV-SNP firmware ABI's SNP_LAUNCH_UPDATE digest over the firmware's
    pages, its SEV metadata sections (with the SEV hash table of --kernel, --initrd and
    --append), and one VMSA per vCPU as the VMM initialises it. No ID block is assumed.
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


# --- tpm ---
