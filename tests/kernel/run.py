"""The kernel tier: tsmr's sysfs backend against Linux's own tsm-mr, in qemu.

Stages (each timed, each cached under one directory, ``$TSMR_KERNEL_CACHE`` or
/var/cache/tsmr-kernel, so that a second run only boots):

1. rootfs   a Debian sid system made with debootstrap: the current kernel
            (CONFIG_TSM_MEASUREMENTS=y), its headers, gcc, make, python3, busybox;
2. module   samples/tsm-mr/tsm_mr_sample.c taken from the matching linux-source
            package and built as a module against those headers, inside the rootfs;
3. initrd   busybox, the 9p modules and an init script;
4. boot     qemu-system-x86_64 -accel tcg,thread=single -cpu max with the rootfs, this source tree
            and an output directory shared over virtio-9p (all read-only but the
            output); the guest loads tsm_mr_sample, runs tests/kernel/guest.py and
            powers off.

    python tests/kernel/run.py [--report OUT.json]

Exits non-zero, with the guest's console, if anything fails.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TSMR_KERNEL_CACHE", "/var/cache/tsmr-kernel"))
MIRROR = os.environ.get("TSMR_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "linux-image-amd64,linux-headers-amd64,gcc,make,python3,kmod,busybox-static,xz-utils,python3-tpm2-pytss"
BOOT_TIMEOUT = int(os.environ.get("TSMR_KERNEL_BOOT_TIMEOUT", "600"))


def stage(name: str):  # type: ignore[no-untyped-def]
    def wrap(fn):  # type: ignore[no-untyped-def]
        def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            t = time.monotonic()
            print(f"[kernel tier] {name} ...", flush=True)
            result = fn(*args, **kwargs)
            print(f"[kernel tier] {name}: {time.monotonic() - t:.1f} s", flush=True)
            return result
        return run
    return wrap


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@stage("rootfs (debootstrap sid)")
def rootfs() -> Path:
    root = CACHE / "sid"
    if (root / ".complete").exists():
        return root
    for tool in ("debootstrap", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (Debian packages debootstrap, qemu-system-x86; make test-kernel installs them)")
    if root.exists():
        shutil.rmtree(root)
    CACHE.mkdir(parents=True, exist_ok=True)
    sh("debootstrap", "--variant=minbase", f"--include={PACKAGES}", "sid", str(root), MIRROR)
    (root / ".complete").write_text("ok\n")
    return root


def kernel_version(root: Path) -> str:
    versions = sorted(os.listdir(root / "lib" / "modules"))
    if not versions:
        raise SystemExit("no kernel in the rootfs")
    return versions[-1]


@stage("module (tsm_mr_sample from linux-source)")
def module(root: Path, version: str) -> Path:
    build = root / "build" / "tsm-mr"
    ko = build / "tsm_mr_sample.ko"
    stamp = build / ".version"
    if ko.exists() and stamp.exists() and stamp.read_text() == version:
        return ko
    build.mkdir(parents=True, exist_ok=True)
    series = ".".join(version.split(".")[:2])  # 7.2.13+deb14-amd64 -> 7.2
    with tempfile.TemporaryDirectory(dir=root / "tmp") as tmp:
        rel = "/" + str(Path(tmp).relative_to(root))
        sh("chroot", str(root), "sh", "-c", f"cd {rel} && apt-get download linux-source-{series}")
        deb = next(Path(tmp).glob("linux-source-*.deb"))
        src = _extract_sample(deb)
    (build / "tsm_mr_sample.c").write_bytes(src)
    (build / "Makefile").write_text("obj-m += tsm_mr_sample.o\n")
    # objtool reads /proc; the headers are the running rootfs kernel's
    sh("mount", "-t", "proc", "proc", str(root / "proc"))
    try:
        sh("chroot", str(root), "make", "-C", f"/usr/src/linux-headers-{version}", "M=/build/tsm-mr", "modules")
    finally:
        subprocess.run(["umount", str(root / "proc")])
    stamp.write_text(version)
    return ko


def _extract_sample(deb: Path) -> bytes:
    """samples/tsm-mr/tsm_mr_sample.c from linux-source's .deb (ar -> data.tar.xz -> linux-source.tar.xz)."""
    with tempfile.TemporaryDirectory() as tmp:
        sh("ar", "x", str(deb), cwd=tmp)
        data = next(Path(tmp).glob("data.tar.*"))
        with tarfile.open(data) as outer:
            member = next(m for m in outer.getmembers() if m.name.endswith(".tar.xz") and "linux-source" in m.name)
            inner_f = outer.extractfile(member)
            assert inner_f is not None
            with tarfile.open(fileobj=inner_f, mode="r|xz") as inner:
                for m in inner:
                    if m.name.endswith("samples/tsm-mr/tsm_mr_sample.c"):
                        f = inner.extractfile(m)
                        assert f is not None
                        return f.read()
    raise SystemExit("samples/tsm-mr/tsm_mr_sample.c not found in linux-source")


