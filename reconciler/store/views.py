"""Read-only queries for the operators' views (the `/ui` pages and `greenloop attempts|projects`).

Nothing here writes. Each function answers one page's question in one or two queries, so a page costs a
fixed number of round trips however many attempts the store holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from policy.types import AttemptStatus
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt, JobRun, utcnow
from reconciler.store.translate import fetch_all, translated

__all__ = [
    "ProjectSpend",
    "SpendSummary",
    "latest_attempts",
    "latest_job_runs",
    "spend",
    "stored_json",
]


def stored_json(text: str | None) -> Any:
    """A JSON text column (transcript, tool arguments) decoded; the text itself when it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


async def latest_job_runs(session_factory: SessionFactory) -> dict[tuple[str, str], JobRun]:
    """The newest run of every (project, job) the store has seen.

    Raises:
        StoreError: the database failed.
    """
    newest = (
        sa.select(JobRun.project, JobRun.job, sa.func.max(JobRun.created_at).label("at"))
        .group_by(JobRun.project, JobRun.job)
        .subquery()
    )
    query = (
        sa.select(JobRun)
        .join(
            newest,
            sa.and_(JobRun.project == newest.c.project, JobRun.job == newest.c.job, JobRun.created_at == newest.c.at),
        )
        .order_by(JobRun.run_attempt, JobRun.id)
    )
    out: dict[tuple[str, str], JobRun] = {}
    for run in await fetch_all(session_factory, query):
        out[(run.project, run.job)] = run  # ties on created_at: the later attempt/row wins
    return out


async def latest_attempts(session_factory: SessionFactory) -> dict[str, Attempt]:
    """The newest attempt of every project that has one.

    Raises:
        StoreError: the database failed.
    """
    newest = (
        sa.select(Attempt.project, sa.func.max(Attempt.created_at).label("at")).group_by(Attempt.project).subquery()
    )
    query = (
        sa.select(Attempt)
        .join(newest, sa.and_(Attempt.project == newest.c.project, Attempt.created_at == newest.c.at))
        .order_by(Attempt.id)
    )
    return {a.project: a for a in await fetch_all(session_factory, query)}


@dataclass(frozen=True)
class ProjectSpend:
    """What one project's attempts cost."""

    project: str
    attempts: int
    succeeded: int
    input_tokens: int
    output_tokens: int
    cache_tokens: int
    cost_usd: float
    last_day_cost_usd: float


@dataclass(frozen=True)
class SpendSummary:
    """Spend per project (most expensive first) and its totals."""

    projects: list[ProjectSpend]
    since: datetime | None

    @property
    def total_cost_usd(self) -> float:
        return sum(p.cost_usd for p in self.projects)

    @property
    def total_attempts(self) -> int:
        return sum(p.attempts for p in self.projects)

    @property
    def total_tokens(self) -> int:
        return sum(p.input_tokens + p.output_tokens + p.cache_tokens for p in self.projects)


async def spend(session_factory: SessionFactory, *, since: datetime | None = None) -> SpendSummary:
    """Tokens and cost per project (attempts created at or after `since`, or all), most expensive first.

    Raises:
        StoreError: the database failed.
    """
    day_ago = utcnow() - timedelta(days=1)
    query = sa.select(
        Attempt.project,
        sa.func.count(),
        sa.func.sum(sa.case((Attempt.status == AttemptStatus.SUCCEEDED.value, 1), else_=0)),
        sa.func.coalesce(sa.func.sum(Attempt.input_tokens), 0),
        sa.func.coalesce(sa.func.sum(Attempt.output_tokens), 0),
        sa.func.coalesce(sa.func.sum(Attempt.cache_tokens), 0),
        sa.func.coalesce(sa.func.sum(Attempt.cost_usd), 0.0),
        sa.func.coalesce(sa.func.sum(sa.case((Attempt.created_at >= day_ago, Attempt.cost_usd), else_=0.0)), 0.0),
    ).group_by(Attempt.project)
    if since is not None:
        query = query.where(Attempt.created_at >= since)
    async with translated(), session_factory() as session:
        rows = (await session.execute(query)).all()
    projects = [
        ProjectSpend(
            project=str(r[0]),
            attempts=int(r[1]),
            succeeded=int(r[2] or 0),
            input_tokens=int(r[3]),
            output_tokens=int(r[4]),
            cache_tokens=int(r[5]),
            cost_usd=float(r[6]),
            last_day_cost_usd=float(r[7]),
        )
        for r in rows
    ]
    projects.sort(key=lambda p: (-p.cost_usd, p.project))
    return SpendSummary(projects=projects, since=since)
