"""The dispatcher against the local forge: cancelling a running agent, resuming a dead worker's attempt once,
and migrating one replica at a time.

One forge serves the module (bug-lib, red). Every test gets a store of its own; fix branches and pull
requests name an attempt of one test. The scripted model replays bug-lib's fix up to its pull request (no
merge, so the forge's `main` stays red for every test); a gated back-end stops at a chosen turn until
released, so the agent is mid-run when the test acts.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from anthropic.types import Message
from e2e_support import (
    POSTGRES_ENV,
    SCRIPTS_DIR,
    attempts_of,
    e2e_config,
    failing_job_runs,
    forge_for,
    insert_running_attempt,
    postgres_database,
    pulls_on_branch,
    set_heartbeat,
    sqlite_url,
    transitions_of,
)

from agent.models import ModelBackend, ModelRequest
from agent.scripted import Script, ScriptedBackend
from fixtures.forge import Forge
from policy.branches import fix_branch_name
from policy.config import GreenloopConfig, ProjectConfig
from policy.types import AttemptStatus
from reconciler.advance import RESUMED, claim_resume
from reconciler.api import build_api
from reconciler.context import ReconcilerContext
from reconciler.dispatch import AgentDispatcher, BackendFactory
from reconciler.errors import StoreError
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime
from reconciler.store import attempts as store
from reconciler.store.engine import make_engine
from reconciler.store.migrate import MIGRATION_LOCK_KEY, current_revision, head_revision, migrate_store, schema_diff
from reconciler.store.models import Attempt

pytestmark = pytest.mark.anyio

PROJECT = "bug-lib"
REPO = "acme/bug-lib"
TOKEN = "test-token-0123456789abcdef"
WAIT = 60.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), [PROJECT]) as running:
        yield running


def _script() -> Script:
    """bug-lib's fix up to its pull request: the agent opens the PR and stops (nothing is merged)."""
    data = json.loads((SCRIPTS_DIR / f"{PROJECT}.json").read_text(encoding="utf-8"))
    data["steps"] = [s for s in data["steps"] if s["tool"] != "merge_pull_request"]
    data["final_message"] = "Opened the fix for review."
    return Script.model_validate(data)


PR_TURN = [s.tool for s in _script().steps].index("create_pull_request")


class GatedBackend:
    """The scripted model, except that the call for turn `gate_at` waits until `release` is set."""

    def __init__(self, script: Script, run_id: str, gate_at: int | None) -> None:
        self.inner = ScriptedBackend(script, substitutions={"FAILING_RUN_ID": run_id})
        self.gate_at = gate_at
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def create(self, request: ModelRequest) -> Message:
        if self.inner.turns_served == self.gate_at:
            self.reached.set()
            await self.release.wait()
        return await self.inner.create(request)


class Backends:
    """A `BackendFactory` that keeps every back-end it made, in order."""

    def __init__(self, gate_at: int | None = None) -> None:
        self.gate_at = gate_at
        self.made: list[GatedBackend] = []

    def __call__(self, attempt: Attempt, _project: ProjectConfig) -> ModelBackend:
        backend = GatedBackend(_script(), attempt.run_id, self.gate_at)
        self.made.append(backend)
        return backend

    async def reached(self, count: int = 1) -> GatedBackend:
        """The `count`-th back-end, once its agent waits at the gate."""

        async def made() -> bool:
            return len(self.made) >= count

        await _eventually(made, f"back-end {count} made")
        async with asyncio.timeout(WAIT):
            await self.made[count - 1].reached.wait()
        return self.made[count - 1]


def _config(forge: Forge, tmp_path: Path, **server: object) -> GreenloopConfig:
    url = sqlite_url(tmp_path / "greenloop.db")
    return e2e_config(forge, [PROJECT], database_url=url, workspace_dir=tmp_path / "ws", server=server)


def _red_run(forge: Forge) -> tuple[str, str]:
    run = failing_job_runs(forge, REPO, "test")[-1]
    return str(run.id), run.head_sha


