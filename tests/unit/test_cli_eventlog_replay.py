"""tsmr eventlog replay: --expect takes quote verify's output; --arch maps a TPM log through the UEFI CC MR table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tsmr import HashAlg
from tsmr.formats import tcg2


def tsmr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tsmr", *args], capture_output=True, text=True, timeout=120)


def test_expect_takes_quote_verify_json(fixtures: Path, tmp_path: Path) -> None:
    quote = fixtures / "go-tdx-guest/ccel/cos-113-tdx-quote.dat"
    verified = tsmr("quote", "verify", str(quote), "--json")
    assert verified.returncode == 0, verified.stderr
    claims = json.loads(verified.stdout)["claims"]
    assert set(claims["registers"]) == {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"}
    assert claims["registers"]["rtmr3"] == "00" * 48  # the log has no rtmr3 events: a zero value matches
    expect = tmp_path / "quote.json"
    expect.write_text(verified.stdout)
    out = tsmr("eventlog", "replay", str(fixtures / "go-tdx-guest/ccel/ccel_data.dat"), "--expect", str(expect), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)["expected"]
    assert result["matched"] is True and result["mismatches"] == []
    assert result["not_covered"] == [{"register": "mrtd", "bank": "sha384", "expected": claims["registers"]["mrtd"],
                                      "status": "not-covered"}]
    text = tsmr("eventlog", "replay", str(fixtures / "go-tdx-guest/ccel/ccel_data.dat"), "--expect", str(expect))
    assert text.returncode == 0 and "mrtd sha384: not covered" in text.stdout


def test_expect_from_quote_json_still_fails_on_a_mismatch(fixtures: Path, tmp_path: Path) -> None:
    doc = json.loads(tsmr("quote", "verify", str(fixtures / "go-tdx-guest/ccel/cos-113-tdx-quote.dat"), "--json").stdout)
    doc["claims"]["registers"]["rtmr3"] = "11" * 48  # no rtmr3 events: only zero matches
    expect = tmp_path / "quote.json"
    expect.write_text(json.dumps(doc))
    out = tsmr("eventlog", "replay", str(fixtures / "go-tdx-guest/ccel/ccel_data.dat"), "--expect", str(expect), "--json")
    assert out.returncode == 1
    [m] = json.loads(out.stdout)["expected"]["mismatches"]
    assert m["register"] == "rtmr3" and "no events for this register" in m["explanation"]


def test_arch_tdx_maps_tpm_pcrs_through_the_uefi_table(tmp_path: Path) -> None:
    algs = (HashAlg.SHA256, HashAlg.SHA384)
    pcrs = [0, 1, 7, 2, 6, 8, 15, 16, 23, 4]
    evs = [tcg2.TCG2Event(p, tcg2.EV_ACTION, tuple((int(a), a.hash(b"e%d" % p)) for a in algs), b"e%d" % p) for p in pcrs]
    log = tmp_path / "tpm.bin"
    log.write_bytes(tcg2.encode_log(evs, algs))
    table = {0: "mrtd", 1: "rtmr0", 7: "rtmr0", 2: "rtmr1", 6: "rtmr1", 4: "rtmr1", 8: "rtmr2", 15: "rtmr2",
             16: "rtmr3", 23: "rtmr3"}
    want: dict[str, bytes] = {}
    for p in pcrs:  # what each register holds: its PCRs' SHA-384 digests, in log order, from zero
        reg = table[p]
        want[reg] = HashAlg.SHA384.extend(want.get(reg, bytes(48)), HashAlg.SHA384.hash(b"e%d" % p))
    expected = {"registers": {r: {"sha384": v.hex()} for r, v in want.items()}}
    for fast in ((), ("--fast",)):
        out = tsmr("eventlog", "replay", "--arch", "tdx", str(log), "--json", *fast)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == expected, fast  # no ccmrN, no sha256 bank on an RTMR
    plain = json.loads(tsmr("eventlog", "replay", str(log), "--json").stdout)
    assert set(plain["registers"]) == {f"pcr{p}" for p in pcrs}


def test_arch_tdx_ima_ascii_log_gains_no_sha1_bank(fixtures: Path) -> None:
    path = fixtures / "keylime/create-runtime-policy/ima-log-sha256"
    out = tsmr("eventlog", "replay", "--arch", "tdx", str(path), "--json")
    assert out.returncode == 0, out.stderr
    regs = json.loads(out.stdout)["registers"]
    assert list(regs) == ["rtmr2"] and list(regs["rtmr2"]) == ["sha384"]
    # SHA-384 of each entry's template data, extended from zero: what the kernel would extend an RTMR with
    from tsmr.eventlog import parse

    value = bytes(48)
    for e in parse(path.read_bytes()).events:
        value = HashAlg.SHA384.extend(value, bytes([e.fill]) * 48 if e.fill is not None else HashAlg.SHA384.hash(e.data))
    assert regs["rtmr2"]["sha384"] == value.hex()
