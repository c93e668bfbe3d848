"""The sidecar layout: the App key lives in the MCP sidecar only; the reconciler reads with a read-only
observation token it gets from the sidecar, and writes through the sidecar's operator routes.

The sidecar is the real `greenloop-mcp serve-http` app (`mcp_server/cli.py::sidecar_app`) on a loopback port;
the reconciler is `open_runtime` with `server.mcp_url` and a `[forge]` that names no App and no key. The last
test is the single-process layout: the same operator surface, in-process.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
import uvicorn
from e2e_support import GitPusher, e2e_config, forge_for, insert_running_attempt, pulls_of, sqlite_url

from fixtures.forge import Forge
from mcp_server.audit import AuditEvent
from mcp_server.cli import sidecar_app
from mcp_server.errors import ForgeAuthError
from mcp_server.operator_http import HttpOperator, RemoteTokens
from mcp_server.session import Mode
from policy.config import ForgeSettings, GreenloopConfig
from reconciler.operations import cancel_attempt
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime

pytestmark = pytest.mark.anyio

SECRET = "sidecar-layout-secret-" + "s" * 32


class Audit:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)


@asynccontextmanager
async def sidecar(config: GreenloopConfig, audit: Audit) -> AsyncIterator[int]:
    """`greenloop-mcp serve-http`'s app on a free loopback port, in this event loop; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    async with AsyncExitStack() as stack:
        app = await sidecar_app(
            config,
            stack,
            audit=audit,
            mode=Mode.AGENT,
            secret=SECRET,
            projects=[p.name for p in config.projects],
            host="127.0.0.1",
            port=port,
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            with anyio.fail_after(20):
                while not server.started:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.02)
            yield port
        finally:
            server.should_exit = True
            with anyio.fail_after(20):
                await task
            sock.close()


def reconciler_config(forge: Forge, names: list[str], tmp: Path, port: int) -> GreenloopConfig:
    """The reconciler's config in the sidecar layout: no App id, no installation, no key path."""
    config = e2e_config(
        forge,
        names,
        database_url=sqlite_url(tmp / "g.db"),
        workspace_dir=tmp / "workspaces",
        server={"mcp_url": f"http://127.0.0.1:{port}/mcp", "mcp_token_secret": SECRET},
    )
    return config.model_copy(update={"forge": ForgeSettings(api_url=forge.api_url, git_url=forge.git_url)})


def assert_read_only_observer(forge: Forge, tokens: RemoteTokens, repos: set[str]) -> None:
    held = tokens.secrets()
    assert held, "the reconciler observed with no token"
    for token in held:
        record = forge.auth.lookup(token)
        assert record is not None and record.kind == "installation"
        assert record.repositories == frozenset(repos)
        assert set((record.permissions or {}).values()) == {"read"}, record.permissions


async def test_sidecar_layout_reruns_a_flaky_job_with_no_key_and_no_write_token(tmp_path: Path) -> None:
    audit = Audit()
    async with forge_for(tmp_path / "forge", ["flaky"]) as forge:
        sidecar_config = e2e_config(
            forge, ["flaky"], database_url=sqlite_url(tmp_path / "s.db"), workspace_dir=tmp_path / "sidecar"
        )
        async with sidecar(sidecar_config, audit) as port:
            config = reconciler_config(forge, ["flaky"], tmp_path, port)
            assert config.forge.private_key_path is None and config.forge.app_id is None
            async with open_runtime(config, backend_for=None) as ctx:
                summary = await reconcile(ctx, trigger="cli")
                assert ctx.forge is not None and isinstance(ctx.operator, HttpOperator)
                tokens = ctx.forge.token_source
                assert isinstance(tokens, RemoteTokens) and tokens.fetches == 1
                assert_read_only_observer(forge, tokens, {"acme/flaky"})
        await forge.wait_idle(60)
    assert not summary.errors, summary.errors
    assert [(r.project, r.decision) for r in summary.reruns] == [("flaky", "rerun")]
    run = forge.state.runs[int(summary.reruns[0].run_id)]
    assert run.run_attempt == 2  # the forge re-ran it: the write went through the sidecar
    rerun = [e for e in audit.events if e.tool == "operator.rerun_workflow"]
    assert [(e.project, e.client, e.outcome) for e in rerun] == [("flaky", "reconciler", "ok")]


