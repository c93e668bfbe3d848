"""`INSERT … ON CONFLICT` for the two supported backends (both spell it the same way in SQLAlchemy)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["insert_for"]


def insert_for(session: AsyncSession, entity: Any) -> sqlite.Insert | postgresql.Insert:
    """An INSERT for `entity` in the session's dialect, so `.on_conflict_do_update(...)` is available."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(entity)
    return sqlite.insert(entity)
