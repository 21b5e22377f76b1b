"""The guest agent: one process that writes the runtime logs, serving local programs over a Unix socket.

Theory of operation
-------------------
Workloads in the VM are usually not allowed to extend registers themselves,
and should not each hold the log's write protocol.  The agent is the single
writer of the registers it owns: it opens them once, keeps their
:class:`~tsmr.runtime_log.store.RuntimeLog` open for its lifetime, and takes
the log's lifetime ownership (:meth:`RuntimeLog.claim`, a ``flock`` on
``<log>.owner``), so that a second agent for the same register refuses to
start and any other writer (``tsmr log append`` as root, say) is refused
while the agent runs.  On start it runs the
log's recovery, which completes or drops a batch that a killed agent left
half-done (the write-ahead intent decides from the register value), so a
``SIGKILL`` at any point leaves a log that replays to the register.

What a client's append promises: once acknowledged, its records are in the
log and in the register.  If the agent dies before answering, the batch may
be absent, complete, or (killed between two extends of a group) present as a
prefix of itself, each logged record with its extend: a client that must
not duplicate a record on retry gives it an identifier and reads the log.

Clients speak HTTP/1.1 with JSON bodies over a Unix stream socket.  Who the
client is comes from the kernel (``SO_PEERCRED``: pid, uid, gid;
``SO_PEERGROUPS``: supplementary groups), read when the connection is
accepted; nothing in a request says who sent it.  The rules of
:mod:`tsmr.agent.config` decide what the peer may do.

Connections are counted per uid when they are accepted, before a byte is
read (limits in :mod:`tsmr.agent.config`): one user holding many slow
connections cannot take the agent from root or from other users, and a
request must be complete within ``request_timeout`` however slowly its
bytes trickle in.

A log that changes under the agent (truncated, replaced, or written by
someone else) is refused for good: every later append to that register is
answered 503 ``log_tampered`` and the reason is logged, until the log is
moved aside and the agent restarted (see :mod:`tsmr.runtime_log.store`).

Concurrency: one thread per connection (bounded).  Appends to one register
are serialised by a per-register lock (and by the log's own locks); the
backend object is shared, so its calls are serialised too.  An evidence
request holds every register lock while it quotes and reads the logs, so
the logs in the bundle are exactly the ones the quote covers.

Endpoints (all JSON):

==========================================  ====================================================
``GET  /v1/health``                         ``{"status": "ok"}``; anyone who can connect
``GET  /v1/registers``                      owned registers and their values; peers with a rule
``GET  /v1/logs/{register}``                the log text; ``read`` rights
``POST /v1/logs/{register}/records``        ``{"records": [str | {domain, operation, content}]}``
                                            or one ``{domain, operation, content}``: appended as
                                            one group commit; domain rights for every record
``POST /v1/evidence``                       ``{"nonce": hex}``: a tsmr-bundle; ``evidence`` rights
==========================================  ====================================================

Errors are ``{"error": {"code": ..., "message": ...}}`` with a 4xx status
for what the client did wrong, 5xx for the agent's or the backend's
failures; nothing internal (paths aside, tracebacks never) goes back to the
client.  Every request is logged to stderr as one JSON line.

Why one module of some 870 lines: the agent's state, its request handler and
its socket server share one set of rules -- who may write which register, the
per-register locks, the request deadline, and the shutdown order -- and each
part enforces a piece of them.  Split apart, those rules would have to be read
across files to be checked; kept here, this docstring and the code that keeps
them sit together.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import platform
import re
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

from .. import safefs
from ..backends.detect import open_backend
from ..errors import BackendError, InputError, TsmrError
from ..evidence.bundle import make_bundle
from ..registers import bank_label
from ..runtime_log.records import RecordError, check_record, event, split_event
from ..runtime_log.store import RuntimeLog
from ..system.acquire import acquire, platform_logs
from .config import AgentConfig, Peer

MAX_RECORDS_PER_REQUEST = 1024
MAX_NONCE_BYTES = 64

_UCRED = struct.Struct("3i")
# SO_PEERGROUPS (Linux 4.13) is missing from Python's socket module; 59 on the asm-generic architectures.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", None) or (
    59 if platform.machine() in ("x86_64", "i686", "i386", "aarch64", "armv7l", "armv8l", "riscv64", "ppc64le", "ppc64", "s390x", "loongarch64") else None
)
_REGISTER_PATH = re.compile(r"^/v1/logs/([^/]+)(/records)?$")


# -- structured logging -------------------------------------------------------

_log_lock = threading.Lock()


def log_event(event_name: str, level: str = "info", **fields: Any) -> None:
    """One JSON object per line on stderr."""
    rec = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": level, "event": event_name}
    rec.update(fields)
    line = json.dumps(rec, separators=(",", ":"), default=str)
    with _log_lock:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


# -- errors ---------------------------------------------------------------------

class HttpError(Exception):
    """A response with an error status, a stable code and a message for the client."""

    def __init__(self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.close = close


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# -- peer credentials --------------------------------------------------------------

def peer_credentials(sock: socket.socket) -> Peer:
    """The connecting process's pid, uid, gid and supplementary groups, from the kernel."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    groups: frozenset[int] = frozenset()
    if _SO_PEERGROUPS is not None:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 1024)  # up to 256 groups
            n = len(raw) // 4
            groups = frozenset(struct.unpack(f"{n}I", raw[: 4 * n]))
        except OSError:
            pass  # older kernel, or more than 256 groups: only the primary group counts
    return Peer(pid=pid, uid=uid, gid=gid, groups=groups)


