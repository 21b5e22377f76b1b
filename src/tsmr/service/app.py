"""The HTTP verifier: challenge -> evidence bundle -> appraisal -> signed EAR, over FastAPI.

Theory of operation
-------------------
``POST /challenge`` stores a fresh 32-byte nonce with an expiry (at most
``challenge_burst`` at once per client address and worker, refilled at
``challenge_rate`` per second; 429 beyond).  ``POST /attest`` takes a tsmr
evidence bundle carrying that nonce as its body, exactly the file ``tsmr attest
-o`` writes, and checks everything about the request first: its shape, depth and
sizes, and the policy and reference values it is appraised with.  Those are the
verifier's choice (``Settings.policy`` / ``Settings.refvals``, default the stored
documents named "default"), not part of the body: a request may name others
(``?policy=NAME&refvals=NAME``) only with the admin token (403
``policy.selection-forbidden`` otherwise), or an attester could pick a lenient
policy and turn a denial into ``affirming``.  Only then is the nonce consumed,
with one conditional UPDATE: only the request whose UPDATE changed a row goes on
to appraisal, whichever replica it reached.  A nonce that was never issued, has expired or was already
used is refused with a 4xx and *nothing is stored*: the endpoint needs no
credentials, so storing refusals would let anyone fill the database, and a
relying party only ever looks up results by the id a successful attestation
returned.  Evidence that is present but bad (a broken signature, a replay
mismatch, a policy denial) is a stored result with status
``contraindicated``: that is an answer, not an error.

With ``--pccs`` / ``--kds`` (``Settings.pccs_url`` / ``kds_url``), the collateral a
TDX quote or SEV-SNP report needs is found before the nonce is spent and outside any
database transaction (:func:`_trust_for`): files the operator gave win, then the
database cache shared by every worker and replica
(:mod:`tsmr.service.collateral_cache`), then a fetch under a lease, so one caller
fetches each document while the others wait for it.  What cannot be had is an error
finding (``collateral.unavailable`` / ``collateral.expired``) in the stored result,
not an HTTP error.  A daemon thread per worker (started and stopped with the
application's lifespan) refreshes cached documents ahead of their expiry.

A nonce is spent by a stored result and by nothing else: when anything fails
after the nonce was consumed (evidence that cannot be evaluated, the database
refusing the result), the nonce is given back before the error is answered, so
the attester may try again with it.

The result is stored before the response is sent, and carries an EAR JWT
signed with the verifier's key (``GET /.well-known/jwks.json`` publishes it).

Database trouble (unreachable, read-only, the SQLite file deleted) is 503
``database.unavailable`` on any route, and ``/healthz`` says so too: its check
is a write that is rolled back, done at most once a second per worker.

Enrolled nodes (``/nodes``, an admin endpoint) attest with ``POST /attest?node=ID``,
which goes through FastAPI (the hot route takes no query string): the node is looked
up before the nonce is spent (404 ``node.unknown`` for an unknown or retired one), its
own policy and reference values apply, the identity its evidence shows (TDX MRTD,
SEV-SNP measurement, CCA RIM, the TPM attestation key) is compared with the one it was
enrolled with as part of the appraisal, before its policy step (``node.identity-mismatch``,
an error the policy sees; the default policy makes the result ``contraindicated``), and
the result is stored with the node's state change in one transaction.

Admin endpoints (``/policies``, ``/refvals``, ``/tpm-aks``, ``/nodes``) exist only when an
admin token is configured; the bearer token is compared in constant time and
never logged.  Over TLS with a client CA (``--tls-client-ca``) they also need a
client certificate that CA issued (403 ``admin.client-certificate-required``),
as does naming a policy on ``/attest``; the public routes need none.
Bodies are limited (16 MiB for ``/attest``, 1 MiB elsewhere) before they are
read; a declared ``Content-Length`` over the limit is refused at once.
JSON bodies nested deeper than 64 levels, or holding non-finite numbers or
lone surrogates (which no EAR and no database could carry), are refused (422
``request.too-deep`` / ``request.invalid``) before anything else.

Work is bounded too (:mod:`tsmr.evidence.limits`, ``TSMR_MAX_*`` and
``TSMR_TIME_BUDGET``): a bundle with too many logs, records or bytes in a
record is refused with 413 ``bundle.too-large`` naming the limit and the value,
before anything is verified or parsed and before the nonce is spent when the
count can be seen without parsing (text logs); binary logs are counted as they
are parsed.  An appraisal past its time budget is 422
``appraisal.time-budget``.  On SIGTERM an appraisal in flight stops at its next
step (503 ``verifier.shutting-down``), so a worker never outlives uvicorn's
graceful-shutdown period by more than one step of one appraisal.  Either way
the nonce is given back.
Errors are JSON ``{"error": <code>, "detail": ...}`` without stack traces;
logs are one JSON object per line.

``POST /challenge`` and ``POST /attest`` without a query string, every attestation's
two requests, are served by :class:`VerifierApp` beside FastAPI's middleware, routing
and dependency machinery, through the same functions (:func:`issue_challenge`,
:func:`parse_bundle`, :func:`run_attestation`, :func:`error_response`) and the same
access log and body limit; FastAPI serves everything else and documents both routes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, AsyncIterator, Callable, Mapping, Sequence

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.routing import APIRoute
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.exceptions import HTTPException

from ..appraisal import ear
from ..errors import InputError, TsmrError
from ..evidence import tpm
from ..evidence.anchors import TrustAnchors
from ..findings import Finding, Severity
from ..version import __version__
from ..evidence.limits import AppraisalCancelled, LimitExceeded
from .db import (DatabaseUnavailable, Document, JSONText, Node, NodeExists, Store, describe_db_error, make_engine,
                 redact_url, upgrade, utcnow)
from .collateral_cache import public_url
from .metrics import CONTENT_TYPE, Metrics
from .middleware import AccessLog, BodyLimit, _event, configure_logging
from .schemas import (_errors, AkIn, AkOut, AttestResponse, ChallengeResponse, Credentials,
                      Health, IDENTITY_FIELDS, JWK, JWKSet, MAX_JSON_DEPTH, NAME_PATTERN, NamePath, NodeDetail,
                      NodeIn, NodeList, NodeOut, NodeQuery, NodeStateOut, PolicyIn, PolicyOut, PolicyQuery,
                      RefvalsIn, RefvalsOut, RefvalsQuery, StoredResultResponse, VersionInfo, VersionList,
                      VersionQuery, bundle_schemas, read_bundle_body)
from .settings import Settings

__all__ = ["create_app", "app_from_env", "Settings"]

log = logging.getLogger("tsmr.service")

DEFAULT_NAME = "default"  # the policy / reference values used when the settings name none
HEALTH_PROBE_INTERVAL = 1.0  # seconds a successful database probe answers /healthz for
DB_RETRY_AFTER = "5"  # seconds, with 503 database.unavailable


# -- middleware -----------------------------------------------------------------------------------



def _check_limits(v: "Verifier", bundle: Mapping[str, Any]) -> None:
    """413 ``bundle.too-large`` when the bundle is over a limit that counting (not parsing) shows."""
    from ..evidence.limits import Budget, LimitExceeded

    try:
        Budget(v.limits).check_document(bundle)
    except LimitExceeded as exc:
        v.metrics.attestation("refused-too-large")
        _event(logging.INFO, "attestation refused", reason=exc.code, limit=exc.limit, value=exc.value)
        raise ApiError(413, exc.code, str(exc)) from None


def _limit_error(exc: Exception) -> "ApiError":
    """The answer for a limit met during the appraisal (the nonce has been given back by then)."""
    from ..evidence.limits import AppraisalCancelled, TimeBudgetExceeded

    status = 503 if isinstance(exc, AppraisalCancelled) else 422 if isinstance(exc, TimeBudgetExceeded) else 413
    _event(logging.INFO, "appraisal stopped", reason=getattr(exc, "code", ""), limit=getattr(exc, "limit", None))
    return ApiError(status, getattr(exc, "code", "bundle.too-large"), str(exc)[:2000])


def _watch_shutdown(stopping: threading.Event) -> None:
    """Chain a handler onto uvicorn's SIGTERM / SIGINT ones that tells appraisals in flight to stop.

    uvicorn's graceful shutdown waits for requests in flight, and the thread of
    an appraisal cannot be interrupted from outside: the appraisal itself looks
    at ``stopping`` between its steps (:class:`tsmr.evidence.limits.Budget`).
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            stopping.set()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:  # not under uvicorn's handlers: do what the signal does
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        signal.signal(sig, handler)


