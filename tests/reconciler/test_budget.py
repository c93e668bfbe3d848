"""Fleet budgets on real passes: the 80% notice once per window, the cheaper model recorded, and at 100% new
attempts wait (skip `budget`) while a running one is left to finish.

Spending is seeded as a finished attempt of the project `clean` with a cost; no dispatcher runs, so what the
store holds is what the passes did.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from e2e_support import attempts_of, e2e_config, failing_job_runs, forge_for, insert_running_attempt, sqlite_url
from test_notify import _receiver, serve

from fixtures.forge import Forge
from policy.config import AgentSettings, GreenloopConfig, SpendLimits
from policy.gate import failure_fingerprint
from policy.types import AttemptStatus
from reconciler.api import build_api
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime
from reconciler.store import attempts as store
from reconciler.store.engine import SessionFactory
from reconciler.store.projects import sync_projects

pytestmark = pytest.mark.anyio

PROJECTS = ["bug-lib", "clean", "data-job"]
TOKEN = "t" * 40


def _config(
    forge: Forge, tmp_path: Path, hook: str, *, daily: float, clean_daily: float | None = None
) -> GreenloopConfig:
    config = e2e_config(
        forge,
        PROJECTS,
        database_url=sqlite_url(tmp_path / "greenloop.db"),
        workspace_dir=tmp_path / "ws",
        server={"slack_webhook_url": hook},
        projects={
            "bug-lib": {"model": "claude-sonnet-4-6", "fallback_model": "claude-haiku-4-5"},
            "clean": {"daily_cost_usd": clean_daily},
        },
    )
    return config.model_copy(update={"spend": SpendLimits(daily_usd=daily), "agent": AgentSettings()})


async def _spent(sessions: SessionFactory, usd: float) -> None:
    """An attempt of `clean` that ended today having cost `usd`."""
    await sync_projects(sessions, {"clean": "acme/clean"})
    started = await store.start_attempt(
        sessions,
        project="clean",
        job="test",
        fingerprint=failure_fingerprint("clean", "test", "0" * 40),
        run_id="1",
        head_sha="0" * 40,
    )
    assert started.attempt_id is not None
    assert await store.transition(sessions, started.attempt_id, AttemptStatus.FAILED, reason="no_fix", cost_usd=usd)


def _spend_notices(received: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r["body"]) for r in received if "spending" in r["body"]["text"]]


async def test_at_80_percent_one_notice_per_window_and_the_fallback_model_is_recorded(
    tmp_path: Path,
) -> None:
    received: list[dict[str, Any]] = []
    async with serve(_receiver(received)) as base, forge_for(tmp_path / "forge", PROJECTS) as forge:
        config = _config(forge, tmp_path, f"{base}/services/T0/B0/secret", daily=10.0, clean_daily=9.0)
        async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
            await _spent(ctx.sessions, 8.5)
            first = await reconcile(ctx)
            second = await reconcile(ctx)
            metrics = ctx.metrics.render()
            attempts = {a.project: a for a in await attempts_of(ctx.sessions) if a.project != "clean"}
            app = build_api(ctx, api_token=TOKEN)
            async with httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app, client=("127.0.0.1", 50000)),
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as http:
                detail = (await http.get(f"/attempts/{attempts['bug-lib'].id}")).json()
        # A new process on the same store (a restart, another replica) does not announce the window again.
        async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
            await reconcile(ctx)

    notices = sorted(_spend_notices(received))
    assert len(notices) == 2, notices  # the fleet's daily limit and clean's, each once over three passes
    assert "Cost limit fleet_daily: the fleet today spent $8.50 of its $10.00 limit (85%)" in notices[1]
    assert "Cost limit project_daily: project 'clean' today spent $8.50 of its $9.00 limit (94%)" in notices[0]
    assert sorted(s.project for s in first.attempts_started) == ["bug-lib", "data-job"]  # 80% does not stop work
    assert second.attempts_started == []
    # The project with a fallback model starts on it past the notice mark; the other keeps the default.
    assert attempts["bug-lib"].model == "claude-haiku-4-5"
    assert attempts["data-job"].model == AgentSettings().model
    assert detail["model"] == "claude-haiku-4-5"
    assert 'greenloop_spend_usd{limit="fleet_daily"} 8.5' in metrics
    assert 'greenloop_spend_limit_usd{limit="fleet_daily"} 10' in metrics
    assert 'greenloop_spend_notices_total{level="notice",limit="fleet_daily"} 1' in metrics
    assert 'greenloop_spend_usd{limit="project_daily",project="clean"} 8.5' in metrics


async def test_at_100_percent_new_attempts_wait_with_reason_budget_and_a_running_one_is_left_to_finish(
    tmp_path: Path,
) -> None:
    received: list[dict[str, Any]] = []
    async with serve(_receiver(received)) as base, forge_for(tmp_path / "forge", PROJECTS) as forge:
        config = _config(forge, tmp_path, f"{base}/services/T0/B0/secret", daily=10.0)
        async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
            await _spent(ctx.sessions, 10.0)
            run = failing_job_runs(forge, "acme/data-job", "build")[-1]
            running = await insert_running_attempt(
                ctx.sessions,
                project="data-job",
                job="build",
                run_id=str(run.id),
                head_sha=run.head_sha,
                heartbeat_at=datetime.now(UTC),
            )
            summary = await reconcile(ctx)
            after = {a.id: a for a in await attempts_of(ctx.sessions)}

    assert summary.attempts_started == []
    skipped = {r.project: (r.reason, r.detail) for r in summary.red if r.decision == "skip"}
    reason, detail = skipped["bug-lib"]
    assert reason == "budget" and "the fleet today spent $10.00 of its $10.00 limit" in (detail or "")
    assert skipped["data-job"][0] == "active_attempt"
    assert after[running.id].status == AttemptStatus.RUNNING.value  # not stopped: it finishes in its own budget
    notices = _spend_notices(received)
    assert len(notices) == 1 and "New attempts wait" in notices[0]
