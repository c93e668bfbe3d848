"""The attempt store: SQLAlchemy 2 async models, engines, migrations, attempt operations and runtime state.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) is for scale. Typical wiring::

    engine = make_engine(settings.database_url)
    await upgrade_async(engine)
    sessions = make_sessionmaker(engine)
    async with pass_lease(sessions, holder=default_holder(), ttl_seconds=60) as leader:  # one pass at a time
        if leader and not await kill_switch_enabled(sessions):
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
from reconciler.store.models import (
    Attempt,
    Base,
    Flag,
    JobRun,
    Lease,
    McpToolCall,
    Project,
    ReconcilePass,
    Transition,
)
from reconciler.store.passes import recent_passes, record_pass
from reconciler.store.projects import (
    ProjectState,
    get_project,
    get_projects,
    list_projects,
    project_states,
    reset_escalation,
    set_paused,
    sync_projects,
)
from reconciler.store.runs import RunSource, latest_runs, record_run
from reconciler.store.state import (
    KILL_SWITCH,
    PASS_LEASE,
    acquire_lease,
    current_lease,
    default_holder,
    get_flag,
    kill_switch_enabled,
    pass_lease,
    release_lease,
    renew_lease,
    set_flag,
    set_kill_switch,
)

__all__ = [
    "KILL_SWITCH",
    "PASS_LEASE",
    "SETTABLE_FIELDS",
    "Attempt",
    "Base",
    "Flag",
    "JobRun",
    "Lease",
    "McpToolCall",
    "Project",
    "ProjectState",
    "ReconcilePass",
    "RunSource",
    "SessionFactory",
    "StartOutcome",
    "StartReason",
    "Transition",
    "acquire_lease",
    "active_attempts",
    "attempt_history",
    "attempt_transitions",
    "can_transition",
    "current_lease",
    "current_revision",
    "default_holder",
    "get_attempt",
    "get_flag",
    "get_project",
    "get_projects",
    "head_revision",
    "heartbeat",
    "kill_switch_enabled",
    "latest_runs",
    "list_attempts",
    "list_projects",
    "make_engine",
    "make_sessionmaker",
    "normalize_url",
    "pass_lease",
    "project_states",
    "recent_passes",
    "record_pass",
    "record_run",
    "redact_url",
    "release_lease",
    "renew_lease",
    "reset_escalation",
    "schema_diff",
    "set_flag",
    "set_kill_switch",
    "set_paused",
    "start_attempt",
    "sync_projects",
    "transition",
    "upgrade",
    "upgrade_async",
]
