"""Collateral fetched from a PCS/PCCS and a KDS (tsmr.system.collateral, tsmr collateral fetch).

A real HTTP server on 127.0.0.1 (tests/pcs_server.py) serves the fixture collateral
(go-tdx-guest, go-sev-guest) and the emulator's in the exact PCS/PCCS and KDS response
shapes; the same evidence must get the same verdict through the fetch path as through
the offline files, a second resolve must not fetch again, and every fault (down, slow,
garbage, bad signature, another FMSPC's document, expired, redirected, oversized) must
give a clear finding or error and leave nothing cached.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from pcs_server import PcsServer, closed_port_url
from tsmr.errors import EvidenceError, InputError
from tsmr.evidence import bundle, verify
from tsmr.evidence.anchors import TrustAnchors
from tsmr.system import collateral as C
from tsmr.system.trust import load_anchors

TDX_TIME = datetime(2023, 7, 1, 1, tzinfo=UTC)  # go-tdx-guest's verification time; collateral valid then
TDX_EXPIRED = datetime(2023, 9, 1, tzinfo=UTC)  # past the TCB info's, QE identity's and PCK CRL's nextUpdate
SNP_TIME = datetime(2024, 1, 1, tzinfo=UTC)
TDX_QUOTE = "go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
SNP_REPORT = "go-sev-guest/attestation.bin"
PCS_FILES = ("sample_tcbInfo_response", "tcbinfo_issuer_chain.pem", "pckcrl", "pckcrl_issuer_chain.pem",
             "sample_qeIdentity_response", "qeidentity_issuer_chain.pem", "rootcrl.der")



def outcome(kind: str, data: bytes, anchors: TrustAnchors, now: datetime, **kw: Any) -> tuple[str, Any]:
    """A verification's verdict in comparable form: the failed check, or the claims that matter."""
    try:
        claims = verify(kind, data, nonce=None, now=now, anchors=anchors, **kw).claims
    except EvidenceError as exc:
        return "failed", exc.check
    if kind == "tdx":
        return "verified", (claims.tcb_status, claims.qe_tcb_status, claims.advisory_ids, claims.checks,
                            dict(claims.registers))
    return "verified", (claims.measurement, claims.tcb_checked, claims.reported_tcb, claims.ark_sha256,
                        claims.chip_id)


def tdx_fetcher(server: PcsServer, trust: TrustAnchors, timeout: float = 2.0) -> C.Fetcher:
    return C.Fetcher(pccs_url=server.url, trust=trust, timeout=timeout)


def ids(findings: list[Any]) -> list[str]:
    return [f.id for f in findings]


# --- the same verdict through the fetch path as through the files ---------------------------------


def test_tdx_fixture_quote_same_verdict_fetched_as_from_files(fixtures: Any, pcs_server: PcsServer,
                                                              tmp_path: Path) -> None:
    quote = fixtures.read(TDX_QUOTE)
    col = tmp_path / "col"
    col.mkdir()
    for name in PCS_FILES:
        (col / name).symlink_to(fixtures / f"go-tdx-guest/{name}")
    offline = outcome("tdx", quote, load_anchors(collateral=str(col)), TDX_TIME)
    trust = TrustAnchors()
    anchors, findings = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust),
                                  cache=C.MemoryCache(), now=TDX_TIME)
    assert findings == []
    assert anchors.tdx_collateral is not None and anchors.tdx_collateral.root_ca_crl is not None
    fetched = outcome("tdx", quote, anchors, TDX_TIME)
    # Every collateral check passes and the platform TCB is in none of the sample's levels (as go-tdx-guest
    # and Intel's QVL say): the same last check fails both ways.
    assert fetched == offline == ("failed", "tdx.tcb_status")
    assert dict(pcs_server.counts) == {"/tdx/certification/v4/tcb": 1, "/tdx/certification/v4/qe/identity": 1,
                                       "/sgx/certification/v4/pckcrl": 1, "/sgx/certification/v4/rootcacrl": 1}
    assert pcs_server.requests[0] == "/tdx/certification/v4/tcb?fmspc=50806f000000"
    assert "/sgx/certification/v4/pckcrl?ca=platform" in pcs_server.requests


