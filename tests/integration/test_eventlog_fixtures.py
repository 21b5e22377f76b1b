"""Every real log in the shared fixtures parses through tsmr.eventlog and replays to its known values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from tsmr import HashAlg
from tsmr.eventlog import parse
from tsmr.replay import explain, replay

TSMR = os.path.join(os.path.dirname(sys.executable), "tsmr")


def _expected(fixtures: Path) -> dict[str, dict[str, dict[HashAlg, bytes]]]:
    """{fixture path: {register: {bank: value}}} from every expected-value file of the corpus."""
    out: dict[str, dict[str, dict[HashAlg, bytes]]] = {}
    for path, banks in json.loads((fixtures / "go-eventlog/expected_pcrs.json").read_text()).items():
        for alg, pcrs in banks.items():
            for idx, hexv in pcrs.items():
                out.setdefault(path, {}).setdefault(f"pcr{idx}", {})[HashAlg.from_name(alg)] = bytes.fromhex(hexv)
    for name in ("go-eventlog/expected_rtmrs.json", "trustee/expected_rtmrs.json"):
        for path, regs in json.loads((fixtures / name).read_text()).items():
            for reg, hexv in regs.items():
                if isinstance(hexv, str) and reg.upper().startswith("RTMR"):
                    value = bytes.fromhex(hexv)
                    if any(value):  # an all-zero RTMR means the log has no event for it
                        out.setdefault(path, {})[reg.lower()] = {HashAlg.SHA384: value}
    quote = json.loads((fixtures / "go-tdx-guest/expected.json").read_text())["go-tdx-guest/ccel/cos-113-tdx-quote.dat"]
    out["go-tdx-guest/ccel/ccel_data.dat"] = {f"rtmr{i}": {HashAlg.SHA384: bytes.fromhex(v)} for i, v in enumerate(quote["rtmr"]) if any(bytes.fromhex(v))}
    computed = json.loads((fixtures / "COMPUTED_REPLAY.json").read_text())
    for path, obj in computed.items():
        if path.startswith("_"):
            continue
        if "rtmrs" in obj:
            out[path] = {r.lower(): {HashAlg.SHA384: bytes.fromhex(v)} for r, v in obj["rtmrs"].items()}
        elif "registers_by_ccel_mr_index" in obj:
            out[path] = {f"rtmr{int(i) - 1}": {HashAlg.SM3_256: bytes.fromhex(v)} for i, v in obj["registers_by_ccel_mr_index"].items()}
    return out


def test_every_log_replays_to_its_known_values(fixtures: Path) -> None:
    expected = _expected(fixtures)
    assert len(expected) >= 14
    for rel, want in sorted(expected.items()):
        log = parse((fixtures / rel).read_bytes())
        result = replay(log.events)
        for reg, banks in want.items():
            for alg, value in banks.items():
                got = result.registers.get(reg, {}).get(alg)
                assert got == value, f"{rel} {reg} {alg}: {got.hex() if got else None} != {value.hex()}"
        assert explain(log.events, want) == [], rel


def test_formats_detected(fixtures: Path) -> None:
    cases = {
        "go-eventlog/eventlogs/tpm/rhel8-uefi.bin": ("tcg2", "tpm"),
        "go-eventlog/eventlogs/tpm/debian-10.bin": ("tcg2-sha1", "tpm"),
        "trustee/eventlog/CCEL_data_grub": ("ccel", "tdx"),
        "trustee/eventlog/CCEL_data_csv": ("ccel", "tdx"),
        "keylime/create-runtime-policy/ima-log-sha256": ("ima-ascii", "tpm"),
        "trustee/aael/AAEL_data_3": ("tsmr", "tdx"),
    }
    for rel, (fmt, arch) in cases.items():
        log = parse((fixtures / rel).read_bytes())
        assert (log.format, log.arch) == (fmt, arch), rel


def test_cli_replay_and_mismatch_explanation(fixtures: Path, tmp_path: Path) -> None:
    log = fixtures / "go-eventlog/eventlogs/tpm/rhel8-uefi.bin"
    r = subprocess.run([TSMR, "eventlog", "replay", str(log), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    regs = json.loads(r.stdout)["registers"]
    want = json.loads((fixtures / "go-eventlog/expected_pcrs.json").read_text())[str(log.relative_to(fixtures))]
    assert regs["pcr7"]["sha256"] == want["sha256"]["7"]
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"registers": {"pcr7": {"sha256": want["sha256"]["7"]}, "pcr4": {"sha256": "00" * 32}}}))
    r = subprocess.run([TSMR, "eventlog", "replay", str(log), "--expect", str(expect)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "pcr4 sha256:" in r.stdout and "MISMATCH" in r.stdout
    r = subprocess.run([TSMR, "eventlog", "show", str(log), "--json"], capture_output=True, text=True)
    shown = json.loads(r.stdout)
    assert shown["format"] == "tcg2" and len(shown["events"]) == len(parse(log.read_bytes()).events)


def test_merged_logs_ccel_plus_runtime_log(fixtures: Path, tmp_path: Path) -> None:
    """Firmware CCEL (RTMR0-2) and a tsmr runtime log on RTMR3 merge onto one register set."""
    ccel = (fixtures / "trustee/eventlog/CCEL_data_grub").read_bytes()
    runtime = b"SYNC sha384/" + b"0" * 96 + b"\nexample.com/app deploy\n"
    events = list(parse(ccel).events) + list(parse(runtime).events)
    result = replay(events, arch="tdx")
    assert set(result.registers) >= {"rtmr0", "rtmr1", "rtmr2", "rtmr3"}
    only_runtime = replay(parse(runtime).events)
    assert result.registers["rtmr3"] == only_runtime.registers["rtmr3"]
    assert result.registers["rtmr1"] == replay(parse(ccel).events).registers["rtmr1"]


def test_cli_reports_ima_template_hash_mismatches(fixtures: Path, tmp_path: Path) -> None:
    good = (fixtures / "keylime/create-runtime-policy/ima-log-sha256").read_bytes()
    r = subprocess.run([TSMR, "eventlog", "replay", str(fixtures / "keylime/create-runtime-policy/ima-log-sha256"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["registers"]) == {"pcr10"}
    bad = tmp_path / "ima"
    bad.write_bytes(good.replace(b"/data", b"/dat2"))
    r = subprocess.run([TSMR, "eventlog", "replay", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "entry 1 (/dat2): template hash mismatch" in r.stdout


def test_cel_tlv_and_systemd_logs(fixtures: Path, tmp_path: Path) -> None:
    from tsmr.formats import systemd

    cel = parse((fixtures / "go-tpm-tools/cel/cel.b64").read_bytes())
    assert (cel.format, len(cel.events)) == ("cel-tlv", 18)
    want = json.loads((fixtures / "go-tpm-tools/cel/expected.json").read_text())["go-tpm-tools/cel/cel.b64"]
    assert replay(cel.events).registers["rtmr3"][HashAlg.SHA384].hex() == want["computed_register_value_from_zero"]
    # systemd's cc-measure.log shape (JSON-SEQ, no recnum): detected, and H(string) replays
    data = systemd.encode([systemd.make_record("enter-initrd", rtmr=2, algs=(HashAlg.SHA384,)),
                           systemd.make_record("leave-initrd", rtmr=2, algs=(HashAlg.SHA384,))])
    path = tmp_path / "cc-measure.log"
    path.write_bytes(data)
    log = parse(data)
    assert log.format == "systemd" and [e.register for e in log.events] == ["rtmr2", "rtmr2"]
    v = bytes(48)
    for s in (b"enter-initrd", b"leave-initrd"):
        v = HashAlg.SHA384.extend(v, HashAlg.SHA384.hash(s))
    r = subprocess.run([TSMR, "eventlog", "replay", str(path), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["registers"]["rtmr2"]["sha384"] == v.hex()


def test_findings_and_quirks_that_accept_them(fixtures: Path) -> None:
    from tsmr.formats import tcg2
    from tsmr.quirks import findings

    old = parse((fixtures / "go-eventlog/eventlogs/tpm/debian-10.bin").read_bytes())
    found, applied = findings(old.events)
    assert [f.id for f in found] == ["log.exit-boot-services-missing"] and applied == []
    assert findings(old.events, ["no-exit-boot-services"]) == ([], ["no-exit-boot-services"])
    assert findings(parse((fixtures / "go-eventlog/eventlogs/tpm/rhel8-uefi.bin").read_bytes()).events) == ([], [])
    sep = (int(HashAlg.SHA256), HashAlg.SHA256.hash(bytes(4)))
    twice = tcg2.encode_log([tcg2.TCG2Event(7, tcg2.EV_SEPARATOR, (sep,), bytes(4))] * 2, [HashAlg.SHA256])
    found, _ = findings(parse(twice).events)
    assert [f.id for f in found] == ["log.pcr7.duplicate-separator"]
    assert findings(parse(twice).events, ["duplicate-separators"]) == ([], ["duplicate-separators"])
    r = subprocess.run([TSMR, "eventlog", "replay", str(fixtures / "go-eventlog/eventlogs/tpm/debian-10.bin"), "--json"],
                       capture_output=True, text=True)
    assert json.loads(r.stdout)["findings"][0]["id"] == "log.exit-boot-services-missing"
