"""The store's tables, as SQLAlchemy 2 ORM models.

Two rules live in the schema rather than in code paths that could race:

* **One active attempt per project**: a partial unique index on `reconciler_attempt(project)` covering only
  rows whose status is not terminal (`ix_reconciler_attempt_one_active`), on SQLite and PostgreSQL alike.
* **One attempt per failure fingerprint and generation**: a unique constraint on
  `reconciler_attempt(fingerprint, generation)`. Generation 0 is the failure's first attempt; a later one is
  started only after a transient failure or an operator reset (`attempts.start_attempt` checks which, and
  the constraint makes two passes racing for the same generation start one attempt).

Every timestamp is timezone-aware UTC on the way in and on the way out, on both backends.
`McpToolCall` is the one definition of the `mcp_tool_call` audit table; `reconciler.store.audit` writes it
for the MCP server (which never touches SQL).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from policy.types import TERMINAL_STATUSES, AttemptStatus

__all__ = [
    "ACTIVE_ATTEMPT_WHERE",
    "NAMING_CONVENTION",
    "RUN_SOURCES",
    "TOOL_CALL_OUTCOMES",
    "Attempt",
    "Base",
    "Flag",
    "JobRun",
    "Lease",
    "McpToolCall",
    "Project",
    "ReconcilePass",
    "Transition",
    "UTCDateTime",
    "utcnow",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_SOURCES: tuple[str, ...] = ("actions", "reported")
TOOL_CALL_OUTCOMES: tuple[str, ...] = ("ok", "refused", "error")


def _in_list(values: Iterable[object]) -> str:
    """Render `('a', 'b')` for a SQL IN list of fixed, code-defined identifiers (never user input)."""
    return "(" + ", ".join(f"'{v}'" for v in sorted(str(x) for x in values)) + ")"


# The predicate of the one-active-attempt index. Derived from policy's TERMINAL_STATUSES so the two cannot
# drift silently; a change of the terminal set needs a migration (the metadata test will show the diff).
ACTIVE_ATTEMPT_WHERE: str = f"status NOT IN {_in_list(TERMINAL_STATUSES)}"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that refuses naive values and always returns aware UTC.

    SQLite keeps no offset, so values are normalised to UTC before they are written and marked UTC when read.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"Naive datetime refused: the store keeps aware UTC times only: {value!r}.")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every store table; its metadata is what the migrations must match."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012 (SQLAlchemy reads a plain dict)


class Project(Base):
    """One watched project, as last synced from the configuration, plus the reconciler's per-project state."""

    __tablename__ = "reconciler_project"

    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    repo: Mapped[str] = mapped_column(sa.String(200))
    paused: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # Consecutive-failure counting starts after this instant (set when an operator resets an escalation).
    escalation_reset_at: Mapped[datetime | None]
    # The newest escalation that reached a human: when, why, and where the report is (PR comment or issue).
    escalated_at: Mapped[datetime | None]
    escalation_reason: Mapped[str | None] = mapped_column(sa.Text)
    escalation_url: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobRun(Base):
    """One observed run of a job: from the forge's Actions API or reported by an outside scheduler."""

    __tablename__ = "reconciler_job_run"
    __table_args__ = (
        sa.UniqueConstraint("project", "source", "run_id", "run_attempt", name="uq_reconciler_job_run_identity"),
        sa.CheckConstraint(f"source IN {_in_list(RUN_SOURCES)}", name="source"),
        sa.Index("ix_reconciler_job_run_latest", "project", "job", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(sa.String(200), sa.ForeignKey("reconciler_project.name"))
    job: Mapped[str] = mapped_column(sa.String(200))
    run_id: Mapped[str] = mapped_column(sa.String(100))
    source: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(32))
    conclusion: Mapped[str | None] = mapped_column(sa.String(32))
    head_sha: Mapped[str] = mapped_column(sa.String(64))
    event: Mapped[str] = mapped_column(sa.String(64))
    triggered_by: Mapped[str | None] = mapped_column(sa.String(200))
    commit_message: Mapped[str | None] = mapped_column(sa.Text)
    log_text: Mapped[str | None] = mapped_column(sa.Text)
    log_url: Mapped[str | None] = mapped_column(sa.Text)
    run_attempt: Mapped[int] = mapped_column(default=1, server_default=sa.text("1"))
    created_at: Mapped[datetime]
    observed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Attempt(Base):
    """One remediation attempt for one failure (see `policy.types.AttemptStatus` for its lifecycle)."""

    __tablename__ = "reconciler_attempt"
    __table_args__ = (
        sa.UniqueConstraint("fingerprint", "generation", name="uq_reconciler_attempt_fingerprint"),
        sa.CheckConstraint(f"status IN {_in_list(AttemptStatus)}", name="status"),
        sa.CheckConstraint("generation >= 0", name="generation"),
        # Security: the lock that keeps two agents off one project is this index, not a check in code.
        sa.Index(
            "ix_reconciler_attempt_one_active",
            "project",
            unique=True,
            sqlite_where=sa.text(ACTIVE_ATTEMPT_WHERE),
            postgresql_where=sa.text(ACTIVE_ATTEMPT_WHERE),
        ),
        sa.Index("ix_reconciler_attempt_history", "project", "created_at"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    project: Mapped[str] = mapped_column(sa.String(200), sa.ForeignKey("reconciler_project.name"))
    job: Mapped[str] = mapped_column(sa.String(200))
    fingerprint: Mapped[str] = mapped_column(sa.String(200))
    run_id: Mapped[str] = mapped_column(sa.String(100))
    head_sha: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16), default=AttemptStatus.PENDING.value)
    branch: Mapped[str | None] = mapped_column(sa.String(255))
    pr_number: Mapped[int | None]
    pr_url: Mapped[str | None] = mapped_column(sa.Text)
    pushed_sha: Mapped[str | None] = mapped_column(sa.String(64))
    merged_sha: Mapped[str | None] = mapped_column(sa.String(64))
    stop_reason: Mapped[str | None] = mapped_column(sa.String(64))
    report: Mapped[str | None] = mapped_column(sa.Text)
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    input_tokens: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    output_tokens: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    cache_tokens: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    cost_usd: Mapped[float] = mapped_column(default=0.0, server_default=sa.text("0"))
    turns: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    # Wall-clock seconds of every agent run of this attempt so far (rounds and resumes share the budget).
    agent_seconds: Mapped[float] = mapped_column(default=0.0, server_default=sa.text("0"))
    transcript: Mapped[str | None] = mapped_column(sa.Text)  # JSON text, written by the agent runner
    trace_id: Mapped[str | None] = mapped_column(sa.String(64))
    # The fix PR head's checks as the last pass read them: pending | failing | passed (policy.checks).
    checks: Mapped[str | None] = mapped_column(sa.String(16))
    # Revision rounds: times the PR's checks failed and the same attempt went back to the agent.
    revisions: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    # When a PR open longer than stale_pr_hours was announced (once).
    stale_announced_at: Mapped[datetime | None]
    # Why a failed attempt failed: transient (the outside: model API, forge) or permanent (policy.gate).
    failure_class: Mapped[str | None] = mapped_column(sa.String(16))
    # The model the attempt runs with, chosen when it starts (policy.spend.choose_model: the fallback past 80%).
    model: Mapped[str | None] = mapped_column(sa.String(100))
    # Which attempt at this failure: 0 first; +1 after a transient failure or an operator reset (unique per
    # fingerprint, so the database refuses a second attempt of the same generation).
    generation: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))

    @property
    def attempt_status(self) -> AttemptStatus:
        """`status` as the policy enum."""
        return AttemptStatus(self.status)

    @property
    def is_active(self) -> bool:
        """Whether the attempt still holds its project's one active slot."""
        return AttemptStatus(self.status) not in TERMINAL_STATUSES


