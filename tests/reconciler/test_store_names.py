"""The per-pass reads answer for exactly the names asked, whether the list goes to SQL or is applied after."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from policy.types import AttemptStatus
from reconciler.store import attempts as attempt_store
from reconciler.store.engine import SessionFactory
from reconciler.store.names import IN_LIST_MAX
from reconciler.store.projects import ProjectState, project_states, reset_escalation, set_paused, sync_projects
from reconciler.store.runs import latest_reported_runs, record_reported_run

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
NAMES = [f"p{i:03d}" for i in range(IN_LIST_MAX + 20)]


async def _attempt(sessions: SessionFactory, project: str, *, fail: bool) -> str:
    outcome = await attempt_store.start_attempt(
        sessions, project=project, job="test", fingerprint=f"fp-{project}-{fail}", run_id="0", head_sha="a" * 40
    )
    assert outcome.started and outcome.attempt_id is not None
    if fail:
        for to in (AttemptStatus.RUNNING, AttemptStatus.FAILED):
            assert await attempt_store.transition(sessions, outcome.attempt_id, to, reason="test")
    return outcome.attempt_id


@pytest.mark.parametrize("asked", [NAMES[1:], NAMES[1:10]], ids=["long list", "short list"])
async def test_each_per_pass_read_returns_only_the_names_asked(sessions: SessionFactory, asked: list[str]) -> None:
    await sync_projects(sessions, {n: f"acme/{n}" for n in NAMES})
    outside, inside = NAMES[0], NAMES[5]  # `outside` is never asked for, `inside` always
    for name in (outside, inside):
        assert await set_paused(sessions, name, True)
        assert await reset_escalation(sessions, name, at=T0)
        await _attempt(sessions, name, fail=True)
        await record_reported_run(
            sessions,
            project=name,
            job="test",
            run_id="1",
            source="reported",
            status="completed",
            conclusion="failure",
            head_sha="b" * 40,
            event="schedule",
            created_at=T0,
        )
    active_outside = await _attempt(sessions, outside, fail=False)
    active_inside = await _attempt(sessions, inside, fail=False)

    assert await project_states(sessions, asked) == {inside: ProjectState(inside, True, T0)}
    active = await attempt_store.active_by_project(sessions, asked)
    assert {p: a.id for p, a in active.items()} == {inside: active_inside}
    assert active_outside not in {a.id for a in active.values()}
    assert list(await attempt_store.last_failures(sessions, asked)) == [inside]
    assert [(r.project, r.run_id) for r in await latest_reported_runs(sessions, asked)] == [(inside, "1")]


@pytest.mark.parametrize("asked", [NAMES[1:], NAMES[1:10]], ids=["long list", "short list"])
async def test_ended_attempts_are_the_newest_of_the_names_asked_whatever_the_limit(
    sessions: SessionFactory, asked: list[str]
) -> None:
    await sync_projects(sessions, {n: f"acme/{n}" for n in NAMES})
    ended: dict[str, str] = {}
    for name in (NAMES[5], NAMES[0], NAMES[6]):  # oldest first; NAMES[0] is never asked for
        outcome = await attempt_store.start_attempt(
            sessions, project=name, job="test", fingerprint=f"fp-{name}", run_id="0", head_sha="a" * 40
        )
        assert outcome.attempt_id is not None
        assert await attempt_store.transition(sessions, outcome.attempt_id, AttemptStatus.RUNNING, reason="test")
        assert await attempt_store.transition(
            sessions, outcome.attempt_id, AttemptStatus.FAILED, reason="test", branch=f"greenloop/fix-{name}"
        )
        ended[name] = outcome.attempt_id
    since = datetime(2000, 1, 1, tzinfo=UTC)

    async def newest(limit: int) -> list[str]:
        rows = await attempt_store.ended_without_pull_request(sessions, asked, since=since, limit=limit)
        return [a.id for a in rows]

    assert await newest(1) == [ended[NAMES[6]]]
    # The newest two of every project include NAMES[0]'s: the limit must not hide NAMES[5]'s.
    assert await newest(2) == [ended[NAMES[6]], ended[NAMES[5]]]
    assert await newest(3) == [ended[NAMES[6]], ended[NAMES[5]]]
    assert await newest(50) == [ended[NAMES[6]], ended[NAMES[5]]]
