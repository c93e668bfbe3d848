"""Revision rounds and per-attempt budgets, on the strict forge (issue 15).

A fix PR whose checks fail goes back to the agent as the same attempt, on the same fix branch, told which check
failed and shown its log excerpt; the PR updates (never a second PR), and after `max_revisions` rounds a human
is brought in. Budgets are per attempt: a resumed or revised run gets only what earlier runs left. And a fix a
human merged that leaves the job red is escalated with a report on its PR.

`units-lib`'s scripted first fix is incomplete on purpose: it restores the mile in `units/length.py` only, so
the PR's own `test` check fails on `units/speed.py`; `units-lib.revision-1.json` fixes that file.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from e2e_support import (
    SCRIPTS_DIR,
    GitPusher,
    attempts_of,
    e2e_config,
    failing_job_runs,
    forge_for,
    insert_running_attempt,
    pulls_of,
    set_heartbeat,
    settle,
    sqlite_url,
    transitions_of,
)

from agent.models import ModelBackend, ModelRequest
from agent.scripted import ScriptedBackend
from fixtures.forge import Forge
from policy.config import Budgets
from reconciler.advance import RESUMED
from reconciler.dispatch import AgentDispatcher
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime, scripted_backends
from reconciler.store import attempts as store
from reconciler.store.audit import tool_calls
from reconciler.store.models import Attempt
from reconciler.store.projects import get_project

pytestmark = pytest.mark.anyio

UNITS = "acme/units-lib"
BUG_LIB = "acme/bug-lib"
MARKER = "<!-- greenloop:escalation project={project} failure=test -->"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _turns(script: Path) -> int:
    """Model turns a scripted run takes: one per step, then its final message."""
    return len(json.loads(script.read_text(encoding="utf-8"))["steps"]) + 1


async def _collaborator(forge: Forge, repo: str, login: str) -> None:
    async with httpx2.AsyncClient(base_url=forge.api_url) as http:
        response = await http.put(
            f"/_forge/repos/{repo}/collaborators/{login}", headers={"Authorization": f"token {forge.admin_token}"}
        )
    assert response.status_code in (200, 201), response.text


def _comments(forge: Forge, repo: str, number: int) -> list[Any]:
    owner, name = repo.split("/")
    state = forge.state.repo(owner, name)
    assert state is not None
    return [c for c in state.comments if c.number == number]


async def test_a_fix_whose_pr_check_fails_is_revised_on_the_same_branch_then_merged_and_verified(
    tmp_path: Path,
) -> None:
    async with forge_for(tmp_path / "forge", ["units-lib"]) as forge:
        config = e2e_config(
            forge, ["units-lib"], database_url=sqlite_url(tmp_path / "g.db"), workspace_dir=tmp_path / "ws"
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            await settle(ctx, forge, deadline_seconds=120)

            [attempt] = await attempts_of(ctx.sessions, "units-lib")
            assert (attempt.status, attempt.revisions, attempt.checks) == ("succeeded", 1, "passed")
            steps = await transitions_of(ctx.sessions, attempt.id)
            assert [(f, to) for f, to, _why in steps] == [
                (None, "pending"),
                ("pending", "running"),
                ("running", "pr_open"),
                ("pr_open", "running"),  # the revision round: the PR's `test` check failed
                ("running", "pr_open"),
                ("pr_open", "verifying"),
                ("verifying", "succeeded"),
            ]
            assert ("pr_open", "running", "revision_round: test") in steps
            assert ("pr_open", "verifying", "merged_on_green_checks") in steps

            # One pull request, updated by the revision (its head is the revised commit), merged on green checks.
            [pull] = pulls_of(forge, UNITS)
            assert pull.merged and pull.head_ref == attempt.branch and pull.head_sha == attempt.pushed_sha
            calls = await tool_calls(ctx.sessions, attempt_id=attempt.id)
            pushes = [
                json.loads(c.arguments)["message"] for c in calls if c.tool == "commit_and_push" and c.outcome == "ok"
            ]
            assert pushes == [
                "units: restore the exact mile (1.609344 km)",
                "units: restore the exact mile in units/speed.py too",
            ], "the revision pushed a second commit on the same branch"
            assert [c.outcome for c in calls if c.tool == "create_pull_request"] == ["ok", "ok"]  # the same PR twice

            # The revision round was told why: which check failed, and that check's log excerpt.
            transcript = json.dumps(json.loads(attempt.transcript or "[]"))
            assert "revision round 1 of 2" in transcript
            assert "test_motorway_limit_in_mph" in transcript and "62.5 != 62.1371" in transcript
            # Budgets count across rounds: both runs' turns are on the attempt.
            first, revision = _turns(SCRIPTS_DIR / "units-lib.json"), _turns(SCRIPTS_DIR / "units-lib.revision-1.json")
            assert attempt.turns == first + revision
            assert attempt.agent_seconds > 0


async def test_a_fix_whose_check_never_passes_is_escalated_after_its_revisions_with_a_pr_comment(
    tmp_path: Path,
) -> None:
    """Under `propose` too (a wrong fix is wrong whoever merges it). Every round replays the incomplete fix, so
    the PR's check never passes: two revision rounds, then the report goes on the PR and the owner is asked."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy(SCRIPTS_DIR / "units-lib.json", scripts / "units-lib.json")  # no revision script: same fix again
    async with forge_for(tmp_path / "forge", ["units-lib"]) as forge:
        await _collaborator(forge, UNITS, "maria")
        config = e2e_config(
            forge,
            ["units-lib"],
            database_url=sqlite_url(tmp_path / "g.db"),
            workspace_dir=tmp_path / "ws",
            projects={"units-lib": {"autonomy": "propose", "owners": ("maria",)}},
        )
        async with open_runtime(config, backend_for=scripted_backends(str(scripts)), heartbeat_seconds=1.0) as ctx:
            summaries = await settle(ctx, forge, deadline_seconds=150)

            [attempt] = await attempts_of(ctx.sessions, "units-lib")
            assert (attempt.status, attempt.stop_reason, attempt.revisions) == ("escalated", "revisions_exhausted", 2)
            steps = await transitions_of(ctx.sessions, attempt.id)
            rounds = [why for f, to, why in steps if (f, to) == ("pr_open", "running")]
            assert rounds == ["revision_round: test", "revision_round: test"]
            assert steps[-1] == ("pr_open", "escalated", "revisions_exhausted: test")

            [pull] = pulls_of(forge, UNITS)  # every round worked on the one PR
            assert pull.state == "open" and not pull.merged
            [comment] = _comments(forge, UNITS, pull.number)
            assert MARKER.format(project="units-lib") in comment.body
            assert "still failed after every revision round" in comment.body
            assert "units/length.py" in comment.body, "the report names what the attempt changed"
            owner, name = UNITS.split("/")
            repo = forge.state.repo(owner, name)
            assert repo is not None
            assert [r.login for r in repo.pulls[pull.number].requested_reviewers] == ["maria"]
            row = await get_project(ctx.sessions, "units-lib")
            assert row is not None and row.escalation_reason == "revisions_exhausted"
            assert row.escalation_url is not None and f"/pull/{pull.number}#issuecomment-" in row.escalation_url
            # No new attempt on the same failure after the escalation.
            assert all(not s.attempts_started for s in summaries[1:])
            # Three runs of the agent, one attempt's budget: the turns of all of them are on the row.
            assert attempt.turns == 3 * _turns(scripts / "units-lib.json")


