"""Predicted reference values end to end: predict an image, boot it on the emulator, appraise.

The owner's image is Debian's OVMF.fd, a real Debian kernel (the ``linux_kernel`` fixture),
an initrd and a command line.  ``tsmr predict tdx -o`` gives reference values; a workload's
events are combined with them (``tsmr refvals combine``); the emulated TD boots the same
artifacts and records the same events, and ``tsmr appraise`` must affirm.  Booting another
command line, another kernel or another initrd must be contraindicated, with the finding
naming that component and the log event whose digest differs; with no reference values the
appraisal is at most a warning naming the uncovered registers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import fixture_missing
from tsmr.appraisal.refvals import ReferenceValues, combine
from tsmr.cli.main import app
from tsmr.errors import InputError

OVMF = Path("/usr/share/ovmf/OVMF.fd")  # Debian package ovmf
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")  # systemd-boot-efi: another real EFI PE image
CMDLINE = "console=hvc0 root=/dev/vda1 ro"
NONCE = "c0ffee" * 8
EVENTS = ['example.com/app deploy {"image":"alpine"}', 'example.com/app config {"replicas":3}']
WORKLOAD = {"format": "tsmr-refvals", "version": 1, "id": "workload",
            "events": [{"domain": "example.com/app", "operation": "deploy", "content": '.*"alpine".*'},
                       {"domain": "example.com/app", "operation": "config"}]}


def tsmr(*args: str, code: int = 0) -> str:
    r = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert r.exit_code == code, (args, r.stdout, r.stderr, r.exception)
    return r.stdout


@pytest.fixture
def image(tmp_path: Path, linux_kernel: Path) -> dict[str, str]:
    for path, package in ((OVMF, "ovmf"), (STUB, "systemd-boot-efi")):
        if not path.is_file():
            fixture_missing(f"{path} is missing (Debian package {package}; make test installs it)")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(bytes(range(256)) * 40)
    return {"--firmware": str(OVMF), "--kernel": str(linux_kernel), "--initrd": str(initrd), "--cmdline": CMDLINE}


def flat(inputs: dict[str, str]) -> list[str]:
    return [x for kv in inputs.items() for x in kv]


def boot_and_attest(state_dir: Path, tmp_path: Path, inputs: dict[str, str], name: str) -> Path:
    """The emulated TD boots ``inputs``, records the workload's events; its bundle is returned."""
    tsmr("emulate", "init", "--profile", "tdx", *flat(inputs))
    tsmr("log", "append", "rtmr3", *EVENTS, "--backend", "emulated:tdx")
    bundle = tmp_path / f"{name}.json"
    tsmr("attest", "--backend", "emulated:tdx", "--nonce", NONCE, "-o", str(bundle))
    return bundle


def appraise(state_dir: Path, bundle: Path, refvals: Path | None, *extra: str, code: int) -> dict:  # type: ignore[type-arg]
    qe = state_dir / "emulator/tdx/qe"
    args = ["appraise", str(bundle), "--nonce", NONCE, "--trust-root", str(qe / "root.pem"),
            "--collateral", str(qe / "collateral.json"), "--json", *extra]
    if refvals is not None:
        args += ["--refvals", str(refvals)]
    return json.loads(tsmr(*args, code=code))  # type: ignore[no-any-return]


def findings(result: dict, fid: str) -> list[dict]:  # type: ignore[type-arg]
    return [f for f in result["findings"] if f["id"] == fid]


@pytest.fixture
def refvals(tmp_path: Path, image: dict[str, str]) -> Path:
    boot = tmp_path / "boot.json"
    tsmr("predict", "tdx", *flat(image), "--id", "image-v1", "-o", str(boot))
    workload = tmp_path / "workload.json"
    workload.write_text(json.dumps(WORKLOAD))
    out = tmp_path / "refvals.json"
    tsmr("refvals", "combine", str(boot), str(workload), "-o", str(out))
    return out


def test_the_predicted_image_is_affirmed(state_dir: Path, tmp_path: Path, image: dict[str, str],
                                         refvals: Path) -> None:
    doc = json.loads(refvals.read_text())
    assert doc["id"] == "image-v1+workload" and set(doc["registers"]) == {"rtmr1", "rtmr2"}
    assert set(doc["claims"]) == {"mrtd"} and len(doc["events"]) == 2
    bundle = boot_and_attest(state_dir, tmp_path, image, "good")
    result = appraise(state_dir, bundle, refvals, code=0)
    assert result["status"] == "affirming", result["findings"]
    assert result["trustworthiness"]["executables"] == 2 and result["trustworthiness"]["configuration"] == 2
    # The same bundle with no reference values verifies but cannot affirm: every measured register is named.
    bare = appraise(state_dir, bundle, None, code=1)
    assert bare["status"] == "warning"
    uncovered = findings(bare, "refvals.uncovered")
    assert len(uncovered) == 1 and all(r in uncovered[0]["message"] for r in ("mrtd", "rtmr1", "rtmr2", "rtmr3"))
    assert bare["trustworthiness"]["executables"] == 0 and bare["trustworthiness"]["configuration"] == 0
    strict = appraise(state_dir, bundle, None, "--require-refvals", code=1)
    assert strict["status"] == "contraindicated" and findings(strict, "refvals.uncovered")[0]["severity"] == "error"


