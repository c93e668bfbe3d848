"""The store's queries for fleet budgets and memory across attempts, on SQLite and PostgreSQL: the cost of the
current windows per project, a flag claimed once per value, and the earlier attempts on a job with the files
they wrote."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from policy.types import AttemptStatus
from reconciler.store import attempts as store
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt, McpToolCall
from reconciler.store.state import claim_flag

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


async def _attempt(
    sessions: SessionFactory, attempt_id: str, *, project: str, job: str, at: datetime, cost: float = 0.0
) -> None:
    async with sessions() as session, session.begin():
        session.add(
            Attempt(
                id=attempt_id,
                project=project,
                job=job,
                fingerprint=f"fp-{attempt_id}",
                run_id="1",
                head_sha="a" * 40,
                status=AttemptStatus.FAILED.value,
                cost_usd=cost,
                created_at=at,
                updated_at=at,
            )
        )


async def test_window_costs_sum_today_and_this_month_per_project(
    sessions: SessionFactory, add_project: Callable[[str], Awaitable[str]]
) -> None:
    for name in ("alpha", "beta"):
        await add_project(name)
    await _attempt(sessions, "a1", project="alpha", job="test", at=NOW - timedelta(hours=1), cost=1.5)
    await _attempt(sessions, "a2", project="alpha", job="test", at=NOW - timedelta(days=1), cost=2.0)  # this month
    await _attempt(sessions, "a3", project="alpha", job="test", at=NOW - timedelta(days=40), cost=9.0)  # last month
    await _attempt(sessions, "b1", project="beta", job="test", at=NOW - timedelta(minutes=5), cost=0.25)
    day = NOW.replace(hour=0)
    costs = await store.window_costs(sessions, day_start=day, month_start=day.replace(day=1))
    assert costs == {"alpha": (1.5, 3.5), "beta": (0.25, 0.25)}


async def test_a_flag_value_is_claimed_once(sessions: SessionFactory) -> None:
    assert await claim_flag(sessions, "spend:fleet_daily", "2026-12-04:notice") is True
    assert await claim_flag(sessions, "spend:fleet_daily", "2026-12-04:notice") is False
    assert await claim_flag(sessions, "spend:fleet_daily", "2026-12-04:exhausted") is True
    assert await claim_flag(sessions, "spend:fleet_daily", "2026-12-05:notice") is True


async def test_earlier_attempts_on_a_job_come_newest_first_with_the_files_they_wrote(
    sessions: SessionFactory, project: str
) -> None:
    for i, at in enumerate((NOW - timedelta(hours=3), NOW - timedelta(hours=2), NOW - timedelta(hours=1), NOW)):
        await _attempt(sessions, f"t{i}", project=project, job="test", at=at)
    await _attempt(sessions, "other", project=project, job="lint", at=NOW)
    async with sessions() as session, session.begin():
        for attempt_id, path, outcome in (
            ("t1", "src/a.py", "ok"),
            ("t1", "src/b.py", "ok"),
            ("t1", "src/a.py", "ok"),
            ("t1", ".github/workflows/ci.yml", "refused"),
            ("t2", "src/c.py", "ok"),
        ):
            session.add(
                McpToolCall(
                    attempt_id=attempt_id,
                    project=project,
                    client="agent",
                    tool="write_repo_file",
                    arguments=json.dumps({"path": path, "content": "x" * 10}),
                    outcome=outcome,
                    message=None,
                    result_bytes=0,
                    duration_ms=1.0,
                    created_at=NOW,
                )
            )
    rows = await store.earlier_on_job(sessions, project, "test", exclude="t3", limit=2)
    assert [(r.attempt_id, r.files) for r in rows] == [("t2", ("src/c.py",)), ("t1", ("src/a.py", "src/b.py"))]
    assert [r.attempt_id for r in await store.earlier_on_job(sessions, project, "test", exclude="t3")] == [
        "t2",
        "t1",
        "t0",
    ]