INIT = r"""#!/bin/busybox sh
echo "TSMR: init started"
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /r
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in netfs 9pnet 9pnet_virtio 9p; do insmod /lib/$m.ko || echo "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro root /r || echo "mount root failed"
mount -t tmpfs tmpfs /r/tmp
mkdir -p /r/tmp/src /r/tmp/out
mount -t 9p -o trans=virtio,version=9p2000.L,ro src /r/tmp/src
mount -t 9p -o trans=virtio,version=9p2000.L out /r/tmp/out
mount -t proc proc /r/proc; mount -t sysfs sysfs /r/sys; mount -t devtmpfs devtmpfs /r/dev
case "$(cat /proc/cmdline)" in
*tsmr.guest=tpm*)
    mount -t securityfs securityfs /r/sys/kernel/security
    ls /r/dev/tpm*
    chroot /r /usr/bin/python3 /tmp/src/tests/kernel/guest_tpm.py /tmp/out
    ;;
*)
    insmod /r/build/tsm-mr/tsm_mr_sample.ko && echo "TSMR: module loaded"
    insmod /lib/configfs.ko; insmod /lib/tsm_report.ko && echo "TSMR: tsm_report loaded"
    mount -t configfs configfs /r/sys/kernel/config || echo "mount configfs failed"
    ls /r/sys/class/misc/tsm_mr_sample/measurements/
    chroot /r /usr/bin/python3 /tmp/src/tests/kernel/guest.py /tmp/out/report.json
    ;;
esac
echo "TSMR: guest done rc=$?"
sync
poweroff -f
"""


@stage("initrd (busybox + 9p modules)")
def initrd(root: Path, version: str, out: Path) -> Path:
    mods = root / "lib" / "modules" / version / "kernel"
    files: dict[str, bytes] = {
        "bin/busybox": (root / "usr" / "bin" / "busybox").read_bytes(),
        "init": INIT.encode(),
    }
    for name, rel in (("netfs", "fs/netfs/netfs"), ("9pnet", "net/9p/9pnet"),
                      ("9pnet_virtio", "net/9p/9pnet_virtio"), ("9p", "fs/9p/9p"),
                      ("configfs", "fs/configfs/configfs"), ("tsm_report", "drivers/virt/coco/guest/tsm_report")):
        path = mods / f"{rel}.ko.xz"
        files[f"lib/{name}.ko"] = lzma.decompress(path.read_bytes()) if path.exists() else (mods / f"{rel}.ko").read_bytes()
    path = out / "initrd.cpio.gz"
    with gzip.open(path, "wb") as gz:
        gz.write(_newc(files))
    return path


