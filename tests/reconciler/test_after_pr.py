"""After the pull request, on the strict forge: nothing merges before its checks pass; the reconciler merges
once they do; a PR whose check fails is escalated to the project's owners with the report on the PR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from e2e_support import SCRIPTS_DIR, attempts_of, e2e_config, forge_for, pulls_of, settle, sqlite_url, transitions_of

from fixtures.forge import Forge
from policy.types import AttemptStatus
from reconciler.runtime import open_runtime, scripted_backends
from reconciler.store import attempts as store
from reconciler.store.audit import tool_calls
from reconciler.store.projects import get_project

pytestmark = pytest.mark.anyio
REPO = "acme/bug-lib"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _control(forge: Forge, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    headers = {"Authorization": f"token {forge.admin_token}"}
    async with httpx2.AsyncClient(base_url=forge.api_url, headers=headers) as http:
        response = await http.request(method, path, json=body)
    assert response.status_code in (200, 201), response.text


async def _outside_check(forge: Forge, sha: str, conclusion: str) -> None:
    body = {"sha": sha, "name": "e2e", "status": "completed", "conclusion": conclusion}
    await _control(forge, "POST", f"/_forge/repos/{REPO}/check-runs", body)


async def _protected_bug_lib(forge: Forge) -> None:
    """bug-lib's main requires `test` and an outside `e2e` check; maria (an owner) has push access."""
    await _control(forge, "PUT", f"/_forge/repos/{REPO}/protection", {"required_status_checks": ["test", "e2e"]})
    await _control(forge, "PUT", f"/_forge/repos/{REPO}/collaborators/maria")


async def test_auto_merge_waits_for_the_checks_then_the_reconciler_merges(tmp_path: Path) -> None:
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        await _protected_bug_lib(forge)
        config = e2e_config(
            forge, ["bug-lib"], database_url=sqlite_url(tmp_path / "g.db"), workspace_dir=tmp_path / "ws"
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            await settle(ctx, forge, deadline_seconds=90)
            [attempt] = await attempts_of(ctx.sessions, "bug-lib")
            # The agent's merge was refused (e2e has not reported): the PR waits, open, with its checks shown.
            assert (attempt.status, attempt.checks) == ("pr_open", "pending")
            calls = [(c.tool, c.outcome) for c in await tool_calls(ctx.sessions, attempt_id=attempt.id)]
            assert ("merge_pull_request", "refused") in calls and ("merge_pull_request", "ok") not in calls
            [pull] = pulls_of(forge, REPO)
            assert pull.state == "open" and not pull.merged

            await _outside_check(forge, pull.head_sha, "success")
            await settle(ctx, forge, deadline_seconds=90)
            attempt = await store.get_attempt(ctx.sessions, attempt.id) or attempt
            steps = await transitions_of(ctx.sessions, attempt.id)
            assert ("pr_open", "verifying", "merged_on_green_checks") in steps
            assert attempt.status == "succeeded" and attempt.checks == "passed"
            assert pulls_of(forge, REPO)[0].merged


async def test_without_revisions_a_failing_check_is_escalated_with_a_comment_and_the_owners(tmp_path: Path) -> None:
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        await _protected_bug_lib(forge)
        config = e2e_config(
            forge,
            ["bug-lib"],
            database_url=sqlite_url(tmp_path / "g.db"),
            workspace_dir=tmp_path / "ws",
            projects={"bug-lib": {"owners": ("maria",), "max_revisions": 0}},
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            await settle(ctx, forge, deadline_seconds=90)
            [pull] = pulls_of(forge, REPO)
            await _outside_check(forge, pull.head_sha, "failure")
            await settle(ctx, forge, deadline_seconds=90)
            [attempt] = await store.list_attempts(ctx.sessions, project="bug-lib", statuses=[AttemptStatus.ESCALATED])
            assert (attempt.stop_reason, attempt.checks) == ("pr_checks_failing", "failing")
            assert not pulls_of(forge, REPO)[0].merged
            repo = forge.state.repo("acme", "bug-lib")
            assert repo is not None
            [comment] = [c for c in repo.comments if c.number == pull.number]
            assert "<!-- greenloop:escalation project=bug-lib failure=test -->" in comment.body
            assert "checks failed" in comment.body and "## What each attempt changed" in comment.body
            assert "pager/pagination.py" in comment.body, "the attempt's change is named"
            assert [r.login for r in repo.pulls[pull.number].requested_reviewers] == ["maria"]
            row = await get_project(ctx.sessions, "bug-lib")
            assert row is not None and row.escalation_reason == "pr_checks_failing"
            assert row.escalation_url is not None and f"/pull/{pull.number}#issuecomment-" in row.escalation_url
