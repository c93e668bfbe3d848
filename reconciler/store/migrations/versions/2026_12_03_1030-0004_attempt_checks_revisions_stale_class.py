"""attempts after the pull request: PR head checks, revisions, stale notice, failure class; project escalations

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("reconciler_attempt") as batch:
        batch.add_column(sa.Column("checks", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("revisions", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("stale_announced_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("failure_class", sa.String(length=16), nullable=True))
    with op.batch_alter_table("reconciler_project") as batch:
        batch.add_column(sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("escalation_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("escalation_url", sa.Text(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("reconciler_project") as batch:
        batch.drop_column("escalation_url")
        batch.drop_column("escalation_reason")
        batch.drop_column("escalated_at")
    with op.batch_alter_table("reconciler_attempt") as batch:
        batch.drop_column("failure_class")
        batch.drop_column("stale_announced_at")
        batch.drop_column("revisions")
        batch.drop_column("checks")