# -- the register set, shared by threads ------------------------------------------

class _SerializedRegisters:
    """Calls into a backend one at a time: backends hold one set of file descriptors, and
    ``flock`` does not exclude threads sharing them."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.RLock()

    @property
    def provider(self) -> str:
        return str(self._inner.provider)

    def registers(self) -> Any:
        with self._lock:
            return self._inner.registers()

    def register(self, name: str) -> Any:
        with self._lock:
            return self._inner.register(name)

    def read(self, name: str, algs: Any = None) -> Any:
        with self._lock:
            return self._inner.read(name, algs)

    def extend(self, name: str, digests: Any) -> None:
        with self._lock:
            self._inner.extend(name, digests)

    def close(self) -> None:
        with self._lock:
            self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- the agent's operations ---------------------------------------------------------

class Agent:
    """The registers, logs and policy; what the HTTP layer calls after parsing a request."""

    def __init__(self, config: AgentConfig) -> None:
        if not config.registers:
            raise InputError("the agent owns no registers: list them in the configuration (\"registers\") or with --register")
        self.config = config
        inner = open_backend(config.backend, state_dir=config.state_dir)
        if getattr(inner, "hardware_backed", True) is False:
            log_event("emulated-registers", "warning", provider=inner.provider,
                      detail="the registers are emulated: nothing the agent records or quotes is hardware-backed")
        self.regs = _SerializedRegisters(inner)
        self.logs: dict[str, RuntimeLog] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._evidence_lock = threading.Lock()
        self._closed = False
        try:
            for name in config.registers:
                log = RuntimeLog(self.regs, name, log_dir=config.log_dir)
                self._take_ownership(log)
                self.logs[name] = log  # from here on, _release closes it (and its claim)
                result = log.recover()
                if result is not None:
                    log_event("recovered", register=name, action=result.action,
                              lines_appended=result.lines_appended, lines_in_intent=result.lines_in_intent)
                report = log.verify() if log.path.exists() and log.path.stat().st_size else None
                if report is not None and not report.ok:
                    # Not fatal: the next append records the difference with a sync record.
                    log_event("log-differs-from-register", "warning", register=name, findings=report.explain(name))
                self._locks[name] = threading.Lock()
        except BaseException:
            self._release()
            raise

    def _take_ownership(self, log: RuntimeLog) -> None:
        try:
            log.claim("agent")
        except BackendError as exc:
            if exc.errno == errno.EBUSY:
                raise BackendError(f"another writer already owns the log of {log.register} ({log.path}): {exc}",
                                   backend="agent", register=log.register, errno=errno.EBUSY) from None
            raise

    def _release(self) -> None:
        for log in self.logs.values():
            with contextlib.suppress(Exception):
                log.close()
        with contextlib.suppress(Exception):
            self.regs.close()

    def close(self) -> None:
        """Wait for the operations in progress, then close the logs and the backend."""
        with self._all_locks():
            self._closed = True
        self._release()

    @contextlib.contextmanager
    def _register_lock(self, register: str) -> Iterator[None]:
        with self._locks[register]:
            if self._closed:
                raise HttpError(503, "shutting_down", "the agent is shutting down")
            yield

    @contextlib.contextmanager
    def _all_locks(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for name in sorted(self._locks):
                stack.enter_context(self._locks[name])
            yield

    def _owned(self, register: str) -> RuntimeLog:
        log = self.logs.get(register)
        if log is None:
            raise HttpError(404, "unknown_register", f"register {register!r} is not served by this agent "
                                                     f"(served: {', '.join(self.logs)})")
        return log

    def _values(self, register: str) -> dict[str, str]:
        log = self.logs[register]
        return {bank_label(a): v.hex() for a, v in self.regs.read(register, log.algs).items()}

    # -- operations -----------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {"status": "ok" if not self._closed else "stopping"}

    def registers(self, peer: Peer) -> dict[str, Any]:
        if not self.config.is_known(peer):
            raise HttpError(403, "forbidden", f"no rule of this agent applies to {peer.describe()}")
        return {"provider": self.regs.provider,
                "registers": [{"name": name, "banks": self._values(name)} for name in self.logs]}

    def read_log(self, peer: Peer, register: str) -> dict[str, Any]:
        log = self._owned(register)
        if not self.config.may_read(peer, register):
            raise HttpError(403, "forbidden", f"{peer.describe()} may not read the log of {register}")
        with self._register_lock(register):
            data = log.read()
            values = self._values(register)
        return {"register": register, "text": data.decode("utf-8", errors="replace"), "banks": values}

    def append(self, peer: Peer, register: str, body: Any) -> dict[str, Any]:
        log = self._owned(register)
        records = parse_append_body(body)
        domains = {r.split(" ", 1)[0] for r in records}
        denied = sorted(d for d in domains if not self.config.may_append(peer, register, d))
        if denied:
            raise HttpError(403, "forbidden", f"{peer.describe()} may not append records of domain(s) "
                                              f"{', '.join(map(repr, denied))} to {register}")
        with self._register_lock(register):
            if log.broken is not None:
                raise HttpError(503, "log_tampered", log.broken)
            try:
                result = log.append_many(records)
            except BaseException:
                if log.broken is not None:
                    log_event("log-tampered", "error", register=register, path=str(log.path), detail=log.broken)
                    raise HttpError(503, "log_tampered", log.broken) from None
                # An extend may have happened: settle the batch now rather than at the next append.
                with contextlib.suppress(Exception):
                    log.recover()
                raise
        first = result.first_line + (1 if result.synced else 0)
        return {
            "register": register,
            "seq": list(range(first, first + len(records))),
            "records": records,
            "synced": result.synced,
            "gap": result.gap,
            "banks": {bank_label(a): v.hex() for a, v in result.values.items()},
        }

    def evidence(self, peer: Peer, body: Any) -> dict[str, Any]:
        if not self.config.may_get_evidence(peer):
            raise HttpError(403, "forbidden", f"{peer.describe()} may not request evidence")
        nonce = parse_evidence_body(body)
        with self._evidence_lock, self._all_locks():
            if self._closed:
                raise HttpError(503, "shutting_down", "the agent is shutting down")
            # No append can run from here on: the logs read below are what the quote covers.
            got = acquire(nonce, backend=self.config.backend, state_dir=self.config.state_dir)
            logs = platform_logs(got)
            for name, log in self.logs.items():
                data = log.read()
                if data:  # a log nobody wrote to yet adds nothing
                    logs.append({"format": "tsmr", "data": data, "register": name, "name": str(log.path)})
        if got.provider and got.provider != self.regs.provider:
            log_event("evidence-provider-differs", "warning", evidence_provider=got.provider, registers_provider=self.regs.provider)
        return make_bundle(nonce=nonce, evidence=got.evidence, logs=logs)


# -- request bodies -----------------------------------------------------------------

def parse_append_body(body: Any) -> list[str]:
    """The records of an append request, each checked against the log's rules and the event grammar."""
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_request", "the body must be a JSON object")
    if "records" in body:
        extra = sorted(set(body) - {"records"})
        if extra:
            raise HttpError(400, "invalid_request", f"unexpected key(s) {', '.join(extra)} next to \"records\"")
        items = body["records"]
        if not isinstance(items, list) or not items:
            raise HttpError(400, "invalid_request", "\"records\" must be a non-empty list")
        if len(items) > MAX_RECORDS_PER_REQUEST:
            raise HttpError(413, "too_many_records", f"{len(items)} records, over the limit of {MAX_RECORDS_PER_REQUEST} per request")
    else:
        items = [body]
    out: list[str] = []
    for i, item in enumerate(items):
        where = f"record {i}" if "records" in body else "the record"
        try:
            if isinstance(item, str):
                check_record(item)
                text = item
            elif isinstance(item, dict):
                extra = sorted(set(item) - {"domain", "operation", "content"})
                if extra or "domain" not in item or "operation" not in item:
                    raise HttpError(400, "invalid_request", f"{where}: an event object has \"domain\", \"operation\" "
                                                            "and optionally \"content\", nothing else")
                text = event(item["domain"], item["operation"], item.get("content"))
            else:
                raise HttpError(400, "invalid_request", f"{where}: a record is a string or an event object")
        except RecordError as exc:
            raise HttpError(422, "invalid_record", f"{where}: {exc}") from None
        except InputError as exc:  # content that has no RFC 8785 form
            raise HttpError(422, "invalid_record", f"{where}: {exc}") from None
        except RecursionError:
            raise HttpError(422, "invalid_record", f"{where}: the content nests too deeply") from None
        if split_event(text) is None:
            raise HttpError(422, "invalid_record", f"{where}: a record must read '<domain> <operation>[ <content>]'")
        out.append(text)
    return out


