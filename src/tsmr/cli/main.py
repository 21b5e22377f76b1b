"""The ``tsmr`` command line: argument parsing and rendering over the library.

Exit codes (decided in :func:`tsmr.cli.common.exit_code`): 0 success; 1 the
evidence, a signature, collateral, a replay or a policy said no; 2 bad input
or usage; 3 the backend or the system (device, verifier, database) failed.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from ..version import __version__
from ..algorithms import HashAlg
from ..errors import InputError
from ..registers import Register, bank_label
from ..runtime_log.reset import remove_logs
from ..runtime_log.store import RuntimeLog
from . import render
from .common import BackendOpt, CommandGroup, JsonOpt, LogDirOpt, StateDirOpt, handle_errors, open_backend_cli as _open
from .eventlog_cmd import eventlog_app
from .log_cmd import log_app
from .ear_cmd import ear_app
from .quote_cmd import quote_app
from .collateral_cmd import collateral_app
from .nodes_cmd import nodes_app
from .predict_cmd import authenticode_cmd, predict_app
from .predict_cmd import SnpFeaturesOpt, SnpVcpusOpt, SnpVcpuTypeOpt, SnpVmmOpt, emulated_snp_launch, emulated_tdx_boot
from .agent_cmd import register as register_agent
from .appraise_cmd import refvals_app
from .appraise_cmd import register as register_appraise
from .serve_cmd import add_refvals_commands
from .serve_cmd import register as register_serve
from .bundle_cmd import attest_cmd, challenge_cmd, verify_cmd

app = typer.Typer(
    name="tsmr",
    cls=CommandGroup,
    help="Read and extend measurement registers (TDX RTMRs, Arm CCA REMs, TPM PCRs) through one interface.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
emulate_app = typer.Typer(
    help="Manage the built-in register emulator (profiles tdx, cca, snp, tpm, sample).",
    no_args_is_help=True,
)
app.add_typer(emulate_app, name="emulate")
app.add_typer(log_app, name="log")
app.add_typer(eventlog_app, name="eventlog")
app.add_typer(quote_app, name="quote")
app.add_typer(collateral_app, name="collateral")
app.add_typer(nodes_app, name="nodes")
app.add_typer(ear_app, name="ear")
app.add_typer(predict_app, name="predict")
app.command("authenticode")(authenticode_cmd)
app.command("attest")(handle_errors(attest_cmd))
app.command("verify")(handle_errors(verify_cmd))
app.command("challenge")(handle_errors(challenge_cmd))
register_agent(app)
register_appraise(app)
register_serve(app)
add_refvals_commands(refvals_app)

def _parse_bank(text: str | None) -> HashAlg | None:
    if text is None or text.lower() in ("raw", "none"):
        return None
    return HashAlg.from_name(text)


def _parse_hex(text: str, what: str) -> bytes:
    t = text.strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise InputError(f"{what} is not hexadecimal: {text!r}") from None


def _plan_extend(reg: Register, digests: list[str], bank: str | None) -> dict[HashAlg | None, bytes]:
    """Map ``--digest`` arguments (``HEX`` or ``ALG:HEX`` / ``ALG/HEX``) to banks."""
    plan: dict[HashAlg | None, bytes] = {}
    for item in digests:
        alg_text, sep, hex_text = item.replace("/", ":").rpartition(":")
        if sep:
            alg: HashAlg | None = _parse_bank(alg_text)
            value = _parse_hex(hex_text, f"digest for {alg_text}")
        else:
            value = _parse_hex(item, "--digest")
            if bank is not None:
                alg = _parse_bank(bank)
            elif len(reg.banks) == 1:
                alg = reg.banks[0].alg
            else:
                fits = [b for b in reg.banks if b.size == len(value)]
                if len(fits) != 1:
                    names = ", ".join(f"{b.label} ({b.size} bytes)" for b in reg.banks)
                    raise InputError(
                        f"{reg.name} has several banks ({names}); a {len(value)}-byte digest "
                        f"{'fits none' if not fits else 'is ambiguous'}: name the bank with --bank or ALG:HEX"
                    )
                alg = fits[0].alg
        if alg in plan:
            raise InputError(f"two digests given for the {bank_label(alg)} bank of {reg.name}")
        plan[alg] = value
    return plan


@app.command("registers")
@handle_errors
def registers_cmd(
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
    values: Annotated[bool, typer.Option("--values/--no-values", help="Read each readable register.")] = True,
) -> None:
    """List the registers of a backend with their banks, sizes, flags and values."""
    with _open(backend, state_dir) as rs:
        rows = []
        for reg in rs.registers():
            vals = None
            if values:
                readable = [b.alg for b in reg.banks if b.flags & b.flags.READABLE]
                vals = rs.read(reg.name, readable) if readable else {}
            rows.append((reg, vals))
        if as_json:
            render.print_json([render.register_json(r, v) for r, v in rows])
        else:
            hw = "" if rs.hardware_backed else " (not hardware-backed)"
            render.out.print(render.registers_table(f"{rs.kind}:{rs.provider}{hw}", rows))


@app.command("read")
@handle_errors
def read_cmd(
    register: Annotated[str, typer.Argument(help="Register name, e.g. rtmr3, pcr16, rem0.")],
    bank: Annotated[Optional[str], typer.Option("--bank", help="Only this bank (sha256, sha384, ... or raw).")] = None,
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Print the value of a register (every bank, or the one given)."""
    with _open(backend, state_dir) as rs:
        reg = rs.register(register)
        algs = None if bank is None else [_parse_bank(bank)]
        vals = rs.read(register, algs)
        if as_json:
            render.print_json({"name": reg.name, "banks": render.banks_json(vals)})
        elif bank is not None:
            render.line(next(iter(vals.values())).hex())
        else:
            for alg, value in vals.items():
                render.line(f"{bank_label(alg)}:{value.hex()}")


