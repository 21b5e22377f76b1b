"""The application in process: failures inside it are JSON without a stack trace, and logged on one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with")


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from tsmr.service.app import create_app
    from tsmr.service.settings import Settings

    app = create_app(Settings(state_dir=str(tmp_path), json_logs=True))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


class _Lines(logging.Handler):
    def __init__(self) -> None:
        from tsmr.service.middleware import JsonFormatter

        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_an_internal_error_is_json_and_logged_once(client) -> None:  # type: ignore[no-untyped-def]
    v = client.app.state.verifier
    sink = _Lines()
    logging.getLogger("tsmr").addHandler(sink)

    def broken(id: str) -> None:
        raise RuntimeError("the database fell over")

    v.store.get_result = broken
    r = client.get("/results/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 500
    assert r.json() == {"error": "internal", "detail": "internal error; the verifier's log has the details"}
    assert "Traceback" not in r.text and "fell over" not in r.text
    logging.getLogger("tsmr").removeHandler(sink)
    assert all("\n" not in x for x in sink.lines)  # one line per record, tracebacks included
    lines = [json.loads(x) for x in sink.lines]
    errors = [x for x in lines if x["level"] == "error"]
    assert len(errors) == 1 and "the database fell over" in errors[0]["exception"]
    assert errors[0]["route"] == "/results/{result_id}"
    assert 'tsmr_http_requests_total{method="GET",route="/results/{result_id}",status="500"} 1' in client.get(
        "/metrics").text


def test_health_reports_an_unreachable_database(client) -> None:  # type: ignore[no-untyped-def]
    v = client.app.state.verifier
    assert client.get("/healthz").json()["status"] == "ok"

    def down() -> None:
        raise OSError("connection refused")

    v.store.ping = down
    v.health_checked = 0.0  # a successful probe answers for a second: forget it
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json() == {"status": "unavailable", "database": "unreachable", "revision": None}


def test_no_admin_routes_without_a_token(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/policies").status_code == 404
    assert "/policies" not in client.get("/openapi.json").json()["paths"]


def test_settings_from_the_environment(tmp_path: Path) -> None:
    from tsmr.errors import InputError
    from tsmr.service.settings import Settings

    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token-0123456789\n")
    s = Settings.from_env({"TSMR_DATABASE_URL": "sqlite:///x.db", "TSMR_CHALLENGE_TTL": "12.5",
                           "TSMR_JSON_LOGS": "1", "TSMR_ADMIN_TOKEN_FILE": str(token),
                           "TSMR_MAX_ATTEST_BYTES": "1000"})
    assert (s.database_url, s.challenge_ttl, s.json_logs, s.max_attest_bytes) == ("sqlite:///x.db", 12.5, True, 1000)
    assert s.read_admin_token() == "0123456789abcdef-token-0123456789"
    assert Settings.from_env(s.to_env()) == s
    assert "secret" not in repr(Settings(admin_token="secret-secret-secret"))
    token.write_text("short")
    with pytest.raises(InputError):
        s.read_admin_token()
    with pytest.raises(InputError):
        Settings.from_env({"TSMR_CHALLENGE_TTL": "soon"})
    logging.getLogger("tsmr").handlers.clear()


def test_workers_sum_their_metrics_through_a_shared_directory(tmp_path: Path) -> None:
    from tsmr.service.metrics import Metrics

    shared = tmp_path / "metrics"
    one, two = Metrics(shared, worker="101"), Metrics(shared, worker="102")
    # What a request counts (its outcome, its appraisal time) is shared when the request ends.
    one.attestation("affirming")
    two.attestation("refused-reused")
    two.appraised(0.3)
    assert 'tsmr_attestations_total{status="refused-reused"}' not in one.render()
    for _ in range(3):
        one.request("POST", "/attest", 201, 0.02)
    two.request("POST", "/attest", 201, 0.2)
    two.request("GET", "/healthz", 200, 0.001)
    for m in (one, two):  # whichever worker is scraped, the sums are the same
        text = m.render()
        assert 'tsmr_http_requests_total{method="POST",route="/attest",status="201"} 4' in text
        assert 'tsmr_http_requests_total{method="GET",route="/healthz",status="200"} 1' in text
        assert 'tsmr_attestations_total{status="affirming"} 1' in text
        assert 'tsmr_attestations_total{status="refused-reused"} 1' in text
        assert 'tsmr_http_request_duration_seconds_bucket{route="/attest",le="0.025"} 3' in text
        assert 'tsmr_http_request_duration_seconds_count{route="/attest"} 4' in text
        assert "tsmr_appraisal_duration_seconds_count 1" in text and "tsmr_worker_processes 2" in text
    # a worker that exited keeps counting; a snapshot that cannot be read is skipped, not fatal
    del two
    (shared / "103.json").write_text("{not json")
    (shared / "105.json").write_bytes(b"2 " + b"0" * 64 + b"\n{}")  # caught mid-write: its checksum fails
    third = Metrics(shared, worker="104")
    text = third.render()
    assert 'tsmr_http_requests_total{method="POST",route="/attest",status="201"} 4' in text
    assert "tsmr_worker_processes 3" in text
    # without a shared directory, a process counts alone
    alone = Metrics()
    alone.request("POST", "/attest", 201, 0.02)
    assert 'route="/attest",status="201"} 1' in alone.render() and "tsmr_worker_processes 1" in alone.render()