def test_snp_fixture_report_same_verdict_fetched_as_from_files(fixtures: Any, pcs_server: PcsServer,
                                                               milan_ark: Path) -> None:
    report = fixtures.read(SNP_REPORT)
    # Offline: the VCEK and the KDS cert_chain file (ASK, then the ARK the operator trusts).
    offline_anchors = load_anchors(vcek=str(fixtures / "go-sev-guest/vcek.testcer"),
                                   ask=str(fixtures / "go-sev-guest/milan.testcer"))
    offline = outcome("snp", report, offline_anchors, SNP_TIME, allow_debug=True)
    trust = load_anchors(ark=str(milan_ark))
    fetcher = C.Fetcher(kds_url=pcs_server.url, trust=trust, timeout=2)
    anchors, findings = C.resolve("snp", report, trust=trust, fetcher=fetcher, cache=C.MemoryCache(), now=SNP_TIME)
    assert findings == [] and anchors.snp_vcek is not None and anchors.snp_ask is not None
    assert anchors.snp_ark is trust.snp_ark  # the ARK is the pinned one, never a fetched one
    fetched = outcome("snp", report, anchors, SNP_TIME, allow_debug=True)
    assert fetched == offline and fetched[0] == "verified" and fetched[1][1] is True  # the VCEK's TCB was checked
    hwid = fixtures.read(SNP_REPORT)[0x1A0:0x1E0].hex()
    assert pcs_server.counts["/vcek/v1/Milan/cert_chain"] == 1
    assert pcs_server.counts[f"/vcek/v1/Milan/{hwid}"] == 1
    assert f"/vcek/v1/Milan/{hwid}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68" in pcs_server.requests


def test_emulated_tdx_quote_verifies_through_the_fetch_path(pcs_server: PcsServer, tmp_path: Path) -> None:
    from emulated_collateral import collateral as emulated_collateral
    from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner

    signer = EmulatedTDXSigner(tmp_path / "qe")
    now = datetime.now(UTC)
    quote = signer.quote(report_data=b"nonce", registers={})
    pcs_server.tcb.clear()
    pcs_server.add_emulated_tdx(signer, status="OutOfDate", advisories=("INTEL-SA-00001",), now=now)
    trust = TrustAnchors(tdx_root=signer.certs["root"])
    assert [k.id for k in C.keys_for("tdx", quote, trust=trust)] == [
        "tdx.tcb?fmspc=00ffffffffff", "tdx.qe", "tdx.pckcrl?ca=platform", "tdx.rootcrl"]
    anchors, findings = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust),
                                  cache=C.MemoryCache(), now=now)
    assert findings == []
    offline = replace(trust, tdx_collateral=emulated_collateral(signer, status="OutOfDate",
                                                                advisories=("INTEL-SA-00001",), now=now))
    fetched = outcome("tdx", quote, anchors, now)
    assert fetched == outcome("tdx", quote, offline, now)
    assert fetched[0] == "verified" and fetched[1][:3] == ("OutOfDate", "UpToDate", ("INTEL-SA-00001",))
    # Without the emulator's root the fetched documents are refused: nothing fetched is a trust anchor.
    fetcher = tdx_fetcher(pcs_server, TrustAnchors())
    for key in C.keys_for("tdx", quote, trust=trust):
        with pytest.raises(C.CollateralUnavailable) as refused:
            fetcher.fetch(key, now=now)
        assert refused.value.reason == ("wrong-document" if key.kind == "tdx.rootcrl" else "bad-signature")
    # Nor does a quote whose PCK chain does not verify to the root name any document to fetch: a made-up
    # PCK certificate cannot send the verifier to fetch for an FMSPC of the attacker's choosing.
    before = sum(pcs_server.counts.values())
    assert C.keys_for("tdx", quote, trust=TrustAnchors(), now=now) == []
    anchors, findings = C.resolve("tdx", quote, trust=TrustAnchors(), fetcher=fetcher, cache=C.MemoryCache(), now=now)
    assert anchors.tdx_collateral is None and findings == []
    assert sum(pcs_server.counts.values()) == before


def test_emulated_snp_report_verifies_through_the_fetch_path(pcs_server: PcsServer, tmp_path: Path) -> None:
    from tsmr.backends.emulated_evidence.snp import EmulatedSNPSigner

    signer = EmulatedSNPSigner(tmp_path / "sp")
    report = signer.report(report_data=bytes(64), measurement=bytes(48))
    pcs_server.add_emulated_snp(signer)
    trust = TrustAnchors(snp_ark=signer.der("ark"))
    now = datetime.now(UTC)
    anchors, findings = C.resolve("snp", report, trust=trust, fetcher=C.Fetcher(kds_url=pcs_server.url, trust=trust),
                                  cache=C.MemoryCache(), now=now)
    assert findings == []
    offline = replace(trust, snp_vcek=signer.der("vcek"), snp_ask=signer.der("ask"))
    assert outcome("snp", report, anchors, now) == outcome("snp", report, offline, now)
    assert outcome("snp", report, anchors, now)[0] == "verified"


# --- caching ---------------------------------------------------------------------------------------


