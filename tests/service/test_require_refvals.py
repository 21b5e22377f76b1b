"""The verifier and reference values: predicted documents in the store, ``tsmr serve --require-refvals``.

Real ``tsmr serve`` processes on SQLite and PostgreSQL appraise the emulator's TDX
bundles (a runtime log on RTMR3; its MRTD and RTMR0-2 stay zero, so RTMR3 is the
register that needs covering).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Callable

import httpx

from tsmr.algorithms import HashAlg
from tsmr.appraisal import ReferenceValues, ear
from tsmr.predict.model import PredictedEvent, Prediction, extend_all
from tsmr.service.db import Store

from .conftest import Emulator, Server, admin_headers

UNCOVERED = "refvals.uncovered"


def _log_lines(bundle: dict[str, Any]) -> list[str]:
    [log] = bundle["logs"]
    return base64.b64decode(log["data"]).decode().splitlines()


def _predicted(lines: list[str]) -> dict[str, Any]:
    """Reference values predicted line by line (component ``app``), as ``tsmr predict`` writes them."""
    events = [PredictedEvent("rtmr3", "tsmr", {HashAlg.SHA384: hashlib.sha384(line.encode()).digest()}, "app",
                             f"the record {line!r}") for line in lines]
    doc = Prediction(platform="tdx", registers=extend_all(events, [HashAlg.SHA384]), events=events,
                     inputs={"app": {"version": "1.2"}}, notes=["lines as the workload logs them"]).to_refvals("predicted")
    return json.loads(json.dumps(doc))


def _attest(c: httpx.Client, emu: Emulator) -> dict[str, Any]:
    nonce = c.post("/challenge").json()["nonce"]
    r = c.post("/attest", json=emu.bundle(nonce))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    sub = ear.verify(body["ear"], c.get("/.well-known/jwks.json").json())["submods"]["tdx"]
    assert sub["ear.status"] == body["status"] and sub["tsmr.findings"] == body["findings"]
    body["submod"] = sub
    return body


def test_predicted_reference_values_round_trip_the_store(db_url: str, emulator: Emulator) -> None:
    doc = _predicted(_log_lines(emulator.bundle("00" * 32)))
    store = Store.open(db_url)
    try:
        store.put("refvals", "predicted", doc)
        stored = store.get("refvals", "predicted")
        assert stored is not None and stored.document == doc
        assert ReferenceValues.from_json(stored.document) == ReferenceValues.from_json(doc)
        assert ReferenceValues.from_json(stored.document).predicted.events[1].component == "app"  # type: ignore[union-attr]
    finally:
        store.close()


def test_serve_require_refvals(db_url: str, make_server: Callable[..., Server], emulator: Emulator) -> None:
    srv = make_server(database=db_url, trust_root=emulator.trust_root, extra=["--require-refvals"])
    with srv.client() as c:
        # nothing covers RTMR3: an error, so contraindicated, and the EAR says which register
        body = _attest(c, emulator)
        assert body["status"] == "contraindicated" and UNCOVERED in body["findings"]
        assert body["submod"]["tsmr.uncovered"] == ["rtmr3"]
        assert body["submod"]["ear.trustworthiness-vector"]["executables"] == 96
        uncovered = next(f for f in body["result"]["findings"] if f["id"] == UNCOVERED)
        assert uncovered["severity"] == "error" and uncovered["context"]["required"] is True

        # predicted reference values, stored as they are, with one record predicted otherwise
        lines = _log_lines(emulator.bundle("00" * 32))
        assert lines[0].startswith("SYNC ") and lines[2] == "example.com/app start"
        doc = _predicted([lines[0], lines[1], "example.com/app stop"])
        r = c.put("/refvals/default", json={"document": doc}, headers=admin_headers())
        assert r.status_code == 201, r.text
        assert c.get("/refvals/default", headers=admin_headers()).json()["document"] == doc
        body = _attest(c, emulator)
        assert body["status"] == "contraindicated" and body["findings"][0] == "refvals.register-mismatch"
        assert UNCOVERED not in body["findings"]  # a register value covers RTMR3; it differs
        [explained] = body["submod"]["tsmr.explanations"]
        assert (explained["register"], explained["seq"], explained["component"]) == ("rtmr3", 3, "app")
        assert explained["expected"] == hashlib.sha384(b"example.com/app stop").hexdigest()
        assert explained["actual"] == hashlib.sha384(b"example.com/app start").hexdigest()

        # the prediction of what the log holds: affirming, even though reference values are required
        r = c.put("/refvals/default", json={"document": _predicted(lines)}, headers=admin_headers())
        assert r.status_code == 201, r.text
        body = _attest(c, emulator)
        assert body["status"] == "affirming" and body["findings"] == [], body["result"]["findings"]
        assert "tsmr.uncovered" not in body["submod"] and "tsmr.explanations" not in body["submod"]

        # a bad predicted member is refused by name, and nothing is stored
        bad = json.loads(json.dumps(doc))
        bad["predicted"]["events"][0]["digests"] = {"sha384": "00"}
        r = c.put("/refvals/default", json={"document": bad}, headers=admin_headers())
        assert r.status_code == 422 and "predicted.events[0].digests.sha384" in r.text
        assert c.get("/refvals/default/versions", headers=admin_headers()).json()["items"][-1]["version"] == 2


def test_serve_without_require_refvals_warns(tmp_path: Any, make_server: Callable[..., Server],
                                            emulator: Emulator) -> None:
    plain = make_server(name="plain", database=f"sqlite:///{tmp_path / 'plain.db'}", trust_root=emulator.trust_root)
    with plain.client() as c:
        body = _attest(c, emulator)
        assert body["status"] == "warning" and body["findings"] == [UNCOVERED]
        vector = body["submod"]["ear.trustworthiness-vector"]
        assert vector["executables"] == 0 and vector["configuration"] == 0 and vector["hardware"] == 2
    by_env = make_server(name="env", database=f"sqlite:///{tmp_path / 'env.db'}", trust_root=emulator.trust_root,
                         env={"TSMR_REQUIRE_REFVALS": "1"})
    with by_env.client() as c:
        assert _attest(c, emulator)["status"] == "contraindicated"
