"""Reconcile-pass summaries: one row per pass, for the API, the metrics and the operator."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from reconciler.store.engine import SessionFactory
from reconciler.store.models import ReconcilePass
from reconciler.store.translate import fetch_all, with_retry

__all__ = ["recent_passes", "record_pass"]


async def record_pass(
    session_factory: SessionFactory,
    *,
    trigger: str,
    started_at: datetime,
    finished_at: datetime,
    projects_scanned: int,
    projects_red: int,
    attempts_started: int,
    attempts_deduplicated: int,
    summary: str | None = None,
) -> ReconcilePass:
    """Store the summary of one finished pass (`summary` is JSON text); `duration_ms` is derived.

    Raises:
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure.
    """

    async def _once() -> ReconcilePass:
        row = ReconcilePass(
            trigger=trigger,
            started_at=started_at,
            finished_at=finished_at,
            duration_ms=(finished_at - started_at).total_seconds() * 1000.0,
            projects_scanned=projects_scanned,
            projects_red=projects_red,
            attempts_started=attempts_started,
            attempts_deduplicated=attempts_deduplicated,
            summary=summary,
        )
        async with session_factory() as session, session.begin():
            session.add(row)
        return row

    return await with_retry(_once)


async def recent_passes(session_factory: SessionFactory, *, limit: int = 20) -> list[ReconcilePass]:
    """The latest passes, newest first.

    Raises:
        StoreError: the database failed.
    """
    query = sa.select(ReconcilePass).order_by(ReconcilePass.started_at.desc(), ReconcilePass.id.desc()).limit(limit)
    return await fetch_all(session_factory, query)
