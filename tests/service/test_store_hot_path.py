"""The store's attestation path: documents by current version, and recovery from dropped connections.

Two stores on one database stand for two replicas.  On PostgreSQL the server
side of every pooled connection is terminated (``pg_terminate_backend``), which
is what a database restart does to a running verifier's pool.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import psycopg
from sqlalchemy.engine import make_url

from tsmr.service import db as dbmod
from tsmr.service.db import JSONText, Store, utcnow


def test_documents_follow_the_current_version_and_are_shared(db_url: str) -> None:
    one, two = Store.open(db_url), Store.open(db_url)
    try:
        assert one.current("default", "default") == (None, None)
        two.put("refvals", "default", {"v": 1})
        two.put("policy", "strict", "package tsmr\nallow := true\n")
        pol, ref = one.current("strict", "default")
        assert pol is not None and ref is not None
        assert (pol.kind, pol.name, pol.version, pol.rego) == ("policy", "strict", 1, "package tsmr\nallow := true\n")
        assert (ref.kind, ref.name, ref.version, ref.document) == ("refvals", "default", 1, {"v": 1})
        # the same version: the same object (appraise's own caches key on it)
        assert one.current("strict", "default")[1] is ref
        # a version the other replica stores counts for the very next call, and so does a delete
        two.put("refvals", "default", {"v": 2})
        newer = one.current("strict", "default")[1]
        assert newer is not None and newer.version == 2 and newer.document == {"v": 2}
        two.delete("refvals", "default")
        assert one.current("strict", "default") == (pol, None)
        # numbers are not reused after a delete: version 3 is a new document, never the cached version 1 or 2
        two.put("refvals", "default", {"v": 3})
        latest = one.current("strict", "default")[1]
        assert latest is not None and latest.version == 3 and latest.document == {"v": 3}
        # the cache is bounded
        for i in range(dbmod.DOCUMENT_CACHE_SIZE + 5):
            two.put("policy", f"p{i}", f"package p{i}\n")
            assert one.current(f"p{i}", "default")[0] is not None
        assert len(one._docs) == dbmod.DOCUMENT_CACHE_SIZE
    finally:
        one.close()
        two.close()


def test_results_and_nonces_keep_their_meaning(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        now = utcnow()
        ch = store.issue_challenge(ttl=timedelta(minutes=5), now=now)
        assert store.is_live(ch.nonce)
        won = store.consume(ch.nonce, now=now)
        assert won.outcome == "fresh" and won.challenge is not None
        assert won.challenge.expires_at == ch.expires_at and won.challenge.used_at == now
        assert not store.is_live(ch.nonce)
        # only the request that consumed it (its used_at) gives it back, once
        assert not store.release(ch.nonce, used_at=now + timedelta(seconds=1))
        assert store.release(ch.nonce, used_at=now)
        assert not store.release(ch.nonce, used_at=now)
        assert store.consume(ch.nonce).outcome == "fresh"
        # a result given as its JSON text is stored as that document
        rid = str(uuid.uuid4())
        store.save_result(id=rid, status="affirming", kind="tdx", nonce=ch.nonce, ear="e.a.r",
                          result=JSONText('{"status":"affirming","findings":[{"id":"x"}],"n":"\u00e9"}'),
                          policy_id="default@1", now=now)
        row = store.get_result(rid)
        assert row is not None and row.result == {"status": "affirming", "findings": [{"id": "x"}], "n": "\u00e9"}
        assert (row.status, row.kind, row.policy_id, row.refvals_id) == ("affirming", "tdx", "default@1", None)
    finally:
        store.close()


def _drop_connections(pg_url: str) -> int:
    """Terminate every other session on the test database, as a restart would; how many."""
    url = make_url(pg_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall()
    return len(rows)


def test_attestation_path_survives_dropped_connections(pg_url: str) -> None:
    """Under load (no idle time for a ping): the first statement on a dead connection is retried on a new one."""
    store = Store.open(pg_url)
    try:
        store.put("refvals", "default", {"v": 1})
        for _ in range(3):
            ch = store.issue_challenge(ttl=timedelta(minutes=5))
            assert store.current("default", "default")[1] is not None
            assert _drop_connections(pg_url) >= 1
            now = utcnow()
            assert store.consume(ch.nonce, now=now).outcome == "fresh"  # found the pool dead, retried
            _drop_connections(pg_url)
            rid = str(uuid.uuid4())
            store.save_result(id=rid, status="affirming", kind="tdx", nonce=ch.nonce, ear="e", result={"a": 1})
            _drop_connections(pg_url)
            assert store.get_result(rid) is not None
            _drop_connections(pg_url)
            assert store.issue_challenge(ttl=timedelta(minutes=5)).nonce
            _drop_connections(pg_url)
            assert store.current("default", "default")[1] is not None
    finally:
        store.close()


def test_idle_connections_are_pinged_before_use(pg_url: str) -> None:
    """After a quiet spell, a dead pooled connection is replaced at checkout, before any query sees it.

    The ORM reads (admin endpoints, collateral) have no retry of their own: they rely on this.
    """
    store = Store.open(pg_url)
    try:
        store.put("policy", "p", "package p\n")
        assert _drop_connections(pg_url) >= 1
        time.sleep(dbmod.PING_AFTER_IDLE + 0.2)
        row = store.get("policy", "p")
        assert row is not None and row.version == 1
    finally:
        store.close()