def _dispatcher(ctx: ReconcilerContext) -> AgentDispatcher:
    if not isinstance(ctx.dispatcher, AgentDispatcher):
        raise TypeError(f"expected an AgentDispatcher, got {ctx.dispatcher!r}")
    return ctx.dispatcher


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(int(WAIT / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {WAIT:g}s: {what}")


async def _status(ctx: ReconcilerContext, attempt_id: str) -> str:
    attempt = await store.get_attempt(ctx.sessions, attempt_id)
    assert attempt is not None
    return attempt.status


def _backend_factory(backends: Backends) -> BackendFactory:
    return backends


# Cancelling ------------------------------------------------------------------------------------------------


async def test_cancel_through_the_api_stops_the_running_agent_and_closes_the_pull_request_it_opened(
    forge: Forge, tmp_path: Path
) -> None:
    backends = Backends(gate_at=PR_TURN + 1)  # the PR is open; the agent waits for its next model answer
    async with open_runtime(_config(forge, tmp_path), backend_for=_backend_factory(backends)) as ctx:
        started = await reconcile(ctx, repos=[PROJECT])
        [new] = started.attempts_started
        assert new.attempt_id is not None
        attempt_id = new.attempt_id
        gated = await backends.reached()
        branch = fix_branch_name("test", attempt_id)
        [pull] = pulls_on_branch(forge, REPO, branch)
        assert pull.state == "open"
        assert _dispatcher(ctx).is_running(attempt_id)

        app = build_api(ctx, api_token=TOKEN)
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://api", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            answer = await http.post(f"/attempts/{attempt_id}/cancel", json={"reason": "wrong fix"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "cancelled"

        # The agent stopped before the API answered: mid-call, never released, nothing recorded after.
        assert not _dispatcher(ctx).is_running(attempt_id)
        assert not gated.release.is_set() and gated.inner.turns_served == PR_TURN + 1
        assert pull.state == "closed" and not pull.merged
        attempt = await store.get_attempt(ctx.sessions, attempt_id)
        assert attempt is not None
        assert (attempt.status, attempt.stop_reason) == ("cancelled", "cancelled")
        steps = await transitions_of(ctx.sessions, attempt_id)
        assert [to for _f, to, _why in steps] == ["pending", "running", "cancelled"]
        assert steps[-1][2] == "operator_cancel: wrong fix"

        # Later passes leave the cancelled attempt (and its failure) alone.
        again = await reconcile(ctx, repos=[PROJECT])
        assert again.attempts_started == [] and again.transitions == []
        assert len(await attempts_of(ctx.sessions, PROJECT)) == 1


async def test_cancel_of_an_attempt_not_running_here_changes_only_the_database(forge: Forge, tmp_path: Path) -> None:
    backends = Backends()
    async with open_runtime(_config(forge, tmp_path), backend_for=_backend_factory(backends)) as ctx:
        run_id, sha = _red_run(forge)
        other = await insert_running_attempt(
            ctx.sessions, project=PROJECT, job="test", run_id=run_id, head_sha=sha, heartbeat_at=datetime.now(UTC)
        )
        assert await _dispatcher(ctx).cancel(other.id) is False
        app = build_api(ctx, api_token=TOKEN)
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://api", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            answer = await http.post(f"/attempts/{other.id}/cancel")
        assert answer.status_code == 200, answer.text
        assert await _status(ctx, other.id) == "cancelled"
        assert backends.made == []  # no agent was started for it here


async def test_an_attempt_cancelled_by_another_replica_is_stopped_by_the_heartbeat(
    forge: Forge, tmp_path: Path
) -> None:
    backends = Backends(gate_at=1)  # the agent has read the logs and waits for its next model answer
    config = _config(forge, tmp_path)
    async with open_runtime(config, backend_for=_backend_factory(backends), heartbeat_seconds=0.2) as ctx:
        [new] = (await reconcile(ctx, repos=[PROJECT])).attempts_started
        assert new.attempt_id is not None
        attempt_id = new.attempt_id
        gated = await backends.reached()
        dispatcher = _dispatcher(ctx)
        assert dispatcher.is_running(attempt_id)

        # Another replica's API: the database only.
        moved = await store.transition(
            ctx.sessions, attempt_id, AttemptStatus.CANCELLED, reason="operator_cancel", expected=AttemptStatus.RUNNING
        )
        assert moved

        async def stopped() -> bool:
            return not dispatcher.is_running(attempt_id)

        await _eventually(stopped, "the heartbeat stops the agent")
        assert not gated.release.is_set() and gated.inner.turns_served == 1
        steps = [to for _f, to, _why in await transitions_of(ctx.sessions, attempt_id)]
        assert steps == ["pending", "running", "cancelled"]
        assert pulls_on_branch(forge, REPO, fix_branch_name("test", attempt_id)) == []


# Resuming a dead worker's attempt ----------------------------------------------------------------------------


async def test_a_dead_workers_attempt_is_resumed_once_and_ends_with_its_pull_request(
    forge: Forge, tmp_path: Path
) -> None:
    backends = Backends()
    config = _config(forge, tmp_path, attempt_timeout_seconds=30)
    async with open_runtime(config, backend_for=_backend_factory(backends)) as ctx:
        run_id, sha = _red_run(forge)
        dead = await insert_running_attempt(
            ctx.sessions,
            project=PROJECT,
            job="test",
            run_id=run_id,
            head_sha=sha,
            heartbeat_at=datetime.now(UTC) - timedelta(minutes=10),
        )

        resumed = await reconcile(ctx, repos=[PROJECT])
        assert [(t.attempt_id, t.from_status, t.to_status, t.reason) for t in resumed.transitions] == [
            (dead.id, "running", "running", RESUMED)
        ]
        assert resumed.attempts_started == [] and resumed.skips == {"active_attempt": 1}
        assert len(backends.made) == 1
        await _dispatcher(ctx).wait_idle(WAIT)

        [attempt] = await attempts_of(ctx.sessions, PROJECT)
        assert (attempt.id, attempt.status, attempt.stop_reason) == (dead.id, "pr_open", "succeeded_pr")
        assert dead.branch is not None
        [pull] = pulls_on_branch(forge, REPO, dead.branch)
        assert (attempt.pr_number, pull.state) == (pull.number, "open")
        steps = await transitions_of(ctx.sessions, dead.id)
        assert [(f, to, why) for f, to, why in steps][1:] == [
            ("pending", "running", "agent_started"),
            ("running", "running", RESUMED),
            ("running", "pr_open", "pr_opened"),
        ]


async def test_a_resumed_attempt_whose_worker_dies_again_fails_and_is_not_retried(forge: Forge, tmp_path: Path) -> None:
    backends = Backends(gate_at=0)
    config = _config(forge, tmp_path, attempt_timeout_seconds=30)
    async with open_runtime(config, backend_for=_backend_factory(backends)) as ctx:
        run_id, sha = _red_run(forge)
        stale = datetime.now(UTC) - timedelta(minutes=10)
        dead = await insert_running_attempt(
            ctx.sessions, project=PROJECT, job="test", run_id=run_id, head_sha=sha, heartbeat_at=stale
        )
        first = await reconcile(ctx, repos=[PROJECT])
        assert [(t.to_status, t.reason) for t in first.transitions] == [("running", RESUMED)]
        await backends.reached()

        # The resumed worker dies too (its process stops: the task ends, nothing is recorded, no more beats).
        await _dispatcher(ctx).aclose()
        assert await _status(ctx, dead.id) == "running"
        await set_heartbeat(ctx.sessions, dead.id, stale)

        second = await reconcile(ctx, repos=[PROJECT])
        assert [(t.attempt_id, t.from_status, t.to_status, t.reason) for t in second.transitions] == [
            (dead.id, "running", "failed", "worker_died")
        ]
        assert second.attempts_started == [] and second.skips == {"already_handled": 1}
        assert len(backends.made) == 1  # resumed once, never again
        [attempt] = await attempts_of(ctx.sessions, PROJECT)
        assert (attempt.id, attempt.status, attempt.stop_reason) == (dead.id, "failed", "worker_died")


async def test_two_passes_racing_to_resume_one_attempt_resume_it_once(forge: Forge, tmp_path: Path) -> None:
    async with open_runtime(_config(forge, tmp_path, attempt_timeout_seconds=30), backend_for=None) as ctx:
        run_id, sha = _red_run(forge)
        stale = datetime.now(UTC) - timedelta(minutes=10)
        dead = await insert_running_attempt(
            ctx.sessions, project=PROJECT, job="test", run_id=run_id, head_sha=sha, heartbeat_at=stale
        )
        claims = await asyncio.gather(*(claim_resume(ctx, dead, AttemptStatus.RUNNING) for _ in range(4)))
        assert sorted(claims) == ["lost", "lost", "lost", "resumed"]
        # Fresh from the resume: nobody may claim it. Stale again: the one resume is spent.
        assert await claim_resume(ctx, dead, AttemptStatus.RUNNING) == "lost"
        await set_heartbeat(ctx.sessions, dead.id, stale)
        assert await claim_resume(ctx, dead, AttemptStatus.RUNNING) == "exhausted"
        resumes = [s for s in await transitions_of(ctx.sessions, dead.id) if s[2] == RESUMED]
        assert resumes == [("running", "running", RESUMED)]


# Migrating at start-up ---------------------------------------------------------------------------------------


@pytest.fixture
async def fresh_postgres() -> AsyncIterator[str]:
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"{POSTGRES_ENV} is unset: e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    async with postgres_database(admin_url) as url:
        yield url


async def _with_engines(url: str, count: int, body: Callable[..., Awaitable[Any]]) -> Any:
    engines = [make_engine(url) for _ in range(count)]
    try:
        return await body(*engines)
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.postgres
async def test_replicas_migrating_a_fresh_postgresql_database_together_both_succeed(fresh_postgres: str) -> None:
    async def both(first: Any, second: Any) -> None:
        await asyncio.gather(migrate_store(first), migrate_store(second))
        assert await current_revision(first) == head_revision()
        assert await schema_diff(first) == []

    await _with_engines(fresh_postgres, 2, both)


@pytest.mark.postgres
async def test_migration_waits_for_the_advisory_lock_and_gives_up_after_its_timeout(fresh_postgres: str) -> None:
    async def held(holder: Any, migrator: Any) -> None:
        async with holder.connect() as raw:
            lock = await raw.execution_options(isolation_level="AUTOCOMMIT")
            await lock.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            with pytest.raises(StoreError, match="migration lock"):
                await migrate_store(migrator, timeout_seconds=0.5)
            assert await current_revision(migrator) is None  # nothing ran without the lock
            await lock.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await migrate_store(migrator, timeout_seconds=10)
        assert await current_revision(migrator) == head_revision()

    await _with_engines(fresh_postgres, 2, held)


async def test_migration_on_sqlite_takes_no_lock(tmp_path: Path) -> None:
    engine = make_engine(sqlite_url(tmp_path / "greenloop.db"))
    try:
        await migrate_store(engine)
        await migrate_store(engine)  # idempotent
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()
