"""Memory across attempts, end to end: a new attempt's first message tells the model what changed since the job
was green (the culprit range) and what an earlier attempt on the job did: the files it wrote, why it stopped,
and what the human wrote when closing its pull request, with a secret in that comment redacted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from e2e_support import SCRIPTS_DIR, GitPusher, attempts_of, e2e_config, forge_for, settle, sqlite_url

from fixtures.forge import Forge
from policy.branches import fix_branch_name
from policy.gate import failure_fingerprint
from policy.types import AttemptStatus
from reconciler.runtime import open_runtime, scripted_backends
from reconciler.store import attempts as store
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt, McpToolCall, utcnow
from reconciler.store.projects import sync_projects

pytestmark = pytest.mark.anyio

PLANTED = "ghp_" + "Q1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8"
HUMAN = f"Wrong fix: the tests are right, the bug is in page_bounds. (my token was {PLANTED}, ignore it)"
EARLIER = "e0e1e2e3e4e5"


async def _closed_pull_request(forge: Forge, tmp_path: Path) -> tuple[int, str]:
    """A fix branch of the earlier attempt with a pull request a human commented on and closed."""
    branch = fix_branch_name("test", EARLIER)
    await GitPusher(forge, forge.admin_token, tmp_path).push(
        "acme/bug-lib", {"tests/test_pagination.py": "# weakened\n"}, "tests: expect one item less", branch=branch
    )
    headers = {"Authorization": f"token {forge.admin_token}"}
    async with httpx2.AsyncClient(base_url=forge.api_url, headers=headers) as http:
        made = await http.post(
            "/repos/acme/bug-lib/pulls", json={"head": branch, "base": "main", "title": "fix: tests", "body": "x"}
        )
        assert made.status_code == 201, made.text
        number, url = made.json()["number"], made.json()["html_url"]
        said = await http.post(f"/repos/acme/bug-lib/issues/{number}/comments", json={"body": HUMAN})
        assert said.status_code == 201, said.text
        closed = await http.patch(f"/repos/acme/bug-lib/pulls/{number}", json={"state": "closed"})
        assert closed.status_code == 200, closed.text
    return number, url


async def _earlier_attempt(sessions: SessionFactory, number: int, url: str) -> None:
    """The earlier attempt as the store holds it: it wrote a test file, its PR was closed (cancelled)."""
    await sync_projects(sessions, {"bug-lib": "acme/bug-lib"})
    async with sessions() as session, session.begin():
        now = utcnow()
        fingerprint = failure_fingerprint("bug-lib", "test", "e" * 40)
        session.add(
            Attempt(
                id=EARLIER,
                project="bug-lib",
                job="test",
                fingerprint=fingerprint,
                run_id="1",
                head_sha="e" * 40,
                status=AttemptStatus.PENDING.value,
                created_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        for path, outcome in (("tests/test_pagination.py", "ok"), (".github/workflows/ci.yml", "refused")):
            session.add(
                McpToolCall(
                    attempt_id=EARLIER,
                    project="bug-lib",
                    client="agent",
                    tool="write_repo_file",
                    arguments=json.dumps({"path": path, "content": "x"}),
                    outcome=outcome,
                    message=None,
                    result_bytes=0,
                    duration_ms=1.0,
                    created_at=now,
                )
            )
    assert await store.transition(
        sessions,
        EARLIER,
        AttemptStatus.CANCELLED,
        reason="pr_closed",
        pr_number=number,
        pr_url=url,
        stop_reason="succeeded_pr",
    )


def _first_message(transcript: Any) -> str:
    for event in transcript:
        if event.get("kind") == "request":
            first = event["new_messages"][0]
            return "".join(block.get("text", "") for block in first["content"])
    raise AssertionError("no request in the transcript")


async def test_the_first_message_carries_the_culprit_range_and_the_earlier_attempt(tmp_path: Path) -> None:
    async with forge_for(tmp_path / "forge", ["bug-lib"]) as forge:
        number, url = await _closed_pull_request(forge, tmp_path)
        config = e2e_config(
            forge, ["bug-lib"], database_url=sqlite_url(tmp_path / "greenloop.db"), workspace_dir=tmp_path / "ws"
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            await _earlier_attempt(ctx.sessions, number, url)
            await settle(ctx, forge, deadline_seconds=90)
            [attempt] = [a for a in await attempts_of(ctx.sessions, "bug-lib") if a.id != EARLIER]
    assert attempt.transcript is not None
    transcript = json.loads(attempt.transcript)
    message = _first_message(transcript)
    # The culprit range: the break commit between the last green and the first red run.
    assert "Last green run of the job: run " in message and "pager/pagination.py (modified" in message
    assert "Diff (the start of each file's change):" in message and "ref='" in message
    # The earlier attempt: what it wrote (not what was refused), why it stopped, the human's words.
    line = f"attempt {EARLIER}: cancelled (succeeded_pr); changed tests/test_pagination.py; pull request {url}"
    assert line in message
    assert ".github/workflows/ci.yml" not in message
    assert "the tests are right, the bug is in page_bounds" in message
    assert PLANTED not in json.dumps(transcript) and "[REDACTED" in message
