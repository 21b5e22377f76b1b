"""Runs inside the qemu guest: tsmr's sysfs backend against Linux's own tsm_mr_sample module.

Performs one fixed sequence of operations on /sys/class/misc/tsm_mr_sample/measurements
(the real kernel ABI) and the same sequence on tsmr's emulator, ``sample`` profile, then
writes a JSON report that the host-side test asserts on.  Only the standard library and
tsmr's source tree (shared read-only into the guest) are used.

    python3 guest.py REPORT.json
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))

from tsmr import HashAlg  # noqa: E402
from tsmr.backends.emulated import EmulatedRegisterSet  # noqa: E402
from tsmr.backends.sysfs import SysfsRegisterSet  # noqa: E402
from tsmr.errors import TsmrError  # noqa: E402
from tsmr.runtime_log.store import RuntimeLog  # noqa: E402

SAMPLE = "/sys/class/misc/tsm_mr_sample/measurements"


def raw_write(directory: str, attr: str, data: bytes, offset: int = 0) -> object:
    """A write exactly as a program would do it: the kernel's answer (bytes written or errno)."""
    try:
        fd = os.open(os.path.join(directory, attr), os.O_WRONLY)
    except OSError as exc:
        return {"open_errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    try:
        return {"written": os.pwrite(fd, data, offset)}
    except OSError as exc:
        return {"errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    finally:
        os.close(fd)


def sequence(rs, directory: str | None) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """The operations; ``directory`` is the sysfs directory for raw writes (None: the emulator)."""
    out: list[dict[str, object]] = []

    def step(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        try:
            result = fn()
        except TsmrError as exc:
            result = {"error": type(exc).__name__, "errno": getattr(exc, "errno", None)}
        out.append({"op": name, "result": result})

    def values() -> dict[str, dict[str, str]]:
        return {r.name: {("raw" if a is None else a.kernel_name): v.hex() for a, v in rs.read(r.name).items()}
                for r in rs.registers()}

    step("discover", lambda: sorted([r.name, b.label, b.size, b.flags.names()] for r in rs.registers() for b in r.banks))
    step("read-all", values)
    step("extend rtmr1 zeros", lambda: rs.extend("rtmr1", {HashAlg.SHA384: bytes(48)}))
    step("read rtmr1 + report_digest", lambda: {k: v for k, v in values().items() if k in ("rtmr1", "report_digest")})
    step("extend agile sha256", lambda: rs.extend("rtmr_crypto_agile", {HashAlg.SHA256: hashlib.sha256(b"a").digest()}))
    step("read rtmr0 + agile", lambda: {k: v for k, v in values().items() if k in ("rtmr0", "rtmr_crypto_agile")})
    step("extend read-only rtmr0", lambda: rs.extend("rtmr0", {HashAlg.SHA256: bytes(32)}))
    step("extend short digest", lambda: rs.extend("rtmr1", {HashAlg.SHA384: bytes(10)}))
    if directory is not None:
        step("raw short write", lambda: raw_write(directory, "rtmr1:sha384", bytes(10)))
        step("raw write at offset", lambda: raw_write(directory, "rtmr1:sha384", bytes(38), 10))
        step("raw write past end", lambda: raw_write(directory, "rtmr1:sha384", bytes(48), 48))
        step("raw oversized write", lambda: raw_write(directory, "rtmr1:sha384", bytes(range(64))))
        step("raw write read-only", lambda: raw_write(directory, "static_mr:sha384", bytes(48)))
        step("read after raw writes", values)
    return out


DIGEST_ONLY = hashlib.sha384(b"tsmr extend rtmr1 --digest").digest()


def logged_extend(rs, directory: str, log_dir: str, extend=None) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """``tsmr extend rtmr1 --digest D`` with its logging on, on a fresh log, then the kernel's own write of D
    (the register must change the same way both times: H(value || D)), then an event and a verification.

    ``extend(D)`` is the logged extend; by default the library call ``tsmr extend`` makes (the host runs
    the command itself against the emulator mounted as a tsm-mr directory).
    """
    def rtmr1() -> str:
        return rs.read("rtmr1", [HashAlg.SHA384])[HashAlg.SHA384].hex()

    out: dict[str, object] = {"digest": DIGEST_ONLY.hex(), "before": rtmr1()}
    if extend is None:
        with RuntimeLog(rs, "rtmr1", log_dir=log_dir) as log:
            log.extend_digest({HashAlg.SHA384: DIGEST_ONLY})
    else:
        extend(DIGEST_ONLY)
    out["after_logged_extend"] = rtmr1()
    out["kernel_write"] = raw_write(directory, "rtmr1:sha384", DIGEST_ONLY)
    out["after_kernel_write"] = rtmr1()
    with RuntimeLog(rs, "rtmr1", log_dir=log_dir) as log:
        log.append("example.com/kernel-test after-digest-only-extend")
        verdict = log.verify()
        out["verify"] = {"ok": verdict.ok, "findings": verdict.explain("rtmr1")}
        out["lines"] = log.read().decode().splitlines()
    return out


def configfs_tsm() -> dict[str, object]:
    """Linux's configfs-tsm with no attestation provider (qemu is no TEE): what a client meets."""
    from tsmr.backends.configfs import ConfigfsTsm

    root = "/sys/kernel/config/tsm"
    out: dict[str, object] = {"root": sorted(os.listdir(root)) if os.path.isdir(root) else None}
    try:
        os.mkdir(os.path.join(root, "report", "raw"))
        out["mkdir"] = "ok"
        os.rmdir(os.path.join(root, "report", "raw"))
    except OSError as exc:
        out["mkdir"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    try:
        ConfigfsTsm(root).report(b"\0" * 64)
        out["client"] = "ok"
    except TsmrError as exc:
        out["client"] = {"error": type(exc).__name__, "errno": getattr(exc, "errno", None), "message": str(exc)}
    out["left_over"] = sorted(os.listdir(os.path.join(root, "report"))) if os.path.isdir(root) else None
    return out


def main() -> None:
    report: dict[str, object] = {"uname": os.uname().release}
    try:
        with SysfsRegisterSet(SAMPLE) as kernel, tempfile.TemporaryDirectory() as logs:
            report["kernel"] = sequence(kernel, SAMPLE)
            report["logged_extend"] = logged_extend(kernel, SAMPLE, logs)
        with tempfile.TemporaryDirectory() as tmp:
            with EmulatedRegisterSet("sample", tmp) as emu:
                report["emulator"] = sequence(emu, None)
            # the runtime log on the real rtmr1:sha384
            with SysfsRegisterSet(SAMPLE) as kernel, RuntimeLog(kernel, "rtmr1", log_dir=tmp) as log:
                log.append_many(['example.com/kernel-test start {"n":1}', "example.com/kernel-test next"])
                log.extend_digest({HashAlg.SHA384: hashlib.sha384(b"digest-only").digest()})
                verdict = log.verify()
                report["runtime_log"] = {"ok": verdict.ok, "findings": verdict.explain("rtmr1"),
                                         "lines": log.read().decode().splitlines()}
        report["configfs_tsm"] = configfs_tsm()
    except Exception:  # the host test prints this
        report["exception"] = traceback.format_exc()
    with open(sys.argv[1], "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