def _newc(files: dict[str, bytes]) -> bytes:
    """A cpio 'newc' archive (what the kernel unpacks as an initramfs)."""
    buf = io.BytesIO()
    ino = 1

    def entry(name: str, mode: int, data: bytes) -> None:
        nonlocal ino
        nb = name.encode() + b"\0"
        head = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        buf.write(head.encode() + nb)
        buf.write(b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        buf.write(data)
        buf.write(b"\0" * ((4 - len(data) % 4) % 4))
        ino += 1

    dirs = sorted({str(Path(n).parent) for n in files if str(Path(n).parent) != "."})
    for d in dirs:
        entry(d, 0o040755, b"")
    for name, data in files.items():
        entry(name, 0o100755, data)
    entry("TRAILER!!!", 0, b"")
    return buf.getvalue()


INIT_MARK = "TSMR: init started"
PANIC_MARK = "Kernel panic"


def boot(root: Path, version: str, rd: Path, out: Path, *, extra: list[str] | None = None, append: str = "") -> str:
    """Boots the guest and returns its console.

    A kernel that panics before the initrd's init has run never reached the code under test
    (this tier has seen such a panic once under TCG, while the kernel patched its own text);
    that boot is tried once more, and the panic is printed.  A panic after init is a failure.
    """
    console = _boot_once(root, version, rd, out, extra=extra, append=append)
    if verdict(console) == "retry":
        print("[kernel tier] the guest kernel panicked before init; booting once more. Its console:\n"
              + _oops(console), flush=True)
        console = _boot_once(root, version, rd, out, extra=extra, append=append)
    if verdict(console) != "ok":
        raise SystemExit(f"the guest kernel panicked, or its init never ran; console:\n{_oops(console)}")
    return console


def verdict(console: str) -> str:
    """``ok`` (init ran, no panic), ``retry`` (a panic before init: the code under test never ran) or ``fail``."""
    started = INIT_MARK in console
    if PANIC_MARK in console:
        return "fail" if started else "retry"
    return "ok" if started else "fail"


def _oops(console: str) -> str:
    """The console from the first oops line on (the header names the fault), else its tail."""
    for mark in ("BUG:", "Oops:", "general protection fault", "invalid opcode", "Kernel panic"):
        at = console.find(mark)
        if at >= 0:  # from the first whole line of the 1500 characters before it
            lo = max(0, at - 1500)
            nl = console.find("\n", lo, at) if lo else -1
            start = nl + 1 if nl >= 0 else lo
            return console[start:start + 8000]
    return console[-6000:]


def kernel_cmdline(append: str) -> str:
    """The command line every boot of this tier gives the kernel (qemu -append), ``append`` last."""
    return f"console=ttyS0 panic=-1 quiet {append}".strip()


MEMORY = "2048"  # -m: where qemu puts the initrd, and so the setup header it hands the firmware, depends on it


def _boot_once(root: Path, version: str, rd: Path, out: Path, *, extra: list[str] | None, append: str) -> str:
    kernel = root / "boot" / f"vmlinuz-{version}"
    cmd = [
        # thread=single: both vCPUs run on one host thread, so code the kernel rewrites
        # (alternatives, static keys) is seen at once by the other vCPU.
        "qemu-system-x86_64", "-accel", "tcg,thread=single", "-cpu", "max", "-m", MEMORY, "-smp", "2",
        "-kernel", str(kernel), "-initrd", str(rd),
        "-append", kernel_cmdline(append),
        *(extra or []),
        "-nographic", "-no-reboot", "-nic", "none",
        "-virtfs", f"local,path={root},mount_tag=root,security_model=none,readonly=on",
        "-virtfs", f"local,path={ROOT},mount_tag=src,security_model=none,readonly=on",
        "-virtfs", f"local,path={out},mount_tag=out,security_model=none",
    ]
    try:
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=BOOT_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        console = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise SystemExit(f"the guest did not finish within {BOOT_TIMEOUT} s; console:\n{console[-6000:]}")
    return proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the kernel tier.")
    ap.add_argument("--report", default=str(ROOT / ".state" / "kernel-report.json"))
    ap.add_argument("--tpm-out", default=str(ROOT / ".state" / "kernel-vtpm"), help="where the vTPM guest's logs and PCRs go")
    ap.add_argument("--no-tpm", action="store_true", help="skip the vTPM boot")
    ap.add_argument("--tpm-only", action="store_true", help="only the vTPM boots (no tsm-mr boot, no --report)")
    ap.add_argument("--firmware", action="append", choices=TPM_FIRMWARES,
                    help="firmware of the vTPM boots (repeatable; default: all of them)")
    args = ap.parse_args()
    if args.no_tpm and args.tpm_only:
        ap.error("--no-tpm and --tpm-only exclude each other")
    t0 = time.monotonic()
    root = rootfs()
    version = kernel_version(root)
    module(root, version)
    out = Path(tempfile.mkdtemp(prefix="tsmr-kernel-"))
    os.chmod(out, 0o777)
    rd = initrd(root, version, out)
    if not args.tpm_only:
        console = stage("boot (qemu, tcg)")(boot)(root, version, rd, out)
        report_path = out / "report.json"
        if not report_path.exists():
            raise SystemExit(f"the guest wrote no report; console:\n{console[-6000:]}")
        report = json.loads(report_path.read_text())
        report["console_tail"] = console[-4000:]
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1))
        print(f"[kernel tier] report: {args.report} ({time.monotonic() - t0:.1f} s in all)")
    if not args.no_tpm:
        shutil.rmtree(args.tpm_out, ignore_errors=True)
        for firmware in args.firmware or TPM_FIRMWARES:
            tpm_dir = Path(args.tpm_out) / firmware
            stage(f"boot with a vTPM ({firmware}, swtpm, ima_policy=tcb)")(vtpm)(root, version, rd, tpm_dir, firmware)
            print(f"[kernel tier] vTPM guest outputs: {tpm_dir} ({time.monotonic() - t0:.1f} s in all)")


