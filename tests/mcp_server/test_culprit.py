"""The culprit range against the local forge (its compare endpoint), and the agent's first message built from
it and from earlier attempts: the break commit's files and diff are there, a secret planted in it is not."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.prompt import build_task_message
from agent.types import AttemptTask, EarlierAttempt
from fixtures.forge import load_fixture_project, run_forge
from fixtures.forge.server import DEFAULT_PROJECTS_DIR
from mcp_server.culprit import culprit_range, diff_summary
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from policy.config import ForgeSettings
from policy.redaction import redact

pytestmark = pytest.mark.anyio

PLANTED = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"  # a GitHub token shape, committed by mistake


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def planted(tmp_path: Path) -> AsyncIterator[tuple[Any, ForgeClient]]:
    """bug-lib whose breaking commit also adds a settings file holding a token."""
    projects = tmp_path / "projects"
    shutil.copytree(Path(DEFAULT_PROJECTS_DIR) / "bug-lib", projects / "bug-lib")
    (projects / "bug-lib" / "break" / "settings.py").write_text(f'GITHUB_TOKEN = "{PLANTED}"\n', encoding="utf-8")
    async with run_forge(tmp_path / "forge", projects=[]) as forge:
        await forge.load_project(load_fixture_project(projects, "bug-lib"))
        await forge.wait_idle(60)
        async with (
            GitHubApp.from_settings(forge.forge_settings()) as app,
            ForgeClient(ForgeSettings(api_url=forge.api_url), app) as client,
        ):
            yield forge, client


async def test_the_range_is_the_break_commit_with_its_files_and_a_redacted_diff(
    planted: tuple[Any, ForgeClient],
) -> None:
    _, client = planted
    commits = await client.list_commits("acme/bug-lib", sha="main")
    brk, base = commits[0].sha, commits[1].sha
    found = await culprit_range(client, "acme/bug-lib", "main", "test", redact_text=redact)
    assert found is not None
    assert (found.last_green_sha, found.first_red_sha) == (base, brk)
    assert [c.sha for c in found.commits] == [brk] and found.commits[0].message == commits[0].commit.message
    assert {f.filename for f in found.files} == {"pager/pagination.py", "settings.py"}
    assert "--- pager/pagination.py" in found.diff_summary and "settings.py" in found.diff_summary
    assert PLANTED not in found.model_dump_json() and "[REDACTED" in found.diff_summary

    # The first message carries the range and the earlier attempts, fenced as data, the secret nowhere.
    earlier = EarlierAttempt(
        attempt_id="a1b2c3d4e5f6",
        status="cancelled",
        files=("tests/test_pagination.py",),
        pr_url="https://forge.test/acme/bug-lib/pull/3",
        human_comment="Do not change the tests; the bug is in page_bounds.",
    )
    task = AttemptTask(
        project="bug-lib",
        job="test",
        failing_run_id="7",
        head_sha=brk,
        culprit_range=found,
        earlier_attempts=(earlier,),
    )
    message = build_task_message(task)
    assert f"Last green run of the job: run {found.last_green_run_id} at {base}" in message
    assert f"- {brk[:12]} " in message and "- settings.py (added, +1 -0)" in message
    assert f"ref={base!r}" in message
    assert "<changes>" in message and "<earlier_attempts>" in message
    assert "attempt a1b2c3d4e5f6: cancelled; changed tests/test_pagination.py" in message
    assert "'Do not change the tests; the bug is in page_bounds.'" in message
    assert PLANTED not in message


async def test_a_green_job_has_no_range(planted: tuple[Any, ForgeClient]) -> None:
    _, client = planted
    assert await culprit_range(client, "acme/bug-lib", "main", "no-such-job", redact_text=redact) is None


def test_the_diff_summary_stays_within_its_budget_and_says_what_it_left_out() -> None:
    patches = [(f"f{i}.py", "@@ -1 +1 @@\n" + "+x = 1\n" * 400) for i in range(20)]
    summary = diff_summary(patches, redact, limit=6_000)
    assert len(summary) <= 6_000 + 200
    assert "more file diff(s) not shown" in summary and "(cut; read the file for more)" in summary
    secret = diff_summary([("s.py", f'@@ -0,0 +1 @@\n+TOKEN = "{PLANTED}"\n')], redact, limit=6_000)
    assert PLANTED not in secret
