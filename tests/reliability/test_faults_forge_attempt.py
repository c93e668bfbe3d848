"""Forge faults in the middle of an attempt: a clone or a push cut off, the installation token expiring.

One forge serves the module (`bug-lib` only); every test has its own store, so its attempt has its own id,
fix branch and pull request. The project runs with autonomy `propose`, so no attempt merges and the forge's
default branch stays red for the next test. The agent is the scripted model (`fixtures/scripts/bug-lib.json`,
or a copy a test changed); what a real model would do after a failed tool call (call it again) is written
into the copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
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

from e2e_support import SCRIPTS_DIR, forge_for, pulls_on_branch  # isort: skip
from fixtures.forge import Forge
from policy.config import GreenloopConfig
from reconciler.context import ReconcilerContext
from reconciler.runtime import open_runtime
from reconciler.store.models import Attempt

pytestmark = pytest.mark.anyio

PROJECT = "bug-lib"
REPO = "acme/bug-lib"
RECEIVE_PACK = r"^/git/acme/bug-lib\.git/git-receive-pack$"
UPLOAD_PACK = r"^/git/acme/bug-lib\.git/git-upload-pack$"
PULLS = r"^/repos/acme/bug-lib/pulls$"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
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


def _config(forge: Forge, tmp_path: Path) -> GreenloopConfig:
    return config_for(forge, tmp_path, [PROJECT])


async def _one_attempt(ctx: ReconcilerContext) -> Attempt:
    return await one_attempt(ctx, PROJECT)


def _step_index(script: Path, tool: str) -> int:
    steps = json.loads(script.read_text(encoding="utf-8"))["steps"]
    return next(i for i, s in enumerate(steps) if s["tool"] == tool)


def _matching(rows: list[dict[str, Any]], pattern: str, method: str = "POST") -> list[dict[str, Any]]:
    return [r for r in rows if r["method"] == method and re.search(pattern, r["path"])]


async def _assert_one_pr_one_push(forge: Forge, attempt: Attempt) -> None:
    assert attempt.status == "pr_open", (attempt.status, attempt.stop_reason)
    assert attempt.branch is not None
    pulls = pulls_on_branch(forge, REPO, attempt.branch)
    assert len(pulls) == 1, "no duplicate pull request"
    assert attempt.pr_number == pulls[0].number
    pushes = [r for r in _matching(await forge_requests(forge), RECEIVE_PACK) if r["status"] == 200 and not r["fault"]]
    assert len(pushes) == 1, f"no duplicate push: {pushes!r}"


async def test_a_clone_cut_off_mid_reply_is_retried_by_the_next_tool_call_and_the_attempt_opens_one_pr(
    forge: Forge, tmp_path: Path
) -> None:
    async with open_runtime(
        _config(forge, tmp_path), backend_for=scripted(SCRIPTS_DIR / f"{PROJECT}.json"), heartbeat_seconds=1.0
    ) as ctx:
        await arm_fault(forge, UPLOAD_PACK, "drop", count=1, method="POST")
        attempt = await _one_attempt(ctx)

        dropped = [r for r in _matching(await forge_requests(forge), UPLOAD_PACK) if r["fault"] == "drop"]
        assert len(dropped) == 1, "the clone was cut off once"
        await _assert_one_pr_one_push(forge, attempt)


@pytest.mark.parametrize(
    ("path_regex", "kind", "tool"),
    [
        pytest.param(RECEIVE_PACK, "drop", "commit_and_push", id="push-dropped"),
        pytest.param(RECEIVE_PACK, "500", "commit_and_push", id="push-500"),
        pytest.param(PULLS, "502", "create_pull_request", id="pull-request-502"),
    ],
)
async def test_a_write_the_forge_failed_is_done_once_by_the_next_call_without_a_second_commit_or_pr(
    forge: Forge, tmp_path: Path, path_regex: str, kind: str, tool: str
) -> None:
    # The model calls the failed tool again, as a model does after a tool error (the scripts never fail).
    script = write_script(SCRIPTS_DIR / f"{PROJECT}.json", tmp_path / "scripts", twice(tool))
    async with open_runtime(_config(forge, tmp_path), backend_for=scripted(script), heartbeat_seconds=1.0) as ctx:
        await arm_fault(forge, path_regex, kind, count=1, method="POST")
        attempt = await _one_attempt(ctx)

        faulted = [r for r in _matching(await forge_requests(forge), path_regex) if r["fault"] == kind]
        assert len(faulted) == 1, "the write failed once"
        await _assert_one_pr_one_push(forge, attempt)
        assert attempt.branch is not None
        commits = await branch_commits(forge, REPO, attempt.branch)
        assert len(commits) == 1, f"one fix commit on the branch: {commits!r}"


@pytest.mark.parametrize(
    "before_tool",
    [
        pytest.param("commit_and_push", id="before-the-push"),
        pytest.param("create_pull_request", id="before-the-pull-request"),
    ],
)
async def test_the_installation_token_expiring_mid_attempt_is_refreshed_and_the_attempt_goes_on(
    forge: Forge, tmp_path: Path, before_tool: str
) -> None:
    script = SCRIPTS_DIR / f"{PROJECT}.json"
    at = _step_index(script, before_tool)
    expired: list[int] = []

    async def expire_tokens(n: int) -> None:
        if n == at:  # the model is about to ask for `before_tool`: every installation token dies now
            answer = await forge_control(forge, "POST", "/_forge/tokens/expire", {"all_installation_tokens": True})
            expired.append(answer["expired"])

    async with open_runtime(
        _config(forge, tmp_path), backend_for=scripted(script, expire_tokens), heartbeat_seconds=1.0
    ) as ctx:
        attempt = await _one_attempt(ctx)

        assert expired and expired[0] >= 1, "the hook expired the attempt's token"
        rows = await forge_requests(forge)
        assert any(r["status"] == 401 for r in rows), "an expired token was presented"
        await _assert_one_pr_one_push(forge, attempt)
