"""Passes without an agent: dry runs, attempts whose worker died, and reconcilers racing on one database.

One forge (red projects, plus `clean`) serves the module; it is only read, apart from fix branches and pull
requests that name an attempt of one test. Every test gets a store of its own. No dispatcher runs, so an
attempt a pass starts stays `pending`: what the store holds is exactly what the passes did.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from e2e_support import (
    POSTGRES_ENV,
    GitPusher,
    attempts_of,
    e2e_config,
    failing_job_runs,
    forge_for,
    insert_running_attempt,
    pass_rows,
    postgres_database,
    pulls_on_branch,
    set_heartbeat,
    sqlite_url,
    transitions_of,
)

from fixtures.forge import Forge
from mcp_server.checks import head_checks
from policy.branches import fix_branch_name
from policy.config import GreenloopConfig
from policy.types import AttemptStatus
from reconciler.runner import UnknownProjects, reconcile
from reconciler.runtime import open_runtime
from reconciler.service import leased_reconcile
from reconciler.store import attempts as store

pytestmark = pytest.mark.anyio

PROJECTS = ["bug-lib", "clean", "data-job", "protected-workflow", "stale-import"]
RED = {"bug-lib": "test", "data-job": "build", "protected-workflow": "test", "stale-import": "test"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), PROJECTS) as running:
        yield running


def _config(forge: Forge, tmp_path: Path, database_url: str, **server: object) -> GreenloopConfig:
    return e2e_config(forge, PROJECTS, database_url=database_url, workspace_dir=tmp_path / "ws", server=server)


def _red_run(forge: Forge, project: str) -> tuple[str, str]:
    """(run id, head sha) of the project's red run on main."""
    run = failing_job_runs(forge, f"acme/{project}", RED[project])[-1]
    return str(run.id), run.head_sha


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty store: a SQLite file, or a throwaway PostgreSQL database (skipped without the URL)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "greenloop.db")
        return
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"{POSTGRES_ENV} is unset: e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    async with postgres_database(admin_url) as url:
        yield url


# Dry run -------------------------------------------------------------------------------------------------


async def test_dry_run_reports_the_attempts_it_would_start_and_creates_none(forge: Forge, tmp_path: Path) -> None:
    config = _config(forge, tmp_path, sqlite_url(tmp_path / "greenloop.db"))
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        subset = ["bug-lib", "acme/data-job", "clean"]
        dry = await reconcile(ctx, repos=subset, dry_run=True)

        assert dry.dry_run and dry.projects_scanned == 3 and dry.projects_red == 2
        assert dry.errors == {} and dry.transitions == []
        would = sorted((s.project, s.job, s.run_id, s.attempt_id) for s in dry.attempts_started)
        assert would == [
            ("bug-lib", "test", _red_run(forge, "bug-lib")[0], None),
            ("data-job", "build", _red_run(forge, "data-job")[0], None),
        ]
        assert sorted((r.project, r.decision) for r in dry.red) == [("bug-lib", "start"), ("data-job", "start")]
        assert await attempts_of(ctx.sessions) == []
        assert await pass_rows(ctx.sessions) == 0

        # The real pass does what the dry run said, and nothing outside the subset.
        real = await reconcile(ctx, repos=subset)
        assert sorted((s.project, s.job, s.run_id) for s in real.attempts_started) == [w[:3] for w in would]
        assert sorted(a.project for a in await attempts_of(ctx.sessions)) == ["bug-lib", "data-job"]
        assert await pass_rows(ctx.sessions) == 1


async def test_unknown_project_names_fail_the_pass_before_anything_is_done(forge: Forge, tmp_path: Path) -> None:
    config = _config(forge, tmp_path, sqlite_url(tmp_path / "greenloop.db"))
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        with pytest.raises(UnknownProjects) as caught:
            await reconcile(ctx, repos=["bug-lib", "acme/nope", "nope"])
        assert caught.value.names == ["acme/nope", "nope"]
        assert await attempts_of(ctx.sessions) == []
        assert await pass_rows(ctx.sessions) == 0


# Killed workers --------------------------------------------------------------------------------------------


