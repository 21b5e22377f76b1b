"""The verifier's collateral cache in its database, shared by every replica (the ``Cache`` of tsmr.system.collateral).

Theory of operation
-------------------
:func:`tsmr.system.collateral.resolve` finds the TDX / SEV-SNP documents an
attestation needs in a :class:`~tsmr.system.collateral.Cache` before it
fetches them.  :class:`DatabaseCache` is that cache on the service's
:class:`~tsmr.service.db.Store`, so that every worker and every replica on one
database shares it:

* a document is a row of ``collateral`` (its key id, kind, the JSON of
  :meth:`Document.to_json`, and the times the refresh query needs).  Only
  documents that verified are put here (resolve verifies before it stores),
  and resolve verifies a document again when it reads it back: a database row
  is trusted no more than the network.  A row that cannot even be read as a
  document (damaged, or written by a newer version) counts as absent;
* a fetch is announced by a row of ``collateral_leases``: :meth:`claim` inserts
  it (or takes over one whose time ran out) in one transaction, and the
  primary key decides between two claimants, whichever replica they are in;
  the loser waits for the winner's document instead of fetching it again;
* :meth:`put` is an upsert (``INSERT ... ON CONFLICT DO UPDATE`` on SQLite and
  PostgreSQL), so two writers of one key never fail each other.

Lease times are wall-clock times of the process (the replicas' clocks are
assumed to agree to well within a lease's seconds); document times are
whatever the caller verifies with.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import InputError
from .db import CachedCollateral, CollateralLease, Store, utcnow
from .middleware import _event

if TYPE_CHECKING:
    from ..system.collateral import Document
    from .metrics import Metrics

__all__ = ["DatabaseCache", "MAX_KEY_ID", "MAX_OWNER", "service_fetcher"]

MAX_KEY_ID = 512  # the column width; Key.id promises no more
MAX_OWNER = 128


class DatabaseCache:
    """:class:`tsmr.system.collateral.Cache` on the verifier's database (thread-safe: one session per call).

    ``metrics`` (optional) counts the documents read from the cache (``cache-hit``) per document kind;
    what was not there shows as fetches (:func:`service_fetcher`).
    """

    def __init__(self, store: Store, *, metrics: "Metrics | None" = None) -> None:
        self.store = store
        self.metrics = metrics

    # -- documents --------------------------------------------------------------------------------
    def get(self, key_id: str) -> "Document | None":
        """The stored document for ``key_id``, or None (also for a row that is not a readable document)."""
        with self.store._read() as s:
            row = s.get(CachedCollateral, key_id)
            data = row.document if row is not None else None
        doc = self._document(key_id, data) if data is not None else None
        if doc is not None and self.metrics is not None:
            self.metrics.collateral_event("cache-hit", doc.key.kind)
        return doc

    def put(self, doc: "Document") -> None:
        """Store ``doc`` (already verified by the caller), replacing the stored one for its key."""
        key_id = doc.key.id
        if not key_id or len(key_id) > MAX_KEY_ID:
            raise InputError(f"a collateral key id must be 1 to {MAX_KEY_ID} characters, not {len(key_id)}")
        values = {"key_id": key_id, "kind": doc.key.kind[:32], "document": doc.to_json(),
                  "not_after": doc.not_after, "refresh_after": doc.refresh_after, "fetched_at": doc.fetched_at}
        with self.store._write() as s:
            insert = _insert(self.store)
            stmt = insert(CachedCollateral).values(**values)
            s.execute(stmt.on_conflict_do_update(
                index_elements=[CachedCollateral.key_id],
                set_={k: stmt.excluded[k] for k in values if k != "key_id"}))

    def due(self, now: datetime, limit: int = 100) -> list["Document"]:
        """Stored documents whose ``refresh_after`` has come at ``now``, the most urgent first."""
        with self.store._read() as s:
            rows = s.execute(select(CachedCollateral.key_id, CachedCollateral.document)
                             .where(CachedCollateral.refresh_after <= now)
                             .order_by(CachedCollateral.refresh_after).limit(max(0, limit))).all()
        docs = (self._document(key_id, data) for key_id, data in rows)
        return [d for d in docs if d is not None]

    def keys(self) -> list[str]:
        """Every stored key id (for operators and tests)."""
        with self.store._read() as s:
            return list(s.execute(select(CachedCollateral.key_id).order_by(CachedCollateral.key_id)).scalars())

    def forget(self, key_id: str) -> bool:
        """Remove a stored document; whether there was one."""
        with self.store._write() as s:
            res = s.execute(delete(CachedCollateral).where(CachedCollateral.key_id == key_id))
        return int(res.rowcount or 0) == 1  # type: ignore[attr-defined]

    @staticmethod
    def _document(key_id: str, data: Any) -> "Document | None":
        from ..system.collateral import Document

        try:
            doc = Document.from_json(data)
        except (InputError, TypeError, ValueError, KeyError) as exc:
            _event(logging.WARNING, "cached collateral unreadable", key=key_id[:200], error=str(exc)[:300])
            return None
        if doc.key.id != key_id:
            _event(logging.WARNING, "cached collateral unreadable", key=key_id[:200],
                   error=f"the row holds the document of {doc.key.id[:200]!r}")
            return None
        return doc

    # -- fetch leases -----------------------------------------------------------------------------
    def claim(self, key_id: str, *, owner: str, ttl: float) -> bool:
        """Take the fetch lease of ``key_id`` for ``ttl`` seconds: True when the caller holds it now.

        One transaction: INSERT the lease row; when one exists, UPDATE it only if its time has run
        out (or the caller already holds it).  Two claimants at once: the primary key lets one
        INSERT win; the other's INSERT fails (on PostgreSQL after waiting for the first to commit),
        and its UPDATE finds the lease live and changes nothing.
        """
        if not owner or len(owner) > MAX_OWNER:
            raise InputError(f"a lease owner must be 1 to {MAX_OWNER} characters")
        now = utcnow()
        expires = now + timedelta(seconds=max(0.0, ttl))
        with self.store._write() as s:
            try:
                with s.begin_nested():
                    s.add(CollateralLease(key_id=key_id, owner=owner, expires_at=expires))
                    s.flush()
                return True
            except IntegrityError:
                pass  # a lease row exists: take it over only if it is stale (or ours)
            res = s.execute(update(CollateralLease)
                            .where(CollateralLease.key_id == key_id,
                                   or_(CollateralLease.expires_at <= now, CollateralLease.owner == owner))
                            .values(owner=owner, expires_at=expires)
                            .execution_options(synchronize_session=False))
            return int(res.rowcount or 0) == 1  # type: ignore[attr-defined]

    def release(self, key_id: str, *, owner: str) -> None:
        """Give the lease up (only the owner's; a lease taken over meanwhile stays its new owner's)."""
        with self.store._write() as s:
            s.execute(delete(CollateralLease).where(CollateralLease.key_id == key_id, CollateralLease.owner == owner))


def public_url(url: str) -> str:
    """``url`` without any user:password part, for logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<url>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _insert(store: Store) -> Any:
    """The dialect's INSERT construct (both SQLite's and PostgreSQL's have ``on_conflict_do_update``)."""
    if store.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def service_fetcher(settings: Any, trust: Any, metrics: "Metrics | None") -> Any:
    """The service's :class:`~tsmr.system.collateral.Fetcher` for ``settings`` (None without --pccs/--kds).

    It counts every fetch and failure in ``metrics`` and logs one line for each, so an operator
    sees what the verifier asked of PCCS / KDS and why a document was refused.
    """
    if not settings.pccs_url and not settings.kds_url:
        return None
    import time

    from ..system.collateral import CollateralUnavailable, Document, Fetcher, Key

    class ServiceFetcher(Fetcher):
        def fetch(self, key: Key, *, now: datetime) -> Document:
            start = time.perf_counter()
            try:
                doc = super().fetch(key, now=now)
            except CollateralUnavailable as exc:
                if metrics is not None:
                    metrics.collateral_event("fetch-failed", key.kind)
                _event(logging.WARNING, "collateral fetch failed", key=key.id[:200], reason=exc.reason,
                       url=public_url(exc.url)[:300], error=exc.detail[:500],
                       seconds=round(time.perf_counter() - start, 3))
                raise
            if metrics is not None:
                metrics.collateral_event("fetched", key.kind)
            _event(logging.INFO, "collateral fetched", key=key.id[:200], url=public_url(doc.url)[:300],
                   not_after=doc.not_after.isoformat(), refresh_after=doc.refresh_after.isoformat(),
                   seconds=round(time.perf_counter() - start, 3))
            return doc

    return ServiceFetcher(pccs_url=settings.pccs_url, kds_url=settings.kds_url, timeout=settings.fetch_timeout,
                          trust=trust, cafile=settings.collateral_cacert)