def test_second_resolve_does_not_fetch_and_documents_round_trip(fixtures: Any, pcs_server: PcsServer) -> None:
    quote, trust, cache = fixtures.read(TDX_QUOTE), TrustAnchors(), C.MemoryCache()
    first, _ = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache, now=TDX_TIME)
    counts = dict(pcs_server.counts)
    assert sum(counts.values()) == 4 and len(cache) == 4
    # Another fetcher (another request, another worker) with the same cache: served from it.
    second, findings = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache,
                                 now=TDX_TIME + timedelta(days=1))
    assert findings == [] and dict(pcs_server.counts) == counts
    assert second.tdx_collateral == first.tdx_collateral
    for doc in cache.due(datetime(2100, 1, 1, tzinfo=UTC)):
        again = C.Document.from_json(json.loads(json.dumps(doc.to_json())))
        assert again == doc
        C.verify_document(again, trust=trust, now=TDX_TIME)
    tcb = cache.get("tdx.tcb?fmspc=50806f000000")
    assert tcb is not None and tcb.not_after == datetime(2023, 7, 18, 8, 42, 58, tzinfo=UTC)
    # 3/4 of the way from the fetch (2023-07-01 01:00) to nextUpdate, which is earlier than a day before it.
    assert tcb.refresh_after == TDX_TIME + (tcb.not_after - TDX_TIME) * 3 / 4
    assert tcb.chain == (fixtures / "go-tdx-guest/tcbinfo_issuer_chain.pem").read_bytes()


def test_files_the_operator_gave_win_and_nothing_is_fetched(fixtures: Any, pcs_server: PcsServer,
                                                            tmp_path: Path) -> None:
    col = tmp_path / "col"
    col.mkdir()
    for name in PCS_FILES:
        (col / name).symlink_to(fixtures / f"go-tdx-guest/{name}")
    given = load_anchors(collateral=str(col))
    anchors, findings = C.resolve("tdx", fixtures.read(TDX_QUOTE), trust=given,
                                  fetcher=tdx_fetcher(pcs_server, given), cache=C.MemoryCache(), now=TDX_TIME)
    assert anchors is given and findings == [] and sum(pcs_server.counts.values()) == 0


def test_concurrent_resolves_fetch_each_document_once(fixtures: Any, pcs_server: PcsServer) -> None:
    quote, trust, cache = fixtures.read(TDX_QUOTE), TrustAnchors(), C.MemoryCache()
    pcs_server.mode, pcs_server.slow_seconds = "slow", 0.2  # long enough for the others to find the lease held
    results: list[Any] = []

    def one(i: int) -> None:
        results.append(C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache,
                                 now=TDX_TIME, owner=f"worker-{i}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 4 and all(f == [] for _, f in results)
    assert all(a.tdx_collateral == results[0][0].tdx_collateral for a, _ in results)
    assert sorted(pcs_server.counts.values()) == [1, 1, 1, 1]


def test_refresh_due_fetches_again_and_keeps_the_copy_when_the_source_fails(fixtures: Any,
                                                                            pcs_server: PcsServer) -> None:
    quote, trust, cache = fixtures.read(TDX_QUOTE), TrustAnchors(), C.MemoryCache()
    fetcher = tdx_fetcher(pcs_server, trust, timeout=1)
    C.resolve("tdx", quote, trust=trust, fetcher=fetcher, cache=cache, now=TDX_TIME)
    later = datetime(2023, 7, 7, tzinfo=UTC)  # past the QE identity's and PCK CRL's refresh_after, before expiry
    due = {d.key.id for d in cache.due(later)}
    assert due == {"tdx.qe", "tdx.pckcrl?ca=platform"}
    old = cache.get("tdx.qe")
    pcs_server.mode = "down"
    assert C.refresh_due(trust=trust, fetcher=fetcher, cache=cache, now=later, owner="refresher") == 0
    assert cache.get("tdx.qe") == old
    pcs_server.mode = "ok"
    # The failed refresh keeps its lease until it runs out (no other refresher hammers a source that is down).
    assert C.refresh_due(trust=trust, fetcher=fetcher, cache=cache, now=later, owner="other") == 0
    assert C.refresh_due(trust=trust, fetcher=fetcher, cache=cache, now=later, owner="refresher") == 2
    fresh = cache.get("tdx.qe")
    assert fresh is not None and fresh.fetched_at == later and fresh.refresh_after > later
    assert pcs_server.counts["/tdx/certification/v4/qe/identity"] == 2


def test_resolve_uses_a_due_copy_when_refreshing_fails(fixtures: Any, pcs_server: PcsServer) -> None:
    quote, trust, cache = fixtures.read(TDX_QUOTE), TrustAnchors(), C.MemoryCache()
    C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache, now=TDX_TIME)
    pcs_server.mode = "down"
    later = datetime(2023, 7, 7, tzinfo=UTC)
    anchors, findings = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache,
                                  now=later)
    assert anchors.tdx_collateral is not None
    assert sorted(ids(findings)) == ["collateral.refresh-failed"] * 2
    assert all(f.severity == "info" and f.context["reason"] == "unreachable" for f in findings)


