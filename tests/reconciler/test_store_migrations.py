"""Migrations: they apply on both backends, the result matches the models, and they run from anywhere."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from policy.types import ACTIVE_STATUSES, TERMINAL_STATUSES
from reconciler.errors import DatabaseUrlInvalid, StoreError
from reconciler.store.engine import make_engine
from reconciler.store.migrate import (
    MIGRATIONS_DIR,
    alembic_config,
    current_revision,
    head_revision,
    schema_diff,
    upgrade,
    upgrade_async,
)
from reconciler.store.models import ACTIVE_ATTEMPT_WHERE, Base

pytestmark = pytest.mark.anyio


def _sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def test_migrations_reach_head_and_match_the_models(engine: AsyncEngine) -> None:
    assert await current_revision(engine) == head_revision()
    assert await schema_diff(engine) == []


async def test_every_table_of_the_models_exists(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert set(Base.metadata.tables) <= names
    assert {n for n in names if n != "alembic_version"} == set(Base.metadata.tables)


async def test_the_one_active_index_is_partial_over_active_statuses(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            ddl = await connection.scalar(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'ix_reconciler_attempt_one_active'")
            )
        else:
            ddl = await connection.scalar(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_reconciler_attempt_one_active'")
            )
    assert ddl is not None
    assert "UNIQUE" in ddl and "WHERE" in ddl
    predicate = ddl.split("WHERE", 1)[1]
    assert all(f"'{s.value}'" in predicate for s in TERMINAL_STATUSES)
    assert not any(f"'{s.value}'" in predicate for s in ACTIVE_STATUSES)


def test_active_predicate_is_derived_from_the_terminal_statuses() -> None:
    for status in TERMINAL_STATUSES:
        assert f"'{status.value}'" in ACTIVE_ATTEMPT_WHERE
    for status in ACTIVE_STATUSES:
        assert f"'{status.value}'" not in ACTIVE_ATTEMPT_WHERE


async def test_upgrade_twice_changes_nothing(db_url: str, engine: AsyncEngine) -> None:
    upgrade(db_url)
    await upgrade_async(engine)
    assert await current_revision(engine) == head_revision()
    assert await schema_diff(engine) == []


async def test_schema_diff_reports_drift(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path / "drift.db")
    upgrade(url)
    with sqlite3.connect(tmp_path / "drift.db") as raw:
        raw.execute("DROP INDEX ix_reconciler_job_run_latest")
    engine = make_engine(url)
    try:
        diff = await schema_diff(engine)
    finally:
        await engine.dispose()
    assert [d[0] for d in diff] == ["add_index"]


async def test_upgrade_works_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    upgrade(_sqlite_url(tmp_path / "anywhere.db"))

    engine = make_engine(_sqlite_url(tmp_path / "anywhere.db"))
    try:
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()
    assert not (elsewhere / "alembic.ini").exists()


async def test_upgrade_async_runs_inside_an_event_loop(tmp_path: Path) -> None:
    engine = make_engine(_sqlite_url(tmp_path / "inloop.db"))
    try:
        assert await current_revision(engine) is None
        await upgrade_async(engine)
        assert await current_revision(engine) == head_revision()
        assert await schema_diff(engine) == []
    finally:
        await engine.dispose()


def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path / "roundtrip.db")
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    with sqlite3.connect(tmp_path / "roundtrip.db") as raw:
        left = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert left == {"alembic_version"}
    upgrade(url)


def test_migration_files_are_dated_and_packaged() -> None:
    files = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py"))
    assert files, "no migration scripts"
    for name in files:
        date, _, rest = name.partition("-")
        year, month, day, hhmm = date.split("_")
        assert len(year) == 4 and len(month) == 2 and len(day) == 2 and len(hhmm) == 4, name
        assert rest.endswith(".py")
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()


def test_upgrade_of_an_sqlite_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUrlInvalid, match="directory of the SQLite file does not exist"):
        upgrade(_sqlite_url(tmp_path / "missing-dir" / "x.db"))


def test_upgrade_of_an_unreachable_database_raises_store_error() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(StoreError, match="could not apply migrations") as info:
        upgrade("postgresql+asyncpg://greenloop:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(info.value)
