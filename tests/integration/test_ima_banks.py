"""IMA lists replay into every PCR bank: the CLI's --bank, and a SHA-256 TPM quote of PCR 10 (swtpm)
matched by a list whose template hashes are SHA-1.  Expected values: keylime's (tests/ima_vectors.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ima_vectors import KEYLIME_PCR10, S1, S256, S384, S512
from swtpm import Swtpm
from tsmr import HashAlg

TSMR = os.path.join(os.path.dirname(sys.executable), "tsmr")
LOG = "keylime/create-runtime-policy/ima-log-sha256"
VIOLATION_LOG = "keylime/create-runtime-policy/ima-log-sha384"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TSMR, *args], capture_output=True, text=True, timeout=120)


def test_replay_reports_sha1_and_sha256_by_default(fixtures: Path) -> None:
    for rel in (LOG, VIOLATION_LOG):
        r = run("eventlog", "replay", str(fixtures / rel), "--json")
        assert r.returncode == 0, r.stderr
        want = KEYLIME_PCR10[rel]
        assert json.loads(r.stdout)["registers"] == {"pcr10": {"sha1": want[S1], "sha256": want[S256]}}, rel


def test_replay_bank_option(fixtures: Path) -> None:
    want = KEYLIME_PCR10[VIOLATION_LOG]
    r = run("eventlog", "replay", str(fixtures / VIOLATION_LOG), "--bank", "sha512", "--bank", "sha384", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["registers"] == {"pcr10": {"sha384": want[S384], "sha512": want[S512]}}
    r = run("eventlog", "replay", str(fixtures / VIOLATION_LOG), "--bank", "sha384")
    assert r.returncode == 0 and r.stdout.split() == ["pcr10", f"sha384:{want[S384]}"]
    r = run("eventlog", "replay", str(fixtures / LOG), "--bank", "sha3")
    assert r.returncode == 2 and "unknown hash algorithm 'sha3'" in r.stderr


def test_replay_expect_a_sha256_value_of_a_sha1_list(fixtures: Path, tmp_path: Path) -> None:
    want = KEYLIME_PCR10[LOG]
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({"registers": {"pcr10": {"sha256": want[S256]}}}))
    r = run("eventlog", "replay", str(fixtures / LOG), "--expect", str(expect), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["expected"]["matched"] is True
    expect.write_text(json.dumps({"registers": {"pcr10": {"sha256": KEYLIME_PCR10[VIOLATION_LOG][S256]}}}))
    assert run("eventlog", "replay", str(fixtures / LOG), "--expect", str(expect)).returncode == 1


def test_show_gives_each_banks_template_digest(fixtures: Path) -> None:
    r = run("eventlog", "show", str(fixtures / VIOLATION_LOG), "--json")
    assert r.returncode == 0, r.stderr
    boot, data = json.loads(r.stdout)["events"]
    assert set(boot["digests"]) == set(data["digests"]) == {"sha1", "sha256"}
    assert boot["digests"]["sha256"] == "00" * 32 and boot["extended_with"] == "0xff bytes"  # a violation
    assert data["digest_matches_data"] is True
    r = run("eventlog", "show", str(fixtures / VIOLATION_LOG), "--bank", "sha512", "--json")
    assert r.returncode == 0, r.stderr
    boot, data = json.loads(r.stdout)["events"]
    assert list(data["digests"]) == ["sha1", "sha512"]  # the logged bank, and the one asked for
    assert data["digests"]["sha1"] == "75c0136ea25f6ef9ad3e029fc5ffde6a4d293a07"


@pytest.mark.skipif(not Swtpm.available(), reason="swtpm not installed (make test installs it)")
def test_sha256_quote_of_pcr10_matches_a_sha1_list(fixtures: Path, tmp_path: Path) -> None:
    """The kernel's extends, replayed on swtpm by hand; the bundle's quote covers only the SHA-256 bank."""
    from tsmr.backends.tpm import TpmRegisterSet
    from tsmr.evidence.bundle import make_bundle
    from tsmr.formats import ima

    raw = (fixtures / LOG).read_bytes()
    entries = ima.parse_ascii(raw)
    nonce = b"\x42" * 32
    with Swtpm() as tpm, TpmRegisterSet(tpm.tcti) as rs:
        for e in entries:  # each bank gets the hash of the template data with its own algorithm
            data = e.template_data or b""
            rs.extend("pcr10", {HashAlg.SHA1: hashlib.sha1(data).digest(), HashAlg.SHA256: hashlib.sha256(data).digest()})
        q = rs.quote(nonce, [10], algs=[HashAlg.SHA256])
    assert q.pcrs["pcr10"] == {HashAlg.SHA256: bytes.fromhex(KEYLIME_PCR10[LOG][S256])}  # keylime agrees with the TPM

    def bundle(log: bytes) -> Path:
        evidence = {"kind": "tpm", "attest": q.attest.hex(), "signature": q.signature.hex(),
                    "ak_public": q.ak_public.hex(), "pcrs": {"sha256": {"10": q.pcrs["pcr10"][HashAlg.SHA256].hex()}}}
        path = tmp_path / "bundle.json"
        path.write_text(json.dumps(make_bundle(nonce=nonce, evidence=evidence,
                                               logs=[{"format": "ima-ascii", "data": log, "name": "ima"}])))
        return path

    path = bundle(raw)
    assert run("quote", "ak", str(path), "-o", str(tmp_path / "ak.pem")).returncode == 0
    r = run("verify", str(path), "--tpm-ak", str(tmp_path / "ak.pem"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [x for x in json.loads(r.stdout)["registers"] if x["register"] == "pcr10"]
    assert [(x["bank"], x["status"]) for x in rows] == [("sha256", "matched")]
    # a self-consistent list (template hash recomputed) of another file digest does not match the quote
    other = ima.build_entry("ima-ng", [ima.digest_field(HashAlg.SHA256, bytes(32)), ima.name_field("/data")])
    r = run("verify", str(bundle(ima.encode_ascii([entries[0], other]))), "--tpm-ak", str(tmp_path / "ak.pem"),
            "--json")
    assert r.returncode == 1
    assert [x["status"] for x in json.loads(r.stdout)["registers"] if x["register"] == "pcr10"] == ["mismatched"]
