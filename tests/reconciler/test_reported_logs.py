"""Jobs outside Actions: a run posted to `POST /runs` with its log is served by the MCP read tools.

The run goes through the real API into the real store; an in-process MCP server on the local forge reads it
back through `StoreReportedRuns` (the reconciler's `ReportedRunSource`), beside the forge's Actions runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from mcp import Client
from test_api import AUTH, SHA, TOKEN, api_client

from agent.types import AttemptTask
from fixtures.forge import Forge, run_forge
from mcp_server.audit import JsonLogAuditSink
from mcp_server.reported_runs import ReportedRunSource
from mcp_server.server import build_server
from mcp_server.session import Mode, SessionGrant, config_binding_factory
from policy.config import GreenloopConfig, ProjectConfig, ServerSettings, load_config_text
from reconciler.api import build_api
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.runtime import open_runtime, scripted_backends
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt, McpToolCall
from reconciler.store.runs import StoreReportedRuns

pytestmark = pytest.mark.anyio

SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
LOG = "\n".join(
    [f"[etl] step {i}: ok" for i in range(1, 400)]
    + [
        f"[etl] connecting with token {SECRET}",
        "Traceback (most recent call last):",
        '  File "etl/transform.py", line 12, in run',
        "KeyError: 'customer_id'",
        "[etl] exit status 1",
    ]
)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with run_forge(tmp_path_factory.mktemp("forge"), projects=["bug-lib"]) as f:
        await f.wait_idle()
        yield f


def _config(forge: Forge, tmp: Path) -> GreenloopConfig:
    text = f"""
