"""Projects: synced from the configuration, plus the reconciler's per-project state (pause, cursor, reset).

Rows are never deleted: attempts and runs reference them, and a project dropped from the configuration
simply stops being reconciled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from reconciler.store.engine import SessionFactory
from reconciler.store.models import Project, utcnow
from reconciler.store.names import narrowed
from reconciler.store.translate import fetch_all, rowcount, translated, with_retry
from reconciler.store.upsert import insert_for

__all__ = [
    "ProjectState",
    "get_project",
    "get_projects",
    "list_projects",
    "project_states",
    "reset_escalation",
    "set_paused",
    "sync_projects",
]


async def sync_projects(session_factory: SessionFactory, repos: Mapping[str, str]) -> None:
    """Make sure a row exists for every `name -> repo` (inserting new ones, updating a changed repo).

    Idempotent and safe to run from two reconcilers at once (one upsert statement).

    Raises:
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure.
    """
    if not repos:
        return

    async def _once() -> None:
        now = utcnow()
        async with session_factory() as session, session.begin():
            rows = [{"name": n, "repo": r, "created_at": now, "updated_at": now} for n, r in repos.items()]
            stmt = insert_for(session, Project).values(rows)
            stmt = stmt.on_conflict_do_update(
                index_elements=[Project.name],
                set_={"repo": stmt.excluded.repo, "updated_at": now},
                where=Project.repo != stmt.excluded.repo,
            )
            await session.execute(stmt)

    await with_retry(_once)


async def get_project(session_factory: SessionFactory, name: str) -> Project | None:
    """The project row, or None.

    Raises:
        StoreError: the database failed.
    """
    async with translated(), session_factory() as session:
        return await session.get(Project, name)


async def get_projects(session_factory: SessionFactory, names: Iterable[str]) -> dict[str, Project]:
    """The rows of `names` that exist, by name.

    Raises:
        StoreError: the database failed.
    """
    rows = await fetch_all(session_factory, sa.select(Project).where(Project.name.in_(list(names))))
    return {r.name: r for r in rows}


class ProjectState(NamedTuple):
    """The per-project state a reconcile pass reads: the operator's pause and the escalation reset."""

    name: str
    paused: bool
    escalation_reset_at: datetime | None


async def project_states(session_factory: SessionFactory, names: Iterable[str]) -> dict[str, ProjectState]:
    """The state of those of `names` whose row differs from a new project's (paused, or an escalation reset),
    by name; a name that is absent is unpaused with no reset (or has no row yet). Three columns, no ORM objects:
    one statement a pass, and a row only for the few projects an operator or an escalation touched.

    Raises:
        StoreError: the database failed.
    """
    wanted = set(names)
    query = sa.select(Project.name, Project.paused, Project.escalation_reset_at).where(
        sa.or_(Project.paused.is_(True), Project.escalation_reset_at.is_not(None))
    )
    query = narrowed(query, Project.name, wanted)
    async with translated(), session_factory() as session:
        rows = (await session.execute(query)).all()
    return {r[0]: ProjectState(r[0], bool(r[1]), r[2]) for r in rows if r[0] in wanted}


async def list_projects(session_factory: SessionFactory) -> list[Project]:
    """Every project row, by name.

    Raises:
        StoreError: the database failed.
    """
    return await fetch_all(session_factory, sa.select(Project).order_by(Project.name))


async def set_paused(session_factory: SessionFactory, name: str, paused: bool) -> bool:
    """Pause or resume a project; False when there is no such project.

    Raises:
        StoreBusy, StoreError: see `sync_projects`.
    """
    return await _update(session_factory, name, paused=paused)


async def reset_escalation(session_factory: SessionFactory, name: str, *, at: datetime | None = None) -> bool:
    """Start counting consecutive failures afresh from `at` (default now); False when there is no such project.

    Raises:
        StoreBusy, StoreError: see `sync_projects`.
    """
    return await _update(session_factory, name, escalation_reset_at=at or utcnow())


async def record_escalation(session_factory: SessionFactory, name: str, *, reason: str, url: str | None) -> bool:
    """Remember that the project's failure reached a human: why, and where the report is."""
    return await _update(session_factory, name, escalated_at=utcnow(), escalation_reason=reason, escalation_url=url)


async def _update(session_factory: SessionFactory, name: str, **values: Any) -> bool:
    async def _once() -> bool:
        async with session_factory() as session, session.begin():
            result = await session.execute(
                sa.update(Project)
                .where(Project.name == name)
                .values(**values, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return rowcount(result) == 1

    return await with_retry(_once)
