"""Database faults during a pass: SQLite held locked by another connection, PostgreSQL connections cut.

A pass that meets a locked or unreachable store must fail cleanly (an error within bounded time, never a
hang, never a half-written row) and the next pass must converge: one attempt per red project, each with its
one `pending` transition, and one recorded pass per pass that finished.

PostgreSQL is never restarted (it is shared): the reconciler reaches it through `SeverableProxy`, a TCP proxy
on loopback whose connections the test cuts. Those tests skip without GREENLOOP_TEST_POSTGRES_URL.
No dispatcher runs: attempts stay `pending`, so the store holds exactly what the passes did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fault_support import arm_fault, forge_control, severable_proxy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from e2e_support import (  # isort: skip
    POSTGRES_ENV,
    attempts_of,
    e2e_config,
    forge_for,
    pass_rows,
    postgres_database,
    sqlite_url,
    transitions_of,
)
from fixtures.forge import Forge
from reconciler.context import ReconcilerContext
from reconciler.errors import StoreBusy, StoreError
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime
from reconciler.store.engine import make_engine, make_sessionmaker

pytestmark = pytest.mark.anyio

PROJECTS = ["bug-lib", "clean", "stale-import"]
RED = ["bug-lib", "stale-import"]
PASS_DEADLINE = 30.0  # no faulted pass may take longer than this


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), PROJECTS) as running:
        yield running


@pytest.fixture(autouse=True)
async def disarmed(forge: Forge) -> AsyncIterator[None]:
    await forge_control(forge, "DELETE", "/_forge/faults")
    yield
    await forge_control(forge, "DELETE", "/_forge/faults")


async def _converged(ctx: ReconcilerContext) -> None:
    """The next pass starts one attempt per red project; the store holds them whole and nothing twice."""
    recorded = await pass_rows(ctx.sessions)
    summary = await asyncio.wait_for(reconcile(ctx, trigger="cli"), PASS_DEADLINE)
    assert summary.errors == {}
    attempts = await attempts_of(ctx.sessions)
    assert sorted(a.project for a in attempts) == RED, "one attempt per red project, no duplicate"
    for attempt in attempts:
        assert attempt.status == "pending"
        assert [t[:2] for t in await transitions_of(ctx.sessions, attempt.id)] == [(None, "pending")]
    assert await pass_rows(ctx.sessions) == recorded + 1
    again = await asyncio.wait_for(reconcile(ctx, trigger="cli"), PASS_DEADLINE)
    assert again.attempts_started == [] and again.errors == {}
    assert again.attempts_already_active == len(RED)


@contextlib.asynccontextmanager
async def _sqlite_reconciler(forge: Forge, tmp_path: Path, busy_timeout_ms: int) -> AsyncIterator[ReconcilerContext]:
    """A reconciler on a SQLite file whose connections wait at most `busy_timeout_ms` for a lock (per try)."""
    db = tmp_path / "greenloop.db"
    config = e2e_config(forge, PROJECTS, database_url=sqlite_url(db), workspace_dir=tmp_path / "ws")
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as base:
        engine = make_engine(config.server.database_url, busy_timeout_ms=busy_timeout_ms)
        try:
            yield dataclasses.replace(base, sessions=make_sessionmaker(engine))
        finally:
            await engine.dispose()


def _hold_write_lock(db: Path) -> sqlite3.Connection:
    """Another connection takes SQLite's write lock (and keeps it until rolled back)."""
    holder = sqlite3.connect(db, isolation_level=None, timeout=5)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE reconciler_project SET paused = paused")  # a write in flight
    return holder


