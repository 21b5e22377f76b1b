"""The verifier's collateral cache in its database: fetched once, shared by replicas, verified on the way back.

A real loopback PCS/PCCS and KDS (tests/pcs_server.py) serves the go-tdx-guest and
go-sev-guest collateral, or the emulator's; the verifier runs in process (the
fixture evidence is from 2023, so its clock is set with the test-only
``create_app(clock=...)``) or as ``tsmr serve`` processes on one database.  Every
test runs on SQLite and on PostgreSQL.  Verdicts through the fetch path are
compared with the verdicts the same verifier gives with the collateral as files.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, update

from pcs_server import PcsServer
from tsmr.evidence.anchors import TrustAnchors
from tsmr.evidence.bundle import make_bundle
from tsmr.service.db import CachedCollateral, Challenge, CollateralLease, Store, utcnow
from tsmr.system import collateral as C

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with")

TDX_TIME = datetime(2023, 7, 1, 1, tzinfo=UTC)  # go-tdx-guest's verification time: its collateral is valid
TDX_DUE = datetime(2023, 7, 7, tzinfo=UTC)  # past the QE identity's and PCK CRL's refresh time, before expiry
TDX_EXPIRED = datetime(2023, 9, 1, tzinfo=UTC)  # past every nextUpdate of the sample collateral
SNP_TIME = datetime(2024, 1, 1, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)  # every document is due for a refresh by then
TDX_QUOTE = "go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
SNP_REPORT = "go-sev-guest/attestation.bin"
PCS_FILES = ("sample_tcbInfo_response", "tcbinfo_issuer_chain.pem", "pckcrl", "pckcrl_issuer_chain.pem",
             "sample_qeIdentity_response", "qeidentity_issuer_chain.pem", "rootcrl.der")
TDX_PATHS = ("/tdx/certification/v4/tcb", "/tdx/certification/v4/qe/identity", "/sgx/certification/v4/pckcrl",
             "/sgx/certification/v4/rootcacrl")
TDX_KEYS = ["tdx.pckcrl?ca=platform", "tdx.qe", "tdx.rootcrl", "tdx.tcb?fmspc=50806f000000"]


class Clock:
    """The time a test verifier judges evidence at; the test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now



@pytest.fixture
def collateral_dir(fixtures: Any, tmp_path: Path) -> Path:
    """go-tdx-guest's PCS responses as the directory --collateral reads."""
    col = tmp_path / "col"
    col.mkdir()
    for name in PCS_FILES:
        (col / name).symlink_to(fixtures / f"go-tdx-guest/{name}")
    return col


def verifier(tmp_path: Path, name: str, db_url: str, clock: Clock, **settings: Any) -> Any:
    """A verifier application in process (enter it with TestClient to run its lifespan)."""
    from tsmr.service.app import create_app
    from tsmr.service.settings import Settings

    state = tmp_path / name
    return create_app(Settings(state_dir=str(state), database_url=db_url, key_path=str(state / "ear.pem"),
                               **settings), clock=clock)


def fixture_bundle(kind: str, evidence: bytes, nonce: bytes) -> dict[str, Any]:
    return make_bundle(nonce=nonce, evidence={"kind": kind, "data": evidence})


def reissue(app: Any, nonce: bytes) -> None:
    """Make the fixture evidence's fixed nonce a fresh challenge of this verifier (it cannot ask for another)."""
    store: Store = app.state.verifier.store
    with store.sessions() as s:
        s.merge(Challenge(nonce=nonce.hex(), created_at=utcnow(), expires_at=utcnow() + timedelta(minutes=5),
                          used_at=None))
        s.commit()


