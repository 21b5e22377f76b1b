"""A small client of the guest agent (standard library only).

    >>> from tsmr.agent.client import AgentClient
    >>> agent = AgentClient("/run/tsmr/agent.sock")                     # doctest: +SKIP
    >>> agent.append("rtmr3", ['example.com/app start {"v":1}'])         # doctest: +SKIP
    {'register': 'rtmr3', 'seq': [2], 'records': [...], 'banks': {'sha384': '...'}, ...}
    >>> agent.append("rtmr3", domain="example.com/app", operation="ready", content={"port": 8443})  # doctest: +SKIP

Each call is one HTTP/1.1 request on a fresh connection to the agent's Unix
socket.  Refusals (4xx) raise :class:`AgentRequestError`, an
:class:`~tsmr.errors.InputError`; an unreachable agent or a 5xx raises
:class:`AgentUnavailableError`, a :class:`~tsmr.errors.BackendError`.
Both carry ``status`` and the agent's error ``code``.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any, Sequence
from urllib.parse import quote

from ..errors import BackendError, InputError, TsmrError
from .config import default_socket_path

MAX_RESPONSE_BYTES = 256 << 20
_UNSET: Any = object()


class AgentError(TsmrError):
    """The agent refused a request or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AgentRequestError(AgentError, InputError):
    """The agent refused the request (a 4xx status: forbidden, invalid record, ...)."""


class AgentUnavailableError(AgentError, BackendError):
    """The agent could not be reached, or failed (a 5xx status)."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """Talks to the agent at ``path`` (default ``$TSMR_AGENT_SOCKET``, else ``/run/tsmr/agent.sock``)."""

    def __init__(self, path: str | None = None, *, timeout: float = 30.0) -> None:
        self.path = path or default_socket_path()
        self.timeout = timeout

    def request(self, method: str, target: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer, or an AgentError."""
        conn = _UnixHTTPConnection(self.path, self.timeout)
        headers = {"Accept": "application/json", "Host": "localhost"}
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        try:
            try:
                conn.request(method, target, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent answered (e.g. 503, at its connection limit) and closed before reading: read the answer
            resp = conn.getresponse()
            raw = resp.read(MAX_RESPONSE_BYTES + 1)
            status = resp.status
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise AgentUnavailableError(f"cannot reach the tsmr agent at {self.path}: {reason}") from None
        except http.client.HTTPException as exc:
            raise AgentUnavailableError(f"the tsmr agent at {self.path} broke the connection: {type(exc).__name__}") from None
        finally:
            conn.close()
        if len(raw) > MAX_RESPONSE_BYTES:
            raise AgentUnavailableError(f"the agent's answer is over {MAX_RESPONSE_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise AgentUnavailableError(f"the agent answered {status} with something that is not JSON", status=status) from None
        if status >= 400:
            err = doc.get("error") if isinstance(doc, dict) else None
            code = err.get("code") if isinstance(err, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            text = f"the agent refused ({status} {code}): {message}" if status < 500 else f"the agent failed ({status} {code}): {message}"
            cls = AgentRequestError if status < 500 else AgentUnavailableError
            raise cls(text, status=status, code=code)
        return doc

    # -- endpoints -------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")

    def registers(self) -> dict[str, Any]:
        """``{"provider": ..., "registers": [{"name": ..., "banks": {"sha384": hex}}]}``."""
        return self.request("GET", "/v1/registers")

    def read_log(self, register: str) -> str:
        """The register's runtime log, as text."""
        return str(self.request("GET", f"/v1/logs/{quote(register, safe='')}")["text"])

    def append(
        self,
        register: str,
        records: Sequence[str | dict[str, Any]] | None = None,
        *,
        domain: str | None = None,
        operation: str | None = None,
        content: Any = _UNSET,
    ) -> dict[str, Any]:
        """Append records (one group commit), or one event given as domain, operation and content.

        ``content`` that is not a string is written as RFC 8785 canonical JSON by the agent.
        Returns the line numbers (``seq``), the records as logged and the register's new ``banks``.
        """
        if records is not None:
            if domain is not None or operation is not None or content is not _UNSET:
                raise InputError("give either records or domain/operation/content, not both")
            if isinstance(records, str):
                records = [records]
            body: dict[str, Any] = {"records": list(records)}
        else:
            if domain is None or operation is None:
                raise InputError("an event needs a domain and an operation")
            body = {"domain": domain, "operation": operation}
            if content is not _UNSET:
                body["content"] = content
        return self.request("POST", f"/v1/logs/{quote(register, safe='')}/records", body)

    def evidence(self, nonce: bytes | str) -> dict[str, Any]:
        """A tsmr-bundle over ``nonce`` (bytes, or hex text), with the agent's runtime logs."""
        text = nonce.hex() if isinstance(nonce, (bytes, bytearray)) else str(nonce)
        return self.request("POST", "/v1/evidence", {"nonce": text})


__all__ = ["AgentClient", "AgentError", "AgentRequestError", "AgentUnavailableError"]
