"""The culprit range of a job outside Actions: cron-report's `nightly` runs are only reported (`POST /runs`),
never on Actions. Its last green and first red reported runs bound the range, and the forge's compare gives
the commits between them, in `get_project_info` (the session's `ReportedRunSource`) and in the dispatcher's
first message (the store's reader)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import project_config
from test_api import api_client

from agent.prompt import build_task_message
from fixtures.forge import Forge, run_forge
from fixtures.projects.catalog import load_project
from mcp_server.culprit import RUNS_EXAMINED, culprit_range
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from mcp_server.in_process import open_in_process_session
from policy.config import GreenloopConfig, ServerSettings
from policy.redaction import redact
from reconciler.context import ReconcilerContext
from reconciler.dispatch import AgentDispatcher
from reconciler.metrics import Metrics
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt
from reconciler.store.runs import StoreReportedRuns

pytestmark = pytest.mark.anyio

PROJECT, REPO, JOB = "cron-report", "acme/cron-report", "nightly"
T0 = datetime.now(UTC) - timedelta(days=10)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with run_forge(tmp_path_factory.mktemp("forge"), projects=[PROJECT]) as f:
        await f.wait_idle()
        yield f


@pytest.fixture
async def client(forge: Forge) -> AsyncIterator[ForgeClient]:
    async with (
        GitHubApp.from_settings(forge.forge_settings()) as app,
        ForgeClient(forge.forge_settings(), app) as c,
    ):
        yield c


def _config(forge: Forge, tmp: Path) -> GreenloopConfig:
    return GreenloopConfig(
        server=ServerSettings(workspace_dir=str(tmp / "ws")),
        forge=forge.forge_settings(),
        projects=(project_config(load_project(PROJECT)),),
    )


async def _report(ctx: ReconcilerContext, run_id: str, sha: str, hours: int, **run: Any) -> None:
    body = {"project": PROJECT, "job": JOB, "run_id": run_id, "head_sha": sha, "status": "completed"}
    body |= {"created_at": (T0 + timedelta(hours=hours)).isoformat(), **run}
    async with api_client(ctx) as http:
        r = await http.post("/runs", json=body)
    assert r.status_code in (200, 201), r.text


async def _green_then_red(forge: Forge, tmp: Path, sessions: SessionFactory, client: ForgeClient) -> tuple[str, str]:
    """Reported runs of `nightly`: green at the base commit, then red at the break commit (twice), then one still
    running. Returns (base, break) SHAs."""
    brk, base = [c.sha for c in (await client.list_commits(REPO, sha="main"))[:2]]
    ctx = ReconcilerContext(
        config=_config(forge, tmp), sessions=sessions, forge=None, dispatcher=None, metrics=Metrics()
    )
    await _report(ctx, "cron-1", base, 0, conclusion="failure")  # older red: before the last green, not counted
    await _report(ctx, "cron-2", base, 24, conclusion="success")
    await _report(ctx, "cron-3", brk, 48, conclusion="failure")
    await _report(ctx, "cron-4", brk, 72, conclusion="failure")
    await _report(ctx, "cron-5", brk, 96, status="in_progress")
    return base, brk


async def test_a_reported_jobs_range_is_the_commits_between_its_green_and_red_reported_runs(
    forge: Forge, client: ForgeClient, tmp_path: Path, sessions: SessionFactory
) -> None:
    base, brk = await _green_then_red(forge, tmp_path, sessions, client)
    reported = StoreReportedRuns(sessions)
    # Not on Actions: without its reported runs there is nothing to walk.
    assert await culprit_range(client, REPO, "main", JOB, redact_text=redact) is None

    found = await culprit_range(client, REPO, "main", JOB, redact_text=redact, reported=reported, project=PROJECT)
    assert found is not None and found.note is None
    assert (found.last_green_run_id, found.last_green_sha) == ("cron-2", base)
    assert (found.first_red_run_id, found.first_red_sha) == ("cron-3", brk)
    compared = await client.compare(REPO, base, brk)
    assert [c.sha for c in found.commits] == [c.sha for c in compared.commits] and found.commits[-1].sha == brk
    assert found.total_commits == compared.total_commits >= 1
    assert {f.filename for f in found.files} == {f.filename for f in compared.files} and found.files
    assert found.files[0].filename in found.diff_summary and "@@" in found.diff_summary

    # The agent's get_project_info reads the same range through its session's reported source.
    config = _config(forge, tmp_path)
    opener = open_in_process_session(config, reported=reported)
    async with opener(PROJECT, JOB, "c0ffee000001") as session:
        result = await session.call_tool("get_project_info", {})
    assert not result.is_error, result.content
    assert result.structured_content is not None
    info = result.structured_content["culprit_range"]
    assert info["last_green_sha"] == base and info["first_red_run_id"] == "cron-3"
    assert [c["sha"] for c in info["commits"]] == [c.sha for c in found.commits]

    # The dispatcher's first message carries it too (it reads the store's reported runs).
    dispatcher = AgentDispatcher(
        config,
        sessions,
        open_session=lambda _a: opener(PROJECT, JOB, "c0ffee000002"),
        backend_for=lambda _a, _p: pytest.fail("no model runs here"),
        metrics=Metrics(),
        forge=client,
    )
    attempt = Attempt(id="c0ffee000002", project=PROJECT, job=JOB, run_id="cron-4", head_sha=brk, revisions=0)
    task = await dispatcher._task(attempt, config.projects[0])
    assert task.culprit_range is not None
    assert task.culprit_range.model_dump() == found.model_dump()
    message = build_task_message(task)
    assert f"Last green run of the job: run cron-2 at {base}" in message and f"- {brk[:12]} " in message


async def test_a_reported_job_without_a_green_run_says_so(
    forge: Forge, client: ForgeClient, tmp_path: Path, sessions: SessionFactory
) -> None:
    brk = (await client.list_commits(REPO, sha="main"))[0].sha
    ctx = ReconcilerContext(
        config=_config(forge, tmp_path), sessions=sessions, forge=None, dispatcher=None, metrics=Metrics()
    )
    await _report(ctx, "cron-1", brk, 0, conclusion="failure")
    await _report(ctx, "cron-1", brk, 1, conclusion="failure", run_attempt=2)
    found = await culprit_range(
        client, REPO, "main", JOB, redact_text=redact, reported=StoreReportedRuns(sessions), project=PROJECT
    )
    assert found is not None
    assert (found.last_green_sha, found.first_red_run_id, found.first_red_sha) == (None, "cron-1", brk)
    assert found.commits == [] and found.files == [] and found.diff_summary == ""
    assert found.note == f"no green run of 'nightly' among its last {RUNS_EXAMINED} runs: the range is unknown"

    # A green reported run after it: the job is green, nothing to explain.
    await _report(ctx, "cron-2", brk, 2, conclusion="success")
    assert (
        await culprit_range(
            client, REPO, "main", JOB, redact_text=redact, reported=StoreReportedRuns(sessions), project=PROJECT
        )
        is None
    )
