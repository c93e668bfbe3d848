"""MCP sessions on an in-process server: the reconciler's agents (without a sidecar) and `greenloop agent run`.

Each session is a real MCP client (`mcp.Client`) connected in memory to a server built for one grant in
agent mode, so the agent sees exactly the tool surface a sidecar would serve.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from policy.config import GreenloopConfig

if TYPE_CHECKING:
    from mcp import Client

    from mcp_server.audit import AuditSink
    from mcp_server.forge import ForgeClient
    from mcp_server.github_app import GitHubApp
    from mcp_server.reported_runs import ReportedRunSource

__all__ = ["InProcessOpener", "open_in_process_session"]

InProcessOpener = Callable[[str, str, str], AbstractAsyncContextManager["Client"]]
"""Opens an MCP client session for (project, job, attempt id)."""


def open_in_process_session(
    config: GreenloopConfig,
    *,
    audit: AuditSink | None = None,
    app: GitHubApp | None = None,
    forge: ForgeClient | None = None,
    reported: ReportedRunSource | None = None,
    client: str = "cli",
) -> InProcessOpener:
    """Sessions on an in-process `mcp_server` bound to (project, job, attempt) in agent mode.

    Tool calls are audited to `audit` (default: one JSON log line per call). `app` and `forge`: the
    process's shared GitHub App and forge client (see `config_binding_factory`); default, one per session.
    `reported` serves the runs reported from outside Actions (with their logs) to the read tools.
    """

    @asynccontextmanager
    async def opener(project: str, job: str, attempt_id: str) -> AsyncIterator[Client]:
        from mcp import Client

        from mcp_server.audit import JsonLogAuditSink
        from mcp_server.server import build_server
        from mcp_server.session import Mode, SessionGrant, config_binding_factory

        grant = SessionGrant(project=project, mode=Mode.AGENT, attempt_id=attempt_id, job=job, client=client)
        sink = audit if audit is not None else JsonLogAuditSink()
        factory = config_binding_factory(config, audit=sink, app=app, forge=forge, reported=reported)
        server = build_server(factory, mode=Mode.AGENT, grant=grant)
        async with Client(server) as session:
            yield session

    return opener
