"""The verifier's storage: challenges, results, policies and reference values (SQLAlchemy 2).

Theory of operation
-------------------
Everything a replica knows lives in the database, so any number of
``tsmr serve`` processes on one database behave as one verifier:

* a challenge is a row; attesting consumes it with one conditional UPDATE
  (``used_at IS NULL AND expires_at > now``) whose row count says whether this
  request won, so a nonce is accepted exactly once whichever replica sees it;
* results are stored before the client is told their id;
* policies and reference values are versioned: a PUT adds version n+1 (two
  concurrent PUTs race on the unique (name, version) key and the loser
  retries), a DELETE marks every version deleted without forgetting it, so a
  ``name@version`` in an old result never means two different documents.

* nodes (the registry of what is attested again and again) change state only with
  the result that changes it: :meth:`Store.save_node_result` inserts the result, locks
  the node's row, and writes its new state and a ``node_states`` history row in one
  transaction.

The attestation path (challenge, current versions, consume, result, release) uses
SQLAlchemy Core statements built once, one pooled connection per operation, and
on PostgreSQL autocommit (each operation decides in one statement).  Policies and
reference values are read as "which version is current" (one query for both);
a version's document, immutable once stored, is kept in a bounded per-process cache.
Pooled connections are pinged only after sitting idle; a connection that died
under load (a database restart) makes its operation run once more on a new one.

SQLite (the default, ``<state dir>/verifier.db``) runs in WAL mode with a busy
timeout, and write transactions start with ``BEGIN IMMEDIATE`` so that two
processes never both read and then fail to upgrade to a write lock.
PostgreSQL is used through psycopg 3 (``postgresql+psycopg://``).

Migrations (Alembic, shipped in ``migrations/``) run through :func:`upgrade`,
serialised by ``pg_advisory_xact_lock`` on PostgreSQL and by a lock file next
to the database on SQLite, so replicas may start together.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, TypeVar, cast

from sqlalchemy import (JSON, QueuePool, Connection, DateTime, Engine, ForeignKey, Index, Integer, String, Table, Text, TypeDecorator,
                        UniqueConstraint, bindparam, create_engine, event, func, insert, literal_column, select, text,
                        union_all, update)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (DataError, DBAPIError, IntegrityError, InvalidatePoolError, OperationalError,
                            SQLAlchemyError)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .. import safefs
from ..errors import BackendError, DatabaseUnavailable, InputError

__all__ = ["Base", "Challenge", "StoredResult", "Policy", "RefValues", "TpmAk", "CachedCollateral", "CollateralLease",
           "Node", "NodeState", "NodeView", "NodeExists", "Transition", "NODE_KINDS", "NODE_STATES",
           "Store", "default_url", "default_state_dir",
           "make_engine", "upgrade", "MIGRATIONS_DIR", "Consumed", "DatabaseUnavailable", "database_errors",
           "Document", "PING_AFTER_IDLE", "JSONText"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any 64-bit constant: the key of the advisory lock migrations hold on PostgreSQL.
_PG_MIGRATION_LOCK = 0x74736D72_6D696772  # "tsmrmigr"
# A pooled PostgreSQL connection idle longer than this (seconds) is pinged when it is next checked out.
PING_AFTER_IDLE = 2.0
# How many policy / reference-values documents (name, version) a process keeps parsed.
DOCUMENT_CACHE_SIZE = 32

_T = TypeVar("_T")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC (portable across SQLite and PostgreSQL), read back aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Challenge(Base):
    __tablename__ = "challenges"

    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)  # hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class StoredResult(Base):
    __tablename__ = "results"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # UUID, text form
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    nonce: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    policy_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    refvals_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    ear: Mapped[str] = mapped_column(Text, nullable=False)
    result: Mapped[Any] = mapped_column(JSON, nullable=False)
    node_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)  # attested as this node


NODE_KINDS = ("tdx", "snp", "cca", "tpm")
NODE_STATES = ("unknown", "affirming", "warning", "contraindicated", "stale")


class Node(Base):
    """An enrolled node: what binds its evidence to it, what it is appraised with, and its current state.

    ``identity`` is the value the operator pinned for the node's kind (:data:`IDENTITY_CLAIMS`):
    an attestation as this node whose evidence shows another is an identity mismatch.
    ``policy`` / ``refvals`` name stored documents (None: the verifier's own).  A retired
    node keeps its row and its history; the id may be enrolled again later.
    """

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)
    identity: Mapped[Any] = mapped_column(JSON, nullable=False)
    policy: Mapped[str | None] = mapped_column(String(128), nullable=True)
    refvals: Mapped[str | None] = mapped_column(String(128), nullable=True)
    interval_s: Mapped[int] = mapped_column(Integer, nullable=False, default=60, server_default="60")
    state: Mapped[str] = mapped_column(String(24), nullable=False, default="unknown", server_default="unknown")
    state_since: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    last_result_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    last_attested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class NodeState(Base):
    """One change of a node's state (``seq`` counts from 1 per node), with the result that caused it, if any."""

    __tablename__ = "node_states"

    node_id: Mapped[str] = mapped_column(String(128), ForeignKey("nodes.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(24), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    result_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False)


class Policy(Base):
    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_policies_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    rego: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RefValues(Base):
    __tablename__ = "reference_values"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_reference_values_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    document: Mapped[Any] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TpmAk(Base):
    """A TPM attestation key the operator enrolled: quotes it signs are the TPM's (by name, e.g. the node's)."""

    __tablename__ = "tpm_aks"
    __table_args__ = (UniqueConstraint("fingerprint", name="uq_tpm_aks_fingerprint"),)

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)  # SHA-256 of the SPKI DER, hex
    pem: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class CachedCollateral(Base):
    """A verified collateral document (TDX TCB info, CRLs, QE identity; SEV-SNP VCEK, ASK chain), shared by replicas.

    ``document`` is :meth:`tsmr.system.collateral.Document.to_json`; the other columns repeat what
    queries need (which documents are due for a refresh) without parsing it.  A row is written only
    after the document verified, and verified again whenever it is read back.
    """

    __tablename__ = "collateral"

    key_id: Mapped[str] = mapped_column(String(512), primary_key=True)  # tsmr.system.collateral.Key.id
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    document: Mapped[Any] = mapped_column(JSON, nullable=False)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    refresh_after: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, index=True)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class CollateralLease(Base):
    """Who is fetching a collateral document now: one row per key, so replicas starting cold fetch it once."""

    __tablename__ = "collateral_leases"

    key_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


Index("ix_policies_name", Policy.name)
Index("ix_reference_values_name", RefValues.name)

Kind = Literal["policy", "refvals"]
# The tables, for the queries on the attestation path (SQLAlchemy Core: no ORM objects to build and track).
_CHALLENGES = cast(Table, Challenge.__table__)
_RESULTS = cast(Table, StoredResult.__table__)
_POLICIES = cast(Table, Policy.__table__)
_REFVALS = cast(Table, RefValues.__table__)
_NODES = cast(Table, Node.__table__)
_NODE_STATES = cast(Table, NodeState.__table__)


def _hot_statements() -> dict[str, Any]:
    """The attestation path's statements, built once with bind parameters (building one costs more than running it).

    Parameters: ``b_nonce``, ``b_now``, ``b_used``, ``b_id``, ``b_policy``, ``b_refvals``, ``b_name``,
    ``b_version``; the INSERTs take their columns by name.
    """
    c, r, p, v = _CHALLENGES.c, _RESULTS.c, _POLICIES.c, _REFVALS.c
    nonce: Any = bindparam("b_nonce", type_=String())
    now: Any = bindparam("b_now", type_=UTCDateTime())
    return {
        "challenge_insert": insert(_CHALLENGES),
        "challenge_exists": select(c.nonce).where(c.nonce == nonce),
        "challenge_row": select(c.created_at, c.expires_at, c.used_at).where(c.nonce == nonce),
        "consume": (update(_CHALLENGES).where(c.nonce == nonce, c.used_at.is_(None), c.expires_at > now)
                    .values(used_at=now).returning(c.created_at, c.expires_at)),
        "live": select(c.nonce).where(c.nonce == nonce, c.used_at.is_(None), c.expires_at > now),
        "release": (update(_CHALLENGES).where(c.nonce == nonce, c.used_at == bindparam("b_used", type_=UTCDateTime()))
                    .values(used_at=None)),
        "result_insert": insert(_RESULTS),
        "result_exists": select(r.id).where(r.id == bindparam("b_id", type_=String())),
        "result_row": select(_RESULTS).where(r.id == bindparam("b_id", type_=String())),
        # Which versions are current: k 0 the policy, 1 the reference values (NULL: none live).
        "current": union_all(
            select(literal_column("0").label("k"), func.max(p.version).label("v"))
            .where(p.name == bindparam("b_policy", type_=String()), p.deleted_at.is_(None)),
            select(literal_column("1").label("k"), func.max(v.version).label("v"))
            .where(v.name == bindparam("b_refvals", type_=String()), v.deleted_at.is_(None))),
        "policy_doc": select(p.rego).where(p.name == bindparam("b_name", type_=String()),
                                           p.version == bindparam("b_version", type_=Integer())),
        "refvals_doc": select(v.document).where(v.name == bindparam("b_name", type_=String()),
                                                v.version == bindparam("b_version", type_=Integer())),
    }


_SQL = _hot_statements()
_MODELS: dict[str, type[Policy] | type[RefValues]] = {"policy": Policy, "refvals": RefValues}


# -- engines --------------------------------------------------------------------------------------

class JSONText(str):
    """A JSON document already serialised: stored in a JSON column as this text, not encoded again.

    The verifier encodes a result once, for the response and the database alike.
    """


def _json_serializer(value: Any) -> str:
    """How JSON columns are encoded (both dialects): :class:`JSONText` as it is, anything else by json.dumps."""
    if isinstance(value, JSONText):
        return str(value)
    return json.dumps(value)


def default_state_dir() -> Path:
    env = os.environ.get("TSMR_STATE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "tsmr"


def default_url(state_dir: str | os.PathLike[str] | None = None) -> str:
    base = Path(state_dir) if state_dir is not None else default_state_dir()
    return f"sqlite:///{base / 'verifier.db'}"


def normalise_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 here (the only PostgreSQL driver tsmr needs)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is not worth showing
        return "<database url>"


def make_engine(url: str | None = None, *, state_dir: str | os.PathLike[str] | None = None,
                pool_size: int = 5) -> Engine:
    """An engine for ``url`` (default: the SQLite file in the state directory)."""
    url = normalise_url(url or default_url(state_dir))
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises several kinds for bad URLs
        raise InputError(f"not a database URL: {redact_url(url)} ({type(exc).__name__})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not path.startswith("file:"):
            _create_sqlite_file(Path(path))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               json_serializer=_json_serializer)
        _sqlite_setup(engine)
        return engine
    if backend == "postgresql":
        try:
            engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size * 2,
                                   json_serializer=_json_serializer)
        except ImportError as exc:  # the dialect imports its driver here: psycopg for postgresql+psycopg
            driver = exc.name or parsed.get_driver_name()
            raise DatabaseUnavailable(
                f"database {redact_url(url)}: the PostgreSQL driver {driver} is not installed: "
                "pip install 'tsmr[postgresql]'") from None
        _ping_when_idle(engine)
        return engine
    raise InputError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql+psycopg://...")


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection that sat idle before handing it out again (PostgreSQL).

    ``pool_pre_ping`` would cost a round trip on every checkout, several per attestation.
    Connections in steady use are known good (their last statement worked), so only one
    that sat in the pool longer than :data:`PING_AFTER_IDLE` is pinged: after a database
    restart during a quiet spell, the first request finds fresh connections.  A restart
    under load shows up as a disconnect on a statement instead; SQLAlchemy then drops
    every connection the pool held, and :meth:`Store._run` retries that transaction once
    (it had not committed).  A ping that fails invalidates the whole pool the same way,
    and the pool connects afresh for this checkout.
    """
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["tsmr_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("tsmr_idle_since", None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # a new connection, or one that just worked
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, this connection is not usable
            raise InvalidatePoolError(f"a pooled connection failed its ping: {type(exc).__name__}") from exc


def _create_sqlite_file(path: Path) -> None:
    """Make the database file 0600 in a directory others cannot write (created 0700) before SQLite
    opens it: SQLite would create it 0644, and follow a link planted where it should be."""
    try:
        dfd = safefs.open_dir(path.parent, what="verifier state directory", create_mode=0o700)
        try:
            fd, _ = safefs.open_file(dfd, path.name, os.O_RDWR | os.O_CREAT, path=path, what="verifier database")
            os.close(fd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise BackendError.from_oserror(exc, backend="database", register=None, action=f"create {path}") from exc


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # no implicit BEGIN from the driver: _begin emits ours
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout = 30000")
            if engine.url.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to ``revision``; safe when several processes do it at once."""
    from alembic import command

    if is_postgres(engine):
        with engine.begin() as conn:
            # Held until this transaction ends: the second process waits, then finds nothing to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            command.upgrade(alembic_config(conn), revision)
        return
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    db = engine.url.database
    if engine.dialect.name == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
        lock = _file_lock(Path(db + ".migrate-lock"))
    with lock:
        with engine.connect() as raw:
            conn = raw.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                command.upgrade(alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


# -- failures -------------------------------------------------------------------------------------

def describe_db_error(exc: BaseException) -> str:
    """One line about a database failure: the driver's first line, never the SQL or its parameters."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return f"{type(orig).__name__}: {first[:300]}"


def _connect_hint(url: str, exc: BaseException) -> str:
    """What to do about a server that cannot be connected to (nothing for other operational errors)."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    if not any(s in text for s in ("connection refused", "could not connect", "connection failed",
                                   "no such host", "name or service not known", "timeout expired")):
        return ""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - no address to name then
        return ""
    if parsed.get_backend_name() != "postgresql":
        return ""
    address = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    return f"; start PostgreSQL or let it accept connections at {address}, or give another --database"


