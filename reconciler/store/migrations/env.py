"""Alembic environment for the store; driven by `reconciler.store.migrate`, no alembic.ini needed.

The URL comes from `config.attributes["url"]`, or a live synchronous connection from
`config.attributes["connection"]` (see `migrate.upgrade_async`). Offline (`--sql`) mode renders SQL for
the URL's dialect.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from reconciler.store.engine import make_engine, normalize_url
from reconciler.store.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=False,
        # SQLite cannot ALTER most things; batch mode copies the table instead (no-op on PostgreSQL).
        render_as_batch=True,
        **kwargs,
    )


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set config.attributes['url'] (see reconciler.store.migrate)")
    return str(url)


def run_migrations_offline() -> None:
    _configure(url=normalize_url(_url()), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on_connection(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = make_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on_connection)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on_connection(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
