"""The HTTP verifier: challenge -> evidence bundle -> appraisal -> signed EAR, over FastAPI.

Theory of operation
-------------------
``POST /challenge`` stores a fresh 32-byte nonce with an expiry.  ``POST
/attest`` takes a tsmr evidence bundle carrying that nonce, resolves the
requested (or default) policy and reference values, then consumes the nonce
with one conditional UPDATE: only the request whose UPDATE changed a row goes
on to appraisal, whichever replica it reached.  A nonce that was never issued,
has expired or was already used is refused with a 4xx and *nothing is
stored*: the endpoint needs no credentials, so storing refusals would let
anyone fill the database, and a relying party only ever looks up results by
the id a successful attestation returned.  Evidence that is present but bad
(a broken signature, a replay mismatch, a policy denial) is a stored result
with status ``contraindicated``: that is an answer, not an error.

The result is stored before the response is sent, and carries an EAR JWT
signed with the verifier's key (``GET /.well-known/jwks.json`` publishes it).

Admin endpoints (``/policies``, ``/refvals``) exist only when an admin token is
configured; the bearer token is compared in constant time and never logged.
Bodies are limited (16 MiB for ``/attest``, 1 MiB elsewhere) before they are
read; a declared ``Content-Length`` over the limit is refused at once.
Errors are JSON ``{"error": <code>, "detail": ...}`` without stack traces;
logs are one JSON object per line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Literal, Mapping

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..appraisal import ear
from ..errors import TsmrError
from .db import Store, make_engine, redact_url, upgrade, utcnow
from .metrics import CONTENT_TYPE, Metrics
from .settings import Settings, load_trust

__all__ = ["create_app", "app_from_env", "Settings"]

log = logging.getLogger("tsmr.service")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HEX_PATTERN = r"^([0-9a-f]{2})*$"
DEFAULT_NAME = "default"  # the policy / reference values used when a request names none


# -- logging --------------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(settings: Settings) -> None:
    root = logging.getLogger("tsmr")
    for h in list(root.handlers):
        if getattr(h, "_tsmr_service", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._tsmr_service = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if settings.json_logs else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    root.propagate = False


def _event(level: int, msg: str, **fields: Any) -> None:
    log.log(level, msg, extra={"fields": fields})


# -- models ---------------------------------------------------------------------------------------

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Letters, digits, '.', '_', '-'; at most 128.")]
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128)]
VersionQuery = Annotated[int | None, Query(ge=1, le=2**31 - 1, description="A version (default: latest).")]
BEARER = HTTPBearer(auto_error=False, description="The admin token (TSMR_ADMIN_TOKEN or --admin-token-file).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


class ErrorBody(BaseModel):
    error: str = Field(description="A stable dotted error code, e.g. freshness.nonce-reused.")
    detail: Any = Field(None, description="A sentence, or the list of validation errors.")


class ChallengeResponse(BaseModel):
    nonce: str = Field(pattern=HEX_PATTERN, description="32 random bytes, hex: put them in the evidence.")
    expires_at: datetime


class BundleLog(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, serialize_by_alias=True)
    format: str | None = None
    data: str = Field(description="base64")
    register_: str | None = Field(None, alias="register", description="The register a runtime log belongs to.")
    name: str | None = None


class BundleEvidence(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["tdx", "snp", "cca", "tpm"]
    data: str | None = Field(None, description="base64 (TDX quote, SNP report, CCA token)")


class Bundle(BaseModel):
    """A tsmr evidence bundle (``tsmr attest`` writes one; see tsmr.evidence.bundle.SCHEMA)."""

    model_config = ConfigDict(extra="allow")
    format: Literal["tsmr-bundle"]
    version: Literal[1]
    nonce: str = Field(pattern=HEX_PATTERN, max_length=256)
    evidence: BundleEvidence
    logs: list[BundleLog] = Field(default_factory=list, max_length=4096)


class AttestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: Bundle
    policy: Name | None = Field(None, description="Policy name (latest version); default: the policy 'default'.")
    refvals: Name | None = Field(None, description="Reference values name; default: 'default', if stored.")


class AttestResponse(BaseModel):
    id: str = Field(description="Result id (UUID): GET /results/{id}.")
    status: str = Field(description="EAR status: affirming, warning, contraindicated (or none).")
    ear: str = Field(description="The EAR, a JWT signed by the key in /.well-known/jwks.json.")
    findings: list[str] = Field(description="Finding ids, worst first as the appraisal lists them.")
    result: dict[str, Any] = Field(description="The full appraisal result.")


class StoredResultResponse(AttestResponse):
    created_at: datetime
    nonce: str
    kind: str | None = None
    policy_id: str | None = None
    refvals_id: str | None = None


class VersionInfo(BaseModel):
    name: str
    version: int
    created_at: datetime


class VersionList(BaseModel):
    items: list[VersionInfo]


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rego: str = Field(min_length=1, max_length=512 * 1024, description="A Rego module.")


class PolicyOut(VersionInfo):
    rego: str


def _refvals_schema() -> dict[str, Any]:
    from ..appraisal.refvals import SCHEMA

    return {k: v for k, v in SCHEMA.items() if k not in ("$schema", "title")}


class RefvalsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document: dict[str, Any] = Field(description="A reference values document (tsmr-refvals, version 1).",
                                     json_schema_extra=_refvals_schema())


class RefvalsOut(VersionInfo):
    document: dict[str, Any]


class JWK(BaseModel):
    kty: str
    crv: str
    x: str
    y: str
    kid: str
    alg: str
    use: str


class JWKSet(BaseModel):
    keys: list[JWK]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str
    revision: str | None = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Malformed request", 401: "Missing or wrong admin token", 403: "Nonce never issued",
            404: "Not found", 409: "Nonce already used", 410: "Nonce expired", 413: "Body too large",
            422: "Invalid request or evidence that could not be appraised", 503: "Database unavailable"}
    return {c: {"model": ErrorBody, "description": text.get(c, "Error")} for c in codes}


# -- middleware -----------------------------------------------------------------------------------

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class BodyLimit:
    """Refuse bodies over the route's limit with 413, before reading them (or as soon as they exceed it)."""

    def __init__(self, app: ASGIApp, *, attest_limit: int, default_limit: int) -> None:
        self.app = app
        self.attest_limit = attest_limit
        self.default_limit = default_limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.attest_limit if scope.get("path") == "/attest" else self.default_limit
        declared = None
        for k, v in scope.get("headers") or ():
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = -1
        if declared is not None and (declared < 0 or declared > limit):
            status, code = (400, "request.content-length") if declared < 0 else (413, "request.too-large")
            detail = "bad Content-Length" if declared < 0 else f"the body is over {limit} bytes"
            await _send_json(send, status, {"error": code, "detail": detail}, close=True)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"the body is over {limit} bytes")
            return message

        await self.app(scope, limited, send)


