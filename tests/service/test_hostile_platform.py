"""A debuggable TD against a real ``tsmr serve`` (SQLite and PostgreSQL): refused unless the verifier allows debug.

The TD's quote is the emulator's, with TD_ATTRIBUTES.DEBUG set and signed by its quoting enclave
exactly as a debug TD's would be: only the verifier's own rule can tell it from a production TD.
"""

from __future__ import annotations

from typing import Any, Callable

import httpx

from tsmr.appraisal import ear
from tsmr.evidence.bundle import make_bundle
from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner

from .conftest import Emulator, Server

DEBUG = b"\x01" + bytes(7)  # TD_ATTRIBUTES bit 0


def _attest(c: httpx.Client, emu: Emulator, td_attributes: bytes) -> dict[str, Any]:
    nonce = bytes.fromhex(c.post("/challenge").json()["nonce"])
    quote = EmulatedTDXSigner(emu.trust_root.parent).quote(report_data=nonce, registers={}, td_attributes=td_attributes)
    r = c.post("/attest", json=make_bundle(nonce=nonce, evidence={"kind": "tdx", "data": quote}))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert ear.verify(body["ear"], c.get("/.well-known/jwks.json").json())["submods"]["tdx"]["ear.status"] == body["status"]
    return body


def test_debug_td_is_refused_unless_the_verifier_allows_debug(db_url: str, make_server: Callable[..., Server],
                                                              emulator: Emulator) -> None:
    srv = make_server(name="strict", database=db_url, trust_root=emulator.trust_root)
    with srv.client() as c:
        plain = _attest(c, emulator, bytes(8))
        assert plain["status"] == "affirming", plain["result"]["findings"]
        debug = _attest(c, emulator, DEBUG)
        assert debug["status"] == "contraindicated"
        assert debug["findings"][0] == "evidence.tdx.debug" and "policy.deny" in debug["findings"]
        finding = debug["result"]["findings"][0]
        assert finding["claim"] == "configuration" and finding["context"]["check"] == "tdx.debug"
        assert debug["result"]["trustworthiness"]["configuration"] == 96
    srv.stop()

    lenient = make_server(name="lenient", database=db_url, trust_root=emulator.trust_root, extra=["--allow-debug"])
    with lenient.client() as c:
        debug = _attest(c, emulator, DEBUG)
        # Accepted, but never affirmed: the result still says the TD is debuggable.
        assert debug["status"] == "warning" and debug["findings"] == ["evidence.debug-allowed"]
        assert debug["result"]["findings"][0]["context"] == {"kind": "tdx", "check": "tdx.debug"}
        assert debug["result"]["claims"]["debug"] is True
        assert debug["result"]["trustworthiness"]["configuration"] == 32
        assert _attest(c, emulator, bytes(8))["status"] == "affirming"
    lenient.stop()

    from_env = make_server(name="env", database=db_url, trust_root=emulator.trust_root,
                           env={"TSMR_ALLOW_DEBUG": "1"})
    with from_env.client() as c:
        assert _attest(c, emulator, DEBUG)["findings"] == ["evidence.debug-allowed"]


def test_tcb_status_and_missing_collateral_are_never_affirmed(db_url: str, make_server: Callable[..., Server],
                                                              emulator: Emulator, tmp_path: Any) -> None:
    """An out-of-date platform, or one whose collateral the verifier lacks, is at best a warning."""
    from tsmr.backends.emulated_evidence.tdx import write_emulated_collateral

    alone = tmp_path / "root-only"
    alone.mkdir()
    (alone / "root.pem").write_bytes(emulator.trust_root.read_bytes())  # no collateral.json beside it
    signer = EmulatedTDXSigner(emulator.trust_root.parent)
    stale = write_emulated_collateral(signer, tmp_path / "stale.json", status="OutOfDate",
                                      advisories=("INTEL-SA-00837",))
    revoked = write_emulated_collateral(signer, tmp_path / "revoked.json", status="Revoked")
    cases = [("none", [], "evidence.collateral-missing", "warning"),
             ("stale", ["--collateral", str(stale)], "evidence.tdx.tcb-status", "warning"),
             ("revoked", ["--collateral", str(revoked)], "evidence.tdx.tcb_status", "contraindicated")]
    for name, extra, finding, status in cases:
        srv = make_server(name=name, database=db_url, trust_root=alone / "root.pem", extra=extra)
        with srv.client() as c:
            body = _attest(c, emulator, bytes(8))
        assert body["status"] == status and body["findings"][0] == finding, (name, body["findings"])
        assert body["result"]["trustworthiness"]["hardware"] == (32 if status == "warning" else 96)
        if name == "stale":
            assert "INTEL-SA-00837" in body["result"]["findings"][0]["context"]["advisory_ids"]
        srv.stop()
