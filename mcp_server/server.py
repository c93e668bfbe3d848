"""The greenloop MCP server: exactly ten least-privilege tools over one bound project.

No tool takes a repository: every session is bound to one project (and, for the agent, one attempt and one
failing job) by its `SessionGrant`. `read-only` servers register the five read tools only; `agent` servers
all ten. Every call, whatever its outcome, is audited; everything shown to the model is redacted with the
known secret patterns and the live installation tokens.

This module builds the `MCPServer` and registers the tools; the tools are in `mcp_server.tools_read` and
`mcp_server.tools_write`, what wraps every call (session, argument checks, deadline, audit, the last
redaction gate) in `mcp_server.middleware`, the per-grant session cache in `mcp_server.session_cache`.
"""

from __future__ import annotations

import inspect
from typing import Any

from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from mcp_server.deadline import DEFAULT_CALL_DEADLINE_SECONDS
from mcp_server.middleware import SessionMiddleware, ToolSpec
from mcp_server.models import READ_TOOLS, TOOL_NAMES, WRITE_TOOLS
from mcp_server.session import BindingFactory, Mode, SessionGrant
from mcp_server.session_cache import SessionCache
from mcp_server.tools_read import READ_TOOL_SPECS
from mcp_server.tools_write import WRITE_TOOL_SPECS

__all__ = ["READ_TOOLS", "TOOL_NAMES", "WRITE_TOOLS", "build_server"]

_TOOLS: tuple[ToolSpec, ...] = READ_TOOL_SPECS + WRITE_TOOL_SPECS  # in mcp_server.models.ToolName's order


def _package_version() -> str:
    """greenloop's installed version, announced as `serverInfo.version` at initialize."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("greenloop")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout that was never installed
        return "0+unknown"


def build_server(
    binding_factory: BindingFactory,
    *,
    mode: Mode,
    grant: SessionGrant | None = None,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
    name: str = "greenloop",
    idle_seconds: float = 3600.0,
    call_deadline_seconds: float = DEFAULT_CALL_DEADLINE_SECONDS,
) -> MCPServer[Any]:
    """The greenloop MCP server: the five read tools (`read-only`) or all ten (`agent`).

    Each request's session grant comes from its bearer token (HTTP, with `token_verifier` and `auth`) or
    else from `grant` (stdio and in-memory). A grant asking for more than `mode` is cut down to read-only.
    `binding_factory` turns a grant into the binding the tools act on; bindings are cached per grant and
    closed after `idle_seconds` without a call, or when the server's lifespan ends. A tool call still running
    after `call_deadline_seconds` is stopped and refused as too long (`mcp_server.deadline`).
    """
    specs = [spec for spec in _TOOLS if mode is Mode.AGENT or not spec.write]
    parameters = {spec.name: spec.parameters for spec in specs}
    sessions = SessionCache(
        binding_factory,
        mode=Mode(mode),
        grant=grant,
        parameters=parameters,
        idle_seconds=idle_seconds,
        deadline_seconds=call_deadline_seconds,
    )
    server: MCPServer[Any] = MCPServer(
        name,
        instructions=(
            "greenloop: tools over one bound project. Read with read_repo_file, list_repo_files, "
            "get_project_info, list_job_runs and get_job_logs. Agent sessions fix a failing job with "
            "create_branch, write_repo_file, commit_and_push and create_pull_request."
        ),
        token_verifier=token_verifier,
        auth=auth,
        version=_package_version(),
        lifespan=sessions.lifespan,
        log_level="WARNING",
        warn_on_duplicate_tools=True,
    )
    for spec in specs:  # Security: a read-only server does not even list the write tools.
        server.add_tool(
            spec.fn,
            description=inspect.cleandoc(spec.fn.__doc__ or ""),
            annotations=spec.annotations,
            structured_output=True,
        )
    server.middleware.append(SessionMiddleware(sessions))
    return server