def _route_of(scope: Mapping[str, Any]) -> str:
    """The path template of the route that served the request, for metrics and logs.

    FastAPI's own routes record themselves in the scope; Starlette's (``/docs``,
    ``/openapi.json``) do not, so those are matched again here.  Anything else
    (404s, probes of random paths) is ``unmatched``, which keeps label values bounded.
    """
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    app = scope.get("app")
    for route in getattr(app, "routes", ()):
        try:
            match, _ = route.matches(scope)
        except Exception:  # a route that cannot judge this scope does not match it
            continue
        if match == Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


async def _send_json(send: Any, status: int, body: Any, *, close: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class AccessLog:
    """One log line and one metrics sample per request; the route template, never the body or headers."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id

        started = False

        async def record(message: Any) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, record)
        except Exception as exc:
            # Handled here rather than by Starlette's outermost middleware, which would log it a second
            # time through uvicorn: one JSON line with the traceback, and a JSON 500 without it.
            route = _route_of(scope)
            log.error("unhandled error", exc_info=exc, extra={"fields": {"route": route, "request_id": request_id}})
            if started:
                raise
            status = 500
            await _send_json(send, 500, {"error": "internal",
                                         "detail": "internal error; the verifier's log has the details"})
        finally:
            seconds = time.perf_counter() - start
            route = _route_of(scope)
            self.metrics.request(scope.get("method", ""), route, status, seconds)
            _event(logging.INFO, "request", method=scope.get("method"), route=route, status=status,
                   duration_ms=round(seconds * 1000, 2), request_id=request_id,
                   client=(scope.get("client") or ("", 0))[0])


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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or _HTTP_CODES.get(exc.status_code, f"http.{exc.status_code}")
        return _json_error(exc.status_code, code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _json_error(400, "request.json", "the body is not valid JSON")
        # Never echo the input back: a bundle can be megabytes, and inputs can hold secrets.
        slim = [{"loc": [str(p) for p in e.get("loc", ())][:12], "msg": str(e.get("msg", ""))[:300],
                 "type": str(e.get("type", ""))} for e in errors[:20]]
        return _json_error(422, "request.invalid", slim)


class Verifier:
    """What the endpoints share: store, key, trust anchors, metrics."""

    def __init__(self, settings: Settings) -> None:
        from ..appraisal import appraise

        self.appraise = appraise
        self.settings = settings
        self.store = Store(make_engine(settings.database_url))
        if settings.migrate:
            upgrade(self.store.engine)
        self.key = ear.load_or_create_key(settings.key_path or "ear-key.pem", settings.key_alg)
        self.kid = ear.thumbprint(self.key)
        # The signing key first, then the keys published beside it (retired or upcoming).
        self.jwks = ear.jwks([self.key.public_key(), *settings.published_keys()])
        self.trust = load_trust(settings)
        self.admin_token = settings.read_admin_token()
        self.metrics = Metrics(settings.metrics_dir)
        self.verifier_id = {"developer": settings.verifier_developer, "build": settings.build()}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The verifier application for ``settings`` (default: from the environment).

    Runs the database migrations (unless ``settings.migrate`` is false), loads or
    creates the EAR signing key and loads the trust anchors before returning,
    so a misconfiguration fails here rather than on the first request.
    """
    settings = (settings or Settings.from_env()).resolved()
    configure_logging(settings)
    v = Verifier(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _event(logging.INFO, "verifier ready", database=redact_url(settings.database_url or ""), kid=v.kid,
               admin_endpoints=v.admin_token is not None, trust=sorted(v.trust))
        yield
        v.store.close()

    from .. import __version__

    # Any route can refuse a body: a bad Content-Length (400), or one over the limit (413).
    app = FastAPI(title="tsmr verifier", version=__version__, lifespan=lifespan, responses=_errors(400, 413),
                  description="Challenge, attest with a tsmr evidence bundle, get a signed EAT Attestation Result.")
    app.state.verifier = v
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, attest_limit=settings.max_attest_bytes,  # type: ignore[arg-type]
                       default_limit=settings.max_body_bytes)
    app.add_middleware(AccessLog, metrics=v.metrics)  # type: ignore[arg-type]
    app.include_router(_public_routes(v))
    if v.admin_token is not None:
        app.include_router(_admin_routes(v))
    return app


def app_from_env() -> FastAPI:
    """The uvicorn factory of ``tsmr serve``: settings from ``TSMR_*`` variables."""
    return create_app(Settings.from_env())


# -- public endpoints -----------------------------------------------------------------------------

def _public_routes(v: Verifier) -> APIRouter:
    r = APIRouter()
    ttl = timedelta(seconds=v.settings.challenge_ttl)

    @r.post("/challenge", response_model=ChallengeResponse, status_code=201, tags=["attestation"],
            responses=_errors(413, 503))
    def challenge() -> ChallengeResponse:
        """A fresh nonce, usable once, until ``expires_at``."""
        row = v.store.issue_challenge(ttl=ttl)
        return ChallengeResponse(nonce=row.nonce, expires_at=row.expires_at)

    @r.post("/attest", response_model=AttestResponse, status_code=201, tags=["attestation"],
            responses=_errors(400, 403, 404, 409, 410, 413, 422))
    def attest(req: AttestRequest, request: Request, response: Response) -> AttestResponse:
        """Appraise a bundle over a nonce from ``POST /challenge``; store and return the signed result.

        Refused without storing anything: a nonce never issued (403), already
        used (409) or expired (410), and an unknown policy or reference values
        name (404, checked before the nonce is spent).  Evidence that fails to
        verify gives a stored ``contraindicated`` result.
        """
        policy_row = _document(v, "policy", req.policy)
        refvals_row = _document(v, "refvals", req.refvals)
        nonce = req.bundle.nonce
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
        bundle = req.bundle.model_dump(mode="json", exclude_unset=True, by_alias=True)
        policy_id = f"{policy_row.name}@{policy_row.version}" if policy_row is not None else None
        refvals_id = f"{refvals_row.name}@{refvals_row.version}" if refvals_row is not None else None
        start = time.perf_counter()
        try:
            result = v.appraise(bundle,
                              policy=policy_row.rego if policy_row is not None else None,  # type: ignore[union-attr]
                              reference_values=refvals_row.document if refvals_row is not None else None,  # type: ignore[union-attr]
                              nonce=bytes.fromhex(consumed.challenge.nonce), now=now, trust=v.trust,
                              nonce_expires_at=consumed.challenge.expires_at, nonce_used=False,
                              policy_id=policy_id, refvals_id=refvals_id)
        except TsmrError as exc:
            # "Could not evaluate" (e.g. SEV-SNP evidence without certificates): the nonce stays spent.
            v.metrics.attestation("error")
            _event(logging.INFO, "appraisal failed", error=type(exc).__name__, nonce=nonce[:16])
            raise ApiError(422, "appraisal.failed", str(exc)[:2000]) from None
        finally:
            v.metrics.appraised(time.perf_counter() - start)
        result_id = str(uuid.uuid4())
        token = ear.sign(result, v.key, kid=v.kid, now=now, verifier_id=v.verifier_id, extra={"jti": result_id})
        doc = result.to_dict()
        v.store.save_result(id=result_id, status=result.status, kind=result.kind, nonce=nonce, ear=token,
                            result=doc, policy_id=result.policy_id or policy_id,
                            refvals_id=result.refvals_id or refvals_id, now=now)
        v.metrics.attestation(result.status)
        _event(logging.INFO, "attested", result_id=result_id, status=result.status, kind=result.kind,
               findings=len(result.findings), nonce=nonce[:16], logs=len(req.bundle.logs),
               policy_id=policy_id, refvals_id=refvals_id)
        response.headers["Location"] = f"/results/{result_id}"
        return AttestResponse(id=result_id, status=result.status, ear=token, findings=result.finding_ids(),
                              result=doc)

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
                                    policy_id=row.policy_id, refvals_id=row.refvals_id)

    @r.get("/.well-known/jwks.json", response_model=JWKSet, tags=["keys"])
    def jwks() -> dict[str, Any]:
        """The public keys EARs are signed with (RFC 7517 JWK Set; ``kid`` is the RFC 7638 thumbprint)."""
        return v.jwks

    @r.get("/healthz", response_model=Health, tags=["operations"], responses=_errors(503))
    def healthz() -> Any:
        """Whether the database answers, with its schema revision."""
        try:
            revision = v.store.ping()
        except Exception as exc:  # noqa: BLE001 - any database failure means "not healthy"
            _event(logging.WARNING, "health check failed", error=type(exc).__name__)
            return JSONResponse({"status": "unavailable", "database": "unreachable", "revision": None},
                                status_code=503)
        return Health(status="ok", database=v.store.engine.dialect.name, revision=revision)

    @r.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
           responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                            "description": "Prometheus text format 0.0.4"}})
    def metrics() -> PlainTextResponse:
        """Counters and histograms of this worker process, in the Prometheus text format."""
        return PlainTextResponse(v.metrics.render(), media_type=CONTENT_TYPE)

    return r