# --- faults: a clear finding, nothing cached -------------------------------------------------------


@pytest.mark.parametrize("mode, reason", [("down", "unreachable"), ("garbage", "malformed"),
                                          ("bad-signature", "bad-signature"), ("redirect", "http-status"),
                                          ("huge", "malformed")])
def test_tdx_source_faults(fixtures: Any, pcs_server: PcsServer, mode: str, reason: str) -> None:
    quote, trust, cache = fixtures.read(TDX_QUOTE), TrustAnchors(), C.MemoryCache()
    pcs_server.mode = mode
    anchors, findings = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache,
                                  now=TDX_TIME)
    assert anchors.tdx_collateral is None and len(cache) == 0
    assert ids(findings) == ["collateral.unavailable"] * 4
    assert all(f.severity == "error" and f.context["reason"] == reason for f in findings), findings
    assert "tdx.tcb?fmspc=50806f000000" in findings[0].message and pcs_server.url in findings[0].message
    # Verification without it then says what it could not check (here: fails later, as without collateral).
    assert outcome("tdx", quote, anchors, TDX_TIME)[0] == "verified"


@pytest.mark.parametrize("mode, reason", [("garbage", "malformed"), ("bad-signature", "bad-signature"),
                                          ("down", "unreachable")])
def test_snp_source_faults(fixtures: Any, pcs_server: PcsServer, milan_ark: Path, mode: str, reason: str) -> None:
    trust, cache = load_anchors(ark=str(milan_ark)), C.MemoryCache()
    pcs_server.mode = mode
    anchors, findings = C.resolve("snp", fixtures.read(SNP_REPORT), trust=trust, cache=cache, now=SNP_TIME,
                                  fetcher=C.Fetcher(kds_url=pcs_server.url, trust=trust, timeout=2))
    assert anchors.snp_vcek is None and anchors.snp_ask is None and len(cache) == 0
    assert ids(findings) == ["collateral.unavailable"] * 2
    assert {f.context["reason"] for f in findings} == {reason}


def test_slow_source_times_out(fixtures: Any, pcs_server: PcsServer) -> None:
    trust = TrustAnchors()
    pcs_server.mode, pcs_server.slow_seconds = "slow", 1.5
    key = C.keys_for("tdx", fixtures.read(TDX_QUOTE), trust=trust)[0]
    with pytest.raises(C.CollateralUnavailable) as e:
        tdx_fetcher(pcs_server, trust, timeout=0.3).fetch(key, now=TDX_TIME)
    assert e.value.reason == "timeout" and "0.3 s" in str(e.value)
    cache = C.MemoryCache()
    _, findings = C.resolve("tdx", fixtures.read(TDX_QUOTE), trust=trust, cache=cache, now=TDX_TIME,
                            fetcher=tdx_fetcher(pcs_server, trust, timeout=0.2))
    assert {f.context["reason"] for f in findings} == {"timeout"} and len(cache) == 0
    # A byte every 0.1 s: every read is within 0.3 s, the whole answer is not within 0.6 s.
    pcs_server.mode, pcs_server.slow_seconds = "trickle", 1.0
    with pytest.raises(C.CollateralUnavailable) as e:
        tdx_fetcher(pcs_server, trust, timeout=0.3).fetch(key, now=TDX_TIME)
    assert e.value.reason == "timeout" and "0.6 s in all" in str(e.value)


def test_a_valid_document_for_another_fmspc_is_refused(fixtures: Any, pcs_server: PcsServer) -> None:
    quote, trust, cache = fixtures.read(TDX_QUOTE), TrustAnchors(), C.MemoryCache()
    pcs_server.mode = "wrong-fmspc"  # 90c06f000000's TCB info at 50806f000000's URL
    anchors, findings = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache,
                                  now=TDX_TIME)
    assert ids(findings) == ["collateral.unavailable"]
    assert findings[0].context["reason"] == "wrong-document" and "90c06f000000" in findings[0].message
    assert cache.get("tdx.tcb?fmspc=50806f000000") is None and len(cache) == 3
    assert anchors.tdx_collateral is None  # no TCB info, no collateral


