"""`greenloop agent run` by hand is recorded as an attempt, so the reconciler does not start a second one.

The manual run replays the fixture script (the scripted model) against the real in-process MCP server and the
local forge; the store then holds its attempt (`running` with reason `manual_run`, then `pr_open` with the
pull request the forge shows), the next pass skips the project (`active_attempt`) instead of starting another
attempt on the same failure, and a second manual run is refused before any model call.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from e2e_support import SCRIPTS_DIR, attempts_of, e2e_config, forge_for, pulls_of, sqlite_url, transitions_of

from reconciler.manual_run import manual_agent_run
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime

pytestmark = pytest.mark.anyio

PROJECT = "bug-lib"


@pytest.mark.timeout(300)
async def test_a_manual_run_is_an_attempt_and_the_next_pass_starts_no_second_one(tmp_path: Path) -> None:
    async with forge_for(tmp_path / "forge", [PROJECT]) as forge:
        config = e2e_config(
            forge, [PROJECT], database_url=sqlite_url(tmp_path / "g.db"), workspace_dir=tmp_path / "ws"
        )
        script = f"scripted:{SCRIPTS_DIR / f'{PROJECT}.json'}"
        out = io.StringIO()
        code = await manual_agent_run(config, PROJECT, "test", script, env={}, out=out)
        assert code == 0, out.getvalue()

        async with open_runtime(config, backend_for=None) as ctx:
            [attempt] = await attempts_of(ctx.sessions, PROJECT)
            trail = await transitions_of(ctx.sessions, attempt.id)
            summary = await reconcile(ctx, trigger="cli")
            after = await attempts_of(ctx.sessions, PROJECT)

        again = io.StringIO()
        refused = await manual_agent_run(config, PROJECT, "test", script, env={}, out=again)
        pulls = pulls_of(forge, f"acme/{PROJECT}")

    assert trail[:3] == [
        (None, "pending", "started"),
        ("pending", "running", "manual_run"),
        ("running", "pr_open", "pr_opened"),
    ]
    assert attempt.branch == f"greenloop/fix/test-{attempt.id}"
    assert attempt.pr_number is not None and [p.number for p in pulls] == [attempt.pr_number]
    assert attempt.turns > 0 and attempt.transcript
    # The pass sees the manual run's attempt: no second attempt on the same failure.
    assert summary.attempts_started == []
    assert [a.id for a in after] == [attempt.id]
    assert refused == 2
    assert "manual run refused" in again.getvalue() or "has an active attempt" in again.getvalue()
    assert "attempt on bug-lib/test" not in again.getvalue()  # refused before the model was called
