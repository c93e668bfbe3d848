"""A pass repairs what a lost reply left: the store is brought in line with the fix branch on the forge.

One forge serves the module (`bug-lib`, autonomy `propose`, so nothing merges and main stays red); every
test has its own store, so its attempt has its own fix branch. The wrong end states are the ones a reply
lost after the forge acted leaves behind when nothing reads the forge back: an attempt ended `failed`
although its pull request is open, and a fix branch pushed without a pull request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fault_support import branch_commits, config_for, one_attempt, scripted, write_script

from e2e_support import SCRIPTS_DIR, forge_for, pulls_on_branch, transitions_of  # isort: skip
from fixtures.forge import Forge
from fixtures.forge.gitcmd import list_branches
from policy.config import GreenloopConfig
from policy.types import AttemptStatus
from reconciler.repair import REOPENED
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime
from reconciler.store import attempts as store
from reconciler.store.models import Attempt, utcnow

pytestmark = pytest.mark.anyio

PROJECT = "bug-lib"
REPO = "acme/bug-lib"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), [PROJECT]) as running:
        yield running


def _config(forge: Forge, tmp_path: Path) -> GreenloopConfig:
    return config_for(forge, tmp_path, [PROJECT])


def _without(*tools: str) -> Any:
    """A script edit: the model never calls `tools` (it stops before opening its pull request)."""

    def edit(script: dict[str, Any]) -> None:
        script["steps"] = [s for s in script["steps"] if s["tool"] not in tools]
        script["final_message"] = "Pushed a fix; could not open the pull request."

    return edit


async def test_an_attempt_ended_failed_while_its_pull_request_is_open_is_reopened_with_its_number(
    forge: Forge, tmp_path: Path
) -> None:
    async with open_runtime(
        _config(forge, tmp_path), backend_for=scripted(SCRIPTS_DIR / f"{PROJECT}.json"), heartbeat_seconds=1.0
    ) as ctx:
        attempt = await one_attempt(ctx, PROJECT)
        assert attempt.status == "pr_open" and attempt.branch is not None
        (pull,) = pulls_on_branch(forge, REPO, attempt.branch)
        # What the store held before the forge was read back: the model's word (no fix), no pull request.
        async with ctx.sessions() as session, session.begin():
            await session.execute(
                sa.update(Attempt)
                .where(Attempt.id == attempt.id)
                .values(status="failed", stop_reason="no_fix", pr_number=None, pr_url=None, finished_at=utcnow())
            )

        summary = await reconcile(ctx, trigger="cli")

        repaired = await store.get_attempt(ctx.sessions, attempt.id)
        assert repaired is not None
        assert (repaired.status, repaired.pr_number, repaired.finished_at) == ("pr_open", pull.number, None)
        moves = [(t.attempt_id, t.from_status, t.to_status) for t in summary.transitions]
        assert (attempt.id, "failed", "pr_open") in moves
        assert (await transitions_of(ctx.sessions, attempt.id))[-1] == ("failed", "pr_open", REOPENED)
        assert summary.attempts_started == [], "the reopened attempt is the project's one active attempt"
        assert len(pulls_on_branch(forge, REPO, attempt.branch)) == 1

        again = await reconcile(ctx, trigger="cli")
        assert [t.attempt_id for t in again.transitions] == [], "nothing left to repair"
        after = await store.get_attempt(ctx.sessions, attempt.id)
        assert after is not None and after.status == AttemptStatus.PR_OPEN.value


async def test_an_orphan_fix_branch_of_a_final_attempt_is_deleted_through_the_forge(
    forge: Forge, tmp_path: Path
) -> None:
    script = write_script(
        SCRIPTS_DIR / f"{PROJECT}.json", tmp_path / "scripts", _without("create_pull_request", "merge_pull_request")
    )
    async with open_runtime(_config(forge, tmp_path), backend_for=scripted(script), heartbeat_seconds=1.0) as ctx:
        attempt = await one_attempt(ctx, PROJECT)
        assert attempt.status == "failed" and attempt.branch is not None
        assert len(await branch_commits(forge, REPO, attempt.branch)) == 1, "the fix was pushed"
        assert pulls_on_branch(forge, REPO, attempt.branch) == []

        await reconcile(ctx, trigger="cli")

        bare = forge.state.repo("acme", PROJECT)
        assert bare is not None
        assert attempt.branch not in await list_branches(bare.git_dir), "the orphan fix branch is gone"
        after = await store.get_attempt(ctx.sessions, attempt.id)
        assert after is not None and after.status == "failed", "a final attempt stays final"
