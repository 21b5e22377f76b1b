"""Configuration of the guest agent, and the access rules it enforces.

The configuration is one JSON object (``tsmr agent --config FILE``)::

    {
      "backend": "emulated:tdx",            # like --backend; default $TSMR_BACKEND, else detected
      "state_dir": null,                    # emulator state (default $TSMR_STATE_DIR)
      "log_dir": "/run/tsmr",               # runtime logs (default $TSMR_LOG_DIR, else /run/tsmr)
      "socket": "/run/tsmr/agent.sock",     # default $TSMR_AGENT_SOCKET, else this
      "socket_mode": "0660",                # octal string or integer
      "socket_group": "tsmr",               # name or gid; default: the agent's group
      "registers": ["rtmr2", "rtmr3"],      # the registers whose logs the agent writes
      "max_body": 1048576,                  # request body limit, bytes
      "max_connections": 64,                # connections of users other than root and the agent's own
      "max_connections_per_uid": 4,         # connections of any one of those users
      "request_timeout": 30,                # seconds to send a whole request (line, headers, body)
      "rules": [
        {"uid": 1000, "domains": ["example.com/*"], "registers": ["rtmr3"], "read": true},
        {"group": "attesters", "evidence": true}
      ]
    }

A rule names its subject with exactly one of ``uid``, ``gid``, ``user`` or
``group`` (names are resolved when the configuration is loaded).  A ``gid`` or
``group`` rule applies to a peer whose primary or supplementary group it is,
as the kernel reports them for the connection (``SO_PEERCRED``,
``SO_PEERGROUPS``).  A rule grants:

* appending records whose domain (the first space-separated token of
  ``<domain> <operation>[ <content>]``) matches one of ``domains`` (shell
  globs, case-sensitive; ``*`` also matches ``/``) to each register of
  ``registers`` (default: every register the agent owns);
* reading those registers' logs if ``read`` is true;
* asking for evidence if ``evidence`` is true.

Rights add up over every rule that applies to the peer; no rule, no right.
uid 0 is not special: root gets what its rules give it.

Connections are counted by the uid the kernel gives for them, when they are
accepted and before anything is read: a user other than root and the
agent's own may hold ``max_connections_per_uid`` of them, and all those users
together ``max_connections``; root and the agent's own user have
``max_connections`` of their own, so no other user can lock them out (the
agent runs at most twice ``max_connections`` connection threads).  A
connection over its limit is answered 503 and closed.  A request (request
line, headers and body) must arrive within ``request_timeout`` seconds of the
moment the agent starts waiting for it, however slowly its bytes come; an
idle connection is closed after as long.
"""

from __future__ import annotations

import fnmatch
import grp
import json
import os
import pwd
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import InputError
from ..registers import check_register_name

DEFAULT_SOCKET = "/run/tsmr/agent.sock"
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_CONNECTIONS_PER_UID = 4
MAX_MAX_BODY = 64 << 20  # the largest body limit a configuration may set
MAX_CONFIG_BYTES = 1 << 20

_TOP_KEYS = {"backend", "state_dir", "log_dir", "socket", "socket_mode", "socket_group", "registers",
             "max_body", "max_connections", "max_connections_per_uid", "request_timeout", "rules"}
_SUBJECT_KEYS = ("uid", "gid", "user", "group")
_RULE_KEYS = {*_SUBJECT_KEYS, "domains", "registers", "read", "evidence"}


def default_socket_path() -> str:
    """``$TSMR_AGENT_SOCKET``, else ``/run/tsmr/agent.sock``."""
    return os.environ.get("TSMR_AGENT_SOCKET") or DEFAULT_SOCKET


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection, as the kernel says (never as the client says)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @property
    def all_groups(self) -> frozenset[int]:
        return self.groups | {self.gid}

    def describe(self) -> str:
        return f"uid {self.uid} (pid {self.pid})"


@dataclass(frozen=True)
class Rule:
    """One access rule: a subject (a uid, or a gid) and what it may do."""

    uid: int | None = None
    gid: int | None = None
    domains: tuple[str, ...] = ()
    registers: tuple[str, ...] | None = None  # None: every register the agent owns
    read: bool = False
    evidence: bool = False

    def applies_to(self, peer: Peer) -> bool:
        if self.uid is not None:
            return peer.uid == self.uid
        return self.gid is not None and self.gid in peer.all_groups

    def covers(self, register: str) -> bool:
        return self.registers is None or register in self.registers

    def allows_domain(self, domain: str) -> bool:
        return any(fnmatch.fnmatchcase(domain, pattern) for pattern in self.domains)


