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
from reconciler.store.engine import SessionFactory

pytestmark = pytest.mark.anyio

PROJECT = "bug-lib"


@pytest.mark.timeout(300)
async def test_a_manual_run_is_an_attempt_and_the_next_pass_starts_no_second_one(tmp_path: Path) -> None:
    async with forge_for(tmp_path / "forge", [PROJECT]) as forge:
        config = e2e_config(forge, [PROJECT], database_url=sqlite_url(tmp_path / "g.db"), workspace_dir=tmp_path / "ws")
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


async def test_a_manual_run_that_does_not_end_normally_is_failed_and_its_failure_is_then_handled(
    sessions: SessionFactory,
) -> None:
    from agent.types import AttemptTask
    from policy.config import GreenloopConfig, ProjectConfig
    from reconciler.context import ReconcilerContext
    from reconciler.manual_run import ManualRunRefused, StoreRecorder
    from reconciler.metrics import Metrics
    from reconciler.store.attempts import new_attempt_id

    project = ProjectConfig(name="alpha", repo="acme/alpha")
    ctx = ReconcilerContext(
        config=GreenloopConfig(projects=(project,)), sessions=sessions, forge=None, dispatcher=None, metrics=Metrics()
    )
    task = AttemptTask(project="alpha", job="ci", failing_run_id="77", head_sha="c" * 40)
    recorder = StoreRecorder(ctx, project, new_attempt_id())
    await recorder.started(task)
    [running] = await attempts_of(sessions, "alpha")
    assert (running.id, running.status) == (recorder.attempt_id, "running")
    await recorder.finished(None)  # e.g. Ctrl-C during the model call
    trail = await transitions_of(sessions, recorder.attempt_id)
    assert trail[-1] == ("running", "failed", "manual_run_interrupted")
    # The same failure again: handled already, refused before any model call.
    with pytest.raises(ManualRunRefused, match="already handled this failure"):
        await StoreRecorder(ctx, project, new_attempt_id()).started(task)
