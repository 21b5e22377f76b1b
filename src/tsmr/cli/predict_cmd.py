"""``tsmr predict``: register values and reference values from the artifacts an owner built.

Offline and pure: files in, values out.  Every subcommand prints the shape of
``tsmr eventlog replay --json`` (``{"registers": {...}}``) plus the predicted events,
and ``-o FILE`` writes reference values that ``tsmr appraise --refvals`` and the
service's reference-value store take as they are.
"""

from __future__ import annotations

import json
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
    """Intel TDX: MRTD from the TDVF metadata, and RTMR0-2 of a QEMU direct boot of an edk2 OVMF/TDVF.

    MRTD: every TDVF section page by page (TDH.MEM.PAGE.ADD), with TDH.MR.EXTEND of each
    256-byte chunk of the sections that ask for it. RTMR1/RTMR2 (with --kernel): the
    kernel's Authenticode SHA-384 (QEMU does not patch the setup header of a confidential
    guest's kernel), 'Calling EFI Application from Boot Option', the EFI stub's
    LoadOptions and initrd events, and the two ExitBootServices events, in upstream edk2
    TdTcg2Dxe's order. RTMR0 holds what the VMM and the variable store contribute (TD HOB,
    ACPI tables, Secure Boot and boot variables): it is predicted only from a captured
    CCEL (--ccel, with --acpi for other ACPI tables); otherwise it is left out and the
    notes say so.
    """
    from ..predict.tdx import to_ccel

    prediction = tdx_prediction(firmware, kernel=kernel, initrd=initrd, cmdline=cmdline, two_pass_add=two_pass_add,
                                acpi=acpi, ccel=ccel, separator=separator)
    if write_ccel is not None:
        write_output(write_ccel, to_ccel(prediction.events))
    emit(prediction, as_json=as_json, output=output, refvals_id=refvals_id)



# --- snp ---


# --- uki ---

_UKI_FILE_HELP = "systemd-measure's option of the same name: the file whose bytes the section holds."


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
    """PCR 11 of a unified kernel image, as systemd-stub measures it and systemd-measure predicts it.

    Each section present (name with its NUL, then contents, in systemd's order), then the
    boot-phase words. Give the section files (like systemd-measure) or a built UKI with --uki.
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


# --- authenticode ---

_AUTHENTICODE_ALGS = ("sha256", "sha1", "sha384", "sha512")


@handle_errors
def authenticode_cmd(
    file: Annotated[str, typer.Argument(help="A PE/COFF image: EFI application, kernel with EFI stub, UKI.")],
    alg: Annotated[str, typer.Option(
        "--alg", help="Hash algorithm: sha256, sha1, sha384 or sha512.")] = "sha256",
    as_json: JsonOpt = False,
) -> None:
    """The Authenticode digest of a PE/COFF image, as UEFI firmware measures it into PCR 4 (or RTMR1).

    The whole file except the CheckSum field, the certificate table's directory entry and the
    certificate table; no padding is added (EDK2's rule). With --json also the digests the
    image's Authenticode signatures embed.
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
