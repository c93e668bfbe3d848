"""The attempt store: SQLAlchemy 2 async models, engines, migrations and the attempt operations.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) is for scale. Typical wiring::

    engine = make_engine(settings.database_url)
    await upgrade_async(engine)
    sessions = make_sessionmaker(engine)
    outcome = await start_attempt(sessions, project=..., job=..., fingerprint=..., run_id=..., head_sha=...)
"""

from __future__ import annotations

from reconciler.store.attempts import (
    SETTABLE_FIELDS,
    StartOutcome,
    StartReason,
    active_attempts,
    attempt_history,
    attempt_transitions,
    can_transition,
    get_attempt,
    heartbeat,
    list_attempts,
    start_attempt,
    transition,
)
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker, normalize_url, redact_url
from reconciler.store.migrate import current_revision, head_revision, schema_diff, upgrade, upgrade_async
from reconciler.store.models import Attempt, Base, JobRun, McpToolCall, Project, ReconcilePass, Transition

__all__ = [
    "SETTABLE_FIELDS",
    "Attempt",
    "Base",
    "JobRun",
    "McpToolCall",
    "Project",
    "ReconcilePass",
    "SessionFactory",
    "StartOutcome",
    "StartReason",
    "Transition",
    "active_attempts",
    "attempt_history",
    "attempt_transitions",
    "can_transition",
    "current_revision",
    "get_attempt",
    "head_revision",
    "heartbeat",
    "list_attempts",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
    "redact_url",
    "schema_diff",
    "start_attempt",
    "transition",
    "upgrade",
    "upgrade_async",
]