@contextlib.contextmanager
def database_errors(url: str = "") -> Iterator[None]:
    """Turn what SQLAlchemy, the driver and the file system raise into :class:`DatabaseUnavailable`.

    For start-up and the CLI: one sentence naming the database (password hidden) instead of
    a traceback.  Data the database refuses (``DataError``) is the caller's, and passes through.
    """
    where = f" {redact_url(url)}" if url else ""
    try:
        yield
    except DataError:
        raise
    except OperationalError as exc:
        raise DatabaseUnavailable(f"database{where}: {describe_db_error(exc)}{_connect_hint(url, exc)}") from None
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(f"database{where}: {describe_db_error(exc)}") from None
    except OSError as exc:
        raise DatabaseUnavailable(f"database{where}: {exc.strerror or exc}"
                                  + (f" ({exc.filename})" if exc.filename else "")) from None


# -- the store ------------------------------------------------------------------------------------

class NodeExists(Exception):
    """A live node already has the id being enrolled: the verifier's own, answered with 409 ``node.exists``."""


@dataclass(frozen=True)
class Consumed:
    """What happened to a nonce presented for attestation."""

    outcome: str  # "fresh", "unknown", "expired", "reused"
    challenge: Challenge | None = None


@dataclass(frozen=True, eq=False)
class Document:
    """One stored version of a policy (``content``: its Rego text) or reference values (the JSON document).

    Shared by every attestation that uses this version: treat ``content`` as read-only.
    """

    kind: str  # "policy" or "refvals"
    name: str
    version: int
    content: Any

    @property
    def rego(self) -> str:
        return cast(str, self.content)

    @property
    def document(self) -> Any:
        return self.content


