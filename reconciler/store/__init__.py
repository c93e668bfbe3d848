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
from reconciler.store.passes import recent_passes, record_pass
from reconciler.store.projects import (
    get_project,
    list_projects,
    reset_escalation,
    save_observation,
    set_paused,
    sync_projects,
)
from reconciler.store.runs import RunSource, latest_runs, record_run

__all__ = [
    "SETTABLE_FIELDS",
    "Attempt",
    "Base",
    "JobRun",
    "McpToolCall",
    "Project",
    "ReconcilePass",
    "RunSource",
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
    "get_project",
    "head_revision",
    "heartbeat",
    "latest_runs",
    "list_attempts",
    "list_projects",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
    "recent_passes",
    "record_pass",
    "record_run",
    "redact_url",
    "reset_escalation",
    "save_observation",
    "schema_diff",
    "set_paused",
    "start_attempt",
    "sync_projects",
    "transition",
    "upgrade",
    "upgrade_async",
]
