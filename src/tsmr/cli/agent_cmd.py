"""``tsmr agent`` (the guest daemon), ``tsmr record`` and ``tsmr agent-client`` (its clients)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional
from urllib.parse import quote

import typer
from rich.table import Table

from ..errors import BackendError, InputError
from . import render
from .common import BackendOpt, JsonOpt, LogDirOpt, StateDirOpt, handle_errors, write_output

AgentSocketOpt = Annotated[
    Optional[str],
    typer.Option("--agent", "-a", help="The agent's socket (default: $TSMR_AGENT_SOCKET, else /run/tsmr/agent.sock).",
                 show_default=False),
]

agent_client_app = typer.Typer(
    help="Ask the tsmr agent for its registers, a log, or evidence (appending is 'tsmr record').",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add ``agent``, ``record`` and ``agent-client`` to the ``tsmr`` application."""
    app.command("agent")(handle_errors(agent_cmd))
    app.command("record")(handle_errors(record_cmd))
    app.add_typer(agent_client_app, name="agent-client")


def _client(agent: str | None):
    from ..agent.client import AgentClient

    return AgentClient(agent)


def agent_cmd(
    socket_path: Annotated[Optional[str], typer.Option(
        "--socket", "-s", help="Where to listen (default: the configuration's, else $TSMR_AGENT_SOCKET, else /run/tsmr/agent.sock).",
        show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="Configuration file (JSON): registers, access rules, socket mode.",
                                                  show_default=False)] = None,
    registers: Annotated[Optional[list[str]], typer.Option(
        "--register", "-r", help="A register the agent owns (repeatable; replaces the configuration's list).",
        show_default=False)] = None,
    backend: BackendOpt = None,
    log_dir: LogDirOpt = None,
    state_dir: StateDirOpt = None,
) -> None:
    """Run the guest agent in the foreground: the single writer of the registers' runtime logs.

    Local programs append records, read logs and get evidence over HTTP on a
    Unix socket; the kernel says who they are (SO_PEERCRED) and the
    configuration's rules say what they may do.  Stops on SIGTERM or SIGINT.
    """
    from ..agent.config import AgentConfig, check_rules, load_config
    from ..agent.server import serve

    cfg = load_config(config) if config else AgentConfig()
    cfg = cfg.with_overrides(socket=socket_path, backend=backend, log_dir=log_dir, state_dir=state_dir,
                             registers=tuple(dict.fromkeys(registers)) if registers else None)
    check_rules(cfg)
    if not cfg.rules:
        render.warning("no access rules are configured: every request but /v1/health will be refused")
    code = serve(cfg, ready=lambda path: render.line(f"tsmr agent: serving {', '.join(cfg.registers)} on {path}"))
    if code:  # stopped by a failure of its own, which it has logged
        raise BackendError(f"the agent stopped with status {code}", backend="agent")


