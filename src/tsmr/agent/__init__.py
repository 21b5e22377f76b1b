"""The guest agent: the single writer of a VM's runtime logs, serving local programs over a Unix socket.

``tsmr agent`` runs it (:func:`tsmr.agent.server.serve`); workloads talk to it
with :class:`tsmr.agent.client.AgentClient` or ``tsmr record``.  The
configuration and access rules are described in :mod:`tsmr.agent.config`,
the protocol in :mod:`tsmr.agent.server`.

The client is importable without the server (it needs only the standard
library and tsmr's error types).
"""

from __future__ import annotations

from .client import AgentClient, AgentError, AgentRequestError, AgentUnavailableError
from .config import AgentConfig, Peer, Rule, default_socket_path, load_config

__all__ = [
    "AgentClient",
    "AgentError",
    "AgentRequestError",
    "AgentUnavailableError",
    "AgentConfig",
    "Peer",
    "Rule",
    "default_socket_path",
    "load_config",
]
