"""One wiring: the process's one GitHub App and forge client serve the pass and every in-process MCP session."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from e2e_support import e2e_config, forge_for, sqlite_url

from mcp_server.audit import JsonLogAuditSink
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from mcp_server.in_process import open_in_process_session
from mcp_server.session import config_binding_factory
from policy.config import GreenloopConfig

pytestmark = pytest.mark.anyio


async def test_in_process_sessions_use_the_forge_client_they_are_given(tmp_path: Path) -> None:
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        config = e2e_config(
            forge, ["bug-lib"], database_url=sqlite_url(tmp_path / "g.db"), workspace_dir=tmp_path / "ws"
        )
        async with AsyncExitStack() as stack:
            app = await stack.enter_async_context(GitHubApp.from_settings(config.forge))
            shared = await stack.enter_async_context(ForgeClient(config.forge, app))
            opener = open_in_process_session(config, app=app, forge=shared)
            for attempt in ("wire0001", "wire0002"):
                before = shared.stats.requests
                async with opener("bug-lib", "test", attempt) as session:
                    result = await session.call_tool("list_job_runs", {"job": "test", "limit": 1})
                assert not result.is_error
                # The session's forge traffic went through the one shared client (and its rate-limit view).
                assert shared.stats.requests > before
            # The sessions ended; the shared client is the owner's to close and still works.
            assert (await shared.list_workflow_runs("acme/bug-lib", branch="main", per_page=1)).runs


def test_a_binding_factory_takes_both_shared_pieces_or_neither() -> None:
    with pytest.raises(ValueError, match="both"):
        config_binding_factory(GreenloopConfig(), audit=JsonLogAuditSink(), forge=object())  # type: ignore[arg-type]