# -- the application ------------------------------------------------------------------------------

def _json_error(status: int, code: str, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=dict(headers or {}))


_HTTP_CODES = {400: "request.malformed", 401: "auth.required", 404: "not-found", 405: "method-not-allowed",
               413: "request.too-large", 415: "request.media-type", 503: "unavailable"}


class ApiError(HTTPException):
    """An HTTPException with a stable error code."""

    def __init__(self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, detail, dict(headers) if headers else None)
        self.code = code


TOO_DEEP = f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"


def database_unavailable(v: "Verifier | None", exc: BaseException) -> JSONResponse:
    """503 for a database that cannot serve the request; /healthz stops trusting its last probe."""
    if v is not None:
        v.health_checked = 0.0
    _event(logging.WARNING, "database unavailable", error=describe_db_error(exc))
    return _json_error(503, "database.unavailable", "the verifier's database is unavailable; try again later",
                       {"Retry-After": DB_RETRY_AFTER})


def error_response(v: "Verifier | None", exc: BaseException) -> JSONResponse | None:
    """The JSON answer for an exception a request raised, or None when it is not one of ours to answer (a 500).

    One mapping for FastAPI's exception handlers and for the hot routes (:class:`VerifierApp`),
    so that both answer the same request the same way.
    """
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _json_error(400, "request.json", "the body is not valid JSON")
        if any(e.get("type") == "json_too_deep" for e in errors):
            return _json_error(422, "request.too-deep", TOO_DEEP)
        # Never echo the input back: a bundle can be megabytes, and inputs can hold secrets.
        slim = [{"loc": [str(p) for p in e.get("loc", ())][:12], "msg": str(e.get("msg", ""))[:300],
                 "type": str(e.get("type", ""))} for e in errors[:20]]
        return _json_error(422, "request.invalid", slim)
    if isinstance(exc, HTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            # The JSON reader gave up on the nesting before any validator saw the body.
            return _json_error(422, "request.too-deep", TOO_DEEP)
        code = getattr(exc, "code", None) or _HTTP_CODES.get(exc.status_code, f"http.{exc.status_code}")
        return _json_error(exc.status_code, code, exc.detail, exc.headers)
    if isinstance(exc, DataError):
        # The database refused a value of this request (e.g. a character PostgreSQL cannot store).
        _event(logging.INFO, "value refused by the database", error=describe_db_error(exc))
        return _json_error(422, "request.unstorable", "the database cannot store a value of this request")
    if isinstance(exc, (SQLAlchemyError, DatabaseUnavailable)):
        return database_unavailable(v, exc)
    return None


def _install_error_handlers(app: FastAPI) -> None:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        answer = error_response(getattr(request.app.state, "verifier", None), exc)
        if answer is None:  # (registered for these classes only)
            raise exc
        return answer

    for cls in (HTTPException, DataError, SQLAlchemyError, DatabaseUnavailable, RequestValidationError):
        app.add_exception_handler(cls, handler)


class RateLimiter:
    """Token buckets per client address: ``burst`` requests at once, refilled at ``rate`` per second.

    Per worker process and in memory: cheap, and enough to stop one address from
    filling the challenge table.  IPv6 addresses count by their /64, which one host
    usually has whole.  The table is bounded: when full, buckets that have refilled
    (indistinguishable from new ones) are dropped first, then the least recently used.
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 65536) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time), oldest use first
        self.lock = threading.Lock()

    @staticmethod
    def key(host: str) -> str:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return host
        if addr.version == 6 and addr.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{addr}/64", strict=False))
        return str(addr.ipv4_mapped or addr) if addr.version == 6 else str(addr)

    def take(self, host: str, now: float | None = None) -> float:
        """0 when the request may go ahead (a token is taken), else the seconds until one is there."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        k = self.key(host)
        with self.lock:
            tokens, last = self.buckets.pop(k, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self.buckets[k] = (tokens, now)
            if len(self.buckets) > self.max_clients:
                self._shrink(now)
            return wait

    def _shrink(self, now: float) -> None:
        full = [k for k, (t, last) in self.buckets.items() if t + (now - last) * self.rate >= self.burst]
        for k in full:
            del self.buckets[k]
        while len(self.buckets) > self.max_clients:
            del self.buckets[next(iter(self.buckets))]


class Verifier:
    """What the endpoints share: store, key, trust anchors, metrics."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] | None = None) -> None:
        from ..appraisal import appraise
        from .collateral_cache import DatabaseCache, service_fetcher

        for what, name in (("policy", settings.policy), ("reference values", settings.refvals)):
            if not re.match(NAME_PATTERN, name or ""):
                raise InputError(f"the verifier's {what} name {name!r} is not a valid name "
                                 "(letters, digits, '.', '_', '-'; at most 128)")
        if settings.challenge_rate < 0 or settings.challenge_burst < 1:
            raise InputError("the challenge rate must be >= 0 (0: no limit) and the burst >= 1")
        # Every appraisal is bounded by the verifier's limits and stops when the worker is told to.
        self.limits = settings.limits()
        self.stopping = threading.Event()
        self.appraise = functools.partial(appraise, limits=self.limits, cancelled=self.stopping.is_set)
        self.settings = settings
        self.store = Store(make_engine(settings.database_url))
        if settings.migrate:
            upgrade(self.store.engine)
        self.store.pin()
        self.health_checked = 0.0  # monotonic time of the last successful database probe
        self.health_revision: str | None = None
        self.health_lock = threading.Lock()
        self.challenges = RateLimiter(settings.challenge_rate, settings.challenge_burst)
        self.challenge_ttl = timedelta(seconds=settings.challenge_ttl)
        self.key = ear.load_or_create_key(settings.key_path or "ear-key.pem", settings.key_alg)
        self.kid = ear.thumbprint(self.key)
        # The signing key first, then the keys published beside it (retired or upcoming).
        self.jwks = ear.jwks([self.key.public_key(), *settings.published_keys()])
        self.trust = settings.trust_anchors()
        self.admin_token = settings.read_admin_token()
        self.admin_digest = (hashlib.sha256(self.admin_token.encode("utf-8", "surrogateescape")).digest()
                             if self.admin_token is not None else None)
        self.metrics = Metrics(settings.metrics_dir)
        self.verifier_id = {"developer": settings.verifier_developer, "build": settings.build()}
        # Collateral: fetched from --pccs / --kds (None: neither given), cached in the database for every replica.
        settings.check_collateral()
        self.fetcher = service_fetcher(settings, self.trust, self.metrics)
        self.cache = DatabaseCache(self.store, metrics=self.metrics)
        # Names this worker in lease owners (each request and the refresher add their own suffix).
        self.owner = f"{socket.gethostname()[:64]}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        # The time evidence and collateral are judged at: the wall clock, except for a test that
        # passes create_app(clock=...) to appraise old fixture evidence (nothing else can set it).
        self.clock = clock
        self.refresher: CollateralRefresher | None = None

    def evaluation_time(self, now: datetime) -> datetime:
        """When an attestation received at ``now`` is judged (``now``, unless a test fixed the clock)."""
        return self.clock() if self.clock is not None else now


class CollateralRefresher:
    """One daemon thread per worker: every ``interval`` seconds, refresh the cached collateral that is due.

    Each document is refreshed under its lease (:func:`tsmr.system.collateral.refresh_due`),
    so however many workers and replicas run this, one fetches each document; a failed
    refresh keeps the cached copy (the fetcher logged and counted the failure).
    """

    def __init__(self, v: Verifier, interval: float) -> None:
        self.v = v
        self.interval = interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tsmr-collateral-refresh", daemon=True)
        self.runs = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def run_once(self) -> int:
        from ..system.collateral import refresh_due

        v = self.v
        assert v.fetcher is not None
        n = refresh_due(trust=v.trust, fetcher=v.fetcher, cache=v.cache, now=v.evaluation_time(utcnow()),
                        owner=f"{v.owner}/refresh")
        self.runs += 1
        if n:
            _event(logging.INFO, "collateral refreshed", documents=n)
        return n

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - the database may be down for a while: try again next time
                _event(logging.WARNING, "collateral refresh failed", error=describe_db_error(exc))


class VerifierApp(FastAPI):
    """The verifier's FastAPI application, with its two busiest routes served beside FastAPI's machinery.

    Every attestation is ``POST /challenge`` then ``POST /attest``.  Through FastAPI each
    request passes Starlette's and FastAPI's middleware, the router, dependency solving and
    response handling: about 0.6 ms of CPU per request, a fifth of what a whole attestation
    costs the verifier besides the appraisal itself.  A request for either route with no
    query string is taken here instead, by the same steps FastAPI would run: the same access
    log and body limit (:class:`AccessLog`, :class:`BodyLimit`), the same body reader
    (:func:`parse_bundle`), the same work in the same thread pool (:func:`issue_challenge`,
    :func:`run_attestation`) and the same error answers (:func:`error_response`).  Anything
    else (a query string, another method, a root path) goes to FastAPI, which documents
    both routes in the OpenAPI document as before.
    """

    hot: dict[str, Any]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and not scope.get("query_string")
                and not scope.get("root_path")):
            route = self.hot.get(scope["path"])
            if route is not None:
                scope["app"] = self
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for k, value in scope.get("headers") or ():
        if k == name:
            return bytes(value).decode("latin-1")
    return None


async def _read_body(receive: Any) -> bytes | None:
    """The whole request body (None: the client went away)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_bytes(send: Any, status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json"), *extra]})
    await send({"type": "http.response.body", "body": body})


def _hot_routes(public: APIRouter, v: Verifier) -> dict[str, Any]:
    """``POST /challenge`` and ``POST /attest`` as plain ASGI apps (see :class:`VerifierApp`)."""
    from starlette.concurrency import run_in_threadpool

    # FastAPI's routes (the access log names them in the scope, as FastAPI does)
    routes = {r.path: r for r in public.routes if isinstance(r, APIRoute) and "POST" in (r.methods or ())}

    async def answer_error(exc: Exception, scope: Any, receive: Any, send: Any) -> None:
        response = error_response(v, exc)
        if response is None:
            raise exc  # the access log answers 500 and logs it
        await response(scope, receive, send)

    async def challenge(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = routes["/challenge"]
        try:
            if await _read_body(receive) is None:
                return
            client = scope.get("client")
            made = await run_in_threadpool(issue_challenge, v, client[0] if client else "")
        except Exception as exc:
            await answer_error(exc, scope, receive, send)
            return
        await _send_bytes(send, 201, made.__pydantic_serializer__.to_json(made))

    async def attest(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = routes["/attest"]
        try:
            raw = await _read_body(receive)
            if raw is None:
                return
            body = parse_bundle(_header(scope, b"content-type"), raw)
            payload, result_id = await run_in_threadpool(run_attestation, v, body, scope=scope)
        except Exception as exc:
            await answer_error(exc, scope, receive, send)
            return
        await _send_bytes(send, 201, payload, [(b"location", f"/results/{result_id}".encode())])

    limits = {"attest_limit": v.settings.max_attest_bytes, "default_limit": v.settings.max_body_bytes}
    return {path: AccessLog(BodyLimit(endpoint, **limits), metrics=v.metrics)
            for path, endpoint in (("/challenge", challenge), ("/attest", attest))}


def create_app(settings: Settings | None = None, *, clock: Callable[[], datetime] | None = None) -> FastAPI:
    """The verifier application for ``settings`` (default: from the environment).

    Runs the database migrations (unless ``settings.migrate`` is false), loads or
    creates the EAR signing key and loads the trust anchors before returning,
    so a misconfiguration fails here rather than on the first request.
    ``clock`` is for tests only (``tsmr serve`` never passes it): the time at which
    evidence and collateral are judged, so that fixture evidence of years ago can be
    appraised with collateral that was valid then.
    """
    settings = (settings or Settings.from_env()).resolved()
    configure_logging(settings)
    v = Verifier(settings, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _event(logging.INFO, "verifier ready", database=redact_url(settings.database_url or ""), kid=v.kid,
               admin_endpoints=v.admin_token is not None, trust=v.trust.given(), policy=settings.policy,
               refvals=settings.refvals, require_refvals=settings.require_refvals,
               collateral_sources={k: public_url(u) for k, u in (("pccs", settings.pccs_url),
                                                                  ("kds", settings.kds_url)) if u})
        _watch_shutdown(v.stopping)
        if v.fetcher is not None:
            v.refresher = CollateralRefresher(v, settings.collateral_refresh)
            v.refresher.start()
        try:
            yield
        finally:
            if v.refresher is not None:
                v.refresher.stop()
            v.store.close()

    # Any route can refuse a body: a bad Content-Length (400), or one over the limit (413); any route
    # can find the database unavailable (503).
    app = VerifierApp(title="tsmr verifier", version=__version__, lifespan=lifespan, responses=_errors(400, 413, 503),
                  description="Challenge, attest with a tsmr evidence bundle, get a signed EAT Attestation Result.")
    app.state.verifier = v
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, attest_limit=settings.max_attest_bytes,
                       default_limit=settings.max_body_bytes)
    app.add_middleware(AccessLog, metrics=v.metrics)
    public = _public_routes(v)
    app.include_router(public)
    app.hot = _hot_routes(public, v)
    _describe_bundle(app)
    if v.admin_token is not None:
        app.include_router(_admin_routes(v))
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory of ``tsmr serve``: settings from ``TSMR_*`` variables."""
    return create_app(Settings.from_env())


# -- the body of POST /attest --------------------------------------------------------------------

# The body is read by _bundle_body, not by FastAPI, so the OpenAPI document is told what it is.
ATTEST_BODY: dict[str, Any] = {"requestBody": {
    "required": True, "description": "A tsmr evidence bundle, exactly as `tsmr attest -o` writes it.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Bundle"}}}}}


class AttestBody:
    """A ``POST /attest`` body: the parsed bundle as the appraisal reads it, its nonce and its number of logs."""

    __slots__ = ("doc", "nonce", "logs")

    def __init__(self, doc: dict[str, Any], nonce: str, logs: int) -> None:
        self.doc, self.nonce, self.logs = doc, nonce, logs


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def parse_bundle(content_type: str | None, raw: bytes) -> AttestBody:
    """Check and parse the body of ``POST /attest`` once, before any other part of the request is looked at.

    FastAPI's own body handling would parse the JSON, build pydantic models of the
    whole bundle and (for the appraisal) dump them back into a second copy; here
    the parsed document is what the appraisal gets, after :func:`check_json` and a
    check of its outer shape.  A body without a Content-Type is read as JSON (as
    FastAPI does); one with another media type is 415.
    """
    from pydantic import ValidationError
    from pydantic_core import PydanticCustomError

    if content_type and not _is_json(content_type):
        raise ApiError(415, "request.media-type", "send the bundle as application/json "
                       "(curl --data-binary @bundle.json -H 'Content-Type: application/json')")
    try:
        doc, shape = read_bundle_body(raw)
    except PydanticCustomError as exc:
        raise RequestValidationError([{"type": exc.type, "loc": ("body",), "msg": exc.message()}]) from None
    except ValidationError as exc:
        raise RequestValidationError([{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]}
                                      for e in exc.errors(include_url=False, include_input=False)]) from None
    except json.JSONDecodeError:
        raise ApiError(400, "request.json", "the body is not valid JSON") from None
    except ValueError:  # e.g. bytes that are not text, a number with thousands of digits
        raise ApiError(400, "request.malformed", "the body could not be read as JSON") from None
    return AttestBody(doc, shape.nonce, len(shape.logs))


async def _bundle_body(request: Request) -> AttestBody:
    """:func:`parse_bundle` as a FastAPI dependency."""
    return parse_bundle(request.headers.get("content-type"), await request.body())


def _describe_bundle(app: FastAPI) -> None:
    """Add the bundle's schemas to the OpenAPI document (the ``$ref`` of ``ATTEST_BODY``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = generate()
            doc.setdefault("components", {}).setdefault("schemas", {}).update(bundle_schemas())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


# -- public endpoints -----------------------------------------------------------------------------

def _public_routes(v: Verifier) -> APIRouter:
    r = APIRouter()

    @r.post("/challenge", response_model=ChallengeResponse, status_code=201, tags=["attestation"],
            responses=_errors(413, 429, 503))
    def challenge(request: Request) -> ChallengeResponse:
        """A fresh nonce, usable once, until ``expires_at``; limited per client address (429 with Retry-After)."""
        return issue_challenge(v, request.client.host if request.client else "")

    @r.post("/attest", response_model=AttestResponse, status_code=201, tags=["attestation"],
            responses=_errors(400, 403, 404, 409, 410, 413, 415, 422, 503), openapi_extra=ATTEST_BODY)
    def attest(body: Annotated[AttestBody, Depends(_bundle_body)], request: Request,
               credentials: Credentials, policy: PolicyQuery = None, refvals: RefvalsQuery = None,
               node: NodeQuery = None) -> Response:
        """Appraise a bundle (the body, as ``tsmr attest -o`` writes it) over a nonce from ``POST /challenge``.

        The result is stored and returned with its signed EAR.  The verifier's
        policy and reference values apply; naming others (``?policy=NAME``,
        ``?refvals=NAME``) needs the admin bearer token (403
        ``policy.selection-forbidden`` / ``refvals.selection-forbidden`` without
        it).  Refused without storing anything and without spending the nonce: a
        forbidden or unknown (404) policy or reference values name, a body nested
        too deep or holding what JSON cannot carry (422), a bundle over a limit
        (413).  A nonce never issued (403), already used (409) or expired (410) is
        refused without storing anything.  Evidence that fails to verify gives a
        stored ``contraindicated`` result; evidence that cannot be appraised (422)
        gives the nonce back.

        ``?node=ID`` attests as an enrolled node (no token needed): the node's policy and
        reference values apply, its evidence must show the node's identity (else the
        error finding ``node.identity-mismatch``), and the result updates the node's
        state.  An unknown or retired node is 404 ``node.unknown`` before the nonce is
        spent; naming a policy or reference values as well is 400 ``node.selection-conflict``.
        """
        payload, result_id = run_attestation(v, body, scope=request.scope, credentials=credentials,
                                             policy=policy, refvals=refvals, node=node)
        return Response(payload, status_code=201, media_type="application/json",
                        headers={"Location": f"/results/{result_id}"})

    @r.get("/results/{result_id}", response_model=StoredResultResponse, tags=["attestation"],
           responses=_errors(404, 422))
    def get_result(result_id: uuid.UUID) -> StoredResultResponse:
        """A stored result, by the id ``POST /attest`` returned."""
        row = v.store.get_result(str(result_id))
        if row is None:
            raise ApiError(404, "result.unknown", "no result with this id")
        findings = [f.get("id", "") for f in (row.result or {}).get("findings", []) if isinstance(f, dict)]
        return StoredResultResponse(id=row.id, status=row.status, ear=row.ear, findings=findings, result=row.result,
                                    created_at=row.created_at, nonce=row.nonce, kind=row.kind,
                                    policy_id=row.policy_id, refvals_id=row.refvals_id, node_id=row.node_id)

    @r.get("/.well-known/jwks.json", response_model=JWKSet, tags=["keys"])
    def jwks() -> dict[str, Any]:
        """The public keys EARs are signed with (RFC 7517 JWK Set; ``kid`` is the RFC 7638 thumbprint)."""
        return v.jwks

    @r.get("/healthz", response_model=Health, tags=["operations"], responses=_errors(503))
    def healthz() -> Any:
        """Whether the database answers and would take a write, with its schema revision.

        The probe (a write that is rolled back) runs at most once a second per worker;
        in between, a database error on any request makes the next call probe again.
        """
        try:
            v.store.check_file()
            with v.health_lock:  # one probe at a time; those waiting use its answer
                if time.monotonic() - v.health_checked >= HEALTH_PROBE_INTERVAL:
                    v.health_checked = 0.0
                    v.health_revision = v.store.ping()
                    v.health_checked = time.monotonic()
                revision = v.health_revision
        except Exception as exc:  # noqa: BLE001 - any database failure means "not healthy"
            v.health_checked = 0.0
            _event(logging.WARNING, "health check failed", error=describe_db_error(exc))
            return JSONResponse({"status": "unavailable", "database": "unreachable", "revision": None},
                                status_code=503, headers={"Retry-After": DB_RETRY_AFTER})
        return Health(status="ok", database=v.store.engine.dialect.name, revision=revision)

    @r.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
           responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                            "description": "Prometheus text format 0.0.4"}})
    def metrics() -> PlainTextResponse:
        """Counters and histograms of this worker process, in the Prometheus text format."""
        return PlainTextResponse(v.metrics.render(), media_type=CONTENT_TYPE)

    return r


def issue_challenge(v: Verifier, host: str) -> ChallengeResponse:
    """``POST /challenge``: a stored nonce, or 429 when ``host`` asked too often."""
    wait = v.challenges.take(host or "unknown")
    if wait > 0:
        v.metrics.attestation("refused-rate")
        raise ApiError(429, "rate.limited", "too many challenges from this address",
                       {"Retry-After": str(max(1, math.ceil(wait)))})
    row = v.store.issue_challenge(ttl=v.challenge_ttl)
    return ChallengeResponse(nonce=row.nonce, expires_at=row.expires_at)


def run_attestation(v: Verifier, body: AttestBody, *, scope: Mapping[str, Any],
                    credentials: HTTPAuthorizationCredentials | None = None, policy: str | None = None,
                    refvals: str | None = None, node: str | None = None) -> tuple[bytes, str]:
    """``POST /attest`` once the body is parsed: the response body (an AttestResponse, as JSON) and the result id.

    Blocking (database, appraisal): FastAPI runs it in its thread pool, and so does
    the hot route.  Raises :class:`ApiError` (and database errors) for refusals.
    ``node``: attest as this enrolled node (see :func:`_node_for`).
    """
    # Everything that depends on the request alone is checked before the nonce is spent.
    enrolled = None
    if node is not None:
        enrolled = _node_for(v, node, policy, refvals)
        policy_row, refvals_row = _node_documents(v, enrolled)
    else:
        _authorise_selection(v, policy, refvals, credentials, scope)
        policy_row, refvals_row = _documents(v, policy, refvals)
    bundle, nonce = body.doc, body.nonce
    try:
        raw_nonce = bytes.fromhex(nonce)
    except ValueError:  # the shape check allows hex only; this is the backstop
        raise ApiError(422, "request.invalid", "the nonce is not hex") from None
    _check_limits(v, bundle)  # counted before any expensive step, with the nonce still unspent
    policy_id = f"{policy_row.name}@{policy_row.version}" if policy_row is not None else None
    refvals_id = f"{refvals_row.name}@{refvals_row.version}" if refvals_row is not None else None
    # Collateral may be fetched (seconds): before the nonce is spent and outside any transaction, and only
    # for a nonce that can still be spent, so that requests without a challenge cause no fetches.
    trust, collateral_findings = _trust_for(v, bundle, live=lambda: v.store.is_live(nonce))
    now = utcnow()
    consumed = v.store.consume(nonce, now=now)
    if consumed.outcome != "fresh":
        v.metrics.attestation(f"refused-{consumed.outcome}")
        _event(logging.INFO, "attestation refused", reason=consumed.outcome, nonce=nonce[:16])
        status, code, text = {
            "unknown": (403, "freshness.nonce-unknown", "this nonce was not issued by this verifier"),
            "reused": (409, "freshness.nonce-reused", "this nonce was already used"),
            "expired": (410, "freshness.nonce-expired", "this nonce has expired"),
        }[consumed.outcome]
        raise ApiError(status, code, text)
    assert consumed.challenge is not None
    try:
        result, result_id, token, doc = _appraise_and_store(
            v, bundle, nonce=nonce, raw_nonce=raw_nonce, now=now, expires_at=consumed.challenge.expires_at,
            policy_row=policy_row, refvals_row=refvals_row, policy_id=policy_id, refvals_id=refvals_id,
            trust=trust, extra_findings=collateral_findings, node=enrolled)
    except BaseException as exc:
        # No result was stored: give the nonce back, so that a failure here never costs the attester
        # its challenge (nor leaves a spent nonce that nothing answers).
        returned = _give_back(v, nonce, now)
        if isinstance(exc, (LimitExceeded, AppraisalCancelled)):
            v.metrics.attestation("refused-too-large" if isinstance(exc, LimitExceeded) else "error")
            raise _limit_error(exc) from None
        if isinstance(exc, TsmrError) and not isinstance(exc, DatabaseUnavailable):
            # "Could not evaluate" (e.g. SEV-SNP evidence without certificates).
            v.metrics.attestation("error")
            _event(logging.INFO, "appraisal failed", error=type(exc).__name__, nonce=nonce[:16],
                   nonce_returned=returned)
            raise ApiError(422, "appraisal.failed", str(exc)[:2000]) from None
        raise
    v.metrics.attestation(result.status)
    _event(logging.INFO, "attested", result_id=result_id, status=result.status, kind=result.kind,
           findings=len(result.findings), nonce=nonce[:16], logs=body.logs,
           policy_id=policy_id, refvals_id=refvals_id, **({"node": node} if node is not None else {}))
    # The response is AttestResponse (as documented), written directly: the result document, 33 kB
    # and more, is encoded once (the text stored) rather than validated and encoded again by FastAPI.
    payload = (f'{{"id":{_dumps(result_id)},"status":{_dumps(result.status)},"ear":{_dumps(token)},'
               f'"findings":{_dumps(result.finding_ids())},"result":{doc}}}')
    return payload.encode("utf-8"), result_id


def _appraise_and_store(v: Verifier, bundle: dict[str, Any], *, nonce: str, raw_nonce: bytes, now: datetime,
                        expires_at: datetime, policy_row: Any, refvals_row: Any, policy_id: str | None,
                        refvals_id: str | None, trust: TrustAnchors,
                        extra_findings: Sequence[Finding] = (), node: Node | None = None
                        ) -> tuple[Any, str, str, JSONText]:
    """Appraise, sign and store: the part of /attest that runs with the nonce spent.

    The result document is encoded to JSON once: that text is stored and sent.
    As a node: the identity the evidence shows is checked against the node's as part of
    the appraisal, before the policy step (:func:`identity_mismatch`), and the result is stored with the node's state change in one
    transaction (:meth:`Store.save_node_result`).
    """
    start = time.perf_counter()
    try:
        result = v.appraise(bundle,
                            policy=policy_row.rego if policy_row is not None else None,
                            reference_values=refvals_row.document if refvals_row is not None else None,
                            nonce=raw_nonce, now=v.evaluation_time(now), trust=trust, nonce_expires_at=expires_at,
                            nonce_used=False,
                            policy_id=policy_id, refvals_id=refvals_id, allow_debug=v.settings.allow_debug,
                            require_refvals=v.settings.require_refvals, extra_findings=extra_findings,
                            checks=() if node is None else (functools.partial(identity_mismatch, node, bundle),))
    finally:
        v.metrics.appraised(time.perf_counter() - start)
    result_id = str(uuid.uuid4())
    token = ear.sign(result, v.key, kid=v.kid, now=now, verifier_id=v.verifier_id, extra={"jti": result_id})
    doc = JSONText(_dumps(result.to_dict()))
    stored: dict[str, Any] = {"id": result_id, "status": result.status, "kind": result.kind, "nonce": nonce, "ear": token,
              "result": doc, "policy_id": result.policy_id or policy_id,
              "refvals_id": result.refvals_id or refvals_id, "now": now}
    if node is None:
        v.store.save_result(**stored)
    else:
        _, transition = v.store.save_node_result(node_id=node.id, reason=_state_reason(result), **stored)
        if transition is not None:
            _event(logging.INFO, "node state changed", node=node.id, old=transition.old, new=transition.new,
                   result_id=result_id)
    return result, result_id, token, doc


# -- attesting as a node ---------------------------------------------------------------------------

def _node_for(v: Verifier, node: str, policy: str | None, refvals: str | None) -> Node:
    """The live node an attestation names, before anything else is looked at (404 ``node.unknown``)."""
    if policy is not None or refvals is not None:
        raise ApiError(400, "node.selection-conflict", "an attestation as a node is appraised with the node's "
                       "policy and reference values: do not name others (?policy= / ?refvals=)")
    row = v.store.live_node(node)
    if row is None:
        v.metrics.attestation("refused-node")
        raise ApiError(404, "node.unknown", f"no enrolled node named {node!r}")
    return row


def _node_documents(v: Verifier, node: Node) -> tuple[Document | None, Document | None]:
    """The node's policy and reference values (None names: the verifier's own), 503 when one is not stored."""
    try:
        return _documents(v, node.policy, node.refvals)
    except ApiError as exc:
        if exc.status_code != 404:
            raise
        raise ApiError(503, f"node.{exc.code.split('.')[0]}-missing",
                       f"node {node.id!r}: {exc.detail} (the node's settings name it)") from None


def identity_mismatch(node: Node, bundle: Mapping[str, Any], kind: str | None,
                      claims: Mapping[str, Any]) -> Finding | None:
    """The ``node.identity-mismatch`` finding when the evidence does not show ``node``'s identity.

    An appraisal check (``appraise(checks=...)``): ``kind`` and ``claims`` are what the
    evidence of ``bundle`` showed (no claims: it did not verify).

    TDX, SEV-SNP and CCA: the launch measurement the node was enrolled with, as the
    verified evidence's claims give it (``mrtd``, ``measurement``, ``rim``).  TPM: the
    fingerprint of the attestation key whose signature on the quote was verified.
    Evidence of another kind, or that did not verify (no claims), does not show it either.
    """
    field, _ = IDENTITY_FIELDS[node.kind]
    expected = str(node.identity.get(field, "")).lower()
    actual: str | None = None
    if kind == node.kind and claims:
        if node.kind == "tpm":
            ev = bundle.get("evidence")
            try:
                actual = tpm.ak_fingerprint(bytes.fromhex(ev["ak_public"]))  # type: ignore[index]
            except (TypeError, KeyError, ValueError, TsmrError):
                actual = None
        else:
            claim = claims.get(field)
            actual = claim.lower() if isinstance(claim, str) else None
    if actual is not None and hmac.compare_digest(actual, expected):
        return None
    if kind != node.kind:
        message = f"node {node.id!r} is a {node.kind} node; the evidence is {kind or 'unreadable'}"
    elif actual is None:
        message = f"the evidence was not verified, so it does not show node {node.id!r}'s {field}"
    else:
        message = f"the evidence's {field} is not the one node {node.id!r} was enrolled with"
    return Finding("node.identity-mismatch", Severity.ERROR, message, "instance-identity",
                   {"node": node.id, "field": field, "expected": expected, "actual": actual})


def _state_reason(result: Any) -> str:
    """Why a node is in the state a result gives it, for its history: the status and the worst findings."""
    worst = [f.id for f in result.findings if f.severity != "info"][:5]
    return f"attestation {result.status}" + (f": {', '.join(worst)}" if worst else "")


def _dumps(value: Any) -> str:
    """JSON as the responses write it (Starlette's JSONResponse: compact, UTF-8, no NaN or infinity)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _trust_for(v: Verifier, bundle: Mapping[str, Any], *,
               live: Callable[[], bool] = lambda: True) -> tuple[TrustAnchors, list[Finding]]:
    """The anchors to appraise this bundle with, and findings about its collateral.

    TPM: the verifier's anchors plus the enrolled attestation key the quote names, if any.
    TDX / SEV-SNP with --pccs / --kds: the collateral the evidence needs, in this order of
    precedence: files the operator gave (--collateral, --vcek/--ask), then the database cache
    (each document verified again as it is read), then a fetch under a lease, so that one
    replica fetches a document while the others wait for it (:func:`tsmr.system.collateral.resolve`).
    Collateral that cannot be had is a ``collateral.unavailable`` / ``collateral.expired``
    error finding, which the appraisal adds to the result.  Nothing is looked up or fetched
    unless ``live()`` says the bundle's nonce is one this verifier would still accept (asked only
    when a lookup would follow: it costs a database read).
    """
    ev = bundle.get("evidence")
    if isinstance(ev, Mapping) and ev.get("kind") in ("tdx", "snp"):
        return _collateral_for(v, str(ev["kind"]), ev, live)
    return _tpm_trust_for(v, ev), []


def _collateral_for(v: Verifier, kind: str, ev: Mapping[str, Any],
                    live: Callable[[], bool]) -> tuple[TrustAnchors, list[Finding]]:
    """resolve() for TDX / SEV-SNP evidence when the verifier has a source for its kind."""
    import base64
    import binascii

    if v.fetcher is None or not (v.settings.pccs_url if kind == "tdx" else v.settings.kds_url):
        return v.trust, []
    if not live():
        return v.trust, []  # the nonce is refused next: no appraisal follows
    try:
        data = base64.b64decode(ev.get("data") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        return v.trust, []  # unreadable evidence: the appraisal says why
    from ..system.collateral import resolve

    return resolve(kind, data, trust=v.trust, fetcher=v.fetcher, cache=v.cache,
                   now=v.evaluation_time(utcnow()), wait=max(15.0, 4 * v.settings.fetch_timeout + 5),
                   owner=f"{v.owner}/{uuid.uuid4().hex[:12]}",  # per request: a lease is one caller's
                   product=v.settings.kds_product)


def _tpm_trust_for(v: Verifier, ev: Any) -> TrustAnchors:
    """The verifier's anchors, plus the enrolled TPM attestation key the bundle's quote names, if any."""
    if not isinstance(ev, Mapping) or ev.get("kind") != "tpm" or not isinstance(ev.get("ak_public"), str):
        return v.trust
    try:
        fingerprint = tpm.ak_fingerprint(bytes.fromhex(ev["ak_public"]))
    except (ValueError, TsmrError):
        return v.trust  # unreadable: the appraisal says why
    row = v.store.find_ak(fingerprint)
    if row is None:
        return v.trust
    return v.trust.with_tpm_aks(tpm.load_ak_anchor(row.pem.encode()))


def _give_back(v: Verifier, nonce: str, used_at: datetime) -> bool:
    """Release a consumed nonce after a failure; False (and logged) when even that fails."""
    try:
        return v.store.release(nonce, used_at=used_at)
    except Exception as exc:  # noqa: BLE001 - the original failure is what the client hears about
        _event(logging.WARNING, "could not give a nonce back", nonce=nonce[:16], error=describe_db_error(exc))
        return False


def _token_matches(credentials: HTTPAuthorizationCredentials | None, expected: bytes) -> bool:
    """Whether a bearer token is the one whose SHA-256 is ``expected``, in constant time."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        return False
    # Hash both sides first: compare_digest then compares equal lengths, and the length of the token leaks nothing.
    given = hashlib.sha256(credentials.credentials.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(given, expected)


CLIENT_CERT_REQUIRED = ("the admin endpoints need a TLS client certificate issued by the verifier's client CA "
                        "(--tls-client-ca), besides the admin token")


def _client_certified(v: Verifier, scope: Mapping[str, Any]) -> bool:
    """Whether the request may use admin rights as far as TLS goes: no client CA configured, or a verified client certificate.

    The certificate is the one :mod:`tsmr.service.server` put in the ASGI TLS
    extension; the handshake already refused any that the client CA did not issue.
    """
    if not v.settings.tls_client_ca:
        return True
    tls = (scope.get("extensions") or {}).get("tls") or {}
    return bool(tls.get("client_cert_chain"))


def _authorise_selection(v: Verifier, policy: str | None, refvals: str | None,
                         credentials: HTTPAuthorizationCredentials | None, scope: Mapping[str, Any]) -> None:
    """Refuse a request naming another policy or reference values than the verifier's, unless it carries the admin token.

    Naming the configured ones changes nothing and needs no token.  Checked before the
    names are looked up, so an unauthorised client learns nothing about which exist.
    """
    for kind, asked, configured in (("policy", policy, v.settings.policy),
                                    ("refvals", refvals, v.settings.refvals)):
        if asked is None or asked == configured:
            continue
        certified = _client_certified(v, scope)
        if certified and v.admin_digest is not None and _token_matches(credentials, v.admin_digest):
            continue
        what = "policy" if kind == "policy" else "reference values"
        raise ApiError(403, f"{kind}.selection-forbidden",
                       f"this verifier appraises with its own {what} ({configured!r}); naming another needs "
                       "the admin bearer token" + ("" if certified else " and a TLS client certificate"))


def _documents(v: Verifier, policy: str | None, refvals: str | None) -> tuple[Document | None, Document | None]:
    """The latest versions of the policy and reference values to appraise with: those named, else the verifier's.

    One database query says which versions are current (:meth:`Store.current`); the
    documents come from the store's per-process cache.  The verifier's own, when not
    stored, is refused (503) unless it is called "default": then there is none (the
    built-in policy; no reference values), as before any was stored.
    """
    names = (policy or v.settings.policy, refvals or v.settings.refvals)
    found = v.store.current(*names)
    for kind, asked, configured, row in (("policy", policy, v.settings.policy, found[0]),
                                         ("refvals", refvals, v.settings.refvals, found[1])):
        if row is not None:
            continue
        what = "policy" if kind == "policy" else "reference values"
        if asked is not None and asked != configured:
            raise ApiError(404, f"{kind}.unknown", f"no {what} named {asked!r}")
        if configured != DEFAULT_NAME:
            raise ApiError(503, f"{kind}.missing", f"the verifier's {what} {configured!r} is not stored")
    return found


# -- admin endpoints ------------------------------------------------------------------------------

def _admin_routes(v: Verifier) -> APIRouter:
    assert v.admin_digest is not None
    expected = v.admin_digest

    def admin(request: Request, credentials: Credentials) -> None:
        # With a client CA, the transport credential first: without it nothing is said about the token.
        if not _client_certified(v, request.scope):
            raise ApiError(403, "admin.client-certificate-required", CLIENT_CERT_REQUIRED)
        challenge = {"WWW-Authenticate": 'Bearer realm="tsmr"'}
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "auth.required", "an admin bearer token is required", challenge)
        if not _token_matches(credentials, expected):
            raise ApiError(401, "auth.invalid", "wrong admin token",
                           {"WWW-Authenticate": 'Bearer realm="tsmr", error="invalid_token"'})

    r = APIRouter(dependencies=[Depends(admin)], responses=_errors(401, 403, 422))

    def info(row: Any) -> VersionInfo:
        return VersionInfo(name=row.name, version=row.version, created_at=row.created_at)

    def missing(kind: str, name: str) -> ApiError:
        return ApiError(404, f"{kind}.unknown", f"no {kind} named {name!r} (or no such version)")

    # TPM attestation keys ------------------------------------------------------------------------
    @r.get("/tpm-aks", response_model=list[AkOut], tags=["tpm"])
    def list_aks() -> list[AkOut]:
        """Every enrolled TPM attestation key."""
        return [AkOut(name=a.name, fingerprint=a.fingerprint, pem=a.pem, created_at=a.created_at)
                for a in v.store.list_aks()]

    @r.put("/tpm-aks/{name}", response_model=AkOut, status_code=201, tags=["tpm"], responses=_errors(409))
    def enrol_ak(name: NamePath, body: AkIn) -> AkOut:
        """Enrol (or replace) a TPM attestation key: quotes it signs are trusted as the TPM's from now on."""
        raw = body.key.strip().encode()
        try:
            key = tpm.load_ak_anchor(raw if raw.startswith(b"-----") else bytes.fromhex(raw.decode()), "key")
        except (ValueError, TsmrError) as exc:
            raise ApiError(422, "tpm-ak.invalid", f"not a PEM public key, AK certificate or TPM2B_PUBLIC hex: {exc}")
        pem, fingerprint = tpm.ak_pem(key), tpm.ak_fingerprint(key)
        try:
            row = v.store.enrol_ak(name, pem, fingerprint)
        except InputError as exc:
            raise ApiError(409, "tpm-ak.conflict", str(exc)) from None
        _event(logging.INFO, "tpm ak enrolled", name=name, fingerprint=fingerprint)
        return AkOut(name=row.name, fingerprint=row.fingerprint, pem=row.pem, created_at=row.created_at)

    @r.delete("/tpm-aks/{name}", status_code=204, tags=["tpm"], responses=_errors(404))
    def remove_ak(name: NamePath) -> Response:
        """Stop trusting an enrolled key (results it gave stay stored)."""
        if not v.store.delete_ak(name):
            raise ApiError(404, "tpm-ak.unknown", f"no TPM attestation key named {name!r}")
        _event(logging.INFO, "tpm ak removed", name=name)
        return Response(status_code=204)

    # Nodes ---------------------------------------------------------------------------------------
    def node_out(row: Node) -> NodeOut:
        return NodeOut(id=row.id, kind=row.kind, identity=row.identity, policy=row.policy,  # type: ignore[arg-type]
                       refvals=row.refvals, interval_s=row.interval_s, state=row.state,  # type: ignore[arg-type]
                       state_since=row.state_since, last_result_id=row.last_result_id,
                       last_attested_at=row.last_attested_at, created_at=row.created_at, retired_at=row.retired_at)

    def check_documents(body: NodeIn) -> None:
        for kind, name in (("policy", body.policy), ("refvals", body.refvals)):
            if name is not None and v.store.get(kind, name) is None:  # type: ignore[arg-type]
                what = "policy" if kind == "policy" else "reference values"
                raise ApiError(422, f"node.{kind}-unknown", f"no {what} named {name!r} is stored: store it first")

    @r.put("/nodes/{node_id}", response_model=NodeOut, status_code=201, tags=["nodes"],
           responses={200: {"model": NodeOut, "description": "The node's settings were replaced"},
                      **_errors(404, 409)})
    def put_node(node_id: NamePath, body: NodeIn, response: Response,
                 if_none_match: Annotated[str | None, Header(
                     description="`*`: only enrol, never update (409 node.exists when the id is enrolled)")] = None
                 ) -> NodeOut:
        """Enrol a node (201, state ``unknown``), or replace a live node's settings (200).

        A live node keeps its kind (409 ``node.kind-conflict``: retire it and enrol it
        again); a new identity makes its state ``unknown`` until it attests again.
        A retired node's id is enrolled afresh (its history goes on).
        """
        check_documents(body)
        current = v.store.live_node(node_id)
        if current is None:
            try:
                row = v.store.enrol_node(node_id, kind=body.kind, identity=body.identity, policy=body.policy,
                                         refvals=body.refvals, interval_s=body.interval_s)
            except NodeExists as exc:  # enrolled a moment ago by another request
                raise ApiError(409, "node.exists", str(exc)) from None
            _event(logging.INFO, "node enrolled", node=node_id, kind=body.kind)
            return node_out(row)
        if if_none_match is not None and if_none_match.strip() == "*":
            raise ApiError(409, "node.exists", f"a node named {node_id!r} is enrolled already")
        if current.kind != body.kind:
            raise ApiError(409, "node.kind-conflict", f"node {node_id!r} is a {current.kind} node; retire it "
                           f"and enrol it again to make it a {body.kind} node")
        updated = v.store.update_node(node_id, identity=body.identity, policy=body.policy, refvals=body.refvals,
                                      interval_s=body.interval_s, set_policy=True, set_refvals=True)
        if updated is None:  # retired between the two statements
            raise ApiError(404, "node.unknown", f"no enrolled node named {node_id!r}")
        _event(logging.INFO, "node updated", node=node_id)
        response.status_code = 200
        return node_out(updated)

    @r.get("/nodes", response_model=NodeList, tags=["nodes"])
    def list_nodes(retired: Annotated[bool, Query(alias="all", description="Retired nodes too.")] = False) -> NodeList:
        """The enrolled nodes by id, with their states."""
        return NodeList(items=[node_out(n) for n in v.store.list_nodes(retired=retired)])

    @r.get("/nodes/{node_id}", response_model=NodeDetail, tags=["nodes"], responses=_errors(404))
    def get_node(node_id: NamePath, history: Annotated[int, Query(
            ge=0, le=1000, description="How many of the latest state changes to include.")] = 50) -> NodeDetail:
        """A node (retired ones too) with its latest state changes, newest first."""
        view = v.store.get_node(node_id, history=history)
        if view is None:
            raise ApiError(404, "node.unknown", f"no node named {node_id!r}")
        return NodeDetail(**node_out(view.node).model_dump(), history=[
            NodeStateOut(seq=h.seq, state=h.state, at=h.at, result_id=h.result_id,  # type: ignore[arg-type]
                         reason=h.reason) for h in view.history])

    @r.delete("/nodes/{node_id}", status_code=204, tags=["nodes"], responses=_errors(404))
    def retire_node(node_id: NamePath) -> Response:
        """Retire a node: attestations as it are refused from now on; its history and results stay."""
        if not v.store.retire_node(node_id):
            raise ApiError(404, "node.unknown", f"no enrolled node named {node_id!r}")
        _event(logging.INFO, "node retired", node=node_id)
        return Response(status_code=204)

    # Policies -------------------------------------------------------------------------------------
    @r.get("/policies", response_model=VersionList, tags=["policies"])
    def list_policies() -> VersionList:
        """Every policy name with its latest version."""
        return VersionList(items=[VersionInfo(name=n, version=ver, created_at=t) for n, ver, t in v.store.names("policy")])

    @r.get("/policies/{name}", response_model=PolicyOut, tags=["policies"], responses=_errors(404))
    def get_policy(name: NamePath, version: VersionQuery = None) -> PolicyOut:
        row = v.store.get("policy", name, version)
        if row is None:
            raise missing("policy", name)
        return PolicyOut(**info(row).model_dump(), rego=row.rego)  # type: ignore[union-attr]

    @r.get("/policies/{name}/versions", response_model=VersionList, tags=["policies"], responses=_errors(404))
    def policy_versions(name: NamePath) -> VersionList:
        rows = v.store.versions("policy", name)
        if not rows:
            raise missing("policy", name)
        return VersionList(items=[info(x) for x in rows])

    @r.put("/policies/{name}", response_model=VersionInfo, status_code=201, tags=["policies"],
           responses=_errors(413))
    def put_policy(name: NamePath, body: PolicyIn) -> VersionInfo:
        """Store a new version of a policy (the previous versions stay readable)."""
        # PostgreSQL's text cannot hold NUL, and no Rego module has one.
        problem = "the policy contains a NUL character" if "\x00" in body.rego else check_policy(body.rego)
        if problem:
            raise ApiError(422, "policy.invalid", problem)
        row = v.store.put("policy", name, body.rego)
        _event(logging.INFO, "policy stored", name=name, version=row.version)
        return info(row)

    @r.delete("/policies/{name}", status_code=204, tags=["policies"], responses=_errors(404))
    def delete_policy(name: NamePath) -> Response:
        """Delete every version (ids of old results keep naming them; numbering continues after a new PUT)."""
        if not v.store.delete("policy", name):
            raise missing("policy", name)
        _event(logging.INFO, "policy deleted", name=name)
        return Response(status_code=204)

    # Reference values -----------------------------------------------------------------------------
    @r.get("/refvals", response_model=VersionList, tags=["reference values"])
    def list_refvals() -> VersionList:
        return VersionList(items=[VersionInfo(name=n, version=ver, created_at=t) for n, ver, t in v.store.names("refvals")])

    @r.get("/refvals/{name}", response_model=RefvalsOut, tags=["reference values"], responses=_errors(404))
    def get_refvals(name: NamePath, version: VersionQuery = None) -> RefvalsOut:
        row = v.store.get("refvals", name, version)
        if row is None:
            raise missing("refvals", name)
        return RefvalsOut(**info(row).model_dump(), document=row.document)  # type: ignore[union-attr]

    @r.get("/refvals/{name}/versions", response_model=VersionList, tags=["reference values"],
           responses=_errors(404))
    def refvals_versions(name: NamePath) -> VersionList:
        rows = v.store.versions("refvals", name)
        if not rows:
            raise missing("refvals", name)
        return VersionList(items=[info(x) for x in rows])

    @r.put("/refvals/{name}", response_model=VersionInfo, status_code=201, tags=["reference values"],
           responses=_errors(413))
    def put_refvals(name: NamePath, body: RefvalsIn) -> VersionInfo:
        problem = check_refvals(body.document)
        if problem:
            raise ApiError(422, "refvals.invalid", problem)
        row = v.store.put("refvals", name, body.document)
        _event(logging.INFO, "reference values stored", name=name, version=row.version)
        return info(row)

    @r.delete("/refvals/{name}", status_code=204, tags=["reference values"], responses=_errors(404))
    def delete_refvals(name: NamePath) -> Response:
        if not v.store.delete("refvals", name):
            raise missing("refvals", name)
        _event(logging.INFO, "reference values deleted", name=name)
        return Response(status_code=204)

    return r


def check_policy(rego: str) -> str | None:
    """Why a Rego module cannot be a tsmr policy (it must compile and evaluate), or None when it can."""
    from ..appraisal.policy import check_policy as check

    try:
        check(rego)
    except TsmrError as exc:
        return str(exc)[:2000]
    return None


def check_refvals(document: Mapping[str, Any]) -> str | None:
    """Why a document cannot be reference values, or None when it can."""
    from ..appraisal.refvals import ReferenceValues

    try:
        ReferenceValues.from_json(document)
    except TsmrError as exc:
        return str(exc)[:2000]
    return None