def _document(v: Verifier, kind: Literal["policy", "refvals"], name: str | None) -> Any:
    """The latest version of a named policy / refvals; with no name, the one called 'default' if stored."""
    if name is None:
        return v.store.get(kind, DEFAULT_NAME)
    row = v.store.get(kind, name)
    if row is None:
        what = "policy" if kind == "policy" else "reference values"
        raise ApiError(404, f"{kind}.unknown", f"no {what} named {name!r}")
    return row


# -- admin endpoints ------------------------------------------------------------------------------

def _admin_routes(v: Verifier) -> APIRouter:
    assert v.admin_token is not None
    expected = hashlib.sha256(v.admin_token.encode()).digest()

    def admin(credentials: Credentials) -> None:
        challenge = {"WWW-Authenticate": 'Bearer realm="tsmr"'}
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "auth.required", "an admin bearer token is required", challenge)
        # Hash both sides first: compare_digest then compares equal lengths, and the length of the token leaks nothing.
        given = hashlib.sha256(credentials.credentials.encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "auth.invalid", "wrong admin token",
                           {"WWW-Authenticate": 'Bearer realm="tsmr", error="invalid_token"'})

    r = APIRouter(dependencies=[Depends(admin)], responses=_errors(401, 422))

    def info(row: Any) -> VersionInfo:
        return VersionInfo(name=row.name, version=row.version, created_at=row.created_at)

    def missing(kind: str, name: str) -> ApiError:
        return ApiError(404, f"{kind}.unknown", f"no {kind} named {name!r} (or no such version)")

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
        problem = check_policy(body.rego)
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