def record_cmd(
    register: Annotated[str, typer.Argument(help="Register, e.g. rtmr3.")],
    records: Annotated[Optional[list[str]], typer.Argument(
        help="Records '<domain> <operation>[ <content>]', one per argument; '-' reads one per line from standard input.",
        show_default=False)] = None,
    domain: Annotated[Optional[str], typer.Option("--domain", help="Build one record from a domain ...", show_default=False)] = None,
    operation: Annotated[Optional[str], typer.Option("--operation", help="... an operation ...", show_default=False)] = None,
    content: Annotated[Optional[str], typer.Option(
        "--content", help="... and JSON content, which the agent writes as RFC 8785 canonical JSON.", show_default=False)] = None,
    content_text: Annotated[Optional[str], typer.Option(
        "--content-text", help="... or content used as it is.", show_default=False)] = None,
    agent: AgentSocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Append records to a register's runtime log through the tsmr agent (one group commit).

    Give whole records, e.g. 'example.com/app start {"v":1}', or build one with --domain, --operation and --content.

    The agent checks that the calling user may write each record's domain; if one record is refused, none is written.
    """
    from .log_cmd import _read_stdin_records

    client = _client(agent)
    built = domain is not None or operation is not None or content is not None or content_text is not None
    if built:
        if records:
            raise InputError("give records as arguments or build one with --domain/--operation, not both")
        if domain is None or operation is None:
            raise InputError("--domain and --operation are both needed to build a record")
        if content is not None and content_text is not None:
            raise InputError("--content and --content-text exclude each other")
        kwargs: dict[str, Any] = {"domain": domain, "operation": operation}
        if content is not None:
            try:
                kwargs["content"] = json.loads(content)
            except ValueError as exc:
                raise InputError(f"--content is not JSON ({exc}); use --content-text for plain text") from None
        elif content_text is not None:
            kwargs["content"] = content_text
        result = client.append(register, **kwargs)
    else:
        items: list[str] = []
        for r in records or []:
            items.extend(_read_stdin_records() if r == "-" else [r])
        if not items:
            raise InputError("nothing to record: give records, '-', or --domain and --operation")
        result = client.append(register, items)
    if as_json:
        render.print_json(result)
        return
    seq = result.get("seq") or []
    if result.get("gap"):
        render.warning(f"{register} had changed without being logged: the agent wrote a sync record first")
    span = f"line {seq[0]}" if len(seq) == 1 else f"lines {seq[0]}-{seq[-1]}" if seq else "no lines"
    render.line(f"recorded {len(seq)} record(s) in the log of {register} ({span})")
    for bank, value in (result.get("banks") or {}).items():
        render.line(f"{register} {bank}:{value}")


@agent_client_app.command("health")
@handle_errors
def health_cmd(agent: AgentSocketOpt = None, as_json: JsonOpt = False) -> None:
    """Check that the agent answers."""
    result = _client(agent).health()
    if as_json:
        render.print_json(result)
    else:
        render.line(f"agent: {result.get('status')}")


@agent_client_app.command("registers")
@handle_errors
def registers_cmd(agent: AgentSocketOpt = None, as_json: JsonOpt = False) -> None:
    """The registers the agent owns, and their values."""
    result = _client(agent).registers()
    if as_json:
        render.print_json(result)
        return
    table = Table(title=f"agent registers ({result.get('provider')})", title_justify="left")
    table.add_column("register", style="bold")
    table.add_column("bank")
    table.add_column("value", overflow="fold")
    for reg in result.get("registers", []):
        for i, (bank, value) in enumerate(reg.get("banks", {}).items()):
            table.add_row(reg["name"] if i == 0 else "", bank, value)
    render.out.print(table)


@agent_client_app.command("log")
@handle_errors
def log_cmd(
    register: Annotated[str, typer.Argument(help="Register, e.g. rtmr3.")],
    agent: AgentSocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a register's runtime log, as the agent holds it."""
    client = _client(agent)
    if as_json:
        render.print_json(client.request("GET", f"/v1/logs/{quote(register, safe='')}"))
    else:
        text = client.read_log(register)
        if sys.stdout.isatty():
            render.document(text)  # for a person: hidden characters shown escaped
        else:
            write_output(None, text.encode())  # for a file or a pipe: the log's bytes, to replay as they are


@agent_client_app.command("evidence")
@handle_errors
def evidence_cmd(
    nonce: Annotated[str, typer.Option("--nonce", help="The relying party's nonce, hex (at most 64 bytes).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the bundle (JSON).")],
    agent: AgentSocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Get an evidence bundle (evidence over the nonce, and the logs) from the agent; check it with 'tsmr verify'."""
    doc = _client(agent).evidence(nonce)
    write_output(output, (json.dumps(doc, indent=1) + "\n").encode())
    logs = [lg.get("register") or lg.get("name") for lg in doc.get("logs", [])]
    if as_json:
        render.print_json({"output": output, "kind": doc.get("evidence", {}).get("kind"), "logs": logs})
    else:
        render.line(f"wrote {output}: {doc.get('evidence', {}).get('kind')} evidence and {len(logs)} log(s)")


__all__ = ["register", "agent_cmd", "record_cmd", "agent_client_app"]
