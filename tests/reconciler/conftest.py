"""Fixtures for reconciler tests: the store on SQLite and on PostgreSQL.

`db_url` is parametrized over both backends and migrated once per test run (`alembic upgrade head`).
PostgreSQL gets a throwaway database `greenloop_test_<random>`, created through the maintenance database
named by GREENLOOP_TEST_POSTGRES_URL and dropped at the end; without that variable those tests skip.
Each test starts from empty tables: the concurrency tests need real commits across connections, so a
rolled-back outer transaction cannot isolate them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.store.migrate import upgrade
from reconciler.store.models import Base, Project

POSTGRES_ENV = "GREENLOOP_TEST_POSTGRES_URL"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _admin_execute(admin_url: str, statement: str) -> None:
    engine = make_engine(admin_url)
    try:
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(sa.text(statement))
    finally:
        await engine.dispose()


def _sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_ENV} is unset: PostgreSQL store tests need e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        )
    return url


@pytest.fixture(scope="session")
def postgres_db_url(postgres_admin_url: str) -> Iterator[str]:
    """A migrated throwaway PostgreSQL database for this test run."""
    name = f"greenloop_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin_execute(postgres_admin_url, f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(_admin_execute(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file for this test run."""
    url = _sqlite_url(tmp_path_factory.mktemp("store") / "greenloop.db")
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """URL of a migrated store database, once per backend."""
    name = "sqlite_db_url" if request.param == "sqlite" else "postgres_db_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the migrated database, whose tables are emptied before the test."""
    eng = make_engine(db_url)
    async with eng.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(table.delete())
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> SessionFactory:
    return make_sessionmaker(engine)


AddProject = Callable[[str], Awaitable[str]]


@pytest.fixture
def add_project(sessions: SessionFactory) -> AddProject:
    """`await add_project(name)` inserts a `reconciler_project` row (attempts reference their project)."""

    async def _add(name: str) -> str:
        async with sessions() as session, session.begin():
            session.add(Project(name=name, repo=f"acme/{name}"))
        return name

    return _add


@pytest.fixture
async def project(add_project: AddProject) -> str:
    """A project row named 'alpha'."""
    return await add_project("alpha")
