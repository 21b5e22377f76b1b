"""The verifier's storage on SQLite and PostgreSQL: migrations, nonce consumption, versioned documents."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect

from tsmr.service.db import Base, Store, make_engine, upgrade, utcnow

MIGRATE = """
import sys
from tsmr.service.db import make_engine, upgrade, current_revision
engine = make_engine(sys.argv[1])
upgrade(engine)
print(current_revision(engine))
"""


def test_migrations_from_empty_match_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(db_url)
    assert inspect(engine).get_table_names() == []
    upgrade(engine)
    upgrade(engine)  # a second run finds nothing to do
    names = set(inspect(engine).get_table_names())
    assert names == {"alembic_version", "challenges", "results", "policies", "reference_values", "tpm_aks",
                     "collateral", "collateral_leases", "nodes", "node_states"}
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def test_processes_migrating_at_once(db_url: str) -> None:
    """Replicas start together: every one migrates, none fails, the schema is made once."""
    procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e for _, e in outs]
    assert {o.strip() for o, _ in outs} == {"0004"}


def test_a_nonce_is_consumed_exactly_once_under_contention(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        now = utcnow()
        fresh = store.issue_challenge(ttl=timedelta(minutes=5), now=now)
        outcomes: list[str] = []
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait()
            outcomes.append(store.consume(fresh.nonce).outcome)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(outcomes) == ["fresh"] + ["reused"] * 7
        old = store.issue_challenge(ttl=timedelta(seconds=1), now=now - timedelta(seconds=10))
        assert store.consume(old.nonce).outcome == "expired"
        assert store.consume("00" * 32).outcome == "unknown"
        # long-expired challenges are purged; a replay of one is then simply unknown
        assert store.purge_challenges(now=now + timedelta(hours=2)) >= 2
        assert store.consume(fresh.nonce).outcome == "unknown"
    finally:
        store.close()


def test_versioned_documents(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        assert [store.put("policy", "p", f"package v{i}").version for i in (1, 2, 3)] == [1, 2, 3]
        assert store.get("policy", "p").rego == "package v3"  # type: ignore[union-attr]
        assert store.get("policy", "p", 1).rego == "package v1"  # type: ignore[union-attr]
        assert store.get("policy", "p", 9) is None
        store.put("refvals", "r", {"a": [1, 2]})
        assert store.get("refvals", "r").document == {"a": [1, 2]}  # type: ignore[union-attr]
        assert [n for n, _, _ in store.names("policy")] == ["p"]
        assert store.delete("policy", "p") == 3 and store.get("policy", "p") is None
        assert store.delete("policy", "p") == 0
        # numbering goes on after a delete, so "p@1" never names two documents
        assert store.put("policy", "p", "package again").version == 4
        assert [r.version for r in store.versions("policy", "p")] == [4]
    finally:
        store.close()


def test_concurrent_puts_get_distinct_versions(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        versions: list[int] = []
        barrier = threading.Barrier(6)

        def worker(i: int) -> None:
            barrier.wait()
            versions.append(store.put("refvals", "shared", {"writer": i}).version)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    finally:
        store.close()


def test_default_location_is_the_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSMR_STATE_DIR", str(tmp_path / "st"))
    store = Store.open()
    store.put("policy", "x", "package x")
    store.close()
    assert (tmp_path / "st" / "verifier.db").exists()
