"""A reply lost after the forge acted: the outcome is read back from the forge, never guessed.

The forge's `reply_lost` / `reply_cut` faults let it handle one request completely (a token is issued, a
push lands, a pull request is opened or merged, a run re-runs, a log is served), then drop the reply after
its headers, or half-way through its body. Every fault point runs twice: with the stock scripted model,
which moves on after a failed tool call, and with a retrying model (the script calls the tool a second
time, as a real model does after an error). Whatever the model does, the end state on the forge and in the
store must be right: one pull request, at most one merge, one fix commit, and no attempt stuck or wrongly
final.

One forge serves the `propose` tests (`bug-lib`; nothing merges, so main stays red for the next test);
the merge and re-run tests change their project's main, so each has a forge of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fault_support import (
    arm_fault,
    branch_commits,
    config_for,
    forge_control,
    forge_requests,
    one_attempt,
    scripted,
    twice,
    write_script,
)
from mcp_types import CallToolResult, TextContent

from e2e_support import SCRIPTS_DIR, attempts_of, forge_for, pulls_on_branch, settle  # isort: skip
from agent.loop import ToolSession
from fixtures.forge import Forge
from mcp_server.in_process import open_in_process_session
from policy.config import GreenloopConfig
from reconciler.dispatch import AgentDispatcher
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime
from reconciler.store.models import Attempt

pytestmark = pytest.mark.anyio

PROJECT = "bug-lib"
REPO = "acme/bug-lib"
SCRIPT = SCRIPTS_DIR / f"{PROJECT}.json"
TOKENS = r"^/app/installations/\d+/access_tokens$"
LOGS = r"^/repos/acme/bug-lib/actions/jobs/\d+/logs$"
RECEIVE_PACK = r"^/git/acme/bug-lib\.git/git-receive-pack$"
PULLS = r"^/repos/acme/bug-lib/pulls$"
MERGE = r"^/repos/acme/bug-lib/pulls/\d+/merge$"
MODELS = ["stock", "retrying"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves the `propose` tests."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), [PROJECT]) as running:
        yield running


@pytest.fixture(autouse=True)
async def disarmed(forge: Forge) -> AsyncIterator[None]:
    await forge_control(forge, "DELETE", "/_forge/faults")
    await forge_control(forge, "DELETE", "/_forge/stats")
    yield
    await forge_control(forge, "DELETE", "/_forge/faults")


def _script(model: str, tool: str, tmp_path: Path) -> Path:
    """The stock script, or a copy that calls `tool` again right after it (the retrying model)."""
    return SCRIPT if model == "stock" else write_script(SCRIPT, tmp_path / "scripts", twice(tool))


def _arm_before(forge: Forge, script: Path, tool: str, path_regex: str, kind: str, method: str) -> Any:
    """A model hook arming the fault just before the model asks for `tool` (its first call)."""
    at = [s["tool"] for s in json.loads(script.read_text(encoding="utf-8"))["steps"]].index(tool)

    async def hook(n: int) -> None:
        if n == at:
            await arm_fault(forge, path_regex, kind, method=method)
            if path_regex == TOKENS:
                # One App per process caches its installation token (the pass minted it before the agent ran):
                # expire it on the forge, so the tool's next call must exchange again, into the fault.
                await forge_control(forge, "POST", "/_forge/tokens/expire", {"all_installation_tokens": True})

    return hook


async def _faulted(forge: Forge, path_regex: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in await forge_requests(forge) if r["fault"] == kind and re.search(path_regex, r["path"])]


async def _assert_one_pr_one_commit(forge: Forge, attempt: Attempt) -> None:
    """The propose end state: the attempt is `pr_open` with the one pull request of its one-commit branch."""
    assert attempt.status == "pr_open", (attempt.status, attempt.stop_reason)
    assert attempt.branch is not None
    pulls = pulls_on_branch(forge, REPO, attempt.branch)
    assert len(pulls) == 1, "one pull request"
    assert attempt.pr_number == pulls[0].number, "the store knows the forge's pull request"
    commits = await branch_commits(forge, REPO, attempt.branch)
    assert len(commits) == 1, f"one fix commit: {commits!r}"
    assert attempt.pushed_sha == commits[0] == pulls[0].head_sha


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("tool", "path_regex", "kind", "method"),
    [
        pytest.param("get_job_logs", TOKENS, "reply_lost", "POST", id="token-exchange"),
        pytest.param("get_job_logs", LOGS, "reply_cut", "GET", id="log-download"),
        pytest.param("commit_and_push", RECEIVE_PACK, "reply_lost", "POST", id="push-lost"),
        pytest.param("commit_and_push", RECEIVE_PACK, "reply_cut", "POST", id="push-cut"),
        pytest.param("create_pull_request", PULLS, "reply_lost", "POST", id="create-pr-lost"),
        pytest.param("create_pull_request", PULLS, "reply_cut", "POST", id="create-pr-cut"),
    ],
)
async def test_a_lost_reply_on_the_way_to_the_pull_request_ends_with_one_pr_and_one_commit(
    forge: Forge, tmp_path: Path, tool: str, path_regex: str, kind: str, method: str, model: str
) -> None:
    script = _script(model, tool, tmp_path)
    hook = _arm_before(forge, script, tool, path_regex, kind, method)
    config = config_for(forge, tmp_path, [PROJECT], "propose")
    async with open_runtime(config, backend_for=scripted(script, hook), heartbeat_seconds=1.0) as ctx:
        attempt = await one_attempt(ctx, PROJECT)

        assert len(await _faulted(forge, path_regex, kind)) == 1, "the forge handled the request, the reply was lost"
        await _assert_one_pr_one_commit(forge, attempt)
        summary = await reconcile(ctx, trigger="cli")  # a later pass changes nothing
        assert summary.attempts_started == [] and summary.transitions == []


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ["reply_lost", "reply_cut"])
async def test_a_merge_whose_reply_is_lost_is_merged_once_and_verified(tmp_path: Path, kind: str, model: str) -> None:
    script = _script(model, "merge_pull_request", tmp_path)
    async with forge_for(tmp_path / "forge", [PROJECT]) as forge:
        hook = _arm_before(forge, script, "merge_pull_request", MERGE, kind, "PUT")
        config = config_for(forge, tmp_path, [PROJECT], "auto_merge")
        async with open_runtime(config, backend_for=scripted(script, hook), heartbeat_seconds=1.0) as ctx:
            attempt = await one_attempt(ctx, PROJECT)
            # Merge only on green checks: the model's merge is refused while the PR's run is pending (the fault
            # stays armed); the reconciler merges once the checks pass, and its merge meets the lost reply.
            await settle(ctx, forge)
            assert len(await _faulted(forge, MERGE, kind)) == 1
            (done,) = await attempts_of(ctx.sessions, PROJECT)
            assert done.branch is not None
            (pull,) = pulls_on_branch(forge, REPO, done.branch)
            assert pull.merged_at is not None and done.pr_number == pull.number
            assert done.merged_sha == pull.merge_commit_sha
            assert await _merges_on_main(forge, attempt.id) == 1, "merged exactly once"
            assert done.status == "succeeded", (done.status, done.stop_reason)


async def _merges_on_main(forge: Forge, attempt_id: str) -> int:
    bare = forge.state.repo("acme", PROJECT)
    assert bare is not None
    proc = await asyncio.create_subprocess_exec(
        "git", "--git-dir", str(bare.git_dir), "log", "--format=%H", f"--grep=greenloop attempt {attempt_id}", "main",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return len(out.split())


@pytest.mark.parametrize("model", MODELS)
async def test_a_rerun_whose_reply_is_lost_is_not_requested_twice(tmp_path: Path, model: str) -> None:
    # A re-run is the reconciler's own write: the "retrying" run is a pass right after the failed one.
    rerun = r"^/repos/acme/flaky/actions/runs/\d+/rerun$"
    async with forge_for(tmp_path / "forge", ["flaky"]) as forge:
        config = config_for(forge, tmp_path, ["flaky"], "propose")
        async with open_runtime(config, backend_for=scripted(SCRIPT), heartbeat_seconds=1.0) as ctx:
            await arm_fault(forge, rerun, "reply_lost", method="POST")
            first = await reconcile(ctx, trigger="cli")
            assert "flaky" in first.errors, "the re-run's reply was lost: the pass could not tell it was made"
            if model == "retrying":
                again = await reconcile(ctx, trigger="cli")
                assert again.reruns == [] and again.attempts_started == []
            await settle(ctx, forge)

            posts = [r for r in await forge_requests(forge) if r["method"] == "POST" and re.search(rerun, r["path"])]
            assert len(posts) == 1, "the forge was asked to re-run once"
            assert await attempts_of(ctx.sessions, "flaky") == [], "the re-run went green: no remediation"


# --------------------------------------------------------------------------------------------------------------
# The dispatcher reads the outcome back, whatever the tools told the model.


class _LostReplySession:
    """A tool session whose `tool` call reaches the server, and whose result the model never sees."""

    def __init__(self, inner: ToolSession, tool: str) -> None:
        self._inner = inner
        self._tool = tool

    async def list_tools(self, *, cursor: str | None = None) -> Any:
        return await self._inner.list_tools(cursor=cursor)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        result = await self._inner.call_tool(name, arguments)
        if name != self._tool:
            return result
        lost = f"Forge unavailable: the reply of {name} was lost."
        return CallToolResult(content=[TextContent(type="text", text=lost)], is_error=True)


def _losing(config: GreenloopConfig, tool: str) -> Callable[[Attempt], AbstractAsyncContextManager[ToolSession]]:
    inner = open_in_process_session(config)

    @asynccontextmanager
    async def opener(attempt: Attempt) -> AsyncIterator[ToolSession]:
        async with inner(attempt.project, attempt.job, attempt.id) as session:
            yield _LostReplySession(session, tool)

    return opener


@pytest.mark.parametrize(
    ("autonomy", "tool", "status"),
    [
        pytest.param("propose", "create_pull_request", "pr_open", id="pr-opened-model-told-failure"),
        # The model's merge meets a pending check (merge only on green checks): the PR stays open, and the
        # dispatcher records it whatever the model was told.
        pytest.param("auto_merge", "merge_pull_request", "pr_open", id="pr-merged-model-told-failure"),
    ],
)
async def test_the_dispatcher_records_the_forges_pull_request_whatever_the_model_was_told(
    tmp_path: Path, autonomy: str, tool: str, status: str
) -> None:
    async with forge_for(tmp_path / "forge", [PROJECT]) as forge:
        config = config_for(forge, tmp_path, [PROJECT], autonomy)
        async with open_runtime(config, backend_for=None, with_dispatcher=False) as bare:
            dispatcher = AgentDispatcher(
                config,
                bare.sessions,
                open_session=_losing(config, tool),
                backend_for=scripted(SCRIPT),
                metrics=bare.metrics,
                heartbeat_seconds=1.0,
                forge=bare.forge,
            )
            ctx = dataclasses.replace(bare, dispatcher=dispatcher)
            try:
                attempt = await one_attempt(ctx, PROJECT)
            finally:
                await dispatcher.aclose()

            assert attempt.branch is not None
            (pull,) = pulls_on_branch(forge, REPO, attempt.branch)
            assert (attempt.status, attempt.pr_number) == (status, pull.number), attempt.stop_reason
            assert attempt.pushed_sha == pull.head_sha