@dataclass(frozen=True)
class Transition:
    """A node's change of state that an attestation caused."""

    node_id: str
    old: str
    new: str
    seq: int
    at: datetime
    result_id: str | None


@dataclass(frozen=True)
class NodeView:
    """A node as read, with (for :meth:`Store.get_node`) its latest state changes, newest first."""

    node: Node
    history: tuple[NodeState, ...] = ()


# What an attestation's status makes of a node's state ("none": nothing could be appraised).
_STATE_OF_STATUS = {"affirming": "affirming", "warning": "warning", "contraindicated": "contraindicated",
                    "none": "contraindicated"}


class Store:
    """Every query the service and the CLI make, over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._issued = 0
        self._postgres = is_postgres(engine)
        # PostgreSQL: the attestation path's statements run in autocommit mode (see _run) on connections
        # of their own that stay in that mode, so that no checkout switches a connection into it and
        # back (two driver calls each time, a third of what such a statement costs in CPU).
        self._autocommit: Engine | None = None
        if self._postgres:
            size = engine.pool.size() if isinstance(engine.pool, QueuePool) else 5
            self._autocommit = create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_size=size,
                                             max_overflow=size * 2, json_serializer=_json_serializer)
            _ping_when_idle(self._autocommit)
        # (kind, name, version) -> the document, parsed once: see current().
        self._docs: OrderedDict[tuple[str, str, int], Document] = OrderedDict()
        self._docs_lock = threading.Lock()
        # A SQLite file, once pinned, must stay the file opened then: see pin().
        self._sqlite_path: Path | None = None
        self._identity: tuple[int, int] | None = None
        db = engine.url.database
        if engine.dialect.name == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
            self._sqlite_path = Path(db).absolute()
            event.listen(engine, "do_connect", self._connect_existing)

    @classmethod
    def open(cls, url: str | None = None, *, state_dir: str | os.PathLike[str] | None = None,
             migrate: bool = True) -> "Store":
        store = cls(make_engine(url, state_dir=state_dir))
        if migrate:
            upgrade(store.engine)
        return store

    def close(self) -> None:
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()

    def pin(self) -> None:
        """Hold a SQLite database to the file that exists now (call once it is migrated).

        Deleting or replacing the file under a running verifier must not go unnoticed:
        connections already open would keep writing into the unlinked file, and a new one
        would create an empty database in its place.  After this, new connections open
        the file without creating it, and every read, write and health check first makes
        sure the path still names the same file (one stat).  No effect on PostgreSQL.
        """
        if self._sqlite_path is None:
            return
        try:
            st = self._sqlite_path.stat()
        except OSError as exc:
            raise DatabaseUnavailable(f"database {self._sqlite_path}: {exc.strerror}") from None
        self._identity = (st.st_dev, st.st_ino)

    def _connect_existing(self, dialect: Any, conn_rec: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
        if self._identity is None or self._sqlite_path is None or not cargs:
            return
        from urllib.parse import quote

        cargs[0] = f"file:{quote(str(self._sqlite_path))}?mode=rw"
        cparams["uri"] = True

    def check_file(self) -> None:
        """Raise :class:`DatabaseUnavailable` when a pinned SQLite file was deleted or replaced."""
        if self._identity is None or self._sqlite_path is None:
            return
        try:
            st = self._sqlite_path.stat()
        except OSError as exc:
            raise DatabaseUnavailable(f"the database file {self._sqlite_path} is gone ({exc.strerror})") from None
        if (st.st_dev, st.st_ino) != self._identity:
            raise DatabaseUnavailable(f"the database file {self._sqlite_path} was replaced while in use")

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        """A session for reading, once the database file is known to be the one pinned."""
        self.check_file()
        with self.sessions() as s:
            yield s

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        """A session whose transaction takes SQLite's write lock up front (no effect on PostgreSQL)."""
        self.check_file()
        with self.sessions() as s:
            s.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
            yield s
            s.commit()

    def _run(self, work: Callable[[Connection, bool], _T], *, write: bool = False, atomic: bool = False) -> _T:
        """Run ``work(connection, again)`` on one pooled connection (SQLAlchemy Core) and commit its effect.

        The operations of the attestation path each need one statement to decide (a
        second one only reads, to explain a refusal), so on PostgreSQL they run in
        autocommit mode, on an engine of their own whose connections stay in it: one
        round trip per statement instead of three (BEGIN, the statement, COMMIT), and no
        switching of a connection's mode at each checkout; each statement is atomic on its own, and at PostgreSQL's
        READ COMMITTED level a surrounding transaction would not change what the next
        statement sees.  On SQLite they run in a transaction; ``write`` takes the write
        lock up front (``BEGIN IMMEDIATE``, as :meth:`_write` does): in WAL mode a
        statement that reads before it writes could otherwise be refused instead of
        waiting for the lock.  ``atomic`` runs ``work`` in one transaction on PostgreSQL too,
        for statements that must take effect together.

        A connection that turns out to be dead (the database restarted or dropped it)
        raises a disconnect error; SQLAlchemy then discards every connection the pool
        held, and ``work`` runs once more on a new connection, with ``again`` true.  The
        first attempt may have taken effect all the same (the connection dropped while
        the answer was on its way), so each ``work`` first checks for that when ``again``
        is true.  A second failure propagates.
        """
        self.check_file()
        for again in (False, True):
            try:
                if self._autocommit is not None and not atomic:
                    with self._autocommit.connect() as conn:
                        return work(conn, again)
                with self.engine.connect() as conn:
                    if write:
                        conn.execution_options(sqlite_begin="IMMEDIATE")
                    with conn.begin():
                        return work(conn, again)
            except DBAPIError as exc:
                if again or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    # -- challenges -------------------------------------------------------------------------------
    def issue_challenge(self, *, ttl: timedelta, now: datetime | None = None, nbytes: int = 32) -> Challenge:
        now = now or utcnow()
        row = Challenge(nonce=os.urandom(nbytes).hex(), created_at=now, expires_at=now + ttl)
        params = {"nonce": row.nonce, "created_at": now, "expires_at": row.expires_at, "b_nonce": row.nonce}

        def work(conn: Connection, again: bool) -> None:
            if again and conn.execute(_SQL["challenge_exists"], params).first() is not None:
                return  # the first attempt stored it
            conn.execute(_SQL["challenge_insert"], params)

        self._run(work, write=True)
        self._issued += 1
        if self._issued % 256 == 1 or random.random() < 1 / 256:
            self.purge_challenges(now=now)
        return row

    def purge_challenges(self, *, now: datetime | None = None, keep: timedelta = timedelta(hours=1)) -> int:
        """Forget challenges that expired more than ``keep`` ago (a replay of one is then refused as unknown)."""
        from sqlalchemy import delete

        now = now or utcnow()
        with self._write() as s:
            res = s.execute(delete(Challenge).where(Challenge.expires_at < now - keep))
        return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def consume(self, nonce: str, *, now: datetime | None = None) -> Consumed:
        """Mark the challenge used if it is fresh: one conditional UPDATE decides who wins.

        The UPDATE returns the row it changed (``RETURNING``), so a fresh nonce costs one
        statement; only a refused one is read back, to say why (unknown, used, expired).
        """
        now = now or utcnow()
        params = {"b_nonce": nonce, "b_now": now}

        def work(conn: Connection, again: bool) -> tuple[bool, Any]:
            won = conn.execute(_SQL["consume"], params).first()
            if won is not None:
                return True, won
            row = conn.execute(_SQL["challenge_row"], params).first()
            # Retried: a nonce marked used at exactly this request's time was marked by its first attempt.
            return (again and row is not None and row.used_at == now), row

        fresh, row = self._run(work, write=True)
        if fresh:
            return Consumed("fresh", Challenge(nonce=nonce, created_at=row.created_at, expires_at=row.expires_at,
                                               used_at=now))
        if row is None:
            return Consumed("unknown")
        challenge = Challenge(nonce=nonce, created_at=row.created_at, expires_at=row.expires_at, used_at=row.used_at)
        return Consumed("reused" if row.used_at is not None else "expired", challenge)

    def is_live(self, nonce: str, *, now: datetime | None = None) -> bool:
        """Whether ``nonce`` was issued, is unused and unexpired (a read: :meth:`consume` still decides)."""
        now = now or utcnow()
        params = {"b_nonce": nonce, "b_now": now}
        return self._run(lambda conn, _again: conn.execute(_SQL["live"], params).first() is not None)

    def release(self, nonce: str, *, used_at: datetime) -> bool:
        """Undo :meth:`consume` (the same ``used_at``) when no result could be stored for the nonce.

        A nonce is spent by a stored result; a request that failed after consuming it
        gives it back, so the attester can try again.  Whether it was given back.
        """
        params = {"b_nonce": nonce, "b_used": used_at}

        def work(conn: Connection, again: bool) -> bool:
            if int(conn.execute(_SQL["release"], params).rowcount or 0) == 1:
                return True
            # Retried: only this request could give back a nonce marked used at its time.
            if not again:
                return False
            row = conn.execute(_SQL["challenge_row"], params).first()
            return row is not None and row.used_at is None

        return self._run(work, write=True)

    # -- results ----------------------------------------------------------------------------------
    def save_result(self, *, status: str, kind: str | None, nonce: str, ear: str, result: Any,
                    policy_id: str | None = None, refvals_id: str | None = None,
                    now: datetime | None = None, id: str | None = None) -> StoredResult:
        """Store a result; committed when this returns (the caller may then hand out its id).

        ``result`` is the result document, or its serialisation as :class:`JSONText`.
        """
        row = StoredResult(id=id or str(uuid.uuid4()), created_at=now or utcnow(), nonce=nonce, status=status,
                           kind=kind, ear=ear, result=result, policy_id=policy_id, refvals_id=refvals_id)
        params = {"id": row.id, "created_at": row.created_at, "nonce": nonce, "status": status, "kind": kind,
                  "ear": ear, "result": result, "policy_id": policy_id, "refvals_id": refvals_id, "b_id": row.id}

        def work(conn: Connection, again: bool) -> None:
            if again and conn.execute(_SQL["result_exists"], params).first() is not None:
                return  # the first attempt stored it (the id is this request's own UUID)
            conn.execute(_SQL["result_insert"], params)

        self._run(work, write=True)
        return row

    def get_result(self, id: str) -> StoredResult | None:
        row = self._run(lambda conn, _again: conn.execute(_SQL["result_row"], {"b_id": id}).first())
        return StoredResult(**row._mapping) if row is not None else None

    # -- versioned documents ----------------------------------------------------------------------
    def put(self, kind: Kind, name: str, content: Any, *, now: datetime | None = None) -> Policy | RefValues:
        """Store ``content`` as the next version of ``name`` (a policy's Rego text, or a refvals document)."""
        model = _MODELS[kind]
        for _ in range(20):
            try:
                with self._write() as s:
                    top = s.execute(select(func.max(model.version)).where(model.name == name)).scalar()
                    fields = {"rego": content} if kind == "policy" else {"document": content}
                    row = model(name=name, version=(top or 0) + 1, created_at=now or utcnow(), **fields)
                    s.add(row)
                return row
            except IntegrityError:
                continue  # another writer took that version number: take the next one
        raise InputError(f"could not store a new version of {kind} {name!r}: too much contention")

    def get(self, kind: Kind, name: str, version: int | None = None) -> Policy | RefValues | None:
        """The latest live version of ``name`` (or the given version, if it is not deleted)."""
        model = _MODELS[kind]
        with self._read() as s:
            q = select(model).where(model.name == name, model.deleted_at.is_(None))
            if version is not None:
                q = q.where(model.version == version)
            return cast("Policy | RefValues | None", s.execute(q.order_by(model.version.desc()).limit(1)).scalar_one_or_none())

    def current(self, policy: str, refvals: str) -> tuple[Document | None, Document | None]:
        """The latest live policy called ``policy`` and reference values called ``refvals`` (None: none stored).

        One query asks which versions are current, so a version another process stored or
        deleted a moment ago counts for this call; the documents themselves are read only
        for a (name, version) this process has not seen.  A stored version never changes
        (a PUT adds the next number; numbers are never reused, deleted or not), so the
        parsed document is kept, in a bounded cache, and the same object is returned for
        the same version every time.
        """
        def work(conn: Connection, _again: bool) -> tuple[Document | None, Document | None]:
            found: list[Document | None] = [None, None]
            for k, version in conn.execute(_SQL["current"], {"b_policy": policy, "b_refvals": refvals}).all():
                if version is None:
                    continue
                kind: Kind = "policy" if k == 0 else "refvals"
                name = policy if k == 0 else refvals
                doc = self._cached(kind, name, version)
                if doc is None:
                    doc = self._load(conn, kind, name, version)
                found[int(k)] = doc
            return found[0], found[1]

        return self._run(work)

    def _cached(self, kind: Kind, name: str, version: int) -> Document | None:
        with self._docs_lock:
            doc = self._docs.get((kind, name, version))
            if doc is not None:
                self._docs.move_to_end((kind, name, version))
            return doc

    def _load(self, conn: Connection, kind: Kind, name: str, version: int) -> Document | None:
        stmt = _SQL["policy_doc" if kind == "policy" else "refvals_doc"]
        content = conn.execute(stmt, {"b_name": name, "b_version": version}).scalar()
        if content is None:
            return None
        doc = Document(kind=kind, name=name, version=version, content=content)
        with self._docs_lock:
            doc = self._docs.setdefault((kind, name, version), doc)  # a concurrent load may have won: keep one
            self._docs.move_to_end((kind, name, version))
            while len(self._docs) > DOCUMENT_CACHE_SIZE:
                self._docs.popitem(last=False)
        return doc

    def versions(self, kind: Kind, name: str) -> list[Policy | RefValues]:
        model = _MODELS[kind]
        with self._read() as s:
            rows = s.execute(select(model).where(model.name == name, model.deleted_at.is_(None))
                             .order_by(model.version)).scalars()
            return [cast("Policy | RefValues", r) for r in rows]

    def names(self, kind: Kind) -> list[tuple[str, int, datetime]]:
        """(name, latest live version, its creation time) for every name with a live version."""
        model = _MODELS[kind]
        with self._read() as s:
            latest = (select(model.name, func.max(model.version).label("v"))
                      .where(model.deleted_at.is_(None)).group_by(model.name).subquery())
            rows = s.execute(select(model.name, model.version, model.created_at)
                             .join(latest, (model.name == latest.c.name) & (model.version == latest.c.v))
                             .order_by(model.name)).all()
            return [(r[0], r[1], r[2]) for r in rows]

    def delete(self, kind: Kind, name: str, *, now: datetime | None = None) -> int:
        """Mark every live version of ``name`` deleted; the number of versions affected."""
        model = _MODELS[kind]
        with self._write() as s:
            res = s.execute(update(model).where(model.name == name, model.deleted_at.is_(None))
                            .values(deleted_at=now or utcnow()).execution_options(synchronize_session=False))
        return int(res.rowcount or 0)  # type: ignore[attr-defined]

    def enrol_ak(self, name: str, pem: str, fingerprint: str, *, now: datetime | None = None) -> TpmAk:
        """Enrol (or replace) the attestation key called ``name``; a key already enrolled under another name is refused."""
        try:
            with self._write() as s:
                row = s.get(TpmAk, name)
                if row is None:
                    row = TpmAk(name=name, fingerprint=fingerprint, pem=pem, created_at=now or utcnow())
                    s.add(row)
                else:
                    row.fingerprint, row.pem, row.created_at = fingerprint, pem, now or utcnow()
                s.flush()
                s.expunge(row)
                return row
        except IntegrityError:
            raise InputError(f"this key is already enrolled under another name (fingerprint {fingerprint})") from None

    def find_ak(self, fingerprint: str) -> TpmAk | None:
        with self._read() as s:
            row = s.execute(select(TpmAk).where(TpmAk.fingerprint == fingerprint)).scalar_one_or_none()
            if row is not None:
                s.expunge(row)
            return row

    def list_aks(self) -> list[TpmAk]:
        with self._read() as s:
            rows = list(s.execute(select(TpmAk).order_by(TpmAk.name)).scalars())
            for row in rows:
                s.expunge(row)
            return rows

    def delete_ak(self, name: str) -> bool:
        with self._write() as s:
            row = s.get(TpmAk, name)
            if row is None:
                return False
            s.delete(row)
            return True

    # -- nodes ------------------------------------------------------------------------------------
    def _transaction(self, work: Callable[[Connection, bool], _T]) -> _T:
        """Run ``work(connection, again)`` in one transaction on both databases (SQLite: ``BEGIN IMMEDIATE``).

        :meth:`_run` with ``atomic``, never in autocommit mode: for changes that must happen together
        (a result and the node state it changes).  A connection found dead runs ``work`` once
        more on a new one, ``again`` true, as :meth:`_run` does: nothing of the first attempt
        committed unless its COMMIT did, which ``work`` checks for then.
        """
        return self._run(work, write=True, atomic=True)

    def enrol_node(self, id: str, *, kind: str, identity: Mapping[str, Any], policy: str | None = None,
                   refvals: str | None = None, interval_s: int = 60, now: datetime | None = None) -> Node:
        """Enrol a node in state ``unknown``; :class:`NodeExists` when a live node has this id.

        A retired node's id may be enrolled again: the row is taken over (new kind, identity,
        settings, state ``unknown``) and its history goes on, with a row saying so.
        """
        now = now or utcnow()
        try:
            with self._write() as s:
                row = s.get(Node, id, with_for_update=True)
                if row is not None and row.retired_at is None:
                    raise NodeExists(f"a node named {id!r} is enrolled already")
                again = row is not None
                if row is None:
                    row = Node(id=id, created_at=now)
                    s.add(row)
                row.kind, row.identity, row.policy, row.refvals = kind, dict(identity), policy, refvals
                row.interval_s, row.state, row.state_since, row.retired_at = interval_s, "unknown", now, None
                row.last_result_id = row.last_attested_at = None
                s.flush()
                if again:  # a new node starts unknown with no history; a returning one changes back to unknown
                    self._add_history(s.connection(), id, "unknown", now, None, "enrolled again after being retired")
                s.expunge(row)
                return row
        except IntegrityError:  # a concurrent enrolment of the same id won
            raise NodeExists(f"a node named {id!r} is enrolled already") from None

    def update_node(self, id: str, *, identity: Mapping[str, Any] | None = None, policy: str | None = None,
                    refvals: str | None = None, interval_s: int | None = None, set_policy: bool = False,
                    set_refvals: bool = False, now: datetime | None = None) -> Node | None:
        """Change a live node's settings (None: not found or retired).

        ``policy`` / ``refvals`` change only with ``set_policy`` / ``set_refvals`` (so that None can
        mean "the verifier's own").  A new identity makes the state ``unknown`` (with a history
        row): what was attested so far was another identity's.
        """
        now = now or utcnow()
        with self._write() as s:
            row = s.get(Node, id, with_for_update=True)
            if row is None or row.retired_at is not None:
                return None
            if set_policy:
                row.policy = policy
            if set_refvals:
                row.refvals = refvals
            if interval_s is not None:
                row.interval_s = interval_s
            if identity is not None and dict(identity) != row.identity:
                row.identity = dict(identity)
                if row.state != "unknown":
                    self._add_history(s.connection(), id, "unknown", now, None, "identity changed")
                    row.state, row.state_since = "unknown", now
            s.flush()
            s.expunge(row)
            return row

    def retire_node(self, id: str, *, now: datetime | None = None) -> bool:
        """Retire a live node (its row, history and results stay); False when there is none."""
        now = now or utcnow()
        with self._write() as s:
            res = s.execute(update(Node).where(Node.id == id, Node.retired_at.is_(None)).values(retired_at=now)
                            .execution_options(synchronize_session=False))
            return int(res.rowcount or 0) == 1  # type: ignore[attr-defined]

    def list_nodes(self, *, retired: bool = False) -> list[Node]:
        """Live nodes by id (``retired``: every node, retired ones too)."""
        with self._read() as s:
            q = select(Node).order_by(Node.id)
            if not retired:
                q = q.where(Node.retired_at.is_(None))
            rows = list(s.execute(q).scalars())
            for row in rows:
                s.expunge(row)
            return rows

    def get_node(self, id: str, *, history: int = 0, retired: bool = True) -> NodeView | None:
        """A node (retired ones too, unless ``retired`` is false) with its last ``history`` state changes."""
        with self._read() as s:
            row = s.get(Node, id)
            if row is None or (not retired and row.retired_at is not None):
                return None
            states: list[NodeState] = []
            if history > 0:
                states = list(s.execute(select(NodeState).where(NodeState.node_id == id)
                                        .order_by(NodeState.seq.desc()).limit(history)).scalars())
            for obj in (row, *states):
                s.expunge(obj)
            return NodeView(row, tuple(states))

    def live_node(self, id: str) -> Node | None:
        """The live node called ``id`` (None: unknown or retired): what an attestation as it is appraised with."""
        view = self.get_node(id, retired=False)
        return view.node if view is not None else None

    @staticmethod
    def _add_history(conn: Connection, node_id: str, state: str, at: datetime, result_id: str | None,
                     reason: str) -> int:
        """Append a state change to ``node_states`` (the caller holds the node row); its ``seq``."""
        top = conn.execute(select(func.max(_NODE_STATES.c.seq)).where(_NODE_STATES.c.node_id == node_id)).scalar()
        seq = int(top or 0) + 1
        conn.execute(insert(_NODE_STATES), {"node_id": node_id, "seq": seq, "state": state, "at": at,
                                            "result_id": result_id, "reason": reason[:2000]})
        return seq

    def _record_on(self, conn: Connection, node_id: str, result_id: str, status: str, at: datetime,
                   reason: str) -> Transition | None:
        """:meth:`record_attestation`'s statements, in the caller's transaction.

        The node row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite's write lock is
        held already), so concurrent attestations of one node change its state one at a time.
        A retired or unknown node, or a result older than the one recorded last, changes nothing.
        A state change is the node's UPDATE and one history INSERT (a notification outbox row
        would be one more INSERT here, in the same transaction).
        """
        n = _NODES.c
        row = conn.execute(select(n.state, n.retired_at, n.last_attested_at).where(n.id == node_id)
                           .with_for_update()).first()
        if row is None or row.retired_at is not None:
            return None
        if row.last_attested_at is not None and at < row.last_attested_at:
            return None  # a later attestation was recorded first: it stands
        new = _STATE_OF_STATUS.get(status, "contraindicated")
        values: dict[str, Any] = {"last_result_id": result_id, "last_attested_at": at}
        transition = None
        if new != row.state:
            values.update(state=new, state_since=at)
            seq = self._add_history(conn, node_id, new, at, result_id, reason)
            transition = Transition(node_id, row.state, new, seq, at, result_id)
        conn.execute(update(_NODES).where(n.id == node_id).values(**values))
        return transition

    def record_attestation(self, node_id: str, result_id: str, status: str, at: datetime, *,
                           reason: str = "") -> Transition | None:
        """Note an attestation of ``node_id`` (its last result and time) and, when its state changes,
        the new state and a history row, in one transaction.  The transition, or None."""
        return self._transaction(lambda conn, _again: self._record_on(
            conn, node_id, result_id, status, at, reason or f"attestation {status}"))

    def save_node_result(self, *, node_id: str, status: str, kind: str | None, nonce: str, ear: str, result: Any,
                         policy_id: str | None = None, refvals_id: str | None = None, now: datetime | None = None,
                         id: str | None = None, reason: str = "") -> tuple[StoredResult, Transition | None]:
        """:meth:`save_result` for an attestation as a node, and :meth:`record_attestation`, in one transaction."""
        row = StoredResult(id=id or str(uuid.uuid4()), created_at=now or utcnow(), nonce=nonce, status=status,
                           kind=kind, ear=ear, result=result, policy_id=policy_id, refvals_id=refvals_id,
                           node_id=node_id)
        params = {"id": row.id, "created_at": row.created_at, "nonce": nonce, "status": status, "kind": kind,
                  "ear": ear, "result": result, "policy_id": policy_id, "refvals_id": refvals_id,
                  "node_id": node_id, "b_id": row.id}

        def work(conn: Connection, again: bool) -> Transition | None:
            if again and conn.execute(_SQL["result_exists"], params).first() is not None:
                return None  # the first attempt committed (and recorded the node's state with it)
            conn.execute(_SQL["result_insert"], params)
            return self._record_on(conn, node_id, row.id, status, row.created_at,
                                   reason or f"attestation {status}")

        return row, self._transaction(work)

    def ping(self) -> str | None:
        """The schema revision, once the database has shown it would take a write; raises if not.

        The write probe updates the revision row to itself and rolls back: a read-only
        database (a PostgreSQL standby or read-only session, a SQLite file opened read-only)
        refuses it, while nothing is ever written.  On SQLite the write lock is taken for
        the moment the probe lasts.
        """
        self.check_file()
        with self.engine.connect() as raw:
            conn = raw.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin() as tx:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
                tx.rollback()
        return revision