def attest(client: Any, bundle: dict[str, Any]) -> dict[str, Any]:
    reissue(client.app, bytes.fromhex(bundle["nonce"]))
    r = client.post("/attest", json=bundle)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def verdict(body: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """What a relying party acts on: the status and the findings."""
    return body["status"], tuple(sorted(body["findings"]))


def cached_keys(app: Any) -> list[str]:
    keys: list[str] = app.state.verifier.cache.keys()
    return keys


def counter(metrics: str, event: str) -> int:
    return sum(int(n) for n in re.findall(rf'tsmr_collateral_total{{event="{event}",kind="[^"]+"}} (\d+)', metrics))


# --- the store's Cache ------------------------------------------------------------------------------


def test_database_cache_documents_and_leases(db_url: str, fixtures: Any, pcs_server: PcsServer) -> None:
    from tsmr.service.collateral_cache import DatabaseCache

    store = Store.open(db_url)
    try:
        cache = DatabaseCache(store)
        trust = TrustAnchors()
        fetcher = C.Fetcher(pccs_url=pcs_server.url, trust=trust, timeout=2)
        quote = fixtures.read(TDX_QUOTE)
        keys = C.keys_for("tdx", quote, trust=trust)
        docs = [fetcher.fetch(k, now=TDX_TIME) for k in keys]
        assert cache.get(keys[0].id) is None and cache.due(FAR) == []
        for doc in docs:
            cache.put(doc)
        cache.put(docs[0])  # a second put of a key replaces, never fails
        assert cache.keys() == TDX_KEYS
        for doc in docs:
            back = cache.get(doc.key.id)
            assert back == doc  # bytes, chain and times as fetched
            assert back is not None
            C.verify_document(back, trust=trust, now=TDX_TIME)
        # Due: by refresh_after, the most urgent first, bounded by limit.
        order = sorted(docs, key=lambda d: d.refresh_after)
        assert cache.due(order[0].refresh_after - timedelta(seconds=1)) == []
        assert cache.due(FAR) == order and cache.due(FAR, limit=2) == order[:2]
        # A row that is no document (edited by hand, or damaged) reads as absent, not as an error.
        with store.sessions() as s:
            s.execute(update(CachedCollateral).where(CachedCollateral.key_id == "tdx.qe")
                      .values(document={"key": "tdx.qe", "body": "%%%"}))
            s.commit()
        assert cache.get("tdx.qe") is None and len(cache.due(FAR)) == 3
        # A row holding another key's document is refused too.
        with store.sessions() as s:
            s.execute(update(CachedCollateral).where(CachedCollateral.key_id == "tdx.qe")
                      .values(document=docs[0].to_json()))
            s.commit()
        assert cache.get("tdx.qe") is None

        # Leases: one holder at a time; the holder may renew; a stale one is taken over; only the owner releases.
        assert cache.claim("k", owner="a", ttl=30) is True
        assert cache.claim("k", owner="b", ttl=30) is False
        assert cache.claim("k", owner="a", ttl=30) is True
        cache.release("k", owner="b")
        assert cache.claim("k", owner="b", ttl=30) is False
        cache.release("k", owner="a")
        assert cache.claim("k", owner="b", ttl=0) is True  # ...that runs out at once
        assert cache.claim("k", owner="c", ttl=30) is True
        with store.sessions() as s:
            assert s.execute(select(CollateralLease.owner).where(CollateralLease.key_id == "k")).scalar() == "c"
    finally:
        store.close()


def test_one_lease_among_concurrent_claimants(db_url: str) -> None:
    """Sixteen threads (each its own connection) claim one key at once: exactly one gets it."""
    from tsmr.service.collateral_cache import DatabaseCache

    store = Store.open(db_url)
    try:
        cache = DatabaseCache(store)
        barrier = threading.Barrier(16)
        won: list[str] = []

        def one(i: int) -> None:
            barrier.wait()
            if cache.claim("tdx.qe", owner=f"worker-{i}", ttl=30):
                won.append(f"worker-{i}")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(won) == 1
    finally:
        store.close()


# --- fixture evidence through the service ------------------------------------------------------------


def test_tdx_fixture_quote_fetched_cached_and_expired(db_url: str, fixtures: Any, pcs_server: PcsServer,
                                                      collateral_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    quote = fixtures.read(TDX_QUOTE)
    bundle = fixture_bundle("tdx", quote, quote[48 + 520:48 + 584])  # the quote's REPORTDATA is its nonce
    clock = Clock(TDX_TIME)
    # The files the operator gave win over the source: nothing is fetched (or cached) for them.
    offline_app = verifier(tmp_path, "offline", f"sqlite:///{tmp_path / 'offline.db'}", clock,
                           collateral=str(collateral_dir), pccs_url=pcs_server.url)
    with TestClient(offline_app) as c:
        offline = attest(c, bundle)
    assert sum(pcs_server.counts.values()) == 0 and cached_keys(offline_app) == []
    # The fixture platform's TCB is in none of the sample's levels: every collateral check passes, the last fails.
    assert verdict(offline) == ("contraindicated", ("evidence.tdx.tcb_status", "policy.deny"))

    app = verifier(tmp_path, "fetching", db_url, clock, pccs_url=pcs_server.url, fetch_timeout=2.0)
    with TestClient(app) as c:
        fetched = attest(c, bundle)
        assert verdict(fetched) == verdict(offline)
        assert {p: pcs_server.counts[p] for p in TDX_PATHS} == dict.fromkeys(TDX_PATHS, 1)
        assert cached_keys(app) == TDX_KEYS
        # The same evidence again: from the cache, nothing fetched.
        again = attest(c, bundle)
        assert verdict(again) == verdict(offline) and again["id"] != fetched["id"]
        assert sum(pcs_server.counts.values()) == 4
        metrics = c.get("/metrics").text
        assert counter(metrics, "fetched") == 4 and counter(metrics, "cache-hit") >= 4

        # The source goes down; the cached copies are still valid: the same verdict.
        pcs_server.mode = "down"
        assert verdict(attest(c, bundle)) == verdict(offline)

        # Past the copies' nextUpdate with the source down: the verdict fails, saying why.
        clock.now = TDX_EXPIRED
        expired = attest(c, bundle)
        assert expired["status"] == "contraindicated"
        found = {f["id"]: f for f in expired["result"]["findings"]}
        assert "collateral.expired" in found and found["collateral.expired"]["severity"] == "error"
        assert "expired at 2023-" in found["collateral.expired"]["message"]
        assert "unreachable" in found["collateral.expired"]["message"]
        assert cached_keys(app) == TDX_KEYS  # the old copies stay; nothing replaced them
        assert counter(c.get("/metrics").text, "fetch-failed") >= 1


def test_snp_fixture_report_same_verdict_as_with_files(db_url: str, fixtures: Any, pcs_server: PcsServer,
                                                       milan_ark: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    report = fixtures.read(SNP_REPORT)
    bundle = fixture_bundle("snp", report, report[0x50:0x90])  # REPORT_DATA
    clock = Clock(SNP_TIME)
    ask = tmp_path / "ask-milan.pem"  # the first certificate of KDS's cert_chain
    ask.write_bytes(x509.load_pem_x509_certificates((fixtures / "go-sev-guest/milan.testcer").read_bytes())[0]
                    .public_bytes(serialization.Encoding.PEM))
    # The fixture guest's policy allows debugging: accepted (with a warning) so that a verdict can affirm.
    offline_app = verifier(tmp_path, "offline", f"sqlite:///{tmp_path / 'offline.db'}", clock, allow_debug=True,
                           snp_ark=str(milan_ark), snp_vcek=str(fixtures / "go-sev-guest/vcek.testcer"),
                           snp_ask=str(ask))
    with TestClient(offline_app) as c:
        offline = attest(c, bundle)
    # Verified; a warning for the debug policy allowed and the measurement no reference value covers.
    assert offline["result"]["kind"] == "snp" and offline["status"] == "warning", offline["result"]["findings"]

    app = verifier(tmp_path, "fetching", db_url, clock, allow_debug=True, snp_ark=str(milan_ark),
                   kds_url=pcs_server.url, fetch_timeout=2.0)
    with TestClient(app) as c:
        first = attest(c, bundle)
        assert verdict(first) == verdict(offline), (offline["result"]["findings"], first["result"]["findings"])
        assert verdict(attest(c, bundle)) == verdict(offline)
    hwid = report[0x1A0:0x1E0].hex()
    assert pcs_server.counts["/vcek/v1/Milan/cert_chain"] == 1 and pcs_server.counts[f"/vcek/v1/Milan/{hwid}"] == 1
    assert sum(pcs_server.counts.values()) == 2
    assert cached_keys(app) == ["snp.chain?product=Milan",
                                f"snp.vcek?blSPL=2&hwid={hwid}&product=Milan&snpSPL=5&teeSPL=0&ucodeSPL=68"]

    # No VCEK to be had (the source is down, nothing cached): contraindicated, saying why, not an error.
    cold = verifier(tmp_path, "cold", f"sqlite:///{tmp_path / 'cold.db'}", clock, allow_debug=True,
                    snp_ark=str(milan_ark), kds_url=pcs_server.url, fetch_timeout=1.0)
    pcs_server.mode = "down"
    with TestClient(cold) as c:
        body = attest(c, bundle)
    assert body["status"] == "contraindicated" and "collateral.unavailable" in body["findings"]
    assert cached_keys(cold) == []


def test_no_fetch_for_a_nonce_that_will_be_refused(db_url: str, fixtures: Any, pcs_server: PcsServer,
                                                   tmp_path: Path) -> None:
    """Fetching costs the sources: a request whose nonce is unknown, used or expired fetches nothing."""
    from fastapi.testclient import TestClient

    quote = fixtures.read(TDX_QUOTE)
    bundle = fixture_bundle("tdx", quote, quote[48 + 520:48 + 584])
    app = verifier(tmp_path, "v", db_url, Clock(TDX_TIME), pccs_url=pcs_server.url, fetch_timeout=2.0)
    with TestClient(app) as c:
        r = c.post("/attest", json=bundle)  # never issued
        assert r.status_code == 403 and r.json()["error"] == "freshness.nonce-unknown"
        assert sum(pcs_server.counts.values()) == 0
        attest(c, bundle)
        assert sum(pcs_server.counts.values()) == 4
        r = c.post("/attest", json=bundle)  # already used
        assert r.status_code == 409
    assert sum(pcs_server.counts.values()) == 4


@pytest.mark.parametrize("mode", ["garbage", "wrong-fmspc", "bad-signature", "slow"])
def test_bad_documents_are_findings_and_never_cached(db_url: str, fixtures: Any, pcs_server: PcsServer, tmp_path: Path,
                                                     mode: str) -> None:
    from fastapi.testclient import TestClient

    quote = fixtures.read(TDX_QUOTE)
    bundle = fixture_bundle("tdx", quote, quote[48 + 520:48 + 584])
    timeout = 0.3 if mode == "slow" else 2.0
    app = verifier(tmp_path, "v", db_url, Clock(TDX_TIME), pccs_url=pcs_server.url, fetch_timeout=timeout)
    pcs_server.mode, pcs_server.slow_seconds = mode, 3.0
    with TestClient(app) as c:
        start = time.monotonic()
        body = attest(c, bundle)
        took = time.monotonic() - start
    assert body["status"] == "contraindicated"
    if mode == "slow":  # four documents, each given up after the timeout: an answer in seconds, not minutes
        reasons = {f["context"]["key"]: f["context"]["reason"] for f in body["result"]["findings"]
                   if f["id"] == "collateral.unavailable"}
        assert reasons == dict.fromkeys(TDX_KEYS, "timeout") and took < 4 * 2 * timeout + 2
        assert cached_keys(app) == []
        return
    unavailable = [f for f in body["result"]["findings"] if f["id"] == "collateral.unavailable"]
    assert unavailable and all(f["severity"] == "error" for f in unavailable)
    bad = {f["context"]["key"]: f["context"]["reason"] for f in unavailable}
    if mode == "wrong-fmspc":  # only the TCB info has an FMSPC: the rest is fine and cached
        assert bad == {"tdx.tcb?fmspc=50806f000000": "wrong-document"}
        assert "50806f000000" in unavailable[0]["message"] and pcs_server.url in unavailable[0]["message"]
        assert "tdx.tcb?fmspc=50806f000000" not in cached_keys(app) and len(cached_keys(app)) == 3
    else:
        assert set(bad) >= {"tdx.tcb?fmspc=50806f000000", "tdx.qe"}
        assert set(bad.values()) <= {"malformed", "bad-signature", "wrong-document"}
        assert not set(bad) & set(cached_keys(app))


def test_a_tampered_cached_document_is_not_used(db_url: str, fixtures: Any, pcs_server: PcsServer, tmp_path: Path) -> None:
    """A database row is trusted no more than the network: a changed body fails verification when read back."""
    from fastapi.testclient import TestClient

    quote = fixtures.read(TDX_QUOTE)
    bundle = fixture_bundle("tdx", quote, quote[48 + 520:48 + 584])
    app = verifier(tmp_path, "v", db_url, Clock(TDX_TIME), pccs_url=pcs_server.url, fetch_timeout=2.0)
    with TestClient(app) as c:
        good = attest(c, bundle)
        store: Store = app.state.verifier.store
        with store.sessions() as s:
            doc = dict(s.get(CachedCollateral, "tdx.tcb?fmspc=50806f000000").document)  # type: ignore[union-attr]
            body = base64.b64decode(doc["body"]).replace(b'"tcbEvaluationDataNumber":', b'"tcbEvaluationDataNumber":1')
            doc["body"] = base64.b64encode(body).decode()
            s.execute(update(CachedCollateral).where(CachedCollateral.key_id == "tdx.tcb?fmspc=50806f000000")
                      .values(document=doc))
            s.commit()
        pcs_server.mode = "down"
        body2 = attest(c, bundle)
    assert good["status"] == "contraindicated" and "collateral.unavailable" not in good["findings"]
    assert body2["status"] == "contraindicated"
    assert [f["context"]["key"] for f in body2["result"]["findings"] if f["id"].startswith("collateral.")] == [
        "tdx.tcb?fmspc=50806f000000"]


def test_refresh_thread_fetches_documents_that_are_due(db_url: str, fixtures: Any, pcs_server: PcsServer,
                                                        tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    quote = fixtures.read(TDX_QUOTE)
    bundle = fixture_bundle("tdx", quote, quote[48 + 520:48 + 584])
    clock = Clock(TDX_TIME)
    app = verifier(tmp_path, "v", db_url, clock, pccs_url=pcs_server.url, fetch_timeout=2.0, collateral_refresh=0.1)
    with TestClient(app) as c:
        attest(c, bundle)
        v = app.state.verifier
        assert v.refresher is not None and v.refresher.thread.is_alive()
        before = {d.key.id: d for d in (v.cache.get(k) for k in TDX_KEYS) if d is not None}
        due = sorted(k for k, d in before.items() if d.refresh_after <= TDX_DUE)
        assert due and len(due) < 4  # some documents are due by then, not all
        time.sleep(0.5)
        assert sum(pcs_server.counts.values()) == 4  # nothing is due yet: the thread fetched nothing
        clock.now = TDX_DUE
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum(pcs_server.counts.values()) < 4 + len(due):
            time.sleep(0.05)
        time.sleep(0.3)  # ...and no more than that
        assert sum(pcs_server.counts.values()) == 4 + len(due)
        after = {k: v.cache.get(k) for k in TDX_KEYS}
        for k in TDX_KEYS:
            assert after[k] is not None
            assert (after[k].fetched_at == TDX_DUE) == (k in due)  # type: ignore[union-attr]
    assert not v.refresher.thread.is_alive()  # stopped with the application


def _test_ca(tmp_path: Path) -> tuple[Any, Path]:
    """A throwaway CA and a server context for 127.0.0.1 it certified: (ssl server context, CA PEM path)."""
    import ipaddress
    import ssl

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test PCCS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pccs")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    (tmp_path / "tls").mkdir()
    cert_path, key_path, ca_path = tmp_path / "tls/cert.pem", tmp_path / "tls/key.pem", tmp_path / "tls/ca.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, ca_path


def test_https_source_checked_against_the_given_ca(db_url: str, fixtures: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    context, ca = _test_ca(tmp_path)
    quote = fixtures.read(TDX_QUOTE)
    bundle = fixture_bundle("tdx", quote, quote[48 + 520:48 + 584])
    with PcsServer.from_fixtures(fixtures.root, tls=context) as pcs_server:
        assert pcs_server.url.startswith("https://")
        # Without the CA: the system's CAs do not know the server, so nothing is fetched or cached.
        plain = verifier(tmp_path, "plain", f"sqlite:///{tmp_path / 'plain.db'}", Clock(TDX_TIME),
                         pccs_url=pcs_server.url, fetch_timeout=2.0)
        with TestClient(plain) as c:
            body = attest(c, bundle)
        refused = [f for f in body["result"]["findings"] if f["id"] == "collateral.unavailable"]
        assert len(refused) == 4 and all("CERTIFICATE_VERIFY_FAILED" in f["message"] for f in refused)
        assert cached_keys(plain) == []
        app = verifier(tmp_path, "v", db_url, Clock(TDX_TIME), pccs_url=pcs_server.url, fetch_timeout=2.0,
                       collateral_cacert=str(ca))
        with TestClient(app) as c:
            body = attest(c, bundle)
        assert verdict(body) == ("contraindicated", ("evidence.tdx.tcb_status", "policy.deny"))
        assert cached_keys(app) == TDX_KEYS


# --- replicas ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["replicas", "workers"])
def test_processes_starting_cold_fetch_each_document_once(db_url: str, emulator: Any, make_server: Any,
                                                          tmp_path: Path, layout: str) -> None:
    """Six first attestations at once, on two `tsmr serve` processes on one database ("replicas") or on
    one `tsmr serve --workers 2` (whose workers get the collateral settings through the environment):
    four fetches in all, and the verdict of the same verifier given the collateral as a file."""
    from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner

    from .conftest import COVERING, admin_headers

    pcs_server = PcsServer().add_emulated_tdx(EmulatedTDXSigner(emulator.trust_root.parent), now=datetime.now(UTC)).start()
    try:
        offline = make_server(name="offline", database=f"sqlite:///{tmp_path / 'offline.db'}",
                              trust_root=emulator.trust_root)
        offline.cover()
        # The root alone (the Server helper would add the emulator's collateral.json from beside it).
        root = tmp_path / "root" / emulator.trust_root.name
        root.parent.mkdir()
        shutil.copy(emulator.trust_root, root)
        extra = ["--pccs", pcs_server.url, "--fetch-timeout", "3"]
        if layout == "replicas":
            a = make_server(name="a", database=db_url, trust_root=root, extra=extra, wait=False)
            b = make_server(name="b", database=db_url, trust_root=root, extra=extra, wait=False)
            a.wait_ready()
            b.wait_ready()
        else:
            a = b = make_server(name="a", database=db_url, trust_root=root, extra=extra, workers=2)
        with a.client() as ca:
            r = ca.put("/refvals/default", json={"document": COVERING}, headers=admin_headers())
            assert r.status_code == 201, r.text

        def run(server: Any) -> dict[str, Any]:
            with server.client() as cl:
                nonce = cl.post("/challenge").json()["nonce"]
                r = cl.post("/attest", json=emulator.bundle(nonce))
                assert r.status_code == 201, r.text
                body: dict[str, Any] = r.json()
                return body

        expected = verdict(run(offline))
        results: list[dict[str, Any]] = []
        barrier = threading.Barrier(6)

        def one(server: Any) -> None:
            barrier.wait()
            results.append(run(server))

        threads = [threading.Thread(target=one, args=(s,)) for s in (a, b) * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(results) == 6
        assert {verdict(r) for r in results} == {expected}
        assert {p: pcs_server.counts[p] for p in TDX_PATHS} == dict.fromkeys(TDX_PATHS, 1), dict(pcs_server.counts)
        # Each process's /metrics sums its workers: count each process once.
        fetched = sum(counter(httpx.get(s.url + "/metrics").text, "fetched") for s in {id(a): a, id(b): b}.values())
        assert fetched == 4
        # One log line per fetch, naming the document and where it came from.
        logs = "".join(s.log_path.read_text() for s in {id(a): a, id(b): b}.values())
        lines = [json.loads(x) for x in logs.splitlines() if '"collateral fetched"' in x]
        assert sorted(x["key"] for x in lines) == ["tdx.pckcrl?ca=platform", "tdx.qe", "tdx.rootcrl",
                                                   "tdx.tcb?fmspc=00ffffffffff"]
        assert all(x["url"].startswith(pcs_server.url) for x in lines)
    finally:
        pcs_server.stop()


# --- settings -----------------------------------------------------------------------------------------


def test_collateral_settings_round_trip_through_the_environment() -> None:
    from tsmr.service.settings import Settings

    s = Settings(pccs_url="https://pccs.example:8081", kds_url="https://kds.example", kds_product="Genoa",
                 fetch_timeout=2.5, collateral_refresh=60.0, collateral_cacert="/etc/tsmr/pccs-ca.pem")
    env = s.to_env()
    assert env["TSMR_PCCS_URL"] == "https://pccs.example:8081" and env["TSMR_KDS_PRODUCT"] == "Genoa"
    assert Settings.from_env(env) == s


@pytest.mark.parametrize("args, message", [
    (["--kds", "http://127.0.0.1:9"], "--ark"),
    (["--pccs", "ftp://pccs.example"], "--pccs"),
    (["--pccs", "http://127.0.0.1:9", "--kds-product", "Naples"], "Naples"),
])
def test_serve_refuses_collateral_options_that_cannot_work(tmp_path: Path, args: list[str], message: str) -> None:
    import subprocess
    import sys

    from .conftest import SERVE

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    r = subprocess.run([sys.executable, SERVE, "serve", "--port", "0", "--state-dir", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
