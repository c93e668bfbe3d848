"""attempts: wall-clock seconds of every agent run so far (budgets count across rounds and resumes)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("reconciler_attempt") as batch:
        batch.add_column(sa.Column("agent_seconds", sa.Double(), server_default=sa.text("0"), nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("reconciler_attempt") as batch:
        batch.drop_column("agent_seconds")
