"""`greenloop-mcp`: the MCP server over stdio (default) or streamable HTTP (`serve-http`).

    greenloop-mcp --config greenloop.toml --project NAME [--token-env GITHUB_TOKEN]      (a person, read-only)
    greenloop-mcp --config greenloop.toml --project NAME [--mode read-only|agent] [--attempt ID --job JOB]
    greenloop-mcp serve-http --config greenloop.toml --host 127.0.0.1 --port 8765 [--mode agent] [--project NAME]
        [--audit-db URL] [--runs-db URL]

stdio sessions are bound to the project (and attempt/job) on the command line. A person runs it read-only
with their own GitHub token (from `$GITHUB_TOKEN`, or the variable `--token-env` names): no App key, and the
forge shows them what they may see. The App key path (`[forge] private_key_path`) is for service use.
HTTP sessions are bound to the project, attempt, job and mode of their bearer token (see
`mcp_server.auth`); the HMAC secret that verifies tokens is read from `$GREENLOOP_MCP_TOKEN_SECRET`, never
from the command line. The mode given here is the most any session may get. The sidecar also serves the
reconciler's operator routes (`mcp_server/operator_http.py`), which are not MCP tools.
Logs go to stderr as JSON lines; stdout carries only MCP messages.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from infra.jsonlog import log_event
from mcp_server.deadline import DEFAULT_CALL_DEADLINE_SECONDS
from policy.branches import fix_branch_name
from policy.config import GreenloopConfig
from policy.errors import ConfigError

# The MCP SDK, SQLAlchemy and the forge client load in seconds: only a command that serves imports them,
# so `--help` and configuration errors answer at once.
if TYPE_CHECKING:
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import BaseRoute

    from mcp_server.audit import AuditSink, ClosableAuditSink
    from mcp_server.reported_runs import ClosableReportedRunSource, ReportedRunSource
    from mcp_server.session import BindingFactory, Mode, SessionGrant

__all__ = [
    "PERSONAL_TOKEN_ENV",
    "TOKEN_SECRET_ENV",
    "build_parser",
    "http_app",
    "main",
    "personal_token_env",
    "sidecar_app",
    "transport_security",
]

logger = logging.getLogger("greenloop.mcp.cli")
TOKEN_SECRET_ENV = "GREENLOOP_MCP_TOKEN_SECRET"  # the same name as mcp_server.auth.TOKEN_SECRET_ENV
PERSONAL_TOKEN_ENV = "GITHUB_TOKEN"  # where a person's own token is read from by default
_MODES = ("read-only", "agent")  # mcp_server.session.Mode values
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="path of greenloop.toml (default: $GREENLOOP_CONFIG or ./greenloop.toml)"
    )
    parser.add_argument(
        "--mode",
        choices=_MODES,
        default=_MODES[0],
        help="read-only: the five read tools (default); agent: all ten",
    )
    parser.add_argument(
        "--audit-db", default=None, help="also write the audit trail to this database (SQLAlchemy async URL)"
    )
    parser.add_argument(
        "--runs-db",
        default=None,
        help="read the runs reported from outside Actions (cron, ...) and their logs from this database, so "
        "get_job_logs serves them (default: the --audit-db URL, the reconciler's store)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parsers of `greenloop-mcp` (stdio) and `greenloop-mcp serve-http`."""
    stdio = argparse.ArgumentParser(
        prog="greenloop-mcp",
        description="greenloop's MCP server over stdio, bound to one project. "
        "Use `greenloop-mcp serve-http --help` for the HTTP transport.",
    )
    _common(stdio)
    stdio.add_argument("--project", required=True, help="the project (from greenloop.toml) to bind to")
    stdio.add_argument("--attempt", default=None, help="attempt id (agent mode)")
    stdio.add_argument("--job", default=None, help="the failing job the attempt is about (agent mode)")
    stdio.add_argument(
        "--token-env",
        default=None,
        metavar="NAME",
        help=f"read-only: act with the personal GitHub token in ${{NAME}} instead of the GitHub App (default "
        f"${PERSONAL_TOKEN_ENV} when [forge] has no private_key_path); no App key is read",
    )

    http = argparse.ArgumentParser(
        prog="greenloop-mcp serve-http",
        description="greenloop's MCP server over streamable HTTP; sessions are bound by bearer tokens. "
        f"The token secret is read from ${TOKEN_SECRET_ENV}.",
    )
    _common(http)
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, required=True)
    http.add_argument(
        "--project", action="append", default=None, help="accept tokens for this project only (repeatable)"
    )
    http.add_argument("--path", default="/mcp", help="the MCP endpoint path (default /mcp)")
    return stdio, http