@pytest.mark.parametrize("change, register, component", [
    ("cmdline", "rtmr2", "cmdline"),
    ("initrd", "rtmr2", "initrd"),
    ("kernel", "rtmr1", "kernel"),
])
def test_another_component_is_named(state_dir: Path, tmp_path: Path, image: dict[str, str], refvals: Path,
                                    change: str, register: str, component: str) -> None:
    booted = dict(image)
    if change == "cmdline":
        booted["--cmdline"] = CMDLINE + " init=/bin/sh"
    elif change == "initrd":
        other = tmp_path / "other-initrd.img"
        other.write_bytes(Path(image["--initrd"]).read_bytes() + b"\n# one more line\n")
        booted["--initrd"] = str(other)
    else:
        booted["--kernel"] = str(STUB)
    predicted_other = json.loads(tsmr("predict", "tdx", *flat(booted), "--json"))
    bundle = boot_and_attest(state_dir, tmp_path, booted, change)
    result = appraise(state_dir, bundle, refvals, code=1)
    assert result["status"] == "contraindicated"
    mismatches = findings(result, "refvals.register-mismatch")
    assert [f["context"]["register"] for f in mismatches] == [register], mismatches
    ctx = mismatches[0]["context"]
    assert ctx["component"] == component
    assert f"({component})" in mismatches[0]["message"]
    # expected: the reference values' prediction; actual: what the other boot measured (its own prediction)
    wanted = [e for e in json.loads(refvals.read_text())["predicted"]["events"] if e["component"] == component]
    measured = [e for e in predicted_other["events"] if e["component"] == component]
    assert ctx["expected"] == wanted[0]["digests"]["sha384"] and ctx["actual"] == measured[0]["digests"]["sha384"]
    assert ctx["expected"] != ctx["actual"]
    # MRTD is the same firmware's: no claim mismatch
    assert not findings(result, "refvals.claim-mismatch")


def test_combine_rules() -> None:
    a = ReferenceValues.from_json({"format": "tsmr-refvals", "version": 1, "id": "a",
                                   "registers": {"pcr7": {"sha256": ["aa" * 32]}}, "claims": {"mrtd": ["01" * 48]},
                                   "appraisers": {"allowlist": {"rules": []}}})
    b = ReferenceValues.from_json({"format": "tsmr-refvals", "version": 1, "id": "b",
                                   "registers": {"pcr7": {"sha256": ["bb" * 32, "AA" * 32]}},
                                   "claims": {"mrtd": ["02" * 48]}})
    c = combine([a, b])
    assert c.id == "a+b" and c.registers["pcr7"]["sha256"] == ("aa" * 32, "bb" * 32)  # united, case-blind
    assert c.claims["mrtd"] == ("01" * 48, "02" * 48) and "allowlist" in c.appraisers
    clash = ReferenceValues.from_json({"format": "tsmr-refvals", "version": 1, "id": "c",
                                       "appraisers": {"allowlist": {"rules": [{"domain": "x"}]}}})
    with pytest.raises(InputError, match="appraiser 'allowlist' differently"):
        combine([a, clash])
    with pytest.raises(InputError, match="no reference values"):
        combine([])


def test_two_predictions_of_one_register_are_refused(tmp_path: Path, image: dict[str, str]) -> None:
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    tsmr("predict", "tdx", *flat(image), "-o", str(one))
    tsmr("predict", "tdx", *flat({**image, "--cmdline": "quiet"}), "-o", str(two))
    out = tsmr("refvals", "combine", str(one), str(two), "-o", str(tmp_path / "x.json"), "--json", code=2)
    assert "both predict the events of rtmr1" in out
    assert not (tmp_path / "x.json").exists()


def test_missing_events_literal_and_pattern_references() -> None:
    from tsmr.appraisal.refvals import EventRef, missing_events

    events = [{"domain": "d", "operation": "op", "content": 'a.b {"x":1}'},
              {"domain": "d", "operation": "op", "content": "line\nbreak"},
              {"domain": "e", "operation": "op", "content": "x"}]
    literal_hit = EventRef("d", "op", re.escape('a.b {"x":1}'))
    literal_miss = EventRef("d", "op", re.escape("a.c"))
    pattern_hit = EventRef("d", "op", r"a\.b .*")  # not a literal: matched as a pattern
    pattern_dotall = EventRef("d", "op", "line.break")  # '.' crosses the newline (DOTALL)
    dot_is_not_literal = EventRef("d", "op", "a.c")  # unescaped '.': a pattern, which 'a.b ...' does not fullmatch
    any_content = EventRef("e", "op")
    other_key = EventRef("e", "other")
    assert literal_hit.literal == 'a.b {"x":1}' and literal_miss.literal == "a.c"
    assert pattern_hit.literal is None and dot_is_not_literal.literal is None and any_content.literal is None
    refs = [literal_hit, literal_miss, pattern_hit, pattern_dotall, dot_is_not_literal, any_content, other_key]
    assert missing_events(refs, events) == [literal_miss, dot_is_not_literal, other_key]
    # the set lookup agrees with matching each reference against each event
    assert missing_events(refs, events) == [r for r in refs if not any(r.matches(e) for e in events)]