@app.command("extend")
@handle_errors
def extend_cmd(
    register: Annotated[str, typer.Argument(help="Register name, e.g. rtmr3 or pcr16.")],
    digest: Annotated[
        list[str],
        typer.Option("--digest", "-d", help="Digest in hex, or ALG:HEX; repeat for several banks of one register."),
    ],
    bank: Annotated[Optional[str], typer.Option("--bank", help="Bank of a plain HEX digest (default: the one that fits).")] = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Extend without recording it in the register's runtime log.")] = False,
    backend: BackendOpt = None,
    log_dir: LogDirOpt = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Extend a register with raw digests: value = H(value || digest) in each bank given.

    The register changes exactly as by the kernel's digest write. The extend is
    also recorded in the register's runtime log as a '# .EXTEND' directive (a
    comment: nothing else is extended), so the log keeps replaying; the next
    'tsmr log append' writes a sync record first if the log has none yet.
    --no-log skips the directive (the next append then records a gap).
    Prefer 'tsmr log append' for events.
    """
    with _open(backend, state_dir) as rs:
        reg = rs.register(register)
        plan = _plan_extend(reg, digest, bank)
        rs.check_extend(register, plan)
        logged: dict[str, object] | None = None
        if no_log or None in plan:
            rs.extend(register, plan)
        else:
            with RuntimeLog(rs, register, log_dir=log_dir) as log:
                res = log.extend_digest({a: d for a, d in plan.items() if a is not None})
                logged = {"path": str(log.path), "lines": list(res.lines), "synced": res.synced}
        readable = [a for a in plan if reg.bank(a).flags & reg.bank(a).flags.READABLE]
        vals = rs.read(register, readable) if readable else {}
        if as_json:
            render.print_json({"name": reg.name, "extended": render.banks_json(plan), "banks": render.banks_json(vals), "log": logged})
        else:
            for alg, value in vals.items():
                render.line(f"{register} {bank_label(alg)}:{value.hex()}")


# -- emulator -----------------------------------------------------------------

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="tdx, cca, snp, tpm or sample.")]


@emulate_app.command("init")
@handle_errors
def emulate_init(
    profile: ProfileOpt = "tdx",
    hash_name: Annotated[Optional[str], typer.Option("--hash", help="CCA only: sha256 (default) or sha512.")] = None,
    set_values: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Initial value of a read-only register, NAME=HEX (e.g. mrtd=...); repeatable."),
    ] = None,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
    backend: BackendOpt = None,
    # a launch of real artifacts: --profile tdx (MRTD, RTMR0-2, CCEL) or snp (the measurement)
    firmware: Annotated[Optional[str], typer.Option(
        "--firmware", help="Launch this OVMF/TDVF image: tdx: MRTD and RTMR0-2 become what 'tsmr predict tdx' "
        "predicts (with --kernel, --initrd, --cmdline, --acpi, --ccel) and the matching CCEL becomes the emulated "
        "TD's firmware log; snp: the measurement becomes what 'tsmr predict snp' predicts.",
        show_default=False)] = None,
    kernel: Annotated[Optional[str], typer.Option("--kernel", help="With --firmware: the direct-boot kernel.",
                                                  show_default=False)] = None,
    initrd: Annotated[Optional[str], typer.Option("--initrd", help="With --firmware: the initrd.",
                                                  show_default=False)] = None,
    cmdline: Annotated[Optional[str], typer.Option("--cmdline", "--append", help="With --firmware: the kernel "
                                                   "command line.", show_default=False)] = None,
    two_pass_add: Annotated[bool, typer.Option(
        "--two-pass-add", help="tdx with --firmware: MRTD in the page order of some downstream qemu-tdx builds.")] = False,
    acpi: Annotated[Optional[str], typer.Option(
        "--acpi", help="tdx with --firmware: directory of the VMM's fw_cfg ACPI files (see 'tsmr predict tdx').",
        show_default=False)] = None,
    ccel: Annotated[Optional[str], typer.Option(
        "--ccel", help="tdx with --firmware: a captured CCEL whose RTMR0 events stand for the VMM's.",
        show_default=False)] = None,
    separator: Annotated[Optional[str], typer.Option(
        "--separator", help="tdx with --firmware: the register of the firmware's ReadyToBoot separator, rtmr0 or "
        "rtmr1 (see 'tsmr predict tdx').", show_default=False)] = None,
    vcpus: SnpVcpusOpt = None,
    vcpu_type: SnpVcpuTypeOpt = None,
    vmm: SnpVmmOpt = "qemu",
    guest_features: SnpFeaturesOpt = "0x1",
) -> None:
    """Create the emulator's state for a profile, or re-create it with every register reset.

    With --firmware the emulated guest launches that image.  --profile tdx: MRTD is set to
    the predicted value, RTMR0-2 are extended with the predicted firmware and EFI stub events
    (RTMR0 only as far as --ccel/--acpi determine it), and the CCEL recording those events
    is what 'tsmr attest' bundles carry as the firmware log; 'tsmr emulate reset' boots it
    again.  --profile snp: the measurement is the one 'tsmr predict snp' gives for those
    artifacts (--vcpus, --vcpu-type, --vmm, --guest-features).
    """
    from ..backends.emulated import EmulatedRegisterSet, initialise

    if backend:
        raise InputError("emulate init works on the built-in emulator only; use --profile")
    options: dict[str, str] = {}
    if hash_name:
        if profile != "cca":
            raise InputError("--hash applies to the cca profile only")
        options["hash"] = HashAlg.from_name(hash_name).kernel_name
    values: dict[str, bytes] = {}
    for item in set_values or []:
        name, sep, hex_text = item.partition("=")
        if not sep:
            raise InputError(f"--set takes NAME=HEX, got {item!r}")
        values[name.strip()] = _parse_hex(hex_text, f"value of {name}")
    tdx_boot = snp_launch = None
    if profile == "snp":
        if any(x is not None for x in (acpi, ccel, separator)) or two_pass_add:
            raise InputError("--acpi, --ccel, --separator and --two-pass-add describe a TDX boot: use --profile tdx")
        if firmware is not None or any(v is not None for v in (vcpus, vcpu_type, kernel, initrd, cmdline)) \
                or vmm != "qemu" or guest_features != "0x1":
            snp_launch = emulated_snp_launch(profile, values, firmware=firmware, vcpus=vcpus, vcpu_type=vcpu_type,
                                             vmm=vmm, guest_features=guest_features, kernel=kernel, initrd=initrd,
                                             append=cmdline)
    else:
        if vcpus is not None or vcpu_type is not None or vmm != "qemu" or guest_features != "0x1":
            raise InputError("--vcpus, --vcpu-type, --vmm and --guest-features describe an SEV-SNP launch: "
                             "use --profile snp")
        tdx_boot = emulated_tdx_boot(profile, values, firmware=firmware, kernel=kernel, initrd=initrd,
                                     cmdline=cmdline, two_pass_add=two_pass_add, acpi=acpi, ccel=ccel,
                                     separator=separator)
    path = initialise(profile, state_dir=state_dir, options=options, values=values,
                      boot=tdx_boot.extends if tdx_boot else None, boot_log=tdx_boot.ccel if tdx_boot else None)
    anchor = None
    with EmulatedRegisterSet(profile, state_dir) as rs:
        regs = [r.name for r in rs.registers()]
        if profile in ("tdx", "cca", "snp"):
            from ..backends.configfs_emulated import trust_anchor

            anchor = trust_anchor(rs)  # made now, so that verifiers can be told to trust it up front
        collateral = None
        if profile == "tdx":
            from ..backends.emulated_evidence.tdx import EmulatedTDXSigner, write_emulated_collateral

            collateral = str(write_emulated_collateral(EmulatedTDXSigner(rs.dir / "qe")))
    if as_json:
        doc = {"profile": profile, "state": str(path), "options": options, "registers": regs,
               "trust_anchor": anchor, "collateral": collateral,
               "boot": tdx_boot.to_json() if tdx_boot else None}
        if snp_launch is not None:
            doc["predicted"] = snp_launch.to_json()
        render.print_json(doc)
    else:
        render.out.print(f"emulator profile {profile} initialised in {path} ({len(regs)} registers)")
        if tdx_boot is not None:
            predicted = ", ".join(["mrtd", *tdx_boot.prediction.registers])
            render.out.print(f"booted {firmware}: {len(tdx_boot.extends)} events measured; {predicted} as predicted; "
                             "its CCEL is the firmware log of the emulated evidence")
        if snp_launch is not None:
            render.out.print(f"its measurement is the predicted launch of {firmware}: {snp_launch.claims['measurement']}")
        if anchor:
            render.out.print(f"its evidence is signed under the test key {anchor} (trust it explicitly, never by default)")
        if collateral:
            render.out.print(f"its collateral (TCB UpToDate, valid 30 days; 'tsmr emulate collateral' issues more) "
                             f"is {collateral}")


@emulate_app.command("collateral")
@handle_errors
def emulate_collateral(
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Where to write it (default: collateral.json beside the test root).")] = None,
    status: Annotated[str, typer.Option("--status", help="The platform's TCB status: UpToDate, OutOfDate, ConfigurationNeeded, OutOfDateConfigurationNeeded, SWHardeningNeeded, Revoked.")] = "UpToDate",
    advisory: Annotated[Optional[list[str]], typer.Option("--advisory", help="An advisory id of the TCB level (repeatable).")] = None,
    revoke_pck: Annotated[bool, typer.Option("--revoke-pck", help="List the emulated PCK certificate in the PCK CRL.")] = False,
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue TDX collateral for the emulated platform under its test root (valid 30 days), for --collateral."""
    from ..backends.emulated import EmulatedRegisterSet
    from ..backends.emulated_evidence.tdx import EmulatedTDXSigner, write_emulated_collateral

    statuses = ("UpToDate", "OutOfDate", "ConfigurationNeeded", "OutOfDateConfigurationNeeded", "SWHardeningNeeded",
                "ConfigurationAndSWHardeningNeeded", "OutOfDateConfigurationAndSWHardeningNeeded", "Revoked")
    if status not in statuses:
        raise InputError(f"--status {status!r} is not a TCB status ({', '.join(statuses)})")
    with EmulatedRegisterSet("tdx", state_dir) as rs:
        path = write_emulated_collateral(EmulatedTDXSigner(rs.dir / "qe"), output, status=status,
                                         advisories=tuple(advisory or ()), revoked_pck=revoke_pck)
    if as_json:
        render.print_json({"collateral": str(path), "status": status})
    else:
        render.out.print(f"collateral for the emulated TD (TCB {status}) written to {path}")


