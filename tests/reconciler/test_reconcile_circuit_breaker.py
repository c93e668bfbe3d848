"""The circuit breaker: greenloop never remediates a failure its own change caused.

Two ways a red run can be greenloop's own: its commit carries a `Greenloop-Attempt: <id>` trailer, or it is
the commit an attempt merged (the merge was made by greenloop's bot). In the second case the attempt that
was waiting for its fix to turn green is escalated instead. One forge serves the module; each test has a
project and a store of its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e_support import (
    GitPusher,
    attempts_of,
    e2e_config,
    forge_for,
    pulls_of,
    settle,
    sqlite_url,
    transitions_of,
)

from fixtures.forge import Forge
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime, scripted_backends

pytestmark = pytest.mark.anyio

FAILING_TEST = """\
import unittest


class RoundingRegression(unittest.TestCase):
    def test_totals_are_rounded_once_per_invoice(self):
        self.assertEqual(round(0.125, 2), 0.13)
"""

# A "fix" that changes something beside the point: the agent opens and merges it, and the job stays red.
WRONG_FIX_SCRIPT = {
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
        {"tool": "merge_pull_request", "input": {}},
    ],
    "final_message": "Merged a version bump.",
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), ["bug-lib", "clean"]) as running:
        yield running


async def test_breaking_commit_with_an_attempt_trailer_is_not_remediated(forge: Forge, tmp_path: Path) -> None:
    config = e2e_config(
        forge, ["clean"], database_url=sqlite_url(tmp_path / "greenloop.db"), workspace_dir=tmp_path / "ws"
    )
    pusher = GitPusher(forge, forge.admin_token, tmp_path)
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        assert (await reconcile(ctx)).red == []

        own = await pusher.push(
            "acme/clean",
            {"tests/test_regression.py": FAILING_TEST},
            "invoice: pin rounding\n\nGreenloop-Attempt: 0a1b2c3d4e5f",
        )
        await forge.wait_idle(60)
        summary = await reconcile(ctx)
        assert [(r.job, r.head_sha, r.decision, r.reason) for r in summary.red] == [("test", own, "skip", "own_change")]
        assert "Greenloop-Attempt" in summary.red[0].detail
        assert summary.attempts_started == []
        assert await attempts_of(ctx.sessions) == []

        # The same red job on a human's commit (no trailer) would get an attempt: the trailer made the difference.
        human = await pusher.push("acme/clean", {"docs/CHANGES.md": "- pin rounding\n"}, "docs: note the change")
        await forge.wait_idle(60)
        dry = await reconcile(ctx, dry_run=True)
        assert [(r.job, r.head_sha, r.decision) for r in dry.red] == [("test", human, "start")]
        assert await attempts_of(ctx.sessions) == []


async def test_a_wrong_fix_is_never_merged_its_pr_is_escalated_and_its_failure_not_remediated_again(
    forge: Forge, tmp_path: Path
) -> None:
    """Merge only on green checks (issue 15): the wrong fix's own PR check fails, so greenloop never merges it
    (before, it merged at once and the breaker caught the red job on the merged commit); the attempt goes back
    to the agent for its revision rounds (the script repeats the same wrong fix, on the same PR), is then
    escalated with the failing check named, and no second attempt starts on the same failure."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "bug-lib.json").write_text(json.dumps(WRONG_FIX_SCRIPT), encoding="utf-8")
    config = e2e_config(
        forge, ["bug-lib"], database_url=sqlite_url(tmp_path / "greenloop.db"), workspace_dir=tmp_path / "ws"
    )
    async with open_runtime(config, backend_for=scripted_backends(str(scripts)), heartbeat_seconds=1.0) as ctx:
        summaries = await settle(ctx, forge, deadline_seconds=60)
        summaries.append(await reconcile(ctx))

        [attempt] = await attempts_of(ctx.sessions)
        assert (attempt.status, attempt.stop_reason, attempt.revisions) == ("escalated", "revisions_exhausted", 2)
        steps = await transitions_of(ctx.sessions, attempt.id)
        assert [to for _from, to, _why in steps] == [
            *("pending", "running", "pr_open"),
            *("running", "pr_open") * 2,  # two revision rounds (max_revisions), each back to the same PR
            "escalated",
        ]
        assert steps[-1][2] == "revisions_exhausted: test"
        [pull] = pulls_of(forge, "acme/bug-lib")
        assert not pull.merged and pull.merged_at is None, "a fix whose check fails never reaches main"
        escalated_at = next(
            i for i, s in enumerate(summaries) if any(t.to_status == "escalated" for t in s.transitions)
        )
        for summary in summaries[escalated_at + 1 :]:
            assert summary.attempts_started == []
        assert len(await attempts_of(ctx.sessions)) == 1
