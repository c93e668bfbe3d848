"""The pass's shape: the verb `reconcile_project`, the status table, and the runner (passes, events, requeues).

No forge: projects are red through reported runs (`POST /runs`), as an outside scheduler would report them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from policy.config import Backoff, GreenloopConfig, ProjectConfig
from policy.types import ACTIVE_STATUSES, AttemptStatus
from reconciler.advance import ADVANCE
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.reconcile import Result, reconcile_project
from reconciler.runner import Runner, UnknownProjects
from reconciler.store import attempts as attempt_store
from reconciler.store.engine import SessionFactory
from reconciler.store.passes import recent_passes
from reconciler.store.runs import record_reported_run

pytestmark = pytest.mark.anyio

BACKOFF = Backoff(base_seconds=600.0, factor=2.0, max_seconds=3600.0)


def _ctx(sessions: SessionFactory, names: tuple[str, ...] = ("alpha", "beta", "gamma")) -> ReconcilerContext:
    config = GreenloopConfig(
        projects=tuple(ProjectConfig(name=n, repo=f"acme/{n}", backoff=BACKOFF) for n in names),
    )
    return ReconcilerContext(config=config, sessions=sessions, forge=None, dispatcher=None, metrics=Metrics())


async def _red(ctx: ReconcilerContext, project: str, sha: str, run_id: str = "1") -> None:
    await ctx.ensure_projects()
    await record_reported_run(
        ctx.sessions,
        project=project,
        job="test",
        run_id=run_id,
        source="reported",
        status="completed",
        conclusion="failure",
        head_sha=sha,
        event="schedule",
        created_at=datetime.now(UTC),
    )


async def _failed_attempt(ctx: ReconcilerContext, project: str, sha: str) -> None:
    outcome = await attempt_store.start_attempt(
        ctx.sessions, project=project, job="test", fingerprint=f"fp-{project}-{sha}", run_id="0", head_sha=sha
    )
    assert outcome.attempt_id is not None
    for to in (AttemptStatus.RUNNING, AttemptStatus.FAILED):
        assert await attempt_store.transition(ctx.sessions, outcome.attempt_id, to, reason="test")


def test_the_status_table_covers_every_active_status_and_nothing_else() -> None:
    assert set(ADVANCE) == set(ACTIVE_STATUSES)


async def test_a_backoff_asks_the_runner_to_requeue_at_its_end(sessions: SessionFactory) -> None:
    ctx = _ctx(sessions)
    await _red(ctx, "alpha", "b" * 40)
    await _failed_attempt(ctx, "alpha", "a" * 40)  # one failure just now: back off for 600 s

    result = await reconcile_project(ctx, "alpha")
    assert result.requeue_after is not None
    assert timedelta(0) < result.requeue_after <= timedelta(seconds=600)

    runner = Runner(ctx)
    summary = await runner.run_pass()
    assert [r.reason for r in summary.red] == ["backoff"]
    assert set(runner.requeue_after) == {"alpha"}  # green projects ask for nothing
    assert await attempt_store.active_attempts(sessions) == []


async def test_a_red_project_without_history_starts_an_attempt_and_asks_for_no_requeue(
    sessions: SessionFactory,
) -> None:
    ctx = _ctx(sessions)
    await _red(ctx, "beta", "c" * 40)
    assert await reconcile_project(ctx, "beta") == Result()
    active = await attempt_store.active_attempts(sessions)
    assert [(a.project, a.status) for a in active] == [("beta", "pending")]


async def test_enqueued_keys_are_coalesced_into_one_event_pass(sessions: SessionFactory) -> None:
    ctx = _ctx(sessions)
    await _red(ctx, "gamma", "d" * 40)
    runner = Runner(ctx)
    for key in ("gamma", "alpha", "gamma", "gamma"):
        runner.enqueue(key)
    assert runner.pending == ["gamma", "alpha"]
    with pytest.raises(UnknownProjects):
        runner.enqueue("acme/gamma")  # keys are project names
    async with runner:
        async with asyncio.timeout(60):
            await runner.wait_idle()
    passes = await recent_passes(sessions)
    assert [(p.trigger, p.projects_scanned) for p in passes] == [("event", 2)]
    assert runner.pending == []
    active = await attempt_store.active_attempts(sessions)
    assert [a.project for a in active] == ["gamma"]


async def test_a_requeue_enqueues_the_key_again_while_the_runner_runs(sessions: SessionFactory) -> None:
    ctx = _ctx(sessions)
    runner = Runner(ctx)
    async with runner:
        runner._note_result("beta", Result(requeue_after=timedelta(0)))
        async with asyncio.timeout(60):
            await runner.wait_idle()
    passes = await recent_passes(sessions)
    assert [(p.trigger, p.projects_scanned) for p in passes] == [("event", 1)]


async def test_the_verb_refuses_an_unknown_key(sessions: SessionFactory) -> None:
    with pytest.raises(KeyError):
        await reconcile_project(_ctx(sessions), "nope")


async def test_a_freezing_runner_settles_the_heap_once_after_its_first_full_pass(
    sessions: SessionFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settled: list[int] = []
    monkeypatch.setattr("reconciler.runner.settle_heap", lambda: settled.append(1))
    ctx = _ctx(sessions)
    runner = Runner(ctx, freeze_heap=True)
    await runner.run_pass(repos=["alpha"])
    assert settled == []  # a pass over some keys has not built the caches of every project yet
    await runner.run_pass()
    await runner.run_pass()
    assert settled == [1]
    await Runner(ctx).run_pass()  # the default runner (CLI, tests) never touches the collector
    assert settled == [1]


def test_settle_heap_collects_then_freezes_what_survives() -> None:
    import gc

    from reconciler.runner import settle_heap

    frozen_before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > frozen_before
        assert gc.get_count()[0] < 100  # collected just before freezing
    finally:
        gc.unfreeze()