@emulate_app.command("reset")
@handle_errors
def emulate_reset(profile: ProfileOpt = "tdx", state_dir: StateDirOpt = None, log_dir: LogDirOpt = None,
                  as_json: JsonOpt = False, backend: BackendOpt = None) -> None:
    """Restore a profile's initial values and clear its journal, as a reboot would; its runtime logs
    (in --log-dir, as a reboot clears /run) are removed too."""
    from ..backends.emulated import EmulatedRegisterSet

    if backend:
        raise InputError("emulate reset works on the built-in emulator only; use --profile")
    with EmulatedRegisterSet(profile, state_dir, create=False) as rs:
        removed = remove_logs(rs.provider, log_dir)  # refuses, changing nothing, while an agent owns a log
        rs.reset()
    logs = sorted(str(p) for p in removed if p.name.endswith(".log"))
    if as_json:
        render.print_json({"profile": profile, "reset": True, "logs_removed": logs})
    else:
        render.out.print(f"emulator profile {profile} reset" + (f"; its runtime logs removed: {', '.join(logs)}" if logs else ""))


@emulate_app.command("mount")
@handle_errors
def emulate_mount(
    directory: Annotated[str, typer.Argument(help="Mount point (an existing empty directory).")],
    profile: ProfileOpt = "tdx",
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
    backend: BackendOpt = None,
) -> None:
    """Serve a profile as a tsm-mr 'measurements' directory through FUSE, until unmounted or interrupted.

    Programs written for the kernel ABI work unchanged, e.g.
    'tsmr read rtmr3 --backend sysfs:DIR'. Unmount with 'tsmr emulate umount DIR'
    or Ctrl-C.
    """
    from ..backends import fuse
    from ..backends.emulated import EmulatedRegisterSet

    if backend:
        raise InputError("emulate mount serves the built-in emulator only; use --profile")
    if not os.path.isdir(directory):
        raise InputError(f"mount point {directory} is not a directory")
    with EmulatedRegisterSet(profile, state_dir) as rs:
        def ready() -> None:
            if as_json:
                render.print_json({"mounted": os.path.abspath(directory), "profile": profile, "pid": os.getpid()})
            else:
                render.err.print(f"tsmr: serving emulated:{profile} at {directory} (Ctrl-C or 'tsmr emulate umount' to stop)")

        fuse.serve(rs, directory, fsname=f"tsmr-{profile}", ready=ready)


