"""Bundles that ask for unbounded work, sent to a real ``tsmr serve`` (SQLite and PostgreSQL).

Over a limit the verifier answers 413 ``bundle.too-large`` naming the limit and the
value; text logs are counted before the nonce is spent, binary logs as they are
parsed (the nonce is then given back); the time budget is 422
``appraisal.time-budget``.  Limits come from ``tsmr serve`` options or ``TSMR_MAX_*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .conftest import Emulator, Server


def _nonce(c: Any) -> str:
    r = c.post("/challenge")
    assert r.status_code == 201, r.text[:2000]
    return str(r.json()["nonce"])


def _lines(n: int) -> bytes:
    return b"".join(f"example.com/app step-{i} image=sha256:{i:064x}\n".encode() for i in range(n))


def test_a_40000_line_log_is_refused_by_the_defaults_before_the_nonce_is_spent(
        db_url: str, make_server: Callable[..., Server], emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root)
    with srv.client() as c:
        nonce = _nonce(c)
        big = emulator.bundle(nonce, extra_logs=[{"format": "tsmr", "register": "rtmr2", "data": _lines(40_000),
                                                  "name": "flood"}])
        r = c.post("/attest", json=big)
        assert r.status_code == 413, r.text[:2000]
        body = r.json()
        assert body["error"] == "bundle.too-large"
        assert "logs[0] (flood): 40,000 records in one runtime log, over the limit of 10,000" in body["detail"]
        assert "TSMR_MAX_LOG_RECORDS" in body["detail"]
        # Nothing was spent: the same nonce attests the guest's real bundle.
        r = c.post("/attest", json=emulator.bundle(nonce))
        assert r.status_code == 201, r.text[:2000]


def test_serve_options_set_the_limits(db_url: str, make_server: Callable[..., Server], emulator: Emulator) -> None:
    # The module's emulator logs a sync record and two events on RTMR3: 3 records.
    srv = make_server(database=db_url, trust_root=emulator.trust_root,
                      extra=["--max-log-records", "2", "--max-logs", "1"])
    with srv.client() as c:
        nonce = _nonce(c)
        r = c.post("/attest", json=emulator.bundle(nonce))
        assert r.status_code == 413, r.text[:2000]
        assert r.json()["error"] == "bundle.too-large"
        assert "3 records in one runtime log, over the limit of 2" in r.json()["detail"]
        two = emulator.bundle(nonce, extra_logs=[{"format": "tsmr", "register": "rtmr2", "data": b"# note\n"}])
        r = c.post("/attest", json=two)
        assert r.status_code == 413, r.text[:2000]
        assert "2 logs in the bundle, over the limit of 1" in r.json()["detail"]
        without_logs = dict(emulator.bundle(nonce), logs=[])
        assert c.post("/attest", json=without_logs).status_code == 201


def test_binary_logs_are_counted_as_parsed_and_the_nonce_is_given_back(
        db_url: str, make_server: Callable[..., Server], emulator: Emulator, fixtures: Path) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root, env={"TSMR_MAX_RECORDS": "20"})
    ccel = (fixtures / "go-tdx-guest/ccel/ccel_data.dat").read_bytes()  # 43 events
    with srv.client() as c:
        nonce = _nonce(c)
        r = c.post("/attest", json=emulator.bundle(nonce, extra_logs=[{"format": "ccel", "data": ccel,
                                                                      "name": "CCEL"}]))
        assert r.status_code == 413, r.text[:2000]
        assert r.json()["error"] == "bundle.too-large"
        assert "43 records in all logs of the bundle, over the limit of 20" in r.json()["detail"]
        r = c.post("/attest", json=emulator.bundle(nonce))  # 3 records: the nonce came back
        assert r.status_code == 201, r.text[:2000]


def test_the_time_budget_is_a_422_and_gives_the_nonce_back(db_url: str, make_server: Callable[..., Server],
                                                           emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root, extra=["--time-budget", "0.000001"])
    with srv.client() as c:
        nonce = _nonce(c)
        for _ in range(2):  # the second time the nonce is fresh again, not reused
            r = c.post("/attest", json=emulator.bundle(nonce))
            assert r.status_code == 422, r.text[:2000]
            assert r.json()["error"] == "appraisal.time-budget"
            assert "time budget of 1e-06 s" in r.json()["detail"]
