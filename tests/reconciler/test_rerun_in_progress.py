"""A failed run followed by a newer run of the same job still going: red, reason `rerun_in_progress`, no attempt.

Through the real pass behind `POST /debug/reconcile` (the summary `greenloop reconcile --json` prints too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest

from policy.config import GreenloopConfig, ProjectConfig
from reconciler.api import build_api
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.reconcile import RERUN_IN_PROGRESS
from reconciler.runner import reconcile
from reconciler.store import attempts as attempt_store
from reconciler.store.engine import SessionFactory
from reconciler.summary import RunSummary

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def ctx(sessions: SessionFactory) -> ReconcilerContext:
    config = GreenloopConfig(projects=(ProjectConfig(name="alpha", repo="acme/alpha"),))
    return ReconcilerContext(config=config, sessions=sessions, forge=None, dispatcher=None, metrics=Metrics())


@asynccontextmanager
async def api_client(ctx: ReconcilerContext) -> AsyncIterator[httpx2.AsyncClient]:
    # No event passes: each pass here is the test's own debug pass (a woken pass would race it).
    app = build_api(ctx, api_token=TOKEN, reconcile_fn=reconcile, enqueue=lambda _key: None)
    transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx2.AsyncClient(
        transport=transport, base_url="http://testserver", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as http:
        yield http


def _run(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "project": "alpha",
        "job": "nightly",
        "run_id": "1001",
        "status": "completed",
        "conclusion": "failure",
        "head_sha": "a" * 40,
        "triggered_by": "cron",
        "event": "schedule",
        "commit_message": "bump deps",
        "run_attempt": 1,
        "log_text": "Traceback ...\nAssertionError",
        "created_at": "2026-01-01T00:00:00Z",
    }
    return body | overrides


async def _pass(http: httpx2.AsyncClient) -> RunSummary:
    r = await http.post("/debug/reconcile", json={"repos": ["alpha"]})
    assert r.status_code == 200, r.text
    return RunSummary.model_validate(r.json())


async def test_a_red_job_with_its_rerun_in_progress_is_red_with_a_reason_and_starts_nothing(
    ctx: ReconcilerContext,
) -> None:
    async with api_client(ctx) as http:
        assert (await http.post("/runs", json=_run())).status_code == 201
        rerun = _run(run_attempt=2, status="in_progress", conclusion=None, log_text=None)
        assert (await http.post("/runs", json=rerun)).status_code == 201

        summary = await _pass(http)
        assert summary.projects_red == 1
        assert [(r.job, r.run_id, r.decision, r.reason) for r in summary.red] == [
            ("nightly", "1001", "skip", RERUN_IN_PROGRESS)
        ]
        assert summary.skips == {RERUN_IN_PROGRESS: 1}
        assert summary.attempts_started == []
        assert await attempt_store.active_attempts(ctx.sessions, "alpha") == []

        # The re-run fails too: now the pass decides on it (here: start an attempt).
        assert (await http.post("/runs", json=_run(run_attempt=2))).status_code in (200, 201)
        after = await _pass(http)
    assert [(r.job, r.decision) for r in after.red] == [("nightly", "start")]
    assert RERUN_IN_PROGRESS not in after.skips
    assert len(after.attempts_started) == 1