async def test_a_sqlite_lock_held_briefly_is_waited_out_and_the_pass_succeeds(forge: Forge, tmp_path: Path) -> None:
    async with _sqlite_reconciler(forge, tmp_path, busy_timeout_ms=100) as ctx:
        await reconcile(ctx, trigger="cli", dry_run=True)  # projects synced; nothing recorded
        holder = _hold_write_lock(tmp_path / "greenloop.db")
        asyncio.get_running_loop().call_later(0.3, holder.rollback)
        try:
            summary = await asyncio.wait_for(reconcile(ctx, trigger="cli"), PASS_DEADLINE)
        finally:
            holder.close()
        assert summary.errors == {}
        assert sorted(a.project for a in summary.attempts_started) == RED
        assert await pass_rows(ctx.sessions) == 1


async def test_a_sqlite_lock_held_through_the_pass_fails_it_cleanly_and_the_next_pass_converges(
    forge: Forge, tmp_path: Path
) -> None:
    async with _sqlite_reconciler(forge, tmp_path, busy_timeout_ms=100) as ctx:
        await reconcile(ctx, trigger="cli", dry_run=True)
        holder = _hold_write_lock(tmp_path / "greenloop.db")
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(StoreBusy):  # recording the pass itself met the lock
                await asyncio.wait_for(reconcile(ctx, trigger="cli"), PASS_DEADLINE)
            assert loop.time() - t0 < PASS_DEADLINE
            assert await attempts_of(ctx.sessions) == [], "no attempt row got past the lock"
            assert await pass_rows(ctx.sessions) == 0, "nor the failed pass's record"
        finally:
            holder.rollback()
            holder.close()
        await _converged(ctx)


def _through(proxy_port: int, url: str) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy_port).render_as_string(hide_password=False)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"{POSTGRES_ENV} is unset: e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    async with postgres_database(admin_url) as url:
        yield url


@pytest.mark.postgres
async def test_postgresql_unreachable_fails_the_pass_with_an_error_and_the_next_pass_converges(
    forge: Forge, tmp_path: Path, postgres_url: str
) -> None:
    target = make_url(postgres_url)
    async with severable_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        url = _through(proxy.port, postgres_url)
        config = e2e_config(forge, PROJECTS, database_url=url, workspace_dir=tmp_path / "ws")
        async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
            await reconcile(ctx, trigger="cli", dry_run=True)  # projects synced, pool warm
            proxy.down = True
            assert proxy.sever() > 0, "the pool's connections were cut"
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(Exception) as failed:
                await asyncio.wait_for(reconcile(ctx, trigger="cli"), PASS_DEADLINE)
            assert not isinstance(failed.value, TimeoutError), "the pass hung on the dead database"
            assert isinstance(failed.value, StoreError | OSError | DBAPIError), repr(failed.value)
            assert loop.time() - t0 < PASS_DEADLINE

            proxy.down = False
            await _converged(ctx)


@pytest.mark.postgres
async def test_postgresql_connections_cut_mid_pass_leave_no_half_written_state(
    forge: Forge, tmp_path: Path, postgres_url: str
) -> None:
    target = make_url(postgres_url)
    async with severable_proxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        url = _through(proxy.port, postgres_url)
        config = e2e_config(forge, PROJECTS, database_url=url, workspace_dir=tmp_path / "ws")
        async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
            await reconcile(ctx, trigger="cli", dry_run=True)
            # bug-lib's observation is slow, so the pass is in flight (stale-import's attempt being written)
            # when every database connection is cut.
            await arm_fault(forge, r"^/repos/acme/bug-lib/actions/runs$", "slow", delay=1.0, method="GET")
            in_flight = asyncio.create_task(reconcile(ctx, trigger="cli"))

            async def cut_repeatedly() -> None:
                while not in_flight.done():  # every connection in use or idle, again and again
                    proxy.sever()
                    await asyncio.sleep(0.02)

            cutter = asyncio.create_task(cut_repeatedly())
            try:
                summary = await asyncio.wait_for(in_flight, PASS_DEADLINE)
            except TimeoutError:
                pytest.fail("the pass hung after its connections were cut")
            except (StoreError, OSError, DBAPIError):
                pass  # a clean error is as good as a pass that reconnected
            else:
                assert summary.projects_scanned == len(PROJECTS)
            finally:
                await cutter
            await _converged(ctx)
