"""The verifier's ASGI middleware and logging: body limits, the access log and metrics, JSON log lines.

Both middlewares work on the raw ASGI messages, before FastAPI parses anything:
:class:`BodyLimit` refuses a body over the route's limit before it is read (or as
soon as it grows past it), and :class:`AccessLog` writes one line and one metrics
sample per request, naming the route template, never the body or the headers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.routing import Match

from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("tsmr.service")

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


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
        too_large = (f"the body is over {limit} bytes (the limit "
                     f"{'TSMR_MAX_ATTEST_BYTES' if limit == self.attest_limit else 'TSMR_MAX_BODY_BYTES'})")
        declared = None
        for k, v in scope.get("headers") or ():
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = -1
        if declared is not None and (declared < 0 or declared > limit):
            status, code = (400, "request.content-length") if declared < 0 else (413, "request.too-large")
            detail = "bad Content-Length" if declared < 0 else too_large
            await _send_json(send, status, {"error": code, "detail": detail}, close=True)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, too_large)
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
