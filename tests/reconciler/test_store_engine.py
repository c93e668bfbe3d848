"""Engines: URL handling, SQLite pragmas, UTC timestamps, and a locked SQLite database never leaking errors."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from policy.types import AttemptStatus
from reconciler.errors import DatabaseUrlInvalid, StoreBusy
from reconciler.store import StartOutcome, get_attempt, heartbeat, start_attempt, transition
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker, normalize_url, redact_url
from reconciler.store.migrate import upgrade
from reconciler.store.models import Project, UTCDateTime

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param("sqlite:///x.db", "sqlite+aiosqlite:///x.db", id="bare-sqlite"),
        pytest.param("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db", id="aiosqlite"),
        pytest.param("postgresql://u@h/db", "postgresql+asyncpg://u@h/db", id="bare-postgresql"),
        pytest.param("postgres://u@h/db", "postgresql+asyncpg://u@h/db", id="postgres-alias"),
        pytest.param("postgresql+asyncpg://u@h:5433/db", "postgresql+asyncpg://u@h:5433/db", id="asyncpg"),
    ],
)
def test_normalize_url_picks_the_async_driver(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("", id="empty"),
        pytest.param("not a url", id="garbage"),
        pytest.param("mysql://root:s3cret@db/app", id="unsupported-database"),
        pytest.param("postgresql+psycopg2://root:s3cret@db/app", id="sync-postgres-driver"),
        pytest.param("sqlite+pysqlite:///x.db", id="sync-sqlite-driver"),
        pytest.param("oracle+oracledb://root:s3cret@db", id="oracle"),
    ],
)
def test_unusable_urls_are_refused_without_echoing_passwords(url: str) -> None:
    with pytest.raises(DatabaseUrlInvalid) as info:
        make_engine(url)
    message = str(info.value)
    assert message.startswith("Database URL invalid: ")
    assert "s3cret" not in message and "\n" not in message


def test_redact_url_hides_the_password() -> None:
    assert "s3cret" not in redact_url("postgresql+asyncpg://me:s3cret@db/app")
    assert redact_url("::::") == "<unparseable URL>"


async def test_sqlite_connections_get_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}", busy_timeout_ms=1234)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(sa.text("PRAGMA journal_mode")) == "wal"
            assert await connection.scalar(sa.text("PRAGMA busy_timeout")) == 1234
            assert await connection.scalar(sa.text("PRAGMA foreign_keys")) == 1
    finally:
        await engine.dispose()


async def test_sqlite_rollback_undoes_ddl_and_savepoints_work(tmp_path: Path) -> None:
    # The explicit-BEGIN hooks make SQLite transactional like PostgreSQL (the driver default is not).
    engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            await connection.rollback()
            async with engine.connect() as other:
                assert await other.scalar(sa.text("SELECT count(*) FROM sqlite_master WHERE name = 't'")) == 0
    finally:
        await engine.dispose()


def test_utc_datetime_refuses_naive_values_and_normalises_to_utc() -> None:
    kind = UTCDateTime()
    dialect = sa.create_mock_engine("sqlite://", executor=lambda *a, **k: None).dialect
    with pytest.raises(ValueError, match="Naive datetime"):
        kind.process_bind_param(datetime(2026, 1, 1), dialect)
    plus_two = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert kind.process_bind_param(plus_two, dialect) == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert kind.process_result_value(datetime(2026, 1, 1, 10), dialect) == datetime(2026, 1, 1, 10, tzinfo=UTC)


# --- a locked SQLite database ---------------------------------------------------------------------------------


@pytest.fixture
async def locked_store(tmp_path: Path) -> AsyncIterator[tuple[Path, SessionFactory]]:
    """A migrated SQLite store with a project, and sessions whose busy_timeout is only 50 ms."""
    path = tmp_path / "locked.db"
    upgrade(f"sqlite:///{path}")
    engine: AsyncEngine = make_engine(f"sqlite:///{path}", busy_timeout_ms=50)
    sessions = make_sessionmaker(engine)
    async with sessions() as session, session.begin():
        session.add(Project(name="alpha", repo="acme/alpha"))
    try:
        yield path, sessions
    finally:
        await engine.dispose()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """A second connection holding SQLite's write lock until it rolls back."""
    raw = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("UPDATE reconciler_project SET repo = 'acme/held'")
    return raw


async def _start(sessions: SessionFactory, fingerprint: str) -> StartOutcome:
    return await start_attempt(
        sessions, project="alpha", job="nightly", fingerprint=fingerprint, run_id="1", head_sha="a" * 40
    )


async def test_start_attempt_reports_busy_while_another_connection_holds_the_lock(
    locked_store: tuple[Path, SessionFactory],
) -> None:
    path, sessions = locked_store
    raw = _hold_write_lock(path)
    try:
        outcome = await _start(sessions, "fp-locked")
    finally:
        raw.rollback()
        raw.close()

    assert outcome == StartOutcome(False, None, "busy")
    after = await _start(sessions, "fp-locked")
    assert after.reason == "started"


async def test_start_attempt_succeeds_when_the_lock_is_released_during_its_retries(
    locked_store: tuple[Path, SessionFactory],
) -> None:
    path, sessions = locked_store
    raw = _hold_write_lock(path)

    async def _release_soon() -> None:
        await asyncio.sleep(0.15)
        raw.rollback()
        raw.close()

    outcome, _ = await asyncio.gather(_start(sessions, "fp-wait"), _release_soon())

    assert outcome.reason == "started"


async def test_transition_and_heartbeat_raise_store_busy_while_locked(
    locked_store: tuple[Path, SessionFactory],
) -> None:
    path, sessions = locked_store
    started = await _start(sessions, "fp-t")
    attempt_id = started.attempt_id
    assert attempt_id is not None
    raw = _hold_write_lock(path)
    try:
        with pytest.raises(StoreBusy):
            await transition(sessions, attempt_id, AttemptStatus.RUNNING, reason="dispatched")
        with pytest.raises(StoreBusy):
            await heartbeat(sessions, attempt_id)
        # Reads are not blocked by a writer (WAL).
        row = await get_attempt(sessions, attempt_id)
        assert row is not None and row.status == AttemptStatus.PENDING
    finally:
        raw.rollback()
        raw.close()

    assert await transition(sessions, attempt_id, AttemptStatus.RUNNING, reason="dispatched")
