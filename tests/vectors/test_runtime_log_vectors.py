"""The normative test vectors of spec/runtime-log.md section 6 and CoCo AAEL v1 (trustee)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsmr import HashAlg
from tsmr.runtime_log.replay import replay

Z384 = "0" * 96
Z256 = "0" * 64
EVENT = b'example.com/app deploy {"image":"alpine"}'


def test_single_bank_vector() -> None:
    sync = f"SYNC sha384/{Z384}".encode()
    r = replay(sync + b"\n")
    assert r.banks[HashAlg.SHA384].value.hex() == (  # type: ignore[union-attr]
        "bbcff67eab4aa6136e879db8faa1b39e9bda710219c24a6686f5d189d9ac74d2948860f46f3ff9485f220e5959a1de7f"
    )
    r = replay(sync + b"\n" + EVENT + b"\n")
    assert r.banks[HashAlg.SHA384].value.hex() == (  # type: ignore[union-attr]
        "4d21cf6247d683a218c4c7f98f287f1200bf6480e51c96374542d9c10ec01df8a4044b24f13847f6e2c4dc7e1dbc7110"
    )
    assert r.records == 2 and not r.gaps


def test_two_bank_vector() -> None:
    r = replay(f"SYNC sha256/{Z256} sha384/{Z384}\n".encode() + EVENT + b"\n")
    assert r.banks[HashAlg.SHA256].value.hex() == "ae2d8613574efc3940753e92be14f7de8c6a5144292bdfdf2e26af31c6a30da5"  # type: ignore[union-attr]
    assert r.banks[HashAlg.SHA384].value.hex() == (  # type: ignore[union-attr]
        "ce52c219fb6110e16a85c06d5aa2f72e172493964966183198daef01d6682c8f4cbf41def38c7df5be3aa3fa18a89674"
    )


def test_aael_v1_vector_inline() -> None:
    log = f"INIT sha384/{Z384}\ngithub.com/confidential-containers CreateContainer docker.io/library/alpine\n".encode()
    assert replay(log).banks[HashAlg.SHA384].value.hex() == (  # type: ignore[union-attr]
        "31fa17881137923029b1da5b368e92d8b22b14bbb4deaa360da61fce7aa530bd2f4c59ac7bd27021ef64104ff4dd04f9"
    )


@pytest.mark.parametrize(
    "alg,digest",
    [
        (HashAlg.SHA256, "65aad3b1620d4fe224d727579db2db87ff5c033f3e4424ae0fd72eb1149d3bd5"),
        (HashAlg.SHA384, "26d944cb8d99096590252283b8c807b9508329b068703bdb7bac7eb6efe5b32fc0fadf1462662b95d2c708aa49c0bfe1"),
        (
            HashAlg.SHA512,
            "6e75837e0fbf8367fa4550254b8f0f52eb659be0901340357ed91dda97f0ebca10537540a021eec78df9d29ade51609a01eaaa46d32e0218cdac1644dc9933b0",
        ),
    ],
)
def test_aael_record_digest(alg: HashAlg, digest: str) -> None:
    # AAEL v1 hashes the line as-is: H("domain operation content")
    assert alg.hash(b"domain operation content").hex() == digest


def test_trustee_aael_v1_files(fixtures: Path) -> None:
    expected = json.loads((fixtures / "trustee/aael/expected_aael.json").read_text())
    checked = 0
    for rel, want in expected.items():
        path = fixtures / rel
        data = path.read_bytes()
        assert not data.endswith(b"\n")  # AAEL v1 writers left the last line open
        alg = HashAlg.from_name(want["hash_alg"])
        report = replay(data, accept_unterminated=True)
        assert report.banks[alg].value.hex() == want["final_register"], rel  # type: ignore[union-attr]
        checked += 1
    assert checked == 3


def test_trustee_aael_file_without_final_lf_is_reported_truncated(fixtures: Path) -> None:
    from tsmr.errors import ParseError

    with pytest.raises(ParseError, match="no final LF"):
        replay((fixtures / "trustee/aael/AAEL_data_1").read_bytes())


def test_cli_replays_aael_v1_files(fixtures: Path) -> None:
    import subprocess
    import sys
    import os

    tsmr = os.path.join(os.path.dirname(sys.executable), "tsmr")
    path = fixtures / "trustee/aael/AAEL_data_3"
    want = "0de62b45b29775495d278c85ad63ff45e59406e509506b26c545a5419316e1c4bd2b00a4e803051fa98b550767e13f06"
    r = subprocess.run([tsmr, "log", "replay", str(path), "--expect", f"sha384/{want}", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["banks"]["sha384"]["status"] == "matched" and out["records"] == 3
    r = subprocess.run([tsmr, "log", "replay", str(path), "--expect", f"sha384/{'00' * 48}"], capture_output=True, text=True)
    assert r.returncode == 1 and "mismatched" in r.stdout
