"""Observed job runs: recorded idempotently (one row per project, source, run id and run attempt)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from mcp_server.reported_runs import ReportedRunInfo
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.store.models import JobRun, utcnow
from reconciler.store.names import narrowed
from reconciler.store.translate import fetch_all, with_retry
from reconciler.store.upsert import insert_for

__all__ = [
    "DatabaseReportedRuns",
    "RunSource",
    "StoreReportedRuns",
    "latest_reported_runs",
    "latest_runs",
    "record_reported_run",
    "record_run",
]

RunSource = Literal["actions", "reported"]


async def record_run(
    session_factory: SessionFactory,
    *,
    project: str,
    job: str,
    run_id: str,
    source: RunSource,
    status: str,
    conclusion: str | None,
    head_sha: str,
    event: str,
    created_at: datetime,
    run_attempt: int = 1,
    triggered_by: str | None = None,
    commit_message: str | None = None,
    log_text: str | None = None,
    log_url: str | None = None,
) -> JobRun:
    """Insert the run, or update the row already recorded for it (status, conclusion, logs, observed_at).

    Observing the same run twice changes nothing but `observed_at`; a log already stored is kept when the new
    observation carries none.

    Raises:
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure, including a project without a row or an unknown source.
    """
    now = utcnow()
    row = {
        "project": project,
        "job": job,
        "run_id": run_id,
        "source": source,
        "status": status,
        "conclusion": conclusion,
        "head_sha": head_sha,
        "event": event,
        "triggered_by": triggered_by,
        "commit_message": commit_message,
        "log_text": log_text,
        "log_url": log_url,
        "run_attempt": run_attempt,
        "created_at": created_at,
        "observed_at": now,
    }

    async def _once() -> JobRun:
        async with session_factory() as session, session.begin():
            stmt = insert_for(session, JobRun).values(row)
            stmt = stmt.on_conflict_do_update(
                index_elements=[JobRun.project, JobRun.source, JobRun.run_id, JobRun.run_attempt],
                set_={
                    "status": stmt.excluded.status,
                    "conclusion": stmt.excluded.conclusion,
                    "log_text": sa.func.coalesce(stmt.excluded.log_text, JobRun.log_text),
                    "log_url": sa.func.coalesce(stmt.excluded.log_url, JobRun.log_url),
                    "observed_at": now,
                },
            )
            recorded: JobRun | None = await session.scalar(
                stmt.returning(JobRun), execution_options={"populate_existing": True}
            )
            if recorded is None:  # pragma: no cover - an upsert always returns its row
                raise AssertionError("upsert returned no row")
            return recorded

    return await with_retry(_once)


async def latest_runs(
    session_factory: SessionFactory, project: str, *, job: str | None = None, limit: int = 20
) -> list[JobRun]:
    """A project's runs (optionally of one job), newest first by the forge's creation time.

    Raises:
        StoreError: the database failed.
    """
    query = sa.select(JobRun).where(JobRun.project == project)
    if job is not None:
        query = query.where(JobRun.job == job)
    query = query.order_by(JobRun.created_at.desc(), JobRun.run_attempt.desc(), JobRun.id.desc()).limit(limit)
    return await fetch_all(session_factory, query)


class StoreReportedRuns:
    """`mcp_server.reported_runs.ReportedRunSource` on the store: the runs reported to `POST /runs`.

    Their logs were redacted and capped when they were stored (`reconciler.api`); the MCP tools redact and
    excerpt them again, exactly like Actions logs.
    """

    def __init__(self, session_factory: SessionFactory) -> None:
        self._sessions = session_factory

    def _query(self, project: str, job: str | None) -> sa.Select[JobRun]:
        query = sa.select(JobRun).where(JobRun.project == project, JobRun.source == "reported")
        if job is not None:
            query = query.where(JobRun.job == job)
        return query.order_by(JobRun.created_at.desc(), JobRun.run_attempt.desc(), JobRun.id.desc())

    async def list_runs(self, project: str, *, job: str | None, limit: int) -> list[ReportedRunInfo]:
        """The project's reported runs, newest first, without their logs."""
        rows = await fetch_all(self._sessions, self._query(project, job).limit(limit))
        return [_info(r, with_log=False) for r in rows]

    async def get_run(self, project: str, run_id: str, *, job: str | None) -> ReportedRunInfo | None:
        """The newest attempt of reported run `run_id` (of `job` when given), with its stored log."""
        rows = await fetch_all(self._sessions, self._query(project, job).where(JobRun.run_id == run_id).limit(1))
        return _info(rows[0], with_log=True) if rows else None


class DatabaseReportedRuns(StoreReportedRuns):
    """`StoreReportedRuns` on a database of its own (the MCP sidecar's `--runs-db`); `aclose` disposes it.

    Raises:
        DatabaseUrlInvalid: the URL cannot be used (raised when it is built).
    """

    def __init__(self, url: str) -> None:
        self._engine = make_engine(url)
        super().__init__(make_sessionmaker(self._engine))

    async def aclose(self) -> None:
        """Close the database connections."""
        await self._engine.dispose()


def _info(row: JobRun, *, with_log: bool) -> ReportedRunInfo:
    return ReportedRunInfo(
        run_id=row.run_id,
        job=row.job,
        status=row.status,
        conclusion=row.conclusion,
        head_sha=row.head_sha,
        created_at=row.created_at,
        log_url=row.log_url,
        log_text=row.log_text if with_log else None,
    )


async def record_reported_run(session_factory: SessionFactory, **values: Any) -> tuple[JobRun, bool]:
    """Insert a reported run if it is new (True); else update its status and logs through `record_run` (False).

    `values` are `record_run`'s keyword arguments (with `source="reported"`).

    Raises:
        StoreBusy, StoreError: see `record_run`.
    """

    async def _insert() -> JobRun | None:
        async with session_factory() as session, session.begin():
            stmt = insert_for(session, JobRun).values(**values, observed_at=utcnow())
            stmt = stmt.on_conflict_do_nothing(
                index_elements=[JobRun.project, JobRun.source, JobRun.run_id, JobRun.run_attempt]
            )
            inserted: JobRun | None = await session.scalar(stmt.returning(JobRun))
            return inserted

    new = await with_retry(_insert)
    if new is not None:
        return new, True
    return await record_run(session_factory, **values), False


async def latest_reported_runs(session_factory: SessionFactory, projects: Iterable[str]) -> list[JobRun]:
    """The newest reported run of every job of `projects` (runs sent to `POST /runs`), in one query.

    Raises:
        StoreError: the database failed.
    """
    names = set(projects)
    if not names:
        return []
    newest = (
        narrowed(
            sa.select(JobRun.project, JobRun.job, sa.func.max(JobRun.created_at).label("at")).where(
                JobRun.source == "reported"
            ),
            JobRun.project,
            names,
        )
        .group_by(JobRun.project, JobRun.job)
        .subquery()
    )
    query = sa.select(JobRun).join(
        newest,
        sa.and_(JobRun.project == newest.c.project, JobRun.job == newest.c.job, JobRun.created_at == newest.c.at),
    )
    return [r for r in await fetch_all(session_factory, query) if r.project in names]
