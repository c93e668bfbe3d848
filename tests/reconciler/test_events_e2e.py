"""End to end, events only: the forge's signed webhooks and `greenloop report` wake the reconciler, no pass is
run by hand or by a schedule.

The reconciler's API is served on loopback (woken through its `Runner`) and the forge's App webhook points at
it before the fixture projects are pushed. bug-lib's red CI run reaches the reconciler only as a signed
`workflow_run` delivery; cron-report has no workflow at all: its cron host runs `greenloop report --job nightly
-- python report.py`, the command fails, the posted log reaches the agent through `get_job_logs`, and the
scripted model opens the fix from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_support import APP_PERMISSIONS, SCRIPTS_DIR, attempts_of, e2e_config, pulls_of, sqlite_url
from pydantic import SecretStr

from fixtures.demo_events import point_webhook, run_cron, serve_api, webhook_secret
from fixtures.forge import run_forge
from fixtures.forge.projects import load_fixture_project
from fixtures.projects.catalog import PROJECTS_DIR, load_project
from policy.types import AttemptStatus
from reconciler.runner import Runner
from reconciler.runtime import open_runtime, scripted_backends
from reconciler.store.audit import tool_calls
from reconciler.store.passes import recent_passes

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.timeout(300)
async def test_red_runs_reach_the_reconciler_by_webhook_and_a_cron_jobs_posted_log_reaches_the_agent(
    tmp_path: Path,
) -> None:
    async with run_forge(tmp_path / "forge", projects=[], app_permissions=APP_PERMISSIONS) as forge:
        secret = webhook_secret()
        base = e2e_config(
            forge,
            ["bug-lib", "cron-report"],
            database_url=sqlite_url(tmp_path / "greenloop.db"),
            workspace_dir=tmp_path / "workspaces",
            server={"interval_seconds": 3600},
        )
        config = base.model_copy(update={"forge": base.forge.model_copy(update={"webhook_secret": SecretStr(secret)})})
        backends = scripted_backends(str(SCRIPTS_DIR))
        async with (
            open_runtime(config, backend_for=backends, heartbeat_seconds=2.0) as ctx,
            Runner(ctx) as runner,
            serve_api(ctx, runner) as api,
        ):
            assert ctx.dispatcher is not None
            point_webhook(forge, api, secret)
            await forge.load_project(load_fixture_project(PROJECTS_DIR, "bug-lib"))
            await forge.load_project(load_fixture_project(PROJECTS_DIR, "cron-report"))
            await forge.wait_idle(60)
            await runner.wait_idle()

            # bug-lib: the red run arrived as a signed delivery, and its event pass started the attempt.
            accepted = [d for d in forge.hooks.deliveries if d.event == "workflow_run" and d.status_code == 202]
            assert any(json.loads(d.body)["workflow_run"]["conclusion"] == "failure" for d in accepted)
            [bug] = await attempts_of(ctx.sessions, "bug-lib")
            assert await attempts_of(ctx.sessions, "cron-report") == []  # nothing told it yet: no Actions

            # cron-report: the cron host runs the job through the reporter; it fails and is posted.
            cron = await run_cron(forge, load_project("cron-report"), api, tmp_path)
            assert cron.exit_code == 1
            assert "Invalid isoformat string" in cron.output  # streamed through unchanged
            await runner.wait_idle()
            [attempt] = await attempts_of(ctx.sessions, "cron-report")
            await ctx.dispatcher.wait_idle(120)

            passes = await recent_passes(ctx.sessions, limit=100)
            assert passes and {p.trigger for p in passes} == {"event"}  # no schedule, no pass by hand

            [attempt] = await attempts_of(ctx.sessions, "cron-report")
            assert attempt.status == AttemptStatus.PR_OPEN.value, (attempt.status, attempt.stop_reason)
            # The agent read the posted log through get_job_logs (the run id is the reporter's string id).
            calls = [c for c in await tool_calls(ctx.sessions) if c.project == "cron-report"]
            logs = [c for c in calls if c.tool == "get_job_logs"]
            assert logs and logs[0].outcome == "ok"
            assert attempt.run_id in logs[0].arguments and not attempt.run_id.isdigit()
            assert "Invalid isoformat string: '01/11/2026'" in (attempt.transcript or "")
            # Its first message had the culprit range from its reported runs: only a red one, so it says so.
            assert f"First red run: run {attempt.run_id} at " in (attempt.transcript or "")
            assert "no green run of 'nightly' among its last" in (attempt.transcript or "")
            [pull] = pulls_of(forge, "acme/cron-report")
            assert pull.state == "open" and not pull.merged
            assert bug.project == "bug-lib"