def transport_security(host: str, port: int) -> TransportSecuritySettings:
    """DNS-rebinding protection: only these Host and Origin headers are accepted."""
    from mcp.server.transport_security import TransportSecuritySettings

    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"{host}:{port}"}
    if host == "::1":
        hosts.add(f"[::1]:{port}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted(hosts),
        allowed_origins=sorted(f"http://{h}" for h in hosts),
    )


def http_app(
    binding_factory: BindingFactory,
    *,
    mode: Mode,
    secret: str | bytes,
    projects: Sequence[str],
    host: str,
    port: int,
    path: str = "/mcp",
    idle_seconds: float = 3600.0,
    call_deadline_seconds: float = DEFAULT_CALL_DEADLINE_SECONDS,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The streamable-HTTP ASGI app: bearer tokens required (401 otherwise), Host/Origin headers pinned.

    `extra_routes` (the operator routes, `mcp_server/operator_http.py`) are served next to the MCP endpoint;
    they check their own bearer token and are not MCP tools.

    Raises:
        ValueError: the secret is too short or the port is out of range.
    """
    from mcp.server.auth.settings import AuthSettings

    from mcp_server.auth import JwtTokenVerifier
    from mcp_server.server import build_server

    if not 1 <= port <= 65535:
        raise ValueError(f"Invalid port: {port!r}.")
    verifier = JwtTokenVerifier(secret, projects=projects)
    server = build_server(
        binding_factory,
        mode=mode,
        token_verifier=verifier,
        auth=AuthSettings(issuer_url=f"http://127.0.0.1:{port}", resource_server_url=None),
        idle_seconds=idle_seconds,
        call_deadline_seconds=call_deadline_seconds,
    )
    app = server.streamable_http_app(
        streamable_http_path=path, transport_security=transport_security(host, port), host=host
    )
    app.router.routes[:0] = list(extra_routes)
    return app


def _configure_logging(level: str) -> None:
    from infra.jsonlog import configure_json_logging

    configure_json_logging(getattr(logging, level))


def _load(path: str | None) -> GreenloopConfig:
    from infra.settings import load_config

    return load_config(path)


# Builds the database audit sink for `--audit-db URL` (`reconciler.store.audit.StoreAuditSink`, passed in by
# the `greenloop-mcp` entry point `reconciler.mcp_cli`: this package never touches SQL itself).
DatabaseSinkFactory = Callable[[str], "ClosableAuditSink"]
# Builds the reader of reported runs for `--runs-db URL` (`reconciler.store.runs.DatabaseReportedRuns`, passed
# in by the same entry point): the sidecar's `get_job_logs` serves a posted log exactly as in-process.
ReportedRunsFactory = Callable[[str], "ClosableReportedRunSource"]


def _runs_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.runs_db or args.audit_db
    return url or None


async def _reported_runs(
    stack: AsyncExitStack, url: str | None, reported_runs: ReportedRunsFactory | None
) -> ReportedRunSource | None:
    if not url or reported_runs is None:
        return None
    source = reported_runs(url)
    stack.push_async_callback(source.aclose)
    return source


async def _audit_sink(stack: AsyncExitStack, url: str | None, database_sink: DatabaseSinkFactory | None) -> AuditSink:
    from mcp_server.audit import FanOutAuditSink, JsonLogAuditSink

    sinks: list[AuditSink] = [JsonLogAuditSink()]
    if url:
        if database_sink is None:  # pragma: no cover - main() refuses this combination first
            raise ConfigError("--audit-db: no database sink")
        sql = database_sink(url)
        stack.push_async_callback(sql.aclose)
        sinks.append(sql)
    return FanOutAuditSink(sinks)


def personal_token_env(args: argparse.Namespace, config: GreenloopConfig) -> str | None:
    """The variable holding the person's token for this stdio session, or None for the App (service use).

    Raises:
        ConfigError: a personal token asked for in agent mode, or its variable is empty.
    """
    name: str | None = args.token_env
    if name is None and not config.forge.private_key_path:
        name = PERSONAL_TOKEN_ENV
    if name is None:
        return None
    if args.mode != "read-only":
        raise ConfigError("--token-env: a personal token serves read-only sessions only (writes are the App's)")
    if not os.environ.get(name, "").strip():
        raise ConfigError(f"set ${name} to your GitHub token (a fine-grained, read-only token is enough)")
    return name


async def _run_stdio(
    args: argparse.Namespace,
    config: GreenloopConfig,
    grant: SessionGrant,
    database_sink: DatabaseSinkFactory | None,
    reported_runs: ReportedRunsFactory | None,
) -> None:
    from mcp_server.github_app import StaticToken
    from mcp_server.server import build_server
    from mcp_server.session import config_binding_factory
    from mcp_server.stdio import run_stdio

    async with AsyncExitStack() as stack:
        audit = await _audit_sink(stack, args.audit_db, database_sink)
        token_env = personal_token_env(args, config)
        personal = StaticToken(os.environ[token_env]) if token_env else None
        reported = await _reported_runs(stack, _runs_url(args), reported_runs)
        factory = config_binding_factory(config, audit=audit, personal_token=personal, reported=reported)
        server = build_server(factory, mode=grant.mode, grant=grant)
        await run_stdio(server)


async def sidecar_app(
    config: GreenloopConfig,
    stack: AsyncExitStack,
    *,
    audit: AuditSink,
    mode: Mode,
    secret: str,
    projects: Sequence[str],
    host: str,
    port: int,
    path: str = "/mcp",
    reported: ReportedRunSource | None = None,
) -> Starlette:
    """The sidecar's ASGI app: MCP over streamable HTTP plus the reconciler's operator routes (those only
    with a GitHub App configured).

    The one process that reads the App key: one App and one forge client (opened in `stack`) serve every
    session and the operator routes, each use with its own scoped token.
    """
    from mcp_server.forge import ForgeClient
    from mcp_server.github_app import GitHubApp, ObserverTokens
    from mcp_server.operator import OperatorActions
    from mcp_server.operator_http import operator_routes
    from mcp_server.scopes import OBSERVER_PERMISSIONS, observer_repositories
    from mcp_server.session import config_binding_factory

    settings = config.forge
    routes: Sequence[BaseRoute] = ()
    if settings.app_id and settings.installation_id and settings.private_key_path:
        github = await stack.enter_async_context(GitHubApp.from_settings(config.forge))
        forge = await stack.enter_async_context(ForgeClient(config.forge, github))
        watched = [p for p in config.projects if p.name in projects]
        observer = ObserverTokens(
            github, repositories=observer_repositories([p.repo for p in watched]), permissions=OBSERVER_PERMISSIONS
        )
        actions = OperatorActions(config, app=github, forge=forge, audit=audit, client="reconciler", projects=projects)
        factory = config_binding_factory(config, audit=audit, app=github, forge=forge, reported=reported)
        routes = operator_routes(actions, observer, secret=secret)
    else:
        # No App here: sessions still open (their tools then say why the forge is unreachable), and there are
        # no operator routes, so a reconciler pointed at this server gets a 404 rather than a key-less token.
        log_event(logger, "mcp_http_no_github_app", level=logging.WARNING)
        factory = config_binding_factory(config, audit=audit, reported=reported)
    return http_app(
        factory, mode=mode, secret=secret, projects=projects, host=host, port=port, path=path, extra_routes=routes
    )


async def _run_http(
    args: argparse.Namespace,
    config: GreenloopConfig,
    secret: str,
    database_sink: DatabaseSinkFactory | None,
    reported_runs: ReportedRunsFactory | None,
) -> None:
    import uvicorn

    from mcp_server.session import Mode

    projects = args.project or [p.name for p in config.projects]
    async with AsyncExitStack() as stack:
        audit = await _audit_sink(stack, args.audit_db, database_sink)
        reported = await _reported_runs(stack, _runs_url(args), reported_runs)
        app = await sidecar_app(
            config,
            stack,
            audit=audit,
            reported=reported,
            mode=Mode(args.mode),
            secret=secret,
            projects=projects,
            host=args.host,
            port=args.port,
            path=args.path,
        )
        server = uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
        )
        # Bound here, so the address is announced only once it is really listened on.
        sock = socket.create_server((args.host, args.port), family=_family(args.host))
        url = f"http://{_url_host(args.host)}:{args.port}{args.path}"
        log_event(logger, "mcp_http_listening", url=url, mode=args.mode, projects=projects)
        print(f"greenloop-mcp: serving MCP over streamable HTTP at {url}", file=sys.stderr, flush=True)
        await server.serve(sockets=[sock])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check(args: argparse.Namespace, config: GreenloopConfig) -> None:
    names = {p.name for p in config.projects}
    project: str | list[str] | None = args.project
    wanted = project if isinstance(project, list) else [project] if project else []
    for name in wanted:
        if name not in names:
            raise ConfigError(f"unknown project {name!r} (configured: {', '.join(sorted(names)) or 'none'})")
    if getattr(args, "host", None) is not None and args.host not in _LOOPBACK:
        log_event(logger, "mcp_http_not_loopback", level=logging.WARNING, host=args.host)


def _check_binding(args: argparse.Namespace) -> None:
    """What `SessionGrant` checks, without importing the server: agent mode needs a valid attempt and a job."""
    if args.mode == "agent" and (not args.attempt or not args.job):
        raise ConfigError("agent mode needs --attempt and --job")
    if args.attempt is not None:
        try:
            fix_branch_name(args.job or "job", args.attempt)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def main(
    argv: Sequence[str] | None = None,
    *,
    database_sink: DatabaseSinkFactory | None = None,
    reported_runs: ReportedRunsFactory | None = None,
) -> int:
    """Run `greenloop-mcp`; returns the process exit code (2 for a configuration problem).

    `database_sink` builds the sink of `--audit-db` (without one, `--audit-db` is a configuration error);
    `reported_runs` the reader of `--runs-db` (without one, `--runs-db` is a configuration error).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    stdio_parser, http_parser = build_parser()
    over_http = bool(arguments) and arguments[0] == "serve-http"
    args = http_parser.parse_args(arguments[1:]) if over_http else stdio_parser.parse_args(arguments)
    _configure_logging(args.log_level)
    try:
        config = _load(args.config)
        _check(args, config)
        if args.audit_db and database_sink is None:
            raise ConfigError("--audit-db: this entry point has no database sink (run the greenloop-mcp command)")
        if args.runs_db and reported_runs is None:
            raise ConfigError("--runs-db: this entry point has no store reader (run the greenloop-mcp command)")
        if over_http:
            secret = os.environ.get(TOKEN_SECRET_ENV, "")
            if not secret:
                raise ConfigError(f"serve-http: set ${TOKEN_SECRET_ENV} to the token secret shared with the reconciler")
            if len(secret.encode()) < 32:
                raise ConfigError(f"serve-http: ${TOKEN_SECRET_ENV} must be at least 32 bytes long")
            if not 1 <= args.port <= 65535:
                raise ConfigError(f"serve-http: invalid port: {args.port!r}")
        else:
            _check_binding(args)
            personal_token_env(args, config)
    except (ConfigError, ValueError) as exc:
        print(f"greenloop-mcp: {exc}", file=sys.stderr)
        return 2
    import anyio

    try:
        if over_http:
            anyio.run(_run_http, args, config, secret, database_sink, reported_runs)
        else:
            from mcp_server.session import Mode, SessionGrant

            grant = SessionGrant(
                project=args.project, mode=Mode(args.mode), attempt_id=args.attempt, job=args.job, client="stdio"
            )
            anyio.run(_run_stdio, args, config, grant, database_sink, reported_runs)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
