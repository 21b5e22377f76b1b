"""Bundle limits and the time budget of appraise() and verify_bundle(), on emulated TDX bundles and real logs.

Limits are made small here so that bundles over them stay small; the defaults are
checked on the real fixture logs and on an IMA list of tens of thousands of entries.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest

from tsmr.appraisal import appraise
from tsmr.evidence.bundle import make_bundle, verify_bundle
from tsmr.evidence.limits import (DEFAULT_LIMITS, AppraisalCancelled, LimitExceeded, Limits, TimeBudgetExceeded)

from .conftest import NOW, EmulatedTDX


def _records(n: int, prefix: str = "step") -> list[str]:
    return [f"example.com/app {prefix}-{i} image=sha256:{i:064x}" for i in range(n)]


def _with_logs(doc: dict[str, Any], *logs: dict[str, Any]) -> dict[str, Any]:
    extra = make_bundle(nonce=b"", evidence={"kind": "tdx"}, logs=list(logs))["logs"]
    return dict(doc, logs=extra + list(doc["logs"]))


def _appraise(emu: EmulatedTDX, doc: dict[str, Any], **kw: Any) -> Any:
    return appraise(doc, nonce=bytes.fromhex(doc["nonce"]), now=NOW, trust=emu.trust, **kw)


# Reference values under which every example.com/app record is judged (allowed): they cover the runtime log.
COVERING = {"format": "tsmr-refvals", "version": 1, "id": "app",
            "appraisers": {"allowlist": {"rules": [{"domain": "example.com/app"}]}}}


def test_runtime_log_over_max_log_records_is_refused_before_the_evidence_is_looked_at(
        emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append(*_records(60))
    doc = emulated_tdx.bundle(b"\x01" * 32)
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, doc, limits=Limits(max_log_records=50))
    assert (err.value.limit, err.value.value, err.value.maximum) == ("max_log_records", 61, 50)  # 60 events + sync
    assert "61 records in one runtime log, over the limit of 50" in str(err.value)
    assert "--max-log-records" in str(err.value) and "TSMR_MAX_LOG_RECORDS" in str(err.value)
    # Counted before verification: evidence that would not even parse changes nothing.
    broken = dict(doc, evidence=dict(doc["evidence"], data=base64.b64encode(b"not a quote").decode()))
    with pytest.raises(LimitExceeded):
        _appraise(emulated_tdx, broken, limits=Limits(max_log_records=50))
    assert _appraise(emulated_tdx, doc, limits=Limits(max_log_records=61), reference_values=COVERING).status == "affirming"


def test_the_default_limits_refuse_a_runtime_log_of_40000_lines(emulated_tdx: EmulatedTDX) -> None:
    """What an unauthenticated client could send before: 40,000 lines, refused by counting, not parsing."""
    emulated_tdx.append(*_records(1))
    lines = b"".join(r.encode() + b"\n" for r in _records(40_000))
    doc = _with_logs(emulated_tdx.bundle(b"\x02" * 32), {"format": "tsmr", "register": "rtmr3", "data": lines})
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, doc)
    assert (err.value.limit, err.value.value, err.value.maximum) == ("max_log_records", 40_000, 10_000)
    assert err.value.code == "bundle.too-large"


def test_records_of_all_logs_count_binary_ones_as_parsed(emulated_tdx: EmulatedTDX, fixtures: Path) -> None:
    emulated_tdx.append(*_records(10))
    ccel = (fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes()  # 43 events
    doc = _with_logs(emulated_tdx.bundle(b"\x03" * 32), {"format": "ccel", "data": ccel, "name": "CCEL"})
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, doc, limits=Limits(max_records=50))
    assert (err.value.limit, err.value.value, err.value.maximum) == ("max_records", 54, 50)  # 43 + 11
    with pytest.raises(LimitExceeded) as err:
        verify_bundle(doc, now=NOW, trust=emulated_tdx.trust, limits=Limits(max_records=50))
    assert err.value.limit == "max_records"
    # Text logs are counted before parsing: over the limit with those alone, nothing is parsed.
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, doc, limits=Limits(max_records=5))
    assert (err.value.limit, err.value.value) == ("max_records", 11)
    assert _appraise(emulated_tdx, doc, limits=Limits(max_records=54)).kind == "tdx"


def test_record_bytes_text_and_binary(emulated_tdx: EmulatedTDX, fixtures: Path) -> None:
    emulated_tdx.append(*_records(3))
    doc = emulated_tdx.bundle(b"\x04" * 32)
    long_line = b"example.com/app blob " + b"x" * 70_000 + b"\n"
    over = _with_logs(doc, {"format": "tsmr", "register": "rtmr2", "data": long_line, "name": "long"})
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, over)  # the default: the spec's 65,536 bytes
    assert (err.value.limit, err.value.value, err.value.maximum) == ("max_record_bytes", len(long_line) - 1, 65_536)
    assert "logs[0] (long)" in str(err.value)
    ccel = (fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes()  # largest event data: 4,499 bytes
    fw = _with_logs(doc, {"format": "ccel", "data": ccel, "name": "CCEL"})
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, fw, limits=Limits(max_record_bytes=4096))
    assert (err.value.limit, err.value.value) == ("max_record_bytes", 4499)


def test_number_of_logs(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append(*_records(1))
    doc = emulated_tdx.bundle(b"\x05" * 32)
    many = _with_logs(doc, *[{"format": "tsmr", "register": "rtmr2", "data": b"# nothing\n"}] * 64)
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, many)
    assert (err.value.limit, err.value.value, err.value.maximum) == ("max_logs", 65, 64)


def test_runtime_events_text_counted_before_parsing_aael_as_parsed(emulated_tdx: EmulatedTDX) -> None:
    from tsmr.algorithms import HashAlg
    from tsmr.formats import aael, tcg2

    emulated_tdx.append(*_records(30))
    doc = emulated_tdx.bundle(b"\x06" * 32)
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, doc, limits=Limits(max_runtime_events=20))
    assert (err.value.limit, err.value.value, err.value.maximum) == ("max_runtime_events", 30, 20)  # not the sync
    assert "30 runtime-log events in the bundle, over the limit of 20" in str(err.value)
    assert len(_appraise(emulated_tdx, doc, limits=Limits(max_runtime_events=30)).events["example.com/app"]) == 30
    # CoCo AAEL v2 entries of a CCEL are runtime events too, found once the CCEL is parsed;
    # they do not replay onto this guest, so the policy would not see them, but the result lists them.
    ccel = tcg2.encode_log([aael.make_tcg2_event("example.com/fw", "load", f"blob-{i}", index=3) for i in range(25)],
                           [HashAlg.SHA384])
    with_aael = _with_logs(doc, {"format": "ccel", "data": ccel, "name": "CCEL"})
    with pytest.raises(LimitExceeded) as err:
        _appraise(emulated_tdx, with_aael, limits=Limits(max_runtime_events=50))
    assert (err.value.limit, err.value.value) == ("max_runtime_events", 55)


def test_time_budget_and_cancellation(emulated_tdx: EmulatedTDX) -> None:
    emulated_tdx.append(*_records(5))
    doc = emulated_tdx.bundle(b"\x07" * 32)
    with pytest.raises(TimeBudgetExceeded) as err:
        _appraise(emulated_tdx, doc, limits=Limits(time_budget=1e-9))  # any appraisal takes longer than 1 ns
    assert err.value.code == "appraisal.time-budget" and err.value.limit == "time_budget"
    assert "time budget of 1e-09 s" in str(err.value) and "--time-budget" in str(err.value)
    with pytest.raises(AppraisalCancelled):
        _appraise(emulated_tdx, doc, cancelled=lambda: True)
    assert _appraise(emulated_tdx, doc, limits=Limits(time_budget=0), cancelled=lambda: False,
                     reference_values=COVERING).status == "affirming"


def _ima_ng(n: int) -> bytes:
    head = struct.Struct("<I20sI6sI")
    out = []
    for i in range(n):
        name = f"/usr/lib/x86_64-linux-gnu/lib{i:07d}.so.1".encode() + b"\0"
        dng = b"sha256:\0" + hashlib.sha256(name).digest()
        data = struct.pack("<I", len(dng)) + dng + struct.pack("<I", len(name)) + name
        out.append(head.pack(10, hashlib.sha1(data).digest(), 6, b"ima-ng", len(data)) + data)
    return b"".join(out)


def test_the_defaults_let_real_logs_and_a_large_ima_list_through(emulated_tdx: EmulatedTDX, fixtures: Path) -> None:
    emulated_tdx.append(*_records(100))
    doc = emulated_tdx.bundle(b"\x08" * 32)
    logs = [{"format": "ima-binary", "data": _ima_ng(60_000), "name": "ima"}]
    for rel in ("trustee/eventlog/CCEL_data", "trustee/eventlog/CCEL_data_grub_gke", "go-tdx-guest/ccel/ccel_data.dat",
                "go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin", "go-eventlog/eventlogs/tpm/rhel8-uefi.bin"):
        logs.append({"format": None, "data": (fixtures / rel).read_bytes(), "name": rel})
    big = _with_logs(doc, *logs)
    assert len(big["logs"]) == 7
    result = _appraise(emulated_tdx, big, limits=DEFAULT_LIMITS)  # they do not replay onto this guest, but pass
    assert not any(f.id.startswith(("bundle.", "log.malformed")) for f in result.findings), result.finding_ids()
    assert result.events["example.com/app"][-1]["operation"] == "step-99"


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    full.update(env or {})
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "tsmr"), *args], capture_output=True,
                          text=True, env=full, timeout=120)


def test_the_command_line_applies_the_limits_with_options_and_variables(emulated_tdx: EmulatedTDX,
                                                                       tmp_path: Path) -> None:
    import json

    emulated_tdx.append(*_records(8))
    doc = emulated_tdx.bundle(b"\x09" * 32)
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(doc))
    root = str(emulated_tdx.state / "emulator" / "tdx" / "qe" / "root.pem")
    for cmd in (["appraise", str(path), "--trust-root", root], ["verify", str(path), "--trust-root", root]):
        r = _cli(*cmd, "--max-log-records", "5")
        assert r.returncode == 2, r.stderr
        assert "9 records in one runtime log, over the limit of 5" in r.stderr and "--max-log-records" in r.stderr
        r = _cli(*cmd, env={"TSMR_MAX_RECORDS": "4"})
        assert r.returncode == 2 and "9 records in all logs of the bundle, over the limit of 4" in r.stderr, r.stderr
        r = _cli(*cmd, "--max-records", "0", env={"TSMR_MAX_RECORDS": "4"})  # the option wins; 0: no limit
        assert r.returncode in (0, 1), r.stderr
    r = _cli("appraise", str(path), "--trust-root", root, "--time-budget", "0.000000001")
    assert r.returncode == 2 and "time budget" in r.stderr, r.stderr
