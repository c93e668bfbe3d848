"""A worker killed after its PR merged, before it recorded that: the next passes carry the attempt on.

The random kill points of test_crash_reconciler.py hit this window (after `merge_pull_request`, before the
dispatcher's `pr_open` transition) only by luck; here it is set up on purpose: a stale `running` attempt
whose fix branch's pull request is already merged must end `succeeded`, not `failed(worker_died)`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reconciler"))
from e2e_support import (
    REPO_ROOT,
    GitPusher,
    attempts_of,
    e2e_config,
    failing_job_runs,
    forge_for,
    insert_running_attempt,
    pulls_on_branch,
    settle,
    sqlite_url,
    transitions_of,
)

from reconciler.runtime import open_runtime

pytestmark = pytest.mark.anyio

FIX = REPO_ROOT / "fixtures" / "projects" / "bug-lib" / "fix" / "pager" / "pagination.py"


async def test_a_dead_workers_attempt_whose_pull_request_merged_is_verified_not_failed(tmp_path: Path) -> None:
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        config = e2e_config(
            forge,
            ["bug-lib"],
            database_url=sqlite_url(tmp_path / "greenloop.db"),
            workspace_dir=tmp_path / "ws",
            server={"attempt_timeout_seconds": 2.0},
        )
        async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
            red = failing_job_runs(forge, "acme/bug-lib", "test")[-1]
            dead = await insert_running_attempt(
                ctx.sessions,
                project="bug-lib",
                job="test",
                run_id=str(red.id),
                head_sha=red.head_sha,
                heartbeat_at=datetime.now(UTC) - timedelta(minutes=10),
            )
            assert dead.branch is not None
            # The worker pushed the fix, opened the PR and merged it, then was killed before recording any of it.
            pusher = GitPusher(forge, forge.admin_token, tmp_path)
            fix = FIX.read_text(encoding="utf-8")
            await pusher.push("acme/bug-lib", {"pager/pagination.py": fix}, "pager: fix", branch=dead.branch)
            number = await pusher.open_pull("acme/bug-lib", head=dead.branch)
            async with httpx2.AsyncClient(base_url=forge.api_url, timeout=30, trust_env=False) as http:
                merged = await http.put(
                    f"/repos/acme/bug-lib/pulls/{number}/merge",
                    headers={"Authorization": f"token {forge.admin_token}"},
                    json={"merge_method": "squash"},
                )
            assert merged.status_code == 200, merged.text
            await forge.wait_idle(60)

            await settle(ctx, forge, repos=["bug-lib"])

            [attempt] = await attempts_of(ctx.sessions, "bug-lib")
            steps = [(to, why) for _from, to, why in await transitions_of(ctx.sessions, dead.id)]
            assert (attempt.id, attempt.status, attempt.pr_number) == (dead.id, "succeeded", number), steps
            assert steps[2:] == [
                ("pr_open", "worker_died_after_pr"),
                ("verifying", "pr_merged"),
                ("succeeded", "job_green"),
            ]
            assert [p.number for p in pulls_on_branch(forge, "acme/bug-lib", dead.branch)] == [number]
