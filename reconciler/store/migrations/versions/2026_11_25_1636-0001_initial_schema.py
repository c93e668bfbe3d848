"""initial schema: projects, observed runs, attempts (+ transitions), MCP tool-call audit, pass summaries

Revision ID: 0001
Revises:
Create Date: 2026-11-25 16:36:14.356634
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the rules as they stood at this revision (never import them from the models).
_ACTIVE_ATTEMPT_WHERE = "status NOT IN ('cancelled', 'escalated', 'failed', 'succeeded')"
_ATTEMPT_STATUSES = "('cancelled', 'escalated', 'failed', 'pending', 'pr_open', 'running', 'succeeded', 'verifying')"


def _ts(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str, default: str = "0") -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), server_default=sa.text(default), nullable=False)


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "mcp_tool_call",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("attempt_id", sa.String(length=32), nullable=True),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("client", sa.String(length=200), nullable=False),
        sa.Column("tool", sa.String(length=64), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("result_bytes", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Double(), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mcp_tool_call")),
    )
    op.create_index(op.f("ix_mcp_tool_call_attempt_id"), "mcp_tool_call", ["attempt_id"], unique=False)

    op.create_table(
        "reconciler_pass",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        _ts("started_at", nullable=False),
        _ts("finished_at", nullable=True),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        _count("projects_scanned"),
        _count("projects_red"),
        _count("attempts_started"),
        _count("attempts_deduplicated"),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciler_pass")),
    )

    op.create_table(
        "reconciler_project",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        _ts("escalation_reset_at", nullable=True),
        sa.Column("observe_etag", sa.Text(), nullable=True),
        _ts("observed_at", nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_reconciler_project")),
    )

    op.create_table(
        "reconciler_attempt",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=100), nullable=False),
        sa.Column("head_sha", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("branch", sa.String(length=255), nullable=True),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("pr_url", sa.Text(), nullable=True),
        sa.Column("pushed_sha", sa.String(length=64), nullable=True),
        sa.Column("merged_sha", sa.String(length=64), nullable=True),
        sa.Column("stop_reason", sa.String(length=64), nullable=True),
        sa.Column("report", sa.Text(), nullable=True),
        _ts("heartbeat_at", nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("finished_at", nullable=True),
        _count("input_tokens"),
        _count("output_tokens"),
        _count("cache_tokens"),
        sa.Column("cost_usd", sa.Double(), server_default=sa.text("0"), nullable=False),
        _count("turns"),
        sa.Column("transcript", sa.Text(), nullable=True),
        sa.Column("trace_id", sa.String(length=64), nullable=True),
        sa.CheckConstraint(f"status IN {_ATTEMPT_STATUSES}", name=op.f("ck_reconciler_attempt_status")),
        sa.ForeignKeyConstraint(
            ["project"],
            ["reconciler_project.name"],
            name=op.f("fk_reconciler_attempt_project_reconciler_project"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciler_attempt")),
        sa.UniqueConstraint("fingerprint", name="uq_reconciler_attempt_fingerprint"),
    )
    op.create_index("ix_reconciler_attempt_history", "reconciler_attempt", ["project", "created_at"], unique=False)
    # Security: one active attempt per project, enforced by the database on both backends.
    op.create_index(
        "ix_reconciler_attempt_one_active",
        "reconciler_attempt",
        ["project"],
        unique=True,
        sqlite_where=sa.text(_ACTIVE_ATTEMPT_WHERE),
        postgresql_where=sa.text(_ACTIVE_ATTEMPT_WHERE),
    )

    op.create_table(
        "reconciler_job_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("conclusion", sa.String(length=32), nullable=True),
        sa.Column("head_sha", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("triggered_by", sa.String(length=200), nullable=True),
        sa.Column("commit_message", sa.Text(), nullable=True),
        sa.Column("log_text", sa.Text(), nullable=True),
        sa.Column("log_url", sa.Text(), nullable=True),
        _count("run_attempt", default="1"),
        _ts("created_at", nullable=False),
        _ts("observed_at", nullable=False),
        sa.CheckConstraint("source IN ('actions', 'reported')", name=op.f("ck_reconciler_job_run_source")),
        sa.ForeignKeyConstraint(
            ["project"],
            ["reconciler_project.name"],
            name=op.f("fk_reconciler_job_run_project_reconciler_project"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciler_job_run")),
        sa.UniqueConstraint("project", "source", "run_id", "run_attempt", name="uq_reconciler_job_run_identity"),
    )
    op.create_index(
        "ix_reconciler_job_run_latest", "reconciler_job_run", ["project", "job", "created_at"], unique=False
    )

    op.create_table(
        "reconciler_transition",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("attempt_id", sa.String(length=32), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        _ts("at", nullable=False),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["reconciler_attempt.id"],
            name=op.f("fk_reconciler_transition_attempt_id_reconciler_attempt"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciler_transition")),
    )
    op.create_index("ix_reconciler_transition_attempt", "reconciler_transition", ["attempt_id", "id"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_reconciler_transition_attempt", table_name="reconciler_transition")
    op.drop_table("reconciler_transition")
    op.drop_index("ix_reconciler_job_run_latest", table_name="reconciler_job_run")
    op.drop_table("reconciler_job_run")
    op.drop_index("ix_reconciler_attempt_one_active", table_name="reconciler_attempt")
    op.drop_index("ix_reconciler_attempt_history", table_name="reconciler_attempt")
    op.drop_table("reconciler_attempt")
    op.drop_table("reconciler_project")
    op.drop_table("reconciler_pass")
    op.drop_index(op.f("ix_mcp_tool_call_attempt_id"), table_name="mcp_tool_call")
    op.drop_table("mcp_tool_call")