async def test_a_resumed_attempt_gets_only_the_budget_its_dead_worker_left(tmp_path: Path) -> None:
    """With a budget of exactly the turns bug-lib's script takes, a fresh run would open its PR. The dead
    worker's last heartbeat recorded all but 2 of them (and tokens, cost, seconds), so the resumed run gets 2
    turns and stops at the turn limit before any PR, and the attempt's totals include both runs."""
    budget = _turns(SCRIPTS_DIR / "bug-lib.json")
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        config = e2e_config(
            forge,
            ["bug-lib"],
            database_url=sqlite_url(tmp_path / "g.db"),
            workspace_dir=tmp_path / "ws",
            server={"attempt_timeout_seconds": 30},
            projects={"bug-lib": {"budgets": Budgets(max_turns=budget)}},
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            red = failing_job_runs(forge, BUG_LIB, "test")[-1]
            dead = await insert_running_attempt(
                ctx.sessions,
                project="bug-lib",
                job="test",
                run_id=str(red.id),
                head_sha=red.head_sha,
                heartbeat_at=datetime.now(UTC),
            )
            # What the dead worker's heartbeats recorded before it died.
            await store.heartbeat(
                ctx.sessions, dead.id, turns=budget - 2, input_tokens=5_000, cost_usd=0.25, agent_seconds=40.0
            )
            await set_heartbeat(ctx.sessions, dead.id, datetime.now(UTC) - timedelta(minutes=10))

            resumed = await reconcile(ctx, repos=["bug-lib"])
            assert [(t.to_status, t.reason) for t in resumed.transitions] == [("running", RESUMED)]
            assert ctx.dispatcher is not None
            await ctx.dispatcher.wait_idle(60)

            attempt = await store.get_attempt(ctx.sessions, dead.id)
            assert attempt is not None
            assert (attempt.status, attempt.stop_reason) == ("failed", "max_turns")
            assert attempt.turns == budget, "2 turns left, 2 used: the attempt's total is its budget"
            tokens = attempt.input_tokens + attempt.output_tokens + attempt.cache_tokens
            assert tokens > 5_000 and attempt.cost_usd > 0.25 and attempt.agent_seconds > 40.0
            assert pulls_of(forge, BUG_LIB) == [], "the resumed run had no turns left to open its PR"


WRONG_FIX_NO_MERGE = {
    "project": "bug-lib",
    "steps": [
        {"tool": "get_job_logs", "input": {"run_id": "$FAILING_RUN_ID"}},
        {"tool": "create_branch", "input": {}},
        {"tool": "write_repo_file", "input": {"path": "pager/version.py", "content": 'VERSION = "1.0.1"\n'}},
        {"tool": "commit_and_push", "input": {"message": "pager: bump the version"}},
        {
            "tool": "create_pull_request",
            "input": {"title": "Bump the version", "body": "Job `test` failed; bumping the version fixes it."},
        },
    ],
    "final_message": "Opened a version bump.",
}


async def test_a_merged_fix_that_leaves_the_job_red_is_escalated_with_a_report_on_its_pr(tmp_path: Path) -> None:
    """A human merges the (wrong) fix PR before its checks are read: the job stays red on the merge commit, so
    the attempt is escalated (`fix_did_not_turn_green`) and the report lands on the merged PR."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bug-lib.json").write_text(json.dumps(WRONG_FIX_NO_MERGE), encoding="utf-8")
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        config = e2e_config(
            forge,
            ["bug-lib"],
            database_url=sqlite_url(tmp_path / "g.db"),
            workspace_dir=tmp_path / "ws",
            projects={"bug-lib": {"autonomy": "propose"}},
        )
        async with open_runtime(config, backend_for=scripted_backends(str(scripts)), heartbeat_seconds=1.0) as ctx:
            started = await reconcile(ctx, repos=["bug-lib"])
            assert len(started.attempts_started) == 1
            assert ctx.dispatcher is not None
            await ctx.dispatcher.wait_idle(60)
            [pull] = pulls_of(forge, BUG_LIB)
            merge_sha = await GitPusher(forge, forge.admin_token, tmp_path).merge_pull(BUG_LIB, pull.number)

            await settle(ctx, forge, deadline_seconds=90)
            [attempt] = await attempts_of(ctx.sessions, "bug-lib")
            assert (attempt.status, attempt.stop_reason, attempt.merged_sha) == (
                "escalated",
                "fix_did_not_turn_green",
                merge_sha,
            )
            assert attempt.revisions == 0
            [comment] = _comments(forge, BUG_LIB, pull.number)
            assert MARKER.format(project="bug-lib") in comment.body
            assert "The fix was merged, but the job is still red" in comment.body
            assert "pager/version.py" in comment.body and "## What each attempt changed" in comment.body
            row = await get_project(ctx.sessions, "bug-lib")
            assert row is not None and row.escalation_reason == "fix_did_not_turn_green"
            assert row.escalation_url is not None and f"/pull/{pull.number}#issuecomment-" in row.escalation_url


async def test_a_dead_worker_that_spent_the_budget_is_not_resumed(tmp_path: Path) -> None:
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        config = e2e_config(
            forge,
            ["bug-lib"],
            database_url=sqlite_url(tmp_path / "g.db"),
            workspace_dir=tmp_path / "ws",
            server={"attempt_timeout_seconds": 30},
            projects={"bug-lib": {"budgets": Budgets(max_turns=10)}},
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            red = failing_job_runs(forge, BUG_LIB, "test")[-1]
            dead = await insert_running_attempt(
                ctx.sessions,
                project="bug-lib",
                job="test",
                run_id=str(red.id),
                head_sha=red.head_sha,
                heartbeat_at=datetime.now(UTC),
            )
            await store.heartbeat(ctx.sessions, dead.id, turns=10)  # its run used every turn, then died
            await set_heartbeat(ctx.sessions, dead.id, datetime.now(UTC) - timedelta(minutes=10))

            summary = await reconcile(ctx, repos=["bug-lib"])
            assert [(t.from_status, t.to_status, t.reason) for t in summary.transitions] == [
                ("running", "failed", "worker_died")
            ]
            assert ctx.dispatcher is not None and not ctx.dispatcher.is_running(dead.id)


class _Stalls:
    """bug-lib's script, stalling for good once `at` model turns were answered (a worker that hangs, then dies)."""

    def __init__(self, attempt: Attempt, at: int) -> None:
        self.inner = ScriptedBackend(SCRIPTS_DIR / "bug-lib.json", substitutions={"FAILING_RUN_ID": attempt.run_id})
        self.at = at

    async def create(self, request: ModelRequest) -> Any:
        if self.inner.turns_served >= self.at:
            await asyncio.Event().wait()
        return await self.inner.create(request)


async def test_the_heartbeat_records_what_a_running_agent_has_used(tmp_path: Path) -> None:
    """So a worker that dies mid-run leaves its usage on the attempt, and a resume gets only what is left."""

    def backend_for(attempt: Attempt, _project: Any) -> ModelBackend:
        return _Stalls(attempt, at=3)

    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        config = e2e_config(
            forge, ["bug-lib"], database_url=sqlite_url(tmp_path / "g.db"), workspace_dir=tmp_path / "ws"
        )
        async with open_runtime(config, backend_for=backend_for, heartbeat_seconds=0.2) as ctx:
            [started] = (await reconcile(ctx, repos=["bug-lib"])).attempts_started
            assert started.attempt_id is not None
            attempt: Attempt | None = None
            for _ in range(300):
                attempt = await store.get_attempt(ctx.sessions, started.attempt_id)
                if attempt is not None and attempt.turns == 3:
                    break
                await asyncio.sleep(0.1)
            assert attempt is not None and (attempt.status, attempt.turns) == ("running", 3)
            assert attempt.cost_usd > 0 and attempt.agent_seconds > 0
            assert attempt.input_tokens + attempt.output_tokens + attempt.cache_tokens > 0
            assert isinstance(ctx.dispatcher, AgentDispatcher)
            await ctx.dispatcher.aclose()
