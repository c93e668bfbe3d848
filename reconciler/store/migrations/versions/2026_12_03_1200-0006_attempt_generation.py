"""one attempt per failure and generation: a transient failure or an operator reset opens the next generation

`uq_reconciler_attempt_fingerprint` moves from `(fingerprint)` to `(fingerprint, generation)`. Every existing
attempt is generation 0, so the data stays valid as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("reconciler_attempt") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.drop_constraint("uq_reconciler_attempt_fingerprint", type_="unique")
        batch.create_unique_constraint("uq_reconciler_attempt_fingerprint", ["fingerprint", "generation"])
        batch.create_check_constraint("generation", "generation >= 0")


def downgrade() -> None:
    """Downgrade schema: only where every failure has one attempt (later generations must be deleted first)."""
    with op.batch_alter_table("reconciler_attempt") as batch:
        batch.drop_constraint(op.f("ck_reconciler_attempt_generation"), type_="check")
        batch.drop_constraint("uq_reconciler_attempt_fingerprint", type_="unique")
        batch.create_unique_constraint("uq_reconciler_attempt_fingerprint", ["fingerprint"])
        batch.drop_column("generation")
