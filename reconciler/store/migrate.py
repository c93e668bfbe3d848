"""Schema migrations, run programmatically: the Alembic scripts live inside this package.

No `alembic.ini` is needed: the configuration is built here, so migrations work from any working directory
and from an installed wheel. For an ad-hoc Alembic command, use `alembic_config(url)` with
`alembic.command` (e.g. `command.revision(alembic_config(url), autogenerate=True, message=...)`).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from infra.jsonlog import log_event
from reconciler.errors import StoreError
from reconciler.store.engine import normalize_url, redact_url
from reconciler.store.models import Base

__all__ = [
    "MIGRATIONS_DIR",
    "MIGRATION_LOCK_KEY",
    "alembic_config",
    "current_revision",
    "head_revision",
    "migrate_store",
    "schema_diff",
    "upgrade",
    "upgrade_async",
]

MIGRATIONS_DIR: Path = Path(__file__).resolve().parent / "migrations"

# Dated migration file names: 2026_11_25_1640-<rev>_<slug>.py
logger = logging.getLogger("greenloop.store.migrate")

_FILE_TEMPLATE = "%(year)d_%(month).2d_%(day).2d_%(hour).2d%(minute).2d-%(rev)s_%(slug)s"


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic configuration pointing at the packaged migrations (and at `url`, when given)."""
    config = Config()
    # ConfigParser interpolates '%': escape every value set here.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("file_template", _FILE_TEMPLATE.replace("%", "%%"))
    if url is not None:
        # Passed as an attribute, not an ini option: URLs may contain '%' and passwords.
        config.attributes["url"] = normalize_url(url).render_as_string(hide_password=False)
    return config


def head_revision() -> str | None:
    """The revision the packaged migrations lead to."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    """Apply every pending migration to the database at `url`; blocks until done.

    Meant for synchronous code (a CLI, a test fixture): it runs its own event loop, in a helper thread when
    the calling thread already runs one. Inside async code prefer `upgrade_async`, which does not block.

    Raises:
        DatabaseUrlInvalid: the URL cannot be used.
        StoreError: the database could not be reached or a migration failed.
    """
    config = alembic_config(url)
    try:
        if _loop_running():
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="greenloop-migrate") as pool:
                pool.submit(command.upgrade, config, revision).result()
        else:
            command.upgrade(config, revision)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"Store error: could not apply migrations to {redact_url(url)!r}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """The driver's own words for a failure (SQLAlchemy's wrapper adds a class name and a help link)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def upgrade_async(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply every pending migration through `engine`, inside the caller's event loop.

    Raises:
        StoreError: the database could not be reached or a migration failed.
    """

    def _run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(
            f"Store error: could not apply migrations to {redact_url(engine.url)!r}: {_describe(exc)}"
        ) from exc


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None for a database never migrated.

    Raises:
        StoreError: the database could not be reached.
    """

    def _read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_read)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"Store error: could not read the schema revision: {_describe(exc)}") from exc


async def schema_diff(engine: AsyncEngine) -> list[Any]:
    """Differences between the live schema and the models (`alembic check`); empty when they match.

    Raises:
        StoreError: the database could not be reached.
    """

    def _compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_compare)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"Store error: could not compare the schema: {_describe(exc)}") from exc


MIGRATION_LOCK_KEY: Final = 0x67726E6C6F6F70  # "grnloop": the PostgreSQL advisory lock key of migrations


async def migrate_store(engine: AsyncEngine, *, timeout_seconds: float = 300.0) -> None:
    """Apply pending migrations; on PostgreSQL under an advisory lock, so replicas starting together take turns.

    The lock is a session lock (`pg_advisory_lock`) on a dedicated connection, held around `upgrade_async`:
    the second replica waits, then finds the schema at head and does nothing. SQLite needs no lock (one
    process owns the file, and its write lock serialises the rest). A replica that dies mid-migration
    releases the lock with its connection.

    Raises:
        StoreError: the lock was not had within `timeout_seconds`, or the migration failed.
    """
    if engine.dialect.name != "postgresql":
        await upgrade_async(engine)
        return
    key = {"key": MIGRATION_LOCK_KEY}
    try:
        async with engine.connect() as raw:
            lock = await raw.execution_options(isolation_level="AUTOCOMMIT")  # no transaction held while waiting
            async with asyncio.timeout(timeout_seconds):
                await lock.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                log_event(logger, "migration_lock_acquired")
                await upgrade_async(engine)
            finally:
                await lock.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)
    except TimeoutError:
        raise StoreError(
            f"Store error: the migration lock was held by another replica for over {timeout_seconds:g} seconds: "
            f"{redact_url(engine.url)!r}."
        ) from None
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(
            f"Store error: could not take the migration lock on {redact_url(engine.url)!r}: {_describe(exc)}"
        ) from exc
