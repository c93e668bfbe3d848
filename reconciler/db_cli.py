"""`greenloop db upgrade`: apply the store's migrations and say what changed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from reconciler.errors import DatabaseUrlInvalid, StoreError
from reconciler.store.engine import make_engine, redact_url
from reconciler.store.migrate import current_revision, head_revision, upgrade_async

__all__ = ["db_upgrade", "default_database_url"]


def default_database_url() -> str:
    """The embedded default: an SQLite file `greenloop.db` in the current directory."""
    return f"sqlite+aiosqlite:///{Path.cwd() / 'greenloop.db'}"


def db_upgrade(url: str | None) -> int:
    """Apply every pending migration to `url` (default: `default_database_url()`); returns the exit code.

    0 done (or nothing to do), 1 the database failed, 2 the URL is unusable. Errors are one line on stderr.
    """
    target = url or default_database_url()
    try:
        before, after = asyncio.run(_upgrade(target))
    except DatabaseUrlInvalid as exc:
        print(f"greenloop: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"greenloop: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    shown = redact_url(target)
    if before == after:
        print(f"database {shown}: already at revision {after} (head)")
    else:
        print(f"database {shown}: upgraded from {before or 'an empty schema'} to revision {after} (head)")
    return 0


async def _upgrade(url: str) -> tuple[str | None, str | None]:
    engine = make_engine(url)
    try:
        before = await current_revision(engine)
        if before != head_revision():
            await upgrade_async(engine)
        return before, await current_revision(engine)
    finally:
        await engine.dispose()


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else text
    return first if len(first) <= 500 else first[:497] + "..."