@emulate_app.command("configfs")
@handle_errors
def emulate_configfs(
    directory: Annotated[str, typer.Argument(help="Mount point (an existing empty directory).")],
    profile: ProfileOpt = "tdx",
    state_dir: StateDirOpt = None,
    as_json: JsonOpt = False,
    backend: BackendOpt = None,
) -> None:
    """Serve the profile's attestation provider as a configfs-tsm tree (DIR/report/...) through FUSE.

    The tdx profile answers as 'tdx_guest' (TDX quotes), the cca profile as
    'arm_cca_guest' (CCA tokens), the snp profile as 'sev_guest' (SEV-SNP
    reports, with the VCEK/ASK/ARK certificate table as auxblob), over the
    emulated registers and signed with the emulator's test keys. Programs
    written for /sys/kernel/config/tsm work unchanged; for tsmr set
    TSMR_CONFIGFS_TSM=DIR. Stop with Ctrl-C or 'tsmr emulate umount DIR'.
    """
    from ..backends import configfs_emulated
    from ..backends.emulated import EmulatedRegisterSet

    if backend:
        raise InputError("emulate configfs serves the built-in emulator only; use --profile")
    if not os.path.isdir(directory):
        raise InputError(f"mount point {directory} is not a directory")
    with EmulatedRegisterSet(profile, state_dir) as rs:
        source = configfs_emulated.source_for(rs)
        anchor = configfs_emulated.trust_anchor(rs)

        def ready() -> None:
            if as_json:
                render.print_json({"mounted": os.path.abspath(directory), "profile": profile, "provider": source.name,
                                   "trust_anchor": anchor, "pid": os.getpid()})
            else:
                render.err.print(f"tsmr: serving configfs-tsm ({source.name}) of emulated:{profile} at {directory}; "
                                 f"its evidence verifies only against the test key {anchor}")

        configfs_emulated.serve(source, directory, fsname=f"tsmr-configfs-{profile}", ready=ready)