def test_another_products_ark_is_refused(fixtures: Any, pcs_server: PcsServer, tmp_path: Path) -> None:
    genoa = x509.load_pem_x509_certificates((fixtures / "go-sev-guest/trust/ask_ark_genoa.pem").read_bytes())[1]
    trust = TrustAnchors(snp_ark=genoa.public_bytes(serialization.Encoding.DER))
    keys = C.keys_for("snp", fixtures.read(SNP_REPORT), trust=trust, product="Milan")
    with pytest.raises(C.CollateralUnavailable) as e:
        C.Fetcher(kds_url=pcs_server.url, trust=trust).fetch(keys[0], now=SNP_TIME)
    assert e.value.reason == "wrong-document" and "not the pinned ARK" in str(e.value)
    # No ARK pinned: nothing SEV-SNP is accepted.
    with pytest.raises(C.CollateralUnavailable) as e:
        C.Fetcher(kds_url=pcs_server.url, trust=TrustAnchors()).fetch(keys[0], now=SNP_TIME)
    assert "no ARK is pinned" in str(e.value)
    # A version-2 report names no product: the pinned ARK's subject (ARK-Genoa) does.
    assert C.keys_for("snp", fixtures.read(SNP_REPORT), trust=trust)[0].id == "snp.chain?product=Genoa"


def test_expired_collateral_is_refused_and_an_expired_copy_named(fixtures: Any, pcs_server: PcsServer) -> None:
    quote, trust, cache = fixtures.read(TDX_QUOTE), TrustAnchors(), C.MemoryCache()
    anchors, findings = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache,
                                  now=TDX_EXPIRED)
    assert len(cache) == 1 and cache.get("tdx.rootcrl") is not None  # valid until 2024-04; the others expired
    assert ids(findings) == ["collateral.unavailable"] * 3 and {f.context["reason"] for f in findings} == {"expired"}
    # Fetched while valid, then the source goes down: the expired copies are named with their expiry.
    cache = C.MemoryCache()
    C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache, now=TDX_TIME)
    pcs_server.mode = "down"
    anchors, findings = C.resolve("tdx", quote, trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache,
                                  now=TDX_EXPIRED)
    assert ids(findings) == ["collateral.expired"] * 3 and anchors.tdx_collateral is None
    tcb = next(f for f in findings if f.context["key"] == "tdx.tcb?fmspc=50806f000000")
    assert "2023-07-18T08:42:58+00:00" in tcb.message and tcb.context["reason"] == "unreachable"


def test_a_cached_document_is_checked_again(fixtures: Any, pcs_server: PcsServer) -> None:
    trust, cache = TrustAnchors(), C.MemoryCache()
    C.resolve("tdx", fixtures.read(TDX_QUOTE), trust=trust, fetcher=tdx_fetcher(pcs_server, trust), cache=cache,
              now=TDX_TIME)
    doc = cache.get("tdx.tcb?fmspc=50806f000000")
    assert doc is not None
    later = replace(doc, not_after=doc.not_after + timedelta(days=365), refresh_after=doc.refresh_after)
    with pytest.raises(C.CollateralUnavailable) as e:
        C.verify_document(later, trust=trust, now=TDX_TIME)
    assert e.value.reason == "malformed"
    forged = replace(doc, body=doc.body.replace(b'"tcbStatus":"UpToDate"', b'"tcbStatus":"UpToDatf"', 1))
    assert forged.body != doc.body
    with pytest.raises(C.CollateralUnavailable) as e:
        C.verify_document(forged, trust=trust, now=TDX_TIME)
    assert e.value.reason == "bad-signature"
    # A forged cache row is not used: it is fetched again (and the good copy replaces it).
    cache.put(forged)
    _, findings = C.resolve("tdx", fixtures.read(TDX_QUOTE), trust=trust, fetcher=tdx_fetcher(pcs_server, trust),
                            cache=cache, now=TDX_TIME)
    assert findings == [] and cache.get(doc.key.id) == doc and pcs_server.counts["/tdx/certification/v4/tcb"] == 2


def test_no_source(fixtures: Any) -> None:
    trust, quote = TrustAnchors(), fixtures.read(TDX_QUOTE)
    _, findings = C.resolve("tdx", quote, trust=trust, fetcher=None, cache=C.MemoryCache(), now=TDX_TIME)
    assert ids(findings) == ["collateral.unavailable"] * 4 and "--pccs" in findings[0].message
    with pytest.raises(C.CollateralUnavailable) as e:
        C.Fetcher(kds_url="https://kds.invalid", trust=trust).fetch(C.Key("tdx.qe"), now=TDX_TIME)
    assert e.value.reason == "unreachable" and "--pccs" in str(e.value)
    with pytest.raises(InputError):
        C.Fetcher(pccs_url="file:///etc/passwd", trust=trust)
    with pytest.raises(C.CollateralUnavailable) as e:
        C.Fetcher(pccs_url=closed_port_url(), trust=trust, timeout=1).fetch(C.Key("tdx.qe"), now=TDX_TIME)
    assert e.value.reason == "unreachable"