def parse_evidence_body(body: Any) -> bytes:
    if not isinstance(body, dict) or set(body) != {"nonce"} or not isinstance(body["nonce"], str):
        raise HttpError(400, "invalid_request", "the body must be {\"nonce\": \"<hex>\"}")
    text = body["nonce"]
    if not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", text):
        raise HttpError(400, "invalid_nonce", "the nonce must be non-empty hexadecimal with an even number of digits")
    nonce = bytes.fromhex(text)
    if len(nonce) > MAX_NONCE_BYTES:
        raise HttpError(400, "invalid_nonce", f"the nonce is {len(nonce)} bytes, over the limit of {MAX_NONCE_BYTES}")
    return nonce


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- HTTP ------------------------------------------------------------------------

_ROUTES = {"health": ("GET",), "registers": ("GET",), "log": ("GET",), "records": ("POST",), "evidence": ("POST",)}


def _route(path: str) -> tuple[str, str | None] | None:
    if path == "/v1/health":
        return "health", None
    if path == "/v1/registers":
        return "registers", None
    if path == "/v1/evidence":
        return "evidence", None
    m = _REGISTER_PATH.match(path)
    if m:
        return ("records" if m.group(2) else "log"), unquote(m.group(1))
    return None


class _DeadlineReader(io.RawIOBase):
    """Reads from the socket until a deadline for the whole request, not a timeout per read:
    a client sending one byte a second must not hold its connection for ever."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline: float | None = None
        self.received = 0  # bytes read since the deadline was set

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            self.sock.settimeout(left)
        n = self.sock.recv_into(buf)
        self.received += n
        return n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tsmr-agent"
    sys_version = ""
    server: "AgentServer"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.agent.config.request_timeout)
        # The server read the peer's credentials when it accepted the connection.
        self.peer = self.client_address if isinstance(self.client_address, Peer) else peer_credentials(self.connection)
        self._reader = _DeadlineReader(self.connection)
        self.rfile.close()
        self.rfile = io.BufferedReader(self._reader)
        self._body_read = True

    def handle_one_request(self) -> None:
        # The clock of a request starts when we wait for it: it bounds an idle keep-alive
        # connection too.
        self._reader.deadline = time.monotonic() + self.server.agent.config.request_timeout
        self._reader.received = 0
        try:
            super().handle_one_request()  # a read past the deadline ends in log_error, below
        finally:
            self._reader.deadline = None

    def log_error(self, format: str, *args: Any) -> None:
        """Called by the HTTP parser for a request that timed out: say so, and close."""
        self.close_connection = True
        timeout = self.server.agent.config.request_timeout
        if not self._reader.received:  # an idle connection: nothing to answer
            log_event("connection-idle", uid=self.peer.uid, pid=self.peer.pid,
                      detail=f"no request within {timeout:g} s; connection closed")
            return
        if getattr(self, "request_version", None) in (None, "HTTP/0.9"):
            self.request_version = "HTTP/1.1"
        self._send_json(408, _error_body("timeout", f"the request was not complete within {timeout:g} s"))
        log_event("request-timeout", "warning", uid=self.peer.uid, pid=self.peer.pid,
                  detail=f"no complete request within {timeout:g} s; connection closed")

    def version_string(self) -> str:
        return self.server_version

    def address_string(self) -> str:  # AF_UNIX peers have no address
        return f"pid {self.peer.pid}" if hasattr(self, "peer") else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request gets one structured line from _dispatch

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by the HTTP parser (bad request line, headers too long...), as JSON."""
        self.close_connection = True
        if getattr(self, "request_version", None) in (None, "HTTP/0.9"):
            self.request_version = "HTTP/1.1"  # we do not speak HTTP/0.9: always send a status line
        phrase = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
        status = code
        self._send_json(status, _error_body(_CODES.get(status, "http_error"), message or phrase))
        peer = getattr(self, "peer", None)
        log_event("request", "warning", method=getattr(self, "command", None), status=status,
                  uid=peer.uid if peer else None, pid=peer.pid if peer else None, error=message or phrase)

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        try:
            # The reader shortened the socket's timeout to what was left of the request's;
            # the answer gets a full one (sendall's timeout bounds the whole send).
            self.connection.settimeout(self.server.agent.config.request_timeout)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection or not self._body_read:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # -- body -------------------------------------------------------------------
    def _read_body(self) -> bytes | None:
        """The request body (bounded, Content-Length only), or None if there is none."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._body_read = False
            raise HttpError(411, "length_required", "send the body with a Content-Length, not a transfer coding", close=True)
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            if self.command == "POST":
                raise HttpError(411, "length_required", "a POST needs a Content-Length header")
            return None
        if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,12}", lengths[0].strip()):
            self._body_read = False
            raise HttpError(400, "bad_content_length", "Content-Length must be one decimal number", close=True)
        n = int(lengths[0])
        limit = self.server.agent.config.max_body
        if n > limit:
            self._body_read = False
            raise HttpError(413, "body_too_large", f"the body is {n} bytes, over the limit of {limit}", close=True)
        self._body_read = False
        try:
            data = self.rfile.read(n) if n else b""
        except TimeoutError:
            raise HttpError(408, "timeout", f"the body did not arrive within {self.server.agent.config.request_timeout:g} s "
                                            "of the request's start", close=True) from None
        if len(data) != n:
            raise HttpError(400, "truncated_body", f"the connection closed after {len(data)} of {n} body bytes", close=True)
        self._body_read = True
        return data if n else None

    def _json_body(self, data: bytes | None) -> Any:
        if data is None:
            raise HttpError(400, "invalid_json", "the request needs a JSON body")
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "unsupported_media_type", f"the body must be application/json, not {ctype}")
        try:
            return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            raise HttpError(400, "invalid_json", f"the body is not UTF-8 (byte {exc.start})") from None
        except RecursionError:
            raise HttpError(400, "invalid_json", "the body nests too deeply") from None
        except ValueError as exc:
            raise HttpError(400, "invalid_json", f"the body is not JSON: {exc}") from None

    # -- dispatch -----------------------------------------------------------------
    def _dispatch(self) -> None:
        start = time.monotonic()
        self._body_read = True
        agent = self.server.agent
        peer = self.peer
        route = None
        register = None
        status = 500
        extra: dict[str, Any] = {}
        headers: dict[str, str] = {}
        try:
            data = self._read_body()
            found = _route(urlsplit(self.path).path)
            if found is None:
                raise HttpError(404, "not_found", f"no endpoint {urlsplit(self.path).path!r}")
            route, register = found
            allowed = _ROUTES[route]
            if self.command not in allowed:
                raise HttpError(405, "method_not_allowed", f"{self.command} is not allowed here (allowed: {', '.join(allowed)})",
                                headers={"Allow": ", ".join(allowed)})
            if route == "health":
                obj = agent.health()
            elif route == "registers":
                obj = agent.registers(peer)
            elif route == "log":
                assert register is not None
                obj = agent.read_log(peer, register)
            elif route == "records":
                assert register is not None
                obj = agent.append(peer, register, self._json_body(data))
                extra = {"records": len(obj["seq"]), "seq": obj["seq"][0] if obj["seq"] else None}
            else:
                obj = agent.evidence(peer, self._json_body(data))
            status = 200
        except HttpError as exc:
            status, obj = exc.status, _error_body(exc.code, exc.message)
            headers = exc.headers
            if exc.close:
                self.close_connection = True
            extra = {"error": exc.code, "detail": exc.message}
        except InputError as exc:
            status, obj = 400, _error_body("invalid_request", str(exc))
            extra = {"error": "invalid_request", "detail": str(exc)}
        except BackendError as exc:
            status, obj = 503, _error_body("backend_error", str(exc))
            extra = {"error": "backend_error", "detail": str(exc)}
        except TsmrError as exc:
            status, obj = 500, _error_body("error", str(exc))
            extra = {"error": type(exc).__name__, "detail": str(exc)}
        except Exception as exc:  # never a traceback to the client; one in our log
            status, obj = 500, _error_body("internal_error", "internal error (see the agent's log)")
            extra = {"error": type(exc).__name__, "detail": str(exc), "traceback": traceback.format_exc()}
        self._send_json(status, obj, headers)
        log_event("request", "info" if status < 400 else "warning", method=self.command, path=urlsplit(self.path).path,
                  status=status, uid=peer.uid, gid=peer.gid, pid=peer.pid,
                  ms=round((time.monotonic() - start) * 1000, 1), **extra)


_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "timeout", 411: "length_required",
          413: "body_too_large", 414: "uri_too_long", 415: "unsupported_media_type", 431: "headers_too_large",
          500: "internal_error", 503: "unavailable", 505: "http_version_not_supported"}


class AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A threaded HTTP server on a Unix socket, with bounds on simultaneous connections per uid."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, agent: Agent) -> None:
        self.agent = agent
        self.path = path
        self._count_lock = threading.Lock()
        self._per_uid: dict[int, int] = {}
        self._shared = 0  # connections of unprivileged uids
        self._privileged_count = 0  # connections of root and of the agent's own uid
        self.inode: int | None = None
        super().__init__(path, _Handler, bind_and_activate=True)

    def server_bind(self) -> None:
        cfg = self.agent.config
        # The socket is made 0600, then opened up by a chmod: never wider than asked for, even for an instant.
        old = os.umask(0o177)
        try:
            super().server_bind()
        finally:
            os.umask(old)
        try:
            st = os.lstat(self.path)
            if not stat.S_ISSOCK(st.st_mode):  # replaced between bind and now: touch nothing
                raise BackendError(f"{self.path} was replaced right after the agent bound it: not changing its mode",
                                   backend="agent")
            if cfg.socket_group is not None:
                os.chown(self.path, -1, cfg.socket_group, follow_symlinks=False)
            os.chmod(self.path, cfg.socket_mode)
            self.inode = os.stat(self.path).st_ino
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise BackendError.from_oserror(exc, backend="agent", register=None, action=f"set the mode and group of {self.path}") from exc

    def server_activate(self) -> None:
        self.socket.listen(128)

    # -- connection accounting: by uid, decided at accept, before anything is read ---------
    def _privileged(self, peer: Peer) -> bool:
        return peer.uid in (0, os.geteuid())

    def _take_slot(self, peer: Peer) -> str | None:
        """Count the connection; None if it may go on, else why it may not."""
        cfg = self.agent.config
        with self._count_lock:
            mine = self._per_uid.get(peer.uid, 0)
            if self._privileged(peer):
                # Separate from everyone else's, so that no other user can starve root or the agent's user.
                if self._privileged_count >= cfg.max_connections:
                    return f"the agent is at its connection limit for root and its own user ({cfg.max_connections})"
                self._privileged_count += 1
            else:
                if mine >= cfg.max_connections_per_uid:
                    return f"uid {peer.uid} already has {mine} connections open, the limit per user"
                if self._shared >= cfg.max_connections:
                    return f"the agent is at its connection limit ({cfg.max_connections})"
                self._shared += 1
            self._per_uid[peer.uid] = mine + 1
        return None

    def _give_slot(self, peer: Peer) -> None:
        with self._count_lock:
            if self._privileged(peer):
                self._privileged_count -= 1
            else:
                self._shared -= 1
            left = self._per_uid[peer.uid] - 1
            if left:
                self._per_uid[peer.uid] = left
            else:
                del self._per_uid[peer.uid]

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            peer = peer_credentials(request)
        except OSError as exc:
            log_event("connection-error", "warning", error="no peer credentials", detail=str(exc))
            self.shutdown_request(request)
            return
        why = self._take_slot(peer)
        if why is not None:
            self._refuse(request, peer, why)
            return
        try:
            # The handler gets the peer as its "client address": AF_UNIX has none worth having.
            super().process_request(request, peer)
        except BaseException:
            self._give_slot(peer)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._give_slot(client_address)

    def _refuse(self, request: socket.socket, peer: Peer, why: str) -> None:
        body = json.dumps(_error_body("too_many_connections", f"{why}; retry later")).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Retry-After: 1\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            # Answered from the accepting thread: never wait on this client (the answer fits the
            # socket's buffer; if it does not, the client loses it).
            request.setblocking(False)
            request.sendall(head + body)
        self.shutdown_request(request)
        log_event("connection-refused", "warning", reason=why, uid=peer.uid, pid=peer.pid)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        log_event("connection-error", "warning", error=type(exc).__name__, detail=str(exc))

    def remove_socket(self) -> None:
        """Unlink the socket file if it is still ours (not replaced by another agent)."""
        with contextlib.suppress(OSError):
            if self.inode is not None and os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)


# -- running ---------------------------------------------------------------------------

def prepare_socket_path(path: str) -> None:
    """Create the socket's directory; remove a stale socket file, but never a live one or a non-socket."""
    if len(os.fsencode(path)) >= 108:
        raise InputError(f"socket path {path} is too long for a Unix socket (at most 107 bytes)")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        # Refused if others can write in it: they could swap the socket for a link to a file the
        # agent would then chmod.
        os.close(safefs.open_dir(parent, what="agent socket directory", create_mode=0o755))
    except OSError as exc:
        raise BackendError.from_oserror(exc, backend="agent", register=None, action=f"create {parent}") from exc
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InputError(f"{path} exists and is not a socket: not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log_event("stale-socket-removed", path=path)
        return
    except OSError as exc:
        raise BackendError.from_oserror(exc, backend="agent", register=None, action=f"probe the existing socket {path}") from exc
    finally:
        probe.close()
    raise BackendError(f"another process is listening on {path}", backend="agent")


def _notify_ready() -> None:
    """sd_notify(READY=1) when run as a systemd Type=notify service."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(b"READY=1")


def serve(config: AgentConfig, *, ready: Callable[[str], None] | None = None) -> int:
    """Run the agent in the foreground until SIGTERM or SIGINT; returns an exit status."""
    path = config.socket_path()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        prepare_socket_path(path)
        agent = Agent(config)
        try:
            server = AgentServer(path, agent)
        except BaseException:
            agent.close()
            raise
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="tsmr-agent", daemon=True)
        thread.start()
        log_event("ready", socket=path, pid=os.getpid(), provider=agent.regs.provider, registers=list(agent.logs),
                  rules=len(config.rules), config=config.source)
        if ready is not None:
            ready(path)
        _notify_ready()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            log_event("stopping", socket=path)
            server.shutdown()
            server.remove_socket()
            agent.close()  # waits for appends in progress
            server.server_close()
            thread.join(timeout=5)
            log_event("stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["Agent", "AgentServer", "HttpError", "serve", "peer_credentials", "log_event", "prepare_socket_path",
           "parse_append_body", "parse_evidence_body"]
