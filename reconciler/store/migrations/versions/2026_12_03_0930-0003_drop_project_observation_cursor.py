"""drop the unused observation cursor of projects (observe_etag, observed_at)

The forge client keeps its ETags in memory; the columns were never read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("reconciler_project") as batch:
        batch.drop_column("observed_at")
        batch.drop_column("observe_etag")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("reconciler_project") as batch:
        batch.add_column(sa.Column("observe_etag", sa.Text(), nullable=True))
        batch.add_column(sa.Column("observed_at", sa.DateTime(timezone=True), nullable=True))