@emulate_app.command("umount")
@handle_errors
def emulate_umount(directory: Annotated[str, typer.Argument(help="Mount point.")], as_json: JsonOpt = False, backend: BackendOpt = None) -> None:
    """Unmount an emulator mounted with 'tsmr emulate mount' or 'tsmr emulate configfs'."""
    from ..backends import fuse

    fuse.unmount(directory)
    if as_json:
        render.print_json({"unmounted": os.path.abspath(directory)})


@emulate_app.command("journal")
@handle_errors
def emulate_journal(profile: ProfileOpt = "tdx", state_dir: StateDirOpt = None, as_json: JsonOpt = False, backend: BackendOpt = None) -> None:
    """Print every extend the emulator applied since init or reset, in order."""
    from ..backends.emulated import EmulatedRegisterSet

    with EmulatedRegisterSet(profile, state_dir, create=False) as rs:
        entries = list(rs.journal())
    if as_json:
        render.print_json([{"seq": e.seq, "attribute": e.attribute, "digest": e.data.hex()} for e in entries])
    else:
        for e in entries:
            render.line(f"{e.seq:>8} {e.attribute} {e.data.hex()}")


def _version(value: bool) -> None:
    if value:
        render.out.print(f"tsmr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """tsmr: measurement registers and runtime event logs for confidential VMs and TPMs."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
