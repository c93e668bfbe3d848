"""`one_row`: the hot read's one-hop path on SQLite gives the same row as SQLAlchemy's own execution, and a
driver failure on it is classified like any other (busy, error)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from policy.types import AttemptStatus, FailureClass
from reconciler.errors import StoreBusy, StoreError
from reconciler.store import start_attempt, transition
from reconciler.store.attempts import _refusal_query
from reconciler.store.engine import SessionFactory, make_engine
from reconciler.store.models import Project, utcnow
from reconciler.store.one_row import one_row
from reconciler.store.translate import translated

pytestmark = pytest.mark.anyio


def _plain(row: Any) -> tuple[Any, ...]:
    return tuple(int(v) if isinstance(v, bool) else v for v in row)


async def _both_ways(engine: AsyncEngine, project: str, fingerprint: str) -> tuple[Any, ...]:
    params = {"project": project, "fingerprint": fingerprint}
    fast = await one_row(engine, _refusal_query(), params)
    async with engine.connect() as connection:
        typed = (await connection.execute(_refusal_query(), params)).one()
    assert _plain(fast) == _plain(typed)
    return _plain(fast)


async def test_the_refusal_row_is_the_same_through_one_row_and_through_sqlalchemy(
    engine: AsyncEngine, sessions: SessionFactory, project: str
) -> None:
    # Nothing yet: no newest attempt, no active one, the project exists; an unknown project does not.
    assert await _both_ways(engine, project, "fp") == (None, None, None, None, 0, 0, None, 1)
    assert (await _both_ways(engine, "nobody", "fp"))[-1] == 0

    first = await start_attempt(sessions, project=project, job="j", fingerprint="fp", run_id="1", head_sha="a" * 40)
    assert first.attempt_id is not None
    row = await _both_ways(engine, project, "fp")
    assert row[0] == first.attempt_id and row[1] == 0 and row[2] == AttemptStatus.PENDING.value
    assert row[6] == first.attempt_id  # also the project's active attempt

    await transition(
        sessions, first.attempt_id, AttemptStatus.FAILED, reason="x", failure_class=FailureClass.TRANSIENT.value
    )
    row = await _both_ways(engine, project, "fp")
    assert row[2:6] == (AttemptStatus.FAILED.value, FailureClass.TRANSIENT.value, 0, 1) and row[6] is None

    # An operator reset after the attempt started: the reset comparison is made in SQL, and transient failures
    # are counted from the reset on.
    async with sessions() as session, session.begin():
        await session.execute(
            sa.update(Project)
            .where(Project.name == project)
            .values(escalation_reset_at=utcnow() + timedelta(seconds=1))
        )
    row = await _both_ways(engine, project, "fp")
    assert row[4:6] == (1, 0)


async def test_the_fast_path_reads_outside_any_transaction(tmp_path: Path) -> None:
    # One statement is its own snapshot: no BEGIN (the engine's SQLite hook), no statement through SQLAlchemy.
    engine = make_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    seen: list[str] = []
    sa.event.listen(engine.sync_engine, "begin", lambda connection: seen.append("begin"))
    sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: seen.append(str(args[2])))
    try:
        tables = sa.select(sa.func.count()).select_from(sa.table("sqlite_master"))
        assert await one_row(engine, tables, {}) == (0,)
        assert seen == []
        async with engine.connect() as connection:  # the ordinary path, for contrast: the hook's BEGIN
            await connection.execute(tables)
        assert {"begin", "BEGIN"} <= set(seen)
    finally:
        await engine.dispose()


async def test_a_driver_error_on_the_fast_path_is_a_store_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(StoreError, match="no such table"):
            async with translated():
                await one_row(engine, _refusal_query(), {"project": "p", "fingerprint": "f"})
    finally:
        await engine.dispose()


async def test_a_busy_driver_error_on_the_fast_path_is_store_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A WAL reader is blocked only in rare moments (recovery, an exclusive-mode holder), so the driver's busy
    # error is raised by the driver call itself here, with SQLite's own error code.
    engine = make_engine(f"sqlite:///{tmp_path / 'busy.db'}")
    tables = sa.select(sa.func.count()).select_from(sa.table("sqlite_master"))

    async def locked(self: aiosqlite.Connection, sql: str, parameters: Any = None) -> Any:
        error = sqlite3.OperationalError("database is locked")
        error.sqlite_errorcode = sqlite3.SQLITE_BUSY
        raise error

    try:
        assert await one_row(engine, tables, {}) == (0,)
        monkeypatch.setattr(aiosqlite.Connection, "execute_fetchall", locked)
        with pytest.raises(StoreBusy):
            async with translated():
                await one_row(engine, tables, {})
    finally:
        await engine.dispose()
