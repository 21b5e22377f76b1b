"""README's challenge -> attest -> ear verify flow, run as written against ``tsmr serve`` on loopback (SQLite).

Also: the nonce ``tsmr attest --verifier`` prints, ``tsmr ear verify --nonce`` in hex and base64url,
and ``tsmr verify --nonce``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = os.path.dirname(sys.executable)
TSMR = os.path.join(BIN, "tsmr")


def _readme_flow() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Challenge, attest, check the result"):]
    block = section[section.index("```sh\n") + 6:]
    return block[:block.index("```")].splitlines()


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSMR_")}
    env.update(TSMR_STATE_DIR=str(tmp_path / "state"), TSMR_LOG_DIR=str(tmp_path / "logs"),
               PATH=BIN + os.pathsep + env.get("PATH", ""))
    return env


def test_readme_flow_runs_as_written(tmp_path: Path) -> None:
    lines = _readme_flow()
    assert any(line.startswith("tsmr serve ") for line in lines)
    port = free_port()
    script = ["set -eu", "cd " + str(tmp_path)]
    for line in lines:
        script.append(line.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
        if line.startswith("tsmr serve "):
            # The test's additions: the port, stopping the verifier at the end, and waiting until it answers.
            script[-1] = script[-1].replace("tsmr serve ", f"tsmr serve --port {port} ", 1)
            script += ["SERVE=$!", "trap 'kill $SERVE; wait $SERVE || true' EXIT",
                       f"for i in $(seq 300); do tsmr challenge --verifier http://127.0.0.1:{port} >/dev/null 2>&1 "
                       "&& break; sleep 0.2; done"]
    script.append('echo "NONCE=$NONCE"')
    r = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, env=_env(tmp_path),
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    nonce = re.search(r"^NONCE=([0-9a-f]{64})$", r.stdout, re.M)
    assert nonce, r.stdout
    assert f"nonce: {nonce.group(1)}" in r.stdout  # attest says which nonce it used
    assert "status: affirming" in r.stdout and "the EAR verifies" in r.stdout
    assert (tmp_path / "result.jwt").is_file() and (tmp_path / "verifier.db").is_file()


def _tsmr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TSMR, *args], capture_output=True, text=True, env=env, timeout=120)


def test_attest_prints_its_nonce_and_ear_verify_reads_hex_or_base64url(tmp_path: Path, make_server) -> None:  # type: ignore[no-untyped-def]
    env = _env(tmp_path)
    init = json.loads(_tsmr(env, "emulate", "init", "--profile", "tdx", "--json").stdout)
    srv = make_server(database=f"sqlite:///{tmp_path / 'verifier.db'}", trust_root=Path(init["trust_anchor"]))
    bundle, ear = tmp_path / "bundle.json", tmp_path / "result.jwt"
    r = _tsmr(env, "attest", "--verifier", srv.url, "-b", "emulated:tdx", "-o", str(bundle), "--ear", str(ear),
              "--json")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    nonce = answer["nonce"]
    assert answer["status"] == "affirming" and json.loads(bundle.read_text())["nonce"] == nonce
    claims = ear.read_text().split(".")[1]
    eat_nonce = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["eat_nonce"]
    assert base64.urlsafe_b64decode(eat_nonce + "=" * (-len(eat_nonce) % 4)).hex() == nonce

    jwks = ("--jwks", f"{srv.url}/.well-known/jwks.json")
    for given in (nonce, nonce.upper(), eat_nonce, eat_nonce + "=" * (-len(eat_nonce) % 4)):
        r = _tsmr(env, "ear", "verify", str(ear), *jwks, "--nonce", given, "--json")
        assert r.returncode == 0, (given, r.stdout, r.stderr)
        assert json.loads(r.stdout)["nonce"] == {"hex": nonce, "read_as": "base64url" if given.startswith(eat_nonce)
                                                 else "hex"}
    r = _tsmr(env, "ear", "verify", str(ear), *jwks, "--nonce", "ab" * 32)
    assert r.returncode == 1 and "answers another nonce than --nonce (read as hex, 32 bytes)" in r.stderr
    other = base64.urlsafe_b64encode(b"\x01" * 32).decode().rstrip("=")
    r = _tsmr(env, "ear", "verify", str(ear), *jwks, "--nonce", other)
    assert r.returncode == 1 and "(read as base64url, 32 bytes)" in r.stderr
    r = _tsmr(env, "ear", "verify", str(ear), *jwks, "--nonce", "not a nonce!")
    assert r.returncode == 2 and "neither hex nor base64url" in r.stderr

    # the human output says the nonce too
    r = _tsmr(env, "attest", "--verifier", srv.url, "-b", "emulated:tdx")
    assert r.returncode == 0 and re.search(r"^nonce: [0-9a-f]{64}$", r.stdout, re.M), r.stdout

    # tsmr verify --nonce: the bundle must be over it; without it, freshness is said not to be checked
    trust = ("--trust-root", init["trust_anchor"], "--collateral", init["collateral"])
    r = _tsmr(env, "verify", str(bundle), "--nonce", nonce, "--json", *trust)
    assert r.returncode == 0 and "freshness" not in json.loads(r.stdout)["not_checked"], r.stdout + r.stderr
    r = _tsmr(env, "verify", str(bundle), "--json", *trust)
    assert r.returncode == 0 and "freshness" in json.loads(r.stdout)["not_checked"]
    r = _tsmr(env, "verify", str(bundle), "--nonce", "00" * 32, "--json", *trust)
    assert r.returncode == 1 and json.loads(r.stdout)["check"] == "freshness.nonce-mismatch"
    r = _tsmr(env, "verify", str(bundle), "--nonce", "xyz", *trust)
    assert r.returncode == 2 and "--nonce 'xyz' is not hex" in r.stderr
