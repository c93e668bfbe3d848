"""The whole loop on the local forge: every fixture project, scripted agents, passes until nothing changes.

One forge and one reconciler serve the module: the fixture `settled` runs passes until a pass changes
nothing, and each test reads what happened (the pass summaries, the store, the forge).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from e2e_support import (
    SCRIPTS_DIR,
    attempts_of,
    e2e_config,
    failing_job_runs,
    forge_for,
    pulls_of,
    settle,
    sqlite_url,
    transitions_of,
)

from fixtures.forge import Forge
from fixtures.projects.catalog import list_projects
from reconciler.context import ReconcilerContext
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime, scripted_backends
from reconciler.store.projects import get_project
from reconciler.summary import RunSummary

pytestmark = pytest.mark.anyio

FIXTURES = [f.name for f in list_projects()]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge and one reconciler serve every test of this module."""
    return "asyncio"


@dataclass
class Settled:
    """The forge, the reconciler and every pass summary up to the first pass that changed nothing."""

    forge: Forge
    ctx: ReconcilerContext
    summaries: list[RunSummary]


@pytest.fixture(scope="module")
async def settled(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settled]:
    work = tmp_path_factory.mktemp("loop")
    async with forge_for(work / "forge", FIXTURES) as forge:
        config = e2e_config(
            forge, FIXTURES, database_url=sqlite_url(work / "greenloop.db"), workspace_dir=work / "workspaces"
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            summaries = await settle(ctx, forge, deadline_seconds=90)
            yield Settled(forge, ctx, summaries)


def _red_notes(settled: Settled, project: str) -> list[tuple[str, str | None]]:
    return [(r.decision, r.reason) for s in settled.summaries for r in s.red if r.project == project]


async def test_unchanged_state_starts_nothing_and_costs_only_not_modified_requests(settled: Settled) -> None:
    await settled.forge.wait_idle(30)
    before = await attempts_of(settled.ctx.sessions)
    first = await reconcile(settled.ctx, trigger="cli")
    second = await reconcile(settled.ctx, trigger="cli")
    for summary in (first, second):
        assert summary.attempts_started == []
        assert summary.transitions == []
        assert summary.reruns == []
        assert summary.errors == {}
    # Every project was asked about, and every answer was a 304 from the ETag cache.
    assert second.forge_requests > 0
    assert second.forge_requests == second.forge_not_modified
    assert second.forge_not_modified >= len(FIXTURES)
    after = await attempts_of(settled.ctx.sessions)
    assert [(a.id, a.status) for a in after] == [(a.id, a.status) for a in before]


async def test_flaky_job_is_rerun_not_patched(settled: Settled) -> None:
    notes = _red_notes(settled, "flaky")
    assert notes and notes[0] == ("rerun", "flaky_rerun")
    reruns = [r for s in settled.summaries for r in s.reruns if r.project == "flaky"]
    assert len(reruns) == 1
    assert await attempts_of(settled.ctx.sessions, "flaky") == []
    assert pulls_of(settled.forge, "acme/flaky") == []
    # The same run was re-run (attempt 2), and its re-run is green: the last red run is the one re-run.
    run = settled.forge.state.runs[int(reruns[0].run_id)]
    assert run.run_attempt == 2
    assert run.conclusion == "success"
    assert [r.id for r in failing_job_runs(settled.forge, "acme/flaky", "test")] == []
    assert [j.conclusion for j in run.attempts[1]] == ["failure"]


async def test_protected_workflow_fix_is_escalated_with_the_path_and_no_pull_request(settled: Settled) -> None:
    [attempt] = await attempts_of(settled.ctx.sessions, "protected-workflow")
    assert attempt.status == "escalated"
    assert attempt.pr_number is None and attempt.pr_url is None
    assert attempt.report is not None and ".github/workflows/ci.yml" in attempt.report
    steps = await transitions_of(settled.ctx.sessions, attempt.id)
    assert [to for _from, to, _why in steps] == ["pending", "running", "escalated"]
    assert ".github/workflows/ci.yml" in (steps[-1][2] or "")
    assert pulls_of(settled.forge, "acme/protected-workflow") == []
    # Later passes leave it to the human: the same failure is never picked up again.
    assert _red_notes(settled, "protected-workflow")[-1] == ("skip", "already_handled")


async def test_an_escalation_without_a_pull_request_is_one_issue_with_the_report(settled: Settled) -> None:
    repo = settled.forge.state.repo("acme", "protected-workflow")
    assert repo is not None
    [issue] = [i for i in repo.issues.values() if i.state == "open"]
    body = issue.body or ""
    assert "<!-- greenloop:escalation project=protected-workflow failure=test -->" in body
    assert "protected path" in body and "## What each attempt changed" in body
    assert ".github/workflows/ci.yml" in body, "the attempt's write is named"
    assert "/actions/runs/" in body, "the failing run is linked"
    row = await get_project(settled.ctx.sessions, "protected-workflow")
    assert row is not None and row.escalation_url is not None and row.escalation_url.endswith(f"/issues/{issue.number}")


async def test_auto_merge_fix_is_verified_green_and_propose_fix_waits_for_review(settled: Settled) -> None:
    for project in ("bug-lib", "data-job"):
        [attempt] = await attempts_of(settled.ctx.sessions, project)
        steps = [to for _from, to, _why in await transitions_of(settled.ctx.sessions, attempt.id)]
        assert steps == ["pending", "running", "pr_open", "verifying", "succeeded"], project
        [pull] = pulls_of(settled.forge, f"acme/{project}")
        assert pull.merged and pull.merge_commit_sha == attempt.merged_sha
    [attempt] = await attempts_of(settled.ctx.sessions, "stale-import")
    assert attempt.status == "pr_open"
    [pull] = pulls_of(settled.forge, "acme/stale-import")
    assert pull.state == "open" and not pull.merged and pull.number == attempt.pr_number
    assert await attempts_of(settled.ctx.sessions, "clean") == []
    assert _red_notes(settled, "clean") == []
