"""uvicorn glue for ``tsmr serve``: an HTTP protocol that turns Nagle's algorithm off.

With ``--workers N`` uvicorn binds the listening socket itself with protocol
number 0, so asyncio does not recognise the accepted connections as TCP and
leaves ``TCP_NODELAY`` unset (it sets it only when ``proto == IPPROTO_TCP``).
A response written in two pieces (headers, then body) then waits for the
client's delayed ACK: about 40 ms added to every request.  This protocol sets
``TCP_NODELAY`` on every connection it is given, whatever the socket says.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

try:  # the protocol uvicorn's "auto" would pick
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

__all__ = ["NoDelayHTTPProtocol", "PROTOCOL"]

PROTOCOL = "tsmr.service.server:NoDelayHTTPProtocol"  # import string: survives uvicorn's worker spawn


class NoDelayHTTPProtocol(_Base):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock: Any = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        super().connection_made(transport)