class Transition(Base):
    """One status change of an attempt: the audit trail (`from_status` is None for the creation)."""

    __tablename__ = "reconciler_transition"
    __table_args__ = (sa.Index("ix_reconciler_transition_attempt", "attempt_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    attempt_id: Mapped[str] = mapped_column(sa.String(32), sa.ForeignKey("reconciler_attempt.id"))
    from_status: Mapped[str | None] = mapped_column(sa.String(16))
    to_status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class McpToolCall(Base):
    """Audit row of one MCP tool call (`mcp_server.audit.AuditEvent`, written by `reconciler.store.audit`)."""

    __tablename__ = "mcp_tool_call"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    attempt_id: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    project: Mapped[str] = mapped_column(sa.String(200))
    client: Mapped[str] = mapped_column(sa.String(200))
    tool: Mapped[str] = mapped_column(sa.String(64))
    arguments: Mapped[str] = mapped_column(sa.Text)  # redacted JSON
    outcome: Mapped[str] = mapped_column(sa.String(16))  # one of TOOL_CALL_OUTCOMES
    message: Mapped[str | None] = mapped_column(sa.Text)
    result_bytes: Mapped[int]
    duration_ms: Mapped[float]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReconcilePass(Base):
    """Summary of one reconcile pass over every project."""

    __tablename__ = "reconciler_pass"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(sa.String(32))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[float | None]
    projects_scanned: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    projects_red: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    attempts_started: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    attempts_deduplicated: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    summary: Mapped[str | None] = mapped_column(sa.Text)  # JSON text


class Flag(Base):
    """One runtime flag an operator flips without a restart or a config change (e.g. the kill switch)."""

    __tablename__ = "reconciler_flag"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """A named, expiring lease: the replica whose `token` is here runs that pass until `expires_at`.

    One row per lease name; taken and taken over by a single conditional upsert (see `state.pass_lease`).
    """

    __tablename__ = "reconciler_lease"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(sa.String(200))
    # Random per acquisition: renewal and release match it, so a holder name reused elsewhere cannot
    # release or extend a lease it did not take.
    token: Mapped[str] = mapped_column(sa.String(32))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]