@dataclass(frozen=True)
class AgentConfig:
    registers: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    backend: str | None = None
    state_dir: str | None = None
    log_dir: str | None = None
    socket: str | None = None
    socket_mode: int = 0o660
    socket_group: int | None = None
    max_body: int = DEFAULT_MAX_BODY
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_uid: int = DEFAULT_MAX_CONNECTIONS_PER_UID
    request_timeout: float = 30.0
    source: str | None = field(default=None, compare=False)  # the file it came from

    # -- the policy --------------------------------------------------------
    def _rules_for(self, peer: Peer) -> list[Rule]:
        return [r for r in self.rules if r.applies_to(peer)]

    def may_append(self, peer: Peer, register: str, domain: str) -> bool:
        return any(r.covers(register) and r.allows_domain(domain) for r in self._rules_for(peer))

    def may_read(self, peer: Peer, register: str) -> bool:
        return any(r.read and r.covers(register) for r in self._rules_for(peer))

    def may_get_evidence(self, peer: Peer) -> bool:
        return any(r.evidence for r in self._rules_for(peer))

    def is_known(self, peer: Peer) -> bool:
        """Some rule applies to the peer (it may list the registers and their values)."""
        return bool(self._rules_for(peer))

    def with_overrides(self, **changes: Any) -> "AgentConfig":
        """A copy with the given fields replaced, ignoring those given as None (unset options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def socket_path(self) -> str:
        return self.socket or default_socket_path()


# -- loading ---------------------------------------------------------------

def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and check a configuration file; every problem is an InputError naming the file and the field."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise InputError(f"agent configuration {p} is over {MAX_CONFIG_BYTES} bytes")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read agent configuration {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"agent configuration {p} is not UTF-8") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InputError(f"agent configuration {p} is not JSON: {exc}") from None
    return config_from_dict(doc, source=str(p))


def config_from_dict(doc: Any, *, source: str | None = None) -> AgentConfig:
    where = f"agent configuration {source}" if source else "agent configuration"

    def fail(msg: str) -> InputError:
        return InputError(f"{where}: {msg}")

    if not isinstance(doc, Mapping):
        raise fail("must be a JSON object")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
    registers = _str_list(doc.get("registers", []), "registers", fail)
    for name in registers:
        try:
            check_register_name(name)
        except InputError as exc:
            raise fail(f"registers: {exc}") from None
    if len(set(registers)) != len(registers):
        raise fail("registers: a register is listed twice")
    rules_doc = doc.get("rules", [])
    if not isinstance(rules_doc, list):
        raise fail("rules must be a list")
    rules = tuple(_rule(r, f"rules[{i}]", fail) for i, r in enumerate(rules_doc))
    cfg = AgentConfig(
        registers=tuple(registers),
        rules=rules,
        backend=_opt_str(doc, "backend", fail),
        state_dir=_opt_str(doc, "state_dir", fail),
        log_dir=_opt_str(doc, "log_dir", fail),
        socket=_opt_str(doc, "socket", fail),
        socket_mode=parse_mode(doc["socket_mode"], fail) if doc.get("socket_mode") is not None else 0o660,
        socket_group=resolve_group(doc["socket_group"], fail) if doc.get("socket_group") is not None else None,
        max_body=_int(doc, "max_body", DEFAULT_MAX_BODY, 1024, MAX_MAX_BODY, fail),
        max_connections=_int(doc, "max_connections", DEFAULT_MAX_CONNECTIONS, 1, 4096, fail),
        max_connections_per_uid=_int(doc, "max_connections_per_uid", DEFAULT_MAX_CONNECTIONS_PER_UID, 1, 4096, fail),
        request_timeout=float(_int(doc, "request_timeout", 30, 1, 3600, fail)),
        source=source,
    )
    check_rules(cfg, fail)
    return cfg


def check_rules(cfg: AgentConfig, fail: Any = None) -> None:
    """Every register a rule names must be one the agent owns (a typo must not silently grant nothing)."""
    fail = fail or (lambda msg: InputError(f"agent configuration: {msg}"))
    owned = set(cfg.registers)
    for i, rule in enumerate(cfg.rules):
        for name in rule.registers or ():
            if name not in owned:
                raise fail(f"rules[{i}]: register {name} is not one the agent owns ({', '.join(cfg.registers) or 'none'})")


def _rule(doc: Any, where: str, fail: Any) -> Rule:
    if not isinstance(doc, Mapping):
        raise fail(f"{where} must be an object")
    unknown = sorted(set(doc) - _RULE_KEYS)
    if unknown:
        raise fail(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_RULE_KEYS))})")
    subjects = [k for k in _SUBJECT_KEYS if k in doc]
    if len(subjects) != 1:
        raise fail(f"{where} must name exactly one of uid, gid, user, group")
    key = subjects[0]
    value = doc[key]
    uid = gid = None
    if key == "uid":
        uid = _id(value, f"{where}.uid", fail)
    elif key == "gid":
        gid = _id(value, f"{where}.gid", fail)
    elif key == "user":
        if not isinstance(value, str) or not value:
            raise fail(f"{where}.user must be a user name")
        try:
            uid = pwd.getpwnam(value).pw_uid
        except KeyError:
            raise fail(f"{where}: no user named {value!r}") from None
    else:
        gid = resolve_group(value, lambda m: fail(f"{where}.group: {m}"))
    domains = tuple(_str_list(doc.get("domains", []), f"{where}.domains", fail))
    for pattern in domains:
        if not pattern or any(c.isspace() for c in pattern):
            raise fail(f"{where}.domains: {pattern!r} is not a domain pattern (non-empty, no whitespace)")
    registers = doc.get("registers")
    regs = tuple(_str_list(registers, f"{where}.registers", fail)) if registers is not None else None
    flags = {}
    for name in ("read", "evidence"):
        v = doc.get(name, False)
        if not isinstance(v, bool):
            raise fail(f"{where}.{name} must be true or false")
        flags[name] = v
    return Rule(uid=uid, gid=gid, domains=domains, registers=regs, **flags)


def resolve_group(value: Any, fail: Any) -> int:
    """A group name or gid as a gid."""
    if isinstance(value, bool):
        raise fail(f"{value!r} is not a group")
    if isinstance(value, int):
        return _id(value, "group", fail)
    if isinstance(value, str) and value:
        if value.isdigit():
            return int(value)
        try:
            return grp.getgrnam(value).gr_gid
        except KeyError:
            raise fail(f"no group named {value!r}") from None
    raise fail(f"{value!r} is not a group name or gid")


def parse_mode(value: Any, fail: Any) -> int:
    """A file mode from an octal string ("0660", "660") or an integer."""
    if isinstance(value, bool):
        raise fail("socket_mode must be an octal string such as \"0660\"")
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise fail(f"socket_mode {value!r} is not octal") from None
    elif isinstance(value, int):
        mode = value
    else:
        raise fail("socket_mode must be an octal string such as \"0660\"")
    if not 0 <= mode <= 0o777:
        raise fail(f"socket_mode {value!r} is not a permission mode (0 to 0777)")
    return mode


def _id(value: Any, where: str, fail: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32 - 1:
        raise fail(f"{where} must be a non-negative integer id")
    return value


def _int(doc: Mapping[str, Any], key: str, default: int, lo: int, hi: int, fail: Any) -> int:
    v = doc.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise fail(f"{key} must be an integer from {lo} to {hi}")
    return v


def _opt_str(doc: Mapping[str, Any], key: str, fail: Any) -> str | None:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise fail(f"{key} must be a non-empty string")
    return v


def _str_list(value: Any, where: str, fail: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise fail(f"{where} must be a list of strings")
    return list(value)


def owned_registers(names: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        check_register_name(n)
        if n not in out:
            out.append(n)
    return tuple(out)


__all__ = ["AgentConfig", "Rule", "Peer", "load_config", "config_from_dict", "check_rules", "default_socket_path",
           "DEFAULT_SOCKET", "DEFAULT_MAX_BODY", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_CONNECTIONS_PER_UID"]
