"""uvicorn glue for ``tsmr serve``: the HTTP protocol (TCP_NODELAY, the TLS peer in the scope) and TLS options.

With ``--workers N`` uvicorn binds the listening socket itself with protocol
number 0, so asyncio does not recognise the accepted connections as TCP and
leaves ``TCP_NODELAY`` unset (it sets it only when ``proto == IPPROTO_TCP``).
A response written in two pieces (headers, then body) then waits for the
client's delayed ACK: about 40 ms added to every request.  This protocol sets
``TCP_NODELAY`` on every connection it is given, whatever the socket says.

Over TLS, uvicorn does not tell the application who the client is: the ASGI
scope carries no certificate.  The protocol reads the peer's certificate from
the connection once, when the handshake is done (asyncio calls
``connection_made`` only then), and hands every request of that connection
the ASGI TLS extension (``scope["extensions"]["tls"]``: ``client_cert_chain``,
``client_cert_name``, ``tls_version``, ...).  A certificate is put there only
when the server's context verified it (a client CA is configured): the
handshake refuses one that does not chain to that CA, so a certificate in the
scope is a verified one.  Plain-HTTP connections are left exactly as before.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, Awaitable, Callable

from ..errors import InputError
from .settings import Settings

try:  # the protocol uvicorn's "auto" would pick
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

__all__ = ["NoDelayHTTPProtocol", "PROTOCOL", "tls_extension", "uvicorn_tls_options"]

PROTOCOL = "tsmr.service.server:NoDelayHTTPProtocol"  # import string: survives uvicorn's worker spawn

# Forward-secret AEAD suites for TLS 1.2 (TLS 1.3 suites are all of that kind and not set by this string).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def tls_extension(ssl_object: Any) -> dict[str, Any]:
    """The ASGI TLS extension for one connection, from its (handshaken) ``ssl.SSLObject``."""
    chain: list[str] = []
    name: str | None = None
    if ssl_object.context.verify_mode != ssl.CERT_NONE:  # else a certificate would be unverified: ignored
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            from cryptography import x509

            chain.append(ssl.DER_cert_to_PEM_cert(der))
            try:
                name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
            except ValueError:
                name = None
    return {"server_cert": None, "client_cert_chain": chain, "client_cert_name": name, "client_cert_error": None,
            "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""), "cipher_suite": None}


def _with_tls(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    async def with_tls(scope: Any, receive: Any, send: Any) -> None:
        extensions = scope.get("extensions")
        scope["extensions"] = {**extensions, "tls": tls} if extensions else {"tls": tls}
        await app(scope, receive, send)

    return with_tls


class NoDelayHTTPProtocol(_Base):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock: Any = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            # Both of uvicorn's HTTP protocols run each request with ``self.app``: this connection's
            # requests get its TLS details through a wrapper made once, here.
            self.app = _with_tls(self.app, tls_extension(ssl_object))
        super().connection_made(transport)


def uvicorn_tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's ``ssl_*`` options for the settings' TLS files ({} without TLS), after loading them once.

    A certificate, key or client CA that does not load is an :class:`InputError`
    here, at startup, naming the file, rather than a traceback in every worker;
    an encrypted key is refused (uvicorn would ask for its passphrase on the terminal).
    """
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if not cert and not key and not client_ca:
        return {}
    if not cert or not key:
        raise InputError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        asked.append(True)
        return b""

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except OSError as exc:
        if asked:
            raise InputError(f"the TLS key {key} is encrypted: give it unencrypted, readable only by the "
                             "verifier's user (e.g. `openssl pkey -in KEY -out PLAIN`)") from None
        if isinstance(exc, ssl.SSLError):
            raise InputError(f"the TLS certificate {cert} and key {key} do not load together: "
                             f"{exc.reason or exc}") from None
        raise InputError(f"cannot read the TLS certificate or key {exc.filename or ''}: "
                         f"{exc.strerror or exc}") from None
    options: dict[str, Any] = {"ssl_certfile": cert, "ssl_keyfile": key, "ssl_ciphers": CIPHERS}
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise InputError(f"the TLS client CA {client_ca} does not load (PEM certificates expected): "
                             f"{exc.reason or exc}") from None
        except OSError as exc:
            raise InputError(f"cannot read the TLS client CA {client_ca}: {exc.strerror or exc}") from None
        options.update(ssl_ca_certs=client_ca, ssl_cert_reqs=int(ssl.CERT_OPTIONAL))
    return options
