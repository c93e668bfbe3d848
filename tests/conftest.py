"""Shared test configuration.

PostgreSQL-backed tests read `GREENLOOP_TEST_POSTGRES_URL`. When it is not in the environment at all and a
PostgreSQL server answers on 127.0.0.1:5432 (as `postgres`, database `test`), it is set to that server, so
the README's test command runs the same tests as `.ci/run`. Set it to an empty value to skip those tests.
"""

from __future__ import annotations

import asyncio
import os

import pytest

POSTGRES_ENV = "GREENLOOP_TEST_POSTGRES_URL"
LOCAL_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def local_postgres_answers(timeout: float = 3.0) -> bool:
    """Whether the local PostgreSQL server accepts `postgres` on the `test` database."""
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return False

    async def probe() -> bool:
        try:
            connection = await asyncpg.connect(
                "postgresql://postgres@127.0.0.1:5432/test", timeout=timeout, command_timeout=timeout
            )
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await connection.close(timeout=timeout)
        return True

    return asyncio.run(probe())


def pytest_configure(config: pytest.Config) -> None:
    if POSTGRES_ENV not in os.environ and local_postgres_answers():
        os.environ[POSTGRES_ENV] = LOCAL_POSTGRES


@pytest.fixture
def anyio_backend() -> str:
    """Run `@pytest.mark.anyio` tests on asyncio only."""
    return "asyncio"
