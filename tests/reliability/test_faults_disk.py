"""Disk faults: a workspace directory that cannot be written, and working copies left behind by old attempts.

The tests run as root, where permission bits stop nothing, so "unwritable" is a `workspace_dir` below a
regular file: every `mkdir` there fails with ENOTDIR whoever runs it. One forge serves the module
(`bug-lib`, autonomy `propose` so that no attempt merges); every test has its own store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fault_support import HookedBackend, forge_control, forge_requests, write_script

from agent.scripted import ScriptedBackend

from e2e_support import SCRIPTS_DIR, attempts_of, e2e_config, forge_for, pulls_of, sqlite_url  # isort: skip
from fixtures.forge import Forge
from policy.config import GreenloopConfig, ProjectConfig
from reconciler.context import ReconcilerContext
from reconciler.dispatch import AgentDispatcher, BackendFactory
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime
from reconciler.store.models import Attempt

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


def _config(forge: Forge, tmp_path: Path, workspace_dir: Path) -> GreenloopConfig:
    return e2e_config(
        forge,
        [PROJECT],
        database_url=sqlite_url(tmp_path / "greenloop.db"),
        workspace_dir=workspace_dir,
        projects={PROJECT: {"autonomy": "propose"}},
    )


async def _one_attempt(ctx: ReconcilerContext) -> Attempt:
    summary = await reconcile(ctx, trigger="cli")
    assert summary.errors == {}
    assert [a.project for a in summary.attempts_started] == [PROJECT]
    assert ctx.dispatcher is not None
    await ctx.dispatcher.wait_idle(120)
    (attempt,) = await attempts_of(ctx.sessions, PROJECT)
    return attempt


def _no_pull_request(script: dict[str, Any]) -> None:
    """A script edit: the model reads and gives up (no branch, no push, no pull request)."""
    script["steps"] = [s for s in script["steps"] if s["tool"] in ("get_job_logs", "read_repo_file")]
    script["final_message"] = "I could not find a safe fix."


@pytest.mark.parametrize(
    ("edit", "status"),
    [
        pytest.param(None, "pr_open", id="pull-request-opened"),
        pytest.param(_no_pull_request, "failed", id="no-fix"),
    ],
)
async def test_an_attempts_workspace_is_removed_when_its_agent_run_ends(
    forge: Forge, tmp_path: Path, edit: Any, status: str
) -> None:
    script = SCRIPTS_DIR / f"{PROJECT}.json"
    if edit is not None:
        script = write_script(script, tmp_path / "scripts", edit)
    workspaces = tmp_path / "workspaces"
    seen: dict[str, bool] = {}

    def backend_for(attempt: Attempt, _project: ProjectConfig) -> Any:
        root = workspaces / f"attempt-{attempt.id}"

        async def look(n: int) -> None:
            if n > 1:  # after the first file was read: the working copy is there while the agent works
                seen.setdefault("during", (root / ".git").is_dir())

        inner = ScriptedBackend(script, substitutions={"FAILING_RUN_ID": attempt.run_id})
        return HookedBackend(inner, look)

    factory: BackendFactory = backend_for
    async with open_runtime(_config(forge, tmp_path, workspaces), backend_for=factory, heartbeat_seconds=1.0) as ctx:
        attempt = await _one_attempt(ctx)

        assert attempt.status == status, (attempt.status, attempt.stop_reason)
        assert seen == {"during": True}, "the agent worked in <workspace_dir>/attempt-<id>"
        assert not (workspaces / f"attempt-{attempt.id}").exists(), "and it is gone once the run ended"
        assert workspaces.is_dir()  # only the attempt's own directory went


async def test_an_unwritable_workspace_dir_fails_the_attempt_with_a_clear_reason_and_breaks_nothing_else(
    forge: Forge, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the workspaces should go\n", encoding="utf-8")
    workspaces = blocker / "workspaces"  # mkdir below a file: ENOTDIR, even as root
    await forge_control(forge, "DELETE", "/_forge/stats")
    pulls_before = len(pulls_of(forge, REPO))
    config = _config(forge, tmp_path, workspaces)
    async with open_runtime(
        config, backend_for=lambda a, p: _scripted(a, SCRIPTS_DIR / f"{PROJECT}.json"), heartbeat_seconds=1.0
    ) as ctx:
        attempt = await _one_attempt(ctx)

        assert attempt.status == "failed", (attempt.status, attempt.stop_reason)
        assert attempt.stop_reason, "the attempt says why it stopped"
        # The model (and the transcript) were told what is wrong, not just "internal error".
        assert "Workspace unavailable: cannot create the working copy: Not a directory." in (attempt.transcript or "")
        # Nothing reached the forge: no push, no pull request.
        pushes = [r for r in await forge_requests(forge) if r["path"].endswith("/git-receive-pack")]
        assert pushes == []
        assert len(pulls_of(forge, REPO)) == pulls_before
        assert blocker.read_text(encoding="utf-8").startswith("a regular file")

        # The reconciler carries on: the next pass is clean and does not retry the handled failure.
        again = await reconcile(ctx, trigger="cli")
        assert again.errors == {}
        assert again.attempts_started == []
        assert len(await attempts_of(ctx.sessions, PROJECT)) == 1


def _scripted(attempt: Attempt, script: Path) -> ScriptedBackend:
    return ScriptedBackend(script, substitutions={"FAILING_RUN_ID": attempt.run_id})


async def test_a_cancelled_attempts_workspace_is_removed_and_a_shutdown_keeps_it_for_a_resume(
    forge: Forge, tmp_path: Path
) -> None:
    workspaces = tmp_path / "workspaces"
    cloned = asyncio.Event()

    def backend_for(attempt: Attempt, _project: ProjectConfig) -> Any:
        async def stall(n: int) -> None:
            if n == 2:  # a file was read, so the working copy exists: the agent now thinks for ever
                cloned.set()
                await asyncio.sleep(3600)

        return HookedBackend(_scripted(attempt, SCRIPTS_DIR / f"{PROJECT}.json"), stall)

    config = _config(forge, tmp_path, workspaces)
    async with open_runtime(config, backend_for=backend_for, heartbeat_seconds=1.0) as ctx:
        summary = await reconcile(ctx, trigger="cli")
        (started,) = summary.attempts_started
        assert started.attempt_id is not None
        await asyncio.wait_for(cloned.wait(), 60)
        root = workspaces / f"attempt-{started.attempt_id}"
        assert (root / ".git").is_dir()
        dispatcher = ctx.dispatcher
        assert isinstance(dispatcher, AgentDispatcher)
        assert await dispatcher.cancel(started.attempt_id)
        assert not root.exists(), "cancelled here: the working copy goes with the run"

    # A shutdown cancels running agents too, but keeps their working copies: a later pass may resume them.
    other = tmp_path / "second"
    other.mkdir()
    cloned.clear()
    async with open_runtime(_config(forge, other, workspaces), backend_for=backend_for, heartbeat_seconds=1.0) as ctx:
        summary = await reconcile(ctx, trigger="cli")
        (started,) = summary.attempts_started
        await asyncio.wait_for(cloned.wait(), 60)
    assert (workspaces / f"attempt-{started.attempt_id}" / ".git").is_dir()