OVMF = "/usr/share/ovmf/OVMF.fd"
TPM_FIRMWARES = ("seabios", "ovmf")
TPM_APPEND = "tsmr.guest=tpm ima_policy=tcb"


def vtpm(root: Path, version: str, rd: Path, dest: Path, firmware: str) -> None:
    if shutil.which("swtpm") is None:
        raise SystemExit("swtpm is missing (Debian package swtpm; make test installs it)")
    out = Path(tempfile.mkdtemp(prefix="tsmr-vtpm-out-"))
    os.chmod(out, 0o777)
    state = Path(tempfile.mkdtemp(prefix="tsmr-vtpm-state-"))
    sock = state / "swtpm.sock"
    # No --flags startup-clear: the firmware sends TPM2_Startup, as on a real machine.
    tpm = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                            "--ctrl", f"type=unixio,path={sock}", "--terminate"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if tpm.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"swtpm did not start: {tpm.stderr.read() if tpm.stderr else ''}")
            time.sleep(0.05)
        bios: list[str] = []
        if firmware == "ovmf":
            if not os.path.exists(OVMF):
                raise SystemExit(f"{OVMF} is missing (Debian package ovmf; make test-kernel installs it)")
            bios = ["-bios", OVMF]
        console = boot(root, version, rd, out, append=TPM_APPEND, extra=[
            *bios,
            "-chardev", f"socket,id=chrtpm,path={sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
            "-device", "tpm-tis,tpmdev=tpm0",
        ])
    finally:
        if tpm.poll() is None:
            tpm.terminate()
            try:
                tpm.wait(timeout=10)
            except subprocess.TimeoutExpired:
                tpm.kill()
        shutil.rmtree(state, ignore_errors=True)
    report = out / "report.json"
    if not report.exists():
        raise SystemExit(f"the vTPM guest wrote no report; console:\n{console[-6000:]}")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(out, dest)
    data = json.loads(report.read_text())
    data["console_tail"] = console[-4000:]
    (dest / "report.json").write_text(json.dumps(data, indent=1))
    _record_inputs(root, version, rd, dest, firmware)


def _record_inputs(root: Path, version: str, rd: Path, dest: Path, firmware: str) -> None:
    """What this boot was given, next to what it measured: tests predict the firmware's PCRs from it.

    The kernel stays in the rootfs cache (its path and SHA-256 are recorded; a test checks the hash
    before it trusts the file); the initrd is rebuilt on every run (gzip stamps it), so it is copied.
    """
    shutil.copyfile(rd, dest / "initrd")
    kernel = root / "boot" / f"vmlinuz-{version}"
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], text=True, capture_output=True).stdout
    inputs = {
        "firmware": firmware,
        "bios": OVMF if firmware == "ovmf" else None,
        "kernel": str(kernel),
        "kernel_sha256": hashlib.sha256(kernel.read_bytes()).hexdigest(),
        "initrd": "initrd",
        "initrd_sha256": hashlib.sha256(rd.read_bytes()).hexdigest(),
        "cmdline": kernel_cmdline(TPM_APPEND),
        "memory_mib": int(MEMORY),
        "machine": "pc",
        "qemu_version": qemu.splitlines()[0] if qemu else "",
    }
    (dest / "inputs.json").write_text(json.dumps(inputs, indent=1) + "\n")


if __name__ == "__main__":
    main()