# --- keys and documents ----------------------------------------------------------------------------


def test_keys_and_documents_are_strict() -> None:
    key = C.Key("tdx.tcb", (("fmspc", "50806f000000"),))
    assert key.id == "tdx.tcb?fmspc=50806f000000" and key.source == "pccs" and C.Key.from_id(key.id) == key
    vcek = C.Key("snp.vcek", (("ucodeSPL", "68"), ("product", "Milan"), ("hwid", "ab" * 64), ("blSPL", "2"),
                              ("teeSPL", "0"), ("snpSPL", "5")))
    assert vcek.id.startswith("snp.vcek?blSPL=2&hwid=abab") and vcek.source == "kds" and len(vcek.id) <= 512
    assert C.Key.from_id(vcek.id) == vcek
    for bad in [("tdx.tcb", ()), ("tdx.tcb", (("fmspc", "50806F00000"),)), ("tdx.pckcrl", (("ca", "root"),)),
                ("snp.chain", (("product", "../x"),)), ("nope", ()), ("tdx.qe", (("x", "1"),))]:
        with pytest.raises(InputError):
            C.Key(*bad)  # type: ignore[arg-type]
    for bad_id in ["tdx.tcb?fmspc=50806F000000", "tdx.qe?", "tdx.tcb?fmspc=50806f000000&fmspc=50806f000000",
                   "x" * 600]:
        with pytest.raises(InputError):
            C.Key.from_id(bad_id)
    t = datetime(2023, 7, 1, tzinfo=UTC)
    doc = C.Document(key, b"{}", b"chain", t + timedelta(days=2), t + timedelta(days=1), t, "http://x/")
    good = doc.to_json()
    assert C.Document.from_json(good) == doc
    for change in [{"extra": 1}, {"body": "***"}, {"not_after": "2023-07-03T00:00:00"},
                   {"refresh_after": "2023-08-01T00:00:00+00:00"}, {"key": "tdx.tcb"}, {"chain": 5}]:
        with pytest.raises(InputError):
            C.Document.from_json({**good, **change})
    with pytest.raises(InputError):
        C.Document.from_json({k: v for k, v in good.items() if k != "url"})


# --- the command line ------------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str] | None = None) -> Any:
    from tsmr.cli.main import app

    return CliRunner().invoke(app, args, env={"TSMR_PCCS_URL": None, "TSMR_KDS_URL": None, **(env or {})})


def test_cli_fetch_writes_what_quote_verify_reads(fixtures: Any, pcs_server: PcsServer, tmp_path: Path) -> None:
    quote = str(fixtures / TDX_QUOTE)
    at = ["--at", "2023-07-01T01:00:00"]
    out = tmp_path / "fetched"
    r = _cli(["collateral", "fetch", quote, "-o", str(out), *at, "--json"], env={"TSMR_PCCS_URL": pcs_server.url})
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["kind"] == "tdx" and len(report["documents"]) == 4
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "tcb_info.json", "tcb_info_issuer_chain.pem", "qe_identity.json", "qe_identity_issuer_chain.pem",
        "pck_crl.der", "pck_crl_issuer_chain.pem", "root_ca_crl.der"])
    assert (out / "root_ca_crl.der").read_bytes() == (fixtures / "go-tdx-guest/rootcrl.der").read_bytes()
    col = tmp_path / "files"
    col.mkdir()
    for name in PCS_FILES:
        (col / name).symlink_to(fixtures / f"go-tdx-guest/{name}")
    offline = _cli(["quote", "verify", quote, "--collateral", str(col), *at, "--json"])
    fetched = _cli(["quote", "verify", quote, "--collateral", str(out), *at, "--json"])
    assert fetched.exit_code == offline.exit_code == 1
    assert json.loads(fetched.stdout) == json.loads(offline.stdout)
    assert json.loads(fetched.stdout)["check"] == "tdx.tcb_status"