async def test_attempt_of_a_dead_worker_without_a_pull_request_fails_and_is_not_retried(
    forge: Forge, tmp_path: Path
) -> None:
    # No dispatcher in this process, so nothing here can resume it: it fails at once. With a dispatcher it is
    # resumed once first (tests/reconciler/test_dispatch.py).
    config = _config(forge, tmp_path, sqlite_url(tmp_path / "greenloop.db"), attempt_timeout_seconds=30)
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        run_id, sha = _red_run(forge, "bug-lib")
        now = datetime.now(UTC)
        dead = await insert_running_attempt(
            ctx.sessions, project="bug-lib", job="test", run_id=run_id, head_sha=sha, heartbeat_at=now
        )

        # A fresh heartbeat: another worker may still be on it, so the pass leaves it alone.
        alive = await reconcile(ctx, repos=["bug-lib"])
        assert alive.transitions == [] and alive.attempts_started == []
        assert alive.skips == {"active_attempt": 1}

        await set_heartbeat(ctx.sessions, dead.id, now - timedelta(minutes=10))
        recovered = await reconcile(ctx, repos=["bug-lib"])
        assert [(t.attempt_id, t.from_status, t.to_status, t.reason) for t in recovered.transitions] == [
            (dead.id, "running", "failed", "worker_died")
        ]
        assert recovered.attempts_started == []
        assert recovered.skips == {"already_handled": 1}
        again = await reconcile(ctx, repos=["bug-lib"])
        assert again.attempts_started == [] and again.transitions == []

        [attempt] = await attempts_of(ctx.sessions, "bug-lib")
        assert attempt.id == dead.id and attempt.status == "failed" and attempt.stop_reason == "worker_died"
        assert dead.branch is not None
        assert pulls_on_branch(forge, "acme/bug-lib", dead.branch) == []


async def test_attempt_of_a_dead_worker_with_an_open_pull_request_carries_on_from_it(
    forge: Forge, tmp_path: Path
) -> None:
    # `propose`: the half fix's PR fails its own check; under `auto_merge` that escalates it (merge only on
    # green checks), under `propose` it waits for its reviewer, which is what this test follows.
    config = e2e_config(
        forge,
        PROJECTS,
        database_url=sqlite_url(tmp_path / "greenloop.db"),
        workspace_dir=tmp_path / "ws",
        server={"attempt_timeout_seconds": 30},
        projects={"data-job": {"autonomy": "propose"}},
    )
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        run_id, sha = _red_run(forge, "data-job")
        dead = await insert_running_attempt(
            ctx.sessions,
            project="data-job",
            job="build",
            run_id=run_id,
            head_sha=sha,
            heartbeat_at=datetime.now(UTC) - timedelta(minutes=10),
        )
        branch = dead.branch
        assert branch == fix_branch_name("build", dead.id)
        # The worker got as far as pushing its fix branch and opening the pull request, then died.
        pusher = GitPusher(forge, forge.admin_token, tmp_path)
        pushed = await pusher.push("acme/data-job", {"NOTES.md": "half a fix\n"}, "wip", branch=branch)
        number = await pusher.open_pull("acme/data-job", head=branch)

        recovered = await reconcile(ctx, repos=["data-job"])
        assert [(t.attempt_id, t.from_status, t.to_status, t.reason) for t in recovered.transitions] == [
            (dead.id, "running", "pr_open", "worker_died_after_pr")
        ]
        assert recovered.attempts_started == []
        again = await reconcile(ctx, repos=["data-job"])
        assert again.attempts_started == [] and again.transitions == []
        assert again.skips == {"active_attempt": 1}

        [attempt] = await attempts_of(ctx.sessions, "data-job")
        assert (attempt.id, attempt.status, attempt.pr_number, attempt.pushed_sha) == (
            dead.id,
            "pr_open",
            number,
            pushed,
        )
        steps = [to for _from, to, _why in await transitions_of(ctx.sessions, dead.id)]
        assert steps == ["pending", "running", "pr_open"]
        assert [p.number for p in pulls_on_branch(forge, "acme/data-job", branch)] == [number]
    await forge.wait_idle(60)


# Concurrent reconcilers ---------------------------------------------------------------------------------


async def test_two_reconcilers_on_one_database_start_exactly_one_attempt_per_red_project(
    forge: Forge, tmp_path: Path, database_url: str
) -> None:
    config = _config(forge, tmp_path, database_url)
    async with AsyncExitStack() as stack:
        # Two replicas: each its own engine, forge client and caches, on the same database.
        first = await stack.enter_async_context(open_runtime(config, backend_for=None, with_dispatcher=False))
        second = await stack.enter_async_context(open_runtime(config, backend_for=None, with_dispatcher=False))
        assert first.sessions is not second.sessions

        # Both passes start together, twice: the second round finds the attempts of the first.
        for round_ in range(2):
            summaries = await asyncio.gather(
                reconcile(first, trigger="schedule"), reconcile(second, trigger="schedule")
            )
            assert [s.errors for s in summaries] == [{}, {}]
            started = sorted(a.project for s in summaries for a in s.attempts_started)
            assert started == (sorted(RED) if round_ == 0 else [])
            # Every red project was seen by both: one started it; the other found it active, or had its own
            # insert refused by the database (same failure fingerprint: already handled).
            skips = [s.skips for s in summaries]
            if round_ == 0:
                lost = sum(k.get("active_attempt", 0) + k.get("already_handled", 0) for k in skips)
                assert lost == len(RED), skips
            else:
                assert skips == [{"active_attempt": len(RED)}] * 2

        attempts = await attempts_of(first.sessions)
        assert sorted(a.project for a in attempts) == sorted(RED)
        assert all(a.status == "pending" for a in attempts)
        expected = {(p, job, _red_run(forge, p)[0]) for p, job in RED.items()}
        assert {(a.project, a.job, a.run_id) for a in attempts} == expected