async def test_sidecar_layout_closes_a_cancelled_attempts_pull_request(tmp_path: Path) -> None:
    audit = Audit()
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        sidecar_config = e2e_config(
            forge, ["bug-lib"], database_url=sqlite_url(tmp_path / "s.db"), workspace_dir=tmp_path / "sidecar"
        )
        async with sidecar(sidecar_config, audit) as port:
            config = reconciler_config(forge, ["bug-lib"], tmp_path, port)
            job = config.projects[0].jobs[0]
            async with open_runtime(config, backend_for=None) as ctx:
                attempt = await insert_running_attempt(
                    ctx.sessions, project="bug-lib", job=job, run_id="1", head_sha="0" * 40,
                    heartbeat_at=datetime.now(UTC),
                )  # fmt: skip
                assert attempt.branch
                pusher = GitPusher(forge, forge.admin_token, tmp_path)
                await pusher.push("acme/bug-lib", {"FIX.md": "a fix\n"}, "fix", branch=attempt.branch)
                number = await pusher.open_pull("acme/bug-lib", head=attempt.branch)
                cancelled = await cancel_attempt(ctx, attempt, reason="wrong approach")
                assert isinstance(ctx.forge.token_source if ctx.forge else None, RemoteTokens)
    assert cancelled.pr_closed == number
    (pull,) = pulls_of(forge, "acme/bug-lib")
    assert pull.number == number and pull.state == "closed" and not pull.merged
    closes = [e for e in audit.events if e.tool == "operator.close_pull_request"]
    assert [(e.attempt_id, e.client, e.outcome) for e in closes] == [(attempt.id, "reconciler", "ok")]


async def test_operator_routes_refuse_a_request_without_the_reconcilers_token(tmp_path: Path) -> None:
    import httpx2

    from mcp_server.auth import mint_token

    async with forge_for(tmp_path / "forge", ["flaky"]) as forge:
        config = e2e_config(forge, ["flaky"], database_url=sqlite_url(tmp_path / "s.db"), workspace_dir=tmp_path)
        audit = Audit()
        async with sidecar(config, audit) as port, httpx2.AsyncClient(timeout=30) as http:
            url = f"http://127.0.0.1:{port}/operator/observer-token"
            assert (await http.post(url)).status_code == 401
            # An agent's MCP session token is not the reconciler's: a different audience.
            agent = mint_token(SECRET, project="flaky", attempt_id="a1b2c3", job="test", mode=Mode.AGENT)
            assert (await http.post(url, headers={"Authorization": f"Bearer {agent}"})).status_code == 401
            wrong = HttpOperator(f"http://127.0.0.1:{port}/operator", "x" * 40)
            right = HttpOperator(f"http://127.0.0.1:{port}/operator", SECRET)
            try:
                with pytest.raises(ForgeAuthError, match="refused the operator token"):
                    await wrong.rerun_workflow("flaky", 1)
                # The reconciler's own token, for a project the sidecar does not serve: refused like a 403.
                with pytest.raises(ForgeAuthError, match="does not serve project") as refused:
                    await right.rerun_workflow("nope", 1)
                assert refused.value.status == 403
            finally:
                await wrong.aclose()
                await right.aclose()
    assert [(e.tool, e.project, e.outcome) for e in audit.events] == [("operator.rerun_workflow", "nope", "error")]


async def test_single_process_layout_closes_a_cancelled_attempts_pull_request_through_the_operator(
    tmp_path: Path,
) -> None:
    from reconciler.store.audit import tool_calls

    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        config = e2e_config(forge, ["bug-lib"], database_url=sqlite_url(tmp_path / "g.db"), workspace_dir=tmp_path)
        job = config.projects[0].jobs[0]
        async with open_runtime(config, backend_for=None) as ctx:
            assert ctx.operator is not None and not isinstance(ctx.operator, HttpOperator)
            attempt = await insert_running_attempt(
                ctx.sessions, project="bug-lib", job=job, run_id="1", head_sha="0" * 40,
                heartbeat_at=datetime.now(UTC),
            )  # fmt: skip
            assert attempt.branch
            pusher = GitPusher(forge, forge.admin_token, tmp_path)
            await pusher.push("acme/bug-lib", {"FIX.md": "a fix\n"}, "fix", branch=attempt.branch)
            number = await pusher.open_pull("acme/bug-lib", head=attempt.branch)
            cancelled = await cancel_attempt(ctx, attempt, reason="wrong approach")
            rows = await tool_calls(ctx.sessions, attempt_id=attempt.id)
            # The pass's own forge client observes read-only; the close went through the operator's scoped token.
            assert ctx.forge is not None
            observer = forge.auth.lookup(await ctx.forge.token_source.token())
            assert observer is not None and set((observer.permissions or {}).values()) == {"read"}
    assert cancelled.pr_closed == number
    (pull,) = pulls_of(forge, "acme/bug-lib")
    assert pull.state == "closed" and not pull.merged
    assert [(r.tool, r.client, r.outcome) for r in rows] == [("operator.close_pull_request", "reconciler", "ok")]