[server]
workspace_dir = "{tmp / "ws"}"
[forge]
api_url = "{forge.api_url}"
git_url = "{forge.git_url}"
app_id = "{forge.app_id}"
installation_id = "{forge.installation_id}"
private_key_path = "{forge.private_key_path}"
[[project]]
name = "bug-lib"
repo = "acme/bug-lib"
[[project]]
name = "other"
repo = "acme/other"
"""
    return load_config_text(text)


def _context(forge: Forge, tmp: Path, sessions: SessionFactory) -> tuple[GreenloopConfig, ReconcilerContext]:
    config = _config(forge, tmp)
    return config, ReconcilerContext(config=config, sessions=sessions, forge=None, dispatcher=None, metrics=Metrics())


@asynccontextmanager
async def mcp(config: GreenloopConfig, reported: ReportedRunSource | None) -> AsyncIterator[Client]:
    factory = config_binding_factory(config, audit=JsonLogAuditSink(), reported=reported)
    grant = SessionGrant(project="bug-lib", mode=Mode.READ_ONLY)
    async with Client(build_server(factory, mode=Mode.READ_ONLY, grant=grant)) as client:
        yield client


async def _tool(client: Client, name: str, args: dict[str, Any]) -> tuple[bool, Any]:
    result = await client.call_tool(name, args)
    text = " ".join(getattr(b, "text", "") for b in result.content)
    return result.is_error, (text if result.is_error else result.structured_content)


async def _report(ctx: ReconcilerContext, **run: Any) -> None:
    body = {"project": "bug-lib", "job": "nightly-etl", "status": "completed", "conclusion": "failure"}
    body |= {"head_sha": SHA, **run}
    async with api_client(ctx, enqueue=lambda _key: None) as http:
        r = await http.post("/runs", json=body)
    assert r.status_code in (200, 201), r.text


async def test_a_reported_runs_log_is_served_like_an_actions_log(
    forge: Forge, tmp_path: Path, sessions: SessionFactory
) -> None:
    config, ctx = _context(forge, tmp_path, sessions)
    await _report(ctx, run_id="cron-2026-12-03T02:00", log_text=LOG)
    await _report(ctx, run_id="cron-x", project="other", log_text="KeyError in another project")
    async with mcp(config, StoreReportedRuns(sessions)) as client:
        error, runs = await _tool(client, "list_job_runs", {"limit": 50})
        assert not error, runs
        reported = [r for r in runs["runs"] if r["source"] == "reported"]
        assert [(r["run_id"], r["job"], r["conclusion"]) for r in reported] == [
            ("cron-2026-12-03T02:00", "nightly-etl", "failure")
        ]
        assert any(r["source"] == "actions" for r in runs["runs"])  # the Actions runs are still listed

        error, logs = await _tool(client, "get_job_logs", {"run_id": "cron-2026-12-03T02:00", "budget_tokens": 400})
        assert not error, logs
        assert logs["run_id"] == "cron-2026-12-03T02:00"
        assert logs["job"] == "nightly-etl"
        assert "KeyError: 'customer_id'" in logs["excerpt"]
        assert SECRET not in logs["excerpt"]
        assert "step 200: ok" not in logs["excerpt"]  # an excerpt, not the whole log

        error, page = await _tool(client, "get_job_logs", {"run_id": "cron-2026-12-03T02:00", "start_line": 1})
        assert not error, page
        assert "step 1: ok" in page["excerpt"]
        assert page["next_start_line"] is not None  # pages, like an Actions log

        # Another project's reported run is not reachable from this session.
        error, text = await _tool(client, "get_job_logs", {"run_id": "cron-x"})
        assert error
        assert "Not found" in text


async def test_a_numeric_reported_run_id_is_read_from_the_store(
    forge: Forge, tmp_path: Path, sessions: SessionFactory
) -> None:
    config, ctx = _context(forge, tmp_path, sessions)
    await _report(ctx, run_id="900001", log_text=LOG)
    async with mcp(config, StoreReportedRuns(sessions)) as client:
        for run_id in ("900001", 900001):
            error, logs = await _tool(client, "get_job_logs", {"run_id": run_id, "job": "nightly-etl"})
            assert not error, logs
            assert logs["run_id"] == "900001"
            assert "KeyError: 'customer_id'" in logs["excerpt"]


async def test_without_a_reported_source_only_actions_runs_are_served(
    forge: Forge, tmp_path: Path, sessions: SessionFactory
) -> None:
    config, ctx = _context(forge, tmp_path, sessions)
    await _report(ctx, run_id="cron-1", log_text=LOG)
    async with mcp(config, None) as client:
        error, text = await _tool(client, "get_job_logs", {"run_id": "cron-1"})
        assert error
        assert "Not found" in text
        error, text = await _tool(client, "get_job_logs", {"run_id": "../../etc/passwd"})
        assert error
        assert "run_id" in text


async def test_a_run_reported_without_a_log_says_so(forge: Forge, tmp_path: Path, sessions: SessionFactory) -> None:
    config, ctx = _context(forge, tmp_path, sessions)
    await _report(ctx, run_id="cron-nolog")
    async with mcp(config, StoreReportedRuns(sessions)) as client:
        error, text = await _tool(client, "get_job_logs", {"run_id": "cron-nolog"})
    assert error
    assert "without a log" in text


def test_the_failing_run_id_is_a_string_and_numbers_are_accepted() -> None:
    task = AttemptTask(project="p", job="j", failing_run_id="cron-2026-12-03T02:00", head_sha="s")
    assert task.failing_run_id == "cron-2026-12-03T02:00"
    assert AttemptTask(project="p", job="j", failing_run_id=42, head_sha="s").failing_run_id == "42"
    assert dataclasses.is_dataclass(ReconcilerContext)


async def test_a_reported_failure_wakes_the_loop_and_the_agent_reads_its_posted_log(
    forge: Forge, tmp_path: Path
) -> None:
    """End to end: POST /runs with a log -> the loop wakes -> an attempt on run 'cron-…' -> get_job_logs."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bug-lib.json").write_text(
        json.dumps(
            {
                "project": "bug-lib",
                "steps": [{"tool": "get_job_logs", "input": {"run_id": "$FAILING_RUN_ID"}}],
                "final_message": "Read the log; stopping here.",
            }
        )
    )
    config = GreenloopConfig(
        server=ServerSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", workspace_dir=str(tmp_path / "ws")
        ),
        forge=forge.forge_settings(),
        projects=(ProjectConfig(name="bug-lib", repo="acme/bug-lib", jobs=("nightly-etl",)),),
    )
    async with open_runtime(config, backend_for=scripted_backends(str(scripts))) as ctx:
        app = build_api(ctx, api_token=TOKEN)  # the default wake-up: the API's own runner, started on first use
        transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx2.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as http:
            body = {"project": "bug-lib", "job": "nightly-etl", "run_id": "cron-2026-12-03T02:00"}
            body |= {"status": "completed", "conclusion": "failure", "head_sha": SHA, "log_text": LOG}
            r = await http.post("/runs", json=body)
            assert r.status_code == 201, r.text
        await asyncio.wait_for(app.state.runner.wait_idle(), 60)
        await app.state.runner.aclose()
        assert ctx.dispatcher is not None
        await ctx.dispatcher.wait_idle(60)
        async with ctx.sessions() as session:
            attempt = (await session.scalars(sa.select(Attempt))).one()
            calls = (await session.scalars(sa.select(McpToolCall))).all()
    assert attempt.run_id == "cron-2026-12-03T02:00"
    assert [(c.tool, c.outcome) for c in calls] == [("get_job_logs", "ok")]
    assert attempt.transcript is not None
    assert "KeyError: 'customer_id'" in attempt.transcript
    assert SECRET not in attempt.transcript