async def test_two_replicas_taking_the_pass_lease_run_one_pass_and_start_one_attempt_per_red_project(
    forge: Forge, tmp_path: Path, database_url: str
) -> None:
    config = _config(forge, tmp_path, database_url)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_runtime(config, backend_for=None, with_dispatcher=False))
        second = await stack.enter_async_context(open_runtime(config, backend_for=None, with_dispatcher=False))

        summaries = await asyncio.gather(leased_reconcile(first), leased_reconcile(second))
        assert [s.errors for s in summaries] == [{}, {}]
        # One replica held the lease and ran the pass; the other skipped it without looking at anything.
        ran = [s for s in summaries if s.projects_scanned]
        skipped = [s for s in summaries if not s.projects_scanned]
        assert len(ran) == 1 and len(skipped) == 1
        assert skipped[0].skips == {"lease_held_by_another_replica": 1} and skipped[0].attempts_started == []
        assert sorted(a.project for a in ran[0].attempts_started) == sorted(RED)
        assert await pass_rows(first.sessions) == 1

        # The lease was released: the next scheduled pass runs (on either replica) and finds them active.
        again = await leased_reconcile(second)
        assert again.projects_scanned == len(PROJECTS) and again.attempts_started == []
        assert sorted(a.project for a in await attempts_of(first.sessions)) == sorted(RED)


# A pull request merged while no number was recorded ------------------------------------------------------


async def test_an_attempt_whose_unrecorded_pull_request_was_merged_moves_to_verifying_not_cancelled(
    forge: Forge, tmp_path: Path
) -> None:
    """GitHub's PR list items carry `merged_at` but no `merged`: found by branch, a merged PR must count as merged."""
    config = _config(forge, tmp_path, sqlite_url(tmp_path / "greenloop.db"))
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        run_id, sha = _red_run(forge, "protected-workflow")
        attempt = await insert_running_attempt(
            ctx.sessions,
            project="protected-workflow",
            job="test",
            run_id=run_id,
            head_sha=sha,
            heartbeat_at=datetime.now(UTC),
        )
        assert attempt.branch is not None
        moved = await store.transition(
            ctx.sessions, attempt.id, AttemptStatus.PR_OPEN, reason="pr_opened", expected=AttemptStatus.RUNNING
        )
        assert moved
        # A verdict read before the head moved, still recorded when the merge came before a pass saw the new one.
        assert await store.heartbeat(ctx.sessions, attempt.id, expected=AttemptStatus.PR_OPEN, checks="passed")
        # The PR is merged into a side branch, so main (shared by this module's tests) does not move.
        pusher = GitPusher(forge, forge.admin_token, tmp_path)
        await pusher.push("acme/protected-workflow", {"SIDE.md": "side\n"}, "side", branch="side-merge")
        await pusher.push("acme/protected-workflow", {"NOTES.md": "fix\n"}, "fix", branch=attempt.branch)
        number = await pusher.open_pull("acme/protected-workflow", head=attempt.branch, base="side-merge")
        await pusher.merge_pull("acme/protected-workflow", number)

        done = await reconcile(ctx, repos=["protected-workflow"])
        assert [(t.from_status, t.to_status, t.reason) for t in done.transitions] == [
            ("pr_open", "verifying", "pr_merged")
        ]
        # The merged head's checks as the forge reports them now replace the stale verdict.
        assert ctx.forge is not None
        pr = await ctx.forge.get_pull_request("acme/protected-workflow", number)
        now = await head_checks(ctx.forge, "acme/protected-workflow", pr.head.sha, pr.base.ref)
        merged = await store.get_attempt(ctx.sessions, attempt.id)
        assert now.state.value == "failing"  # this fix branch's workflow run fails
        assert merged is not None and merged.checks == now.state.value
    await forge.wait_idle(60)
