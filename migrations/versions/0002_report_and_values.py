"""Job report and multi-objective trial values.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("report", sa.JSON(), nullable=True))
    with op.batch_alter_table("trial_result") as batch:
        batch.add_column(sa.Column("values", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trial_result") as batch:
        batch.drop_column("values")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("report")
