"""Projects, observed runs and pass summaries in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.errors import StoreError
from reconciler.store import (
    JobRun,
    ProjectState,
    get_project,
    get_projects,
    latest_runs,
    list_projects,
    project_states,
    recent_passes,
    record_pass,
    record_run,
    reset_escalation,
    set_paused,
    sync_projects,
)
from reconciler.store.engine import SessionFactory

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)


async def test_sync_projects_inserts_updates_and_is_idempotent(sessions: SessionFactory) -> None:
    await sync_projects(sessions, {"alpha": "acme/alpha", "beta": "acme/beta"})
    before = await get_project(sessions, "alpha")
    await sync_projects(sessions, {"alpha": "acme/alpha", "beta": "acme/beta-renamed"})

    rows = await list_projects(sessions)
    assert [(p.name, p.repo, p.paused) for p in rows] == [
        ("alpha", "acme/alpha", False),
        ("beta", "acme/beta-renamed", False),
    ]
    after = await get_project(sessions, "alpha")
    assert before is not None and after is not None and after.updated_at == before.updated_at


async def test_concurrent_project_syncs_do_not_conflict(sessions: SessionFactory) -> None:
    repos = {f"p{i}": f"acme/p{i}" for i in range(5)}
    await asyncio.gather(*(sync_projects(sessions, repos) for _ in range(6)))
    assert len(await list_projects(sessions)) == 5


async def test_project_state_updates(sessions: SessionFactory, project: str) -> None:
    assert await set_paused(sessions, project, True)
    assert await reset_escalation(sessions, project, at=T0)

    row = await get_project(sessions, project)
    assert row is not None
    assert row.paused is True
    assert row.escalation_reset_at == T0
    assert list(await get_projects(sessions, [project, "ghost"])) == [project]
    assert not await set_paused(sessions, "ghost", True)
    assert await get_project(sessions, "ghost") is None


async def _record(sessions: SessionFactory, project: str, run_id: str, **kw: object) -> JobRun:
    fields: dict[str, object] = {
        "job": "nightly",
        "source": "actions",
        "status": "completed",
        "conclusion": "failure",
        "head_sha": "a" * 40,
        "event": "schedule",
        "created_at": T0,
    }
    fields.update(kw)
    return await record_run(sessions, project=project, run_id=run_id, **fields)  # type: ignore[arg-type]


async def test_record_run_is_idempotent_and_keeps_a_stored_log(sessions: SessionFactory, project: str) -> None:
    first = await _record(sessions, project, "42", status="in_progress", conclusion=None, log_text="line 1")
    second = await _record(sessions, project, "42", status="completed", conclusion="failure")

    assert first.id == second.id
    runs = await latest_runs(sessions, project)
    assert len(runs) == 1
    assert (runs[0].status, runs[0].conclusion, runs[0].log_text) == ("completed", "failure", "line 1")
    assert runs[0].created_at == T0 and runs[0].observed_at >= runs[0].created_at


async def test_a_rerun_attempt_and_another_source_are_separate_runs(sessions: SessionFactory, project: str) -> None:
    await _record(sessions, project, "42")
    await _record(sessions, project, "42", run_attempt=2, created_at=T0 + timedelta(minutes=5))
    await _record(sessions, project, "42", source="reported", job="cron-backup", created_at=T0 + timedelta(hours=1))

    runs = await latest_runs(sessions, project)
    assert [(r.job, r.source, r.run_attempt) for r in runs] == [
        ("cron-backup", "reported", 1),
        ("nightly", "actions", 2),
        ("nightly", "actions", 1),
    ]
    assert [r.run_attempt for r in await latest_runs(sessions, project, job="nightly", limit=1)] == [2]


@pytest.mark.parametrize(
    ("project_name", "source"),
    [
        pytest.param("ghost", "actions", id="unknown-project"),
        pytest.param("alpha", "webhook", id="unknown-source"),
    ],
)
async def test_record_run_refuses_rows_the_schema_forbids(
    sessions: SessionFactory, project: str, project_name: str, source: str
) -> None:
    with pytest.raises(StoreError):
        await _record(sessions, project_name, "1", source=source)
    assert await latest_runs(sessions, project) == []


async def test_record_pass_derives_duration_and_lists_newest_first(sessions: SessionFactory) -> None:
    for i in range(3):
        start = T0 + timedelta(minutes=5 * i)
        await record_pass(
            sessions,
            trigger="schedule",
            started_at=start,
            finished_at=start + timedelta(seconds=2, milliseconds=500),
            projects_scanned=4,
            projects_red=i,
            attempts_started=1,
            attempts_deduplicated=0,
            summary='{"ok": true}',
        )

    passes = await recent_passes(sessions, limit=2)
    assert [p.projects_red for p in passes] == [2, 1]
    assert passes[0].duration_ms == pytest.approx(2500.0)
    assert passes[0].summary == '{"ok": true}'


async def test_project_states_lists_only_paused_or_reset_projects(sessions: SessionFactory) -> None:
    await sync_projects(sessions, {"alpha": "acme/alpha", "beta": "acme/beta", "gamma": "acme/gamma"})
    assert await set_paused(sessions, "alpha", True)
    assert await reset_escalation(sessions, "beta", at=T0)

    states = await project_states(sessions, ["alpha", "beta", "gamma", "ghost"])
    assert states == {
        "alpha": ProjectState(name="alpha", paused=True, escalation_reset_at=None),
        "beta": ProjectState(name="beta", paused=False, escalation_reset_at=T0),
    }
    assert await project_states(sessions, ["gamma"]) == {}  # as a new project: unpaused, never reset
    assert await set_paused(sessions, "alpha", False)
    assert list(await project_states(sessions, ["alpha", "beta"])) == ["beta"]
