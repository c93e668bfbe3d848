"""Engines and session factories for the store: SQLite (aiosqlite) embedded, PostgreSQL (asyncpg) at scale.

Build them once in the application's lifespan and pass them in; nothing here is created at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, InvalidRequestError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from reconciler.errors import DatabaseUrlInvalid

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "SessionFactory",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
    "redact_url",
    "sqlite_file_missing",
]

DEFAULT_BUSY_TIMEOUT_MS = 5000

SessionFactory = async_sessionmaker[AsyncSession]

# Plain backend names map to the async driver this project ships with; other drivers are refused because
# the store's guarantees (partial unique index, busy handling) are tested on these two only.
_ASYNC_DRIVERS: dict[str, str] = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


def redact_url(url: str | URL) -> str:
    """The URL as text with any password hidden, fit for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def normalize_url(url: str | URL) -> URL:
    """Parse `url` and pick the async driver: `sqlite://…` -> `sqlite+aiosqlite`, `postgresql://…` -> asyncpg.

    Raises:
        DatabaseUrlInvalid: unparseable, not SQLite/PostgreSQL, or a driver other than aiosqlite/asyncpg.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUrlInvalid(
            "Database URL invalid: expected 'sqlite+aiosqlite:///path' or 'postgresql+asyncpg://user@host/db'."
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "postgres":  # the common alias
        backend = "postgresql"
    driver = _ASYNC_DRIVERS.get(backend)
    if driver is None:
        raise DatabaseUrlInvalid(
            f"Database URL invalid: unsupported database (use sqlite or postgresql): {redact_url(parsed)!r}."
        )
    given = parsed.get_driver_name() if "+" in parsed.drivername else None
    if given not in (None, driver):
        raise DatabaseUrlInvalid(
            f"Database URL invalid: unsupported driver {given!r} (use {backend}+{driver}): {redact_url(parsed)!r}."
        )
    return parsed.set(drivername=f"{backend}+{driver}")


def make_engine(url: str | URL, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, echo: bool = False) -> AsyncEngine:
    """An async engine for `url`; on SQLite each connection gets WAL, `busy_timeout` and foreign keys.

    SQLite's driver-level transaction handling is replaced by an explicit `BEGIN` (SQLAlchemy's documented
    recipe) so SELECTs, DDL and SAVEPOINTs take part in transactions as on PostgreSQL.

    Raises:
        DatabaseUrlInvalid: see `normalize_url`; also an SQLite file whose directory does not exist.
    """
    parsed = normalize_url(url)
    memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    if parsed.get_backend_name() == "sqlite" and not memory and not parsed.query.get("uri"):
        # Checked here because a failed aiosqlite connect leaves a worker thread that outlives short event
        # loops (CLI, migrations) and reports "Event loop is closed" from that thread.
        directory = Path(str(parsed.database)).expanduser().resolve().parent
        if not directory.is_dir():
            raise DatabaseUrlInvalid(
                f"Database URL invalid: the directory of the SQLite file does not exist: {str(directory)!r}."
            )
    try:
        engine = create_async_engine(parsed, echo=echo, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    except (ArgumentError, NoSuchModuleError, InvalidRequestError) as exc:
        raise DatabaseUrlInvalid(f"Database URL invalid: {exc}: {redact_url(parsed)!r}.") from exc
    if parsed.get_backend_name() == "sqlite":
        _install_sqlite_hooks(engine, busy_timeout_ms=busy_timeout_ms, memory=memory)
    return engine


def sqlite_file_missing(url: str | URL) -> bool:
    """True when `url` names a SQLite file that does not exist yet (so it holds nothing to read)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if not parsed.drivername.startswith("sqlite"):
        return False
    database = parsed.database
    return bool(database) and database != ":memory:" and not Path(str(database)).exists()


def make_sessionmaker(engine: AsyncEngine) -> SessionFactory:
    """The session factory every store function takes (`expire_on_commit=False`: rows stay readable)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _install_sqlite_hooks(engine: AsyncEngine, *, busy_timeout_ms: int, memory: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
        # Take BEGIN away from the driver (see the docstring of make_engine).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                # WAL: readers never block the single writer, the writer never blocks readers.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")