def test_cli_fetch_snp_and_a_bundle(fixtures: Any, pcs_server: PcsServer, milan_ark: Path, tmp_path: Path) -> None:
    report = fixtures.read(SNP_REPORT)
    doc = bundle.make_bundle(nonce=bytes.fromhex("0102030405"), evidence={"kind": "snp", "data": report})
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "certs"
    r = _cli(["collateral", "fetch", str(path), "--kds", pcs_server.url, "--ark", str(milan_ark), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["cert_chain.pem", "vcek.der"]
    common = ["quote", "verify", str(fixtures / SNP_REPORT), "--allow-debug", "--at", "2024-01-01T00:00:00", "--json"]
    fetched = _cli([*common, "--certs", str(out), "--ark", str(milan_ark)])
    offline = _cli([*common, "--vcek", str(fixtures / "go-sev-guest/vcek.testcer"),
                    "--ask", str(fixtures / "go-sev-guest/milan.testcer")])  # the KDS chain file: ASK, ARK
    assert fetched.exit_code == offline.exit_code == 0, fetched.output
    assert json.loads(fetched.stdout) == json.loads(offline.stdout)


def test_cli_errors(fixtures: Any, pcs_server: PcsServer, milan_ark: Path, tmp_path: Path) -> None:
    quote = str(fixtures / TDX_QUOTE)
    out = tmp_path / "out"
    r = _cli(["collateral", "fetch", quote, "-o", str(out)])
    assert r.exit_code == 2 and "--pccs" in r.output and not out.exists()
    r = _cli(["collateral", "fetch", quote, "-o", str(out), "--pccs", "ftp://host/"])
    assert r.exit_code == 2 and "not an http(s) URL" in r.output
    r = _cli(["collateral", "fetch", str(fixtures / SNP_REPORT), "-o", str(out), "--kds", pcs_server.url])
    assert r.exit_code == 2 and "--ark" in r.output
    r = _cli(["collateral", "fetch", str(fixtures / SNP_REPORT), "-o", str(out), "--kds", pcs_server.url,
              "--ark", str(fixtures / "go-sev-guest/milan.testcer")])
    assert r.exit_code == 2 and "the ARK alone" in r.output
    pcs_server.mode = "down"
    r = _cli(["collateral", "fetch", quote, "-o", str(out), "--pccs", pcs_server.url, "--at", "2023-07-01T01:00:00"])
    assert r.exit_code == 3 and "unreachable" in r.output and "nothing written" in r.output
    assert not out.exists()
    pcs_server.mode = "ok"
    r = _cli(["collateral", "fetch", quote, "-o", str(out), "--pccs", pcs_server.url, "--at", "2023-09-01T00:00:00"])
    assert r.exit_code == 3 and "expired" in r.output and not out.exists()
    out.mkdir()
    (out / "sample_tcbInfo_response").write_text("{}")
    r = _cli(["collateral", "fetch", quote, "-o", str(out), "--pccs", pcs_server.url, "--at", "2023-07-01T01:00:00"])
    assert r.exit_code == 2 and "already holds other collateral" in r.output


def test_a_second_signed_object_under_the_same_name_is_refused(fixtures: Any, pcs_server: PcsServer) -> None:
    """JSON with two "tcbInfo" members: the parser sees the last, the signature covers the first."""
    real = (fixtures / "go-tdx-guest/sample_tcbInfo_response").read_bytes()
    fake = b'{"tcbInfo":' + real[len(b'{"tcbInfo":'):real.index(b',"signature"')] + \
        b',"tcbInfo":{"id":"TDX","version":3,"fmspc":"90C06F000000"}' + real[real.index(b',"signature"'):]
    assert json.loads(fake)["tcbInfo"]["fmspc"] == "90C06F000000"
    pcs_server.tcb.clear()
    pcs_server.add_tcb(fake, (fixtures / "go-tdx-guest/tcbinfo_issuer_chain.pem").read_bytes())
    key = C.Key("tdx.tcb", (("fmspc", "90c06f000000"),))
    with pytest.raises(C.CollateralUnavailable) as e:
        tdx_fetcher(pcs_server, TrustAnchors()).fetch(key, now=TDX_TIME)
    assert e.value.reason == "wrong-document" and "50806f000000" in str(e.value)


def test_snp_keys_by_product(fixtures: Any, pcs_server: PcsServer) -> None:
    """The KDS URL of a report's VCEK: Milan/Genoa (64-byte hwID) and Turin (8-byte hwID, FMC SPL, its TCB layout)."""
    report = bytearray(fixtures.read(SNP_REPORT))
    chip = bytes(report[0x1A0:0x1E0])
    fetcher = C.Fetcher(kds_url=pcs_server.url + "/", trust=TrustAnchors())

    def vcek_url(version: int, cpuid: bytes) -> str:
        report[0:4] = version.to_bytes(4, "little")
        report[0x188:0x18B] = cpuid
        keys = C.keys_for("snp", bytes(report), trust=TrustAnchors())
        assert [k.kind for k in keys] == ["snp.chain", "snp.vcek"]
        return fetcher.url(keys[1])

    base = pcs_server.url
    # TCB_VERSION 0x4405000000000002: Milan/Genoa bytes BL, TEE, 4 reserved, SNP, UCODE.
    assert vcek_url(3, bytes([0x19, 0x01, 0x01])) == \
        f"{base}/vcek/v1/Milan/{chip.hex()}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68"
    assert vcek_url(3, bytes([0x19, 0x11, 0x01])) == \
        f"{base}/vcek/v1/Genoa/{chip.hex()}?blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68"
    # Turin: FMC, BL, TEE, SNP, 3 reserved, UCODE; the hwID is the chip id's first 8 bytes.
    assert vcek_url(3, bytes([0x1A, 0x02, 0x00])) == \
        f"{base}/vcek/v1/Turin/{chip[:8].hex()}?fmcSPL=2&blSPL=0&teeSPL=0&snpSPL=0&ucodeSPL=68"
    # A version-2 report says no product: --kds-product, else nothing to fetch (no ARK pinned).
    report[0:4] = (2).to_bytes(4, "little")
    assert C.keys_for("snp", bytes(report), trust=TrustAnchors()) == []
    assert C.keys_for("snp", bytes(report), trust=TrustAnchors(), product="Genoa-B1")[0].id == "snp.chain?product=Genoa"
    with pytest.raises(InputError):
        C.keys_for("snp", bytes(report), trust=TrustAnchors(), product="Naples")
    assert C.keys_for("snp", b"not a report", trust=TrustAnchors()) == []
    assert C.keys_for("tdx", b"not a quote", trust=TrustAnchors()) == []
    assert C.keys_for("cca", b"", trust=TrustAnchors()) == []


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 it issued (cert, key, CA) as PEM files."""
    import ipaddress

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tsmr test PCCS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pccs")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


def test_https_source_is_checked_against_the_given_ca(fixtures: Any, tmp_path: Path) -> None:
    import ssl

    cert, key, ca = _tls_files(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = PcsServer.from_fixtures(fixtures.root, tls=context).start()
    try:
        trust, quote = TrustAnchors(), fixtures.read(TDX_QUOTE)
        assert server.url.startswith("https://127.0.0.1:")
        anchors, findings = C.resolve("tdx", quote, trust=trust, cache=C.MemoryCache(), now=TDX_TIME,
                                      fetcher=C.Fetcher(pccs_url=server.url, trust=trust, cafile=str(ca), timeout=2))
        assert findings == [] and anchors.tdx_collateral is not None
        # The system's CAs do not know the test CA: refused, nothing fetched.
        with pytest.raises(C.CollateralUnavailable) as e:
            C.Fetcher(pccs_url=server.url, trust=trust, timeout=2).fetch(C.Key("tdx.qe"), now=TDX_TIME)
        assert e.value.reason == "unreachable" and "CERTIFICATE_VERIFY_FAILED" in str(e.value)
        assert server.counts["/tdx/certification/v4/qe/identity"] == 1
    finally:
        server.stop()


def test_cli_fetch_for_an_emulated_quote_verifies_with_its_root(pcs_server: PcsServer, tmp_path: Path) -> None:
    from tsmr.backends.emulated_evidence.tdx import EmulatedTDXSigner

    signer = EmulatedTDXSigner(tmp_path / "qe")
    quote = tmp_path / "quote.dat"
    quote.write_bytes(signer.quote(report_data=b"n", registers={}))
    pcs_server.add_emulated_tdx(signer, status="SWHardeningNeeded", advisories=("INTEL-SA-00615",))
    out, root = tmp_path / "col", str(signer.root_pem)
    r = _cli(["collateral", "fetch", str(quote), "--pccs", pcs_server.url, "-o", str(out)])
    # Not under the Intel root: the PCK chain names no documents, and nothing is fetched or written.
    assert r.exit_code == 2 and "does not verify to the trust root" in r.output and not out.exists()
    assert sum(pcs_server.counts.values()) == 0
    r = _cli(["collateral", "fetch", str(quote), "--pccs", pcs_server.url, "--trust-root", root, "-o", str(out)])
    assert r.exit_code == 0, r.output
    v = _cli(["quote", "verify", str(quote), "--trust-root", root, "--collateral", str(out), "--json"])
    assert v.exit_code == 0, v.output
    claims = json.loads(v.stdout)["claims"]
    assert claims["tcb_status"] == "SWHardeningNeeded" and claims["advisory_ids"] == ["INTEL-SA-00615"]
    assert "tdx.crl.root" in claims["checks"] and "tdx.qe_identity" in claims["checks"]
